"""``tracenet.compile(net)``: run ``net.forward`` (and its backward) as generated C.

Per specialisation (input shapes/dtypes, training flag, grad mode) the module is traced, the
backward graph derived on the IR, both graphs simplified, lowered and fused, and emitted as one
C translation unit that is built (or loaded from the cache) once. A call then costs one C call
for the forward; ``loss.backward()`` reaches a ``CompiledFunctionBackward`` node that runs the
backward graph in one C call and hands the parameter gradients to the autograd engine, which
accumulates them into ``.grad`` exactly as in eager mode.
"""
import operator
import sys

import numpy as np

from . import _aligned, warm
from .autograd import engine, grad_mode
from .compiled_function import CompiledFunction, call_inline, module_wrapper, \
    tracing_a_function
from .executable import Executable, ShapeTable, SizeChecks, Specialisations, SymbolicSizes, \
    graph_symbols, optimise, run_sizes
from .nn.modules.module import Module
from .passes import grad as ir_grad, joint_forward
from .passes.autodiff import view_source
from .runtime import debug
from .tensor import Tensor
from ._sym import NO_SIZES
from .trace import Guards, rebuild, specialisation_key, structure_of, trace


_data_of = operator.attrgetter("_data")
_refcount = sys.getrefcount
# what a parameter's autograd edge depends on (``engine.edge_of``)
_leaf_state = operator.attrgetter("_grad_fn", "_base_", "_req", "_accumulator")


def _taker(indices):
    """A function of a list giving its items at ``indices`` as a list (``itemgetter`` in C)."""
    if not indices:
        return lambda pool: []
    if len(indices) == 1:
        i = indices[0]
        return lambda pool: [pool[i]]
    get = operator.itemgetter(*indices)
    return lambda pool: list(get(pool))


class Specialisation:
    """Everything compiled for one key: graphs, the executable and how to call it. Made by
    tracing ``module`` or, when ``stored`` (a graph cache payload, see ``stored_state``) and
    ``guards`` are given, from what an earlier process traced and built."""

    # what a graph cache entry keeps, besides the executable
    _STORED = ("output_structure", "state_updates", "n_out", "n_seeds", "size_checks",
               "differentiable", "needs_grad", "saved_sources", "recyclable",
               "version_checked", "grad_of", "cotangent_of")

    def __init__(self, module, inputs, key, unit, input_structure=None, sizes=None,
                 stored=None, guards=None):
        clock = self._clock = debug.CompileClock(f"{type(module).__name__} {key}")
        params = _state(module)
        self.key = key
        self.params = params
        self.n_user = len(inputs)
        self.checks = None  # what a new process must re-check to reuse this (None: it cannot)
        self.size_checks = []
        if stored is None:
            graphs = self._trace(module, inputs, key, unit, input_structure, params, sizes)
        else:
            self.guards = guards
            for name in self._STORED:
                if name in stored:
                    setattr(self, name, stored[name])
            graphs = stored["graphs"]
            self.forward_graph = graphs[0][1]
            self.backward_graph = graphs[1][1] if self.needs_grad else None
            self.executable = stored["executable"]
        # forward arguments: user inputs, parameters and buffers (bound), seeds; outputs
        self._forward = self.executable.arguments[0]
        self._forward.bind_slots([[self.n_user + i] for i in range(len(params))],
                                 [f"parameter {name}" for name, _ in params])
        self._forward.seeds_at(self.n_user + len(params), self.n_seeds)
        self._param_tensors = [p for _, p in params]
        self.out_meta = [(v.shape, v.dtype.np) for v in graphs[0][1].outputs]
        if self.needs_grad:  # backward arguments: cotangents, saved values; gradients
            self._backward = self.executable.arguments[1]
            self.grad_shapes = ShapeTable((v.shape, v.dtype.np)
                                          for v in self.backward_graph.outputs)
        # the buffers of saved values (the last outputs), handed back together, with the
        # sizes they were made for, after backward: reusing them avoids fresh (page-faulting)
        # allocations and re-pointing their argument slots on every training call. (Saved
        # values are always the last outputs; were they not, none would be reused.)
        n_outs, recyclable = len(self.out_meta), list(self.recyclable)
        self.n_fresh = n_outs - len(recyclable) \
            if recyclable == list(range(n_outs - len(recyclable), n_outs)) else n_outs
        self._spare_sets = []
        # with symbolic sizes, shapes are evaluated for each call's sizes: the outputs made
        # for each call, the reusable ones
        self.symbols = graph_symbols(g for _, g in graphs)
        self.check_sizes = SizeChecks(self.size_checks)
        self.fresh_shapes = ShapeTable(self.out_meta[:self.n_fresh])
        self.spare_shapes = ShapeTable(self.out_meta[self.n_fresh:])
        self.user_out_shapes = ShapeTable(self.out_meta[:self.n_out])
        if self.needs_grad:
            self._plan_backward()
        cached = self.executable.library.cached
        self.compile_seconds = clock.done(
            "graph cache" if stored is not None else "cache hit" if cached else "compiled")
        del self._clock

    def _trace(self, module, inputs, key, unit, input_structure, params, sizes):
        """Trace, differentiate, optimise and build; returns the (entry suffix, graph) list."""
        if input_structure is None:
            fwd = trace(module, *inputs, name=type(module).__name__, sizes=sizes)
        else:  # nested or keyword inputs (an LSTM's (h0, c0)): trace through a flattening
            # wrapper
            fwd = trace(lambda *flat: _call_flat(module, input_structure, flat), *inputs,
                        name=type(module).__name__, state=params, sizes=sizes)
        # what the trace assumed of the module: its attributes read, its tree's structure and,
        # when it traced with grad enabled, which parameters require grad
        self.guards = Guards(fwd.reads, [module],
                             [p for _, p in params] if key[2] else [])
        self._clock.lap("trace")
        self.checks = warm.checks_of(fwd, [module])
        self.output_structure = fwd.output_structure
        self.size_checks = list(fwd.size_checks)
        debug.log("ir", f"traced forward:\n{fwd}")
        self.state_updates = list(fwd.state_updates)
        self.n_out = len(fwd.outputs) - len(self.state_updates)
        # random ops' seeds: the last graph inputs, given fresh values on every call
        self.n_seeds = len(fwd.seed_inputs)
        assert fwd.inputs[len(fwd.inputs) - self.n_seeds:] == fwd.seed_inputs
        self.differentiable = [v.requires_grad for v in fwd.outputs[:self.n_out]]
        self.needs_grad = any(self.differentiable)
        self.forward_graph = fwd
        self.backward_graph = None
        if self.needs_grad:
            bwd = ir_grad(fwd)
            debug.log("ir", f"traced backward:\n{bwd}")
            joint = joint_forward(fwd, bwd)
            # where each saved value of the backward graph comes from at run time
            self.saved_sources = joint.saved_sources
            first_saved = len(fwd.outputs)  # user outputs and state updates come first
            self.recyclable = sorted({i for kind, i in self.saved_sources
                                      if kind == "output" and i >= first_saved})
            fwd_index = {v: i for i, v in enumerate(fwd.inputs)}
            self.version_checked = sorted({fwd_index[v] for v in map(view_source, bwd.saved)
                                           if v in fwd_index})
            self.grad_of = [fwd_index[v] for v in bwd.grad_of]
            self.cotangent_of = [fwd.outputs.index(v) for v in bwd.cotangent_of]
            self._clock.lap("autodiff")
            self.backward_graph = optimise(bwd)
            graphs = [("forward", optimise(joint)), ("backward", self.backward_graph)]
            self.forward_graph = joint
        else:
            self.recyclable = []
            graphs = [("forward", optimise(fwd))]
        self._clock.lap("passes")
        self.executable = Executable(graphs, unit)
        return graphs

    def stored_state(self):
        """What a new process needs to rebuild this specialisation without tracing (the
        graphs first: pickling reaches the values through them)."""
        graphs = [("forward", self.forward_graph)]
        if self.needs_grad:
            graphs.append(("backward", self.backward_graph))
        state = {"graphs": graphs, "executable": self.executable.stored_state(),
                 "params": [(n, tuple(p.shape), p.dtype.short) for n, p in self.params]}
        for name in self._STORED:
            if hasattr(self, name):
                state[name] = getattr(self, name)
        return state

    @property
    def source_code(self):
        return self.executable.source_code

    @property
    def library(self):
        return self.executable.library

    def _plan_backward(self):
        """What a training call hands its backward node, worked out once: where each saved
        value comes from in the call's array pool (user inputs, parameters, seeds, outputs,
        in that order), which leaves get an edge and which are version-checked."""
        n_user, n_params = self.n_user, len(self.params)
        first_out = n_user + n_params + self.n_seeds
        self._grad_pool = []  # [(sizes, tuple of gradient arrays)] of earlier backward calls
        self._saved_plan = [idx if kind == "input" else first_out + idx
                            for kind, idx in self.saved_sources]
        self.take_saved = _taker(self._saved_plan)
        # the leaves whose versions the backward checks: user inputs (by index), parameters
        self.checked_inputs = [i for i in self.version_checked if i < n_user]
        self.checked_params = [self._param_tensors[i - n_user] for i in self.version_checked
                               if i >= n_user]
        self.differentiable_outputs = [i for i, d in enumerate(self.differentiable) if d]
        # the parameters' edges (their AccumulateGrad nodes, kept from call to call: a leaf
        # holds its node weakly, so each graph would otherwise make new ones), valid while
        # the parameters' autograd state is ``_leaf_states``
        self._user_grads = any(i < n_user for i in self.grad_of)
        self._leaf_states = None
        self._param_edges = ()
        self.accumulators = []
        self.leaf_ids = None

    def edges(self, inputs):
        """The autograd edges of a call on ``inputs``, one per differentiated input (user
        inputs and parameters, in ``grad_of`` order)."""
        params = self._param_tensors
        states = list(map(_leaf_state, params))
        if states != self._leaf_states or self._user_grads:
            leaves = list(inputs) + params
            edges = tuple([engine.edge_of(leaves[i]) for i in self.grad_of])
            n_user = self.n_user
            self.accumulators = [n for i, (n, _) in zip(self.grad_of, edges)
                                 if i >= n_user and type(n) is engine.AccumulateGrad]
            # (plain leaves only: a view's or a non-leaf's edge is worked out every call)
            plain = all(g is None and b is None for g, b, _, _ in states)
            self._leaf_states = states if plain else None
            # (kept only when they are the parameters' alone: a user input's edge would keep
            # the call's input and its graph alive)
            self._param_edges = edges if not self._user_grads else ()
            # (for the engine's chain: every edge to a leaf of its own; the ids stay theirs
            # while ``accumulators`` holds the nodes)
            ids = {id(n) for n in self.accumulators}
            self.leaf_ids = frozenset(ids) if plain and not self._user_grads and \
                len(ids) == len(edges) else None
            return edges
        return self._param_edges

    # --- calling -----------------------------------------------------------------------------
    def run_forward(self, inputs):
        """Run the forward on the tensors ``inputs``: (the call's array pool: user inputs,
        parameters, seeds as 0-d arrays, outputs; the outputs made for this call; the reusable
        outputs after them, a tuple; the size values)."""
        arrays = []
        for x in inputs:
            arr = x._data
            arrays.append(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))
        symbols = self.symbols
        sizes = run_sizes(arrays, symbols) if symbols else NO_SIZES
        if self.check_sizes:
            self.check_sizes(sizes)
        # (numpy's allocation: these are made on every call, mostly small, and the aligned
        # one costs ~350 ns more; the pooled saved values and gradients are aligned)
        outs = [np.empty(shape, dt) for shape, dt in self.fresh_shapes(sizes)]
        spares = None
        if self._spare_sets:
            try:
                made_for, spares = self._spare_sets.pop()  # (atomic: one thread gets them)
                if made_for != sizes:
                    spares = None
            except IndexError:  # another thread took the last ones
                pass
        if spares is None:
            spares = tuple([_aligned.empty(shape, dt)
                            for shape, dt in self.spare_shapes(sizes)])
        params = list(map(_data_of, self._param_tensors))
        seeds = self._forward(arrays, outs, params, sizes, spares)
        arrays += params
        if seeds is not None:
            # kept with the user inputs: the backward may read them as saved values
            arrays += [seeds[k:k + 1].reshape(()) for k in range(self.n_seeds)]
        arrays += outs
        arrays += spares
        return arrays, outs, spares, sizes

    def run_backward(self, cotangents, saved, sizes):
        grads = self._free_gradients(sizes)
        if grads is None:
            grads = tuple([_aligned.empty(shape, dt) for shape, dt in self.grad_shapes(sizes)])
        cotangents += saved
        # (the gradients as the argument vector's tuple of last outputs: the same tuple again
        # re-points nothing; the tuple holds each array once, wherever it is kept)
        self._backward(cotangents, (), (), sizes, grads)
        self._grad_pool.append((sizes, grads))
        return grads

    def _free_gradients(self, sizes):
        """The gradient arrays of an earlier backward if nothing outside this pool holds them
        any more (a loop that drops ``.grad`` in ``zero_grad`` gets the same arrays again, so
        nothing is allocated and no argument slot re-pointed), else None."""
        try:
            last_sizes, grads = self._grad_pool.pop()  # (atomic: one thread gets them)
        except IndexError:
            return None
        if last_sizes != sizes:
            return None
        for a in grads:
            # the pool's tuple, this loop and getrefcount's argument: nobody else
            if _refcount(a) != 3:
                return None
        return grads


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
    guards = Guards(reads, [module], [p for _, p in params] if shown[2] else [])
    return Specialisation(module, inputs, shown, unit, structure, stored=state, guards=guards)


class CompiledFunctionBackward(engine.Node):
    """The backward of one compiled forward call."""
    __slots__ = ("spec", "saved", "saved_versions", "freed", "out_shapes", "_num_outputs",
                 "recyclable", "sizes", "_leaf_ids")
    # its gradients are arrays made for this call: a leaf may keep one as its .grad
    _fresh_results = True

    def _run(self, grads):
        if self.freed:
            raise RuntimeError(engine._FREED_MSG)
        for t, version in self.saved_versions:
            if t._vc.value != version:
                raise RuntimeError(engine._inplace_error(t, version))
        spec = self.spec
        cots = []
        for idx in spec.cotangent_of:
            g = grads[idx]
            shape, dt = self.out_shapes[idx]
            if g is None:
                cots.append(np.zeros(shape, dt))
                continue
            arr = g._data if g._ir is None else g._concrete("backward")
            if arr.dtype is not dt and arr.dtype != dt:
                arr = arr.astype(dt)
            cots.append(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))
        return tuple(map(Tensor._wrap, spec.run_backward(cots, self.saved, self.sizes)))

    def _release(self):
        self.freed = True
        if self.recyclable:
            self.spec._spare_sets.append((self.sizes, self.recyclable))
        self.saved = None
        self.recyclable = ()


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
        spec = self._sizes.specialisation(
            [x._data for x in inputs], inputs, self._rest(inputs, structure), self._lines,
            lambda key, line, sizes: self._lookup(key, line, inputs, structure, sizes))
        self._specs.last = spec
        return self._run(spec, inputs)

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

    def _run(self, spec, inputs):
        pool, outs, spares, sizes = spec.run_forward(inputs)
        for state_index, out_index in spec.state_updates:
            buf = spec.params[state_index][1]  # e.g. a running mean, updated as in eager mode
            np.copyto(buf._data, outs[out_index])
            buf._vc.value += 1
        wrap = Tensor._wrap
        results = [wrap(o) for o in outs[:spec.n_out]]
        if spec.needs_grad and grad_mode._state.enabled:
            node = CompiledFunctionBackward(spec.edges(inputs))
            node.spec = spec
            node._leaf_ids = spec.leaf_ids
            node.saved = spec.take_saved(pool)
            node.recyclable = spares
            checked = spec.checked_inputs
            if checked:
                checked = [inputs[i] for i in checked] + spec.checked_params
            else:
                checked = spec.checked_params
            node.saved_versions = tuple([(t, t._vc.value) for t in checked])
            node.freed = False
            node.sizes = sizes
            node.out_shapes = spec.user_out_shapes(sizes)
            node._num_outputs = spec.n_out
            for i in spec.differentiable_outputs:
                t = results[i]
                t._req, t._grad_fn, t._output_nr = True, node, i
        structure = spec.output_structure
        if type(structure) is int:  # (one tensor: what rebuild gives)
            return results[structure]
        if structure is not None:
            return rebuild(structure, results)
        return results[0] if len(results) == 1 else tuple(results)


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
