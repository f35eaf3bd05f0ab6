"""The forward loop's recurrent weight in panels (``scan_cell.weight_panels``, packed by
``templates/scan.c.j2``): once per call the loop packs ``W_hh`` as one ``[K, 16]`` panel of its
transpose per block of 16 columns of each gate (zero past the hidden size), and each block's
product reads its panel's rows one after the other. Compiled outputs and gradients of a
training step follow eager and torch with hidden sizes that leave a partial panel, float32
(register tiles) and float64 (the GEMM's, from a thread's share that may start inside a
panel), batch 1, a varying (symbolic) batch, one to three threads splitting rows or gate
columns, and NaN-filled work memory; each test asserts that the loop packs panels and that
its product reads them."""
import re

import numpy as np
import pytest

import sweep
import tracenet as tn
from tracenet.codegen.target import Parallelism

from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)
from test_scan_fused import F32, F64
from test_scan_threads import _restore_threads  # noqa: F401  (the thread-count fixture)
from compile_checks import nan_filled_arenas

torch = pytest.importorskip("torch")

INPUT = 5


def lstm_pair(hidden, f64):
    torch.manual_seed(hidden)
    dtype = torch.float64 if f64 else torch.float32
    th = torch.nn.LSTM(INPUT, hidden, dtype=dtype)
    ours = tn.nn.LSTM(INPUT, hidden, dtype=tn.float64 if f64 else tn.float32)
    for p, q in zip(ours.parameters(), th.parameters()):
        p.data = tn.tensor(q.detach().numpy().copy())
    return th, ours


def training_step(module):
    """The output of ``module`` weighted by fixed weights and summed, its backward, and SGD
    at rate 0 (the parameters stay as they are), compiled; returns ``(eager, compiled)``."""
    opt = tn.optim.SGD(module.parameters(), lr=0.0)

    def step(xs, weights):
        opt.zero_grad()
        out = module(xs)[0]
        (out * weights).sum().backward()
        opt.step()
        return out
    return step, tn.compile(step)


def follows(th, ours, step, compiled, batch, length, tol):
    dt = np.float64 if tol is F64 else np.float32
    rng = np.random.default_rng(batch * 100 + length)
    x = rng.standard_normal((length, batch, INPUT)).astype(dt)
    w = rng.standard_normal((length, batch, th.hidden_size)).astype(dt)
    got = [compiled(tn.tensor(x), tn.tensor(w)).numpy().copy()] + \
        [p.grad.numpy().copy() for p in ours.parameters()]
    eager = [step(tn.tensor(x), tn.tensor(w)).detach().numpy().copy()] + \
        [p.grad.numpy().copy() for p in ours.parameters()]
    for p in th.parameters():
        p.grad = None
    out = th(torch.tensor(x))[0]
    (out * torch.tensor(w)).sum().backward()
    want = [out.detach().numpy()] + [p.grad.numpy() for p in th.parameters()]
    for a, b, c in zip(got, eager, want):
        assert a.shape == c.shape
        np.testing.assert_allclose(a, b, **tol)
        np.testing.assert_allclose(a, c, **tol)


def reads_panels(source, hidden, f64):
    """Assert that a loop packs the weight in panels and that its gate kernel's product
    reads gate g's block from its panel (16 columns, rows 16 apart)."""
    assert "in panels of" in source
    per_gate = -(-hidden // 16)
    sfx = "f64" if f64 else "f32"
    call = r"tn_scan_block_f32\(rb, " if not f64 else rf"tn_gemm_{sfx}\(rb, jb, "
    for g in range(4):
        assert re.search(call + rf"[^;]*\+ \(size_t\)\({g * per_gate} \+ \(j0\) / 16\) \* "
                         rf"{16 * hidden} \+ \(j0\) % 16, 16, ",
                         source), g


def trained_on_one_to_three_threads(monkeypatch, policy_cache, hidden, f64):
    """The compiled training step of an LSTM of ``hidden`` units, after it followed eager and
    torch on two, one and three threads in NaN-filled work memory: 20 rows (split by rows),
    3 and 1 (by gate columns: with three threads at hidden 40 in float64, chunks of 8
    columns, a share starts inside a panel)."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "recurrent_min_step_flops", 0)  # small loops split too
    policy_cache("recurrent-split")
    th, ours = lstm_pair(hidden, f64)
    step, compiled = training_step(ours)
    for n in (2, 1, 3):
        tn.set_num_threads(n)
        for batch, length in ((20, 4), (3, 5), (1, 3)):
            follows(th, ours, step, compiled, batch, length, F64 if f64 else F32)
    return compiled


# the default run: 40 units (a partial panel; in float64 on three threads a share starting
# inside a panel) in float32 and float64; 20 and 64 (whole panels only) with -m sweep
@sweep.keep(lambda p: p["hidden"] == 40)
@pytest.mark.parametrize("hidden", [20, 40, 64])  # 20, 40: a partial panel per gate
@pytest.mark.parametrize("f64", [False, True])
def test_the_forward_loop_reads_its_weight_in_panels(monkeypatch, policy_cache, hidden, f64):
    compiled = trained_on_one_to_three_threads(monkeypatch, policy_cache, hidden, f64)
    reads_panels(compiled.source(), hidden, f64)
