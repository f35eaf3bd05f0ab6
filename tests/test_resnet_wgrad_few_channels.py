"""The Winograd weight gradient of 3x3 stride-1 padding-1 convolutions with few input channels
(templates/conv_winograd_weight_few.c.j2, the ResNet's stem): against PyTorch and eager mode
over 1-3 input channels, one and several vectors of output channels, square and oblong even
sizes down to 2x2, batch 1, with a bias, at a symbolic batch and with NaN-filled work memory on
1-3 threads; taken with AVX-512 only, and not off its shapes (odd sizes, 4 channels in, output
channels not whole vectors, float64), where the other kernels keep the gradient."""
import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet.codegen.lowerings import conv
from tracenet.runtime import target as runtime_target

from compile_checks import check_compiled
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_conv_kernels import _copy_to_torch, _step_against_torch, _stepped_twins
from test_conv_winograd_weight import _conv

FEW = "winograd 3x3 convolution weight gradient F(2x2,3x3) with few input channels"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _winograd_form(monkeypatch):
    """The direct few-channel weight gradient (tests/test_resnet_stem_kernels.py) takes rows of
    whole vectors first; these tests keep the Winograd form on the shapes both take."""
    monkeypatch.setattr(conv, "_few_channels_weight_geometry", lambda *args: None)


def _avx512():
    return runtime_target.current().vector_bits >= 512


# name -> (in channels, out channels, bias, input shape)
CASES = {
    "stem_32x32": (3, 16, False, (2, 3, 32, 32)),
    "one_channel_oblong_batch1": (1, 16, True, (1, 1, 6, 10)),
    "two_channels_two_vectors": (2, 32, True, (3, 2, 14, 8)),
    "smallest_2x2": (3, 48, False, (2, 3, 2, 2)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_few_channels_match_torch_and_eager(march, name):
    cin, cout, bias, shape = CASES[name]
    tn.manual_seed(0)
    model = _conv(tn, cin, cout, bias, np.float32)
    tmodel = _conv(torch, cin, cout, bias, np.float32)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    assert compiled.source().count(FEW) == (1 if _avx512() else 0)
    eager = check_compiled(model, shape, tol=1e-4)
    assert eager.source().count(FEW) == (1 if _avx512() else 0)


def test_stem_batch32_against_float64():
    """Batch 32 of the ResNet's stem: sums over 8192 tiles an output, where float32 sums in
    any order part from PyTorch's by more than the tests' 1e-4 (by 2.9e-3 on values up to
    540); against the float64 result the largest error stays within 1e-5 of the largest
    value (PyTorch's own 2.4e-3, this kernel's 2.0e-3)."""
    tn.manual_seed(0)
    model = _conv(tn, 3, 16, False, np.float32)
    compiled = tn.compile(model)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    gy = rng.standard_normal((32, 16, 32, 32)).astype(np.float32)
    compiled(tn.from_numpy(x)).backward(tn.from_numpy(gy))
    exact = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), (16, 3, 3, 3),
                                        torch.from_numpy(gy).double(), padding=1).numpy()
    error = np.abs(model.weight.grad.numpy() - exact).max()
    assert error <= 1e-5 * np.abs(exact).max()
    assert compiled.source().count(FEW) == (1 if _avx512() else 0)


def test_symbolic_batch():
    """One compiled module at batch 5, 2 and 1."""
    compiled = _stepped_twins(
        lambda lib: _conv(lib, 3, 16, True, np.float32),
        [(batch, 3, 8, 12) for batch in (5, 2, 1)])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source
    assert source.count(FEW) == (1 if _avx512() else 0)


# name -> (in channels, out channels, input shape, dtype): shapes the kernel leaves
NOT_TAKEN = {
    "odd_width": (3, 16, (2, 3, 8, 9), np.float32),
    "odd_height": (3, 16, (2, 3, 7, 8), np.float32),
    "four_channels": (4, 16, (2, 4, 8, 8), np.float32),
    "eight_out_channels": (3, 8, (2, 3, 8, 8), np.float32),
    "float64": (3, 16, (2, 3, 8, 8), np.float64),
}


@pytest.mark.parametrize("name", list(NOT_TAKEN))
def test_not_taken_off_its_shapes(name):
    cin, cout, shape, dtype = NOT_TAKEN[name]
    tn.manual_seed(0)
    model, tmodel = _conv(tn, cin, cout, True, dtype), _conv(torch, cin, cout, True, dtype)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    _step_against_torch(compiled, model, tmodel, x, 1e-10 if dtype == np.float64 else 1e-4)
    assert FEW not in compiled.source()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_nan_arena_threads(nan_arenas_split, threads):
    """Work memory all NaN, batch 5 and 2 split between 1-3 threads (over two images one
    thread has none, its sums start from NaN memory): the split rows' zero edges, the
    transposed output gradient and the sums are all written before they are read."""
    tn.set_num_threads(threads)

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(3, 16, 3, 1, 1), lib.nn.ReLU(),
                                 lib.nn.Conv2d(16, 16, 3, 1, 1))
    compiled = _stepped_twins(make, [(batch, 3, 10, 12) for batch in (5, 2)])
    source = compiled.source()
    assert source.count(FEW) == (1 if _avx512() else 0)
    assert "omp_get_thread_num()" in source
