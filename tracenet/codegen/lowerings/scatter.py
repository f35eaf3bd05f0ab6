"""C lowerings of gather, scatter (a tensor or a value) and scatter_add along one dim: one
loop nest over the index tensor, checking each index as eager mode does."""
from ...ops.cexpr import fmt_float
from ...ops.common import numel
from ..base import Kernel, ctype, lowering, node_lines, signature
from ..templates import render


def _offset(shape, coords):
    """The row-major offset of C coordinate expressions in a tensor of ``shape``."""
    expr = "0"
    for size, c in zip(shape, coords):
        expr = f"({expr}) * ({size}) + {c}"
    return expr


@lowering("gather", "scatter", "scatter_add")
def lower_scatter_gather(name, node, exported, target):
    op, dim = node.op, node.attrs["dim"]
    x, idx = node.inputs[0], node.inputs[1]
    src = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    ndim = len(idx.shape)
    loop = [f"i{d}" for d in range(ndim)]
    at_k = [("k" if d == dim else c) for d, c in enumerate(loop)]
    reads = [("x", x), ("idx", idx)] + ([("src", src)] if src is not None else [])
    writes = [("out", out)]
    size = x.shape[dim] if ndim else 1
    checks = [(RuntimeError,
               f"index {{0}} is out of bounds for dimension {dim} with size {{1}}")]
    value = node.attrs.get("value")
    src_ = render("scatter_gather.c.j2", name=name, node_lines=node_lines([node]),
                  signature=signature(reads, writes, checks=True), ctype=ctype(out), op=op,
                  dim=dim, ndim=ndim, idx_shape=[str(s) for s in idx.shape], size=size,
                  x_numel=numel(x.shape), idx_off=_offset(idx.shape, loop),
                  target_off=_offset(x.shape, at_k),
                  src_off=_offset(src.shape, loop) if src is not None else None,
                  value=_value(value, out))
    return Kernel(name, reads, writes, src_, checks=checks)


def _value(value, out):
    if value is None:
        return None
    if out.dtype.is_floating_point:
        return fmt_float(value, ctype(out))
    return str(int(value))
