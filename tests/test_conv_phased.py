"""The input gradient of 3x3 convolutions of stride 2 and padding 1 on even image sizes, by
phases (lowerings/conv_phased.py): against PyTorch (values, input and weight gradients) over
the ResNet's channel counts, odd channel counts, rows that are not whole vectors, batch 1, a
symbolic batch, float64, with and without bias, after a relu and before a training batch
norm; odd sizes keep the general kernel; in NaN-filled work memory split between 1-3 threads,
every element of the image gradient written."""
import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _step_against_torch, _stepped_twins
from tracenet.codegen.lowerings import conv_winograd_s2


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _without_winograd_phases(monkeypatch):
    """The phases' Winograd form (lowerings/conv_winograd_s2.py) takes these shapes from 8
    channels on; the phased kernel, which keeps fewer channels, is tested on all of them."""
    monkeypatch.setattr(conv_winograd_s2, "takes_input_gradient", lambda geo, ct, target: False)


_PHASED = "the four\n       phases (row and column parity) of the input gradient"


def _phased(source):
    return _PHASED in source


def _net(lib, cin, cout, bias, first=3):
    """A convolution before (so the strided one's input gradient is needed), the strided one,
    a training batch norm after it."""
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(first, cin, 3, 1, 1), nn.ReLU(),
                         nn.Conv2d(cin, cout, 3, 2, 1, bias=bias), nn.BatchNorm2d(cout))


# name -> (in channels, out channels, bias, input shape, dtype)
CASES = {
    "resnet_16_32": (16, 32, False, (2, 3, 32, 32), np.float32),
    "resnet_32_64": (32, 64, False, (3, 3, 16, 16), np.float32),
    # 5 output columns: no whole vector per row; 3 rows
    "odd_channels_short_rows": (5, 7, True, (2, 3, 6, 10), np.float32),
    "batch1_wide": (8, 12, True, (1, 3, 4, 36), np.float32),
    "float64": (6, 10, False, (2, 3, 8, 12), np.float64),
    "float64_vectors": (4, 9, True, (3, 3, 10, 16), np.float64),
}
# the default run: the ResNet's 16->32 shape, odd channels and short rows, batch 1 and float64;
# the 32->64 shape and float64 on whole vectors with -m sweep
DEFAULT_CASES = {"resnet_16_32", "odd_channels_short_rows", "batch1_wide", "float64"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_phased_input_gradient_matches_torch(name):
    cin, cout, bias, shape, dtype = CASES[name]
    tn.manual_seed(0)
    model, tmodel = _net(tn, cin, cout, bias), _net(torch, cin, cout, bias)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    _step_against_torch(compiled, model, tmodel, x, 1e-9 if dtype == np.float64 else 2e-4)
    assert _phased(compiled.source())
    tn.manual_seed(0)
    model = _net(tn, cin, cout, bias)
    check_compiled(model.double() if dtype == np.float64 else model, shape,
                   dtype=tn.float64 if dtype == np.float64 else tn.float32, tol=2e-4)


@pytest.mark.parametrize("shape", [(2, 3, 9, 10), (2, 3, 10, 9)])
def test_odd_sizes_keep_the_general_kernel(shape):
    """An odd height or width: the last input row or column has no phase partner; the general
    kernel (column gradients, col2im) takes it, and still matches PyTorch."""
    tn.manual_seed(0)
    model, tmodel = _net(tn, 4, 6, True), _net(torch, 4, 6, True)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 2e-4)
    assert not _phased(compiled.source())


def test_symbolic_batch():
    """One compiled module at batch 3, 1 and 4."""
    compiled = _stepped_twins(
        lambda lib: _net(lib, 8, 16, False), [(batch, 3, 8, 16) for batch in (3, 1, 4)], 2e-4)
    assert _phased(compiled.source())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_nan_arena_threads(nan_arenas_split, threads):
    """Five images split between threads, work memory all NaN: the padded copy's zeros and
    every element of the image gradient are written."""
    tn.set_num_threads(threads)
    compiled = _stepped_twins(
        lambda lib: _net(lib, 8, 12, True), [(batch, 3, 12, 16) for batch in (5, 2)], 2e-4)
    assert _phased(compiled.source())
