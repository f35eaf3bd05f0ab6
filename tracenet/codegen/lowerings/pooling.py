"""C lowerings of pooling: max pooling (1-d to 3-d, windows that may lie entirely in the
padding) and its scatter backward, the fused backward of conv -> relu -> max_pool, average
pooling and its backward, max unpooling (which checks its indices as eager mode does) and its
gather backward, adaptive average pooling and its backward, adaptive max pooling.

Every kernel works on (N, C, *spatial) planes with 1 to 3 spatial dims, padded to three
(depth, height, width) with leading size-1 dims; all sizes are compile-time constants.
"""
import numpy as np

from ...ops.common import numel
from ...ops.nn import _empty_windows
from ...ops.cexpr import fmt_float
from ..base import Kernel, LoweringError, ctype, group_lowering, lowering, members, node_lines, \
    signature, where
from ..templates import render

def _pad3(t, fill):
    t = tuple(t)
    return (fill,) * (3 - len(t)) + t


def _geometry(in_spatial, out_spatial, kernel=(), stride=(), padding=(), dilation=()):
    i, o = _pad3(in_spatial, 1), _pad3(out_spatial, 1)
    k, s = _pad3(kernel, 1), _pad3(stride, 1)
    p, d = _pad3(padding, 0), _pad3(dilation, 1)
    return dict(ID=i[0], IH=i[1], IW=i[2], OD=o[0], OH=o[1], OW=o[2], KD=k[0], KH=k[1],
                KW=k[2], SD=s[0], SH=s[1], SW=s[2], PD=p[0], PH=p[1], PW=p[2], DD=d[0],
                DH=d[1], DW=d[2])


def _acc(value):
    """Accumulator C type: sums of float32 windows are accumulated in double."""
    return "double"


# --- average pooling ----------------------------------------------------------------------------


def _divisor_expr(attrs):
    if attrs["divisor_override"]:
        return str(int(attrs["divisor_override"]))
    if attrs["count_include_pad"]:
        return "(d1 - d0) * (h1 - h0) * (w1 - w0)"
    return "(de - ds) * (he - hs) * (we - ws)"


def _check_spatial(node, n):
    if n > 3:
        raise LoweringError(f"{n}-d pooling has no C lowering{where(node)}")


@lowering("avg_pool")
def lower_avg_pool(name, node, exported, target):
    x, out = node.inputs[0], node.outputs[0]
    a = node.attrs
    n = len(a["kernel"])
    _check_spatial(node, n)
    nc = numel(x.shape[:2])
    g = _geometry(x.shape[2:], out.shape[2:], a["kernel"], a["stride"], a["padding"])
    reads, writes = [("x", x)], [("out", out)]
    par = target.parallel.memory(numel(out.shape) * numel(a["kernel"]), nc)
    src = render("pool_avg.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(x),
                 acctype=_acc(x), signature=signature(reads, writes), NC=nc, g=g,
                 override=a["divisor_override"], count_include_pad=a["count_include_pad"],
                 divisor_expr=_divisor_expr(a),
                 parallel=par)
    return Kernel(name, reads, writes, src, parallel=par)


@lowering("avg_pool_backward")
def lower_avg_pool_backward(name, node, exported, target):
    gy, out = node.inputs[0], node.outputs[0]
    a = node.attrs
    n = len(a["kernel"])
    _check_spatial(node, n)
    nc = numel(out.shape[:2])
    g = _geometry(out.shape[2:], gy.shape[2:], a["kernel"], a["stride"], a["padding"])
    reads, writes = [("g", gy)], [("out", out)]
    par = target.parallel.memory(numel(gy.shape) * numel(a["kernel"]), nc)
    src = render("pool_avg_backward.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), acctype=_acc(out), signature=signature(reads, writes),
                 NC=nc, g=g, override=a["divisor_override"],
                 count_include_pad=a["count_include_pad"], divisor_expr=_divisor_expr(a),
                 parallel=par)
    return Kernel(name, reads, writes, src, parallel=par)


# --- max pooling ------------------------------------------------------------------------------


def _max_pool_empty(node, in_shape, out_shape):
    a = node.attrs
    return _empty_windows(tuple(in_shape[2:]), tuple(out_shape[2:]), a["kernel"], a["stride"],
                          a["padding"], a["dilation"])


def pool_geometry(pool, ih, iw):
    """The geometry of a 1-d or 2-d max pooling of ``ih`` x ``iw`` planes (what
    ``_common.c.j2``'s ``pool_plane`` reads), plus ``inside``: every window lies inside the
    image (no padding, no ceil-mode overhang)."""
    a = pool.attrs
    if len(a["kernel"]) > 2:
        raise LoweringError(f"{len(a['kernel'])}-d pooling has no plane kernel{where(pool)}")
    g = _geometry((ih, iw), pool.outputs[0].shape[2:], a["kernel"], a["stride"], a["padding"],
                  a["dilation"])
    g["inside"] = (g["PH"] == 0 and g["PW"] == 0 and
                   (g["OH"] - 1) * g["SH"] + (g["KH"] - 1) * g["DH"] < ih and
                   (g["OW"] - 1) * g["SW"] + (g["KW"] - 1) * g["DW"] < iw)
    return g


@lowering("max_pool")
def lower_max_pool(name, node, exported, target):
    """1-d to 3-d max pooling. 1-d and 2-d windows that all take some input use the plane
    kernel that conv -> max_pool fuses too; the rest the general loop."""
    x = node.inputs[0]
    a = node.attrs
    n = len(a["kernel"])
    _check_spatial(node, n)
    reads = [("x", x)]
    writes = [("out", node.outputs[0])]
    with_idx = node.outputs[1] in exported
    if with_idx:
        writes.append(("idx", node.outputs[1]))
    nc = numel(x.shape[:2])
    plane = None
    if n <= 2 and _max_pool_empty(node, x.shape, node.outputs[0].shape) is None:
        ih, iw = (x.shape[2], x.shape[3]) if n == 2 else (1, x.shape[2])
        plane = pool_geometry(node, ih, iw)
    g = _geometry(x.shape[2:], node.outputs[0].shape[2:], a["kernel"], a["stride"],
                  a["padding"], a["dilation"])
    par = target.parallel.memory(numel(node.outputs[0].shape) * numel(a["kernel"]), nc)
    src = render("pool_max.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(x),
                 signature=signature(reads, writes), NC=nc, g=g, plane=plane,
                 with_idx=with_idx, parallel=par)
    return Kernel(name, reads, writes, src, parallel=par)


@lowering("max_pool_backward")
def lower_max_pool_backward(name, node, exported, target):
    gy, idx = node.inputs
    out = node.outputs[0]
    geo = {k: node.attrs[k] for k in ("kernel", "stride", "padding", "dilation")
           if k in node.attrs}
    empty = _empty_windows(tuple(out.shape[2:]), tuple(gy.shape[2:]), **geo) if geo else None
    flags = None if empty is None else [str(int(e)) for e in np.asarray(empty).reshape(-1)]
    reads, writes = [("g", gy), ("idx", idx)], [("out", out)]
    src = render("pool_max_backward.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), signature=signature(reads, writes),
                 NC=numel(out.shape[:2]), IN=numel(out.shape[2:]), ON=numel(gy.shape[2:]),
                 empty=flags)
    return Kernel(name, reads, writes, src)


# --- conv -> relu -> max_pool backward ------------------------------------------------------


@group_lowering("pool_backward")
def lower_pool_relu_backward(name, node, exported, target):
    group = members(node)
    thr, mpb = group[:2]  # mask the pooled gradient, then scatter it
    bias = group[2] if len(group) > 2 else None
    g, y = thr.inputs
    idx = mpb.inputs[1]
    out = mpb.outputs[0]
    n, c = out.shape[0], out.shape[1]
    reads = [("g", g), ("idx", idx), ("y", y)]
    writes = [("out", out)]
    if bias is not None:
        writes.append(("bias_out", bias.outputs[0]))
    flops = numel(out.shape) * 3
    parallel = target.parallel.memory(numel(out.shape), c)
    src = render("pool_relu_backward.c.j2", dense=_dense_2x2(out, g), name=name,
                 node_lines=node_lines(group),
                 ctype=ctype(out), acctype="double", signature=signature(reads, writes),
                 N=n, C=c, IN=numel(out.shape[2:]), ON=numel(g.shape[2:]),
                 threshold=fmt_float(thr.attrs["threshold"], ctype(out)), bias=bias is not None,
                 parallel=parallel)
    return Kernel(name, reads, writes, src, flops=flops, parallel=parallel)


def _dense_2x2(out, g):
    """For float planes tiled by 2x2 windows of stride 2 (each input size twice the pooled one)
    with pooled rows of 8 or more (narrower ones take the scatter: LeNet's conv2, 5-wide, 26 ->
    41 us at batch 64 with 4 windows a step): the lanes a vector step takes and the shuffles
    interleaving a window row's two positions; else None."""
    if ctype(out) != "float" or len(out.shape) != 4:
        return None
    oh, ow = g.shape[2], g.shape[3]
    if out.shape[2] != 2 * oh or out.shape[3] != 2 * ow or ow < 8:
        return None
    lanes = 8
    half = lanes // 2
    lo = [i for l in range(half) for i in (l, l + lanes)]
    hi = [i for l in range(half, lanes) for i in (l, l + lanes)]
    return dict(L=lanes, OH=oh, OW=ow, lo=", ".join(map(str, lo)), hi=", ".join(map(str, hi)))


# --- max unpooling ----------------------------------------------------------------------------


@lowering("max_unpool")
def lower_max_unpool(name, node, exported, target):
    x, idx = node.inputs
    out = node.outputs[0]
    reads, writes = [("x", x), ("idx", idx)], [("out", out)]
    size = "x".join(str(s) for s in out.shape[2:])
    checks = [(RuntimeError, f"Found an invalid max index: {{0}} (output volumes are of size "
                             f"{size})")]  # eager's message
    src = render("pool_unpool.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(out),
                 signature=signature(reads, writes, checks=True), NC=numel(x.shape[:2]),
                 IN=numel(x.shape[2:]), ON=numel(out.shape[2:]))
    return Kernel(name, reads, writes, src, checks=checks)


@lowering("max_unpool_backward")
def lower_max_unpool_backward(name, node, exported, target):
    gy, idx = node.inputs
    out = node.outputs[0]
    reads, writes = [("g", gy), ("idx", idx)], [("out", out)]
    src = render("pool_unpool_backward.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), signature=signature(reads, writes), NC=numel(out.shape[:2]),
                 IN=numel(out.shape[2:]), ON=numel(gy.shape[2:]))
    return Kernel(name, reads, writes, src)


# --- adaptive average pooling -------------------------------------------------------------------


@lowering("adaptive_avg_pool", "adaptive_avg_pool_backward")
def lower_adaptive_avg_pool(name, node, exported, target):
    backward = node.op == "adaptive_avg_pool_backward"
    src_v, out = node.inputs[0], node.outputs[0]
    big, small = (out, src_v) if backward else (src_v, out)
    _check_spatial(node, len(big.shape) - 2)
    nc = numel(big.shape[:2])
    g = _geometry(big.shape[2:], small.shape[2:])
    reads, writes = [("g" if backward else "x", src_v)], [("out", out)]
    par = target.parallel.memory(numel(big.shape), nc)
    src = render("pool_adaptive_avg.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), acctype=_acc(out), signature=signature(reads, writes),
                 NC=nc, g=g, backward=backward, parallel=par)
    return Kernel(name, reads, writes, src, parallel=par)



# --- adaptive max pooling -----------------------------------------------------------------------


@lowering("adaptive_max_pool")
def lower_adaptive_max_pool(name, node, exported, target):
    """Values and (when used) flat per-plane indices; the backward is max_pool_backward's."""
    x, out = node.inputs[0], node.outputs[0]
    _check_spatial(node, len(x.shape) - 2)
    reads, writes = [("x", x)], [("out", out)]
    with_idx = node.outputs[1] in exported
    if with_idx:
        writes.append(("idx", node.outputs[1]))
    nc = numel(x.shape[:2])
    g = _geometry(x.shape[2:], out.shape[2:])
    par = target.parallel.memory(numel(x.shape), nc)
    src = render("pool_adaptive_max.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), signature=signature(reads, writes), NC=nc, g=g,
                 with_idx=with_idx, parallel=par)
    return Kernel(name, reads, writes, src, parallel=par)
