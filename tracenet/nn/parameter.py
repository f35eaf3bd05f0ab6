"""``Parameter``: a leaf tensor that a ``Module`` registers as one of its weights, and
``Buffer``: a marker that makes a tensor a registered (optionally persistent) buffer."""
import numpy as np

from .. import _dtype
from ..tensor import Tensor


def _empty_float():
    return np.empty((0,), dtype=_dtype.get_default_dtype().np)


def _source_array(data, what):
    if not isinstance(data, Tensor):
        raise AttributeError(f"'{type(data).__name__}' object has no attribute 'detach'")
    return data._concrete(what)


class Parameter(Tensor):
    """A tensor that is a module parameter: assigning it as a module attribute registers it.

    ``Parameter(data)`` shares memory (and the version counter) with ``data`` and is always a
    leaf; ``requires_grad`` defaults to True.
    """

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            self._init(_empty_float())
        else:
            self._init(_source_array(data, "nn.Parameter"))
            self._vc = data._vc
        requires_grad = bool(requires_grad)
        if requires_grad and not self.dtype.is_floating_point:
            raise RuntimeError("Only Tensors of floating point and complex dtype can require "
                               "gradients")
        self._requires_grad = requires_grad

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        result = type(self)._wrap(self._concrete("deepcopy").copy(), self._requires_grad)
        memo[id(self)] = result
        return result

    def __reduce_ex__(self, proto):
        return (_rebuild_parameter, (self._concrete("pickle"), self._requires_grad, type(self)))


def _rebuild_parameter(data, requires_grad, cls):
    return cls._wrap(np.array(data, copy=True), bool(requires_grad))


class _BufferMeta(type):
    # ``Buffer(t)`` returns a plain Tensor flagged as a buffer; isinstance() reads that flag.
    def __instancecheck__(cls, instance):
        if cls is Buffer:
            return isinstance(instance, Tensor) and bool(getattr(instance, "_is_buffer", False))
        return super().__instancecheck__(instance)


class Buffer(metaclass=_BufferMeta):
    """``Buffer(data=None, *, persistent=True)``: a tensor that becomes a registered buffer when
    assigned as a module attribute. ``persistent=False`` keeps it out of ``state_dict``."""

    def __new__(cls, data=None, *, persistent=True):
        if data is None:
            t = Tensor._wrap(_empty_float())
        else:
            t = Tensor._wrap(_source_array(data, "nn.Buffer"), data._requires_grad)
            t._vc = data._vc
        t._is_buffer = True
        t.persistent = bool(persistent)
        return t


def is_lazy(param):
    return False
