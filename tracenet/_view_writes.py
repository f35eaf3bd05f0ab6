"""In-place writes through views of traced tensors: what a view remembers of its root, whether
a write through it maps back, and the root's new value (called by ``trace.Tracer`` as views are
recorded and read, and by ``_tensor_methods`` as traced tensors are written in place)."""
from . import _grad_mode as grad_mode
from ._sym import Sym
from ._trace_errors import TraceError
from .ops import shape as _shape_ops
from .ops.common import traced_tensor


# --- in-place ops on traced tensors and their views -------------------------------------------
# An in-place op on a traced tensor rebinds its ``_ir`` to the new value and bumps its version
# counter (``_tensor_methods.inplace``). A graph input changed so becomes an extra output that
# the runtime copies into the caller's tensor, advancing its version by as many writes
# (``graph.input_updates``), as buffers' updates are (``graph.state_updates``).
#
# Eager mode writes through a view into its base; the trace has no memory to share, so a view
# of a traced tensor (its root: an input, a parameter or buffer, an intermediate) remembers the
# root, the root's count of traced writes when the view was made, and the view ops from the
# root (``_view_of``; views of an input also share its version counter). A
# write through a view whose steps map back (``_map_back_steps``: reshapes, permutes, detach,
# a basic index of one dim) rebinds the root to the view's new value mapped back; any other
# write through a view, or a read of a view made before its root changed, would differ from
# eager mode and raises ``TraceError``.


def _map_back_steps(steps, layout_known):
    """The steps that map a written view back onto its root, from the view ops that made it
    (``steps``: (op name, source shape, attrs, source value) each, the root's first;
    ``layout_known``: eager mode's root is row-major); None when one cannot be mapped back: a
    view of elements of its source other than one basic slice or index of one dim (expand,
    split, a stepped slice...), or a reshape that eager mode may make as a copy (of a source
    of unknown layout)."""
    for name, shape, attrs, _ in steps:
        if name == "permute":
            layout_known = False
        elif name == "view":
            if not (layout_known or not attrs["copy_ok"] or
                    _same_sizes(_not_ones(shape), _not_ones(attrs["shape"]))):
                return None
        elif name == "index":
            part = _indexed_part(attrs["spec"])
            if part is None:
                return None
            layout_known = layout_known and part is _ALL
        elif name != "detach":
            return None
    return steps


_ALL = "all"


def _indexed_part(spec):
    """For a basic ``index`` spec: (dim, item) of its one item that does not take all of a
    dim (an int, or a slice of step 1), ``_ALL`` when every item takes all, None for any other
    key (tensors, None, Ellipsis, a stepped slice, several partial items)."""
    part = _ALL
    for dim, item in enumerate(spec):
        if item == ("s", None, None, None):
            continue
        if part is not _ALL or not (type(item) is int or (
                isinstance(item, tuple) and item[0] == "s" and item[3] in (None, 1))):
            return None
        part = (dim, item)
    return part


def _put_back_index(source, new, spec):
    """``source`` with the part the basic key ``spec`` selects replaced by ``new``: the
    unchanged parts around it concatenated with it along its dim."""
    part = _indexed_part(spec)
    if part is _ALL:
        return new
    dim, item = part
    size = source.shape[dim]
    if type(item) is int:
        start = item + size if item < 0 else item
        stop, new = start + 1, new.unsqueeze(dim)
    else:
        start, stop = _slice_bounds(item[1], item[2], size)
    pieces = [source.narrow(dim, 0, start)] if start > 0 else []
    pieces.append(new)
    if stop is not size and stop < size:
        pieces.append(source.narrow(dim, stop, size - stop))
    return _shape_ops.cat(pieces, dim) if len(pieces) > 1 else new


def _slice_bounds(start, stop, size):
    """A step-1 slice's bounds in ``[0, size]``, as Python's (``stop`` None: ``size``)."""
    start = 0 if start is None else max(start + size, 0) if start < 0 else min(start, size)
    if stop is None:
        return start, size
    stop = max(stop + size, 0) if stop < 0 else min(stop, size)
    return start, max(stop, start)


def _not_ones(shape):
    return [s for s in shape if not (type(s) is int and s == 1)]  # (a symbol is not known 1)


def _same_sizes(a, b):
    """Whether the sizes ``a`` and ``b`` are the same for every value of the size symbols,
    answered without specialising on them."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, Sym) or isinstance(y, Sym):
            if not (isinstance(x, Sym) and isinstance(y, Sym) and x.terms == y.terms):
                return False
        elif x != y:
            return False
    return True


def _view_writes(root):
    return root.__dict__.get("_traced_writes", 0)


def mark_views(op, source, views, attrs):
    """Record on the traced ``views`` (outputs of the view ``op`` of ``source``) their root, the
    root's write count, the view ops from the root and whether eager mode's root is row-major
    (what a write through the view needs: ``_map_back_steps``; nothing is decided here, so
    that a trace without such writes never compares sizes)."""
    d = source.__dict__
    if "_view_of" in d:
        root, _, steps, layout_known = d["_view_of"]
    else:
        root, steps = source, ()
        # inputs, parameters and buffers are row-major in eager mode; intermediates may not be
        layout_known = "_input_index" in d or source._data is not None
        d.setdefault("_traced_writes", 0)
    steps += ((op.name, tuple(source.shape), attrs, source._ir),)
    for v in views:
        if "_input_index" in root.__dict__:
            v._vc = root._vc  # (writes through it count for the caller's tensor)
        v.__dict__["_view_of"] = (root, _view_writes(root), steps, layout_known)


def _root_description(root):
    d = root.__dict__
    if "_input_index" in d:
        return f"input {d['_input_index']}"
    if root._data is not None:
        return "a parameter or buffer"
    return "a tensor computed in the traced code"


def check_view_current(t):
    """A view of a traced tensor, read after its root changed in place, would read the old
    values in compiled code (eager mode's sees the new ones)."""
    root, writes, _, _ = t.__dict__["_view_of"]
    if _view_writes(root) != writes:
        raise TraceError(f"a view of {_root_description(root)} is read after an in-place op "
                         "changed it: compiled code does not support reading a view taken "
                         "before such a change yet (take the view after the change, or call "
                         "it eagerly, where it runs)")


def check_inplace_on_traced(t, op_name):
    """Raise for the in-place ``op_name`` on the traced tensor ``t`` through a view that cannot
    be mapped back onto its root, which compiled code could not carry to it (``TraceError``),
    or of a leaf that requires grad (eager mode's error); True when ``t`` is an input that
    requires grad and is not a leaf, which takes the op as the caller's tensor does in eager
    mode (called from ``_tensor_methods._check_inplace_allowed``)."""
    d = t.__dict__
    if "_view_of" not in d:
        return "_input_is_nonleaf" in d
    root, _, steps, layout_known = d["_view_of"]
    grad_on = grad_mode.is_grad_enabled()
    if grad_on and root._ir.producer is None and root._ir.requires_grad \
            and "_input_is_nonleaf" not in root.__dict__:
        raise RuntimeError("a view of a leaf Variable that requires grad is being used in an "
                           "in-place operation.")
    check_view_current(t)
    steps = _map_back_steps(steps, layout_known)
    # (the root would take a value without its history, where eager mode's keeps it)
    untracked = root._requires_grad and (
        not grad_on or any(name == "detach" for name, _, _, _ in steps or ()))
    if steps is None or untracked:
        raise TraceError(f"{op_name} writes in place through a view of "
                         f"{_root_description(root)}: compiled code does not support this "
                         "write through a view of a traced tensor yet (a view of elements "
                         "other than all of it or a basic index of one dim, a reshape eager "
                         "mode may copy, or a detached view or a write under no_grad of a "
                         "tensor that requires grad; write the tensor itself, or call it "
                         "eagerly, where it runs)")
    return False


def note_traced_write(t):
    """After an in-place op on the traced ``t`` (called from ``_tensor_methods.inplace``): a
    root counts the write; a view's root takes the view's new value mapped back, and the view
    stays current."""
    d = t.__dict__
    if "_traced_writes" in d:
        d["_traced_writes"] += 1
    if "_view_of" not in d:
        return
    root, _, steps, layout_known = d["_view_of"]
    new = t
    for name, shape, attrs, source in reversed(_map_back_steps(steps, layout_known)):
        if name == "view":
            new = new.reshape(shape)
        elif name == "permute":
            new = new.permute(_shape_ops._inverse(attrs["dims"]))
        elif name == "index":  # (the source's value is current: the view was, see above)
            new = _put_back_index(traced_tensor(source), new, attrs["spec"])
    root._ir, root._requires_grad = new._ir, new._requires_grad
    root.__dict__["_traced_writes"] += 1
    if "_input_index" in root.__dict__ and _reshapes_memory(steps):
        root.__dict__["_written_as_row_major"] = True  # (see _record_input_updates)
    d["_view_of"] = (root, _view_writes(root), steps, layout_known)


def _reshapes_memory(steps):
    """Whether the view ops ``steps`` include a reshape that eager mode makes as a view only of
    a row-major source (and as a copy of another)."""
    return any(name == "view" and attrs["copy_ok"] and
               not _same_sizes(_not_ones(shape), _not_ones(attrs["shape"]))
               for name, shape, attrs, _ in steps)
