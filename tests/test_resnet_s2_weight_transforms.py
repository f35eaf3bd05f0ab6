"""The stride-2 3x3 forward's weight transforms (templates/_winograd_s2.c.j2's
``weight_transforms``, conv_winograd_s2.c.j2): each output channel's taps copied tap by tap
before its transforms (up to 512 input channels), the output channels split between the
threads. Against PyTorch (values, input and weight gradients) and eager mode: the ResNet's
32 -> 64 and 16 -> 32 (its pair with the shortcut) in training and inference, float32 and
float64, odd channel counts, batch 1 and a symbolic batch, 1, 2 and 3 threads with work
memory filled with NaN, the same values on every thread count; more than 512 input channels
keep the transforms' loads from the weights."""
import re

import numpy as np
import pytest
import torch

import tracenet as tn

from test_conv_kernels import _copy_to_torch, _step_against_torch, _stepped_twins
from test_resnet_s2_forward_fused import _pair_module
from test_resnet_stride2_winograd import STRIDE2, STRIDE2_INPUT, _net, _taken

# the copy's loop (templates/_winograd_s2.c.j2)
COPIED = "taps[9]["


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.parametrize("cin,cout,size", [
    (32, 64, (16, 16)),  # the ResNet's 32 -> 64
    (17, 33, (9, 14)),  # odd channels and sizes (tiles of 2x2 outputs)
])
def test_forward_matches_torch_and_eager(cin, cout, size):
    """A symbolic batch (three, then one): values and gradients as torch's."""
    compiled = _stepped_twins(lambda lib: _net(lib, cin, cout, True),
                              [(batch, cin) + size for batch in (3, 1)])
    source = compiled.source()
    assert _taken(source) == (1, 1) and COPIED in source and "tn_N" in source


def test_float64():
    """The ResNet's 32 -> 64 in float64: values and gradients as torch's."""
    tn.manual_seed(0)
    model, tmodel = _net(tn, 32, 64, True).double(), _net(torch, 32, 64, True).double()
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((2, 32, 16, 16))
    _step_against_torch(compiled, model, tmodel, x, 1e-9)
    source = compiled.source()
    assert _taken(source) == (1, 1) and COPIED in source


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_nan_arena_threads(nan_arenas_split, threads):
    """The ResNet's 32 -> 64 over five and two images, work memory all NaN, the output
    channels' transforms split between the threads: every transform is written."""
    tn.set_num_threads(threads)
    compiled = _stepped_twins(lambda lib: _net(lib, 32, 64, False),
                              [(batch, 32, 16, 16) for batch in (5, 2)])
    source = compiled.source()
    assert COPIED in source and "omp_get_thread_num()" in source


def _outputs(model, x, threads):
    tn.set_num_threads(threads)
    compiled = tn.compile(model)
    got = [v.detach().numpy() for v in compiled(tn.from_numpy(x))]
    assert COPIED in compiled.source()
    return got


@pytest.mark.parametrize("cin,cout,size", [(32, 64, 16), (16, 32, 32)])
def test_training_pair_same_on_every_thread_count(nan_arenas_split, cin, cout, size):
    """The downsampling pair (relu(bn(3x3)), bn(1x1 shortcut)) in training: the same values
    on 1, 2 and 3 threads, and torch's, with their running statistics."""
    tn.manual_seed(0)
    model, tmodel = _pair_module(tn, cin, cout), _pair_module(torch, cin, cout)
    _copy_to_torch(model, tmodel)
    x = (np.random.default_rng(2).standard_normal((4, cin, size, size)) + 1).astype(np.float32)
    one, two, three = (_outputs(model, x, t) for t in (1, 2, 3))
    for a, b, c in zip(one, two, three):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    ref = [v.detach().numpy() for v in tmodel(torch.from_numpy(x))]
    for a, r in zip(one, ref):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)


def test_inference_block():
    """The ResNet's 32 -> 64 in eval mode (batch norm and relu fused): torch's values."""
    model, tmodel = _net(tn, 32, 64, False), _net(torch, 32, 64, False)
    _copy_to_torch(model, tmodel)
    model.eval()
    tmodel.eval()
    compiled = tn.compile(model)
    x = np.random.default_rng(3).standard_normal((3, 32, 16, 16)).astype(np.float32)
    with tn.no_grad():
        got = compiled(tn.from_numpy(x)).numpy()
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert COPIED in compiled.source()


def test_many_input_channels_load_from_the_weights():
    """Above 512 input channels the taps are not copied (the copy would take more than 36 KB
    of stack): torch's values from the transforms' own loads."""
    compiled = _stepped_twins(lambda lib: _net(lib, 520, 2, False), [(2, 520, 8, 8)], 1e-4)
    source = compiled.source()
    assert _taken(source) == (1, 1)
    # the input gradient's transforms run over its 2 columns, so it copies
    assert COPIED not in _functions(source, STRIDE2) and COPIED in _functions(source, STRIDE2_INPUT)


def _functions(source, comment):
    """The text of the generated functions whose opening comment matches ``comment``."""
    return "".join(f for f in source.split("\nstatic void ") if re.search(comment, f))
