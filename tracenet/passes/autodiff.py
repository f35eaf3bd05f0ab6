"""Reverse-mode autodiff on the IR.

``grad(forward)`` walks the forward graph backwards and calls each op's registry backward rule
on traced tensors, so the one rule that runs in eager mode is recorded here into a new graph.
Cotangents of a value used several times are summed.

What the forward saves is exactly what the backward rules read: a forward value that a rule
touches becomes an input of the backward graph (``bwd.saved`` lists them, in input order).
With the current rules that means: matmul/conv inputs, relu *outputs* (the mask is recomputed
from them as ``y > 0``, so no separate mask is stored), max-pool's argmax indices (never the
window), softmax/log-softmax outputs, and the targets of losses. One pattern is rewritten:
relu -> max_pool masks the pooled gradient by the pooled output (which is the relu output at
each argmax) before scattering it, so such a relu output is not saved at all. Views (transposes, reshapes)
are recomputed from their source instead of saved, and forward constants read by a rule are
copied into the backward graph. A ``scan`` (a loop) differentiates into a scan running the
other way (``scan_grad``), which may add per-step values to the forward scan's outputs.
"""
import numpy as np

from ..autograd import grad_mode
from ..ir.graph import Graph
from ..ops.elementwise import threshold_backward
from ..ops.nn import _max_pool_backward
from .._meta import Meta
from ..ops.registry import REGISTRY, Ctx, apply, op_kind
from ..tensor import Tensor
from ..trace import Tracer, traced_tensor, tracing
from .scan_grad import scan_backward


def is_recomputed(op):
    """Whether the backward recomputes ``op``'s result rather than saving it: views are free,
    and a transposed weight feeding a gemm costs nothing once the transpose is absorbed."""
    return op_kind(op) == "view"


def view_source(v):
    """The value ``v`` is a view of (itself if none)."""
    while v.producer is not None and is_recomputed(v.producer.op):
        v = v.producer.inputs[0]
    return v


class BackwardGraph(Graph):
    """A backward graph plus how it connects to its forward graph.

    Inputs: one cotangent per differentiable forward output (``cotangent_of``), then the saved
    forward values (``saved``). Outputs: the gradients of ``grad_of`` (forward inputs)."""

    def __init__(self, name):
        super().__init__(name)
        self.cotangent_of = []
        self.saved = []
        self.grad_of = []


def _all_values(graph):
    values = set(graph.inputs)
    for node in graph.nodes:
        values.update(node.outputs)
        for m in node.members or ():
            values.update(m.outputs)
    return values


def _flat_nodes(graph):
    for node in graph.nodes:
        if node.op == "fused":
            yield from node.members
        else:
            yield node


def grad(forward, wrt=None):
    """The backward graph of ``forward``. ``wrt`` (default: every forward input that requires
    grad) picks the inputs whose gradients are its outputs."""
    bwd = BackwardGraph(f"{forward.name}_backward")
    bwd.key = forward.key
    fwd_values = _all_values(forward)
    saved_inputs = {}
    constants = {}
    recomputed = {}

    def foreign(v):
        if v not in fwd_values:
            return v
        if v.producer is not None and v.producer.op == "constant":
            if v not in constants:
                constants[v] = bwd.add_constant(v.producer.attrs["value"])
            return constants[v]
        if v.producer is not None and is_recomputed(v.producer.op):
            # a view of another value: save that value and redo the (free) view here
            if v not in recomputed:
                src = traced_tensor(foreign(v.producer.inputs[0]))
                out = apply(REGISTRY[v.producer.op], src, **v.producer.attrs)
                recomputed[v] = out._ir
            return recomputed[v]
        if v not in saved_inputs:
            name = v.name if v.name is not None else f"fwd{v.id}"
            saved_inputs[v] = None  # placeholder; the input is added after the cotangents
            saved_inputs[v] = bwd.new_value(v.shape, v.dtype, None, name)
            bwd.saved.append(v)
        return saved_inputs[v]

    # cotangent inputs come first
    cot = {}
    tracer = Tracer(bwd, foreign=foreign)
    for i, v in enumerate(forward.outputs):
        if not v.requires_grad:
            continue
        g = bwd.add_input("grad" if len(forward.outputs) == 1 else f"grad{i}", v.shape, v.dtype)
        bwd.cotangent_of.append(v)
        t = traced_tensor(g)
        if v in cot:  # an output returned twice (a loop body's carry and its step output)
            with tracing(tracer), grad_mode.no_grad():
                t = cot[v] + t
        cot[v] = t
    pooled_relu = {}  # relu output -> (its max_pool node, the pooled gradient, the scattered one)
    with tracing(tracer), grad_mode.no_grad():
        nodes = list(_flat_nodes(forward))
        for node in reversed(nodes):
            if node.op == "constant":
                continue
            grads = [cot.get(o) for o in node.outputs]
            if all(g is None for g in grads):
                continue
            op = REGISTRY[node.op]
            needs = tuple(v.requires_grad for v in node.inputs)
            if not op.differentiable or not any(needs):
                continue
            if node.op == "scan":  # a loop: its backward is a loop too
                tracer.loc = node.loc
                res = scan_backward(forward, node, grads, tracer, grad, fwd_values)
                _accumulate(cot, node.inputs, res, needs)
                continue
            shortcut = pooled_relu.get(node.outputs[0]) if node.op == "relu" else None
            if shortcut is not None and grads[0] is shortcut[2]:
                # the max_pool was the relu output's only consumer: mask, then scatter
                pool, gp, _ = shortcut
                masked = threshold_backward(gp, traced_tensor(pool.outputs[0]), 0.0)
                gx = _max_pool_backward(_ctx(pool, (True,)), masked)[0]
                v = node.inputs[0]
                cot[v] = gx if v not in cot else cot[v] + gx
                continue
            grads = [_zeros_like_value(o) if g is None and o.dtype.is_floating_point else g
                     for g, o in zip(grads, node.outputs)]
            ctx = _ctx(node, needs)
            tracer.loc = node.loc
            res = op.backward(ctx, *grads)
            res = res if isinstance(res, tuple) else (res,)
            _accumulate(cot, node.inputs, res, needs)
            if node.op == "max_pool" and grads[0] is not None and node.inputs[0].producer \
                    is not None and node.inputs[0].producer.op == "relu" and res[0] is not None:
                pooled_relu[node.inputs[0]] = (node, grads[0], res[0])
        tracer.loc = None
        wrt = [v for v in forward.inputs if v.requires_grad] if wrt is None else list(wrt)
        outputs = []
        for v in wrt:
            g = cot.get(v)
            outputs.append(tracer.value_of(g) if g is not None else
                           tracer.value_of(_zeros_like_value(v)))
    bwd.grad_of = wrt
    bwd.outputs = outputs
    bwd.inputs.extend(saved_inputs[v] for v in bwd.saved)
    return bwd.renumber()


def _accumulate(cot, inputs, res, needs):
    """Add the gradients ``res`` of ``inputs`` to their cotangents."""
    for v, g, need in zip(inputs, res, needs):
        if need and g is not None:
            if g.dtype is not v.dtype:
                g = g.to(v.dtype)
            cot[v] = g if v not in cot else cot[v] + g


def _ctx(node, needs):
    """What a backward rule sees of a forward node: its inputs and outputs as traced tensors."""
    return Ctx([traced_tensor(v) for v in node.inputs], [traced_tensor(o) for o in node.outputs],
               tuple(Meta(v.shape, v.dtype) for v in node.inputs),
               tuple(Meta(o.shape, o.dtype) for o in node.outputs), node.attrs, needs)


def _zeros_like_value(v):
    return Tensor._wrap(np.zeros(v.shape, v.dtype.np))


def joint_forward(forward, backward):
    """A copy of ``forward`` whose outputs also include the values ``backward`` saves.

    ``joint.saved_sources[i]`` says where ``backward.saved[i]`` is found when the joint graph
    runs: ``("input", k)`` (the k-th forward input) or ``("output", k)``."""
    mapping = {}
    joint = forward.copy(mapping)
    sources = []
    for v in backward.saved:
        if v.producer is None:
            sources.append(("input", forward.inputs.index(v)))
            continue
        mv = mapping[v]
        if mv not in joint.outputs:
            joint.outputs.append(mv)
        sources.append(("output", joint.outputs.index(mv)))
    joint.outputs = list(joint.outputs)
    joint.saved_sources = sources
    return joint
