"""Lowering rewrites run before code generation.

``lower_gemm``: 2-D transposes feeding or consuming ``gemm`` nodes (what ``mm``/``addmm``
decompose into) are absorbed into the gemm's transpose flags, so no transposed copy is ever materialised
(``x @ w.t()`` reads ``w`` as stored; a weight gradient ``(x^T g)^T`` becomes ``g^T x``).
"""
from ..ir.graph import Node
from .simplify import dce


def _is_transpose(node):
    return node is not None and node.op == "permute" and tuple(node.attrs["dims"]) == (1, 0)


def _new_gemm(a, b, c, ta, tb, alpha, beta, out_value, loc):
    node = Node("gemm", [a, b] + ([c] if c is not None else []),
                {"trans_a": ta, "trans_b": tb, "alpha": alpha, "beta": beta}, loc)
    node.outputs = [out_value]
    out_value.producer = node
    return node


def lower_gemm(graph):
    for body in graph.bodies():  # loop bodies too
        lower_gemm(body)
    # 1. transpose(gemm(a, b)) -> gemm(b^T, a^T) when the gemm result is not needed otherwise
    users = graph.users()
    nodes = []
    for node in graph.nodes:
        src = node.inputs[0].producer if node.op == "permute" else None
        if _is_transpose(node) and src is not None and src.op == "gemm" and \
                len(src.inputs) == 2 and len(users.get(src.output, [])) == 1 and \
                src.output not in graph.outputs and src.attrs["alpha"] == 1.0:
            a, b = src.inputs
            node = _new_gemm(b, a, None, not src.attrs["trans_b"], not src.attrs["trans_a"],
                             1.0, 1.0, node.output, node.loc)
        nodes.append(node)
    graph.nodes = nodes
    dce(graph)

    # 2. gemm(transpose(x), ...) reads x with the transpose flag flipped
    for node in graph.nodes:
        if node.op != "gemm":
            continue
        for i, flag in ((0, "trans_a"), (1, "trans_b")):
            prod = node.inputs[i].producer
            while _is_transpose(prod):  # transposes of transposes cancel
                node.inputs[i] = prod.inputs[0]
                node.attrs[flag] = not node.attrs[flag]
                prod = node.inputs[i].producer
    return dce(graph)
