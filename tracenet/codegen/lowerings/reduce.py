"""C lowerings of reductions (``sum``, ``mean``, ``amax``, ``amin`` over any dims) and of
softmax / log-softmax along one dim (``templates/reduce.c.j2``, ``templates/softmax.c.j2``)."""
from ..._sym import is_one
from ...ops.common import numel
from ..base import SFX, Kernel, ctype, lowering, node_lines, offset_expr, signature
from ..templates import render


class _Reduction:
    """How the reduce template accumulates one reduction: the initial accumulator (for float
    and for integer input), the update with element ``v``, the final value, and the update of
    an output element ``*a`` (for reductions over leading dims, done in place)."""

    def __init__(self, init, int_init, update, finish, update_out):
        self.init, self.int_init = init, int_init
        self.update, self.finish, self.update_out = update, finish, update_out


_REDUCTIONS = {
    "sum": _Reduction("0", "0", "acc += v;", "acc", "*a += v;"),
    "mean": _Reduction("0", "0", "acc += v;", "acc / {count}", "*a += v;"),
    "amax": _Reduction("-INFINITY", "INT64_MIN", "if (v > acc || v != v) acc = v;", "acc",
                       "if (v > *a || v != v) *a = v;"),
    "amin": _Reduction("INFINITY", "INT64_MAX", "if (v < acc || v != v) acc = v;", "acc",
                       "if (v < *a || v != v) *a = v;"),
}


@lowering(*_REDUCTIONS)
def lower_reduce(name, node, exported, target):
    x = node.inputs[0]
    out = node.outputs[0]
    dims = tuple(node.attrs["dims"])
    shape = tuple(x.shape)
    kept = [d for d in range(len(shape)) if d not in dims]
    red = _REDUCTIONS[node.op]
    init = red.init
    count = numel(shape[d] for d in dims)
    out_ct = ctype(out)
    acc = "double" if out_ct == "double" else out_ct
    if not x.dtype.is_floating_point:
        acc, init = "int64_t", red.int_init
    in_order = bool(shape) and (len(shape) - 1) in kept and bool(dims) and \
        x.dtype.is_floating_point
    names = [f"k{d}" if d in kept else f"r{d}" for d in range(len(shape))]
    kept_shape = [shape[d] for d in kept]
    out_offset = offset_expr(kept_shape, [names[d] for d in kept])
    # a float sum or mean of contiguous runs (the reduced dims trailing): numpy's pairwise
    # summation of each run, vectorised, instead of one chain of additions
    pairwise = None
    if node.op in ("sum", "mean") and not in_order and dims and \
            ctype(x) in ("float", "double") and acc == ctype(x) and \
            sorted(dims) == list(range(len(shape) - len(dims), len(shape))):
        helper = f"tn_pairwise_sum{SFX[acc]}"
        pairwise = (helper, render("pairwise_sum.c.j2", helper=helper, ctype=acc))
    columns = _column_blocks(node.op, x, dims, acc)
    if columns:
        parallel = target.parallel.memory(columns[0] * columns[1], columns[1] // (4 * columns[2]))
    elif pairwise:
        # the contiguous runs split between the threads
        parallel = target.parallel.memory(numel(shape), numel(out.shape))
    else:
        parallel = 0
    reads, writes = [("x", x)], [("out", out)]
    src = render("reduce.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(x),
                 out_ctype=out_ct, acctype=acc, signature=signature(reads, writes),
                 kind=node.op, in_shape=shape, dims=dims, kept=kept, init=init, update=red.update,
                 finish=red.finish.format(count=f"({acc}){count}"), in_order=in_order,
                 names=names, out_offset=out_offset, out_numel=numel(out.shape),
                 update_out=red.update_out, count=count,
                 offset=offset_expr(shape, names),
                 pairwise=pairwise[0] if pairwise else None, columns=columns,
                 parallel=parallel)
    return Kernel(name, reads, writes, src, helpers=[pairwise] if pairwise else (),
                  parallel=bool(parallel))


def _column_blocks(op, x, dims, acc):
    """A float sum or mean over the leading dims of a fixed shape (a bias gradient's column
    sum): (rows, columns, vector width) for the column-block loop of ``reduce.c.j2``, which
    keeps blocks of columns in vector registers while it walks the rows, each column still
    summed row by row in order (the same sums as the loop that accumulates into the output);
    else None. That loop reloads and stores the output for every row, and -O2 leaves a row of
    90 columns unvectorised: the LSTM LM's [512, 90] bias gradient 6.7 -> 3.2 us, [512, 256]
    6.7 -> 4.7 us (one thread, in a C harness; AVX2 only: 12.9 -> 3.2 and 8.9 -> 4.6 us)."""
    shape = tuple(x.shape)
    if op not in ("sum", "mean") or acc not in ("float", "double") or acc != ctype(x) or \
            not dims or len(dims) == len(shape) or \
            sorted(dims) != list(range(len(dims))) or \
            not all(isinstance(d, int) for d in shape):
        return None
    return numel(shape[:len(dims)]), numel(shape[len(dims):]), 32 // x.dtype.itemsize


# what an exponential counts as, in flops, for the threading threshold
_EXP_FLOPS = 20


@lowering("softmax", "log_softmax")
def lower_softmax(name, node, exported, target):
    x, out = node.inputs[0], node.outputs[0]
    dim = node.attrs["dim"]
    shape = tuple(x.shape)
    reads, writes = [("x", x)], [("out", out)]
    outer, contiguous = numel(shape[:dim]), is_one(numel(shape[dim + 1:]))
    # rows split between threads (a loss over many rows: an exponential per element, counted
    # as _EXP_FLOPS)
    parallel = target.parallel.compute(numel(shape) * _EXP_FLOPS, outer) if contiguous else 0
    src = render("softmax.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(x),
                 parallel=parallel,
                 acctype="double", signature=signature(reads, writes),
                 log=node.op == "log_softmax", D=shape[dim] if shape else 1,
                 OUTER=outer, INNER=numel(shape[dim + 1:]), contiguous=contiguous)
    return Kernel(name, reads, writes, src, parallel=bool(parallel))

