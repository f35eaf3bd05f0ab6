"""``tracenet.compile(net)``: run ``net.forward`` (and its backward) as generated C.

Per specialisation (input shapes/dtypes, training flag, grad mode) the module is traced, the
backward graph derived on the IR, both graphs simplified, lowered and fused, and emitted as one
C translation unit that is built (or loaded from the cache) once. A call then costs one C call
for the forward; ``loss.backward()`` reaches a ``CompiledFunctionBackward`` node that runs the
backward graph in one C call and hands the parameter gradients to the autograd engine, which
accumulates them into ``.grad`` exactly as in eager mode.
"""
import time

import numpy as np

from . import _dtype
from .autograd import engine, grad_mode
from .codegen.base import has_lowering
from .codegen.emit import c_identifier, generate
from .ir.verify import verify
from .passes import fuse, grad as ir_grad, joint_forward, simplify
from .passes.autodiff import view_source
from .passes.decompose import decompose
from .passes.lower import lower_gemm
from .runtime import build, debug, target as runtime_target
from .tensor import Tensor
from .trace import fresh_seeds, rebuild, specialisation_key, structure_of, trace


def optimise(graph):
    """The pass pipeline every compiled graph goes through (verified after each pass)."""
    verify(decompose(graph, has_lowering))  # ops without a C lowering of their own
    for p in (simplify, lower_gemm):
        verify(p(graph))
    debug.log("ir", f"before fusion:\n{graph}")
    verify(fuse(graph))
    debug.log("fusion", f"after fusion:\n{graph}")
    return graph


def _pointer(ffi, arr):
    """A ``void *`` to a C-contiguous array's data, as cffi cdata: much cheaper per call than
    reading the address from numpy's array interface."""
    return ffi.from_buffer(arr)


class Specialisation:
    """Everything compiled for one key: graphs, the loaded library and how to call it."""

    def __init__(self, module, inputs, key, unit, input_structure=None):
        start = time.perf_counter()
        params = _state(module)
        if input_structure is None:
            fwd = trace(module, *inputs, name=type(module).__name__)
        else:  # nested inputs (an LSTM's (h0, c0)): trace through a flattening wrapper
            fwd = trace(lambda *flat: module(*rebuild(input_structure, flat)), *inputs,
                        name=type(module).__name__, state=params)
        self.output_structure = fwd.output_structure
        debug.log("ir", f"traced forward:\n{fwd}")
        self.key = key
        self.params = params
        self.n_user = len(inputs)
        self.state_updates = list(fwd.state_updates)
        self.n_out = len(fwd.outputs) - len(self.state_updates)
        # random ops' seeds: the last graph inputs, given fresh values on every call
        self.n_seeds = len(fwd.seed_inputs)
        assert fwd.inputs[len(fwd.inputs) - self.n_seeds:] == fwd.seed_inputs
        self.differentiable = [v.requires_grad for v in fwd.outputs[:self.n_out]]
        self.needs_grad = any(self.differentiable)
        self.forward_graph = fwd
        self.backward_graph = None
        graphs = []
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
            self.backward_graph = optimise(bwd)
            graphs = [("forward", optimise(joint)), ("backward", self.backward_graph)]
            self.forward_graph = joint
        else:
            self.recyclable = []
            graphs = [("forward", optimise(fwd))]
        self.timing = debug.enabled("time")  # built with per-kernel clocks
        self.source_code, cdef, entries, openmp = generate(graphs, unit, runtime_target.current(),
                                                           timing=self.timing)
        self.library = build.build(self.source_code, cdef, name=unit, openmp=openmp)
        lib = self.library.lib
        self._ffi = self.library.ffi
        self.forward_entry = entries[0]
        self._forward_fn = getattr(lib, entries[0].name)
        self._forward_args = self._ffi.new("void *[]", max(entries[0].num_args, 1))
        self.out_meta = [(v.shape, v.dtype.np) for v in graphs[0][1].outputs]
        if self.needs_grad:
            self.backward_entry = entries[1]
            self._backward_fn = getattr(lib, entries[1].name)
            self.grad_meta = [(v.shape, v.dtype.np) for v in self.backward_graph.outputs]
            self._backward_args = self._ffi.new("void *[]", max(entries[1].num_args, 1))
        self._param_arrays = [None] * len(params)
        # buffers of saved values, handed back after backward: reusing them avoids fresh
        # (page-faulting) allocations on every training call
        self._spare = [[] for _ in self.out_meta]
        self.compile_seconds = time.perf_counter() - start
        debug.log("time", f"specialisation {key}: ready in {self.compile_seconds * 1e3:.1f} ms "
                          f"({'cache hit' if self.library.cached else 'compiled'})")

    # --- calling -----------------------------------------------------------------------------
    def _fill_params(self, args, offset):
        for i, (_, p) in enumerate(self.params):
            arr = p._data
            if arr is not self._param_arrays[i]:
                if not arr.flags.c_contiguous:
                    raise RuntimeError(f"parameter {self.params[i][0]} is not contiguous")
                self._param_arrays[i] = arr
                args[offset + i] = _pointer(self._ffi, arr)

    def run_forward(self, inputs):
        args = self._forward_args
        arrays = []
        for i, x in enumerate(inputs):
            arr = x._data
            if not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr)
            arrays.append(arr)
            args[i] = _pointer(self._ffi, arr)
        self._fill_params(args, self.n_user)
        n_in = self.n_user + len(self.params)
        if self.n_seeds:
            seeds = fresh_seeds(self.n_seeds)
            for k in range(self.n_seeds):
                arrays.append(seeds[k:k + 1].reshape(()))  # kept with the user inputs
                args[n_in + k] = _pointer(self._ffi, arrays[-1])
            n_in += self.n_seeds
        outs = []
        for j, (shape, dt) in enumerate(self.out_meta):
            spare = self._spare[j]
            o = spare.pop() if spare else np.empty(shape, dt)
            outs.append(o)
            args[n_in + j] = _pointer(self._ffi, o)
        self._forward_fn(args)
        if self.timing:
            self._log_kernel_times(self.forward_entry)
        return arrays, outs

    def run_backward(self, cotangents, saved):
        ffi = self._ffi
        args = self._backward_args
        k = 0
        for arr in list(cotangents) + list(saved):
            args[k] = ffi.from_buffer(arr)
            k += 1
        grads = []
        for shape, dt in self.grad_meta:
            g = np.empty(shape, dt)
            grads.append(g)
            args[k] = ffi.from_buffer(g)
            k += 1
        self._backward_fn(args)
        if self.timing:
            self._log_kernel_times(self.backward_entry)
        return grads

    def _log_kernel_times(self, entry):
        log_kernel_times(self.library, entry)


def log_kernel_times(library, entry):
    """Per-kernel time of the last call (built with timing under TRACENET_DEBUG=time)."""
    times = getattr(library.lib, f"{entry.name}_kernel_times", None)
    if times is None:
        return
    times = times()
    for i, (k, node) in enumerate(entry.kernels):
        rate = f"  {k.flops / times[i] * 1e-9:6.1f} GFLOP/s" if k.flops and times[i] else ""
        debug.log("time", f"{k.name}: {times[i] * 1e6:9.1f} us{rate}")


class CompiledFunctionBackward(engine.Node):
    """The backward of one compiled forward call."""
    __slots__ = ("spec", "saved", "saved_versions", "freed", "out_shapes", "_num_outputs",
                 "recyclable")

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
            else:
                arr = g._concrete("backward")
                if arr.dtype != dt:
                    arr = arr.astype(dt)
                cots.append(np.ascontiguousarray(arr))
        arrays = spec.run_backward(cots, self.saved)
        grads = []
        for a in arrays:
            t = Tensor._wrap(a)
            t._fresh_grad = True  # nobody else holds it: the engine may keep it as .grad
            grads.append(t)
        return tuple(grads)

    def _release(self):
        self.freed = True
        for idx, arr in zip(self.spec.recyclable, self.recyclable):
            self.spec._spare[idx].append(arr)
        self.saved = None
        self.recyclable = ()


def _state(module):
    out = list(module.named_parameters())
    seen = {id(p) for _, p in out}
    out += [(n, b) for n, b in module.named_buffers() if id(b) not in seen]
    return out


class CompiledModule:
    """A drop-in for ``module`` whose forward and backward run as compiled C.

    It shares the module's Parameter objects, so optimizers, ``state_dict`` and in-place updates
    keep working and weight changes never trigger recompilation."""

    def __init__(self, module):
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_specs", {})
        object.__setattr__(self, "_last", None)

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
    def _key(self, inputs):
        """A cheap lookup key: shapes, dtypes and requires_grad of the inputs, the training
        flag and grad mode (what a specialisation depends on)."""
        return (tuple((x._data.shape, x._data.dtype.num, x._requires_grad) for x in inputs),
                self._module.training, grad_mode._enabled[0])

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise TypeError("compiled modules take positional inputs only")
        simple = all(isinstance(x, Tensor) for x in args)
        if simple:
            inputs, structure = args, None
        else:
            leaves = []
            structure = ("tuple", tuple(structure_of(a, leaves) for a in args))
            inputs = tuple(leaves)
        key = self._key(inputs) + (structure,)
        spec = self._specs.get(key)
        if spec is None:
            unit = c_identifier(f"{type(self._module).__name__}_{len(self._specs)}")
            shown = specialisation_key(inputs, self._module)
            if self._specs:
                debug.log("cache", f"new specialisation for {shown} (have "
                                   f"{len(self._specs)})")
            spec = Specialisation(self._module, inputs, shown, unit, structure)
            self._specs[key] = spec
        object.__setattr__(self, "_last", spec)
        return self._run(spec, inputs)

    def _run(self, spec, inputs):
        in_arrays, outs = spec.run_forward(inputs)
        for state_index, out_index in spec.state_updates:
            buf = spec.params[state_index][1]  # e.g. a running mean, updated as in eager mode
            np.copyto(buf._data, outs[out_index])
            buf._vc.value += 1
        results = [Tensor._wrap(o) for o in outs[:spec.n_out]]
        if spec.needs_grad and grad_mode.is_grad_enabled():
            leaves = list(inputs) + [p for _, p in spec.params]
            node = CompiledFunctionBackward(tuple(engine.edge_of(leaves[i])
                                                  for i in spec.grad_of))
            node.spec = spec
            saved = []
            for kind, idx in spec.saved_sources:
                if kind == "input":
                    if idx < spec.n_user:
                        saved.append(in_arrays[idx])
                    elif idx < len(leaves):
                        saved.append(leaves[idx]._data)
                    else:  # a seed: run_forward keeps them after the user inputs
                        saved.append(in_arrays[idx - len(spec.params)])
                else:
                    saved.append(outs[idx])
            node.saved = saved
            node.recyclable = [outs[i] for i in spec.recyclable]
            node.saved_versions = tuple((leaves[i], leaves[i]._vc.value)
                                        for i in spec.version_checked)
            node.freed = False
            node.out_shapes = spec.out_meta[:spec.n_out]
            node._num_outputs = spec.n_out
            for i, (t, diff) in enumerate(zip(results, spec.differentiable)):
                if diff:
                    t._requires_grad, t.grad_fn, t._output_nr = True, node, i
        if spec.output_structure is not None:
            return rebuild(spec.output_structure, results)
        return results[0] if len(results) == 1 else tuple(results)


def compile(module, **options):
    """Compile ``module`` (a ``tracenet.nn.Module``) into a ``CompiledModule``."""
    from .nn.modules.module import Module
    if not isinstance(module, Module):
        raise TypeError(f"tracenet.compile expects an nn.Module, got {type(module).__name__}")
    if options:
        raise TypeError(f"unexpected options: {', '.join(options)}")
    return CompiledModule(module)
