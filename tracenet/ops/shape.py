"""Shape ops: view/reshape (also squeeze, unsqueeze, flatten), permute (transpose, t), expand,
cat, stack, detach. Views share memory and the version counter with their input."""
import numpy as np

from .. import _dtype
from .._meta import Meta
from .._sym import as_size, is_one, same_shape
from ..tensor import _legacy_type_name
from . import common, reduce
from .elementwise import contiguous_copy
from .registry import apply, register

# index builds on this module: the rules here slice through Tensor methods (g.narrow, g.select)


# --- view / reshape ---------------------------------------------------------------------------


def infer_shape(shape, numel):
    """Resolve a -1 in ``shape`` against ``numel`` with torch's errors."""
    shape = tuple(as_size(s) for s in shape)
    unknown = [i for i, s in enumerate(shape) if s == -1]
    if len(unknown) > 1:
        raise RuntimeError("only one dimension can be inferred")
    for s in shape:
        if s < -1:
            raise RuntimeError(f"invalid shape dimension {s}")
    known = common.numel(s for s in shape if s != -1)
    if unknown:
        if known == 0 and numel == 0:
            raise RuntimeError(f"cannot reshape tensor of 0 elements into shape "
                               f"[{', '.join(map(str, shape))}] because the unspecified "
                               "dimension size -1 can be any value and is ambiguous")
        if known == 0 or numel % known:
            raise RuntimeError(f"shape '[{', '.join(map(str, shape))}]' is invalid for input of "
                               f"size {numel}")
        shape = shape[:unknown[0]] + (numel // known,) + shape[unknown[0] + 1:]
    elif known != numel:
        raise RuntimeError(f"shape '[{', '.join(map(str, shape))}]' is invalid for input of size "
                           f"{numel}")
    return shape


def _view_eager(x, shape, copy_ok):
    try:
        return np.reshape(x, shape, copy=False)
    except ValueError:
        if copy_ok:
            return np.reshape(x, shape)
        raise RuntimeError("view size is not compatible with input tensor's size and stride (at "
                           "least one dimension spans across two contiguous subspaces). Use "
                           ".reshape(...) instead.") from None


view_op = register(
    "view", infer=lambda x, shape, copy_ok: Meta(tuple(shape), x.dtype), eager=_view_eager,
    backward=lambda ctx, g: (g.reshape(tuple(ctx.metas[0].shape)),), kind="view",
    eager_backward=lambda ctx, g: (np.reshape(g, ctx.metas[0].shape),),
    grad_fn=lambda ctx: ctx.attrs.get("_name", "ViewBackward0"))


def _viewable(arr, shape):
    try:
        np.reshape(arr, shape, copy=False)
        return True
    except ValueError:
        return False


def _view(x, shape, copy_ok, name=None):
    shape = infer_shape(shape, x.numel())
    # (a row-major array reshapes to any shape as a view: only other layouts are tried)
    if copy_ok and x._ir is None and not x._data.flags.c_contiguous and \
            not _viewable(x._data, shape):
        # reshape of a tensor whose memory cannot be viewed so: a contiguous copy, then a view
        # of it (torch's CloneBackward0 -> UnsafeViewBackward0); the result is not a view of x
        x, name = contiguous_copy(x), name or "UnsafeViewBackward0"
        out = apply(view_op, x, shape=shape, copy_ok=copy_ok, _name=name)
        out._base = None
        return out
    attrs = {"shape": shape, "copy_ok": copy_ok}
    if name is not None:
        attrs["_name"] = name
    return apply(view_op, x, **attrs)


def _shape_args(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return shape


def view(x, *shape):
    shape = _shape_args(shape)
    if len(shape) == 1 and isinstance(shape[0], _dtype.dtype):
        if shape[0] is x.dtype:
            return _view(x, tuple(x.shape), copy_ok=False)
        raise NotImplementedError("view(dtype) is not supported")
    return _view(x, shape, copy_ok=False)


def reshape(x, *shape):
    return _view(x, _shape_args(shape), copy_ok=True)


def flatten(x, start_dim=0, end_dim=-1):
    nd = x.dim()
    if nd == 0:
        return _view(x, (1,), copy_ok=True)
    s, e = common.wrap_dim(start_dim, nd), common.wrap_dim(end_dim, nd)
    if s > e:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    shape = tuple(x.shape)
    if s == e:
        return x
    return _view(x, shape[:s] + (common.numel(shape[s:e + 1]),) + shape[e + 1:], copy_ok=True)


def unflatten(x, dim, sizes):
    dim = common.wrap_dim(dim, x.dim())
    shape = tuple(x.shape)
    sizes = infer_shape(sizes, shape[dim])
    return _view(x, shape[:dim] + tuple(sizes) + shape[dim + 1:], copy_ok=True)


def squeeze(x, dim=None):
    shape = tuple(x.shape)
    if dim is None:
        return _view(x, tuple(s for s in shape if s != 1), True, "SqueezeBackward0")
    dims = common.wrap_dims(dim, x.dim())
    name = "SqueezeBackward1" if isinstance(dim, int) else "SqueezeBackward2"
    return _view(x, tuple(s for i, s in enumerate(shape) if not (i in dims and s == 1)), True,
                 name)


def unsqueeze(x, dim):
    nd = x.dim() + 1
    dim = common.wrap_dim(dim, nd)
    shape = tuple(x.shape)
    return _view(x, shape[:dim] + (1,) + shape[dim:], True, "UnsqueezeBackward0")


# --- permute ----------------------------------------------------------------------------------


def _inverse(dims):
    inv = [0] * len(dims)
    for i, d in enumerate(dims):
        inv[d] = i
    return tuple(inv)


permute_op = register(
    "permute", infer=lambda x, dims: Meta(tuple(x.shape[d] for d in dims), x.dtype),
    eager=lambda x, dims: np.transpose(x, dims), kind="view", cache_infer=True,
    backward=lambda ctx, g: (permute(g, _inverse(ctx.attrs["dims"])),),
    eager_backward=lambda ctx, g: (np.transpose(g, _inverse(ctx.attrs["dims"])),),
    grad_fn=lambda ctx: ctx.attrs.get("_name", "PermuteBackward0"))


def permute(x, *dims):
    dims = _shape_args(dims)
    nd = x.dim()
    if len(dims) != nd:
        raise RuntimeError(f"permute(sparse_coo): number of dimensions in the tensor input does "
                           f"not match the length of the desired ordering of dimensions i.e. "
                           f"input.dim() = {nd} is not equal to len(dims) = {len(dims)}")
    dims = tuple(common.wrap_dim(d, nd) for d in dims)
    if len(set(dims)) != nd:
        raise RuntimeError("permute(): duplicate dims are not allowed.")
    return apply(permute_op, x, dims=dims)


def transpose(x, dim0, dim1):
    nd = x.dim()
    dims = list(range(nd))
    a, b = common.wrap_dim(dim0, nd), common.wrap_dim(dim1, nd)
    dims[a], dims[b] = dims[b], dims[a]
    return apply(permute_op, x, dims=tuple(dims), _name="TransposeBackward0")


swapaxes = swapdims = transpose


def t(x):
    nd = x.dim()
    if nd > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {nd}D")
    return apply(permute_op, x, dims=tuple(reversed(range(nd))), _name="TBackward0")


# --- expand -----------------------------------------------------------------------------------


def _expand_meta(x, shape):
    return Meta(tuple(shape), x.dtype)


expand_op = register(
    "expand", infer=_expand_meta, eager=lambda x, shape: np.broadcast_to(x, shape),
    backward=lambda ctx, g: (reduce.sum_to_shape(g, ctx.metas[0].shape),),
    # materialised (when a kernel needs it) as a broadcast copy
    kind="view", c_expr=lambda a, at, ct: a[0])


def expanded_shape(shape, sizes, dtype):
    """The shape ``expand(sizes)`` gives a tensor of ``shape``, with torch's errors."""
    if len(sizes) < len(shape):
        raise RuntimeError(f"expand({_legacy_type_name(dtype)}{{[{', '.join(map(str, shape))}]}}, "
                           f"size=[{', '.join(map(str, sizes))}]): the number of sizes provided "
                           f"({len(sizes)}) must be greater or equal to the number of dimensions "
                           f"in the tensor ({len(shape)})")
    lead = len(sizes) - len(shape)
    out = []
    for i, s in enumerate(sizes):
        cur = shape[i - lead] if i >= lead else 1
        if s == -1:
            if i < lead:
                raise RuntimeError("The expanded size of the tensor (-1) isn't allowed in a "
                                   "leading, non-existing dimension " + str(i))
            s = cur
        elif not is_one(cur) and cur != s:
            raise RuntimeError(f"The expanded size of the tensor ({s}) must match the existing "
                               f"size ({cur}) at non-singleton dimension {i}.  Target sizes: "
                               f"[{', '.join(map(str, sizes))}].  Tensor sizes: "
                               f"[{', '.join(map(str, shape))}]")
        out.append(as_size(s))
    return tuple(out)


def expand(x, *sizes):
    sizes = _shape_args(sizes)
    shape = tuple(x.shape)
    out = expanded_shape(shape, tuple(sizes), x.dtype)
    if same_shape(out, shape):
        return x if x._ir is not None else apply(expand_op, x, shape=out)
    return apply(expand_op, x, shape=out)


def broadcast_to(x, shape):
    return expand(x, tuple(shape))


def expand_as(x, other):
    return expand(x, tuple(other.shape))


# --- cat / stack ------------------------------------------------------------------------------


def _cat_meta(*xs, dim):
    xs_ = [m for m in xs if not (len(m.shape) == 1 and m.shape[0] == 0)]  # legacy empty skip
    if not xs_:
        return Meta((0,), _dtype.result_type(*xs))
    ref = xs_[0].shape
    for i, m in enumerate(xs_):
        if len(m.shape) != len(ref):
            raise RuntimeError(f"Tensors must have same number of dimensions: got {len(ref)} and "
                               f"{len(m.shape)}")
        for d in range(len(ref)):
            if d != dim and m.shape[d] != ref[d]:
                raise RuntimeError(f"Sizes of tensors must match except in dimension {dim}. "
                                   f"Expected size {ref[d]} but got size {m.shape[d]} for tensor "
                                   f"number {i} in the list.")
    size = sum(m.shape[dim] for m in xs_)
    return Meta(tuple(ref[:dim]) + (size,) + tuple(ref[dim + 1:]), _dtype.result_type(*xs))


def _cat_eager(*xs, dim):
    xs = [x for x in xs if not (x.ndim == 1 and x.shape[0] == 0)]
    return np.concatenate(xs, axis=dim)


def _cat_backward(ctx, g):
    dim, grads, start = ctx.attrs["dim"], [], 0
    for m, need in zip(ctx.metas, ctx.needs_input_grad):
        if len(m.shape) == 1 and m.shape[0] == 0 and len(ctx.out_metas[0].shape) != 1:
            grads.append(None)
            continue
        n = m.shape[dim]
        grads.append(g.narrow(dim, start, n).to(m.dtype) if need else None)
        start += n
    return tuple(grads)


cat_op = register("cat", infer=_cat_meta, eager=_cat_eager, backward=_cat_backward)


def cat(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("torch.cat(): expected a non-empty list of Tensors")
    ref = next((t for t in tensors if not (t.dim() == 1 and t.shape[0] == 0)), tensors[0])
    if ref.dim() == 0:
        raise RuntimeError("zero-dimensional tensor (at position 0) cannot be concatenated")
    return apply(cat_op, *tensors, dim=common.wrap_dim(dim, ref.dim()))


concat = concatenate = cat


def _stack_meta(*xs, dim):
    ref = xs[0].shape
    for i, m in enumerate(xs):
        if tuple(m.shape) != tuple(ref):
            raise RuntimeError(f"stack expects each tensor to be equal size, but got "
                               f"[{', '.join(map(str, ref))}] at entry 0 and "
                               f"[{', '.join(map(str, m.shape))}] at entry {i}")
    return Meta(tuple(ref[:dim]) + (len(xs),) + tuple(ref[dim:]), _dtype.result_type(*xs))


def _stack_backward(ctx, g):
    dim = ctx.attrs["dim"]
    return tuple(g.select(dim, i).to(m.dtype) if need else None
                 for i, (m, need) in enumerate(zip(ctx.metas, ctx.needs_input_grad)))


stack_op = register("stack", infer=_stack_meta,
                    eager=lambda *xs, dim: np.stack(xs, axis=dim), backward=_stack_backward)


def stack(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack expects a non-empty TensorList")
    return apply(stack_op, *tensors, dim=common.wrap_dim(dim, tensors[0].dim() + 1))


def hstack(tensors):
    tensors = list(tensors)
    return cat(tensors, 0 if tensors[0].dim() == 1 else 1)


def vstack(tensors):
    return cat([t if t.dim() > 1 else t.reshape(1, -1) for t in tensors], 0)


# --- detach / contiguous ----------------------------------------------------------------------

detach_op = register("detach", infer=common.same, eager=lambda x: x, differentiable=False,
                     kind="view")


def detach(x):
    return apply(detach_op, x)


def contiguous(x, memory_format=None):
    if x._ir is not None or x.is_contiguous():
        return x
    return contiguous_copy(x)


# --- repeat / flip ----------------------------------------------------------------------------


def _repeat_meta(x, sizes):
    shape = (1,) * (len(sizes) - len(x.shape)) + tuple(x.shape)
    return Meta(tuple(r * n for r, n in zip(sizes, shape)), x.dtype)


def _repeat_backward(ctx, g):
    """Each input element appears once per tile: sum the tiles (a reshape that splits every
    dim into (repeats, size), then a sum over the repeat axes)."""
    sizes, shape = ctx.attrs["sizes"], tuple(ctx.metas[0].shape)
    padded = (1,) * (len(sizes) - len(shape)) + shape
    g = reshape(g, tuple(v for r, n in zip(sizes, padded) for v in (r, n)))
    g = reduce.sum(g, tuple(range(0, 2 * len(sizes), 2)))
    return (reshape(g, shape),)


repeat_op = register("repeat", eager_only="no C lowering yet", infer=_repeat_meta,
                     eager=lambda x, sizes: np.tile(x, sizes), backward=_repeat_backward)


def repeat(x, *sizes):
    sizes = tuple(int(v) for v in _shape_args(sizes))
    if len(sizes) < x.dim():
        raise RuntimeError("Number of dimensions of repeat dims can not be smaller than number of "
                           "dimensions of tensor")
    if any(v < 0 for v in sizes):
        raise RuntimeError(f"Trying to create tensor with negative dimension {min(sizes)}: "
                           f"[{', '.join(map(str, sizes))}]")
    return apply(repeat_op, x, sizes=sizes)


flip_op = register(
    "flip", eager_only="no C lowering yet", infer=lambda x, dims: common.same(x),
    eager=lambda x, dims: np.flip(x, tuple(d for d in dims if d < x.ndim)).copy(),
    backward=lambda ctx, g: (apply(flip_op, g, dims=ctx.attrs["dims"]),))


def flip(x, dims):
    return apply(flip_op, x, dims=common.wrap_dims(dims, x.dim()))
