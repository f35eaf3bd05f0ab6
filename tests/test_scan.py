"""Recurrent layers under tracenet.compile are loops, not unrolled steps: one ``scan`` node per
layer and direction whose body is one step, a reverse scan for backward, a C loop over time.

Compiled forward and gradients (input, initial states, every parameter) are checked against
eager mode and PyTorch; the IR and the C do not grow with the sequence length; a compiled
training step of an LSTM language model follows the eager loop."""
import re

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn
from tracenet.ir.verify import verify
from tracenet.ops.scan import scan
from tracenet.trace import trace

torch = pytest.importorskip("torch")

# the cache-directory fixture and the layer pairs of the recurrent layers' catalogue
from test_catalogue_rnn import _cache, _flat as flat, npy, rand, twins  # noqa: E402,F401

TOL = dict(rtol=1e-9, atol=1e-10)


def run(lib, module, x, hx):
    """Forward on ``x`` (and initial state arrays ``hx``), backward of a fixed random weighting
    of every result; returns results and the gradients of input, states and parameters."""
    xt = lib.tensor(x, requires_grad=True)
    hs = [lib.tensor(h, requires_grad=True) for h in hx]
    state = None if not hs else tuple(hs) if len(hs) == 2 else hs[0]
    outs = flat(module(xt) if state is None else module(xt, state))
    loss = sum((o * lib.tensor(rand(*o.shape, seed=3 + i))).sum() for i, o in enumerate(outs))
    loss.backward()
    grads = [xt.grad] + [h.grad for h in hs] + [p.grad for p in module.parameters()]
    return [npy(o) for o in outs], [npy(g) for g in grads]


CASES = [
    ("RNN", dict(nonlinearity="tanh"), False),
    ("RNN", dict(nonlinearity="relu"), True),
    ("LSTM", {}, False),
    ("LSTM", {}, True),
    ("GRU", {}, False),
    ("GRU", {}, True),
    ("LSTM", dict(num_layers=2, bidirectional=True), True),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True), False),
    ("RNN", dict(num_layers=2, batch_first=True, bias=False), True),
    ("LSTM", dict(num_layers=2, proj_size=3, batch_first=True), True),
]


@pytest.mark.parametrize("name,kwargs,with_state", CASES)
def test_compiled_forward_and_backward_match_eager_and_torch(name, kwargs, with_state):
    T, B, I, H = 6, 3, 4, 5
    th, ours = twins(name, I, H, **kwargs)
    x = rand(B, T, I) if kwargs.get("batch_first") else rand(T, B, I)
    dirs = 2 if kwargs.get("bidirectional") else 1
    layers = kwargs.get("num_layers", 1)
    hsize = kwargs.get("proj_size") or H
    hx = []
    if with_state:
        hx = [rand(layers * dirs, B, hsize, seed=1)]
        if name == "LSTM":
            hx.append(rand(layers * dirs, B, H, seed=2))
    compiled = tn.compile(ours)
    got_out, got_grads = run(tn, compiled, x, hx)
    ours.zero_grad()
    eager_out, eager_grads = run(tn, ours, x, hx)
    torch_out, torch_grads = run(torch, th, x, hx)
    assert len(got_grads) == len(torch_grads)
    for a, b, c in zip(got_out + got_grads, eager_out + eager_grads,
                       torch_out + torch_grads):
        np.testing.assert_allclose(a, b, **TOL)
        np.testing.assert_allclose(a, c, **TOL)
    # the compiled graphs hold the loops: one scan per layer and direction, each way (alone
    # or in a fused loop)
    assert scans(compiled.graph) == layers * dirs
    assert scans(compiled.backward_graph) == layers * dirs


def scans(graph):
    return sum(m.op == "scan" for n in graph.nodes for m in (n.members or [n]))


def test_unbatched_input_compiles_to_a_scan():
    th, ours = twins("GRU", 3, 4)
    x = rand(5, 3)
    compiled = tn.compile(ours)
    got, _ = run(tn, compiled, x, [])
    want, _ = run(torch, th, x, [])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TOL)


def _graph_text(length, **kwargs):
    m = tnn.LSTM(4, 8, **kwargs)
    x = tn.randn(length, 2, 4, requires_grad=True)
    compiled = tn.compile(m, dynamic=False)  # specialised on the exact length
    out, (h, c) = compiled(x)
    (out.sum() + h.sum() + c.sum()).backward()
    return str(compiled.graph), str(compiled.backward_graph), compiled.source()


def test_ir_and_c_do_not_grow_with_the_sequence_length():
    # lengths whose multiples in the shapes (T, T * batch) have as many digits: the IR texts
    # differ only in those numbers
    short, long = _graph_text(50, num_layers=2), _graph_text(90, num_layers=2)
    assert len(short[0]) == len(long[0]) and len(short[1]) == len(long[1])
    # the C differs only in numbers (sizes, offsets) too: as many lines, about as long
    assert short[2].count("\n") == long[2].count("\n")
    assert abs(len(short[2]) - len(long[2])) < 200
    fwd = short[0]
    assert fwd.count("= scan(") == 2 and fwd.count("body(") == 2
    # the body is one step: its lines sit indented under the scan node, once
    body = fwd[fwd.index("body("):]
    assert body.count("sigmoid(") == 6  # 3 gates x 2 layers, not x 50 steps
    assert fwd.count("sigmoid(") == 6
    # the trip count appears once in each loop's C, as a value, not as unrolled code
    assert short[2].count("const int64_t length = 50;") == 4  # 2 forward + 2 backward


def test_one_build_serves_every_sequence_length():
    # a time-major input's leading size, the sequence length, is the symbolic size N: the loop
    # bound is the run-time value, and the C is built once
    tn.manual_seed(0)
    m = tnn.LSTM(3, 5, num_layers=2)
    compiled = tn.compile(m)
    for length in (4, 9, 1):
        x = tn.randn(length, 2, 3, requires_grad=True)
        out, (h, c) = compiled(x)
        (out.sum() + (h * c).sum()).backward()
        got = [t.detach().numpy() for t in (out, h, c)] + [x.grad.numpy()] + \
            [p.grad.numpy().copy() for p in m.parameters()]
        x.grad = None
        m.zero_grad()
        out, (h, c) = m(x)
        (out.sum() + (h * c).sum()).backward()
        want = [t.detach().numpy() for t in (out, h, c)] + [x.grad.numpy()] + \
            [p.grad.numpy().copy() for p in m.parameters()]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        m.zero_grad()
    assert len(compiled.specialisations) == 1
    assert "const int64_t length = (tn_N);" in compiled.source()


def test_a_symbolic_batch_size_reaches_the_loop_body():
    # batch-first: the batch size is the symbol N, in the carries' and the body's shapes
    tn.manual_seed(0)
    m = tnn.RNN(3, 4, batch_first=True)
    compiled = tn.compile(m)
    for batch in (2, 5):
        x = tn.randn(batch, 6, 3)
        with tn.no_grad():
            out, h = compiled(x)
            want, want_h = m(x)
        np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h.numpy(), want_h.numpy(), rtol=1e-5, atol=1e-6)
    assert len(compiled.specialisations) == 1
    assert "const int64_t length = 6;" in compiled.source()
    assert re.search(r"_body\(args, work \+ \(.*tn_N.*\), \(int64_t \*\)0, tn_N\);",
                     compiled.source())


def test_traced_scan_runs_in_the_interpreter_like_eager():
    m = tnn.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = tn.randn(5, 2, 3)
    g = verify(trace(m, x))
    got = g.run(x, *m.parameters())
    with tn.no_grad():
        out, (h, c) = m(x)
    for a, b in zip(got, (out, h, c)):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-6, atol=1e-6)


def test_printed_body_is_indented_under_its_scan_node():
    g = trace(tnn.GRU(3, 4), tn.randn(7, 2, 3))
    lines = str(g).splitlines()
    at = next(i for i, line in enumerate(lines) if "= scan(" in line)
    assert lines[at + 1].startswith("      body(%carry0: f32[2,4], %x0: f32[2,12]")
    end = lines.index("      }", at)
    assert all(line.startswith("        ") for line in lines[at + 2:end])


def test_dropout_between_layers_in_training():
    m = tnn.LSTM(3, 6, num_layers=2, dropout=0.5)
    x = tn.randn(4, 2, 3)
    compiled = tn.compile(m)
    with tn.no_grad():
        a = compiled(x)[0].numpy()
        b = compiled(x)[0].numpy()
        assert not np.allclose(a, b)  # a fresh mask per call
        m.eval()
        np.testing.assert_allclose(compiled(x)[0].numpy(), m(x)[0].numpy(), rtol=1e-5,
                                   atol=1e-6)


VOCAB = 11


class LM(tnn.Module):
    def __init__(self):
        super().__init__()
        self.embed = tnn.Embedding(VOCAB, 6)
        self.rnn = tnn.LSTM(6, 8)
        self.out = tnn.Linear(8, VOCAB)

    def forward(self, x):
        y, _ = self.rnn(self.embed(x))
        return self.out(y).reshape(-1, VOCAB)


def lm_steps_follow_eager(make, optimizer, vocab, tokens, steps):
    """``compile_step`` of a language model's cross entropy (``make()`` builds the model)
    against the same steps in eager mode on a copy, with ``optimizer(params)`` on each: every
    step's loss, then every parameter. Random ``tokens``-shaped batches of ``vocab`` tokens.
    Returns the compiled step and its losses."""
    net, ref = make(), make()
    ref.load_state_dict(net.state_dict())
    crit = tn.nn.CrossEntropyLoss()
    opt, ref_opt = optimizer(net.parameters()), optimizer(ref.parameters())
    step = tn.compile_step(lambda a, b: crit(net(a), b), opt)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        x = tn.from_numpy(rng.integers(0, vocab, tokens))
        y = tn.from_numpy(rng.integers(0, vocab, (int(np.prod(tokens)),)))
        loss = step(x, y)
        ref_opt.zero_grad()
        want = crit(ref(x), y)
        want.backward()
        ref_opt.step()
        np.testing.assert_allclose(loss.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)
        losses.append(float(loss))
    for (n, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=n)
    return step, losses


def test_compiled_training_step_of_an_lstm_language_model_follows_eager():
    tn.manual_seed(0)
    step, losses = lm_steps_follow_eager(
        LM, lambda params: tn.optim.SGD(params, lr=0.5, momentum=0.9), VOCAB, (9, 4), 4)
    assert losses[-1] < losses[0]
    # the loop (fused with the embedding it reads: test_scan_gather.py) and its reverse
    assert len(scan_nodes(step.graph)) == 2


def scan_nodes(graph):
    """The graph's scan nodes, those inside fused groups included."""
    return [m for n in graph.nodes for m in (n.members if n.op == "fused" else [n])
            if m.op == "scan"]


class Decay(tnn.Module):
    """A loop written with ``ops.scan.scan``: a scalar and a vector parameter read every step
    (their gradients are summed over the steps: in the backward loop for the scalar, as one
    reduction after it for the vector's column sums), two stacked outputs."""

    def __init__(self):
        super().__init__()
        self.rate = tnn.Parameter(tn.tensor(0.7))
        self.scale = tnn.Parameter(tn.randn(3))

    def forward(self, x, h):
        def step(carry, xs):
            h = carry[0] * self.rate + xs[0] * self.scale
            return (h.tanh(),), (h, h * xs[0])
        (hn,), (ys, zs) = scan(step, (h,), (x,), reverse=True)
        return ys.sum(0) + zs.mean(0) + hn


def test_a_loop_written_with_scan_compiles_and_differentiates_like_eager():
    tn.manual_seed(1)
    m = Decay()
    x, h = tn.randn(6, 2, 3, requires_grad=True), tn.randn(2, 3, requires_grad=True)
    compiled = tn.compile(m)
    gy = tn.randn(2, 3)
    compiled(x, h).backward(gy)
    got = [t.grad.numpy().copy() for t in (x, h, m.rate, m.scale)]
    for t in (x, h, m.rate, m.scale):
        t.grad = None
    m(x, h).backward(gy)
    for a, t in zip(got, (x, h, m.rate, m.scale)):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-5, atol=1e-6)
    (bwd_scan,) = [n for n in compiled.backward_graph.nodes if n.op == "scan"]
    # carries: the cotangent of h and the sum of the scalar's gradient; not the vector's
    assert bwd_scan.attrs["n_carry"] == 2


def test_weight_gradients_are_one_product_after_the_backward_loop():
    m = tnn.LSTM(4, 8)
    compiled = tn.compile(m)
    out, _ = compiled(tn.randn(7, 3, 4, requires_grad=True))
    out.sum().backward()
    (bwd_scan,) = [n for n in compiled.backward_graph.nodes if n.op == "scan"]
    assert bwd_scan.attrs["n_carry"] == 2  # the cotangents of h and c only
    body = bwd_scan.attrs["body"]
    assert all(v.shape != (32, 8) for n in body.nodes for v in n.outputs)  # no w_hh gradient
    # b_ih's and b_hh's gradients are the same column sums of the stacked gate gradients:
    # one reduction serves both
    assert compiled.backward_graph.op_counts().get("sum") == 1


def test_one_compiled_training_step_serves_every_sequence_length():
    # time-major tokens and targets: their leading size, the sequence length, is symbolic
    tn.manual_seed(0)
    net, ref = LM(), LM()
    ref.load_state_dict(net.state_dict())
    crit = tn.nn.CrossEntropyLoss()
    opt = tn.optim.SGD(net.parameters(), lr=0.5)
    ref_opt = tn.optim.SGD(ref.parameters(), lr=0.5)
    step = tn.compile_step(lambda a, b: crit(net(a), b.reshape(-1)), opt)
    rng = np.random.default_rng(1)
    for length in (7, 3, 12):
        x = tn.from_numpy(rng.integers(0, VOCAB, (length, 4)))
        y = tn.from_numpy(rng.integers(0, VOCAB, (length, 4)))
        loss = step(x, y)
        ref_opt.zero_grad()
        want = crit(ref(x), y.reshape(-1))
        want.backward()
        ref_opt.step()
        np.testing.assert_allclose(loss.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)
    for p, q in zip(net.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert len(step._specs) == 1
