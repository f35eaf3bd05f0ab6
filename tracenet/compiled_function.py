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
function would; hyperparameters are read on every call, so schedulers keep working. A compiled
module (``tracenet.compile(net)``) the function names or calls stands for the module it wraps:
its forward is traced inline, with that module's parameters and buffers as graph inputs.

A function that leaves ``backward`` to its caller (``loss = f(x, y); loss.backward()``),
called with grad enabled, keeps its outputs' autograd history: the specialisation is a forward
and backward pair, as a compiled module's (``compiled_pair.py``), whose outputs hold one
``CompiledFunctionBackward`` node; what cannot keep eager mode's history raises ``TraceError``
(``_refuse_history``).

A specialisation is stored in the graph cache (``tracenet/warm.py``) under a key of what
determines it: the function's code, the modules' structure and forward code, the parameters',
buffers' and inputs' shapes and dtypes, the optimizers' types, update flags and param groups
(not their hyperparameters), training flags and grad mode; the source files and Python values
the trace read are stored with it and checked. A new process then loads the graph and the
library and runs its first call without tracing or compiling.
"""
import contextlib
import operator

import numpy as np

from . import _aligned, _dtype, warm
from ._meta import Meta
from ._name_guards import NameGuards, cell_value, module_wrappers
from ._sym import has_symbols, is_one
from .autograd import grad_mode
from .compiled_pair import (CompiledPair, refuse_aliased_inputs, refuse_other_layouts,
                            write_back_inputs)
from .executable import MAX_GUARDED_VARIANTS, Executable, ShapeTable, SizeChecks, \
    Specialisations, SymbolicSizes, TooManyVariants, warn_running_eagerly, \
    graph_symbols, optimise, run_sizes
from .nn.modules import module as module_mod
from .nn.modules.module import Module
from .nn.parallel import distributed as ddp_mod
from .optim.optimizer import Optimizer
from .passes import grad as ir_grad
from .runtime import debug
from .step_state import UpdateState, declaration_of
from .tensor import Tensor, arrays_replaced, clocked
from .ops import registry
from .ops.common import active_tracer, numel
from .trace import Guards, TraceError, format_inputs, rebuild, symbolic_shape, \
    trace, traced_tensor, user_output_count

_epoch = module_mod._epoch  # advanced by every change to a module (``Module.__setattr__``)

_training_of = operator.attrgetter("training")
_data_of = operator.attrgetter("_data")
# the most bytes of outputs a call copies out of arrays it keeps (``Arguments.own_outputs``)
_OWNED_BYTES = 4096
_is = operator.is_


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


def _places(fn, found):
    """(getter, key, object) of each global and closure variable of ``fn`` that holds one of
    the objects ``found`` (modules and optimizers, or captured tensors): a call checks
    ``getter(key) is object``, and finds them again (or traces again) if one was rebound, as
    eager mode would use the new one."""
    ids = {id(o) for o in found}
    out = []
    for where, obj in reachable(fn):
        if id(_unwrapped(obj)) not in ids:
            continue
        if where[0] == "global":
            out.append((fn.__globals__.get, where[1], obj))
        elif where[0] == "cell":
            out.append((cell_value, fn.__closure__[where[1]], obj))
    return tuple(out)


def _places_hold(places):
    for get, key, obj in places:  # (a loop: all() over a generator costs 2.5x as much)
        if get(key) is not obj:
            return False
    return True


def _cell_filled(cell):
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


def _reachable(fn):
    """The modules and optimizers ``fn`` names through its closure, defaults, bound object or
    globals (``fn`` itself first when it is a module), and where each module was found."""
    modules, optimizers, wheres, seen = [], [], [], set()
    found = reachable(fn)
    if isinstance(_unwrapped(fn), Module):
        found.insert(0, (("fn",), fn))
    for where, obj in found:
        obj = _unwrapped(obj)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Module):
            modules.append(obj)
            wheres.append(where)
        elif isinstance(obj, Optimizer):
            optimizers.append(obj)
    return modules, optimizers, wheres


_module_wrappers = module_wrappers  # the class of tracenet.compile(module)


def module_wrapper(cls):
    """Class decorator: ``cls`` wraps a module (as ``_module``) that a compiled function traces
    inline when it calls or names one."""
    _module_wrappers.append(cls)
    return cls


def _unwrapped(obj):
    """The module a ``tracenet.compile(module)`` wraps, else ``obj``: the function's trace
    records the inner module's forward, so its parameters and buffers are the graph's inputs
    and it is found again in a new process."""
    return obj._module if isinstance(obj, tuple(_module_wrappers)) else obj


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

    def __init__(self, state, optimizers, n_inputs=0):
        self.params = [t for _, t in state if isinstance(t, Tensor) and t._requires_grad]
        self.n_inputs = n_inputs          # the graph's first inputs are the function's
        self.optimizers = optimizers
        self.updates = []                 # (optimizer, [parameters], [state input values],
        #                                    [hyper input values], [new state values])
        self.ddp = []                     # DistributedDataParallel modules the function calls
        self.deferred = []                # optimizers stepped after the gradient allreduce
        self.backward_grads = {}          # parameter -> the gradient value backward made
        self.n_nodes_at_step = None       # the graph's length when a deferred step ran
        self.stepped = set()              # the parameter values a deferred step would update
        self.compiled_modules = []        # the tracenet.compile(module) objects it calls
        self.zeroed = {}                  # id -> parameter whose .grad zero_grad set to None
        self.zeroed_any = set()           # ids of the parameters zero_grad reached, either way
        self.zero_grads = []              # (optimizer, set_to_none) of every zero_grad call
        self.differentiated = False       # whether the function called backward

    # --- Tensor.backward ---------------------------------------------------------------------
    def backward(self, loss, gradient=None):
        graph = _active_graph()
        if loss._ir is None or not loss._ir.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a "
                               "grad_fn")
        self.differentiated = True
        stale = active_tracer().saved_versions.stale(graph, [loss._ir])
        if stale is not None:  # (a tensor it reads was changed in place since it was saved)
            raise RuntimeError(stale.message())
        reached = _ancestors(loss._ir)
        for i, v in enumerate(graph.inputs[:self.n_inputs]):
            if v.requires_grad and v in reached:
                # (eager mode would give the input a .grad: the compiled code computes none)
                raise TraceError(f"loss.backward() in a compiled function reaches its input {i}, "
                                 "which requires grad: its .grad would not be computed (pass "
                                 "it detached, or call the function eagerly)")
        # (and the tensors captured so far that require grad: leaves as parameters are)
        captured = [t for _, t in active_tracer().captured]
        params = [p for p in list(self.params) + captured
                  if p._ir is not None and p._ir.requires_grad and p._ir in reached]
        if gradient is None:
            if not all(map(is_one, loss._ir.shape)):  # (torch's rule: one element)
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            seed = graph.add_constant(np.ones(loss._ir.shape, loss._ir.dtype.np))
        else:
            seed = gradient._ir if gradient._ir is not None else \
                graph.add_constant(np.asarray(gradient._data, loss._ir.dtype.np))
        saved_outputs = graph.outputs
        graph.outputs = [loss._ir]
        with debug.phase("autodiff"):
            try:
                bwd = ir_grad(graph, wrt=[p._ir for p in params])
            finally:
                graph.outputs = saved_outputs
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
    def zero_grad(self, optimizer, set_to_none=True):
        self.zero_grads.append((optimizer, set_to_none))
        with grad_mode.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    self.zeroed_any.add(id(p))
                    if set_to_none:
                        self.zeroed.setdefault(id(p), p)
                    if p._grad is not None:
                        p._grad = None if set_to_none else p._grad * 0

    # --- Optimizer.step ----------------------------------------------------------------------
    def step(self, optimizer):
        if optimizer not in self.optimizers:
            raise TraceError(f"{type(optimizer).__name__}.step() on an optimizer the compiled "
                             "function does not name (pass it through a closure, default or "
                             "global)")
        if self.has_stepped(optimizer):
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
        self.updates.append((optimizer, params, states, hypers, new_states))

    def has_stepped(self, optimizer):
        return any(o is optimizer for o in self.deferred) or \
            any(u[0] is optimizer for u in self.updates)

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


_recorders = []  # the recorders of the functions being traced (innermost last)


def stepped_while_tracing(optimizer):
    """Whether the function being traced has stepped ``optimizer`` already."""
    return _recorders[-1].has_stepped(optimizer)


def tracing_a_function():
    """Whether a compiled function is being traced (in this process)."""
    return bool(_recorders)


def call_inline(wrapper, args, kwargs):
    """A compiled module called while a function is traced: its module's forward is traced
    into the function's graph (a C call of its own could not take traced values, nor update
    its buffers inside that graph)."""
    called = _recorders[-1].compiled_modules
    if all(wrapper is not c for c in called):
        called.append(wrapper)
    return wrapper._module(*args, **kwargs)


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
    _recorders.append(recorder)
    for opt in recorder.optimizers:
        steps[opt] = opt.__dict__.get("step")
        opt.step = (lambda closure=None, opt=opt: recorder.step(opt))
    try:
        yield
    finally:
        _recorders.remove(recorder)
        Tensor.backward, Optimizer.zero_grad = saved
        for opt, own in steps.items():
            if own is None:
                del opt.step
            else:
                opt.step = own


class _Specialisation:
    """One compiled specialisation of a function, and how to call it: traced from ``fn`` or,
    with ``stored`` (a graph cache payload, see ``stored_state``, its executable restored and
    its ``modules`` and ``guards`` found in this process), rebuilt from what an earlier process
    traced and built.

    Called with grad enabled, a function that does not call ``backward`` itself and returns
    an output that needs a gradient is compiled as a forward and backward pair (``pair``, a
    ``CompiledPair`` as a compiled module's): its outputs carry autograd history
    (``run_with_history``)."""

    def __init__(self, fn, inputs, unit, sizes, modules, optimizers, stored=None, places=()):
        title = "training step" if optimizers else "function"
        clock = self._clock = debug.CompileClock(f"{title} {unit}")
        named = _state_of(modules, optimizers)
        self.state = [t for _, t in named]
        self.names = [n for n, _ in named]
        self.optimizers = optimizers
        self.checks = None  # what a new process must re-check to reuse this (None: it cannot)
        self.pair = None
        if stored is None:
            self.layout = self._trace(fn, inputs, unit, sizes, named, modules, optimizers,
                                      places)
        else:
            self.graph, self.executable = stored["graph"], stored["executable"]
            self.layout, self.modules, self.guards = stored["layout"], stored["modules"], \
                stored["guards"]
            self.found = stored["found"]
            self.ddp, self.deferred = (), []  # (a step with DDP is never stored)
            if "pair" in stored:
                self.pair = CompiledPair(named, self.layout["n_user"],
                                         stored=dict(stored["pair"], executable=self.executable))
        if self.pair is None:
            self._setup(self.layout)
        else:
            self._zero_grads = [(optimizers[k], set_to_none)
                                for k, set_to_none in self.layout["zero_grads"]]
        cached = self.executable.library.cached
        clock.done("graph cache" if stored is not None else "cache hit" if cached else
                   "compiled")
        del self._clock

    def _trace(self, fn, inputs, unit, sizes, named, modules, optimizers, places):
        """Trace ``fn`` (backward and updates recorded as it calls them), optimise and build;
        returns the layout of the graph's inputs and outputs (``_setup``), or of the pair's
        (``_trace_pair``) when the outputs keep their history. ``places``: the names the
        compiled function checks itself (``_places``)."""
        grad_enabled = grad_mode.is_grad_enabled()  # the call's (the trace enables grad)
        real_grads = {t: t._grad for t in self.state}
        recorder = _StepRecorder(named, optimizers, len(inputs))
        seen = {}
        observe = (lambda m: seen.setdefault(id(m), m))
        final_grads = {}
        cleared = []  # the parameters the function leaves without a .grad (frozen ones)
        changed = []  # the inputs the function changed in place

        def body(*args):
            before = [x._ir for x in args]
            out = fn(*args)
            changed.extend(i for i, (x, v) in enumerate(zip(args, before)) if x._ir is not v)
            captured = [t for _, t in active_tracer().captured]
            final_grads.update((p, p._grad) for p in list(recorder.params) + captured
                               if p._grad is not None and p._grad._ir is not None)
            cleared.extend(p for p in recorder.zeroed.values() if p._grad is None)
            return out

        module_mod._call_observers.append(observe)
        ddp_mod.step_tracers.append(recorder.ddp)
        try:
            with _recording(recorder), grad_mode.enable_grad():
                fwd = trace(body, *inputs, name=getattr(fn, "__name__", "function"),
                            state=named, sizes=sizes)
        finally:
            module_mod._call_observers.remove(observe)
            ddp_mod.step_tracers.pop()
            for t, g in real_grads.items():  # the trace's gradients were traced values
                t._grad = g
        self._clock.lap("trace")
        if fwd.captured:  # tensors it read that no module or optimizer holds: state after those
            named = named + fwd.captured
            self.state += [t for _, t in fwd.captured]
            self.names += [n for n, _ in fwd.captured]
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
        # (which state tensors get a gradient and an update is traced: a flag changed later
        # needs another specialisation, as eager mode would skip or start updating them)
        # the gradients backward computed as new ones (no .grad before the call, none reset
        # by zero_grad in the function): a .grad there at a later call needs another trace,
        # which refuses to add to it (eager mode would accumulate)
        fresh = [p for p in final_grads
                 if real_grads.get(p) is None and id(p) not in recorder.zeroed_any]
        # (the globals and closure cells of the code that ran, less those the compiled
        # function checks itself: ``_places``; those holding modules and optimizers are
        # checked with them from now on: ``CompiledFunction._watch``)
        names = fwd.name_guards.without(places)
        self.found = names.found
        self.guards = Guards(fwd.reads, self.modules, self.state,
                             fwd.captured_at + names.names, fwd.frozen, fresh, names.values)
        if not self.ddp:
            self.checks = _checks(fwd, modules, optimizers + recorder.compiled_modules,
                                  self.modules, names)
        if grad_enabled and not recorder.differentiated and _needs_gradient(fwd):
            return self._trace_pair(fwd, recorder, changed, named, modules, unit,
                                    len(inputs))
        if grad_enabled:  # (the trace always records with grad enabled)
            _refuse_inputs_taking_history(fwd)
        position = {id(t): i for i, t in enumerate(self.state)}
        index = {v: i for i, v in enumerate(fwd.inputs)}
        n_out = user_output_count(fwd)
        # outputs after the function's: state updates (stepped parameters, buffers), the final
        # gradients, the optimizers' new state arrays
        grads = []
        for p, g in final_grads.items():
            grads.append((position[id(p)], len(fwd.outputs)))
            fwd.outputs.append(g._ir)
        updates = []
        for optimizer, params, states, hypers, new_states in recorder.updates:
            updates.append((optimizers.index(optimizer), [position[id(p)] for p in params],
                            len(fwd.outputs), [[index[v] for v in s] for s in states],
                            [index[h] for h in hypers]))
            for outs in new_states:
                fwd.outputs += list(outs)
        debug.log("ir", f"compiled function:\n{fwd}")
        self.graph = optimise(fwd)
        self._clock.lap("passes")
        self.executable = Executable([("function", self.graph)], unit)
        return {"n_user": len(inputs), "n_out": n_out, "output_structure": fwd.output_structure,
                "size_checks": list(fwd.size_checks), "state_updates": list(fwd.state_updates),
                "input_updates": list(fwd.input_updates),
                "row_major_inputs": list(getattr(fwd, "row_major_inputs", ())),
                "grads": grads, "updates": updates,
                "cleared": [position[id(p)] for p in cleared if id(p) in position],
                "seeds": sorted(index[v] for v in fwd.seed_inputs)}

    def _trace_pair(self, fwd, recorder, changed, named, modules, unit, n_user):
        """The traced ``fwd`` compiled as a forward and backward pair whose call gives its
        outputs autograd history; returns the layout (the ``zero_grad`` calls to make after
        each call)."""
        _refuse_history(fwd, recorder, changed, _module_names(modules, named), n_user)
        debug.log("ir", f"compiled function (its outputs keep their history):\n{fwd}")
        self.pair = CompiledPair(named, n_user, fwd, unit, clock=self._clock)
        self.graph, self.executable = self.pair.forward_graph, self.pair.executable
        return {"n_user": n_user,
                "zero_grads": [(self.optimizers.index(o), set_to_none)
                               for o, set_to_none in recorder.zero_grads]}

    def run_with_history(self, inputs):
        """A call whose outputs carry autograd history (``CompiledPair.call``); the function's
        ``zero_grad`` calls are made after it, as its forward reads no gradient."""
        outputs = self.pair.call(inputs)
        for optimizer, set_to_none in self._zero_grads:
            optimizer.zero_grad(set_to_none)
        return outputs

    def stored_state(self):
        """What a new process needs to rebuild this specialisation without tracing."""
        state = {"graph": self.graph, "executable": self.executable.stored_state(),
                 "layout": self.layout, "tensors": _tensor_layout(self.names, self.state)}
        if self.pair is not None:
            state["pair"] = {k: v for k, v in self.pair.pair_state().items()
                             if k != "executable"}  # (the same executable as above)
        return state

    def _setup(self, layout):
        self.n_user, self.n_out = layout["n_user"], layout["n_out"]
        self.output_structure = layout["output_structure"]
        # (a function returning one tensor: its structure is that tensor, leaf 0)
        self._one_output = self.n_out == 1 and self.output_structure in (None, 0)
        self.size_checks = SizeChecks(layout["size_checks"])
        self._check_sizes = self.size_checks if self.size_checks else None
        self.symbols = graph_symbols([self.graph])
        self.out_meta = [(v.shape, v.dtype.np) for v in self.graph.outputs]
        # the inputs' new values (of inputs changed in place) follow the function's outputs
        # and are made with them
        self.input_updates = layout.get("input_updates", [])
        self.row_major_inputs = layout.get("row_major_inputs", [])
        self.n_made = self.n_out + len(self.input_updates)
        self.user_out_shapes = ShapeTable(self.out_meta[:self.n_made])
        self.updates = []  # (optimizer, UpdateState, output index of its first new state)
        for k, params, first, _, _ in layout["updates"]:
            optimizer = self.optimizers[k]
            self.updates.append((optimizer, UpdateState(optimizer, declaration_of(optimizer),
                                                        [self.state[i] for i in params]),
                                 first))
        self.grad_params = [self.state[i] for i, _ in layout["grads"]]
        # (their .grad is None after a call, as zero_grad leaves it in the eager step)
        self._cleared = [self.state[i] for i in layout.get("cleared", ())]
        self._stepped_optimizers = [optimizer for optimizer, _, _ in self.updates]
        self._bind(layout)

    def _bind(self, layout):
        """Argument slots: user inputs and the function's outputs are set per call;
        parameters, buffers and optimizer state are bound (stepped parameters and optimizer
        state written in place, as the eager step does); the arrays that buffer updates and
        gradients are written to belong to this specialisation and are fixed, as are the hyper
        rows; seeds are fresh per call."""
        call = self.call = self.executable.arguments[0]
        seeds = layout["seeds"]
        if seeds and seeds != list(range(seeds[0], seeds[0] + len(seeds))):
            raise TraceError("random ops after optimizer.step() in a compiled function")
        if seeds:
            call.seeds_at(seeds[0], len(seeds))
        out = call.output_slot
        groups = [[self.n_user + j] for j in range(len(self.state))]
        position = {id(t): i for i, t in enumerate(self.state)}
        names = [f"state {n}" for n in self.names]
        for (_, update_state, first), (_, _, _, states, hypers) in zip(self.updates,
                                                                      layout["updates"]):
            update = update_state.update
            flat = 0
            for i, (inputs, hyper) in enumerate(zip(states, hypers)):
                owner = self.names[position[id(update_state.params[i])]]
                for slot, spec in zip(inputs, update.state):
                    groups.append([slot, out(first + flat)])
                    names.append(f"optimizer state {spec.name!r} of {owner}")
                    flat += 1
                call.fix([hyper], update_state.hyper[i])
        # stepped parameters are written in place (their output slot bound with their input
        # slot); buffers through an array of their own, copied into the buffer after the call
        stepped = {id(p) for _, u, _ in self.updates for p in u.params}
        self._stepped = []  # the tensors written in place
        self._copied = []   # (buffer, the array its update is written to)
        for i, j in layout["state_updates"]:
            t = self.state[i]
            if id(t) in stepped:
                groups[i].append(out(j))
                self._stepped.append(t)
            else:
                arr = np.empty(t.shape, t.dtype.np)
                call.fix([out(j)], arr)
                self._copied.append((t, arr))
        call.bind_slots(groups, names)
        # gradients land in arrays of their own, kept as the parameters' .grad (as the eager
        # step's are its own)
        self._grads = []
        for _, j in layout["grads"]:
            g = Tensor._wrap(_aligned.empty(self.out_meta[j][0], self.out_meta[j][1]))
            call.fix([out(j)], g._data)
            self._grads.append(g)
        self._grad_of_param = list(zip(self.grad_params, self._grads))
        # what a call writes in place: their versions count this clock's ticks (one per call)
        # unless another compiled call's clock counts them already (then bumped one by one)
        self._tick = [0]
        self._bumped = [t for t in self._stepped + self._grads
                        if not clocked(t._vc, self._tick)]
        # the arrays the bound slots point at, re-read when an array was replaced or the
        # optimizers' state arrays changed (``arrays_replaced``, ``UpdateState.refresh``)
        self._update_states = [u for _, u, _ in self.updates]
        self._bound, self._refreshed, self._replaced = (), [], None
        # small outputs of static shapes are written to arrays the argument vectors keep and
        # copied out: cheaper than pointing a slot at a fresh array per call
        user = self.out_meta[:self.n_made]
        self._owned = not any(has_symbols(shape) for shape, _ in user) and \
            sum(numel(shape) * np.dtype(dt).itemsize for shape, dt in user) <= _OWNED_BYTES
        if self._owned:
            call.own_outputs(user)

    @property
    def source_code(self):
        return self.executable.source_code

    @property
    def written_inputs(self):
        """The indices of the inputs a call changes in place (and copies back)."""
        updates = self.pair.input_updates if self.pair is not None else self.input_updates
        return [i for i, _, _ in updates]

    def run_writing_inputs(self, inputs, arrays):
        """A call that changes some of its ``inputs`` in place, as eager mode does."""
        refuse_aliased_inputs(self.input_updates, inputs, self.state)
        refuse_other_layouts(self.row_major_inputs, inputs)
        return self.run(arrays, inputs)

    def run(self, arrays, written=None):
        """One call on the inputs' arrays (``written``: the input tensors, when the call
        changes some of them in place)."""
        if self.ddp:
            ddp_mod.before_compiled_step(self.ddp)
        for arr in arrays:
            if not arr.flags.c_contiguous:
                arrays = [np.ascontiguousarray(a) for a in arrays]
                break
        bound = self._bound_arrays()
        sizes = run_sizes(arrays, self.symbols)
        if self._check_sizes is not None:
            self._check_sizes(sizes)
        try:
            if self._owned:
                outs = []
                self.call(arrays, (), bound, sizes, results=outs)
            else:
                outs = [np.empty(shape, dt) for shape, dt in self.user_out_shapes(sizes)]
                self.call(arrays, outs, bound, sizes)
        except Exception:  # bad data: the C code stopped before any update
            for update_state in self._update_states:
                update_state.undo()
            raise
        self._after_call()
        if written is not None:
            write_back_inputs(self.input_updates, written, outs)
        if self._one_output:
            return Tensor._wrap(outs[0])
        results = [Tensor._wrap(o) for o in outs[:self.n_out]]
        if self.output_structure is not None:
            return rebuild(self.output_structure, results)
        return results[0] if len(results) == 1 else tuple(results)

    def _bound_arrays(self):
        """The arrays of the bound slots for this call, the optimizers' state and hyper rows
        brought up to date: the same tuple while no array was replaced (``arrays_replaced``)
        and no state array changed (``UpdateState.refresh``), so the argument vector keeps
        its pointers after one identity check."""
        replaced = arrays_replaced[0]
        refreshed = [u.refresh() for u in self._update_states]
        if replaced != self._replaced or not all(map(_is, refreshed, self._refreshed)):
            self._bound = tuple(map(_data_of, self.state)) + \
                tuple(arr for arrays_of in refreshed for arr in arrays_of)
            self._refreshed, self._replaced = refreshed, replaced
        return self._bound

    def _after_call(self):
        """What the eager step leaves besides the arrays the C code wrote: buffers' new
        values, version counters, ``.grad`` of every parameter, DDP's averaging."""
        for t, arr in self._copied:
            np.copyto(t._data, arr)
            t._vc.value += 1
        self._tick[0] += 1
        for t in self._bumped:
            t._vc.value += 1
        # (set every call: cheaper than checking, 0.31 against 0.62 us for LeNet's ten)
        for p, g in self._grad_of_param:
            p._grad = g
        for p in self._cleared:
            p._grad = None
        if self.deferred:
            ddp_mod.after_compiled_backward(self.ddp, self.deferred)
        for optimizer in self._stepped_optimizers:
            optimizer._opt_called = True  # a scheduler stepped after this call is in order


# --- the graph cache ---------------------------------------------------------------------------
def _tensor_layout(names, tensors):
    return [(n, tuple(t.shape), t.dtype.short) for n, t in zip(names, tensors)]


def _checks(graph, modules, named, called, names):
    """``warm.checks_of`` for a function's trace (its code may name the optimizers and the
    compiled modules it called, which the key describes through the modules they wrap), plus
    where each module it called sits in the trees a new process finds and where the names it
    guards are (``NameGuards.portable``); None when it cannot be checked there."""
    checks = warm.checks_of(graph, modules, named)
    if checks is None:
        return None
    checks["names"] = names.portable()
    if checks["names"] is None:
        debug.log("cache", "graph not cached: the traced code reads a closure cell or globals "
                  "not of a module")
        return None
    paths = {}
    for i, root in enumerate(modules):
        for name, m in root.named_modules(remove_duplicate=False):
            paths.setdefault(id(m), (i, name))
    if any(id(m) not in paths for m in called):
        debug.log("cache", "graph not cached: the function calls a module it does not name")
        return None
    checks["modules"] = [paths[id(m)] for m in called]
    return checks


def _optimizer_structure(optimizer, position):
    """What of an optimizer a compiled step depends on: its type, its update's op, state and
    compile-time flags, and which parameters each group holds (not its hyperparameters: they
    are read on every call)."""
    update = declaration_of(optimizer)
    return (warm._type_name(optimizer), update.op, tuple(a.name for a in update.state),
            update.hyper, update.counter, sorted(update.flags_of(optimizer).items()),
            [[position.get(id(p)) for p in g["params"]] for g in optimizer.param_groups])


def _cache_key(code, wheres, modules, optimizers, state, inputs, key, sizes):
    position = {id(t): i for i, t in enumerate(state)}
    return warm.digest("function", warm.environment(), code, wheres,
                       warm.tree(modules, state),
                       [_optimizer_structure(o, position) for o in optimizers],
                       [(tuple(t.shape), t.dtype.short, bool(t._requires_grad)) for t in state],
                       [bool(x._requires_grad) for x in inputs], key, sizes)


def _specialise(compiled, inputs, unit, sizes, key):
    """The specialisation for ``key``: from the graph cache when an earlier process stored one
    whose checks hold now, else traced (and stored when a new process can check it)."""
    modules, optimizers = compiled.modules, compiled.optimizers
    cache_key = None
    if warm.enabled() and not any(isinstance(m, ddp_mod.DistributedDataParallel)
                                  for m in modules):
        state = [t for _, t in _state_of(modules, optimizers)]
        cache_key = _cache_key(compiled.code, compiled.wheres, modules, optimizers, state,
                               inputs, key, sizes)
        found = warm.load(cache_key, modules)
        if found is not None:
            with warm.restoring(cache_key):
                spec = _restore(compiled, inputs, unit, sizes, *found)
                if spec is not None:
                    warm.used(cache_key)
                    compiled._watch(spec.found)
                    return spec
    spec = _Specialisation(compiled.fn, inputs, unit, sizes, modules, optimizers,
                           places=compiled._places)
    compiled._watch(spec.found)
    if cache_key is not None and spec.checks is not None:
        stored = spec.stored_state()
        stored["modules"] = spec.checks.pop("modules")
        stored["names"] = spec.checks.pop("names")
        warm.store(cache_key, stored, spec.checks)
    return spec


def _restore(compiled, inputs, unit, sizes, state, reads):
    modules = compiled.modules
    named = _state_of(modules, compiled.optimizers)
    if state["tensors"] != _tensor_layout([n for n, _ in named], [t for _, t in named]):
        return None
    executable = Executable.restore(state["executable"])
    if executable is None:
        return None
    called = tuple(modules[i].get_submodule(path) if path else modules[i]
                   for i, path in state["modules"])
    names = NameGuards.found_again(state["names"])
    if names is None:
        return None
    stored = dict(state, executable=executable, modules=called, found=names.found,
                  guards=Guards(reads, called, [t for _, t in named], names.names,
                                values=names.values))
    return _Specialisation(compiled.fn, inputs, unit, sizes, modules, compiled.optimizers,
                           stored=stored)


def _check_nothing_reads_stepped(graph, recorder):
    """A deferred update happens after the C call: nothing the function computes after
    ``optimizer.step()`` may read a parameter it stepped (it would see the old values)."""
    late = graph.nodes[recorder.n_nodes_at_step:]
    if any(v in recorder.stepped for node in late for v in node.inputs):
        raise TraceError("a compiled function with DistributedDataParallel reads parameters "
                         "after optimizer.step(): the update runs after the compiled code")


def _module_names(modules, named):
    """The names of the state tensors ``named`` as their modules call them (an optimizer's
    parameter by its module's name for it)."""
    found = {}
    for m in modules:
        for n, t in list(m.named_parameters()) + list(m.named_buffers()):
            found.setdefault(id(t), f"{type(m).__name__}.{n}")
    return [found.get(id(t), n) for n, t in named]


def _needs_gradient(graph):
    """Whether an output of the traced function (not a buffer's update) requires grad."""
    return any(v.requires_grad for v in graph.outputs[:user_output_count(graph)])


def _viewed(value):
    """The value that ``value`` is a view of in eager mode (through every op that makes
    views there: reshapes, slices, indexing, ``split``...), or itself."""
    while value.producer is not None and value.producer.op in registry.REGISTRY and \
            registry.REGISTRY[value.producer.op].is_view:
        value = value.producer.inputs[0]
    return value


def _refuse_history(graph, recorder, changed, names, n_user):
    """Raise ``TraceError`` for what a compiled function whose outputs keep their autograd
    history cannot do as eager mode does. The graph's inputs are the ``n_user`` inputs of the
    function, then the state tensors (``names``); ``changed``: the inputs it changed in place."""
    if recorder.updates:  # (eager mode's would use the gradients computed outside)
        stepped = type(recorder.updates[0][0]).__name__
        raise TraceError(f"{stepped}.step() in a compiled function that does not call "
                         "backward, called with grad enabled: step outside the function, or "
                         "call backward inside it")
    for optimizer, _ in recorder.zero_grads:  # (made after each call: it must be found)
        if optimizer not in recorder.optimizers:
            raise TraceError(f"{type(optimizer).__name__}.zero_grad() on an optimizer the "
                             "compiled function does not name (pass it through a closure, "
                             "default or global)")
    _refuse_changes(graph, changed, names, n_user)
    _refuse_aliases(graph, names, n_user)


def _refuse_inputs_taking_history(graph):
    """An input changed in place by a value that requires grad, in a function whose outputs
    keep no history (it calls ``backward`` itself): eager mode gives the caller's tensor that
    history, which only a forward and backward pair could."""
    for i, out_index, _ in graph.input_updates:
        if graph.outputs[out_index].requires_grad:
            raise TraceError(f"the compiled function changes its input {i} in place by a "
                             "value that requires grad: its caller's tensor cannot take that "
                             "autograd history here (change a clone, or call it eagerly)")


def _refuse_changes(graph, changed, names, n_user):
    """An input or a state tensor that requires grad changed in place (under ``no_grad``):
    the outputs' history would not pass through the change, as eager mode's does. (An input
    changed by a value that requires grad takes the call's history, ``CompiledPair.call``.)"""
    takes_history = {i for i, out_index, _ in graph.input_updates
                     if graph.outputs[out_index].requires_grad}
    for i in changed:
        if graph.inputs[i].requires_grad and i not in takes_history:
            raise TraceError(f"the compiled function changes its input {i}, which requires "
                             "grad, in place: its outputs cannot keep their autograd history "
                             "through the change (change a clone, or call it eagerly)")
    for state_index, _ in graph.state_updates:
        if graph.inputs[n_user + state_index].requires_grad:
            raise TraceError(f"the compiled function changes {names[state_index]}, which "
                             "requires grad, in place: its outputs cannot keep their autograd "
                             "history through the change (change it outside the function)")


def _refuse_aliases(graph, names, n_user):
    """An output that is an input that requires grad, or a view of one: eager mode's shares
    that tensor's memory and history, a compiled output is a new tensor."""
    index = {v: i for i, v in enumerate(graph.inputs)}
    for k, v in enumerate(graph.outputs[:user_output_count(graph)]):
        source = _viewed(v)
        if source not in index or not source.requires_grad:
            continue
        i = index[source]
        what = f"its input {i}" if i < n_user else names[i - n_user]
        raise TraceError(f"output {k} of the compiled function is "
                         f"{what if source is v else 'a view of ' + what}, which requires "
                         "grad: a compiled output is a new tensor and cannot share its memory "
                         "and history as eager mode's does (return a clone)")


def _active_graph():
    """The graph the active tracer records into (the function's, while it is traced: the
    recorder's hooks run from its code)."""
    return registry._tracer[0].__self__.graph


def _refuse(inputs):
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"compiled function input {i} must be a Tensor, got "
                            f"{type(x).__name__}")


class CompiledFunction:
    """``tracenet.compile(fn)``: calls run ``fn`` as compiled C (see the module doc).

    ``reach`` (default ``fn``) is the function whose closure, defaults, bound object and
    globals name the modules and optimizers, and ``optimizers`` more optimizers it steps
    (``compile_step`` compiles a step function of its own around the user's loss function)."""

    def __init__(self, fn, dynamic=True, *, reach=None, optimizers=(), name=None):
        self.fn = fn
        self._name = name or getattr(fn, "__name__", "function")
        self._dynamic = dynamic
        self._reach = fn if reach is None else reach
        self._extra_optimizers = tuple(optimizers)
        self._find()
        # (for the graph cache key: the code that runs; the files it is in are checked)
        self.code = (warm._code_id(fn), warm._code_id(self._reach))

    def _find(self):
        """Find the modules and optimizers ``reach`` names, and start with no specialisation
        (again when a name holds another object now: ``_places``)."""
        self._specs = Specialisations(self._name)
        self._warned = [False]  # (whether calls running eagerly were warned of)
        self._lines = {}
        self._sizes = SymbolicSizes(self._dynamic)
        # ((shape, dtype, requires_grad) per input, module epoch, grad mode, specialisation)
        self._steady = None
        self.modules, found, self.wheres = _reachable(self._reach)
        self.optimizers = found + [o for o in self._extra_optimizers
                                   if all(o is not f for f in found)]
        for opt in self.optimizers:
            declaration_of(opt)  # fail now for an optimizer that cannot be compiled
        self._places = _places(self._reach, self.modules + found)

    def _watch(self, places):
        """Check ``places`` too on every call: a helper's globals and closure cells holding the
        modules and optimizers a trace used (``_Specialisation.found``). One rebound makes
        ``_find`` start over, as the function's own do (and forget these until a trace finds
        them again)."""
        self._places += tuple(places)

    @property
    def _last(self):
        return self._specs.last

    @property
    def graph(self):
        return self._last.graph if self._last else None

    def source(self):
        return self._last.source_code if self._last else None

    def _rest(self, flags):
        """What besides the inputs' shapes and dtypes a specialisation depends on: the modules'
        training flags, grad mode and the inputs' requires_grad ``flags``."""
        return (tuple(map(_training_of, self.modules)), grad_mode._state.enabled, flags)

    def __call__(self, *inputs):
        # (one loop: two comprehensions cost 0.60 us for LeNet's two inputs, this 0.39)
        arrays, described = [], []
        for x in inputs:
            if not isinstance(x, Tensor):
                _refuse(inputs)
            a = x._data
            arrays.append(a)
            described.append((a.shape, a.dtype, x._requires_grad))
        if self._places and not _places_hold(self._places):
            self._find()  # a global or closure variable holds another module or optimizer
        epoch, grad_enabled = _epoch[0], grad_mode._state.enabled
        steady = self._steady
        # the last call's specialisation while its inputs' shapes, dtypes and requires_grad
        # flags and the grad mode recur and no module changed (the modules' training flags
        # are set through ``Module.__setattr__``, which moves the epoch): 0.4 us less than
        # building the key
        if steady is not None and steady[0] == described and steady[1] == epoch and \
                steady[2] is grad_enabled and steady[3].guards.hold():
            return steady[3].run(arrays)
        flags = tuple(flag for _, _, flag in described)
        try:
            spec = self._sizes.specialisation(arrays, inputs, self._rest(flags), self._lines,
                                              lambda key, line, sizes:
                                              self._lookup(key, line, inputs, sizes))
        except TooManyVariants as e:
            warn_running_eagerly(self._name, e, self._warned)
            return self.fn(*inputs)
        self._specs.last = spec
        if spec.pair is not None:  # (outputs with autograd history: never the steady path)
            return spec.run_with_history(inputs)
        if spec.input_updates:  # (it changes its inputs in place: never the steady path)
            return spec.run_writing_inputs(inputs, arrays)
        self._steady = (described, epoch, grad_enabled, spec)
        return spec.run(arrays)

    def _lookup(self, key, line, inputs, sizes):
        if line is None:
            line = self._lines[key] = []
        for i, spec in enumerate(line):
            if spec.guards.hold():
                line.insert(0, line.pop(i))
                return spec
        if len(line) >= MAX_GUARDED_VARIANTS:
            raise TooManyVariants(line[0].guards.changed())
        shown = format_inputs((symbolic_shape(x.shape, sizes), x.dtype.short)
                              for x in inputs)
        n = len(line)
        spec = self._specs.create_symbolic(
            key, lambda unit: _specialise(self, inputs, unit, sizes, key),
            shown, sizes, rekey=lambda spec: key if n == 0 else key + (n,))
        if spec is None:
            if not line:
                del self._lines[key]
            return None
        line.insert(0, spec)
        return spec
