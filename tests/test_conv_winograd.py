"""The Winograd F(2x2, 3x3) kernels of 3x3 stride-1 padding-1 convolutions
(lowerings/conv_winograd.py): forward, input and weight gradients against PyTorch and eager
mode over
odd and even image sizes (edge tiles cut), channel counts that are not whole vectors, bias or
not, batch 1, a symbolic batch, float64; the fused epilogues (eval-mode batch norm, residual
add, relu, the value before the relu kept, a training-mode batch norm's statistics); work
memory filled with NaN on 1-3 threads; and which convolutions take the Winograd form."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from compile_checks import check_compiled
from test_conv_kernels import _conv2d_twins_stepped, _copy_to_torch, \
    _eval_follows_statistics, _step_against_torch, _stepped_twins

# the forward and input gradient take F(4x4, 3x3) in float32, F(2x2, 3x3) in float64
# (conv_winograd._takes_f4); the weight gradient F(2x2, 3x3), or F(2x4, 3x3) where its
# products are fused (conv_winograd._wide_weight_tiles)
FORWARD = "winograd 3x3 convolution F({}x{},3x3), "
INPUT = "winograd 3x3 convolution input gradient F({}x{},3x3)"
WEIGHT = "winograd 3x3 convolution weight gradient F(2x"
# the weight gradient takes it from 16 channels in and out (conv_winograd.takes_weight_gradient)
WEIGHT_FROM = 16


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _forms(source, m=None):
    """How many Winograd kernels of each kind (forward, input, weight) the compiled source
    has; with ``m``, how many forward and input-gradient ones of F(m x m, 3x3)."""
    ms = (2, 4) if m is None else (m,)
    return (sum(source.count(FORWARD.format(k, k)) for k in ms),
            sum(source.count(INPUT.format(k, k)) for k in ms), source.count(WEIGHT))


def _weights(*channels):
    """How many of the convolutions with these (in, out) channels take the Winograd weight
    gradient."""
    return sum(min(c) >= WEIGHT_FROM for c in channels)


# name -> (in channels, out channels, bias, input shape, dtype)
CASES = {
    "even_8x8": (16, 16, False, (2, 16, 8, 8), np.float32),
    "odd_7x11_bias": (17, 19, True, (3, 17, 7, 11), np.float32),
    "few_channels_16x16": (8, 9, True, (2, 8, 16, 16), np.float32),
    "odd_15x15": (20, 33, False, (2, 20, 15, 15), np.float32),
    "resnet_32x32": (16, 16, False, (2, 16, 32, 32), np.float32),
    "wide_odd_rows_batch1": (24, 16, True, (1, 24, 5, 23), np.float32),
    "many_channels_8x8": (64, 64, False, (2, 64, 8, 8), np.float32),
    # F(4x4): blocks of eight 8x8 images, the last one partial
    "many_channels_8x8_batch9": (64, 64, True, (9, 64, 8, 8), np.float32),
    "resnet_16x16_batch3": (32, 32, False, (3, 32, 16, 16), np.float32),
    # F(4x4): rows split by column modulo 4 with vectors and the columns left one by one
    "wide_9x37_batch1": (16, 16, True, (1, 16, 9, 37), np.float32),
    "odd_13x6": (8, 12, False, (2, 8, 13, 6), np.float32),
    "float64_odd": (16, 18, True, (2, 16, 9, 11), np.float64),
    "float64_32x32": (32, 16, False, (1, 32, 32, 32), np.float64),
}

# the default run: one image a block (32x32), two with a partial last block, eight with a
# partial last block, odd channels and sizes with bias, a weight gradient off Winograd (8 -> 12),
# batch 1 on rows split by column modulo 4, float64; the rest with -m sweep
DEFAULT_CASES = {"resnet_32x32", "resnet_16x16_batch3", "many_channels_8x8_batch9",
                 "odd_7x11_bias", "odd_13x6", "wide_9x37_batch1", "float64_odd"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_winograd_conv_matches_torch(name):
    cin, cout, bias, shape, dtype = CASES[name]
    compiled, model, _ = _conv2d_twins_stepped((cin, cout, 3, 1, 1), dict(bias=bias), shape,
                                               dtype)
    source = compiled.source()
    assert _forms(source) == (1, 1, _weights((cin, cout)))
    assert _forms(source, 4 if dtype == np.float32 else 2)[:2] == (1, 1)
    check_compiled(model, shape, dtype=tn.float64 if dtype == np.float64 else tn.float32)


def test_symbolic_batch_two_sizes():
    """One compiled module at batch 3, 5 and 1: the kernels take the batch at run time."""
    _two_convs_over_batches((9, 10), (3, 5, 1))


def _two_convs_over_batches(size, batches):
    """Two convolutions of images of ``size`` compiled once, against torch at each of
    ``batches``; returns the compiled source."""

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(16, 20, 3, 1, 1), lib.nn.ReLU(),
                                 lib.nn.Conv2d(20, 16, 3, 1, 1))
    compiled = _stepped_twins(make, [(batch, 16) + size for batch in batches])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source and _forms(source) == (2, 2, _weights((16, 20), (20, 16)))
    return source


# the default run: every refusal; the second image of fewer than 64 positions (4x15) with
# -m sweep
@sweep.keep(lambda p: p["shape"] != (2, 16, 4, 15))
@pytest.mark.parametrize("conv,shape", [
    (dict(in_channels=6, out_channels=16), (2, 6, 8, 8)),  # few input channels
    (dict(in_channels=16, out_channels=7), (2, 16, 8, 8)),  # few output channels
    (dict(in_channels=16, out_channels=16), (2, 16, 7, 7)),  # a small image
    (dict(in_channels=16, out_channels=16), (2, 16, 4, 15)),
    (dict(in_channels=16, out_channels=16, stride=2), (2, 16, 8, 8)),
    (dict(in_channels=16, out_channels=16, padding=2, dilation=2), (2, 16, 8, 8)),
    (dict(in_channels=16, out_channels=16, groups=2), (2, 16, 8, 8)),
    (dict(in_channels=16, out_channels=16, padding=0), (2, 16, 8, 8)),
])
def test_not_taken_off_its_shape(conv, shape):
    """Other strides, paddings, dilations, groups, fewer than 8 channels and fewer than 64
    positions per image stay with the general convolution kernels."""
    kwargs = dict(dict(kernel_size=3, stride=1, padding=1), **conv)
    tn.manual_seed(0)
    compiled = check_compiled(tn.nn.Conv2d(**kwargs), shape)
    assert _forms(compiled.source()) == (0, 0, 0)


# --- the epilogues fused into the forward ------------------------------------------------------

def _block(lib, bias):
    nn_, F = lib.nn, lib.nn.functional

    class Block(nn_.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn_.Conv2d(16, 24, 3, 1, 1, bias=bias)
            self.bn1 = nn_.BatchNorm2d(24)
            self.conv2 = nn_.Conv2d(24, 16, 3, 1, 1, bias=False)
            self.bn2 = nn_.BatchNorm2d(16)

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(y)) + x)
    return Block()


@pytest.mark.parametrize("bias", [False, True])
def test_eval_batch_norm_residual_relu_fused(bias):
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _block(tn, bias), _block(torch, bias)
    source = _eval_follows_statistics(model, tmodel, (3, 16, 9, 10))
    assert "_conv_batch_norm_add_relu(" in source
    assert re.search(re.escape(FORWARD.format(4, 4)) + r"\S+ -> \S+, then bias, eval-mode batch norm, "
                     r"the residual, relu", source)
    assert _forms(source) == (2, 0, 0)


def _conv_bn_relu(lib):
    nn_ = lib.nn
    return nn_.Sequential(nn_.Conv2d(16, 20, 3, 1, 1), nn_.BatchNorm2d(20), nn_.ReLU())


def _biased_block(lib):
    return _block(lib, True)


def _step_within_torch_rounding(compiled, model, tmodel, exact, x, tol):
    """One forward and backward through ``compiled``, the torch twin and its float64 copy
    ``exact``: each output and gradient of tracenet within ``tol`` of the float64 answer, or
    no farther from it than PyTorch's own float32 answer. Inputs far from zero make the weight
    gradient a sum of large terms that cancel, where float32 rounding differs in both."""
    for m in (model, tmodel, exact):
        m.zero_grad()
    xn = tn.from_numpy(x).requires_grad_(True)
    xt = torch.from_numpy(x).requires_grad_(True)
    xe = torch.from_numpy(x).double().requires_grad_(True)
    out, ref, truth = compiled(xn), tmodel(xt), exact(xe)
    gy = np.random.default_rng(1).standard_normal(ref.shape).astype(x.dtype)
    out.backward(tn.from_numpy(gy))
    ref.backward(torch.from_numpy(gy))
    truth.backward(torch.from_numpy(gy).double())
    pairs = [("output", out.detach().numpy(), ref.detach().numpy(), truth.detach().numpy()),
             ("input gradient", xn.grad.numpy(), xt.grad.numpy(), xe.grad.numpy())]
    pairs += [(name, p.grad.numpy(), tp.grad.numpy(), ep.grad.numpy()) for (name, p), tp, ep
              in zip(model.named_parameters(), tmodel.parameters(), exact.parameters())]
    for name, ours, theirs, want in pairs:
        bound = max(tol, float(np.abs(theirs - want).max()))
        err = float(np.abs(ours - want).max())
        assert err <= bound, f"{name}: {err:.3g} from float64, torch float32 {bound:.3g}"


@pytest.mark.parametrize("make,offset,forms", [
    (_biased_block, 0, (2, 2, _weights((16, 24), (24, 16)))),
    (_conv_bn_relu, 30, (1, 1, _weights((16, 20))))])
def test_training_with_statistics_matches_torch(make, offset, forms):
    """Training mode: the batch norms' statistics summed in the convolutions' epilogues, per
    block of rows; for one convolution from inputs far from zero (a one-pass sum of squares
    would lose the variance)."""
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel, exact = make(tn), make(torch), make(torch).double()
    _copy_to_torch(model, tmodel)
    exact.load_state_dict({k: v.double() for k, v in tmodel.state_dict().items()})
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, tn.nn.BatchNorm2d)]
    tbns = dict(tmodel.named_modules())
    for _ in range(3):
        x = (rng.standard_normal((4, 16, 15, 13)) * 2 + offset).astype(np.float32)
        _step_within_torch_rounding(compiled, model, tmodel, exact, x, 2e-4)
        for name, bn in bns:
            for stat in ("running_mean", "running_var"):
                np.testing.assert_allclose(getattr(bn, stat).numpy(),
                                           getattr(tbns[name], stat).numpy(),
                                           rtol=2e-4, atol=2e-4, err_msg=f"{name}.{stat}")
    source = compiled.source()
    assert "the batch statistics per block" in source
    assert _forms(source) == forms


def _keeps_both(lib):
    """relu(conv(x)) * conv(x): the convolution's value and its relu both leave the kernel."""

    class KeepsBoth(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = lib.nn.Conv2d(16, 17, 3, 1, 1)

        def forward(self, x):
            c = self.conv(x)
            return lib.nn.functional.relu(c) * c
    return KeepsBoth()


def test_relu_with_the_value_before_it_kept():
    tn.manual_seed(0)
    model, tmodel = _keeps_both(tn), _keeps_both(torch)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((2, 16, 9, 8)).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    source = compiled.source()
    assert "rdst[ow] = v <= 0 ? 0 : v" in source
    assert _forms(source) == (1, 1, _weights((16, 17)))


# --- NaN-filled work memory, split between threads ---------------------------------------------

# the default run: 16 channels on 7x11 (edge tiles cut) on 1-3 threads; 16x16 and 32
# channels with -m sweep
@sweep.keep(lambda p: p["size"] == (7, 11) and p["channels"] == 16)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("size", [(7, 11), (16, 16)])
@pytest.mark.parametrize("channels", [16, 32])
def test_nan_arena_threads(nan_arenas_split, threads, size, channels):
    """Two Winograd convolutions in a row: the second's input gradient, in work memory, feeds
    the first one's backward, so an output left unwritten (an edge tile's row or column)
    shows as NaN; three threads over five images split unevenly, over two images one with
    none (its weight gradient sums start from NaN memory)."""
    _two_convs_on_nan_arenas(threads, size, channels)


def _two_convs_on_nan_arenas(threads, size, channels):
    """test_nan_arena_threads' two convolutions on ``threads`` threads, against torch at
    batch 5 and 2; returns the compiled source."""
    tn.set_num_threads(threads)

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(channels, channels + 2, 3, 1, 1), lib.nn.ReLU(),
                                 lib.nn.Conv2d(channels + 2, channels, 3, 1, 1))
    compiled = _stepped_twins(make, [(batch, channels) + size for batch in (5, 2)])
    source = compiled.source()
    assert _forms(source) == (2, 2, _weights((channels, channels + 2), (channels + 2, channels)))
    assert "omp_get_thread_num()" in source
    return source


def test_transposed_conv_matches_torch():
    """A transposed 3x3 stride-1 padding-1 convolution is the input gradient of a convolution:
    its forward takes the Winograd input-gradient kernel, its input gradient the forward one."""
    tn.manual_seed(0)
    model = tn.nn.ConvTranspose2d(16, 20, 3, 1, 1)
    tmodel = torch.nn.ConvTranspose2d(16, 20, 3, 1, 1)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((2, 16, 9, 12)).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    forward, backward_input, _ = _forms(compiled.source())
    assert forward == 1 and backward_input == 1
