"""Neural-network primitives: N-d convolution (and its two gradient ops), max pooling with
indices, average pooling, softmax, log-softmax and padding.

Eager implementations are vectorised numpy: a strided window view of the padded input turns
convolution into one tensordot (im2col) and pooling into a reduction over the window axes.
Pooling ops take batched ``(N, C, *spatial)`` or unbatched ``(C, *spatial)`` input, as torch's
kernels do, so no reshape nodes appear in the graph.
"""
import functools

import numpy as np
from numpy.lib.stride_tricks import as_strided as _np_as_strided

from .. import _dtype
from .._meta import Meta
from ..tensor import Tensor
from . import common, elementwise as ew
from .shape import _view
from .registry import apply, register


def _sizes(shape):
    """torch's IntArrayRef formatting: ``[2, 3, 4]``."""
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _tname(dt):
    """The C type name torch prints in "Input type (...)" messages."""
    return {"float32": "float", "float64": "double", "int64": "long int", "bool": "bool"}[dt.name]


def _word(dt):
    """The ScalarType name torch prints in dtype errors."""
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def _half(v):
    """C++ integer ``v / 2`` (truncates toward zero)."""
    return int(v / 2)


# --- geometry -----------------------------------------------------------------------------------


def conv_out_size(size, k, stride, pad, dil):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def as_strided(x, shape, strides, writeable=False):
    """A read-only strided view of ``x`` (strides from its first element): numpy's
    ``as_strided``, which costs ~8 us in Python-level wrapping, made directly over a
    contiguous array's buffer (~2 us)."""
    if writeable or not x.flags.c_contiguous or not x.size:
        return _np_as_strided(x, shape, strides, writeable=writeable)
    view = np.ndarray(shape, x.dtype, buffer=x, strides=strides)
    view.flags.writeable = False
    return view


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


def _as_planes(x, n):
    """(*lead, *spatial) -> (L, 1, *spatial) with L the product of the leading dims."""
    spatial = x.shape[x.ndim - n:]
    return x.reshape((common.numel(x.shape[:x.ndim - n]), 1) + spatial)


# --- convolution ---------------------------------------------------------------------------------


def _conv_meta(x, w, *b, stride, padding, dilation, groups):
    n = len(stride)
    if b and b[0].dtype is not x.dtype:
        raise RuntimeError(f"Input type ({_tname(x.dtype)}) and bias type ({_tname(b[0].dtype)}) "
                           "should be the same")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    if any(s <= 0 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    if any(d < 0 for d in dilation):
        raise RuntimeError("dilation should be greater than zero")
    k = len(w.shape)
    if len(x.shape) != k:
        raise RuntimeError(f"Expected {k}-dimensional input for {k}-dimensional weight "
                           f"{_sizes(w.shape)}, but got {len(x.shape)}-dimensional input of size "
                           f"{_sizes(x.shape)} instead")
    if w.shape[0] < groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be at least {groups} at "
                           f"dimension 0, but got weight of size {_sizes(w.shape)} instead")
    if w.shape[0] % groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at "
                           f"dimension 0, but got weight of size [{_sizes(w.shape)}] instead")
    if x.shape[1] != w.shape[1] * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {_sizes(w.shape)}, expected "
            f"input{_sizes(x.shape)} to have {w.shape[1] * groups} channels, but got "
            f"{x.shape[1]} channels instead")
    if b and (len(b[0].shape) != 1 or b[0].shape[0] != w.shape[0]):
        raise RuntimeError(f"Given weight of size {_sizes(w.shape)}, expected bias to be "
                           f"1-dimensional with {w.shape[0]} elements, but got bias of size "
                           f"{_sizes(b[0].shape)} instead")
    padded = [x.shape[2 + i] + 2 * padding[i] for i in range(n)]
    eff_k = [dilation[i] * (w.shape[2 + i] - 1) + 1 for i in range(n)]
    if any(p < e for p, e in zip(padded, eff_k)):
        raise RuntimeError(
            f"Calculated padded input size per channel: ({' x '.join(map(str, padded))}). "
            f"Kernel size: ({' x '.join(map(str, eff_k))}). Kernel size can't be greater than "
            "actual input size")
    if any(d == 0 for d in dilation):
        raise RuntimeError(f"dilation should be greater than zero, but got {_sizes(dilation)}")
    if any(s == 0 for s in w.shape[2:]):
        if n == 2 and all(d == 1 for d in dilation):
            raise RuntimeError(f"kernel size should be greater than zero, but got kernel_height: "
                               f"{w.shape[2]} kernel_width: {w.shape[3]}")
        raise RuntimeError(f"kernel size should be greater than zero, but got "
                           f"{_sizes(w.shape[2:])}")
    if x.dtype is not w.dtype:
        raise RuntimeError(f"expected scalar type {_word(x.dtype)} but found {_word(w.dtype)}")
    if x.dtype is _dtype.bool_:
        kernel = "compute_columns3d" if n == 3 else "slow_conv2d_cpu"
        raise NotImplementedError(f"\"{kernel}\" not implemented for 'Bool'")
    out = [conv_out_size(x.shape[2 + i], w.shape[2 + i], stride[i], padding[i], dilation[i])
           for i in range(n)]
    return Meta((x.shape[0], w.shape[0]) + tuple(out), x.dtype)


def _columns(xp, out, k, stride, dil, batch_inner=False):
    """im2col: (N, C * prod(k), prod(out)) of the padded input, one column per window, rows
    ordered channel-major, so that a group's channels are a contiguous block of rows and the
    product with the flattened kernel is already in (N, O, *out) order. ``batch_inner``:
    (C * prod(k), N * prod(out)) instead, every window of the batch in one row."""
    n = len(k)
    s = xp.strides
    taps = tuple(k), tuple(s[2 + i] * dil[i] for i in range(n))
    windows = tuple(out), tuple(s[2 + i] * stride[i] for i in range(n))
    N, C = xp.shape[:2]
    if batch_inner:
        win = as_strided(xp, (C,) + taps[0] + (N,) + windows[0],
                         (s[1],) + taps[1] + (s[0],) + windows[1], writeable=False)
        return win.reshape(C * common.numel(k), N * common.numel(out))
    win = as_strided(xp, (N, C) + taps[0] + windows[0], s[:2] + taps[1] + windows[1],
                     writeable=False)
    return win.reshape(N, C * common.numel(k), common.numel(out))


def _grouped_product(w2, cols, groups):
    """(N, O, P): each group's (O_g, R_g) kernel rows times its block of column rows."""
    if groups == 1:
        return np.matmul(w2, cols)
    og, rg = w2.shape[0] // groups, cols.shape[1] // groups
    return np.concatenate([np.matmul(w2[g * og:(g + 1) * og], cols[:, g * rg:(g + 1) * rg])
                           for g in range(groups)], axis=1)


def _conv_eager(x, w, *b, stride, padding, dilation, groups):
    n = len(stride)
    k = w.shape[2:]
    out = tuple(conv_out_size(x.shape[2 + i], k[i], stride[i], padding[i], dilation[i])
                for i in range(n))
    cols = _columns(_pad_spatial(x, padding), out, k, stride, dilation)
    y = _grouped_product(w.reshape(w.shape[0], -1), cols, groups)
    if b:
        y += b[0].reshape(-1, 1)
    return np.ascontiguousarray(y.reshape(y.shape[:2] + out), dtype=x.dtype)


def _geo(attrs):
    return {k: attrs[k] for k in ("stride", "padding", "dilation", "groups")}


def _conv_backward(ctx, g):
    x, w = ctx.inputs[0], ctx.inputs[1]
    geo = _geo(ctx.attrs)
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = conv_backward_input(g, w, tuple(ctx.metas[0].shape), **geo)
    if ctx.needs_input_grad[1]:
        gw = conv_backward_weight(g, x, tuple(ctx.metas[1].shape), **geo)
    if len(ctx.metas) > 2 and ctx.needs_input_grad[2]:
        gb = g.sum(dim=(0,) + tuple(range(2, g.dim())))
    return (gx, gw, gb) if len(ctx.metas) > 2 else (gx, gw)


def _conv_backward_np(ctx, g):
    x, w = ctx.inputs[0]._data, ctx.inputs[1]._data
    geo = _geo(ctx.attrs)
    need = ctx.needs_input_grad
    gx = _conv_input_grad_eager(g, w, tuple(ctx.metas[0].shape), **geo) if need[0] else None
    gw = _conv_weight_grad_eager(g, x, tuple(ctx.metas[1].shape), **geo) if need[1] else None
    if len(ctx.metas) == 2:
        return gx, gw
    gb = np.sum(g, axis=(0,) + tuple(range(2, g.ndim))) if need[2] else None
    return gx, gw, gb


convolution_op = register("convolution", infer=_conv_meta, eager=_conv_eager, saves=(0, 1),
                          backward=_conv_backward, eager_backward=_conv_backward_np,
                          grad_fn="ConvolutionBackward0", cache_infer=True)


def _conv_input_grad_eager(g, w, input_shape, stride, padding, dilation, groups):
    """The convolution's input gradient as one correlation: ``g`` spread out by the stride
    and framed by the dilated kernel's extent, against the flipped kernel with input and
    output channels swapped (per group)."""
    n = len(stride)
    k = w.shape[2:]
    N, O = g.shape[:2]
    out = g.shape[2:]
    og, cg = w.shape[0] // groups, w.shape[1]
    padded = tuple(input_shape[2 + i] + 2 * padding[i] for i in range(n))
    crop = tuple(slice(padding[i], padding[i] + input_shape[2 + i]) for i in range(n))
    if N * groups * cg * common.numel(k) * common.numel(out) <= _SCATTER_LIMIT:
        # small: each tap's share as one product, added into place by one bincount (the
        # correlation's columns below would copy a larger, mostly zero, frame)
        gxp = _conv_input_grad_scatter(g, w, padded, stride, dilation, groups)
        return np.ascontiguousarray(gxp[(slice(None),) * 2 + crop])
    if N * O * common.numel(k) * common.numel(padded) > 1 << 20:
        # large: the correlation's columns would be a big copy; add each tap's share instead
        return np.ascontiguousarray(_conv_input_grad_taps(g, w, padded, stride, dilation,
                                                          groups)[(slice(None),) * 2 + crop])
    reach = tuple(dilation[i] * (k[i] - 1) for i in range(n))
    gf = np.zeros((N, O) + tuple(padded[i] + reach[i] for i in range(n)), g.dtype)
    gf[(slice(None), slice(None)) + tuple(
        slice(reach[i], reach[i] + stride[i] * (out[i] - 1) + 1, stride[i])
        for i in range(n))] = g
    cols = _columns(gf, padded, k, (1,) * n, dilation)  # N, O * K, prod(padded)
    flipped = w[(slice(None), slice(None)) + (slice(None, None, -1),) * n]
    # per group: (C_g, O_g * K) rows, stacked over the groups
    wt = flipped.reshape((groups, og, cg) + tuple(k)).swapaxes(1, 2).reshape(
        groups * cg, og * common.numel(k))
    gxp = _grouped_product(wt, cols, groups).reshape((N, groups * cg) + padded)
    return np.ascontiguousarray(gxp[(slice(None), slice(None)) + crop], dtype=g.dtype)


# products (image, input channel, tap, output position) at most: past ~128 KB of float64
# shares, each call's fresh arrays are mapped and page-faulted anew, and the columns win
_SCATTER_LIMIT = 1 << 14


def _conv_input_grad_scatter(g, w, padded, stride, dilation, groups):
    """The padded input gradient: the transposed kernel times ``g`` gives every (input
    channel, tap, output position)'s share, and one bincount adds them at their input
    positions (in float64, then rounded once)."""
    k = w.shape[2:]
    N, O = g.shape[:2]
    out = g.shape[2:]
    og, cg = O // groups, w.shape[1]
    g3 = g.reshape((N, O, common.numel(out)))
    # (the transposed kernel made contiguous: numpy's matmul over a batch runs BLAS per
    # image only then)
    if groups == 1:
        cols = np.matmul(np.ascontiguousarray(w.reshape(O, -1).T), g3)  # N, C * K, P
    else:
        cols = np.concatenate([np.matmul(
            np.ascontiguousarray(w[grp * og:(grp + 1) * og].reshape(og, -1).T),
            g3[:, grp * og:(grp + 1) * og]) for grp in range(groups)], axis=1)
    C = groups * cg
    index = _scatter_index(N, C, tuple(padded), tuple(k), tuple(out), tuple(stride),
                           tuple(dilation))
    # (float64 weights: bincount's own conversion of float32 ones is several times slower)
    gxp = np.bincount(index, weights=cols.reshape(-1).astype(np.float64),
                      minlength=N * C * common.numel(padded))
    return gxp.reshape((N, C) + tuple(padded)).astype(g.dtype)


@functools.lru_cache(maxsize=64)
def _scatter_index(N, C, padded, k, out, stride, dilation):
    """The flat position in the padded (N, C, *padded) input of every (image, channel, tap,
    output position), in that order (read-only, cached per geometry)."""
    n = len(k)
    row = [1] * n
    for i in range(n - 1, 0, -1):
        row[i - 1] = row[i] * padded[i]
    dims = 2 + 2 * n
    pos = (np.arange(N * C, dtype=np.int64) * common.numel(padded)).reshape(
        (N * C,) + (1,) * (dims - 2))
    for i in range(n):
        tap = [1] * (dims - 1)
        tap[1 + i] = k[i]
        at = [1] * (dims - 1)
        at[1 + n + i] = out[i]
        pos = pos + (np.arange(k[i], dtype=np.int64) * (dilation[i] * row[i])).reshape(tap) \
            + (np.arange(out[i], dtype=np.int64) * (stride[i] * row[i])).reshape(at)
    index = np.ascontiguousarray(pos.reshape(-1))
    index.flags.writeable = False
    return index


def _conv_input_grad_taps(g, w, padded, stride, dilation, groups):
    """The padded input gradient as the sum over kernel taps of each tap's share: the
    transposed kernel times ``g`` (col2im), added into strided slices."""
    n = len(stride)
    k = w.shape[2:]
    N, O = g.shape[:2]
    out = g.shape[2:]
    og, cg = O // groups, w.shape[1]
    g3 = g.reshape((N, O, common.numel(out)))
    gxp = np.zeros((N, groups * cg) + tuple(padded), g.dtype)
    for grp in range(groups):
        wg = w[grp * og:(grp + 1) * og].reshape(og, -1)  # O_g, C_g * K
        cols = np.matmul(wg.T, g3[:, grp * og:(grp + 1) * og])  # N, C_g * K, P
        cols = cols.reshape((N, cg) + tuple(k) + tuple(out))
        target = gxp[:, grp * cg:(grp + 1) * cg]
        for tap in np.ndindex(*k):
            sl = tuple(slice(tap[i] * dilation[i],
                             tap[i] * dilation[i] + stride[i] * (out[i] - 1) + 1, stride[i])
                       for i in range(n))
            target[(slice(None), slice(None)) + sl] += cols[(slice(None), slice(None)) + tap]
    return gxp


def _conv_weight_grad_eager(g, x, weight_shape, stride, padding, dilation, groups):
    n = len(stride)
    k = weight_shape[2:]
    out = g.shape[2:]
    N, O = g.shape[:2]
    # one product over every window of the batch: (O, N * P) times (N * P, C * K)
    cols = _columns(_pad_spatial(x, padding), out, k, stride, dilation, batch_inner=True)
    g2 = g.reshape((N, O, common.numel(out)))
    g2 = g2[0] if N == 1 else g2.transpose(1, 0, 2).reshape(O, -1)
    og, rg = weight_shape[0] // groups, cols.shape[0] // groups
    parts = [np.matmul(g2[grp * og:(grp + 1) * og], cols[grp * rg:(grp + 1) * rg].T)
             for grp in range(groups)]
    res = np.concatenate(parts, axis=0) if groups > 1 else parts[0]
    return np.ascontiguousarray(res.reshape(tuple(weight_shape)), dtype=g.dtype)


def _conv_input_grad_backward(ctx, gg):
    g, w = ctx.inputs
    geo = _geo(ctx.attrs)
    d_g = None
    if ctx.needs_input_grad[0]:
        d_g = apply(convolution_op, gg, w, **geo)
        # a transposed convolution's output_padding (smaller than the dilation but not the
        # stride) can leave room for more windows than g has: keep g's positions
        if tuple(d_g.shape) != tuple(ctx.metas[0].shape):
            d_g = d_g[(slice(None), slice(None))
                      + tuple(slice(0, s) for s in ctx.metas[0].shape[2:])]
    d_w = conv_backward_weight(g, gg, tuple(ctx.metas[1].shape), **geo) \
        if ctx.needs_input_grad[1] else None
    return d_g, d_w


def _conv_weight_grad_backward(ctx, gg):
    g, x = ctx.inputs
    geo = _geo(ctx.attrs)
    d_g = apply(convolution_op, x, gg, **geo) if ctx.needs_input_grad[0] else None
    d_x = conv_backward_input(g, gg, tuple(ctx.metas[1].shape), **geo) \
        if ctx.needs_input_grad[1] else None
    return d_g, d_x


conv_backward_input_op = register(
    "conv_backward_input",
    infer=lambda g, w, input_shape, **geo: Meta(tuple(input_shape), g.dtype),
    eager=_conv_input_grad_eager, saves=(0, 1), backward=_conv_input_grad_backward,
    grad_fn=lambda ctx: ctx.attrs.get("_name", "ConvBackwardInputBackward0"))
conv_backward_weight_op = register(
    "conv_backward_weight",
    infer=lambda g, x, weight_shape, **geo: Meta(tuple(weight_shape), g.dtype),
    eager=_conv_weight_grad_eager, saves=(0, 1), backward=_conv_weight_grad_backward)


def conv_backward_input(g, w, input_shape, **geo):
    return apply(conv_backward_input_op, g, w, input_shape=tuple(input_shape), **geo)


def conv_transpose(x, w, b, stride, padding, output_padding, dilation, groups):
    """The transposed convolution: the input gradient of the convolution with the same
    geometry, plus the bias (the last node is named as torch names it)."""
    n = len(stride)
    out = tuple((x.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                + dilation[i] * (w.shape[2 + i] - 1) + output_padding[i] + 1 for i in range(n))
    geo = dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
               groups=int(groups))
    shape = (x.shape[0], w.shape[1] * groups) + out
    if b is None:
        return apply(conv_backward_input_op, x, w, input_shape=shape, _name="ConvolutionBackward0",
                     _none_edges=1, **geo)
    y = apply(conv_backward_input_op, x, w, input_shape=shape, **geo)
    return apply(ew.add_op, y, b.reshape((1, -1) + (1,) * n), _name="ConvolutionBackward0")


def conv_backward_weight(g, x, weight_shape, **geo):
    return apply(conv_backward_weight_op, g, x, weight_shape=tuple(weight_shape), **geo)


def convolution(x, w, b, stride, padding, dilation, groups):
    inputs = (x, w) if b is None else (x, w, b)
    extra = {} if b is not None else {"_none_edges": 1}  # torch's node keeps a bias edge
    return apply(convolution_op, *inputs, stride=tuple(stride), padding=tuple(padding),
                 dilation=tuple(dilation), groups=int(groups), **extra)


# --- pooling geometry and checks ----------------------------------------------------------------


def pool_out_size(size, k, pad, stride, dil, ceil_mode):
    """One spatial output size, with the argument checks torch makes while computing it."""
    if stride == 0:
        raise RuntimeError("stride should not be zero")
    if pad < 0:
        raise RuntimeError(f"pad must be non-negative, but got pad: {pad}")
    if pad > _half((k - 1) * dil + 1):
        raise RuntimeError(f"pad should be at most half of effective kernel size, but got "
                           f"pad={pad}, kernel_size={k} and dilation={dil}")
    out = (size + 2 * pad - dil * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:  # the last window must start inside
        out -= 1
    return out


def _pool_out(x_shape, kernel, stride, padding, dilation, ceil_mode):
    n = len(kernel)
    spatial = x_shape[len(x_shape) - n:]
    return tuple(pool_out_size(spatial[i], kernel[i], padding[i], stride[i], dilation[i],
                               ceil_mode) for i in range(n))


def _labelled(prefix, values):
    """``kT: 1 kH: 2 kW: 3`` (the last len(values) of T, H, W)."""
    names = ("T", "H", "W")[3 - len(values):]
    return " ".join(f"{prefix}{a}: {v}" for a, v in zip(names, values))


def _pool_shape_check(x, kernel, stride, padding, dilation, out, kind):
    """torch's pool2d/pool3d shape checks (``kind`` is "max" or "avg")."""
    n = len(kernel)
    shape = tuple(x.shape)
    if any(k <= 0 for k in kernel):
        raise RuntimeError("kernel size should be greater than zero, but got "
                           + _labelled("k", kernel))
    if any(s <= 0 for s in stride):
        raise RuntimeError("stride should be greater than zero, but got " + _labelled("d", stride))
    if any(d <= 0 for d in dilation):
        raise RuntimeError("dilation should be greater than zero, but got "
                           + _labelled("dilation", dilation))
    non_batch = shape[len(shape) - n - 1:]
    if n == 2:
        if len(shape) not in (3, 4) or any(s == 0 for s in non_batch):
            raise RuntimeError("Expected 3D or 4D (batch mode) tensor with optional 0 dim batch "
                               f"size for input, but got:{_sizes(shape)}")
    elif any(s == 0 for s in non_batch):
        fn = "max_pool3d_with_indices_out_cpu_template" if kind == "max" else "avg_pool3d"
        raise RuntimeError(f"{fn}(): Expected input's non-batch dimensions to have positive "
                           f"length, but input has a shape of {_sizes(shape)} and non-batch "
                           "dimension 0 has length zero!")
    spatial = shape[len(shape) - n:]
    if n == 3 and kind == "avg" and any(s < k for s, k in zip(spatial, kernel)):
        raise RuntimeError(f"input image (T: {spatial[0]} H: {spatial[1]} W: {spatial[2]}) smaller "
                           f"than kernel size (kT: {kernel[0]} kH: {kernel[1]} kW: {kernel[2]})")
    if any(p > _half(k) for p, k in zip(padding, kernel)):
        if n == 2:
            raise RuntimeError(f"pad should be smaller than or equal to half of kernel size, but "
                               f"got padW = {padding[1]}, padH = {padding[0]}, kW = {kernel[1]}, "
                               f"kH = {kernel[0]}")
        raise RuntimeError(f"pad should be smaller than or equal to half of kernel size, but got "
                           f"kT: {kernel[0]} kW: {kernel[2]} kH: {kernel[1]} padT: {padding[0]} "
                           f"padW: {padding[2]} padH: {padding[1]}")
    if any(o < 1 for o in out):
        planes = non_batch[0]
        raise RuntimeError(f"Given input size: ({'x'.join(map(str, non_batch))}). Calculated "
                           f"output size: ({'x'.join(map(str, (planes,) + tuple(out)))}). Output "
                           "size is too small")


def _lowest(np_dtype):
    return -np.inf if np_dtype.kind == "f" else np.iinfo(np_dtype).min


def _covered(spatial, out, kernel, stride, padding, dilation):
    """Per spatial dim, which output positions have at least one window tap inside the input."""
    res = []
    for i in range(len(kernel)):
        start = np.arange(out[i]) * stride[i] - padding[i]
        taps = start[:, None] + np.arange(kernel[i])[None, :] * dilation[i]
        res.append(((taps >= 0) & (taps < spatial[i])).any(axis=1))
    return res


def _empty_windows(spatial, out, kernel, stride, padding, dilation):
    """Boolean (*out) mask of windows lying entirely in the padding, or None if there are none."""
    if not any(padding):
        return None  # without padding every window starts inside the input
    cov = _covered(spatial, out, kernel, stride, padding, dilation)
    if all(c.all() for c in cov):
        return None
    full = np.ones((), bool)
    for i, c in enumerate(cov):
        shape = [1] * len(cov)
        shape[i] = -1
        full = full & c.reshape(shape)
    return ~full


# --- max pooling -------------------------------------------------------------------------------


def _max_pool_check(x, kernel, stride, padding, dilation, ceil_mode):
    """Shape rule for batched or unbatched input, with torch's errors."""
    n = len(kernel)
    if len(x.shape) not in (n + 1, n + 2):
        raise RuntimeError(f"non-empty {n + 1}D or {n + 2}D (batch mode) tensor expected for input")
    out = _pool_out(x.shape, kernel, stride, padding, dilation, ceil_mode)
    _pool_shape_check(x, kernel, stride, padding, dilation, out, "max")
    if x.dtype is _dtype.bool_:
        raise NotImplementedError(f"\"max_pool{n}d\" not implemented for 'Bool'")
    shape = tuple(x.shape[:len(x.shape) - n]) + out
    return Meta(shape, x.dtype), Meta(shape, _dtype.int64)


def _max_pool_meta(x, kernel, stride, padding, dilation, ceil_mode):
    # the op itself takes (N, C, *spatial); max_pool() below adds the batch dim when missing
    metas = _max_pool_check(x, kernel, stride, padding, dilation, ceil_mode)
    if len(x.shape) != len(kernel) + 2:
        raise RuntimeError("the max_pool op takes batched input; call ops.nn.max_pool")
    return metas


def _max_pool_eager(x, kernel, stride, padding, dilation, ceil_mode):
    n = len(kernel)
    lead, spatial = x.shape[:x.ndim - n], x.shape[x.ndim - n:]
    out, extra = _pool_geometry(spatial, kernel, stride, padding, dilation, ceil_mode)
    planes = _as_planes(x, n)
    L, K = planes.shape[0], common.numel(kernel)
    scanned = None
    if not any(padding) and not any(extra) and planes.size:
        scanned = _max_pool_scan(planes, out, kernel, stride, dilation)
    if scanned is not None:
        return scanned[0].reshape(lead + out), scanned[1].reshape(lead + out)
    fill = _lowest(x.dtype)
    win = _windows(_pad_spatial(planes, padding, fill, extra), out, kernel, stride, dilation)
    flat = win.reshape((L,) + out + (K,))
    if not any(padding) and not any(extra):
        arg = np.argmax(flat, axis=-1)  # every tap lies inside the input
    else:
        valid = _pad_spatial(np.ones((1, 1) + spatial, bool), padding, False, extra)
        vflat = _windows(valid, out, kernel, stride, dilation).reshape(out + (K,))
        # padding taps never win, not even against -inf inputs: the first valid maximum does
        if vflat.all():
            arg = np.argmax(flat, axis=-1)
        else:
            masked = np.where(vflat, flat, fill)
            hit = vflat & (flat == masked.max(axis=-1, keepdims=True))
            arg = np.argmax(hit, axis=-1)
    if x.dtype.kind == "f":
        nan = np.isnan(flat)
        if nan.any():  # torch keeps scanning past a NaN: the last NaN in the window wins
            has = nan.any(axis=-1)
            arg = np.where(has, K - 1 - np.argmax(nan[..., ::-1], axis=-1), arg)
    # the winners, picked from the flat (L * out, K) rows by their flat position
    vals = flat.reshape(-1)[np.arange(0, arg.size * K, K).reshape(arg.shape) + arg]
    taps = divmod(arg, kernel[1]) if n == 2 else np.unravel_index(arg, kernel)
    empty = _empty_windows(spatial, out, kernel, stride, padding, dilation)
    index = np.zeros(arg.shape, np.int64)
    for i in range(n):
        shape = [1] * (1 + n)
        shape[1 + i] = out[i]
        start = (np.arange(out[i]) * stride[i] - padding[i]).reshape(shape)
        pos = start + taps[i] * dilation[i]
        if empty is not None:
            # an all-padding window reports its first in-range start, as torch does
            first = np.where(start < 0, start + (-start + dilation[i] - 1) // dilation[i]
                             * dilation[i], start)
            pos = np.where(empty, first, pos)
        index = index * spatial[i] + pos
    return (np.ascontiguousarray(vals.reshape(lead + out)),
            np.ascontiguousarray(index.reshape(lead + out)))


@functools.lru_cache(maxsize=256)
def _pool_geometry(spatial, kernel, stride, padding, dilation, ceil_mode):
    """(output sizes, the rows/columns past the input the last windows reach) of a pooling
    (the shape rule checked the arguments), per geometry."""
    n = len(kernel)
    out = _pool_out(spatial, kernel, stride, padding, dilation, ceil_mode)
    need = [(out[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 for i in range(n)]
    return out, tuple(max(0, need[i] - spatial[i] - 2 * padding[i]) for i in range(n))


@functools.lru_cache(maxsize=64)
def _kernel_taps(kernel):
    """Every tap of a kernel, in row-major order."""
    return tuple(np.ndindex(*kernel))


def _max_pool_scan(planes, out, kernel, stride, dilation):
    """Max pooling without padding, tap by tap over every window at once: the maximum, and
    the first tap holding it (torch's scan keeps the first maximum). (values, flat input
    indices), both (L, 1, *out); None when a NaN makes torch's scan order matter."""
    n = len(kernel)
    spatial = planes.shape[2:]
    win = _windows(planes, out, kernel, stride, dilation)  # (L, 1, *out, *kernel) view
    taps = _kernel_taps(tuple(kernel))
    views = [win[(Ellipsis,) + t] for t in taps]
    if len(views) == 1:
        best = views[0].copy()
    else:
        best = np.maximum(views[0], views[1])
        for v in views[2:]:
            np.maximum(best, v, out=best)
    if planes.dtype.kind == "f" and np.isnan(best).any():
        return None
    # the winning tap = how many leading taps are below the maximum
    below = views[0] != best
    arg = below.astype(np.intp)
    for v in views[1:-1]:
        below &= v != best
        arg += below
    start, offsets = _scan_positions(tuple(spatial), tuple(out), tuple(kernel), tuple(stride),
                                     tuple(dilation))
    return best, start + offsets[arg]


@functools.lru_cache(maxsize=256)
def _scan_positions(spatial, out, kernel, stride, dilation):
    """(flat input index of every window's first tap, (*out); flat offset of every tap): a
    max-pooling index is the sum of its window's start and its winning tap's offset. Cached
    per geometry, read-only."""
    n = len(kernel)
    row = [1] * n
    for i in range(n - 1, 0, -1):
        row[i - 1] = row[i] * spatial[i]
    start = np.zeros((), np.int64)
    for i in range(n):
        shape = [1] * n
        shape[i] = out[i]
        start = start + (np.arange(out[i], dtype=np.int64) * (stride[i] * row[i])).reshape(shape)
    offsets = np.array([sum(t[i] * dilation[i] * row[i] for i in range(n))
                        for t in np.ndindex(*kernel)], np.int64)
    start.flags.writeable = offsets.flags.writeable = False
    return start, offsets


def _pool_geo(attrs):
    return {k: attrs[k] for k in ("kernel", "stride", "padding", "dilation")}


def _max_pool_backward(ctx, g, _gi=None):
    idx = ctx.outputs[1]
    a = ctx.attrs
    shape = tuple(ctx.metas[0].shape)
    out = tuple(ctx.out_metas[0].shape)[2:]
    geo = {}
    if _empty_windows(shape[2:], out, **_pool_geo(a)) is not None:
        geo = _pool_geo(a)  # only then does the backward need the window geometry
    return (max_pool_backward(g, idx, shape, **geo),)


def _max_pool_backward_np(ctx, g, _gi=None):
    shape = tuple(ctx.metas[0].shape)
    out = tuple(ctx.out_metas[0].shape)[2:]
    geo = {}
    if _empty_windows(shape[2:], out, **_pool_geo(ctx.attrs)) is not None:
        geo = _pool_geo(ctx.attrs)
    return (_max_pool_backward_eager(g, ctx.outputs[1]._data, shape,
                                     disjoint=_disjoint_windows(**ctx.attrs), **geo),)


max_pool_op = register(
    "max_pool", infer=_max_pool_meta, eager=_max_pool_eager, save_outputs=True,
    backward=_max_pool_backward, num_outputs=2, eager_backward=_max_pool_backward_np,
    cache_infer=True,
    grad_fn=lambda ctx: f"MaxPool{len(ctx.attrs['kernel'])}DWithIndicesBackward0")


def _max_pool_backward_eager(g, idx, input_shape, disjoint=False, **geo):
    spatial = tuple(input_shape[2:])
    L, P = input_shape[0] * input_shape[1], common.numel(spatial)
    Q = common.numel(g.shape[2:])  # not -1: L may be 0 (an empty batch)
    gi = g.reshape(L, Q)
    ii = idx.reshape(L, Q)
    empty = _empty_windows(spatial, g.shape[2:], **geo) if geo else None
    if empty is not None:  # windows entirely in the padding take no input: no gradient
        keep = ~empty.reshape(-1)
        gi = np.where(keep, gi, 0)
        ii = np.where(keep, ii, 0)
    flat = (np.arange(L)[:, None] * P + ii).reshape(-1)
    if disjoint and empty is None:
        # every input position wins at most one window: the gradients need no sums (the same
        # values as bincount's, which adds them to zeros: + 0 turns -0 into 0 as that does)
        res = np.zeros(L * P, g.dtype)
        res[flat] = gi.reshape(-1) + g.dtype.type(0)
        return res.reshape(input_shape)
    res = np.bincount(flat, weights=gi.reshape(-1), minlength=L * P)
    return res.reshape(input_shape).astype(g.dtype)


def _disjoint_windows(kernel, stride, dilation, **_):
    """Whether no two pooling windows share an input position: each stride is at least the
    window's extent."""
    return all(stride[i] >= dilation[i] * (kernel[i] - 1) + 1 for i in range(len(kernel)))


def _max_pool_backward_backward(ctx, gg):
    idx = ctx.inputs[1]
    a = dict(ctx.attrs)
    in_shape, out_shape = tuple(a.pop("input_shape")), tuple(ctx.metas[0].shape)
    L, P = in_shape[0] * in_shape[1], common.numel(in_shape[2:])
    flat_idx = idx.reshape(L, common.numel(out_shape[2:]))  # not -1: L may be 0
    empty = _empty_windows(in_shape[2:], out_shape[2:], **a) if a else None
    if empty is not None:
        flat_idx = flat_idx.clamp(0, max(P - 1, 0))
    picked = gg.reshape(L, P).gather(1, flat_idx)
    if empty is not None:
        keep = Tensor._wrap((~empty).reshape(1, -1).astype(gg.dtype.np))
        picked = picked * keep
    return picked.reshape(out_shape), None


max_pool_backward_op = register(
    "max_pool_backward",
    infer=lambda g, idx, input_shape, **geo: Meta(tuple(input_shape), g.dtype),
    eager=_max_pool_backward_eager, saves=(1,), backward=_max_pool_backward_backward)


def max_pool_backward(g, idx, input_shape, **geo):
    """Scatter ``g`` to the argmax positions ``idx``. The window geometry (kernel, stride,
    padding, dilation) is only needed when some windows lie entirely in the padding."""
    return apply(max_pool_backward_op, g, idx, input_shape=tuple(input_shape),
                 **{k: tuple(v) for k, v in geo.items()})


def max_pool(x, kernel, stride, padding, dilation, ceil_mode):
    """(values, indices) of max pooling over the last len(kernel) dims of a batched
    (N, C, *spatial) or unbatched (C, *spatial) tensor."""
    attrs = dict(kernel=tuple(kernel), stride=tuple(stride), padding=tuple(padding),
                 dilation=tuple(dilation), ceil_mode=bool(ceil_mode))
    if x.dim() == len(kernel) + 1:
        _max_pool_check(Meta(tuple(x.shape), x.dtype), **attrs)
        vals, idx = apply(max_pool_op, x.unsqueeze(0), **attrs)
        return (_unbatch(vals, f"MaxPool{len(kernel)}DWithIndicesBackward0"),
                idx.squeeze(0))
    return apply(max_pool_op, x, **attrs)


def _unbatch(y, name):
    """Drop the batch dim a pooling op added to unbatched input; the view's autograd node
    takes the pooling op's name, as torch's pooling of unbatched input reports it."""
    return _view(y, tuple(y.shape)[1:], True, name)


# --- average pooling ------------------------------------------------------------------------------


def _avg_divisors(spatial, kernel, stride, padding, ceil_mode, count_include_pad,
                  divisor_override):
    """Per-output-position divisor, shaped (*out), float64 (None with divisor_override)."""
    if divisor_override:
        return None
    n = len(kernel)
    out = tuple(pool_out_size(spatial[i], kernel[i], padding[i], stride[i], 1, ceil_mode)
                for i in range(n))
    div = np.ones((), np.float64)
    for i in range(n):
        start = np.arange(out[i]) * stride[i] - padding[i]
        end = np.minimum(start + kernel[i], spatial[i] + padding[i])
        if count_include_pad:
            size = end - start
        else:
            size = np.minimum(end, spatial[i]) - np.maximum(start, 0)
        shape = [1] * n
        shape[i] = out[i]
        div = div * size.reshape(shape)
    return div


def _avg_pool_check(x, kernel, stride, padding, ceil_mode, count_include_pad,
                    divisor_override):
    """Shape rule for batched or unbatched input, with torch's errors."""
    n = len(kernel)
    nd = len(x.shape)
    if n == 3 and nd not in (4, 5):
        raise RuntimeError("non-empty 4D or 5D (batch mode) tensor expected for input")
    if n == 2 and nd < 3:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-nd}, {nd - 1}], "
                         "but got -3)")
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    out = _pool_out(x.shape, kernel, stride, padding, (1,) * n, ceil_mode)
    _pool_shape_check(x, kernel, stride, padding, (1,) * n, out, "avg")
    if x.dtype is _dtype.bool_:
        raise NotImplementedError(f"\"{'avg_pool3d_out_frame' if n == 3 else 'avg_pool2d'}\" "
                                  "not implemented for 'Bool'")
    return Meta(tuple(x.shape[:nd - n]) + out, x.dtype)


def _avg_pool_meta(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    # the op itself takes (N, C, *spatial); avg_pool() below adds the batch dim when missing
    meta = _avg_pool_check(x, kernel, stride, padding, ceil_mode, count_include_pad,
                           divisor_override)
    if len(x.shape) != len(kernel) + 2:
        raise RuntimeError("the avg_pool op takes batched input; call ops.nn.avg_pool")
    return meta


def _avg_pool_eager(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    n = len(kernel)
    lead, spatial = x.shape[:x.ndim - n], x.shape[x.ndim - n:]
    out = _pool_out(x.shape, kernel, stride, padding, (1,) * n, ceil_mode)
    need = [(out[i] - 1) * stride[i] + kernel[i] for i in range(n)]
    extra = tuple(max(0, need[i] - spatial[i] - 2 * padding[i]) for i in range(n))
    planes = _as_planes(x, n)
    win = _windows(_pad_spatial(planes, padding, 0, extra), out, kernel, stride, (1,) * n)
    total = win.sum(axis=tuple(range(2 + n, 2 + 2 * n)))
    div = _avg_divisors(spatial, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override)
    res = total / (divisor_override if div is None else div)
    return np.ascontiguousarray(res.reshape(lead + out).astype(x.dtype))


def _avg_pool_backward_eager(g, input_shape, kernel, stride, padding, ceil_mode,
                             count_include_pad, divisor_override):
    n = len(kernel)
    spatial = tuple(input_shape[len(input_shape) - n:])
    out = g.shape[g.ndim - n:]
    div = _avg_divisors(spatial, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override)
    gs = _as_planes(g / (divisor_override if div is None else div), n)
    need = [(out[i] - 1) * stride[i] + kernel[i] for i in range(n)]
    padded = [max(spatial[i] + 2 * padding[i], need[i]) for i in range(n)]
    gxp = np.zeros((gs.shape[0], 1) + tuple(padded), gs.dtype)
    for tap in np.ndindex(*kernel):
        sl = tuple(slice(tap[i], tap[i] + stride[i] * (out[i] - 1) + 1, stride[i])
                   for i in range(n))
        gxp[(slice(None), slice(None)) + sl] += gs
    crop = tuple(slice(padding[i], padding[i] + spatial[i]) for i in range(n))
    return np.ascontiguousarray(gxp[(slice(None), slice(None)) + crop].reshape(input_shape),
                                dtype=g.dtype)


def _avg_attrs(ctx):
    return {k: ctx.attrs[k] for k in ("kernel", "stride", "padding", "ceil_mode",
                                      "count_include_pad", "divisor_override")}


avg_pool_op = register(
    "avg_pool", infer=_avg_pool_meta, eager=_avg_pool_eager,
    backward=lambda ctx, g: (apply(avg_pool_backward_op, g, input_shape=tuple(
        ctx.metas[0].shape), **_avg_attrs(ctx)),),
    grad_fn=lambda ctx: f"AvgPool{len(ctx.attrs['kernel'])}DBackward0")
avg_pool_backward_op = register(
    "avg_pool_backward",
    infer=lambda g, input_shape, **kw: Meta(tuple(input_shape), g.dtype),
    eager=_avg_pool_backward_eager,
    backward=lambda ctx, gg: (apply(avg_pool_op, gg, **_avg_attrs(ctx)),))


def avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Average pooling over the last len(kernel) dims of a batched or unbatched tensor."""
    attrs = dict(kernel=tuple(kernel), stride=tuple(stride), padding=tuple(padding),
                 ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad),
                 divisor_override=divisor_override)
    if x.dim() == len(kernel) + 1:
        _avg_pool_check(Meta(tuple(x.shape), x.dtype), **attrs)
        return _unbatch(apply(avg_pool_op, x.unsqueeze(0), **attrs),
                        f"AvgPool{len(kernel)}DBackward0")
    return apply(avg_pool_op, x, **attrs)


# --- max unpooling --------------------------------------------------------------------------------


def _unpool_meta(x, idx, output_size):
    n = len(output_size)
    if len(x.shape) != n + 2:
        raise RuntimeError("the max_unpool op takes batched input; call ops.nn.max_unpool")
    if tuple(idx.shape) != tuple(x.shape) or idx.dtype is not _dtype.int64:
        raise RuntimeError("max_unpool expects int64 indices shaped like its input")
    return Meta(tuple(x.shape[:2]) + tuple(output_size), x.dtype)


def _unpool_index_check(idx, output_size):
    """torch's data-dependent check: every index must address the output plane."""
    plane = common.numel(output_size)
    bad = (idx < 0) | (idx >= plane)
    if bad.any():
        first = int(idx.reshape(-1)[np.argmax(bad.reshape(-1))])
        raise RuntimeError(f"Found an invalid max index: {first} (output volumes are of size "
                           f"{'x'.join(str(int(s)) for s in output_size)})")


def _unpool_eager(x, idx, output_size):
    _unpool_index_check(idx, output_size)
    L, P = x.shape[0] * x.shape[1], common.numel(output_size)
    out = np.zeros((L, P), x.dtype)
    rows = np.repeat(np.arange(L), common.numel(x.shape[2:]))
    # a position named twice keeps the value written last, as the sequential scatter does
    out[rows, idx.reshape(-1)] = x.reshape(-1)
    return out.reshape(tuple(x.shape[:2]) + tuple(output_size))


def _unpool_gather_eager(g, idx):
    L = g.shape[0] * g.shape[1]
    picked = np.take_along_axis(g.reshape(L, -1), idx.reshape(L, -1), axis=1)
    return np.ascontiguousarray(picked.reshape(idx.shape))


max_unpool_op = register(
    "max_unpool", infer=_unpool_meta, eager=_unpool_eager, saves=(1,),
    backward=lambda ctx, g: (apply(max_unpool_backward_op, g, ctx.inputs[1]), None),
    grad_fn=lambda ctx: f"MaxUnpool{len(ctx.attrs['output_size'])}DBackward0")
max_unpool_backward_op = register(
    "max_unpool_backward",
    infer=lambda g, idx: Meta(tuple(idx.shape), g.dtype),
    eager=_unpool_gather_eager, saves=(1,),
    backward=lambda ctx, gg: (apply(max_unpool_op, gg, ctx.inputs[1], output_size=tuple(
        ctx.metas[0].shape[2:])), None))


def max_unpool(x, idx, output_size):
    """Scatter the values of a batched (N, C, *in) or unbatched (C, *in) tensor to the flat
    per-plane positions ``idx`` of a zero (…, *output_size) tensor."""
    n = len(output_size)
    output_size = tuple(int(s) for s in output_size)
    if x.dim() == n + 1:
        y = apply(max_unpool_op, x.unsqueeze(0), idx.unsqueeze(0), output_size=output_size)
        return _unbatch(y, f"MaxUnpool{n}DBackward0")
    return apply(max_unpool_op, x, idx, output_size=output_size)


# --- adaptive average pooling -----------------------------------------------------------------


def adaptive_windows(n_in, n_out):
    """(start, end) of each of the n_out adaptive windows over n_in positions."""
    return [((i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)) for i in range(n_out)]


def _adaptive_matrix(n_in, n_out):
    m = np.zeros((n_out, n_in))
    for i, (s, e) in enumerate(adaptive_windows(n_in, n_out)):
        m[i, s:e] = 1.0 / (e - s)
    return m


def _apply_per_dim(x, mats, transpose):
    """Contract each trailing spatial dim of x with its matrix (or its transpose)."""
    n = len(mats)
    y = x.astype(np.float64)
    for i, m in enumerate(mats):
        axis = x.ndim - n + i
        y = np.moveaxis(np.tensordot(y, m.T if transpose else m, axes=([axis], [1])), -1, axis)
    return y


def _adaptive_meta(x, output_size):
    if len(x.shape) != len(output_size) + 2:
        raise RuntimeError("the adaptive_avg_pool op takes batched input; call "
                           "ops.nn.adaptive_avg_pool")
    return Meta(tuple(x.shape[:2]) + tuple(output_size), x.dtype)


def _adaptive_eager(x, output_size):
    n = len(output_size)
    mats = [_adaptive_matrix(x.shape[x.ndim - n + i], output_size[i]) for i in range(n)]
    return np.ascontiguousarray(_apply_per_dim(x, mats, False).astype(x.dtype))


def _adaptive_backward_eager(g, input_shape):
    n = g.ndim - 2
    mats = [_adaptive_matrix(input_shape[2 + i], g.shape[2 + i]) for i in range(n)]
    return np.ascontiguousarray(_apply_per_dim(g, mats, True).astype(g.dtype))


adaptive_avg_pool_op = register(
    "adaptive_avg_pool", infer=_adaptive_meta, eager=_adaptive_eager,
    backward=lambda ctx, g: (apply(adaptive_avg_pool_backward_op, g,
                                   input_shape=tuple(ctx.metas[0].shape)),),
    grad_fn=lambda ctx: f"AdaptiveAvgPool{len(ctx.attrs['output_size'])}DBackward0")
adaptive_avg_pool_backward_op = register(
    "adaptive_avg_pool_backward",
    infer=lambda g, input_shape: Meta(tuple(input_shape), g.dtype),
    eager=_adaptive_backward_eager,
    backward=lambda ctx, gg: (apply(adaptive_avg_pool_op, gg, output_size=tuple(
        ctx.metas[0].shape[2:])),))


def adaptive_avg_pool(x, output_size):
    """Adaptive average pooling of a batched (N, C, *in) or unbatched (C, *in) tensor over its
    last len(output_size) dims."""
    n = len(output_size)
    output_size = tuple(int(s) for s in output_size)
    if x.dim() == n + 1:
        y = apply(adaptive_avg_pool_op, x.unsqueeze(0), output_size=output_size)
        return _unbatch(y, f"AdaptiveAvgPool{n}DBackward0")
    return apply(adaptive_avg_pool_op, x, output_size=output_size)


# --- softmax --------------------------------------------------------------------------------


def _softmax_eager(x, dim):
    e = np.exp(x - np.max(x, axis=dim, keepdims=True)) if x.size else x
    return e / np.sum(e, axis=dim, keepdims=True) if x.size else x


def _log_softmax_eager(x, dim):
    if not x.size:
        return x
    # (the ufuncs' reduce is what .max and .sum run, without their Python-level wrappers)
    shifted = x - np.maximum.reduce(x, axis=dim, keepdims=True)
    return shifted - np.log(np.add.reduce(np.exp(shifted), axis=dim, keepdims=True))


def _softmax_meta_for(prefix):
    def meta(x, dim):
        dt = x.dtype
        if not dt.is_floating_point:
            last = len(x.shape) == 0 or dim == len(x.shape) - 1
            kernel = f"{prefix}softmax_{'lastdim_' if last else ''}kernel_impl"
            raise NotImplementedError(f"\"{kernel}\" not implemented for '{_word(dt)}'")
        return common.same(x)
    return meta


def _softmax_backward(ctx, g):
    y, dim = ctx.output, ctx.attrs["dim"]
    return (y * (g - (g * y).sum(dim, keepdim=True)),)


def _log_softmax_backward(ctx, g):
    y, dim = ctx.output, ctx.attrs["dim"]
    return (g - y.exp() * g.sum(dim, keepdim=True),)


# quiet kernels (the registry quiets eager_backward itself): rows of -inf (fully masked
# scores) give nan without numpy warnings, as in torch
softmax_op = common.register_quiet("softmax", infer=_softmax_meta_for(""), eager=_softmax_eager,
                                   save_outputs=True, backward=_softmax_backward)


def _log_softmax_backward_np(ctx, g):
    y = ctx.outputs[0]._data
    # (np.add.reduce is what np.sum runs, without its Python-level argument handling)
    return (g - np.exp(y) * np.add.reduce(g, axis=ctx.attrs["dim"], keepdims=True),)


log_softmax_op = common.register_quiet("log_softmax", infer=_softmax_meta_for("log_"),
                                       eager=_log_softmax_eager, save_outputs=True,
                                       backward=_log_softmax_backward,
                                       eager_backward=_log_softmax_backward_np)


def softmax(x, dim):
    return apply(softmax_op, x, dim=common.wrap_dim(dim, x.dim()))


def log_softmax(x, dim):
    return apply(log_softmax_op, x, dim=common.wrap_dim(dim, x.dim()))


# --- padding ------------------------------------------------------------------------------------

_PAD_MODES = ("constant", "reflect", "replicate", "circular")
_PAD_COMBOS = ("Supported combinations for non-constant padding:\n"
               "  - 2D or 3D input: padding size = 2 (pads last dimension)\n"
               "  - 3D or 4D input: padding size = 4 (pads last 2 dimensions)\n"
               "  - 4D or 5D input: padding size = 6 (pads last 3 dimensions)")


def _pad_widths(ndim, pads):
    """torch's flat (last-dim-first) pad list as per-dim (before, after) pairs."""
    widths = [(0, 0)] * ndim
    for i in range(len(pads) // 2):
        widths[ndim - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    return widths


def _too_small(spatial, out, mode):
    if len(spatial) == 1:
        given = f"W: {spatial[0]}"
    elif len(spatial) == 2:
        given = f"H: {spatial[0]}, W: {spatial[1]}" + (" " if mode == "replicate" else "")
    else:
        given = f"D: {spatial[0]} H: {spatial[1]}, W: {spatial[2]}"
    names = ("D", "H", "W")[3 - len(spatial):]
    calc = " ".join(f"{a}: {o}" for a, o in zip(names, out))
    return RuntimeError(f"input ({given}) is too small. Calculated output {calc}")


def _pad_meta(x, pads, mode, value):
    shape = tuple(x.shape)
    nd, n = len(shape), len(pads) // 2
    if mode not in _PAD_MODES:
        raise NotImplementedError(f"Unrecognised padding mode {mode}")
    widths = _pad_widths(nd, pads)
    if mode == "constant":
        if any(s + min(a, 0) + min(b, 0) < 0 for s, (a, b) in zip(shape, widths)):
            raise RuntimeError("narrow(): length must be non-negative.")
        return Meta(tuple(s + a + b for s, (a, b) in zip(shape, widths)), x.dtype)
    if n not in (1, 2, 3) or nd not in (n + 1, n + 2):
        raise NotImplementedError(f"Padding size {len(pads)} is not supported for {nd}D input "
                                  f"tensor.\n{_PAD_COMBOS}")
    spatial = shape[nd - n:]
    out = tuple(s + a + b for s, (a, b) in zip(spatial, widths[nd - n:]))
    if mode == "circular":
        for s, (a, b), o in zip(spatial, widths[nd - n:], out):
            if a > s or b > s:
                raise RuntimeError("Padding value causes wrapping around more than once.")
            if o < 0:
                raise RuntimeError("Negative padding value is resulting in an empty dimension")
        return Meta(shape[:nd - n] + out, x.dtype)
    if any(s == 0 for s in shape[nd - n - 1:]):
        raise RuntimeError(f"Expected {n + 1}D or {n + 2}D (batch mode) tensor with possibly 0 "
                           f"batch size and other non-zero dimensions for input, but got: "
                           f"{_sizes(shape)}")
    if mode == "reflect":
        for i in range(n):  # last dim first
            d = nd - 1 - i
            a, b = widths[d]
            if a >= shape[d] or b >= shape[d]:
                raise RuntimeError(f"Argument #{4 + 2 * i}: Padding size should be less than the "
                                   f"corresponding input dimension, but got: padding ({a}, {b}) "
                                   f"at dimension {d} of input {_sizes(shape)}")
    # torch reports "too small" only when every padded dim is empty (1-d: the one dim)
    if all(o < 1 for o in out):
        raise _too_small(spatial, out, mode)
    full = shape[:nd - n] + out
    if any(o < 0 for o in out):
        if mode == "reflect" and n == 2:
            raise RuntimeError("numel: integer multiplication overflow")
        raise RuntimeError(f"Trying to create tensor with negative dimension "
                           f"{min(out)}: {_sizes(full)}")
    if x.dtype is _dtype.bool_:
        kernel = {"reflect": "reflection", "replicate": "replication"}[mode]
        raise NotImplementedError(f"\"{kernel}_pad{n}d\" not implemented for 'Bool'")
    return Meta(full, x.dtype)


def _pad_source(size, before, after, mode):
    """For each padded position along one dim, the input index it reads (-1: the constant)."""
    src = np.arange(-before, size + after)
    if mode == "constant":
        return np.where((src >= 0) & (src < size), src, -1)
    if mode == "replicate":
        return np.clip(src, 0, size - 1)
    if mode == "reflect":  # mirror about the edges without repeating them
        period = 2 * (size - 1) if size > 1 else 1
        m = np.abs(src) % period
        return np.where(m >= size, period - m, m)
    # circular: negative pads crop first, then positive pads wrap around what is left
    lo, hi = max(-before, 0), size - max(-after, 0)
    kept = hi - lo
    if kept <= 0:
        return np.full(size + before + after, -1)
    return lo + (np.arange(size + before + after) - max(before, 0)) % kept


def _pad_eager(x, pads, mode, value):
    out = x
    for axis, (a, b) in enumerate(_pad_widths(x.ndim, pads)):
        if a == 0 and b == 0:
            continue
        src = _pad_source(out.shape[axis], a, b, mode)
        taken = np.take(out, np.maximum(src, 0), axis=axis) if out.shape[axis] else \
            np.zeros(out.shape[:axis] + (len(src),) + out.shape[axis + 1:], x.dtype)
        if (src < 0).any():
            shape = [1] * out.ndim
            shape[axis] = -1
            fill = np.asarray(value if mode == "constant" and value is not None else 0)
            taken = np.where((src >= 0).reshape(shape), taken, fill.astype(x.dtype))
        out = taken
    return np.ascontiguousarray(out)


def _pad_backward_eager(g, input_shape, pads, mode):
    out = g
    for axis, (a, b) in reversed(list(enumerate(_pad_widths(g.ndim, pads)))):
        if a == 0 and b == 0:
            continue
        size = input_shape[axis]
        src = _pad_source(size, a, b, mode)
        # the adjoint of a gather along one axis: a (padded, size) 0/1 matrix
        scatter = np.zeros((len(src), size), g.dtype)
        rows = np.nonzero(src >= 0)[0]
        scatter[rows, src[rows]] = 1
        out = np.moveaxis(np.tensordot(out, scatter, axes=([axis], [0])), -1, axis)
    return np.ascontiguousarray(out, dtype=g.dtype)


def _pad_grad_fn(ctx):
    mode, n = ctx.attrs["mode"], len(ctx.attrs["pads"]) // 2
    if mode == "constant":
        return "ConstantPadNdBackward0"
    if mode == "circular":
        return "CopySlices"
    return {"reflect": "ReflectionPad", "replicate": "ReplicationPad"}[mode] + f"{n}DBackward0"


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
