"""The legacy tensor-type constructors: ``torch.FloatTensor(2, 3)``, ``torch.LongTensor([1, 2])``.

Each is a class whose ``isinstance`` check asks for a tensor of its dtype (as in torch, a float32
tensor is a ``torch.FloatTensor``). tracenet has no int32 or uint8, so ``IntTensor`` and
``ByteTensor`` raise a TypeError naming the missing dtype.
"""
import numpy as np

from . import _dtype
from .size import Size
from .tensor import Tensor, _check_device, _to_nested_numbers


class _TensorType(type):
    def __instancecheck__(cls, obj):
        return cls._dtype is not None and isinstance(obj, Tensor) and obj.dtype is cls._dtype

    def __call__(cls, *args, device=None):
        if cls._dtype is None:
            raise TypeError(f"torch.{cls.__name__} needs dtype torch.{cls._missing}, which "
                            f"tracenet does not have (use torch.LongTensor for integers)")
        _check_device(device)
        dt = cls._dtype
        if not args:
            return Tensor._wrap(np.empty((0,), dtype=dt.np))
        if len(args) == 1 and isinstance(args[0], Tensor):
            if args[0].dtype is not dt:
                raise TypeError(f"expected {cls.__name__} with dtype torch.{dt.name} (got "
                                f"a tensor of dtype torch.{args[0].dtype.name})")
            return args[0]
        if len(args) == 1 and isinstance(args[0], Size):
            args = tuple(args[0])
        if all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in args):
            return Tensor._wrap(np.empty(tuple(int(a) for a in args), dtype=dt.np))
        if len(args) == 1 and isinstance(args[0], (list, tuple, np.ndarray)):
            return Tensor._wrap(np.array(_to_nested_numbers(args[0])).astype(dt.np))
        raise TypeError(f"torch.{cls.__name__}(): data must be a sequence or sizes "
                        f"(got {', '.join(type(a).__name__ for a in args)})")


def _make(name, dt, missing=None):
    return _TensorType(name, (), {"_dtype": dt, "_missing": missing, "__module__": "torch"})


FloatTensor = _make("FloatTensor", _dtype.float32)
DoubleTensor = _make("DoubleTensor", _dtype.float64)
LongTensor = _make("LongTensor", _dtype.int64)
BoolTensor = _make("BoolTensor", _dtype.bool_)
IntTensor = _make("IntTensor", None, "int32")
ByteTensor = _make("ByteTensor", None, "uint8")
