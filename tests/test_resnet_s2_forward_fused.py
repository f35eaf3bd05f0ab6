"""A downsampling block's forward in one kernel (the ``downsample_forward`` group of
passes/fusion.py): the 3x3 stride-2 convolution by its phases' Winograd form
(templates/conv_winograd_s2.c.j2) with the 1x1 stride-2 shortcut's products taken from the V
of its even-even points (templates/_winograd_s2_shortcut.c.j2), each with its batch norm's
statistics (training) or its folded batch norm (inference, relu after the 3x3's). Values,
gradients through the whole block and running statistics against PyTorch and eager mode (a
symbolic batch, then batch 1), float32 and float64, tiles of 4x4 outputs stored in vectors (two
and eight images a block) or a value at a time (a last block of fewer images, float64), tiles
of 2x2 outputs on odd sizes, builds for AVX-512 and AVX2 only, NaN-filled work memory on 1 and
2 threads, the shortcut's rounding against a float64 sum, and the graphs that keep today's
kernels (smaller planes, other strides, kernels, paddings and groups, too few channels, a relu
or max pooling after the shortcut, a sum of the two that the shortcut's kernel takes)."""
import numpy as np
import pytest
import torch

import sweep
import tracenet as tn
from tracenet.passes import conv_shapes
from tracenet.runtime import target as runtime_target

from test_conv_kernels import _copy_to_torch
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_resnet_shortcut_gradient_sum import _block, _steps

PAIRED = "the shortcut: its products are its outputs"
APART = "the 3x3 stride-2 convolution's and the 1x1 shortcut's own kernels, one after the other"
VECTORS = "in vectors of VL tiles, straight into the output"




def _avx512():
    return runtime_target.current().vector_bits >= 512


# the tests of the one kernel's own values (the build's target must have AVX-512)
needs_avx512 = pytest.mark.skipif(not _avx512(), reason="the pair runs as one kernel with AVX-512")


def _grouped(source, dtype):
    """Whether the group's kernel is in ``source`` in the form the build takes: one kernel in
    float32 with AVX-512, else the two kernels one after the other (which the one kernel also
    carries: its direct twin for values that are not all finite, lowerings/conv_nonfinite.py)."""
    one = dtype == np.float32 and _avx512()
    return (PAIRED in source) == one and APART in source


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def any_plane(monkeypatch):
    """Pair the two convolutions on planes of any size (small shapes keep the batch norms'
    backward within the tolerance, see test_resnet_s2_input_fused.py)."""
    monkeypatch.setattr(conv_shapes, "MIN_PAIRED_POSITIONS", 0)


# name -> (in, out channels, input size, batch norms, batches, dtype, vectors)
CASES = {
    # the ResNet's 16 -> 32 on 32x32 (two images a block, the last of one: in vectors and a
    # value at a time)
    "resnet_16_32": (16, 32, (32, 32), False, (3, 1), np.float32, True),
    # the ResNet's 32 -> 64 on 16x16: eight images a block, through transposes
    "resnet_32_64": (32, 64, (16, 16), False, (9, 1), np.float32, True),
    # with the batch norms: small planes (sixteen and 32 images a block, a value at a time)
    "batch_norms_16_32": (16, 32, (8, 16), True, (4, 2), np.float32, False),
    "batch_norms_32_64": (32, 64, (8, 8), True, (10, 2), np.float32, False),
    # odd sizes: tiles of 2x2 outputs, cut at the edges; channels not a product tile's
    "odd_17_33_15x21": (17, 33, (15, 21), True, (3, 1), np.float32, False),
    # float64: the two kernels one after the other
    "float64": (16, 32, (16, 16), False, (3, 1), np.float64, False),
    "float64_batch_norms": (32, 16, (8, 24), True, (3, 2), np.float64, False),
}
# the default run: both ResNet blocks (two and eight images a block), small planes with batch
# norms, odd sizes and float64; the other small planes and float64 with batch norms with
# -m sweep
DEFAULT_CASES = {"resnet_16_32", "resnet_32_64", "batch_norms_16_32", "odd_17_33_15x21",
                 "float64"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_training_matches_torch_and_eager(march, any_plane, name):
    """Steps of SGD through the block: losses, every parameter's gradient and update (the
    stem's gradients come through both convolutions' backward) against torch and eager."""
    cin, cout, size, bn, batches, dtype, vectors = CASES[name]
    source = _steps(_block(cin, cout, 2, batch_norm=bn), size, batches, dtype)
    assert _grouped(source, dtype), name
    assert (VECTORS in source) == (vectors and PAIRED in source), name


def _eval_block(cin, cout, dtype, seed=0):
    """``_block``'s downsampling block (batch norms) in eval mode, running statistics set away
    from their defaults, as tracenet's and torch's twins."""
    tn.manual_seed(seed)
    make = _block(cin, cout, 2, batch_norm=True)
    model, tmodel = make(tn), make(torch)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, tn.nn.BatchNorm2d):
            m.running_mean.numpy()[:] = rng.standard_normal(m.running_mean.shape) * 0.2
            m.running_var.numpy()[:] = rng.uniform(0.5, 2.0, m.running_var.shape)
            m.weight.detach().numpy()[:] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.detach().numpy()[:] = rng.standard_normal(m.bias.shape) * 0.1
    _copy_to_torch(model, tmodel)
    model.eval()
    tmodel.eval()
    return model, tmodel


# the default run: the 16 -> 32 block, odd sizes and float64; the 32 -> 64 block (eight images
# a block, in test_training_matches_torch_and_eager's default run) with -m sweep
@sweep.keep(lambda p: p["cout"] == 32)
@pytest.mark.parametrize("cin,cout,size,batches,dtype", [
    (16, 32, (32, 32), (3, 1), np.float32),
    (32, 64, (16, 16), (9, 2), np.float32),
    (16, 32, (15, 21), (3, 1), np.float32),
    (16, 32, (16, 16), (3, 1), np.float64),
])
def test_inference_matches_torch_and_eager(march, any_plane, cin, cout, size, batches,
                                           dtype):
    """relu(bn(conv 3x3)) and bn(shortcut) from one kernel, then the block's second
    convolution and the sum: as torch's and eager's, a symbolic batch then another."""
    model, tmodel = _eval_block(cin, cout, dtype)
    compiled = tn.compile(model)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    rng = np.random.default_rng(1)
    for batch in batches:
        x = rng.standard_normal((batch, 3) + size).astype(dtype)
        with tn.no_grad():
            got = compiled(tn.from_numpy(x)).numpy()
            eager = model(tn.from_numpy(x)).numpy()
        with torch.no_grad():
            ref = tmodel(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(got, eager, rtol=tol, atol=tol)
    source = compiled.source()
    assert _grouped(source, dtype) and "_conv_batch_norm_relu_conv_batch_norm(" in source


@needs_avx512
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_nan_arena_threads(nan_arenas_split, any_plane, threads):
    """Nine and then two images (blocks of eight, the last of one) over NaN work memory, split
    between threads however small, training with batch norms and then inference: every
    output and statistic of the shortcut is written, each thread with its own U."""
    tn.set_num_threads(threads)
    source = _steps(_block(32, 64, 2, batch_norm=True), (8, 8), batches=(9, 2))
    assert PAIRED in source
    assert "each thread transforms all of U before its first block" in source
    model, tmodel = _eval_block(32, 64, np.float32)
    compiled = tn.compile(model)
    x = np.random.default_rng(2).standard_normal((9, 3, 16, 16)).astype(np.float32)
    with tn.no_grad():
        got = compiled(tn.from_numpy(x)).numpy()
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert PAIRED in compiled.source()


def _pair(x, w, ws):
    """The two convolutions of one input alone: relu of the 3x3's, and the shortcut's."""
    F = tn.nn.functional
    return F.relu(F.conv2d(x, w, stride=2, padding=1)), F.conv2d(x, ws, stride=2)


@needs_avx512
@pytest.mark.parametrize("c,o,size", [(16, 32, 32), (32, 64, 16)])
def test_shortcut_rounding_against_float64(monkeypatch, c, o, size):
    """The shortcut's float32 sums (one GEMM of the weights and the even-even points' V)
    against float64 on the ResNet's shapes (weights scaled as an initialised layer's), no
    worse than its own kernel's (the pair not formed) and than PyTorch's float32 sums; the
    3x3's values as its kernel's alone."""
    monkeypatch.setattr(conv_shapes, "MIN_PAIRED_POSITIONS", 0)
    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal((8, c, size, size))).astype(np.float32)
    w = (rng.standard_normal((o, c, 3, 3)) / np.sqrt(c * 9)).astype(np.float32)
    ws = (rng.standard_normal((o, c, 1, 1)) / np.sqrt(c)).astype(np.float32)
    args = [tn.from_numpy(a) for a in (x, w, ws)]
    paired = tn.compile(_pair)
    got = [v.numpy() for v in paired(*args)]
    assert PAIRED in paired.source()
    monkeypatch.setattr(conv_shapes, "MIN_PAIRED_POSITIONS", 10 ** 9)
    apart = tn.compile(_pair)
    before = [v.numpy() for v in apart(*args)]
    assert PAIRED not in apart.source()
    F = torch.nn.functional
    t64 = [torch.from_numpy(a.astype(np.float64)) for a in (x, w, ws)]
    exact = [F.relu(F.conv2d(t64[0], t64[1], stride=2, padding=1)).numpy(),
             F.conv2d(t64[0], t64[2], stride=2).numpy()]
    torch32 = F.conv2d(torch.from_numpy(x), torch.from_numpy(ws), stride=2).numpy()

    def err(values, k):
        return np.abs(values - exact[k]).max()
    assert err(got[1], 1) <= 1.05 * min(err(before[1], 1), err(torch32, 1)), \
        (err(got[1], 1), err(before[1], 1), err(torch32, 1))
    np.testing.assert_array_equal(got[0], before[0])


@pytest.mark.parametrize("name,make,size", [
    # the ResNet's 32 -> 64 block on 16x16: 8x8 output planes (MIN_PAIRED_POSITIONS)
    ("small_planes", _block(32, 64, 2, batch_norm=True), (16, 16)),
    # too few channel pairs for the 3x3's Winograd form (8 x 16 < 512)
    ("few_channels", _block(8, 16, 2), (32, 32)),
    # stride 1, a 3x3 shortcut, a grouped shortcut
    ("stride_1", _block(16, 32, 1), (16, 16)),
    ("kernel_3", _block(16, 32, 2, kernel=3, padding=1), (32, 32)),
    ("groups_2", _block(16, 32, 2, groups=2), (32, 32)),
])
def test_other_blocks_keep_their_kernels(name, make, size):
    source = _steps(make, size, batches=(2,))
    assert PAIRED not in source and APART not in source, name


def _relu_after_shortcut(x, w, ws):
    F = tn.nn.functional
    return F.relu(F.conv2d(x, w, stride=2, padding=1)) + F.relu(F.conv2d(x, ws, stride=2))


def _pooled_shortcut(x, w, ws):
    F = tn.nn.functional
    short = F.max_pool2d(F.conv2d(x, ws, stride=2), 2)
    return F.max_pool2d(F.conv2d(x, w, stride=2, padding=1), 2) + short


@pytest.mark.parametrize("fn", [_relu_after_shortcut, _pooled_shortcut])
def test_graphs_the_kernel_does_not_take(fn):
    """A relu after the shortcut, max pooling after either: today's kernels, eager's
    values."""
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in
              [(2, 16, 32, 32), (32, 16, 3, 3), (32, 16, 1, 1)]]
    args = [tn.from_numpy(a) for a in arrays]
    compiled = tn.compile(fn)
    got = compiled(*args).numpy()
    assert PAIRED not in compiled.source() and APART not in compiled.source()
    np.testing.assert_allclose(got, fn(*args).numpy(), rtol=1e-4, atol=1e-4)


@needs_avx512
def test_second_reader_of_the_shortcut():
    """The shortcut's output read by two (its batch norm is then no epilogue): the pair still
    forms, the shortcut's plain output written; values as eager's."""
    def fn(x, w, ws):
        F = tn.nn.functional
        short = F.conv2d(x, ws, stride=2)
        return F.relu(F.conv2d(x, w, stride=2, padding=1)) + short, short * 2
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in
              [(3, 16, 32, 32), (32, 16, 3, 3), (32, 16, 1, 1)]]
    args = [tn.from_numpy(a) for a in arrays]
    compiled = tn.compile(fn)
    got = compiled(*args)
    assert PAIRED in compiled.source()
    for g, e in zip(got, fn(*args)):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-4, atol=1e-4)


def test_sum_of_the_pair_keeps_the_shortcut_kernel():
    """relu(bn(3x3) + bn(shortcut)) in eval mode: the shortcut's kernel takes the sum and the
    relu, which the pair would leave to a pass of its own: today's kernels, torch's values."""
    from test_resnet_shortcut_kernels import _shortcut_block
    tn.manual_seed(0)
    model, tmodel = _shortcut_block(tn, 16, 32, False), _shortcut_block(torch, 16, 32, False)
    _copy_to_torch(model, tmodel)
    model.eval()
    tmodel.eval()
    compiled = tn.compile(model)
    x = np.random.default_rng(6).standard_normal((2, 16, 32, 32)).astype(np.float32)
    with tn.no_grad():
        got = compiled(tn.from_numpy(x)).numpy()
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert PAIRED not in compiled.source() and APART not in compiled.source()


def _pair_module(lib, cin, cout):
    """relu(bn(3x3 stride 2)) and bn(1x1 stride 2) of one input, training-mode batch norms."""
    nn, F = lib.nn, lib.nn.functional

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
            self.short = nn.Conv2d(cin, cout, 1, 2, bias=False)
            self.bn, self.bns = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x))), self.bns(self.short(x))
    return Pair()


@needs_avx512
@pytest.mark.parametrize("overflow", [False, True])
def test_statistics_at_the_resnet_size(overflow):
    """The ResNet's 16 -> 32 pair in training (whole blocks of two images: the shortcut's
    statistics summed from the registers; a last block of one: from its planes), on inputs of
    mean 3: outputs and running statistics as torch's. With the weights of the first channel
    of a chunk overflowing its outputs, that channel's statistics are not finite and every
    other channel's (its chunk's too) still torch's."""
    tn.manual_seed(0)
    model, tmodel = _pair_module(tn, 16, 32), _pair_module(torch, 16, 32)
    if overflow:
        model.short.weight.detach().numpy()[8] = 3e38
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(7)
    for batch in (4, 3):
        x = (rng.standard_normal((batch, 16, 32, 32)) + 3).astype(np.float32)
        got = [v.detach().numpy() for v in compiled(tn.from_numpy(x))]
        ref = [v.detach().numpy() for v in tmodel(torch.from_numpy(x))]
        keep = np.arange(32) != 8 if overflow else np.arange(32) >= 0
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[1][:, keep], ref[1][:, keep], rtol=1e-4, atol=1e-4)
        for name in ("running_mean", "running_var"):
            ours, theirs = getattr(model.bns, name).numpy(), getattr(tmodel.bns, name).numpy()
            np.testing.assert_allclose(ours[keep], theirs[keep], rtol=1e-5, atol=1e-6)
            assert np.isfinite(ours[8]) != overflow
    assert PAIRED in compiled.source()
