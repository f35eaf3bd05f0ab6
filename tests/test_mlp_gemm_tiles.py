"""The linear layers' GEMM with AVX-512 (tn_gemm_wide in templates/_gemm.c.j2, float32): packed
panels of three vectors and register tiles of 8 rows x 3 vectors, products whose sizes leave
every remainder (rows
past the 8-row tiles, columns past the three-vector panels, K past a packed chunk), against
PyTorch and eager, in float32 and float64, built for AVX-512 and for AVX2 only, on work memory
filled with NaN and split between 1-3 threads; and the MLP's weight gradient at a symbolic
batch."""
import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as nn
from compile_checks import nan_filled_arenas
from test_conv_kernels import _copy_to_torch
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from tracenet.codegen.target import Parallelism
from tracenet.runtime import toolchain

torch = pytest.importorskip("torch")


def _wide_tiles_compiled(source, march, dtype):
    """Whether the build multiplies float32 panels with the wide tiles (AVX-512 only: through
    tn_gemm_zmm, whose columns past its panels tn_gemm_wide takes), checked against the source
    and the compiler's vector width."""
    wide = "tn_gemm_zmm_f32(rows" in source and toolchain.vector_bits() >= 512
    return wide == (march == "native" and dtype == np.float32 and
                    toolchain.vector_bits() >= 512)


# name -> (M, N, K) of a^T @ b (the weight gradient's layout: a is K x M, b K x N)
SHAPES = {
    "mlp_weight_gradient": (256, 784, 64),
    # 8-row tiles and 5 rows past them; 11 three-vector panels, one of two, one vector, 3 columns
    "every_remainder": (37, 24 * 11 + 16 + 8 + 3, 300),
    "fewest_packed_rows": (24, 256, 1),
    "one_panel_past_k_chunks": (29, 280, 513),
}


def check_transposed_product(monkeypatch, m, n, k, dtype):
    """x^T @ y of a k x m and a k x n matrix, compiled, against PyTorch and eager on 1-3
    threads, on work memory filled with NaN; returns the compiled function."""
    nan_filled_arenas(monkeypatch)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    compiled = tn.compile(lambda x, y: x.t() @ y)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for threads in (1, 2, 3):
        tn.set_num_threads(threads)  # (conftest.py restores the count)
        got = compiled(tn.from_numpy(a), tn.from_numpy(b)).numpy()
        eager = (tn.from_numpy(a).t() @ tn.from_numpy(b)).numpy()
        ref = (torch.from_numpy(a).t() @ torch.from_numpy(b)).numpy()
        scale = np.sqrt(k)
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale)
        np.testing.assert_allclose(got, eager, rtol=tol, atol=tol * scale)
    return compiled


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SHAPES))
def test_transposed_product_matches_torch_and_eager(march, monkeypatch, name, dtype):
    compiled = check_transposed_product(monkeypatch, *SHAPES[name], dtype)
    assert _wide_tiles_compiled(compiled.source(), march, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plain_product_matches_torch(march, monkeypatch, dtype):
    """a @ b with b's rows 300 apart: packed, every remainder."""
    nan_filled_arenas(monkeypatch)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((45, 70)).astype(dtype)
    b = rng.standard_normal((70, 300)).astype(dtype)
    compiled = tn.compile(lambda x, y: x @ y)
    got = compiled(tn.from_numpy(a), tn.from_numpy(b)).numpy()
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(got, (torch.from_numpy(a) @ torch.from_numpy(b)).numpy(),
                               rtol=tol, atol=tol * 10)
    assert _wide_tiles_compiled(compiled.source(), march, dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_weight_gradient_at_symbolic_batch(march, monkeypatch, threads):
    """A linear layer's weight gradient (out x in = dy^T x) through a compiled forward and
    backward whose batch is a symbol, at batch 1, 5 and 64, split between threads however
    small."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    tn.manual_seed(0)
    layer = nn.Linear(300, 37)
    tlayer = torch.nn.Linear(300, 37)
    _copy_to_torch(layer, tlayer)
    compiled = tn.compile(layer)
    tn.set_num_threads(threads)
    rng = np.random.default_rng(2)
    for batch in (1, 5, 64):
        x = rng.standard_normal((batch, 300)).astype(np.float32)
        gy = rng.standard_normal((batch, 37)).astype(np.float32)
        layer.zero_grad()
        tlayer.zero_grad()
        compiled(tn.from_numpy(x)).backward(tn.from_numpy(gy))
        tlayer(torch.from_numpy(x)).backward(torch.from_numpy(gy))
        np.testing.assert_allclose(layer.weight.grad.numpy(), tlayer.weight.grad.numpy(),
                                   rtol=1e-4, atol=1e-4 * np.sqrt(batch))
    assert _wide_tiles_compiled(compiled.source(), march, np.float32)
