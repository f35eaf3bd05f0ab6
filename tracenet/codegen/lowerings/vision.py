"""C lowerings of the vision ops: padding (``pad``/``pad_backward``, every mode), upsampling
(nearest, linear/bilinear/trilinear, bicubic, antialiased, and their gradients) and 3-d
convolution (forward, optionally fused with relu and max pooling, and both gradients).

Padding and upsampling are gathers whose index tables are computed at compile time by the same
functions the eager kernels use (``ops.nn._pad_source``, ``ops.vision.forward_taps``/
``backward_taps``) and baked into the kernel as ``static const`` arrays; gradients are the
matching scatters.
"""
import numpy as np

from ...ops import vision as vops
from ...ops.common import numel
from ...ops.nn import _pad_source, _pad_widths
from ..kernels import (LOWERINGS, PARALLEL_MIN_FLOPS, Kernel, LoweringError, _fmt_float, ctype,
                       lowering, node_lines, openmp_available, signature, where)
from ..templates import render

PARALLEL_MIN_ELEMENTS = 1 << 18


def _c_array(values):
    return ", ".join(str(int(v)) for v in values)


def _c_floats(values, ct):
    return ", ".join(_fmt_float(v, ct) for v in values)


# --- padding --------------------------------------------------------------------------------------


def _pad_plan(in_shape, pads, mode):
    """Loop dims of a pad gather: runs of unpadded dims merged. Each dim: its output size, the
    input stride, and the per-position source table (None for an unpadded dim)."""
    dims = []
    strides = [numel(in_shape[d + 1:]) for d in range(len(in_shape))]
    for d, (a, b) in enumerate(_pad_widths(len(in_shape), pads)):
        size = in_shape[d]
        if a == 0 and b == 0:
            if dims and dims[-1]["table"] is None:
                dims[-1]["n"] *= size
                dims[-1]["stride"] = strides[d]
            else:
                dims.append(dict(n=size, stride=strides[d], table=None))
        else:
            src = _pad_source(size, a, b, mode)
            dims.append(dict(n=len(src), stride=strides[d], table=_c_array(src),
                             holes=bool((src < 0).any())))
    return dims


def _lower_pad(name, node, backward):
    src_v, out = node.inputs[0], node.outputs[0]
    a = node.attrs
    in_shape = tuple(out.shape) if backward else tuple(src_v.shape)
    padded = tuple(src_v.shape) if backward else tuple(out.shape)
    dims = _pad_plan(in_shape, a["pads"], a["mode"])
    ct = ctype(out)
    value = a.get("value")
    if ct in ("float", "double"):
        fill = _fmt_float(0.0 if value is None else value, ct)
    elif ct == "uint8_t":
        fill = "1" if value else "0"
    else:
        fill = str(int(value or 0))
    reads, writes = [("g" if backward else "x", src_v)], [("out", out)]
    src = render("vision_pad.c.j2", name=name, node_lines=node_lines([node]), ctype=ct,
                 signature=signature(reads, writes), dims=dims, backward=backward,
                 fill=fill, in_numel=numel(in_shape), out_numel=numel(padded),
                 empty=numel(padded) == 0 or numel(in_shape) == 0)
    return Kernel(name, reads, writes, src)


@lowering("pad")
def lower_pad(name, node, exported):
    return _lower_pad(name, node, backward=False)


@lowering("pad_backward")
def lower_pad_backward(name, node, exported):
    return _lower_pad(name, node, backward=True)


# --- upsampling -----------------------------------------------------------------------------------


def _upsample_axes(node, in_spatial, np_dtype, backward):
    """Three (depth, height, width) axes; missing leading ones are size-1 identity axes."""
    attrs = node.attrs
    n = len(attrs["output_size"])
    taps = vops.backward_taps if backward else vops.forward_taps
    ct = "double" if np.dtype(np_dtype) == np.float64 else "float"
    axes = []
    for _ in range(3 - n):
        axes.append(dict(I=1, O=1, T=1, idx="0", w=_c_floats([1.0], ct)))
    for i in range(n):
        idx, w = taps(attrs, i, in_spatial[i], np_dtype)
        axes.append(dict(I=in_spatial[i], O=idx.shape[0], T=idx.shape[1],
                         idx=_c_array(idx.reshape(-1)), w=_c_floats(w.reshape(-1), ct)))
    return axes


def _lower_upsample(name, node, backward):
    src_v, out = node.inputs[0], node.outputs[0]
    big_in = tuple(out.shape) if backward else tuple(src_v.shape)
    np_dtype = out.dtype.np
    axes = _upsample_axes(node, big_in[2:], np_dtype, backward)
    nc = numel(big_in[:2])
    work = numel(src_v.shape if backward else out.shape) * numel(a["T"] for a in axes)
    parallel = int(nc > 1 and work >= PARALLEL_MIN_ELEMENTS and openmp_available())
    reads, writes = [("g" if backward else "x", src_v)], [("out", out)]
    src = render("vision_upsample.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), signature=signature(reads, writes), NC=nc, axes=axes,
                 weighted=node.attrs["mode"] not in ("nearest", "nearest-exact"),
                 backward=backward, parallel=parallel)
    return Kernel(name, reads, writes, src, parallel=parallel)


@lowering("upsample_nearest", "upsample_linear", "upsample_bicubic")
def lower_upsample(name, node, exported):
    return _lower_upsample(name, node, backward=False)


@lowering("upsample_nearest_backward", "upsample_linear_backward", "upsample_bicubic_backward")
def lower_upsample_backward(name, node, exported):
    return _lower_upsample(name, node, backward=True)


# --- 3-d convolution --------------------------------------------------------------------------


def _conv3d_geometry(x_shape, w_shape, y_shape, attrs):
    st, pd, dl = attrs["stride"], attrs["padding"], attrs["dilation"]
    g = attrs["groups"]
    return dict(N=x_shape[0], C=x_shape[1], ID=x_shape[2], IH=x_shape[3], IW=x_shape[4],
                O=w_shape[0], CG=w_shape[1], OG=w_shape[0] // g, KD=w_shape[2], KH=w_shape[3],
                KW=w_shape[4], OD=y_shape[2], OH=y_shape[3], OW=y_shape[4], SD=st[0],
                SH=st[1], SW=st[2], PD=pd[0], PH=pd[1], PW=pd[2], DD=dl[0], DH=dl[1],
                DW=dl[2], G=g)


def _conv3d_flops(geo):
    return 2 * geo["N"] * geo["O"] * geo["CG"] * geo["KD"] * geo["KH"] * geo["KW"] * \
        geo["OD"] * geo["OH"] * geo["OW"]


def _parallel_conv(geo):
    return int(_conv3d_flops(geo) >= PARALLEL_MIN_FLOPS and openmp_available())


def lower_conv3d(name, node, exported):
    """Kernel for a 3-d ``convolution`` (alone or fused with ``relu`` / ``max_pool``),
    ``conv_backward_input`` or ``conv_backward_weight`` node."""
    exported = set(exported)
    if node.op == "fused":
        return _lower_conv3d_group(name, node.members, exported)
    if node.op == "convolution":
        return _lower_conv3d_group(name, [node], set(node.outputs))
    if node.op == "conv_backward_input":
        return _lower_conv3d_backward_input(name, node)
    if node.op == "conv_backward_weight":
        return _lower_conv3d_backward_weight(name, node)
    raise AssertionError(f"not a 3-d convolution node: {node.op}")


def _lower_conv3d_group(name, members, exported):
    conv = members[0]
    relu = next((m for m in members if m.op == "relu"), None)
    pool = next((m for m in members if m.op == "max_pool"), None)
    x, w = conv.inputs[0], conv.inputs[1]
    conv_v = conv.outputs[0]
    geo = _conv3d_geometry(x.shape, w.shape, conv_v.shape, conv.attrs)
    ct = ctype(conv_v)
    reads = [("x", x), ("w", w)]
    if len(conv.inputs) > 2:
        reads.append(("b", conv.inputs[2]))
    writes = []
    last = relu.outputs[0] if relu is not None else conv_v
    conv_dst = relu_dst = None
    if conv_v in exported or (pool is None and relu is None):
        writes.append(("conv_out", conv_v))
        conv_dst = "conv_out"
    if relu is not None and (relu.outputs[0] in exported or pool is None):
        writes.append(("relu_out", relu.outputs[0]))
        relu_dst = "relu_out"
    pool_kernel = None
    scratch = 0
    if pool is not None:
        # the pooling input is whatever the conv part wrote last, or scratch
        lower_pool = LOWERINGS.get("max_pool")
        if lower_pool is None:
            raise LoweringError(f"3-d max pooling has no C lowering{where(pool)}")
        pool_kernel = lower_pool(f"{name}_pool", pool, exported)
        if pool_kernel.scratch:
            raise LoweringError(f"max pooling fused after a 3-d convolution cannot use scratch "
                                f"memory{where(pool)}")
        pool_in = relu_dst if relu is not None else conv_dst
        if pool_in is None:
            scratch = numel(last.shape)
            pool_in = "scratch"
            if relu is not None:
                relu_dst = "scratch"
            else:
                conv_dst = "scratch"
        pool_writes = [(f"pool_{role}", v) for role, v in pool_kernel.writes]
        writes += pool_writes
        pool_call = f"{name}_pool({pool_in}, " + ", ".join(r for r, _ in pool_writes) + ");"
    parallel = _parallel_conv(geo)
    src = render("vision_conv3d.c.j2", name=name, node_lines=node_lines(members), ctype=ct,
                 acctype="double", signature=signature(reads, writes, scratch, ct),
                 conv_signature=signature(reads, []) + f", {ct} *conv_dst, {ct} *relu_dst",
                 has_bias=len(conv.inputs) > 2, conv_dst=conv_dst or "NULL",
                 relu_dst=relu_dst or "NULL", relu=relu is not None, g=geo, parallel=parallel,
                 pool_source=pool_kernel.source if pool_kernel else None,
                 pool_call=pool_call if pool_kernel else None)
    return Kernel(name, reads, writes, src, scratch, ct, flops=_conv3d_flops(geo),
                  parallel=parallel or bool(pool_kernel and pool_kernel.parallel))


def _lower_conv3d_backward_input(name, node):
    gy, w = node.inputs
    out = node.outputs[0]
    geo = _conv3d_geometry(out.shape, w.shape, gy.shape, node.attrs)
    ct = ctype(out)
    reads, writes = [("gy", gy), ("w", w)], [("out", out)]
    parallel = _parallel_conv(geo)
    src = render("vision_conv3d_backward_input.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, acctype="double", signature=signature(reads, writes), g=geo,
                 parallel=parallel)
    return Kernel(name, reads, writes, src, flops=_conv3d_flops(geo), parallel=parallel)


def _lower_conv3d_backward_weight(name, node):
    gy, x = node.inputs
    out = node.outputs[0]
    geo = _conv3d_geometry(x.shape, out.shape, gy.shape, node.attrs)
    ct = ctype(out)
    reads, writes = [("gy", gy), ("x", x)], [("out", out)]
    parallel = _parallel_conv(geo)
    src = render("vision_conv3d_backward_weight.c.j2", name=name,
                 node_lines=node_lines([node]), ctype=ct, acctype="double",
                 signature=signature(reads, writes), g=geo, parallel=parallel)
    return Kernel(name, reads, writes, src, flops=_conv3d_flops(geo), parallel=parallel)
