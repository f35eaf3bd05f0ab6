"""``tracenet.compile_step(loss_fn, optimizer)``: a whole training step as one C call.

``loss_fn(*batch)`` computes a scalar loss with ordinary tracenet code (a model and a loss
function); the parameters are the optimizer's. One call of the compiled step does what
``optimizer.zero_grad(); loss = loss_fn(*batch); loss.backward(); optimizer.step()`` does:
forward, loss, backward and the optimizer update run inside one generated C function, and
parameters, ``.grad`` and the optimizer state are updated in place, as in eager mode.

Any optimizer whose class declares its update (``compiled_update``, see
``tracenet/optim/compiled_update.py``) can be compiled: SGD, Adam, AdamW, RMSprop and
Adagrad, with all their options. Hyperparameters are read on every call, so changing the
learning rate (e.g. by a scheduler) does not recompile.
"""
import operator

import numpy as np

from . import _dtype, warm
from .autograd import grad_mode
from .executable import Executable, Specialisations, SymbolicSizes, check_sizes, \
    graph_symbols, optimise, run_sizes
from .ir.graph import Graph
from .nn.modules import module as module_mod
from .nn.modules.module import Module
from .nn.parallel import distributed as ddp_mod
from ._meta import Meta
from .passes import grad as ir_grad
from .runtime import debug
from .step_state import UpdateState, declaration_of
from .tensor import Tensor
from .trace import Guards, format_inputs, symbolic_shape, trace

_data_of = operator.attrgetter("_data")
_training_of = operator.attrgetter("training")


def _param_names(optimizer):
    names = []
    for gi, group in enumerate(optimizer.param_groups):
        given = group.get("param_names")
        for pi, _ in enumerate(group["params"]):
            names.append(given[pi] if given else f"group{gi}.param{pi}")
    return names


def build_step_graph(fwd, bwd, update, flags, param_values):
    """The forward graph, its backward inlined (cotangent 1), then one optimizer-update node
    per parameter (``update`` is the optimizer's ``CompiledUpdate``; each node reads the
    parameter, its gradient, its state arrays and its ``hyper`` row, all graph inputs after
    the traced ones). Outputs: loss, gradients, updated parameters, updated state (parameter
    by parameter), buffer updates. Without ``update`` (a DistributedDataParallel step, whose
    gradients are reduced across ranks before the update) only loss, gradients and buffer
    updates."""
    graph = Graph(f"{fwd.name}_step")
    graph.key = fwd.key
    mapping = {}
    for v in fwd.inputs:
        mapping[v] = graph.add_input(v.name, v.shape, v.dtype, v.requires_grad)
    fwd_map = {}
    graph.seed_inputs = [mapping[v] for v in fwd.seed_inputs]
    loss, *updates = graph.inline(fwd, [mapping[v] for v in fwd.inputs], fwd_map)
    one = graph.add_constant(np.ones(loss.shape, loss.dtype.np))
    grads = graph.inline(bwd, [one] + [fwd_map[v] for v in bwd.saved])
    new_params, new_state = [], []
    for p, g in zip(param_values if update is not None else (), grads):
        state = [graph.add_input(f"{p.name}.{a.name}", p.shape, p.dtype) for a in update.state]
        h = graph.add_input(f"{p.name}.hyper", (len(update.hyper),), _dtype.float64)
        node = graph.add_node(update.op, [fwd_map[p], g] + state + [h], dict(flags),
                              [Meta(p.shape, p.dtype)] * (1 + len(state)))
        new_params.append(node.outputs[0])
        new_state += node.outputs[1:]
    # buffer updates (batch-norm running statistics) come last; the runtime writes them back
    graph.outputs = [loss] + list(grads) + new_params + new_state + updates
    return graph


class _StepSpecialisation:
    """One compiled step: traced from ``fn`` (its batch and sequence sizes symbolic as
    ``sizes`` says) or, with ``stored`` (a graph cache state, see ``stored_state``),
    ``modules`` and ``guards``, rebuilt from what an earlier process traced and built."""

    def __init__(self, fn, optimizer, batch, unit, sizes=None, stored=None, modules=None,
                 guards=None):
        clock = self._clock = debug.CompileClock(f"training step {unit}")
        update = declaration_of(optimizer)
        flags = update.flags_of(optimizer)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        names = _param_names(optimizer)
        self.buffers = _buffers_of(fn, self.params)
        self.checks = None  # what a new process must re-check to reuse this (None: it cannot)
        self.ddp = ()  # DistributedDataParallel modules: their gradients are reduced
        self.optimizer = optimizer
        if stored is None:
            state_updates, n_seeds = self._trace(fn, batch, names, update, flags, unit, sizes)
        else:
            self.modules, self.guards = modules, guards
            self.graph, self.executable = stored["graph"], stored["executable"]
            self.size_checks = stored.get("size_checks", [])
            state_updates, n_seeds = stored["state_updates"], stored["n_seeds"]
        self.state_updates, self.n_seeds = state_updates, n_seeds
        self.symbols = graph_symbols([self.graph])
        n_batch = len(batch)
        n_params, n_buffers = len(self.params), len(self.buffers)
        self.loss_meta = (self.graph.outputs[0].shape, self.graph.outputs[0].dtype.np)
        self.update_state = None if self.ddp else UpdateState(optimizer, update, self.params)
        # (buffer, array the step writes its update to) for in-place buffer updates
        first_update = len(self.graph.outputs) - len(state_updates)
        self.buffer_updates = [(self.buffers[i - n_params][1], np.empty(v.shape, v.dtype.np))
                               for (i, _), v in zip(state_updates,
                                                    self.graph.outputs[first_update:])]
        self.grad_arrays = [np.zeros(p.shape, p.dtype.np) for p in self.params]
        self._grad_tensors = [Tensor._wrap(g) for g in self.grad_arrays]
        self._tensors = self.params + [b for _, b in self.buffers]
        if self.ddp:
            self._call = self._bind_gradient_step(n_batch, n_params, n_buffers, n_seeds, names)
        else:
            self._call = self._bind_arguments(n_batch, n_params, n_buffers, n_seeds,
                                              [a.name for a in update.state], names)
        cached = self.executable.library.cached
        clock.done("graph cache" if stored is not None else "cache hit" if cached else
                   "compiled")
        del self._clock

    def _trace(self, fn, batch, names, update, flags, unit, sizes):
        """Trace ``fn``, derive and inline its backward and the update, optimise and build;
        returns the traced state updates and the number of seeds."""
        seen = {}
        observe = (lambda m: seen.setdefault(id(m), m))
        module_mod._call_observers.append(observe)
        ddp_modules = []  # the DistributedDataParallel modules the step calls
        ddp_mod.step_tracers.append(ddp_modules)
        try:
            with grad_mode.enable_grad():
                fwd = trace(fn, *batch, name=getattr(fn, "__name__", "step"),
                            state=list(zip(names, self.params)) + self.buffers,
                            sizes=sizes)
        finally:
            module_mod._call_observers.remove(observe)
            ddp_mod.step_tracers.pop()
        self.ddp = tuple({id(m): m for m in ddp_modules}.values())
        # the modules the traced code called: their train/eval flags are part of the key
        self.modules = tuple(seen.values())
        # what the trace assumed of them: the attributes it read, their trees' structure (the
        # step differentiates every parameter, whatever its requires_grad flag)
        self.guards = Guards(fwd.reads, self.modules, [])
        self._clock.lap("trace")
        n_loss = len(fwd.outputs) - len(fwd.state_updates)
        if n_loss != 1 or fwd.outputs[0].shape not in ((), (1,)) or \
                not fwd.outputs[0].dtype.is_floating_point:
            raise ValueError("the function given to compile_step must return one scalar "
                             "floating-point loss")
        self.checks = _step_checks(fn, fwd, self.params, self.modules)
        self.size_checks = list(fwd.size_checks)
        n_batch = len(batch)
        n_params = len(self.params)
        param_values = fwd.inputs[n_batch:n_batch + n_params]
        for v in param_values:
            v.requires_grad = True
        bwd = ir_grad(fwd, wrt=param_values)
        # with DistributedDataParallel the update runs after the gradients are reduced
        graph = build_step_graph(fwd, bwd, None if self.ddp else update, flags, param_values)
        debug.log("ir", f"training step:\n{graph}")
        self._clock.lap("autodiff")
        self.graph = optimise(graph)
        self._clock.lap("passes")
        self.executable = Executable([("step", self.graph)], unit)
        return list(fwd.state_updates), len(fwd.seed_inputs)

    def stored_state(self):
        """What a new process needs to rebuild this step without tracing."""
        return {"graph": self.graph, "executable": self.executable.stored_state(),
                "size_checks": self.size_checks,
                "state_updates": self.state_updates, "n_seeds": self.n_seeds,
                "tensors": _tensor_layout(self.params, self.buffers)}

    def _bind_arguments(self, n_batch, n_params, n_buffers, n_seeds, state_names, names):
        """The argument vector: graph inputs are the batch (per call), parameters and buffers
        (bound), seeds (per call), then per parameter its state arrays (bound) and hyper row
        (fixed); outputs are the loss (per call), gradients (fixed), updated parameters and
        state (bound: written in place) and buffer updates (fixed)."""
        call = self.executable.arguments[0]
        seed_slot = n_batch + n_params + n_buffers
        call.seeds_at(seed_slot, n_seeds)
        first_state = seed_slot + n_seeds
        n_state = len(state_names)
        out = call.output_slot
        first_new_param, first_new_state = out(1 + n_params), out(1 + 2 * n_params)
        slots = [[n_batch + i, first_new_param + i] for i in range(n_params)]
        slots += [[n_batch + n_params + j] for j in range(n_buffers)]
        labels = [f"parameter {n}" for n in names] + [f"buffer {n}" for n, _ in self.buffers]
        for i in range(n_params):
            inputs = first_state + i * (n_state + 1)  # its state arrays, then its hyper row
            for s, state_name in enumerate(state_names):
                slots.append([inputs + s, first_new_state + i * n_state + s])
                labels.append(f"optimizer state {state_name!r} of {names[i]}")
            call.fix([inputs + n_state], self.update_state.hyper[i])
        call.bind_slots(slots, labels)
        for i, g in enumerate(self.grad_arrays):
            call.fix([out(1 + i)], g)
        first_buffer_update = out(1 + 2 * n_params + n_params * n_state)
        for j, (_, arr) in enumerate(self.buffer_updates):
            call.fix([first_buffer_update + j], arr)
        return call

    def _bind_gradient_step(self, n_batch, n_params, n_buffers, n_seeds, names):
        """``_bind_arguments`` for a graph without the update: inputs are the batch, parameters,
        buffers and seeds; outputs the loss, gradients and buffer updates."""
        call = self.executable.arguments[0]
        call.seeds_at(n_batch + n_params + n_buffers, n_seeds)
        out = call.output_slot
        call.bind_slots([[n_batch + i] for i in range(n_params + n_buffers)],
                        [f"parameter {n}" for n in names] +
                        [f"buffer {n}" for n, _ in self.buffers])
        for i, g in enumerate(self.grad_arrays):
            call.fix([out(1 + i)], g)
        for j, (_, arr) in enumerate(self.buffer_updates):
            call.fix([out(1 + n_params + j)], arr)
        return call

    @property
    def source_code(self):
        return self.executable.source_code

    def run(self, batch):
        """One step: the batch, seeds and loss are this call's; parameters, buffers and state
        are re-pointed only when replaced; one C call; then the eager step's bookkeeping."""
        call = self._call
        arrays = []
        for x in batch:
            arr = x._data
            arrays.append(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))
        ddp_mod.before_compiled_step(self.ddp)
        bound = list(map(_data_of, self._tensors))
        if not self.ddp:
            bound += self.update_state.refresh()
        loss = np.empty(*self.loss_meta)
        try:
            sizes = run_sizes(arrays, self.symbols)
            if self.size_checks:
                check_sizes(self.size_checks, sizes)
            call(arrays, (loss,), bound, sizes)
        except Exception:  # bad data: the C code stopped before any update
            if not self.ddp:
                self.update_state.undo()
            raise
        for buf, arr in self.buffer_updates:
            np.copyto(buf._data, arr)  # running statistics, as the eager step updates them
            buf._vc.value += 1
        for p, g in zip(self.params, self._grad_tensors):
            if not self.ddp:
                p._vc.value += 1
            if p._grad is not g:
                p._grad = g
            else:
                g._vc.value += 1
        if self.ddp:
            ddp_mod.after_compiled_backward(self.ddp, (self.optimizer,))
        return Tensor._wrap(loss)


def reachable(fn):
    """[(where, object)] of what ``fn`` can reach through its closure, defaults, bound object
    or the globals it names; ``where`` says how (found the same way in a new process)."""
    code = getattr(fn, "__code__", None)
    candidates = [(("cell", i), c.cell_contents)
                  for i, c in enumerate(getattr(fn, "__closure__", None) or ())
                  if _cell_filled(c)]
    candidates += [(("default", i), d)
                   for i, d in enumerate(getattr(fn, "__defaults__", None) or ())]
    candidates.append((("self",), getattr(fn, "__self__", None)))
    if code is not None:
        g = getattr(fn, "__globals__", {})
        candidates += [(("global", n), g[n]) for n in code.co_names if n in g]
    return candidates


def _reachable_modules(fn):
    """``reachable`` narrowed to modules."""
    return [(where, obj) for where, obj in reachable(fn) if isinstance(obj, Module)]


def _buffers_of(fn, params):
    """(name, tensor) of the buffers of the modules ``fn`` can reach through its closure,
    defaults, bound object or the globals it names: they become graph inputs, so in-place
    updates (running statistics) are traced instead of applied to the real buffers."""
    found = []
    seen, param_ids = set(), {id(p) for p in params}
    for _, obj in _reachable_modules(fn):
        for name, b in obj.named_buffers():
            if id(b) not in seen and id(b) not in param_ids:
                seen.add(id(b))
                found.append((f"{type(obj).__name__}.{name}", b))
    return found


def _tensor_layout(params, buffers):
    return ([(tuple(p.shape), p.dtype.short) for p in params],
            [(n, tuple(b.shape), b.dtype.short) for n, b in buffers])


def _roots(fn):
    """The modules whose trees a step of ``fn`` may depend on, found as a new process finds
    them: [(where, module)]."""
    roots = _reachable_modules(fn)
    if isinstance(fn, Module):
        roots.insert(0, (("fn",), fn))
    return roots


def _step_checks(fn, fwd, params, modules):
    """``warm.checks_of`` for a step's trace, plus where each called module sits in the
    trees a new process can find; None when it cannot be checked."""
    roots = [m for _, m in _roots(fn)]
    checks = warm.checks_of(fwd, roots)
    if checks is None:
        return None
    param_ids = {id(p) for p in params}
    paths = {}
    for i, root in enumerate(roots):
        for name, m in root.named_modules(remove_duplicate=False):
            paths.setdefault(id(m), (i, name))
            # a parameter the optimizer does not update is traced as a constant: its values
            # may differ in another process
            if any(id(p) not in param_ids for p in m._parameters.values() if p is not None):
                debug.log("cache", f"graph not cached: {type(m).__name__} has parameters the "
                                   "optimizer does not update")
                return None
    if any(id(m) not in paths for m in modules):
        debug.log("cache", "graph not cached: the step calls a module it does not name")
        return None
    checks["modules"] = [paths[id(m)] for m in modules]
    return checks


def _step_cache_key(fn, optimizer, update, flags, shapes):
    roots = _roots(fn)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return warm.digest("step", warm.environment(), getattr(fn, "__module__", None),
                       getattr(fn, "__qualname__", type(fn).__qualname__),
                       warm._type_name(optimizer), sorted(flags.items()), update.op,
                       tuple(a.name for a in update.state), update.hyper,
                       _param_names(optimizer),
                       [(tuple(p.shape), p.dtype.short, bool(p._requires_grad))
                        for p in params],
                       [where for where, _ in roots], warm.tree([m for _, m in roots], params),
                       shapes)


def _from_cache(fn, optimizer, batch, unit, shapes):
    """The step rebuilt from the graph cache (None when it has no usable entry), and the
    cache key to store a traced one under (None: not to be stored)."""
    if not warm.enabled() or any(isinstance(m, ddp_mod.DistributedDataParallel)
                                 for _, m in _roots(fn)):
        return None, None  # (a step that reduces gradients across ranks is not stored)
    update = declaration_of(optimizer)
    key = _step_cache_key(fn, optimizer, update, update.flags_of(optimizer), shapes)
    roots = [m for _, m in _roots(fn)]
    found = warm.load(key, roots)
    if found is None:
        return None, key
    with warm.restoring(key):
        return _restore(fn, optimizer, batch, unit, roots, key, *found), key
    return None, key  # (a malformed entry)


def _restore(fn, optimizer, batch, unit, roots, key, state, reads):
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if state["tensors"] != _tensor_layout(params, _buffers_of(fn, params)):
        return None
    modules = [roots[index].get_submodule(path) if path else roots[index]
               for index, path in state["modules"]]
    executable = Executable.restore(state["executable"])
    if executable is None:
        return None
    state["executable"] = executable
    spec = _StepSpecialisation(fn, optimizer, batch, unit, stored=state,
                               modules=tuple(modules), guards=Guards(reads, modules, []))
    warm.used(key)
    return spec


def _specialise(fn, optimizer, batch, unit, shapes, sizes):
    spec, key = _from_cache(fn, optimizer, batch, unit, shapes)
    if spec is None:
        spec = _StepSpecialisation(fn, optimizer, batch, unit, sizes)
        if key is not None and spec.checks is not None and not spec.ddp:
            state = spec.stored_state()
            state["modules"] = spec.checks.pop("modules")
            warm.store(key, state, spec.checks)
    return spec


def _cell_filled(cell):
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


class CompiledTrainingStep:
    """Callable returned by ``compile_step``; ``step(*batch)`` returns the loss (no grad_fn)."""

    def __init__(self, fn, optimizer, dynamic=True):
        self.fn = fn
        self.optimizer = optimizer
        self._sizes = SymbolicSizes(dynamic)
        self._specs = Specialisations(f"{getattr(fn, '__name__', 'step')}_step")
        self._lines = {}  # key -> its specialisations, most recently used first

    @property
    def _last(self):
        return self._specs.last

    def _flags_for(self, shapes):
        """The train/eval flags of the modules a specialisation for ``shapes`` traced (None
        before any exists: the first trace defines them)."""
        for key, spec in self._specs.items():
            if key[0] == shapes:
                return tuple(map(_training_of, spec.modules))
        return None

    def __call__(self, *batch):
        specs = self._specs
        try:
            sizes, (shapes,) = self._sizes.of(batch, ())
            last = specs.last
            if last is not None and last.key_shapes == shapes:
                key = (shapes, tuple(map(_training_of, last.modules)))
            else:
                key = (shapes, self._flags_for(shapes))
        except AttributeError:
            bad = next(i for i, x in enumerate(batch) if not isinstance(x, Tensor))
            raise TypeError(f"compiled step input {bad} must be a Tensor, got "
                            f"{type(batch[bad]).__name__}") from None
        line = self._lines.get(key)
        if line and line[0].guards.hold():
            spec = line[0]
        else:
            if line is None and self._sizes.new_key(batch, ()):
                return self(*batch)  # the sequence length is symbolic now
            spec = self._lookup(key, line, batch, shapes, sizes)
            if spec is None:  # the sizes could not stay symbolic
                self._sizes.exact_only.add((shapes,))
                return self(*batch)
        specs.last = spec
        loss = spec.run(batch)
        self.optimizer._opt_called = True  # the step ran: a scheduler stepped now is in order
        return loss

    def _lookup(self, key, line, batch, shapes, sizes=None):
        """The specialisation for ``key`` whose guards hold (moved to the front of its line),
        or a new one (None when the ``sizes`` could not stay symbolic)."""
        for i, spec in enumerate(line or ()):
            if spec.guards.hold():
                line.insert(0, line.pop(i))
                return spec
        shown = format_inputs((symbolic_shape(x.shape, sizes), x.dtype.short) for x in batch)

        def rekey(spec):
            real = (shapes, tuple(map(_training_of, spec.modules)))
            n = len(self._lines.get(real, ()))
            return real if n == 0 else real + (n,)

        spec = self._specs.create_symbolic(
            key, lambda unit: _specialise(self.fn, self.optimizer, batch, unit, shapes, sizes),
            shown, sizes, rekey=rekey)
        if spec is None:
            return None
        spec.key_shapes = shapes
        self._lines.setdefault((shapes, tuple(map(_training_of, spec.modules))),
                               []).insert(0, spec)
        return spec

    @property
    def graph(self):
        return self._last.graph if self._last else None

    def source(self):
        return self._last.source_code if self._last else None


def compile_step(fn, optimizer, *, dynamic=True):
    """Compile ``zero_grad -> loss = fn(*batch) -> backward -> optimizer.step`` into one C
    call; returns a callable ``step(*batch) -> loss``. As in ``tracenet.compile``, the batch
    size stays symbolic unless ``dynamic=False``."""
    declaration_of(optimizer)  # fail now for an optimizer that cannot be compiled
    if not isinstance(dynamic, bool):
        raise TypeError(f"dynamic must be a bool, got {type(dynamic).__name__}")
    return CompiledTrainingStep(fn, optimizer, dynamic)
