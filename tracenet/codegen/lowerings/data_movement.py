"""C lowerings of data-movement ops: indexing (``index``) and its gradient
(``index_backward``), a basic-indexed assignment (``index_put``), ``cat``, ``stack``,
``split``, ``unbind`` and ``permute``; ``view`` and ``detach`` share their input's buffer.

Every value in compiled code owns a contiguous buffer, so each of these is a set of strided
block copies between buffers. A copy is described by its element offsets in source and
destination and a loop nest of ``(size, source stride, destination stride)`` dims, all
compile-time constants; dims of size 1 are dropped and dims contiguous in both buffers merged,
so that the innermost loop is usually one ``memcpy`` (or a converting loop when ``cat``/
``stack`` promote dtypes). These are rendered by ``templates/data_copy.c.j2``.

Indexing with index tensors (torch's two-step rule: ints, slices and None first, then the index
tensors on that view) loops over the output and adds, per index tensor, its value times the
indexed dim's stride (``templates/data_gather.c.j2``); its gradient accumulates into zeros.
Negative indices wrap; an out-of-range index raises eager mode's error when gathering (the
gather checks every index first) and is skipped when scattering (the gather before it checked
it), so compiled code never touches memory outside a buffer.
"""
import numpy as np

from ..._sym import as_size, has_symbols, is_one, same_shape, same_size
from ...ops.common import numel
from ...ops.index import has_tensors, np_key, split_np_key, symbolic_view
from ..base import Kernel, LoweringError, alias_lowering, offset_expr, ctype, lowering, \
    node_lines, signature, where
from ..templates import render


# every compiled value is a contiguous buffer: a reshape or a detach is the same buffer
alias_lowering("view", "detach")


def _contiguous_strides(shape):
    return tuple(numel(shape[d + 1:]) for d in range(len(shape)))


def _merge_dims(sizes, src_strides, dst_strides):
    """The loop nest of a strided copy: size-1 dims dropped, dims that are contiguous in both
    source and destination merged into one."""
    merged = []
    for n, s, d in zip(sizes, src_strides, dst_strides):
        if is_one(n):
            continue
        # (merging is an optimisation: sizes equal only for some values of a symbol stay apart)
        if merged and same_size(merged[-1][1], s * n) and same_size(merged[-1][2], d * n):
            merged[-1] = (merged[-1][0] * n, s, d)
        else:
            merged.append((n, s, d))
    return merged


class _Copy:
    """``dst[dst_off + sum(i_k * ds_k)] = src[src_off + sum(i_k * ss_k)]`` over the dims."""

    def __init__(self, src, dst, src_off, dst_off, sizes, src_strides, dst_strides, src_ct,
                 dst_ct):
        self.src, self.dst = src, dst
        self.src_off, self.dst_off = as_size(src_off), as_size(dst_off)
        # (a symbolic size that may be 0 just loops zero times)
        self.empty = any(same_size(n, 0) for n in sizes)
        dims = _merge_dims(sizes, src_strides, dst_strides)
        self.memcpy = None  # length of the contiguous innermost run, copied with memcpy
        if dims and is_one(dims[-1][1]) and is_one(dims[-1][2]) and src_ct == dst_ct:
            self.memcpy = dims.pop()[0]
        self.dims = [dict(n=n, ss=s, ds=d) for n, s, d in dims]
        if src_ct == dst_ct:
            self.convert = "{}"
        elif dst_ct == "uint8_t":
            self.convert = "({} != 0)"
        else:
            self.convert = f"(({dst_ct}){{}})"

    def index(self, which):
        off = self.src_off if which == "src" else self.dst_off
        key = "ss" if which == "src" else "ds"
        terms = [] if same_size(off, 0) else [str(off)]
        for k, d in enumerate(self.dims):
            if not same_size(d[key], 0):
                terms.append(f"i{k}" if is_one(d[key]) else f"i{k} * {d[key]}")
        return " + ".join(terms) or "0"


def _kernel(name, nodes, reads, writes, copies, zero=()):
    """One kernel doing ``copies`` (after zero-filling the written roles in ``zero``)."""
    copies = [c for c in copies if not c.empty]
    sizes = {role: numel(v.shape) for role, v in writes}
    src = render("data_copy.c.j2", name=name, node_lines=node_lines(nodes),
                 signature=signature(reads, writes), copies=copies,
                 zero=[(role, sizes[role]) for role in zero if sizes[role]])
    return Kernel(name, reads, writes, src)


# --- indexing ---------------------------------------------------------------------------------


def _probe_view(shape, key):
    """``(offset, shape, strides)`` in elements of ``x[key]`` (a basic numpy key) for a
    contiguous ``x`` of ``shape``, computed by numpy on a strided probe of one-byte elements
    (no memory is touched)."""
    probe = np.lib.stride_tricks.as_strided(np.zeros(1, np.int8), shape=tuple(shape),
                                            strides=_contiguous_strides(shape))
    if Ellipsis not in key:
        key = tuple(key) + (Ellipsis,)
    view = probe[key]
    offset = view.__array_interface__["data"][0] - probe.__array_interface__["data"][0]
    return offset, view.shape, view.strides


def basic_view(shape, spec):
    """``(offset, shape, strides)`` in elements of ``x[spec]`` (a spec without index tensors)
    for a contiguous ``x`` of ``shape``."""
    if has_symbols(shape):
        return symbolic_view(tuple(shape), np_key(spec, []))
    return _probe_view(shape, np_key(spec, []))


def _indexed_dims(ndim, second):
    """For each dim of the basic view, the index-tensor number that indexes it (or None)."""
    consumed = sum(1 for k in second if k is not Ellipsis)
    dims = []
    for k in second:
        if k is Ellipsis:
            dims += [None] * (ndim - consumed)
        elif isinstance(k, np.ndarray):
            dims.append(len([d for d in dims if d is not None]))
        else:
            dims.append(None)
    return dims + [None] * (ndim - len(dims))


def advanced_geometry(shape, spec, idx_shapes):
    """How ``x[spec]`` with index tensors reads a contiguous ``x``: ``(offset, loops, gathers)``.

    ``loops`` are the output dims in order, each ``(size, x stride, ("b", j) or None)``: a
    plain strided dim of ``x`` or dim ``j`` of the index tensors' broadcast shape. ``gathers``
    has one ``(x stride, dim size, index strides over the broadcast dims)`` per index tensor:
    its value, wrapped if negative, times the stride adds to the offset."""
    dummies = [np.zeros(s, np.int64) for s in idx_shapes]
    first, second = split_np_key(spec, dummies)
    offset, vshape, vstrides = _probe_view(shape, tuple(first))
    which = _indexed_dims(len(vshape), second)
    bshape = np.broadcast_shapes(*idx_shapes)
    adv = [d for d, k in enumerate(which) if k is not None]
    gathers = []
    for k, s in enumerate(idx_shapes):
        d = which.index(k)
        padded = (1,) * (len(bshape) - len(s)) + tuple(s)
        own = _contiguous_strides(padded)
        gathers.append((vstrides[d], vshape[d],
                        [0 if n == 1 else st for n, st in zip(padded, own)]))
    plain = [(vshape[d], vstrides[d], None) for d in range(len(vshape)) if which[d] is None]
    bloops = [(n, 0, ("b", j)) for j, n in enumerate(bshape)]
    if adv == list(range(adv[0], adv[0] + len(adv))):  # adjacent: the result dims go there
        before = sum(1 for d in range(adv[0]) if which[d] is None)
        loops = plain[:before] + bloops + plain[before:]
    else:
        loops = bloops + plain
    return offset, loops, gathers


def _gather_kernel(name, node, x_role, x, g_role, g, out_shape, spec, idx, scatter):
    """``index`` with index tensors (gather) or its gradient (scatter-add into zeros). The
    index values are read once per position of the broadcast index dims; the plain dims
    inside the last of those loop over a fixed base offset."""
    offset, loops, gathers = advanced_geometry(tuple(out_shape if scatter else x.shape), spec,
                                               [tuple(v.shape) for v in idx])
    names = [f"i{d}" for d in range(len(loops))]
    split = max([d + 1 for d, (_, _, b) in enumerate(loops) if b is not None], default=0)

    def term(var, stride):
        return var if stride == 1 else f"{var} * {stride}"

    bvar = {b[1]: v for v, (_, _, b) in zip(names, loops) if b is not None}
    outer = [str(offset)] if offset else []
    outer += [term(v, st) for v, (_, st, b) in zip(names[:split], loops[:split])
              if b is None and st]
    inner = [term(v, st) for v, (_, st, _) in zip(names[split:], loops[split:]) if st]
    reads = [(g_role, g)] if scatter else [(x_role, x)]
    picks = []
    for k, (stride, size, bstrides) in enumerate(gathers):
        role = f"idx{k}"
        reads.append((role, idx[k]))
        pos = " + ".join(term(bvar[j], st) for j, st in enumerate(bstrides) if st) or "0"
        picks.append(dict(role=role, pos=pos, size=size, stride=stride,
                          count=numel(idx[k].shape)))
    # eager's message names the index tensor's position among them
    checks = [] if scatter else [
        (IndexError, f"index {{0}} is out of bounds for dimension {k} with size {p['size']}")
        for k, p in enumerate(picks)]
    out = node.outputs[0]
    src = render("data_gather.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, [("out", out)], checks=bool(checks)),
                 loops=[n for n, _, _ in loops],
                 names=names, split=split, base=" + ".join(outer) or "0",
                 at=" + ".join(["at"] + inner), picks=picks, scatter=scatter, x_role=x_role,
                 g_role=g_role, numel=numel(out.shape), ctype=ctype(out))
    return Kernel(name, reads, [("out", out)], src, checks=checks)


@lowering("index")
def lower_index(name, node, exported, target):
    x, out = node.inputs[0], node.outputs[0]
    spec = node.attrs["spec"]
    if has_tensors(spec):
        return _gather_kernel(name, node, "x", x, None, None, None, spec, node.inputs[1:],
                              scatter=False)
    offset, shape, strides = basic_view(x.shape, spec)
    assert same_shape(shape, out.shape), (shape, out.shape)
    copy = _Copy("x", "out", offset, 0, shape, strides, _contiguous_strides(shape), ctype(x),
                 ctype(out))
    return _kernel(name, [node], [("x", x)], [("out", out)], [copy])


@lowering("index_backward")
def lower_index_backward(name, node, exported, target):
    g, out = node.inputs[0], node.outputs[0]
    spec = node.attrs["spec"]
    if has_tensors(spec):
        return _gather_kernel(name, node, None, None, "g", g, out.shape, spec, node.inputs[1:],
                              scatter=True)
    offset, shape, strides = basic_view(out.shape, spec)
    assert same_shape(shape, g.shape), (shape, g.shape)
    copy = _Copy("g", "out", 0, offset, shape, _contiguous_strides(shape), strides, ctype(g),
                 ctype(out))
    return _kernel(name, [node], [("g", g)], [("out", out)], [copy], zero=("out",))


def _broadcast_strides(value_shape, shape):
    """The element strides that read a contiguous value of ``value_shape`` broadcast to
    ``shape`` (leading dims of size 1 dropped, as ``index_put`` broadcasts; 0 along the dims the
    value repeats)."""
    value_shape = tuple(value_shape)
    while len(value_shape) > len(shape) and is_one(value_shape[0]):
        value_shape = value_shape[1:]
    padded = (1,) * (len(shape) - len(value_shape)) + value_shape
    own = _contiguous_strides(padded)
    return tuple(0 if is_one(n) else st for n, st in zip(padded, own))


@lowering("index_put")
def lower_index_put(name, node, exported, target):
    """``x[key] = v`` for a basic key (ints, slices of any step, None, ...): a copy of ``x``,
    then ``v`` broadcast into the elements the key selects."""
    x, v, out = node.inputs[0], node.inputs[1], node.outputs[0]
    spec = node.attrs["spec"]
    if has_tensors(spec):
        raise LoweringError("an assignment through index tensors or a mask (x[idx] = v, "
                            "index_put) has no C lowering: compiled code writes only through "
                            "ints, slices, None and ... (or a mask of the tensor's leading "
                            f"dims){where(node)}; run this model in eager mode (without "
                            "tracenet.compile)")
    offset, shape, strides = basic_view(x.shape, spec)
    part = _Copy("v", "out", 0, offset, shape, _broadcast_strides(v.shape, shape), strides,
                 ctype(v), ctype(out))
    unchanged = _unchanged_blocks(tuple(x.shape), spec, ctype(x), ctype(out))
    return _kernel(name, [node], [("x", x), ("v", v)], [("out", out)], unchanged + [part])


def _unchanged_blocks(shape, spec, x_ct, out_ct):
    """Copies of the elements of ``x`` that ``x[spec] = v`` leaves as they are: for a key
    taking a run of one dim (an int, a slice of step 1, of a dim of known size), the blocks
    before and after it along that dim; for any other key all of ``x`` (then overwritten).
    (The blocks spare copying the written part twice: on a (32, 64, 16, 16) float32 ``h``,
    ``h = x * 2; h[:, 16:48] = 0.0; return h * 3`` takes 0.36 ms instead of 0.43, one thread.)"""
    run = _written_run(shape, spec)
    if run is None:
        return [_Copy("x", "out", 0, 0, (numel(shape),), (1,), (1,), x_ct, out_ct)]
    dim, start, stop = run
    outer, inner, size = numel(shape[:dim]), numel(shape[dim + 1:]), shape[dim]
    return [_Copy("x", "out", a * inner, a * inner, (outer, (b - a) * inner),
                  (size * inner, 1), (size * inner, 1), x_ct, out_ct)
            for a, b in ((0, start), (stop, size)) if b > a]


def _written_run(shape, spec):
    """``(dim, start, stop)`` of the one dim a basic key takes part of, as a run of
    consecutive indices of a dim of known size (all of the others); None for any other key."""
    items = [item for item in spec if item is not None]
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [("s", None, None, None)] * (len(shape) - len(items) + 1)
    run = None
    for dim, item in enumerate(items):
        if item == ("s", None, None, None):
            continue
        size = shape[dim]
        if run is not None or has_symbols((size,)):
            return None
        if isinstance(item, int):
            start = item + size if item < 0 else item
            run = (dim, start, start + 1)
        else:
            start, stop, step = slice(*item[1:]).indices(size)
            if step != 1:
                return None
            run = (dim, start, max(stop, start))
    return run


# --- concatenation --------------------------------------------------------------------------


def _joined(node, new_dim):
    """Copies of every input into its block of the output of cat (``new_dim`` False) or stack
    (True) along ``dim``."""
    out = node.outputs[0]
    dim = node.attrs["dim"]
    oshape = tuple(out.shape)
    outer = numel(oshape[:dim])
    inner = numel(oshape[dim + 1:])
    total = oshape[dim]
    reads, copies, start = [], [], 0
    for k, v in enumerate(node.inputs):
        n = 1 if new_dim else (v.shape[dim] if len(v.shape) == len(oshape) else 0)
        if numel(v.shape) == 0 or n == 0:  # contributes nothing (also torch's legacy (0,))
            continue
        role = f"in{k}"
        reads.append((role, v))
        copies.append(_Copy(role, "out", 0, start * inner, (outer, n * inner),
                            (n * inner, 1), (total * inner, 1), ctype(v), ctype(out)))
        start += n
    return reads, copies


@lowering("cat")
def lower_cat(name, node, exported, target):
    reads, copies = _joined(node, new_dim=False)
    return _kernel(name, [node], reads, [("out", node.outputs[0])], copies)


@lowering("stack")
def lower_stack(name, node, exported, target):
    reads, copies = _joined(node, new_dim=True)
    return _kernel(name, [node], reads, [("out", node.outputs[0])], copies)


# --- splitting --------------------------------------------------------------------------------


def _parts(name, node, exported, sizes, dim):
    """Copies of consecutive blocks of ``sizes`` along ``dim`` of the input into the outputs
    (only those some later node reads)."""
    x = node.inputs[0]
    shape = tuple(x.shape)
    outer = numel(shape[:dim])
    inner = numel(shape[dim + 1:])
    total = shape[dim] if shape else 1
    writes, copies, start = [], [], 0
    for j, (n, v) in enumerate(zip(sizes, node.outputs)):
        if v in exported:
            role = f"out{j}"
            writes.append((role, v))
            copies.append(_Copy("x", role, start * inner, 0, (outer, n * inner),
                                (total * inner, 1), (n * inner, 1), ctype(x), ctype(v)))
        start += n
    if not writes:
        return None
    return _kernel(name, [node], [("x", x)], writes, copies)


@lowering("split")
def lower_split(name, node, exported, target):
    return _parts(name, node, exported, node.attrs["sizes"], node.attrs["dim"])


@lowering("unbind")
def lower_unbind(name, node, exported, target):
    dim = node.attrs["dim"]
    return _parts(name, node, exported, [1] * node.inputs[0].shape[dim], dim)


# --- permute: a transposing copy ----------------------------------------------------------------


@lowering("permute")
def lower_permute(name, node, exported, target):
    x, out = node.inputs[0], node.outputs[0]
    dims = node.attrs["dims"]
    in_shape = tuple(x.shape)
    # output loop variable d walks input dim dims[d]
    names = [None] * len(in_shape)
    for d, src in enumerate(dims):
        names[src] = f"i{d}"
    reads, writes = [("x", x)], [("out", out)]
    src = render("permute.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), out_shape=tuple(out.shape),
                 offset=offset_expr(in_shape, names))
    return Kernel(name, reads, writes, src)



@lowering("size_value")
def lower_size_value(name, node, exported, target):
    """A symbolic size as a number: one store of its C expression."""
    value, out = node.attrs["value"], node.outputs[0]
    writes = [("out", out)]
    symbols = value.symbols()
    src = "\n".join([*(f"/* {line} */" for line in node_lines([node])),
                     f"static void {name}({signature([], writes, symbols=symbols)})",
                     "{", f"    out[0] = ({ctype(out)}){value};", "}", ""])
    return Kernel(name, [], writes, src, symbols=symbols)
