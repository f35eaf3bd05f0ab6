"""Eager mode's check of the tensors a backward reads, for traced code.

An eager op with grad mode on saves some of its inputs (and outputs) with their versions; when
backward reaches its node and one of them was changed in place since, it raises ("one of the
variables needed for gradient computation has been modified by an inplace operation"). The
traced graph is functional (an in-place op makes a new value), so its backward would compute a
gradient from the old values where eager mode raises. While tracing, ``SavedVersions`` notes
what each recorded op's eager node would save, with the versions, and the name that node would
have; a traced ``backward()``, or the backward of a compiled call's output, raises eager's error
when a node on its path saved a tensor that was changed since."""
from .autograd.engine import inplace_message
from ._sym import hint, shape_evaluator
from .ops.registry import Ctx, saved_input_indices


class SavedVersions:
    """What the traced ops' eager nodes would save, and their names (one per trace)."""

    def __init__(self):
        # node -> [(tensor, version, _NodeName of the node that made it if an output, output nr)]
        self._saved = {}
        self._names = {}   # IR value -> (its eager node's _NodeName, output nr)
        # id(root) -> (root, the writes to it or to a view of it while traced): eager mode's
        # view shares its base's version; a trace leaves real versions as they are
        self._writes = {}

    def note_op(self, op, node, inputs, outputs, metas, out_metas, attrs):
        """Note the application ``node`` of ``op`` on the tensors ``inputs`` (its outputs,
        ``outputs``), recorded with grad mode on and an input that requires grad."""
        # (named when an error needs it: some names depend on sizes a trace keeps symbolic)
        name = _NodeName(op, metas, out_metas, attrs)
        for i, v in enumerate(node.outputs):
            self._names[v] = (name, i)
        saved = [(t, self.version(t), None, 0) for t in
                 (inputs[i] for i in saved_input_indices(op, len(inputs)))]
        if op.saves_outputs:
            saved += [(t, self.version(t), name, i) for i, t in enumerate(outputs)]
        if saved:
            self._saved[node] = saved

    def note_write(self, t):
        """The traced tensor ``t`` was written in place (a write to a view of it counts for
        its root and every view of that root, as eager mode's shared version counter)."""
        root = _root_of(t)
        entry = self._writes.get(id(root))
        self._writes[id(root)] = (root, 1 if entry is None else entry[1] + 1)

    def version(self, t):
        """``t``'s version as eager mode would count it: a concrete tensor's real one (a
        parameter, buffer or captured tensor) plus the writes while traced."""
        entry = self._writes.get(id(_root_of(t)))
        return (0 if t._data is None else t._vc.value) + (0 if entry is None else entry[1])

    def stale(self, graph, roots, stale=None):
        """What eager mode would raise for a backward from the IR values ``roots`` (a
        ``StaleSaved``), or None: the first node on the backward's path (the latest first, as
        eager's engine runs them) that saved a tensor changed in place since (``stale``:
        ``_stale_nodes()``, when the caller has it)."""
        if stale is None:
            stale = self._stale_nodes()
        if not stale:
            return None
        order = {n: i for i, n in enumerate(graph.nodes)}
        reached, seen = [], set()
        todo = [v for v in roots if v.requires_grad]
        while todo:
            node = todo.pop().producer
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in stale:
                reached.append(node)
            todo += [v for v in node.inputs if v.requires_grad]
        if not reached:
            return None
        t, version, producer, output_nr = stale[max(reached, key=order.get)]
        if producer is None and t._ir is not None:
            producer, output_nr = self._names.get(t._ir, (None, 0))
        if producer is not None:
            producer = producer.name()
        return StaleSaved(tuple(t.shape), t.dtype, self.version(t), version, producer,
                          output_nr)

    def stale_outputs(self, graph, count):
        """{index: ``StaleSaved``} of the first ``count`` graph outputs whose backward would
        read a tensor changed in place since it was saved."""
        stale = self._stale_nodes()
        if not stale:
            return {}
        out = {}
        for i, v in enumerate(graph.outputs[:count]):
            found = self.stale(graph, [v], stale)
            if found is not None:
                out[i] = found
        return out

    def _stale_nodes(self):
        """{node: its first saved entry changed since}"""
        out = {}
        for node, saved in self._saved.items():
            for entry in saved:
                if self.version(entry[0]) != entry[1]:
                    out[node] = entry
                    break
        return out


class _NodeName:
    """The name of an application's eager node (``SumBackward1``...), worked out on demand."""

    def __init__(self, op, metas, out_metas, attrs):
        self._of = (op, metas, out_metas, attrs)

    def name(self):
        op, metas, out_metas, attrs = self._of
        return op.grad_fn_name(Ctx(None, None, metas, out_metas, attrs, None))


def _root_of(t):
    view = t.__dict__.get("_view_of")  # (see ``_view_writes.mark_views``)
    return t if view is None else view[0]


class StaleSaved:
    """A tensor a backward would read, changed in place since it was saved: ``message(sizes)``
    is eager mode's error for a call with those sizes (None: the traced ones)."""

    def __init__(self, shape, dtype, version_now, version, producer, output_nr):
        self._shape, self._dtype = shape, dtype
        self._versions, self._producer = (version_now, version), (producer, output_nr)

    def message(self, sizes=None):
        shape = [hint(d) for d in self._shape] if sizes is None else \
            shape_evaluator(self._shape)(sizes)
        return inplace_message(self._dtype, shape, *self._versions, *self._producer)
