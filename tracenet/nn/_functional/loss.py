"""The loss part of tracenet.nn.functional (re-exported there).

Losses with a backward node of their own in torch (mse, nll, binary cross entropy on
probabilities and on logits, smooth L1, Huber) call their registry op; the others (l1, kl_div,
the label-smoothing and probability-target forms of cross entropy) are compositions, with the
grad_fn chain torch builds for them."""
import warnings

import numpy as np

from ..._dtype import _BY_NP, int64
from ...autograd import engine, grad_mode
from ...ops import common, creation, loss as lossops, nn as nnops
from ...size import Size
from ...tensor import Tensor
from .. import _reduction

__all__ = ["l1_loss", "mse_loss", "nll_loss", "cross_entropy", "kl_div", "binary_cross_entropy",
           "binary_cross_entropy_with_logits", "smooth_l1_loss", "huber_loss"]


def _sizes(shape):
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def _warn_size_mismatch(input, target):
    if target.size() != input.size():
        warnings.warn(f"Using a target size ({target.size()}) that is different to the input size "
                      f"({input.size()}). This will likely lead to incorrect results due to "
                      "broadcasting. Please ensure they have the same size.", UserWarning,
                      stacklevel=3)


def _broadcast_pair(a, b):
    """torch.broadcast_tensors for two tensors: only a tensor whose shape changes is expanded."""
    shape = common.broadcast_shapes(tuple(a.shape), tuple(b.shape))
    a = a if tuple(a.shape) == shape else a.expand(shape)
    b = b if tuple(b.shape) == shape else b.expand(shape)
    return a, b


def _broadcast_shapes(first, second):
    """torch.broadcast_shapes of two shapes, with its error for incompatible ones."""
    ndim = max(len(first), len(second))
    out = [1] * (ndim - len(first)) + [int(s) for s in first]
    for i in range(1, len(second) + 1):
        d = int(second[-i])
        if d == 1:
            continue
        if out[-i] == 1:
            out[-i] = d
        elif out[-i] != d:
            raise RuntimeError(f"Attempting to broadcast a dimension of length {d} at -{i}! "
                               f"Mismatching argument at index 1 had {Size(second)}; but "
                               f"expected shape should be broadcastable to {_sizes(out)}")
    return tuple(out)


def _reduce(loss, reduction):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean()


def _weighted(loss, weight, reduction, mean_by_weight=True):
    """The weighted forms of l1/mse/huber: ``loss * weight``, reduced; 'mean' divides by the sum
    of the weights (l1, mse) or by the element count (huber)."""
    weighted = loss * weight
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    if reduction == "mean":
        return weighted.sum() / weight.sum() if mean_by_weight else weighted.mean()
    raise ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', "
                     "'sum'.")


def _check_weight_size(weight, size):
    if weight.size() != size:
        raise ValueError("Weights and input must have the same size.")


# --- regression losses ------------------------------------------------------------------------


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    _warn_size_mismatch(input, target)
    reduction = _reduction.resolve(size_average, reduce, reduction)
    size = input.size()
    input, target = _broadcast_pair(input, target)
    if weight is not None:
        _check_weight_size(weight, size)
        return _weighted((input - target).abs(), weight, reduction)
    reduction = _reduction.normalize(reduction)
    return _reduce((input - target).abs(), reduction)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    _warn_size_mismatch(input, target)
    reduction = _reduction.resolve(size_average, reduce, reduction)
    size = input.size()
    input, target = _broadcast_pair(input, target)
    if weight is not None:
        _check_weight_size(weight, size)
        return _weighted((input - target).pow(2), weight, reduction)
    return lossops.mse_loss(input, target, _reduction.normalize(reduction))


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean", beta=1.0):
    _warn_size_mismatch(input, target)
    reduction = _reduction.resolve(size_average, reduce, reduction)
    input, target = _broadcast_pair(input, target)
    reduction = _reduction.normalize(reduction)
    if beta == 0.0:  # the L1 loss, as in torch
        return _reduce((input - target).abs(), reduction)
    return lossops.smooth_l1_loss(input, target, reduction, beta)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    _warn_size_mismatch(input, target)
    size = input.size()
    input, target = _broadcast_pair(input, target)
    if weight is None:
        return lossops.huber_loss(input, target, _reduction.normalize(reduction), delta)
    _check_weight_size(weight, size)
    return _weighted(lossops.huber_loss(input, target, "none", delta), weight, reduction,
                     mean_by_weight=False)


# --- divergence and binary cross entropy -------------------------------------------------------

_KL_MEAN_WARNING = ("reduction: 'mean' divides the total loss by both the batch size and the "
                    "support size.'batchmean' divides only by the batch size, and aligns with the "
                    "KL div math definition.'mean' will be changed to behave the same as "
                    "'batchmean' in the next major release.")


def _xlogx(t):
    """t * log(t), 0 where t == 0 (torch.xlogy(t, t))."""
    return (t * t.log()).masked_fill(t == 0, 0.0)


def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    if size_average is not None or reduce is not None:
        red = _reduction.normalize(_reduction.legacy_get_string(size_average, reduce))
    else:
        if reduction == "mean":
            warnings.warn(_KL_MEAN_WARNING, UserWarning, stacklevel=2)
        red = "sum" if reduction == "batchmean" else _reduction.normalize(reduction)
    if not (input.dtype.is_floating_point and target.dtype.is_floating_point):
        raise RuntimeError("kl_div: Integral inputs not supported.")
    if log_target:
        loss = target.exp() * (target - input)
    else:
        loss = _xlogx(target) - target * input
    out = _reduce(loss, red)
    if reduction == "batchmean" and input.dim() != 0:
        out = out / input.shape[0]
    return out


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    reduction = _reduction.normalize(reduction)
    if target.size() != input.size():
        raise ValueError(f"Using a target size ({target.size()}) that is different to the input "
                         f"size ({input.size()}) is deprecated. Please ensure they have the same "
                         "size.")
    if weight is not None:
        shape = _broadcast_shapes(tuple(target.shape), tuple(weight.shape))
        if tuple(weight.shape) != shape:
            weight = weight.expand(shape)
    return lossops.binary_cross_entropy(input, target, weight, reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    reduction = _reduction.normalize(reduction)
    if target.size() != input.size():
        raise ValueError(f"Target size ({target.size()}) must be the same as input size "
                         f"({input.size()})")
    return lossops.binary_cross_entropy_with_logits(input, target, weight, pos_weight, reduction)


# --- classification -----------------------------------------------------------------------------


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    reduction = _reduction.normalize(_reduction.resolve(size_average, reduce, reduction))
    return lossops.nll_loss(input, target, weight, ignore_index, reduction)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    if reduction != "mean" or size_average is not None or reduce is not None:
        # (the default needs neither the legacy arguments' mapping nor validation)
        reduction = _reduction.normalize(_reduction.resolve(size_average, reduce, reduction))
    if input._ir is None and target._ir is None:  # concrete: the arrays' shapes, as tuples
        if weight is None and reduction == "mean" and label_smoothing <= 0.0:
            loss = _plain_cross_entropy(input, target, ignore_index)
            if loss is not None:
                return loss
        shape, target_shape = input._data.shape, target._data.shape
    else:
        shape, target_shape = tuple(input.shape), tuple(target.shape)
    class_dim = 0 if len(shape) == 1 else 1
    if shape == target_shape:
        # class probabilities
        if not target.dtype.is_floating_point:
            raise RuntimeError("Expected floating point type for target with class "
                               f"probabilities, got {_word(target.dtype)}")
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
        n_classes = input.shape[class_dim]
        if weight is not None and (weight.dim() != 1 or weight.numel() != n_classes):
            raise RuntimeError(f"cross_entropy: weight tensor should be defined either for all "
                               f"{n_classes} classes or no classes but got weight tensor of "
                               f"shape: {_sizes(weight.shape)}")
        _check_label_smoothing(label_smoothing)
        return _prob_target_cross_entropy(input, target, weight, reduction, label_smoothing,
                                          class_dim)
    if label_smoothing > 0.0:
        _check_label_smoothing(label_smoothing)
        return _smoothed_cross_entropy(input, target, weight, ignore_index, reduction,
                                       label_smoothing, class_dim)
    logp = nnops.log_softmax(input, class_dim)
    return lossops.nll_loss(logp, target, weight, ignore_index, reduction)


_LEAN_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INT64 = np.dtype(np.int64)


def _plain_cross_entropy(input, target, ignore_index):
    """The common cross entropy, of a concrete (N, C) float batch and N class indices with the
    mean over the batch: log_softmax then nll_loss, the same kernels, nodes (NllLossBackward0
    -> LogSoftmaxBackward0) and data errors as through the ops' dispatch, without its
    per-call shape rules and checks (these inputs pass them all). None for other inputs."""
    x, t = input._data, target._data
    if x.ndim != 2 or t.ndim != 1 or t.dtype != _INT64 or x.dtype not in _LEAN_DTYPES or \
            not x.size or x.shape[0] != t.shape[0]:
        return None
    record = grad_mode._state.enabled
    x_meta = engine.meta_of((x.shape, _BY_NP[x.dtype]))
    logp = Tensor._wrap(nnops.log_softmax_op.eager(x, dim=1))
    if record:
        engine.record(nnops.log_softmax_op, (input,), (logp,), (x_meta,), (x_meta,),
                      {"dim": 1}, plan=_LOG_SOFTMAX_PLAN)
    attrs = {"reduction": "mean", "ignore_index": int(ignore_index)}
    loss = lossops.nll_loss_op.eager(logp._data, t, **attrs)
    loss = Tensor._wrap(np.asarray(loss, x.dtype) if type(loss) is not np.ndarray or
                        loss.dtype != x.dtype else loss)
    if record:
        metas = (x_meta, engine.meta_of((t.shape, int64)))
        engine.record(lossops.nll_loss_op, (logp, target), (loss,), metas,
                      (engine.meta_of(((), x_meta.dtype)),), attrs, _NLL_NODE, _NLL_PLAN)
    return loss


# the node class of an (N, C) batch's nll_loss (the op names it per input rank)
_NLL_NODE = engine.node_class(lossops.NLL_NODE)
# which inputs get edges and are saved: float scores, then (for nll_loss) integer targets
_LOG_SOFTMAX_PLAN = engine.edge_plan(nnops.log_softmax_op, (True,))
_NLL_PLAN = engine.edge_plan(lossops.nll_loss_op, (True, False))


def _check_label_smoothing(eps):
    if eps > 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {eps:g}")


def _class_shape(x, class_dim):
    """Shape that broadcasts a per-class vector along ``class_dim`` of ``x``."""
    return tuple(x.shape[class_dim] if i == class_dim else 1 for i in range(x.dim()))


def _prob_target_cross_entropy(input, target, weight, reduction, eps, class_dim):
    n_classes = input.shape[class_dim]
    logp = nnops.log_softmax(input, class_dim)
    if eps > 0.0:
        target = target * (1 - eps) + eps / n_classes
    if weight is not None:
        logp = logp * weight.reshape(_class_shape(input, class_dim))
    prod = logp * target
    if reduction == "none":
        return -prod.sum(class_dim)
    if reduction == "sum":
        return -prod.sum()
    batch = input.numel() // n_classes if n_classes else 0
    return -prod.sum() / batch if batch else -prod.sum() / float("nan")


def _smoothed_cross_entropy(input, target, weight, ignore_index, reduction, eps, class_dim):
    n_classes = input.shape[class_dim]
    logp = nnops.log_softmax(input, class_dim)
    nll = lossops.nll_loss(logp, target, weight, ignore_index, reduction)
    ignored = target == ignore_index
    wlogp = logp if weight is None else logp * weight.reshape(_class_shape(input, class_dim))
    smooth = (-wlogp.sum(class_dim)).masked_fill(ignored, 0.0)
    if reduction == "none":
        smooth_loss = smooth
    elif reduction == "sum":
        smooth_loss = smooth.sum()
    else:
        kept = ~ignored
        if weight is None:
            denom = kept.sum()
        else:
            # the weight of each kept target, summed: a one-hot product, so no data-dependent
            # shape enters the graph
            classes = creation.arange(n_classes).reshape(_class_shape(input, class_dim))
            onehot = (target.unsqueeze(class_dim) == classes) & kept.unsqueeze(class_dim)
            denom = (onehot * weight.reshape(_class_shape(input, class_dim))).sum()
        smooth_loss = smooth.sum() / denom
    return nll * (1 - eps) + smooth_loss * (eps / n_classes)
