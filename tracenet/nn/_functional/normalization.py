"""The normalization part of tracenet.nn.functional (re-exported there): batch_norm, layer_norm,
group_norm, instance_norm and normalize, plus the pooling extras max_unpool{1,2,3}d and
adaptive_avg_pool{1,2,3}d."""
import numpy as np

from ..._sym import Sym
from ...autograd import grad_mode
from ...ops import nn as nnops, normalization as normops
from ...ops.size_value import require_size
from .activation import _vector_norm

__all__ = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "normalize", "max_unpool1d", "max_unpool2d", "max_unpool3d", "adaptive_avg_pool1d",
           "adaptive_avg_pool2d", "adaptive_avg_pool3d"]


def _word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


# --- batch norm --------------------------------------------------------------------------------


def _verify_batch_size(size):
    count = size[0]
    for s in size[2:]:
        count *= s
    message = "Expected more than 1 value per channel when training, got input size {size}"
    if isinstance(count, Sym):  # known when the compiled code runs: checked then
        require_size(count, 1, ValueError, message, size)
    elif count == 1:
        raise ValueError(message.format(size=repr(size)))


def _check_batch_norm_args(x, running_mean, running_var, weight, bias, training):
    """torch's argument checks of the native batch norm, in its order."""
    c = normops.channels(tuple(x.shape))
    if not training and running_mean is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != c:
            raise RuntimeError(f"{name} should contain {c} elements not {t.numel()}")
    if not x.dtype.is_floating_point:
        raise NotImplementedError(f"\"batch_norm\" not implemented for '{_word(x.dtype)}'")
    params = [t for t in (weight, bias, running_mean, running_var) if t is not None]
    if params and params[0].dtype is not x.dtype:
        if any(p.dtype.name != "float32" for p in params):
            raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
        raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")
    for p in params:
        if p.dtype is not x.dtype:
            raise RuntimeError(f"expected scalar type {_word(x.dtype)} but found "
                               f"{_word(p.dtype)}")
    if grad_mode.is_grad_enabled():
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is not None and t.requires_grad:
                raise RuntimeError(f"The function 'native_batch_norm' is not differentiable with "
                                   f"respect to argument '{name}'. This input cannot have "
                                   "requires_grad True.")
    if x.dim() < 2:
        nd = max(x.dim(), 1)
        raise IndexError(f"Dimension out of range (expected to be in range of [{-nd}, {nd - 1}], "
                         "but got 1)")


def _as_vector(t, c):
    return t if t is None or tuple(t.shape) == (c,) else t.reshape(c)


def _empty_batch_norm(x, weight, bias, c):
    shape = (1, c) + (1,) * (x.dim() - 2)
    out = x.clone()
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-05):
    """Batch normalisation over dim 1 of a (N, C, *) input. In training the batch statistics
    normalise and, when running statistics are given, update them in place:
    ``running = (1 - momentum) * running + momentum * batch`` (unbiased batch variance)."""
    if training:
        _verify_batch_size(input.size())
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be "
                         "None")
    if eps < 0 or (training and eps == 0):
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}"
                         if training else f"batch_norm eps must be non-negative, but got {eps}")
    if momentum is None:
        raise TypeError("batch_norm(): argument 'momentum' (position 7) must be float, not "
                        "NoneType")
    _check_batch_norm_args(input, running_mean, running_var, weight, bias, training)
    c = input.shape[1]
    weight, bias = _as_vector(weight, c), _as_vector(bias, c)
    if input.numel() == 0:
        return _empty_batch_norm(input, weight, bias, c)
    if not training:
        return normops.batch_norm(input, _as_vector(running_mean, c), _as_vector(running_var, c),
                                  weight, bias, eps=eps, training=False)
    mean, var = normops.batch_norm_stats(input)
    out = normops.batch_norm(input, mean, var, weight, bias, eps=eps, training=True)
    if running_mean is not None:
        n = input.numel() // c
        with grad_mode.no_grad():
            unbiased = var * (n / (n - 1))
            _update(running_mean, mean, momentum)
            _update(running_var, unbiased, momentum)
    return out


def _update(running, batch, momentum):
    """``running = (1 - momentum) * running + momentum * batch`` in place (momentum may be a
    0-d tensor: the cumulative average's 1 / num_batches_tracked under tracing)."""
    if tuple(batch.shape) != tuple(running.shape):
        batch = batch.reshape(tuple(running.shape))
    running.mul_(1 - momentum).add_(batch * momentum)


# --- layer, group and instance norm ---------------------------------------------------------


def _sizes(shape):
    return "[" + ", ".join(str(int(v)) for v in shape) + "]"


def _check_params_dtype(x, params):
    for p in params:
        if p is not None and p.dtype is not x.dtype:
            if x.dtype.name == "float32":
                raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of "
                                   "Float")
            raise RuntimeError(f"expected scalar type {_word(x.dtype)} but found "
                               f"{_word(p.dtype)}")


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-05):
    """Normalise over the trailing dims ``normalized_shape`` (biased variance), then
    ``* weight + bias`` (both of shape ``normalized_shape``)."""
    if not isinstance(normalized_shape, (list, tuple)) and not hasattr(normalized_shape, "shape"):
        raise TypeError(f"layer_norm(): argument 'normalized_shape' (position 2) must be tuple of "
                        f"ints, not {type(normalized_shape).__name__}")
    shape = list(normalized_shape)
    _check_int_list("layer_norm", "normalized_shape", 2, shape)
    shape = [int(v) for v in shape]
    if not shape:
        raise RuntimeError("Expected normalized_shape to be at least 1-dimensional, i.e., "
                           "containing at least one element, but got normalized_shape = []")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and list(t.shape) != shape:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but got "
                               f"{name} of shape {_sizes(t.shape)} and normalized_shape = "
                               f"{_sizes(shape)}")
    k = len(shape)
    if input.dim() < k or list(input.shape[input.dim() - k:]) != shape:
        raise RuntimeError(f"Given normalized_shape={_sizes(shape)}, expected input with shape "
                           f"[*, {', '.join(map(str, shape))}], but got input of size"
                           f"{_sizes(input.shape)}")
    if not input.dtype.is_floating_point:
        raise NotImplementedError(f"\"LayerNormKernelImpl\" not implemented for "
                                  f"'{_word(input.dtype)}'")
    _check_params_dtype(input, (weight, bias))
    return normops.layer_norm(input, weight, bias, norm_ndim=k, eps=eps)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-05):
    """Normalise each of ``num_groups`` groups of channels of each sample of a (N, C, *) input,
    then ``* weight + bias`` per channel."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)):
        raise TypeError(f"group_norm(): argument 'num_groups' (position 2) must be int, not "
                        f"{type(num_groups).__name__}")
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received "
                           f"{input.dim()}")
    size = list(input.size())
    _verify_batch_size([size[0] * size[1] // num_groups, num_groups] + size[2:])
    c = size[1]
    if num_groups <= 0:
        raise RuntimeError(f"Expected num groups to be greater than 0, got {num_groups}")
    if c % num_groups != 0:
        raise RuntimeError(f"Expected number of channels in input to be divisible by num_groups, "
                           f"but got input of shape {_sizes(size)} and num_groups={num_groups}")
    if weight is not None and (weight.dim() != 1 or weight.numel() != c):
        raise RuntimeError(f"Expected weight to be a vector of size equal to the number of "
                           f"channels in input, but got weight of shape {_sizes(weight.shape)} "
                           f"and input of shape {_sizes(size)}")
    if bias is not None and (bias.dim() != 1 or bias.numel() != c):
        # (torch names the weight's shape here, [0] without a weight)
        shown = _sizes(weight.shape) if weight is not None else "[0]"
        raise RuntimeError(f"Expected bias to be a vector of size equal to the number of "
                           f"channels in input, but got bias of shape {shown} and input of "
                           f"shape {_sizes(size)}")
    if not input.dtype.is_floating_point:
        raise NotImplementedError(f"\"GroupNormKernelImpl\" not implemented for "
                                  f"'{_word(input.dtype)}'")
    _check_params_dtype(input, (weight, bias))
    return normops.group_norm(input, weight, bias, groups=num_groups, eps=eps)


def _verify_spatial_size(size):
    count = 1
    for s in size[2:]:
        count *= s
    if count == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size "
                         f"{size!r}")


def _repeat(t, n):
    """``t`` (C,) repeated ``n`` times as an (n * C,) vector (expand + reshape, which compile)."""
    if t is None:
        return None
    return t.reshape(1, -1).expand(n, t.numel()).reshape(n * t.numel())


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-05):
    """Normalise each channel of each sample of a (N, C, *) input over its spatial dims, as
    torch does: batch norm of the (1, N * C, *) view. With running statistics and
    ``use_input_stats`` they are updated with the batch average of the per-instance statistics;
    without ``use_input_stats`` they normalise."""
    if use_input_stats:
        _verify_spatial_size(input.size())
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError("Expected running_mean and running_var to be defined when "
                           "use_input_stats is false")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be "
                         "None")
    if input.dim() < 2:
        nd = max(input.dim(), 1)
        raise IndexError(f"Dimension out of range (expected to be in range of [{-nd}, {nd - 1}], "
                         "but got 1)")
    size = tuple(input.shape)
    n, c = size[0], size[1]
    view = input.reshape((1, n * c) + size[2:])
    w, b = _repeat(weight, n), _repeat(bias, n)
    rm, rv = _repeat(running_mean, n), _repeat(running_var, n)
    _check_batch_norm_args(view, rm, rv, w, b, use_input_stats)
    if input.numel() == 0:
        return _empty_batch_norm(view, w, b, n * c).reshape(size)
    if not use_input_stats:
        return normops.batch_norm(view, rm, rv, w, b, eps=eps, training=False).reshape(size)
    mean, var = normops.batch_norm_stats(view)
    out = normops.batch_norm(view, mean, var, w, b, eps=eps, training=True)
    if running_mean is not None:
        m = view.numel() // (n * c)
        with grad_mode.no_grad():
            unbiased = var * (m / (m - 1))
            _update(running_mean, mean.reshape(n, c).mean(0), momentum)
            _update(running_var, unbiased.reshape(n, c).mean(0), momentum)
    return out.reshape(size)


def normalize(input, p=2.0, dim=1, eps=1e-12, out=None):
    """``input / max(||input||_p, eps)`` along ``dim``."""
    if out is not None:
        raise NotImplementedError("normalize(out=...) is not supported")
    denom = _vector_norm(input, float(p), dim, True).clamp_min(eps).expand_as(input)
    return input / denom


# --- max unpooling ------------------------------------------------------------------------------


def _tuple_n(v, n):
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n


def _unpool_output_size(input, kernel_size, stride, padding, output_size):
    input_size = input.size()
    k = len(kernel_size)
    default_size = [(input_size[-k + d] - 1) * stride[d] + kernel_size[d] - 2 * padding[d]
                    for d in range(k)]
    if output_size is None:
        return default_size
    given = output_size
    if len(output_size) == k + 2:
        output_size = output_size[2:]
    if len(output_size) != k:
        raise ValueError(f"output_size should be a sequence containing {k} or {k + 2} elements, "
                         f"but it has a length of '{len(output_size)}'")
    for d in range(k):
        lo, hi = default_size[d] - stride[d], default_size[d] + stride[d]
        if not lo < output_size[d] < hi:
            raise ValueError(f'invalid output_size "{given}" (dim {d} must be between {lo} and '
                             f'{hi})')
    return list(output_size)


def _check_int_list(fn, name, pos, values):
    for i, v in enumerate(values):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"{fn}(): argument '{name}' (position {pos}) must be tuple of ints, "
                            f"but found element of type {type(v).__name__} at pos {i}")


def _max_unpool(n, input, indices, output_size, stride, padding):
    """The native unpooling of an (N, C, *in) or (C, *in) tensor into spatial ``output_size``."""
    fn = f"max_unpool{n}d"
    _check_int_list(fn, "output_size", 3, output_size)
    if indices.dtype.name != "int64":
        suffix = f" but got: {_word(indices.dtype)}" if n == 2 else ""
        raise RuntimeError(f"elements in indices should be type int64{suffix}")
    if input.dim() not in (n + 1, n + 2):
        raise RuntimeError(f"Input to max_unpooling{n}d should be a {n + 1}d or {n + 2}d Tensor, "
                           f"but got a tensor with {input.dim()} dimensions.")
    if tuple(indices.shape) != tuple(input.shape):
        raise RuntimeError(f"Expected shape of indices to be same as that of the input tensor "
                           f"({list(input.shape)}) but got indices tensor with shape: "
                           f"{list(indices.shape)}")
    if n == 3 and any(s <= 0 for s in stride):
        raise RuntimeError(f"strides should be greater than zero, but got stride: "
                           f"{list(stride)}")
    batched = tuple(input.shape) if input.dim() == n + 2 else (1,) + tuple(input.shape)
    for d in range(1, len(batched)):
        if batched[d] == 0:
            raise RuntimeError(f"max_unpooling{n}d_forward_out_cpu(): Expected input to have "
                               f"non-zero size for non-batch dimensions, but got "
                               f"{list(batched)} with dimension {d} being empty.")
    if not input.dtype.is_floating_point:
        raise NotImplementedError(f"\"max_unpool{n}d\" not implemented for "
                                  f"'{_word(input.dtype)}'")
    return nnops.max_unpool(input, indices, tuple(output_size))


def max_unpool1d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Partial inverse of max_pool1d: values go back to the positions their indices name."""
    kernel_size = _tuple_n(kernel_size, 1)
    stride = _tuple_n(stride, 1) if stride is not None else kernel_size
    padding = _tuple_n(padding, 1)
    size = _unpool_output_size(input, kernel_size, stride, padding, output_size)
    size = list(size) + [1]
    # computed as 2-d unpooling of a width-1 image, as torch does
    return _max_unpool(2, input.unsqueeze(-1), indices.unsqueeze(-1), size,
                       tuple(stride) + (1,), tuple(padding) + (0,)).squeeze(-1)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Partial inverse of max_pool2d: values go back to the positions their indices name, the
    rest of the (default or given ``output_size``) output is zero."""
    kernel_size = _tuple_n(kernel_size, 2)
    stride = _tuple_n(stride, 2) if stride is not None else kernel_size
    padding = _tuple_n(padding, 2)
    size = _unpool_output_size(input, kernel_size, stride, padding, output_size)
    return _max_unpool(2, input, indices, size, stride, padding)


def max_unpool3d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Partial inverse of max_pool3d."""
    kernel_size = _tuple_n(kernel_size, 3)
    stride = _tuple_n(stride, 3) if stride is not None else kernel_size
    padding = _tuple_n(padding, 3)
    size = _unpool_output_size(input, kernel_size, stride, padding, output_size)
    return _max_unpool(3, input, indices, size, stride, padding)


# --- adaptive average pooling -------------------------------------------------------------------


def _check_dim_range(x, fn):
    if x.dim() not in (2, 3):
        raise RuntimeError(f"Expected 2 to 3 dimensions, but got {x.dim()}-dimensional tensor for "
                           f"argument #1 'self' (while checking arguments for {fn})")


def _list_with_default(out_size, defaults):
    if isinstance(out_size, (int, np.integer)):
        return out_size
    if len(defaults) <= len(out_size):
        raise ValueError(f"Input dimension should be at least {len(out_size) + 1}")
    return [v if v is not None else d for v, d in zip(out_size, defaults[-len(out_size):])]


def _adaptive_avg_pool(n, input, output_size):
    fn = f"adaptive_avg_pool{n}d"
    if isinstance(output_size, (int, np.integer)) and not isinstance(output_size, bool):
        output_size = [int(output_size)] * n
    _check_int_list(fn, "output_size", 2, output_size)
    if len(output_size) != n:
        raise RuntimeError(f"{fn}: output_size must be {n}")
    out = [int(v) for v in output_size]
    if any(v < 0 for v in out):
        shown = ", ".join(map(str, out[:2])) + "".join(f",{v}" for v in out[2:])
        raise RuntimeError(f"{fn}: elements of output_size must be greater than or equal to 0 "
                           f"but received {{{shown}}}")
    if all(v == 1 for v in out):
        # a global average: torch takes the mean over the pooled dims
        return input.mean(tuple(range(-1, -n - 1, -1)), keepdim=True)
    if input.dim() not in (n + 1, n + 2):
        raise RuntimeError(f"{fn}(): Expected {n + 1}D or {n + 2}D tensor, but got "
                           f"{list(input.shape)}")
    shape = tuple(input.shape)
    first = 1 if input.dim() == n + 2 else 0
    for d in range(first, len(shape)):
        if shape[d] == 0:
            raise RuntimeError(f"{fn}(): Expected input to have non-zero size for non-batch "
                               f"dimensions, but input has sizes {list(shape)} with dimension "
                               f"{d} being empty")
    if not input.dtype.is_floating_point:
        kernel = "adaptive_avg_pool3d_cpu" if n == 3 else fn
        raise NotImplementedError(f"\"{kernel}\" not implemented for '{_word(input.dtype)}'")
    return nnops.adaptive_avg_pool(input, out)


def adaptive_avg_pool1d(input, output_size):
    """Average pooling to a fixed output length (windows of varying size)."""
    if isinstance(output_size, (int, np.integer)) and not isinstance(output_size, bool):
        vals = [int(output_size)]
    elif isinstance(output_size, (list, tuple)):
        _check_int_list("adaptive_avg_pool1d", "output_size", 2, output_size)
        vals = list(output_size)
    else:
        raise TypeError(f"adaptive_avg_pool1d(): argument 'output_size' (position 2) must be "
                        f"tuple of ints, not {type(output_size).__name__}")
    if len(vals) != 1:
        raise RuntimeError(f"adaptive_avg_pool1d() argument 'output_size' should contain one int "
                           f"(got {len(vals)})")
    _check_dim_range(input, "adaptive_avg_pool1d")
    return _adaptive_avg_pool(2, input.unsqueeze(-2), [1, vals[0]]).squeeze(-2)


def adaptive_avg_pool2d(input, output_size):
    """Average pooling to a fixed output size (an int, or a pair whose None entries keep the
    input's size)."""
    return _adaptive_avg_pool(2, input, _list_with_default(output_size, input.size()))


def adaptive_avg_pool3d(input, output_size):
    """Average pooling to a fixed (D, H, W) output size."""
    return _adaptive_avg_pool(3, input, _list_with_default(output_size, input.size()))
