"""``scatter`` (a tensor or a number written at indices along a dim) and ``histc``."""
import numpy as np

from .. import _dtype
from .._meta import Meta
from . import common
from .index import check_index_range, gather, scatter_add
from .nn import pad
from .registry import apply

register = common.register_quiet


def _word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def _check_index(name, x, idx, src, dim):
    if idx.dtype is not _dtype.int64:
        raise RuntimeError(f"{name}(): Expected dtype int32/int64 for index")
    if len(idx.shape) != len(x.shape):
        raise RuntimeError("Index tensor must have the same number of dimensions as self tensor")
    ishape = tuple(idx.shape)
    bad_self = any(ishape[d] > x.shape[d] for d in range(len(ishape)) if d != dim)
    bad_src = src is not None and any(ishape[d] > src.shape[d] for d in range(len(ishape)))
    if bad_self or bad_src:
        fmt = lambda s: "[" + ", ".join(str(v) for v in s) + "]"  # noqa: E731
        raise RuntimeError(f"Expected index {fmt(ishape)} to be no larger than self "
                           f"{fmt(x.shape)} apart from dimension {dim}"
                           + (f" and to be no larger size than src {fmt(src.shape)}"
                              if src is not None else ""))


def _scatter_meta(x, idx, src=None, dim=0, value=None):
    _check_index("scatter", x, idx, src, dim)
    if src is not None and src.dtype is not x.dtype:
        raise RuntimeError("scatter(): Expected self.dtype to be equal to src.dtype")
    return Meta(tuple(x.shape), x.dtype)


def _positions(x, idx, dim):
    check_index_range(idx, x.shape[dim], dim)
    grids = list(np.indices(idx.shape, sparse=True))
    grids[dim] = idx
    return tuple(grids)


def _scatter_eager(x, idx, src=None, dim=0, value=None):
    out = np.array(x, copy=True)
    where = _positions(x, idx, dim)
    out[where] = value if src is None else src[tuple(slice(0, s) for s in idx.shape)]
    return out


def _scatter_backward(ctx, g):
    idx, dim = ctx.inputs[1], ctx.attrs["dim"]
    gx = scatter(g, dim, idx, 0.0) if ctx.needs_input_grad[0] else None
    if len(ctx.metas) == 2:
        return gx, None
    gs = None
    if ctx.needs_input_grad[2]:
        gs = gather(g, dim, idx)
        src_shape = tuple(ctx.metas[2].shape)
        if tuple(gs.shape) != src_shape:  # src may be larger than the index: zeros elsewhere
            pads = []
            for have, want in zip(reversed(tuple(gs.shape)), reversed(src_shape)):
                pads += [0, want - have]
            gs = pad(gs, pads)
    return gx, None, gs


scatter_op = register(
    "scatter", infer=_scatter_meta,
    eager=_scatter_eager, saves=(1,), backward=_scatter_backward,
    grad_fn=lambda ctx: "ScatterBackward0" if len(ctx.metas) == 3 else "ScatterBackward1")


def scatter(x, dim, index, src=None, *, value=None, reduce=None):
    if src is not None and not common.is_tensor(src):
        src, value = None, src
    dim = common.wrap_dim(dim, x.dim())
    if reduce is not None:
        if reduce == "add" and src is not None:
            return scatter_add(x, dim, index, src)
        raise NotImplementedError(f"scatter(reduce={reduce!r}) is not supported; use "
                                  "scatter_add")
    if src is not None:
        return apply(scatter_op, x, index, src, dim=dim)
    if value is None:
        raise TypeError("scatter() missing 1 required positional argument: \"src\" or "
                        "\"value\"")
    if common.is_tensor(value):
        value = value.item()
    return apply(scatter_op, x, index, dim=dim, value=value)


# --- histc ----------------------------------------------------------------------------------


def _histc_meta(x, bins, min, max):
    if not x.dtype.is_floating_point:
        raise NotImplementedError(f"\"histogram_cpu\" not implemented for '{_word(x.dtype)}'")
    if bins <= 0:
        raise RuntimeError(f"torch.histogram(): bins must be > 0, but got {bins} for "
                           "dimension 0")
    if min > max:
        raise RuntimeError("torch.histc: max must be larger than min")
    return Meta((bins,), x.dtype)


def _histc_eager(x, bins, min, max):
    lo, hi = float(min), float(max)
    if lo == hi and x.size:
        lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    v = x.reshape(-1).astype(np.float64)
    v = v[(v >= lo) & (v <= hi)]
    pos = np.floor((v - lo) * bins / (hi - lo)).astype(np.int64)
    pos = np.minimum(pos, bins - 1)  # the maximum goes into the last bin
    return np.bincount(pos, minlength=bins).astype(x.dtype)


histc_op = register(
    "histc", eager_only="its range comes from the data when min == max", infer=_histc_meta,
    eager=_histc_eager, differentiable=False)


def histc(x, bins=100, min=0, max=0, *, out=None):
    return apply(histc_op, x, bins=int(bins), min=min, max=max)
