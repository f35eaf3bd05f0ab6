"""A downsampling block's input gradient in one kernel (the ``shortcut_input_gradient`` group of
passes/fusion.py): the 3x3 stride-2 convolution's input gradient by its phases' tiles of 8x8
values (templates/conv_winograd_s2_input.c.j2) with the 1x1 stride-2 shortcut's product in the
GEMM of its even-even values and the mask of the relu before the block applied as it stores.
Values and gradients against PyTorch and eager mode (a symbolic batch, then batch 1), float32
and float64, the shortcut's rows moved in vectors (two and eight images a block) or a value at
a time (a last block of fewer images, three images, float64), with and without the mask and
batch norms, builds for AVX-512 and AVX2 only, NaN-filled work memory on 1 and 2 threads, NaN
through the mask, the rounding against a float64 sum, the add's operands in either order and
one output gradient read by both convolutions, and the graphs that keep today's kernels (a
second reader of either gradient or of the sum, other strides, shapes and paddings, too few
channels)."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn
from tracenet.ops import nn as nnops
from tracenet.ops.elementwise import threshold_backward

from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_resnet_shortcut_gradient_sum import _block, _steps

FOLDED = r"static void \w+_conv_backward_input_conv_backward_input_add(_threshold_backward)?\("
MASKED = r"static void \w+_conv_backward_input_conv_backward_input_add_threshold_backward\("
SHORTCUT_ROWS = "the shortcut's output gradient into the even-even points' rows of V"
TRANSPOSED_ROWS = "eight images' runs of 8 columns transposed"
SHUFFLED_ROWS = "two images' runs of 16 columns shuffled"
POINTWISE_SUM = "pointwise 1x1 convolution's input gradient"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _folded(source, masked=True):
    return len(re.findall(MASKED if masked else FOLDED, source))


# name -> (in, out channels, input size, mask, batch norms, batches, dtype)
CASES = {
    # the ResNet's blocks: 16 -> 32 on 32x32 (two images a block), 32 -> 64 on 16x16 (eight)
    "resnet_16_32": (16, 32, (32, 32), True, False, (3, 1), np.float32),
    "resnet_32_64": (32, 64, (16, 16), True, False, (9, 1), np.float32),
    # with the batch norms: smaller images (at 32x32 and 16x16 the batch norms' backward
    # amplifies the 3x3's F(4, 2) rounding past 1e-4 in the stem's weight gradient, with or
    # without the fold)
    "batch_norms_16_32": (16, 32, (8, 16), True, True, (4, 2), np.float32),
    "batch_norms_32_64": (32, 64, (8, 8), True, True, (10, 2), np.float32),
    # no relu before the block: the sum alone
    "no_mask": (16, 32, (16, 16), False, False, (3, 1), np.float32),
    # 17 -> 33 on 24x40: five tiles a row, three images a block (a value at a time)
    "odd_channels_24x40": (17, 33, (24, 40), True, False, (4, 1), np.float32),
    "float64": (16, 32, (16, 16), True, False, (3, 1), np.float64),
    "float64_batch_norms": (32, 16, (8, 24), True, True, (3, 2), np.float64),
}

# the default run: both ResNet shapes (two and eight images a block), the batch norms on one
# shape, no mask, odd channels and float64 (a value at a time); the rest with -m sweep
DEFAULT_CASES = {"resnet_16_32", "resnet_32_64", "batch_norms_32_64", "no_mask",
                 "odd_channels_24x40", "float64"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_folded_matches_torch_and_eager(march, name):
    cin, cout, size, mask, bn, batches, dtype = CASES[name]
    source = _steps(_block(cin, cout, 2, relu=mask, batch_norm=bn), size, batches, dtype)
    assert _folded(source, mask) == 1, name
    assert SHORTCUT_ROWS in source and POINTWISE_SUM not in source
    vectors = {"resnet_16_32": SHUFFLED_ROWS, "resnet_32_64": TRANSPOSED_ROWS}
    if name in vectors:
        assert vectors[name] in source
    if name in ("odd_channels_24x40", "float64"):
        assert TRANSPOSED_ROWS not in source and SHUFFLED_ROWS not in source


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_nan_arena_threads(nan_arenas_split, threads):
    """Nine and then two images (blocks of eight, the last of one) over NaN work memory, split
    between threads however small: V's shortcut rows and every image-gradient value are
    written; each thread makes its own U and the shortcut's weights beside w1's (UF)."""
    tn.set_num_threads(threads)
    source = _steps(_block(32, 64, 2), (16, 16), batches=(9, 2))
    assert _folded(source) == 1
    # (the Winograd kernel, which its direct twin's wrapper calls: conv_nonfinite.py)
    winograd = MASKED[:-len(r"\(")] + r"_winograd\("
    kernel = re.split(winograd, source)[1].split("\n}\n")[0]
    assert "omp_get_thread_num()" in kernel
    assert "each thread transforms all of U before its first block" in kernel


def _gradients(lib_conv_input, threshold, gy, w, gs, ws, y, shape):
    """The block input's gradient as the backward writes it: the 3x3 stride-2 and the 1x1
    stride-2 input gradients summed, then masked by y (``threshold`` the op)."""
    dx = lib_conv_input(gy, w, shape, (1, 1)) + lib_conv_input(gs, ws, shape, (0, 0))
    return threshold(dx, y)


def _ours(gy, w, gs, ws, y):
    return _gradients(
        lambda g, k, shape, pad: nnops.conv_backward_input(
            g, k, shape, stride=(2, 2), padding=pad, dilation=(1, 1), groups=1),
        lambda g, m: threshold_backward(g, m, 0.0), gy, w, gs, ws, y, tuple(y.shape))


def _torch(gy, w, gs, ws, y):
    return _gradients(
        lambda g, k, shape, pad: torch.nn.grad.conv2d_input(shape, k, g, stride=2, padding=pad),
        lambda g, m: torch.ops.aten.threshold_backward(g, m, 0.0), gy, w, gs, ws, y,
        tuple(y.shape))


def _operands(n, c, o, h, w, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in
            [(n, o, h // 2, w // 2), (o, c, 3, 3), (n, o, h // 2, w // 2), (o, c, 1, 1),
             (n, c, h, w)]]


def test_nan_through_the_mask():
    """NaN in the mask's operand passes its gradient through (torch's rule: zero where y <= 0);
    a NaN in the shortcut's output gradient reaches its even-even value in every channel, NaN
    where y > 0 and zero where the mask closes."""
    arrays = _operands(2, 16, 32, 16, 16, np.float32)
    _, _, gs, _, y = arrays
    y[0, 3, 2, 5] = y[1, 0, 7, 7] = y[1, 9, 10, 12] = np.nan
    gs[1, 4, 5, 6] = np.nan  # the image gradient's row 10, column 12
    y[1, :, 10, 12] = np.abs(y[1, :, 10, 12]) + 0.5
    y[1, :3, 10, 12] = -1.0
    compiled = tn.compile(_ours)
    got = compiled(*[tn.from_numpy(a) for a in arrays]).numpy()
    assert _folded(compiled.source()) == 1
    eager = _ours(*[tn.from_numpy(a) for a in arrays]).numpy()
    ref = _torch(*[torch.from_numpy(a) for a in arrays]).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, eager, rtol=1e-4, atol=1e-4)
    assert np.isnan(got[1, 3:, 10, 12]).all() and (got[1, :3, 10, 12] == 0).all()
    assert np.isnan(got).sum() == 13
    assert got[0, 3, 2, 5] != 0 and got[1, 0, 7, 7] != 0


# the default run: the 32 -> 64 shape (the longer sums); 16 -> 32 with -m sweep
@sweep.keep(lambda p: p["c"] == 32)
@pytest.mark.parametrize("c,o,size", [(16, 32, 32), (32, 64, 16)])
def test_rounding_against_the_float64_sum(c, o, size):
    """The float32 masked sum against the float64 one on the ResNet's shapes (weights scaled as
    an initialised layer's, values up to 4.4): the even-even values, one GEMM of the 3x3's w1
    and the shortcut's weights, measured 7.7e-7 and 1.12e-6 against 7.7e-7 and 1.04e-6 of
    the two kernels the fold replaces (the 3x3's alone, then the shortcut's sum: a second
    reader of the 3x3's gradient keeps them) and of PyTorch's float32 sums; the other values
    are the 3x3's F(4, 2) values as before (4.1-6.0e-6 in both)."""
    arrays = _operands(4, c, o, size, size, np.float32, seed=1)
    arrays[1] /= np.sqrt(o * 9)
    arrays[3] /= np.sqrt(o)
    compiled = tn.compile(_ours)
    got = compiled(*[tn.from_numpy(a) for a in arrays]).numpy()
    assert _folded(compiled.source()) == 1
    unfolded = tn.compile(_with_reader("conv"))
    before = unfolded(*[tn.from_numpy(a) for a in arrays])[0].numpy()
    assert not re.search(FOLDED, unfolded.source())
    exact = _torch(*[torch.from_numpy(a.astype(np.float64)) for a in arrays]).numpy()
    separate = _torch(*[torch.from_numpy(a) for a in arrays]).numpy()

    def err(values, at=np.s_[...]):
        return np.abs(values[at] - exact[at]).max()
    even = np.s_[:, :, ::2, ::2]
    assert err(got) < 1e-5 and err(got) <= 1.05 * err(before), (err(got), err(before))
    assert err(got, even) < 1.5 * min(err(before, even), err(separate, even)), \
        (err(got, even), err(before, even), err(separate, even))


def _with_reader(extra):
    """``_ours`` also returning the 3x3's input gradient, the shortcut's or their sum."""
    def fn(gy, w, gs, ws, y):
        conv = nnops.conv_backward_input(gy, w, tuple(y.shape), stride=(2, 2), padding=(1, 1),
                                         dilation=(1, 1), groups=1)
        short = nnops.conv_backward_input(gs, ws, tuple(y.shape), stride=(2, 2),
                                          padding=(0, 0), dilation=(1, 1), groups=1)
        total = conv + short
        return threshold_backward(total, y, 0.0), dict(conv=conv, short=short, sum=total)[extra]
    return fn


@pytest.mark.parametrize("extra", ["conv", "short", "sum"])
def test_second_reader_keeps_the_kernels(extra):
    """A gradient read by something else than the sum is written: no fold; the sum read by
    something else than the mask: the fold without the mask, the sum written. Values as
    eager's."""
    arrays = _operands(2, 16, 32, 16, 16, np.float32)
    fn = _with_reader(extra)
    compiled = tn.compile(fn)
    got = compiled(*[tn.from_numpy(a) for a in arrays])
    source = compiled.source()
    assert not re.search(MASKED, source)
    assert bool(re.search(FOLDED, source)) == (extra == "sum")
    want = fn(*[tn.from_numpy(a) for a in arrays])
    for g, e in zip(got, want):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-4, atol=1e-4)


# the default run: every refusal but odd_size, whose image gradient is not whole 8x8 tiles
# either (conv_shapes.input_tile, as tiles_of_4); it runs with -m sweep
@sweep.keep(lambda p: p["name"] != "odd_size")
@pytest.mark.parametrize("name,make,size", [
    # too few channel pairs for the 3x3's Winograd form (8 x 16 < 512)
    ("few_channels", _block(8, 16, 2), (16, 16)),
    # image gradients not whole 8x8 tiles (12x20): the 3x3's tiles of 4x4 values
    ("tiles_of_4", _block(16, 32, 2), (12, 20)),
    ("odd_size", _block(16, 32, 2), (15, 16)),
    # stride 1, a 3x3 shortcut, a grouped shortcut
    ("stride_1", _block(16, 32, 1), (8, 8)),
    ("kernel_3", _block(16, 32, 2, kernel=3, padding=1), (16, 16)),
    ("groups_2", _block(16, 32, 2, groups=2), (16, 16)),
])
def test_other_blocks_keep_their_kernels(name, make, size):
    source = _steps(make, size, batches=(2,))
    assert not re.search(FOLDED, source), name


def _shortcut_first(gy, w, gs, ws, y):
    """The add with the shortcut's gradient first, and both convolutions reading one output
    gradient when ``gs`` is ``gy``."""
    short = nnops.conv_backward_input(gs, ws, tuple(y.shape), stride=(2, 2), padding=(0, 0),
                                      dilation=(1, 1), groups=1)
    conv = nnops.conv_backward_input(gy, w, tuple(y.shape), stride=(2, 2), padding=(1, 1),
                                     dilation=(1, 1), groups=1)
    return threshold_backward(short + conv, y, 0.0)


def _one_output_gradient(gy, w, ws, y):
    return _shortcut_first(gy, w, gy, ws, y)


@pytest.mark.parametrize("shared", [False, True])
def test_shortcut_first_and_one_output_gradient(shared):
    """The add's operands in the other order, and one output gradient read by both (its role
    given once): folded, values as eager's and torch's."""
    gy, w, gs, ws, y = _operands(3, 16, 32, 16, 16, np.float32)
    fn, arrays = (_one_output_gradient, [gy, w, ws, y]) if shared else \
        (_shortcut_first, [gy, w, gs, ws, y])
    compiled = tn.compile(fn)
    got = compiled(*[tn.from_numpy(a) for a in arrays]).numpy()
    source = compiled.source()
    assert _folded(source) == 1 and ("const float *restrict gys" in source) != shared
    np.testing.assert_allclose(got, fn(*[tn.from_numpy(a) for a in arrays]).numpy(),
                               rtol=1e-4, atol=1e-4)
    ref = _torch(*[torch.from_numpy(a) for a in [gy, w, gy if shared else gs, ws, y]]).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
