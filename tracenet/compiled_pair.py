"""A traced graph compiled as a forward and, when an output needs a gradient, its backward; a
call whose outputs carry autograd history through one ``CompiledFunctionBackward`` node.

Shared by ``tracenet.compile(net)`` (``compiler.py``: the module's forward) and by a compiled
function that leaves its outputs' gradients to a later ``backward`` (``compiled_function.py``).
The forward's argument vector takes the user inputs, then the state tensors (parameters and
buffers, bound), then the random seeds; its outputs are the user outputs, the buffers' updates
and the values the backward saves. ``loss.backward()`` reaches the node, which runs the
backward graph in one C call and hands the gradients of the inputs and parameters that
require grad to the autograd engine, which accumulates them into ``.grad`` as in eager mode.
"""
import operator
import sys

import numpy as np

from . import _aligned
from ._sym import NO_SIZES
from .autograd import engine, grad_mode
from .executable import Executable, ShapeTable, SizeChecks, graph_symbols, optimise, run_sizes
from .passes import grad as ir_grad, joint_forward
from .passes.autodiff import view_source
from .runtime import debug
from .tensor import Tensor
from .trace import TraceError, rebuild, user_output_count

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


def _positions(values, wanted):
    """The index in ``values`` of each of ``wanted``: a value listed twice (an output returned
    twice) is found at its successive positions, so each takes its own cotangent."""
    taken, out = set(), []
    for v in wanted:
        i = next(i for i, u in enumerate(values) if u is v and i not in taken)
        taken.add(i)
        out.append(i)
    return out


def refuse_aliased_inputs(input_updates, inputs, state):
    """Raise ``TraceError`` when an input the call writes in place shares memory with another
    input or with a state tensor (parameter, buffer) of the call: eager mode's later reads of
    the other see the write, the compiled call's do not."""
    for i, _, _ in input_updates:
        written = inputs[i]._data
        for j, x in enumerate(inputs):
            if j != i and np.shares_memory(written, x._data):
                raise TraceError(f"inputs {i} and {j} of a compiled call share memory and "
                                 f"input {i} is changed in place: compiled code does not "
                                 "support this (pass a clone, or call it eagerly)")
        for t in state:
            if np.shares_memory(written, t._data):
                raise TraceError(f"input {i} of a compiled call shares memory with a parameter "
                                 "or buffer it reads and is changed in place: compiled code "
                                 "does not support this (pass a clone, or call it eagerly)")


def refuse_other_layouts(row_major_inputs, inputs):
    """Raise ``TraceError`` when an input the call writes through a reshape is not row-major:
    eager mode's reshape of it is a copy, and the write does not reach it
    (``graph.row_major_inputs``)."""
    for i in row_major_inputs:
        if not inputs[i]._data.flags.c_contiguous:
            raise TraceError(f"input {i} of a compiled call is written in place through a "
                             "reshape and is not contiguous: eager mode's reshape of it is a "
                             "copy that the write does not carry back, which compiled code "
                             "does not support (pass x.contiguous(), or call it eagerly)")


def write_back_inputs(input_updates, inputs, outs):
    """Copy the new values of the inputs a call changed in place into the caller's tensors and
    advance their versions by as many writes as eager mode makes (``graph.input_updates``)."""
    for i, out_index, writes in input_updates:
        x = inputs[i]
        np.copyto(x._data, outs[out_index])
        x._vc.value += writes


class CompiledPair:
    """The compiled forward (and backward) of one traced graph and how to call them.

    ``params``: (name, tensor) of the state tensors, the graph's inputs after the ``n_user``
    user inputs. Built from the traced graph ``traced`` (differentiated, optimised and built
    for ``unit``) or from ``stored`` (``pair_state``, its executable restored)."""

    # what a graph cache entry keeps, besides the graphs and the executable
    _STORED = ("output_structure", "state_updates", "input_updates", "row_major_inputs", "n_out",
               "n_seeds", "size_checks",
               "differentiable", "needs_grad", "saved_sources", "recyclable",
               "version_checked", "grad_of", "cotangent_of")

    def __init__(self, params, n_user, traced=None, unit=None, stored=None, clock=None):
        self.params = params
        self.n_user = n_user
        if stored is None:
            graphs = self._build(traced, unit, clock)
        else:
            graphs = self._load(stored)
        self._prepare(graphs)

    def _build(self, fwd, unit, clock):
        """Differentiate ``fwd`` when an output needs a gradient, optimise and build; returns
        the (entry suffix, graph) list."""
        self.output_structure = fwd.output_structure
        self.size_checks = list(fwd.size_checks)
        self.state_updates = list(fwd.state_updates)
        self.input_updates = list(fwd.input_updates)
        self.row_major_inputs = list(getattr(fwd, "row_major_inputs", ()))
        self.n_out = user_output_count(fwd)
        # random ops' seeds: the last graph inputs, given fresh values on every call
        self.n_seeds = len(fwd.seed_inputs)
        assert fwd.inputs[len(fwd.inputs) - self.n_seeds:] == fwd.seed_inputs
        # (the inputs' new values follow the outputs: an input changed in place by a value
        # that requires grad takes this call's history, as in eager mode)
        self.differentiable = [v.requires_grad for v in
                               fwd.outputs[:self.n_out + len(self.input_updates)]]
        self.needs_grad = any(self.differentiable)
        # {output index: StaleSaved}: its backward raises, as eager mode's would
        self.stale_saved = dict(getattr(fwd, "stale_saved", None) or {})
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
            self.cotangent_of = _positions(fwd.outputs, bwd.cotangent_of)
            if clock is not None:
                clock.lap("autodiff")
            self.backward_graph = optimise(bwd)
            graphs = [("forward", optimise(joint)), ("backward", self.backward_graph)]
            self.forward_graph = joint
        else:
            self.recyclable = []
            graphs = [("forward", optimise(fwd))]
        if clock is not None:
            clock.lap("passes")
        self.executable = Executable(graphs, unit)
        return graphs

    def _load(self, stored):
        self.size_checks = []  # (an entry may have none)
        self.stale_saved = {}  # (a graph with one is not stored)
        self.input_updates = self.row_major_inputs = []
        for name in self._STORED:
            if name in stored:
                setattr(self, name, stored[name])
        graphs = stored["graphs"]
        self.forward_graph = graphs[0][1]
        self.backward_graph = graphs[1][1] if self.needs_grad else None
        self.executable = stored["executable"]
        return graphs

    def pair_state(self):
        """What a new process needs to rebuild the pair without tracing (the graphs first:
        pickling reaches the values through them)."""
        graphs = [("forward", self.forward_graph)]
        if self.needs_grad:
            graphs.append(("backward", self.backward_graph))
        state = {"graphs": graphs, "executable": self.executable.stored_state()}
        for name in self._STORED:
            if hasattr(self, name):
                state[name] = getattr(self, name)
        return state

    def _prepare(self, graphs):
        """Argument slots, output shapes and the backward's plan, once per pair."""
        params = self.params
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
        self.user_out_shapes = ShapeTable(self.out_meta[:len(self.differentiable)])
        if self.needs_grad:
            self._plan_backward()

    @property
    def source_code(self):
        return self.executable.source_code

    @property
    def written_inputs(self):
        """The indices of the inputs a call changes in place (and copies back)."""
        return [i for i, _, _ in self.input_updates]

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
    def call(self, inputs):
        """Run the forward on the tensors ``inputs``: buffers take their updates, and with
        grad enabled the differentiable outputs get this call's backward node."""
        if self.input_updates:
            refuse_aliased_inputs(self.input_updates, inputs, self._param_tensors)
            refuse_other_layouts(self.row_major_inputs, inputs)
            if self.needs_grad and grad_mode._state.enabled:
                self._refuse_views_taking_history(inputs)
        pool, outs, spares, sizes = self.run_forward(inputs)
        for state_index, out_index in self.state_updates:
            buf = self.params[state_index][1]  # e.g. a running mean, updated as in eager mode
            np.copyto(buf._data, outs[out_index])
            buf._vc.value += 1
        wrap = Tensor._wrap
        results = [wrap(o) for o in outs[:self.n_out]]
        if self.needs_grad and grad_mode._state.enabled:
            node = CompiledFunctionBackward(self.edges(inputs))
            node.spec = self
            node._leaf_ids = self.leaf_ids
            node.saved = self.take_saved(pool)
            node.recyclable = spares
            checked = self.checked_inputs
            if checked:
                checked = [inputs[i] for i in checked] + self.checked_params
            else:
                checked = self.checked_params
            node.saved_versions = tuple([(t, t._vc.value) for t in checked])
            node.freed = False
            node.sizes = sizes
            node.out_shapes = self.user_out_shapes(sizes)
            node._num_outputs = len(self.differentiable)
            if self.input_updates:  # (after the saved versions and the edges: an input the
                # backward reads and the call changes is caught there, as in eager mode)
                write_back_inputs(self.input_updates, inputs, outs)
                results += [inputs[i] for i, _, _ in self.input_updates]
            for i in self.differentiable_outputs:
                t = results[i]
                t._req, t._grad_fn, t._output_nr = True, node, i
                t._hist += 1  # (a view of a changed input rebuilds its history)
            del results[self.n_out:]
        elif self.input_updates:
            write_back_inputs(self.input_updates, inputs, outs)
        structure = self.output_structure
        if type(structure) is int:  # (one tensor: what rebuild gives)
            return results[structure]
        if structure is not None:
            return rebuild(structure, results)
        return results[0] if len(results) == 1 else tuple(results)

    def _refuse_views_taking_history(self, inputs):
        """An input that is a view and takes this call's history in place: eager mode rewrites
        its base's history too, which a compiled call does not."""
        for k in self.differentiable_outputs:
            if k >= self.n_out:
                i = self.input_updates[k - self.n_out][0]
                if inputs[i]._base_ is not None:
                    raise TraceError(f"input {i} of a compiled call is a view and takes a value "
                                     "that requires grad in place: compiled code does not "
                                     "support this (pass a clone, or call it eagerly)")

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
        for i, stale in spec.stale_saved.items():
            if grads[i] is not None:
                raise RuntimeError(stale.message(self.sizes))
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
