"""Generated C ready to call: the layer ``tracenet.compile`` and ``tracenet.compile_step`` share.

A compiled specialisation is a few graphs run through the pass pipeline, emitted as one C
translation unit, built (or loaded from the cache) and called through reusable ``void *[]``
vectors and work memory (arenas) that belong to one call at a time, so several threads may
call one compiled callable at once. The front ends differ only in the graphs they build and in which arguments
change from call to call; everything else is here:

* ``optimise(graph)``: the pass pipeline every compiled graph goes through;
* ``Executable(graphs, unit)``: generate -> build -> load, with one ``Arguments`` per graph;
* ``Arguments``: an entry point's argument vectors (the graph's inputs, then its outputs).
  *Bound* slots point at long-lived arrays (parameters, buffers, optimizer state) and are
  re-pointed only when those arrays are replaced; *fixed* slots point at arrays the caller owns
  for the executable's lifetime; the rest (batch, seeds, fresh outputs) are set on every call;
* ``Arenas``: the work memory of one compiled callable, shared by its specialisations;
* ``Specialisations``: the compiled specialisations of one callable, by key.
"""
import functools
import operator
import os
import threading
import warnings
import weakref

import _cffi_backend
import cffi
import numpy as np

from ._sym import NO_SIZES, Specialize, Sym, evaluator, has_symbols, shape_evaluator
from .codegen.base import STATUS_DETAILS, Kernel, has_lowering
from .codegen.emit import ARENA_ALIGN, EntryPoint, c_identifier
from .ir.verify import verify
from .passes import fuse, simplify
from .passes.decompose import decompose
from .passes.lower import lower_gemm
from .runtime import build, debug, graph_cache, prepare
from .runtime.threads import compiled_threads
from .size import Size
from .trace import fresh_seeds

_ffi = cffi.FFI()
_CHAR_ARRAY = _ffi.typeof("char[]")
_STATUS = _ffi.typeof("int64_t[]")
_NULL = _ffi.NULL
_weak = weakref.ref
_is = operator.is_
_copy = np.ndarray.copy
# tracing and building are not thread-safe (one tracer is active per process): new
# specialisations are made one at a time
_compiling = threading.RLock()


def optimise(graph):
    """The pass pipeline every compiled graph goes through (verified after each pass)."""
    verify(decompose(graph, has_lowering))  # ops without a C lowering of their own
    for p in (simplify, lower_gemm):
        verify(p(graph))
    debug.log("ir", f"before fusion:\n{graph}")
    verify(fuse(graph))
    debug.log("fusion", f"after fusion:\n{graph}")
    return graph


def sizes_of(inputs, seq=False):
    """The symbolic sizes of a call: (batch size, sequence length), the first input's leading
    size and, with ``seq``, its second; None for one it lacks, and for an empty one (which is
    specialised exactly)."""
    if inputs:
        shape = inputs[0]._data.shape
        batch = shape[0] if shape and shape[0] > 0 else None
        length = shape[1] if seq and len(shape) > 1 and shape[1] > 0 else None
        if batch is not None or length is not None:
            return batch, length
    return None


def key_shape(shape, sizes):
    """An input's shape in a specialisation key: a leading size that is the batch size is -1
    (any batch size: the symbol N), a second size that is the sequence length -2 (T)."""
    if sizes is None:
        return shape
    batch, length = sizes
    if batch is not None and shape and shape[0] == batch:
        shape = (-1,) + shape[1:]
    if length is not None and len(shape) > 1 and shape[1] == length:
        shape = shape[:1] + (-2,) + shape[2:]
    return shape


class SymbolicSizes:
    """Which input sizes of one compiled callable stay symbolic, and the keys they give.

    With ``dynamic``, the batch size (the first input's leading size, and every input's
    leading size equal to it) is the symbol ``N`` from the first call on. The sequence length
    (the first input's second size, and every input's second size equal to it) becomes the
    symbol ``T`` once two calls differ in it and nothing else: the second such call
    compiles a specialisation whose loops take ``T`` when they run, and later lengths reuse it.
    A key whose trace or code needed an exact size (``Specialize``) is compiled exactly
    instead, from then on."""

    def __init__(self, dynamic):
        self.dynamic = bool(dynamic)
        self.seq = False
        self.exact_only = set()
        self._lengths = {}  # a key with both sizes symbolic -> the sequence length seen
        self._last = None  # (exact shapes and dtypes, rest, specialisation) of the last call

    def of(self, inputs, rest):
        """(sizes, key) of a call: ``sizes`` for ``trace`` (None: exact shapes), ``key`` the
        input shapes (symbolic sizes as -1/-2) and dtypes followed by ``rest``."""
        sizes = sizes_of(inputs, self.seq) if self.dynamic else None
        key = self._key(inputs, sizes, rest)
        if self.exact_only and sizes is not None and key in self.exact_only:
            sizes, key = None, self._key(inputs, None, rest)
        return sizes, key

    def specialisation(self, arrays, inputs, rest, lines, lookup):
        """The specialisation for a call on ``inputs`` (whose arrays are ``arrays``).

        A call with the last call's exact shapes, dtypes and ``rest`` reuses its specialisation
        while its guards hold, without building a key. Otherwise the key's line in ``lines``
        (key -> specialisations, the last one whose guards held first) gives it, or
        ``lookup(key, line, sizes)`` makes a new one; a key whose sizes could not stay symbolic
        (``lookup`` gives None) is compiled exactly from then on."""
        shapes = [(a.shape, a.dtype) for a in arrays]
        last = self._last
        if last is not None and last[0] == shapes and last[1] == rest and \
                last[2].guards.hold():
            return last[2]
        while True:
            sizes, key = self.of(inputs, rest)
            line = lines.get(key)
            if line and line[0].guards.hold():  # (empty while another thread compiles it)
                spec = line[0]
                break
            if line is None and self.new_key(inputs, rest):
                continue  # the sequence length is symbolic now: the key changed
            spec = lookup(key, line, sizes)
            if spec is not None:
                break
            self.exact_only.add(key)
        self._last = (shapes, rest, spec)
        return spec

    @staticmethod
    def _key(inputs, sizes, rest):
        return (tuple((key_shape(x._data.shape, sizes), x._data.dtype.num) for x in inputs),) \
            + tuple(rest)

    def new_key(self, inputs, rest):
        """Called before compiling for a new key: True if the sequence length just became
        symbolic (the caller computes its key again)."""
        if not self.dynamic or self.seq:
            return False
        sizes = sizes_of(inputs, True)
        if sizes is None or sizes[1] is None:
            return False
        both = self._key(inputs, sizes, rest)
        seen = self._lengths.setdefault(both, sizes[1])
        if seen != sizes[1]:
            self.seq = True
            debug.log("cache", f"sequence lengths {seen} and {sizes[1]}: the second size is "
                               "symbolic from now on (T)")
            return True
        return False


class ShapeTable:
    """(shape, dtype) pairs whose shapes may hold size symbols, evaluated for a call's sizes
    by evaluators made once."""

    __slots__ = ("meta", "_of", "_last")

    def __init__(self, meta):
        self.meta = list(meta)
        symbolic = any(isinstance(d, Sym) for shape, _ in self.meta for d in shape)
        self._of = [(shape_evaluator(shape), dt) for shape, dt in self.meta] if symbolic \
            else None
        self._last = (None, None)  # (sizes, table) of the last call: a loop repeats its sizes

    def __call__(self, sizes):
        if self._of is None:
            return self.meta
        last_sizes, table = self._last
        if sizes != last_sizes:
            table = [(shape_of(sizes), dt) for shape_of, dt in self._of]
            self._last = (sizes, table)
        return table


class SizeChecks:
    """A call's check of the sizes a trace required not to be some value
    (``Graph.size_checks``): calling it raises what eager mode raises for such sizes. The
    evaluators are made once, and sizes that passed last time pass again without evaluating
    (a ResNet's nine batch-norm checks cost 4.6 us per step when made per call)."""

    __slots__ = ("_checks", "_passed")

    def __init__(self, checks):
        self._checks = tuple((evaluator(value), forbidden, exc, message, shape)
                             for value, forbidden, exc, message, shape in checks)
        self._passed = None

    def __bool__(self):
        return bool(self._checks)

    def __call__(self, sizes):
        if sizes == self._passed:
            return
        for value, forbidden, exc, message, shape in self._checks:
            if value(sizes) == forbidden:
                raise exc(message.format(size=repr(Size(shape_evaluator(shape)(sizes)))))
        self._passed = sizes


def run_sizes(arrays, symbols):
    """The values of the size symbols for a call on ``arrays`` (the graph's first inputs)
    whose graph uses ``symbols`` (a subset of ``SYMBOLS``)."""
    if not symbols:
        return NO_SIZES
    shape = arrays[0].shape
    return (shape[0] if "N" in symbols else 0, shape[1] if "T" in symbols else 0)


def graph_symbols(graphs):
    """The size symbols the input shapes of ``graphs`` use."""
    return frozenset(s for g in graphs for v in g.inputs for d in v.shape
                     if isinstance(d, Sym) for s in d.symbols())


class Executable:
    """``graphs`` (a list of (entry suffix, optimised Graph)) as one built, loaded C library;
    ``arguments[i]`` calls the entry point of ``graphs[i]``. Its entry points share one pool of
    arenas (``share_arenas`` replaces it with the pool of a whole compiled callable)."""

    def __init__(self, graphs, unit):
        self.timing = debug.enabled("time")  # built with per-kernel clocks
        self._source, self.cdef, entries, openmp, pieces = prepare.generate(
            graphs, unit, timing=self.timing)
        self.library = build.build(self._source, self.cdef, name=unit, openmp=openmp,
                                   pieces=pieces)
        self._connect(entries)

    def _connect(self, entries):
        self.entries = entries
        arenas = Arenas()
        self.arguments = [Arguments(self.library, entry, self.timing, arenas)
                          for entry in entries]

    @property
    def source_code(self):
        if self._source is None:  # restored from the graph cache: the source is on disk
            with open(self.library.source_path) as f:
                self._source = f.read()
        return self._source

    def stored_state(self):
        """What ``restore`` needs in a new process: the library's file in the cache, its
        declarations and the entry points (kernels kept only by name, for timing)."""
        entries = []
        for e in self.entries:
            light = EntryPoint(e.name, e.graph)
            light.arena_bytes, light.copies, light.checks = e.arena_bytes, e.copies, e.checks
            # (kept: the name and flops for timing, whether it runs threads for the count)
            light.kernels = [(Kernel(k.name, (), (), "", flops=k.flops, parallel=k.parallel),
                              node) for k, node in e.kernels]
            entries.append(light)
        return {"library": os.path.basename(self.library.path), "cdef": self.cdef,
                "timing": self.timing, "entries": entries}

    @classmethod
    def restore(cls, state):
        """The executable ``stored_state`` describes, with no code generated (None if its
        library is no longer in the cache)."""
        library = graph_cache.load_library(state["library"], state["cdef"])
        if library is None:
            return None
        self = cls.__new__(cls)
        self.timing, self.cdef, self._source, self.library = \
            state["timing"], state["cdef"], None, library
        self._connect(state["entries"])
        return self

    def share_arenas(self, arenas):
        for a in self.arguments:
            a.arenas = arenas


class Arenas:
    """Work memory for the entry points of one compiled callable (the ``char *arena`` each C
    call writes its intermediates and scratch to): ``idle``, the arenas not in use right now.

    A call pops one and appends it back when it returns (``Arguments.__call__``), so calls
    from several threads at once each get their own, and a thread calling again reuses one.
    There are never more than the number of calls that ran at once, each as large as the
    largest need so far (a smaller idle one is dropped when a larger one is needed); they are
    plain Python-owned memory, freed with the callable."""

    __slots__ = ("idle",)

    def __init__(self):
        self.idle = []

    def __len__(self):
        return len(self.idle)

    def largest(self):
        return max((a.nbytes for a in self.idle), default=0)


class _Arena:
    """``nbytes`` of uninitialised memory aligned to ``ARENA_ALIGN``; ``pointer`` is what the C
    entry point takes."""

    __slots__ = ("nbytes", "pointer")

    def __init__(self, nbytes):
        memory = np.empty(nbytes + ARENA_ALIGN, np.uint8)  # pages are touched only when used
        start = -memory.ctypes.data % ARENA_ALIGN
        self.nbytes = nbytes
        self.pointer = _cffi_backend.from_buffer(_CHAR_ARRAY, memory[start:start + nbytes])


class _Vector:
    """One ``void *[]`` of an entry point, the arrays its bound slots point at, the tuple of
    arrays its last output slots point at (``spares``), the arrays of its own its first output
    slots point at (``owned``, see ``Arguments.own_outputs``) and, per other per-call slot, a
    weak reference to the array it pointed at last: a call that passes that array again (the
    same input) skips re-pointing the slot, and the array is not kept alive by it."""

    __slots__ = ("args", "bound", "spares", "held", "owned", "status")

    def __init__(self, args, n, status):
        self.args = args
        self.bound = ()
        self.spares = ()
        self.held = [None] * n
        self.owned = ()
        # the call's status (NULL for an entry without data checks): zero, as the C code writes
        # it only when a check fails, and ``__call__`` zeroes it again before raising
        self.status = status


class Arguments:
    """One entry point and how to call it: its argument vectors, reused across calls.

    Slot ``i < n_inputs`` is graph input ``i``; slot ``n_inputs + j`` is graph output ``j``.
    A slot holds a raw address, so whoever sets it keeps the array alive: bound and fixed
    arrays are kept here, per-call arrays by the caller until the call returns.

    The C call runs without the GIL, so a vector belongs to one call at a time: a call takes an
    idle vector (or makes one) and gives it back when it returns, together with an arena from
    ``arenas``. Calls from several threads at once thus never share memory they write."""

    __slots__ = ("entry", "library", "timing", "ffi", "pointer", "fn", "n_inputs", "arenas",
                 "arena_bytes", "_idle", "_fixed", "_bound_slots", "_bound_names",
                 "_bound_metas", "_seed_slot", "_n_seeds", "_status", "_threads",
                 "_arena_size", "_owned")

    def __init__(self, library, entry, timing, arenas):
        self.entry = entry
        self.library = library
        self.timing = timing
        self.ffi = library.ffi
        # a ``char[]`` over an array's buffer, whose address a ``void *`` slot takes: what
        # ``ffi.from_buffer(array)`` returns, without its Python-level argument handling
        self.pointer = functools.partial(_cffi_backend.from_buffer, _CHAR_ARRAY)
        self.fn = getattr(library.lib, entry.name)
        self.n_inputs = len(entry.graph.inputs)
        self.arenas = arenas
        self.arena_bytes = evaluator(entry.arena_bytes)  # for the call's sizes
        # (the same for every call unless it depends on a size symbol: read without a call)
        self._arena_size = None if isinstance(entry.arena_bytes, Sym) \
            else int(entry.arena_bytes)
        self._idle = []  # argument vectors not in use
        self._fixed = []  # (slots, array)
        self._owned = ()  # (shape, dtype) of the leading outputs each vector keeps arrays for
        self._bound_slots = ()  # per bound array, the slots it fills
        self._bound_names = ()
        self._bound_metas = ()  # per bound array, the (shape, dtype) the code was built for
        # a zeroed status per argument vector (one call at a time) for entries with data
        # checks; the C code never reads it otherwise
        # (``newp`` with the resolved type: what ``ffi.new`` does, without parsing the type)
        self._status = functools.partial(_cffi_backend.newp, _STATUS, 1 + STATUS_DETAILS) \
            if entry.checks else None
        self._seed_slot, self._n_seeds = 0, 0
        # the thread count for a call: only entry points with parallel kernels look at load
        # (None: one thread)
        self._threads = compiled_threads if any(k.parallel for k, _ in entry.kernels) \
            else None

    def output_slot(self, j):
        return self.n_inputs + j

    def seeds_at(self, slot, n):
        """The ``n`` seed inputs from ``slot`` on get fresh values on every call."""
        self._seed_slot, self._n_seeds = slot, n

    def fix(self, slots, array):
        """Point ``slots`` at ``array`` for the lifetime of these arguments (declared before
        the first call)."""
        self._fixed.append((tuple(slots), array))
        self._idle = []

    def own_outputs(self, metas):
        """The leading output slots (``metas``: their static (shape, numpy dtype)) point at
        arrays of each vector's own, set once: a call with ``results`` appends copies of them.
        For small outputs a copy costs less than pointing a slot at a fresh array per call
        (declared before the first call)."""
        self._owned = tuple((tuple(shape), dt) for shape, dt in metas)
        self._idle = []

    def bind_slots(self, slot_groups, names):
        """Declare the bound arrays: array ``i`` (called ``names[i]`` in errors) fills the
        slots ``slot_groups[i]`` (a parameter updated in place is both an input and an
        output)."""
        self._bound_slots = tuple(tuple(g) for g in slot_groups)
        self._bound_names = tuple(names)
        self._bound_metas = tuple(self._slot_meta(g[0]) for g in self._bound_slots)
        self._idle = []

    def _slot_meta(self, slot):
        """(shape, numpy dtype) of the array the C code takes in ``slot``; None for a shape
        with size symbols."""
        graph = self.entry.graph
        v = graph.inputs[slot] if slot < self.n_inputs else graph.outputs[slot - self.n_inputs]
        return None if has_symbols(v.shape) else (tuple(v.shape), v.dtype.np)

    def _new_vector(self):
        n = max(self.entry.num_args, 1)
        args = self.ffi.new("void *[]", n)
        for slots, array in self._fixed:
            ptr = self.pointer(array)
            for s in slots:
                args[s] = ptr
        vector = _Vector(args, n, _NULL if self._status is None else self._status())
        vector.owned = tuple(np.empty(shape, dt) for shape, dt in self._owned)
        for j, arr in enumerate(vector.owned):
            args[self.n_inputs + j] = self.pointer(arr)
        return vector

    def _rebind(self, vector, arrays):
        args = vector.args
        for name, slots, meta, arr in zip(self._bound_names, self._bound_slots,
                                          self._bound_metas, arrays):
            if not arr.flags.c_contiguous:
                raise RuntimeError(f"{name} is not contiguous")
            if meta is not None and (arr.shape != meta[0] or arr.dtype != meta[1]):
                # (an array replaced by one of another shape or dtype, say through
                # ``.data =``: the C code would read it as the one it was built for)
                raise RuntimeError(
                    f"{name} is {_described(arr.shape, arr.dtype)} now; the compiled code "
                    f"was built for {_described(*meta)}: compile again after changing a "
                    "parameter's shape or dtype")
            ptr = self.pointer(arr)
            for s in slots:
                args[s] = ptr
        # kept alive: the slots hold their raw addresses (a tuple: a caller that passes the
        # same list object again, unchanged, is the common case ``__call__`` checks first)
        vector.bound = arrays if type(arrays) is tuple else tuple(arrays)

    def __call__(self, inputs=(), outputs=(), bound=(), sizes=NO_SIZES, spares=(),
                 results=None):
        """Call the entry point. ``inputs`` and ``outputs`` are this call's arrays for the
        leading input and output slots; ``bound`` the current long-lived arrays for the bound
        slots, re-pointed only if they are not the arrays the vector was bound to last time
        (the common case is one identity check per array, or none for the very tuple the
        vector was bound with, which the caller never changes); ``sizes`` the values of the size
        symbols (``SYMBOLS``), for graphs with a symbolic batch size or sequence length;
        ``spares`` a tuple of arrays for the output slots after ``outputs`` (reused buffers of
        saved values), re-pointed only when it is not the tuple of the vector's last call,
        which the vector keeps alive; ``results`` a list to append copies of the owned outputs
        to (``own_outputs``: then ``outputs`` are the slots after them). Returns the seeds drawn
        for this call (an int64 vector), if the entry point takes any, else None."""
        idle_vectors = self._idle
        try:
            vector = idle_vectors.pop()  # (atomic: a vector belongs to one call at a time)
        except IndexError:
            vector = self._new_vector()
        old = vector.bound
        if bound is not old and (len(bound) != len(old) or not all(map(_is, bound, old))):
            self._rebind(vector, bound)
        args, pointer, held = vector.args, self.pointer, vector.held
        k = 0
        # (the loop of ``_point_outputs``, inline: every call runs it, and a call to a helper
        # costs more than the loop itself on a batch-1 step)
        for arr in inputs:
            ref = held[k]
            if ref is None or ref() is not arr:
                args[k] = pointer(arr)
                held[k] = _weak(arr)
            k += 1
        if outputs or spares is not vector.spares:
            self._point_outputs(vector, outputs, spares)
        seeds = None
        if self._n_seeds:
            seeds = fresh_seeds(self._n_seeds)
            for k in range(self._n_seeds):
                args[self._seed_slot + k] = pointer(seeds[k:k + 1])
        status = vector.status
        threads = 1 if self._threads is None else self._threads()
        nbytes = self._arena_size
        if nbytes is None:
            nbytes = self.arena_bytes(sizes)
        if nbytes:
            idle = self.arenas.idle
            try:
                arena = idle.pop()  # atomic: no two calls get the same arena
                if arena.nbytes < nbytes:
                    arena = _Arena(nbytes)
            except IndexError:
                arena = _Arena(nbytes)
            self.fn(args, arena.pointer, status, sizes[0], sizes[1], threads)
            idle.append(arena)
        else:
            self.fn(args, _NULL, status, sizes[0], sizes[1], threads)
        if results is not None:
            results += map(_copy, vector.owned)
        if self.timing:
            self.log_kernel_times(sizes)
        if status and status[0]:
            failed = list(status[0:1 + STATUS_DETAILS])
            status[0] = 0  # (the vector's next call starts from a zero status)
            idle_vectors.append(vector)
            self.raise_check(failed)
        idle_vectors.append(vector)
        return seeds

    def _point_outputs(self, vector, outputs, spares):
        """Point the per-call output slots at ``outputs`` and, unless they are the very tuple
        of the vector's last call, the slots after them at ``spares``."""
        args, pointer, held = vector.args, self.pointer, vector.held
        k = self.n_inputs + len(vector.owned)
        for arr in outputs:
            ref = held[k]
            if ref is None or ref() is not arr:
                args[k] = pointer(arr)
                held[k] = _weak(arr)
            k += 1
        if spares is not vector.spares:
            for arr in spares:
                args[k] = pointer(arr)
                k += 1
            vector.spares = spares

    def raise_check(self, status):
        """Raise the exception eager mode raises for the data check that failed (``status``:
        the call's status words)."""
        exc, message = self.entry.checks[status[0] - 1]
        raise exc(message.format(*status[1:1 + STATUS_DETAILS]))

    def log_kernel_times(self, sizes=NO_SIZES):
        """Per-kernel time of the last call (built with timing under TRACENET_DEBUG=time)."""
        times = getattr(self.library.lib, f"{self.entry.name}_kernel_times", None)
        if times is None:
            return
        times = times()
        for i, (k, node) in enumerate(self.entry.kernels):
            flops = evaluator(k.flops)(sizes)
            rate = f"  {flops / times[i] * 1e-9:6.1f} GFLOP/s" if flops and times[i] else ""
            debug.log("time", f"{k.name}: {times[i] * 1e6:9.1f} us{rate}")


def _described(shape, dtype):
    return f"{dtype.name} of shape {tuple(shape)}"


# the specialisations one callable may make for one key because the guards of the ones before
# failed (a Python value the traced code read changed): a call that none of them fits then runs
# eagerly. A number that changes on every call (a step counter read by the traced code) would
# otherwise trace and build on every call, ~145 ms each for a small step function, and keep
# every build.
MAX_GUARDED_VARIANTS = 8


class TooManyVariants(Exception):
    """Raised by a callable's lookup when a key's guarded variants reached
    ``MAX_GUARDED_VARIANTS``: the call runs eagerly (``warn_running_eagerly``)."""

    def __init__(self, changed):
        super().__init__(changed)
        self.changed = changed


def warn_running_eagerly(name, error, warned):
    """Warn once per callable (``warned``: a one-element list) that a call runs eagerly."""
    if warned[0]:
        return
    warned[0] = True
    changed = ", ".join(error.changed) or "a value the traced code read"
    warnings.warn(f"tracenet.compile: {name} was traced {MAX_GUARDED_VARIANTS} times for the "
                  f"same inputs because what the traced code read changed ({changed}); calls "
                  "that none of those traces fits run eagerly from now on (pass a number that "
                  "changes from call to call as a tensor)", RuntimeWarning, stacklevel=3)


class Specialisations(dict):
    """key -> specialisation, for one compiled callable; ``last`` is the one used last.
    Its specialisations share ``arenas``: one thread calls one of them at a time, so the
    callable holds the work memory of its largest specialisation, not of all of them."""

    def __init__(self, name):
        super().__init__()
        self.name = name
        self.last = None
        self.arenas = Arenas()

    def create(self, key, make, shown, rekey=None):
        """Compile the specialisation for a new ``key``: ``make(unit)`` (whose result has an
        ``executable``) with a C unit name of its own; ``shown`` describes the key in the cache
        log. ``rekey(spec)``, if given, is the key to keep it under when compiling refines the
        key. Threads compile one at a time; one that waited finds the specialisation another
        made for its key."""
        with _compiling:
            spec = self.get(key)
            # (a specialisation whose guards no longer hold is why the caller is here)
            if spec is not None and spec.guards.hold():
                return spec
            if self:
                debug.log("cache", f"new specialisation for {shown} (have {len(self)})")
            spec = make(c_identifier(f"{self.name}_{len(self)}"))
            spec.executable.share_arenas(self.arenas)
            self[key if rekey is None else rekey(spec)] = spec
            return spec

    def create_symbolic(self, key, make, shown, sizes, rekey=None):
        """``create``, or None when the trace or the code needed the exact value of a size
        that ``sizes`` made symbolic (the caller then specialises on exact sizes)."""
        try:
            return self.create(key, make, shown, rekey)
        except Specialize as why:
            if sizes is None:
                raise AssertionError(f"no size is symbolic, yet: {why}") from None
            debug.log("cache", f"specialising on the exact sizes of {shown}: {why}")
            return None
