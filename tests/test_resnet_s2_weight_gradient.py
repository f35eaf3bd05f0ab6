"""The gathered weight gradient of padded strided convolutions (the ResNet's stride-2 3x3
ones, templates/conv_backward_weight.c.j2) zeroes its padded images' borders once a call and
each image then writes only its inside: against PyTorch (values, input and weight gradients)
and eager mode in float32 and float64, natively and with AVX2 only, at batch 1 and others,
several images a call with a last partial one, a symbolic batch, and NaN-filled work memory
split between one and two threads (a border left unzeroed reads as NaN). With AVX-512 the
tiles also fetch the next call's inputs into the cache (hints that change no result: their
source is checked to have them wherever the tile runs), and when a call's positions are one
chunk of the tile, copy and sum the padded planes a channel at a time (more positions, groups
and odd sizes here too). Unpadded convolutions
(the images read in place) and output channels that are not whole vectors fall back to forms
without the padded images."""
import numpy as np
import pytest

import sweep
import tracenet as tn

from compile_checks import check_compiled
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_conv_kernels import _conv2d_twins_stepped, _stepped_twins

ZEROED_ONCE = "the padded images' borders, zeroed once"
TILE = "the gathered GEMM's AVX-512 tile"
FETCHES_NEXT = "share out the next call's images"
PLANES = "channel by channel: its padded planes"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


_STRIDE2 = dict(stride=2, padding=1, bias=False)

# name -> (Conv2d arguments, keywords, input shape, dtype, whether the padded images are zeroed
# once a call, whether the AVX-512 tile copies them a channel at a time)
CASES = {
    # the ResNet's 16 -> 32 on 32x32: one image a call
    "resnet_16_to_32": ((16, 32, 3), _STRIDE2, (3, 16, 32, 32), np.float32, True, True),
    # 32 -> 64 on 16x16: four images a call, the last of one (batch 9)
    "resnet_32_to_64_batch9": ((32, 64, 3), _STRIDE2, (9, 32, 16, 16), np.float32, True, True),
    "resnet_32_to_64_batch1": ((32, 64, 3), _STRIDE2, (1, 32, 16, 16), np.float32, True, True),
    # odd sizes: the last row and column of the padding never read
    "odd_sizes_bias": ((5, 16, 3), dict(stride=2, padding=1), (2, 5, 13, 11), np.float32, True,
                       True),
    # two groups of 16 output channels: each group's planes
    "grouped": ((8, 32, 3), dict(stride=2, padding=1, groups=2), (3, 8, 9, 10), np.float32, True,
                True),
    # padding 2 and a 5x5 kernel: more border than the 3x3's
    "five_by_five_padding2": ((4, 16, 5), dict(stride=2, padding=2), (3, 4, 12, 12), np.float32,
                              True, False),
    # 1024 positions an image: four chunks, the whole padded images
    "chunks_of_positions": ((3, 32, 3), _STRIDE2, (2, 3, 64, 64), np.float32, True, False),
    "float64": ((6, 8, 3), dict(stride=2, padding=1), (7, 6, 10, 10), np.float64, True, False),
    # no padding: the images read in place
    "unpadded": ((8, 16, 3), dict(stride=2, padding=0), (3, 8, 9, 9), np.float32, False, False),
    # 12 output channels, not whole vectors: no gathered GEMM
    "not_whole_vectors": ((8, 12, 3), _STRIDE2, (2, 8, 9, 9), np.float32, False, False),
}


# the default run: every form but the ResNet's 16 -> 32 (one image a call, as 32 -> 64 at
# batch 1), which runs with -m sweep
DEFAULT_CASES = set(CASES) - {"resnet_16_to_32"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_weight_gradient_matches_torch_and_eager(march, name):
    args, kw, shape, dtype, zeroed_once, planes = CASES[name]
    compiled, model, tol = _conv2d_twins_stepped(args, kw, shape, dtype)
    assert (ZEROED_ONCE in compiled.source()) == zeroed_once
    assert (FETCHES_NEXT in compiled.source()) == (TILE in compiled.source())
    assert (PLANES in compiled.source()) == (planes and TILE in compiled.source())
    checked = check_compiled(model, shape, dtype=tn.float64 if dtype == np.float64 else tn.float32,
                             tol=tol)
    assert (ZEROED_ONCE in checked.source()) == zeroed_once


def test_symbolic_batch():
    """One compiled module at batch 6, 3 and 1: the images of each call zeroed once at run
    time, whatever the batch."""
    compiled = _stepped_twins(lambda lib: lib.nn.Conv2d(32, 64, 3, 2, 1, bias=False),
                              [(batch, 32, 16, 16) for batch in (6, 3, 1)])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source and ZEROED_ONCE in source
    assert (FETCHES_NEXT in source) == (TILE in source)
    assert (PLANES in source) == (TILE in source)


# the default run: float32 on one and two threads; float64 (whose form the float64 case above
# checks) with -m sweep
DEFAULT_NAN_DTYPE = np.float32


@sweep.keep(lambda p: p["dtype"] == DEFAULT_NAN_DTYPE)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_arena_threads(nan_arenas_split, threads, dtype):
    """Work memory all NaN, batches 9, 5 and 1 split between one and two threads (a thread's
    calls after its first reuse the borders its first zeroed; at batch 1 one thread has no
    images): every border reads as zero."""
    tn.set_num_threads(threads)

    def make(lib):
        net = lib.nn.Sequential(lib.nn.Conv2d(16, 32, 3, 2, 1), lib.nn.ReLU(),
                                lib.nn.Conv2d(32, 64, 3, 2, 1, bias=False))
        return net.double() if dtype == np.float64 else net
    compiled = _stepped_twins(make, [(batch, 16, 16, 16) for batch in (9, 5, 1)],
                              tol=1e-10 if dtype == np.float64 else 1e-4, dtype=dtype)
    source = compiled.source()
    assert source.count(ZEROED_ONCE) == 2
    assert source.count(PLANES) == (2 if TILE in source else 0)
    assert "omp_get_thread_num()" in source
