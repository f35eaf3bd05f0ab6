"""``tracenet.nn.functional``: torch's functional API over the op registry.

Functions here validate and normalise arguments (tuples, defaults, legacy loss arguments) and
then call registry ops, so every computation still has exactly one definition.
"""
import math
import warnings

import numpy as np

from .. import _dtype, _random
from ..autograd import grad_mode
from ..ops import common, elementwise as ew, index as ix, linalg, loss as lossops, nn as nnops, \
    reduce as rd, shape as sh
from ..ops.common import is_tensor, pair
from . import _reduction

relu = ew.relu
sigmoid = ew.sigmoid
tanh = ew.tanh


def relu_(x):
    return x.relu_()


def _relu(x, inplace=False):
    return x.relu_() if inplace else ew.relu(x)


# --- linear -------------------------------------------------------------------------------------


def linear(x, weight, bias=None):
    if x.dim() == 2 and bias is not None:
        return linalg.addmm(bias, x, weight.t())
    out = linalg.matmul(x, weight.t())
    return out if bias is None else out + bias


def bilinear(x1, x2, weight, bias=None):
    # y_k = x1 W_k x2^T + b_k
    out = (linalg.matmul(x1.unsqueeze(-2).unsqueeze(-3), weight.unsqueeze(0) if x1.dim() > 1
                         else weight)
           .squeeze(-2) * x2.unsqueeze(-2)).sum(-1)
    return out if bias is None else out + bias


# --- convolution ----------------------------------------------------------------------------


def _conv(n, x, weight, bias, stride, padding, dilation, groups):
    name = f"conv{n}d"
    unbatched = x.dim() == n + 1
    if x.dim() not in (n + 1, n + 2):
        raise RuntimeError(f"Expected {n + 1}D (unbatched) or {n + 2}D (batched) input to "
                           f"{name}, but got input of size: [{', '.join(map(str, x.shape))}]")
    if unbatched:
        x = x.unsqueeze(0)
    stride, dilation = pair(stride, n, "stride"), pair(dilation, n, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * n
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise RuntimeError("padding='same' is not supported for strided convolutions")
            total = [dilation[i] * (weight.shape[2 + i] - 1) for i in range(n)]
            left = [t // 2 for t in total]
            if any(t % 2 for t in total):
                # asymmetric: pad the extra element on the right explicitly, as torch does
                widths = []
                for i in reversed(range(n)):
                    widths += [0, total[i] - 2 * left[i]]
                x = pad(x, widths)
            padding = tuple(left)
        else:
            raise ValueError(f"Invalid padding string '{padding}', should be one of "
                             "{'valid', 'same'}")
    else:
        padding = pair(padding, n, "padding")
    if any(s <= 0 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    out = nnops.convolution(x, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv(1, input, weight, bias, stride, padding, dilation, groups)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv(2, input, weight, bias, stride, padding, dilation, groups)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv(3, input, weight, bias, stride, padding, dilation, groups)


# --- pooling --------------------------------------------------------------------------------


def _pool_input(x, n, name):
    if x.dim() not in (n + 1, n + 2):
        raise RuntimeError(f"{name}: Expected {n + 1}D or {n + 2}D input tensor, but got input of "
                           f"size [{', '.join(map(str, x.shape))}]" if n > 1 else
                           f"{name}() Expected 2D or 3D input tensor, but got "
                           f"[{', '.join(map(str, x.shape))}]")
    return (x.unsqueeze(0), True) if x.dim() == n + 1 else (x, False)


def _max_pool(n, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    kernel = pair(kernel_size, n, "kernel_size")
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) \
        else pair(stride, n, "stride")
    x, unbatched = _pool_input(x, n, f"max_pool{n}d")
    out, idx = nnops.max_pool(x, kernel, stride, pair(padding, n), pair(dilation, n), ceil_mode)
    if unbatched:
        out, idx = out.squeeze(0), idx.squeeze(0)
    return (out, idx) if return_indices else out


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool(1, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool(2, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool(3, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d_with_indices(*args, **kwargs):
    kwargs["return_indices"] = True
    return max_pool2d(*args, **kwargs)


def _avg_pool(n, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override):
    kernel = pair(kernel_size, n, "kernel_size")
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) \
        else pair(stride, n, "stride")
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    x, unbatched = _pool_input(x, n, f"avg_pool{n}d")
    out = nnops.avg_pool(x, kernel, stride, pair(padding, n), ceil_mode, count_include_pad,
                         divisor_override)
    return out.squeeze(0) if unbatched else out


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    return _avg_pool(1, input, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    return _avg_pool(2, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    return _avg_pool(3, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


# --- padding ----------------------------------------------------------------------------------


def pad(input, pad, mode="constant", value=None):
    if len(pad) % 2:
        raise RuntimeError("Padding length must be divisible by 2")
    if len(pad) // 2 > input.dim():
        raise RuntimeError("Padding length should be less than or equal to two times the input "
                           "dimension but got padding length " + str(len(pad)) +
                           " and input of dimension " + str(input.dim()))
    return nnops.pad(input, tuple(int(p) for p in pad), mode, 0.0 if value is None else value)


# --- activations --------------------------------------------------------------------------------


def _implicit_dim(name, ndim, stacklevel):
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call to "
                  "include dim=X as an argument.", UserWarning, stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        dim = _implicit_dim("softmax", input.dim(), _stacklevel)
    if dtype is not None:
        input = input.to(dtype)
    return nnops.softmax(input, dim)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        dim = _implicit_dim("log_softmax", input.dim(), _stacklevel)
    if dtype is not None:
        input = input.to(dtype)
    return nnops.log_softmax(input, dim)


def softmin(input, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        dim = _implicit_dim("softmin", input.dim(), _stacklevel)
    return nnops.softmax(-input, dim)


# --- dropout --------------------------------------------------------------------------------


def _check_p(p):
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def dropout(input, p=0.5, training=True, inplace=False):
    _check_p(p)
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input.mul_(0) if inplace else input * 0.0
    keep = (_random.rng().random(tuple(input.shape)) >= p).astype(input.dtype.np)
    mask = common.tensor_cls()._wrap(keep / (1.0 - p))
    mask = mask.to(input.dtype)
    return input.mul_(mask) if inplace else input * mask


# --- losses -------------------------------------------------------------------------------------


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    reduction = _reduction.resolve(size_average, reduce, reduction)
    return lossops.mse_loss(input, target, reduction)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    reduction = _reduction.resolve(size_average, reduce, reduction)
    return lossops.nll_loss(input, target, weight, ignore_index, reduction)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    reduction = _reduction.resolve(size_average, reduce, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    class_dim = 0 if input.dim() == 1 else 1
    logp = nnops.log_softmax(input, class_dim)
    if target.dtype.is_floating_point:
        return _soft_target_cross_entropy(logp, target, weight, reduction, label_smoothing,
                                          class_dim)
    nll = lossops.nll_loss(logp, target, weight, ignore_index, reduction)
    if label_smoothing == 0.0:
        return nll
    return _smoothed(logp, target, weight, ignore_index, reduction, label_smoothing, class_dim,
                     nll)


def _class_shape(logp, class_dim):
    return tuple(logp.shape[class_dim] if i == class_dim else 1 for i in range(logp.dim()))


def _soft_target_cross_entropy(logp, target, weight, reduction, label_smoothing, class_dim):
    if tuple(target.shape) != tuple(logp.shape):
        raise RuntimeError(f"Expected target size {list(logp.shape)}, got {list(target.shape)}")
    n_classes = logp.shape[class_dim]
    if label_smoothing > 0:
        target = target * (1 - label_smoothing) + label_smoothing / n_classes
    prod = logp * target
    if weight is not None:
        prod = prod * weight.reshape(_class_shape(logp, class_dim))
    losses = -prod.sum(class_dim)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / float(max(losses.numel(), 1)) if losses.dim() else losses


def _smoothed(logp, target, weight, ignore_index, reduction, eps, class_dim, nll):
    n_classes = logp.shape[class_dim]
    valid = (target != ignore_index).to(logp.dtype)
    wlogp = logp if weight is None else logp * weight.reshape(_class_shape(logp, class_dim))
    smooth = -wlogp.sum(class_dim) * valid
    if reduction == "none":
        smooth_loss = smooth
    elif reduction == "sum":
        smooth_loss = smooth.sum()
    else:
        if weight is None:
            denom = valid.sum()
        else:
            safe = ew.where(target != ignore_index, target, target * 0)
            denom = (weight[safe] * valid).sum()
        smooth_loss = smooth.sum() / denom
    return nll * (1 - eps) + smooth_loss * (eps / n_classes)


# --- shape helpers --------------------------------------------------------------------------


def flatten(input, start_dim=0, end_dim=-1):
    return sh.flatten(input, start_dim, end_dim)
