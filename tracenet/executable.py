"""Generated C ready to call: the layer ``tracenet.compile`` and ``tracenet.compile_step`` share.

A compiled specialisation is a few graphs run through the pass pipeline, emitted as one C
translation unit, built (or loaded from the cache) and called through one reusable ``void *[]``
per entry point. The front ends differ only in the graphs they build and in which arguments
change from call to call; everything else is here:

* ``optimise(graph)``: the pass pipeline every compiled graph goes through;
* ``Executable(graphs, unit)``: generate -> build -> load, with one ``Arguments`` per graph;
* ``Arguments``: an entry point's argument vector (the graph's inputs, then its outputs).
  *Bound* slots point at long-lived arrays (parameters, buffers, optimizer state) and are
  re-pointed only when those arrays are replaced; *fixed* slots point at arrays the caller owns
  for the executable's lifetime; the rest (batch, seeds, fresh outputs) are set on every call;
* ``Specialisations``: the compiled specialisations of one callable, by key.
"""
import functools

import _cffi_backend

from .codegen.base import STATUS_DETAILS, has_lowering
from .codegen.emit import c_identifier, generate
from .ir.verify import verify
from .passes import fuse, simplify
from .passes.decompose import decompose
from .passes.lower import lower_gemm
from .runtime import build, debug, target as runtime_target
from .trace import fresh_seeds


def optimise(graph):
    """The pass pipeline every compiled graph goes through (verified after each pass)."""
    verify(decompose(graph, has_lowering))  # ops without a C lowering of their own
    for p in (simplify, lower_gemm):
        verify(p(graph))
    debug.log("ir", f"before fusion:\n{graph}")
    verify(fuse(graph))
    debug.log("fusion", f"after fusion:\n{graph}")
    return graph


class Executable:
    """``graphs`` (a list of (entry suffix, optimised Graph)) as one built, loaded C library;
    ``arguments[i]`` calls the entry point of ``graphs[i]``."""

    def __init__(self, graphs, unit):
        self.timing = debug.enabled("time")  # built with per-kernel clocks
        self.source_code, cdef, entries, openmp = generate(graphs, unit, runtime_target.current(),
                                                           timing=self.timing)
        self.library = build.build(self.source_code, cdef, name=unit, openmp=openmp)
        self.entries = entries
        self.arguments = [Arguments(self.library, entry, self.timing) for entry in entries]


class Arguments:
    """One entry point and the ``void *[]`` it is called with, reused across calls.

    Slot ``i < n_inputs`` is graph input ``i``; slot ``n_inputs + j`` is graph output ``j``.
    A slot holds a raw address, so whoever sets it keeps the array alive: bound and fixed
    arrays are kept here, per-call arrays by the caller until the call returns."""

    __slots__ = ("entry", "library", "timing", "ffi", "pointer", "fn", "args", "n_inputs",
                 "_fixed", "_bound_slots", "_bound_names", "_bound", "_status")

    def __init__(self, library, entry, timing):
        self.entry = entry
        self.library = library
        self.timing = timing
        self.ffi = library.ffi
        # a ``char[]`` over an array's buffer, whose address a ``void *`` slot takes: what
        # ``ffi.from_buffer(array)`` returns, without its Python-level argument handling
        self.pointer = functools.partial(_cffi_backend.from_buffer, self.ffi.typeof("char[]"))
        self.fn = getattr(library.lib, entry.name)
        self.args = self.ffi.new("void *[]", max(entry.num_args, 1))
        self.n_inputs = len(entry.graph.inputs)
        self._fixed = []
        self._bound_slots = ()  # per bound array, the slots it fills
        self._bound_names = ()
        self._bound = ()  # the arrays the bound slots point at
        # a fresh zeroed status per call (thread-safe) for entries with data checks; the C
        # code never reads it otherwise
        self._status = functools.partial(self.ffi.new, "int64_t[]", 1 + STATUS_DETAILS) \
            if entry.checks else (lambda: self.ffi.NULL)

    def output_slot(self, j):
        return self.n_inputs + j

    def set_seeds(self, slot, n):
        """Fresh values for the ``n`` seed inputs from ``slot`` on; returns them (an int64
        vector the caller keeps until the call returns)."""
        seeds = fresh_seeds(n)
        for k in range(n):
            self.args[slot + k] = self.pointer(seeds[k:k + 1])
        return seeds

    def fix(self, slots, array):
        """Point ``slots`` at ``array`` for the lifetime of this vector."""
        ptr = self.pointer(array)
        for s in slots:
            self.args[s] = ptr
        self._fixed.append(array)

    def bind_slots(self, slot_groups, names):
        """Declare the bound arrays: array ``i`` (called ``names[i]`` in errors) fills the
        slots ``slot_groups[i]`` (a parameter updated in place is both an input and an
        output)."""
        self._bound_slots = tuple(tuple(g) for g in slot_groups)
        self._bound_names = tuple(names)
        self._bound = [None] * len(self._bound_slots)  # none yet

    def _rebind(self, arrays):
        args = self.args
        for name, slots, arr in zip(self._bound_names, self._bound_slots, arrays):
            if not arr.flags.c_contiguous:
                raise RuntimeError(f"{name} is not contiguous")
            ptr = self.pointer(arr)
            for s in slots:
                args[s] = ptr
        self._bound = list(arrays)  # kept alive: the slots hold their raw addresses

    def __call__(self, inputs=(), outputs=(), bound=()):
        """Call the entry point. ``inputs`` and ``outputs`` are this call's arrays for the
        leading input and output slots; ``bound`` the current long-lived arrays for the bound
        slots, re-pointed only if they are not the arrays bound last time (the common case is
        one identity check per array). Other slots keep what was set."""
        for new, old in zip(bound, self._bound):
            if new is not old:
                self._rebind(bound)
                break
        else:
            if len(bound) != len(self._bound):
                self._rebind(bound)
        args, pointer = self.args, self.pointer
        k = 0
        for arr in inputs:
            args[k] = pointer(arr)
            k += 1
        k = self.n_inputs
        for arr in outputs:
            args[k] = pointer(arr)
            k += 1
        status = self._status()
        self.fn(args, status)
        if self.timing:
            self.log_kernel_times()
        if status and status[0]:
            self.raise_check(status)

    def raise_check(self, status):
        """Raise the exception eager mode raises for the data check that failed."""
        exc, message = self.entry.checks[status[0] - 1]
        raise exc(message.format(*status[1:1 + STATUS_DETAILS]))

    def log_kernel_times(self):
        """Per-kernel time of the last call (built with timing under TRACENET_DEBUG=time)."""
        times = getattr(self.library.lib, f"{self.entry.name}_kernel_times", None)
        if times is None:
            return
        times = times()
        for i, (k, node) in enumerate(self.entry.kernels):
            rate = f"  {k.flops / times[i] * 1e-9:6.1f} GFLOP/s" if k.flops and times[i] else ""
            debug.log("time", f"{k.name}: {times[i] * 1e6:9.1f} us{rate}")


class Specialisations(dict):
    """key -> specialisation, for one compiled callable; ``last`` is the one used last."""

    def __init__(self, name):
        super().__init__()
        self.name = name
        self.last = None

    def create(self, key, make, shown, rekey=None):
        """Compile the specialisation for a new ``key``: ``make(unit)`` with a C unit name of
        its own; ``shown`` describes the key in the cache log. ``rekey(spec)``, if given, is
        the key to keep it under when compiling refines the key."""
        if self:
            debug.log("cache", f"new specialisation for {shown} (have {len(self)})")
        spec = make(c_identifier(f"{self.name}_{len(self)}"))
        self[key if rekey is None else rekey(spec)] = spec
        return spec
