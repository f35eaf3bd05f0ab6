"""A @ B^T with few rows (a linear layer's forward at a batch far below its sizes) with AVX-512,
float32: out^T = B A^T through tn_gemm_zmm on a copy of A^T, then out^T transposed into out and
the epilogue (gemm.c.j2, lowerings/gemm.py's _swapped); at sizes that leave every remainder
(rows and columns of the transpositions past their 8 x 8 blocks, rows of B past the 6-row
tiles, batch columns past a 64-column panel), with bias and ReLU, against PyTorch and eager,
built for AVX-512 and for AVX2 only (which keep tn_gemm_nt), on work memory filled with NaN and
split between 1-3 threads; at a symbolic batch on both sides of the 64 rows it starts at; and
float64, which keeps tn_gemm_nt."""
import numpy as np
import pytest

import tracenet as tn
from compile_checks import nan_filled_arenas
from test_conv_kernels import _copy_to_torch
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from tracenet.codegen.target import Parallelism
from tracenet.runtime import toolchain

torch = pytest.importorskip("torch")


def _swapped_built(source):
    return "_transpose(ot, " in source and "tn_gemm_zmm_f32(" in source


def _swapped_runs(march, dtype):
    """Whether the build takes the swapped path: float32 built for AVX-512."""
    return march == "native" and dtype == np.float32 and toolchain.vector_bits() >= 512


# (M, N, K) of a @ b^T: the MLP's forward; 70 rows (a panel of 64 and 6 columns for
# tn_gemm_wide, 6 past the transposition's blocks), 301 rows of b (a 1-row tile past the
# 6-row ones), K = 517 (5 past the blocks)
SHAPES = {"mlp_forward": (64, 256, 784), "every_remainder": (70, 301, 517)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SHAPES))
def test_linear_forward_matches_torch_and_eager(march, monkeypatch, name, dtype):
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    m, n, k = SHAPES[name]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype)
    c = rng.standard_normal(n).astype(dtype)
    compiled = tn.compile(lambda x, y, z: tn.relu(x @ y.t() + z))
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for threads in (1, 2, 3):
        tn.set_num_threads(threads)  # (conftest.py restores the count)
        args = [tn.from_numpy(v) for v in (a, b, c)]
        got = compiled(*args).numpy()
        eager = tn.relu(args[0] @ args[1].t() + args[2]).numpy()
        ta, tb, tc = (torch.from_numpy(v) for v in (a, b, c))
        ref = torch.relu(ta @ tb.t() + tc).numpy()
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(k))
        np.testing.assert_allclose(got, eager, rtol=tol, atol=tol * np.sqrt(k))
    built = _swapped_built(compiled.source())
    assert built == (dtype == np.float32)
    assert built and _swapped_runs(march, dtype) or not _swapped_runs(march, dtype)


def test_product_without_epilogue(march, monkeypatch):
    """x @ y^T alone (no bias, no activation): out^T transposed into out is the result."""
    nan_filled_arenas(monkeypatch)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 300)).astype(np.float32)
    b = rng.standard_normal((400, 300)).astype(np.float32)
    compiled = tn.compile(lambda x, y: x @ y.t())
    got = compiled(tn.from_numpy(a), tn.from_numpy(b)).numpy()
    ref = (torch.from_numpy(a) @ torch.from_numpy(b).t()).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.sqrt(300))
    assert _swapped_built(compiled.source())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_linear_layer_at_symbolic_batch(march, monkeypatch, threads):
    """A linear layer + ReLU compiled once with a symbolic batch, at batches 64 and 100 (the
    swapped path) and 1 and 63 (tn_gemm_nt): output and the input and parameter gradients
    against PyTorch."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    tn.manual_seed(0)
    layer = tn.nn.Sequential(tn.nn.Linear(600, 330), tn.nn.ReLU())
    tlayer = torch.nn.Sequential(torch.nn.Linear(600, 330), torch.nn.ReLU())
    _copy_to_torch(layer, tlayer)
    tn.set_num_threads(threads)
    rng = np.random.default_rng(2)
    x64 = rng.standard_normal((64, 600)).astype(np.float32)
    compiled = tn.compile(layer)
    compiled(tn.from_numpy(x64))  # traced at 64: the swapped path is compiled in
    for batch in (64, 100, 1, 63):
        x = rng.standard_normal((batch, 600)).astype(np.float32)
        gy = rng.standard_normal((batch, 330)).astype(np.float32)
        layer.zero_grad()
        tlayer.zero_grad()
        xt, tx = tn.from_numpy(x), torch.from_numpy(x)
        xt.requires_grad_(True)
        tx.requires_grad_(True)
        y, ty = compiled(xt), tlayer(tx)
        np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-4,
                                   atol=1e-4 * np.sqrt(600))
        y.backward(tn.from_numpy(gy))
        ty.backward(torch.from_numpy(gy))
        np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer[0].weight.grad.numpy(), tlayer[0].weight.grad.numpy(),
                                   rtol=1e-4, atol=1e-4 * np.sqrt(batch))
    source = compiled.source()
    assert _swapped_built(source) and "if ((tn_N) >= 64 && " in source
