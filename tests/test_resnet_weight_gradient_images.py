"""The gathered weight gradient of strided convolutions with few output positions takes several
images per GEMM call (lowerings/conv.py's _batch_gathered_images: at least 256 positions a
call; the ResNet's 32->64 stride-2 convolution on 8x8 outputs, four images a call): against
PyTorch (values, input and weight gradients) and eager mode, with a last call of fewer images
than the others, a batch smaller than one call, no padding (the images read in place), groups,
float64, a symbolic batch, and NaN-filled work memory split between 1-3 threads."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _step_against_torch


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _images_per_call(source):
    """The images one gathered GEMM of the weight gradient takes, from its kernel's comment
    (1 when it takes one image, None without a gathered weight gradient)."""
    found = re.search(r"transposed: per (\d+ images|image) and group, a\s+gathered GEMM", source)
    if found is None:
        return None
    return 1 if found.group(1) == "image" else int(found.group(1).split()[0])


def _net(lib, cin, cout, kwargs):
    """A convolution before (so the strided one's input gradient is needed too), the strided
    one, a training batch norm after it, as in the ResNet's downsampling blocks."""
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(3, cin, 3, 1, 1), nn.ReLU(),
                         nn.Conv2d(cin, cout, 3, **kwargs), nn.BatchNorm2d(cout))


def _compiled_pair(cin, cout, kwargs, double=False):
    """The tracenet net compiled, and its torch twin with the same parameters."""
    tn.manual_seed(0)
    model, tmodel = _net(tn, cin, cout, kwargs), _net(torch, cin, cout, kwargs)
    if double:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    return tn.compile(model), model, tmodel


_STRIDE2 = dict(stride=2, padding=1, bias=False)


# name -> (in channels, out channels, Conv2d keywords, input shape, dtype, images per call)
CASES = {
    # the ResNet's 32->64 stride-2 convolution on 8x8 outputs: 64 positions, four images a
    # call, the last call of two
    "resnet_32_64": (32, 64, _STRIDE2, (6, 3, 16, 16), np.float32, 4),
    "batch_1": (32, 64, _STRIDE2, (1, 3, 16, 16), np.float32, 4),
    # no padding: the images read in place, 16 apart in the batch; 16 positions, 16 images a
    # call, one call of five
    "unpadded": (8, 16, dict(stride=2, padding=0), (5, 3, 9, 9), np.float32, 16),
    # two groups of eight output channels, positions not a multiple of six
    "groups": (4, 16, dict(stride=2, padding=1, groups=2), (7, 3, 9, 7), np.float32, 12),
    # four lanes a vector; 25 positions, ten images a call, the last of two
    "float64": (6, 8, dict(stride=2, padding=1), (12, 3, 10, 10), np.float64, 10),
}


# the default run: every images-a-call form, four (a batch of 1, smaller than a call), sixteen
# unpadded, twelve in groups, ten in float64 (each with a last call of fewer); the ResNet's
# batch of 6 (four a call again, the last of two) with -m sweep
DEFAULT_CASES = set(CASES) - {"resnet_32_64"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_images_per_call_match_torch_and_eager(name):
    cin, cout, kwargs, shape, dtype, images = CASES[name]
    compiled, model, tmodel = _compiled_pair(cin, cout, kwargs, dtype == np.float64)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    _step_against_torch(compiled, model, tmodel, x, 1e-9 if dtype == np.float64 else 2e-4)
    assert _images_per_call(compiled.source()) == images
    tn.manual_seed(0)
    model = _net(tn, cin, cout, kwargs)
    check_compiled(model.double() if dtype == np.float64 else model, shape,
                   dtype=tn.float64 if dtype == np.float64 else tn.float32, tol=2e-4)


def test_many_positions_keep_one_image_a_call():
    """256 positions (the ResNet's 16->32 stride-2 convolution on 16x16 outputs): one image a
    call, as before."""
    compiled, model, tmodel = _compiled_pair(16, 32, _STRIDE2)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 2e-4)
    assert _images_per_call(compiled.source()) == 1


def test_symbolic_batch():
    """One compiled module at batch 3, 1, 9 and 4 (four images a call)."""
    compiled, model, tmodel = _compiled_pair(16, 32, _STRIDE2)
    rng = np.random.default_rng(0)
    for batch in (3, 1, 9, 4):
        x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        _step_against_torch(compiled, model, tmodel, x, 2e-4)
    assert _images_per_call(compiled.source()) == 4


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_nan_arena_threads(nan_arenas_split, threads):
    """Seven and five images (calls of four, then three or one) split between threads, work
    memory all NaN: every padded image's zeros and every transposed output gradient of a call
    are written, and a thread's sums start from its first call."""
    tn.set_num_threads(threads)
    compiled, model, tmodel = _compiled_pair(8, 16, dict(_STRIDE2, bias=True))
    rng = np.random.default_rng(0)
    for batch in (7, 5):
        x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        _step_against_torch(compiled, model, tmodel, x, 2e-4)
    assert _images_per_call(compiled.source()) == 4
