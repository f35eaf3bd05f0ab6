"""``tracenet.nn.functional``: torch's functional API over the op registry.

Functions here validate and normalise arguments (tuples, defaults, legacy loss arguments) and
then call registry ops, so every computation still has exactly one definition.
"""
import math
import warnings

import numpy as np

from .. import _random
from ..ops import common, elementwise as ew, linalg, nn as nnops, shape as sh
from ._functional.normalization import _check_dim_range
from ..ops.sorting import one_hot  # noqa: F401

sigmoid = ew.sigmoid
tanh = ew.tanh


def relu(input, inplace=False):
    return input.relu_() if inplace else ew.relu(input)


def relu_(input):
    return input.relu_()


def _sizes(shape):
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _plain(value):
    """Whether an argument is an int, None or a tuple of ints: then it is hashable and cannot
    change, and the arguments it is part of may be parsed once."""
    t = type(value)
    if t is int or value is None:
        return True
    if t is tuple:
        for v in value:
            if type(v) is not int:
                return False
        return True
    return False


_PARSED_LIMIT = 256  # parsed argument combinations remembered per function


def _parsed(cache, parse, *args):
    """``parse(*args)``, remembered in ``cache`` when every argument is ``_plain`` or a str
    (torch's argument checks raise the same errors again: a failed parse is not kept)."""
    for a in args:
        if not (type(a) is str or _plain(a)):
            return parse(*args)
    got = cache.get(args)
    if got is None:
        got = parse(*args)
        if len(cache) >= _PARSED_LIMIT:
            cache.clear()
        cache[args] = got
    return got


# --- convolution ----------------------------------------------------------------------------


def _int_list(value, n, fn="conv", name="stride"):
    """An int-list argument as torch's argument parser sees it: an int repeats n times."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in items):
        bad = type(value).__name__ if not isinstance(value, (list, tuple)) else \
            f"{type(value).__name__} of {type(items[0]).__name__}"
        raise TypeError(f"{fn}() received an invalid combination of arguments - got "
                        f"{name}={bad}, but expected tuple of ints {name}")
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)] * n


def _expand_param(values, name, dim):
    if len(values) == 1:
        return tuple(values) * dim
    if len(values) != dim:
        raise RuntimeError(f"expected {name} to be a single integer value or a list of {dim} "
                           f"values to match the convolution dimensions, but got "
                           f"{name}={_sizes(values)}")
    return tuple(values)


def _same_padding(x, weight, stride, dilation, groups):
    """padding='same': the symmetric part as conv padding, an odd remainder padded explicitly
    on the right (returns the possibly padded input and the conv padding)."""
    k = weight.dim()
    if k < 3:
        raise RuntimeError("weight should have at least three dimensions")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    dim = k - 2
    if k != x.dim():
        raise RuntimeError(f"Expected {k}-dimensional input for {k}-dimensional "
                           f"weight{_sizes(weight.shape)}, but got {x.dim()}-dimensional input of "
                           f"size {_sizes(x.shape)} instead")
    if len(stride) not in (1, dim):
        raise RuntimeError(f"stride cannot broadcast to {dim} dimensions")
    if len(dilation) not in (1, dim):
        raise RuntimeError(f"dilation cannot broadcast to {dim} dimensions")
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    dil = dilation * dim if len(dilation) == 1 else dilation
    total = [dil[i] * (weight.shape[2 + i] - 1) for i in range(dim)]
    left = [t // 2 for t in total]
    extra = [t - 2 * lo for t, lo in zip(total, left)]
    if any(extra):
        warnings.warn("Using padding='same' with even kernel lengths and odd dilation may require "
                      "a zero-padded copy of the input be created", UserWarning, stacklevel=5)
        widths = []
        for i in reversed(range(dim)):
            widths += [0, extra[i]]
        x = pad(x, widths)
    return x, left


def _conv(n, x, weight, bias, stride, padding, dilation, groups):
    if x.dim() not in (n + 1, n + 2):
        raise RuntimeError(f"Expected {n + 1}D (unbatched) or {n + 2}D (batched) input to "
                           f"conv{n}d, but got input of size: {_sizes(x.shape)}")
    unbatched = x.dim() == n + 1
    if unbatched:
        x = x.unsqueeze(0)
    if type(padding) is not str:
        geometry = _parsed(_CONV_ARGS, _conv_geometry, n, weight.dim(), stride, padding,
                           dilation, groups)
    else:  # 'same' reads the weight's sizes and may pad the input
        geometry = None
    if geometry is None:
        x, geometry = _conv_args(n, x, weight, stride, padding, dilation, groups)
    out = nnops.convolution(x, weight, bias, *geometry, groups)
    return out.squeeze(0) if unbatched else out


_CONV_ARGS = {}


class _Dims:
    """What ``_expanded_geometry`` reads of a weight: its number of dims."""
    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n

    def dim(self):
        return self.n


def _conv_geometry(n, weight_dims, stride, padding, dilation, groups):
    """(stride, padding, dilation) of a convolution with numeric padding, with torch's argument
    errors: a function of plain values, so it may be remembered (``_parsed``)."""
    return _conv_args(n, None, _Dims(weight_dims), stride, padding, dilation, groups)[1]


def _conv_args(n, x, weight, stride, padding, dilation, groups):
    """(input, possibly padded for padding='same'; (stride, padding, dilation))."""
    fn = f"conv{n}d"
    stride, dilation = _int_list(stride, n, fn, "stride"), _int_list(dilation, n, fn, "dilation")
    if isinstance(padding, str):
        if padding == "same":
            x, padding = _same_padding(x, weight, stride, dilation, groups)
        elif padding == "valid":
            padding = [0]
        else:
            raise RuntimeError(f"Invalid padding string: '{padding}'")
    else:
        padding = _int_list(padding, n, fn, "padding")
    stride, padding, dilation, _ = _expanded_geometry(weight, groups, stride, padding,
                                                      dilation, [0] * n)
    return x, (stride, padding, dilation)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv(1, input, weight, bias, stride, padding, dilation, groups)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv(2, input, weight, bias, stride, padding, dilation, groups)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv(3, input, weight, bias, stride, padding, dilation, groups)


def _expanded_geometry(weight, groups, stride, padding, dilation, output_padding):
    """A convolution's (transposed or not) weight and groups checks, then its geometry
    expanded to one value per spatial dim of ``weight``, with torch's errors."""
    if weight.dim() < 3:
        raise RuntimeError("weight should have at least three dimensions")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    dim = weight.dim() - 2
    return (_expand_param(stride, "stride", dim), _expand_param(padding, "padding", dim),
            _expand_param(dilation, "dilation", dim),
            _expand_param(output_padding, "output_padding", dim))


def _conv_transpose(n, x, weight, bias, stride, padding, output_padding, groups, dilation):
    fn = f"conv_transpose{n}d"
    if x.dim() not in (n + 1, n + 2):
        raise RuntimeError(f"Expected {n + 1}D (unbatched) or {n + 2}D (batched) input to "
                           f"{fn}, but got input of size: {_sizes(x.shape)}")
    unbatched = x.dim() == n + 1
    if unbatched:
        x = x.unsqueeze(0)
    stride = _int_list(stride, n, fn, "stride")
    padding = _int_list(padding, n, fn, "padding")
    output_padding = _int_list(output_padding, n, fn, "output_padding")
    dilation = _int_list(dilation, n, fn, "dilation")
    stride, padding, dilation, output_padding = _expanded_geometry(
        weight, groups, stride, padding, dilation, output_padding)
    dim = weight.dim() - 2
    if weight.shape[0] % groups != 0:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} "
                           f"at dimension 0, but got weight of size [{_sizes(weight.shape)}] "
                           "instead")
    if x.shape[1] != weight.shape[0]:
        raise RuntimeError(f"Given transposed=1, weight of size {_sizes(weight.shape)}, expected "
                           f"input{_sizes(x.shape)} to have {weight.shape[0]} channels, but got "
                           f"{x.shape[1]} channels instead")
    if any(p >= s and p >= d for p, s, d in zip(output_padding, stride, dilation)):
        # torch reports the 1-d case as a 2-d one of height 1
        names = ("depth", "height", "width")[3 - max(dim, 2):]
        pad = (lambda t, fill: (fill,) * (len(names) - dim) + tuple(t))
        parts = [" ".join(f"{label}_{a}: {v}" for a, v in zip(names, pad(vals, fill)))
                 for label, vals, fill in (("output_padding", output_padding, 0),
                                           ("stride", stride, 1), ("dilation", dilation, 1))]
        raise RuntimeError("output padding must be smaller than either stride or dilation, but "
                           "got " + " ".join(parts))
    if bias is not None and bias.shape != (weight.shape[1] * groups,):
        raise RuntimeError(f"Given transposed=1, weight of size {_sizes(weight.shape)}, expected "
                           f"bias to be 1-dimensional with {weight.shape[1] * groups} elements, "
                           f"but got bias of size {_sizes(bias.shape)} instead")
    out = nnops.conv_transpose(x, weight, bias, stride, padding, output_padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    return _conv_transpose(1, input, weight, bias, stride, padding, output_padding, groups,
                           dilation)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    return _conv_transpose(2, input, weight, bias, stride, padding, output_padding, groups,
                           dilation)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    return _conv_transpose(3, input, weight, bias, stride, padding, output_padding, groups,
                           dilation)


# --- pooling --------------------------------------------------------------------------------

_NUM_WORD = {2: "two", 3: "three"}
_POS = {"kernel_size": 2, "stride": 3, "padding": 4, "dilation": 5}


def _int_arg(fn, name, value, positional=True):
    """Type check of an int-list argument, with the argument parser's TypeError."""
    ok = isinstance(value, (int, np.integer)) or (
        isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in value))
    if not ok or isinstance(value, bool):
        where = f" (position {_POS[name]})" if positional else ""
        raise TypeError(f"{fn}(): argument '{name}'{where} must be tuple of ints, not "
                        f"{type(value).__name__}")
    return [int(value)] if not isinstance(value, (list, tuple)) else [int(v) for v in value]


def _nd_arg(fn, name, value, n, message, parser_fn=None):
    """Expand an int-list pooling argument to n values, or raise torch's RuntimeError."""
    vals = _int_arg(parser_fn or fn, name, value, positional=not fn.startswith("avg"))
    if len(vals) == 1:
        return tuple(vals) * n
    if len(vals) != n:
        raise RuntimeError(message)
    return tuple(vals)


_POOL_ARGS = {}


def _pool_args(kind, n, kernel_size, stride, padding, dilation=1, parser_fn=None):
    fn = f"{kind}_pool{n}d"
    num = _NUM_WORD[n]
    if kind == "avg" and n == 3:
        msgs = ("kernel_size must be a single int", "stride must be omitted, a single int",
                "padding must be a single int")
    else:
        msgs = ("kernel_size must either be a single int", "stride must either be omitted, a "
                "single int", "padding must either be a single int")
    kernel = _nd_arg(fn, "kernel_size", kernel_size, n,
                     f"{fn}: {msgs[0]}, or a tuple of {num} ints", parser_fn)
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel
    else:
        stride = _nd_arg(fn, "stride", stride, n, f"{fn}: {msgs[1]}, or a tuple of {num} ints",
                         parser_fn)
    padding = _nd_arg(fn, "padding", padding, n, f"{fn}: {msgs[2]}, or a tuple of {num} ints",
                      parser_fn)
    dilation = _nd_arg(fn, "dilation", dilation, n,
                       f"{fn}: dilation must be either a single int, or a tuple of {num} ints",
                       parser_fn)
    return kernel, stride, padding, dilation


def _one_int(fn, name, value, parser_fn=None):
    """A 1-d pooling argument through the argument parser: one int (or a 1-element list)."""
    vals = _int_arg(parser_fn or fn, name, value, positional=fn != "avg_pool1d")
    if len(vals) != 1:
        raise RuntimeError(f"{fn}() argument '{name}' should contain one int (got {len(vals)})")
    return vals[0]


def _max_pool1d_checks(x, kernel_size, stride, padding, dilation, ceil_mode):
    """The argument checks of torch's max_pool1d (the call without indices)."""
    def one(name, value, text, allow_none=False):
        if allow_none and (value is None or (isinstance(value, (list, tuple)) and not value)):
            return None
        vals = _int_arg("max_pool1d", name, value)
        if len(vals) != 1:
            raise RuntimeError(f"max_pool1d() {name} must be {text} of size 1 but got size "
                               f"{len(vals)}")
        return vals[0]
    k = one("kernel_size", kernel_size, "an int, list of ints or tuple of ints")
    s = one("stride", stride, "None, an int, list of ints, or tuple of ints", allow_none=True)
    p = one("padding", padding, "an int, list of ints, or tuple of ints")
    d = one("dilation", dilation, "an int, list of ints or tuple of ints")
    s = k if s is None else s
    if x.dim() not in (2, 3) or any(v == 0 for v in tuple(x.shape)[-2:]):
        raise RuntimeError("max_pool1d: Expected 2D or 3D (batch mode) tensor with optional 0 dim "
                           f"batch size for input, but got:{_sizes(x.shape)}")
    if k <= 0:
        raise RuntimeError(f"max_pool1d() kernel_size must be greater than zero, but got {k}")
    if s <= 0:
        raise RuntimeError(f"max_pool1d() stride must be greater than zero, but got {s}")
    if p < 0:
        raise RuntimeError(f"max_pool1d() padding must be non-negative, but got {p}")
    if p > k // 2:
        raise RuntimeError(f"max_pool1d() padding should be at most half of kernel size, but got "
                           f"padding={p} and kernel_size={k}")
    if d <= 0:
        raise RuntimeError(f"max_pool1d() dilation must be greater than zero, but got {d}")
    out = nnops.pool_out_size(x.shape[-1], k, p, s, d, ceil_mode)
    if out < 1:
        raise RuntimeError(f"max_pool1d() Invalid computed output size: {out}")
    if not x.dtype.is_floating_point:
        word = {"int64": "Long", "bool": "Bool"}.get(x.dtype.name, x.dtype.name)
        raise NotImplementedError(f"\"max_pool1d_impl\" not implemented for '{word}'")
    return k, s, p, d


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    if return_indices:
        pf = "max_pool1d_with_indices"
        k = _one_int("max_pool1d", "kernel_size", kernel_size, pf)
        s = k if stride is None or (isinstance(stride, (list, tuple)) and not stride) else \
            _one_int("max_pool1d", "stride", stride, pf)
        p = _one_int("max_pool1d", "padding", padding, pf)
        d = _one_int("max_pool1d", "dilation", dilation, pf)
        _check_dim_range(input, "max_pool1d")
    else:
        k, s, p, d = _max_pool1d_checks(input, kernel_size, stride, padding, dilation, ceil_mode)
    # computed as 2-d pooling of a height-1 image, as torch does
    out, idx = nnops.max_pool(input.unsqueeze(-2), (1, k), (1, s), (0, p), (1, d), ceil_mode)
    out = out.squeeze(-2)
    return (out, idx.squeeze(-2)) if return_indices else out


def _max_pool(n, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    parser_fn = f"max_pool{n}d_with_indices" if return_indices else None
    kernel, stride, padding, dilation = _parsed(_POOL_ARGS, _pool_args, "max", n, kernel_size,
                                                stride, padding, dilation, parser_fn)
    out, idx = nnops.max_pool(x, kernel, stride, padding, dilation, ceil_mode)
    return (out, idx) if return_indices else out


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool(2, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool(3, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool1d_with_indices(*args, **kwargs):
    kwargs["return_indices"] = True
    return max_pool1d(*args, **kwargs)


def max_pool2d_with_indices(*args, **kwargs):
    kwargs["return_indices"] = True
    return max_pool2d(*args, **kwargs)


def max_pool3d_with_indices(*args, **kwargs):
    kwargs["return_indices"] = True
    return max_pool3d(*args, **kwargs)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    k = _one_int("avg_pool1d", "kernel_size", kernel_size)
    s = k if stride is None or (isinstance(stride, (list, tuple)) and not stride) else \
        _one_int("avg_pool1d", "stride", stride)
    p = _one_int("avg_pool1d", "padding", padding)
    _check_dim_range(input, "avg_pool1d")
    out = nnops.avg_pool(input.unsqueeze(-2), (1, k), (1, s), (0, p), ceil_mode,
                         count_include_pad, None)
    return out.squeeze(-2)


def _avg_pool(n, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override):
    kernel, stride, padding, _ = _pool_args("avg", n, kernel_size, stride, padding)
    return nnops.avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad,
                          divisor_override)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    return _avg_pool(2, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    return _avg_pool(3, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


# --- power-average pooling: torch's formula, so values, gradients and grad_fn agree ----------


def _lp_pool(max_pool, avg_pool, window, input, norm_type, kernel_size, stride, ceil_mode):
    if isinstance(norm_type, (int, float)) and math.isinf(norm_type):
        pooled = max_pool(input.abs() if norm_type > 0 else -input.abs(), kernel_size, stride,
                          0, 1, ceil_mode)
        return pooled if norm_type > 0 else -pooled
    if stride is not None:
        out = avg_pool(input.pow(norm_type), kernel_size, stride, 0, ceil_mode)
    else:
        out = avg_pool(input.pow(norm_type), kernel_size, padding=0, ceil_mode=ceil_mode)
    return (ew.sign(out) * ew.relu(ew.abs(out))).mul(window).pow(1.0 / norm_type)


def lp_pool1d(input, norm_type, kernel_size, stride=None, ceil_mode=False):
    return _lp_pool(max_pool1d, avg_pool1d, kernel_size, input, norm_type, kernel_size, stride,
                    ceil_mode)


def lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False):
    kw, kh = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    return _lp_pool(max_pool2d, avg_pool2d, kw * kh, input, norm_type, kernel_size, stride,
                    ceil_mode)


# --- padding ----------------------------------------------------------------------------------


def pad(input, pad, mode="constant", value=None):
    for i, p in enumerate(pad):
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise TypeError(f"pad(): argument 'pad' (position 2) must be tuple of ints, but "
                            f"found element of type {type(p).__name__} at pos {i}")
    if len(pad) % 2:
        raise RuntimeError("Padding length must be divisible by 2")
    if len(pad) // 2 > input.dim():
        raise RuntimeError("Padding length should be less than or equal to two times the input "
                           "dimension but got padding length " + str(len(pad)) +
                           " and input of dimension " + str(input.dim()))
    if mode != "constant" and value is not None and value != 0:
        raise RuntimeError(f"Padding mode \"{mode}\" doesn't take in value argument")
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


# --- shape helpers --------------------------------------------------------------------------


def flatten(input, start_dim=0, end_dim=-1):
    return sh.flatten(input, start_dim, end_dim)


# the rest of the catalogue, one module per area (each defines __all__)
from ._functional.activation import *  # noqa: E402,F401,F403
from ._functional.normalization import *  # noqa: E402,F401,F403
from ._functional.vision import *  # noqa: E402,F401,F403
from ._functional.loss import *  # noqa: E402,F401,F403
from ._functional.rnn import *  # noqa: E402,F401,F403
from ._functional.pooling import *  # noqa: E402,F401,F403
from ._functional.attention import *  # noqa: E402,F401,F403
from ._functional.attention import _canonical_mask, _none_or_dtype  # noqa: E402,F401
