"""``tracenet.compile(fn)`` on a function: a whole training (or inference) step as one C call.

The function is ordinary eager code::

    def train_step(x, y):
        optimizer.zero_grad()
        loss = criterion(net(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)   # optional
        optimizer.step()
        return loss

It is traced once per specialisation with the parameters, buffers and optimizer state of the
modules and optimizers it names (through its closure, defaults or globals) as graph inputs.
While it is traced, ``loss.backward()`` differentiates the graph recorded so far and inlines
the gradients (``p.grad`` is then a traced value, so clipping traces too), ``zero_grad()``
drops the traced gradients, and ``optimizer.step()`` records one update op per parameter with
a gradient (the optimizer's ``compiled_update``, as in ``compile_step``). A call then runs
the graph and leaves parameters, ``.grad``, buffers and ``optimizer.state`` as the eager
function would; hyperparameters are read on every call, so schedulers keep working.
"""
import contextlib
import operator

import numpy as np

from . import _dtype
from ._meta import Meta
from .autograd import grad_mode
from .executable import Executable, ShapeTable, Specialisations, SymbolicSizes, \
    check_sizes, graph_symbols, optimise, run_sizes
from .nn.modules import module as module_mod
from .nn.modules.module import Module
from .nn.parallel import distributed as ddp_mod
from .optim.optimizer import Optimizer
from .passes import grad as ir_grad
from .runtime import debug
from .step import reachable
from .step_state import UpdateState, declaration_of
from .tensor import Tensor
from .ops import registry
from .trace import Guards, TraceError, format_inputs, rebuild, symbolic_shape, trace, \
    traced_tensor

_training_of = operator.attrgetter("training")
_data_of = operator.attrgetter("_data")


def _reachable(fn):
    """The modules and optimizers ``fn`` names through its closure, defaults, bound object or
    globals."""
    modules, optimizers, seen = [], [], set()
    for _, obj in reachable(fn):
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Module):
            modules.append(obj)
        elif isinstance(obj, Optimizer):
            optimizers.append(obj)
    return modules, optimizers


def _state_of(modules, optimizers):
    """(name, tensor) of every parameter (the optimizers' first, in their order) and buffer."""
    out, seen = [], set()
    for k, opt in enumerate(optimizers):
        for gi, group in enumerate(opt.param_groups):
            for pi, p in enumerate(group["params"]):
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((f"optimizer{k}.group{gi}.param{pi}", p))
    for m in modules:
        for n, t in list(m.named_parameters()) + list(m.named_buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                out.append((f"{type(m).__name__}.{n}", t))
    return out


class _StepRecorder:
    """What ``backward``, ``zero_grad`` and ``step`` do while the function is traced."""

    def __init__(self, state, optimizers):
        self.params = [t for _, t in state if isinstance(t, Tensor) and t._requires_grad]
        self.optimizers = optimizers
        self.updates = []                 # (optimizer, UpdateState, [state input values],
        #                                    [hyper input values], [new state values])
        self.ddp = []                     # DistributedDataParallel modules the function calls
        self.deferred = []                # optimizers stepped after the gradient allreduce
        self.backward_grads = {}          # parameter -> the gradient value backward made
        self.n_nodes_at_step = None       # the graph's length when a deferred step ran
        self.stepped = set()              # the parameter values a deferred step would update

    # --- Tensor.backward ---------------------------------------------------------------------
    def backward(self, loss, gradient=None):
        graph = _active_graph()
        if loss._ir is None or not loss._ir.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a "
                               "grad_fn")
        params = [p for p in self.params if p._ir is not None and p._ir.requires_grad
                  and p._ir in _ancestors(loss._ir)]
        saved_outputs = graph.outputs
        graph.outputs = [loss._ir]
        try:
            bwd = ir_grad(graph, wrt=[p._ir for p in params])
        finally:
            graph.outputs = saved_outputs
        if gradient is None:
            if loss._ir.shape not in ((),):
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            seed = graph.add_constant(np.ones((), loss._ir.dtype.np))
        else:
            seed = gradient._ir if gradient._ir is not None else \
                graph.add_constant(np.asarray(gradient._data, loss._ir.dtype.np))
        grads = graph.inline(bwd, [seed] + list(bwd.saved))
        with grad_mode.no_grad():
            for p, g in zip(params, grads):
                t, prev = traced_tensor(g), p._grad
                if prev is not None and prev._ir is None:
                    raise TraceError(
                        "loss.backward() in a compiled function would add to gradients computed "
                        "outside it: call optimizer.zero_grad() in the function first")
                p._grad = t if prev is None else prev + t
                self.backward_grads[p] = p._grad._ir

    # --- Optimizer.zero_grad -------------------------------------------------------------------
    @staticmethod
    def zero_grad(optimizer, set_to_none=True):
        with grad_mode.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p._grad is not None:
                        p._grad = None if set_to_none else p._grad * 0

    # --- Optimizer.step ----------------------------------------------------------------------
    def step(self, optimizer):
        if optimizer not in self.optimizers:
            raise TraceError(f"{type(optimizer).__name__}.step() on an optimizer the compiled "
                             "function does not name (pass it through a closure, default or "
                             "global)")
        if any(u[0] is optimizer for u in self.updates) or optimizer in self.deferred:
            raise TraceError("the compiled function steps the same optimizer twice")
        if self.ddp:
            self._defer(optimizer)
            return
        update = declaration_of(optimizer)
        flags = update.flags_of(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]
                  if p._grad is not None and p._grad._ir is not None]
        graph = _active_graph()
        states, hypers, new_states = [], [], []
        for i, p in enumerate(params):
            v = p._ir
            state = [graph.add_input(f"opt.p{i}.{a.name}", v.shape, v.dtype)
                     for a in update.state]
            hyper = graph.add_input(f"opt.p{i}.hyper", (len(update.hyper),), _dtype.float64)
            node = graph.add_node(update.op, [v, p._grad._ir] + state + [hyper],
                                  dict(flags), [Meta(v.shape, v.dtype)] * (1 + len(state)))
            p._ir = node.outputs[0]  # the function's later reads see the updated parameter
            states.append(state)
            hypers.append(hyper)
            new_states.append(node.outputs[1:])
        self.updates.append((optimizer, UpdateState(optimizer, update, params), states, hypers,
                             new_states))

    def _defer(self, optimizer):
        """With DistributedDataParallel the update runs after the C call, once the gradients
        are averaged across ranks: the graph ends here for the stepped parameters."""
        for g in optimizer.param_groups:
            for p in g["params"]:
                if p._grad is not None and p._grad._ir is not None and \
                        self.backward_grads.get(p) is not p._grad._ir:
                    raise TraceError(
                        "a compiled function with DistributedDataParallel changes gradients "
                        "between backward and optimizer.step() (clipping, scaling): they would "
                        "change before the allreduce, not after as in eager mode")
        self.deferred.append(optimizer)
        graph = _active_graph()
        self.n_nodes_at_step = len(graph.nodes)
        self.stepped |= {p._ir for g in optimizer.param_groups for p in g["params"]
                         if p._ir is not None}


def _ancestors(value):
    seen, stack = set(), [value]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v.producer is not None:
            stack.extend(v.producer.inputs)
    return seen


@contextlib.contextmanager
def _recording(recorder):
    """Route ``Tensor.backward``, ``Optimizer.zero_grad`` and ``step`` to ``recorder`` for
    traced values while the function is traced."""
    saved = (Tensor.backward, Optimizer.zero_grad)
    steps = {}

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        if self._ir is None:
            return saved[0](self, gradient, retain_graph, create_graph, inputs)
        if create_graph or inputs is not None:
            raise TraceError("backward(create_graph=..., inputs=...) in a compiled function")
        recorder.backward(self, gradient)

    def zero_grad(self, set_to_none=True):
        recorder.zero_grad(self, set_to_none)

    Tensor.backward = backward
    Optimizer.zero_grad = zero_grad
    for opt in recorder.optimizers:
        steps[opt] = opt.__dict__.get("step")
        opt.step = (lambda closure=None, opt=opt: recorder.step(opt))
    try:
        yield
    finally:
        Tensor.backward, Optimizer.zero_grad = saved
        for opt, own in steps.items():
            if own is None:
                del opt.step
            else:
                opt.step = own


class _Specialisation:
    """One traced and compiled specialisation of a function, and how to call it."""

    def __init__(self, fn, inputs, unit, sizes, modules, optimizers):
        state = _state_of(modules, optimizers)
        self.state = [t for _, t in state]
        real_grads = {t: t._grad for t in self.state}
        recorder = _StepRecorder(state, optimizers)
        seen = {}
        observe = (lambda m: seen.setdefault(id(m), m))
        final_grads = {}

        def body(*args):
            out = fn(*args)
            final_grads.update((p, p._grad) for p in recorder.params
                               if p._grad is not None and p._grad._ir is not None)
            return out

        module_mod._call_observers.append(observe)
        ddp_mod.step_tracers.append(recorder.ddp)
        try:
            with _recording(recorder), grad_mode.enable_grad():
                fwd = trace(body, *inputs, name=getattr(fn, "__name__", "function"),
                            state=state, sizes=sizes)
        finally:
            module_mod._call_observers.remove(observe)
            ddp_mod.step_tracers.pop()
            for t, g in real_grads.items():  # the trace's gradients were traced values
                t._grad = g
        self.modules = tuple(seen.values())
        self.ddp = tuple({id(m): m for m in recorder.ddp}.values())
        self.deferred = list(recorder.deferred)
        if self.ddp and (not self.deferred or recorder.updates):
            # (an update recorded before the DDP forward would use unreduced gradients)
            raise TraceError("a compiled function with DistributedDataParallel must call "
                             "optimizer.step() after the DDP module's forward and "
                             "loss.backward()")
        if self.deferred:
            _check_nothing_reads_stepped(fwd, recorder)
        self.guards = Guards(fwd.reads, self.modules, [])
        self.output_structure = fwd.output_structure
        self.size_checks = list(fwd.size_checks)
        self.n_out = len(fwd.outputs) - len(fwd.state_updates)
        # outputs after the function's: state updates (stepped parameters, buffers), the final
        # gradients, the optimizers' new state arrays
        self.written = [(self.state[i], j) for i, j in fwd.state_updates]
        self.grad_params = list(final_grads)
        first_grad = len(fwd.outputs)
        fwd.outputs = fwd.outputs + [final_grads[p]._ir for p in self.grad_params]
        self.grad_slots = list(range(first_grad, len(fwd.outputs)))
        self.updates = []  # (optimizer, UpdateState, output index of its first new state)
        for optimizer, update_state, states, hypers, new_states in recorder.updates:
            self.updates.append((optimizer, update_state, len(fwd.outputs)))
            for outs in new_states:
                fwd.outputs += list(outs)
        index = {v: i for i, v in enumerate(fwd.inputs)}
        debug.log("ir", f"compiled function:\n{fwd}")
        self.graph = optimise(fwd)
        self.executable = Executable([("function", self.graph)], unit)
        self.symbols = graph_symbols([self.graph])
        self.out_meta = [(v.shape, v.dtype.np) for v in self.graph.outputs]
        self.user_out_shapes = ShapeTable(self.out_meta[:self.n_out])
        self.n_user = len(inputs)
        self._bind(index, fwd, state, recorder.updates)

    def _bind(self, index, fwd, state, updates):
        """Argument slots: user inputs and the function's outputs are set per call;
        parameters, buffers and optimizer state are bound (stepped parameters and optimizer
        state written in place, as the eager step does); the arrays that buffer updates and
        gradients are written to belong to this specialisation and are fixed, as are the hyper
        rows; seeds are fresh per call."""
        call = self.call = self.executable.arguments[0]
        seeds = sorted(index[v] for v in fwd.seed_inputs)
        if seeds and seeds != list(range(seeds[0], seeds[0] + len(seeds))):
            raise TraceError("random ops after optimizer.step() in a compiled function")
        if seeds:
            call.seeds_at(seeds[0], len(seeds))
        out = call.output_slot
        groups = [[self.n_user + j] for j in range(len(state))]
        names = [f"state {n}" for n, _ in state]
        for u, (_, update_state, states, hypers, new_states) in enumerate(updates):
            first = self.updates[u][2]
            flat = 0
            for i, (state_values, hyper) in enumerate(zip(states, hypers)):
                for v in state_values:
                    groups.append([index[v], out(first + flat)])
                    names.append(f"optimizer state {v.name}")
                    flat += 1
                call.fix([index[hyper]], update_state.hyper[i])
        # stepped parameters are written in place (their output slot bound with their input
        # slot); buffers through an array of their own, copied into the buffer after the call
        stepped = {id(p) for _, u, _ in self.updates for p in u.params}
        self.written = [(t, j, id(t) in stepped) for t, j in self.written]
        self._buffer_out = {}
        for i, j in fwd.state_updates:
            t = self.state[i]
            if id(t) in stepped:
                groups[i].append(out(j))
            else:
                self._buffer_out[j] = np.empty(t.shape, t.dtype.np)
                call.fix([out(j)], self._buffer_out[j])
        call.bind_slots(groups, names)
        # gradients land in arrays of their own, kept as the parameters' .grad (as compile_step)
        self._grads = [Tensor._wrap(np.empty(self.out_meta[j][0], self.out_meta[j][1]))
                       for j in self.grad_slots]
        for j, g in zip(self.grad_slots, self._grads):
            call.fix([out(j)], g._data)

    @property
    def source_code(self):
        return self.executable.source_code

    def run(self, inputs):
        ddp_mod.before_compiled_step(self.ddp)
        arrays = []
        for x in inputs:
            arr = x._data
            arrays.append(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))
        bound = list(map(_data_of, self.state))
        for _, update_state, _ in self.updates:
            bound += update_state.refresh()
        sizes = run_sizes(arrays, self.symbols)
        if self.size_checks:
            check_sizes(self.size_checks, sizes)
        outs = [np.empty(shape, dt) for shape, dt in self.user_out_shapes(sizes)]
        try:
            self.call(arrays, outs, bound, sizes)
        except Exception:  # bad data: the C code stopped before any update
            for _, update_state, _ in self.updates:
                update_state.undo()
            raise
        for t, j, inplace in self.written:
            if not inplace:
                np.copyto(t._data, self._buffer_out[j])
            t._vc.value += 1
        for p, g in zip(self.grad_params, self._grads):
            if p._grad is not g:
                p._grad = g
            else:
                g._vc.value += 1
        if self.deferred:
            ddp_mod.after_compiled_backward(self.ddp, self.deferred)
        for optimizer, _, _ in self.updates:
            optimizer._opt_called = True  # a scheduler stepped after this call is in order
        results = [Tensor._wrap(o) for o in outs[:self.n_out]]
        if self.output_structure is not None:
            return rebuild(self.output_structure, results)
        return results[0] if len(results) == 1 else tuple(results)


def _check_nothing_reads_stepped(graph, recorder):
    """A deferred update happens after the C call: nothing the function computes after
    ``optimizer.step()`` may read a parameter it stepped (it would see the old values)."""
    late = graph.nodes[recorder.n_nodes_at_step:]
    if any(v in recorder.stepped for node in late for v in node.inputs):
        raise TraceError("a compiled function with DistributedDataParallel reads parameters "
                         "after optimizer.step(): the update runs after the compiled code")


def _active_graph():
    """The graph the active tracer records into (the function's, while it is traced: the
    recorder's hooks run from its code)."""
    return registry._tracer[0].__self__.graph


class CompiledFunction:
    """``tracenet.compile(fn)``: calls run ``fn`` as compiled C (see the module doc)."""

    def __init__(self, fn, dynamic=True):
        self.fn = fn
        self._specs = Specialisations(getattr(fn, "__name__", "function"))
        self._lines = {}
        self._sizes = SymbolicSizes(dynamic)
        self.modules, self.optimizers = _reachable(fn)
        for opt in self.optimizers:
            declaration_of(opt)  # fail now for an optimizer that cannot be compiled

    @property
    def _last(self):
        return self._specs.last

    @property
    def graph(self):
        return self._last.graph if self._last else None

    def source(self):
        return self._last.source_code if self._last else None

    def _rest(self):
        return (tuple(map(_training_of, self.modules)), grad_mode._state.enabled)

    def __call__(self, *inputs):
        for i, x in enumerate(inputs):
            if not isinstance(x, Tensor):
                raise TypeError(f"compiled function input {i} must be a Tensor, got "
                                f"{type(x).__name__}")
        rest = self._rest()
        sizes, key = self._sizes.of(inputs, rest)
        line = self._lines.get(key)
        if line and line[0].guards.hold():
            spec = line[0]
        else:
            if line is None and self._sizes.new_key(inputs, rest):
                return self(*inputs)
            spec = self._lookup(key, line, inputs, sizes)
            if spec is None:
                self._sizes.exact_only.add(key)
                return self(*inputs)
        self._specs.last = spec
        return spec.run(inputs)

    def _lookup(self, key, line, inputs, sizes):
        if line is None:
            line = self._lines[key] = []
        for i, spec in enumerate(line):
            if spec.guards.hold():
                line.insert(0, line.pop(i))
                return spec
        shown = format_inputs((symbolic_shape(x.shape, sizes), x.dtype.short)
                              for x in inputs)
        n = len(line)
        spec = self._specs.create_symbolic(
            key, lambda unit: _Specialisation(self.fn, inputs, unit, sizes, self.modules,
                                              self.optimizers),
            shown, sizes, rekey=lambda spec: key if n == 0 else key + (n,))
        if spec is None:
            if not line:
                del self._lines[key]
            return None
        line.insert(0, spec)
        return spec
