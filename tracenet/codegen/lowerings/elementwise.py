"""The elementwise kernel: one loop over the output that computes a chain of elementwise ops
(a fused ``elementwise`` group, or one op) from the registry's C expressions, reading each
input through its broadcast index."""
from ..._sym import display, is_one, same_shape
from ...ops.common import numel
from ...ops.registry import REGISTRY
from ..base import Kernel, LoweringError, ctype, group_lowering, members, node_lines, \
    signature, where
from ..templates import render


def broadcast_index(in_shape, out_shape):
    """C expression for the flat index into an input of ``in_shape`` read at output index i."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if same_shape(in_shape, out_shape):
        return "i"
    if is_one(numel(in_shape)):
        return "0"
    nd = len(out_shape)
    in_shape = (1,) * (nd - len(in_shape)) + in_shape
    out_strides = [numel(out_shape[d + 1:]) for d in range(nd)]
    in_strides = [numel(in_shape[d + 1:]) for d in range(nd)]
    terms = []
    for d in range(nd):
        if is_one(in_shape[d]):
            continue
        term = "i" if is_one(out_strides[d]) else f"i / {out_strides[d]}"
        if d > 0:
            term = f"({term}) % {out_shape[d]}"
        terms.append(f"({term})" if is_one(in_strides[d]) else f"({term}) * {in_strides[d]}")
    return " + ".join(terms) or "0"


def c_expr(node, args):
    """The C expression of one elementwise node applied to the C expressions ``args``."""
    op = REGISTRY.get(node.op)
    if op is None or op.c_expr is None:
        raise LoweringError(f"op '{node.op}' has no C expression{where(node)}; run this model "
                            "in eager mode")
    return op.c_expr(args, node.attrs, ctype(node.outputs[0]))


@group_lowering("elementwise")
def lower_elementwise(name, node, exported, target):
    chain = members(node)
    shape = chain[-1].outputs[0].shape
    reads = [(f"in{j}", v) for j, v in enumerate(node.inputs)]
    writes = [(f"out{j}", v) for j, v in enumerate(node.outputs)]
    expr_of = {}
    for role, v in reads:
        expr_of[v] = f"{role}[{broadcast_index(v.shape, shape)}]"
    lines = []
    for k, m in enumerate(chain):
        v = m.outputs[0]
        tmp = f"t{k}"
        lines.append(f"const {ctype(v)} {tmp} = {c_expr(m, [expr_of[x] for x in m.inputs])};")
        expr_of[v] = tmp
    for role, v in writes:
        lines.append(f"{role}[i] = {expr_of[v]};")
    src = render("elementwise.c.j2", name=name, signature=signature(reads, writes),
                 node_lines=node_lines(chain), numel=numel(shape),
                 shape=[display(d) for d in shape], lines=lines)
    return Kernel(name, reads, writes, src)
