"""The IR verifier: SSA form, shapes/dtypes agreeing with each op's inference rule, outputs
defined, scan bodies included. Passes and tests run it after every transformation."""
from .._sym import same_shape
from .._meta import Meta
from ..ops.registry import REGISTRY


class VerificationError(AssertionError):
    pass


def verify(graph):
    defined = set()
    for v in graph.inputs:
        _define(v, defined, "graph input")
    for i, node in enumerate(graph.nodes):
        _verify_node(node, defined, f"node {i} ({node.op})")
    for v in graph.outputs:
        if v not in defined:
            raise VerificationError(f"graph output {v.ref} is never defined")
    return graph


def _define(v, defined, where):
    if v in defined:
        raise VerificationError(f"{where}: value {v.ref} is defined twice (not SSA)")
    defined.add(v)


def _verify_node(node, defined, where):
    for v in node.inputs:
        if v not in defined:
            raise VerificationError(f"{where}: input {v.ref} is used before it is defined")
    if node.op == "constant":
        arr = node.attrs["value"]
        if tuple(arr.shape) != node.output.shape or arr.dtype != node.output.dtype.np:
            raise VerificationError(f"{where}: constant does not match its value type")
        _define(node.output, defined, where)
        return
    if node.op == "fused":
        inner = set(defined)
        for j, m in enumerate(node.members):
            _verify_node(m, inner, f"{where} member {j} ({m.op})")
        for v in node.outputs:
            if v not in inner:
                raise VerificationError(f"{where}: output {v.ref} is not produced by a member")
            _define(v, defined, where)
        return
    if "body" in node.attrs:  # a loop body is a graph of its own
        try:
            verify(node.attrs["body"])
        except VerificationError as e:
            raise VerificationError(f"{where}: body: {e}") from None
    op = REGISTRY.get(node.op)
    if op is None:
        raise VerificationError(f"{where}: unknown op {node.op!r}")
    metas = tuple(Meta(v.shape, v.dtype) for v in node.inputs)
    try:
        expect = op.infer(*metas, **node.attrs)
    except Exception as e:  # a node the shape rule rejects is malformed
        raise VerificationError(f"{where}: shape rule rejects the node: {e}") from None
    expect = expect if op.num_outputs != 1 else (expect,)
    if len(expect) != len(node.outputs):
        raise VerificationError(f"{where}: {len(node.outputs)} outputs, op has {len(expect)}")
    for v, m in zip(node.outputs, expect):
        if not same_shape(m.shape, v.shape) or m.dtype is not v.dtype:
            raise VerificationError(
                f"{where}: {v.ref} is {v.type_str()} but the shape rule gives "
                f"{m.dtype.short}[{','.join(map(str, m.shape))}]")
        _define(v, defined, where)
