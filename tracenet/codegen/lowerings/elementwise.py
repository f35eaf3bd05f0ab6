"""The elementwise kernel: a loop over the output that computes a chain of elementwise ops
(a fused ``elementwise`` group, or one op) from the registry's C expressions, reading each
input through its broadcast index.

When inputs broadcast along leading dims only as whole blocks of trailing ones (a [N, 1]
row statistic against [N, C], a [C, 1, 1] per-channel value against [N, C, H, W]), the loop
is two: over the leading positions, and a vector loop over the trailing block, in which every
input is read either contiguously or as one value. A single flat loop would index such an
input by a division per element, which the compiler does not vectorise."""
from ..._sym import display, is_one, same_shape
from ...ops.common import numel
from ...ops.registry import REGISTRY
from ..base import Kernel, LoweringError, ctype, group_lowering, members, node_lines, \
    signature, where
from ..templates import render


# a trailing block shorter than this stays one flat loop (too short for a vector loop)
MIN_INNER = 8


def broadcast_index(in_shape, out_shape, var="i"):
    """C expression for the flat index into an input of ``in_shape`` read at output index
    ``var``."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if same_shape(in_shape, out_shape):
        return var
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
        term = var if is_one(out_strides[d]) else f"{var} / {out_strides[d]}"
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
    split = _block_split(shape, [v.shape for _, v in reads])
    expr_of = {}
    for role, v in reads:
        expr_of[v] = f"{role}[{_index(v.shape, shape, split)}]"
    lines = []
    for k, m in enumerate(chain):
        v = m.outputs[0]
        tmp = f"t{k}"
        lines.append(f"const {ctype(v)} {tmp} = {c_expr(m, [expr_of[x] for x in m.inputs])};")
        expr_of[v] = tmp
    for role, v in writes:
        lines.append(f"{role}[i] = {expr_of[v]};")
    n = numel(shape)
    outer = split and numel(shape[:split])
    # memory-bound: split between the threads from the size of the other memory-bound kernels
    # (the ResNet's add + relu-mask over 4 x 2 MB: 143 -> 76 us on two threads)
    parallel = target.parallel.memory(n, outer if split else n)
    src = render("elementwise.c.j2", name=name, signature=signature(reads, writes),
                 node_lines=node_lines(chain), numel=n, shape=[display(d) for d in shape],
                 lines=lines, outer=outer, inner=split and numel(shape[split:]),
                 parallel=parallel, unit=1 if split else 16)
    return Kernel(name, reads, writes, src, parallel=bool(parallel))


def _aligned(in_shape, nd):
    return (1,) * (nd - len(in_shape)) + tuple(in_shape)


def _block_split(shape, in_shapes):
    """The first dim of the longest trailing block of ``shape`` over which every input is
    either whole (those dims equal the output's) or one value (those dims all 1), with some
    input broadcast along the leading dims; None when the flat loop serves as well (no such
    input, or the block is short)."""
    nd = len(shape)
    for k in range(1, nd):
        tail = tuple(shape[k:])
        n = numel(tail)
        if (n if isinstance(n, int) else n.hint) < MIN_INNER:  # symbolic: as traced
            break
        ok, broadcast = True, False
        for s in in_shapes:
            s = _aligned(s, nd)
            whole = same_shape(s[k:], tail)
            if not (whole or all(is_one(d) for d in s[k:])):
                ok = False
                break
            broadcast = broadcast or not same_shape(s, shape)
        if ok:
            return k if broadcast else None
    return None


def _index(in_shape, shape, split):
    """The C index of an input in the flat loop (over i) or the split one (o: leading
    position, j: position in the trailing block; i = o * block + j)."""
    if split is None or same_shape(tuple(in_shape), tuple(shape)):
        return broadcast_index(in_shape, shape)
    s = _aligned(in_shape, len(shape))
    outer = broadcast_index(s[:split], shape[:split], var="o")
    if all(is_one(d) for d in s[split:]):
        return outer
    return f"({outer}) * {numel(shape[split:])} + j"
