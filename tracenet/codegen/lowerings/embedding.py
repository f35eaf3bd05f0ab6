"""C lowering of embedding_renorm (Embedding(max_norm=...)): the norms in double, as eager
mode computes them."""
import math

from ...ops.cexpr import fmt_float
from ...ops.common import INDEX_OUT_OF_RANGE, numel
from ..base import Kernel, ctype, lowering, node_lines, signature
from ..templates import render


def _norm_code(p):
    """(initial value, accumulation of |x| = a, final expression) of a p-norm."""
    if p == math.inf:
        return "0.0", "norm = a > norm ? a : norm", "norm"
    if p == -math.inf:
        return "INFINITY", "norm = a < norm ? a : norm", "norm"
    if p == 0:
        return "0.0", "norm += a != 0", "norm"
    if p == 1:
        return "0.0", "norm += a", "norm"
    if p == 2:
        return "0.0", "norm += a * a", "sqrt(norm)"
    return ("0.0", f"norm += pow(a, {fmt_float(p, 'double')})",
            f"pow(norm, {fmt_float(1.0 / p, 'double')})")


@lowering("embedding_renorm")
def lower_embedding_renorm(name, node, exported, target):
    weight, idx = node.inputs
    out = node.outputs[0]
    p = node.attrs["norm_type"]
    init, accumulate, finish = _norm_code(p)
    reads, writes = [("weight", weight), ("idx", idx)], [("out", out)]
    checks = [(IndexError, INDEX_OUT_OF_RANGE)]
    src = render("embedding_renorm.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes, checks=True), ctype=ctype(out),
                 count=numel(idx.shape), D=weight.shape[1], num_weights=weight.shape[0],
                 max_norm=fmt_float(node.attrs["max_norm"], "double"), p=p, init=init,
                 accumulate=accumulate, finish=finish)
    return Kernel(name, reads, writes, src, checks=checks)
