"""Decomposition: a node whose op the code generator cannot lower directly is replaced by its
registry ``decomposition`` (the op written with other ops), traced in its place."""
from ..autograd import grad_mode
from ..ops.registry import REGISTRY
from ..trace import Tracer, traced_tensor, tracing


def decompose(graph, lowerable):
    """Replace every node whose op is not ``lowerable(op)`` and has a decomposition; repeats
    until the decompositions themselves are lowerable (loop bodies included). Returns the
    graph."""
    for body in graph.bodies():
        decompose(body, lowerable)
    while _decompose_once(graph, lowerable):
        pass
    return graph


def _decompose_once(graph, lowerable):
    nodes, graph.nodes = graph.nodes, []
    tracer = Tracer(graph)
    replaced = {}  # old value -> the value its decomposition computes
    changed = False
    with tracing(tracer), grad_mode.no_grad():
        for node in nodes:
            node.inputs = [replaced.get(v, v) for v in node.inputs]
            op = REGISTRY.get(node.op)
            if op is None or op.decomposition is None or lowerable(node.op):
                graph.nodes.append(node)
                continue
            tracer.loc = node.loc
            out = op.decomposition(*(traced_tensor(v) for v in node.inputs), **node.attrs)
            outs = out if isinstance(out, tuple) else (out,)
            for old, new in zip(node.outputs, outs):
                replaced[old] = tracer.value_of(new)
            changed = True
    graph.outputs = [replaced.get(v, v) for v in graph.outputs]
    return changed
