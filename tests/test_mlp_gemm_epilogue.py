"""The linear layers' epilogues (bias, activation, the relu mask of an input gradient) as a
function of their own that every path calls (templates/gemm.c.j2's ``_epilogue``): written in
an OpenMP region, the loop read its pointers through the region's shared data and stayed
scalar. Two linear layers with a ReLU between them, forward and backward, against PyTorch and
eager at a symbolic batch (1, an odd one and 64), on work memory filled with NaN, serial and
split between 1-3 threads (by rows, by columns and, with AVX-512, the swapped forward), built
for AVX-512 and for AVX2 only."""
import re

import numpy as np
import pytest

import tracenet as tn
from compile_checks import nan_filled_arenas
from test_conv_kernels import _copy_to_torch
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from tracenet.codegen.target import Parallelism

torch = pytest.importorskip("torch")


def _two_layers(lib, n_in, n_hidden, n_out):
    nn = lib.nn
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_out))


def _bodies_calling_their_epilogue(source):
    """kernel name -> its body, for the kernels that call an epilogue function of their own"""
    bodies = re.findall(r"\bstatic void (\w+)\(const int64_t tn_N.*?\n\{(.*?)\n\}", source, re.S)
    return {name: body for name, body in bodies
            if f"__attribute__((noinline)) static void {name}_epilogue(" in source and
            f"{name}_epilogue(" in body}


# (inputs, hidden, outputs): odd sizes; the MLP's, whose forward is the swapped one with
# AVX-512 (from K = 512)
SIZES = {"odd": (37, 70, 13), "mlp": (784, 256, 10)}


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("name", list(SIZES))
def test_two_layers_match_torch_and_eager(march, monkeypatch, name, split):
    """``split``: every GEMM parallel (gemm_min_flops 0), on 1-3 threads; else the serial
    kernels of these sizes, on one thread."""
    nan_filled_arenas(monkeypatch)
    if split:
        monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    n_in, n_hidden, n_out = SIZES[name]
    tn.manual_seed(0)
    net, tnet = _two_layers(tn, n_in, n_hidden, n_out), _two_layers(torch, n_in, n_hidden, n_out)
    _copy_to_torch(net, tnet)
    compiled = tn.compile(net)
    rng = np.random.default_rng(1)
    for threads in (1, 2, 3) if split else (1,):
        tn.set_num_threads(threads)  # (conftest.py restores the count)
        for batch in (64, 1, 29):
            x = rng.standard_normal((batch, n_in)).astype(np.float32)
            gy = rng.standard_normal((batch, n_out)).astype(np.float32)
            net.zero_grad()
            tnet.zero_grad()
            xt, tx = tn.from_numpy(x), torch.from_numpy(x)
            xt.requires_grad_(True)
            tx.requires_grad_(True)
            y, ty = compiled(xt), tnet(tx)
            with tn.no_grad():
                eager = net(tn.from_numpy(x)).numpy()
            tol = 1e-4 * np.sqrt(n_in / 100)
            np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-4,
                                       atol=tol)
            np.testing.assert_allclose(y.detach().numpy(), eager, rtol=1e-4, atol=tol)
            y.backward(tn.from_numpy(gy))
            ty.backward(torch.from_numpy(gy))
            np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
            for p, tp in zip(net.parameters(), tnet.parameters()):
                np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-4,
                                           atol=1e-4 * np.sqrt(batch))
    bodies = _bodies_calling_their_epilogue(compiled.source())
    # the forward's bias and ReLU, and the input gradient's relu mask; in a parallel build,
    # from the kernels' OpenMP regions
    for kernel in ("gemm_relu", "gemm_threshold_backward"):
        body = next((b for k, b in bodies.items() if k.endswith(kernel)), None)
        assert body is not None, (kernel, list(bodies))
        assert "#pragma omp parallel" in body or not split, kernel
