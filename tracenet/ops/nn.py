"""Neural-network primitives: N-d convolution (and its two gradient ops), max pooling with
indices, average pooling, softmax and log-softmax.

Eager implementations are vectorised numpy: a strided window view of the padded input turns
convolution into one tensordot (im2col) and pooling into a reduction over the window axes.
"""
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import _dtype
from . import common
from .registry import Meta, apply, register


# --- geometry -----------------------------------------------------------------------------------


def conv_out_size(size, k, stride, pad, dil, ceil_mode=False):
    span = size + 2 * pad - dil * (k - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + pad:  # the last window must start inside the input
            out -= 1
        return out
    return span // stride + 1


def _windows(xp, out, k, stride, dil):
    """View of ``xp`` (N, C, *spatial) as (N, C, *out, *k) sliding windows."""
    n = len(k)
    s = xp.strides
    shape = xp.shape[:2] + tuple(out) + tuple(k)
    strides = s[:2] + tuple(s[2 + i] * stride[i] for i in range(n)) + tuple(
        s[2 + i] * dil[i] for i in range(n))
    return as_strided(xp, shape, strides, writeable=False)


def _pad_spatial(x, pads, value=0.0, extra=None):
    """Pad the spatial dims by ``pads`` each side (plus ``extra`` at the end for ceil_mode)."""
    extra = extra or (0,) * len(pads)
    if not any(pads) and not any(extra):
        return x
    width = [(0, 0), (0, 0)] + [(p, p + e) for p, e in zip(pads, extra)]
    return np.pad(x, width, constant_values=value)


# --- convolution ---------------------------------------------------------------------------------


def _conv_meta(x, w, *b, stride, padding, dilation, groups):
    n = len(stride)
    if len(x.shape) != n + 2:
        raise RuntimeError(f"Expected {n + 2}D (batched) or {n + 1}D (unbatched) input to "
                           f"conv{n}d, but got input of size: [{', '.join(map(str, x.shape))}]")
    if x.dtype is not w.dtype or (b and b[0].dtype is not x.dtype):
        raise RuntimeError(f"Input type ({_tname(x.dtype)}) and weight type ({_tname(w.dtype)}) "
                           "should be the same")
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"\"slow_conv2d_cpu\" not implemented for '{_word(x.dtype)}'")
    cin = x.shape[1]
    if w.shape[1] * groups != cin:
        raise RuntimeError(
            f"Given groups={groups}, weight of size [{', '.join(map(str, w.shape))}], expected "
            f"input[{', '.join(map(str, x.shape))}] to have {w.shape[1] * groups} channels, but "
            f"got {cin} channels instead")
    if w.shape[0] % groups:
        raise RuntimeError("Given groups=" + str(groups) + ", expected weight to be divisible by "
                           f"{groups} at dimension 0, but got weight of size "
                           f"[{', '.join(map(str, w.shape))}] instead")
    if b and tuple(b[0].shape) != (w.shape[0],):
        raise RuntimeError(f"Given weight of size [{', '.join(map(str, w.shape))}], expected bias "
                           f"to be 1-dimensional with {w.shape[0]} elements, but got bias of size "
                           f"[{', '.join(map(str, b[0].shape))}] instead")
    out = []
    for i in range(n):
        padded = x.shape[2 + i] + 2 * padding[i]
        eff_k = dilation[i] * (w.shape[2 + i] - 1) + 1
        if padded < eff_k:
            raise RuntimeError(
                f"Calculated padded input size per channel: "
                f"({' x '.join(str(x.shape[2 + j] + 2 * padding[j]) for j in range(n))}). Kernel "
                f"size: ({' x '.join(str(dilation[j] * (w.shape[2 + j] - 1) + 1) for j in range(n))})"
                f". Kernel size can't be greater than actual input size")
        out.append(conv_out_size(x.shape[2 + i], w.shape[2 + i], stride[i], padding[i],
                                 dilation[i]))
    return Meta((x.shape[0], w.shape[0]) + tuple(out), x.dtype)


def _tname(dt):
    return {"float32": "float", "float64": "double", "int64": "long", "bool": "bool"}[dt.name]


def _word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def _conv_eager(x, w, *b, stride, padding, dilation, groups):
    n = len(stride)
    k = w.shape[2:]
    out = [conv_out_size(x.shape[2 + i], k[i], stride[i], padding[i], dilation[i])
           for i in range(n)]
    cols = _windows(_pad_spatial(x, padding), out, k, stride, dilation)  # N C *out *k
    kaxes = tuple(range(2 + n, 2 + 2 * n))
    cg, og = w.shape[1], w.shape[0] // groups
    parts = []
    for g in range(groups):
        cg_cols = cols[:, g * cg:(g + 1) * cg]
        wg = w[g * og:(g + 1) * og]
        # contract channels and kernel taps: (N, *out, O_g)
        parts.append(np.tensordot(cg_cols, wg, axes=((1,) + kaxes, (1,) + tuple(range(2, 2 + n)))))
    y = parts[0] if groups == 1 else np.concatenate(parts, axis=-1)
    y = np.moveaxis(y, -1, 1)
    if b:
        y = y + b[0].reshape((1, -1) + (1,) * n)
    return np.ascontiguousarray(y, dtype=x.dtype)


def _conv_backward(ctx, g):
    x, w = ctx.inputs[0], ctx.inputs[1]
    a = ctx.attrs
    geo = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
               groups=a["groups"])
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = conv_backward_input(g, w, tuple(ctx.metas[0].shape), **geo)
    if ctx.needs_input_grad[1]:
        gw = conv_backward_weight(g, x, tuple(ctx.metas[1].shape), **geo)
    if len(ctx.metas) > 2 and ctx.needs_input_grad[2]:
        gb = g.sum(dim=(0,) + tuple(range(2, g.dim())))
    return (gx, gw, gb) if len(ctx.metas) > 2 else (gx, gw)


convolution_op = register("convolution", infer=_conv_meta, eager=_conv_eager, saves=(0, 1),
                          backward=_conv_backward, grad_fn="ConvolutionBackward0")


def _conv_input_grad_eager(g, w, input_shape, stride, padding, dilation, groups):
    n = len(stride)
    k = w.shape[2:]
    N, C = input_shape[0], input_shape[1]
    og, cg = w.shape[0] // groups, w.shape[1]
    padded = [input_shape[2 + i] + 2 * padding[i] for i in range(n)]
    out = g.shape[2:]
    gxp = np.zeros((N, C) + tuple(padded), dtype=g.dtype)
    for grp in range(groups):
        gg = g[:, grp * og:(grp + 1) * og]
        wg = w[grp * og:(grp + 1) * og]
        # (N, *out, Cg, *k): every output position's contribution to each window tap
        cols = np.tensordot(gg, wg, axes=((1,), (0,)))
        cols = np.moveaxis(cols, 1 + n, 1)  # N Cg *out *k
        target = gxp[:, grp * cg:(grp + 1) * cg]
        for tap in np.ndindex(*k):
            sl = tuple(slice(tap[i] * dilation[i], tap[i] * dilation[i] + stride[i] * (out[i] - 1)
                             + 1, stride[i]) for i in range(n))
            target[(slice(None), slice(None)) + sl] += cols[(Ellipsis,) + tap]
    crop = tuple(slice(padding[i], padding[i] + input_shape[2 + i]) for i in range(n))
    return np.ascontiguousarray(gxp[(slice(None), slice(None)) + crop])


def _conv_weight_grad_eager(g, x, weight_shape, stride, padding, dilation, groups):
    n = len(stride)
    k = weight_shape[2:]
    out = g.shape[2:]
    cols = _windows(_pad_spatial(x, padding), out, k, stride, dilation)  # N C *out *k
    og, cg = weight_shape[0] // groups, weight_shape[1]
    oaxes = tuple(range(2, 2 + n))
    parts = []
    for grp in range(groups):
        gg = g[:, grp * og:(grp + 1) * og]
        cc = cols[:, grp * cg:(grp + 1) * cg]
        parts.append(np.tensordot(gg, cc, axes=((0,) + oaxes, (0,) + oaxes)))  # Og Cg *k
    return np.ascontiguousarray(np.concatenate(parts, axis=0) if groups > 1 else parts[0])


def _conv_input_grad_backward(ctx, gg):
    g, w = ctx.inputs
    a = ctx.attrs
    geo = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
               groups=a["groups"])
    d_g = apply(convolution_op, gg, w, **geo) if ctx.needs_input_grad[0] else None
    d_w = conv_backward_weight(g, gg, tuple(ctx.metas[1].shape), **geo) \
        if ctx.needs_input_grad[1] else None
    return d_g, d_w


def _conv_weight_grad_backward(ctx, gg):
    g, x = ctx.inputs
    a = ctx.attrs
    geo = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
               groups=a["groups"])
    d_g = apply(convolution_op, x, gg, **geo) if ctx.needs_input_grad[0] else None
    d_x = conv_backward_input(g, gg, tuple(ctx.metas[1].shape), **geo) \
        if ctx.needs_input_grad[1] else None
    return d_g, d_x


conv_backward_input_op = register(
    "conv_backward_input",
    infer=lambda g, w, input_shape, **geo: Meta(tuple(input_shape), g.dtype),
    eager=_conv_input_grad_eager, saves=(0, 1), backward=_conv_input_grad_backward)
conv_backward_weight_op = register(
    "conv_backward_weight",
    infer=lambda g, x, weight_shape, **geo: Meta(tuple(weight_shape), g.dtype),
    eager=_conv_weight_grad_eager, saves=(0, 1), backward=_conv_weight_grad_backward)


def conv_backward_input(g, w, input_shape, **geo):
    return apply(conv_backward_input_op, g, w, input_shape=tuple(input_shape), **geo)


def conv_backward_weight(g, x, weight_shape, **geo):
    return apply(conv_backward_weight_op, g, x, weight_shape=tuple(weight_shape), **geo)


def convolution(x, w, b, stride, padding, dilation, groups):
    inputs = (x, w) if b is None else (x, w, b)
    return apply(convolution_op, *inputs, stride=tuple(stride), padding=tuple(padding),
                 dilation=tuple(dilation), groups=int(groups))


# --- max pooling -------------------------------------------------------------------------------


def _pool_out(x_shape, kernel, stride, padding, dilation, ceil_mode):
    return tuple(conv_out_size(x_shape[2 + i], kernel[i], stride[i], padding[i], dilation[i],
                               ceil_mode) for i in range(len(kernel)))


def _check_pool(x, kernel, stride, padding, dilation, name):
    n = len(kernel)
    if len(x.shape) != n + 2:
        raise RuntimeError(f"{name}: Expected {n + 1}D or {n + 2}D input tensor, but got input "
                           f"of size [{', '.join(map(str, x.shape))}]")
    for i in range(n):
        if kernel[i] <= 0 or stride[i] <= 0:
            raise RuntimeError(f"{name}: kernel_size and stride must be greater than zero")
        if padding[i] > kernel[i] // 2:
            raise RuntimeError(f"pad should be at most half of effective kernel size, but got "
                               f"pad={padding[i]}, kernel_size={kernel[i]} and dilation="
                               f"{dilation[i]}")


def _max_pool_meta(x, kernel, stride, padding, dilation, ceil_mode):
    _check_pool(x, kernel, stride, padding, dilation, "max_pool")
    out = _pool_out(x.shape, kernel, stride, padding, dilation, ceil_mode)
    if any(o <= 0 for o in out):
        raise RuntimeError(f"Given input size: ({'x'.join(map(str, x.shape[1:]))}). Calculated "
                           f"output size: ({'x'.join(map(str, (x.shape[1],) + out))}). Output "
                           "size is too small")
    shape = tuple(x.shape[:2]) + out
    return Meta(shape, x.dtype), Meta(shape, _dtype.int64)


def _max_pool_eager(x, kernel, stride, padding, dilation, ceil_mode):
    n = len(kernel)
    spatial = x.shape[2:]
    out = _pool_out(x.shape, kernel, stride, padding, dilation, ceil_mode)
    need = [(out[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 for i in range(n)]
    extra = tuple(max(0, need[i] - spatial[i] - 2 * padding[i]) for i in range(n))
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    xp = _pad_spatial(x, padding, fill, extra)
    win = _windows(xp, out, kernel, stride, dilation)
    flat = win.reshape(win.shape[:2 + n] + (-1,))
    arg = np.argmax(flat, axis=-1)
    if x.dtype.kind == "f":  # a NaN in the window wins, as in torch
        nan_any = np.isnan(flat).any(axis=-1)
        if nan_any.any():
            arg = np.where(nan_any, np.argmax(np.isnan(flat), axis=-1), arg)
    vals = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
    # window tap -> position in the unpadded input, flattened over the spatial dims
    taps = np.unravel_index(arg, kernel)
    index = np.zeros(arg.shape, np.int64)
    for i in range(n):
        shape = [1] * (2 + n)
        shape[2 + i] = out[i]
        start = (np.arange(out[i]) * stride[i] - padding[i]).reshape(shape)
        index = index * spatial[i] + start + taps[i] * dilation[i]
    return np.ascontiguousarray(vals), index


def _max_pool_backward(ctx, g, _gi=None):
    idx = ctx.outputs[1]
    return (max_pool_backward(g, idx, tuple(ctx.metas[0].shape)),)


max_pool_op = register(
    "max_pool", infer=_max_pool_meta, eager=_max_pool_eager, save_outputs=True,
    backward=_max_pool_backward, num_outputs=2,
    grad_fn=lambda ctx: f"MaxPool{len(ctx.attrs['kernel'])}DWithIndicesBackward0")


def _max_pool_backward_eager(g, idx, input_shape):
    N, C = input_shape[:2]
    out = np.zeros((N * C, common.numel(input_shape[2:])), g.dtype)
    rows = np.repeat(np.arange(N * C), common.numel(g.shape[2:]))
    np.add.at(out, (rows, idx.reshape(-1)), g.reshape(-1))
    return out.reshape(input_shape)


def _max_pool_backward_backward(ctx, gg):
    idx = ctx.inputs[1]
    n, c = ctx.metas[0].shape[:2]
    picked = gg.reshape(n, c, -1).gather(2, idx.reshape(n, c, -1))
    return picked.reshape(tuple(ctx.metas[0].shape)), None


max_pool_backward_op = register(
    "max_pool_backward", infer=lambda g, idx, input_shape: Meta(tuple(input_shape), g.dtype),
    eager=_max_pool_backward_eager, saves=(1,), backward=_max_pool_backward_backward)


def max_pool_backward(g, idx, input_shape):
    return apply(max_pool_backward_op, g, idx, input_shape=tuple(input_shape))


def max_pool(x, kernel, stride, padding, dilation, ceil_mode):
    return apply(max_pool_op, x, kernel=tuple(kernel), stride=tuple(stride),
                 padding=tuple(padding), dilation=tuple(dilation), ceil_mode=bool(ceil_mode))


# --- average pooling ------------------------------------------------------------------------------


def _avg_divisors(x_shape, kernel, stride, padding, ceil_mode, count_include_pad,
                  divisor_override):
    """Per-output-position divisor, shaped (*out), float64."""
    if divisor_override:
        return None
    n = len(kernel)
    out = _pool_out(x_shape, kernel, stride, padding, (1,) * n, ceil_mode)
    div = np.ones((), np.float64)
    for i in range(n):
        start = np.arange(out[i]) * stride[i] - padding[i]
        end = np.minimum(start + kernel[i], x_shape[2 + i] + padding[i])
        if count_include_pad:
            size = end - start
        else:
            size = np.minimum(end, x_shape[2 + i]) - np.maximum(start, 0)
        shape = [1] * n
        shape[i] = out[i]
        div = div * size.reshape(shape)
    return div


def _avg_pool_meta(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    n = len(kernel)
    _check_pool(x, kernel, stride, padding, (1,) * n, "avg_pool")
    out = _pool_out(x.shape, kernel, stride, padding, (1,) * n, ceil_mode)
    if any(o <= 0 for o in out):
        raise RuntimeError(f"Given input size: ({'x'.join(map(str, x.shape[1:]))}). Calculated "
                           f"output size: ({'x'.join(map(str, (x.shape[1],) + out))}). Output "
                           "size is too small")
    return Meta(tuple(x.shape[:2]) + out, x.dtype)


def _avg_pool_eager(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    n = len(kernel)
    out = _pool_out(x.shape, kernel, stride, padding, (1,) * n, ceil_mode)
    need = [(out[i] - 1) * stride[i] + kernel[i] for i in range(n)]
    extra = tuple(max(0, need[i] - x.shape[2 + i] - 2 * padding[i]) for i in range(n))
    win = _windows(_pad_spatial(x, padding, 0.0, extra), out, kernel, stride, (1,) * n)
    total = win.sum(axis=tuple(range(2 + n, 2 + 2 * n)))
    div = _avg_divisors(x.shape, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override)
    return (total / (divisor_override if div is None else div)).astype(x.dtype)


def _avg_pool_backward_eager(g, input_shape, kernel, stride, padding, ceil_mode,
                             count_include_pad, divisor_override):
    n = len(kernel)
    out = g.shape[2:]
    div = _avg_divisors(input_shape, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override)
    gs = g / (divisor_override if div is None else div)
    need = [(out[i] - 1) * stride[i] + kernel[i] for i in range(n)]
    padded = [max(input_shape[2 + i] + 2 * padding[i], need[i]) for i in range(n)]
    gxp = np.zeros(tuple(input_shape[:2]) + tuple(padded), g.dtype)
    for tap in np.ndindex(*kernel):
        sl = tuple(slice(tap[i], tap[i] + stride[i] * (out[i] - 1) + 1, stride[i])
                   for i in range(n))
        gxp[(slice(None), slice(None)) + sl] += gs
    crop = tuple(slice(padding[i], padding[i] + input_shape[2 + i]) for i in range(n))
    return np.ascontiguousarray(gxp[(slice(None), slice(None)) + crop]).astype(g.dtype)


def _pool_attrs(ctx):
    return {k: ctx.attrs[k] for k in ("kernel", "stride", "padding", "ceil_mode",
                                      "count_include_pad", "divisor_override")}


avg_pool_op = register(
    "avg_pool", infer=_avg_pool_meta, eager=_avg_pool_eager,
    backward=lambda ctx, g: (apply(avg_pool_backward_op, g, input_shape=tuple(
        ctx.metas[0].shape), **_pool_attrs(ctx)),),
    grad_fn=lambda ctx: f"AvgPool{len(ctx.attrs['kernel'])}DBackward0")
avg_pool_backward_op = register(
    "avg_pool_backward",
    infer=lambda g, input_shape, **kw: Meta(tuple(input_shape), g.dtype),
    eager=_avg_pool_backward_eager,
    backward=lambda ctx, gg: (apply(avg_pool_op, gg, **_pool_attrs(ctx)),))


def avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return apply(avg_pool_op, x, kernel=tuple(kernel), stride=tuple(stride),
                 padding=tuple(padding), ceil_mode=bool(ceil_mode),
                 count_include_pad=bool(count_include_pad), divisor_override=divisor_override)


# --- softmax --------------------------------------------------------------------------------


def _softmax_eager(x, dim):
    e = np.exp(x - np.max(x, axis=dim, keepdims=True))
    return e / np.sum(e, axis=dim, keepdims=True)


def _log_softmax_eager(x, dim):
    shifted = x - np.max(x, axis=dim, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=dim, keepdims=True))


def _softmax_meta(x, dim):
    dt = x.dtype
    if not dt.is_floating_point:
        raise RuntimeError(f"\"softmax_lastdim_kernel_impl\" not implemented for '{_word(dt)}'")
    return common.same(x)


def _softmax_backward(ctx, g):
    y, dim = ctx.output, ctx.attrs["dim"]
    return (y * (g - (g * y).sum(dim, keepdim=True)),)


def _log_softmax_backward(ctx, g):
    y, dim = ctx.output, ctx.attrs["dim"]
    return (g - y.exp() * g.sum(dim, keepdim=True),)


softmax_op = register("softmax", infer=_softmax_meta, eager=_softmax_eager, save_outputs=True,
                      backward=_softmax_backward)
log_softmax_op = register("log_softmax", infer=_softmax_meta, eager=_log_softmax_eager,
                          save_outputs=True, backward=_log_softmax_backward)


def softmax(x, dim):
    return apply(softmax_op, x, dim=common.wrap_dim(dim, x.dim()))


def log_softmax(x, dim):
    return apply(log_softmax_op, x, dim=common.wrap_dim(dim, x.dim()))


# --- padding ------------------------------------------------------------------------------------

_NP_PAD_MODE = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
                "circular": "wrap"}


def _pad_widths(ndim, pads):
    """torch's flat (last-dim-first) pad list as numpy's per-dim (before, after) pairs."""
    widths = [(0, 0)] * ndim
    for i in range(len(pads) // 2):
        widths[ndim - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    return widths


def _pad_meta(x, pads, mode, value):
    widths = _pad_widths(len(x.shape), pads)
    if mode not in _NP_PAD_MODE:
        raise NotImplementedError(f"Unrecognised padding mode {mode}")
    if mode != "constant":
        n = len(pads) // 2
        if len(x.shape) not in (n + 1, n + 2):
            raise NotImplementedError(f"Only 2D, 3D, 4D, 5D padding with non-constant padding "
                                      f"are supported for now")
    shape = []
    for s, (a, b) in zip(x.shape, widths):
        if mode == "reflect" and (a >= s or b >= s) and (a or b):
            raise RuntimeError(f"Argument #4: Padding size should be less than the corresponding "
                               f"input dimension, but got: padding ({a}, {b}) at dimension "
                               f"{len(shape)} of input {list(x.shape)}")
        if s + a + b < 0 or (mode != "constant" and (a < 0 or b < 0)):
            raise RuntimeError("negative padding is only supported with mode='constant' and must "
                               "not remove the whole dimension")
        shape.append(s + a + b)
    return Meta(tuple(shape), x.dtype)


def _source_indices(size, before, after, mode):
    """For each padded position along one dim, the input index it reads (-1: a constant)."""
    src = np.arange(-before, size + after)
    if mode == "constant":
        return np.where((src >= 0) & (src < size), src, -1)
    if mode == "replicate":
        return np.clip(src, 0, size - 1)
    if mode == "circular":
        return src % size
    period = 2 * (size - 1) if size > 1 else 1  # reflect without repeating the edge
    m = np.abs(src) % period
    return np.where(m >= size, period - m, m)


def _pad_eager(x, pads, mode, value):
    out = x
    for axis, (a, b) in enumerate(_pad_widths(x.ndim, pads)):
        if a == 0 and b == 0:
            continue
        src = _source_indices(out.shape[axis], a, b, mode)
        taken = np.take(out, np.maximum(src, 0), axis=axis)
        if mode == "constant":
            shape = [1] * out.ndim
            shape[axis] = -1
            taken = np.where((src >= 0).reshape(shape), taken, np.asarray(value, x.dtype))
        out = taken
    return np.ascontiguousarray(out)


def _pad_backward_eager(g, input_shape, pads, mode):
    out = g
    for axis, (a, b) in reversed(list(enumerate(_pad_widths(g.ndim, pads)))):
        if a == 0 and b == 0:
            continue
        size = input_shape[axis]
        src = _source_indices(size, a, b, mode)
        shape = list(out.shape)
        shape[axis] = size
        acc = np.zeros(shape, g.dtype)
        keep = src >= 0
        moved = np.moveaxis(out, axis, 0)[keep]
        np.add.at(np.moveaxis(acc, axis, 0), src[keep], moved)
        out = acc
    return out


def _pad_grad_fn(ctx):
    mode, n = ctx.attrs["mode"], len(ctx.attrs["pads"]) // 2
    if mode == "constant":
        return "ConstantPadNdBackward0"
    return {"reflect": "ReflectionPad", "replicate": "ReplicationPad"}.get(
        mode, "CircularPad") + f"{n}DBackward0"


pad_op = register(
    "pad", infer=_pad_meta, eager=_pad_eager, grad_fn=_pad_grad_fn,
    backward=lambda ctx, g: (apply(pad_backward_op, g, input_shape=tuple(ctx.metas[0].shape),
                                   pads=ctx.attrs["pads"], mode=ctx.attrs["mode"]),))
pad_backward_op = register(
    "pad_backward", infer=lambda g, input_shape, pads, mode: Meta(tuple(input_shape), g.dtype),
    eager=_pad_backward_eager,
    backward=lambda ctx, gg: (apply(pad_op, gg, pads=ctx.attrs["pads"], mode=ctx.attrs["mode"],
                                    value=0.0),))


def pad(x, pads, mode="constant", value=0.0):
    return apply(pad_op, x, pads=tuple(pads), mode=mode, value=value)
