"""The Winograd weight gradient's input transform down each column of tiles
(templates/conv_winograd_weight.c.j2's ``v_column``: a tile's last two input rows are the next
tile's first two, their column points carried in registers; 64-byte vectors of channels in
F(2x4) and 32-byte ones for the rest, F(2x2) everywhere), and the input and output-gradient
rows transposed 16 x 16 in 64-byte registers with AVX-512 where rows are whole blocks of 16
columns (``transpose16``). Against PyTorch and eager mode in
float32 and float64, natively and with AVX2 only: blocks of tile rows whose last one is
partial (down to one tile row), channels in whole 64-byte vectors and past them, odd heights
and widths, several small images a block, batch 1, a symbolic batch, NaN-filled work memory on
1 and 2 threads, shapes that fall back to the general kernel; the rounding against a float64
sum (the gradients are bit for bit those of the transform it replaced)."""
import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_conv_kernels import _copy_to_torch, _step_against_torch, _stepped_twins
from test_conv_winograd_weight import WEIGHT, _conv, _forms_checked, _takes_it
from test_resnet_wgrad2_tiles import _one_thread_errors

COLUMNS = "down each column of\n                   tiles"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _check_form(source, count=1):
    _takes_it(source, count)
    assert source.count(COLUMNS) == count


# name -> (in channels, out channels, input shape, dtype)
CASES = {
    # the ResNet's 16 channels on 32x32: 16 tile rows of 8 tiles, one block
    "resnet_16_32x32": (16, 16, (2, 16, 32, 32), np.float32),
    # 9 tile rows of 16 tiles: blocks of 8 and 1 (the carried rows of a one-row block); batch 1
    "partial_block_of_one_row_batch1": (64, 16, (1, 64, 18, 64), np.float32),
    # 24 channels: a 64-byte vector and a 32-byte one; odd height and width (zeros past them)
    "odd_sizes_channels_past_vectors": (24, 32, (2, 24, 15, 13), np.float32),
    # 40 channels: two 64-byte vectors, then a 32-byte one
    "two_vectors_and_a_half": (40, 16, (2, 40, 16, 20), np.float32),
    # rows of whole 16-column blocks (64-byte transposes of 16 x 16 with AVX-512): 40
    # channels in, two blocks of 16 and one of 8 (32-byte transposes)
    "transposes_16_and_8": (40, 16, (2, 40, 10, 32), np.float32),
    # 17 channels in: a block of 16, then one channel by itself; 16 columns; batch 1
    "transposes_16_and_one_batch1": (17, 32, (1, 17, 12, 16), np.float32),
    # 16x16 images, four a block, the last one partial
    "resnet_32_16x16_batch5": (32, 32, (5, 32, 16, 16), np.float32),
    # F(2x2) (three vectors out): 20 channels padded to 24, three 32-byte vectors
    "narrow_three_vectors_out": (20, 48, (3, 20, 11, 14), np.float32),
    # F(2x2) on 8x8 images, sixteen a block: a block of sixteen and a partial one
    "narrow_small_images_batch17": (64, 64, (17, 64, 8, 8), np.float32),
    # float64 (F(2x2)): four channels a 32-byte vector, odd sizes
    "float64_odd_sizes": (18, 16, (2, 18, 13, 10), np.float64),
}


# the default run: every form but two repeats, which run with -m sweep: 40 channels (channels
# past whole vectors, as 24's) and 8x8 images in F(2x2) (a last partial block of several
# images, as the 16x16 batch of 5)
DEFAULT_CASES = set(CASES) - {"two_vectors_and_a_half", "narrow_small_images_batch17"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_column_transform_matches_torch_and_eager(march, name):
    cin, cout, shape, dtype = CASES[name]
    _forms_checked(cin, cout, shape, dtype, _check_form)


# name -> (in channels, out channels, input shape): the general kernel's
FALLS_BACK = {
    # 8 channels in: below the Winograd weight gradient's 16
    "eight_channels_in": (8, 16, (2, 8, 16, 16)),
    # 7x7 images: fewer than 64 positions
    "small_images": (16, 16, (3, 16, 7, 7)),
}


@pytest.mark.parametrize("name", list(FALLS_BACK))
def test_falls_back_off_its_shapes(name):
    cin, cout, shape = FALLS_BACK[name]
    tn.manual_seed(0)
    model, tmodel = _conv(tn, cin, cout, True, np.float32), _conv(torch, cin, cout, True,
                                                                  np.float32)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    source = compiled.source()
    assert WEIGHT not in source and COLUMNS not in source


def test_symbolic_batch():
    """One compiled module at batch 3, 2 and 1 on 18x32 images (9 tile rows): the images
    follow the batch at run time."""
    compiled = _stepped_twins(
        lambda lib: _conv(lib, 16, 32, True, np.float32),
        [(batch, 16, 18, 32) for batch in (3, 2, 1)])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source
    _check_form(source)


# the default run: the odd 15x13 images on one and two threads; 32x32 with -m sweep
DEFAULT_NAN_SIZE = (15, 13)


@sweep.keep(lambda p: p["size"] == DEFAULT_NAN_SIZE)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [(32, 32), (15, 13)])
def test_nan_arena_threads(nan_arenas_split, threads, size):
    """Work memory all NaN, batch 3 and 1 on 1 and 2 threads: the transposed rows, the carried
    rows' points and every block's transformed tiles are written before they are read."""
    tn.set_num_threads(threads)

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(16, 24, 3, 1, 1), lib.nn.ReLU(),
                                 lib.nn.Conv2d(24, 16, 3, 1, 1))
    compiled = _stepped_twins(make, [(batch, 16) + size for batch in (3, 1)])
    _check_form(compiled.source(), 2)


@pytest.mark.parametrize("shape", [(2, 16, 32, 32), (4, 64, 8, 8)])
def test_rounding_against_float64(march, shape):
    """One thread, four seeds: the largest error against the float64 sum stays within 0.6 of
    the tests' tolerance (1e-4 + 1e-4 |value|); natively, 2x16x32x32 (F(2x4)) 0.31-0.50, and
    at batch 32 on 64 channels 8x8 (F(2x2)) 0.40-0.48, as before the column transform."""
    errors = _one_thread_errors(shape, range(4), _check_form)
    assert max(errors) <= 0.6, errors
