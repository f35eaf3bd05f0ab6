"""Reductions: sum, mean, max/min (all, amax, with indices), argmax, var/std, all/any."""
import builtins
import collections
import warnings

import numpy as np

from .._sym import as_float, is_one, same_shape
from .. import _dtype
from .._meta import Meta
from . import common, creation
from .registry import apply

# elementwise builds on this module (sum_to_shape): elementwise math here goes through Tensor
# methods (x.exp(), x.ne(0)), so the op modules import each other in one direction

register = common.register_quiet

values_indices = collections.namedtuple("values_indices", "values indices")


def _reduced_shape(shape, dims, keepdim):
    if keepdim:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)


def _reduce_meta(dtype_rule):
    def infer(x, dims, keepdim, dtype=None):
        return Meta(_reduced_shape(x.shape, dims, keepdim), dtype or dtype_rule(x, dims))
    return infer


def _int_promoting(x, dims):
    return x.dtype if x.dtype.is_floating_point else _dtype.int64


def _expand_back(ctx, g):
    """Broadcast a reduced gradient back to the input's shape."""
    dims, keepdim = ctx.attrs["dims"], ctx.attrs["keepdim"]
    shape = tuple(ctx.metas[0].shape)
    if not keepdim:
        g = g.reshape(_reduced_shape(shape, dims, True))
    return g.expand(shape)


def _expand_back_np(ctx, g):
    """``_expand_back`` on arrays: the same broadcast view."""
    dims, keepdim = ctx.attrs["dims"], ctx.attrs["keepdim"]
    shape = tuple(ctx.metas[0].shape)
    if not keepdim:
        g = g.reshape(_reduced_shape(shape, dims, True))
    return np.broadcast_to(g, shape)


def _axes(x, dims):
    """numpy axes for reduction ``dims`` (a 0-dim tensor reduces over dim 0 = nothing)."""
    return tuple(d for d in dims if d < x.ndim)


def _sum_eager(x, dims, keepdim, dtype=None):
    acc = dtype.np if dtype is not None else (np.int64 if x.dtype.kind in "biu" else None)
    return np.sum(x, axis=_axes(x, dims), keepdims=keepdim, dtype=acc)


sum_op = register(
    "sum", kind="reduction", infer=_reduce_meta(_int_promoting), eager=_sum_eager,
    backward=lambda ctx, g: (_expand_back(ctx, g),),
    eager_backward=lambda ctx, g: (_expand_back_np(ctx, g),),
    grad_fn=lambda ctx: "SumBackward0" if ctx.attrs.get("_full") else "SumBackward1")


def _mean_meta(x, dims, keepdim, dtype=None):
    dt = dtype or x.dtype
    if not dt.is_floating_point:
        raise RuntimeError("mean(): could not infer output dtype. Input dtype must be either a "
                           f"floating point or complex dtype. Got: {_type_word(x.dtype)}")
    return Meta(_reduced_shape(x.shape, dims, keepdim), dt)


def _type_word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def _mean_np(x, dims, keepdim):
    # sum / count rather than np.mean: an empty reduction is a silent nan, as in torch
    total = np.sum(x, axis=_axes(x, dims), keepdims=keepdim)
    return np.true_divide(total, _count(x.shape, dims), dtype=x.dtype)


def _var_np(x, dims, correction, keepdim):
    axes = _axes(x, dims)
    centred = x - _mean_np(x, dims, True)
    total = np.sum(centred * centred, axis=axes, keepdims=keepdim)
    return np.true_divide(total, builtins.max(_count(x.shape, dims) - correction, 0),
                          dtype=x.dtype)


def _mean_backward(ctx, g):
    count = _count(ctx.metas[0].shape, ctx.attrs["dims"])
    return (_expand_back(ctx, g) / as_float(builtins.max(count, 1)),)


def _mean_backward_np(ctx, g):
    count = _count(ctx.metas[0].shape, ctx.attrs["dims"])
    # the rule's division by a Python number: a 0-dim array of the gradient's dtype
    return (np.true_divide(_expand_back_np(ctx, g),
                           np.array(float(builtins.max(count, 1)), g.dtype)),)


mean_op = register(
    "mean", kind="reduction", infer=_mean_meta,
    eager=lambda x, dims, keepdim, dtype=None: _mean_np(
        x if dtype is None else x.astype(dtype.np), dims, keepdim),
    backward=_mean_backward, eager_backward=_mean_backward_np,
    grad_fn=lambda ctx: "MeanBackward0" if ctx.attrs.get("_full") else "MeanBackward1")


def sum_to_shape(g, shape):
    """Sum a broadcast gradient down to ``shape``: the one place broadcasting is undone."""
    shape = tuple(shape)
    gshape = tuple(g.shape)
    if same_shape(gshape, shape):
        return g
    lead = len(gshape) - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape)
                                      if is_one(s) and not is_one(gshape[lead + i]))
    if dims:
        g = sum(g, dims, keepdim=True)
    return g if same_shape(g.shape, shape) else g.reshape(shape)


def _dims_arg(x, dim):
    return common.wrap_dims(dim, x.dim()), dim is None or (isinstance(dim, (tuple, list))
                                                           and len(dim) == 0)


def sum(x, dim=None, keepdim=False, *, dtype=None):
    if isinstance(dim, (list, tuple)) and len(dim) == 0:
        dim = None
    dims, full = _dims_arg(x, dim)
    return apply(sum_op, x, dims=dims, keepdim=keepdim, dtype=dtype, _full=full)


def mean(x, dim=None, keepdim=False, *, dtype=None):
    if isinstance(dim, (list, tuple)) and len(dim) == 0:
        dim = None
    dims, full = _dims_arg(x, dim)
    return apply(mean_op, x, dims=dims, keepdim=keepdim, dtype=dtype, _full=full)


# --- max / min ------------------------------------------------------------------------------


def _extreme_backward(ctx, g):
    """Gradient of amax/amin: split evenly between tied extreme elements."""
    x, y = ctx.inputs[0], ctx.output
    dims, keepdim = ctx.attrs["dims"], ctx.attrs["keepdim"]
    shape = tuple(ctx.metas[0].shape)
    if not keepdim:
        y = y.reshape(_reduced_shape(shape, dims, True))
        g = g.reshape(_reduced_shape(shape, dims, True))
    mask = (x == y.expand(shape)).to(g.dtype)
    count = sum(mask, dims, keepdim=True)
    return ((g / count).expand(shape) * mask,)


def _check_nonempty(x, dims, name):
    if common.numel(x.shape) == 0:
        raise RuntimeError(f"{name}(): Expected reduction dim to be specified for input.numel() "
                           "== 0. Specify the reduction dim with the 'dim' argument.")


def _amax_meta(name):
    def infer(x, dims, keepdim):
        _check_nonempty(x, dims, name)
        return Meta(_reduced_shape(x.shape, dims, keepdim), x.dtype)
    return infer


amax_op = register(
    "amax", kind="reduction", infer=_amax_meta("max"),
    eager=lambda x, dims, keepdim: np.max(x, axis=_axes(x, dims), keepdims=keepdim),
    saves=(0,), save_outputs=True, backward=_extreme_backward,
    grad_fn=lambda ctx: "MaxBackward1" if ctx.attrs.get("_full") else "AmaxBackward0")
amin_op = register(
    "amin", kind="reduction", infer=_amax_meta("min"),
    eager=lambda x, dims, keepdim: np.min(x, axis=_axes(x, dims), keepdims=keepdim),
    saves=(0,), save_outputs=True, backward=_extreme_backward,
    grad_fn=lambda ctx: "MinBackward1" if ctx.attrs.get("_full") else "AminBackward0")


def amax(x, dim=(), keepdim=False):
    dims, full = _dims_arg(x, None if dim in ((), []) else dim)
    return apply(amax_op, x, dims=dims, keepdim=keepdim)


def amin(x, dim=(), keepdim=False):
    dims, full = _dims_arg(x, None if dim in ((), []) else dim)
    return apply(amin_op, x, dims=dims, keepdim=keepdim)


def _arg_extreme(np_fn):
    def eager(x, dim, keepdim):
        if dim is None:
            out = np.asarray(np_fn(x.reshape(-1)))
            return out.reshape((1,) * x.ndim) if keepdim else out
        if x.ndim == 0:
            return np.zeros((), np.int64)
        idx = np_fn(x, axis=dim)
        return np.expand_dims(idx, dim) if keepdim else idx
    return eager


def _arg_meta(x, dim, keepdim, name="argmax"):
    if x.dtype is _dtype.bool_:
        raise RuntimeError(f"{name}(): does not support bool input")
    if dim is None:
        if common.numel(x.shape) == 0:
            raise RuntimeError("argmax(): Expected reduction dim to be specified for "
                               "input.numel() == 0.")
        return Meta((1,) * len(x.shape) if keepdim else (), _dtype.int64)
    if x.shape and x.shape[dim] == 0:
        raise IndexError("argmax(): Expected reduction dim " + str(dim) + " to have non-zero size.")
    return Meta(_reduced_shape(x.shape, (dim,), keepdim), _dtype.int64)


argmax_op = register("argmax", eager_only="no C lowering yet (index-returning reductions)", kind="reduction", infer=_arg_meta, eager=_arg_extreme(np.argmax),
                     differentiable=False)
argmin_op = register("argmin", eager_only="no C lowering yet (index-returning reductions)", kind="reduction", infer=lambda x, dim, keepdim: _arg_meta(x, dim, keepdim, "argmin"),
                     eager=_arg_extreme(np.argmin),
                     differentiable=False)


def argmax(x, dim=None, keepdim=False):
    return apply(argmax_op, x, dim=None if dim is None else common.wrap_dim(dim, x.dim()),
                 keepdim=keepdim)


def argmin(x, dim=None, keepdim=False):
    return apply(argmin_op, x, dim=None if dim is None else common.wrap_dim(dim, x.dim()),
                 keepdim=keepdim)


def _select_at_index_backward(ctx, g, _gi=None):
    """Gradient of max(dim)/min(dim): the incoming gradient placed at the chosen indices."""
    dim, keepdim = ctx.attrs["dim"], ctx.attrs["keepdim"]
    shape = tuple(ctx.metas[0].shape)
    if not shape:
        return (g,)
    idx = ctx.outputs[1]
    if not keepdim:
        g = g.unsqueeze(dim)
        idx = idx.unsqueeze(dim)
    positions = creation.arange(shape[dim]).reshape(
        tuple(shape[dim] if i == dim else 1 for i in range(len(shape))))
    mask = positions == idx
    return (g.expand(shape).where(mask, g.new_zeros(()).expand(shape)),)


def _extreme_dim(np_arg):
    def eager(x, dim, keepdim):
        if x.ndim == 0:
            return x.copy(), np.zeros((), np.int64)
        idx = np_arg(x, axis=dim)
        vals = np.take_along_axis(x, np.expand_dims(idx, dim), axis=dim)
        if not keepdim:
            vals = np.squeeze(vals, dim)
        else:
            idx = np.expand_dims(idx, dim)
        return vals, idx
    return eager


def _extreme_dim_meta(x, dim, keepdim):
    if x.shape and x.shape[dim] == 0:
        raise IndexError("max(): Expected reduction dim " + str(dim) + " to have non-zero size.")
    shape = _reduced_shape(x.shape, (dim,), keepdim)
    return Meta(shape, x.dtype), Meta(shape, _dtype.int64)


max_dim_op = register("max_dim", eager_only="no C lowering yet (index-returning reductions)", kind="reduction", infer=_extreme_dim_meta, eager=_extreme_dim(np.argmax),
                      save_outputs=True, backward=_select_at_index_backward, num_outputs=2,
                      grad_fn="MaxBackward0")
min_dim_op = register("min_dim", eager_only="no C lowering yet (index-returning reductions)", kind="reduction", infer=_extreme_dim_meta, eager=_extreme_dim(np.argmin),
                      save_outputs=True, backward=_select_at_index_backward, num_outputs=2,
                      grad_fn="MinBackward0")

def _return_type(name):
    """A (values, indices) namedtuple that prints like torch's ``torch.return_types.<name>``."""
    base = collections.namedtuple(name, "values indices")

    def __repr__(self):
        return f"torch.return_types.{name}(\nvalues={self.values!r},\nindices={self.indices!r})"
    return type(name, (base,), {"__slots__": (), "__repr__": __repr__})


max_result = _return_type("max")
min_result = _return_type("min")


def max(x, dim=None, keepdim=False, *, other=None):
    if common.is_tensor(dim):
        return x.maximum(dim)
    if dim is None:
        return apply(amax_op, x, dims=tuple(range(x.dim())), keepdim=False, _full=True)
    vals, idx = apply(max_dim_op, x, dim=common.wrap_dim(dim, x.dim()), keepdim=keepdim)
    return max_result(vals, idx)


def min(x, dim=None, keepdim=False):
    if common.is_tensor(dim):
        return x.minimum(dim)
    if dim is None:
        return apply(amin_op, x, dims=tuple(range(x.dim())), keepdim=False, _full=True)
    vals, idx = apply(min_dim_op, x, dim=common.wrap_dim(dim, x.dim()), keepdim=keepdim)
    return min_result(vals, idx)


# --- variance ---------------------------------------------------------------------------------


def _var_meta(x, dims, correction, keepdim):
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"std and var only support floating point and complex dtypes")
    return Meta(_reduced_shape(x.shape, dims, keepdim), x.dtype)


def _count(shape, dims):
    n = 1
    for d in dims:
        if d < len(shape):
            n *= shape[d]
    return n


def _var_backward(ctx, g):
    x = ctx.inputs[0]
    dims, correction = ctx.attrs["dims"], ctx.attrs["correction"]
    shape = tuple(ctx.metas[0].shape)
    centred = x - mean(x, dims, keepdim=True)
    scale = 2.0 / as_float(_count(shape, dims) - correction)
    return (_expand_back(ctx, g) * centred * scale,)


def _std_backward(ctx, g):
    x, y = ctx.inputs[0], ctx.output
    dims, correction, keepdim = ctx.attrs["dims"], ctx.attrs["correction"], ctx.attrs["keepdim"]
    shape = tuple(ctx.metas[0].shape)
    centred = x - mean(x, dims, keepdim=True)
    if not keepdim:
        y = y.reshape(_reduced_shape(shape, dims, True))
    scale = 1.0 / as_float(_count(shape, dims) - correction)
    return (_expand_back(ctx, g) * centred * scale / y.expand(shape),)


def _var_decomposition(x, dims, correction, keepdim):
    centred = x - apply(mean_op, x, dims=dims, keepdim=True)
    squares = apply(sum_op, centred * centred, dims=dims, keepdim=keepdim)
    dof = _count(tuple(x.shape), dims) - correction  # (this module's max is the tensor op)
    return squares / float(dof if dof > 0 else 0)


var_op = register(
    "var", kind="reduction", infer=_var_meta, saves=(0,), backward=_var_backward,
    eager=_var_np, grad_fn="VarBackward0", decomposition=_var_decomposition)
std_op = register(
    "std", kind="reduction", infer=_var_meta, saves=(0,), save_outputs=True, backward=_std_backward,
    eager=lambda x, dims, correction, keepdim: np.sqrt(_var_np(x, dims, correction, keepdim)),
    grad_fn="StdBackward0",
    decomposition=lambda x, **attrs: _var_decomposition(x, **attrs).sqrt())


def _check_dof(name, x, dims, correction):
    if _count(tuple(x.shape), dims) - correction <= 0:
        warnings.warn(f"{name}(): degrees of freedom is <= 0. Correction should be strictly less "
                      "than the reduction factor (input numel divided by output numel).",
                      UserWarning, stacklevel=3)


def _correction(unbiased, correction):
    if correction is not None:
        return correction
    return 1 if unbiased is None or unbiased else 0


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    if isinstance(dim, bool):  # var(x, False): the legacy unbiased positional
        unbiased, dim = dim, None
    dims, _ = _dims_arg(x, dim)
    correction = _correction(unbiased, correction)
    _check_dof("var", x, dims, correction)
    return apply(var_op, x, dims=dims, correction=correction, keepdim=keepdim)


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    if isinstance(dim, bool):
        unbiased, dim = dim, None
    dims, _ = _dims_arg(x, dim)
    correction = _correction(unbiased, correction)
    _check_dof("std", x, dims, correction)
    return apply(std_op, x, dims=dims, correction=correction, keepdim=keepdim)


def _logsumexp_eager(x, dims, keepdim):
    axes = _axes(x, dims)
    if x.size == 0:
        return np.log(np.sum(np.exp(x), axis=axes, keepdims=keepdim))
    m = np.max(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, np.zeros((), x.dtype))  # all -inf (or an inf): shift by 0
    out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return out if keepdim else np.squeeze(out, axis=axes)


def _logsumexp_decomposition(x, dims, keepdim):
    m = apply(amax_op, x, dims=dims, keepdim=True)
    m = m.where(m.isfinite(), 0.0)  # all -inf (or an inf): shift by 0, as the eager kernel
    out = apply(sum_op, (x - m).exp(), dims=dims, keepdim=True).log() + m
    return out if keepdim else out.reshape(_reduced_shape(tuple(x.shape), dims, False))


def _logsumexp_backward(ctx, g):
    """d/dx log(sum(exp(x))) = exp(x - logsumexp(x)): the softmax over the reduced dims."""
    x, y = ctx.inputs[0], ctx.output
    shape = tuple(ctx.metas[0].shape)
    if not ctx.attrs["keepdim"]:
        y = y.reshape(_reduced_shape(shape, ctx.attrs["dims"], True))
    return (_expand_back(ctx, g) * (x - y.expand(shape)).exp(),)


logsumexp_op = register(
    "logsumexp", kind="reduction", infer=_reduce_meta(lambda x, dims: x.dtype if x.dtype.is_floating_point
                                    else _dtype.get_default_dtype()),
    eager=_logsumexp_eager, saves=(0,), save_outputs=True, backward=_logsumexp_backward,
    decomposition=_logsumexp_decomposition)


def logsumexp(x, dim, keepdim=False):
    if not x.dtype.is_floating_point:
        x = x.to(_dtype.get_default_dtype())
    dims = common.wrap_dims(dim, x.dim())
    return apply(logsumexp_op, x, dims=dims, keepdim=keepdim)


# --- boolean reductions -----------------------------------------------------------------------


def _bool_reduce(name, np_fn, decomposition):
    op = register(name, kind="reduction", infer=lambda x, dims, keepdim: Meta(
        _reduced_shape(x.shape, dims, keepdim), _dtype.bool_),
        eager=lambda x, dims, keepdim: np_fn(x, axis=_axes(x, dims), keepdims=keepdim),
        differentiable=False, decomposition=decomposition)

    def fn(x, dim=None, keepdim=False):
        dims, _ = _dims_arg(x, dim)
        return apply(op, x, dims=dims, keepdim=keepdim)
    return fn


def _count_of(cond, dims, keepdim):
    return apply(sum_op, cond.to(_dtype.int64), dims=dims, keepdim=keepdim)


# (counting keeps empty reductions right: all() of nothing is True, any() False)
all = _bool_reduce("all", np.all,
                   lambda x, dims, keepdim: _count_of(x == 0, dims, keepdim) == 0)
any = _bool_reduce("any", np.any,
                   lambda x, dims, keepdim: _count_of(x != 0, dims, keepdim) > 0)


def count_nonzero(x, dim=None):
    return sum(x.ne(0).to(_dtype.int64), dim)
