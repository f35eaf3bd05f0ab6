"""A numpy interpreter for IR graphs: each node runs its registry op's eager implementation
(fused nodes run their members), so any graph can be checked against eager mode."""
import numpy as np

from ..ops.registry import REGISTRY


def run_node(node, env):
    """Execute ``node`` reading and writing numpy arrays in ``env`` (Value -> array)."""
    if node.op == "constant":
        env[node.output] = node.attrs["value"]
        return
    if node.op == "fused":
        for member in node.members:
            run_node(member, env)
        return
    op = REGISTRY[node.op]
    result = op.eager(*(env[v] for v in node.inputs), **node.attrs)
    results = result if op.num_outputs != 1 else (result,)
    for v, arr in zip(node.outputs, results):
        arr = np.asarray(arr)
        if arr.dtype != v.dtype.np:
            arr = arr.astype(v.dtype.np)
        env[v] = arr


def interpret(graph, *inputs):
    """Run ``graph`` on numpy arrays or tensors given in ``graph.inputs`` order; returns a list
    of numpy arrays, one per graph output."""
    env = interpret_env(graph, *inputs)
    return [env[v] for v in graph.outputs]


def interpret_env(graph, *inputs):
    """Like ``interpret`` but returns every computed value: {Value: array}. The backward graph's
    saved inputs are read from here."""
    if len(inputs) != len(graph.inputs):
        raise ValueError(f"graph {graph.name} takes {len(graph.inputs)} inputs "
                         f"({', '.join(v.ref for v in graph.inputs)}), got {len(inputs)}")
    env = {}
    for v, x in zip(graph.inputs, inputs):
        arr = x._data if hasattr(x, "_data") else np.asarray(x)
        if tuple(arr.shape) != v.shape:
            raise ValueError(f"input {v.ref} expects shape {list(v.shape)}, got "
                             f"{list(arr.shape)}")
        env[v] = arr
    for node in graph.nodes:
        run_node(node, env)
    return env


def interpret_backward(forward, backward, inputs, cotangents):
    """Run ``forward`` on ``inputs``, then ``backward`` on ``cotangents`` and the saved values;
    returns the gradients (numpy arrays) of ``backward.grad_of``."""
    env = interpret_env(forward, *inputs)
    saved = [env[v] for v in backward.saved]
    cots = [c._data if hasattr(c, "_data") else np.asarray(c) for c in cotangents]
    return interpret(backward, *cots, *saved)
