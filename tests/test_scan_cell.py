"""A recurrent step's gate math is one kernel (``codegen/lowerings/scan_cell.py``): each step of
a compiled LSTM or GRU loop runs the recurrent product and one kernel for everything after it
(the backward step: one kernel, then the product), and compiled layers of every kind still
follow eager mode in float32 at several sequence lengths and batch sizes from one build."""
import re

import numpy as np
import pytest

import sweep
import tracenet as tn
import tracenet.nn as tnn
from tracenet.ops.scan import scan

from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)

F32 = dict(rtol=1e-4, atol=2e-5)


def _bodies(source):
    """{scan body function name: the kernels it calls, in order} of a compiled source."""
    bodies = {}
    for name, text in re.findall(r"static void (\w+_scan_body)\(void \*const \*args[^)]*\)\n"
                                 r"\{\n(.*?)\n\}", source, re.S):
        bodies[name] = re.findall(r"^    (\w+)\(", text, re.M)
    return bodies


def _cell_source(source, body):
    """The source of the gate kernel a scan body calls (its ``_cols`` function, or the
    ``_gates`` function that calls with a pointer per gate of a gate-wide result)."""
    name = _bodies(source)[body][0]
    suffix = "_gates" if f"{name}_gates(" in source else "_cols"
    return re.search(rf"static void {name}{suffix}\(.*?\n\}}\n", source, re.S).group(0)


@pytest.mark.parametrize("name,backward", [
    ("LSTM", ["cell", "gemm"]),
    # the gradient of h_{t-1} is the product's plus the direct path through z * h_{t-1}
    ("GRU", ["cell", "gemm", "add"])])
def test_each_step_runs_one_kernel_with_the_product_inside(name, backward):
    m = getattr(tnn, name)(4, 8)
    compiled = tn.compile(m)
    out, _ = compiled(tn.randn(5, 3, 4, requires_grad=True))
    out.sum().backward()
    source = compiled.source()
    bodies = _bodies(source)
    assert len(bodies) == 2  # the forward loop and the backward loop
    kinds = sorted([c.rsplit("_", 1)[-1] for c in calls] for calls in bodies.values())
    # forward: the product and the gates in one kernel, and one copy: the state h the step
    # read, saved for the backward (h itself is written into the stacked output, the cell
    # state c into the slice the next step reads and the backward finds it in); backward:
    # the gates' gradients in one kernel, then their product with the weight
    assert kinds == [backward, ["cell", "memcpy"]]
    # the gates are read in place from the product, not split into copies first
    assert "_split(" not in source and "_cat(" not in source
    fwd = next(b for b in bodies if bodies[b][-1].endswith("memcpy"))
    bwd = next(b for b in bodies if b != fwd)
    # the forward product is computed a block of gate columns at a time into a tile the gate
    # math reads, from the weight transposed once per loop
    cell = _cell_source(source, fwd)
    assert "tile[" in cell and cell.count("tn_gemm_f32(") == (4 if name == "LSTM" else 3)
    assert "the weight a step's product reads as its transpose" in source
    assert "tn_gemm" not in _cell_source(source, bwd)  # the backward product: its own kernel


def test_inference_step_writes_only_the_new_state():
    m = tnn.LSTM(4, 8).eval()
    compiled = tn.compile(m)
    with tn.no_grad():
        compiled(tn.randn(5, 3, 4))
    (calls,) = _bodies(compiled.source()).values()
    assert [c.rsplit("_", 1)[-1] for c in calls] == ["cell"]  # the product inside; no copy
    cell = re.search(r"static void \w+_cell\(([^)]*)\)", compiled.source()).group(1)
    assert cell.count("float *restrict out") == 2  # h and c: nothing saved for a backward


VARIANTS = [
    ("LSTM", {}),
    ("GRU", {}),
    ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu")),
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=3)),
]


def _step(module, x):
    """Outputs and the gradients of input and parameters for a fixed weighting of outputs."""
    x = x.detach().requires_grad_(True)
    out, hidden = module(x)
    hs = list(hidden) if isinstance(hidden, tuple) else [hidden]
    loss = sum(((o * o).sum() * (0.5 + k) for k, o in enumerate([out] + hs)), tn.tensor(0.0))
    for p in module.parameters():
        p.grad = None
    loss.backward()
    return [t.detach().numpy().copy() for t in [out] + hs] + \
        [x.grad.numpy().copy()] + [p.grad.numpy().copy() for p in module.parameters()]


# the default run: each cell (GRU, RNN tanh and relu, LSTM with a projection), LSTM's in two
# bidirectional layers; the one-layer LSTM and the two-layer GRU with -m sweep
DEFAULT_VARIANTS = [("GRU", {}), ("RNN", dict(nonlinearity="tanh")),
                    ("RNN", dict(nonlinearity="relu")),
                    ("LSTM", dict(num_layers=2, bidirectional=True)), ("LSTM", dict(proj_size=3))]


@sweep.keep(lambda p: (p["name"], p["kwargs"]) in DEFAULT_VARIANTS)
@pytest.mark.parametrize("name,kwargs", VARIANTS)
def test_float32_layers_follow_eager_at_two_lengths_and_two_batch_sizes(name, kwargs):
    tn.manual_seed(0)
    m = getattr(tnn, name)(4, 6, batch_first=True, **kwargs)
    compiled = tn.compile(m)
    for batch, length in ((3, 5), (3, 9), (2, 9), (2, 5)):
        x = tn.randn(batch, length, 4)
        got, want = _step(compiled, x), _step(m, x)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, **F32)
    # the batch size is symbolic from the first call, the length from the second on
    assert len(compiled.specialisations) <= 2
    assert "tn_T" in compiled.source()


class TwoGates(tnn.Module):
    """A loop written with ``ops.scan.scan`` whose step squashes its state before the product
    and then gates it: the gate kernel starts after the product, not at the first
    elementwise op of the step."""

    def __init__(self):
        super().__init__()
        self.w = tnn.Parameter(tn.randn(6, 3) * 0.5)

    def forward(self, x, h):
        def step(carry, xs):
            s = carry[0].tanh() * 0.5
            a, b = (s @ self.w.t() + xs[0]).split(3, dim=1)
            h = a.sigmoid() * carry[0] + (1 - a.sigmoid()) * b.tanh()
            return (h,), (h * 2,)
        (hn,), (ys,) = scan(step, (h,), (x,))
        return ys.sum() + (hn * hn).sum()


def test_a_loop_written_with_scan_gets_one_gate_kernel_after_its_product():
    tn.manual_seed(2)
    m = TwoGates()
    x, h = tn.randn(5, 4, 6, requires_grad=True), tn.randn(4, 3, requires_grad=True)
    compiled = tn.compile(m)
    compiled(x, h).backward()
    got = [t.grad.numpy().copy() for t in (x, h, m.w)]
    for t in (x, h, m.w):
        t.grad = None
    m(x, h).backward()
    for a, t in zip(got, (x, h, m.w)):
        np.testing.assert_allclose(a, t.grad.numpy(), **F32)
    kinds = sorted([c.rsplit("_", 1)[-1] for c in calls]
                   for calls in _bodies(compiled.source()).values())
    # forward: the squashing (its own kernels), then the product and the gates in one
    # kernel; backward: the gates' gradients in one kernel, the product, the squashing's
    # gradient
    assert kinds == [["cell", "gemm", "elementwise"], ["tanh", "mul", "cell", "memcpy"]]
