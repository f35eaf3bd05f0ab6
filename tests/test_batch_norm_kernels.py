"""The batch norm's kernels not fused into a convolution: the normalisation (with a residual add
and relu after it: templates/norm_batch_norm.c.j2) and the backward
(templates/norm_batch_norm_backward.c.j2). Per block of up to 256 channels, each pass walks
the planes image by image (long runs through memory), the threads splitting the images (the
backward's sums added up across threads), or the channels when a batch has fewer images than
threads.
Compared against PyTorch (outputs, input and parameter gradients) and eager mode over shapes
(one element per plane, planes shorter and longer than a 256-element run, more than 256
channels), dtypes, train and eval mode, a symbolic batch, and NaN-filled arenas on 1-3
threads."""
import re

import numpy as np
import pytest

import tracenet as tn
from compile_checks import nan_filled_arenas

torch = pytest.importorskip("torch")

# name -> (BatchNorm class, channels, input shape)
CASES = {
    "plane_of_one_element": ("BatchNorm1d", 12, (6, 12)),
    "sequence_odd_length": ("BatchNorm1d", 6, (4, 6, 11)),
    "image_odd_plane": ("BatchNorm2d", 8, (3, 8, 9, 7)),
    "plane_longer_than_a_run": ("BatchNorm2d", 3, (2, 3, 17, 19)),
    "more_than_256_channels": ("BatchNorm1d", 300, (5, 300, 3)),
    "volume": ("BatchNorm3d", 4, (2, 4, 3, 5, 6)),
}


def _pair(case, dtype, affine=True):
    cls, c, shape = CASES[case]
    torch.manual_seed(0)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tbn = getattr(torch.nn, cls)(c, affine=affine).to(tdtype)
    if affine:
        with torch.no_grad():  # away from (1, 0)
            tbn.weight.uniform_(0.5, 1.5)
            tbn.bias.uniform_(-0.5, 0.5)
    with torch.no_grad():
        tbn.running_mean.uniform_(-1, 1)
        tbn.running_var.uniform_(0.5, 2)
    bn = getattr(tn.nn, cls)(c, affine=affine).to(tn.float64 if dtype == np.float64
                                                   else tn.float32)
    bn.load_state_dict({k: tn.from_numpy(v.detach().numpy().copy())
                        for k, v in tbn.state_dict().items()})
    return bn, tbn, shape


class _Residual:
    """``relu(bn(x) + x)``: the normalisation's residual add and relu in its one pass."""

    def __init__(self, lib, bn):
        self.lib, self.bn = lib, bn

    def module(self):
        lib, bn = self.lib, self.bn

        class Residual(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.bn = bn

            def forward(self, x):
                return lib.nn.functional.relu(self.bn(x) + x)
        return Residual()


def _input(shape, dtype, seed=0):
    # an offset mean: x - mean must stay a difference of nearby values
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + 5).astype(dtype)



def _check(compiled, bn, tbn, x, tol):
    """Forward and backward through ``compiled`` against torch and against eager mode."""
    gy = np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)
    results = []
    for model, lib in ((compiled, tn), (bn, tn), (tbn, torch)):
        for p in (bn.parameters() if lib is tn else tbn.parameters()):
            p.grad = None
        xt = lib.from_numpy(x.copy()).requires_grad_(True)
        out = model(xt)
        out.backward(lib.from_numpy(gy))
        params = bn.parameters() if lib is tn else tbn.parameters()
        results.append([out.detach().numpy(), xt.grad.numpy()] +
                       [p.grad.numpy() for p in params])
    for got_compiled, got_eager, want in zip(*results):
        np.testing.assert_allclose(got_compiled, want, rtol=tol, atol=tol)
        np.testing.assert_allclose(got_compiled, got_eager, rtol=tol, atol=tol)


def _backward_kernels(compiled):
    return re.findall(r"static void (\w+_batch_norm_backward)\(", compiled.source())


def _tol(dtype):
    return 1e-9 if dtype == np.float64 else 2e-4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_training_mode(case, dtype):
    bn, tbn, shape = _pair(case, dtype)
    compiled = tn.compile(bn)
    _check(compiled, bn, tbn, _input(shape, dtype), _tol(dtype))
    assert len(_backward_kernels(compiled)) == 1


@pytest.mark.parametrize("case", ["image_odd_plane", "more_than_256_channels"])
@pytest.mark.parametrize("affine", [True, False])
def test_eval_mode(case, affine):
    """Eval mode scales by the running statistics only (in double, then rounded)."""
    bn, tbn, shape = _pair(case, np.float32, affine)
    bn.eval()
    tbn.eval()
    compiled = tn.compile(bn)
    _check(compiled, bn, tbn, _input(shape, np.float32), 2e-4)
    assert len(_backward_kernels(compiled)) == 1


def test_symbolic_batch():
    """One build for batches 3, 5 and 2."""
    bn, tbn, shape = _pair("image_odd_plane", np.float32)
    compiled = tn.compile(bn)
    for batch in (3, 5, 2):
        _check(compiled, bn, tbn, _input((batch,) + shape[1:], np.float32, batch), 2e-4)
    assert len(compiled.specialisations) == 1


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("case", ["image_odd_plane", "more_than_256_channels"])
def test_threads_on_nan_arenas(monkeypatch, case, threads):
    """Large enough to split the images between threads (3 threads: unequal shares); every
    pass reads only what this call wrote, the backward's partial sums included."""
    nan_filled_arenas(monkeypatch)
    old = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        bn, tbn, shape = _pair(case, np.float32)
        big = (256 if case == "image_odd_plane" else 400,) + shape[1:]  # (above 100000 elements)
        compiled = tn.compile(bn, dynamic=False)  # (built for this size, not a smaller one)
        _check(compiled, bn, tbn, _input(big, np.float32, threads), 2e-4)
        [kernel] = _backward_kernels(compiled)
        body = compiled.source().split(f"static void {kernel}(")[1].split("\n}\n")[0]
        assert "omp_get_num_threads" in body  # (built to split the images)
        assert "omp barrier" in body  # (the partial sums meet past a barrier)
    finally:
        tn.set_num_threads(old)


@pytest.mark.parametrize("threads", [2, 3])
def test_fewer_images_than_threads(monkeypatch, threads):
    """A batch of fewer images than threads, large enough to run in parallel: the threads
    split the channels instead (one or two images, 8 channels of 120x110)."""
    nan_filled_arenas(monkeypatch)
    old = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        tbn = torch.nn.BatchNorm2d(8)
        with torch.no_grad():
            tbn.weight.uniform_(0.5, 1.5)
            tbn.bias.uniform_(-0.5, 0.5)
        bn = tn.nn.BatchNorm2d(8)
        bn.load_state_dict({k: tn.from_numpy(v.detach().numpy().copy())
                            for k, v in tbn.state_dict().items()})
        for batch in range(1, threads):
            compiled = tn.compile(bn, dynamic=False)
            _check(compiled, bn, tbn, _input((batch, 8, 120, 110), np.float32, batch), 2e-4)
    finally:
        tn.set_num_threads(old)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", ["image_odd_plane", "more_than_256_channels"])
def test_residual_add_and_relu(case, training):
    """batch_norm -> add -> relu is one kernel (fusion group ``norm``)."""
    bn, tbn, shape = _pair(case, np.float32)
    model, tmodel = _Residual(tn, bn).module(), _Residual(torch, tbn).module()
    model.train(training)
    tmodel.train(training)
    compiled = tn.compile(model)
    x = _input(shape, np.float32) - 5  # (about half the sums below zero: relu masks them)
    gy = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    results = []
    for m, lib, params in ((compiled, tn, bn.parameters()), (model, tn, bn.parameters()),
                           (tmodel, torch, tbn.parameters())):
        params = list(params)
        for p in params:
            p.grad = None
        xt = lib.from_numpy(x.copy()).requires_grad_(True)
        out = m(xt)
        out.backward(lib.from_numpy(gy))
        results.append([out.detach().numpy(), xt.grad.numpy()] + [p.grad.numpy() for p in params])
    for got_compiled, got_eager, want in zip(*results):
        np.testing.assert_allclose(got_compiled, want, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(got_compiled, got_eager, rtol=2e-4, atol=2e-4)
    assert re.search(r"static void \w+_batch_norm_add_relu\(", compiled.source())
