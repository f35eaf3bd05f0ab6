"""Small helpers shared by the op families: argument coercion, broadcasting, dims."""
import numbers

import numpy as np

from .. import _dtype, _grad_mode as grad_mode
from .._meta import Meta
from .._sym import Sym, SymFloat, is_one
from ..tensor import Tensor
from . import registry as _registry
from .registry import register as _register
from .size_value import size_tensor


# eager's (and torch's) IndexError message for an embedding index outside its table; the
# compiled kernels that look rows up raise it from their data checks
INDEX_OUT_OF_RANGE = "index out of range in self"


def quiet(fn):
    """A numpy kernel run without numpy's floating-point warnings: like torch, overflow,
    division by zero and invalid values silently give inf/nan."""
    return _registry._quiet(fn)


def register_quiet(name, *, eager, **kw):
    """``registry.register`` with an ``eager`` kernel that does not emit numpy warnings."""
    return _register(name, eager=quiet(eager), **kw)


def np_sum_to(g, shape):
    """numpy ``g`` summed down to the broadcast source ``shape`` (``reduce.sum_to_shape`` on
    arrays: the same sums, so the same bits)."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape)
                                      if s == 1 and g.shape[lead + i] != 1)
    if dims:
        g = np.sum(g, axis=dims, keepdims=True)
    return g if g.shape == shape else g.reshape(shape)


def tensor_cls():
    """The Tensor class (op modules reach it through here)."""
    return Tensor


def traced_tensor(value):
    """A Tensor standing for the traced IR ``value``."""
    t = Tensor._wrap(None)
    t._ir = value
    t._requires_grad = value.requires_grad
    return t


def is_tensor(x):
    return isinstance(x, Tensor)


def active_tracer():
    """The tracer recording ops right now (``tracenet.trace`` puts its bound ``record`` method
    in the registry's slot), or None outside tracing."""
    return getattr(_registry._tracer[0], "__self__", None)


# installed by tracenet.autograd.engine, which sits above the ops: leaf -> its AccumulateGrad node
_accumulator_of = [None]


def scalar_tensor(value, dtype=None):
    """A Python number as a 0-dim constant tensor (torch's "wrapped number"); a symbolic size
    (while tracing) becomes the tensor of its run-time value."""
    dt = dtype or _dtype.scalar_dtype(value)
    if isinstance(value, (Sym, SymFloat)):
        return size_tensor(value, dt)
    return Tensor._wrap(np.array(value, dtype=dt.np))


def unsaved(t):
    """``t`` as an input whose value its op's backward will not read (the other operand of a
    product when only this one needs a gradient): the same place in the graph, but its own
    version counter, so an in-place change to ``t`` after the op is, as in torch, not an error
    at backward time."""
    if not grad_mode._state.enabled:
        return t
    if t._ir is not None:
        return traced_alias(t)
    if _registry._tracer[0] is not None:
        return t  # (while tracing: an alias would hide a captured tensor from the tracer)
    alias = Tensor._wrap(t._data)
    if t._requires_grad:
        alias._requires_grad = True
        if t.grad_fn is not None:
            alias.grad_fn, alias._output_nr = t.grad_fn, t._output_nr
        else:  # a leaf: gradients must still reach t's own accumulator
            acc = _accumulator_of[0](t)
            alias._accumulator = lambda: acc
    return alias


def traced_alias(t):
    """The traced tensor ``t``'s value now as another tensor, with a version counter of its
    own: what eager mode's ``unsaved`` alias or in-place snapshot is, for the trace's check of
    saved versions (``tracenet._saved_versions``)."""
    tracer = active_tracer()
    if tracer is not None and "_view_of" in t.__dict__:
        tracer.value_of(t)  # (a view read after a write to its root is taken again)
    alias = traced_tensor(t._ir)
    alias._requires_grad = t._requires_grad
    return alias


def product_operands(a, b):
    """Operands of a product-like op whose gradient for one input reads only the other:
    an input is saved only when the other one needs a gradient."""
    a_needed, b_needed = b._requires_grad, a._requires_grad
    return (a if a_needed else unsaved(a)), (b if b_needed else unsaved(b))


def as_tensor_pair(a, b):
    """Coerce two operands (tensors or Python numbers) to tensors of the promoted dtype.

    A Python number adopts the dtype the result will have, so ``x * 2`` stays float32."""
    if is_tensor(a) and is_tensor(b):
        return a, b
    if not is_tensor(a) and not is_tensor(b):
        raise TypeError("expected at least one tensor operand")
    for v in (a, b):
        if not is_tensor(v) and not isinstance(v, (numbers.Number, np.generic, Sym,
                                                       SymFloat)):
            raise TypeError(f"unsupported operand type: '{type(v).__name__}'")
    dt = _dtype.result_type(a, b)
    if not is_tensor(a):
        a = scalar_tensor(a, dt)
    if not is_tensor(b):
        b = scalar_tensor(b, dt)
    return a, b


def broadcast_shapes(*shapes):
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        size = 1
        for s in shapes:
            d = s[i - ndim + len(s)] if i - ndim + len(s) >= 0 else 1
            if not is_one(d):
                if not is_one(size) and d != size:
                    a, b = shapes[0], shapes[1] if len(shapes) > 1 else shapes[0]
                    dim = i
                    raise RuntimeError(
                        f"The size of tensor a ({_dim_of(a, i, ndim)}) must match the size of "
                        f"tensor b ({_dim_of(b, i, ndim)}) at non-singleton dimension {dim}")
                size = d
        out.append(size)
    return tuple(out)


def _dim_of(shape, i, ndim):
    j = i - ndim + len(shape)
    return shape[j] if j >= 0 else 1


def wrap_dim(dim, ndim):
    lo, hi = (-ndim, ndim - 1) if ndim else (-1, 0)
    if not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not lo <= dim <= hi:
        raise IndexError(f"Dimension out of range (expected to be in range of [{lo}, {hi}], "
                         f"but got {dim})")
    return int(dim) % ndim if ndim else 0


def wrap_dims(dims, ndim):
    if dims is None:
        return tuple(range(ndim))
    if isinstance(dims, (int, np.integer)):
        dims = (dims,)
    out = []
    for d in dims:
        d = wrap_dim(d, ndim)
        if d in out:
            raise RuntimeError(f"dim {d} appears multiple times in the list of dims")
        out.append(d)
    return tuple(sorted(out))


def same(m):
    """Shape rule of ops whose output looks like their (first) input."""
    return Meta(tuple(m.shape), m.dtype)


def float_meta(m):
    """Like ``same`` but integer inputs give the default float dtype (exp, sqrt...)."""
    dt = m.dtype if m.dtype.is_floating_point else _dtype.get_default_dtype()
    return Meta(tuple(m.shape), dt)


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def pair(v, n=2, name="value"):
    """Expand an int to an n-tuple; validate tuples (kernel_size=3 -> (3, 3))."""
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return tuple(int(v[0]) for _ in range(n))
        if len(v) != n:
            raise ValueError(f"expected {name} to be a single integer or a tuple of {n} integers, "
                             f"got {tuple(v)}")
        return tuple(int(x) for x in v)
    return tuple(int(v) for _ in range(n))
