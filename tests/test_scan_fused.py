"""A loop fused with its neighbours (the ``loop`` group of ``passes/fusion.py``, lowered in
``codegen/lowerings/scan.py``): a loop whose scanned input is an embedding's rows picks each
step's rows from the table as the step runs (no pass over every step's rows before the loop),
and the linear layer that reads its stacked output multiplies each step's rows right after the
step (batch first too: no permute). Compiled results and gradients follow eager and torch on
one, two and three threads (split by batch rows and by gate columns), in NaN-filled arenas,
and an index out of range raises eager's error."""
import re

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn
from tracenet.codegen.target import Parallelism
from tracenet.ops.scan import scan

from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)
from test_scan_threads import _restore_threads  # noqa: F401  (the thread-count fixture)
from compile_checks import nan_filled_arenas

torch = pytest.importorskip("torch")

F32 = dict(rtol=1e-4, atol=2e-5)
F64 = dict(rtol=1e-9, atol=1e-10)
VOCAB, EMBED, HIDDEN = 11, 6, 40  # 40: three chunks of 16 gate columns, unequal shares


def tagger(lib, name, dtype, out_width=VOCAB, out_bias=True, **rnn_kwargs):
    nn = lib.nn

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, EMBED, dtype=dtype)
            self.rnn = getattr(nn, name)(EMBED, HIDDEN, dtype=dtype, **rnn_kwargs)
            width = HIDDEN * (2 if rnn_kwargs.get("bidirectional") else 1)
            self.out = nn.Linear(width, out_width, bias=out_bias, dtype=dtype)

        def forward(self, tokens):
            return self.out(self.rnn(self.embed(tokens))[0])
    return Tagger()


def pair(name, f64=False, **kwargs):
    th = tagger(torch, name, torch.float64 if f64 else torch.float32, **kwargs)
    ours = tagger(tn, name, tn.float64 if f64 else tn.float32, **kwargs)
    for p, q in zip(ours.parameters(), th.parameters()):
        p.data = tn.tensor(q.detach().numpy().copy())
    return th, ours


def run(lib, module, tokens, weights):
    """The output and every parameter's gradient of a fixed weighting of the output."""
    for p in module.parameters():
        p.grad = None
    out = module(lib.from_numpy(tokens))
    (out * lib.from_numpy(weights)).sum().backward()
    return [out.detach().numpy().copy()] + [p.grad.numpy().copy() for p in module.parameters()]


def loops(graph):
    return [n for n in graph.nodes if n.op == "fused" and n.attrs["group"] == "loop"]


def gathered(graph):
    """The graph's fused loops that pick their rows from a table."""
    return [n for n in loops(graph) if n.members[0].op == "embedding"]


def headed(graph):
    """The graph's fused loops that run the linear layer after them."""
    return [n for n in loops(graph) if n.members[-1].op == "gemm"]


def tokens(batch, length, batch_first, seed):
    shape = (batch, length) if batch_first else (length, batch)
    return np.random.default_rng(seed).integers(0, VOCAB, shape)


def follows(th, ours, compiled, toks, tol):
    weights = np.random.default_rng(7).standard_normal(
        toks.shape + compiled.out.weight.shape[:1]).astype(
            compiled.out.weight.detach().numpy().dtype)
    got, eager = run(tn, compiled, toks, weights), run(tn, ours, toks, weights)
    want = run(torch, th, toks, weights)
    for a, b, c in zip(got, eager, want):
        assert a.shape == c.shape
        np.testing.assert_allclose(a, b, **tol)
        np.testing.assert_allclose(a, c, **tol)


@pytest.mark.parametrize("name,kwargs", [("LSTM", {}), ("LSTM", dict(batch_first=True)),
                                         ("GRU", dict(batch_first=True)), ("RNN", {})])
def test_the_loop_picks_its_rows_from_the_table(name, kwargs):
    th, ours = pair(name, f64=True, **kwargs)
    compiled = tn.compile(ours)
    follows(th, ours, compiled, tokens(4, 7, kwargs.get("batch_first"), 0), F64)
    # one loop reads the (projected) table; no kernel gathers every step's rows before it
    (loop,) = gathered(compiled.graph)
    assert [m.op for m in loop.members][:2] == ["embedding", "scan"]
    source = compiled.source()
    assert not re.search(r"static void \w+_embedding\(", source)
    assert len(re.findall(r"static void \w+_k\d+_embedding_scan(_permute)?(_view_gemm)?\(",
                          source)) == 1


def small_loops_split_on_nan_arenas(monkeypatch, cache_dir):
    """NaN-filled arenas; loops as small as the tests' split between the threads too, built
    in ``cache_dir`` (apart from builds under the usual policy: the tests pass
    ``policy_cache(SMALL_LOOPS_SPLIT)``, tests/conftest.py)."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "recurrent_min_step_flops", 0)
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(cache_dir))


SMALL_LOOPS_SPLIT = "small-loops-split"  # (the policy's cache, tests/conftest.py)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_threads_pick_their_rows_and_follow_eager(monkeypatch, policy_cache, name):
    """Batch 20 on two threads: each picks its own 10 rows (split by rows, no barrier);
    batch 3 and three threads at 20: the threads share each step's rows, then wait (split
    by gate columns)."""
    small_loops_split_on_nan_arenas(monkeypatch, policy_cache(SMALL_LOOPS_SPLIT))
    th, ours = pair(name, batch_first=True)
    compiled = tn.compile(ours)
    for n in (2, 1, 3):
        tn.set_num_threads(n)
        for batch, length in ((20, 5), (3, 6)):
            for seed in range(3):
                toks = tokens(batch, length, True, seed)
                follows(th, ours, compiled, toks, F32)
                inferred(th, ours, compiled, toks, F32)
    assert len(gathered(compiled.graph)) == 1
    assert len(headed(compiled.graph)) == 1  # (inference: the layer's rows are not kept)
    # the loop of the fused kernel runs in a parallel region
    assert re.search(r"static void \w+_embedding_scan\w*\([^)]*\)\n\{\n(?:(?!\n\}\n).)*?"
                     r"#pragma omp parallel if\(", compiled.source(), re.S)


def inferred(th, ours, compiled, toks, tol):
    """Inference (no gradients: the specialisation whose loop runs the linear layer)."""
    with tn.no_grad():
        got, eager = compiled(tn.from_numpy(toks)).numpy(), ours(tn.from_numpy(toks)).numpy()
    with torch.no_grad():
        want = th(torch.from_numpy(toks)).numpy()
    np.testing.assert_allclose(got, eager, **tol)
    np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("name,kwargs", [
    ("LSTM", {}), ("LSTM", dict(batch_first=True)), ("GRU", dict(batch_first=True)),
    ("LSTM", dict(batch_first=True, out_width=32)),  # whole blocks of columns only
    ("LSTM", dict(out_bias=False)), ("RNN", dict(batch_first=True))])
def test_the_linear_layer_after_the_loop_runs_in_it(monkeypatch, name, kwargs):
    nan_filled_arenas(monkeypatch)
    th, ours = pair(name, **kwargs)
    compiled = tn.compile(ours)
    first = kwargs.get("batch_first")
    inferred(th, ours, compiled, tokens(4, 7, first, 1), F32)
    (loop,) = headed(compiled.graph)
    ops = [m.op for m in loop.members]
    assert ops == ["embedding", "scan"] + ["permute"] * bool(first) + ["view", "gemm"]
    # the kernels besides the loop: the table's projection, and batch first the indices'
    # permute (no product of the loop's rows, no permute of them)
    kernels = re.findall(r"^static void tn_\w+?_forward_k\d+_([a-z_]+)\(", compiled.source(),
                         re.M)
    assert sorted(k for k in kernels if "scan" not in k and k != "zeros") == \
        ["gemm"] + ["permute"] * bool(first)
    for batch, length in ((6, 5), (4, 9)):  # other sizes
        inferred(th, ours, compiled, tokens(batch, length, first, batch), F32)


def test_a_stacked_layer_s_input_projection_runs_in_the_loop_before_it(monkeypatch):
    """Two layers: the first loop multiplies its steps' rows by the second layer's input
    weight, the second loop by the output layer's."""
    nan_filled_arenas(monkeypatch)
    th, ours = pair("LSTM", num_layers=2)
    compiled = tn.compile(ours)
    for batch, length in ((5, 6), (3, 4)):
        inferred(th, ours, compiled, tokens(batch, length, False, batch), F32)
    loops = headed(compiled.graph)
    assert len(loops) == 2
    assert [tuple(n.members[-1].inputs[1].shape) for n in loops] == [(4 * HIDDEN, HIDDEN),
                                                                    (VOCAB, HIDDEN)]


def test_a_loop_that_does_not_split_shares_the_layer_by_steps(monkeypatch, policy_cache):
    """A step too small to split: the layer runs after the loop, steps shared by threads."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    monkeypatch.setattr(Parallelism, "gemm_min_rows", 0)
    policy_cache("small-gemms-split")  # builds of this policy apart
    th, ours = pair("LSTM", batch_first=True)
    compiled = tn.compile(ours)
    for n in (2, 3, 1):
        tn.set_num_threads(n)
        inferred(th, ours, compiled, tokens(3, 9, True, n), F32)
    assert headed(compiled.graph)
    assert re.search(r"#pragma omp parallel for if\(1\) schedule\(static\)\n\s*"
                     r"for \(int64_t t = 0; t < length; t\+\+\)", compiled.source())


def test_both_directions_pick_rows_of_their_own_tables():
    """Each direction of the first layer projects the table with its own weight; the reverse
    loop picks its steps' rows last to first; the second layer reads states."""
    th, ours = pair("LSTM", f64=True, num_layers=2, bidirectional=True)
    compiled = tn.compile(ours)
    follows(th, ours, compiled, tokens(3, 5, False, 1), F64)
    loops = gathered(compiled.graph)
    assert sorted(m.attrs.get("reverse", False) for n in loops for m in n.members
                  if m.op == "scan") == [False, True]


class Decay(tnn.Module):
    """A loop written with ``ops.scan.scan`` straight over embedded tokens (no product
    before it: the loop picks rows of the embedding table itself)."""

    def __init__(self):
        super().__init__()
        self.embed = tnn.Embedding(VOCAB, 4, dtype=tn.float64)
        self.rate = tnn.Parameter(tn.tensor(0.7, dtype=tn.float64))

    def forward(self, toks):
        def step(carry, xs):
            h = (carry[0] * self.rate + xs[0]).tanh()
            return (h,), (h * xs[0],)
        h0 = tn.zeros(toks.shape[1], 4, dtype=tn.float64)
        (hn,), (ys,) = scan(step, (h0,), (self.embed(toks),))
        return ys.sum(0) + hn


def test_a_loop_written_with_scan_over_embedded_tokens(monkeypatch):
    nan_filled_arenas(monkeypatch)
    tn.manual_seed(0)
    m = Decay()
    compiled = tn.compile(m)
    toks = tn.from_numpy(tokens(3, 6, False, 2))
    outs = []
    for module in (compiled, m):
        for p in m.parameters():
            p.grad = None
        out = module(toks)
        (out * out).sum().backward()
        outs.append([out.detach().numpy()] + [p.grad.numpy().copy() for p in m.parameters()])
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, **F64)
    # the step's product with its rows needs them for the gradient: they stay a value
    assert not gathered(compiled.graph)
    inference = tn.compile(m)
    with tn.no_grad():
        np.testing.assert_allclose(inference(toks).numpy(), m(toks).numpy(), **F64)
    assert len(gathered(inference.graph)) == 1


@pytest.mark.parametrize("bad", [VOCAB, -1])
def test_an_index_out_of_range_raises_as_in_eager(bad):
    _, ours = pair("LSTM", batch_first=True)
    compiled = tn.compile(ours)
    toks = tokens(4, 5, True, 3)
    with tn.no_grad():
        compiled(tn.from_numpy(toks))  # a good call first: the build exists
        toks[2, 3] = bad
        with pytest.raises(IndexError) as eager:
            ours(tn.from_numpy(toks))
        with pytest.raises(IndexError) as got:
            compiled(tn.from_numpy(toks))
    assert str(got.value) == str(eager.value) == "index out of range in self"
    assert gathered(compiled.graph)
