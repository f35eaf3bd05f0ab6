"""The batch-norm backward's sums on planes of fewer than 256 values
(templates/norm_batch_norm_backward.c.j2): each plane adds into two 32-byte vectors per sum,
reduced in halves, the relu's mask (``norm_backward``) applied on the bits of the value the
forward computed, the tail of a plane not a whole number of vector pairs summed one value at
a time. Compiled steps (``compile_step``) against PyTorch's and eager mode's, the batch norm
alone, masked (``norm_backward``) and in pairs (``norm_backward_pair``): the ResNet's 8x8
planes, odd planes shorter than a vector pair or with tails, batch 1, float64, a symbolic
batch, work memory filled with NaN on 1-3 threads; planes of 256 values keep the omp simd
loop."""
import numpy as np
import pytest

import sweep
import tracenet as tn

from compile_checks import nan_filled_arenas
import test_resnet_bnb2_pair as pair
import test_resnet_relu_mask_backward as masked

# the vector sums' comment in the kernel
SHORT = "planes of fewer than 256 values: each adds into two 32-byte vectors per"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


# name -> (in channels, channels, affine, input shape, dtype): masked batch norms (stride 1)
MASKED = {
    "resnet_64ch_8x8": (16, 64, True, (2, 16, 8, 8), np.float32),
    "tail_5x7": (3, 6, True, (3, 3, 5, 7), np.float32),
    "one_vector_3x5": (3, 5, True, (2, 3, 3, 5), np.float32),
    "batch1_9x9": (4, 8, False, (1, 4, 9, 9), np.float32),
    "float64_6x7": (3, 7, True, (2, 3, 6, 7), np.float64),
}


# the default run: whole vector pairs (the ResNet's 8x8), a plane shorter than a pair, a tail
# (batch 1's 9x9, not affine) and float64; 5x7 (another tail) with -m sweep
DEFAULT_MASKED = set(MASKED) - {"tail_5x7"}


@sweep.keep(lambda p: p["name"] in DEFAULT_MASKED)
@pytest.mark.parametrize("name", list(MASKED))
def test_masked_matches_torch_and_eager(name):
    cin, c, affine, shape, dtype = MASKED[name]
    model, tmodel = masked._models(cin, c, affine, dtype)
    batches = [masked._data(shape, dtype, seed) for seed in range(2)]
    step = masked._steps_against_torch_and_eager(model, tmodel, batches, masked._tol(dtype))
    source = step.source()
    assert masked._kernels(source) == (1, 0)
    assert SHORT in source.split(masked.MASKED)[1].split("\n}\n")[0]


# name -> (in channels, channels, stride, bn2 affine, the shortcut's eps, input shape, dtype)
PAIRS = {
    "resnet_32to64_16x16": (32, 64, 2, True, 1e-5, (2, 32, 16, 16), np.float32),
    "tail_3to5_9x13": (3, 5, 2, True, 1e-5, (2, 3, 9, 13), np.float32),
    "float64_4to6_10x10": (4, 6, 2, False, 1e-3, (2, 4, 10, 10), np.float64),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_pair_matches_torch_and_eager(name):
    cin, c, stride, affine, eps2, shape, dtype = PAIRS[name]
    model, tmodel = pair._models(cin, c, stride, affine, eps2, dtype)
    batches = [pair._data(shape, dtype, seed) for seed in range(2)]
    step = pair._steps_against_torch_and_eager(
        model, tmodel, lambda: pair._net(tn, cin, c, stride, affine, eps2), batches,
        pair._tol(dtype))
    source = step.source()
    assert SHORT in source.split(pair.PAIR)[1].split("\n}\n")[0]


def test_symbolic_batch():
    """One specialisation for batches 3, 1 and 5, on 6x7 planes."""
    model, tmodel = masked._models(3, 8, True, np.float32)
    batches = [masked._data((n, 3, 6, 7), np.float32, n) for n in (3, 1, 5)]
    step = masked._steps_against_torch_and_eager(model, tmodel, batches, 2e-4)
    assert len(step._specs) == 1
    source = step.source()
    assert "tn_N" in source and SHORT in source.split(masked.MASKED)[1].split("\n}\n")[0]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_on_nan_arenas(monkeypatch, threads):
    """Enough elements to split the channels between threads (8x8 planes); the work memory is
    all NaN, so the kernels read only what this call wrote."""
    nan_filled_arenas(monkeypatch)
    old = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        model, tmodel = masked._models(8, 64, True, np.float32)
        batches = [masked._data((32, 8, 8, 8), np.float32, seed) for seed in range(2)]
        step = masked._steps_against_torch_and_eager(model, tmodel, batches, 2e-4,
                                                     dynamic=False)
        body = step.source().split(masked.MASKED)[1].split("\n}\n")[0]
        assert SHORT in body and "omp_get_num_threads" in body
    finally:
        tn.set_num_threads(old)


def test_planes_of_256_keep_the_simd_loop():
    model, tmodel = masked._models(4, 8, True, np.float32)
    batches = [masked._data((2, 4, 16, 16), np.float32, seed) for seed in range(2)]
    step = masked._steps_against_torch_and_eager(model, tmodel, batches, 2e-4)
    assert SHORT not in step.source() and masked._kernels(step.source()) == (1, 0)
