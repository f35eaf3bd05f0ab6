"""Convolutions with few channels (LeNet's first layer: one input channel, six output
channels) at batch 1 and at a symbolic batch: the weight gradient's register tiles of dot
products along the positions (``_gemm.c.j2``'s tn_gemm_dots), built for AVX-512 and for AVX2 only,
against PyTorch's values and gradients."""
import os
import re

import numpy as np
import pytest
import torch

import tracenet as tn
import tracenet.nn as nn
from tracenet.runtime import target as runtime_target, toolchain
from test_conv_kernels import _copy_to_torch, _step_against_torch


MARCHES = ["native"] + (["x86-64-v3"] if os.uname().machine == "x86_64" else [])


@pytest.fixture(params=MARCHES)
def march(request, policy_cache, monkeypatch):
    if request.param != "native" and runtime_target.current().vector_bits < 512:
        # the same C (the templates choose by __AVX512F__), only tuned for another CPU: on a
        # machine without AVX-512 the native cases already run this target's code
        pytest.skip("the native build has no AVX-512: its cases cover the AVX2-only code")
    policy_cache(f"march-{request.param}")
    monkeypatch.setenv("TRACENET_MARCH", request.param)
    toolchain.reset()
    yield request.param
    monkeypatch.delenv("TRACENET_MARCH")
    toolchain.reset()


# name -> (layer, its torch twin's class, arguments, input shape without the batch);
# the tap counts leave 0, 1 and 2 taps past the register tiles, the channel counts rows
CASES = {
    "lenet_conv1": (nn.Conv2d, torch.nn.Conv2d, (1, 6, 5), {}, (1, 32, 32)),
    "odd_channels_padded": (nn.Conv2d, torch.nn.Conv2d, (3, 5, 3), dict(padding=1), (3, 9, 11)),
    "grouped_dilated": (nn.Conv2d, torch.nn.Conv2d, (4, 6, (2, 3)), dict(groups=2, dilation=2,
                                                                         padding=1), (4, 8, 7)),
    "one_output_channel": (nn.Conv2d, torch.nn.Conv2d, (2, 1, 3), {}, (2, 6, 6)),
    "conv3d": (nn.Conv3d, torch.nn.Conv3d, (2, 3, 3), dict(padding=1), (2, 4, 5, 6)),
    "conv1d": (nn.Conv1d, torch.nn.Conv1d, (3, 7, 4), {}, (3, 19)),
}


def _weight_gradient_body(source):
    bodies = re.findall(r"\bvoid (\w+)\(.*?\n\{(.*?)\n\}", source, re.S)
    return "".join(body for name, body in bodies if name.endswith("conv_backward_weight"))


def _step(compiled, model, tmodel, x, dtype):
    """One forward and backward through the compiled module and the torch twin, compared."""
    _step_against_torch(compiled, model, tmodel, x, 1e-4 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("name", list(CASES))
def test_few_channel_conv_matches_torch_batch1(march, name):
    layer, tlayer, args, kwargs, shape = CASES[name]
    tn.manual_seed(0)
    model = layer(*args, **kwargs)
    tmodel = tlayer(*args, **kwargs)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((1,) + shape).astype(np.float32)
    _step(compiled, model, tmodel, x, np.float32)
    assert re.search(r"\btn_gemm_dots_f(32|64)\(", _weight_gradient_body(compiled.source()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_channel_conv_symbolic_batch(march, dtype):
    """One specialisation at batch sizes 1, 2 and 5: the dot products add up over the images
    (and double vectors hold four lanes)."""
    tn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1))
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(),
                                 torch.nn.Conv2d(6, 5, 3, padding=1))
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for batch in (2, 5, 1):
        _step(compiled, model, tmodel, rng.standard_normal((batch, 1, 16, 15)).astype(dtype), dtype)
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source
    assert re.search(r"\btn_gemm_dots_f(32|64)\(", _weight_gradient_body(source))


@pytest.mark.parametrize("length", [10, 11, 18, 19, 26, 27, 34, 43])
def test_dot_products_of_every_tail_length(march, length):
    """A 1-d convolution of 4 taps on ``length`` positions: dot products of 7 to 40 terms, so
    the sums take every mix of steps of 16 floats (AVX-512), of 8 and single terms."""
    tn.manual_seed(0)
    model, tmodel = nn.Conv1d(2, 5, 4), torch.nn.Conv1d(2, 5, 4)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model, dynamic=False)
    x = np.random.default_rng(length).standard_normal((1, 2, length)).astype(np.float32)
    _step(compiled, model, tmodel, x, np.float32)
    assert re.search(r"\btn_gemm_dots_f32\(", _weight_gradient_body(compiled.source()))


def test_wide_vectors_round_as_narrow_ones(policy_cache, monkeypatch):
    """The convolutions' GEMM tiles on shifted views and gathered rows (LeNet's conv1 and
    conv2) sum each output in the order of its taps, whatever the vector width: built for
    this machine (16-float vectors with AVX-512) and for AVX2 only, the forward and the input
    gradient are bit for bit the same. (The weight gradients' dot products add up lanes,
    whose number differs.)"""
    if os.uname().machine != "x86_64":
        pytest.skip("x86-64 targets")
    tn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                          nn.ReLU(), nn.MaxPool2d(2))
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    results = []
    for march in MARCHES:
        policy_cache(f"march-{march}")
        monkeypatch.setenv("TRACENET_MARCH", march)
        toolchain.reset()
        compiled = tn.compile(model, dynamic=False)
        model.zero_grad()
        xv = tn.from_numpy(x.copy()).requires_grad_(True)
        out = compiled(xv)
        out.sum().backward()
        results.append([out.detach().numpy().copy(), xv.grad.numpy().copy()])
    monkeypatch.delenv("TRACENET_MARCH")
    toolchain.reset()
    for ours, theirs in zip(*results):
        np.testing.assert_array_equal(ours, theirs)
