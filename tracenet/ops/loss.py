"""Loss primitives with their own torch backward nodes: mse_loss and nll_loss (cross entropy is
log_softmax followed by nll_loss, as in torch)."""
import warnings

import numpy as np

from .. import _dtype
from . import common
from .registry import Meta, apply, register

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")


def _reduce_np(v, reduction):
    if reduction == "mean":
        return np.mean(v) if v.size else np.array(np.nan, v.dtype)
    if reduction == "sum":
        return np.sum(v)
    return v


# --- mse ------------------------------------------------------------------------------------------


def _mse_meta(x, y, reduction):
    shape = common.broadcast_shapes(tuple(x.shape), tuple(y.shape))
    dt = _dtype.result_type(x, y)
    return Meta(shape if reduction == "none" else (), dt)


def _mse_backward(ctx, g):
    from .reduce import sum_to_shape
    x, y = ctx.inputs
    diff = x - y
    if ctx.attrs["reduction"] == "mean":
        g = g * (2.0 / max(diff.numel(), 1))
    else:
        g = g * 2.0
    grad = diff * g
    gx = sum_to_shape(grad, ctx.metas[0].shape) if ctx.needs_input_grad[0] else None
    gy = sum_to_shape(-grad, ctx.metas[1].shape) if ctx.needs_input_grad[1] else None
    return gx, gy


mse_loss_op = register(
    "mse_loss", infer=_mse_meta, saves=(0, 1), backward=_mse_backward,
    eager=lambda x, y, reduction: _reduce_np(np.square(x - y), reduction))


def mse_loss(x, y, reduction="mean"):
    check_reduction(reduction)
    if tuple(x.shape) != tuple(y.shape):
        warnings.warn(f"Using a target size ({y.shape}) that is different to the input size "
                      f"({x.shape}). This will likely lead to incorrect results due to "
                      "broadcasting. Please ensure they have the same size.", UserWarning,
                      stacklevel=3)
    return apply(mse_loss_op, x, y, reduction=reduction)


# --- nll ------------------------------------------------------------------------------------------


def _nll_meta(x, t, *w, reduction, ignore_index):
    if t.dtype is not _dtype.int64:
        word = {"float32": "Float", "float64": "Double", "bool": "Bool"}[t.dtype.name]
        raise RuntimeError(f"expected scalar type Long but found {word}")
    xs, ts = tuple(x.shape), tuple(t.shape)
    if len(xs) < 1 or len(xs) > 1 and len(ts) != len(xs) - 1 or len(xs) == 1 and ts != ():
        raise ValueError(f"Expected input and target to have compatible shapes: input "
                         f"{list(xs)}, target {list(ts)}" if len(xs) != 2 else
                         f"Expected target size {list(xs[:1])}, got {list(ts)}")
    if len(xs) > 1 and xs[0] != ts[0]:
        raise ValueError(f"Expected input batch_size ({xs[0]}) to match target batch_size "
                         f"({ts[0]}).")
    if len(xs) > 2 and tuple(xs[2:]) != tuple(ts[1:]):
        raise RuntimeError(f"Expected target size [{', '.join(map(str, (xs[0],) + xs[2:]))}], "
                           f"got [{', '.join(map(str, ts))}]")
    if w and tuple(w[0].shape) != (xs[1 if len(xs) > 1 else 0],):
        raise RuntimeError(f"weight tensor should be defined either for all "
                           f"{xs[1 if len(xs) > 1 else 0]} classes or no classes but got weight "
                           f"tensor of shape: [{', '.join(map(str, w[0].shape))}]")
    return Meta(ts if reduction == "none" else (), x.dtype)


def _nll_parts(x, t, w, ignore_index):
    """(picked log-probs, per-element weights) with classes moved to the last axis."""
    if x.ndim == 1:
        x, t = x[None], t[None]
    xl = np.moveaxis(x, 1, -1)  # N *d C
    valid = t != ignore_index
    safe = np.where(valid, t, 0)
    if np.any((safe < 0) | (safe >= xl.shape[-1])):
        bad = safe[(safe < 0) | (safe >= xl.shape[-1])].flat[0]
        raise IndexError(f"Target {bad} is out of bounds.")
    picked = np.take_along_axis(xl, safe[..., None], axis=-1)[..., 0]
    weights = (w[0][safe] if w else np.ones_like(picked)) * valid
    return picked, weights.astype(x.dtype), safe


def _nll_eager(x, t, *w, reduction, ignore_index):
    picked, weights, _ = _nll_parts(x, t, w, ignore_index)
    losses = -picked * weights
    if x.ndim == 1:
        losses = losses[0]
    if reduction == "none":
        return losses
    if reduction == "sum":
        return np.sum(losses)
    return np.sum(losses) / np.sum(weights)


def _nll_backward(ctx, g):
    t = ctx.inputs[1]
    w = ctx.inputs[2:] if len(ctx.metas) > 2 else ()
    gx = apply(nll_loss_backward_op, g, t, *w, input_shape=tuple(ctx.metas[0].shape),
               **ctx.attrs)
    return (gx, None) + (None,) * len(w)


nll_loss_op = register("nll_loss", infer=_nll_meta, eager=_nll_eager, saves=(1, 2),
                       backward=_nll_backward,
                       grad_fn=lambda ctx: "NllLoss2DBackward0" if len(ctx.metas[0].shape) == 4
                       else "NllLossBackward0")


def _nll_backward_eager(g, t, *w, input_shape, reduction, ignore_index):
    x_shape = tuple(input_shape)
    dummy = np.zeros(x_shape, g.dtype)
    _, weights, safe = _nll_parts(dummy, t, w, ignore_index)
    if reduction == "mean":
        scale = -g / np.sum(weights)
    elif reduction == "sum":
        scale = -g
    else:
        scale = -(g[None] if len(x_shape) == 1 else g)
    contrib = (weights * scale).astype(g.dtype)  # N *d
    out = np.zeros(x_shape if len(x_shape) > 1 else (1,) + x_shape, g.dtype)
    outl = np.moveaxis(out, 1, -1)
    np.put_along_axis(outl, safe[..., None], contrib[..., None], axis=-1)
    return out if len(x_shape) > 1 else out[0]


def _nll_backward_backward(ctx, gg):
    t = ctx.inputs[1]
    w = ctx.inputs[2:] if len(ctx.metas) > 2 else ()
    attrs = {k: ctx.attrs[k] for k in ("reduction", "ignore_index")}
    return (apply(nll_loss_op, gg, t, *w, **attrs), None) + (None,) * len(w)


nll_loss_backward_op = register(
    "nll_loss_backward",
    infer=lambda g, t, *w, input_shape, reduction, ignore_index: Meta(tuple(input_shape),
                                                                       g.dtype),
    eager=_nll_backward_eager, saves=(1, 2), backward=_nll_backward_backward)


def nll_loss(x, target, weight=None, ignore_index=-100, reduction="mean"):
    check_reduction(reduction)
    inputs = (x, target) if weight is None else (x, target, weight)
    return apply(nll_loss_op, *inputs, reduction=reduction, ignore_index=ignore_index)
