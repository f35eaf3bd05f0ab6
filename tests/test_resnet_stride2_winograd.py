"""The forward and input gradient of 3x3 convolutions of stride 2 and padding 1 by Winograd
forms of their phases (lowerings/conv_winograd_s2.py): against PyTorch (values, input and
weight gradients) and eager mode over the ResNet's channel counts, odd sizes (edge tiles cut,
inputs past the edge), a last block of fewer images, batch 1, a symbolic batch, float64, with
and without bias; the fused epilogues (eval-mode batch norm, residual add, relu; a training
batch norm's statistics); work memory filled with NaN on 1-3 threads; other shapes keep the
general kernels."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _eval_follows_statistics, _step_against_torch, \
    _stepped_twins

# the kernels' comments (templates/conv_winograd_s2.c.j2, conv_winograd_s2_input.c.j2)
STRIDE2 = re.escape("stride-2 3x3 convolution by its phases' Winograd forms (") + \
    r"(?:25 products per 2x2|81 products per 4x4) outputs\)"
STRIDE2_INPUT = re.escape("stride-2 3x3 convolution input gradient by its phases' Winograd "
                          "forms (") + r"(?:25 products per 4x4|81 products per 8x8) values\)"
INTERLEAVED = re.compile(r"\((\d+) image\(s\) interleaved\)")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _taken(source):
    """How many stride-2 convolutions of the compiled source take the phases' Winograd form:
    forwards and input gradients."""
    return len(re.findall(STRIDE2, source)), len(re.findall(STRIDE2_INPUT, source))


def _net(lib, cin, cout, bias):
    """A convolution before (so the strided one's input gradient flows back through it), the
    strided one, a relu after it."""
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(cin, cin, 1), nn.Conv2d(cin, cout, 3, 2, 1, bias=bias),
                         nn.ReLU())


# name -> (in channels, out channels, bias, input shape, dtype, images per block)
CASES = {
    # tiles of 4x4 outputs (test_resnet_s2_f4.py): two images a block; eight, the last of three
    "resnet_16_32": (16, 32, False, (2, 16, 32, 32), np.float32, 2),
    "resnet_32_64_batch3": (32, 64, False, (3, 32, 16, 16), np.float32, 8),
    # odd sizes: the last tile row and column cut, inputs past the edge read as zeros
    "odd_11x13_bias": (16, 32, True, (3, 16, 11, 13), np.float32, 3),
    # four tiles an image: eight images a block, of which two are there
    "odd_channels_7x6": (17, 33, False, (2, 17, 7, 6), np.float32, 8),
    "batch1_wide_6x40": (24, 24, True, (1, 24, 6, 40), np.float32, 2),
    "float64_odd": (16, 33, True, (2, 16, 9, 10), np.float64, 4),
    "float64_32x32": (16, 32, False, (1, 16, 32, 32), np.float64, 2),
}

# the default run: one case of each block width (two images of 4x4 outputs, two at batch 1,
# three, eight of which two are there, four in float64); the 32 -> 64 ResNet shape
# (test_resnet_s2_f4.py) and float64 on 32x32 with -m sweep
DEFAULT_CASES = {"resnet_16_32", "odd_11x13_bias", "odd_channels_7x6", "batch1_wide_6x40",
                 "float64_odd"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_stride2_forward_matches_torch_and_eager(name):
    cin, cout, bias, shape, dtype, images = CASES[name]
    tn.manual_seed(0)
    model, tmodel = _net(tn, cin, cout, bias), _net(torch, cin, cout, bias)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    _step_against_torch(compiled, model, tmodel, x, 1e-9 if dtype == np.float64 else 1e-4)
    source = compiled.source()
    assert _taken(source) == (1, 1)
    assert {int(j) for j in INTERLEAVED.findall(source)} == {images}
    check_compiled(model, shape, dtype=tn.float64 if dtype == np.float64 else tn.float32)


def test_symbolic_batch():
    """One compiled module at batch 3, 1 and 5: blocks of two 16x16 images, the last of one."""
    compiled = _stepped_twins(
        lambda lib: _net(lib, 16, 32, True), [(batch, 16, 16, 16) for batch in (3, 1, 5)])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source and _taken(source) == (1, 1)


def _down_block(lib, bias):
    """The ResNet's downsampling block: a stride-2 convolution, batch norm, relu; a stride-1
    one and batch norm; the 1x1 stride-2 shortcut added, relu."""
    nn_, F = lib.nn, lib.nn.functional

    class Block(nn_.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn_.Conv2d(16, 32, 3, 2, 1, bias=bias)
            self.bn1 = nn_.BatchNorm2d(32)
            self.conv2 = nn_.Conv2d(32, 32, 3, 1, 1, bias=False)
            self.bn2 = nn_.BatchNorm2d(32)
            self.short = nn_.Sequential(nn_.Conv2d(16, 32, 1, 2, bias=False),
                                        nn_.BatchNorm2d(32))

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(y)) + self.short(x))
    return Block()


@pytest.mark.parametrize("bias", [False, True])
def test_eval_batch_norm_relu_fused(bias):
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _down_block(tn, bias), _down_block(torch, bias)
    source = _eval_follows_statistics(model, tmodel, (3, 16, 15, 18))
    assert re.search(STRIDE2 + r",\s+\S+ -> \S+, then bias, eval-mode batch norm, relu",
                     source)
    assert _taken(source) == (1, 0)


def _strided_residual(lib):
    """relu(bn(conv_stride2(x)) + pool(x)) * (bn(...) + pool(x)): the eval-mode batch norm and
    the residual in the strided convolution's epilogue, the value before the relu kept for
    the product after."""

    class Net(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = lib.nn.Conv2d(24, 24, 3, 2, 1)
            self.bn = lib.nn.BatchNorm2d(24)
            self.pool = lib.nn.AvgPool2d(2)

        def forward(self, x):
            c = self.bn(self.conv(x)) + self.pool(x)
            return lib.nn.functional.relu(c) * c
    return Net()


def test_eval_residual_and_relu_with_the_value_before_it_kept():
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _strided_residual(tn), _strided_residual(torch)
    _copy_to_torch(model, tmodel)
    source = _eval_follows_statistics(model, tmodel, (3, 24, 14, 10))
    assert re.search(STRIDE2 + r",\s+\S+ -> \S+, then bias, eval-mode batch norm, "
                     r"the residual, relu", source)
    assert "rdst[ow] = v <= 0 ? 0 : v" in source and _taken(source) == (1, 0)


def test_training_statistics_match_torch():
    """Training mode: the batch norm's statistics summed in the strided convolution's
    epilogue, per block of rows; the running statistics follow PyTorch's."""
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _down_block(tn, False), _down_block(torch, False)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = (rng.standard_normal((4, 16, 13, 16)) * 2 + 3).astype(np.float32)
        _step_against_torch(compiled, model, tmodel, x, 2e-4)
    for name, m in model.named_modules():
        if isinstance(m, tn.nn.BatchNorm2d):
            tm = dict(tmodel.named_modules())[name]
            for stat in ("running_mean", "running_var"):
                np.testing.assert_allclose(getattr(m, stat).numpy(), getattr(tm, stat).numpy(),
                                           rtol=2e-4, atol=2e-4, err_msg=f"{name}.{stat}")
    source = compiled.source()
    assert re.search(STRIDE2 + r",\s+\S+ -> \S+, the batch statistics per block",
                     source)
    assert _taken(source) == (1, 1)


# the default run: 9x14 (edge tiles cut) on 1-3 threads; 16x16 with -m sweep
@sweep.keep(lambda p: p["size"] == (9, 14))
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("size", [(16, 16), (9, 14)])
def test_nan_arena_threads(nan_arenas_split, threads, size):
    """Five and two images split between threads, work memory all NaN: the split rows' zeros,
    the transformed tiles and every output element are written (a short last block's gaps
    between the points' columns hold NaN, their products unread)."""
    tn.set_num_threads(threads)
    compiled = _stepped_twins(
        lambda lib: _net(lib, 16, 32, True), [(batch, 16) + size for batch in (5, 2)])
    source = compiled.source()
    assert _taken(source) == (1, 1) and "omp_get_thread_num()" in source


@pytest.mark.parametrize("conv,shape", [
    (dict(in_channels=4, out_channels=16), (2, 4, 8, 8)),  # few input channels
    (dict(in_channels=16, out_channels=6), (2, 16, 8, 8)),  # few output channels
    (dict(in_channels=16, out_channels=16), (2, 16, 16, 16)),  # fewer than 512 channel pairs
    (dict(in_channels=16, out_channels=32, padding=2, dilation=2), (2, 16, 8, 8)),
    (dict(in_channels=16, out_channels=32, groups=2), (2, 16, 8, 8)),
    (dict(in_channels=16, out_channels=32, padding=0), (2, 16, 9, 9)),
    (dict(in_channels=16, out_channels=32, stride=(2, 1)), (2, 16, 8, 8)),
])
def test_not_taken_off_its_shape(conv, shape):
    """Other strides, paddings, dilations, groups and fewer than 512 channel pairs stay with
    the general convolution kernels."""
    kwargs = dict(dict(kernel_size=3, stride=2, padding=1), **conv)
    tn.manual_seed(0)
    compiled = check_compiled(tn.nn.Conv2d(**kwargs), shape)
    assert _taken(compiled.source()) == (0, 0)
