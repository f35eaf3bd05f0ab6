"""Cross entropy over [N, C] logits with its backward in one kernel (the ``cross_entropy``
fusion group, templates/nll_loss_log_softmax.c.j2): a compiled training step through a linear
layer against PyTorch and tracenet's eager mode (loss and every gradient), for each reduction,
class weights, ignored targets, float64, one row, a varying batch, odd class counts, values
that are not finite, NaN-filled work memory on 1-3 threads and AVX2 only. Each test asserts
whether the fused kernel was compiled: label smoothing keeps the separate kernels."""
import re

import numpy as np
import pytest
import torch

import tracenet as tn
from compile_checks import nan_filled_arenas
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from tracenet.codegen.target import Parallelism

FEATURES = 6


def fused_kernels(source):
    return re.findall(r"static void (\w+_log_softmax_nll_loss_nll_loss_backward\w*)\(", source)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)


def _data(n, c, dtype, seed, ignore_index=-100, ignored=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, FEATURES)) * 2).astype(dtype)
    t = rng.integers(0, c, n)
    t[rng.permutation(n)[:ignored]] = ignore_index
    return x, t


class Setup:
    """A linear layer (tracenet, and its torch twin with the same weights) under a cross
    entropy built with ``loss_kwargs``; ``reduce`` turns the loss into the scalar that
    ``backward`` starts from (a weighted sum for reduction "none")."""

    def __init__(self, c, dtype, **loss_kwargs):
        tn.manual_seed(0)
        self.net = tn.nn.Linear(FEATURES, c).to(getattr(tn, np.dtype(dtype).name))
        self.tnet = torch.nn.Linear(FEATURES, c).to(getattr(torch, np.dtype(dtype).name))
        with torch.no_grad():
            self.tnet.weight.copy_(torch.tensor(self.net.weight.detach().numpy()))
            self.tnet.bias.copy_(torch.tensor(self.net.bias.detach().numpy()))
        weight = loss_kwargs.pop("weight", None)
        self.crit = tn.nn.CrossEntropyLoss(
            weight=None if weight is None else tn.tensor(weight), **loss_kwargs)
        self.tcrit = torch.nn.CrossEntropyLoss(
            weight=None if weight is None else torch.tensor(weight), **loss_kwargs)
        self.none = loss_kwargs.get("reduction") == "none"
        self.opt = tn.optim.SGD(self.net.parameters(), lr=0.0)

    def _scalar(self, loss, lib, n):
        if not self.none:
            return loss
        return (loss * lib.tensor(np.linspace(0.5, 1.5, n).astype(np.float32)).to(loss.dtype)).sum()

    def step_fn(self):
        net, opt, crit, scalar = self.net, self.opt, self.crit, self._scalar

        def train_step(x, y):
            opt.zero_grad()
            loss = crit(net(x), y)
            scalar(loss, tn, x.shape[0]).backward()
            opt.step()
            return loss
        return train_step

    def torch_step(self, x, t):
        self.tnet.zero_grad()
        loss = self.tcrit(self.tnet(torch.tensor(x)), torch.tensor(t))
        self._scalar(loss, torch, len(t)).backward()
        return loss.detach().numpy(), self.tnet.weight.grad.numpy(), self.tnet.bias.grad.numpy()

    def ours(self, step, x, t):
        loss = step(tn.tensor(x), tn.tensor(t))
        return (loss.detach().numpy(), self.net.weight.grad.numpy().copy(),
                self.net.bias.grad.numpy().copy())


def check(setup, compiled, x, t, dtype, what=""):
    """One compiled step against eager's and torch's loss and gradients."""
    ours = setup.ours(compiled, x, t)
    eager = setup.ours(setup.step_fn(), x, t)
    theirs = setup.torch_step(x, t)
    for name, a, e, w in zip(("loss", "weight grad", "bias grad"), ours, eager, theirs):
        np.testing.assert_allclose(a, e, **_tol(dtype), err_msg=f"{name} vs eager {what}")
        np.testing.assert_allclose(a, w, **_tol(dtype), err_msg=f"{name} vs torch {what}")


def run_case(n, c, dtype, seed=0, ignored=0, calls=2, dynamic=False, **loss_kwargs):
    setup = Setup(c, dtype, **loss_kwargs)
    compiled = tn.compile(setup.step_fn(), dynamic=dynamic)
    for i in range(calls):
        x, t = _data(n, c, dtype, seed + i, loss_kwargs.get("ignore_index", -100), ignored)
        check(setup, compiled, x, t, dtype, f"call {i}")
    return compiled


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_match_torch(march, monkeypatch, reduction, dtype):
    nan_filled_arenas(monkeypatch)
    compiled = run_case(37, 90, dtype, reduction=reduction)
    assert len(fused_kernels(compiled.source())) == 1


@pytest.mark.parametrize("c", [1, 3, 16, 17, 33, 100])
def test_class_counts_around_the_vector_width(monkeypatch, c):
    nan_filled_arenas(monkeypatch)
    compiled = run_case(9, c, np.float32)
    assert len(fused_kernels(compiled.source())) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_weights_and_ignored_targets(monkeypatch, reduction, dtype):
    nan_filled_arenas(monkeypatch)
    weight = np.random.default_rng(1).uniform(0.2, 2.0, 11).astype(dtype)
    compiled = run_case(23, 11, dtype, ignored=5, weight=weight, ignore_index=4,
                        reduction=reduction)
    assert len(fused_kernels(compiled.source())) == 1
    compiled = run_case(23, 11, dtype, ignored=5, reduction=reduction)
    assert len(fused_kernels(compiled.source())) == 1


def test_one_row(monkeypatch):
    nan_filled_arenas(monkeypatch)
    compiled = run_case(1, 90, np.float32)
    assert len(fused_kernels(compiled.source())) == 1


def test_every_target_ignored_gives_nan_loss_and_zero_gradients(monkeypatch):
    nan_filled_arenas(monkeypatch)
    setup = Setup(5, np.float32)
    compiled = tn.compile(setup.step_fn(), dynamic=False)
    x, t = _data(4, 5, np.float32, 0, ignored=4)
    loss, gw, gb = setup.ours(compiled, x, t)
    tloss, tgw, tgb = setup.torch_step(x, t)
    assert np.isnan(loss) and np.isnan(tloss)
    np.testing.assert_array_equal(gw, tgw)
    np.testing.assert_array_equal(gb, tgb)
    assert len(fused_kernels(compiled.source())) == 1


def test_a_varying_batch_runs_one_build(monkeypatch):
    nan_filled_arenas(monkeypatch)
    setup = Setup(13, np.float32)
    compiled = tn.compile(setup.step_fn())
    for n in (8, 1, 31, 8):
        x, t = _data(n, 13, np.float32, n)
        check(setup, compiled, x, t, np.float32, f"batch {n}")
    assert len(compiled._specs) == 1  # every batch size from one build
    assert len(fused_kernels(compiled.source())) == 1


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_rows_split_between_threads(monkeypatch, threads):
    """Kernels this small split their rows too: 1-3 threads, rows not a multiple of them."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "compute_min_flops", 0)
    old = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        compiled = run_case(29, 90, np.float32, seed=threads, calls=3)
        run_case(29, 7, np.float64, seed=threads, ignored=3, reduction="sum",
                 weight=np.linspace(0.5, 2, 7))
    finally:
        tn.set_num_threads(old)
    (name,) = fused_kernels(compiled.source())
    # (within the kernel's own body)
    assert re.search(rf"static void {name}\([^)]*\)\n\{{\n(?:(?!\n\}}\n).)*?"
                     r"#pragma omp parallel for if\(", compiled.source(), re.S)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_values_not_finite_follow_eager(monkeypatch, value):
    nan_filled_arenas(monkeypatch)
    setup = Setup(9, np.float32)
    compiled = tn.compile(setup.step_fn(), dynamic=False)
    x, t = _data(6, 9, np.float32, 0, ignored=1)
    with torch.no_grad():
        setup.net.bias.data[2] = float(value)
        setup.tnet.bias[2] = float(value)
    ours = setup.ours(compiled, x, t)
    eager = setup.ours(setup.step_fn(), x, t)
    theirs = setup.torch_step(x, t)
    for a, e, w in zip(ours, eager, theirs):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(e))
        np.testing.assert_array_equal(np.isnan(a), np.isnan(w))
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6)
    assert len(fused_kernels(compiled.source())) == 1


def test_a_target_out_of_range_raises_eagers_error(monkeypatch):
    nan_filled_arenas(monkeypatch)
    setup = Setup(5, np.float32)
    compiled = tn.compile(setup.step_fn(), dynamic=False)
    x, t = _data(4, 5, np.float32, 0)
    check(setup, compiled, x, t, np.float32)
    t[2] = 5
    with pytest.raises(IndexError, match="Target 5 is out of bounds."):
        compiled(tn.tensor(x), tn.tensor(t))
    assert len(fused_kernels(compiled.source())) == 1


def test_label_smoothing_keeps_the_separate_kernels(monkeypatch):
    nan_filled_arenas(monkeypatch)
    compiled = run_case(12, 10, np.float32, label_smoothing=0.1)
    assert fused_kernels(compiled.source()) == []
    assert "log_softmax" in compiled.source()


def test_log_probabilities_read_elsewhere_keep_the_separate_kernels(monkeypatch):
    """The fused kernel never writes the log-probabilities: a step that returns them too
    keeps log_softmax's own kernel."""
    nan_filled_arenas(monkeypatch)
    net = tn.nn.Linear(FEATURES, 8)
    opt = tn.optim.SGD(net.parameters(), lr=0.0)

    def train_step(x, y):
        opt.zero_grad()
        logp = tn.nn.functional.log_softmax(net(x), 1)
        loss = tn.nn.functional.nll_loss(logp, y)
        loss.backward()
        opt.step()
        return loss, logp

    compiled = tn.compile(train_step, dynamic=False)
    x, t = _data(5, 8, np.float32, 0)
    loss, logp = compiled(tn.tensor(x), tn.tensor(t))
    eloss, elogp = train_step(tn.tensor(x), tn.tensor(t))
    np.testing.assert_allclose(logp.detach().numpy(), elogp.detach().numpy(), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(loss.detach().numpy(), eloss.detach().numpy(), rtol=1e-6)
    assert fused_kernels(compiled.source()) == []
