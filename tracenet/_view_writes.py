"""In-place writes through views of traced tensors: what a view remembers of its root, whether
a write through it maps back, and the root's new value (called by ``trace.Tracer`` as views are
recorded and read, and by ``_tensor_methods`` as traced tensors are written in place)."""
from . import _grad_mode as grad_mode
from ._sym import Sym
from ._trace_errors import TraceError
from .ops import index as _index_ops, shape as _shape_ops
from .ops.common import traced_tensor


# --- in-place ops on traced tensors and their views -------------------------------------------
# An in-place op on a traced tensor rebinds its ``_ir`` to the new value and bumps its version
# counter (``_tensor_methods.inplace``). A graph input changed so becomes an extra output that
# the runtime copies into the caller's tensor, advancing its version by as many writes
# (``graph.input_updates``), as buffers' updates are (``graph.state_updates``).
#
# Eager mode writes through a view into its base; the trace has no memory to share, so a view
# of a traced tensor (its root: an input, a parameter or buffer, an intermediate) remembers the
# root, the root's count of traced writes when the view was last current, and the view ops
# from the root, each as a step (``_view_of``; views of an input also share its version
# counter). ``split``/``chunk``/``unbind`` outputs and ``narrow``/``select`` are recorded as the
# basic index of their part (``_step_of``), so that every step is a reshape, a permute, a
# detach, an expand or a basic index. A write through a view whose steps map back
# (``_map_back_steps``: all but an expand and a reshape eager mode may make as a copy) rebinds
# the root to the view's new value mapped back, step by step from the view to the root, each
# step's inverse: a reshape back, the inverse permute, or the written part put into its source
# (``index_put``, which has a C lowering for basic keys), the sources being the same views of
# the root's value now (``_sources_now``). The root logs what each write covered (the written
# view's steps, or all of it). A view read after a write that may have changed it is taken
# again of the root's new value (``check_view_current``), as eager mode's view sees its base's
# new memory; one provably apart from every write since (another chunk, another row) is left
# as it was; a reshape eager mode may have made as a copy raises ``TraceError``, as does any
# write through a view that does not map back.


def _map_back_steps(steps, layout_known):
    """The steps that map a written view back onto its root, from the view ops that made it
    (``steps``: (op name, source shape, attrs) each, the root's first;
    ``layout_known``: eager mode's root is row-major); None when one cannot be mapped back: an
    expand (eager mode refuses to write it), or a reshape that eager mode may make as a copy (of
    a source of unknown layout)."""
    for name, shape, attrs in steps:
        if name == "permute":
            layout_known = False
        elif name == "view":
            if not (layout_known or not attrs["copy_ok"] or
                    _same_sizes(_not_ones(shape), _not_ones(attrs["shape"]))):
                return None
        elif name == "index":
            layout_known = layout_known and _selects_all(attrs["spec"])
        elif name != "detach":
            return None
    return steps


_FULL = ("s", None, None, None)


def _selects_all(spec):
    """Whether the basic key ``spec`` takes all of its source (full slices, None, ...)."""
    return all(item is None or item is Ellipsis or item == _FULL for item in spec)


def _step_of(op, source, attrs, output):
    """The step a view op takes from ``source`` to its ``output``-th output: the op's own, or
    for ``split``/``unbind`` the basic index of that output's part."""
    shape = tuple(source.shape)
    if op.name == "split":
        dim, sizes = attrs["dim"], attrs["sizes"]
        start = sum(sizes[:output])
        spec = (_FULL,) * dim + (("s", start, start + sizes[output], None),)
        return "index", shape, {"spec": spec}
    if op.name == "unbind":
        return "index", shape, {"spec": (_FULL,) * attrs["dim"] + (output,)}
    return op.name, shape, attrs


def _put_back_index(source, new, spec):
    """``source`` with the part the basic key ``spec`` selects replaced by ``new``."""
    if _selects_all(spec):
        return new.reshape(tuple(source.shape))  # (only dims of size 1 added or dropped)
    return _index_ops.index_put(source, new, [], spec)


def _view_forward(source, step, shape):
    """The view ``step`` takes of ``source`` (of the value ``source`` has now), of ``shape``."""
    name, _, attrs = step
    if name == "view":
        return source.reshape(shape)
    if name == "permute":
        return source.permute(attrs["dims"])
    if name == "index":
        return _index_ops.index(source, [], attrs["spec"])
    return source.detach() if name == "detach" else source


# --- which parts of the root writes cover: a view stays current after a write apart from it ---


def _covered(spec, shape):
    """Per dim of the source (of ``shape``) the basic key ``spec`` indexes: the set of indices
    it takes, or None where that is not known without the sizes' values (all of a dim)."""
    items = [item for item in spec if item is not None]
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [_FULL] * (len(shape) - len(items) + 1)
    sets = []
    for dim, size in enumerate(shape):
        item = items[dim] if dim < len(items) else _FULL
        if not isinstance(size, int):
            sets.append(None)
        elif type(item) is int:
            sets.append({item % size} if size else set())
        else:
            sets.append(set(range(*slice(*item[1:]).indices(size))))
    return sets


def _apart(spec_a, spec_b, shape):
    """Whether the basic keys ``spec_a`` and ``spec_b`` of a source of ``shape`` share no
    element: along some dim, the indices they take do not meet."""
    return any(a is not None and b is not None and not a & b
               for a, b in zip(_covered(spec_a, shape), _covered(spec_b, shape)))


def _same_step(a, b):
    return a[0] == b[0] and _same_sizes(a[1], b[1]) and repr(a[2]) == repr(b[2])


def _written_apart(written, steps):
    """Whether a write through the view of steps ``written`` left the view of ``steps``
    unchanged: the two take the same steps to a source, then basic indices of it that share no
    element (a write of all of the root, ``written`` empty, changes every view)."""
    for a, b in zip(written, steps):
        if not _same_step(a, b):
            return a[0] == b[0] == "index" and _same_sizes(a[1], b[1]) and \
                _apart(a[2]["spec"], b[2]["spec"], a[1])
    return False


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


def _write_log(root):
    return root.__dict__.get("_traced_writes", ())


def mark_views(op, source, views, attrs):
    """Record on the traced ``views`` (outputs of the view ``op`` of ``source``) their root, the
    root's write count, the view ops from the root and whether eager mode's root is row-major
    (what a write through the view needs: ``_map_back_steps``; nothing is decided here, so
    that a trace without such writes never compares sizes). An index with index tensors is a
    copy in eager mode, not a view: it is not marked."""
    if op.name == "index" and _index_ops.has_tensors(attrs["spec"]):
        return
    d = source.__dict__
    if "_view_of" in d:
        root, _, steps, layout_known = d["_view_of"]
    else:
        root, steps = source, ()
        # inputs, parameters and buffers are row-major in eager mode; intermediates may not be
        layout_known = "_input_index" in d or source._data is not None
        d.setdefault("_traced_writes", [])  # (the steps of each write: a log of what changed)
    current = len(_write_log(root))
    for i, v in enumerate(views):
        if "_input_index" in root.__dict__:
            v._vc = root._vc  # (writes through it count for the caller's tensor)
        v.__dict__["_view_of"] = (root, current, steps + (_step_of(op, source, attrs, i),),
                                  layout_known)


def _root_description(root):
    d = root.__dict__
    if "_input_index" in d:
        return f"input {d['_input_index']}"
    if root._data is not None:
        return "a parameter or buffer"
    return "a tensor computed in the traced code"


def check_view_current(t):
    """Bring the view ``t`` of a traced tensor up to date before it is read: after a write to
    its root that may have changed it, it is taken again of the root's value now (eager mode's
    view sees the new values in its base's memory). A view eager mode may have made as a copy
    (a reshape of a source of unknown layout) has nothing to follow, and raises: its old value
    would differ from eager mode's only if it is a view there."""
    root, current, steps, layout_known = t.__dict__["_view_of"]
    log = _write_log(root)
    if all(_written_apart(written, steps) for written in log[current:]):
        if current != len(log):  # (apart from every write since: current now)
            t.__dict__["_view_of"] = (root, len(log), steps, layout_known)
        return
    if _map_back_steps(steps, layout_known) is None:
        raise TraceError(f"a view of {_root_description(root)} is read after an in-place op "
                         "changed it: compiled code does not support reading a view taken "
                         "before such a change yet when eager mode may have made it as a copy "
                         "(a reshape of a tensor of unknown layout; take the view after the "
                         "change, or call it eagerly, where it runs)")
    value = _taken_again(root, steps, tuple(t.shape))
    t._ir, t._requires_grad = value._ir, value._requires_grad
    t.__dict__["_view_of"] = (root, len(_write_log(root)), steps, layout_known)


def _taken_again(root, steps, shape):
    """The view of ``steps`` taken of the root's value now (of ``shape``)."""
    sources = _sources_now(root, steps)
    return _view_forward(sources[-1], steps[-1], shape)


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
        not grad_on or any(name == "detach" for name, _, _ in steps or ()))
    if steps is None or untracked:
        raise TraceError(f"{op_name} writes in place through a view of "
                         f"{_root_description(root)}: compiled code does not support this "
                         "write through a view of a traced tensor yet (an expand, a reshape "
                         "eager mode may copy, or a detached view or a write under no_grad of "
                         "a tensor that requires grad; write the tensor itself, or call it "
                         "eagerly, where it runs)")
    return False


def _sources_now(root, steps):
    """The values the view's steps take their views of, of the root's value now: the root,
    then each view of it again (a recorded source may predate a write through a part apart
    from the view)."""
    sources = [root]
    for step, nxt in zip(steps, steps[1:]):
        sources.append(_view_forward(sources[-1], step, nxt[1]))
    return sources


def note_traced_write(t):
    """After an in-place op on the traced ``t`` (called from ``_tensor_methods.inplace``): a
    root logs the write of all of it; a view's root takes the view's new value mapped back,
    the write logs the view's steps, and the view stays current."""
    d = t.__dict__
    if "_traced_writes" in d:
        d["_traced_writes"].append(())
    if "_view_of" not in d:
        return
    root, _, steps, layout_known = d["_view_of"]
    mapped = _map_back_steps(steps, layout_known)
    new = t
    sources = _sources_now(root, mapped)
    for (name, shape, attrs), source in zip(reversed(mapped), reversed(sources)):
        if name == "view":
            new = new.reshape(shape)
        elif name == "permute":
            new = new.permute(_shape_ops._inverse(attrs["dims"]))
        elif name == "index":
            new = _put_back_index(source, new, attrs["spec"])
    root._ir, root._requires_grad = new._ir, new._requires_grad
    root.__dict__["_traced_writes"].append(steps)
    if "_input_index" in root.__dict__ and _reshapes_memory(steps):
        root.__dict__["_written_as_row_major"] = True  # (see _record_input_updates)
    d["_view_of"] = (root, len(_write_log(root)), steps, layout_known)


def _reshapes_memory(steps):
    """Whether the view ops ``steps`` include a reshape that eager mode makes as a view only of
    a row-major source (and as a copy of another)."""
    return any(name == "view" and attrs["copy_ok"] and
               not _same_sizes(_not_ones(shape), _not_ones(attrs["shape"]))
               for name, shape, attrs in steps)
