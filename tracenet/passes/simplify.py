"""Clean-up passes: dead-code elimination, common-subexpression elimination, and folding of
subgraphs that depend on no graph input. Each returns the (modified) graph."""
import numpy as np

from ..ir.interpret import run_node


def dce(graph):
    """Drop nodes none of whose outputs is used by a live node or returned."""
    live = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(v in live for v in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    kept.reverse()
    graph.nodes = kept
    return graph.renumber()


def _attr_key(value):
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_attr_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _attr_key(v)) for k, v in value.items()))
    return (type(value).__name__, value if not hasattr(value, "short") else value.short)


def cse(graph):
    """Merge nodes computing the same op on the same inputs with the same attributes."""
    seen = {}
    mapping = {}
    kept = []
    for node in graph.nodes:
        node.inputs = [mapping.get(v, v) for v in node.inputs]
        if node.op == "fused":
            kept.append(node)
            continue
        key = (node.op, tuple(id(v) for v in node.inputs), _attr_key(node.attrs))
        prev = seen.get(key)
        if prev is not None:
            for old, new in zip(node.outputs, prev.outputs):
                mapping[old] = new
            continue
        seen[key] = node
        kept.append(node)
    graph.nodes = kept
    graph.outputs = [mapping.get(v, v) for v in graph.outputs]
    return graph.renumber()


# a folded constant may always have this many elements, however small its inputs
_SMALL_CONSTANT = 4096


def fold_constants(graph, max_elements=1 << 20):
    """Evaluate nodes whose inputs are all constants and replace them by constant nodes."""
    constant = {}
    mapping = {}
    new_nodes = []
    for node in graph.nodes:
        node.inputs = [mapping.get(v, v) for v in node.inputs]
        for m in node.members or ():
            m.inputs = [mapping.get(v, v) for v in m.inputs]
        if node.op == "constant":
            constant[node.output] = node.attrs["value"]
        elif node.op != "fused" and node.inputs and all(v in constant for v in node.inputs):
            env = dict(constant)
            run_node(node, env)
            # a node that only spreads its constants out (an expand of a scalar: the gradient
            # of a mean) stays a node: folded, its result would be written out in the C
            # source element by element
            limit = min(max_elements, max(_SMALL_CONSTANT,
                                          sum(constant[v].size for v in node.inputs)))
            if all(env[v].size <= limit for v in node.outputs):
                for v in node.outputs:
                    const = graph.add_constant(env[v])
                    graph.nodes.pop()  # add_constant appends; the node goes here instead
                    new_nodes.append(const.producer)
                    constant[const] = env[v]
                    mapping[v] = const
                continue
        new_nodes.append(node)
    graph.nodes = new_nodes
    graph.outputs = [mapping.get(v, v) for v in graph.outputs]
    return dce(graph)


def simplify(graph):
    """fold -> cse -> dce, the usual clean-up before fusion (loop bodies included)."""
    for body in graph.bodies():
        simplify(body)
    return dce(cse(fold_constants(graph)))
