"""Batch normalisation as three registry ops over a (N, C, *) input, per channel C:

* ``batch_norm_stats(x) -> (mean, var)``: the batch mean and biased variance (not
  differentiable: the gradient through the statistics is part of ``batch_norm``'s rule);
* ``batch_norm(x, mean, var[, weight][, bias])``: ``(x - mean) / sqrt(var + eps) * weight + bias``.
  With ``training=True`` ``mean``/``var`` must be ``batch_norm_stats(x)`` and the backward
  differentiates through them; with ``training=False`` they are constants (running statistics);
* ``batch_norm_backward(g, x, mean, var[, weight]) -> (grad_input, grad_weight, grad_bias)``:
  the whole backward in one op, so the compiler emits it as one kernel.

Running statistics are updated by the functional code with in-place tensor ops (under
``no_grad``), not by these ops.
"""
import numpy as np

from .._meta import Meta
from . import common, creation
from .reduce import sum_to_shape
from .registry import apply, register


def _word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def channels(shape):
    """What torch takes as the channel count: dim 1 (0 for a 1-d input)."""
    return shape[1] if len(shape) > 1 else 0


def _reduce_dims(nd):
    return (0,) + tuple(range(2, nd))


def _bcast(nd, c):
    return (1, c) + (1,) * (nd - 2)


def _count(shape):
    c = channels(shape)
    return common.numel(shape) // c if c else 0


# --- statistics ----------------------------------------------------------------------------------


def _stats_meta(x):
    if len(x.shape) < 2:
        raise RuntimeError(f"batch_norm_stats expects (N, C, *) input, got {len(x.shape)}-d")
    if not x.dtype.is_floating_point:
        raise NotImplementedError(f"\"batch_norm\" not implemented for '{_word(x.dtype)}'")
    c = Meta((x.shape[1],), x.dtype)
    return c, c


@common.quiet
def _stats_eager(x):
    n, c = x.shape[0], x.shape[1]
    xs = x.reshape(n, c, -1).astype(np.float64)
    mean = xs.mean(axis=(0, 2))
    var = np.square(xs - mean[None, :, None]).mean(axis=(0, 2))
    return mean.astype(x.dtype), var.astype(x.dtype)


batch_norm_stats_op = register("batch_norm_stats", infer=_stats_meta, eager=_stats_eager,
                               num_outputs=2, differentiable=False)


def batch_norm_stats(x):
    """Per-channel (mean, biased variance) of a (N, C, *) tensor."""
    return apply(batch_norm_stats_op, x)


# --- normalisation ---------------------------------------------------------------------------


def _bn_meta(x, mean, var, *wb, eps, training, has_weight, has_bias):
    c = channels(x.shape)
    for m in (mean, var) + wb:
        if tuple(m.shape) != (c,):
            raise RuntimeError(f"batch_norm expects per-channel vectors of {c} elements, got "
                               f"{list(m.shape)}")
    if not x.dtype.is_floating_point:
        raise NotImplementedError(f"\"batch_norm\" not implemented for '{_word(x.dtype)}'")
    if any(m.dtype is not x.dtype for m in (mean, var) + wb):
        raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")
    return Meta(tuple(x.shape), x.dtype)


def _scale_shift(x, mean, var, wb, eps, has_weight, has_bias):
    """Per-channel (scale, shift), float64, with y = x * scale + shift."""
    scale = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    wb = list(wb)
    if has_weight:
        scale = scale * wb.pop(0)
    shift = -mean * scale
    if has_bias:
        shift = shift + wb.pop(0)
    return scale, shift


@common.quiet
def _bn_eager(x, mean, var, *wb, eps, training, has_weight, has_bias):
    scale, shift = _scale_shift(x, mean, var, wb, eps, has_weight, has_bias)
    bc = _bcast(x.ndim, x.shape[1])
    y = x * scale.reshape(bc) + shift.reshape(bc)
    return np.ascontiguousarray(y.astype(x.dtype))


def _bn_backward(ctx, g):
    a = ctx.attrs
    x, mean, var = ctx.inputs[:3]
    w = ctx.inputs[3] if a["has_weight"] else None
    needs = ctx.needs_input_grad
    gx, gw, gb = batch_norm_backward(g, x, mean, var, w, eps=a["eps"], training=a["training"])
    grads = [gx if needs[0] else None, None, None]
    k = 3
    if a["has_weight"]:
        grads.append(gw if needs[k] else None)
        k += 1
    if a["has_bias"]:
        grads.append(gb if needs[k] else None)
    return tuple(grads)


batch_norm_op = register("batch_norm", infer=_bn_meta, eager=_bn_eager, saves=(0, 1, 2, 3),
                         backward=_bn_backward, grad_fn="NativeBatchNormBackward0")


def batch_norm(x, mean, var, weight=None, bias=None, *, eps, training):
    """Normalise a (N, C, *) tensor per channel with the given statistics (see the module
    docstring for what ``training`` means)."""
    extra = [t for t in (weight, bias) if t is not None]
    return apply(batch_norm_op, x, mean, var, *extra, eps=float(eps), training=bool(training),
                 has_weight=weight is not None, has_bias=bias is not None)


# --- backward ------------------------------------------------------------------------------------


def _bnb_meta(g, x, mean, var, *w, eps, training):
    c = channels(x.shape)
    vec = Meta((c,), x.dtype)
    return Meta(tuple(x.shape), x.dtype), vec, vec


@common.quiet
def _bnb_eager(g, x, mean, var, *w, eps, training):
    nd, c = x.ndim, x.shape[1]
    bc, dims = _bcast(nd, c), _reduce_dims(nd)
    m = _count(x.shape)
    r = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    d = x.astype(np.float64) - mean.reshape(bc)
    g64 = g.astype(np.float64)
    sum_g = g64.sum(axis=dims)
    sum_gxhat = (g64 * d).sum(axis=dims) * r
    scale = r * w[0] if w else r
    if training and m:
        gx = (g64 - (sum_g / m).reshape(bc) - d * (r * sum_gxhat / m).reshape(bc)) * \
            scale.reshape(bc)
    else:
        gx = g64 * scale.reshape(bc)
    dt = x.dtype
    return (np.ascontiguousarray(gx.astype(dt)), sum_gxhat.astype(dt), sum_g.astype(dt))


def _zeros(meta):
    return creation.zeros(tuple(meta.shape), dtype=meta.dtype)


def _bnb_backward(ctx, u, bw, ab):
    """Second-order rule. Per channel, with D = x - mean, r = (var + eps)^-1/2, W the weight
    (1 without one), A = sum(g), B = r sum(g D) and M elements per channel:

        gx = W r (g - [A / M + r D B / M])        ([...] only in training mode)
        grad_weight = B, grad_bias = A

    In training mode mean and var are the batch statistics of x, so the x-gradient also
    flows through them."""
    g, x, mean, var = ctx.inputs[:4]
    w = ctx.inputs[4] if len(ctx.inputs) > 4 else None
    a = ctx.attrs
    eps, training = a["eps"], a["training"]
    nd, c = len(ctx.metas[1].shape), ctx.metas[1].shape[1]
    bc, dims = _bcast(nd, c), _reduce_dims(nd)
    m = _count(tuple(ctx.metas[1].shape))
    train = bool(training and m)
    u = u if u is not None else _zeros(ctx.out_metas[0])
    bw = bw if bw is not None else _zeros(ctx.out_metas[1])
    ab = ab if ab is not None else _zeros(ctx.out_metas[2])
    r = (var + eps).rsqrt()
    d = x - mean.reshape(bc)
    Wr = r * w if w is not None else r
    s_g = g.sum(dims)
    s_gd = (g * d).sum(dims)
    B = r * s_gd
    s_u = u.sum(dims)
    s_ud = (u * d).sum(dims)
    s_ug = (u * g).sum(dims)
    alpha, beta = ab, bw
    if train:
        alpha = alpha - Wr * s_u / m
        beta = beta - Wr * r * s_ud / m
    needs = ctx.needs_input_grad
    dg = dx = dw = None
    if needs[0]:
        dg = u * Wr.reshape(bc) + alpha.reshape(bc) + d * (r * beta).reshape(bc)
    if needs[1]:
        dd = g * (r * beta).reshape(bc)
        if train:
            dd = dd - u * (Wr * r * B / m).reshape(bc)
        # through r (and, in training, through the statistics of x)
        w_term = s_ug - (s_g * s_u / m + 2 * r * B * s_ud / m if train else 0)
        dr = (w_term * w if w is not None else w_term) + beta * s_gd
        dx = dd
        if train:
            dv = dr * (-0.5) * r * r * r
            dx = dd - (dd.sum(dims) / m).reshape(bc) + d * (dv * (2.0 / m)).reshape(bc)
    if w is not None and needs[4]:
        dw = r * s_ug
        if train:
            dw = dw - r * s_g * s_u / m - r * r * B * s_ud / m
    res = (dg, dx, None, None)
    return res + (dw,) if w is not None else res


batch_norm_backward_op = register(
    "batch_norm_backward", infer=_bnb_meta, eager=_bnb_eager, num_outputs=3,
    saves=(0, 1, 2, 3, 4), backward=_bnb_backward)


def batch_norm_backward(g, x, mean, var, weight=None, *, eps, training):
    extra = (weight,) if weight is not None else ()
    return apply(batch_norm_backward_op, g, x, mean, var, *extra, eps=float(eps),
                 training=bool(training))


# --- layer norm and group norm ------------------------------------------------------------------
#
# Both normalise rows of a (M, K) view of x to zero mean and unit (biased) variance, then apply
# an optional elementwise weight and bias broadcast against x:
#
# * ``layer_norm(x[, weight][, bias], norm_ndim, eps)``: rows are the trailing ``norm_ndim``
#   dims, weight/bias have that shape;
# * ``group_norm(x[, weight][, bias], groups, eps)``: x is (N, C, *), rows are (sample, group),
#   weight/bias are per channel (C,).
#
# The eager kernels are numpy; the backward and the decomposition (for the compiler) are written
# with mean/rsqrt/sum ops that have C lowerings.


def _rows_of(shape, attrs):
    """(M, K): the rows whose statistics are taken, and the broadcast shape of weight/bias."""
    n = common.numel(shape)
    if "norm_ndim" in attrs:
        k = common.numel(shape[len(shape) - attrs["norm_ndim"]:])
        pshape = tuple(shape[len(shape) - attrs["norm_ndim"]:])
    else:
        m = shape[0] * attrs["groups"]
        k = n // m if m else 0
        pshape = (shape[1],) + (1,) * (len(shape) - 2)
        return (m, k), pshape
    return (n // k if k else 0, k), pshape


def _affine_meta(name):
    def meta(x, *wb, eps, has_weight, has_bias, **attrs):
        if not x.dtype.is_floating_point:
            raise NotImplementedError(f"\"{name}\" not implemented for '{_word(x.dtype)}'")
        if any(p.dtype is not x.dtype for p in wb):
            raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")
        return Meta(tuple(x.shape), x.dtype)
    return meta


@common.quiet
def _affine_norm_eager(x, *wb, eps, has_weight, has_bias, **attrs):
    rows, pshape = _rows_of(x.shape, attrs)
    xr = x.reshape(rows).astype(np.float64)
    d = xr - xr.mean(axis=1, keepdims=True)
    var = np.square(d).mean(axis=1, keepdims=True)
    y = (d / np.sqrt(var + eps)).reshape(x.shape)
    wb = list(wb)
    if has_weight:
        y = y * wb.pop(0).reshape(pshape)
    if has_bias:
        y = y + wb.pop(0).reshape(pshape)
    return np.ascontiguousarray(y.astype(x.dtype))


def _normalised_rows(x, rows, eps):
    """(x - mean) * rstd over the rows of ``x`` viewed as ``rows``, and rstd."""
    xr = x.reshape(rows)
    d = xr - xr.mean(1, keepdim=True)
    rstd = ((d * d).mean(1, keepdim=True) + eps).rsqrt()
    return d * rstd, rstd


def _affine_norm_decomposition(x, *wb, eps, has_weight, has_bias, **attrs):
    shape = tuple(x.shape)
    rows, pshape = _rows_of(shape, attrs)
    y = _normalised_rows(x, rows, eps)[0].reshape(shape)
    wb = list(wb)
    if has_weight:
        y = y * wb.pop(0).reshape(pshape)
    if has_bias:
        y = y + wb.pop(0).reshape(pshape)
    return y


def _affine_norm_backward(ctx, g):
    """With xhat the normalised rows and gh = g * weight (as rows):
    gx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)), grad_weight = sum(g * xhat),
    grad_bias = sum(g), the sums over everything but the weight's dims."""
    a = ctx.attrs
    x = ctx.inputs[0]
    w = ctx.inputs[1] if a["has_weight"] else None
    shape = tuple(ctx.metas[0].shape)
    rows, pshape = _rows_of(shape, a)
    xhat, rstd = _normalised_rows(x, rows, a["eps"])
    needs = ctx.needs_input_grad
    grads = [None]
    if needs[0]:
        gh = (g * w.reshape(pshape) if w is not None else g).reshape(rows)
        gx = rstd * (gh - gh.mean(1, keepdim=True) - xhat * (gh * xhat).mean(1, keepdim=True))
        grads[0] = gx.reshape(shape)
    k = 1
    if a["has_weight"]:
        grads.append(sum_to_shape(g * xhat.reshape(shape), pshape).reshape(
            tuple(ctx.metas[k].shape)) if needs[k] else None)
        k += 1
    if a["has_bias"]:
        grads.append(sum_to_shape(g, pshape).reshape(tuple(ctx.metas[k].shape))
                     if needs[k] else None)
    return tuple(grads)


layer_norm_op = register("layer_norm", infer=_affine_meta("LayerNormKernelImpl"),
                         eager=_affine_norm_eager, saves=(0, 1), backward=_affine_norm_backward,
                         grad_fn="NativeLayerNormBackward0",
                         decomposition=_affine_norm_decomposition)
group_norm_op = register("group_norm", infer=_affine_meta("GroupNormKernelImpl"),
                         eager=_affine_norm_eager, saves=(0, 1), backward=_affine_norm_backward,
                         grad_fn="NativeGroupNormBackward0",
                         decomposition=_affine_norm_decomposition)


def layer_norm(x, weight=None, bias=None, *, norm_ndim, eps):
    """Normalise over the trailing ``norm_ndim`` dims, then ``* weight + bias``."""
    extra = [t for t in (weight, bias) if t is not None]
    return apply(layer_norm_op, x, *extra, norm_ndim=int(norm_ndim), eps=float(eps),
                 has_weight=weight is not None, has_bias=bias is not None)


def group_norm(x, weight=None, bias=None, *, groups, eps):
    """Normalise each of ``groups`` channel groups of each sample of a (N, C, *) tensor, then
    ``* weight + bias`` per channel."""
    extra = [t for t in (weight, bias) if t is not None]
    return apply(group_norm_op, x, *extra, groups=int(groups), eps=float(eps),
                 has_weight=weight is not None, has_bias=bias is not None)
