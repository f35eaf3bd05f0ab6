"""The stride-2 3x3 input gradient's tiles of 8x8 values (templates/conv_winograd_s2_input.c.j2
with MT 4: 5x5 output-gradient values, 4 apart, through 81 products, the odd values F(4, 2)
of the taps w2, w0 and the even ones w1 alone), taken where the image gradient is whole
tiles: against PyTorch (values, input and weight gradients) and eager mode, with the images'
tiles interleaved (two, three and eight images a block, one image of 64 columns, a last block
of fewer images), the output-gradient rows split in vectors (8x8 transposes of eight images,
shuffles of two) or a store per value, the output rows transposed into the tiles' rows eight
tiles a step or a store per value (a short tile row, a last block of fewer images, batch 1,
float64), builds for AVX-512 and AVX2 only, NaN-filled work memory on 1-3 threads, the
rounding against a float64 sum; sides not multiples of 8 keep the tiles of 4x4 values."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _step_against_torch, _stepped_twins
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_resnet_s2_f4 import _net

F4 = "stride-2 3x3 convolution input gradient by its phases' Winograd forms " \
    "(81 products per 8x8 values)"
F2 = "stride-2 3x3 convolution input gradient by its phases' Winograd forms " \
    "(25 products per 4x4 values)"
IMAGES = re.compile(r"tiles of (\d+) interleaved images a step")
TRANSPOSED = "eight tiles a step, each output row's eight values transposed"
SPLIT = "the rows split in vectors"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _paths(source):
    return dict(f4=source.count(F4), f2=source.count(F2),
                images={int(j) for j in IMAGES.findall(source)},
                transposed=TRANSPOSED in source, split=SPLIT in source)


# name -> (in, out channels, bias, input shape, dtype, dynamic batch, images per block (a
# last block of fewer: a store per value), output rows by transposes, rows split in vectors)
CASES = {
    # the ResNet's 16 -> 32: four tiles a row, two images a block
    "resnet_16_32": (16, 32, False, (2, 16, 32, 32), np.float32, False, {2}, True, True),
    "resnet_16_32_bias_batch3": (16, 32, True, (3, 16, 32, 32), np.float32, True, {2}, True,
                                 True),
    # the ResNet's 32 -> 64: two tiles a row, eight images a block, the last of one
    "resnet_32_64_batch9": (32, 64, False, (9, 32, 16, 16), np.float32, True, {8}, True, True),
    "resnet_32_64_bias": (32, 64, True, (8, 32, 16, 16), np.float32, False, {8}, True, True),
    # one image, four tiles: a store per value
    "batch1_32x32": (16, 32, False, (1, 16, 32, 32), np.float32, False, {1}, False, False),
    # one image of eight tiles a row: its rows split by shuffles, one image a step
    "one_image_64x64": (16, 32, True, (2, 16, 64, 64), np.float32, False, {1}, True, False),
    # five tiles a row, three images: 15 tiles a row, a store per value
    "odd_channels_24x40": (17, 33, False, (3, 17, 24, 40), np.float32, True, {3}, False,
                           False),
    "float64_16x16": (16, 32, True, (3, 16, 16, 16), np.float64, True, {8}, False, False),
}


# the default run: each form (two and eight images a block with a last one of fewer, one image
# by transposes or by stores, three images, float64); the ResNet's shapes again at a static
# batch of whole blocks with -m sweep
DEFAULT_CASES = set(CASES) - {"resnet_16_32", "resnet_32_64_bias"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_f4_input_gradient_matches_torch_and_eager(march, name):
    cin, cout, bias, shape, dtype, dynamic, images, transposed, split = CASES[name]
    tn.manual_seed(0)
    model, tmodel = _net(tn, cin, cout, bias), _net(torch, cin, cout, bias)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model, dynamic=dynamic)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    _step_against_torch(compiled, model, tmodel, x, 1e-9 if dtype == np.float64 else 1e-4)
    paths = _paths(compiled.source())
    assert (paths["f4"], paths["f2"]) == (1, 0)
    assert paths["images"] == images
    assert (paths["transposed"], paths["split"]) == (transposed, split)
    check_compiled(model, shape, dtype=tn.float64 if dtype == np.float64 else tn.float32)


# the default run: 12x20 (neither side a multiple of 8); 14x10 and 36x32 with -m sweep
DEFAULT_SIDES = (2, 16, 12, 20)


@sweep.keep(lambda p: p["shape"] == DEFAULT_SIDES)
@pytest.mark.parametrize("shape", [(2, 16, 12, 20), (2, 16, 14, 10), (2, 16, 36, 32)])
def test_sides_off_multiples_of_8_keep_4x4_values(shape):
    """Image gradients of 12x20, 14x10 and 36x32 are not whole 8x8 tiles: the 4x4 form."""
    tn.manual_seed(0)
    model, tmodel = _net(tn, 16, 32, False), _net(torch, 16, 32, False)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    paths = _paths(compiled.source())
    assert (paths["f4"], paths["f2"]) == (0, 1)


def test_symbolic_batch():
    """One compiled module at batch 3, 1 and 5: blocks of two 32x32 images, the last of one."""
    compiled = _stepped_twins(
        lambda lib: _net(lib, 16, 32, True), [(batch, 16, 32, 32) for batch in (3, 1, 5)])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source and _paths(source)["f4"] == 1


# the default run: the ResNet's 16 -> 32 on 32x32; 32 -> 64 (the same transforms) with -m sweep
DEFAULT_ROUNDING = (16, 32, 32)


@sweep.keep(lambda p: (p["cin"], p["cout"], p["size"]) == DEFAULT_ROUNDING)
@pytest.mark.parametrize("cin,cout,size", [(16, 32, 32), (32, 64, 16)])
def test_rounding_against_the_float64_sum(cin, cout, size):
    """The float32 image gradient against the float64 sum on the ResNet's shapes: F(4, 2)'s
    transforms (constants up to 8) measured 4.7-5.4e-6 on values up to 2.2, against 5-7e-7 of
    the 4x4 form and of PyTorch's direct sum."""
    tn.manual_seed(0)
    conv = tn.nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
    compiled = tn.compile(conv)
    x = np.random.default_rng(1).standard_normal((4, cin, size, size)).astype(np.float32)
    xn = tn.from_numpy(x).requires_grad_(True)
    out = compiled(xn)
    gy = np.random.default_rng(2).standard_normal(out.shape).astype(np.float32)
    out.backward(tn.from_numpy(gy))
    assert F4 in compiled.source()
    w = conv.weight.detach().numpy()

    def direct(dtype):
        return torch.nn.grad.conv2d_input(x.shape, torch.tensor(w, dtype=dtype),
                                          torch.tensor(gy, dtype=dtype), stride=2,
                                          padding=1).numpy()
    exact = direct(torch.float64)
    err = np.abs(xn.grad.numpy() - exact).max()
    torch_err = np.abs(direct(torch.float32) - exact).max()
    assert err < 1e-5 and err < 12 * torch_err, (err, torch_err)


# the default run: 32 -> 64 on 16x16 (eight images a block: nine in blocks of eight and one,
# none for a third thread) on 1-3 threads; 16 -> 32 with -m sweep
DEFAULT_NAN = (32, 64, 16)


@sweep.keep(lambda p: (p["cin"], p["cout"], p["size"]) == DEFAULT_NAN)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("cin,cout,size", [(16, 32, 32), (32, 64, 16)])
def test_nan_arena_threads(nan_arenas_split, threads, cin, cout, size):
    """Nine and two images split between threads, work memory all NaN: the split rows' zeros,
    the transformed tiles and every image-gradient value are written."""
    tn.set_num_threads(threads)
    compiled = _stepped_twins(
        lambda lib: _net(lib, cin, cout, True), [(batch, cin, size, size) for batch in (9, 2)])
    source = compiled.source()
    assert _paths(source)["f4"] == 1 and "omp_get_thread_num()" in source
