"""A residual block whose shortcut has a batch norm of its own (``relu(bn2(a) + bn_s(b))``, the
ResNet's projection shortcut): in training the shortcut's batch norm joins the ``norm`` group
of the other, normalised in the same pass (templates/norm_batch_norm.c.j2, ``res_bn``), so its
output is never written. Compared against PyTorch and eager mode (outputs, input and parameter
gradients), in float32 and float64, with a symbolic batch, on NaN-filled arenas with 1-3
threads, and against the cases it must leave alone."""
import re

import numpy as np
import pytest

import tracenet as tn
from compile_checks import nan_filled_arenas

torch = pytest.importorskip("torch")

FUSED = r"static void \w+_batch_norm_batch_norm_add_relu\("


def _block(lib, c_in, c_out, affine=True, reuse_shortcut=False):
    class Block(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = lib.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            self.bn = lib.nn.BatchNorm2d(c_out, affine=affine)
            self.short = lib.nn.Conv2d(c_in, c_out, 1, bias=False)
            self.short_bn = lib.nn.BatchNorm2d(c_out, affine=affine, eps=1e-3)

        def forward(self, x):
            s = self.short_bn(self.short(x))
            out = lib.nn.functional.relu(self.bn(self.conv(x)) + s)
            return out + s if reuse_shortcut else out
    return Block()


def _pair(c_in, c_out, dtype, affine=True, reuse_shortcut=False):
    torch.manual_seed(0)
    tmodel = _block(torch, c_in, c_out, affine, reuse_shortcut)
    if dtype == np.float64:
        tmodel = tmodel.double()
    with torch.no_grad():
        for m in (tmodel.bn, tmodel.short_bn):
            if affine:  # away from (1, 0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model = _block(tn, c_in, c_out, affine, reuse_shortcut)
    if dtype == np.float64:
        model = model.to(tn.float64)
    model.load_state_dict({k: tn.from_numpy(v.detach().numpy().copy())
                           for k, v in tmodel.state_dict().items()})
    return model, tmodel


def _run(model, lib, x, gy):
    for p in model.parameters():
        p.grad = None
    xt = lib.from_numpy(x.copy()).requires_grad_(True)
    out = model(xt)
    out.backward(lib.from_numpy(gy))
    return [out.detach().numpy(), xt.grad.numpy()] + \
        [p.grad.numpy() for p in model.parameters()]


def _check(compiled, model, tmodel, x, tol):
    out_shape = (x.shape[0], model.bn.num_features) + x.shape[2:]
    gy = np.random.default_rng(1).standard_normal(out_shape).astype(x.dtype)
    for got, eager, want in zip(_run(compiled, tn, x, gy), _run(model, tn, x, gy),
                                _run(tmodel, torch, x, gy)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
        np.testing.assert_allclose(got, eager, rtol=tol, atol=tol)


def _check_running_statistics(model, tmodel, tol):
    for name, value in tmodel.state_dict().items():
        if "running" in name:
            np.testing.assert_allclose(model.state_dict()[name].numpy(), value.numpy(),
                                       rtol=tol, atol=tol)


def _input(shape, dtype, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + 1).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3, 6, 6), (2, 5, 7, 9), (1, 3, 8, 8)])
@pytest.mark.parametrize("affine", [True, False])
def test_shortcut_batch_norm_in_the_same_pass(shape, dtype, affine):
    model, tmodel = _pair(shape[1], 6, dtype, affine)
    compiled = tn.compile(model)
    tol = 1e-9 if dtype == np.float64 else 2e-4
    _check(compiled, model, tmodel, _input(shape, dtype), tol)
    src = compiled.source()
    assert re.search(FUSED, src)
    # the running statistics of both batch norms move as PyTorch's do (a fresh pair, one
    # forward each)
    model, tmodel = _pair(shape[1], 6, dtype, affine)
    x = _input(shape, dtype)
    tn.compile(model)(tn.from_numpy(x))
    tmodel(torch.from_numpy(x))
    _check_running_statistics(model, tmodel, tol)
    # (no kernel of the shortcut's batch norm alone)
    assert not re.search(r"static void \w+_k\d+_batch_norm\(", src)


def test_symbolic_batch():
    """One build for batches 3, 5 and 2."""
    model, tmodel = _pair(4, 8, np.float32)
    compiled = tn.compile(model)
    for batch in (3, 5, 2):
        _check(compiled, model, tmodel, _input((batch, 4, 6, 6), np.float32, batch), 2e-4)
    assert len(compiled.specialisations) == 1
    assert re.search(FUSED, compiled.source())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_on_nan_arenas(monkeypatch, threads):
    """Large enough for the channels to be split between threads; the pass reads only what
    this call wrote."""
    nan_filled_arenas(monkeypatch)
    old = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        model, tmodel = _pair(3, 10, np.float32)
        compiled = tn.compile(model, dynamic=False)
        _check(compiled, model, tmodel, _input((40, 3, 16, 16), np.float32), 2e-4)
        src = compiled.source()
        body = src.split(re.search(FUSED, src).group(0))[1].split("\n}\n")[0]
        assert "omp_get_num_threads" in body  # (built to split the channels)
    finally:
        tn.set_num_threads(old)


def test_shortcut_read_elsewhere_keeps_its_kernel():
    """A shortcut batch norm whose output has another reader is written by its own kernel."""
    model, tmodel = _pair(3, 6, np.float32, reuse_shortcut=True)
    compiled = tn.compile(model)
    _check(compiled, model, tmodel, _input((4, 3, 6, 6), np.float32), 2e-4)
    src = compiled.source()
    assert not re.search(FUSED, src)
    assert re.search(r"static void \w+_batch_norm_add_relu\(", src)


def test_eval_mode():
    """Eval mode: with gradients the two batch norms (running statistics) share the pass as in
    training; inference without gradients folds each into its convolution instead."""
    model, tmodel = _pair(3, 6, np.float32)
    model.eval()
    tmodel.eval()
    compiled = tn.compile(model)
    x = _input((4, 3, 6, 6), np.float32)
    _check(compiled, model, tmodel, x, 2e-4)
    with tn.no_grad():
        got = compiled(tn.from_numpy(x)).numpy()
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    inference = compiled.source()  # (the last call's)
    assert not re.search(FUSED, inference)
    assert "_conv_batch_norm" in inference


def test_training_step_matches_eager():
    """A whole compiled training step (SGD with momentum) against the eager loop."""
    model, _ = _pair(3, 6, np.float32)
    twin, _ = _pair(3, 6, np.float32)
    x = _input((4, 3, 6, 6), np.float32)
    y = np.random.default_rng(2).standard_normal((4, 6, 6, 6)).astype(np.float32)
    opt = tn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    twin_opt = tn.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)

    def step(a, b):
        opt.zero_grad()
        loss = ((model(a) - b) ** 2).mean()
        loss.backward()
        opt.step()
        return loss
    compiled = tn.compile(step)
    for _ in range(3):
        got = compiled(tn.from_numpy(x), tn.from_numpy(y)).item()
        twin_opt.zero_grad()
        want = ((twin(tn.from_numpy(x)) - tn.from_numpy(y)) ** 2).mean()
        want.backward()
        twin_opt.step()
        assert abs(got - want.item()) <= 1e-5 * max(1.0, abs(want.item()))
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert re.search(FUSED, compiled.source())
