"""The Winograd weight gradient's fused products (templates/conv_winograd_weight.c.j2,
``fused_pass``): with AVX-512, float32 and whole 64-byte vectors of output channels, A dy A^T
is made in registers from the transposed output gradient inside the products (one or two
vectors of output channels). Against PyTorch and eager mode over one and two vectors of output
channels, input channels past the passes' blocks of six, odd widths and heights (a zero column
and row past the edges), blocks of several small images (the last one partial), batch 1, a
symbolic batch and NaN-filled work memory on 1-3 threads; not taken in float64, with AVX2
only, on output channels that are not whole vectors or more than two, where D stays in
memory."""
import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet.runtime import target as runtime_target

from compile_checks import check_compiled
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_conv_kernels import _copy_to_torch, _step_against_torch, _stepped_twins
from test_conv_winograd_weight import _conv, _takes_it

FUSED = "transposed, vectors\n                   along the output channels"
FROM_ROWS = "split into even and odd columns in registers"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _fused_here():
    return runtime_target.current().vector_bits >= 512


# name -> (in channels, out channels, input shape, dtype)
CASES = {
    # the ResNet's 16 channels on 32x32: 6 + 6 + 4 input channels a pass
    "resnet_16x16_32x32": (16, 16, (2, 16, 32, 32), np.float32),
    # two vectors out, 17 channels in (padded to 24), odd width and height
    "odd_17_to_32_odd_size": (17, 32, (2, 17, 13, 11), np.float32),
    # two vectors out, eight 8x8 images a block: a block of eight and a partial one of one
    "small_images_32_batch9": (64, 32, (9, 64, 8, 8), np.float32),
    # one vector out, batch 1, odd sizes
    "one_vector_batch1": (24, 16, (1, 24, 7, 15), np.float32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fused_products_match_torch_and_eager(march, name):
    cin, cout, shape, dtype = CASES[name]
    tn.manual_seed(0)
    model, tmodel = _conv(tn, cin, cout, True, dtype), _conv(torch, cin, cout, True, dtype)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    source = compiled.source()
    _takes_it(source)
    assert (FUSED in source) == _fused_here()
    assert (FROM_ROWS in source) == (not _fused_here())
    eager = check_compiled(model, shape, tol=1e-4)
    assert (FUSED in eager.source()) == _fused_here()


# name -> (in channels, out channels, input shape, dtype): D stays in memory
NOT_FUSED = {
    "float64": (16, 16, (2, 16, 8, 10), np.float64),
    "out_channels_not_vectors": (16, 24, (2, 16, 8, 8), np.float32),
    "three_vectors_out": (16, 48, (2, 16, 8, 8), np.float32),
}


@pytest.mark.parametrize("name", list(NOT_FUSED))
def test_not_fused_off_its_shapes(name):
    cin, cout, shape, dtype = NOT_FUSED[name]
    tn.manual_seed(0)
    model, tmodel = _conv(tn, cin, cout, False, dtype), _conv(torch, cin, cout, False, dtype)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    _step_against_torch(compiled, model, tmodel, x, 1e-10 if dtype == np.float64 else 1e-4)
    source = compiled.source()
    _takes_it(source)
    assert FUSED not in source and FROM_ROWS in source


def test_symbolic_batch():
    """One compiled module at batch 10, 3 and 1 on 8x8 images: blocks of eight images, the
    last one partial, follow the batch at run time."""
    compiled = _stepped_twins(
        lambda lib: _conv(lib, 16, 32, True, np.float32),
        [(batch, 16, 8, 8) for batch in (10, 3, 1)])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source
    assert (FUSED in source) == _fused_here()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("size", [(32, 32), (9, 11)])
def test_nan_arena_threads(nan_arenas_split, threads, size):
    """Work memory all NaN, batch 5 and 2 split between 1-3 threads (over two images one
    thread has none, its sums start from NaN memory): the transposed rows, their zero row and
    column past odd sizes and the sums are all written before they are read."""
    tn.set_num_threads(threads)

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(16, 32, 3, 1, 1), lib.nn.ReLU(),
                                 lib.nn.Conv2d(32, 16, 3, 1, 1))
    compiled = _stepped_twins(make, [(batch, 16) + size for batch in (5, 2)])
    source = compiled.source()
    _takes_it(source, 2)
    assert source.count(FUSED) == (2 if _fused_here() else 0)
    assert "omp_get_thread_num()" in source
