"""Indexing: ``x[key]`` and ``x[key] = v`` for basic and advanced keys, gather/scatter.

A key is normalised once into a hashable *spec* (ints, slice triples, None, Ellipsis and
``("t", k)`` placeholders for the k-th index tensor), so the IR can carry it as an attribute and
the same spec drives the forward, its gradient and ``__setitem__``.
"""
import builtins
import warnings

import numpy as np

from .. import _dtype
from .._sym import has_symbols, is_one, same_size
from .._meta import Meta
from .._trace_errors import TraceError
from ..tensor import Tensor, _VersionCounter
from . import common, creation, reduce
from .elementwise import where
from .shape import _view, cat, expanded_shape, stack
from .registry import apply, register


def split_key(x, key):
    """Normalise a ``__getitem__`` key into ``(spec, index_tensors)``."""
    if isinstance(key, list) and _sequence_is_tuple(key, Tensor):
        warnings.warn(_SEQUENCE_KEY_WARNING, UserWarning, stacklevel=4)
        key = tuple(key)
    if not isinstance(key, tuple):
        key = (key,)
    spec, tensors = [], []
    dim = 0  # the input dim the next item indexes, for turning bool masks into long indices
    for k in key:
        if k is None:
            spec.append(None)
        elif k is Ellipsis:
            spec.append(Ellipsis)
            dim = x.dim() - sum(1 for kk in key if kk is not None and kk is not Ellipsis
                                and not (isinstance(kk, (Tensor, np.ndarray))
                                         and _is_bool(kk))) + 0
        elif isinstance(k, slice):
            spec.append(("s", _int_or_none(k.start), _int_or_none(k.stop),
                         _int_or_none(k.step)))
            dim += 1
        elif isinstance(k, (bool, np.bool_)) or (isinstance(k, Tensor) and k.dim() == 0
                                                   and k.dtype is _dtype.bool_):
            # a scalar True adds a dim of size 1 (like None)
            if not bool(k):
                raise NotImplementedError("indexing with a False scalar is not supported")
            spec.append(None)
        elif isinstance(k, (int, np.integer)):
            spec.append(int(k))
            dim += 1
        else:
            if not isinstance(k, Tensor):
                k = _index_tensor(k)
            if k.dtype is _dtype.bool_:
                _check_mask(k, x, dim)
                # a mask over k.dim() dims becomes one long index per dim
                for idx in k.nonzero(as_tuple=True):
                    spec.append(("t", len(tensors)))
                    tensors.append(idx)
                dim += k.dim()
                continue
            if k.dtype.is_floating_point:
                raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
            spec.append(("t", len(tensors)))
            tensors.append(k)
            dim += 1
    return tuple(spec), tensors


_SEQUENCE_KEY_WARNING = (
    "Using a non-tuple sequence for multidimensional indexing is deprecated and will be changed "
    "in pytorch 2.9; use x[tuple(seq)] instead of x[seq]. In pytorch 2.9 this will be "
    "interpreted as tensor index, x[torch.tensor(seq)], which will result either in an error or "
    "a different result")


def _sequence_is_tuple(key, Tensor):
    """torch's legacy rule: a short list holding sequences, slices, tensors, None or ``...`` is
    a multidimensional key (``x[[0, slice(None)]]`` is ``x[0, :]``)."""
    return len(key) < 32 and any(
        isinstance(k, (list, tuple, slice, Tensor, np.ndarray)) or k is None or k is Ellipsis
        for k in key)


def _check_mask(mask, x, dim):
    shape = tuple(x.shape)
    for j, size in enumerate(mask.shape):
        if dim + j >= len(shape) or size != shape[dim + j]:
            raise IndexError(f"The shape of the mask [{', '.join(map(str, mask.shape))}] at index "
                             f"{j} does not match the shape of the indexed tensor "
                             f"[{', '.join(map(str, shape))}] at index {dim + j}")


def _is_bool(k):
    return getattr(k, "dtype", None) in (_dtype.bool_, np.bool_)


def _index_tensor(k):
    arr = np.asarray(k.tolist() if hasattr(k, "tolist") and not isinstance(k, np.ndarray) else k)
    if arr.dtype.kind == "b":
        return creation.tensor(arr)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
    return creation.tensor(arr.astype(np.int64))


def _int_or_none(v):
    if v is None:
        return None
    if isinstance(v, Tensor):
        return int(v.item())
    return int(v)


def np_key(spec, arrays):
    out = []
    for item in spec:
        if isinstance(item, tuple):
            out.append(slice(*item[1:]) if item[0] == "s" else arrays[item[1]])
        else:
            out.append(item)
    return tuple(out)


def split_np_key(spec, arrays):
    """torch's two-step advanced indexing as numpy keys ``(first, second)``: ints, slices and
    None apply first (a view), then the index tensors on that view. (numpy would count ints as
    advanced indices, which moves the result dims elsewhere: ``x[:, [0, 0], :, 0]``.)"""
    first, second = [], []
    for item in spec:
        if item is None:
            first.append(None)
            second.append(slice(None))
        elif item is Ellipsis:
            first.append(Ellipsis)
            second.append(Ellipsis)
        elif isinstance(item, int):
            first.append(item)
        elif item[0] == "s":
            first.append(slice(*item[1:]))
            second.append(slice(None))
        else:
            first.append(slice(None))
            second.append(arrays[item[1]])
    return tuple(first), tuple(second)


def _view_key(spec, arrays):
    """The numpy key for ``spec``; a basic key ends in ``...`` so that selecting a single
    element gives a 0-dim view, not a copied numpy scalar."""
    key = np_key(spec, arrays)
    if Ellipsis not in spec and not has_tensors(spec):
        key = key + (Ellipsis,)
    return key


def symbolic_view(shape, key):
    """``(offset, shape, strides)`` in elements of ``x[key]`` (a basic numpy key: ints, slices,
    None, ...) for a contiguous ``x`` of ``shape`` holding symbolic sizes: what numpy computes
    for concrete ones (``codegen``'s probe), as expressions in the symbols. Raises
    ``Specialize`` where the answer depends on their values (``x[1]`` may be out of range when
    the batch size is 1) and numpy's IndexError for an index out of range for every value."""
    key = list(key)
    consumed = sum(1 for k in key if k is not None and k is not Ellipsis)
    if Ellipsis in key:
        at = key.index(Ellipsis)
        key[at:at + 1] = [slice(None)] * (len(shape) - consumed)
    else:
        key += [slice(None)] * (len(shape) - consumed)
    strides = [common.numel(shape[d + 1:]) for d in range(len(shape))]
    offset, out_shape, out_strides, d = 0, [], [], 0
    for k in key:
        if k is None:
            out_shape.append(1)
            out_strides.append(0)
            continue
        size, stride = shape[d], strides[d]
        if isinstance(k, (int, np.integer)):
            i = k + size if k < 0 else k
            if not 0 <= i < size:
                raise IndexError(f"index {k} is out of bounds for axis {d} with size {size}")
            offset += i * stride
        else:
            step = 1 if k.step is None else k.step
            if step <= 0:
                raise ValueError("step must be greater than zero")
            start = _clamped(k.start, size, 0)
            stop = _clamped(k.stop, size, size)
            length = builtins.max(stop - start, 0)
            if step != 1:
                length = (length + step - 1) // step
            offset += start * stride
            out_shape.append(length)
            out_strides.append(stride * step)
        d += 1
    return offset, tuple(out_shape), tuple(out_strides)


def _clamped(bound, size, default):
    """A slice bound as Python resolves it for a positive step: negative counts from the end,
    then clamped to [0, size]."""
    if bound is None:
        return default
    if bound < 0:
        bound = bound + size
    return builtins.min(builtins.max(bound, 0), size)


def has_tensors(spec):
    return any(isinstance(i, tuple) and i[0] == "t" for i in spec)


def _translate_index_error(fn):
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except IndexError as e:
            msg = str(e).replace("axis", "dimension")
            raise IndexError(msg) from None
    return wrapper


def _index_meta(x, *idx, spec):
    _check_key(x.shape, spec)
    if len(idx) > 1:
        try:
            common.broadcast_shapes(*(tuple(m.shape) for m in idx))
        except RuntimeError:
            raise IndexError("shape mismatch: indexing tensors could not be broadcast together "
                             "with shapes " + ", ".join(
                                 "[" + ", ".join(map(str, m.shape)) + "]" for m in idx)) from None
    if not idx and has_symbols(x.shape):
        try:
            return Meta(symbolic_view(tuple(x.shape), np_key(spec, []))[1], x.dtype)
        except IndexError as e:
            raise IndexError(str(e).replace("axis", "dimension")) from None
    probe = np.broadcast_to(np.zeros((), np.bool_), tuple(x.shape))
    dummies = [np.zeros(tuple(m.shape), np.int64) for m in idx]
    try:
        first, second = split_np_key(spec, dummies)
        shape = probe[first][second].shape
    except IndexError as e:
        raise IndexError(str(e).replace("axis", "dimension")) from None
    return Meta(shape, x.dtype)


def _check_key(shape, spec):
    consumed = sum(1 for i in spec if i is not None and i is not Ellipsis)
    if consumed > len(shape):
        raise IndexError(f"too many indices for tensor of dimension {len(shape)}")
    dim = 0
    for item in spec:
        if item is Ellipsis:
            dim += len(shape) - consumed
        elif item is None:
            continue
        else:
            if isinstance(item, int):
                size = shape[dim]
                if not -size <= item < size:
                    raise IndexError(f"index {item} is out of bounds for dimension {dim} with "
                                     f"size {size}")
            elif item[0] == "s" and item[3] is not None and item[3] <= 0:
                raise ValueError("slice step cannot be zero" if item[3] == 0 else
                                 "step must be greater than zero")
            dim += 1


def _tensor_dims(shape, spec):
    """The dim of ``shape`` each index tensor of ``spec`` indexes, in order."""
    consumed = sum(1 for i in spec if i is not None and i is not Ellipsis)
    dims, dim = [], 0
    for item in spec:
        if item is Ellipsis:
            dim += len(shape) - consumed
        elif item is not None:
            if isinstance(item, tuple) and item[0] == "t":
                dims.append(dim)
            dim += 1
    return dims


def _check_bounds(shape, spec, idx):
    """torch's bounds check of index tensors (it names the k-th index tensor's position)."""
    for k, (dim, arr) in enumerate(zip(_tensor_dims(shape, spec), idx)):
        size = shape[dim]
        bad = (arr >= size) | (arr < -size)
        if bad.any():
            raise IndexError(f"index {arr[bad].flat[0]} is out of bounds for dimension {k} with "
                             f"size {size}")


def _advanced_shape(shape, spec, idx):
    """The shape ``spec`` selects (index values replaced by zeros: no bounds check)."""
    probe = np.broadcast_to(np.zeros((), np.bool_), tuple(shape))
    first, second = split_np_key(spec, [np.zeros(a.shape, np.int64) for a in idx])
    return probe[first][second].shape


def _index_eager(x, idx, spec):
    if idx:
        shape = _advanced_shape(x.shape, spec, idx)
        if common.numel(shape) == 0:  # nothing is read: torch checks no index
            return np.zeros(shape, x.dtype)
        _check_bounds(x.shape, spec, idx)
        first, second = split_np_key(spec, idx)
        return x[first][second]
    return x[_view_key(spec, idx)]


def _index_grad_fn(ctx):
    if "_name" in ctx.attrs:
        return ctx.attrs["_name"]
    spec = ctx.attrs["spec"]
    if has_tensors(spec):
        return "IndexBackward0"
    for item in reversed(spec):
        if isinstance(item, int):
            return "SelectBackward0"
        if item is None:
            return "UnsqueezeBackward0"
        if isinstance(item, tuple):
            return "SliceBackward0"
    return "AliasBackward0"


index_op = register(
    "index", infer=_index_meta,
    eager=_translate_index_error(lambda x, *idx, spec: _index_eager(x, idx, spec)),
    saves=(1, ...), grad_fn=_index_grad_fn,
    backward=lambda ctx, g: (index_backward(g, ctx.inputs[1:], ctx.metas[0].shape,
                                            ctx.attrs["spec"]),) + (None,) * (len(ctx.metas) - 1),
    is_view=True)


def _index_backward_eager(g, *idx, shape, spec):
    out = np.zeros(shape, dtype=g.dtype)
    if has_tensors(spec) and g.size:
        first, second = split_np_key(spec, idx)
        np.add.at(out[first], second, g)  # out[first] is a view: accumulates into out
    elif not has_tensors(spec):
        out[np_key(spec, idx)] = g
    return out


index_backward_op = register(
    "index_backward", infer=lambda g, *idx, shape, spec: Meta(tuple(shape), g.dtype),
    eager=_index_backward_eager, saves=(1, ...),
    backward=lambda ctx, gg: (index(gg, ctx.inputs[1:], ctx.attrs["spec"]),)
    + (None,) * (len(ctx.metas) - 1))


def index(x, tensors, spec, _name=None):
    out = apply(index_op, x, *tensors, spec=spec, **({} if _name is None else {"_name": _name}))
    if tensors and out._ir is None:
        # advanced indexing copies: the result is not a view (own version counter, no base)
        out._vc = _VersionCounter()
        out._base = None
    return out


def index_backward(g, tensors, shape, spec):
    return apply(index_backward_op, g, *tensors, shape=tuple(shape), spec=spec)


def getitem(x, key):
    spec, tensors = split_key(x, key)
    return index(x, tensors, spec)


# --- setitem: out-of-place (CopySlices); Tensor.__setitem__ writes the result back in place ---


def _index_put_eager(x, v, *idx, spec):
    out = np.array(x, copy=True)
    if idx:
        first, second = split_np_key(spec, idx)
        if common.numel(_advanced_shape(x.shape, spec, idx)):  # else nothing is written
            _check_bounds(x.shape, spec, idx)
            out[first][second] = v
        return out
    out[np_key(spec, idx)] = v
    return out


def _index_put_meta(x, v, *idx, spec):
    target = _index_meta(x, *idx, spec=spec)
    if not has_tensors(spec):
        # a view of x takes the value: copy_'s broadcasting, after dropping leading 1s
        vshape = tuple(v.shape)
        # (a size symbol is not compared with 1: expand broadcasts a dim it keeps)
        while vshape and is_one(vshape[0]):
            vshape = vshape[1:]
        expanded_shape(vshape, tuple(target.shape), v.dtype)
        return Meta(tuple(x.shape), x.dtype)
    try:
        common.broadcast_shapes(tuple(target.shape), tuple(v.shape))
        np.broadcast_shapes(tuple(v.shape), tuple(target.shape))
        if len(v.shape) > len(target.shape) and any(s != 1 for s in v.shape[:len(v.shape) -
                                                                             len(target.shape)]):
            raise ValueError
        if common.broadcast_shapes(tuple(target.shape), tuple(v.shape)) != tuple(target.shape) \
                and len(v.shape) <= len(target.shape):
            raise ValueError
    except (ValueError, RuntimeError):
        raise RuntimeError(f"shape mismatch: value tensor of shape [{', '.join(map(str, v.shape))}]"
                           f" cannot be broadcast to indexing result of shape "
                           f"[{', '.join(map(str, target.shape))}]") from None
    return Meta(tuple(x.shape), x.dtype)


def _index_put_backward(ctx, g):
    idx, spec = ctx.inputs[2:], ctx.attrs["spec"]
    gx = gv = None
    if ctx.needs_input_grad[0]:
        gx = index_put(g, common.scalar_tensor(0.0, g.dtype), idx, spec)
    if ctx.needs_input_grad[1]:
        part = index(g, idx, spec)
        vshape = tuple(ctx.metas[1].shape)
        if len(vshape) > part.dim():
            part = part.reshape((1,) * (len(vshape) - part.dim()) + tuple(part.shape))
        gv = reduce.sum_to_shape(part, vshape).to(ctx.metas[1].dtype)
    return (gx, gv) + (None,) * len(idx)


def _index_put_grad_fn(ctx):
    if "_name" in ctx.attrs:
        return ctx.attrs["_name"]
    spec = ctx.attrs["spec"]
    if basic_part_is_view(tuple(ctx.metas[0].shape), spec):
        return "CopySlices"
    return "IndexPutBackward0" if has_tensors(spec) else "CopyBackwards"


index_put_op = register("index_put", infer=_index_put_meta, eager=_index_put_eager,
                        saves=(2, ...), backward=_index_put_backward,
                        grad_fn=_index_put_grad_fn)


def index_put(x, value, tensors, spec, _name=None):
    if not common.is_tensor(value):
        value = common.scalar_tensor(value, x.dtype)
    elif value.dtype is not x.dtype:
        value = value.to(x.dtype)
    named = {} if _name is None else {"_name": _name}
    return apply(index_put_op, x, value, *tensors, spec=spec, **named)


def _type_word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def basic_part_is_view(shape, spec):
    """Whether the int/slice/None part of a key selects less than the whole tensor (torch then
    writes through that view: CopySlices) rather than the tensor itself."""
    consumed = sum(1 for i in spec if i is not None and i is not Ellipsis)
    dim = 0
    for item in spec:
        if item is Ellipsis:
            dim += len(shape) - consumed
            continue
        if item is None or isinstance(item, int):
            return True
        if item[0] == "s" and dim < len(shape):
            size = shape[dim]
            if slice(*item[1:]).indices(size) != (0, size, 1):
                return True
        dim += 1
    return False


def key_is_view(x, key):
    spec, _ = split_key(x, key)
    return basic_part_is_view(tuple(x.shape), spec)


def _check_same_dtype(x, value):
    if common.is_tensor(value) and value.dtype is not x.dtype:
        raise RuntimeError(f"Index put requires the source and destination dtypes match, got "
                           f"{_type_word(x.dtype)} for the destination and "
                           f"{_type_word(value.dtype)} for the source.")


def _traced_mask(x, key):
    """The bool mask that is all of ``key`` (``x[mask] = value``) while ``x`` is traced, checked
    against ``x``'s leading dims; None for any other key or an ``x`` that is not traced."""
    single = key[0] if isinstance(key, tuple) and len(key) == 1 else key
    if x._ir is None or not common.is_tensor(single) or single.dtype is not _dtype.bool_ \
            or single.dim() == 0:
        return None
    _check_mask(single, x, 0)
    return single


def _masked_assignment(x, mask, value):
    """``x[mask] = value`` traced as ``where(mask, value, x)``: the positions the mask takes
    are data a static graph cannot hold (their count is the shape of ``index_put``'s index
    tensors), a ``where`` over all of ``x`` can. Only for a value that is the same for every
    masked position (it broadcasts to the dims after the mask's); eager mode's values and
    gradients, ``IndexPutBackward0``'s."""
    rest = tuple(x.shape)[mask.dim():]
    if common.is_tensor(value) and value.numel() != 1:  # (one value: masked_fill's rule)
        _check_same_dtype(x, value)
    if not common.is_tensor(value):
        value = common.scalar_tensor(value, x.dtype)
    vshape = tuple(value.shape)
    while len(vshape) > len(rest) and is_one(vshape[0]):
        vshape = vshape[1:]
    if len(vshape) > len(rest) or not all(is_one(v) or same_size(v, r) for v, r in
                                          zip(vshape, rest[len(rest) - len(vshape):])):
        raise TraceError(f"an assignment through a mask (x[mask] = value) of a value of shape "
                         f"[{', '.join(map(str, value.shape))}] in traced code: the value's "
                         "shape must not depend on how many elements the mask takes (a scalar, "
                         "or a value for the dims after the mask's); run it eagerly, where it "
                         "runs")
    mask = mask.reshape(tuple(mask.shape) + (1,) * len(rest))
    return where(mask, value.reshape(vshape).to(x.dtype), x)


def setitem_value(x, key, value):
    """The tensor ``x`` would become after ``x[key] = value`` (computed out of place)."""
    mask = _traced_mask(x, key)
    if mask is not None:
        return _masked_assignment(x, mask, value)
    spec, tensors = split_key(x, key)
    single = key[0] if isinstance(key, tuple) and len(key) == 1 else key
    masked_fill = (common.is_tensor(single) and single.dtype is _dtype.bool_
                   and common.is_tensor(value) and value.numel() == 1)
    if tensors and not masked_fill:
        _check_same_dtype(x, value)
    # the backward node torch records: a write through a view of x, index_put_ on x itself,
    # or (the key selects all of x) fill_/copy_
    if basic_part_is_view(tuple(x.shape), spec):
        name = "CopySlices"
    elif tensors:
        name = "IndexPutBackward0"
    elif not common.is_tensor(value) or value.dim() == 0:
        name = "FillBackward3"
    else:
        name = "CopyBackwards"
    return index_put(x, value, tensors, spec, _name=name)


# --- where a view's elements live in its base (rebuilding a view's history) -------------------


def _addresses(arr, origin):
    """Byte offset of every element of ``arr`` from ``origin``."""
    addr = np.full(arr.shape, origin, dtype=np.int64)
    for d, (n, stride) in enumerate(zip(arr.shape, arr.strides)):
        addr = addr + (np.arange(n, dtype=np.int64) * stride).reshape(
            (n,) + (1,) * (arr.ndim - d - 1))
    return addr


def view_positions(base, view):
    """For a numpy ``view`` into ``base``'s memory, the index of each of its elements in
    ``base``: one int64 array per base dim, each shaped like ``view``."""
    b_addr = _addresses(base, 0).reshape(-1)
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    v_addr = _addresses(view, offset)
    order = np.argsort(b_addr, kind="stable")
    sorted_addr = b_addr[order]
    found = np.minimum(np.searchsorted(sorted_addr, v_addr), max(len(order) - 1, 0))
    if v_addr.size and not np.array_equal(sorted_addr[found], v_addr):
        return None  # no longer aliases the base (its storage was replaced through .data)
    return np.unravel_index(order[found], base.shape)


def _position_key(base, view):
    pos = view_positions(base._data, view._data)
    if pos is None:
        return None, None
    return [Tensor._wrap(np.ascontiguousarray(p, dtype=np.int64)) for p in pos], \
        tuple(("t", i) for i in range(len(pos)))


def view_of_base(base, view):
    """``view`` recomputed from ``base`` (same elements), recording the autograd node that
    routes its gradient into the base: torch's AsStridedBackward0 (None if ``view`` no longer
    aliases ``base``)."""
    if base.dim() == 0:
        return _view(base, tuple(view.shape), True, "AsStridedBackward0")
    tensors, spec = _position_key(base, view)
    if tensors is None:
        return None
    return index(base, tensors, spec, _name="AsStridedBackward0")


def write_through_view(base, view, value):
    """The base's new history after ``view`` (a view of ``base``) took ``value`` in place:
    torch's CopySlices, the old base with the view's elements replaced by ``value`` (None if
    ``view`` no longer aliases ``base``)."""
    if base.dim() == 0:
        return index_put(base, value.reshape(()), [], (), _name="CopySlices")
    tensors, spec = _position_key(base, view)
    if tensors is None:
        return None
    return index_put(base, value, tensors, spec, _name="CopySlices")


# --- convenience forms built on index ---------------------------------------------------------


def select(x, dim, i):
    dim = common.wrap_dim(dim, x.dim())
    size = x.shape[dim]
    if not -size <= i < size:
        raise IndexError(f"select(): index {i} out of range for tensor of size "
                         f"[{', '.join(map(str, x.shape))}] at dimension {dim}")
    return index(x, [], (("s", None, None, None),) * dim + (int(i),))


def narrow(x, dim, start, length):
    dim = common.wrap_dim(dim, x.dim())
    start = int(start)
    if start < 0:
        start += x.shape[dim]
    if start + length > x.shape[dim] or length < 0:
        raise RuntimeError(f"start ({start}) + length ({length}) exceeds dimension size "
                           f"({x.shape[dim]}).")
    return index(x, [], (("s", None, None, None),) * dim + (("s", start, start + length, None),))


def _split_meta(x, dim, sizes):
    shape = tuple(x.shape)
    return tuple(Meta(shape[:dim] + (n,) + shape[dim + 1:], x.dtype) for n in sizes)


def _split_eager(x, dim, sizes):
    offsets = np.cumsum(sizes)[:-1]
    return tuple(np.split(x, offsets, axis=dim)) if len(sizes) > 1 else (x[...],)


def _fill_missing(ctx, grads):
    """Gradients of a multi-output op with zeros for the outputs that got none."""
    return [g if g is not None else creation.zeros(tuple(m.shape), dtype=m.dtype)
            for g, m in zip(grads, ctx.out_metas)]


def _split_backward(ctx, *grads):
    return (cat(_fill_missing(ctx, grads), ctx.attrs["dim"]),)


# one node, several views of the input: torch's SplitBackward0 / SplitWithSizesBackward0
split_op = register("split", infer=_split_meta, eager=_split_eager, backward=_split_backward,
                    num_outputs=-1, is_view=True,
                    grad_fn=lambda ctx: ctx.attrs.get("_name", "SplitBackward0"))


def _unbind_meta(x, dim):
    shape = tuple(x.shape)
    return tuple(Meta(shape[:dim] + shape[dim + 1:], x.dtype) for _ in range(shape[dim]))


def _unbind_backward(ctx, *grads):
    return (stack(_fill_missing(ctx, grads), ctx.attrs["dim"]),)


unbind_op = register(
    "unbind", infer=_unbind_meta,
    eager=lambda x, dim: tuple(np.moveaxis(x, dim, 0)[i] for i in range(x.shape[dim])),
    backward=_unbind_backward, num_outputs=-1, is_view=True, grad_fn="UnbindBackward0")

_MULTI_VIEW_NAMES = {"split": "Split", "split_with_sizes": "SplitWithSizes", "unbind": "Unbind"}


def _mark_multi_view(outs, name):
    """Outputs of an op returning several views: torch forbids modifying them in place while
    recording (``Tensor`` checks the mark)."""
    for i, o in enumerate(outs):
        o.__dict__["_multi_view"] = (_MULTI_VIEW_NAMES[name], i)
    return outs


def split(x, split_size_or_sections, dim=0):
    dim = common.wrap_dim(dim, x.dim())
    size = x.shape[dim]
    if isinstance(split_size_or_sections, (int, np.integer)):
        n = int(split_size_or_sections)
        if n < 0:
            raise RuntimeError(f"split expects split_size be non-negative, but got "
                               f"split_size={n}")
        if n == 0 and size != 0:
            raise RuntimeError(f"split_size can only be 0 if dimension size is 0, but got "
                               f"dimension size of {size}")
        sizes = [min(n, size - s) for s in range(0, size, n)] if n else [0]
        sizes = sizes or [0]
        name = "split"
    else:
        sizes = [int(v) for v in split_size_or_sections]
        if sum(sizes) != size or any(v < 0 for v in sizes):
            raise RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {size} "
                               f"(input tensor's size at dimension {dim}), but got "
                               f"split_sizes={sizes}")
        name = "split_with_sizes"
    outs = apply(split_op, x, dim=dim, sizes=tuple(sizes),
                 _name="SplitBackward0" if name == "split" else "SplitWithSizesBackward0")
    return _mark_multi_view(outs, name)


def chunk(x, chunks, dim=0):
    dim = common.wrap_dim(dim, x.dim())
    size = x.shape[dim]
    if chunks <= 0:
        raise RuntimeError(f"chunk expects `chunks` to be greater than 0, got: {chunks}")
    if size == 0:
        return split(x, [0] * chunks, dim)
    return split(x, -(-size // chunks), dim)


def unbind(x, dim=0):
    dim = common.wrap_dim(dim, x.dim())
    outs = apply(unbind_op, x, dim=dim)
    return _mark_multi_view(outs, "unbind")


def index_select(x, dim, idx):
    dim = common.wrap_dim(dim, x.dim())
    if idx.dim() > 1:
        raise IndexError("index_select(): Index is supposed to be a vector")
    return index(x, [idx.reshape(-1)], (("s", None, None, None),) * dim + (("t", 0),),
                 _name="IndexSelectBackward0")


def masked_fill(x, mask, value):
    if common.is_tensor(value):
        value = value.to(x.dtype)
    return where(mask, common.scalar_tensor(value, x.dtype) if not common.is_tensor(value)
                 else value, x, _name="MaskedFillBackward1" if common.is_tensor(value)
                 else "MaskedFillBackward0")


# --- data-dependent -------------------------------------------------------------------------

nonzero_op = register(
    "nonzero", eager_only="its output shape depends on the data, which a static graph cannot have", infer=lambda x: (_ for _ in ()).throw(RuntimeError(
        "nonzero has a data-dependent output shape")),
    eager=lambda x: np.stack(np.nonzero(x), axis=1), differentiable=False)


def nonzero(x, as_tuple=False):
    data = x._concrete("nonzero()")
    idx = np.nonzero(data) if data.ndim else np.nonzero(data.reshape(1))
    if data.ndim == 0 and not as_tuple:  # one row per nonzero element, no index columns
        return Tensor._wrap(np.zeros((len(idx[0]), 0), np.int64))
    if as_tuple:
        return tuple(Tensor._wrap(i.astype(np.int64)) for i in idx)
    return Tensor._wrap(np.stack(idx, axis=1).astype(np.int64) if idx else
                        np.zeros((0, 0), np.int64))


def masked_select(x, mask):
    shape = common.broadcast_shapes(tuple(x.shape), tuple(mask.shape))
    x = x.expand(shape) if tuple(x.shape) != shape else x
    spec, tensors = split_key(x, mask.expand(shape))
    return index(x, tensors, spec, _name="MaskedSelectBackward0")


# --- gather / scatter_add -----------------------------------------------------------------------


def _gather_meta(x, idx, dim):
    if idx.dtype is not _dtype.int64:
        raise RuntimeError("gather(): Expected dtype int64 for index")
    if len(idx.shape) != len(x.shape):
        raise RuntimeError("Index tensor must have the same number of dimensions as input tensor")
    return Meta(tuple(idx.shape), x.dtype)


def check_index_range(idx, size, dim):
    """gather/scatter's check of an index array along a dim of ``size``."""
    if np.any(idx < -size) or np.any(idx >= size):
        bad = idx[(idx < -size) | (idx >= size)].flat[0]
        raise RuntimeError(f"index {bad} is out of bounds for dimension {dim} with size {size}")


def _take_along(x, idx, dim):
    check_index_range(idx, x.shape[dim], dim)
    if idx.shape == x.shape or x.ndim == 0:
        return np.take_along_axis(x, idx, axis=dim)
    sl = tuple(slice(0, s) for s in idx.shape[:dim]) + (slice(None),) + tuple(
        slice(0, s) for s in idx.shape[dim + 1:])
    return np.take_along_axis(x[sl], idx, axis=dim)


gather_op = register(
    "gather", infer=_gather_meta, eager=_take_along, saves=(1,),
    backward=lambda ctx, g: (scatter_add(g.new_zeros(tuple(ctx.metas[0].shape)),
                                         ctx.attrs["dim"], ctx.inputs[1], g), None))


def _scatter_add_eager(x, idx, src, dim):
    check_index_range(idx, x.shape[dim], dim)
    out = np.array(x, copy=True)
    grids = list(np.indices(idx.shape, sparse=True))
    grids[dim] = idx
    np.add.at(out, tuple(grids), src[tuple(slice(0, s) for s in idx.shape)])
    return out


scatter_add_op = register(
    "scatter_add", infer=lambda x, idx, src, dim: common.same(x), eager=_scatter_add_eager,
    saves=(1,),
    backward=lambda ctx, g: (g, None, gather(g, ctx.attrs["dim"], ctx.inputs[1])))


def gather(x, dim, idx):
    return apply(gather_op, x, idx, dim=common.wrap_dim(dim, x.dim()))


def scatter_add(x, dim, idx, src):
    return apply(scatter_add_op, x, idx, src, dim=common.wrap_dim(dim, x.dim()))

