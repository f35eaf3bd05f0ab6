"""Tensor: numpy storage plus the autograd state (requires_grad, grad, grad_fn, version).

A tensor is either *concrete* (``_data`` is a numpy array) or *traced* (``_ir`` is an IR value
and ``_data`` is None). Math methods are bound in ``_tensor_methods.py`` from the op modules, so
each op is defined once, in the registry. This module sits below the ops and imports none of
them: the methods that run ops (``detach``, the view-history refresh) are installed there too,
and ``backward`` by ``tracenet.autograd``.
"""
import warnings
from collections import OrderedDict

import numpy as np

from . import _dtype
from ._tensor_str import tensor_repr
from ._trace_errors import data_dependent
from .size import Size
from .utils.hooks import add_hook


class _VersionCounter:
    """Shared by a tensor and its views; bumped by every in-place op."""
    __slots__ = ("value", "clock")

    def __init__(self):
        self.value = 0


_stored_version = _VersionCounter.value  # the slot a clocked counter keeps its offset in


class _ClockedCounter(_VersionCounter):
    """A version counter that also counts the ticks of a shared ``clock`` (a one-item list):
    a compiled call that rewrites many tensors in place bumps all their versions with one
    ``clock[0] += 1``. ``clocked`` turns a plain counter into one, keeping its value."""
    __slots__ = ()

    @property
    def value(self):
        return _stored_version.__get__(self) + self.clock[0]

    @value.setter
    def value(self, v):
        _stored_version.__set__(self, v - self.clock[0])


def clocked(counter, clock):
    """Make ``counter`` (shared by a tensor and its views) count ``clock``'s ticks as well; False
    when it counts another clock already (its owner bumps it itself then)."""
    if type(counter) is _ClockedCounter:
        return counter.clock is clock
    value = counter.value
    counter.__class__ = _ClockedCounter
    counter.clock = clock
    _stored_version.__set__(counter, value - clock[0])
    return True


# how many times an existing tensor's array was replaced (``.data =``, ``Module._apply``,
# ``vector_to_parameters``): compiled calls keep the arrays they bind while it is unchanged
arrays_replaced = [0]


def replace_array(t, array):
    """Give the existing tensor ``t`` another array (counted in ``arrays_replaced``)."""
    t._data = array
    arrays_replaced[0] += 1


def _check_device(device):
    if device is None:
        return
    name = device if isinstance(device, str) else getattr(device, "type", str(device))
    if str(name).split(":")[0] != "cpu":
        raise RuntimeError(f"tracenet runs on the CPU only; device {str(device)!r} is not "
                           "available (use device='cpu')")


class device:
    """``tracenet.device('cpu')``: the only device there is."""
    def __init__(self, type="cpu", index=None):
        _check_device(type)
        self.type = "cpu"
        self.index = index

    def __repr__(self):
        return "device(type='cpu')"

    def __str__(self):
        return "cpu"

    def __eq__(self, other):
        return str(other) == "cpu" or isinstance(other, device)

    def __hash__(self):
        return hash("cpu")


class Tensor:
    __slots__ = ("_data", "_ir", "_req", "_grad", "_grad_fn", "_output_nr", "_vc",
                 "_retains_grad", "_hooks", "_accumulator", "_base_", "_hist", "_view_hist",
                 "__weakref__", "__dict__")

    # --- construction -------------------------------------------------------------------
    def __init__(self, *args, **kwargs):
        # legacy constructor: Tensor(2, 3) allocates, Tensor([1, 2]) copies (always float32)
        if len(args) == 1 and not isinstance(args[0], int):
            arr = np.array(_to_nested_numbers(args[0]), dtype=np.float32)
        else:
            arr = np.zeros(tuple(int(a) for a in args), dtype=np.float32)
        self._init(arr)

    def _init(self, array, requires_grad=False):
        self._data = array
        self._ir = None
        self._req = requires_grad
        self._grad = None
        self._grad_fn = None
        self._output_nr = 0
        self._vc = _VersionCounter()
        self._retains_grad = False
        self._hooks = None
        self._accumulator = None
        self._base_ = None
        self._hist = 0  # bumped when an in-place op rewrites this (base) tensor's history
        self._view_hist = 0

    @classmethod
    def _wrap(cls, array, requires_grad=False):
        """Fast internal constructor around a numpy array of a supported dtype (``_init``'s
        fields, set here directly: every eager op result is made here)."""
        t = object.__new__(cls)
        t._data = array
        t._ir = None
        t._req = requires_grad
        t._grad = None
        t._grad_fn = None
        t._output_nr = 0
        t._vc = _VersionCounter()
        t._retains_grad = False
        t._hooks = None
        t._accumulator = None
        t._base_ = None
        t._hist = 0
        t._view_hist = 0
        return t

    # --- autograd history of views ---------------------------------------------------------
    #
    # A view (the output of a view op) remembers its base. When an in-place op rewrites the
    # base's history (an in-place op on the base, or on any view of it, while recording), the
    # view's own history is stale: it is rebuilt on next use as a strided view of the base's
    # new history (torch's AsStridedBackward0), so gradients keep flowing to the right place.

    @property
    def _base(self):
        return self._base_

    @_base.setter
    def _base(self, base):
        self._base_ = base
        self._view_hist = base._hist if base is not None else 0

    def _view_is_stale(self):
        base = self._base_
        return base is not None and self._view_hist != base._hist

    # _refresh_view(self): installed by _tensor_methods, as it runs the view ops

    @property
    def grad_fn(self):
        if self._base_ is not None and self._view_hist != self._base_._hist:
            self._refresh_view()
        return self._grad_fn

    @grad_fn.setter
    def grad_fn(self, node):
        self._grad_fn = node

    @property
    def _requires_grad(self):
        if self._base_ is not None and self._view_hist != self._base_._hist:
            self._refresh_view()
        return self._req

    @_requires_grad.setter
    def _requires_grad(self, value):
        self._req = value

    # --- basic properties ---------------------------------------------------------------
    @property
    def dtype(self):
        if self._ir is not None:
            return self._ir.dtype
        return _dtype._BY_NP[self._data.dtype]

    @property
    def shape(self):
        if self._ir is None:  # numpy's shape is a tuple of ints already
            return tuple.__new__(Size, self._data.shape)
        return Size(self._ir.shape)

    def size(self, dim=None):
        s = self.shape
        if dim is None:
            return s
        return s[_wrap_dim(dim, len(s))]

    def dim(self):
        return len(self._ir.shape) if self._ir is not None else self._data.ndim

    ndim = property(dim)

    def ndimension(self):
        return self.dim()

    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    nelement = numel

    def element_size(self):
        return self.dtype.itemsize

    def stride(self, dim=None):
        st = tuple(s // self.dtype.itemsize for s in self._concrete("stride").strides)
        return st if dim is None else st[_wrap_dim(dim, len(st))]

    def is_contiguous(self, memory_format=None):
        return self._ir is not None or self._data.flags.c_contiguous

    def is_floating_point(self):
        return self.dtype.is_floating_point

    @property
    def device(self):
        return device("cpu")

    is_cuda = False
    is_sparse = False
    is_quantized = False
    is_meta = False
    layout = "torch.strided"

    def cpu(self):
        return self

    def cuda(self, *a, **k):
        _check_device("cuda")

    def get_device(self):
        return -1

    @property
    def _version(self):
        return self._vc.value

    @property
    def is_leaf(self):
        return self.grad_fn is None

    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        value = bool(value)
        if self.grad_fn is not None:
            if not value:
                raise RuntimeError("you can only change requires_grad flags of leaf variables. If "
                                   "you want to use a computed variable in a subgraph that doesn't "
                                   "require differentiation use var_no_grad = var.detach().")
            return
        if value and not (self.dtype.is_floating_point):
            raise RuntimeError("only Tensors of floating point and complex dtype can require "
                               "gradients")
        self._requires_grad = value

    def requires_grad_(self, requires_grad=True):
        requires_grad = bool(requires_grad)
        if requires_grad and self.grad_fn is None and not self.dtype.is_floating_point:
            raise RuntimeError("only Tensors of floating point dtype can require gradients")
        self.requires_grad = requires_grad
        return self

    @property
    def grad(self):
        if self.grad_fn is not None and not self._retains_grad and self._ir is None:
            warnings.warn(
                "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed. Its "
                ".grad attribute won't be populated during autograd.backward(). If you indeed "
                "want the .grad field to be populated for a non-leaf Tensor, use .retain_grad() "
                "on the non-leaf Tensor. If you access the non-leaf Tensor by mistake, make sure "
                "you access the leaf Tensor instead. See github.com/pytorch/pytorch/pull/30531 "
                "for more information.", UserWarning, stacklevel=2)
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None:
            if not isinstance(value, Tensor):
                raise TypeError(f"assigned grad expected to be a Tensor or None but got grad of "
                                f"type {type(value).__name__}")
            if tuple(value.shape) != tuple(self.shape):
                raise RuntimeError("assigned grad has data of a different size")
            if value.dtype is not self.dtype:
                raise RuntimeError("assigned grad has data of a different type")
        self._grad = value

    def retain_grad(self):
        if not self._requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        if self.grad_fn is not None:
            self._retains_grad = True
            self.grad_fn._retain(self._output_nr, self)

    @property
    def retains_grad(self):
        return self._retains_grad

    def register_hook(self, hook):
        """Call ``hook(grad)`` when the gradient w.r.t. this tensor is computed; a non-None
        return value replaces the gradient."""
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self.grad_fn is not None:
            return self.grad_fn._add_hook(self._output_nr, hook)
        if self._hooks is None:
            self._hooks = OrderedDict()
        return add_hook(self._hooks, hook)

    # --- data access ----------------------------------------------------------------------
    def _concrete(self, what):
        if self._ir is not None:
            data_dependent(what)
        return self._data

    @property
    def data(self):
        # shares memory but not the version counter or the autograd history
        return Tensor._wrap(self._concrete("data"))

    @data.setter
    def data(self, value):
        replace_array(self, value._concrete("data"))

    # detach(self): installed by _tensor_methods (a traced tensor detaches through the op)

    def detach_(self):
        if self._base is not None and self._requires_grad:
            raise RuntimeError(
                "Can't detach views in-place. Use detach() instead. If you are using "
                "DistributedDataParallel (DDP) for training, and gradient_as_bucket_view is set "
                "as True, gradients are views of DDP buckets, and hence detach_() cannot be "
                "called on these gradients. To fix this error, please refer to the "
                "Optimizer.zero_grad() function in torch/optim/optimizer.py as the solution.")
        self.grad_fn = None
        self._requires_grad = False
        return self

    def numpy(self, *, force=False):
        data = self._concrete("numpy()")
        if self._requires_grad and not force:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use "
                               "tensor.detach().numpy() instead.")
        return data

    def item(self):
        data = self._concrete("item()")
        if data.size != 1:
            raise RuntimeError(f"a Tensor with {data.size} elements cannot be converted to Scalar")
        return data.reshape(()).item()

    def tolist(self):
        return self._concrete("tolist()").tolist()

    def __bool__(self):
        data = self._concrete("bool()")
        if data.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with more than one value is ambiguous")
        return bool(data.reshape(()))

    def _python_scalar(self):
        data = self._concrete("item()")
        if data.size != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return data.reshape(()).item()

    def __float__(self):
        return float(self._python_scalar())

    def __int__(self):
        return int(self._python_scalar())

    def __index__(self):
        if self.dtype.is_floating_point or self.numel() != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __len__(self):
        if self.dim() == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        if self.dim() == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    __hash__ = object.__hash__

    def __repr__(self, *, tensor_contents=None):
        return tensor_repr(self)

    def __format__(self, spec):
        if self._ir is None and self.dim() == 0:
            return self.item().__format__(spec)
        return object.__format__(self, spec)

    def __reduce_ex__(self, proto):
        return (_rebuild, (self._data, self._requires_grad, type(self)))

    def __deepcopy__(self, memo):
        if not self.is_leaf:
            raise RuntimeError("Only Tensors created explicitly by the user (graph leaves) support "
                               "the deepcopy protocol at the moment.")
        new = type(self)._wrap(self._data.copy(), self._requires_grad)
        if self._grad is not None:
            new._grad = self._grad.__deepcopy__(memo)
        memo[id(self)] = new
        return new

    def type(self, dtype=None, non_blocking=False):
        if dtype is None:
            return _legacy_type_name(self.dtype)
        if isinstance(dtype, str):
            names = {_legacy_type_name(d): d for d in _dtype.ALL}
            if dtype not in names:
                raise ValueError(f"invalid type: '{dtype}'")
            dtype = names[dtype]
        return self.to(dtype)

    def data_ptr(self):
        return self._concrete("data_ptr()").ctypes.data


def _legacy_type_name(dt):
    return {_dtype.float32: "torch.FloatTensor", _dtype.float64: "torch.DoubleTensor",
            _dtype.int64: "torch.LongTensor", _dtype.bool_: "torch.BoolTensor"}[dt]


def _rebuild(data, requires_grad, cls):
    t = cls._wrap(data.copy())
    t._requires_grad = requires_grad
    return t


def _wrap_dim(dim, ndim):
    if isinstance(dim, Tensor):
        dim = int(dim)
    lo, hi = (-ndim, ndim - 1) if ndim else (-1, 0)
    if not lo <= dim <= hi:
        raise IndexError(f"Dimension out of range (expected to be in range of [{lo}, {hi}], "
                         f"but got {dim})")
    return dim % ndim if ndim else 0


def _to_nested_numbers(data):
    """Turn nested lists that may contain 0-dim/1-element tensors into plain numbers."""
    if isinstance(data, Tensor):
        return data._concrete("tensor()")
    if isinstance(data, (list, tuple)):
        return [_to_nested_numbers(d) for d in data]
    return data
