"""Recurrent loops on several threads (``codegen/lowerings/scan.py``): the loop runs inside one
parallel region, each thread computing its share of the batch rows (no barrier inside the
loop) or, for a batch too small to share, of every gate's columns with a barrier per step, and
compiled layers follow eager mode on one, two and three threads, at batch sizes that leave a
partial block of rows or split by columns, with hidden sizes that do not split evenly. Split by
columns, a backward loop splits each step in two phases: each thread's columns of the gates'
gradients, a barrier, then each thread's columns of their product with the recurrent weight
(``test_scan_backward_threads.py``)."""
import re

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn
from tracenet.codegen.target import Parallelism
from tracenet.runtime import target as runtime_target
from tracenet.runtime import threads

from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)
from test_scan_cell import _step

F32 = dict(rtol=1e-4, atol=2e-5)


@pytest.fixture(autouse=True)
def _restore_threads():
    before, adaptive = tn.get_num_threads(), list(threads._adaptive)
    yield
    tn.set_num_threads(before)
    threads._adaptive[:] = adaptive
    threads.set_blas_threads(1)


def _split_scans(source):
    """The scan kernels that run their loop in a parallel region."""
    return re.findall(r"static void (\w+_scan)\([^)]*\)\n\{\n(?:(?!\n\}\n).)*?"
                      r"#pragma omp parallel if\(", source, re.S)


@pytest.mark.parametrize("name,hidden,kwargs", [
    ("LSTM", 40, {}),       # 3 chunks of 16 columns: the threads get unequal shares
    ("GRU", 33, {}),
    ("LSTM", 32, dict(num_layers=2, bidirectional=True)),
    ("RNN", 32, {}),        # no gates to split: today's loop, on one thread
])
def test_threads_split_each_step_and_follow_eager(monkeypatch, policy_cache, name, hidden,
                                                  kwargs):
    monkeypatch.setattr(Parallelism, "recurrent_min_step_flops", 0)  # small sizes split too
    policy_cache("recurrent-split")  # builds of this policy apart
    tn.manual_seed(0)
    m = getattr(tnn, name)(6, hidden, **kwargs)
    compiled = tn.compile(m)
    for n in (2, 1, 3):
        tn.set_num_threads(n)
        for batch, length in ((20, 4), (3, 6)):  # 20 rows: a block of 16 and one of 4
            x = tn.randn(length, batch, 6)
            got, want = _step(compiled, x), _step(m, x)
            for a, b in zip(got, want):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, **F32)
    split = _split_scans(compiled.source())
    if not runtime_target.current().openmp or name == "RNN":
        assert split == []
        return
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    # every forward loop splits, and every backward loop (the gates' gradients, a barrier,
    # then each thread's columns of their product, for a GRU added to z * dh)
    forward = [s for s in split if "forward" in s]
    backward = [s for s in split if "backward" in s]
    assert len(forward) == layers
    assert len(backward) == layers
    assert len(split) == len(forward) + len(backward)
    assert re.search(r"_cell_cols\([^;]*, u0, u1\);", compiled.source())


def test_a_small_step_stays_on_one_thread():
    """Below the policy's size a step is not worth a barrier: no parallel region."""
    tn.set_num_threads(2)
    m = tnn.LSTM(4, 8)
    compiled = tn.compile(m)
    x = tn.randn(5, 3, 4)
    for a, b in zip(_step(compiled, x), _step(m, x)):
        np.testing.assert_allclose(a, b, **F32)
    assert _split_scans(compiled.source()) == []


def test_language_model_step_splits_at_its_real_size():
    """The LSTM language model of bench/lstm.py (hidden 64, batch 16) splits without any
    change to the policy, and two threads train like one."""
    if not runtime_target.current().openmp:
        pytest.skip("no OpenMP here")
    results = []
    for n in (1, 2):
        tn.set_num_threads(n)
        tn.manual_seed(0)
        embed, rnn, out = tnn.Embedding(90, 32), tnn.LSTM(32, 64), tnn.Linear(64, 90)

        class LM(tnn.Module):
            def __init__(self):
                super().__init__()
                self.embed, self.rnn, self.out = embed, rnn, out

            def forward(self, x):
                return self.out(self.rnn(self.embed(x))[0]).reshape(-1, 90)
        net = LM()
        crit = tnn.CrossEntropyLoss()
        opt = tn.optim.Adam(net.parameters(), lr=0.01)
        step = tn.compile_step(lambda a, b: crit(net(a), b), opt)
        rng = np.random.default_rng(0)
        x = tn.from_numpy(rng.integers(0, 90, (12, 16)))
        y = tn.from_numpy(rng.integers(0, 90, (12 * 16,)))
        losses = [float(step(x, y)) for _ in range(3)]
        results.append((losses, [p.detach().numpy().copy() for p in net.parameters()]))
        assert len(_split_scans(step.source())) == 2  # the forward loop and the backward
        # both split the batch rows when each thread gets 4 (16 rows: up to 4 threads)
        assert step.source().count("const int by_columns = rows < 4L * nth;") == 2
    (l1, p1), (l2, p2) = results
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
