"""Weight initialisation: fill a tensor in place (without recording gradients) and return it.

Random fills draw from the global generator (``tracenet.manual_seed`` makes them reproducible)
or from ``generator`` when one is given; the tensor keeps its dtype.
"""
import math
import warnings

import numpy as np

from .. import _random
from ..tensor import Tensor

__all__ = [
    "calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_",
    "eye_", "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
    "orthogonal_", "sparse_", "uniform", "normal", "constant", "xavier_uniform", "xavier_normal",
    "kaiming_uniform", "kaiming_normal", "orthogonal", "eye", "dirac", "sparse",
]

_TYPE_NAMES = {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}


# --- helpers -----------------------------------------------------------------------------------

def _rng(generator):
    if generator is None:
        return _random.rng()
    if isinstance(generator, np.random.Generator):
        return generator
    for attr in ("_rng", "_generator", "rng"):
        inner = getattr(generator, attr, None)
        if isinstance(inner, np.random.Generator):
            return inner
        if callable(inner):
            inner = inner()
            if isinstance(inner, np.random.Generator):
                return inner
    if hasattr(generator, "initial_seed"):
        # a generator object without its own stream (as returned by manual_seed) draws from
        # the global one
        return _random.rng()
    raise TypeError(f"generator must be a tracenet Generator or None, not "
                    f"{type(generator).__name__}")


def _array(tensor):
    if not isinstance(tensor, Tensor):
        raise TypeError(f"expected a Tensor, but got {type(tensor).__name__}")
    return tensor._concrete("nn.init")


def _write(tensor, values):
    """Store ``values`` into the tensor's memory (cast to its dtype) and bump its version."""
    data = _array(tensor)
    data[...] = values
    tensor._vc.value += 1
    return tensor


def _require_floating(tensor, kernel):
    if not tensor.dtype.is_floating_point:
        raise NotImplementedError(
            f"\"{kernel}\" not implemented for '{_TYPE_NAMES[tensor.dtype.name]}'")


def _fmt(x):
    return f"{float(x):g}"


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity (used by the xavier and kaiming inits).

    ============ ==========================================
    linear/conv  1
    sigmoid      1
    tanh         5/3
    relu         sqrt(2)
    leaky_relu   sqrt(2 / (1 + negative_slope^2))
    selu         3/4
    ============ ==========================================
    """
    linear_fns = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                  "conv_transpose2d", "conv_transpose3d"]
    if nonlinearity in linear_fns or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif (not isinstance(param, bool) and isinstance(param, int)) or isinstance(param, float):
            negative_slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + negative_slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor):
    dimensions = tensor.dim()
    if dimensions < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 "
                         "dimensions")
    shape = tuple(tensor.shape)
    receptive_field_size = 1
    for s in shape[2:]:
        receptive_field_size *= s
    fan_in = shape[1] * receptive_field_size
    fan_out = shape[0] * receptive_field_size
    return fan_in, fan_out


def _calculate_correct_fan(tensor, mode):
    mode = mode.lower()
    valid_modes = ["fan_in", "fan_out"]
    if mode not in valid_modes:
        raise ValueError(f"Mode {mode} not supported, please use one of {valid_modes}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _uniform(tensor, a, b, generator):
    _require_floating(tensor, "check_uniform_bounds")
    if a > b:
        raise RuntimeError(f"uniform_ expects to return a [from, to) range, but found "
                           f"from={_fmt(a)} > to={_fmt(b)}")
    shape = tuple(tensor.shape)
    return _write(tensor, _rng(generator).uniform(float(a), float(b), size=shape))


def _normal(tensor, mean, std, generator):
    _require_floating(tensor, "normal_kernel_cpu")
    if std < 0:
        raise RuntimeError(f"normal expects std >= 0.0, but found std {_fmt(std)}")
    shape = tuple(tensor.shape)
    return _write(tensor, _rng(generator).normal(float(mean), float(std), size=shape))


# --- initialisers ----------------------------------------------------------------------------

def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill with values drawn from U(a, b)."""
    return _uniform(tensor, a, b, generator)


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill with values drawn from N(mean, std^2)."""
    return _normal(tensor, mean, std, generator)


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
    """Fill with values drawn from N(mean, std^2) truncated to [a, b] (by rejection)."""
    def norm_cdf(x):
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    if (mean < a - 2 * std) or (mean > b + 2 * std):
        warnings.warn("mean is more than 2 std from [a, b] in nn.init.trunc_normal_. The "
                      "distribution of values may be incorrect.", stacklevel=2)
    _require_floating(tensor, "normal_kernel_cpu")
    if a > b:
        raise RuntimeError(f"uniform_ expects to return a [from, to) range, but found "
                           f"from={_fmt(a)} > to={_fmt(b)}")
    if std < 0:
        raise RuntimeError(f"normal expects std >= 0.0, but found std {_fmt(std)}")
    rng = _rng(generator)
    shape = tuple(tensor.shape)
    n = int(np.prod(shape, dtype=np.int64))
    np_dtype = _array(tensor).dtype
    lo, hi = float(np_dtype.type(a)), float(np_dtype.type(b))
    mean, std = float(mean), float(std)
    out = np.empty(n, dtype=np.float64)
    pending = np.arange(n)
    if std == 0:
        out[:] = min(max(mean, lo), hi)
        pending = pending[:0]
    p = norm_cdf((b - mean) / std) - norm_cdf((a - mean) / std) if std > 0 else 1.0
    if p > 0.3:
        # normal proposals, rejecting those outside [a, b]
        while pending.size:
            cand = rng.normal(mean, std, size=pending.size).astype(np_dtype)
            ok = (cand >= lo) & (cand <= hi)
            out[pending[ok]] = cand[ok]
            pending = pending[~ok]
    else:
        # uniform proposals on [a, b], accepted with probability pdf(x) / max pdf on [a, b]
        mode = max(a, min(mean, b))
        log_peak = -0.5 * ((mode - mean) / std) ** 2
        while pending.size:
            cand = rng.uniform(a, b, size=pending.size)
            log_pdf = -0.5 * ((cand - mean) / std) ** 2 - log_peak
            ok = np.log(rng.uniform(size=pending.size)) <= log_pdf
            out[pending[ok]] = cand[ok]
            pending = pending[~ok]
    return _write(tensor, np.clip(out.reshape(shape).astype(np_dtype), lo, hi))


def constant_(tensor, val):
    """Fill with the value ``val``."""
    data = _array(tensor)
    if isinstance(val, Tensor):
        val = val.item()
    data.fill(val)
    tensor._vc.value += 1
    return tensor


def ones_(tensor):
    """Fill with ones."""
    return constant_(tensor, 1)


def zeros_(tensor):
    """Fill with zeros."""
    return constant_(tensor, 0)


def eye_(tensor):
    """Fill a 2-D tensor with the identity matrix (ones on the main diagonal)."""
    if tensor.dim() != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    rows, cols = tuple(tensor.shape)
    return _write(tensor, np.eye(rows, cols))


def dirac_(tensor, groups=1):
    """Fill a 3/4/5-D convolution weight with the Dirac delta, so the convolution preserves
    the identity of its input channels (per group)."""
    dimensions = tensor.dim()
    if dimensions not in (3, 4, 5):
        raise ValueError("Only tensors with 3, 4, or 5 dimensions are supported")
    sizes = tuple(tensor.shape)
    if sizes[0] % groups != 0:
        raise ValueError("dim 0 must be divisible by groups")
    out_per_group = sizes[0] // groups
    min_dim = min(out_per_group, sizes[1])
    values = np.zeros(sizes)
    center = tuple(s // 2 for s in sizes[2:])
    for g in range(groups):
        for d in range(min_dim):
            values[(g * out_per_group + d, d) + center] = 1
    return _write(tensor, values)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """Glorot uniform: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    a = math.sqrt(3.0) * std
    return _uniform(tensor, -a, a, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """Glorot normal: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return _normal(tensor, 0.0, std, generator)


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He uniform: U(-bound, bound) with bound = gain * sqrt(3 / fan_mode)."""
    if 0 in tuple(tensor.shape):
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    gain = calculate_gain(nonlinearity, a)
    std = gain / math.sqrt(fan)
    bound = math.sqrt(3.0) * std
    return _uniform(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He normal: N(0, std^2) with std = gain / sqrt(fan_mode)."""
    if 0 in tuple(tensor.shape):
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    gain = calculate_gain(nonlinearity, a)
    std = gain / math.sqrt(fan)
    return _normal(tensor, 0.0, std, generator)


def orthogonal_(tensor, gain=1, generator=None):
    """Fill with a (semi-)orthogonal matrix times ``gain``; dims after the first are
    flattened."""
    if tensor.dim() < 2:
        raise ValueError("Only tensors with 2 or more dimensions are supported")
    if tensor.numel() == 0:
        return tensor
    _require_floating(tensor, "normal_kernel_cpu")
    rows = tuple(tensor.shape)[0]
    cols = tensor.numel() // rows
    flat = _rng(generator).normal(0.0, 1.0, size=(rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    d = np.sign(np.diag(r))
    q = q * d[None, :]
    if rows < cols:
        q = q.T
    return _write(tensor, (q * gain).reshape(tuple(tensor.shape)))


def sparse_(tensor, sparsity, std=0.01, generator=None):
    """Fill a 2-D tensor with N(0, std^2) values, zeroing a ``sparsity`` fraction of each
    column."""
    if tensor.dim() != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    _require_floating(tensor, "normal_kernel_cpu")
    rows, cols = tuple(tensor.shape)
    num_zeros = int(math.ceil(sparsity * rows))
    rng = _rng(generator)
    values = rng.normal(0.0, std, size=(rows, cols))
    for col in range(cols):
        zero_rows = rng.permutation(rows)[:num_zeros]
        values[zero_rows, col] = 0
    return _write(tensor, values)


# --- deprecated names ----------------------------------------------------------------------------

def _make_deprecate(meth):
    new_name = meth.__name__
    old_name = new_name[:-1]

    def deprecated_init(*args, **kwargs):
        warnings.warn(f"`nn.init.{old_name}` is now deprecated in favor of "
                      f"`nn.init.{new_name}`.", FutureWarning, stacklevel=2)
        return meth(*args, **kwargs)

    deprecated_init.__doc__ = (f"{old_name}(...)\n\n.. warning::\n    This method is now "
                               f"deprecated in favor of :func:`tracenet.nn.init.{new_name}`.\n\n"
                               f"See :func:`~tracenet.nn.init.{new_name}` for details.")
    deprecated_init.__name__ = old_name
    deprecated_init.__qualname__ = old_name
    return deprecated_init


uniform = _make_deprecate(uniform_)
normal = _make_deprecate(normal_)
constant = _make_deprecate(constant_)
eye = _make_deprecate(eye_)
dirac = _make_deprecate(dirac_)
xavier_uniform = _make_deprecate(xavier_uniform_)
xavier_normal = _make_deprecate(xavier_normal_)
kaiming_uniform = _make_deprecate(kaiming_uniform_)
kaiming_normal = _make_deprecate(kaiming_normal_)
orthogonal = _make_deprecate(orthogonal_)
sparse = _make_deprecate(sparse_)
