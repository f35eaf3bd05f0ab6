"""Tracing: run ``forward`` once on symbolic tensors and record every registry op as an IR node.

A traced tensor is a ``Tensor`` whose ``_ir`` is an IR ``Value`` (and whose ``_data`` is None).
``registry.apply`` sends every op here while tracing. Concrete tensors created inside ``forward``
(and Python numbers) become ``constant`` nodes, and ops on them alone run eagerly; a concrete
tensor that existed before the trace (a plain tensor attribute of a module, a closure's or a
global's tensor) is captured: it becomes a graph input, read on every call like a buffer
(``Tracer.capture``), so that later in-place changes are seen and, when it requires grad, it
gets a gradient. Python control flow and shape arithmetic simply run, so the graph is
specialised to the example inputs.
"""
import functools
import operator
import os
import random as _py_random
import sys
import sysconfig
import threading
import time as _py_time

import numpy as np

from . import _dtype, _random
from ._meta import Meta
from ._name_guards import name_guards
from ._saved_versions import SavedVersions
from ._sym import Sym, display
from ._trace_errors import TraceError, data_dependent, user_location  # noqa: F401  (public here)
from ._view_writes import check_view_current, mark_views
from .autograd import grad_mode
from .ir.graph import Graph
from .nn.modules import module as _module_mod
from .nn.modules.module import Module
from .ops import registry, scan as _scan
from .ops.common import traced_tensor
from .ops.registry import op_attrs
from .tensor import Tensor


class Tracer:
    """Records ops into ``graph``; concrete tensors are interned as constant nodes."""

    def __init__(self, graph, foreign=None):
        self.graph = graph
        self._constants = {}
        # (name, tensor) of the tensors captured as graph inputs (``capture``), and what each
        # one held before (restored when the trace ends)
        self.captured = []
        self.captured_inputs = []
        self._captured_before = []
        self.frozen = []  # (tensor, array, version) of the ones frozen instead
        self.loc = None  # when set, recorded nodes take this location (autodiff uses the
        # forward node's, so backward nodes point at the user's line they differentiate)
        # values from another graph (autodiff reads forward values): mapped to new inputs
        self.foreign = foreign
        # what the recorded ops' eager nodes would save (a backward checks it as eager mode's)
        self.saved_versions = SavedVersions()

    def value_of(self, t):
        self.lift(t)
        if t._ir is not None:
            if "_view_of" in t.__dict__:
                check_view_current(t)
            if self.foreign is not None:
                return self.foreign(t._ir)
            return t._ir
        key = id(t._data)
        entry = self._constants.get(key)
        if entry is None or entry[0] is not t._data:
            entry = (t._data, self.graph.add_constant(np.array(t._data, copy=True)))
            self._constants[key] = entry
        return entry[1]

    def lift(self, t):
        """Capture ``t`` (before an op reads it or writes it in place) if it is a concrete
        tensor that existed before the trace."""
        if t._ir is None and is_captured(t):
            _recording.capturer.capture_or_freeze(t)

    def capture_or_freeze(self, t):
        """``capture`` a row-major ``t``; the values of another are frozen into the graph (the
        compiled code reads its inputs row-major), which a call checks are unchanged (its
        array and version: ``Guards``) or traces again."""
        if t._data.flags.c_contiguous:
            self.capture(t)
        elif t._requires_grad and grad_mode.is_grad_enabled():
            raise TraceError(f"the traced code reads a tensor of shape {list(t.shape)} that "
                             "requires grad, is not an input, parameter or buffer, and is not "
                             "contiguous: its gradient cannot be computed compiled (make it "
                             "contiguous, or a parameter of a module the code calls)")
        else:
            self.freeze(t)

    def freeze(self, t):
        """Build the values of ``t`` (from before the trace) into the graph; a call where its
        array or version changed traces again (``Guards``)."""
        if all(f[0] is not t for f in self.frozen):
            self.frozen.append((t, t._data, t._vc.value))

    def capture(self, t):
        """Make the concrete tensor ``t``, which existed before the trace, a graph input (after
        the state inputs), as a parameter or buffer is: ``t._ir`` stands for it until the trace
        ends (``release_captured``)."""
        name = f"captured{len(self.captured)}"
        v = self.graph.add_input(name, tuple(t.shape), t.dtype, t._requires_grad)
        self._captured_before.append(_stand_in(t, v))
        self.captured.append((name, t))
        self.captured_inputs.append(v)

    def release_captured(self):
        _restore_stand_ins(self._captured_before)

    @staticmethod
    def captures_any(tensors):
        """Whether an op on these concrete tensors must be recorded: one existed before the
        trace (ops on tensors made while tracing alone run now, their results constants)."""
        return any(map(is_captured, tensors))

    def record(self, op, inputs, attrs):
        values = [self.value_of(t) for t in inputs]
        metas = tuple(Meta(v.shape, v.dtype) for v in values)
        kw = op_attrs(attrs)
        out_meta = op.infer(*metas, **kw)
        multi = op.num_outputs != 1
        out_metas = out_meta if multi else (out_meta,)
        requires_grad = (op.differentiable and grad_mode.is_grad_enabled()
                         and any(v.requires_grad for v in values))
        node = self.graph.add_node(op.name, values, kw, out_metas,
                                   loc=self.loc or user_location())
        outs = []
        for v in node.outputs:
            v.requires_grad = requires_grad and v.dtype.is_floating_point
            outs.append(traced_tensor(v))
        if requires_grad and self.foreign is None:
            self.saved_versions.note_op(op, node, inputs, outs, metas, out_metas, attrs)
        if op.is_view:
            mark_views(op, inputs[0], outs, kw)
        return tuple(outs) if multi else outs[0]

    def random_seed(self):
        """A traced int64 scalar that takes a fresh value, drawn from tracenet's generator,
        every time the compiled graph runs (a graph input listed in ``graph.seed_inputs``,
        after the state inputs). Random ops (dropout) derive their random numbers from it, so
        they are not frozen into traced constants."""
        if self.foreign is not None:
            raise TraceError("random_seed() is only available while tracing a forward graph")
        graph = self.graph
        v = graph.add_input(f"seed{len(graph.seed_inputs)}", (), _dtype.int64)
        graph.seed_inputs.append(v)
        return traced_tensor(v)


def _traced_input(graph, i, x, sizes):
    """The traced tensor standing for example input ``i`` (``x``), marked as an input."""
    v = graph.add_input("x" if i == 0 else f"x{i}", symbolic_shape(x.shape, sizes), x.dtype,
                        x.requires_grad)
    t = traced_tensor(v)
    t.__dict__["_input_index"] = i
    if x._requires_grad and x.grad_fn is not None:
        t.__dict__["_input_is_nonleaf"] = True
    return t


def _record_input_updates(graph, args, inputs_of_args):
    """The inputs changed in place become extra outputs, right after the traced function's
    own (a call makes them as it makes those): ``graph.input_updates[k] = (input index,
    output index, number of writes)``."""
    graph.input_updates = []
    for i, (t, v) in enumerate(zip(args, inputs_of_args)):
        if t._ir is v:
            continue
        graph.input_updates.append((i, len(graph.outputs), t._vc.value))
        graph.outputs.append(t._ir)
    # the inputs written through a reshape: eager mode's reshape of a caller's tensor that is
    # not row-major is a copy, which a call refuses (``compiled_pair.refuse_other_layouts``)
    graph.row_major_inputs = [i for i, t in enumerate(args)
                              if "_written_as_row_major" in t.__dict__]


def user_output_count(graph):
    """How many of a traced graph's outputs are the traced function's own (the state and input
    updates follow them)."""
    return len(graph.outputs) - len(graph.state_updates) - len(graph.input_updates)


def trace_scan(fn, carries, xs, reverse):
    """Record one ``scan`` node (``tracenet.ops.scan.scan``): ``fn`` is traced once, on traced
    tensors standing for the carries and one step of each of ``xs``, into the node's body
    graph; traced values it reads from outside become body inputs (the node's constant
    operands). A carry requires grad when anything the body reads does: the body is traced
    again, with those carries marked, until that holds (a fixed point over the loop)."""
    grad_on = grad_mode.is_grad_enabled()
    carry_grad = [grad_on and c.requires_grad for c in carries]
    while True:
        body, consts = _trace_body(fn, carries, carry_grad, xs)
        wanted = [g or v.requires_grad for g, v in zip(carry_grad, body.outputs)]
        if wanted == carry_grad:
            break
        carry_grad = wanted
    result = registry.apply(_scan.scan_op, *carries, *xs, *map(traced_tensor, consts),
                            body=body, n_carry=len(carries), n_xs=len(xs), reverse=reverse)
    return result[:len(carries)], result[len(carries):]


def _trace_body(fn, carries, carry_grad, xs):
    """The body graph of ``fn`` and the outer values it reads (its trailing inputs)."""
    body = Graph("body")
    owned = set()
    consts = []
    captured = {}

    def new_value(*args, **kwargs):
        v = Graph.new_value(body, *args, **kwargs)
        owned.add(v)
        return v

    def foreign(v):  # a value of the enclosing graph: read through a new body input
        if v in owned:
            return v
        if v not in captured:
            captured[v] = body.add_input(v.name or f"p{len(consts)}", v.shape, v.dtype,
                                         v.requires_grad)
            consts.append(v)
        return captured[v]

    body.new_value = new_value  # while tracing: tells body values from enclosing ones
    try:
        cs = [traced_tensor(body.add_input(f"carry{i}", c.shape, c.dtype, g))
              for i, (c, g) in enumerate(zip(carries, carry_grad))]
        ts = [traced_tensor(body.add_input(f"x{i}", x.shape[1:], x.dtype, x.requires_grad))
              for i, x in enumerate(xs)]
        with tracing(Tracer(body, foreign=foreign)) as tracer:
            new_carries, ys = fn(tuple(cs), tuple(ts))
            new_carries, ys = tuple(new_carries), tuple(ys)
            if len(new_carries) != len(carries):
                raise TraceError(f"a scan body returned {len(new_carries)} carries for "
                                 f"{len(carries)}")
            body.outputs = [tracer.value_of(t) for t in new_carries + ys]
    finally:
        del body.new_value
    for c, v in zip(carries, body.outputs):
        if (tuple(c.shape), c.dtype) != (v.shape, v.dtype):
            raise TraceError(f"a scan body turned a carry of {c.dtype}{list(c.shape)} into "
                             f"{v.dtype.short}{list(v.shape)}")
    return body.renumber(), consts


def fresh_seeds(n):
    """Values for a graph's ``n`` seed inputs, drawn from tracenet's generator."""
    return _random.rng().integers(0, np.iinfo(np.int64).max, size=n, dtype=np.int64)


class tracing:
    """Context manager that routes registry ops on traced tensors to ``tracer``."""

    def __init__(self, tracer):
        self.tracer = tracer

    def __enter__(self):
        self._prev = registry._tracer[0]
        registry._tracer[0] = self.tracer.record
        return self.tracer

    def __exit__(self, *exc):
        registry._tracer[0] = self._prev
        return False


_scan.body_tracer[0] = trace_scan


def _named_state(module):
    """Parameters then buffers, by their state-dict names (parameters in named_parameters
    order)."""
    out = [(n, p) for n, p in module.named_parameters()]
    seen = {id(p) for _, p in out}
    for n, b in module.named_buffers():
        if id(b) not in seen:
            out.append((n, b))
    return out


def structure_of(obj, leaves):
    """Flatten nested tuples/lists of tensors: append the tensors to ``leaves`` and return a
    hashable template to rebuild the nesting (``rebuild``). None stays as None."""
    if isinstance(obj, Tensor):
        leaves.append(obj)
        return len(leaves) - 1
    if obj is None:
        return None
    if isinstance(obj, (tuple, list)):
        return ("list" if isinstance(obj, list) else "tuple",
                tuple(structure_of(o, leaves) for o in obj))
    raise TraceError(f"only tensors, None and tuples/lists of them can be traced inputs or "
                     f"outputs, got {type(obj).__name__}")


def rebuild(template, leaves):
    if template is None:
        return None
    if isinstance(template, int):
        return leaves[template]
    kind, items = template
    out = [rebuild(t, leaves) for t in items]
    return out if kind == "list" else tuple(out)


def trace(fn, *example_inputs, name=None, state=None, sizes=None):
    """Trace ``fn`` (a Module or a function of tensors) on ``example_inputs`` into a Graph.

    Graph inputs are the example inputs (named ``x``, ``x1``...) followed by the module's
    parameters and buffers under their state-dict names, or by ``state`` (a list of
    ``(name, tensor)``: the tensors a plain function reads, e.g. an optimizer's parameters).
    With ``sizes`` (the traced batch size and sequence length, or None), the dimensions of
    those sizes are the symbols ``N`` and ``T`` (``symbolic_shape``); the trace raises
    ``Specialize`` if it needs their exact values."""
    module = fn if isinstance(fn, Module) else None
    graph = Graph(name or (type(fn).__name__ if module is not None else
                           getattr(fn, "__name__", "graph")))
    if state is None:
        state = _named_state(module) if module is not None else []
    graph.key = specialisation_key(example_inputs, module, sizes)
    args = []
    for i, x in enumerate(example_inputs):
        if not isinstance(x, Tensor):
            raise TraceError(f"example input {i} must be a Tensor, got {type(x).__name__}")
        args.append(_traced_input(graph, i, x, sizes))
    inputs_of_args = [t._ir for t in args]
    saved = []
    tracer = Tracer(graph)
    try:
        for n, p in state:
            saved.append(_stand_in(p, graph.add_input(n, p.shape, p.dtype, p.requires_grad)))
        with tracing(tracer), recording_reads() as recorded, \
                forbidding_frozen_calls() as watched, capturing(tracer):
            out = fn(*args)
        graph.reads = list(recorded.reads.values())
        # for the graph cache: what else the Python that ran depended on (None: not known)
        graph.unportable = list(recorded.unportable)
        graph.user_code = watched.codes
        outputs = []
        graph.output_structure = structure_of(out, outputs)
        graph.outputs = [tracer.value_of(o) for o in outputs]
        # in-place updates of the inputs, then of buffers (batch-norm running statistics...),
        # become extra outputs that the runtime writes back:
        # graph.state_updates[i] = (state index, output index)
        _record_input_updates(graph, args, inputs_of_args)
        # the captured tensors are state after the caller's (buffers the caller did not know)
        graph.captured = tracer.captured
        graph.captured_at = _where_captured(tracer.captured, recorded.unportable)
        graph.frozen = tracer.frozen
        # outputs whose backward would raise in eager mode: a tensor it reads changed in place
        graph.stale_saved = tracer.saved_versions.stale_outputs(graph, len(graph.outputs))
        # the globals and closure cells of the code that ran (``_name_guards``)
        graph.name_guards = name_guards(watched.codes, watched.closures,
                                        [t for _, t in tracer.captured] +
                                        [t for t, _, _ in tracer.frozen])
        state_inputs = graph.inputs[len(args):len(args) + len(state)] + \
            tracer.captured_inputs
        graph.state_updates = []
        for i, ((_, p), v) in enumerate(zip(list(state) + graph.captured, state_inputs)):
            if p._ir is not v:
                p._ir.requires_grad = False  # a side effect, never differentiated
                graph.state_updates.append((i, len(graph.outputs)))
                graph.outputs.append(p._ir)
        # the random ops' seeds stay the last inputs (a capture may have come after one)
        seeds = set(graph.seed_inputs)
        graph.inputs = [v for v in graph.inputs if v not in seeds] + graph.seed_inputs
    finally:
        _restore_stand_ins(saved)
        tracer.release_captured()
    return graph.renumber()


def _stand_in(t, value):
    """Make the graph input ``value`` stand for the concrete tensor ``t`` (a parameter, buffer
    or captured tensor) while tracing; returns what ``_restore_stand_ins`` puts back."""
    saved = (t, t._ir, t.grad_fn, t._requires_grad, t._output_nr, t._grad)
    t._ir = value
    return saved


def _restore_stand_ins(saved):
    for t, prev, grad_fn, requires_grad, output_nr, grad in saved:
        t._ir, t.grad_fn, t._requires_grad, t._output_nr, t._grad = (
            prev, grad_fn, requires_grad, output_nr, grad)
        t.__dict__.pop("_traced_writes", None)  # (marks it as the root of traced views)


def _where_captured(captured, attribute_reads):
    """(getter, key, tensor) of each module attribute where the traced code found a captured
    tensor. A compiled call checks that ``getter(key)`` still is that tensor (``Guards``): one
    rebound to another tensor needs another trace, as eager mode would read the new one. (The
    globals and closure cells of the code that ran are ``graph.name_guards``.)"""
    ids = {id(t) for _, t in captured}
    return [(m.__dict__.get, name, value) for m, name, value in attribute_reads
            if id(value) in ids]


def symbolic_shape(shape, sizes):
    """``shape`` with its leading size as the symbol ``N`` if it is the batch size
    ``sizes[0]``, and its second as ``T`` if it is the sequence length ``sizes[1]`` (None:
    that size is not symbolic; ``sizes`` None: neither)."""
    shape = tuple(shape)
    if sizes is None:
        return shape
    batch, seq = sizes
    out = list(shape)
    if batch is not None and len(shape) and shape[0] == batch:
        out[0] = Sym.symbol("N", batch)
    if seq is not None and len(shape) > 1 and shape[1] == seq:
        out[1] = Sym.symbol("T", seq)
    return tuple(out)


def specialisation_key(example_inputs, module=None, sizes=None):
    shapes = tuple((symbolic_shape(x.shape, sizes), x.dtype.short) for x in example_inputs)
    training = bool(module.training) if module is not None else False
    return Key(shapes, training, grad_mode.is_grad_enabled())


class Key(tuple):
    """(input shapes+dtypes, training flag, grad enabled): what a graph is specialised to."""

    def __new__(cls, shapes, training, grad):
        return super().__new__(cls, (shapes, training, grad))

    def __str__(self):
        shapes, training, grad = self
        return f"inputs={format_inputs(shapes)} training={training} grad={grad}"


def format_inputs(shapes):
    """``(f32[N,1,32,32], i64[N])`` for (shape, dtype short name) pairs."""
    return "(" + ", ".join(f"{d}[{','.join(map(display, s))}]" for s, d in shapes) + ")"


# --- guards ----------------------------------------------------------------------------------
# A trace runs ``forward``'s Python once: the Python values it reads are baked into the graph.
# Guards record what those were, so that a compiled callable re-specialises when they change:
#
# * the module attributes of plain Python types (numbers, bools, strings, None, tuples of
#   them) that the traced code read, recorded by ``Module.__getattribute__`` while tracing;
# * the structure of the module tree: which modules, parameters and buffers it holds, by
#   identity, and the parameters' ``requires_grad`` flags.
#
# Checking them is cheap: every module change advances ``module._epoch`` (see ``_changed`` in
# nn/modules/module.py); while it has not moved since the last check, the guards hold.

_epoch = _module_mod._epoch  # one list for the process: bound once, read on every call
_PLAIN = frozenset((int, float, bool, str, type(None), complex))
_MISSING = object()
_object_getattribute = object.__getattribute__
_requires_grad_of = operator.attrgetter("_requires_grad")
_req_of = operator.attrgetter("_req")


def _is_plain(value):
    t = type(value)
    if t in _PLAIN:
        return True
    return t is tuple and all(type(v) in _PLAIN for v in value)


class _Recording(threading.local):
    reads = None  # while tracing in this thread: {(id(module), name): (module, name, value)}
    # while tracing in this thread: {(id(module), name): (module, name, value)} of the other
    # instance attributes read (lists, dicts, tensors, objects...): a graph cache entry made
    # from the trace must re-check them or cannot be made
    other_reads = None
    forbid = False  # while tracing in this thread: random/time calls raise
    codes = None  # while tracing in this thread: {user code object: its globals, closure}
    closures = None  # and {user code object: [what its closure cells held, per closure]}
    # while tracing in this thread: {id: tensor} of the tensors made meanwhile, and the
    # tracer that captures the others (``capturing``)
    made = None
    capturer = None


_recording = _Recording()
_hook_lock = threading.Lock()


class _SharedPatch:
    """Class attributes replaced while any thread's trace needs them: ``install`` runs when
    the first user enters, ``restore`` when the last one leaves."""

    def __init__(self, install, restore):
        self._install, self._restore, self._users = install, restore, 0

    def enter(self):
        with _hook_lock:
            if self._users == 0:
                self._install()
            self._users += 1

    def leave(self):
        with _hook_lock:
            self._users -= 1
            if self._users == 0:
                self._restore()


# what every Module keeps in its __dict__ (hooks, registries): not a value forward computes with
_MODULE_INTERNALS = frozenset(("_parameters", "_buffers", "_modules",
                               "_non_persistent_buffers_set"))


def _recording_getattribute(self, name):
    value = _object_getattribute(self, name)
    reads = _recording.reads
    if reads is not None:
        d = _object_getattribute(self, "__dict__")
        if name in d and d[name] is value and name != "_mutation_epoch":
            if _is_plain(value):
                reads.setdefault((id(self), name), (self, name, value))
            elif name not in _MODULE_INTERNALS and not (name[0] == "_" and "hook" in name):
                _recording.other_reads.setdefault((id(self), name), (self, name, value))
        elif _is_concrete_array(value):  # a class attribute or property: baked into the graph
            _recording.other_reads.setdefault((id(self), name), (self, name, value))
    return value


def _unhook_getattribute():
    del Module.__getattribute__


_reads_patch = _SharedPatch(
    lambda: setattr(Module, "__getattribute__", _recording_getattribute), _unhook_getattribute)


def _is_concrete_array(value):
    return isinstance(value, np.ndarray) or (isinstance(value, Tensor) and value._ir is None)


class recording_reads:
    """While active (in this thread), every plain-typed instance attribute read from a Module
    is recorded in ``self.reads``; ``Module.__getattribute__`` is only replaced meanwhile."""

    def __enter__(self):
        self._prev = _recording.reads
        self._prev_other = _recording.other_reads
        self.reads = _recording.reads = {}
        self.other_reads = _recording.other_reads = {}
        _reads_patch.enter()
        return self

    def __exit__(self, *exc):
        _reads_patch.leave()
        _recording.reads = self._prev
        _recording.other_reads = self._prev_other
        if self._prev is not None:  # a nested trace's reads matter to the outer one too
            for k, v in self.reads.items():
                self._prev.setdefault(k, v)
            for k, v in self.other_reads.items():
                self._prev_other.setdefault(k, v)
        return False

    @property
    def unportable(self):
        """(module, name, value) of the attributes read that are not plain values."""
        return list(self.other_reads.values())


_plain_wrap = Tensor.__dict__["_wrap"].__func__
_plain_init = Tensor._init
_plain_concrete = Tensor._concrete


def _noting_wrap(cls, array, requires_grad=False):
    t = _plain_wrap(cls, array, requires_grad)
    made = _recording.made
    if made is not None:
        made[id(t)] = t
    return t


def _noting_init(self, array, requires_grad=False):
    _plain_init(self, array, requires_grad)
    made = _recording.made
    if made is not None:
        made[id(self)] = self


def _noting_concrete(self, what):
    """``Tensor._concrete`` while tracing: the values of a tensor from before the trace, read
    in Python (``.item()``, ``bool()``...), are built into the graph: frozen, checked by each
    call's guards."""
    if self._ir is None and is_captured(self):
        _recording.capturer.freeze(self)
    return _plain_concrete(self, what)


def _note_made():
    Tensor._wrap = classmethod(_noting_wrap)
    Tensor._init = _noting_init
    Tensor._concrete = _noting_concrete


def _stop_noting():
    Tensor._wrap = classmethod(_plain_wrap)
    Tensor._init = _plain_init
    Tensor._concrete = _plain_concrete


_made_patch = _SharedPatch(_note_made, _stop_noting)


def is_captured(t):
    """Whether the concrete tensor ``t``, met while tracing, existed before the trace began (a
    tensor attribute of a module, a closure's or a global's): the trace captures it as an
    input rather than freezing its values (``Tracer.capture``)."""
    made = _recording.made
    return made is not None and made.get(id(t)) is not t


class capturing:
    """While active (in this thread), tensors made are noted (``Tensor``'s constructors are
    only replaced meanwhile), and ``tracer`` captures the concrete tensors met that were not
    made meanwhile (or freezes those whose values are read in Python). Inside another trace's,
    the tensors made in the inner one were made in the outer one too."""

    def __init__(self, tracer):
        self.tracer = tracer

    def __enter__(self):
        self._prev = _recording.made, _recording.capturer
        _recording.made, _recording.capturer = {}, self.tracer
        _made_patch.enter()
        return self

    def __exit__(self, *exc):
        _made_patch.leave()
        made = _recording.made
        _recording.made, _recording.capturer = self._prev
        if self._prev[0] is not None:
            self._prev[0].update(made)
        return False


# calls whose results differ from call to call: tracing would freeze one of them
_RANDOM_FILE = os.path.abspath(_py_random.__file__)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# code that is not the user's: tracenet, the standard library and installed packages (whose
# random/time calls, e.g. in a garbage-collection callback that runs mid-trace, are not part of
# forward)
_LIBRARY_DIRS = tuple(sorted({os.path.abspath(p) + os.sep for p in (
    [_PACKAGE_DIR] + [sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib",
                                                               "platlib")]) if p}))
_internal_files = {}


def _is_internal(filename):
    """Whether ``filename`` is not the user's code: tracenet's own, the standard library's
    (Python's random module is checked where the user's code calls into it) or an installed
    package's."""
    known = _internal_files.get(filename)
    if known is None:
        path = os.path.abspath(filename)
        known = _internal_files[filename] = (path.startswith(_LIBRARY_DIRS)
                                             or path == _RANDOM_FILE
                                             or filename.startswith("<frozen"))
    return known


def _frozen_call_name(event, frame, arg):
    """The name of a random/time function the user's code calls, or None."""
    if event == "c_call":
        owner = getattr(arg, "__self__", None)
        if owner is _py_time:
            name = f"time.{arg.__name__}"
        elif isinstance(owner, _py_random.Random):
            name = f"random.{arg.__name__}"
        else:
            return None
        return None if _is_internal(frame.f_code.co_filename) else (name, frame)
    if event == "call" and frame.f_code.co_filename == _py_random.__file__:
        caller = frame.f_back
        if caller is not None and not _is_internal(caller.f_code.co_filename):
            return (f"random.{frame.f_code.co_name}", caller)
    return None


def _frozen_call_error(name, frame):
    return TraceError(
        f"{name}() called while tracing at {frame.f_code.co_filename}:{frame.f_lineno}: "
        "tracing runs forward's Python once, so its result would be frozen into the compiled "
        "graph, while eager mode draws a new value on every call. Use tracenet's random ops "
        "(tracenet.rand, dropout...) on tensors, pass the value in as a tensor input, or run "
        "this module in eager mode.")


def _note_code(frame):
    """Remember a user function that ran while tracing: its code, globals and closure (the
    graph cache checks its source file and the global values it reads; ``_name_guards`` makes
    guards of its names)."""
    code = frame.f_code
    codes = _recording.codes
    if codes is not None and not _is_internal(code.co_filename) and \
            not frame.f_globals.get("__name__", "").startswith("namedtuple_"):
        local = frame.f_locals
        # concrete tensors passed in (a default, a functools.partial's): baked into the graph
        n_args = code.co_argcount + code.co_kwonlyargcount
        arrays = tuple(n for n in code.co_varnames[:n_args]
                       if _is_concrete_array(local.get(n)))
        if code.co_freevars:
            _note_closure(code, tuple(local.get(n, _MISSING) for n in code.co_freevars))
        known = codes.get(code)
        if known is None:
            cells = tuple((n, local.get(n, _MISSING)) for n in code.co_freevars)
            codes[code] = (frame.f_globals, cells, arrays)
        elif arrays and not known[2]:
            codes[code] = known[:2] + (arrays,)


def _note_closure(code, values):
    """Remember what the closure cells of a call of ``code`` held (once per distinct closure):
    ``_name_guards`` finds the function whose cells they are."""
    seen = _recording.closures.setdefault(code, [])
    for known in seen:
        if all(map(operator.is_, known, values)):
            return
    seen.append(values)


def _no_frozen_calls(frame, event, arg):
    if event == "call":
        _note_code(frame)
    if event == "call" or event == "c_call":
        found = _frozen_call_name(event, frame, arg)
        if found is not None:
            raise _frozen_call_error(*found)


def _checked_np_random(name, fn):
    """``numpy.random.<name>`` that raises when the tracing thread's user code calls it
    (numpy's Cython functions are invisible to ``sys.setprofile``)."""
    @functools.wraps(fn)
    def checked(*args, **kwargs):
        if _recording.forbid:
            caller = sys._getframe(1)
            if not _is_internal(caller.f_code.co_filename):
                raise _frozen_call_error(f"numpy.random.{name}", caller)
        return fn(*args, **kwargs)
    return checked


_np_random_originals = {}
_np_random_users = [0]


def _patch_np_random(on):
    """Swap numpy.random's public functions for checked ones (``on``) or back."""
    with _hook_lock:
        if on:
            _np_random_users[0] += 1
            if _np_random_users[0] > 1:
                return
            for name in dir(np.random):
                fn = getattr(np.random, name)
                if name[0] != "_" and callable(fn) and not isinstance(fn, type):
                    _np_random_originals[name] = fn
                    setattr(np.random, name, _checked_np_random(name, fn))
        else:
            _np_random_users[0] -= 1
            if _np_random_users[0] == 0:
                for name, fn in _np_random_originals.items():
                    setattr(np.random, name, fn)
                _np_random_originals.clear()


class forbidding_frozen_calls:
    """While active (in this thread), calling Python's ``random``, ``numpy.random`` or ``time``
    from user code raises a TraceError naming the line. ``random`` and ``time`` are watched
    with ``sys.setprofile`` (chained to a Python-level profiler; skipped under a C-level one
    such as cProfile), ``numpy.random``'s module functions by swapping them for checking ones
    meanwhile. Methods of an existing ``numpy.random.Generator`` are not seen."""

    def __enter__(self):
        self._prev = prev = sys.getprofile()
        self._prev_forbid = _recording.forbid
        self._prev_codes = _recording.codes, _recording.closures
        # the user functions that run meanwhile (None: not watched, under a C-level profiler)
        self.codes = _recording.codes = {}
        self.closures = _recording.closures = {}
        _recording.forbid = True
        _patch_np_random(True)
        if prev is None:
            sys.setprofile(_no_frozen_calls)
        elif type(prev).__name__ in ("function", "method"):
            def chained(frame, event, arg):
                _no_frozen_calls(frame, event, arg)
                return prev(frame, event, arg)
            sys.setprofile(chained)
        else:
            self.codes = None
        return self

    def __exit__(self, *exc):
        if self.codes is not None:  # (a C-level profiler was left in place)
            sys.setprofile(self._prev)
        _recording.forbid = self._prev_forbid
        _recording.codes, _recording.closures = self._prev_codes
        if self._prev_codes[0] is not None:  # a nested trace's code ran for the outer one too
            self._prev_codes[0].update(self.codes or {})
            for code, seen in self.closures.items():
                for values in seen:
                    _note_closure(code, values)
        _patch_np_random(False)
        return False


def tree_signature(roots):
    """The identity and structure of the module trees under ``roots``: per module (in
    ``named_modules`` order) the module, its parameters (with requires_grad) and buffers.
    Holds the objects themselves, so identities stay valid while it is kept."""
    out = []
    for root in roots:
        for name, m in root.named_modules(remove_duplicate=False):
            out.append((name, m, tuple(m._parameters.items()),
                        tuple(m._buffers.items())))
    return out


def _same_signature(a, b):
    if len(a) != len(b):
        return False
    for (n1, m1, p1, b1), (n2, m2, p2, b2) in zip(a, b):
        if n1 != n2 or m1 is not m2 or len(p1) != len(p2) or len(b1) != len(b2):
            return False
        if any(k1 != k2 or v1 is not v2 for (k1, v1), (k2, v2) in zip(p1, p2)):
            return False
        if any(k1 != k2 or v1 is not v2 for (k1, v1), (k2, v2) in zip(b1, b2)):
            return False
    return True


def _same_value(a, b):
    return type(a) is type(b) and (a is b or a == b)


def _name_of(key):
    """A guarded name's key as a message shows it: a global's name, else a closure variable."""
    return repr(key) if isinstance(key, str) else "a closure variable"


class Guards:
    """What one traced graph assumed of the Python world; ``hold()`` tells whether it still
    does. ``reads``: (module, attribute, value) the traced code read; ``roots``: the modules
    whose tree structure it depends on; ``params``: tensors whose requires_grad it baked in."""

    __slots__ = ("reads", "roots", "signature", "modules", "params", "flags", "checked",
                 "verified", "_flag_of", "names", "frozen", "gradless", "outside", "values")

    def __init__(self, reads, roots, params, names=(), frozen=(), gradless=(), values=()):
        # (getter, key, object): names that must still hold those objects (where the trace
        # found the tensors it captured: ``_where_captured``; the globals and closure cells of
        # the code that ran: ``_name_guards``); (getter, key, snapshot, same): names whose
        # Python values must still be the snapshot or ``same`` as it; (tensor, array,
        # version): tensors whose values the graph froze, unchanged since. All checked on
        # every call.
        self.names = tuple(names)
        self.values = tuple(values)
        self.frozen = tuple(frozen)
        self.gradless = tuple(gradless)  # tensors whose .grad the graph assumes is None
        self.outside = bool(self.names or self.values or self.frozen or self.gradless)
        self.reads = tuple(reads)
        self.roots = tuple(roots)
        self.signature = tree_signature(self.roots)
        seen = {}
        for _, m, _, _ in self.signature:
            seen.setdefault(id(m), m)
        for m, _, _ in self.reads:
            seen.setdefault(id(m), m)
        self.modules = tuple(seen.values())
        self.params = tuple(params)
        # a tensor that is not a view never becomes one: its flag is ``_req`` (read in C),
        # without the property's refresh of a view's stale history
        self._flag_of = _req_of if all(p._base_ is None for p in self.params) \
            else _requires_grad_of
        self.flags = tuple(map(self._flag_of, self.params))
        self.checked = self.verified = _epoch[0]

    def hold(self):
        """Whether the guards hold now; per call, one integer comparison and one pass over the
        requires_grad flags while no module has changed."""
        if self.checked != _epoch[0] and not self._recheck(_epoch[0]):
            return False
        if self.outside and not self._outside_holds():
            return False
        params = self.params
        return not params or tuple(map(self._flag_of, params)) == self.flags

    def _outside_holds(self):
        """The checks of what lies outside the modules (names, values, frozen tensors, .grad).
        (Loops: ``all()`` over a generator costs 2.5x as much.)"""
        for get, key, v in self.names:
            if get(key) is not v:
                return False
        for get, key, v, same in self.values:
            now = get(key)
            if now is not v and not same(now, v):
                return False
        for t, a, v in self.frozen:
            if t._data is not a or t._vc.value != v:
                return False
        for t in self.gradless:
            if t._grad is not None:
                return False
        return True

    def _recheck(self, epoch):
        verified = self.verified
        if all(_module_mod.mutation_epoch(m) <= verified for m in self.modules):
            self.checked = epoch  # the modules this depends on have not changed
            return True
        for m, name, value in self.reads:
            if not _same_value(m.__dict__.get(name, _MISSING), value):
                return False
        if not _same_signature(tree_signature(self.roots), self.signature):
            return False
        self.checked = self.verified = epoch
        return True

    def changed(self):
        """Names for what no longer holds (for messages): module attributes, and the global
        or closure variables of the code that ran."""
        out = [f"{type(m).__name__}.{n}" for m, n, v in self.reads
               if not _same_value(m.__dict__.get(n, _MISSING), v)]
        for get, key, v in self.names:
            if get(key) is not v:
                out.append(_name_of(key))
        for get, key, v, same in self.values:
            now = get(key)
            if now is not v and not same(now, v):
                out.append(_name_of(key))
        if any(t._data is not a or t._vc.value != v for t, a, v in self.frozen):
            out.append("a tensor built into the graph")
        return out

    def __str__(self):
        reads = ", ".join(f"{type(m).__name__}.{n}={v!r}" for m, n, v in self.reads)
        return f"guards({reads or 'no attribute reads'}; {len(self.modules)} modules)"
