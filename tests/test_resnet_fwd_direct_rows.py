"""The Winograd kernels' output rows stored straight into the output where no epilogue is
applied and the tiles are whole (templates/conv_winograd_f4.c.j2's vector outputs, forward and
input gradient; conv_winograd_s2.c.j2's forward and conv_winograd_s2_input.c.j2's input
gradient), and a training batch norm's statistics summed in vectors of lanes
(templates/_batch_stats.c.j2). Against PyTorch and eager mode: one, two and four images a
block, a last block of fewer images (which keeps the buffer), edge tiles cut (which keep it),
a fused epilogue (which keeps it), batch 1, a symbolic batch, float64, builds for AVX-512 and
for AVX2 only, NaN-filled work memory on 1-3 threads; the statistics over runs with a tail,
of several runs, in float64."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn
from tracenet.codegen.lowerings import conv

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _step_against_torch, _stepped_twins
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_conv_winograd import _forms
from test_resnet_stride2_winograd import STRIDE2, STRIDE2_INPUT

# the kernels' comments where the rows go straight into the output
DIRECT = "no epilogue: the rows straight into the output"
DIRECT_INPUT = "whole tiles: straight into the image gradient"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _net(lib, cin, cout, stride, bias):
    """A 1x1 convolution before (so the 3x3 one's input gradient is taken), the 3x3 one."""
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(cin, cin, 1), nn.Conv2d(cin, cout, 3, stride, 1, bias=bias))


def _direct(source):
    """(kernels storing their rows straight into the output, of them stride-2 input gradients)."""
    return source.count(DIRECT), source.count(DIRECT_INPUT)


# name -> (in channels, out channels, stride, bias, input shape, dtype, direct forwards and
# stride-1 input gradients, direct stride-2 input gradients)
CASES = {
    # the ResNet's 16-channel 32x32 convolution: one image a block, forward and input gradient
    "f4_resnet_32x32": (16, 16, 1, False, (2, 16, 32, 32), np.float32, 2, 0),
    # two images a block, the last of one (that block keeps the buffer)
    "f4_two_images_16x16_batch3": (32, 24, 1, False, (3, 32, 16, 16), np.float32, 2, 0),
    # four images a block, the last of one
    "f4_four_images_8x16_batch5": (16, 16, 1, False, (5, 16, 16, 8), np.float32, 2, 0),
    # the bias is an epilogue: the forward keeps the buffer, the input gradient does not
    "f4_bias": (16, 16, 1, True, (2, 16, 32, 32), np.float32, 1, 0),
    # 30 columns in eight tiles, cut: the buffer
    "f4_cut_edges_30x30": (16, 8, 1, False, (2, 16, 30, 30), np.float32, 0, 0),
    # float64 keeps F(2x2), which has no such path
    "f2_float64": (16, 16, 1, False, (2, 16, 16, 16), np.float64, 0, 0),
    # the ResNet's 16 -> 32 downsampling: one image a block
    "s2_resnet_16_32": (16, 32, 2, False, (2, 16, 32, 32), np.float32, 1, 1),
    # 32 -> 64 on 16x16: two images a forward block, the last of one; two a gradient block
    "s2_resnet_32_64_batch3": (32, 64, 2, False, (3, 32, 16, 16), np.float32, 1, 1),
    # odd sizes: edge tiles cut, both keep the buffer
    "s2_odd_11x13": (16, 32, 2, False, (3, 16, 11, 13), np.float32, 0, 0),
    # 12x20: the forward's 6x10 outputs in whole 2x2 tiles, its three tiles a row no vectors;
    # the gradient's 12x20 in whole 4x4 tiles
    "s2_12x20_batch1": (24, 24, 2, True, (1, 24, 12, 20), np.float32, 0, 1),
    "s2_float64": (16, 32, 2, False, (2, 16, 16, 16), np.float64, 0, 1),
}


# the default run: each expected store form, one image a block and two with the last block
# of one (stride 1 and stride 2), the bias, cut edges, batch 1 and float64 F(2x2); four images a
# block, the ResNet's 16 -> 32 downsampling (one image a block, as 32 -> 64's full blocks) and
# stride 2 in float64 (as s2_12x20_batch1's forms) with -m sweep
DEFAULT_CASES = {"f4_resnet_32x32", "f4_two_images_16x16_batch3", "f4_bias", "f4_cut_edges_30x30",
                 "f2_float64", "s2_resnet_32_64_batch3", "s2_odd_11x13", "s2_12x20_batch1"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_direct_rows_match_torch_and_eager(march, name):
    cin, cout, stride, bias, shape, dtype, direct, direct_input = CASES[name]
    tn.manual_seed(0)
    model, tmodel = _net(tn, cin, cout, stride, bias), _net(torch, cin, cout, stride, bias)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model, dynamic=shape[0] != 1)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    _step_against_torch(compiled, model, tmodel, x, 1e-9 if dtype == np.float64 else 1e-4)
    source = compiled.source()
    if stride == 1 and dtype == np.float32:
        assert _forms(source, 4)[:2] == (1, 1)
    if stride == 2:
        assert len(re.findall(STRIDE2, source)) == len(re.findall(STRIDE2_INPUT, source)) == 1
    assert _direct(source) == (direct, direct_input)
    check_compiled(model, shape, dtype=tn.float64 if dtype == np.float64 else tn.float32)


@pytest.mark.parametrize("stride,size", [(1, 16), (2, 16)])
def test_symbolic_batch(stride, size):
    """One compiled module at batch 3, 1 and 2: blocks of two images, of one, the last of one
    (the buffer)."""
    compiled = _stepped_twins(
        lambda lib: _net(lib, 16, 32, stride, False),
        [(batch, 16, size, size) for batch in (3, 1, 2)])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source and _direct(source) == ((2, 0) if stride == 1 else (1, 1))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("stride,size,direct", [(1, 16, (2, 0)), (2, 16, (1, 1)),
                                                (2, 12, (0, 1))])
def test_nan_arena_threads(nan_arenas_split, threads, stride, size, direct):
    """Five and two images split between threads, work memory all NaN: every output element
    is written by the direct stores (12x12 to 6x6 by stride 2: three tiles a row, the forward
    keeps the buffer)."""
    tn.set_num_threads(threads)
    compiled = _stepped_twins(
        lambda lib: _net(lib, 16, 32, stride, False),
        [(batch, 16, size, size) for batch in (5, 2)])
    source = compiled.source()
    assert _direct(source) == direct and "omp_get_thread_num()" in source


def _conv_bn(lib, cin, cout, stride):
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


# name -> (in channels, out channels, stride, input shape, dtype): the statistics' runs of a
# block's rows of a plane
STATISTICS = {
    # 16 rows of 32: two runs of 256, no tail
    "f4_32x32": (16, 16, 1, (3, 16, 32, 32), np.float32),
    # 8x10 planes, a block of whole images: runs of 80 (a tail of 16 past the vectors)
    "f4_8x10": (16, 16, 1, (5, 16, 8, 10), np.float32),
    # 14x14, a block of whole images: runs of 196 (a tail of 4)
    "f4_14x14": (16, 16, 1, (2, 16, 14, 14), np.float32),
    # stride 2 on 11x13 inputs: 6x7 outputs, runs of 42 (a tail of 10)
    "s2_11x13": (16, 32, 2, (3, 16, 11, 13), np.float32),
    # the stem's general kernel: 3 channels, planes of 1024 (four runs)
    "stem_32x32": (3, 16, 1, (2, 3, 32, 32), np.float32),
    "float64_12x12": (16, 16, 1, (2, 16, 12, 12), np.float64),
}


def _step_against_torch_and_float64(compiled, model, tmodel, exact, x, tol):
    """``_step_against_torch`` for float32, with the parameter gradients against ``exact`` (a
    float64 twin): the inputs' mean of 3 makes the weight gradient's sums over N x H x W cancel
    to values near 0 in places, where PyTorch's float32 sum and ours both round ~5e-4 away from
    the exact one on gradients up to ~260, so element by element they may differ by more than
    ``tol``; ours must be no further from the exact gradient than PyTorch's is, give or take
    ``tol`` (on every element: a far tighter bound than ``tol`` relative to PyTorch's on the
    large ones)."""
    model.zero_grad()
    tmodel.zero_grad()
    exact.zero_grad()
    xn = tn.from_numpy(x).requires_grad_(True)
    xt = torch.from_numpy(x).requires_grad_(True)
    out, ref, ref64 = compiled(xn), tmodel(xt), exact(torch.from_numpy(x).double())
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=tol, atol=tol)
    gy = np.random.default_rng(1).standard_normal(ref.shape).astype(x.dtype)
    out.backward(tn.from_numpy(gy))
    ref.backward(torch.from_numpy(gy))
    ref64.backward(torch.from_numpy(gy).double())
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol)
    for (name, p), tp, tp64 in zip(model.named_parameters(), tmodel.parameters(),
                                   exact.parameters()):
        want = tp64.grad.numpy()
        ours = np.abs(p.grad.numpy() - want).max()
        theirs = np.abs(tp.grad.numpy() - want).max()
        assert ours <= theirs + tol, (name, ours, theirs)


# the default run: runs without a tail, with a tail of a few values (14x14), stride 2's, the
# stem's general kernel and float64; 8x10 (whole images with a tail, as 14x14) with -m sweep
DEFAULT_STATISTICS = {"f4_32x32", "f4_14x14", "s2_11x13", "stem_32x32", "float64_12x12"}


@sweep.keep(lambda p: p["name"] in DEFAULT_STATISTICS)
@pytest.mark.parametrize("name", list(STATISTICS))
def test_training_statistics_in_lanes_match_torch(name, monkeypatch):
    """The batch norm's statistics summed in the convolution's epilogue in vectors of lanes:
    the normalised output, gradients and running statistics follow PyTorch's. (Three input
    channels take the few-channel register tiles, tests/test_resnet_stem_kernels.py, unless
    they are turned off, as here.)"""
    monkeypatch.setattr(conv, "_few_channels_geometry", lambda *args: None)
    cin, cout, stride, shape, dtype = STATISTICS[name]
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _conv_bn(tn, cin, cout, stride), _conv_bn(torch, cin, cout, stride)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    tol = 1e-9 if dtype == np.float64 else 2e-4
    exact = _conv_bn(torch, cin, cout, stride).double()
    exact.load_state_dict({k: v.double() if v.is_floating_point() else v
                           for k, v in tmodel.state_dict().items()})
    for _ in range(2):
        x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
        if dtype == np.float64:
            _step_against_torch(compiled, model, tmodel, x, tol)
        else:
            _step_against_torch_and_float64(compiled, model, tmodel, exact, x, tol)
    for stat in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(model[1], stat).numpy(),
                                   getattr(tmodel[1], stat).numpy(), rtol=tol, atol=tol)
    source = compiled.source()
    assert "the batch statistics per block" in source or "per output plane" in source
    assert "tn_stat_v s0 = {0}, q0 = {0}, s1 = {0}, q1 = {0};" in source
