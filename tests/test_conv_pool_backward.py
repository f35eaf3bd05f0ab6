"""The fused backward of conv -> relu -> max_pool (the relu mask on the pooled gradient, the
scatter to the argmax and the bias gradient in one pass per plane) against PyTorch, on 2x2
stride-2 windows (LeNet's, with rows of 14 and of 8 windows), overlapping windows, odd planes
and narrow rows; the forward's 2x2 epilogue reads the GEMM output. Planes tiled by 2x2 windows
of stride 2 with 8 or more per row are written densely, eight windows a step (an overlapping
pooling of the same sizes falls back to the scatter). Built for AVX-512 and for AVX2 only, at
batch 1 and at a symbolic batch, without a bias, and with every arena NaN-filled."""
import re

import numpy as np
import pytest
import torch

import tracenet as tn
import tracenet.nn as nn
from compile_checks import nan_filled_arenas
from test_conv_kernels import _copy_to_torch
from test_conv_small_channels import march  # noqa: F401  (the fixture)


def _pool_backward_bodies(source):
    bodies = re.findall(r"\bvoid (\w+)\(.*?\n\{(.*?)\n\}", source, re.S)
    return [body for name, body in bodies if "threshold_backward_max_pool_backward" in name]


def _net(lib, channels, pool, bias=True):
    nn_ = lib.nn
    return nn_.Sequential(nn_.Conv2d(channels, 6, 3, padding=1, bias=bias), nn_.ReLU(),
                          nn_.MaxPool2d(**pool))


def _check(model, tmodel, compiled, x):
    model.zero_grad()
    tmodel.zero_grad()
    xn = tn.from_numpy(x).requires_grad_(True)
    xt = torch.from_numpy(x).requires_grad_(True)
    out, ref = compiled(xn), tmodel(xt)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=1e-4, atol=1e-4)
    gy = np.random.default_rng(1).standard_normal(ref.shape).astype(np.float32)
    out.backward(tn.from_numpy(gy))
    ref.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    for (name, p), tp in zip(model.named_parameters(), tmodel.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-4, atol=1e-3,
                                   err_msg=name)


# name -> (input shape without the batch, MaxPool2d arguments)
CASES = {
    # LeNet's first layer: 14 pooled columns, the forward's last block of eight redone overlapping
    "lenet_28x28": ((1, 28, 28), dict(kernel_size=2)),
    "two_blocks_16x16": ((2, 16, 16), dict(kernel_size=2, stride=2)),
    "overlapping_3x3_stride2": ((2, 16, 18), dict(kernel_size=3, stride=2, padding=1)),
    "odd_plane": ((1, 17, 19), dict(kernel_size=2)),
    "narrow_rows": ((3, 10, 10), dict(kernel_size=2)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_conv_relu_pool_backward_matches_torch(march, name):
    shape, pool = CASES[name]
    tn.manual_seed(0)
    model, tmodel = _net(tn, shape[0], pool), _net(torch, shape[0], pool)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        _check(model, tmodel, compiled, rng.standard_normal((batch,) + shape).astype(np.float32))
    assert len(_pool_backward_bodies(compiled.source())) == 1  # (the fused kernel)


def test_conv_relu_pool_backward_symbolic_batch_and_ties(march):
    """One specialisation at batch sizes 2, 5 and 1, with inputs whose relu output is 0 over
    whole windows (ties: the first position is the argmax, and the mask passes nothing)."""
    tn.manual_seed(0)
    model, tmodel = _net(tn, 2, dict(kernel_size=2)), _net(torch, 2, dict(kernel_size=2))
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for batch in (2, 5, 1):
        x = rng.standard_normal((batch, 2, 20, 24)).astype(np.float32)
        x[:, :, :8] = -50.0  # (the conv's output there is negative: relu gives 0)
        _check(model, tmodel, compiled, x)
    assert len(compiled.specialisations) == 1
    assert "tn_N" in compiled.source()
    assert len(_pool_backward_bodies(compiled.source())) == 1


# the cases whose planes the backward writes densely (the overlapping windows' code has the
# dense path too, and falls back to the scatter at run time)
DENSE = {"lenet_28x28": True, "two_blocks_16x16": True, "overlapping_3x3_stride2": True,
         "odd_plane": False, "narrow_rows": False}


@pytest.mark.parametrize("name", list(CASES))
def test_dense_pool_backward_by_geometry(name):
    shape, pool = CASES[name]
    tn.manual_seed(0)
    compiled = tn.compile(_net(tn, shape[0], pool))
    x = tn.randn(2, *shape, requires_grad=True)
    compiled(x).sum().backward()
    (body,) = _pool_backward_bodies(compiled.source())
    assert ("tn_pf" in body) is DENSE[name]


def test_dense_pool_backward_no_bias_nan_arenas(march, monkeypatch):
    """Without a bias (no bias gradient), every arena NaN-filled: every element of the input
    gradient is written, by the dense path and by the fallback of overlapping windows."""
    nan_filled_arenas(monkeypatch)
    for pool in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)):
        tn.manual_seed(0)
        model = _net(tn, 2, pool, bias=False)
        tmodel = _net(torch, 2, pool, bias=False)
        _copy_to_torch(model, tmodel)
        compiled = tn.compile(model)
        rng = np.random.default_rng(0)
        for batch in (1, 3):
            x = rng.standard_normal((batch, 2, 16, 20)).astype(np.float32)
            x[:, :, :5] = -50.0  # relu zeros over whole windows
            _check(model, tmodel, compiled, x)
        assert "tn_pf" in _pool_backward_bodies(compiled.source())[0]
