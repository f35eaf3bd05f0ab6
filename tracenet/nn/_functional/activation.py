"""The activation part of tracenet.nn.functional (re-exported there): activations, dropout,
linear/bilinear maps, embedding lookup and the distance functions."""
import numbers
import warnings

import numpy as np

from ..._tensor_methods import inplace as _inplace
from ...ops import activation as _activation_ops  # noqa: F401  (registers the ops)
from ... import _dtype, _random
from ...ops.embedding_renorm import embedding_renorm, renorm_rows_np
from ...tensor import Tensor
from ...autograd import grad_mode
from ...ops import activation as act, common, elementwise as ew, linalg

__all__ = ["leaky_relu", "leaky_relu_", "elu", "elu_", "gelu", "softplus", "silu", "mish",
           "hardswish", "hardsigmoid", "selu", "selu_", "celu", "celu_", "softsign",
           "tanhshrink", "logsigmoid", "glu", "prelu", "hardtanh", "hardtanh_", "relu6",
           "dropout", "dropout1d", "dropout2d", "dropout3d", "linear", "bilinear", "embedding",
           "cosine_similarity", "pairwise_distance"]

_CTYPE_NAME = {"float32": "float", "float64": "double", "int64": "long int", "bool": "bool"}
_WORD = {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}


def _number(fn, name, position, value):
    """A scalar argument as torch's argument parser reads it (a Number or a 0-dim tensor)."""
    if common.is_tensor(value) and value.dim() == 0:
        return value.item()
    if isinstance(value, (numbers.Number, np.number, np.bool_)) and not isinstance(value,
                                                                                   complex):
        return value
    raise TypeError(f"{fn}(): argument '{name}' (position {position}) must be Number, not "
                    f"{type(value).__name__}")


# --- activations ---------------------------------------------------------------------------------


def leaky_relu(input, negative_slope=0.01, inplace=False):
    slope = _number("leaky_relu", "negative_slope", 2, negative_slope)
    if inplace:
        return leaky_relu_(input, slope)
    return act.leaky_relu(input, slope)


def leaky_relu_(input, negative_slope=0.01):
    slope = _number("leaky_relu_", "negative_slope", 2, negative_slope)
    return _inplace(input, lambda x: act.leaky_relu(x, slope, _name="LeakyReluBackward1",
                                                    _inplace=True))


def elu(input, alpha=1.0, inplace=False):
    alpha = _number("elu", "alpha", 2, alpha)
    if inplace:
        return elu_(input, alpha)
    return act.elu(input, alpha)


def elu_(input, alpha=1.0):
    alpha = _number("elu_", "alpha", 2, alpha)
    return _inplace(input, lambda x: act.elu(x, alpha, _name="EluBackward1", _inplace=True))


def _pointwise(op):
    """F.<op>(input, inplace=False) of an activation without parameters; the in-place form
    keeps torch's grad_fn name."""
    def fn(input, inplace=False):
        if inplace:
            return _inplace(input, op)
        return op(input)
    fn.__name__ = op.__name__
    return fn


silu = _pointwise(act.silu)
mish = _pointwise(act.mish)
hardswish = _pointwise(act.hardswish)
hardsigmoid = _pointwise(act.hardsigmoid)


def gelu(input, *, approximate="none"):
    return act.gelu(input, approximate)


def softplus(input, beta=1.0, threshold=20.0):
    beta = _number("softplus", "beta", 2, beta)
    threshold = _number("softplus", "threshold", 3, threshold)
    return act.softplus(input, beta, threshold)


# torch's SELU constants
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def selu(input, inplace=False):
    if inplace:
        return selu_(input)
    return act.elu(input, _SELU_ALPHA, _SELU_SCALE)


def selu_(input):
    return _inplace(input, lambda x: act.elu(x, _SELU_ALPHA, _SELU_SCALE, _name="EluBackward1",
                                             _inplace=True))


def _celu_alpha(fn, alpha):
    alpha = _number(fn, "alpha", 2, alpha)
    if alpha == 0:
        raise RuntimeError("ZeroDivisionError: alpha cannot be 0 for CELU")
    return float(alpha)


def _celu(x, alpha, **named):
    """torch's celu: elu with input_scale 1 / alpha, whose (out-of-place) backward uses
    1 / float32(alpha). (Its in-place backward works from the result: exact to ~1e-8.)"""
    if not named.get("_inplace"):
        named["_backward_input_scale"] = 1.0 / float(np.float32(alpha))
    return act.elu(x, alpha, 1.0, 1.0 / alpha, **named)


def celu(input, alpha=1.0, inplace=False):
    if inplace:
        return celu_(input, alpha)
    alpha = _celu_alpha("celu", alpha)
    return _celu(input, alpha, _name="CeluBackward0")


def celu_(input, alpha=1.0):
    alpha = _celu_alpha("celu_", alpha)
    return _inplace(input, lambda x: _celu(x, alpha, _name="CeluBackward1", _inplace=True))


def softsign(input):
    return input / (input.abs() + 1)


def tanhshrink(input):
    return input - input.tanh()


def logsigmoid(input):
    return act.log_sigmoid(input)


def glu(input, dim=-1):
    if input.dim() == 0:
        raise RuntimeError("glu does not support scalars because halving size must be even")
    return act.glu(input, dim)


def prelu(input, weight):
    if not input.dtype.is_floating_point:
        raise NotImplementedError(f"\"prelu_cpu\" not implemented for '{_WORD[input.dtype.name]}'")
    if weight.dim() > 1:
        raise RuntimeError("prelu: Expected `weight` to be a scalar or 1D tensor, but got: "
                           f"ndim = {weight.dim()}")
    n = weight.numel()
    if n == 1:
        w = weight.reshape(())
    else:
        channels = input.shape[1] if input.dim() >= 2 else 1
        if n != channels:
            raise RuntimeError("Mismatch of parameter numbers and input channel size. Found "
                               f"parameter numbers = {n} and channel size = {channels}.")
        w = weight.reshape((n,) + (1,) * (input.dim() - 2))
    return act.prelu(input, w)


def _hardtanh_bounds(min_val, max_val):
    min_val = _number("hardtanh", "min_val", 2, min_val)
    max_val = _number("hardtanh", "max_val", 3, max_val)
    if min_val > max_val:
        raise ValueError("min_val cannot be greater than max_val")
    return min_val, max_val


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    min_val, max_val = _hardtanh_bounds(min_val, max_val)
    if inplace:
        return hardtanh_(input, min_val, max_val)
    return act.hardtanh(input, min_val, max_val)


def hardtanh_(input, min_val=-1.0, max_val=1.0):
    min_val, max_val = _hardtanh_bounds(min_val, max_val)
    return _inplace(input, lambda x: act.hardtanh(x, min_val, max_val))


def relu6(input, inplace=False):
    return hardtanh(input, 0.0, 6.0, inplace)


# --- dropout ---------------------------------------------------------------------------------


def _check_p(p):
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _seed(input):
    """The seed of one dropout mask: drawn from tracenet's generator in eager mode; while
    tracing, a graph input that the compiled code receives afresh on every call."""
    if input._ir is not None:
        return common.active_tracer().random_seed()
    value = int(_random.rng().integers(0, np.iinfo(np.int64).max, dtype=np.int64))
    return common.scalar_tensor(value, _dtype.int64)


def _apply_mask(input, mask_shape, p, inplace):
    if p == 1.0:
        zero = common.scalar_tensor(0, input.dtype)
        return input.mul_(zero) if inplace else input * zero
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"result type Float can't be cast to the desired output type "
                           f"{_WORD[input.dtype.name]}")
    mask = act.dropout_mask(_seed(input), mask_shape, p, input.dtype)
    return input.mul_(mask) if inplace else input * mask


def dropout(input, p=0.5, training=True, inplace=False):
    _check_p(p)
    if not training or p == 0.0:
        return input
    return _apply_mask(input, tuple(input.shape), p, inplace)


def _feature_dropout(input, p, training, inplace):
    """Channel-wise dropout of (N, C, *): one mask value per (n, c)."""
    if not training or p == 0.0:
        return input
    if input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    shape = tuple(input.shape[:2]) + (1,) * (input.dim() - 2)
    return _apply_mask(input, shape, p, inplace)


def _unbatched_feature_dropout(input, p, training, inplace):
    """Feature dropout of an input without batch dim (a batch of one, as torch does)."""
    if inplace:
        _feature_dropout(input.unsqueeze(0), p, training, True)
        return input
    return _feature_dropout(input.unsqueeze(0), p, training, False).squeeze(0)


def _deprecated_dims(fn, dim, spatial, expected):
    warnings.warn(f"{fn}: Received a {dim}-D input to {fn}, which is deprecated and will result in "
                  "an error in a future release. To retain the behavior and silence this warning, "
                  f"please use dropout instead. Note that {fn} exists to provide channel-wise "
                  f"dropout on inputs with {spatial} spatial dimensions, a channel dimension, and "
                  f"an optional batch dimension (i.e. {expected} inputs).", UserWarning,
                  stacklevel=3)


def dropout1d(input, p=0.5, training=True, inplace=False):
    _check_p(p)
    dim = input.dim()
    if dim not in (2, 3):
        raise RuntimeError(f"dropout1d: Expected 2D or 3D input, but received a {dim}D input. "
                           "Note that dropout1d exists to provide channel-wise dropout on inputs "
                           "with 1 spatial dimension, a channel dimension, and an optional batch "
                           "dimension (i.e. 2D or 3D inputs).")
    if dim == 2:
        return _unbatched_feature_dropout(input, p, training, inplace)
    return _feature_dropout(input, p, training, inplace)


def dropout2d(input, p=0.5, training=True, inplace=False):
    _check_p(p)
    dim = input.dim()
    if dim not in (3, 4):
        _deprecated_dims("dropout2d", dim, 2, "3D or 4D")
    if dim == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise "
                      "1D dropout behavior is desired - input is interpreted as shape (N, C, L), "
                      "where C is the channel dim. This behavior will change in a future release "
                      "to interpret the input as one without a batch dimension, i.e. shape (C, H, "
                      "W). To maintain the 1D channel-wise dropout behavior, please switch to "
                      "using dropout1d instead.", UserWarning, stacklevel=2)
    return _feature_dropout(input, p, training, inplace)


def dropout3d(input, p=0.5, training=True, inplace=False):
    _check_p(p)
    dim = input.dim()
    if dim not in (4, 5):
        _deprecated_dims("dropout3d", dim, 3, "4D or 5D")
    if dim != 5:
        return _unbatched_feature_dropout(input, p, training, inplace)
    return _feature_dropout(input, p, training, inplace)


# --- linear maps -------------------------------------------------------------------------------


def linear(input, weight, bias=None):
    for i, (arg, value) in enumerate((("input", input), ("weight", weight))):
        if not isinstance(value, Tensor):
            raise TypeError(f"linear(): argument '{arg}' (position {i + 1}) must be Tensor, not "
                            f"{type(value).__name__}")
    dx, dw = input.dim(), weight.dim()
    if dx == 0 or dw == 0:
        raise RuntimeError(f"both arguments to linear need to be at least 1D, but they are {dx}D "
                           f"and {dw}D")
    wt = weight.t()
    if bias is None:
        return linalg.matmul(input, wt)
    if dx == 2:
        return linalg.addmm(bias, input, wt)
    if bias.dim() == 1 and input.is_contiguous():
        # fold the leading dims into one matrix: a single addmm, viewed back
        lead = tuple(input.shape[:-1])
        out = linalg.addmm(bias, input.reshape(common.numel(lead), input.shape[-1]), wt)
        return out.view(lead + (out.shape[1],))
    return linalg.matmul(input, wt) + bias


def _size(t, dim):
    """``t.size(dim)`` with torch's errors for 0-dim tensors and dims out of range."""
    if t.dim() == 0:
        raise IndexError(f"Dimension specified as {dim} but tensor has no dimensions")
    return t.shape[common.wrap_dim(dim, t.dim())]


def bilinear(input1, input2, weight, bias=None):
    named = [("input1", input1), ("input2", input2), ("weight", weight)]
    if bias is not None:
        named.append(("bias", bias))
    if len({t.dtype for _, t in named}) > 1:
        raise RuntimeError("All tensors must have the same dtype, got " + ", ".join(
            f"{n}: {_CTYPE_NAME[t.dtype.name]}" for n, t in named))
    d1, d2 = input1.dim(), input2.dim()
    if d1 != d2:
        raise RuntimeError(f"bilinear(): input dimensions do not match: got {d1} and {d2}")
    for i in range(d1 - 1):
        if input1.shape[i] != input2.shape[i]:
            raise RuntimeError(f"bilinear(): input batch dimensions do not match at dim {i}: got "
                               f"{input1.shape[i]} and {input2.shape[i]}")
    if _size(input1, -1) != _size(weight, 1):
        raise RuntimeError(f"bilinear(): input1 size does not match weight size: got "
                           f"{input1.shape[-1]} but expected {weight.shape[1]}")
    if _size(input2, -1) != _size(weight, 2):
        raise RuntimeError(f"bilinear(): input2 size does not match weight size: got "
                           f"{input2.shape[-1]} but expected {weight.shape[2]}")
    if bias is not None and _size(bias, 0) != weight.shape[0]:
        raise RuntimeError(f"bilinear(): bias size does not match weight size: got "
                           f"{bias.shape[0]} but expected {weight.shape[0]}")
    if weight.dim() != 3:
        raise RuntimeError("number of dimensions must match")
    # y[n, o] = sum_ij x1[n, i] W[o, i, j] x2[n, j]: contract i with one matrix product, then j
    n_out, n1, n2 = weight.shape
    lead = tuple(input1.shape[:-1])
    rows = common.numel(lead)
    a = input1.reshape(rows, n1)
    b = input2.reshape(rows, n2)
    w = weight.permute(1, 0, 2).reshape(n1, n_out * n2)
    y = (linalg.mm(a, w).view(rows, n_out, n2) * b.unsqueeze(1)).sum(-1)
    out = y.view(lead + (n_out,))
    return out if bias is None else out + bias


# --- embedding ---------------------------------------------------------------------------------


def _padding_index(padding_idx, num):
    if padding_idx is None:
        return None
    if padding_idx > 0:
        assert padding_idx < num, "Padding_idx must be within num_embeddings"
    elif padding_idx < 0:
        assert padding_idx >= -num, "Padding_idx must be within num_embeddings"
        padding_idx = num + padding_idx
    return int(padding_idx)


def _renorm_rows(weight, indices, max_norm, norm_type):
    """torch's embedding_renorm_: rows of ``weight`` used by ``indices`` whose ``norm_type``-norm
    exceeds ``max_norm`` are scaled down in place to norm ``max_norm``. Under tracing the
    renormalised table is a graph value: the lookup reads it (its gradient passes straight to
    the weight) and the compiled call writes it back to the weight."""
    if weight._ir is not None or indices._ir is not None:
        if weight._ir is None:
            raise NotImplementedError("Embedding with max_norm rescales its weight in place: "
                                      "under tracing the weight must be a traced parameter")
        table = embedding_renorm(weight, indices, max_norm, norm_type)
        with grad_mode.no_grad():
            weight._ir = table.detach()._ir  # the state update written back after the call
        return table
    if renorm_rows_np(weight._data, indices._concrete("embedding"), max_norm, norm_type):
        weight._vc.value += 1
    return weight


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0,
              scale_grad_by_freq=False, sparse=False):
    if not common.is_tensor(input):
        raise TypeError(f"embedding(): argument 'indices' (position 2) must be Tensor, not "
                        f"{type(input).__name__}")
    padding_idx = _padding_index(padding_idx, _size(weight, 0))
    if sparse:
        raise NotImplementedError("sparse=True would need a sparse gradient, and tracenet has no "
                                  "sparse tensors; use sparse=False (a dense gradient)")
    if max_norm is not None:
        weight = _renorm_rows(weight, input, max_norm, norm_type)
    return act.embedding(weight, input, padding_idx, scale_grad_by_freq)


# --- distances ---------------------------------------------------------------------------------


def _broadcast(a, b):
    shape = common.broadcast_shapes(tuple(a.shape), tuple(b.shape))
    a = a if tuple(a.shape) == shape else a.expand(shape)
    b = b if tuple(b.shape) == shape else b.expand(shape)
    return a, b


def _l2(sq_sum):
    """sqrt of a sum of squares with torch's norm gradient at zero (0, not nan)."""
    pos = sq_sum > 0
    return ew.where(pos, ew.where(pos, sq_sum, 1.0).sqrt(), 0.0)


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    dt = _dtype.result_type(x1, x2)
    if not dt.is_floating_point:
        raise RuntimeError(f"expected common dtype to be floating point, yet common dtype is "
                           f"{_WORD[dt.name]}")
    x1, x2 = _broadcast(x1.to(dt), x2.to(dt))
    dim = common.wrap_dim(dim, x1.dim())

    def normalised(x):
        # the norm's value is clamped to eps, but (as in torch) its gradient is the norm's own
        n = _l2((x * x).sum(dim, keepdim=True))
        return x / (n + (n.clamp_min(eps) - n).detach())
    return (normalised(x1) * normalised(x2)).sum(dim)


def _vector_norm(d, p, dim, keepdim):
    if p == 2:
        return _l2((d * d).sum(dim, keepdim=keepdim))
    mag = d.abs()
    if p == 1:
        return mag.sum(dim, keepdim=keepdim)
    if p == float("inf"):
        return mag.amax(dim, keepdim=keepdim)
    if p == float("-inf"):
        return mag.amin(dim, keepdim=keepdim)
    if p == 0:
        count = (d != 0).sum(dim, keepdim=keepdim).to(d.dtype)
        # plus a finite zero that keeps the result in the graph: torch's p=0 norm has a zero
        # gradient rather than none
        bounded = ew.where(d == d, d.clamp(-1.0, 1.0), 0.0)
        return count + bounded.sum(dim, keepdim=keepdim) * 0.0
    total = (mag ** p).sum(dim, keepdim=keepdim)
    pos = total > 0
    return ew.where(pos, ew.where(pos, total, 1.0) ** (1.0 / p), 0.0)


def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    d = x1 - x2 + eps
    if not d.dtype.is_floating_point:
        d = d.to(_dtype.get_default_dtype())
    if d.dim() == 0:
        return _vector_norm(d.unsqueeze(0), p, 0, False)
    return _vector_norm(d, float(p), d.dim() - 1, keepdim)
