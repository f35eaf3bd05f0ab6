"""Tracing: run ``forward`` once on symbolic tensors and record every registry op as an IR node.

A traced tensor is a ``Tensor`` whose ``_ir`` is an IR ``Value`` (and whose ``_data`` is None).
``registry.apply`` sends any op with a traced input here. Concrete tensors met during tracing
(Python numbers, tensors created inside ``forward``) become ``constant`` nodes; Python control
flow and shape arithmetic simply run, so the graph is specialised to the example inputs.
"""
import numpy as np

from . import _dtype, _random
from ._meta import Meta
from ._trace_errors import TraceError, data_dependent, user_location  # noqa: F401  (public here)
from .autograd import grad_mode
from .ir.graph import Graph
from .nn.modules.module import Module
from .ops import registry
from .ops.registry import op_attrs
from .tensor import Tensor


def traced_tensor(value):
    t = Tensor._wrap(None)
    t._ir = value
    t._requires_grad = value.requires_grad
    return t


class Tracer:
    """Records ops into ``graph``; concrete tensors are interned as constant nodes."""

    def __init__(self, graph, foreign=None):
        self.graph = graph
        self._constants = {}
        self.loc = None  # when set, recorded nodes take this location (autodiff uses the
        # forward node's, so backward nodes point at the user's line they differentiate)
        # values from another graph (autodiff reads forward values): mapped to new inputs
        self.foreign = foreign

    def value_of(self, t):
        if t._ir is not None:
            if self.foreign is not None:
                return self.foreign(t._ir)
            return t._ir
        key = id(t._data)
        entry = self._constants.get(key)
        if entry is None or entry[0] is not t._data:
            entry = (t._data, self.graph.add_constant(np.array(t._data, copy=True)))
            self._constants[key] = entry
        return entry[1]

    def record(self, op, inputs, attrs):
        values = [self.value_of(t) for t in inputs]
        metas = tuple(Meta(v.shape, v.dtype) for v in values)
        kw = op_attrs(attrs)
        out_meta = op.infer(*metas, **kw)
        multi = op.num_outputs != 1
        out_metas = out_meta if multi else (out_meta,)
        requires_grad = (op.differentiable and grad_mode.is_grad_enabled()
                         and any(v.requires_grad for v in values))
        node = self.graph.add_node(op.name, values, kw, out_metas,
                                   loc=self.loc or user_location())
        outs = []
        for v in node.outputs:
            v.requires_grad = requires_grad and v.dtype.is_floating_point
            outs.append(traced_tensor(v))
        return tuple(outs) if multi else outs[0]

    def random_seed(self):
        """A traced int64 scalar that takes a fresh value, drawn from tracenet's generator,
        every time the compiled graph runs (a graph input listed in ``graph.seed_inputs``,
        after the state inputs). Random ops (dropout) derive their random numbers from it, so
        they are not frozen into traced constants."""
        if self.foreign is not None:
            raise TraceError("random_seed() is only available while tracing a forward graph")
        graph = self.graph
        v = graph.add_input(f"seed{len(graph.seed_inputs)}", (), _dtype.int64)
        graph.seed_inputs.append(v)
        return traced_tensor(v)


def fresh_seeds(n):
    """Values for a graph's ``n`` seed inputs, drawn from tracenet's generator."""
    return _random.rng().integers(0, np.iinfo(np.int64).max, size=n, dtype=np.int64)


class tracing:
    """Context manager that routes registry ops on traced tensors to ``tracer``."""

    def __init__(self, tracer):
        self.tracer = tracer

    def __enter__(self):
        self._prev = registry._tracer[0]
        registry._tracer[0] = self.tracer.record
        return self.tracer

    def __exit__(self, *exc):
        registry._tracer[0] = self._prev
        return False


def _named_state(module):
    """Parameters then buffers, by their state-dict names (parameters in named_parameters
    order)."""
    out = [(n, p) for n, p in module.named_parameters()]
    seen = {id(p) for _, p in out}
    for n, b in module.named_buffers():
        if id(b) not in seen:
            out.append((n, b))
    return out


def structure_of(obj, leaves):
    """Flatten nested tuples/lists of tensors: append the tensors to ``leaves`` and return a
    hashable template to rebuild the nesting (``rebuild``). None stays as None."""
    if isinstance(obj, Tensor):
        leaves.append(obj)
        return len(leaves) - 1
    if obj is None:
        return None
    if isinstance(obj, (tuple, list)):
        return ("list" if isinstance(obj, list) else "tuple",
                tuple(structure_of(o, leaves) for o in obj))
    raise TraceError(f"only tensors, None and tuples/lists of them can be traced inputs or "
                     f"outputs, got {type(obj).__name__}")


def rebuild(template, leaves):
    if template is None:
        return None
    if isinstance(template, int):
        return leaves[template]
    kind, items = template
    out = [rebuild(t, leaves) for t in items]
    return out if kind == "list" else tuple(out)


def trace(fn, *example_inputs, name=None, state=None):
    """Trace ``fn`` (a Module or a function of tensors) on ``example_inputs`` into a Graph.

    Graph inputs are the example inputs (named ``x``, ``x1``...) followed by the module's
    parameters and buffers under their state-dict names, or by ``state`` (a list of
    ``(name, tensor)``: the tensors a plain function reads, e.g. an optimizer's parameters)."""
    module = fn if isinstance(fn, Module) else None
    graph = Graph(name or (type(fn).__name__ if module is not None else
                           getattr(fn, "__name__", "graph")))
    if state is None:
        state = _named_state(module) if module is not None else []
    graph.key = specialisation_key(example_inputs, module)
    args = []
    for i, x in enumerate(example_inputs):
        if not isinstance(x, Tensor):
            raise TraceError(f"example input {i} must be a Tensor, got {type(x).__name__}")
        v = graph.add_input("x" if i == 0 else f"x{i}", x.shape, x.dtype, x.requires_grad)
        args.append(traced_tensor(v))
    saved = []
    try:
        for n, p in state:
            saved.append((p, p._ir, p.grad_fn, p._requires_grad, p._output_nr))
            p._ir = graph.add_input(n, p.shape, p.dtype, p.requires_grad)
        inputs_of_state = [p._ir for _, p in state]
        tracer = Tracer(graph)
        with tracing(tracer):
            out = fn(*args)
        outputs = []
        graph.output_structure = structure_of(out, outputs)
        graph.outputs = [tracer.value_of(o) for o in outputs]
        # in-place updates of buffers (batch-norm running statistics...) become extra outputs
        # that the runtime writes back: graph.state_updates[i] = (state index, output index)
        graph.state_updates = []
        for i, ((_, p), v) in enumerate(zip(state, inputs_of_state)):
            if p._ir is not v:
                p._ir.requires_grad = False  # a side effect, never differentiated
                graph.state_updates.append((i, len(graph.outputs)))
                graph.outputs.append(p._ir)
    finally:
        for p, prev, grad_fn, requires_grad, output_nr in saved:
            p._ir, p.grad_fn, p._requires_grad, p._output_nr = (prev, grad_fn, requires_grad,
                                                                output_nr)
    return graph.renumber()


def specialisation_key(example_inputs, module=None):
    shapes = tuple((tuple(x.shape), x.dtype.short) for x in example_inputs)
    training = bool(module.training) if module is not None else False
    return Key(shapes, training, grad_mode.is_grad_enabled())


class Key(tuple):
    """(input shapes+dtypes, training flag, grad enabled): what a graph is specialised to."""

    def __new__(cls, shapes, training, grad):
        return super().__new__(cls, (shapes, training, grad))

    def __str__(self):
        shapes, training, grad = self
        ins = ", ".join(f"{d}[{','.join(map(str, s))}]" for s, d in shapes)
        return f"inputs=({ins}) training={training} grad={grad}"
