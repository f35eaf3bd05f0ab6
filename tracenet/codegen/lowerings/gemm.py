"""C lowerings of matrix products: ``gemm`` (alone or fused with its epilogue), the batched
``bmm`` and the matrix-vector and vector-vector products ``mv`` and ``dot``. (``mm`` and ``addmm`` decompose
into ``gemm``; ``passes/lower.py`` folds transposes into its flags.)"""
from ..base import Kernel, LoweringError, SFX, ctype, group_lowering, lowering, members, \
    node_lines, signature, size_ceil_div, size_choice, size_max, size_min, threads_scratch, \
    where
from ..templates import render
from ..._sym import has_symbols, hint, is_one_or_symbol
from .elementwise import c_expr
from .optim import update_helper


def _column_split(parallel, m, n, ct, plain):
    """(unit, condition): the threads of a parallel GEMM with no more rows than columns split
    its columns, in units of the GEMM core's two-vector panels, instead of its rows, when the
    C condition holds (None: never). Split by rows, every thread packs and reads all of b
    (K x N); split by columns, every thread reads all of a (M x K) instead: for the MLP's
    64 x 784 x 256 layer on two cores, 1.15x faster. Only the plain path: the SGD update
    works on whole rows of the gradient."""
    unit = 2 * 32 // (4 if ct == "float" else 8)
    if not (plain and parallel and isinstance(n, int) and n >= 4 * unit):
        return unit, None
    conditions = [] if parallel == 1 else [str(parallel)]
    if has_symbols((m,)):
        conditions.append(f"{m} <= {n}")
    elif m > n:
        return unit, None
    return unit, " && ".join(conditions + ["omp_get_max_threads() > 1"])


def _swapped(m, n, k, ta, tb, ct, plain, target):
    """Whether a @ b^T with few rows (a linear layer's forward at a batch far below its
    sizes) is computed as out^T = b a^T: a^T copied (m * k elements, by each thread) and out^T
    transposed back (m * n), where tn_gemm_nt transposes all of b into panels (n * k). Floats,
    built for AVX-512, which gives tn_gemm_zmm (gemm.c.j2 keeps the other path in the #else
    too), at least one of its 64-column panels of rows, no more than half the elements moved,
    and K from 512 (below, the copies' fixed costs ate the gain on two threads: 64x256x256
    43.5 -> 46.5 us).
    True, False, or the C condition on a symbolic batch (compiled in when the traced batch
    meets it). With bias and ReLU, best of 300 calls, alternating processes, one thread and
    two: the MLP's 64x784x256 247 -> 230 us and 126 -> 123; 64x1024x512 733 -> 588 and
    396 -> 332; 128x1024x1024 2916 -> 2403 and 1467-1541 -> 1254-1261."""
    if not (tb and not ta and plain and ct == "float" and target.vector_bits >= 512 and
            isinstance(n, int) and isinstance(k, int) and k >= 512):
        return False
    rows = hint(m)
    if not (rows >= 64 and 2 * rows * (k + n) <= n * k):
        return False
    return True if isinstance(m, int) else f"{m} >= 64 && {2 * (k + n)} * {m} <= {n * k}"


@group_lowering("gemm")
@lowering("gemm")
def lower_gemm(name, node, exported, target):
    """A GEMM, alone or with its epilogue: bias, an elementwise activation, a relu mask, or
    the SGD update of the weight whose gradient it computes."""
    group = members(node)
    if node.op != "fused":
        exported = set(node.outputs)
    g = group[0]
    if g.op != "gemm":
        raise LoweringError(f"op '{g.op}' should have been rewritten to gemm{where(g)}")
    # fusion names each member's part in the epilogue
    by_role = dict(zip(node.attrs["roles"], group)) if node.op == "fused" else {}
    act_node, mask_node = by_role.get("activation"), by_role.get("mask")
    add_node, sgd_node = by_role.get("bias"), by_role.get("update")
    a, b = g.inputs[0], g.inputs[1]
    ta, tb = g.attrs["trans_a"], g.attrs["trans_b"]
    m, k = (a.shape[1], a.shape[0]) if ta else a.shape
    n = b.shape[0] if tb else b.shape[1]
    reads = [("a", a), ("b", b)]
    bias = None
    beta = g.attrs["beta"]
    if len(g.inputs) > 2:
        bias = g.inputs[2]
    elif add_node is not None:
        bias = add_node.inputs[1] if add_node.inputs[0] is g.outputs[0] else add_node.inputs[0]
        beta = 1.0
    if bias is not None:
        reads.append(("c", bias))
    if mask_node is not None:
        reads.append(("mask", mask_node.inputs[1]))
    last = g.outputs[0] if sgd_node is not None else group[-1].outputs[0]
    writes = [("out", last)]
    sgd_helper = None
    if sgd_node is not None:  # the update of the parameter whose gradient this is
        reads += [("p", sgd_node.inputs[0]), ("buf", sgd_node.inputs[2]),
                  ("h", sgd_node.inputs[3])]
        writes += [("p_out", sgd_node.outputs[0]), ("buf_out", sgd_node.outputs[1])]
        sgd_helper = update_helper("sgd_update", ctype(last),
                                    maximize=sgd_node.attrs["maximize"],
                                    nesterov=sgd_node.attrs["nesterov"])
    pre = None
    if act_node is not None:
        pre_v = act_node.inputs[0]
        if pre_v in exported:
            pre = pre_v
            writes.append(("pre", pre_v))
    bias_index = None
    if bias is not None:
        bs = (1,) * (2 - len(bias.shape)) + tuple(bias.shape)
        bias_index = {(1, 1): "0", (1, n): "j", (m, 1): "i"}.get(
            bs, f"(size_t)i * {n} + j")
    ct = ctype(last)
    swapped = _swapped(m, n, k, ta, tb, ct, sgd_node is None, target)
    flops = 2 * m * n * k
    parallel = target.parallel.gemm(flops, m)
    scratch = k * n if (tb and ta) else 0
    if swapped:  # out^T, shared, and each thread's copy of a^T
        scratch = threads_scratch(m * k, parallel, shared=m * n)
    serial_block = size_max(m, 1)
    if sgd_node is not None:
        serial_block = size_min(serial_block, max(6, 4096 // max(n, 1) // 6 * 6))  # in L1
    # two threads: two blocks of rows (multiples of the micro-kernel's 6); one thread (the
    # thread count follows the machine's load) takes the serial blocks, as a serial build does:
    # each block it ran packed b again (the MLP's 64x784x256 forward, one thread, 272 -> 260
    # us; its 256x784x64 weight gradient 240 -> 233 us)
    split = size_ceil_div(m, 12)
    threaded_block = size_max(6, split * 6 if isinstance(split, int) else f"{split} * 6")
    row_block = size_choice(parallel, f"(omp_get_max_threads() == 1 ? {serial_block} : "
                                      f"{threaded_block})", serial_block)
    col_unit, col_split = _column_split(parallel, m, n, ct, sgd_node is None)
    act = act_node.op if act_node is not None else None
    act_expr = c_expr(act_node, ["v"]) if act_node is not None else None
    # a batch of one through a layer, compiled in only where the rows may be one: one row, or
    # rows that are the batch size itself (a symbol is never compared with 1: that would
    # specialise the build on it; rows of a product such as time steps x batch are left out,
    # whose extra code slowed the recurrent nets' GEMMs): with b not transposed (or
    # repacked), eight chains of FMAs along the columns
    rows_may_be_one = is_one_or_symbol(m)
    one_row = rows_may_be_one and not (tb and not ta) and ct in ("float", "double") and \
        isinstance(n, int) and n >= 2 * 32 // (4 if ct == "float" else 8)
    # with b transposed, dot products of the row with eight of b's rows at a time
    one_row_nt = rows_may_be_one and tb and not ta and ct in ("float", "double") and \
        isinstance(n, int) and isinstance(k, int) and k >= 32 // (4 if ct == "float" else 8)
    # at a batch of one, a layer whose fused backward and update split W's rows between
    # threads (lowerings/weight_update.py; fusion marks its forward) splits them alike
    one_row_split = target.parallel.weight_update(n * k, n) \
        if one_row_nt and node.attrs.get("rows_split") else 0
    src = render("gemm.c.j2", name=name, node_lines=node_lines(group), ctype=ct,
                 sfx=SFX[ct], signature=signature(reads, writes, scratch, ct), M=m, N=n, K=k,
                 trans_a=ta, trans_b=tb, alpha=g.attrs["alpha"], beta=beta,
                 bias=bias is not None, bias_index=bias_index, act=act, act_expr=act_expr,
                 pre_act_out=pre is not None, parallel=parallel, row_block=row_block,
                 mask=c_expr(mask_node, ["v", f"mask[(size_t)i * {n} + j]"]) if mask_node
                 else None,
                 epilogue=bias is not None or act is not None or g.attrs["alpha"] != 1.0 or
                 mask_node is not None, sgd=sgd_helper[0] if sgd_helper else None,
                 one_row=one_row, one_row_nt=one_row_nt, col_split=col_split, swapped=swapped,
                 col_unit=col_unit, one_row_split=one_row_split)
    return Kernel(name, reads, writes, src, scratch, ct, flops=flops,
                  parallel=parallel or bool(one_row_split),
                  helpers=[sgd_helper] if sgd_helper else ())


@lowering("mv", "dot")
def lower_matvec(name, node, exported, target):
    """mv (matrix @ vector) and dot (vector . vector)."""
    a, v = node.inputs
    out = node.outputs[0]
    rows = a.shape[0] if node.op == "mv" else 0
    reads, writes = [("a", a), ("v", v)], [("out", out)]
    src = render("matvec.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(out),
                 signature=signature(reads, writes), rows=rows, K=v.shape[0])
    return Kernel(name, reads, writes, src, flops=2 * max(rows, 1) * v.shape[0])


@lowering("bmm")
def lower_bmm(name, node, exported, target):
    """bmm: the GEMM micro-kernels once per matrix of the batch (whose size may be a symbol),
    the batch split over threads when the work is large enough. Transposed operands are read
    in place: a^T through the core's strides, b^T by the A @ B^T kernel (both: b^T repacked)."""
    a, b = node.inputs
    out = node.outputs[0]
    ta, tb = node.attrs.get("trans_a", False), node.attrs.get("trans_b", False)
    batch, m, n = out.shape
    k = a.shape[1] if ta else a.shape[2]
    reads, writes = [("a", a), ("b", b)], [("out", out)]
    ct = ctype(out)
    scratch = k * n if (ta and tb) else 0
    flops = 2 * batch * m * n * k
    parallel = 0 if scratch else target.parallel.compute(flops, batch)
    src = render("bmm.c.j2", name=name, node_lines=node_lines([node]), sfx=SFX[ct], ctype=ct,
                 signature=signature(reads, writes, scratch, ct), B=batch, M=m, N=n, K=k,
                 trans_a=ta, trans_b=tb, parallel=parallel)
    return Kernel(name, reads, writes, src, scratch, ct, flops=flops, parallel=parallel)
