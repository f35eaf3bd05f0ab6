"""C lowerings of the vision ops: padding (``pad``/``pad_backward``, every mode), upsampling
(nearest, linear/bilinear/trilinear, bicubic, antialiased, and their gradients).

Padding and upsampling are gathers whose index tables are computed at compile time by the same
functions the eager kernels use (``ops.nn._pad_source``, ``ops.vision.forward_taps``/
``backward_taps``) and baked into the kernel as ``static const`` arrays; gradients are the
matching scatters.
"""
import numpy as np

from ...ops import vision as vops
from ...ops.common import numel
from ...ops.nn import _pad_source, _pad_widths
from ...ops.cexpr import fmt_float
from ..base import Kernel, ctype, lowering, node_lines, signature
from ..templates import render

def _c_array(values):
    return ", ".join(str(int(v)) for v in values)


def _c_floats(values, ct):
    return ", ".join(fmt_float(v, ct) for v in values)


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
        fill = fmt_float(0.0 if value is None else value, ct)
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
def lower_pad(name, node, exported, target):
    return _lower_pad(name, node, backward=False)


@lowering("pad_backward")
def lower_pad_backward(name, node, exported, target):
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


def _lower_upsample(name, node, backward, target):
    src_v, out = node.inputs[0], node.outputs[0]
    big_in = tuple(out.shape) if backward else tuple(src_v.shape)
    np_dtype = out.dtype.np
    axes = _upsample_axes(node, big_in[2:], np_dtype, backward)
    nc = numel(big_in[:2])
    work = numel(src_v.shape if backward else out.shape) * numel(a["T"] for a in axes)
    parallel = target.parallel.memory(work, nc)
    reads, writes = [("g" if backward else "x", src_v)], [("out", out)]
    src = render("vision_upsample.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), signature=signature(reads, writes), NC=nc, axes=axes,
                 weighted=node.attrs["mode"] not in ("nearest", "nearest-exact"),
                 backward=backward, parallel=parallel)
    return Kernel(name, reads, writes, src, parallel=parallel)


@lowering("upsample_nearest", "upsample_linear", "upsample_bicubic")
def lower_upsample(name, node, exported, target):
    return _lower_upsample(name, node, backward=False, target=target)


@lowering("upsample_nearest_backward", "upsample_linear_backward", "upsample_bicubic_backward")
def lower_upsample_backward(name, node, exported, target):
    return _lower_upsample(name, node, backward=True, target=target)
