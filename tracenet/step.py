"""``tracenet.compile_step(loss_fn, optimizer)``: a whole training step as one C call.

``loss_fn(*batch)`` computes a scalar loss with ordinary tracenet code (a model and a loss
function); the parameters are the optimizer's. One call of the compiled step does what
``optimizer.zero_grad(); loss = loss_fn(*batch); loss.backward(); optimizer.step()`` does:
forward, loss, backward and the optimizer update run inside one generated C function, and
parameters, ``.grad`` and the optimizer state are updated in place, as in eager mode.

Supported optimizers: SGD (momentum, dampening, nesterov, weight decay, maximize) and Adam
(amsgrad, weight decay, maximize; AdamW's decoupled decay). Hyperparameters are read on every
call, so changing the learning rate (e.g. by a scheduler) does not recompile.
"""
import numpy as np

from . import _dtype
from .autograd import grad_mode
from .codegen.emit import c_identifier, generate
from .executable import Executable, optimise
from .ir.graph import Graph
from .ops import optim_step
from .ops.registry import Meta
from .passes import grad as ir_grad
from .runtime import build, debug
from .tensor import Tensor
from .trace import fresh_seeds, trace


def _optimizer_kind(optimizer):
    from .optim import SGD, Adam, AdamW
    if isinstance(optimizer, AdamW):
        return "adamw"
    if isinstance(optimizer, Adam):
        return "adam"
    if isinstance(optimizer, SGD):
        return "sgd"
    raise NotImplementedError(
        f"compile_step supports SGD, Adam and AdamW; got {type(optimizer).__name__} (use "
        "tracenet.compile(model) with the optimizer in eager mode instead)")


def _param_names(optimizer):
    names = []
    for gi, group in enumerate(optimizer.param_groups):
        given = group.get("param_names")
        for pi, _ in enumerate(group["params"]):
            names.append(given[pi] if given else f"group{gi}.param{pi}")
    return names


def build_step_graph(fwd, bwd, kind, flags, param_values):
    """The forward graph, its backward inlined (cotangent 1), then one optimizer-update node
    per parameter. Outputs: loss, gradients, updated parameters, updated state."""
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
    for i, (p, g) in enumerate(zip(param_values, grads)):
        p_in = fwd_map[p]
        name = p.name
        if kind == "sgd":
            buf = graph.add_input(f"{name}.momentum_buffer", p.shape, p.dtype)
            h = graph.add_input(f"{name}.hyper", (5,), _dtype.float64)
            node = graph.add_node("sgd_step", [p_in, g, buf, h], dict(flags),
                                  [Meta(p.shape, p.dtype)] * 2)
            new_params.append(node.outputs[0])
            new_state.append([node.outputs[1]])
        else:
            state = [graph.add_input(f"{name}.{s}", p.shape, p.dtype)
                     for s in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
            h = graph.add_input(f"{name}.hyper", (6,), _dtype.float64)
            node = graph.add_node("adam_step", [p_in, g] + state + [h], dict(flags),
                                  [Meta(p.shape, p.dtype)] * 4)
            new_params.append(node.outputs[0])
            new_state.append(node.outputs[1:])
    # buffer updates (batch-norm running statistics) come last; the runtime writes them back
    graph.outputs = [loss] + list(grads) + new_params + [v for s in new_state for v in s] + \
        updates
    return graph


class _StepSpecialisation:
    def __init__(self, fn, optimizer, batch, key, unit):
        self.kind = _optimizer_kind(optimizer)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.groups = [g for g in optimizer.param_groups for _ in g["params"]]
        names = _param_names(optimizer)
        from .nn.modules import module as module_mod
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
        n_loss = len(fwd.outputs) - len(fwd.state_updates)
        if n_loss != 1 or fwd.outputs[0].shape not in ((), (1,)) or \
                not fwd.outputs[0].dtype.is_floating_point:
            raise ValueError("the function given to compile_step must return one scalar "
                             "floating-point loss")
        n_batch = len(batch)
        param_values = fwd.inputs[n_batch:n_batch + len(self.params)]
        self.n_seeds = len(fwd.seed_inputs)  # after the parameters
        for v in param_values:
            v.requires_grad = True
        bwd = ir_grad(fwd, wrt=param_values)
        group = optimizer.param_groups[0]
        if self.kind == "sgd":
            flags = {"nesterov": bool(group["nesterov"]), "maximize": bool(group["maximize"])}
        else:
            flags = {"amsgrad": bool(group["amsgrad"]), "maximize": bool(group["maximize"]),
                     "decoupled": self.kind == "adamw" or
                     bool(group.get("decoupled_weight_decay", False))}
        for g in optimizer.param_groups:
            for k in flags:
                if k != "decoupled" and bool(g[k]) != flags[k]:
                    raise NotImplementedError(f"compile_step needs the same '{k}' in every "
                                              "parameter group")
        graph = build_step_graph(fwd, bwd, self.kind, flags, param_values)
        debug.log("ir", f"training step:\n{graph}")
        self.graph = optimise(graph)
        self.executable = Executable([("step", self.graph)], unit)
        self.source_code = self.executable.source_code
        self._call = self.executable.arguments[0]
        self._ffi = self._call.ffi
        self._args = self._call.args
        self.n_batch = n_batch
        # (buffer, index among the graph outputs) for in-place buffer updates
        first_update = len(self.graph.outputs) - len(fwd.state_updates)
        self.state_updates = [(self.buffers[i - len(self.params)][1], first_update + j)
                              for j, (i, _) in enumerate(fwd.state_updates)]
        self.update_arrays = [np.empty(b.shape, b.dtype.np) for b, _ in self.state_updates]
        n = len(self.params)
        self.loss_meta = (self.graph.outputs[0].shape, self.graph.outputs[0].dtype.np)
        self.grad_arrays = [np.zeros(p.shape, p.dtype.np) for p in self.params]
        self.hyper = np.zeros((n, 5 if self.kind == "sgd" else 6), np.float64)
        self._hyper_keys = [None] * n
        self._hyper_rows = [self._ffi.from_buffer(row) for row in self.hyper]
        self._layout = None
        self._grad_ptrs = [self._ffi.from_buffer(g) for g in self.grad_arrays]
        self._grad_tensors = [Tensor._wrap(g) for g in self.grad_arrays]
        self._sgd_sig = self._sgd_cache = None
        self._no_momentum = [np.zeros(p.shape, p.dtype.np) for p in self.params] \
            if self.kind == "sgd" else None
        # amsgrad's running maximum exists only with amsgrad; the kernel still takes a buffer
        self._spare = [np.zeros(p.shape, p.dtype.np) for p in self.params] \
            if self.kind != "sgd" else None

    def _sgd_states(self, optimizer):
        """Each parameter's (momentum buffer,), refreshing the hyperparameter rows; the
        common case (same buffers, same group settings as last step) costs one pass."""
        state = optimizer.state
        bufs = [state[p].get("momentum_buffer") for p in self.params]
        settings = [(g["lr"], g["momentum"], g["dampening"], g["weight_decay"])
                    for g in optimizer.param_groups]
        # (the buffers are kept referenced, so equal ids mean the same objects; a first step
        # creates buffers, so the step after it takes this slow path again)
        sig = (tuple(map(id, bufs)), settings)
        if sig != self._sgd_sig:
            states = [self._sgd_state(optimizer, i, p) for i, p in enumerate(self.params)]
            self._sgd_sig = sig
            self._sgd_cache = (bufs, states)
        return self._sgd_cache[1]

    def _sgd_state(self, optimizer, i, p):
        st = optimizer.state[p]
        group = self.groups[i]
        buf_t = st.get("momentum_buffer")
        first = buf_t is None
        if first:
            if group["momentum"] != 0:
                buf = np.zeros(p.shape, p.dtype.np)
                st["momentum_buffer"] = Tensor._wrap(buf)
            else:  # without momentum the kernel never reads the buffer: keep one
                buf = self._no_momentum[i]
        else:
            buf = buf_t._data
        key = (group["lr"], group["momentum"], group["dampening"], group["weight_decay"], first)
        if self._hyper_keys[i] != key:
            self.hyper[i] = optim_step.sgd_hyper(group, first)
            self._hyper_keys[i] = key
        return (buf,)

    def _adam_state(self, optimizer, i, p):
        st = optimizer.state[p]
        group = self.groups[i]
        if not st:
            st["step"] = Tensor._wrap(np.zeros((), np.float32))
            st["exp_avg"] = Tensor._wrap(np.zeros(p.shape, p.dtype.np))
            st["exp_avg_sq"] = Tensor._wrap(np.zeros(p.shape, p.dtype.np))
            if group["amsgrad"]:
                st["max_exp_avg_sq"] = Tensor._wrap(np.zeros(p.shape, p.dtype.np))
        step_t = st["step"]
        step_t._data[...] = step_t._data + 1
        step_t._vc.value += 1
        vmax = st["max_exp_avg_sq"]._data if "max_exp_avg_sq" in st else self._spare[i]
        self.hyper[i] = optim_step.adam_hyper(group, float(step_t._data))
        return (st["exp_avg"]._data, st["exp_avg_sq"]._data, vmax)

    def run(self, batch, optimizer):
        """One step: set the argument vector's batch, seed and loss slots (the parameter, state
        and gradient addresses are re-read only when those buffers were replaced) and make the
        one C call."""
        args = self._args
        ffi = self._ffi
        keep = []
        for k, x in enumerate(batch):
            arr = x._data if x._data.flags.c_contiguous else np.ascontiguousarray(x._data)
            keep.append(arr)
            args[k] = ffi.from_buffer(arr)
        arrays = [p._data for p in self.params] + [b._data for _, b in self.buffers]
        if self.kind == "sgd":
            states = self._sgd_states(optimizer)
        else:
            states = [self._adam_state(optimizer, i, p) for i, p in enumerate(self.params)]
        # (an SGD step's cached state list is the same object while its buffers stay the same)
        layout = tuple(map(id, arrays)) + ((id(states),) if self.kind == "sgd" else
                                           tuple(id(a) for st in states for a in st))
        if layout != self._layout:
            # parameters or state buffers were replaced: lay out every address again
            self._layout = layout
            self._keep = (arrays, states)
            self._fill_static(args, arrays, states)
        if self.n_seeds:
            seeds = fresh_seeds(self.n_seeds)
            keep.append(seeds)
            for i in range(self.n_seeds):
                args[self._seed_slot + i] = ffi.from_buffer(seeds[i:i + 1])
        loss = np.empty(*self.loss_meta)
        args[self._loss_slot] = ffi.from_buffer(loss)
        self._call()
        for (buf, _), arr in zip(self.state_updates, self.update_arrays):
            np.copyto(buf._data, arr)  # running statistics, as the eager step updates them
            buf._vc.value += 1
        for p, g in zip(self.params, self._grad_tensors):
            p._vc.value += 1
            if p._grad is not g:
                p._grad = g
            else:
                g._vc.value += 1
        return Tensor._wrap(loss)


    def _fill_static(self, args, arrays, states):
        """Parameter, state, hyperparameter and gradient addresses; remembers where the
        per-call seed and loss slots are."""
        ffi = self._ffi
        ptrs = [ffi.from_buffer(a) for a in arrays]  # parameters, then buffers
        state_ptrs = [[ffi.from_buffer(a) for a in st] for st in states]
        update_ptrs = [ffi.from_buffer(a) for a in self.update_arrays]
        self._ptr_refs = (ptrs, state_ptrs, update_ptrs)
        k = self.n_batch
        for ptr in ptrs:
            args[k] = ptr
            k += 1
        ptrs = ptrs[:len(self.params)]
        self._seed_slot = k
        k += self.n_seeds
        for i, sp in enumerate(state_ptrs):
            for ptr in sp:
                args[k] = ptr
                k += 1
            args[k] = self._hyper_rows[i]
            k += 1
        self._loss_slot = k
        k += 1
        for ptr in self._grad_ptrs:
            args[k] = ptr
            k += 1
        for ptr in ptrs:  # updated parameters are written in place
            args[k] = ptr
            k += 1
        for sp in state_ptrs:
            for ptr in sp:
                args[k] = ptr
                k += 1
        for ptr in update_ptrs:
            args[k] = ptr
            k += 1


def _buffers_of(fn, params):
    """(name, tensor) of the buffers of the modules ``fn`` can reach through its closure,
    defaults, bound object or the globals it names: they become graph inputs, so in-place
    updates (running statistics) are traced instead of applied to the real buffers."""
    from .nn.modules.module import Module
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
        self._specs = {}
        self._last = None

    def _flags_for(self, shapes):
        """The train/eval flags of the modules a specialisation for ``shapes`` traced (None
        before any exists: the first trace defines them)."""
        for (s, flags), spec in self._specs.items():
            if s == shapes:
                return tuple(m.training for m in spec.modules)
        return None

    def __call__(self, *batch):
        try:
            key = tuple((x._data.shape, x._data.dtype.num) for x in batch)
            last = self._last
            if last is not None and last.key_shapes == key:
                key = (key, tuple(m.training for m in last.modules))
            else:
                key = (key, self._flags_for(key))
        except AttributeError:
            bad = next(i for i, x in enumerate(batch) if not isinstance(x, Tensor))
            raise TypeError(f"compiled step input {bad} must be a Tensor, got "
                            f"{type(batch[bad]).__name__}") from None
        spec = self._specs.get(key)
        if spec is None:
            unit = c_identifier(f"{getattr(self.fn, '__name__', 'step')}_step_"
                                f"{len(self._specs)}")
            if self._specs:
                shown = ", ".join(f"{x.dtype.short}[{','.join(map(str, x.shape))}]"
                                  for x in batch)
                debug.log("cache", f"new training-step specialisation for ({shown})")
            spec = _StepSpecialisation(self.fn, self.optimizer, batch, key, unit)
            spec.key_shapes = key[0]
            key = (key[0], tuple(m.training for m in spec.modules))
            self._specs[key] = spec
        self._last = spec
        return spec.run(batch, self.optimizer)

    @property
    def graph(self):
        return self._last.graph if self._last else None

    def source(self):
        return self._last.source_code if self._last else None


def compile_step(fn, optimizer):
    """Compile ``zero_grad -> loss = fn(*batch) -> backward -> optimizer.step`` into one C
    call; returns a callable ``step(*batch) -> loss``."""
    _optimizer_kind(optimizer)
    return CompiledTrainingStep(fn, optimizer)
