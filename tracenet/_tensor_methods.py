"""Binds the op functions to ``Tensor`` as methods and operators, and implements in-place ops.

Every method here forwards to the one definition of its op in ``tracenet.ops``. In-place ops are
computed out of place and written back into the tensor's memory (so views and ``.data`` aliases
see the change), bumping the version counter and re-pointing ``grad_fn`` at the new node.
"""
import warnings

import numpy as np

from ._sym import Sym, SymFloat

from . import _dtype, _random
from . import _grad_mode as grad_mode
from .ops import common, creation, elementwise as ew, index as ix, linalg, nn as nnops, \
    reduce as rd, shape as sh, sorting as so
from .tensor import Tensor, _check_device
from ._view_writes import check_inplace_on_traced, note_traced_write
from .ops import batch_products, norms, registry, scatter as scatter_ops


def _rev(fn):
    return lambda self, other: fn(other, self)


def _binary_operand_check(fn):
    def method(self, other):
        if not isinstance(other, (Tensor, int, float, bool, np.number, np.bool_, Sym, SymFloat)):
            return NotImplemented
        return fn(self, other)
    return method


# --- operators --------------------------------------------------------------------------------
_OPERATORS = {
    # reflected forms as torch computes them: 2 + x is x + 2, 2 - x is rsub(x, 2),
    # 2 / x is reciprocal(x) * 2
    "__add__": ew.add, "__radd__": ew.add,
    "__sub__": ew.sub, "__rsub__": ew.rsub,
    "__mul__": ew.mul, "__rmul__": ew.mul,
    "__truediv__": ew.div, "__rtruediv__": lambda a, b: ew.mul(ew.reciprocal(a), b),
    "__pow__": ew.pow, "__rpow__": _rev(ew.pow),
    "__eq__": ew.eq, "__ne__": ew.ne, "__lt__": ew.lt, "__le__": ew.le, "__gt__": ew.gt,
    "__ge__": ew.ge,
    "__and__": lambda a, b: ew.logical_and(a, b) if a.dtype is _dtype.bool_ else
    ew.bitwise_and(a, b),
    "__or__": lambda a, b: ew.logical_or(a, b) if a.dtype is _dtype.bool_ else
    ew.bitwise_or(a, b),
    "__xor__": lambda a, b: ew.logical_xor(a, b) if a.dtype is _dtype.bool_ else
    ew.bitwise_xor(a, b),
    "__floordiv__": lambda a, b: ew.div(a, b, rounding_mode="floor"),
    "__rfloordiv__": lambda a, b: ew.div(b, a, rounding_mode="floor"),
    "__mod__": ew.remainder, "__rmod__": _rev(ew.remainder),
}
for _name, _fn in _OPERATORS.items():
    setattr(Tensor, _name, _binary_operand_check(_fn))

Tensor.__matmul__ = lambda self, other: linalg.matmul(self, other)
Tensor.__rmatmul__ = lambda self, other: linalg.matmul(other, self)
Tensor.__neg__ = lambda self: ew.neg(self)
Tensor.__pos__ = lambda self: self
Tensor.__abs__ = lambda self: ew.abs(self)
Tensor.__invert__ = lambda self: ew.logical_not(self) if self.dtype is _dtype.bool_ else \
    -self - 1
Tensor.__getitem__ = lambda self, key: ix.getitem(self, key)
Tensor.__hash__ = object.__hash__

# --- plain methods -------------------------------------------------------------------------
_METHODS = {
    # elementwise
    "add": ew.add, "sub": ew.sub, "subtract": ew.sub, "mul": ew.mul, "multiply": ew.mul,
    "div": ew.div, "divide": ew.div, "true_divide": ew.div, "pow": ew.pow,
    "remainder": ew.remainder, "floor_divide": ew.floor_divide,
    "maximum": ew.maximum, "minimum": ew.minimum,
    "neg": ew.neg, "negative": ew.neg, "exp": ew.exp, "log": ew.log, "log2": ew.log2,
    "log1p": ew.log1p, "expm1": ew.expm1, "sqrt": ew.sqrt, "rsqrt": ew.rsqrt,
    "reciprocal": ew.reciprocal, "tanh": ew.tanh, "sigmoid": ew.sigmoid, "sin": ew.sin,
    "cos": ew.cos, "abs": ew.abs, "absolute": ew.abs, "sign": ew.sign, "relu": ew.relu,
    "floor": ew.floor, "ceil": ew.ceil, "round": ew.round, "trunc": ew.trunc,
    "square": ew.square, "clamp": ew.clamp, "clip": ew.clamp, "clamp_min": ew.clamp_min,
    "clamp_max": ew.clamp_max, "eq": ew.eq, "ne": ew.ne, "lt": ew.lt, "le": ew.le, "gt": ew.gt,
    "ge": ew.ge, "greater": ew.gt, "less": ew.lt, "logical_not": ew.logical_not,
    "logical_and": ew.logical_and, "logical_or": ew.logical_or, "isnan": ew.isnan,
    "isinf": ew.isinf, "isfinite": ew.isfinite, "lerp": ew.lerp, "addcmul": ew.addcmul,
    "addcdiv": ew.addcdiv, "clone": ew.clone,
    "where": lambda self, cond, other: ew.where(cond, self, other),
    # reductions
    "sum": rd.sum, "mean": rd.mean, "max": rd.max, "min": rd.min, "amax": rd.amax,
    "amin": rd.amin, "argmax": rd.argmax, "argmin": rd.argmin, "var": rd.var, "std": rd.std,
    "logsumexp": rd.logsumexp, "all": rd.all, "any": rd.any,
    "count_nonzero": rd.count_nonzero,
    # shape
    "view": sh.view, "reshape": sh.reshape, "flatten": sh.flatten, "unflatten": sh.unflatten,
    "squeeze": sh.squeeze, "unsqueeze": sh.unsqueeze, "permute": sh.permute,
    "transpose": sh.transpose, "swapaxes": sh.transpose, "t": sh.t, "expand": sh.expand,
    "expand_as": sh.expand_as, "broadcast_to": sh.broadcast_to, "contiguous": sh.contiguous,
    "repeat": sh.repeat, "flip": sh.flip,
    # sorting, scans and structured selections
    "sort": so.sort, "argsort": so.argsort, "topk": so.topk, "cumsum": so.cumsum,
    "cumprod": so.cumprod, "tril": so.tril, "triu": so.triu, "roll": so.roll, "diag": so.diag,
    "bincount": so.bincount, "unique": so.unique, "repeat_interleave": so.repeat_interleave,
    "multinomial": creation.multinomial,
    # indexing
    "select": ix.select, "narrow": ix.narrow, "split": ix.split, "chunk": ix.chunk,
    "unbind": ix.unbind, "index_select": ix.index_select, "masked_fill": ix.masked_fill,
    "gather": ix.gather, "scatter_add": ix.scatter_add, "nonzero": ix.nonzero,
    "masked_select": ix.masked_select, "scatter": scatter_ops.scatter, "histc": scatter_ops.histc,
    "norm": norms.norm, "baddbmm": batch_products.baddbmm, "addbmm": batch_products.addbmm,
    # linear algebra
    "matmul": linalg.matmul, "mm": linalg.mm, "bmm": linalg.bmm, "mv": linalg.mv,
    "dot": linalg.dot, "addmm": linalg.addmm, "outer": linalg.outer,
    # nn
    "softmax": lambda self, dim, dtype=None: nnops.softmax(self, dim),
    "log_softmax": lambda self, dim, dtype=None: nnops.log_softmax(self, dim),
}
for _name, _fn in _METHODS.items():
    setattr(Tensor, _name, _fn)

def _T(self):
    nd = self.dim()
    if nd == 0:
        warnings.warn("Tensor.T is deprecated on 0-D tensors. This function is the identity in "
                      "these cases.", UserWarning, stacklevel=2)
    elif nd != 2:
        warnings.warn("The use of `x.T` on tensors of dimension other than 2 to reverse their "
                      "shape is deprecated and it will throw an error in a future release. "
                      "Consider `x.mT` to transpose batches of matrices or `x.permute(*torch."
                      "arange(x.ndim - 1, -1, -1))` to reverse the dimensions of a tensor.",
                      UserWarning, stacklevel=2)
    return sh.permute(self, tuple(reversed(range(nd))))


Tensor.T = property(_T)
def _mT(self):
    if self.dim() < 2:
        raise RuntimeError(f"tensor.mT is only supported on matrices or batches of matrices. Got "
                           f"{self.dim()}-D tensor.")
    return sh.transpose(self, -2, -1)


Tensor.mT = property(_mT)


def _view_as(self, other):
    return sh.view(self, tuple(other.shape))


def _reshape_as(self, other):
    return sh.reshape(self, tuple(other.shape))


Tensor.view_as = _view_as
Tensor.reshape_as = _reshape_as
Tensor.type_as = lambda self, other: self.to(other.dtype)


def _detach(self):
    if self._ir is not None or registry._tracer[0] is not None:
        return sh.detach(self)  # (while tracing: a captured tensor detaches through the op)
    out = Tensor._wrap(self._data)
    out._vc = self._vc  # detach shares the version counter, .data does not
    return out


def _refresh_view(self):
    """A stale view's history rebuilt as a strided view of its base's new history."""
    base = self._base_
    self._view_hist = base._hist
    if base._req and self._ir is None and base._ir is None:
        with grad_mode.enable_grad():
            fresh = ix.view_of_base(base, self)
        if fresh is not None:
            self._grad_fn, self._output_nr, self._req = fresh._grad_fn, 0, True


Tensor.detach = _detach
Tensor._refresh_view = _refresh_view


# --- conversions ----------------------------------------------------------------------------


def _to(self, *args, **kwargs):
    """``to(dtype)``, ``to('cpu')``, ``to(other)``, ``to(device, dtype)``; ``copy=True`` copies."""
    dtype = kwargs.pop("dtype", None)
    device = kwargs.pop("device", None)
    copy = kwargs.pop("copy", False)
    kwargs.pop("non_blocking", None)
    kwargs.pop("memory_format", None)
    if kwargs:
        raise TypeError(f"to() got an unexpected keyword argument '{next(iter(kwargs))}'")
    for a in args:
        if isinstance(a, _dtype.dtype):
            dtype = a
        elif isinstance(a, Tensor):
            dtype = a.dtype
        elif isinstance(a, bool) or a is None:
            continue
        else:
            device = a
    _check_device(device)
    out = self if dtype is None else ew.to_dtype(self, dtype)
    if copy and out is self:
        out = ew.clone(self)
    return out


Tensor.to = _to
Tensor.float = lambda self, memory_format=None: ew.to_dtype(self, _dtype.float32)
Tensor.double = lambda self, memory_format=None: ew.to_dtype(self, _dtype.float64)
Tensor.long = lambda self, memory_format=None: ew.to_dtype(self, _dtype.int64)
Tensor.int = lambda self, memory_format=None: ew.to_dtype(self, _dtype.int64)
Tensor.bool = lambda self, memory_format=None: ew.to_dtype(self, _dtype.bool_)


def _half(self, *a, **k):
    raise TypeError("tracenet supports float32, float64, int64 and bool tensors; float16 is "
                    "not available")


Tensor.half = Tensor.bfloat16 = _half


def _new_factory(factory):
    def method(self, *size, dtype=None, device=None, requires_grad=False):
        return factory(*size, dtype=dtype or self.dtype, device=device,
                       requires_grad=requires_grad)
    return method


Tensor.new_zeros = _new_factory(creation.new_zeros)
Tensor.new_ones = _new_factory(creation.ones)
Tensor.new_empty = _new_factory(creation.empty)
Tensor.new_full = lambda self, size, fill_value, dtype=None, device=None, requires_grad=False: \
    creation.full(size, fill_value, dtype=dtype or self.dtype, device=device,
                  requires_grad=requires_grad)
Tensor.new_tensor = lambda self, data, dtype=None, device=None, requires_grad=False: \
    creation.tensor(data, dtype=dtype or self.dtype, device=device, requires_grad=requires_grad)


# --- in-place -------------------------------------------------------------------------------


_MULTI_VIEW_TAIL = ("This view is the output of a function that returns multiple views. Such "
                    "functions do not allow the output views to be modified inplace. You should "
                    "replace the inplace operation by an out-of-place one.")


def _check_multi_view(self, args):
    """torch refuses in-place changes to the outputs of split/chunk/unbind when recording."""
    mark = self.__dict__.get("_multi_view")
    if mark is None or not grad_mode._state.enabled:
        return
    if self._requires_grad:
        raise RuntimeError(f"Output {mark[1]} of {mark[0]} is a view and is being modified "
                           f"inplace. {_MULTI_VIEW_TAIL}")
    if any(isinstance(a, Tensor) and a._requires_grad for a in args):
        raise RuntimeError("A view was created in no_grad mode and is being modified inplace "
                           f"with grad mode enabled. {_MULTI_VIEW_TAIL}")


def _check_inplace_allowed(self, op_name="an in-place op"):
    if self._ir is not None:
        if self.__dict__:  # (a traced input, or a view of a traced tensor, is marked)
            if check_inplace_on_traced(self, op_name):
                return  # an input that is not a leaf: allowed, as on the caller's tensor
        if self._ir.producer is not None:
            return  # a traced intermediate: in-place ops are rebound functionally
    if grad_mode._state.enabled and self._requires_grad:
        if self.grad_fn is None:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place "
                               "operation.")
        if self._base is not None and self._base._requires_grad and self._base.grad_fn is None:
            raise RuntimeError("a view of a leaf Variable that requires grad is being used in an "
                               "in-place operation.")


def _own_old_value(self, args):
    """What a traced in-place op on ``self`` computes from: eager mode's op saves a snapshot of
    the old value for its backward, not the tensor it changes, so a backward reading it does
    not see the change. A traced input is the caller's tensor, which the backward would read
    at its new version (and refuse): while recording, the op reads a copy of it instead.
    Another traced tensor is read through an alias with a version of its own, as eager mode's
    snapshot (the trace's check of saved versions then sees what eager mode's sees)."""
    recording = grad_mode._state.enabled and (self._requires_grad or any(
        isinstance(a, Tensor) and a._requires_grad for a in args))
    if not recording:
        return self
    if "_input_index" in self.__dict__:
        return ew.clone(self)
    return common.traced_alias(self)


def inplace(self, compute, *args, op_name="an in-place op", **kwargs):
    """Run ``compute(self, *args)`` out of place and make ``self`` hold the result
    (``op_name``: the op, named in errors)."""
    _check_inplace_allowed(self, op_name)
    _check_multi_view(self, args)
    if self._ir is None and registry._tracer[0] is not None:
        common.active_tracer().lift(self)  # (a tensor from outside the trace: captured)
    if self._ir is not None:
        out = compute(_own_old_value(self, args), *args, **kwargs)
        self._ir = out._ir
        self.grad_fn, self._output_nr, self._requires_grad = out.grad_fn, 0, out._requires_grad
        if self._data is None:  # (a state tensor traced in place keeps its real version)
            self._vc.value += 1  # counts the writes a traced input's caller sees
        common.active_tracer().saved_versions.note_write(self)
        if self.__dict__:  # (a root of traced views, or a view, is marked)
            note_traced_write(self)
        return self
    src = self
    recording = grad_mode._state.enabled and (self._requires_grad or any(
        isinstance(a, Tensor) and a._requires_grad for a in args))
    if recording:
        # the node may save its input: give it a snapshot of the old value, in the old graph spot
        src = Tensor._wrap(self._data.copy())
        src._requires_grad, src.grad_fn, src._output_nr = (self._requires_grad, self.grad_fn,
                                                           self._output_nr)
    out = compute(src, *args, **kwargs)
    if out.dtype is not self.dtype and not _dtype.promote_types(out.dtype, self.dtype) \
            is self.dtype:
        raise RuntimeError(f"result type {_type_word(out.dtype)} can't be cast to the desired "
                           f"output type {_type_word(self.dtype)}")
    if tuple(out.shape) != tuple(self.shape):
        raise RuntimeError(f"output with shape [{', '.join(map(str, self.shape))}] doesn't match "
                           f"the broadcast shape [{', '.join(map(str, out.shape))}]")
    if not self._data.flags.writeable:
        raise RuntimeError("unsupported operation: more than one element of the written-to "
                           "tensor refers to a single memory location. Please clone() the tensor "
                           "before performing the operation.")
    base = self._base
    rewrite = recording and out.grad_fn is not None
    if rewrite and base is not None:
        # writing through a view changes the base: its new history is the old one with the
        # view's elements replaced (CopySlices); computed before the write reads the old data
        new_base = ix.write_through_view(base, self, out)
        if new_base is None:  # self no longer aliases its base: only self changes
            base = None
    np.copyto(self._data, out._data, casting="unsafe")
    self._vc.value += 1
    if rewrite:
        _adopt_saved_output(out.grad_fn, out, self)
        if base is not None:
            base.grad_fn, base._output_nr, base._requires_grad = new_base.grad_fn, 0, True
            base._hist += 1  # every view of it, this one included, rebuilds its history
        else:
            self.grad_fn, self._output_nr, self._requires_grad = out.grad_fn, 0, True
            self._hist += 1
    return self


def _adopt_saved_output(node, out, self):
    """The op just run in place may have saved its output for backward (relu_, exp_...): that
    output is now ``self``, so the saved value follows ``self``'s version counter and a later
    in-place change to ``self`` is caught at backward time, as in torch."""
    ctx = getattr(node, "ctx", None)
    if ctx is None or not getattr(node.op, "saves_outputs", False) or ctx.outputs is None:
        return
    aliases = {id(a) for a in ctx.outputs}
    for a in ctx.outputs:
        if a._data is out._data:
            a._data, a._vc = self._data, self._vc
    node._saved = tuple((t, self._vc.value, *rest) if id(t) in aliases else (t, v, *rest)
                        for t, v, *rest in node._saved)


def _type_word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def _inplace_method(name, fn):
    def method(self, *args, **kwargs):
        return inplace(self, fn, *args, op_name=name, **kwargs)
    return method


_INPLACE = {
    "add_": ew.add, "sub_": ew.sub, "subtract_": ew.sub, "mul_": ew.mul, "multiply_": ew.mul,
    "div_": ew.div, "divide_": ew.div, "pow_": ew.pow, "neg_": ew.neg, "exp_": ew.exp,
    "log_": ew.log, "sqrt_": ew.sqrt, "tanh_": ew.tanh, "sigmoid_": ew.sigmoid, "abs_": ew.abs,
    "relu_": ew.relu, "clamp_": ew.clamp, "clip_": ew.clamp, "clamp_min_": ew.clamp_min,
    "clamp_max_": ew.clamp_max, "floor_": ew.floor, "ceil_": ew.ceil, "round_": ew.round,
    "reciprocal_": ew.reciprocal, "square_": ew.square, "lerp_": ew.lerp,
    "addcmul_": ew.addcmul, "addcdiv_": ew.addcdiv, "masked_fill_": ix.masked_fill,
    "scatter_": scatter_ops.scatter, "scatter_add_": ix.scatter_add,
    "baddbmm_": batch_products.baddbmm, "addbmm_": batch_products.addbmm, "tril_": so.tril, "triu_": so.triu, "cumsum_": so.cumsum, "cumprod_": so.cumprod,
    "__iadd__": ew.add, "__isub__": ew.sub, "__imul__": ew.mul, "__itruediv__": ew.div,
    "__ipow__": ew.pow,
}
for _name, _fn in _INPLACE.items():
    setattr(Tensor, _name, _inplace_method(_name, _fn))


def _overwrite(name):
    """The computation of an in-place op that writes ``value`` over all of the tensor
    (``copy_``, ``fill_``, ``zero_``; ``name``: its eager autograd node). Traced, the new value
    is ``value`` broadcast to the tensor's shape: the whole-tensor ``index_put`` eager mode
    records has no C lowering."""
    def compute(s, value):
        if s._ir is None and not (isinstance(value, Tensor) and value._ir is not None):
            return ix.index_put(s, value, [], (), _name=name)
        if not isinstance(value, Tensor):
            value = common.scalar_tensor(value, s.dtype)
        elif value.dtype is not s.dtype:
            value = value.to(s.dtype)
        if value._ir is None:  # (a constant of the graph, so that the broadcast is traced)
            value = common.traced_tensor(common.active_tracer().value_of(value))
        return value.expand(tuple(s.shape)).clone()
    return compute


_fill_tensor = _overwrite("FillBackward3")
_fill_scalar = _overwrite("FillBackward2")
_zero = _overwrite("ZeroBackward0")
_copy = _overwrite("CopyBackwards")


def _fill_(self, value):
    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise RuntimeError(f"fill_ only supports 0-dimension value tensor but got tensor "
                               f"with {value.dim()} dimensions.")
        return inplace(self, _fill_tensor, value, op_name="fill_")
    if self._ir is None and not (grad_mode._state.enabled and self._requires_grad):
        _check_inplace_allowed(self, "fill_")
        self._data[...] = value
        self._vc.value += 1
        return self
    return inplace(self, lambda s: _fill_scalar(s, value), op_name="fill_")


def _zero_(self):
    if self._ir is None and not (grad_mode._state.enabled and self._requires_grad):
        return _fill_(self, 0)
    return inplace(self, lambda s: _zero(s, 0), op_name="zero_")


def _copy_(self, src, non_blocking=False):
    if not isinstance(src, Tensor):
        raise TypeError(f"copy_(): argument 'src' must be Tensor, not {type(src).__name__}")
    shape = common.broadcast_shapes(tuple(self.shape), tuple(src.shape))
    if shape != tuple(self.shape):
        raise RuntimeError(f"output with shape [{', '.join(map(str, self.shape))}] doesn't match "
                           f"the broadcast shape [{', '.join(map(str, shape))}]")
    return inplace(self, _copy, src, op_name="copy_")


def _setitem(self, key, value):
    if isinstance(value, (list, tuple)):
        value = creation.tensor(value, dtype=self.dtype)
    if grad_mode._state.enabled and self._requires_grad and self.grad_fn is None \
            and self._ir is None and ix.key_is_view(self, key):
        # torch writes a basic-indexed assignment through a view of self
        raise RuntimeError("a view of a leaf Variable that requires grad is being used in an "
                           "in-place operation.")
    inplace(self, lambda s, v: ix.setitem_value(s, key, v), value,
            op_name="an assignment to an index (t[...] = value)")


def _uniform_(self, a=0.0, b=1.0, generator=None):
    with grad_mode.no_grad():
        self._data[...] = _random.rng(generator).uniform(a, b, self._data.shape)
    self._vc.value += 1
    return self


def _normal_(self, mean=0.0, std=1.0, generator=None):
    self._data[...] = mean + std * _random.rng(generator).standard_normal(self._data.shape)
    self._vc.value += 1
    return self


def _random_(self, low=0, high=None, generator=None):
    if high is None:
        low, high = 0, low
    self._data[...] = _random.rng(generator).integers(low, high, self._data.shape)
    self._vc.value += 1
    return self


def _bernoulli_(self, p=0.5, generator=None):
    self._data[...] = _random.rng(generator).random(self._data.shape) < p
    self._vc.value += 1
    return self


Tensor.fill_ = _fill_
Tensor.zero_ = _zero_
Tensor.copy_ = _copy_
Tensor.__setitem__ = _setitem
Tensor.uniform_ = _uniform_
Tensor.normal_ = _normal_
Tensor.random_ = _random_
Tensor.bernoulli_ = _bernoulli_
Tensor.bernoulli = lambda self, generator=None: creation.bernoulli(self, generator=generator)
