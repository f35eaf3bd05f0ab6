"""``tracenet.compile(net)``: run ``net.forward`` (and its backward) as generated C.

Per specialisation (input shapes/dtypes, training flag, grad mode) the module is traced, the
backward graph derived on the IR, both graphs simplified, lowered and fused, and emitted as one
C translation unit that is built (or loaded from the cache) once. A call then costs one C call
for the forward; ``loss.backward()`` reaches a ``CompiledFunctionBackward`` node that runs the
backward graph in one C call and hands the parameter gradients to the autograd engine, which
accumulates them into ``.grad`` exactly as in eager mode (``compiled_pair.py``, shared with a
compiled function whose outputs keep their history).
"""
from . import warm
from ._name_guards import NameGuards
from .autograd import grad_mode
from .compiled_function import CompiledFunction, call_inline, module_wrapper, \
    tracing_a_function
from .compiled_pair import CompiledPair
from .executable import MAX_GUARDED_VARIANTS, Executable, Specialisations, SymbolicSizes, \
    TooManyVariants, warn_running_eagerly
from .nn.modules.module import Module
from .runtime import debug
from .tensor import Tensor
from .trace import Guards, rebuild, specialisation_key, structure_of, trace


class Specialisation(CompiledPair):
    """Everything compiled for one key: graphs, the executable and how to call it. Made by
    tracing ``module`` or, when ``stored`` (a graph cache payload, see ``stored_state``) and
    ``guards`` are given, from what an earlier process traced and built."""

    def __init__(self, module, inputs, key, unit, input_structure=None, sizes=None,
                 stored=None, guards=None):
        clock = self._clock = debug.CompileClock(f"{type(module).__name__} {key}")
        params = _state(module)
        self.key = key
        self.checks = None  # what a new process must re-check to reuse this (None: it cannot)
        if stored is None:
            traced = self._trace(module, inputs, key, input_structure, params, sizes)
            params = params + traced.captured  # (read like buffers, after the module's state)
        else:
            traced = None
            self.guards = guards
            self._names = stored["names"]
        super().__init__(params, len(inputs), traced, unit, stored, clock)
        cached = self.executable.library.cached
        self.compile_seconds = clock.done(
            "graph cache" if stored is not None else "cache hit" if cached else "compiled")
        del self._clock

    def _trace(self, module, inputs, key, input_structure, params, sizes):
        """Trace ``module``'s forward (differentiated, optimised and built by ``CompiledPair``);
        returns the traced graph."""
        if input_structure is None:
            fwd = trace(module, *inputs, name=type(module).__name__, sizes=sizes)
        else:  # nested or keyword inputs (an LSTM's (h0, c0)): trace through a flattening
            # wrapper
            fwd = trace(lambda *flat: _call_flat(module, input_structure, flat), *inputs,
                        name=type(module).__name__, state=params, sizes=sizes)
        # what the trace assumed of the module: its attributes read, its tree's structure and,
        # when it traced with grad enabled, which parameters require grad
        names = fwd.name_guards  # (the globals and closure cells of the code that ran)
        self.guards = Guards(fwd.reads, [module],
                             [p for _, p in params + fwd.captured] if key[2] else [],
                             fwd.captured_at + names.found + names.names, fwd.frozen,
                             values=names.values)
        self._clock.lap("trace")
        self.checks = warm.checks_of(fwd, [module])
        self._names = names.portable()
        if self.checks is not None and self._names is None:
            debug.log("cache", "graph not cached: forward reads a closure cell or globals not "
                      "of a module")
            self.checks = None
        debug.log("ir", f"traced forward:\n{fwd}")
        return fwd

    def stored_state(self):
        """What a new process needs to rebuild this specialisation without tracing."""
        state = self.pair_state()
        state["params"] = [(n, tuple(p.shape), p.dtype.short) for n, p in self.params]
        state["names"] = self._names
        return state


def _specialise(module, inputs, shown, unit, structure, key, sizes):
    """The specialisation for ``key``: from the graph cache when an earlier process stored one
    whose checks hold now, else traced (and stored when a new process can check it)."""
    cache_key = warm.module_key(module, key, sizes) if warm.enabled() else None
    if cache_key is not None:
        stored = warm.load(cache_key, [module])
        if stored is not None:
            with warm.restoring(cache_key):
                spec = _restore(module, inputs, shown, unit, structure, key, *stored)
                if spec is not None:
                    warm.used(cache_key)
                    return spec
    spec = Specialisation(module, inputs, shown, unit, structure, sizes)
    if cache_key is not None and spec.checks is not None:
        warm.store(cache_key, spec.stored_state(), spec.checks)
    return spec


def _restore(module, inputs, shown, unit, structure, key, state, reads):
    params = _state(module)
    if [(n, tuple(p.shape), p.dtype.short) for n, p in params] != state["params"]:
        return None
    executable = Executable.restore(state["executable"])
    if executable is None:
        return None
    state["executable"] = executable
    names = NameGuards.found_again(state["names"])
    if names is None:
        return None
    guards = Guards(reads, [module], [p for _, p in params] if shown[2] else [],
                    names.found + names.names, values=names.values)
    return Specialisation(module, inputs, shown, unit, structure, stored=state, guards=guards)


def _call_flat(module, structure, flat):
    """Call ``module`` on the inputs ``flat`` rebuilt by ``structure``: a template of the
    positional inputs, or ``("call", positional template, keyword names, keyword template)``."""
    if structure[0] != "call":
        return module(*rebuild(structure, flat))
    _, args, names, kwargs = structure
    return module(*rebuild(args, flat), **dict(zip(names, rebuild(kwargs, flat))))


def _flatten_call(args, kwargs):
    """The tensors of a call's positional and keyword inputs and the template to rebuild them
    (None when every input is a positional tensor)."""
    if not kwargs:
        for x in args:
            if not isinstance(x, Tensor):
                break
        else:
            return args, None
    leaves = []
    structure = ("tuple", tuple(structure_of(a, leaves) for a in args))
    if kwargs:
        names = tuple(kwargs)
        structure = ("call", structure, names,
                     ("tuple", tuple(structure_of(kwargs[n], leaves) for n in names)))
    return tuple(leaves), structure


def _state(module):
    out = list(module.named_parameters())
    seen = {id(p) for _, p in out}
    out += [(n, b) for n, b in module.named_buffers() if id(b) not in seen]
    return out


@module_wrapper
class CompiledModule:
    """A drop-in for ``module`` whose forward and backward run as compiled C.

    It shares the module's Parameter objects, so optimizers, ``state_dict`` and in-place updates
    keep working and weight changes never trigger recompilation."""

    def __init__(self, module, dynamic=True):
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_specs", Specialisations(type(module).__name__))
        # cheap key -> the specialisations made for it, most recently used first; the first
        # whose guards hold runs
        object.__setattr__(self, "_lines", {})
        object.__setattr__(self, "_sizes", SymbolicSizes(dynamic))
        object.__setattr__(self, "_warned", [False])  # (whether calls running eagerly were)

    def __reduce__(self):
        # pickling a compiled module pickles the module; unpickling compiles it again
        return (compile if self._sizes.dynamic else _compile_static, (self._module,))

    # module-like surface ---------------------------------------------------------------------
    def __getattr__(self, name):
        return getattr(self._module, name)

    def __setattr__(self, name, value):
        setattr(self._module, name, value)

    def __repr__(self):
        return f"CompiledModule({self._module!r})"

    def train(self, mode=True):
        self._module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    @property
    def _last(self):
        return self._specs.last

    @property
    def graph(self):
        """The forward IR of the last specialisation (after the pass pipeline)."""
        return self._last.forward_graph if self._last else None

    @property
    def backward_graph(self):
        return self._last.backward_graph if self._last else None

    @property
    def specialisations(self):
        return dict(self._specs)

    def source(self):
        """The generated C of the last specialisation."""
        return self._last.source_code if self._last else None

    # calling ---------------------------------------------------------------------------------
    def _rest(self, inputs, structure):
        """What a specialisation depends on besides input shapes and dtypes: requires_grad of
        the inputs, the training flag, grad mode and the call's structure."""
        return (tuple([x._requires_grad for x in inputs]), self._module.training,
                grad_mode._state.enabled, structure)

    def __call__(self, *args, **kwargs):
        if tracing_a_function():  # (inside tracenet.compile(fn): traced into its graph)
            return call_inline(self, args, kwargs)
        inputs, structure = _flatten_call(args, kwargs)
        try:
            spec = self._sizes.specialisation(
                [x._data for x in inputs], inputs, self._rest(inputs, structure), self._lines,
                lambda key, line, sizes: self._lookup(key, line, inputs, structure, sizes))
        except TooManyVariants as e:
            warn_running_eagerly(type(self._module).__name__, e, self._warned)
            return self._module(*args, **kwargs)
        self._specs.last = spec
        return spec.call(inputs)

    def _lookup(self, key, line, inputs, structure, sizes=None):
        """The specialisation for ``key`` whose guards hold (moved to the front of its line),
        or a new one when none does: a module attribute the forward read, or the module tree,
        changed since the others were traced."""
        if line is None:
            line = self._lines[key] = []
        for i, spec in enumerate(line):
            if spec.guards.hold():
                line.insert(0, line.pop(i))
                return spec
        if len(line) >= MAX_GUARDED_VARIANTS:
            raise TooManyVariants(line[0].guards.changed())
        shown = specialisation_key(inputs, self._module, sizes)
        if line:
            debug.log("cache", f"guards failed for {shown}: "
                               f"{', '.join(str(s.guards) for s in line)}")
        n = len(line)
        spec = self._specs.create_symbolic(key, lambda unit: _specialise(
            self._module, inputs, shown, unit, structure, key, sizes), shown, sizes,
            rekey=lambda spec: key if n == 0 else key + (n,))
        if spec is None:
            if not line:
                del self._lines[key]
            return None
        line.insert(0, spec)
        return spec


def compile(module, *, dynamic=True):
    """Compile ``module`` (a ``tracenet.nn.Module``) into a ``CompiledModule``, or a function
    (a training or inference step, see ``tracenet/compiled_function.py``) into a
    ``CompiledFunction``.

    With ``dynamic=True`` (the default) the batch size stays symbolic: the leading dimension of
    the first input, and of every input of the same leading size, is the symbol ``N``, so one
    build serves every batch size (unless the model needs its exact value, e.g. in
    ``x.view(4, -1)``: then each batch size is specialised, as with ``dynamic=False``).
    ``dynamic=False`` specialises on every input shape exactly."""
    if dynamic is not None and not isinstance(dynamic, bool):
        raise TypeError(f"dynamic must be a bool, got {type(dynamic).__name__}")
    if not isinstance(module, Module):
        if callable(module):  # a whole step function: traced with its backward and updates
            return CompiledFunction(module, dynamic=dynamic is not False)
        raise TypeError(f"tracenet.compile expects an nn.Module or a function, got "
                        f"{type(module).__name__}")
    return CompiledModule(module, dynamic=dynamic is not False)


def _compile_static(module):
    return compile(module, dynamic=False)
