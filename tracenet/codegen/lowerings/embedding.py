"""C lowerings of embedding_renorm (Embedding(max_norm=...)): the norms in double, as eager
mode computes them; and of the ``table_gradient`` group (``passes/fusion.py``): a table's
gradient with the two products that read it and its column sum, in one kernel."""
import math

from ...ops.cexpr import fmt_float
from ...ops.common import INDEX_OUT_OF_RANGE, numel
from ..base import SFX, Kernel, ctype, group_lowering, lowering, node_lines, signature
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


@group_lowering("table_gradient")
def lower_table_gradient(name, node, exported, target):
    """A table projection's backward (``templates/activation_embedding_table_gradient.c.j2``):
    one thread sums the rows of ``g`` into the table's rows in index order and the table's rows
    into the column sum (the separate kernels' additions, in their order), then the threads
    run the two products, one each when neither is worth splitting (the products of the LSTM
    LM's 90 x 256 table gradient with its 256 x 32 weight and 90 x 32 table, 13-14 us each on
    one core, ran one after the other on one thread), else each split by rows. The threads
    splitting the gradient's columns instead took 19-21 us against one thread's 11 (in a C
    harness, the rows of ``g`` written by both threads: each then reads half of every row
    from the other core)."""
    grad = node.members[0]
    gemms = [m for m in node.members[1:] if m.op == "gemm"]
    total = next((m.output for m in node.members[1:] if m.op == "sum"), None)
    g, idx = grad.inputs
    table = grad.output
    rows, width = table.shape
    reads = [("g", g), ("idx", idx)] + [(f"b{i}", m.inputs[1]) for i, m in enumerate(gemms)]
    writes = [("out", table)] + [(f"p{i}", m.output) for i, m in enumerate(gemms)]
    if total is not None:
        writes.append(("total", total))
    products = [_product(m, i, rows, width) for i, m in enumerate(gemms)]
    flops = sum(p["flops"] for p in products)
    one_each = not any(target.parallel.gemm(p["flops"], p["M"]) for p in products)
    src = render("activation_embedding_table_gradient.c.j2", name=name,
                 node_lines=node_lines(node.members), signature=signature(reads, writes),
                 ctype=ctype(table), sfx=SFX[ctype(table)], count=numel(idx.shape), R=rows,
                 D=width, padding_idx=grad.attrs["padding_idx"], total=total is not None,
                 products=products, one_each=one_each,
                 parallel=target.parallel.compute(flops, 2))
    return Kernel(name, reads, writes, src, flops=flops, parallel=True)


def _product(gemm, i, rows, width):
    """The C arguments of ``gemm`` (``a`` or ``a^T`` times ``b`` [K, N], ``a`` the table's
    gradient [rows, width]) on the GEMM core: sizes and ``a``'s row and column strides."""
    trans_a = gemm.attrs["trans_a"]
    m, k = (width, rows) if trans_a else (rows, width)
    n = gemm.inputs[1].shape[1]
    return {"b": f"b{i}", "out": f"p{i}", "M": m, "N": n, "K": k, "flops": 2 * m * n * k,
            "sai": 1 if trans_a else width, "sak": width if trans_a else 1}
