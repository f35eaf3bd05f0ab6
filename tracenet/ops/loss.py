"""Loss primitives with their own torch backward nodes: mse_loss, nll_loss (cross entropy is
log_softmax followed by nll_loss, as in torch), binary_cross_entropy (on probabilities and on
logits), smooth_l1_loss and huber_loss. Losses without a node of their own in torch (l1, kl_div)
are compositions in tracenet.nn.functional."""
import numpy as np

from .. import _dtype
from .._meta import Meta
from .. import _grad_mode as grad_mode
from . import common
from .elementwise import _SUB_BOOLS_MSG, clamp, exp, log, log1p, relu, sigmoid
from .reduce import sum_to_shape
from .registry import apply, register

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


def _word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def _sizes(shape):
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _mse_meta(x, y, reduction):
    shape = common.broadcast_shapes(tuple(x.shape), tuple(y.shape))
    dt = _dtype.result_type(x, y)
    if not dt.is_floating_point:
        raise NotImplementedError(f"\"mse_cpu\" not implemented for '{_word(dt)}'")
    return Meta(shape if reduction == "none" else (), dt)


def _mse_backward(ctx, g):
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


def _mse_eager(x, y, reduction):
    with np.errstate(invalid="ignore", divide="ignore"):
        return _reduce_np(np.square(x - y), reduction)


mse_loss_op = register("mse_loss", infer=_mse_meta, eager=_mse_eager, saves=(0, 1),
                       backward=_mse_backward)


def mse_loss(x, y, reduction="mean"):
    """Mean squared error of same-shaped (or broadcastable) tensors; torch's size warning and
    legacy arguments are handled by nn.functional.mse_loss."""
    check_reduction(reduction)
    return apply(mse_loss_op, x, y, reduction=reduction)


# --- nll ------------------------------------------------------------------------------------------


def _nll_meta(x, t, *w, reduction, ignore_index):
    xs, ts = tuple(x.shape), tuple(t.shape)
    nd = len(xs)
    if nd == 4:
        kernel = "nll_loss2d_forward_out_frame"
        if len(ts) != 3:
            raise RuntimeError("only batches of spatial targets supported (3D tensors) but got "
                               f"targets of dimension: {len(ts)}")
        _check_target_dtype(t)
        if w and common.numel(w[0].shape) != xs[1]:
            raise RuntimeError("weight tensor should be defined either for all or no classes")
        if (xs[0], xs[2], xs[3]) != ts:
            raise RuntimeError(f"size mismatch (got input: {_sizes(xs)} , target: {_sizes(ts)}")
        out = ts
    elif nd in (1, 2):
        kernel = "nll_loss_out_frame"
        if len(ts) > 1:
            raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
        _check_target_dtype(t)
        if nd == 1 and len(ts) == 1 and ts[0] != 1:
            raise ValueError(f"For 1D input, 1D target must have size 1, but got target size: "
                             f"{ts[0]}")
        if nd == 2 and (len(ts) != 1 or ts[0] != xs[0]):
            raise RuntimeError(f"size mismatch (got input: {_sizes(xs)}, target: {_sizes(ts)})")
        n_classes = xs[-1]
        if w and (len(w[0].shape) != 1 or w[0].shape[0] != n_classes):
            raise RuntimeError(f"weight tensor should be defined either for all {n_classes} "
                               f"classes or no classes but got weight tensor of shape: "
                               f"{_sizes(w[0].shape)}")
        out = (xs[0],) if nd == 2 else ()
    else:
        raise RuntimeError(f"the nll_loss op takes 1-D, 2-D or 4-D input, got {nd}-D; call "
                           "ops.loss.nll_loss")
    if not x.dtype.is_floating_point:
        raise NotImplementedError(f"\"{kernel}\" not implemented for '{_word(x.dtype)}'")
    if w and w[0].dtype is not x.dtype:
        raise RuntimeError(f"expected scalar type {_word(x.dtype)} but found {_word(w[0].dtype)}")
    return Meta(out if reduction == "none" else (), x.dtype)


def _check_target_dtype(t):
    if t.dtype is not _dtype.int64:
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {_word(t.dtype)}")


def _nll_parts(x, t, w, ignore_index):
    """(picked log-probs, per-element weights, safe targets) with classes on the last axis."""
    if x.ndim == 1:
        x, t = x[None], t.reshape(1)
    valid = t != ignore_index
    all_valid = valid.all()
    safe = t if all_valid else np.where(valid, t, 0)
    n_classes = x.shape[1]
    if safe.size and (safe.min() < 0 or safe.max() >= n_classes):
        bad = (safe < 0) | (safe >= n_classes)
        raise IndexError(f"Target {safe[bad].flat[0]} is out of bounds.")
    if x.ndim == 2:  # (N, C): plain fancy indexing, no index broadcasting machinery
        picked = x[np.arange(len(safe)), safe]
    else:
        picked = np.take_along_axis(np.moveaxis(x, 1, -1), safe[..., None], axis=-1)[..., 0]
    if not all_valid:  # an ignored target adds 0, as torch skips it: what it stands in for
        picked = np.where(valid, picked, 0)  # (class 0) may be -inf, and -inf * 0 is NaN
    weights = (w[0].reshape(-1)[safe] * valid).astype(x.dtype) if w else valid.astype(x.dtype)
    return picked, weights, safe


def _plain_targets(shape, t, w, ignore_index):
    """Whether a (N, C) batch (``shape``) has no class weights and every target is a class
    (none out of range or ignored): the common case, computed without per-element weights."""
    if len(shape) != 2 or w or not t.size:
        return False
    if t.size <= _FEW:  # a few targets: Python's min and max cost less than numpy's
        values = t.tolist()
        lo, hi = min(values), max(values)
    else:
        lo, hi = t.min(), t.max()
    return 0 <= lo and hi < shape[1] and not lo <= ignore_index <= hi


_FEW = 32


def _nll_eager(x, t, *w, reduction, ignore_index):
    if reduction == "mean" and _plain_targets(x.shape, t, w, ignore_index):
        # every weight is 1: the same sums as below, without multiplying by them
        n = len(t)
        if n == 1:  # (-x / 1 is -x: one element, read without fancy indexing)
            return np.negative(x[0, t[0]])
        picked = np.negative(x[np.arange(n), t])
        return np.add.reduce(picked) / x.dtype.type(n)
    picked, weights, _ = _nll_parts(x, t, w, ignore_index)
    losses = -picked * weights
    if x.ndim == 1:
        losses = losses[0]
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    total = weights.sum()
    if not total:  # every target ignored: 0 / 0 is NaN, quietly, as in torch
        with np.errstate(invalid="ignore", divide="ignore"):
            return losses.sum() / total
    return losses.sum() / total


def _nll_backward(ctx, g):
    t = ctx.inputs[1]
    w = ctx.inputs[2:] if len(ctx.metas) > 2 else ()
    gx = apply(nll_loss_backward_op, g, t, *w, input_shape=tuple(ctx.metas[0].shape),
               **ctx.attrs)
    return (gx, None) + (None,) * len(w)


def _nll_backward_np(ctx, g):
    t = ctx.inputs[1]._data
    w = (ctx.inputs[2]._data,) if len(ctx.metas) > 2 else ()
    gx = _nll_backward_eager(g, t, *w, input_shape=tuple(ctx.metas[0].shape),
                             reduction=ctx.attrs["reduction"],
                             ignore_index=ctx.attrs["ignore_index"])
    return (gx, None) + (None,) * len(w)


# the node name of nll_loss of (N, C) scores (of (N, C, H, W): NllLoss2DBackward0)
NLL_NODE = "NllLossBackward0"
nll_loss_op = register("nll_loss", infer=_nll_meta, eager=_nll_eager, saves=(1, 2),
                       nondiff=(2,), backward=_nll_backward, eager_backward=_nll_backward_np,
                       cache_infer=True,
                       grad_fn=lambda ctx: "NllLoss2DBackward0" if len(ctx.metas[0].shape) == 4
                       else NLL_NODE)


def _nll_backward_eager(g, t, *w, input_shape, reduction, ignore_index):
    x_shape = tuple(input_shape)
    if reduction == "mean" and _plain_targets(x_shape, t, w, ignore_index):
        # every weight is 1: -g / N at each target
        out = np.zeros(x_shape, g.dtype)
        if len(t) == 1:  # (a batch of one: -g / 1 is -g, set without fancy indexing)
            out[0, t[0]] = -g
        else:
            out[np.arange(len(t)), t] = (-g / g.dtype.type(len(t))).astype(g.dtype)
        return out
    # only the targets' weights are read: a broadcast zero stands in for the input
    dummy = np.broadcast_to(np.zeros((), g.dtype), x_shape)
    _, weights, safe = _nll_parts(dummy, t, w, ignore_index)
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = -g / weights.sum()
    elif reduction == "sum":
        scale = -g
    else:
        scale = -(g.reshape(1) if len(x_shape) == 1 else g)
    # ignored targets get no gradient, even when every target is (scale is then infinite; a
    # target of weight 0 then gets 0 * inf = NaN, as in torch)
    valid = (t != ignore_index).reshape(weights.shape)
    with np.errstate(invalid="ignore"):
        contrib = np.where(valid, weights * scale, 0).astype(g.dtype)  # N *d
    out = np.zeros(x_shape if len(x_shape) > 1 else (1,) + x_shape, g.dtype)
    if out.ndim == 2:
        out[np.arange(len(safe)), safe] = contrib
    else:
        np.put_along_axis(np.moveaxis(out, 1, -1), safe[..., None], contrib[..., None], axis=-1)
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
    """Negative log-likelihood over class dim 1 (dim 0 for 1-D input); inputs with 3 or more
    than 4 dims run as 4-D (N, C, 1, -1), as torch does."""
    check_reduction(reduction)
    nd = x.dim()
    if nd < 1:
        raise ValueError(f"Expected 1 or more dimensions (got {nd})")
    if nd != 1:
        ts = target._data.shape if target._ir is None else tuple(target.shape)
        tb = ts[0] if ts else 0
        if x.shape[0] != tb:
            raise ValueError(f"Expected input batch_size ({x.shape[0]}) to match target "
                             f"batch_size ({tb}).")
    extra = () if weight is None else (weight,)
    attrs = dict(reduction=reduction, ignore_index=int(ignore_index))
    if weight is not None and weight.requires_grad and grad_mode.is_grad_enabled():
        fn = "nll_loss_forward" if nd in (1, 2) else "nll_loss2d_forward"
        raise RuntimeError(f"The function '{fn}' is not differentiable with respect to argument "
                           "'weight'. This input cannot have requires_grad True.")
    if nd in (1, 2, 4):
        return apply(nll_loss_op, x, target, *extra, **attrs)
    n, c = x.shape[0], x.shape[1]
    out_size = (n,) + tuple(x.shape[2:])
    if tuple(target.shape[1:]) != tuple(x.shape[2:]):
        raise RuntimeError(f"Expected target size {_sizes(out_size)}, got "
                           f"{_sizes(target.shape)}")
    x4 = x.reshape(n, c, 1, -1) if x.numel() else x.reshape(n, c, 0, 0)
    t3 = target.reshape(n, 1, -1) if target.numel() else target.reshape(n, 0, 0)
    out = apply(nll_loss_op, x4, t3, *extra, **attrs)
    return out.view(out_size) if reduction == "none" else out


# --- pointwise losses with their own backward nodes -------------------------------------------


def _cast_grad(g, meta):
    """A gradient in the dtype of the input it belongs to (mixed-dtype losses)."""
    return g if g.dtype is meta.dtype else g.to(meta.dtype)


def _mean_scale(ctx, g):
    """The incoming gradient, divided by the element count under reduction='mean'."""
    if ctx.attrs["reduction"] == "mean":
        return g * (1.0 / max(common.numel(ctx.metas[0].shape), 1))
    return g


def _check_same_shape(metas):
    shape = tuple(metas[0].shape)
    for m in metas[1:]:
        if tuple(m.shape) != shape:
            raise RuntimeError(f"output with shape {_sizes(shape)} doesn't match the broadcast "
                               f"shape {_sizes(common.broadcast_shapes(shape, tuple(m.shape)))}")
    return shape


# binary cross entropy on probabilities: log terms clamped at -100, the gradient's denominator
# x (1 - x) clamped at torch's single-precision epsilon
BCE_LOG_MIN = -100.0
BCE_EPS = float(np.float32(1e-12))


def _bce_meta(x, t, *w, reduction):
    if t.dtype is not x.dtype:
        raise RuntimeError(f"Found dtype {_word(t.dtype)} but expected {_word(x.dtype)}")
    if not x.dtype.is_floating_point:
        raise NotImplementedError(f"\"binary_cross_entropy\" not implemented for "
                                  f"'{_word(x.dtype)}'")
    shape = _check_same_shape((x, t) + w)
    return Meta(shape if reduction == "none" else (), x.dtype)


def check_probabilities(x, t):
    """torch's range check of binary_cross_entropy, element by element: the input, then the
    target (NaN is out of range)."""
    bad_x = ~((x >= 0) & (x <= 1))
    bad_t = ~((t >= 0) & (t <= 1))
    bad = (bad_x | bad_t).reshape(-1)
    if bad.any():
        first = int(np.argmax(bad))
        which = "input" if bad_x.reshape(-1)[first] else "target"
        raise RuntimeError(f"all elements of {which} should be between 0 and 1")


def _bce_eager(x, t, *w, reduction):
    check_probabilities(x, t)
    log_x = np.maximum(np.log(x), BCE_LOG_MIN)
    log_1mx = np.maximum(np.log1p(-x), BCE_LOG_MIN)
    loss = (t - 1) * log_1mx - t * log_x
    if w:
        loss = loss * w[0].astype(x.dtype, copy=False)
    return _reduce_np(loss, reduction)


def _bce_backward(ctx, g):
    x, t = ctx.inputs[0], ctx.inputs[1]
    g = _mean_scale(ctx, g)
    if len(ctx.metas) > 2:
        w = ctx.inputs[2]
        g = g * (w if w.dtype is g.dtype else w.to(g.dtype))
    gx = gt = None
    if ctx.needs_input_grad[0]:
        gx = g * (x - t) / clamp(x * (1.0 - x), min=BCE_EPS)
    if ctx.needs_input_grad[1]:
        gt = g * (log1p(-x) - log(x))
    return (gx, gt) + (None,) * (len(ctx.metas) - 2)


bce_op = common.register_quiet(
    "binary_cross_entropy", infer=_bce_meta, eager=_bce_eager, saves=(0, 1, 2), nondiff=(2,),
    backward=_bce_backward, grad_fn="BinaryCrossEntropyBackward0")


def _no_grad_weight(fn, name, w):
    if w is not None and w.requires_grad and grad_mode.is_grad_enabled():
        raise RuntimeError(f"The function '{fn}' is not differentiable with respect to argument "
                           f"'{name}'. This input cannot have requires_grad True.")


def binary_cross_entropy(x, target, weight=None, reduction="mean"):
    """Binary cross entropy of probabilities ``x`` (a weight must already have x's shape)."""
    check_reduction(reduction)
    _no_grad_weight("binary_cross_entropy", "weight", weight)
    extra = () if weight is None else (weight,)
    return apply(bce_op, x, target, *extra, reduction=reduction)


# binary cross entropy on logits: (1 - t) x - (1 + (p - 1) t) log sigmoid(x), with
# log sigmoid(x) = min(x, 0) - log1p(exp(-|x|)) so no term overflows


def _bce_logits_meta(x, t, *extra, reduction, weighted, pos_weighted):
    if t.dtype is _dtype.bool_:
        raise RuntimeError(_SUB_BOOLS_MSG)
    rt = _dtype.promote_types(x.dtype, t.dtype)
    if rt.is_floating_point and not t.dtype.is_floating_point:
        raise RuntimeError(f"result type {_word(rt)} can't be cast to the desired output type "
                           f"{_word(t.dtype)}")
    if not x.dtype.is_floating_point:
        raise NotImplementedError(f"\"log_sigmoid_cpu\" not implemented for '{_word(x.dtype)}'")
    shape = tuple(x.shape)
    w = extra[0] if weighted else None
    pw = extra[-1] if pos_weighted else None
    for operand, first in ((pw, True), (w, False)):
        if operand is None:
            continue
        pair = (tuple(operand.shape), shape) if first else (shape, tuple(operand.shape))
        full = common.broadcast_shapes(*pair)
        if full != shape:
            raise RuntimeError(f"output with shape {_sizes(shape)} doesn't match the broadcast "
                               f"shape {_sizes(full)}")
    return Meta(shape if reduction == "none" else (), t.dtype)


def _log_sigmoid_np(x):
    return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))


def _bce_logits_parts(extra, weighted, pos_weighted):
    w = extra[0] if weighted else None
    pw = extra[-1] if pos_weighted else None
    return w, pw


def _bce_logits_eager(x, t, *extra, reduction, weighted, pos_weighted):
    w, pw = _bce_logits_parts(extra, weighted, pos_weighted)
    log_sig = _log_sigmoid_np(x)
    if pw is not None:
        loss = (1 - t) * x - ((pw - 1) * t + 1) * log_sig
    else:
        loss = (1 - t) * x - log_sig
    if w is not None:
        loss = loss * w
    return _reduce_np(loss, reduction)


def _bce_logits_backward(ctx, g):
    x, t = ctx.inputs[0], ctx.inputs[1]
    w, pw = _bce_logits_parts(ctx.inputs[2:], ctx.attrs["weighted"], ctx.attrs["pos_weighted"])
    g = _mean_scale(ctx, g)
    if w is not None:
        g = g * w
    gx = gt = None
    if ctx.needs_input_grad[0]:
        s = sigmoid(x)
        if pw is not None:
            gx = g * (s * ((pw - 1) * t + 1) - pw * t)
        else:
            gx = g * (s - t)
        gx = _cast_grad(gx, ctx.metas[0])
    if ctx.needs_input_grad[1]:
        if pw is not None:
            log_sig = -relu(-x) - log1p(exp(-x.abs()))
            gt = g * (-x - (pw - 1) * log_sig)
        else:
            gt = g * -x
        gt = _cast_grad(gt, ctx.metas[1])
    return (gx, gt) + (None,) * (len(ctx.metas) - 2)


bce_logits_op = common.register_quiet(
    "binary_cross_entropy_with_logits", infer=_bce_logits_meta, eager=_bce_logits_eager,
    saves=(0, 1, 2, 3), nondiff=(2, 3), backward=_bce_logits_backward,
    grad_fn="BinaryCrossEntropyWithLogitsBackward0")


def binary_cross_entropy_with_logits(x, target, weight=None, pos_weight=None,
                                     reduction="mean"):
    """Binary cross entropy of logits; ``weight`` and ``pos_weight`` broadcast to x's shape."""
    check_reduction(reduction)
    _no_grad_weight("binary_cross_entropy_with_logits", "weight", weight)
    _no_grad_weight("binary_cross_entropy_with_logits", "pos_weight", pos_weight)
    extra = tuple(v for v in (weight, pos_weight) if v is not None)
    return apply(bce_logits_op, x, target, *extra, reduction=reduction,
                 weighted=weight is not None, pos_weighted=pos_weight is not None)


# smooth L1 (beta) and Huber (delta): quadratic near zero, linear beyond


def _smooth_l1_meta(x, t, reduction, beta):
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    dt = _dtype.promote_types(x.dtype, t.dtype)
    if not dt.is_floating_point:
        raise NotImplementedError(f"\"smooth_l1_cpu\" not implemented for '{_word(dt)}'")
    shape = _check_same_shape((x, t))
    return Meta(shape if reduction == "none" else (), dt)


def _smooth_l1_eager(x, t, reduction, beta):
    d = x - t
    ad = np.abs(d)
    loss = np.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)
    return _reduce_np(loss, reduction)


def _pointwise_loss_grads(ctx, g, dloss):
    """(input grad, target grad) of a loss of x - t whose derivative is ``dloss``."""
    g = _mean_scale(ctx, g) * dloss
    gx = _cast_grad(g, ctx.metas[0]) if ctx.needs_input_grad[0] else None
    gt = _cast_grad(-g, ctx.metas[1]) if ctx.needs_input_grad[1] else None
    return gx, gt


def _smooth_l1_backward(ctx, g):
    x, t = ctx.inputs
    beta = ctx.attrs["beta"]
    return _pointwise_loss_grads(ctx, g, ((x - t) * (1.0 / beta)).clamp(-1.0, 1.0))


smooth_l1_op = common.register_quiet(
    "smooth_l1_loss", infer=_smooth_l1_meta, eager=_smooth_l1_eager, saves=(0, 1),
    backward=_smooth_l1_backward, grad_fn="SmoothL1LossBackward0")


def smooth_l1_loss(x, target, reduction="mean", beta=1.0):
    check_reduction(reduction)
    return apply(smooth_l1_op, x, target, reduction=reduction, beta=float(beta))


def _huber_meta(x, t, reduction, delta):
    if delta <= 0:
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
    dt = _dtype.promote_types(x.dtype, t.dtype)
    if not dt.is_floating_point:
        raise NotImplementedError(f"\"huber_cpu\" not implemented for '{_word(dt)}'")
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"result type {_word(dt)} can't be cast to the desired output type "
                           f"{_word(x.dtype)}")
    shape = _check_same_shape((x, t))
    return Meta(shape if reduction == "none" else (), x.dtype)


def _huber_eager(x, t, reduction, delta):
    d = x - t
    ad = np.abs(d)
    loss = np.where(ad < delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
    return _reduce_np(loss, reduction)


def _huber_backward(ctx, g):
    x, t = ctx.inputs
    delta = ctx.attrs["delta"]
    return _pointwise_loss_grads(ctx, g, (x - t).clamp(-delta, delta))


huber_op = common.register_quiet(
    "huber_loss", infer=_huber_meta, eager=_huber_eager, saves=(0, 1),
    backward=_huber_backward, grad_fn="HuberLossBackward0")


def huber_loss(x, target, reduction="mean", delta=1.0):
    check_reduction(reduction)
    return apply(huber_op, x, target, reduction=reduction, delta=float(delta))
