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

from . import _dtype
from .autograd import grad_mode
from .executable import Executable, Specialisations, optimise
from .ir.graph import Graph
from .nn.modules import module as module_mod
from .nn.modules.module import Module
from ._meta import Meta
from .passes import grad as ir_grad
from .runtime import debug
from .step_state import UpdateState, declaration_of
from .tensor import Tensor
from .trace import Guards, trace

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
    by parameter), buffer updates."""
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
    for p, g in zip(param_values, grads):
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
    def __init__(self, fn, optimizer, batch, unit):
        clock = debug.CompileClock(f"training step {unit}")
        update = declaration_of(optimizer)
        flags = update.flags_of(optimizer)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        names = _param_names(optimizer)
        self.buffers = _buffers_of(fn, self.params)
        seen = {}
        observe = (lambda m: seen.setdefault(id(m), m))
        module_mod._call_observers.append(observe)
        try:
            with grad_mode.enable_grad():
                fwd = trace(fn, *batch, name=getattr(fn, "__name__", "step"),
                            state=list(zip(names, self.params)) + self.buffers)
        finally:
            module_mod._call_observers.remove(observe)
        # the modules the traced code called: their train/eval flags are part of the key
        self.modules = tuple(seen.values())
        # what the trace assumed of them: the attributes it read, their trees' structure (the
        # step differentiates every parameter, whatever its requires_grad flag)
        self.guards = Guards(fwd.reads, self.modules, [])
        clock.lap("trace")
        n_loss = len(fwd.outputs) - len(fwd.state_updates)
        if n_loss != 1 or fwd.outputs[0].shape not in ((), (1,)) or \
                not fwd.outputs[0].dtype.is_floating_point:
            raise ValueError("the function given to compile_step must return one scalar "
                             "floating-point loss")
        n_batch = len(batch)
        n_params, n_buffers = len(self.params), len(self.buffers)
        param_values = fwd.inputs[n_batch:n_batch + n_params]
        for v in param_values:
            v.requires_grad = True
        bwd = ir_grad(fwd, wrt=param_values)
        graph = build_step_graph(fwd, bwd, update, flags, param_values)
        debug.log("ir", f"training step:\n{graph}")
        clock.lap("autodiff")
        self.graph = optimise(graph)
        clock.lap("passes")
        self.executable = Executable([("step", self.graph)], unit)
        self.loss_meta = (self.graph.outputs[0].shape, self.graph.outputs[0].dtype.np)
        self.update_state = UpdateState(optimizer, update, self.params)
        # (buffer, array the step writes its update to) for in-place buffer updates
        first_update = len(self.graph.outputs) - len(fwd.state_updates)
        self.buffer_updates = [(self.buffers[i - n_params][1], np.empty(v.shape, v.dtype.np))
                               for (i, _), v in zip(fwd.state_updates,
                                                    self.graph.outputs[first_update:])]
        self.grad_arrays = [np.zeros(p.shape, p.dtype.np) for p in self.params]
        self._grad_tensors = [Tensor._wrap(g) for g in self.grad_arrays]
        self._tensors = self.params + [b for _, b in self.buffers]
        self._call = self._bind_arguments(n_batch, n_params, n_buffers, len(fwd.seed_inputs),
                                          [a.name for a in update.state], names)
        clock.done("cache hit" if self.executable.library.cached else "compiled")

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
        bound = list(map(_data_of, self._tensors))
        bound += self.update_state.refresh()
        loss = np.empty(*self.loss_meta)
        try:
            call(arrays, (loss,), bound)
        except Exception:  # bad data: the C code stopped before any update
            self.update_state.undo()
            raise
        for buf, arr in self.buffer_updates:
            np.copyto(buf._data, arr)  # running statistics, as the eager step updates them
            buf._vc.value += 1
        for p, g in zip(self.params, self._grad_tensors):
            p._vc.value += 1
            if p._grad is not g:
                p._grad = g
            else:
                g._vc.value += 1
        return Tensor._wrap(loss)


def _buffers_of(fn, params):
    """(name, tensor) of the buffers of the modules ``fn`` can reach through its closure,
    defaults, bound object or the globals it names: they become graph inputs, so in-place
    updates (running statistics) are traced instead of applied to the real buffers."""
    found = []
    code = getattr(fn, "__code__", None)
    candidates = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())
                  if _cell_filled(c)]
    candidates += list(getattr(fn, "__defaults__", None) or ())
    candidates.append(getattr(fn, "__self__", None))
    if code is not None:
        g = getattr(fn, "__globals__", {})
        candidates += [g[n] for n in code.co_names if n in g]
    seen, param_ids = set(), {id(p) for p in params}
    for obj in candidates:
        if isinstance(obj, Module):
            for name, b in obj.named_buffers():
                if id(b) not in seen and id(b) not in param_ids:
                    seen.add(id(b))
                    found.append((f"{type(obj).__name__}.{name}", b))
    return found


def _cell_filled(cell):
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


class CompiledTrainingStep:
    """Callable returned by ``compile_step``; ``step(*batch)`` returns the loss (no grad_fn)."""

    def __init__(self, fn, optimizer):
        self.fn = fn
        self.optimizer = optimizer
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
            shapes = tuple((x._data.shape, x._data.dtype.num) for x in batch)
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
        if line is not None and line[0].guards.hold():
            spec = line[0]
        else:
            spec = self._lookup(key, line, batch, shapes)
        specs.last = spec
        loss = spec.run(batch)
        self.optimizer._opt_called = True  # the step ran: a scheduler stepped now is in order
        return loss

    def _lookup(self, key, line, batch, shapes):
        """The specialisation for ``key`` whose guards hold (moved to the front of its line),
        or a new one."""
        for i, spec in enumerate(line or ()):
            if spec.guards.hold():
                line.insert(0, line.pop(i))
                return spec
        shown = "(" + ", ".join(f"{x.dtype.short}[{','.join(map(str, x.shape))}]"
                                for x in batch) + ")"

        def rekey(spec):
            real = (shapes, tuple(map(_training_of, spec.modules)))
            n = len(self._lines.get(real, ()))
            return real if n == 0 else real + (n,)

        spec = self._specs.create(
            key, lambda unit: _StepSpecialisation(self.fn, self.optimizer, batch, unit),
            shown, rekey=rekey)
        spec.key_shapes = shapes
        self._lines.setdefault((shapes, tuple(map(_training_of, spec.modules))),
                               []).insert(0, spec)
        return spec

    @property
    def graph(self):
        return self._last.graph if self._last else None

    def source(self):
        return self._last.source_code if self._last else None


def compile_step(fn, optimizer):
    """Compile ``zero_grad -> loss = fn(*batch) -> backward -> optimizer.step`` into one C
    call; returns a callable ``step(*batch) -> loss``."""
    declaration_of(optimizer)  # fail now for an optimizer that cannot be compiled
    return CompiledTrainingStep(fn, optimizer)
