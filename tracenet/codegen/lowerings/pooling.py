"""C lowerings of pooling beyond the core 2-d max pooling: average pooling and its backward,
3-d max pooling (and max pooling whose windows can lie entirely in the padding), max unpooling
and its gather backward, adaptive average pooling and its backward.

Every kernel works on (N, C, *spatial) planes with 1 to 3 spatial dims, padded to three
(depth, height, width) with leading size-1 dims; all sizes are compile-time constants.
"""
import numpy as np

from ...ops.common import numel
from ...ops.nn import _empty_windows
from ..kernels import (Kernel, ctype, lower_max_pool, lower_max_pool_backward,
                       lowering, node_lines, openmp_available, signature)
from ..templates import render

PARALLEL_MIN_ELEMENTS = 1 << 18


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


def _parallel(nc, work):
    return int(nc > 1 and work >= PARALLEL_MIN_ELEMENTS and openmp_available())


# --- average pooling ----------------------------------------------------------------------------


def _divisor_expr(attrs):
    if attrs["divisor_override"]:
        return str(int(attrs["divisor_override"]))
    if attrs["count_include_pad"]:
        return "(d1 - d0) * (h1 - h0) * (w1 - w0)"
    return "(de - ds) * (he - hs) * (we - ws)"


def _check_spatial(node, n):
    if n > 3:
        from ..kernels import LoweringError, where
        raise LoweringError(f"{n}-d pooling has no C lowering{where(node)}")


@lowering("avg_pool")
def lower_avg_pool(name, node, exported):
    x, out = node.inputs[0], node.outputs[0]
    a = node.attrs
    n = len(a["kernel"])
    _check_spatial(node, n)
    nc = numel(x.shape[:2])
    g = _geometry(x.shape[2:], out.shape[2:], a["kernel"], a["stride"], a["padding"])
    reads, writes = [("x", x)], [("out", out)]
    par = _parallel(nc, numel(out.shape) * numel(a["kernel"]))
    src = render("pool_avg.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(x),
                 acctype=_acc(x), signature=signature(reads, writes), NC=nc, g=g,
                 override=a["divisor_override"], count_include_pad=a["count_include_pad"],
                 divisor_expr=_divisor_expr(a),
                 parallel=par)
    return Kernel(name, reads, writes, src, parallel=par)


@lowering("avg_pool_backward")
def lower_avg_pool_backward(name, node, exported):
    gy, out = node.inputs[0], node.outputs[0]
    a = node.attrs
    n = len(a["kernel"])
    _check_spatial(node, n)
    nc = numel(out.shape[:2])
    g = _geometry(out.shape[2:], gy.shape[2:], a["kernel"], a["stride"], a["padding"])
    reads, writes = [("g", gy)], [("out", out)]
    par = _parallel(nc, numel(gy.shape) * numel(a["kernel"]))
    src = render("pool_avg_backward.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), acctype=_acc(out), signature=signature(reads, writes),
                 NC=nc, g=g, override=a["divisor_override"],
                 count_include_pad=a["count_include_pad"], divisor_expr=_divisor_expr(a),
                 parallel=par)
    return Kernel(name, reads, writes, src, parallel=par)


# --- max pooling: 3-d, and windows entirely in the padding ------------------------------------


def _max_pool_empty(node, in_shape, out_shape):
    a = node.attrs
    return _empty_windows(tuple(in_shape[2:]), tuple(out_shape[2:]), a["kernel"], a["stride"],
                          a["padding"], a["dilation"])


@lowering("max_pool")
def lower_max_pool_nd(name, node, exported):
    x = node.inputs[0]
    a = node.attrs
    n = len(a["kernel"])
    _check_spatial(node, n)
    empty = _max_pool_empty(node, x.shape, node.outputs[0].shape)
    if n <= 2 and empty is None:
        return lower_max_pool(name, node, exported)
    reads = [("x", x)]
    writes = [("out", node.outputs[0])]
    with_idx = node.outputs[1] in exported
    if with_idx:
        writes.append(("idx", node.outputs[1]))
    nc = numel(x.shape[:2])
    g = _geometry(x.shape[2:], node.outputs[0].shape[2:], a["kernel"], a["stride"],
                  a["padding"], a["dilation"])
    par = _parallel(nc, numel(node.outputs[0].shape) * numel(a["kernel"]))
    src = render("pool_max.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(x),
                 signature=signature(reads, writes), NC=nc, g=g, with_idx=with_idx,
                 parallel=par)
    return Kernel(name, reads, writes, src, parallel=par)


@lowering("max_pool_backward")
def lower_max_pool_backward_nd(name, node, exported):
    gy, idx = node.inputs
    out = node.outputs[0]
    geo = {k: node.attrs[k] for k in ("kernel", "stride", "padding", "dilation")
           if k in node.attrs}
    empty = _empty_windows(tuple(out.shape[2:]), tuple(gy.shape[2:]), **geo) if geo else None
    if empty is None:
        return lower_max_pool_backward(name, node)
    reads, writes = [("g", gy), ("idx", idx)], [("out", out)]
    flags = [str(int(e)) for e in np.asarray(empty).reshape(-1)]
    src = render("pool_max_backward.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), signature=signature(reads, writes),
                 NC=numel(out.shape[:2]), IN=numel(out.shape[2:]), ON=numel(gy.shape[2:]),
                 empty=flags)
    return Kernel(name, reads, writes, src)


# --- max unpooling ----------------------------------------------------------------------------


@lowering("max_unpool")
def lower_max_unpool(name, node, exported):
    x, idx = node.inputs
    out = node.outputs[0]
    reads, writes = [("x", x), ("idx", idx)], [("out", out)]
    src = render("pool_unpool.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(out),
                 signature=signature(reads, writes), NC=numel(x.shape[:2]),
                 IN=numel(x.shape[2:]), ON=numel(out.shape[2:]))
    return Kernel(name, reads, writes, src)


@lowering("max_unpool_backward")
def lower_max_unpool_backward(name, node, exported):
    gy, idx = node.inputs
    out = node.outputs[0]
    reads, writes = [("g", gy), ("idx", idx)], [("out", out)]
    src = render("pool_unpool_backward.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), signature=signature(reads, writes), NC=numel(out.shape[:2]),
                 IN=numel(out.shape[2:]), ON=numel(gy.shape[2:]))
    return Kernel(name, reads, writes, src)


# --- adaptive average pooling -------------------------------------------------------------------


@lowering("adaptive_avg_pool", "adaptive_avg_pool_backward")
def lower_adaptive_avg_pool(name, node, exported):
    backward = node.op == "adaptive_avg_pool_backward"
    src_v, out = node.inputs[0], node.outputs[0]
    big, small = (out, src_v) if backward else (src_v, out)
    _check_spatial(node, len(big.shape) - 2)
    nc = numel(big.shape[:2])
    g = _geometry(big.shape[2:], small.shape[2:])
    reads, writes = [("g" if backward else "x", src_v)], [("out", out)]
    par = _parallel(nc, numel(big.shape))
    src = render("pool_adaptive_avg.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), acctype=_acc(out), signature=signature(reads, writes),
                 NC=nc, g=g, backward=backward, parallel=par)
    return Kernel(name, reads, writes, src, parallel=par)

