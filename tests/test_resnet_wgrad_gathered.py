"""The weight gradient's AVX-512 tile for its gathered GEMM (templates/conv_backward_weight.c.j2,
``_gtile``: one channel's taps at constant offsets from one pointer x one or two vectors of 16
output channels), the ResNet's stride-2 3x3 gradients: against PyTorch and eager mode over one,
two and four vectors of output channels, odd sizes, several images a call (the last call
partial), more positions than a chunk, groups, batch 1, a symbolic batch and NaN-filled work
memory on 1-3 threads; with AVX2 only, in float64, or with more taps than registers the GEMM
core keeps it."""
import numpy as np
import pytest

import tracenet as tn
from tracenet.runtime import target as runtime_target

from compile_checks import check_compiled
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_conv_kernels import _conv2d_twins_stepped, _stepped_twins

TILE = "the gathered GEMM's AVX-512 tile"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _avx512():
    return runtime_target.current().vector_bits >= 512


# name -> (Conv2d arguments, keywords, input shape, dtype, whether the tile takes it)
CASES = {
    # the ResNet's 16 -> 32 on 32x32: 256 positions a call, two vectors
    "resnet_16_to_32": ((16, 32, 3, 2, 1), dict(bias=False), (2, 16, 32, 32), np.float32, True),
    # 32 -> 64 on 16x16: four 64-position images a call, the last call partial (batch 5)
    "resnet_32_to_64_batch5": ((32, 64, 3, 2, 1), dict(bias=False), (5, 32, 16, 16), np.float32,
                               True),
    # one vector, odd sizes, batch 1, a bias
    "one_vector_odd_batch1": ((5, 16, 3, 2, 1), {}, (1, 5, 13, 11), np.float32, True),
    # 1024 positions a call: four chunks of 256
    "chunks_of_positions": ((3, 32, 3, 2, 1), {}, (2, 3, 64, 64), np.float32, True),
    # two groups of 16 output channels
    "grouped": ((8, 32, 3, 2, 1), dict(groups=2), (2, 8, 9, 10), np.float32, True),
    # 25 taps x 1 vector: more than 24 accumulators
    "five_by_five": ((4, 16, 5, 2, 2), {}, (2, 4, 12, 12), np.float32, False),
    "float64": ((4, 16, 3, 2, 1), {}, (2, 4, 9, 9), np.float64, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gathered_tile_matches_torch_and_eager(march, name):
    args, kw, shape, dtype, takes = CASES[name]
    compiled, model, tol = _conv2d_twins_stepped(args, kw, shape, dtype)
    assert (TILE in compiled.source()) == (takes and _avx512())
    eager = check_compiled(model, shape, dtype=tn.float64 if dtype == np.float64 else tn.float32,
                           tol=tol)
    assert (TILE in eager.source()) == (takes and _avx512())


def test_symbolic_batch():
    """One compiled module at batch 6, 3 and 1 on 8x8 outputs: four images a call, the last
    call partial, at run time."""
    compiled = _stepped_twins(lambda lib: lib.nn.Conv2d(32, 64, 3, 2, 1, bias=False),
                              [(batch, 32, 16, 16) for batch in (6, 3, 1)])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source
    assert (TILE in source) == _avx512()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_nan_arena_threads(nan_arenas_split, threads):
    """Work memory all NaN, batch 5 and 2 split between 1-3 threads (over two images one
    thread has none, its sums start from NaN memory): the padded images, the transposed output
    gradients and the sums are all written before they are read."""
    tn.set_num_threads(threads)

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(16, 32, 3, 2, 1), lib.nn.ReLU(),
                                 lib.nn.Conv2d(32, 64, 3, 2, 1))
    compiled = _stepped_twins(make, [(batch, 16, 16, 16) for batch in (5, 2)])
    source = compiled.source()
    assert source.count(TILE) == (2 if _avx512() else 0)
    assert "omp_get_thread_num()" in source
