"""A symbolic batch size: one build of a compiled model serves every batch size, matches eager
each time, and falls back to exact specialisation when the model needs the exact size."""
import copy
import os
import stat

import numpy as np
import pytest

import tracenet as torch
import tracenet.nn as nn
import tracenet.nn.functional as F
from tracenet._sym import Specialize, Sym, SymFloat, is_one, same_shape
from tracenet.runtime import toolchain

from test_ir import MLP, LeNet

TOL = dict(rtol=1e-4, atol=1e-5)
BATCHES = (8, 5, 1, 64, 3)


@pytest.fixture
def counting_cc(tmp_path, monkeypatch):
    """A cold cache and a ``CC`` that logs every shared library it links into the cache (not
    the toolchain probes); returns a function giving the number of builds so far."""
    log, cache = tmp_path / "cc.log", tmp_path / "cache"
    wrapper = tmp_path / "cc"
    real = os.environ.get("CC", "gcc")
    wrapper.write_text("#!/bin/sh\n"
                       f"case \"$*\" in *'{cache}'*.so*) echo \"$*\" >> '{log}';; esac\n"
                       f"exec {real} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(cache))
    toolchain.reset()
    yield lambda: len(log.read_text().splitlines()) if log.exists() else 0
    monkeypatch.undo()
    toolchain.reset()


def _grads(model):
    return [p.grad.numpy().copy() for p in model.parameters()]


def _forward_backward(model, x, gy):
    model.zero_grad()
    out = model(x)
    out.backward(gy)
    return out.detach().numpy(), _grads(model)


def test_lenet_compiles_once_for_every_batch_size(counting_cc):
    torch.manual_seed(0)
    model = LeNet()
    compiled = torch.compile(model)
    for batch in BATCHES:
        x = torch.randn(batch, 1, 32, 32)
        gy = torch.randn(batch, 10)
        out, grads = _forward_backward(compiled, x, gy)
        ref, ref_grads = _forward_backward(model, x, gy)
        assert out.shape == (batch, 10)
        np.testing.assert_allclose(out, ref, **TOL)
        for g, e in zip(grads, ref_grads):
            np.testing.assert_allclose(g, e, **TOL)
    assert counting_cc() == 1
    assert len(compiled.specialisations) == 1
    assert "%x: f32[N,1,32,32]" in str(compiled.graph)
    assert "f32[N,6,28,28]" in str(compiled.graph) or "f32[N,6,14,14]" in str(compiled.graph)


def test_compiled_training_step_compiles_once_for_every_batch_size(counting_cc):
    torch.manual_seed(1)
    model = LeNet()
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # (the numpy step: a fused one would be a second build)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, fused=False)
    criterion = nn.CrossEntropyLoss()
    step = torch.compile_step(lambda x, y: criterion(model(x), y), opt)
    for batch in BATCHES:
        x, y = torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,))
        loss = step(x, y)
        ref_opt.zero_grad()
        ref_loss = criterion(reference(x), y)
        ref_loss.backward()
        ref_opt.step()
        np.testing.assert_allclose(loss.item(), ref_loss.item(), **TOL)
        for p, q in zip(model.parameters(), reference.parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **TOL)
    assert counting_cc() == 1
    assert "f32[N,1,32,32]" in str(step.graph)


class _SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        y = F.relu(self.bn2(self.conv2(y)) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


def test_batch_norm_statistics_with_a_symbolic_batch_size(counting_cc):
    """Training-mode batch norm divides by the batch's element count (n / (n - 1) for the
    running variance): computed from the batch size at run time."""
    torch.manual_seed(2)
    model = _SmallResNet()
    reference = copy.deepcopy(model)
    compiled = torch.compile(model)
    for batch in (4, 2, 7):
        x = torch.randn(batch, 3, 6, 6)
        gy = torch.randn(batch, 4)
        out, grads = _forward_backward(compiled, x, gy)
        ref, ref_grads = _forward_backward(reference, x, gy)
        np.testing.assert_allclose(out, ref, **TOL)
        for g, e in zip(grads, ref_grads):
            np.testing.assert_allclose(g, e, **TOL)
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(getattr(model.bn, name).numpy(),
                                       getattr(reference.bn, name).numpy(), **TOL)
    model.eval()
    reference.eval()
    x = torch.randn(3, 3, 6, 6)
    np.testing.assert_allclose(compiled(x).detach().numpy(), reference(x).detach().numpy(),
                               **TOL)
    assert counting_cc() == 2  # training and evaluation
    assert len(compiled.specialisations) == 2


class _MeanOverBatch(nn.Module):
    """Uses the batch size as a number, as user code often does."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = self.fc(x)
        return (y * y).sum() / x.size(0) + y.mean() * (2.0 / x.shape[0])


def test_the_batch_size_as_a_number_is_computed_at_run_time(counting_cc):
    torch.manual_seed(3)
    model = _MeanOverBatch()
    compiled = torch.compile(model)
    for batch in (5, 2, 9):
        x = torch.randn(batch, 6)
        out, grads = _forward_backward(compiled, x, torch.tensor(1.0))
        ref, ref_grads = _forward_backward(model, x, torch.tensor(1.0))
        np.testing.assert_allclose(out, ref, **TOL)
        for g, e in zip(grads, ref_grads):
            np.testing.assert_allclose(g, e, **TOL)
    assert counting_cc() == 1
    assert "size_value" in str(compiled.graph)


class _BranchesOnBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.shape[0] > 2:  # needs the exact batch size: each one is specialised
            return self.fc(x) * 2
        return self.fc(x)


def test_a_model_that_needs_the_exact_batch_size_is_specialised(counting_cc, capfd,
                                                                 monkeypatch):
    monkeypatch.setenv("TRACENET_DEBUG", "cache")
    model = _BranchesOnBatch()
    compiled = torch.compile(model)
    for batch in (4, 1, 4):
        x = torch.randn(batch, 4)
        np.testing.assert_allclose(compiled(x).detach().numpy(), model(x).detach().numpy(),
                                   **TOL)
    assert len(compiled.specialisations) == 2
    assert counting_cc() == 2
    err = capfd.readouterr().err
    assert "specialising on the exact sizes" in err and "N > 2 depends on N" in err


def test_dynamic_false_specialises_every_batch_size(counting_cc):
    model = MLP()
    compiled = torch.compile(model, dynamic=False)
    for batch in (3, 4):
        x = torch.randn(batch, 20)
        np.testing.assert_allclose(compiled(x).detach().numpy(), model(x).detach().numpy(),
                                   **TOL)
    assert counting_cc() == 2
    assert "f32[3,20]" in str(compiled.specialisations[next(iter(compiled.specialisations))]
                              .forward_graph)
    with pytest.raises(TypeError, match="dynamic must be a bool"):
        torch.compile(model, dynamic="yes")


def test_inputs_of_another_leading_size_stay_exact():
    model = nn.Linear(3, 3)

    class Add(nn.Module):
        def forward(self, x, bias):
            return x + bias

    compiled = torch.compile(Add())
    x, bias = torch.randn(5, 3), torch.randn(1, 3)
    np.testing.assert_allclose(compiled(x, bias).numpy(), (x + bias).numpy())
    assert "%x: f32[N,3], %x1: f32[1,3]" in str(compiled.graph)
    x = torch.randn(1, 3)  # now both lead with 1: a new key, still correct
    np.testing.assert_allclose(compiled(x, bias).numpy(), (x + bias).numpy())
    del model


# --- the symbol arithmetic --------------------------------------------------------------------

def test_symbol_arithmetic_and_decidable_comparisons():
    n = Sym.symbol("N", 8)
    assert (n * 150).display() == "150*N" and str(n * 150) == "(150*tn_N)"
    assert (n * 400) // n == 400 and (n * 400) // 400 == n
    assert (n * 6) % 3 == 0
    assert n >= 1 and n > 0 and n != 0 and bool(n) and n + 1 > n
    assert n * 2 == 2 * n and hash(n * 2) == hash(2 * n)
    assert (n * 2).hint == 16
    assert not is_one(n) and is_one(1) and same_shape((n, 3), (n, 3))
    assert not same_shape((n, 3), (3,))
    for needs_value in (lambda: n == 1, lambda: n > 2, lambda: int(n), lambda: n // 3,
                        lambda: n % 2, lambda: range(n), lambda: np.zeros(n),
                        lambda: float(2.0 / n)):
        with pytest.raises(Specialize):
            needs_value()
    ratio = n / (n - 1)
    assert isinstance(ratio, SymFloat) and ratio.hint == pytest.approx(8 / 7)
    assert "tn_N" in str(ratio)
    assert torch.Size([n, 3]) == (n, 3) and repr(torch.Size([n, 3])) == "torch.Size([N, 3])"


class _BagOfTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, tokens):
        h = torch.tanh(self.proj(self.embed(tokens)))  # (N, T, 8)
        return self.out(h.mean(1) + h[:, -1] + h[:, 0])


def test_a_varying_sequence_length_becomes_symbolic(counting_cc, capfd, monkeypatch):
    monkeypatch.setenv("TRACENET_DEBUG", "cache")
    torch.manual_seed(4)
    model = _BagOfTokens()
    compiled = torch.compile(model)
    for batch, length in ((4, 7), (4, 9), (3, 5), (6, 12), (1, 1)):
        tokens = torch.randint(0, 20, (batch, length))
        gy = torch.randn(batch, 3)
        out, grads = _forward_backward(compiled, tokens, gy)
        ref, ref_grads = _forward_backward(model, tokens, gy)
        np.testing.assert_allclose(out, ref, **TOL)
        for g, e in zip(grads, ref_grads):
            np.testing.assert_allclose(g, e, **TOL)
    # the first length, then one build with T symbolic for every other
    assert counting_cc() == 2
    assert "%x: i64[N,T]" in str(compiled.graph)
    assert "the second size is symbolic from now on (T)" in capfd.readouterr().err


class _RecurrentLM(nn.Module):
    def __init__(self, mode, bidirectional):
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.rnn = getattr(nn, mode)(8, 12, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(24 if bidirectional else 12, 30)

    def forward(self, tokens):
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out)


@pytest.mark.parametrize("mode,bidirectional", [("LSTM", False), ("GRU", True)])
def test_recurrent_lm_over_batch_sizes_and_sequence_lengths(counting_cc, mode, bidirectional):
    torch.manual_seed(5)
    model = _RecurrentLM(mode, bidirectional)
    compiled = torch.compile(model)
    for batch, length in ((4, 7), (4, 9), (2, 5), (3, 12)):
        tokens = torch.randint(0, 30, (batch, length))
        gy = torch.randn(batch, length, 30)
        out, grads = _forward_backward(compiled, tokens, gy)
        ref, ref_grads = _forward_backward(model, tokens, gy)
        np.testing.assert_allclose(out, ref, **TOL)
        for g, e in zip(grads, ref_grads):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
    assert counting_cc() == 2  # the first length exactly, then T symbolic
    graph = str(compiled.graph)
    assert "%x: i64[N,T]" in graph and graph.count("= scan(") == (2 if bidirectional else 1)


def test_a_size_eager_refuses_is_refused_by_the_symbolic_build(counting_cc):
    """Training batch norm needs more than one value per channel: with a symbolic batch
    size the compiled code checks it when called, with eager's error."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    compiled = torch.compile(model)
    for batch in (5, 2, 7):
        x = torch.randn(batch, 8)
        np.testing.assert_allclose(compiled(x).detach().numpy(), model(x).detach().numpy(),
                                   **TOL)
    with pytest.raises(ValueError) as eager:
        model(torch.randn(1, 8))
    with pytest.raises(ValueError) as got:
        compiled(torch.randn(1, 8))
    assert str(got.value) == str(eager.value)
    # (sizes that passed pass again; a refused size is refused on every call)
    x = torch.randn(7, 8)
    np.testing.assert_allclose(compiled(x).detach().numpy(), model(x).detach().numpy(), **TOL)
    with pytest.raises(ValueError, match="per channel"):
        compiled(torch.randn(1, 8))
    assert counting_cc() == 1


def test_a_compiled_step_refuses_a_size_eager_refuses_on_every_call(counting_cc):
    """The same check in a compiled training step: batch 1 refused with eager's error (and
    nothing updated), before and after calls at sizes that pass."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss

    compiled = torch.compile(step)
    with pytest.raises(ValueError) as eager:
        model(torch.randn(1, 8))
    for batch in (4, 4, 1, 6, 1):
        x, y = torch.randn(batch, 8), torch.randint(0, 3, (batch,))
        if batch == 1:
            before = [p.detach().clone() for p in model.parameters()]
            with pytest.raises(ValueError) as got:
                compiled(x, y)
            assert str(got.value) == str(eager.value)
            assert all(np.array_equal(p.detach().numpy(), b.numpy())
                       for p, b in zip(model.parameters(), before))
        else:
            assert np.isfinite(compiled(x, y).item())
    assert counting_cc() == 1
