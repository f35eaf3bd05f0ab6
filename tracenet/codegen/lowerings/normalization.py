"""C lowerings of the batch-norm ops: the per-channel statistics (two passes in double), the
normalisation (one multiply-add per element with per-channel scale and shift; with a residual
add and relu when they follow) and the whole
backward in one kernel (per channel: the two sums, then grad_input). Each kernel walks a
(N, C, S) view of the input, S the product of the spatial dims; for large tensors the
normalisation and the backward split the images between OpenMP threads (the channels when a
batch has fewer images than threads), the statistics the channels."""
from ...ops.common import numel
from ...ops.normalization import channels
from ...ops.cexpr import fmt_float, select
from ..base import Kernel, ctype, group_lowering, lowering, members, node_lines, signature, \
    threads_scratch
from ..templates import render
from .elementwise import c_expr

def _layout(shape):
    shape = tuple(shape)
    c = channels(shape)
    return dict(N=shape[0], C=c, S=numel(shape[2:]), M=max(numel(shape) // c if c else 0, 1))


def _parallel(shape, target):
    return target.parallel.memory(numel(shape), shape[1])


@lowering("batch_norm_stats")
def lower_batch_norm_stats(name, node, exported, target):
    x = node.inputs[0]
    mean, var = node.outputs
    writes = [(role, v) for role, v in (("mean_out", mean), ("var_out", var)) if v in exported]
    reads = [("x", x)]
    par = _parallel(x.shape, target)
    src = render("norm_batch_stats.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(x), signature=signature(reads, writes), parallel=par,
                 mean_out=mean in exported, var_out=var in exported, **_layout(x.shape))
    return Kernel(name, reads, writes, src, parallel=par)


def statistics_reads(bn, prefix=""):
    """A batch norm's running statistics (or batch statistics), then its weight and bias if
    it has them, as kernel reads named with ``prefix``."""
    reads = [(prefix + "mean", bn.inputs[1]), (prefix + "var", bn.inputs[2])]
    extra = list(bn.inputs[3:])
    if bn.attrs["has_weight"]:
        reads.append((prefix + "weight", extra.pop(0)))
    if bn.attrs["has_bias"]:
        reads.append((prefix + "bias", extra.pop(0)))
    return reads


def statistics_scratch(stats, channels, ct, parallel, target):
    """For a batch norm's statistics summed in a convolution's epilogue
    (``templates/_batch_stats.c.j2``): sets ``stats["threads"]``, the slots of per-thread sums,
    and returns the scratch elements of ``ct`` they take at the start of the kernel's scratch,
    (count, mean, sum of squared deviations) in doubles per thread and channel, rounded up to
    64 bytes so what follows keeps its alignment."""
    stats["threads"] = target.max_threads if parallel else 1
    per_double = 2 if ct == "float" else 1
    return -(-stats["threads"] * channels * 3 * per_double // 16) * 16


def residual_operand(add, value):
    """The tensor a residual ``add`` adds to ``value``, the fused kernel's own stream."""
    return add.inputs[1] if add.inputs[0] is value else add.inputs[0]


@group_lowering("norm")
@lowering("batch_norm")
def lower_batch_norm(name, node, exported, target):
    """Alone, or with a residual add and relu applied before the one write (``norm``
    group: only the relu's output is written); a residual made by a batch norm of the group
    is normalised in the same pass (read as its input, ``res_x``, and its statistics)."""
    group = members(node)
    bn = group[0]
    x = bn.inputs[0]
    a = bn.attrs
    reads = [("x", x)] + statistics_reads(bn)
    add = next((m for m in group if m.op == "add"), None)
    res_bn = next((m for m in group[1:] if m.op == "batch_norm"), None)
    if res_bn is not None:
        reads += [("res_x", res_bn.inputs[0])] + statistics_reads(res_bn, "res_")
    elif add is not None:
        reads.append(("res", residual_operand(add, bn.output)))
    writes = [("out", group[-1].outputs[0])]
    par = _parallel(x.shape, target)
    src = render("norm_batch_norm.c.j2", name=name, node_lines=node_lines(group),
                 ctype=ctype(x), signature=signature(reads, writes), parallel=par,
                 eps=fmt_float(a["eps"], "double"), has_weight=a["has_weight"],
                 has_bias=a["has_bias"], res=add is not None,
                 res_bn=None if res_bn is None else dict(
                     eps=fmt_float(res_bn.attrs["eps"], "double"),
                     has_weight=res_bn.attrs["has_weight"], has_bias=res_bn.attrs["has_bias"]),
                 relu=any(m.op == "relu" for m in group), **_layout(x.shape))
    return Kernel(name, reads, writes, src, parallel=par)


# The backward's stashed walk (templates/norm_batch_norm_backward.c.j2): the sums pass copies
# what the dx pass reads (the gradient as it reads it, x - mean) for a block of channels into
# this many bytes of each thread's scratch, which the dx pass then reads from the core's L2
# instead of L3. The ResNet's 16-channel backward of the sum of two gradients on 32x32 planes,
# batch 32, one thread, in the training step: 397-451 -> 335-380 us with 512 KB (blocks of 2
# channels), 350 us with 256 KB; 1 MB made the plain backward slower (264 -> 290 us).
STASH_BYTES = 512 << 10
# Only a backward whose dx pass reads three tensors (the two addends of its gradient and x, or
# g and two x) is stashed: one reading two (g and x: plain or masked) stores as much as it
# saves reading, 264 -> 258 us on the ResNet's 16-channel plain one with AVX-512 but 272 ->
# 299-303 us with AVX2 only (masked 278 -> 300), where the sum's took 397-404 -> 354 us and the
# 32-channel pair's 377 -> 293-296 us.
MIN_STASHED_READS = 3
# Reads up to this many bytes keep the image walk, which finds the images it read last still
# in L2 (this machine's L2 per core): stashing the 64-channel backwards on 8x8 planes (1-1.5
# MB) took them 55 -> 68 us masked, 114 -> 118 us the pair.
L2_BYTES = 2 << 20
# A block's run per image of at least a page: shorter runs starve the prefetchers (one plane
# per image was 1.3-2x slower).
MIN_RUN_BYTES = 4096


@lowering("batch_norm_backward")
def lower_batch_norm_backward(name, node, exported, target):
    return _batch_norm_backward(name, [node], exported, target)


@group_lowering("norm_backward")
def lower_masked_batch_norm_backward(name, node, exported, target):
    """[add ->] [relu's threshold_backward ->] batch_norm_backward (fusion group
    ``norm_backward``): each pass adds the two gradients and recomputes the mask from the
    batch norm's input and the forward's scale and shift, so no pass writes the sum or the
    masked gradient."""
    return _batch_norm_backward(name, members(node), exported, target)


@group_lowering("norm_backward_pair")
def lower_batch_norm_backward_pair(name, node, exported, target):
    """Two training-mode batch_norm_backward of one gradient (fusion group
    ``norm_backward_pair``): each pass reads g once for both (the second's reads and writes
    named with a 2)."""
    return _batch_norm_backward(name, members(node), exported, target)


def _batch_norm_backward(name, group, exported, target):
    mask = next((m for m in group if m.op == "threshold_backward"), None)
    add = next((m for m in group if m.op == "add"), None)
    parts = [m for m in group if m.op == "batch_norm_backward"]
    node = parts[0]
    g, x = node.inputs[:2]
    infos = [_part(p, str(i + 1) if i else "", exported) for i, p in enumerate(parts)]
    if add is not None:
        reads, gradient = _summed_gradient(add)
    else:
        reads = [("g", mask.inputs[0] if mask else g)]
        gradient = lambda operand: operand.format("g")  # noqa: E731
    grads = [role for role, _ in reads]
    writes = []
    for part, info in zip(parts, infos):
        sfx = info["s"]
        reads += [("x" + sfx, part.inputs[1]), ("mean" + sfx, part.inputs[2]),
                  ("var" + sfx, part.inputs[3])]
        if info["has_weight"]:
            reads.append(("weight" + sfx, part.inputs[4]))
        writes += [(role.replace("_", sfx + "_", 1), v) for role, v in
                   zip(("gx_out", "gw_out", "gb_out"), part.outputs) if v in exported]
    # the forward batch norm whose relu made the mask's y (the ``norm`` group the fusion pass
    # found as y's producer): its bias is the shift of the value recomputed for the mask
    forward = members(mask.inputs[1].producer)[0] if mask else None
    has_bias = forward is not None and forward.attrs["has_bias"]
    if has_bias:
        reads.append(statistics_reads(forward)[-1])
    layout = _layout(x.shape)
    par = _parallel(x.shape, target)
    training = bool(node.attrs["training"]) and layout["M"] > 0
    gx_parts = [info for info in infos if info["gx_out"]] if training else []
    read_streams = len(grads) + len(parts)
    stash_bytes = STASH_BYTES if gx_parts and read_streams >= MIN_STASHED_READS else 0
    # per thread: its partial sums of g and of g (x - mean) per part, one per channel each
    # (rounded up to 64 bytes), then its stash
    sums = -(-(len(parts) + 1) * layout["C"] // 8) * 8
    per_thread = sums + stash_bytes // 8
    scratch = threads_scratch(per_thread, par)
    src = render("norm_batch_norm_backward.c.j2", name=name, node_lines=node_lines(group),
                 ctype=ctype(x), signature=signature(reads, writes, scratch, "double"),
                 parallel=par,
                 eps=infos[0]["eps"], has_weight=infos[0]["has_weight"],
                 training=training, parts=infos, gx_parts=gx_parts,
                 stash_bytes=stash_bytes, stash_streams=1 + len(gx_parts),
                 read_streams=read_streams, fits_l2=L2_BYTES, min_run=MIN_RUN_BYTES,
                 sums_per_thread=sums, per_thread=per_thread,
                 mask=mask is not None, grads=grads,
                 gradient_sum=gradient, summed=add is not None,
                 keep=lambda cond, value: select(cond, value, "0", ctype(x)), has_bias=has_bias,
                 **layout)
    return Kernel(name, reads, writes, src, scratch, "double", parallel=par)


def _summed_gradient(add):
    """The reads of a gradient that is the sum ``add`` of two (``g0``, ``g1``; ``g0`` alone for
    a + a), and ``gradient(operand)``: the sum's C expression, the add's own (as eager adds
    them), with the addend read as role ``r`` written ``operand.format(r)``."""
    roles = {}
    for v in add.inputs:
        roles.setdefault(v, f"g{len(roles)}")
    return [(role, v) for v, role in roles.items()], \
        lambda operand: c_expr(add, [operand.format(roles[v]) for v in add.inputs])


def _part(node, sfx, exported):
    """One batch_norm_backward's part of the kernel: the suffix of its names, its epsilon,
    whether it has a weight and which of its outputs it writes."""
    gx, gw, gb = node.outputs
    return dict(s=sfx, eps=fmt_float(node.attrs["eps"], "double"), has_weight=len(node.inputs) > 4,
                gx_out=gx in exported, gw_out=gw in exported, gb_out=gb in exported)
