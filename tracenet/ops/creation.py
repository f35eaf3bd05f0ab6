"""Tensor factories: tensor, from_numpy, zeros/ones/full/empty/eye/arange/range/linspace,
the random ones (randn, rand, randint, randperm, normal) and the ``*_like`` forms."""
import math
import numbers
import warnings

import numpy as np

from .. import _aligned, _dtype, _random
from . import generator as _generator  # noqa: F401  (installs the global Generator)
from .._sym import Specialize, Sym, has_symbols
from ..tensor import Tensor, _check_device, _to_nested_numbers
from . import registry


def _make(arr, dtype=None, device=None, requires_grad=False):
    _check_device(device)
    if dtype is not None:
        dtype = _as_dtype(dtype)
        if arr.dtype != dtype.np:
            arr = arr.astype(dtype.np)
    t = Tensor._wrap(arr)
    if requires_grad:
        if not t.dtype.is_floating_point:
            raise RuntimeError("Only Tensors of floating point and complex dtype can require "
                               "gradients")
        t._requires_grad = True
    return t


def _as_dtype(dtype):
    if isinstance(dtype, _dtype.dtype):
        return dtype
    if dtype in (float,):
        return _dtype.float64
    if dtype in (int,):
        return _dtype.int64
    if dtype in (bool,):
        return _dtype.bool_
    try:
        return _dtype.from_numpy_dtype(dtype)
    except TypeError:
        raise TypeError(f"unsupported dtype {dtype!r}") from None


def _size(size, name=None):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    out = []
    for s in size:
        if isinstance(s, Tensor):
            s = int(s)
        if isinstance(s, Sym):  # a symbolic batch size, while tracing
            out.append(s)
            continue
        if not isinstance(s, (int, np.integer)):
            raise TypeError(f"expected a sequence of integers, got {type(s).__name__}")
        out.append(int(s))
    for s in out:
        if not isinstance(s, Sym) and s < 0:
            if name == "zeros":
                raise RuntimeError("zeros: Dimension size must be non-negative.")
            raise RuntimeError(f"Trying to create tensor with negative dimension {s}: "
                               f"[{', '.join(map(str, out))}]")
    return tuple(out)


def _infer_dtype(data):
    """torch.tensor's dtype inference from Python data: Python floats take the default dtype,
    numpy scalars/arrays and tensors keep their own, and all elements are promoted together."""
    found = []

    def walk(v):
        if isinstance(v, (list, tuple)):
            for item in v:
                walk(item)
        elif isinstance(v, Tensor):
            found.append(v.dtype)
        elif isinstance(v, (np.ndarray, np.generic)):
            found.append(_dtype.from_numpy_dtype(v.dtype))
        elif isinstance(v, bool):
            found.append(_dtype.bool_)
        elif isinstance(v, numbers.Integral):
            found.append(_dtype.int64)
        elif isinstance(v, numbers.Real):
            found.append(_dtype.get_default_dtype())
        else:
            raise TypeError(f"new(): invalid data type '{type(v).__name__}'")

    walk(data)
    if not found:
        return _dtype.get_default_dtype()
    result = found[0]
    for d in found[1:]:
        result = _dtype.promote_types(result, d)
    return result


def tensor(data, dtype=None, device=None, requires_grad=False, pin_memory=False):
    if isinstance(data, Tensor):
        warnings.warn("To copy construct from a tensor, it is recommended to use "
                      "sourceTensor.detach().clone() or sourceTensor.detach().clone()."
                      "requires_grad_(True), rather than torch.tensor(sourceTensor).",
                      UserWarning, stacklevel=2)
        arr = np.array(data._concrete("tensor()"), copy=True)
    elif isinstance(data, np.ndarray):
        arr = np.array(data, copy=True)
        arr = arr.astype(_dtype.from_numpy_dtype(arr.dtype).np, copy=False)
    else:
        dt = _as_dtype(dtype) if dtype is not None else _infer_dtype(data)
        data = _to_nested_numbers(data)
        try:
            arr = np.array(data, dtype=dt.np)
        except ValueError as e:
            raise ValueError(f"expected sequence of equal-length lists: {e}") from None
    return _make(arr, dtype, device, requires_grad)


def as_tensor(data, dtype=None, device=None):
    if isinstance(data, Tensor) and (dtype is None or _as_dtype(dtype) is data.dtype):
        return data
    if isinstance(data, np.ndarray) and data.dtype in _dtype._BY_NP and (
            dtype is None or _as_dtype(dtype).np == data.dtype):
        return Tensor._wrap(data)
    return tensor(data, dtype=dtype, device=device)


def from_numpy(arr):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(arr).__name__})")
    if arr.dtype not in _dtype._BY_NP:
        raise TypeError(f"can't convert np.ndarray of type numpy.{arr.dtype}. The only supported "
                        "types are: float64, float32, int64, and bool.")
    return Tensor._wrap(arr)  # shares memory, like torch


def _symbolic_full(size, value, dt, device, requires_grad):
    """A tensor of a symbolic size (``zeros(x.size(0), 64)`` while tracing): the traced
    constant ``value`` broadcast to ``size`` and copied (a buffer of its own, as in eager)."""
    _check_device(device)
    tracer = registry._tracer[0]
    if tracer is None or requires_grad:
        raise Specialize("a new leaf tensor of a symbolic size")
    scalar = Tensor._wrap(np.array(value, dt.np))
    return tracer(registry.REGISTRY["expand"], (scalar,), {"shape": tuple(size)}).clone()


def _factory(value, name):
    def factory(*size, out=None, dtype=None, layout=None, device=None, requires_grad=False,
                pin_memory=False, memory_format=None):
        if not size:
            raise TypeError(f"{name}() missing 1 required positional arguments: \"size\"")
        dt = _as_dtype(dtype) if dtype is not None else _dtype.get_default_dtype()
        size = _size(size, name)
        if has_symbols(size):
            return _symbolic_full(size, value, dt, device, requires_grad)
        return _make(_aligned.full(size, value, dt.np), None, device, requires_grad)
    factory.__name__ = name
    return factory


zeros = _factory(0, "zeros")
ones = _factory(1, "ones")
empty = _factory(0, "empty")  # zero-filled: garbage helps nobody
new_zeros = _factory(0, "new_zeros")


def full(size, fill_value, *, dtype=None, device=None, requires_grad=False, layout=None,
         out=None):
    if dtype is None:
        dtype = _dtype.scalar_dtype(fill_value)
    dt = _as_dtype(dtype)
    size = _size((size,))
    if has_symbols(size):
        return _symbolic_full(size, fill_value, dt, device, requires_grad)
    return _make(_aligned.full(size, fill_value, dt.np), None, device, requires_grad)


def eye(n, m=None, *, dtype=None, device=None, requires_grad=False, layout=None, out=None):
    dt = _as_dtype(dtype) if dtype is not None else _dtype.get_default_dtype()
    return _make(np.eye(n, n if m is None else m, dtype=dt.np), None, device, requires_grad)


def arange(start, end=None, step=1, *, dtype=None, device=None, requires_grad=False,
           layout=None, out=None):
    if end is None:
        start, end = 0, start
    vals = [v.item() if isinstance(v, Tensor) else v for v in (start, end, step)]
    if step == 0:
        raise RuntimeError("step must be nonzero")
    if dtype is None:
        dt = _dtype.int64 if all(isinstance(v, (int, np.integer)) for v in vals) \
            else _dtype.get_default_dtype()
    else:
        dt = _as_dtype(dtype)
    s, e, st = vals
    if (e - s) * st < 0:
        raise RuntimeError("upper bound and lower bound inconsistent with step sign")
    n = max(0, math.ceil((e - s) / st))
    arr = (s + np.arange(n, dtype=np.float64) * st) if dt.is_floating_point or any(
        isinstance(v, float) for v in vals) else np.arange(s, e, st)
    return _make(np.asarray(arr).astype(dt.np), None, device, requires_grad)


def range_(start=0, end=None, step=1, *, dtype=None, device=None, requires_grad=False,
           layout=None, out=None):
    warnings.warn("torch.range is deprecated and will be removed in a future release because "
                  "its behavior is inconsistent with Python's range builtin. Instead, use "
                  "torch.arange, which produces values in [start, end).", UserWarning,
                  stacklevel=2)
    if end is None:
        start, end = 0, start
    dt = _as_dtype(dtype) if dtype is not None else _dtype.get_default_dtype()
    n = int(math.floor((end - start) / step)) + 1
    arr = start + np.arange(max(n, 0), dtype=np.float64) * step
    return _make(arr.astype(dt.np), None, device, requires_grad)


def linspace(start, end, steps, *, dtype=None, device=None, requires_grad=False, out=None):
    dt = _as_dtype(dtype) if dtype is not None else _dtype.get_default_dtype()
    return _make(np.linspace(start, end, steps).astype(dt.np), None, device, requires_grad)


# --- random -------------------------------------------------------------------------------------


def manual_seed(seed):
    _random.manual_seed(seed)
    return _random.default_generator


def seed():
    s = int(np.random.SeedSequence().entropy % (2 ** 63))
    _random.manual_seed(s)
    return s


initial_seed = _random.initial_seed


def _random_factory(sample):
    def factory(*size, generator=None, out=None, dtype=None, layout=None, device=None,
                requires_grad=False, pin_memory=False):
        if not size:
            raise TypeError(f"{factory.public_name}() missing 1 required positional arguments: "
                            "\"size\"")
        dt = _as_dtype(dtype) if dtype is not None else _dtype.get_default_dtype()
        if not dt.is_floating_point:
            word = {"int64": "Long", "bool": "Bool"}[dt.name]
            raise NotImplementedError(f"\"{factory.__name__}\" not implemented for '{word}'")
        return _make(sample(_random.rng(generator), _size(size)).astype(dt.np), None, device,
                     requires_grad)
    return factory


randn = _random_factory(lambda rng, s: rng.standard_normal(s))
randn.__name__ = "normal_kernel_cpu"
randn.public_name = "randn"
rand = _random_factory(lambda rng, s: rng.random(s))
rand.__name__ = "check_uniform_bounds"
rand.public_name = "rand"


def randint(low, high=None, size=None, *, generator=None, dtype=None, device=None,
            requires_grad=False, out=None, layout=None):
    if size is None and isinstance(high, (tuple, list)):  # randint(high, size)
        low, high, size = 0, low, high
    elif high is None:
        low, high = 0, low
    if size is None:
        raise TypeError("randint() missing 1 required positional arguments: \"size\"")
    if low >= high:
        raise RuntimeError(f"random_ expects 'from' to be less than 'to', but got from={low} >= "
                           f"to={high}")
    dt = _as_dtype(dtype) if dtype is not None else _dtype.int64
    return _make(_random.rng(generator).integers(low, high, _size((size,))).astype(dt.np), None, device,
                 requires_grad)


def randperm(n, *, dtype=None, device=None, requires_grad=False, generator=None, out=None):
    dt = _as_dtype(dtype) if dtype is not None else _dtype.int64
    return _make(_random.rng(generator).permutation(n).astype(dt.np), None, device, requires_grad)


def normal(mean=0.0, std=1.0, size=None, *, generator=None, dtype=None, out=None):
    if isinstance(mean, Tensor) or isinstance(std, Tensor):
        m = mean._data if isinstance(mean, Tensor) else mean
        s = std._data if isinstance(std, Tensor) else std
        shape = np.broadcast_shapes(np.shape(m), np.shape(s))
        ref = mean if isinstance(mean, Tensor) else std
        return Tensor._wrap((m + s * _random.rng(generator).standard_normal(shape)).astype(ref.dtype.np))
    dt = _as_dtype(dtype) if dtype is not None else _dtype.get_default_dtype()
    return Tensor._wrap((mean + std * _random.rng(generator).standard_normal(_size((size,))))
                        .astype(dt.np))


def bernoulli(p, generator=None):
    return Tensor._wrap((_random.rng(generator).random(p.shape) < p._data).astype(p.dtype.np))


def multinomial(input, num_samples, replacement=False, *, generator=None, out=None):
    """Samples category indices from the rows of ``input`` (unnormalised probabilities)."""
    p = input._concrete("multinomial()")
    if p.ndim not in (1, 2):
        raise RuntimeError("prob_dist must be 1 or 2 dim")
    if not input.dtype.is_floating_point:
        raise RuntimeError("multinomial only supports floating-point dtypes for input, got: "
                           + {"int64": "Long", "bool": "Bool"}[input.dtype.name])
    n = p.shape[-1]
    if num_samples <= 0:
        raise RuntimeError("cannot sample n_sample <= 0 samples")
    if not replacement and num_samples > n:
        raise RuntimeError("cannot sample n_sample > prob_dist.size(-1) samples without "
                           "replacement")
    rows = p.reshape(-1, n).astype(np.float64)
    if not np.all(np.isfinite(rows)) or np.any(rows < 0):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    totals = rows.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    gen = _random.rng(generator)
    probs = rows / totals
    if replacement:
        cdf = np.cumsum(probs, axis=1)
        cdf[:, -1] = 1.0
        u = gen.random((rows.shape[0], num_samples))
        out_idx = np.stack([np.searchsorted(c, ui, side="right") for c, ui in zip(cdf, u)])
        out_idx = np.minimum(out_idx, n - 1)
    else:
        # exponential race (Gumbel top-k): the k smallest E_i / p_i are a sample without
        # replacement; zero-probability categories come last
        with np.errstate(divide="ignore"):
            keys = gen.exponential(size=rows.shape) / probs
        out_idx = np.argsort(keys, axis=1, kind="stable")[:, :num_samples]
    out_idx = out_idx.astype(np.int64)
    return Tensor._wrap(out_idx if p.ndim == 2 else out_idx[0])


# --- *_like ---------------------------------------------------------------------------------


def _like(factory):
    def like(t, *, dtype=None, device=None, requires_grad=False, layout=None,
             memory_format=None):
        return factory(tuple(t.shape), dtype=dtype or t.dtype, device=device,
                       requires_grad=requires_grad)
    return like


zeros_like = _like(zeros)
ones_like = _like(ones)
empty_like = _like(empty)
randn_like = _like(randn)
rand_like = _like(rand)


def full_like(t, fill_value, *, dtype=None, device=None, requires_grad=False, layout=None,
              memory_format=None):
    return full(tuple(t.shape), fill_value, dtype=dtype or t.dtype, device=device,
                requires_grad=requires_grad)


def randint_like(t, low, high=None, *, dtype=None, device=None, requires_grad=False):
    return randint(low, high, tuple(t.shape), dtype=dtype or t.dtype, device=device)
