"""The input gradient of stride-1 2-d convolutions whose flipped form would multiply many zeros
(a large kernel on a small image, LeNet's conv2; padding past the kernel's reach): one GEMM per
kernel row, the row's taps folded into the GEMM's depth, from four images on, and the per-tap
GEMMs below. A symbolic batch compiles both and picks one per call, so batches 1, 3, 4 and 6 of
one specialisation cross over; a fixed batch compiles one. Against PyTorch, float32 and
float64, built for AVX-512 and for AVX2 only, with work memory filled with NaN (a position the
kernel forgot to write or zero shows)."""
import os
import re
import sys

import numpy as np
import pytest
import torch

import tracenet as tn
import tracenet.nn as nn
from compile_checks import nan_filled_arenas
from test_conv_kernels import _copy_to_torch, _step_against_torch
from test_conv_small_channels import march  # noqa: F401  (the fixture)


def _functions(source):
    return dict(re.findall(r"\bvoid (\w+conv_backward_input\w*)\(.*?\n\{(.*?)\n\}", source, re.S))


# name -> (Conv2d arguments, keyword arguments, input shape without the batch); every one has
# an input channel ahead, so the input gradient is computed
CASES = {
    "lenet_conv2": ((6, 16, 5), {}, (6, 14, 14)),
    "padding_past_reach": ((4, 5, 2), dict(padding=2), (4, 5, 6)),
    "dilated_padded_odd": ((5, 7, 3), dict(dilation=2, padding=1), (5, 9, 10)),
    "grouped_wide_kernel": ((6, 4, (3, 5)), dict(groups=2, padding=(0, 1)), (6, 7, 9)),
    "double_vector_rounding": ((3, 2, 4), {}, (3, 5, 7)),
}


def _pair(args, kwargs, dtype):
    tn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(args[0], args[0], 1), nn.Conv2d(*args, **kwargs))
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(args[0], args[0], 1),
                                 torch.nn.Conv2d(*args, **kwargs))
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    return model, tmodel


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_row_folded_input_gradient_symbolic_batch(march, monkeypatch, name, dtype):
    nan_filled_arenas(monkeypatch)
    args, kwargs, shape = CASES[name]
    model, tmodel = _pair(args, kwargs, dtype)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    tol = 1e-4 if dtype == np.float32 else 1e-9
    for batch in (1, 4, 3, 6):
        x = rng.standard_normal((batch,) + shape).astype(dtype)
        _step_against_torch(compiled, model, tmodel, x, tol, what=f"batch {batch}")
    assert len(compiled.specialisations) == 1
    names = set(_functions(compiled.source()))
    # (the 1x1 convolution's input gradient is never asked for)
    assert any(n.endswith("_folded") for n in names), names
    assert any(n.endswith("_taps") for n in names), names


@pytest.mark.parametrize("batch, folded", [(2, False), (5, True)])
def test_fixed_batch_compiles_one_form(batch, folded, policy_cache, monkeypatch):
    policy_cache("usual")
    nan_filled_arenas(monkeypatch)
    args, kwargs, shape = CASES["lenet_conv2"]
    model, tmodel = _pair(args, kwargs, np.float32)
    compiled = tn.compile(model, dynamic=False)
    x = np.random.default_rng(0).standard_normal((batch,) + shape).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    bodies = _functions(compiled.source())
    assert not any(n.endswith(("_folded", "_taps")) for n in bodies), set(bodies)
    assert any("_rows, dst + kh" in body for body in bodies.values()) == folded


def test_lenet_training_steps_cross_the_threshold_as_in_torch(policy_cache, monkeypatch):
    """LeNet's compiled step (conv2's input gradient among its kernels) at batch 1 and 8 in one
    specialisation: the losses of three SGD steps equal PyTorch's."""
    policy_cache("usual")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
    from lenet import copy_weights, lenet
    for batch in (1, 8):
        torch.manual_seed(0)
        tnet, net = lenet(tn), lenet(torch)
        copy_weights(net, tnet)
        topt = tn.optim.SGD(tnet.parameters(), lr=0.05, momentum=0.9)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        step = tn.compile_step(lambda a, b: tn.nn.CrossEntropyLoss()(tnet(a), b), topt)
        rng = np.random.default_rng(batch)
        x = rng.standard_normal((batch, 1, 32, 32)).astype(np.float32)
        y = rng.integers(0, 10, batch)
        for _ in range(3):
            loss = step(tn.from_numpy(x), tn.from_numpy(y))
            opt.zero_grad()
            ref = torch.nn.CrossEntropyLoss()(net(torch.from_numpy(x)), torch.from_numpy(y))
            ref.backward()
            opt.step()
            np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-4, atol=1e-5)
