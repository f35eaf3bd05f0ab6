"""A batch-first recurrent layer's permutes inside its loops (the ``loop`` group of
``passes/fusion.py``, ``codegen/lowerings/scan.py``): in training the forward loop writes each
step's rows of its output where they sit batch first (the linear layer's product is not
fused there: its weight's gradient reads the rows too), and the backward loop copies each
step's rows of the output gradient from the batch-first gradient, so no kernel permutes all
of them. Compiled outputs and gradients follow eager and torch on one to three threads
(split by batch rows and by gate columns), float32 and float64, batch 1, odd sizes, a
varying batch and NaN-filled work memory; each test asserts both loops took their permute."""
import re

import numpy as np
import pytest

import tracenet as tn
from tracenet.codegen.target import Parallelism

import sweep
from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)
from test_scan_fused import F32, F64, loops, pair, run, tokens
from test_scan_threads import _restore_threads  # noqa: F401  (the thread-count fixture)
from compile_checks import nan_filled_arenas

torch = pytest.importorskip("torch")


class Step:
    """A training step of ``module`` (output weighted by fixed weights, summed, backward,
    an ``optimizer`` at rate 0), compiled, and its results: the output and every parameter's
    gradient."""

    def __init__(self, module, optimizer=tn.optim.SGD, **compile_kwargs):
        self.module = module
        opt = optimizer(module.parameters(), lr=0.0)

        def step(toks, weights):
            opt.zero_grad()
            out = module(toks)
            (out * weights).sum().backward()
            opt.step()
            return out
        self.compiled = tn.compile(step, **compile_kwargs)

    def __call__(self, toks, weights):
        out = self.compiled(tn.from_numpy(toks), tn.from_numpy(weights))
        return [out.detach().numpy().copy()] + \
            [p.grad.numpy().copy() for p in self.module.parameters()]


def follows_in_a_step(th, ours, step, toks, tol):
    weights = np.random.default_rng(7).standard_normal(
        toks.shape + ours.out.weight.shape[:1]).astype(ours.out.weight.detach().numpy().dtype)
    got, eager = step(toks, weights), run(tn, ours, toks, weights)
    want = run(torch, th, toks, weights)
    for a, b, c in zip(got, eager, want):
        assert a.shape == c.shape
        np.testing.assert_allclose(a, b, **tol)
        np.testing.assert_allclose(a, c, **tol)


def permutes_in_loops(compiled):
    """Assert that one loop writes its output batch first and one reads its gradient so,
    and that no kernel permutes floats (the token indices' permute is int64)."""
    ops = [[m.op for m in n.members] for n in loops(compiled.graph)]  # (the last call's)
    assert any(o[-1] == "permute" and "scan" in o for o in ops), ops
    assert any(o[0] == "permute" and "scan" in o for o in ops), ops
    source = compiled.source()
    assert re.search(r"copied from the batch-first input", source)
    assert re.search(r"copied to where they sit batch first", source)
    for params in re.findall(r"static void \w+_k\d+_permute\(([^)]*)\)", source):
        assert "float" not in params and "double" not in params, params


# the default run: every cell in float32 and the LSTM in float64; the GRU and the RNN in
# float64 with -m sweep
@sweep.keep(lambda p: not p["f64"] or p["name"] == "LSTM")
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("f64", [False, True])
def test_a_batch_first_layer_trains_with_its_permutes_in_the_loops(monkeypatch, name, f64):
    nan_filled_arenas(monkeypatch)
    th, ours = pair(name, f64=f64, batch_first=True)
    step = Step(ours)
    for batch, length, seed in ((4, 7, 0), (1, 5, 1), (5, 3, 2)):
        follows_in_a_step(th, ours, step, tokens(batch, length, True, seed),
                          F64 if f64 else F32)
    permutes_in_loops(step.compiled)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_threads_split_rows_and_columns(monkeypatch, tmp_path, name):
    """Loops this small split between threads too: batch 20 by rows (each thread copies its
    own rows), batch 3 by gate columns (the threads share the rows' copies, then wait)."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "recurrent_min_step_flops", 0)
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path))
    th, ours = pair(name, batch_first=True)
    step = Step(ours)
    for n in (2, 3, 1):
        tn.set_num_threads(n)
        for batch, length in ((20, 5), (3, 6), (7, 1)):
            follows_in_a_step(th, ours, step, tokens(batch, length, True, n + batch), F32)
            if length == 1:  # (one step: no loop)
                continue
            permutes_in_loops(step.compiled)
            for kind in ("permute_scan", "scan_permute"):  # both loops split
                assert re.search(rf"static void \w+_{kind}\([^)]*\)\n\{{\n(?:(?!\n\}}\n).)*?"
                                 r"#pragma omp parallel if\(", step.compiled.source(), re.S)


def test_a_batch_first_lstm_on_float_inputs(monkeypatch):
    """No embedding: a batch-first LSTM on float inputs, a fixed shape, odd sizes."""
    nan_filled_arenas(monkeypatch)
    torch.manual_seed(0)
    th = torch.nn.LSTM(5, 9, batch_first=True)
    ours = tn.nn.LSTM(5, 9, batch_first=True)
    for p, q in zip(ours.parameters(), th.parameters()):
        p.data = tn.tensor(q.detach().numpy().copy())
    x = np.random.default_rng(0).standard_normal((3, 11, 5)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((3, 11, 9)).astype(np.float32)
    opt = tn.optim.SGD(ours.parameters(), lr=0.0)

    def step(xs, weights):
        opt.zero_grad()
        out = ours(xs)[0]
        (out * weights).sum().backward()
        opt.step()
        return out

    compiled = tn.compile(step, dynamic=False)
    got = [compiled(tn.tensor(x), tn.tensor(w)).numpy()] + \
        [p.grad.numpy().copy() for p in ours.parameters()]
    eager = [step(tn.tensor(x), tn.tensor(w)).detach().numpy()] + \
        [p.grad.numpy().copy() for p in ours.parameters()]
    out = th(torch.tensor(x))[0]
    (out * torch.tensor(w)).sum().backward()
    want = [out.detach().numpy()] + [p.grad.numpy() for p in th.parameters()]
    for a, b, c in zip(got, eager, want):
        np.testing.assert_allclose(a, b, **F32)
        np.testing.assert_allclose(a, c, **F32)
    ops = [[m.op for m in n.members] for n in loops(compiled.graph)]
    assert ["scan", "permute"] in ops and ["permute", "scan"] in ops, ops
