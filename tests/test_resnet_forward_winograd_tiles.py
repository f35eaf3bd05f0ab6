"""The F(4x4, 3x3) Winograd forward and input gradient with the split rows' columns past the
image's edges zeroed once a block instead of per row (templates/conv_winograd_f4.c.j2's
``block``, _winograd.c.j2's ``split_rows(zeroed_pads=True)``): on work memory filled with NaN
(a pad column left unwritten shows as NaN) on 1 and 2 threads, over the ResNet's sizes (whole
vectors of tiles a row, images interleaved, a last block of fewer images), odd sizes whose
phases have different pads, batch 1 and others, with a training-mode batch norm's statistics
against eager mode, PyTorch and PyTorch in float64; float64 keeps F(2x2). With AVX-512 the
rows of two 16-column images, or of eight 8-column ones, are split together by vector permutes
(``split_rows(together=True)``); on rows of one vector of tiles the training statistics are
summed from the stored vectors (``register_stats``); both also built for AVX2 only. On one
image a block each phase of a split row takes whole 64-byte lines (conv_winograd.py's
``_split_stride_f4``)."""
import os
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn
from tracenet.runtime import toolchain

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _step_against_torch, _stepped_twins
from test_conv_winograd import _forms, _two_convs_on_nan_arenas

# the comment of the zeroing in the generated source (templates/conv_winograd_f4.c.j2)
ZEROED = "the split rows' columns past the edges"
# the comment of the split of two 16-column or eight 8-column images' rows together by
# AVX-512's permutes (_winograd.c.j2's ``split_rows(together=True)``)
TOGETHER = "images' rows split together by permutes"
# the comment of the batch norm's statistics summed from the stored vectors
# (conv_winograd_f4.c.j2's ``register_stats``)
STORED_STATS = "the batch statistics from the stored vectors"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


# (height, width): 32x32 rows of whole vectors of tiles, one image a block; 16x16 two images
# interleaved; 8x8 eight, the last block of fewer; 13x30 and 9x9 edge tiles cut, the four
# column phases with different pads
SIZES = [(32, 32), (16, 16), (8, 8), (13, 30), (9, 9)]
# the default run: one image, two and eight images a block and the cut edge tiles of 13x30;
# 9x9 (edge tiles cut too) with -m sweep
DEFAULT_SIZES = {(32, 32), (16, 16), (8, 8), (13, 30)}


@sweep.keep(lambda p: p["size"] in DEFAULT_SIZES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", SIZES)
def test_pads_zeroed_once_a_block_on_nan_arenas(nan_arenas_split, threads, size):
    """Two convolutions (forward and input gradient in F(4x4)) at batch 5 and 2 against torch,
    on NaN-filled work memory."""
    source = _two_convs_on_nan_arenas(threads, size, 16)
    assert _forms(source, 4)[:2] == (2, 2)
    assert source.count(ZEROED) == 4 * (1 + ("(nb image(s) interleaved)" in source))


# The split rows' phases on whole 64-byte lines on one image a block (conv_winograd.py's
# ``_split_stride_f4``): (size, values a phase) for 32x32 (10 -> 16), 16x60 (15 tiles a row,
# 17 -> 32, the last block of one tile row), 12x56 (16 already a line); two 16x16 images a
# block keep 6
PHASE_STRIDES = [((32, 32), 16), ((16, 60), 32), ((12, 56), 16), ((16, 16), 6)]
# the default run: 10 -> 16, 17 -> 32 and the two images' 6; 12x56 (16 already a line, as
# 32x32's stride) with -m sweep
DEFAULT_PHASE_SIZES = {(32, 32), (16, 60), (16, 16)}


def _phase_stride(source, stride):
    """Whether every F(4x4) kernel's split rows in ``source`` take ``stride`` values a phase
    (the work memory's comment)."""
    strides = re.findall(r"\[column mod 4\]\[(\d+)\]", source)
    return bool(strides) and set(strides) == {str(stride)}


@sweep.keep(lambda p: p["size"] in DEFAULT_PHASE_SIZES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size, stride", PHASE_STRIDES)
def test_split_phases_on_whole_lines_on_nan_arenas(nan_arenas_split, threads, size, stride):
    """Forward and input gradient with the split phases rounded up to whole lines, at batch 5
    and 2 against torch on NaN-filled work memory (a column between the row's values and the
    line's end left unzeroed would show as NaN)."""
    source = _two_convs_on_nan_arenas(threads, size, 16)
    assert _forms(source, 4)[:2] == (2, 2)
    assert _phase_stride(source, stride)


# the default run: batch 1 on 20x60 (17 -> 32 a phase); 24x56 (16 already a line) with -m sweep
@sweep.keep(lambda p: p["shape"] == (1, 16, 20, 60))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 16, 20, 60), (3, 16, 24, 56)])
def test_split_phases_on_whole_lines_with_statistics(nan_arenas_split, threads, shape):
    """The training statistics and input gradient on those phases, batch 1 and 3, against
    PyTorch in float64 and eager mode."""
    source = _training_statistics_checked(threads, shape)
    assert _phase_stride(source, 32 if shape[3] == 60 else 16)


# the default run: 16x60 (17 -> 32 a phase); 32x32 with -m sweep
@sweep.keep(lambda p: p["size"] == (16, 60))
@pytest.mark.parametrize("size, stride", PHASE_STRIDES[:2])
def test_split_phases_on_whole_lines_without_avx512(nan_arenas_split, avx2_only, size, stride):
    """The same source with AVX2 only."""
    source = _two_convs_on_nan_arenas(1, size, 16)
    assert _phase_stride(source, stride) and toolchain.vector_bits() == 256


# 16 columns, two images a block: whole tile rows (16x16), the last tile row cut (13x16), the
# last block of fewer tile rows than the others (29x16)
PAIRED_SIZES = [(16, 16), (13, 16), (29, 16)]
# the default run: whole tile rows and 29x16 (its last tile row cut too); 13x16 with -m sweep
DEFAULT_PAIRED_SIZES = {(16, 16), (29, 16)}


@sweep.keep(lambda p: p["size"] in DEFAULT_PAIRED_SIZES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", PAIRED_SIZES)
def test_image_pairs_split_together_on_nan_arenas(nan_arenas_split, threads, size):
    """The rows of two 16-column images split together (each block of two images; the last
    image of the odd batch 5 in a block of its own, split value by value), forward and input
    gradient, at batch 5 and 2 against torch on NaN-filled work memory."""
    source = _two_convs_on_nan_arenas(threads, size, 16)
    assert _forms(source, 4)[:2] == (2, 2)
    assert source.count(TOGETHER) == 4


@pytest.mark.parametrize("threads", [1, 2])
def test_eight_images_split_together_on_nan_arenas(nan_arenas_split, threads):
    """The rows of eight 8x8 images split together (blocks of eight images; the batch 9's last
    image and the batch 3 in a block of fewer, split value by value), forward and input
    gradient, against torch on NaN-filled work memory. (8x8 is the one size of eight images a
    block: 64 positions at least, at most 4 tiles.)"""
    tn.set_num_threads(threads)

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(16, 24, 3, 1, 1), lib.nn.ReLU(),
                                 lib.nn.Conv2d(24, 16, 3, 1, 1))
    source = _stepped_twins(make, [(batch, 16, 8, 8) for batch in (9, 16, 3)]).source()
    assert _forms(source, 4)[:2] == (2, 2)
    assert source.count(TOGETHER) == 4


@pytest.fixture
def avx2_only(policy_cache, monkeypatch):
    """Builds for AVX2 + FMA only (``TRACENET_MARCH=x86-64-v3``), apart from the others."""
    if os.uname().machine != "x86_64":
        pytest.skip("x86-64 only")
    policy_cache("march-x86-64-v3")
    monkeypatch.setenv("TRACENET_MARCH", "x86-64-v3")
    toolchain.reset()
    yield
    monkeypatch.delenv("TRACENET_MARCH")
    toolchain.reset()


# the default run: two images a block (the same value-by-value split as eight); 8x8 with
# -m sweep
@sweep.keep(lambda p: p["size"] == (16, 16))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [(16, 16), (8, 8)])
def test_images_split_value_by_value_without_avx512(nan_arenas_split, avx2_only, threads, size):
    """Without AVX-512 the same source splits the images' rows value by value."""
    source = _two_convs_on_nan_arenas(threads, size, 16)
    assert source.count(TOGETHER) == 4 and toolchain.vector_bits() == 256


def _conv_bn(lib, channels=16):
    nn_ = lib.nn
    return nn_.Sequential(nn_.Conv2d(channels, channels, 3, 1, 1, bias=False),
                          nn_.BatchNorm2d(channels), nn_.ReLU(),
                          nn_.Conv2d(channels, channels, 3, 1, 1, bias=False),
                          nn_.BatchNorm2d(channels))


def _output_and_input_gradient_within_float64(compiled, model, tmodel, exact, x, tol):
    """The training forward's output and input gradient (the kernels these tests are about)
    within ``tol`` of PyTorch in float64, or no farther from it than PyTorch's float32, and
    within 1e-4 of eager mode. (The weight gradients take the Winograd weight-gradient
    kernels, which this form leaves as they were: on these sizes they round up to 1.7x
    farther from float64 than PyTorch's float32, past 2e-4, and past 1e-4 from eager.)"""
    xn = tn.from_numpy(x).requires_grad_(True)
    xg = tn.from_numpy(x.copy()).requires_grad_(True)
    xt = torch.from_numpy(x).requires_grad_(True)
    xe = torch.from_numpy(x).double().requires_grad_(True)
    out, eager, ref, truth = compiled(xn), model(xg), tmodel(xt), exact(xe)
    gy = np.random.default_rng(1).standard_normal(ref.shape).astype(x.dtype)
    out.backward(tn.from_numpy(gy))
    eager.backward(tn.from_numpy(gy))
    ref.backward(torch.from_numpy(gy))
    truth.backward(torch.from_numpy(gy).double())
    for name, ours, theirs, want in [
            ("output", out.detach().numpy(), ref.detach().numpy(), truth.detach().numpy()),
            ("input gradient", xn.grad.numpy(), xt.grad.numpy(), xe.grad.numpy())]:
        bound = max(tol, float(np.abs(theirs - want).max()))
        err = float(np.abs(ours - want).max())
        assert err <= bound, f"{name}: {err:.3g} from float64, torch float32 {bound:.3g}"
    np.testing.assert_allclose(out.detach().numpy(), eager.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(xn.grad.numpy(), xg.grad.numpy(), rtol=1e-4, atol=1e-4)


# (batch, channels, height, width): 32x32 and 20x32 (a last block of one tile row, a run of 128
# values) sum the statistics from the stored vectors; 12x64 (two vectors of tiles a row),
# 13x30, 8x8 and 16x16 (two images a block) sum them by a pass over the stored block
STATISTICS_SHAPES = [(1, 16, 32, 32), (3, 16, 32, 32), (2, 16, 20, 32), (2, 16, 12, 64),
                     (5, 16, 13, 30), (9, 16, 8, 8), (1, 32, 16, 16), (4, 32, 16, 16),
                     (3, 32, 29, 16)]
# the default run: from the stored vectors at batch 1 and on 20x32, by a pass on the odd 13x30
# and on two images a block at batch 1; the other batches and sizes with -m sweep
DEFAULT_STATISTICS_SHAPES = {(1, 16, 32, 32), (2, 16, 20, 32), (5, 16, 13, 30), (1, 32, 16, 16)}


@sweep.keep(lambda p: p["shape"] in DEFAULT_STATISTICS_SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", STATISTICS_SHAPES)
def test_training_statistics_on_nan_arenas(nan_arenas_split, threads, shape):
    """The training forward with the batch norm's statistics in its epilogue, and its input
    gradient, against PyTorch in float64 and float32 and against eager mode."""
    source = _training_statistics_checked(threads, shape)
    assert (STORED_STATS in source) == (shape[3] == 32)


# the default run: 20x32 (a last block of one tile row); 32x32 with -m sweep
@sweep.keep(lambda p: p["shape"] == (2, 16, 20, 32))
@pytest.mark.parametrize("shape", [(3, 16, 32, 32), (2, 16, 20, 32)])
def test_training_statistics_without_avx512(nan_arenas_split, avx2_only, shape):
    """The statistics from the stored vectors with AVX2 only (16 vector registers)."""
    source = _training_statistics_checked(1, shape)
    assert STORED_STATS in source and toolchain.vector_bits() == 256


def _training_statistics_checked(threads, shape):
    """_output_and_input_gradient_within_float64 for the conv + batch norm pair of ``shape``
    on ``threads`` threads: the compiled source."""
    tn.set_num_threads(threads)
    tn.manual_seed(0)
    channels = shape[1]
    model, tmodel = _conv_bn(tn, channels), _conv_bn(torch, channels)
    _copy_to_torch(model, tmodel)
    exact = _conv_bn(torch, channels).double()
    exact.load_state_dict({k: v.double() for k, v in tmodel.state_dict().items()})
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _output_and_input_gradient_within_float64(compiled, model, tmodel, exact, x, 2e-4)
    source = compiled.source()
    assert "the batch statistics per block" in source and ZEROED in source
    assert min(_forms(source, 4)[:2]) >= 1
    return source


def test_float64_keeps_f2():
    """float64 takes F(2x2), whose rows keep their own pads: unchanged, against torch."""
    tn.manual_seed(0)
    model = tn.nn.Conv2d(16, 16, 3, 1, 1, bias=False).double()
    tmodel = torch.nn.Conv2d(16, 16, 3, 1, 1, bias=False).double()
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((3, 16, 32, 32))
    _step_against_torch(compiled, model, tmodel, x, 1e-10)
    source = compiled.source()
    assert _forms(source, 2)[:2] == (1, 1) and _forms(source, 4)[:2] == (0, 0)
    assert ZEROED not in source
    check_compiled(model, (1, 16, 32, 32), dtype=tn.float64)


@pytest.mark.parametrize("shape", [(2, 16, 7, 7), (2, 4, 32, 32)])
def test_fewer_positions_or_channels_fall_back(shape):
    """Images of fewer than 64 positions and fewer than 8 channels keep the general kernels."""
    tn.manual_seed(0)
    model = tn.nn.Conv2d(shape[1], 16, 3, 1, 1)
    compiled = check_compiled(model, shape)
    source = compiled.source()
    assert _forms(source) == (0, 0, 0)
    assert ZEROED not in source
