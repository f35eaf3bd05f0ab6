"""The Winograd weight gradient of 3x3 stride-1 padding-1 convolutions
(templates/conv_winograd_weight.c.j2): the input's rows with the channels innermost (vector
transposes, channels and columns left over one by one, channels padded to a vector), blocks
of several small images (the last one partial), against PyTorch and eager mode in float32
and float64, at batch 1, at a symbolic batch, and with NaN-filled work memory on 1-3
threads."""
import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _step_against_torch, _stepped_twins

# F(2x2, 3x3), or F(2x4, 3x3) where the products are fused (test_resnet_wgrad2_tiles.py)
WEIGHT = "winograd 3x3 convolution weight gradient F(2x"
CHANNELS_INNERMOST = "V = B^T d B per tile, vectors along the input channels"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


SEVERAL_IMAGES = "side by side in one block"
# (conv_winograd._WEIGHT_IMAGE_BLOCK_TILES)
IMAGE_BLOCK_TILES = 128


def _takes_it(source, count=1):
    assert source.count(WEIGHT) == count
    assert source.count(CHANNELS_INNERMOST) == count


def _tiles(shape, source):
    """An image's tiles: of 2 x 4 output-gradient values in F(2x4), else 2 x 2."""
    width = 4 if "weight gradient F(2x4,3x3)" in source else 2
    return -(-shape[-2] // 2) * -(-shape[-1] // width)


def _conv(lib, cin, cout, bias, dtype):
    conv = lib.nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)
    return conv.double() if dtype == np.float64 else conv


def _forms_checked(cin, cout, shape, dtype, check):
    """A 3x3 convolution (bias) of ``cin`` -> ``cout`` channels and its torch twin (seed 0),
    compiled and stepped against torch on a standard normal input of ``shape`` (seed 0), then
    compiled again against eager mode (``check_compiled``); ``check(source)`` on both builds."""
    double = dtype == np.float64
    tol = 1e-10 if double else 1e-4
    tn.manual_seed(0)
    model, tmodel = _conv(tn, cin, cout, True, dtype), _conv(torch, cin, cout, True, dtype)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    _step_against_torch(compiled, model, tmodel, x, tol)
    check(compiled.source())
    eager = check_compiled(model, shape, dtype=tn.float64 if double else tn.float32, tol=tol)
    check(eager.source())


# name -> (in channels, out channels, bias, input shape, dtype)
CASES = {
    # whole vectors of channels and columns: transposes only
    "resnet_16x16": (16, 16, False, (2, 16, 16, 16), np.float32),
    # 17 channels: two vector transposes and one channel by itself, padded to 24
    "odd_channels_odd_size": (17, 19, True, (3, 17, 13, 11), np.float32),
    # columns past the last whole vector, one tile row past the last even row
    "wide_odd_rows_batch1": (24, 16, True, (1, 24, 5, 23), np.float32),
    # 8x8 images, eight to a block of 128 tiles: a block of eight and a partial one of one
    "small_images_batch9": (64, 64, False, (9, 64, 8, 8), np.float32),
    # 9x9 images: 25 tiles, six images a block
    "odd_small_images": (16, 20, True, (7, 16, 9, 9), np.float32),
    "channels_in_fewer_than_out": (16, 48, False, (2, 16, 12, 12), np.float32),
    # 12 tile rows in blocks of 8: a whole block, then a partial one
    "row_blocks_partial": (48, 16, False, (2, 48, 24, 40), np.float32),
    # float64: vectors of four channels, 18 padded to 20
    "float64_odd": (18, 16, True, (2, 18, 9, 11), np.float64),
    "float64_small_images_batch3": (16, 17, False, (3, 16, 8, 8), np.float64),
}
# the default run: every form of the rows and blocks once (whole vectors, odd channels, columns
# past the vectors at batch 1, blocks of eight images, more outputs than inputs, partial row
# blocks) and float64's odd channels; the six images a block of 9x9 and float64's small images
# with -m sweep
DEFAULT_CASES = {"resnet_16x16", "odd_channels_odd_size", "wide_odd_rows_batch1",
                 "small_images_batch9", "channels_in_fewer_than_out", "row_blocks_partial",
                 "float64_odd"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_weight_gradient_matches_torch_and_eager(name):
    cin, cout, bias, shape, dtype = CASES[name]
    tn.manual_seed(0)
    model, tmodel = _conv(tn, cin, cout, bias, dtype), _conv(torch, cin, cout, bias, dtype)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    _step_against_torch(compiled, model, tmodel, x, tol)
    _takes_it(compiled.source())
    assert ((SEVERAL_IMAGES in compiled.source()) ==
            (_tiles(shape, compiled.source()) < IMAGE_BLOCK_TILES))
    eager = check_compiled(model, shape, dtype=tn.float64 if dtype == np.float64 else tn.float32,
                           tol=tol)
    _takes_it(eager.source())


def test_symbolic_batch_of_small_images():
    """One compiled module at batch 10, 3 and 1 on 8x8 images: the blocks of eight images
    (the last one partial) follow the batch at run time."""
    compiled = _stepped_twins(
        lambda lib: _conv(lib, 16, 24, True, np.float32),
        [(batch, 16, 8, 8) for batch in (10, 3, 1)])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source and SEVERAL_IMAGES in source
    _takes_it(source)


# the default run: the odd 11x7 images (edge columns and rows, padding channels; on three
# threads one has no image) on 1-3 threads; the five 8x8 images with -m sweep
@sweep.keep(lambda p: p["shape"] == (2, 17, 11, 7))
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(5, 17, 8, 8), (2, 17, 11, 7)])
def test_nan_arena_threads(nan_arenas_split, threads, shape):
    """Work memory all NaN, the images split between 1-3 threads (over two images one thread
    has none, its sums start from NaN memory): the padding channels (17 of 24), the edge
    columns and rows of the transposed input rows and the blocks of several images are all
    written before they are read."""
    tn.set_num_threads(threads)
    tn.manual_seed(0)

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(17, 18, 3, 1, 1), lib.nn.ReLU(),
                                 lib.nn.Conv2d(18, 17, 3, 1, 1))
    model, tmodel = make(tn), make(torch)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    source = compiled.source()
    _takes_it(source, 2)
    assert "omp_get_thread_num()" in source
