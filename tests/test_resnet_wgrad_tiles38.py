"""The F(2x4, 3x3) weight gradient's column points made once per run of tiles
(templates/conv_winograd_weight.c.j2's ``wide_pass`` with ``make``): the pass of a run's first
8 input channels makes 3 of D's points from the transposed output gradient and stores them,
the passes of the other channels load them. Against PyTorch and eager mode natively and with
AVX2 only (F(2x2) there): two vectors of output channels, input channels past the passes'
blocks of eight, runs of tiles within a block (the last one partial), batch 1, a symbolic
batch, NaN-filled work memory on 1 and 2 threads, shapes that take F(2x2) (float64, three
vectors of output channels); the rounding at batch 32 against the float64 sum, which is that
of the points made in every pass (the gradients are bit for bit the same). And F(2x2)'s output
channels past its AVX-512 GEMM tiles in a tile of their own (bit for bit the GEMM core's sums),
in float32 and float64, batch 1 and 3, NaN-filled work memory on 1 and 2 threads."""
import numpy as np
import pytest

import sweep
import tracenet as tn

from compile_checks import check_compiled
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_conv_kernels import _stepped_twins
from test_conv_winograd_weight import _conv, _forms_checked, _takes_it
from test_resnet_wgrad2_tiles import NARROW, _check_form, _one_thread_errors, _wide_here
from test_resnet_wgrad_fused import NOT_FUSED

POINTS_STORED = "a run's column points of a pass"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _check_points_stored(source, count=1):
    _check_form(source, count)
    assert source.count(POINTS_STORED) == (count if _wide_here() else 0)


# name -> (in channels, out channels, input shape)
CASES = {
    # the ResNet's 32 channels on 16x16: one pass making the points, three loading them, for
    # each of two vectors of output channels
    "resnet_32_16x16_batch3": (32, 32, (3, 32, 16, 16)),
    # 28 channels: a pass making the points, two loading them, then one of 4 channels
    "channels_past_blocks": (28, 16, (2, 28, 12, 20)),
    # 17 tile rows of 4 tiles, one block: a run of 16 rows, then one of a single row (the
    # stored points of the first run overwritten by a shorter one); batch 1
    "partial_run_batch1": (40, 16, (1, 40, 34, 16)),
    # 24 channels (8 + 16) into two vectors, odd sizes (zero columns past the last tile)
    "odd_sizes_two_vectors_out": (24, 32, (2, 24, 9, 14)),
}
# the default run: the ResNet's shape, channels past the blocks and the partial run at batch 1;
# the odd sizes (as test_nan_arena_threads' 11x9) with -m sweep
DEFAULT_CASES = {"resnet_32_16x16_batch3", "channels_past_blocks", "partial_run_batch1"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_points_made_once_match_torch_and_eager(march, name):
    cin, cout, shape = CASES[name]
    _forms_checked(cin, cout, shape, np.float32, _check_points_stored)


@pytest.mark.parametrize("name", list(NOT_FUSED))
def test_other_shapes_keep_f2x2(name):
    """float64 and output channels that are not one or two whole vectors: F(2x2), no stored
    points."""
    cin, cout, shape, dtype = NOT_FUSED[name]
    tn.manual_seed(0)
    model = _conv(tn, cin, cout, False, dtype)
    double = dtype == np.float64
    source = check_compiled(model, shape, dtype=tn.float64 if double else tn.float32,
                            tol=1e-10 if double else 1e-4).source()
    assert NARROW in source and POINTS_STORED not in source


def test_symbolic_batch():
    """One compiled module at batch 3, 2 and 1 on 20x16 images (10 tile rows of 4 tiles)."""
    compiled = _stepped_twins(
        lambda lib: _conv(lib, 32, 16, True, np.float32),
        [(batch, 32, 20, 16) for batch in (3, 2, 1)])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source
    _check_points_stored(source)


# the default run: the odd 11x9 on both thread counts; 16x16 with -m sweep
@sweep.keep(lambda p: p["size"] == (11, 9))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [(16, 16), (11, 9)])
def test_nan_arena_threads(nan_arenas_split, threads, size):
    """Work memory all NaN, batch 3 and 1 on 1 and 2 threads: each run's points are stored by
    its first pass before the other passes load them."""
    tn.set_num_threads(threads)

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(32, 32, 3, 1, 1), lib.nn.ReLU(),
                                 lib.nn.Conv2d(32, 16, 3, 1, 1))
    compiled = _stepped_twins(make, [(batch, 32) + size for batch in (3, 1)])
    _check_points_stored(compiled.source(), 2)


# shape -> the largest error over the tolerance allowed at batch 32, four seeds, one thread
# (measured 0.95-1.34 and 1.03-1.69 natively, as with the points made in every pass; PyTorch's
# float32 1.31-1.96 and 2.96-8.64)
BATCH32 = {(32, 32, 16, 16): 1.4, (32, 16, 32, 32): 1.75}


@pytest.mark.parametrize("shape", list(BATCH32))
def test_rounding_at_batch_32(shape):
    """The largest |error| / (1e-4 + 1e-4 |value|) against the float64 sum, the ResNet's
    shapes at batch 32 on one thread (F(2x4) needs AVX-512)."""
    if not _wide_here():
        pytest.skip("F(2x4) is built with AVX-512 only")
    errors = _one_thread_errors(shape, range(4), _check_points_stored)
    assert max(errors) <= BATCH32[shape], errors


# F(2x2) with D in memory, the AVX-512 GEMM tiles of MR rows x NV vectors: the output channels
# past the last whole tile summed in a tile of their own (``_rest``), not on the GEMM core.
# name -> (in channels, out channels, input shape, dtype)
REST_ROWS = {
    # the ResNet's 64 channels on 8x8: 10 tiles of 6 rows, then 4; batch 3 (a partial block)
    "resnet_64_8x8_batch3": (64, 64, (3, 64, 8, 8), np.float32),
    # 40 channels in (two vectors, MR 12, then 8 channels on the GEMM core), 4 rows past
    # three tiles; batch 1
    "two_vectors_in_batch1": (40, 40, (1, 40, 12, 12), np.float32),
    # float64 (8 lanes a vector: MR 6 x 4 vectors), 4 rows past 10 tiles, odd sizes
    "float64_odd_sizes": (64, 64, (2, 64, 9, 11), np.float64),
}
# (the Winograd kernel's own function, beside its direct twin: lowerings/conv_nonfinite.py)
REST = "_conv_backward_weight_winograd_rest("


def _check_rest_rows(source, count=1):
    _takes_it(source, count)
    # (defined and called; built where the compiler has AVX-512, like the GEMM tiles)
    assert source.count(REST) == 2 * count


@pytest.mark.parametrize("name", list(REST_ROWS))
def test_rest_rows_match_torch_and_eager(march, name):
    cin, cout, shape, dtype = REST_ROWS[name]
    _forms_checked(cin, cout, shape, dtype, _check_rest_rows)


def test_whole_tiles_take_no_rest():
    """48 output channels on 64 in: 8 tiles of 6 rows, nothing past them."""
    tn.manual_seed(0)
    model = _conv(tn, 64, 48, False, np.float32)
    source = check_compiled(model, (2, 64, 8, 8), tol=1e-4).source()
    assert NARROW in source and REST not in source


@pytest.mark.parametrize("threads", [1, 2])
def test_rest_rows_nan_arena_threads(nan_arenas_split, threads):
    """Work memory all NaN, 8x8 images at batch 3 and 1 on 1 and 2 threads: 64 channels into
    40 (4 rows past 6 tiles of 6) and 40 into 64 (4 past 5 of 12)."""
    tn.set_num_threads(threads)

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(64, 40, 3, 1, 1), lib.nn.ReLU(),
                                 lib.nn.Conv2d(40, 64, 3, 1, 1))
    compiled = _stepped_twins(make, [(batch, 64, 8, 8) for batch in (3, 1)])
    _check_rest_rows(compiled.source(), 2)
