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
from .compiler import optimise
from .ir.graph import Graph
from .ops import optim_step
from .ops.registry import Meta
from .passes import grad as ir_grad
from .runtime import build, debug
from .tensor import Tensor
from .trace import trace


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
    loss, = graph.inline(fwd, [mapping[v] for v in fwd.inputs], fwd_map)
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
    graph.outputs = [loss] + list(grads) + new_params + [v for s in new_state for v in s]
    return graph


class _StepSpecialisation:
    def __init__(self, fn, optimizer, batch, key, unit):
        self.kind = _optimizer_kind(optimizer)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.groups = [g for g in optimizer.param_groups for _ in g["params"]]
        names = _param_names(optimizer)
        with grad_mode.enable_grad():
            fwd = trace(fn, *batch, name=getattr(fn, "__name__", "step"),
                        state=list(zip(names, self.params)))
        if len(fwd.outputs) != 1 or fwd.outputs[0].shape not in ((), (1,)) or \
                not fwd.outputs[0].dtype.is_floating_point:
            raise ValueError("the function given to compile_step must return one scalar "
                             "floating-point loss")
        n_batch = len(batch)
        param_values = fwd.inputs[n_batch:]
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
        self.source_code, cdef, entries, openmp = generate([("step", self.graph)], unit,
                                                           timing=debug.enabled("time"))
        self.library = build.build(self.source_code, cdef, name=unit, openmp=openmp)
        self.entry = entries[0]
        self._fn = getattr(self.library.lib, entries[0].name)
        self._args = self.library.ffi.new("intptr_t[]", entries[0].num_args)
        self.n_batch = n_batch
        n = len(self.params)
        self.loss_meta = (self.graph.outputs[0].shape, self.graph.outputs[0].dtype.np)
        self.grad_arrays = [np.zeros(p.shape, p.dtype.np) for p in self.params]
        self.hyper = np.zeros((n, 5 if self.kind == "sgd" else 6), np.float64)
        self.n_state = 1 if self.kind == "sgd" else 3

    def state_arrays(self, optimizer):
        """The optimizer state buffers the C code updates in place (created on first use)."""
        out = []
        for i, p in enumerate(self.params):
            st = optimizer.state[p]
            if self.kind == "sgd":
                group = self.groups[i]
                first = "momentum_buffer" not in st or st["momentum_buffer"] is None
                if first:
                    buf = np.zeros(p.shape, p.dtype.np)
                    if group["momentum"] != 0:
                        st["momentum_buffer"] = Tensor._wrap(buf)
                else:
                    buf = st["momentum_buffer"]._data
                self.hyper[i] = optim_step.sgd_hyper(group, first)
                out.append([buf])
            else:
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
                vmax = st["max_exp_avg_sq"]._data if "max_exp_avg_sq" in st else \
                    st.setdefault("_vmax_unused", np.zeros(p.shape, p.dtype.np))
                self.hyper[i] = optim_step.adam_hyper(group, float(step_t._data))
                out.append([st["exp_avg"]._data, st["exp_avg_sq"]._data, vmax])
        return out

    def run(self, batch, optimizer):
        args = self._args
        k = 0
        for x in batch:
            arr = x._data if x._data.flags.c_contiguous else np.ascontiguousarray(x._data)
            args[k] = arr.__array_interface__["data"][0]
            k += 1
        params = [p._data for p in self.params]
        for arr in params:
            args[k] = arr.__array_interface__["data"][0]
            k += 1
        states = self.state_arrays(optimizer)
        hyper_base = self.hyper.__array_interface__["data"][0]
        row = self.hyper.strides[0]
        for i, st in enumerate(states):
            for arr in st:
                args[k] = arr.__array_interface__["data"][0]
                k += 1
            args[k] = hyper_base + i * row
            k += 1
        loss = np.empty(*self.loss_meta)
        args[k] = loss.__array_interface__["data"][0]
        k += 1
        for g in self.grad_arrays:
            args[k] = g.__array_interface__["data"][0]
            k += 1
        for arr in params:  # updated parameters are written in place
            args[k] = arr.__array_interface__["data"][0]
            k += 1
        for st in states:
            for arr in st:
                args[k] = arr.__array_interface__["data"][0]
                k += 1
        self._fn(args)
        for p, g in zip(self.params, self.grad_arrays):
            p._vc.value += 1
            if p._grad is None or p._grad._data is not g:
                p._grad = Tensor._wrap(g)
            else:
                p._grad._vc.value += 1
        return Tensor._wrap(loss)


class CompiledTrainingStep:
    """Callable returned by ``compile_step``; ``step(*batch)`` returns the loss (no grad_fn)."""

    def __init__(self, fn, optimizer):
        self.fn = fn
        self.optimizer = optimizer
        self._specs = {}
        self._last = None

    def __call__(self, *batch):
        for i, x in enumerate(batch):
            if not isinstance(x, Tensor):
                raise TypeError(f"compiled step input {i} must be a Tensor, got "
                                f"{type(x).__name__}")
        key = tuple((tuple(x.shape), x.dtype.short) for x in batch)
        spec = self._specs.get(key)
        if spec is None:
            unit = c_identifier(f"{getattr(self.fn, '__name__', 'step')}_step_"
                                f"{len(self._specs)}")
            if self._specs:
                debug.log("cache", f"new training-step specialisation for {key}")
            spec = _StepSpecialisation(self.fn, self.optimizer, batch, key, unit)
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
