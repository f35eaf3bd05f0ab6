"""The 1x1 convolution kernels (padding 0, one group; lowerings/conv_pointwise.py): forward,
input and weight gradients against PyTorch and eager mode over strides 1, 2 and 3 (mixed
too), odd sizes, channel counts that are not whole vectors, batch 1, a symbolic batch,
float64, with and without bias; the epilogues fused into the forward (eval-mode batch norm,
residual add, relu, the value before the relu kept); and, in work memory filled with NaN,
split between threads, the zeros the input gradient writes between the strided positions and
the weight gradient's per-thread sums."""
import re

import numpy as np
import pytest
import torch

import tracenet as tn
import tracenet.nn as nn
from tracenet.runtime import target as runtime_target

from compile_checks import check_compiled
from test_conv_kernels import _conv2d_twins_stepped, _copy_to_torch, \
    _eval_follows_statistics, _step_against_torch


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


# the input gradients are lowered there only with AVX-512 (conv_pointwise.takes_input_gradient)
ALL_KINDS = {"forward", "weight"} | ({"input"} if runtime_target.current().vector_bits >= 512
                                    else set())


def _pointwise_kinds(source):
    """Which of the 1x1 kernels (forward, input, weight) the compiled source has."""
    kinds = set()
    if "pointwise 1x1 convolution, " in source:
        kinds.add("forward")
    if "pointwise 1x1 convolution input" in source:
        kinds.add("input")
    if "pointwise 1x1 convolution weight" in source:
        kinds.add("weight")
    return kinds


# name -> (conv rank, in channels, out channels, stride, bias, input shape, dtype)
CASES = {
    "shortcut_16_32_stride2": (2, 16, 32, 2, False, (2, 16, 8, 8), np.float32),
    # a batch worth two threads
    "shortcut_parallel": (2, 16, 32, 2, False, (8, 16, 16, 16), np.float32),
    "shortcut_32_64_stride2": (2, 32, 64, 2, False, (3, 32, 6, 6), np.float32),
    "odd_7x7_stride2_bias": (2, 5, 7, 2, True, (3, 5, 7, 7), np.float32),
    "stride1_batch1": (2, 5, 7, 1, True, (1, 5, 7, 9), np.float32),
    "stride1_wide": (2, 9, 20, 1, False, (2, 9, 5, 23), np.float32),
    "stride3": (2, 13, 11, 3, True, (2, 13, 10, 11), np.float32),
    "mixed_strides": (2, 3, 10, (2, 1), False, (2, 3, 9, 6), np.float32),
    "batch1_stride2": (2, 16, 24, 2, True, (1, 16, 17, 34), np.float32),
    "float64_stride2": (2, 12, 20, 2, True, (3, 12, 9, 8), np.float64),
    "float64_stride1": (2, 6, 5, 1, False, (2, 6, 4, 5), np.float64),
    "conv1d_stride2": (1, 6, 9, 2, True, (3, 6, 37), np.float32),
    # the input gradient's register tiles stored straight into the image gradient: output rows
    # of two vectors, of one (a pair of vectors spans two rows; 24 positions end on a single
    # one), float64's vectors of four
    "fused_two_vector_rows": (2, 16, 32, 2, False, (2, 16, 32, 32), np.float32),
    "fused_one_vector_rows": (2, 7, 20, 2, True, (2, 7, 6, 16), np.float32),
    "fused_float64": (2, 8, 10, 2, False, (2, 8, 8, 8), np.float64),
    # the weight gradient's transposed gather with a row stride of 3
    "strides_3_2_whole_vectors": (2, 8, 5, (3, 2), True, (2, 8, 10, 16), np.float32),
    # the weight gradient's four-vector tiles: two blocks of input channels, odd sizes,
    # float64's vectors of four
    "wide_two_channel_blocks": (2, 64, 13, 2, True, (3, 64, 7, 5), np.float32),
    "wide_float64_batch1": (2, 16, 7, 1, False, (1, 16, 3, 5), np.float64),
}

# the cases whose input gradient is stored by the register tiles (even image sizes, whole
# vectors of positions per output row)
FUSED = {"fused_two_vector_rows", "fused_one_vector_rows", "fused_float64", "shortcut_parallel"}
# the cases whose weight gradient gathers the strided positions straight into the transposed
# panel (stride 2 across an even width, whole vectors of channels and positions per row)
GATHERED_T = {"fused_two_vector_rows", "fused_float64", "shortcut_parallel", "float64_stride2",
              "strides_3_2_whole_vectors"}
# the cases whose weight gradient takes the four-vector tiles (input channels in whole
# blocks of four vectors)
WIDE = {"shortcut_32_64_stride2", "wide_two_channel_blocks", "wide_float64_batch1"}


def _conv(lib, rank, cin, cout, stride, bias):
    cls = lib.nn.Conv1d if rank == 1 else lib.nn.Conv2d
    return cls(cin, cout, 1, stride=stride, bias=bias)


@pytest.mark.parametrize("name", list(CASES))
def test_pointwise_conv_matches_torch(name):
    rank, cin, cout, stride, bias, shape, dtype = CASES[name]
    compiled, _, _ = _conv2d_twins_stepped((cin, cout, 1), dict(stride=stride, bias=bias),
                                           shape, dtype, layer=f"Conv{rank}d")
    source = compiled.source()
    assert _pointwise_kinds(source) == ALL_KINDS
    assert ("register tiles stored straight into the strided positions" in source) == \
        (name in FUSED and "input" in ALL_KINDS)
    assert ("subsampled by the stride and transposed" in source) == (name in GATHERED_T)
    assert ("four vectors of input channels" in source) == (name in WIDE)
    tn.manual_seed(0)
    model = _conv(tn, rank, cin, cout, stride, bias)
    check_compiled(model.double() if dtype == np.float64 else model, shape,
                   dtype=tn.float64 if dtype == np.float64 else tn.float32)


def test_symbolic_batch_two_sizes():
    """One compiled module at batch 3 and 5 (and 1): the kernels take the batch at run time."""
    tn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 32, 1, 2))
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, 1, 1), torch.nn.ReLU(),
                                 torch.nn.Conv2d(16, 32, 1, 2))
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for batch in (3, 5, 1):
        x = rng.standard_normal((batch, 4, 10, 10)).astype(np.float32)
        _step_against_torch(compiled, model, tmodel, x, 1e-4)
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source and _pointwise_kinds(source) == ALL_KINDS


def test_not_taken_with_padding_groups_or_a_wider_kernel():
    """Padding, groups and kernels past 1x1 stay with the general convolution kernels."""
    for conv in (nn.Conv2d(8, 8, 1, 2, padding=1), nn.Conv2d(8, 8, 1, 2, groups=2),
                 nn.Conv2d(8, 8, 3, 2, 1)):
        compiled = check_compiled(conv, (2, 8, 7, 7))
        assert _pointwise_kinds(compiled.source()) == set()


def test_transposed_1x1_output_padding_matches_torch():
    """A transposed 1x1 convolution with output padding: its gradient kernels see an input
    one row and column past the last strided position."""
    tn.manual_seed(0)
    args = (6, 10, 1)
    kwargs = dict(stride=2, output_padding=1)
    model = nn.ConvTranspose2d(*args, **kwargs)
    tmodel = torch.nn.ConvTranspose2d(*args, **kwargs)
    _copy_to_torch(model, tmodel)
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 4)).astype(np.float32)
    _step_against_torch(tn.compile(model), model, tmodel, x, 1e-4)


# --- the epilogues fused into the forward ------------------------------------------------------

def _shortcut_block(lib, bias):
    nn_, F = lib.nn, lib.nn.functional

    class Block(nn_.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn_.Conv2d(8, 8, 3, 2, 1, bias=False)
            self.bn = nn_.BatchNorm2d(8)
            self.short = nn_.Conv2d(6, 8, 1, 2, bias=bias)
            self.bn_short = nn_.BatchNorm2d(8)
            self.lift = nn_.Conv2d(6, 8, 3, 1, 1, bias=False)

        def forward(self, x):
            y = self.bn(self.conv(F.relu(self.lift(x))))
            # the shortcut's convolution first: its epilogue adds y and applies the relu
            return F.relu(self.bn_short(self.short(x)) + y)
    return Block()


@pytest.mark.parametrize("bias", [False, True])
def test_eval_batch_norm_residual_relu_fused(bias):
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _shortcut_block(tn, bias), _shortcut_block(torch, bias)
    source = _eval_follows_statistics(model, tmodel, (3, 6, 9, 9))
    assert "_conv_batch_norm_add_relu(" in source
    assert re.search(r"pointwise 1x1 convolution, .*?eval-mode batch norm, the residual, relu",
                     source, re.S)


def _keeps_both(lib, stride):
    """relu(conv(x)) * conv(x): the convolution's value and its relu both leave the kernel."""

    class KeepsBoth(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = lib.nn.Conv2d(5, 12, 1, stride)

        def forward(self, x):
            c = self.conv(x)
            return lib.nn.functional.relu(c) * c
    return KeepsBoth()


@pytest.mark.parametrize("stride", [1, 2])
def test_relu_with_the_value_before_it_kept(stride):
    tn.manual_seed(0)
    model, tmodel = _keeps_both(tn, stride), _keeps_both(torch, stride)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((2, 5, 7, 6)).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    source = compiled.source()
    assert "rplane[p] = v <= 0 ? 0 : v" in source
    assert _pointwise_kinds(source) == ALL_KINDS


def test_bias_relu_training_matches_torch():
    tn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(7, 9, 1, 2), nn.ReLU())
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(7, 9, 1, 2), torch.nn.ReLU())
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((4, 7, 11, 10)).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    assert _pointwise_kinds(compiled.source()) == ALL_KINDS


# --- NaN-filled work memory, split between threads ---------------------------------------------

def _between_two_convs(channels, stride, size):
    """A 1x1 convolution (``channels`` in, 11 out) between two 3x3 ones, compiled, a step of
    five and then of two images (a symbolic batch) against torch; the compiled source."""
    tn.manual_seed(0)

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(3, channels, 3, 1, 1),
                                 lib.nn.Conv2d(channels, 11, 1, stride),
                                 lib.nn.Conv2d(11, 4, 3, 1, 1))
    model, tmodel = make(tn), make(torch)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for batch in (5, 2):
        x = rng.standard_normal((batch, 3) + size).astype(np.float32)
        _step_against_torch(compiled, model, tmodel, x, 1e-4)
    return compiled.source()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("stride,size", [(2, (9, 10)), (3, (9, 10)), (2, (16, 16))])
def test_nan_arena_threads(nan_arenas_split, threads, stride, size):
    """The 1x1 convolution between two others: its input gradient, in work memory, feeds the
    first one's backward, so a position between the strided ones left unwritten shows as
    NaN (16x16: written by the register tiles); the weight gradient's per-thread sums start
    from NaN memory (three threads over five images split unevenly)."""
    tn.set_num_threads(threads)
    source = _between_two_convs(8, stride, size)
    assert _pointwise_kinds(source) == ALL_KINDS
    assert "#pragma omp barrier" in source


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_wide_tiles_nan_arena_threads(nan_arenas_split, threads):
    """The weight gradient's four-vector tiles (32 input channels) over NaN work memory, five
    and then two images of one compiled step (a symbolic batch) split between threads: each
    thread's first image stores its sums, the later ones add to them."""
    tn.set_num_threads(threads)
    assert "four vectors of input channels" in _between_two_convs(32, 2, (9, 10))


# --- a training-mode batch norm's statistics summed on the forward's register tiles ------------

_LANES = {np.float32: 8, np.float64: 4}  # the register tiles' vector (conv_pointwise._VL)

# name -> (in channels, out channels, stride, bias, input shape, dtype, bias offset)
STATS_CASES = {
    "shortcut_16_32": (16, 32, 2, False, (4, 16, 32, 32), np.float32, 0.0),
    "shortcut_32_64": (32, 64, 2, False, (3, 32, 16, 16), np.float32, 0.0),
    # means about 100 times the deviations (a large bias): the sums are of deviations from a
    # value of the channel
    "large_mean_bias": (8, 13, 2, True, (2, 8, 8, 16), np.float32, 100.0),
    # odd channel counts (tiles of 6, 4, 2 and 1 rows), a single last vector of positions
    "odd_channels_one_vector": (5, 11, 1, True, (2, 5, 4, 6), np.float64, 0.0),
    "batch1_stride1": (7, 9, 1, False, (1, 7, 8, 8), np.float32, 0.0),
    # 5x5 positions, not whole vectors: summed per plane after the GEMM
    "positions_not_vectors": (6, 10, 2, True, (3, 6, 9, 9), np.float32, 0.0),
    # 17x19 positions: per plane, in runs of 256 (the last one partial), with a large mean
    "plane_runs_large_mean": (8, 13, 1, True, (2, 8, 17, 19), np.float32, 100.0),
}


def _conv_bn(lib, cin, cout, stride, bias):
    return lib.nn.Sequential(lib.nn.Conv2d(cin, cout, 1, stride=stride, bias=bias),
                             lib.nn.BatchNorm2d(cout))


def _stats_on_tiles(source):
    return "sum its statistics per channel, in lanes" in source


@pytest.mark.parametrize("name", list(STATS_CASES))
def test_training_batch_norm_statistics_match_torch(name):
    """conv 1x1 -> training batch norm: output, input and parameter gradients and the running
    statistics against PyTorch over two steps; the statistics are summed on the register
    tiles exactly when the positions are whole vectors."""
    cin, cout, stride, bias, shape, dtype, offset = STATS_CASES[name]
    tn.manual_seed(0)
    model, tmodel = _conv_bn(tn, cin, cout, stride, bias), _conv_bn(torch, cin, cout, stride,
                                                                     bias)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    if offset:
        model[0].bias.data.copy_(model[0].bias.data + offset)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    # (with a large bias, its gradient, zero but for rounding, is ~1e-4 of noise in both)
    tol = 1e-9 if dtype == np.float64 else 5e-4 if offset else 1e-4
    for _ in range(2):
        x = rng.standard_normal(shape).astype(dtype)
        _step_against_torch(compiled, model, tmodel, x, tol)
        bn, tbn = model[1], tmodel[1]
        for ours, theirs in ((bn.running_mean, tbn.running_mean),
                             (bn.running_var, tbn.running_var)):
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=tol, atol=tol)
    oh, ow = (-(-s // stride) for s in shape[2:])
    assert _stats_on_tiles(compiled.source()) == ((oh * ow) % _LANES[dtype] == 0)


def test_training_batch_norm_statistics_symbolic_batch():
    """One compiled module at batch 3, 1 and 5: the tiles' per-image sums merged over the
    batch given at run time."""
    tn.manual_seed(0)
    model, tmodel = _conv_bn(tn, 16, 32, 2, False), _conv_bn(torch, 16, 32, 2, False)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for batch in (3, 1, 5):
        _step_against_torch(compiled, model, tmodel,
                            rng.standard_normal((batch, 16, 8, 8)).astype(np.float32), 1e-4)
    assert _stats_on_tiles(compiled.source())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_training_batch_norm_statistics_nan_arena_threads(nan_arenas_split, threads):
    """The per-thread sums start from NaN work memory, five images split between threads."""
    tn.set_num_threads(threads)
    tn.manual_seed(0)
    model, tmodel = _conv_bn(tn, 16, 24, 2, True), _conv_bn(torch, 16, 24, 2, True)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((5, 16, 8, 16)).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    assert _stats_on_tiles(compiled.source())
    assert "omp_get_thread_num() * 24 + o) * 3" in compiled.source()
