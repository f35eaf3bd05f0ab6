"""Sorting, scans and structured selections: topk, sort, cumsum/cumprod, tril/triu, roll,
diag, one_hot; and the data-dependent bincount and unique (eager only)."""
import numpy as np

from .. import _dtype
from .._meta import Meta
from ..tensor import Tensor
from . import common, creation, index as ix, reduce as rd, shape as sh
from .elementwise import where
from .registry import REGISTRY, apply

register = common.register_quiet

_SORTING = "no C lowering yet (sorting)"


# --- sort / topk ------------------------------------------------------------------------------


def _sort_np(x, dim, descending, stable=True):
    """Indices sorting ``x`` along ``dim``; stable, NaN largest (as torch)."""
    if not descending:
        return np.argsort(x, axis=dim, kind="stable")
    n = x.shape[dim]
    # reverse, sort ascending (stable), reverse again: equal elements keep their order
    rev = np.flip(np.argsort(np.flip(x, dim), axis=dim, kind="stable"), dim)
    return n - 1 - rev


def _scatter_back(ctx, g):
    """Gradient of a selection along a dim: ``g`` put back at the chosen indices."""
    shape = tuple(ctx.metas[0].shape)
    if not shape:
        return (g.reshape(()) if tuple(g.shape) != () else g,)
    return (ix.scatter_add(g.new_zeros(shape), ctx.attrs["dim"], ctx.outputs[1], g),)


def _sort_meta(x, dim, descending, stable):
    shape = tuple(x.shape)
    return Meta(shape, x.dtype), Meta(shape, _dtype.int64)


def _sort_eager(x, dim, descending, stable):
    if x.ndim == 0:
        return x.copy(), np.zeros((), np.int64)
    idx = _sort_np(x, dim, descending)
    return np.take_along_axis(x, idx, axis=dim), idx.astype(np.int64)


sort_op = register(
    "sort", eager_only=_SORTING, infer=_sort_meta, eager=_sort_eager, num_outputs=2,
    save_outputs=True, backward=lambda ctx, g, _gi=None: _scatter_back(ctx, g),
    grad_fn=lambda ctx: "SortBackward1" if ctx.attrs["stable"] else "SortBackward0")


def _topk_meta(x, k, dim, largest, sorted):
    size = x.shape[dim] if x.shape else 1
    if not 0 <= k <= size:
        raise RuntimeError("selected index k out of range")
    shape = tuple(x.shape)
    if shape:
        shape = shape[:dim] + (k,) + shape[dim + 1:]
    return Meta(shape, x.dtype), Meta(shape, _dtype.int64)


def _topk_eager(x, k, dim, largest, sorted):
    if x.ndim == 0:
        return x.copy(), np.zeros((), np.int64)
    idx = np.take(_sort_np(x, dim, largest), np.arange(k), axis=dim)
    return np.take_along_axis(x, idx, axis=dim), idx.astype(np.int64)


topk_op = register(
    "topk", eager_only=_SORTING, infer=_topk_meta, eager=_topk_eager, num_outputs=2,
    save_outputs=True, backward=lambda ctx, g, _gi=None: _scatter_back(ctx, g),
    grad_fn="TopkBackward0")

sort_result = rd._return_type("sort")
topk_result = rd._return_type("topk")


def sort(x, dim=-1, descending=False, stable=False):
    if not isinstance(stable, bool) and stable is not None:
        raise TypeError("sort(): argument 'stable' must be bool")
    vals, idx = apply(sort_op, x, dim=common.wrap_dim(dim, x.dim()), descending=bool(descending),
                      stable=bool(stable))
    return sort_result(vals, idx)


def argsort(x, dim=-1, descending=False, stable=False):
    return sort(x, dim, descending, stable).indices


def topk(x, k, dim=-1, largest=True, sorted=True):
    vals, idx = apply(topk_op, x, k=int(k), dim=common.wrap_dim(dim, x.dim()),
                      largest=bool(largest), sorted=bool(sorted))
    return topk_result(vals, idx)


# --- cumsum / cumprod ---------------------------------------------------------------------------


def _scan_meta(x, dim, dtype=None):
    dt = dtype or (x.dtype if x.dtype.is_floating_point else _dtype.int64)
    return Meta(tuple(x.shape), dt)


def _scan_eager(np_fn):
    def eager(x, dim, dtype=None):
        dt = dtype.np if dtype is not None else (x.dtype if x.dtype.kind == "f" else np.int64)
        if x.ndim == 0:
            return x.astype(dt)
        return np_fn(x.astype(dt, copy=False), axis=dim).astype(dt, copy=False)
    return eager


def _reverse_cumsum(g, dim):
    return cumsum(g.flip(dim), dim).flip(dim)


def _cumsum_backward(ctx, g):
    dim = ctx.attrs["dim"]
    if not ctx.metas[0].shape:
        return (g.to(ctx.metas[0].dtype),)
    return (_reverse_cumsum(g, dim).to(ctx.metas[0].dtype),)


def _cumprod_backward(ctx, g):
    """d out_j / d x_k = prod_{i <= j, i != k} x_i. Before the first zero of a slice that is
    out_j / x_k; at the first zero it is the product with that zero taken as one; after it, 0."""
    x = ctx.inputs[0]
    dim = ctx.attrs["dim"]
    if not ctx.metas[0].shape:
        return (g.to(ctx.metas[0].dtype),)
    x = x.to(g.dtype)
    zero = x == 0
    seen = cumsum(zero, dim)
    before = seen == 0
    first_zero = zero.logical_and(seen == 1)
    one = x.new_ones(())
    # before the first zero: sum_{j >= k} g_j out_j / x_k (out_j is 0 from the zero on)
    acc = _reverse_cumsum(g * cumprod(x, dim), dim)
    # at the first zero: the same sum with that zero replaced by one
    acc_zero = _reverse_cumsum(g * cumprod(where(first_zero, one, x), dim), dim)
    grad = where(before, acc / where(before, x, one),
                 where(first_zero, acc_zero, x.new_zeros(())))
    return (grad.to(ctx.metas[0].dtype),)


cumsum_op = register(
    "cumsum", eager_only="no C lowering yet (scans)", infer=_scan_meta,
    eager=_scan_eager(np.cumsum), backward=_cumsum_backward, grad_fn="CumsumBackward0")
cumprod_op = register(
    "cumprod", eager_only="no C lowering yet (scans)", infer=_scan_meta,
    eager=_scan_eager(np.cumprod), saves=(0,), backward=_cumprod_backward,
    grad_fn="CumprodBackward0")


def _dtype_arg(dtype):
    return None if dtype is None else creation._as_dtype(dtype)


def cumsum(x, dim, *, dtype=None):
    return apply(cumsum_op, x, dim=common.wrap_dim(dim, x.dim()), dtype=_dtype_arg(dtype))


def cumprod(x, dim, *, dtype=None):
    return apply(cumprod_op, x, dim=common.wrap_dim(dim, x.dim()), dtype=_dtype_arg(dtype))


# --- tril / triu ------------------------------------------------------------------------------


def _tri_mask(shape, diagonal, upper):
    r, c = shape[-2:]
    rows = np.arange(r)[:, None]
    cols = np.arange(c)[None, :]
    return (cols - rows >= diagonal) if upper else (cols - rows <= diagonal)


def _tri(name, upper):
    def infer(x, diagonal):
        if len(x.shape) < 2:
            raise RuntimeError(f"{name}: input tensor must have at least 2 dimensions")
        return common.same(x)

    def eager(x, diagonal):
        return np.where(_tri_mask(x.shape, diagonal, upper), x, np.zeros((), x.dtype))

    def decomposition(x, diagonal):
        mask = Tensor._wrap(_tri_mask(tuple(x.shape), diagonal, upper))
        return where(mask, x, x.new_zeros(()))

    return register(name, infer=infer, eager=eager, decomposition=decomposition,
                    backward=lambda ctx, g: (apply(REGISTRY[name], g,
                                                   diagonal=ctx.attrs["diagonal"]),),
                    grad_fn=name.capitalize() + "Backward0")


tril_op = _tri("tril", False)
triu_op = _tri("triu", True)


def tril(x, diagonal=0):
    return apply(tril_op, x, diagonal=int(diagonal))


def triu(x, diagonal=0):
    return apply(triu_op, x, diagonal=int(diagonal))


# --- roll -------------------------------------------------------------------------------------


def _roll_meta(x, shifts, dims):
    return common.same(x)


def _roll_eager(x, shifts, dims):
    if dims is None:
        return np.roll(x, shifts[0])
    return np.roll(x, shifts, axis=dims)


def _roll_decomposition(x, shifts, dims):
    if dims is None:
        return _roll_decomposition(x.reshape(-1), shifts, (0,)).reshape(tuple(x.shape))
    for s, d in zip(shifts, dims):
        n = x.shape[d]
        s = s % n if n else 0
        if s:
            x = sh.cat([x.narrow(d, n - s, s), x.narrow(d, 0, n - s)], d)
    return x


roll_op = register(
    "roll", infer=_roll_meta, eager=_roll_eager, decomposition=_roll_decomposition,
    backward=lambda ctx, g: (apply(roll_op, g, shifts=tuple(-s for s in ctx.attrs["shifts"]),
                                   dims=ctx.attrs["dims"]),),
    grad_fn="RollBackward0")


def roll(x, shifts, dims=None):
    shifts = (shifts,) if isinstance(shifts, (int, np.integer)) else tuple(shifts)
    if dims is not None:
        dims = (dims,) if isinstance(dims, (int, np.integer)) else tuple(dims)
    if not shifts:
        raise RuntimeError("`shifts` required")
    if dims is None or (len(dims) == 0 and len(shifts) == 1):
        if len(shifts) != 1:
            raise RuntimeError(f"shifts and dimensions must align. shifts: {len(shifts)}, "
                               "dims:0")
        return apply(roll_op, x, shifts=(int(shifts[0]),), dims=None)
    if len(shifts) != len(dims):
        raise RuntimeError(f"shifts and dimensions must align. shifts: {len(shifts)}, "
                           f"dims:{len(dims)}")
    nd = x.dim()
    dims = tuple(common.wrap_dim(d, nd) for d in dims)
    return apply(roll_op, x, shifts=tuple(int(s) for s in shifts), dims=dims)


# --- diag -------------------------------------------------------------------------------------


def _diag_len(r, c, d):
    return max(0, min(r + min(d, 0), c - max(d, 0)))


def _diag_meta(x, diagonal):
    if len(x.shape) == 1:
        n = x.shape[0] + abs(diagonal)
        return Meta((n, n), x.dtype)
    if len(x.shape) == 2:
        return Meta((_diag_len(x.shape[0], x.shape[1], diagonal),), x.dtype)
    raise RuntimeError(f"diag(): Supports 1D or 2D tensors. Got {len(x.shape)}D")


def _pad_to(v, n):
    """1-d ``v`` padded with zeros at the end to length ``n``."""
    m = v.shape[0]
    return v if m == n else sh.cat([v, v.new_zeros((n - m,))], 0)


def _embed(v, shape, d):
    """The (r, c) matrix with ``v`` on diagonal ``d`` and zeros elsewhere."""
    r, c = shape
    mask = Tensor._wrap(np.arange(c)[None, :] - np.arange(r)[:, None] == d)
    if d >= 0:  # entry (i, i + d) holds v[i]: indexed by the row
        full = _pad_to(v, r).reshape((r, 1)).expand((r, c))
    else:       # entry (j - d, j) holds v[j]: indexed by the column
        full = _pad_to(v, c).reshape((1, c)).expand((r, c))
    return where(mask, full, v.new_zeros(()))


def _extract(x, d):
    """Diagonal ``d`` of the 2-d ``x``, with lowerable ops."""
    r, c = x.shape
    m = _diag_len(r, c, d)
    mask = Tensor._wrap(np.arange(c)[None, :] - np.arange(r)[:, None] == d)
    picked = where(mask, x, x.new_zeros(()))
    line = rd.sum(picked, 1) if d >= 0 else rd.sum(picked, 0)
    return line.narrow(0, 0, m)


def _diag_decomposition(x, diagonal):
    if x.dim() == 1:
        n = x.shape[0] + abs(diagonal)
        return _embed(x, (n, n), diagonal)
    return _extract(x, diagonal)


def _diag_backward(ctx, g):
    d = ctx.attrs["diagonal"]
    shape = tuple(ctx.metas[0].shape)
    if len(shape) == 1:
        return (apply(diag_op, g, diagonal=d),)
    return (_embed(g, shape, d),)


def _diag_eager(x, diagonal):
    if x.ndim == 2 and 0 in x.shape:
        return np.zeros((_diag_len(x.shape[0], x.shape[1], diagonal),), x.dtype)
    return np.array(np.diag(x, diagonal))


diag_op = register(
    "diag", infer=_diag_meta, eager=_diag_eager, decomposition=_diag_decomposition,
    backward=_diag_backward,
    grad_fn=lambda ctx: "DiagEmbedBackward0" if len(ctx.metas[0].shape) == 1
    else "DiagonalBackward0_copy")


def diag(x, diagonal=0):
    return apply(diag_op, x, diagonal=int(diagonal))


# --- one_hot ----------------------------------------------------------------------------------


def _one_hot_meta(x, num_classes):
    if x.dtype is not _dtype.int64:
        raise RuntimeError("one_hot is only applicable to index tensor of type LongTensor.")
    return Meta(tuple(x.shape) + (num_classes,), _dtype.int64)


one_hot_op = register(
    "one_hot", infer=_one_hot_meta, differentiable=False,
    eager=lambda x, num_classes: (x[..., None] == np.arange(num_classes)).astype(np.int64),
    decomposition=lambda x, num_classes: (x.unsqueeze(-1) == creation.arange(num_classes))
    .to(_dtype.int64))


def one_hot(tensor, num_classes=-1):
    x = tensor
    if x.dtype is not _dtype.int64:
        raise RuntimeError("one_hot is only applicable to index tensor of type LongTensor.")
    num_classes = int(num_classes)
    if x._ir is None:
        data = x._data
        if num_classes == -1:
            if data.size == 0:
                raise RuntimeError("Can not infer total number of classes from empty tensor.")
            num_classes = int(data.max()) + 1
        if data.size:
            if data.min() < 0:
                raise RuntimeError("Class values must be non-negative.")
            if data.max() >= num_classes:
                raise RuntimeError("Class values must be smaller than num_classes.")
    elif num_classes == -1:
        x._concrete("one_hot() without num_classes")
    if num_classes < -1:
        raise RuntimeError("Class values must be smaller than num_classes.")
    return apply(one_hot_op, x, num_classes=num_classes)


# --- data-dependent: bincount, unique -------------------------------------------------------

_DATA_DEPENDENT = "its output shape depends on the data, which a static graph cannot have"


def _no_static_shape(name):
    def infer(*metas, **attrs):
        raise RuntimeError(f"{name} has a data-dependent output shape")
    return infer


bincount_op = register(
    "bincount", eager_only=_DATA_DEPENDENT, infer=_no_static_shape("bincount"),
    eager=lambda x, minlength=0: np.bincount(x, minlength=minlength).astype(np.int64),
    differentiable=False)
unique_op = register(
    "unique", eager_only=_DATA_DEPENDENT, infer=_no_static_shape("unique"),
    eager=lambda x: np.unique(x), differentiable=False)


def bincount(x, weights=None, minlength=0):
    data = x._concrete("bincount()")
    if minlength < 0:
        raise RuntimeError("minlength should be >= 0")
    if x.dtype.is_floating_point:
        raise NotImplementedError(f"\"bincount_cpu\" not implemented for "
                                  f"'{rd._type_word(x.dtype)}'")
    if data.ndim != 1 or (data.size and data.min() < 0):
        raise RuntimeError("bincount only supports 1-d non-negative integral inputs.")
    if weights is None:
        return Tensor._wrap(np.bincount(data.astype(np.int64), minlength=minlength)
                            .astype(np.int64))
    w = weights._concrete("bincount()")
    if w.ndim != 1 or w.shape[0] != data.shape[0]:
        raise RuntimeError("weights should be 1-d and have the same length as input")
    dt = np.float32 if w.dtype == np.float32 else np.float64
    out = np.bincount(data.astype(np.int64), weights=w.astype(np.float64), minlength=minlength)
    return Tensor._wrap(out.astype(dt))


def unique(x, sorted=True, return_inverse=False, return_counts=False, dim=None):
    data = x._concrete("unique()")
    if dim is None:
        vals, inv, counts = np.unique(data.reshape(-1), return_inverse=True, return_counts=True)
        inv = inv.reshape(data.shape)
    else:
        dim = common.wrap_dim(dim, data.ndim)
        vals, inv, counts = np.unique(data, return_inverse=True, return_counts=True, axis=dim)
        inv = inv.reshape(-1)
    out = Tensor._wrap(np.ascontiguousarray(vals).astype(data.dtype, copy=False))
    if not (return_inverse or return_counts):
        return out
    res = [out]
    if return_inverse:
        res.append(Tensor._wrap(inv.astype(np.int64)))
    if return_counts:
        res.append(Tensor._wrap(counts.astype(np.int64)))
    return tuple(res)


# --- repeat_interleave --------------------------------------------------------------------------


def repeat_interleave(x, repeats=None, dim=None, *, output_size=None):
    if repeats is None:  # repeat_interleave(repeats): arange(n) repeated
        r = x._concrete("repeat_interleave()")
        if r.ndim > 1:
            raise RuntimeError("repeat_interleave only accept 1D vector as repeat")
        if r.size and r.min() < 0:
            raise RuntimeError("repeats can not be negative")
        return Tensor._wrap(np.repeat(np.arange(r.shape[0], dtype=np.int64), r))
    if dim is None:
        x = x.reshape(-1)
        dim = 0
    dim = common.wrap_dim(dim, x.dim())
    if x.dim() == 0:
        x = x.reshape(1)
    n = x.shape[dim]
    if isinstance(repeats, Tensor) and repeats.dim() == 0:
        repeats = int(repeats.item())
    if not isinstance(repeats, Tensor):
        repeats = int(repeats)
        if repeats < 0:
            raise RuntimeError("Repeats must be non-negative")
        shape = tuple(x.shape)
        expanded = x.unsqueeze(dim + 1).expand(shape[:dim + 1] + (repeats,) + shape[dim + 1:])
        return expanded.contiguous().view(shape[:dim] + (n * repeats,) + shape[dim + 1:])
    r = repeats._concrete("repeat_interleave() with a tensor of repeats")
    if r.ndim != 1:
        raise RuntimeError("repeat_interleave only accept 1D vector as repeat")
    if r.shape[0] == 1:
        r = np.broadcast_to(r, (n,))
    if r.shape[0] != n:
        raise RuntimeError(f"repeats must have the same size as input along dim, but got "
                           f"repeats.size(0) = {r.shape[0]} and input.size({dim}) = {n}")
    if r.size and r.min() < 0:
        raise RuntimeError("repeats can not be negative")
    idx = Tensor._wrap(np.repeat(np.arange(n, dtype=np.int64), r))
    return ix.index_select(x, dim, idx)
