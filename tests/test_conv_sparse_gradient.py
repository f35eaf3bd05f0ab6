"""The input and weight gradients of a stride-1 2-d convolution from a mostly-zero output
gradient (a max pooling's backward passes one value per window): only the nonzero output
gradients are multiplied, each adding its weights to its window of the input gradient, or its
window of the image to its output channel's weight gradient. A call whose output gradient has
more nonzeros, or whose operands are not all finite, takes the dense kernel compiled beside
it. Against PyTorch, float32 and float64, built for AVX-512 and
for AVX2 only, with work memory filled with NaN."""
import re

import numpy as np
import pytest
import torch

import tracenet as tn
import tracenet.nn as nn
from compile_checks import nan_filled_arenas
from test_conv_kernels import _copy_to_torch, _step_against_torch
from test_conv_small_channels import march  # noqa: F401  (the fixture)


def _functions(source, of="input"):
    return dict(re.findall(rf"\bvoid (\w+conv_backward_{of}\w*)\(.*?\n\{{(.*?)\n\}}", source,
                           re.S))


def _sparse_kernels(source, of="input"):
    """The sparse input- or weight-gradient kernels in ``source``: (name, body) of each
    function that calls its dense twin."""
    return [(n, body) for n, body in _functions(source, of).items()
            if f"{n}_dense(" in body and "_block" in body]


# name -> (Conv2d arguments, keyword arguments, input shape without the batch, pooling)
CASES = {
    "lenet_conv2": ((6, 16, 5), {}, (6, 14, 14), 2),
    # padding, odd sizes, a channel block and a smaller one, output channels not a vector
    "padded_odd": ((7, 5, 3), dict(padding=1), (7, 9, 11), 2),
    "padding_past_reach": ((4, 6, 2), dict(padding=2), (4, 5, 6), 3),
    # a kernel row wider than a vector (two with float64), one input channel per block
    "wide_kernel_rows": ((3, 8, (2, 9)), {}, (3, 8, 13), 2),
    # as many output channels as a float32 mask has bits
    "thirty_two_outputs": ((2, 32, 3), dict(bias=False), (2, 8, 8), 2),
    # one input channel: the weight gradient stays dense (LeNet's conv1)
    "one_input_channel": ((1, 8, 5), {}, (1, 12, 12), 2),
}


def _pooled(args, kwargs, pool, dtype):
    """A 1x1 convolution (so the input gradient is asked for), the convolution, relu and max
    pooling, in tracenet and torch."""
    tn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(args[0], args[0], 1), nn.Conv2d(*args, **kwargs), nn.ReLU(),
                          nn.MaxPool2d(pool))
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(args[0], args[0], 1),
                                 torch.nn.Conv2d(*args, **kwargs), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(pool))
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    return model, tmodel


def _tol(dtype):
    return 1e-4 if dtype == np.float32 else 1e-9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_pooled_input_gradient_matches_torch(march, monkeypatch, name, dtype):
    nan_filled_arenas(monkeypatch)
    args, kwargs, shape, pool = CASES[name]
    model, tmodel = _pooled(args, kwargs, pool, dtype)
    compiled = tn.compile(model, dynamic=False)
    x = np.random.default_rng(0).standard_normal((1,) + shape).astype(dtype)
    _step_against_torch(compiled, model, tmodel, x, _tol(dtype))
    assert len(_sparse_kernels(compiled.source())) == 1
    assert len(_sparse_kernels(compiled.source(), "weight")) == (args[0] >= 2)


def test_symbolic_batch_matches_torch(monkeypatch):
    """Traced at batch 1 (a serial kernel), called at 1, 3 and 5: every image of a call."""
    nan_filled_arenas(monkeypatch)
    args, kwargs, shape, pool = CASES["lenet_conv2"]
    model, tmodel = _pooled(args, kwargs, pool, np.float32)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for batch in (1, 3, 5):
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        _step_against_torch(compiled, model, tmodel, x, 1e-4, what=f"batch {batch}")
    assert len(compiled.specialisations) == 1
    assert len(_sparse_kernels(compiled.source())) == 1
    assert len(_sparse_kernels(compiled.source(), "weight")) == 1


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts(monkeypatch, threads):
    nan_filled_arenas(monkeypatch)
    old = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        args, kwargs, shape, pool = CASES["padded_odd"]
        model, tmodel = _pooled(args, kwargs, pool, np.float32)
        compiled = tn.compile(model, dynamic=False)
        x = np.random.default_rng(threads).standard_normal((1,) + shape).astype(np.float32)
        for _ in range(2):
            _step_against_torch(compiled, model, tmodel, x, 1e-4)
    finally:
        tn.set_num_threads(old)
    assert len(_sparse_kernels(compiled.source())) == 1
    assert len(_sparse_kernels(compiled.source(), "weight")) == 1


def test_dense_output_gradient_matches_torch(monkeypatch):
    """1x1 pooling windows pass every output gradient on: the call takes the dense kernel."""
    nan_filled_arenas(monkeypatch)
    tn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(6, 6, 1), nn.Conv2d(6, 16, 5), nn.MaxPool2d(1))
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(6, 6, 1), torch.nn.Conv2d(6, 16, 5),
                                 torch.nn.MaxPool2d(1))
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model, dynamic=False)
    x = np.random.default_rng(0).standard_normal((1, 6, 14, 14)).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    assert len(_sparse_kernels(compiled.source())) == 1


@pytest.mark.parametrize("where", ["weight", "output_gradient"])
@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_values_not_finite_take_the_dense_kernel(monkeypatch, where, value):
    """A weight or output gradient that is not finite reaches (as NaN or infinity) every input
    gradient element it is multiplied with, zero output gradients included: the non-finite
    results are where eager's and torch's are."""
    nan_filled_arenas(monkeypatch)
    args, kwargs, _, pool = CASES["lenet_conv2"]
    model, tmodel = _pooled(args, kwargs, pool, np.float32)
    compiled = tn.compile(model, dynamic=False)
    x = np.random.default_rng(0).standard_normal((1, 6, 14, 14)).astype(np.float32)
    gy = np.zeros((1, 16, 5, 5), np.float32)
    gy[0, 3, 2, 1] = 0.5  # one nonzero: sparse enough for the sparse kernel
    if where == "weight":
        with torch.no_grad():
            tmodel[1].weight[4, 2, 1, 3] = float(value)
        model[1].weight.data[4, 2, 1, 3] = float(value)
    else:
        gy[0, 9, 0, 0] = value
    grads = []
    for run in (compiled, model, tmodel):
        lib = torch if run is tmodel else tn
        xv = lib.from_numpy(x.copy()).requires_grad_(True)
        run(xv).backward(lib.from_numpy(gy))
        grads.append(xv.grad.numpy())
    ours, eager, theirs = grads
    assert not np.isfinite(theirs).all()
    for ref in (eager, theirs):
        if where == "weight":
            # (the dense kernel's GEMMs also multiply the zeros past each output row's end,
            # so a weight that is not finite gives NaN at a few more positions)
            assert np.isnan(ours[~np.isfinite(ref)]).all()
        else:
            np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
            np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
        finite = np.isfinite(ours)
        np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-4, atol=1e-4)
    assert len(_sparse_kernels(compiled.source())) == 1


def _parallel(source, of):
    """Whether every sparse kernel of ``of`` in ``source`` splits its images between threads."""
    kernels = _sparse_kernels(source, of)
    return bool(kernels) and all("omp parallel" in body for _, body in kernels)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_kernels_split_the_images(monkeypatch, threads, dtype):
    """A convolution split over threads (batch 8) takes the sparse kernels too, whole images
    per thread, the weight gradient's per-thread sums added at the end: the same gradients as
    torch on 1, 2 and 3 threads, and at batches of 2 and 1 (fewer images than threads, and a
    call that runs serially) under a symbolic batch."""
    nan_filled_arenas(monkeypatch)
    old = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        args, kwargs, shape, pool = CASES["lenet_conv2"]
        model, tmodel = _pooled(args, kwargs, pool, dtype)
        compiled = tn.compile(model)
        rng = np.random.default_rng(threads)
        for batch in (8, 2, 1, 8):
            x = rng.standard_normal((batch,) + shape).astype(dtype)
            _step_against_torch(compiled, model, tmodel, x, _tol(dtype), what=f"batch {batch}")
    finally:
        tn.set_num_threads(old)
    assert len(compiled.specialisations) == 1
    assert _parallel(compiled.source(), "input") and _parallel(compiled.source(), "weight")


def test_parallel_kernels_match_the_serial_input_gradient(monkeypatch):
    """Each image's input gradient is computed as the serial kernel does, whichever thread
    takes it: bit for bit the same as one image at a time."""
    nan_filled_arenas(monkeypatch)
    args, kwargs, shape, pool = CASES["lenet_conv2"]
    model, _ = _pooled(args, kwargs, pool, np.float32)
    compiled = tn.compile(model, dynamic=False)
    single = tn.compile(model, dynamic=False)
    x = np.random.default_rng(0).standard_normal((8,) + shape).astype(np.float32)
    gy = None
    grads = []
    for batch in (8, 1):
        parts = []
        for i in range(0, 8, batch):
            xv = tn.from_numpy(x[i:i + batch].copy()).requires_grad_(True)
            out = (compiled if batch == 8 else single)(xv)
            if gy is None:
                gy = np.random.default_rng(1).standard_normal((8,) + out.shape[1:]).astype(
                    np.float32)
            out.backward(tn.from_numpy(gy[i:i + batch].copy()))
            parts.append(xv.grad.numpy())
        grads.append(np.concatenate(parts))
    np.testing.assert_array_equal(grads[0], grads[1])
    assert _parallel(compiled.source(), "input")


def test_parallel_dense_fallback_matches_torch(monkeypatch):
    """A batch split over threads whose output gradient is not finite takes the dense kernel."""
    nan_filled_arenas(monkeypatch)
    args, kwargs, shape, pool = CASES["lenet_conv2"]
    model, tmodel = _pooled(args, kwargs, pool, np.float32)
    compiled = tn.compile(model, dynamic=False)
    x = np.random.default_rng(0).standard_normal((8,) + shape).astype(np.float32)
    gy = np.zeros((8, 16, 5, 5), np.float32)
    gy[3, 3, 2, 1] = 0.5
    gy[5, 9, 0, 0] = np.inf
    grads = []
    for run, lib in ((compiled, tn), (tmodel, torch)):
        xv = lib.from_numpy(x.copy()).requires_grad_(True)
        run(xv).backward(lib.from_numpy(gy))
        grads.append(xv.grad.numpy())
    ours, theirs = grads
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    finite = np.isfinite(ours)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-4, atol=1e-4)
    assert _parallel(compiled.source(), "input")


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_image_not_finite_takes_the_dense_weight_kernel(monkeypatch, value):
    """An image element that is not finite reaches every weight gradient element it is
    multiplied with, zero output gradients included."""
    nan_filled_arenas(monkeypatch)
    args, kwargs, shape, pool = CASES["lenet_conv2"]
    tn.manual_seed(0)
    conv = nn.Conv2d(*args, **kwargs)
    tconv = torch.nn.Conv2d(*args, **kwargs)
    _copy_to_torch(conv, tconv)
    model, tmodel = nn.Sequential(conv, nn.MaxPool2d(pool)), torch.nn.Sequential(
        tconv, torch.nn.MaxPool2d(pool))
    compiled = tn.compile(model, dynamic=False)
    x = np.random.default_rng(0).standard_normal((1,) + shape).astype(np.float32)
    x[0, 2, 7, 7] = value
    gy = np.zeros((1, 16, 5, 5), np.float32)
    gy[0, 3, 2, 1] = 0.5  # one nonzero: sparse enough for the sparse kernel
    grads = []
    for run, lib in ((compiled, tn), (model, tn), (tmodel, torch)):
        run(lib.from_numpy(x.copy())).backward(lib.from_numpy(gy))
        grads.append(next(iter(run.parameters())).grad.numpy().copy())
        (model if lib is tn else tmodel).zero_grad()
    ours, eager, theirs = grads
    assert not np.isfinite(theirs).all()
    for ref in (eager, theirs):
        assert np.isnan(ours[~np.isfinite(ref)]).all()
        finite = np.isfinite(ours)
        np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-4, atol=1e-4)
    assert len(_sparse_kernels(compiled.source(), "weight")) == 1
