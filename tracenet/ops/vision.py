"""Upsampling (interpolation) primitives: nearest (and nearest-exact), linear / bilinear /
trilinear and bicubic resizing of the trailing 1-3 spatial dims of an (N, C, *spatial) tensor,
with their gradient ops.

Every mode is separable: along each spatial axis an output position reads a few input positions
(its *taps*) with fixed weights. ``axis_taps`` computes that table once per axis, in the input's
floating-point precision and with the source-index rules torch documents (``align_corners``,
explicit scale factors versus size ratios); the eager kernels apply it axis by axis, the gradient
ops apply its transpose, and the C lowering bakes the same tables into the kernel.
"""
import numpy as np

from .._meta import Meta
from .registry import apply, register

_CUBIC_A = -0.75
# "linear_aa" / "cubic_aa": antialiased resizing (a triangle / cubic filter stretched over the
# input step when downsampling, weights normalised to sum to one)
MODES = ("nearest", "nearest-exact", "linear", "cubic", "linear_aa", "cubic_aa")
_SPATIAL_NAMES = {1: ("W",), 2: ("H", "W"), 3: ("D", "H", "W")}


def _scale_value(scale, in_size, out_size, np_dtype):
    """The input step per output step: 1/scale_factor when one was given, else in/out."""
    if scale is not None and scale > 0:
        return np_dtype.type(1.0 / scale)
    return np_dtype.type(in_size) / np_dtype.type(out_size)


def _linear_scale(scale, in_size, out_size, align_corners, np_dtype):
    if align_corners:
        if out_size > 1:
            return np_dtype.type(in_size - 1) / np_dtype.type(out_size - 1)
        return np_dtype.type(0)
    return _scale_value(scale, in_size, out_size, np_dtype)


def _cubic_weights(t):
    """Keys' cubic convolution weights (A = -0.75) for fractional offsets ``t``, 4 taps each."""
    a = _CUBIC_A

    def near(u):  # |u| <= 1
        return ((a + 2) * u - (a + 3)) * u * u + 1

    def far(u):  # 1 < |u| < 2
        return ((a * u - 5 * a) * u + 8 * a) * u - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _aa_filter(mode, x):
    x = np.abs(x)
    if mode == "linear_aa":
        return np.maximum(0.0, 1.0 - x)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _aa_taps(mode, in_size, out_size, scale, align_corners, np_dtype):
    s = float(_linear_scale(scale, in_size, out_size, align_corners, np.dtype(np.float64)))
    half = 1.0 if mode == "linear_aa" else 2.0
    support = half * s if s >= 1.0 else half
    inv = 1.0 / s if s >= 1.0 else 1.0
    center = s * (np.arange(out_size) + 0.5)
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    count = xmax - xmin
    taps = max(int(count.max()), 1)
    j = np.arange(taps)[None, :]
    w = _aa_filter(mode, (j + xmin[:, None] - center[:, None] + 0.5) * inv)
    w = np.where(j < count[:, None], w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total != 0, w / np.where(total != 0, total, 1), 0.0)
    idx = np.minimum(xmin[:, None] + j, in_size - 1)
    return idx.astype(np.int64), w.astype(np_dtype)


def axis_taps(mode, in_size, out_size, scale, align_corners, np_dtype, copy_same=False,
              halve_double=False):
    """(indices, weights), both shaped (out_size, taps): output position ``o`` along this axis is
    ``sum_t weights[o, t] * input[indices[o, t]]``. Weights are of ``np_dtype`` (the precision
    torch computes them in for that input dtype); nearest modes have one tap of weight 1.

    ``copy_same``: an axis whose size is unchanged is copied whatever the scale factor;
    ``halve_double``: (nearest) an axis whose size doubled reads index ``o // 2``. Which of
    torch's kernels take these shortcuts is decided by ``forward_taps``/``backward_taps``."""
    np_dtype = np.dtype(np_dtype)
    o = np.arange(out_size)
    if copy_same and in_size == out_size:
        return o.reshape(-1, 1).astype(np.int64), np.ones((out_size, 1), np_dtype)
    if halve_double and out_size == 2 * in_size:
        return (o >> 1).reshape(-1, 1).astype(np.int64), np.ones((out_size, 1), np_dtype)
    if mode in ("nearest", "nearest-exact"):
        # torch computes the nearest source index in single precision for every dtype
        s = _scale_value(scale, in_size, out_size, np.dtype(np.float32))
        pos = o.astype(np.float32) + np.float32(0.5) if mode == "nearest-exact" else \
            o.astype(np.float32)
        src = np.floor(pos * s).astype(np.int64)
        idx = np.minimum(src, in_size - 1).reshape(-1, 1)
        return idx.astype(np.int64), np.ones((out_size, 1), np_dtype)
    if mode.endswith("_aa"):
        return _aa_taps(mode, in_size, out_size, scale, align_corners, np_dtype)
    s = _linear_scale(scale, in_size, out_size, align_corners, np_dtype)
    of = o.astype(np_dtype)
    if align_corners:
        real = s * of
    else:
        real = s * (of + np_dtype.type(0.5)) - np_dtype.type(0.5)
    if mode == "linear":
        real = np.maximum(real, np_dtype.type(0))
        i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
        lam1 = np.clip(real - i0.astype(np_dtype), 0, 1).astype(np_dtype)
        lam0 = (np_dtype.type(1) - lam1).astype(np_dtype)
        i1 = i0 + (i0 < in_size - 1)
        return np.stack([i0, i1], 1), np.stack([lam0, lam1], 1)
    # cubic: four neighbours around floor(real), clamped to the edges
    base = np.floor(real)
    t = (real - base).astype(np_dtype)
    idx = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return idx, _cubic_weights(t).astype(np_dtype)


def forward_taps(attrs, axis, in_size, np_dtype):
    """Taps of spatial axis ``axis`` for the forward op with attributes ``attrs``: torch's
    linear and antialiased kernels copy an axis of unchanged size, and its 2-d nearest kernel
    also halves the index of a doubled axis, whatever the scale factor; the 1-d and 3-d nearest
    kernels always apply the scale factor."""
    n, mode = len(attrs["output_size"]), attrs["mode"]
    return axis_taps(mode, in_size, attrs["output_size"][axis], attrs["scales"][axis],
                     attrs["align_corners"], np_dtype,
                     copy_same=mode in ("linear", "linear_aa", "cubic_aa") or
                     (mode == "nearest" and n == 2),
                     halve_double=mode == "nearest" and n == 2)


def backward_taps(attrs, axis, in_size, np_dtype):
    """Taps of spatial axis ``axis`` whose transpose the gradient op applies (torch's gradient
    kernels take the nearest shortcuts in every dimension, the linear copy, but not the
    antialiased one)."""
    mode = attrs["mode"]
    return axis_taps(mode, in_size, attrs["output_size"][axis], attrs["scales"][axis],
                     attrs["align_corners"], np_dtype, copy_same=mode in ("nearest", "linear"),
                     halve_double=mode == "nearest")


def axis_matrix(idx, w, in_size):
    """The dense (out_size, in_size) matrix of one axis' taps."""
    m = np.zeros((idx.shape[0], in_size), w.dtype)
    for t in range(idx.shape[1]):
        np.add.at(m, (np.arange(idx.shape[0]), idx[:, t]), w[:, t])
    return m


# --- shape rules ----------------------------------------------------------------------------------


def _word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def check_sizes(in_spatial, out_size):
    """torch's check that every input and output spatial size is positive."""
    names = _SPATIAL_NAMES[len(out_size)]
    if any(s <= 0 for s in in_spatial) or any(s <= 0 for s in out_size):
        given = ", ".join(f"{a}: {s}" for a, s in zip(names, in_spatial))
        calc = ", ".join(f"{a}: {s}" for a, s in zip(names, out_size))
        sep = " and " if len(out_size) == 1 else " "
        raise RuntimeError(f"Input and output sizes should be greater than 0, but got input "
                           f"({given}){sep}output ({calc})")


def _upsample_meta(x, output_size, scales, mode, align_corners):
    n = len(output_size)
    if mode not in MODES or n not in (1, 2, 3) or len(scales) != n:
        raise ValueError(f"bad upsample attributes: mode={mode!r}, output_size={output_size}")
    if len(x.shape) != n + 2:
        raise RuntimeError(f"Expected {n + 2}D input to the upsample op, got "
                           f"{len(x.shape)}D input")
    check_sizes(x.shape[2:], output_size)
    if any(s == 0 for s in x.shape[1:]):
        raise RuntimeError(f"Non-empty {n + 2}D data tensor expected but got a tensor with sizes "
                           f"[{', '.join(str(s) for s in x.shape)}]")
    if not x.dtype.is_floating_point:
        family = "nearest" if mode == "nearest-exact" else mode
        if mode.endswith("_aa"):
            kernel = "compute_index_ranges_weights"
        elif n == 2 and mode != "cubic":
            kernel = "upsample_nearest2d" if family == "nearest" else "upsample_bilinear2d"
            kernel += "_channels_last"
        else:
            kernel = f"compute_indices_weights_{family}"
        raise NotImplementedError(f"\"{kernel}\" not implemented for '{_word(x.dtype)}'")
    return Meta(tuple(x.shape[:2]) + tuple(int(s) for s in output_size), x.dtype)


def _upsample_backward_meta(g, input_size, output_size, scales, mode, align_corners):
    n = len(output_size)
    if tuple(g.shape) != tuple(input_size[:2]) + tuple(output_size):
        raise RuntimeError(f"Expected grad_output to have the same shape as output; output.size"
                           f"({n + 1}) = {output_size[-1]} but got grad_output.size(...) = "
                           f"{list(g.shape)}")
    return Meta(tuple(input_size), g.dtype)


# --- eager kernels --------------------------------------------------------------------------------


def _upsample_eager(x, output_size, scales, mode, align_corners):
    n = len(output_size)
    attrs = dict(output_size=output_size, scales=scales, mode=mode, align_corners=align_corners)
    y = x
    for i in reversed(range(n)):  # the last axis first, as torch's kernels nest their sums
        axis = y.ndim - n + i
        idx, w = forward_taps(attrs, i, x.shape[axis], x.dtype)
        shape = [1] * y.ndim
        shape[axis] = -1
        acc = None
        for t in range(idx.shape[1]):
            part = np.take(y, idx[:, t], axis=axis)
            if mode not in ("nearest", "nearest-exact"):
                part = part * w[:, t].reshape(shape)
            acc = part if acc is None else acc + part
        y = acc
    return np.ascontiguousarray(y, dtype=x.dtype)


def _upsample_backward_eager(g, input_size, output_size, scales, mode, align_corners):
    n = len(output_size)
    attrs = dict(output_size=output_size, scales=scales, mode=mode, align_corners=align_corners)
    res = g
    for i in range(n):
        axis = g.ndim - n + i
        m = axis_matrix(*backward_taps(attrs, i, input_size[axis], g.dtype), input_size[axis])
        res = np.moveaxis(np.tensordot(res, m, axes=([axis], [0])), -1, axis)
    return np.ascontiguousarray(res, dtype=g.dtype)


def _attrs(ctx):
    return {k: ctx.attrs[k] for k in ("output_size", "scales", "mode", "align_corners")}


def _grad_fn(ctx):
    n, mode = len(ctx.attrs["output_size"]), ctx.attrs["mode"]
    kind = {"nearest": "Nearest", "nearest-exact": "NearestExact",
            "linear": ("Linear", "Bilinear", "Trilinear")[n - 1], "cubic": "Bicubic",
            "linear_aa": "Bilinear", "cubic_aa": "Bicubic"}[mode]
    return f"Upsample{kind}{n}D{'Aa' if mode.endswith('_aa') else ''}Backward0"


def _backward_grad_fn(ctx):
    return _grad_fn(ctx).replace("Backward0", "BackwardBackward0")


def _make_ops(name, modes):
    def meta(x, **a):
        if a["mode"] not in modes:
            raise ValueError(f"op {name} does not do mode {a['mode']!r}")
        return _upsample_meta(x, **a)

    fwd = register(
        name, infer=meta, eager=_upsample_eager, grad_fn=_grad_fn,
        backward=lambda ctx, g: (apply(REG[name + "_backward"], g,
                                       input_size=tuple(ctx.metas[0].shape), **_attrs(ctx)),))
    bwd = register(
        name + "_backward", infer=_upsample_backward_meta, eager=_upsample_backward_eager,
        grad_fn=_backward_grad_fn,
        backward=lambda ctx, gg: (apply(REG[name], gg, **_attrs(ctx)),))
    REG[name], REG[name + "_backward"] = fwd, bwd
    return fwd, bwd


REG = {}
upsample_nearest_op, upsample_nearest_backward_op = _make_ops(
    "upsample_nearest", ("nearest", "nearest-exact"))
upsample_linear_op, upsample_linear_backward_op = _make_ops("upsample_linear",
                                                           ("linear", "linear_aa"))
upsample_bicubic_op, upsample_bicubic_backward_op = _make_ops("upsample_bicubic",
                                                             ("cubic", "cubic_aa"))

_OP_OF_MODE = {"nearest": upsample_nearest_op, "nearest-exact": upsample_nearest_op,
               "linear": upsample_linear_op, "cubic": upsample_bicubic_op,
               "linear_aa": upsample_linear_op, "cubic_aa": upsample_bicubic_op}


def upsample(x, output_size, scales, mode, align_corners=False):
    """Resize the trailing len(output_size) dims of a batched (N, C, *spatial) tensor.

    ``scales`` holds, per spatial dim, the user's scale factor (or None): when given, the source
    position of an output index is computed with 1/scale rather than in/out, as torch does."""
    n = len(output_size)
    scales = tuple(None if s is None else float(s) for s in scales) if scales is not None \
        else (None,) * n
    return apply(_OP_OF_MODE[mode], x, output_size=tuple(int(s) for s in output_size),
                 scales=scales, mode=mode,
                 align_corners=bool(align_corners) if mode not in ("nearest", "nearest-exact")
                 else False)


def upsample_backward(g, input_size, output_size, scales, mode, align_corners=False):
    n = len(output_size)
    scales = tuple(scales) if scales is not None else (None,) * n
    op = REG[_OP_OF_MODE[mode].name + "_backward"]
    return apply(op, g, input_size=tuple(input_size), output_size=tuple(output_size),
                 scales=scales, mode=mode, align_corners=bool(align_corners))
