"""conv [-> relu] -> max_pool with a gathered forward: the pooling reads the GEMM's
[positions][channels] result with vectors along the output channels (``_conv.c.j2``'s
``pool_channels``). Against PyTorch: outputs, argmax indices, input and parameter gradients,
at batch 1, at two batch sizes of one symbolic specialisation, with NaNs in the input (a NaN
wins its window) and with every arena NaN-filled; and which kernels take the path."""
import re

import numpy as np
import pytest
import torch

import tracenet as tn

from compile_checks import nan_filled_arenas


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _net(lib, conv, pool, relu, with_idx=False):
    """A convolution (``conv``: its class name and arguments), relu if ``relu``, max pooling
    (``pool``: arguments of ``max_pool2d``); the indices too if ``with_idx``."""
    nn, F = lib.nn, lib.nn.functional
    cls, args, kwargs = conv

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = getattr(nn, cls)(*args, **kwargs)

        def forward(self, x):
            y = self.conv(x)
            if relu:
                y = F.relu(y)
            return F.max_pool2d(y, *pool, return_indices=with_idx)
    return Net()


def _twins(conv, pool, relu, with_idx=False):
    tn.manual_seed(0)
    model, tmodel = _net(tn, conv, pool, relu, with_idx), _net(torch, conv, pool, relu, with_idx)
    theirs = dict(tmodel.state_dict())
    for name, value in model.state_dict().items():
        theirs[name].copy_(torch.from_numpy(np.array(value.numpy())))
    return model, tmodel


def _pools_channels(source):
    """Whether a convolution kernel pools along the channels of the gathered GEMM's result."""
    bodies = re.findall(r"\bvoid (\w+)\(.*?\n\{(.*?)\n\}", source, re.S)
    return any("conv" in name and "tn_ggemm_f32(" in body and "tn_vi32" in body
               for name, body in bodies)


def _step(compiled, model, tmodel, x, tol=1e-4):
    """Forward and backward against torch: output, input and parameter gradients."""
    model.zero_grad()
    tmodel.zero_grad()
    xn = tn.from_numpy(x).requires_grad_(True)
    xt = torch.from_numpy(x).requires_grad_(True)
    out, ref = compiled(xn), tmodel(xt)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=tol, atol=tol)
    gy = np.random.default_rng(1).standard_normal(ref.shape).astype(np.float32)
    out.backward(tn.from_numpy(gy))
    ref.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol)
    for (name, p), tp in zip(model.named_parameters(), tmodel.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=tol, atol=tol,
                                   err_msg=name)


# name -> (convolution, pooling arguments, relu, input shape)
CASES = {
    # LeNet's conv2 at batch 1
    "lenet_conv2_batch1": (("Conv2d", (6, 16, 5), {}), (2,), True, (1, 6, 14, 14)),
    # no relu, no bias, 3x3 windows of stride 2 on an 11x11 output
    "no_relu_3x3_pool": (("Conv2d", (8, 8, 3, 1, 1), dict(bias=False)), (3, 2), False,
                         (2, 8, 11, 11)),
    # strided grouped convolution, 16 output channels per group, a dilated pooling window
    "grouped_dilated_pool": (("Conv2d", (16, 32, 3, 2, 1), dict(groups=2)), (2, 1, 0, 2), True,
                             (2, 16, 13, 12)),
    # three vectors of output channels, a 3x2 window of stride (1, 2)
    "three_vectors_3x2": (("Conv2d", (6, 24, 4), {}), ((3, 2), (1, 2)), True, (2, 6, 12, 13)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_pool_channels_matches_torch(name):
    conv, pool, relu, shape = CASES[name]
    model, tmodel = _twins(conv, pool, relu)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _step(compiled, model, tmodel, x)
    assert _pools_channels(compiled.source())


def test_pool_channels_indices_and_nan_match_torch():
    """The argmax indices (ties between relu's zeros take the first in window order) and NaNs
    in the input, which win their windows, as in PyTorch."""
    model, tmodel = _twins(("Conv2d", (8, 16, 3), {}), (2,), True, with_idx=True)
    x = np.random.default_rng(2).standard_normal((2, 8, 10, 10)).astype(np.float32)
    x[0, 1, 4, 5] = np.nan
    x[1, :, :4, :4] = -50.0  # every channel's top-left windows all relu zeros
    compiled = tn.compile(model)
    with tn.no_grad():
        out, idx = compiled(tn.from_numpy(x))
    with torch.no_grad():
        tout, tidx = tmodel(torch.from_numpy(x))
    assert np.isnan(out.numpy()).any()
    np.testing.assert_allclose(out.numpy(), tout.numpy(), rtol=1e-4, atol=1e-4)
    finite = ~np.isnan(tout.numpy())
    assert idx.numpy().dtype == np.int64
    np.testing.assert_array_equal(idx.numpy()[finite], tidx.numpy()[finite])
    assert _pools_channels(compiled.source())


def test_pool_channels_symbolic_batch_and_nan_arenas(monkeypatch):
    """One compiled module at two batch sizes (the second specialisation has a symbolic
    batch), every arena NaN-filled: no read of memory the call did not write."""
    nan_filled_arenas(monkeypatch)
    model, tmodel = _twins(("Conv2d", (6, 16, 5), {}), (2,), True)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for batch in (3, 5, 2):
        _step(compiled, model, tmodel, rng.standard_normal((batch, 6, 14, 14)).astype(np.float32))
    assert _pools_channels(compiled.source())


def test_double_and_full_plane_keep_the_plane_path():
    """Doubles and a convolution whose relu output is also returned pool the planes."""
    model, tmodel = _twins(("Conv2d", (6, 16, 5), {}), (2,), True)
    model.double()
    tmodel.double()
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((2, 6, 14, 14))
    with tn.no_grad():
        out = compiled(tn.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), tmodel(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-9, atol=1e-9)
    assert not re.search(r"tn_vi32", compiled.source())

    class Both(tn.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = tn.nn.Conv2d(6, 16, 5)

        def forward(self, x):
            y = tn.nn.functional.relu(self.conv(x))
            return y, tn.nn.functional.max_pool2d(y, 2)
    both = Both()
    compiled = tn.compile(both)
    xf = tn.from_numpy(x.astype(np.float32))
    with tn.no_grad():
        y, p = compiled(xf)
        ry, rp = both(xf)
    np.testing.assert_allclose(y.numpy(), ry.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.numpy(), rp.numpy(), rtol=1e-5, atol=1e-5)
    assert not _pools_channels(compiled.source())
