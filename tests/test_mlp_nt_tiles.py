"""A @ B^T (a linear layer's forward) with AVX-512, float32: tn_gemm_nt's packed panels of B^T
multiplied by register tiles of 8, 4, 2 and 1 rows x one vector of 16 floats, the columns past
the whole panels as a panel padded with zero columns, through a buffer (templates/_gemm.c.j2's
tn_nt_panels_zmm), at sizes that leave every remainder (rows past the 8-row tiles, columns past
the panels, K past a packed chunk, where the padded panel adds to what the first chunk wrote),
and the LSTM LM's head and table projection, against PyTorch and eager in float32 and float64,
built for AVX-512 and for AVX2 only (tiles of 6 rows x 2 vectors of 8, the columns past them as
dot products), on work memory filled with NaN and split between 1-3 threads."""
import numpy as np
import pytest

import tracenet as tn
from compile_checks import nan_filled_arenas
from test_conv_kernels import _copy_to_torch
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from tracenet.codegen.emit import gemm_sources
from tracenet.codegen.target import Parallelism
from tracenet.runtime import target, toolchain

torch = pytest.importorskip("torch")

EIGHT_ROW_TILES = "tn_ztile_f32_8x1(kc, A + (long)i0 * lda + k0"  # tn_gemm_nt's packed loop


def _eight_row_tiles_taken(source, march, dtype):
    """Whether the product goes through tn_gemm_nt whose packed panels the 8-row tiles
    multiply: float32 built for AVX-512 (the tiles are compiled where AVX-512VL is)."""
    core = gemm_sources(target.current(), ["tn_gemm_nt_f32"])["tn_gemm_nt_f32"]
    taken = "tn_gemm_nt_f32(" in source and EIGHT_ROW_TILES in core and \
        march == "native" and toolchain.vector_bits() >= 512
    return taken == (march == "native" and dtype == np.float32 and
                     toolchain.vector_bits() >= 512)


# (M, N, K) of a @ b^T: the MLP's forward; 8-row tiles then 5 rows (a 4-row and a 1-row
# tile) with 3 columns past 8 panels and K past a 256-row chunk; 6 rows past the 8-row tiles;
# the LSTM LM's head (10 columns past 5 panels) and its table projection (2 rows past)
SHAPES = {"mlp_forward": (64, 256, 784), "every_remainder": (45, 131, 300),
          "six_rows_past": (38, 48, 785), "lstm_head": (512, 90, 64),
          "lstm_table_projection": (90, 256, 32)}


def check_product_with_transposed_b(monkeypatch, m, n, k, dtype, bias_relu=False):
    """x @ y^T (``bias_relu``: relu(x @ y^T + z)) of an m x k and an n x k matrix, compiled,
    against PyTorch and eager on 1-3 threads, on work memory filled with NaN; returns the
    compiled function."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(shape).astype(dtype) for shape in ((m, k), (n, k), (n,))]
    if not bias_relu:
        values.pop()

    def product(lib, x, y, z=None):
        out = x @ y.t()
        return out if z is None else lib.relu(out + z)

    compiled = tn.compile(lambda *args: product(tn, *args))
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for threads in (1, 2, 3):
        tn.set_num_threads(threads)  # (conftest.py restores the count)
        got = compiled(*map(tn.from_numpy, values)).numpy()
        eager = product(tn, *map(tn.from_numpy, values)).numpy()
        ref = product(torch, *map(torch.from_numpy, values)).numpy()
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(k))
        np.testing.assert_allclose(got, eager, rtol=tol, atol=tol * np.sqrt(k))
    return compiled


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SHAPES))
def test_product_with_transposed_b_matches_torch_and_eager(march, monkeypatch, name, dtype):
    compiled = check_product_with_transposed_b(monkeypatch, *SHAPES[name], dtype)
    assert _eight_row_tiles_taken(compiled.source(), march, dtype)


def check_linear_layer(monkeypatch, n_in, n_out, batches, threads, traced_at=None):
    """A linear layer + ReLU compiled once with a symbolic batch (first called at batch
    ``traced_at``, else at the first of ``batches``), at each of ``batches`` on ``threads``
    threads, on work memory filled with NaN: outputs and the input and parameter gradients
    against PyTorch. Returns the compiled layer."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    tn.manual_seed(0)
    layer = tn.nn.Sequential(tn.nn.Linear(n_in, n_out), tn.nn.ReLU())
    tlayer = torch.nn.Sequential(torch.nn.Linear(n_in, n_out), torch.nn.ReLU())
    _copy_to_torch(layer, tlayer)
    compiled = tn.compile(layer)
    tn.set_num_threads(threads)
    rng = np.random.default_rng(2)
    if traced_at is not None:
        compiled(tn.from_numpy(rng.standard_normal((traced_at, n_in)).astype(np.float32)))
    for batch in batches:
        x = rng.standard_normal((batch, n_in)).astype(np.float32)
        gy = rng.standard_normal((batch, n_out)).astype(np.float32)
        layer.zero_grad()
        tlayer.zero_grad()
        xt, tx = tn.from_numpy(x), torch.from_numpy(x)
        xt.requires_grad_(True)
        tx.requires_grad_(True)
        y, ty = compiled(xt), tlayer(tx)
        np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-4,
                                   atol=1e-4 * np.sqrt(n_in / 300))
        y.backward(tn.from_numpy(gy))
        ty.backward(torch.from_numpy(gy))
        np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer[0].weight.grad.numpy(), tlayer[0].weight.grad.numpy(),
                                   rtol=1e-4, atol=1e-4 * np.sqrt(batch))
        np.testing.assert_allclose(layer[0].bias.grad.numpy(), tlayer[0].bias.grad.numpy(),
                                   rtol=1e-4, atol=1e-4 * np.sqrt(batch))
    return compiled


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_linear_layer_at_symbolic_batch(march, monkeypatch, threads):
    """A linear layer + ReLU at batches 1, 37 (just past the 36 rows from which tn_gemm_nt
    packs panels) and 64."""
    compiled = check_linear_layer(monkeypatch, 300, 131, (1, 37, 64), threads)
    assert _eight_row_tiles_taken(compiled.source(), march, np.float32)
