"""The F(2x4, 3x3) weight gradient's column points made once per run of tiles
(templates/conv_winograd_weight.c.j2's ``wide_pass`` with ``make``): the pass of a run's first
8 input channels makes 3 of D's points from the transposed output gradient and stores them,
the passes of the other channels load them. Against PyTorch and eager mode natively and with
AVX2 only (F(2x2) there): two vectors of output channels, input channels past the passes'
blocks of eight, runs of tiles within a block (the last one partial), batch 1, a symbolic
batch, NaN-filled work memory on 1 and 2 threads, shapes that take F(2x2) (float64, three
vectors of output channels); the rounding at batch 32 against the float64 sum, which is that
of the points made in every pass (the gradients are bit for bit the same)."""
import numpy as np
import pytest
import torch

import tracenet as tn

from compile_checks import check_compiled
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_conv_kernels import _copy_to_torch, _step_against_torch, _stepped_twins
from test_conv_winograd_weight import _conv
from test_resnet_wgrad2_tiles import NARROW, _check_form, _float64_weight_gradient, _wide_here
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


@pytest.mark.parametrize("name", list(CASES))
def test_points_made_once_match_torch_and_eager(march, name):
    cin, cout, shape = CASES[name]
    tn.manual_seed(0)
    model = _conv(tn, cin, cout, True, np.float32)
    tmodel = _conv(torch, cin, cout, True, np.float32)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    _check_points_stored(compiled.source())
    eager = check_compiled(model, shape, tol=1e-4)
    _check_points_stored(eager.source())


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
    old = tn.get_num_threads()
    tn.set_num_threads(1)
    try:
        for seed in range(4):
            rng = np.random.default_rng(seed)
            x = rng.standard_normal(shape).astype(np.float32)
            gy = rng.standard_normal(shape).astype(np.float32)
            conv = tn.nn.Conv2d(shape[1], shape[1], 3, 1, 1, bias=False)
            compiled = tn.compile(conv)
            compiled(tn.from_numpy(x).requires_grad_(True)).backward(tn.from_numpy(gy))
            _check_points_stored(compiled.source())
            exact = _float64_weight_gradient(x, gy)
            err = np.abs(conv.weight.grad.numpy() - exact) / (1e-4 + 1e-4 * np.abs(exact))
            assert err.max() <= BATCH32[shape], (seed, err.max())
    finally:
        tn.set_num_threads(old)
