"""Eager autograd: running registry ops on numpy and walking the recorded graph backwards.

Each eager op application that needs a gradient records one ``Node`` whose class name is
PyTorch's (``AddmmBackward0``...). Leaves get a cached ``AccumulateGrad`` node. ``backward``
orders the reachable nodes topologically, calls each op's registry backward rule (written in
tracenet ops, so it runs here on tensors and in the IR autodiff on traced values; or, when no
graph of the backward is recorded, the op's numpy form of it if it has one), and sums
cotangents where a value was used more than once.
"""
import functools
import re
import weakref
from collections import OrderedDict

import numpy as np

from .._dtype import _BY_NP
from .._meta import Meta
from ..ops import common, registry
from ..ops.registry import Ctx, op_attrs, saved_input_indices
from ..tensor import Tensor, _legacy_type_name
from ..utils.hooks import add_hook
from . import grad_mode

_node_classes = {}

_FREED_MSG = ("Trying to backward through the graph a second time (or directly access saved "
              "tensors after they have already been freed). Saved intermediate values of the graph "
              "are freed when you call .backward() or autograd.grad(). Specify retain_graph=True if "
              "you need to backward through the graph a second time or if you need to access saved "
              "tensors after calling backward.")


class Node:
    """A backward function. ``next_functions`` pairs each input's node with its output index."""
    __slots__ = ("next_functions", "_hooks", "_retained", "_metadata", "__weakref__")
    # whether the gradients ``_run`` returns are held by nobody else (a leaf may keep one as
    # its ``.grad`` without a copy)
    _fresh_results = False
    # the ids of the leaves' nodes when every edge is known to go to a leaf of its own (a
    # subclass whose edges are the same from call to call may tell ``_chain`` so)
    _leaf_ids = None

    def __init__(self, next_functions):
        self.next_functions = next_functions
        self._hooks = None        # {output_nr: {handle id: hook}} on the tensors it produced
        self._retained = None     # {output_nr: weakref(tensor)} for retain_grad()
        self._metadata = None     # made on first use: most nodes never have any

    @property
    def metadata(self):
        if self._metadata is None:
            self._metadata = {}
        return self._metadata

    def name(self):
        n = type(self).__name__
        return "torch::autograd::CopySlices" if n == "CopySlices" else n

    def __repr__(self):
        return f"<{type(self).__name__} object at {hex(id(self))}>"

    def _retain(self, output_nr, tensor):
        if self._retained is None:
            self._retained = {}
        self._retained[output_nr] = weakref.ref(tensor)

    def _add_hook(self, output_nr, hook):
        if self._hooks is None:
            self._hooks = {}
        return add_hook(self._hooks.setdefault(output_nr, OrderedDict()), hook)

    def register_hook(self, hook):
        raise NotImplementedError("hooks on grad_fn nodes are not supported; use "
                                  "Tensor.register_hook")

    def register_prehook(self, hook):
        raise NotImplementedError("pre-hooks on grad_fn nodes are not supported; use "
                                  "Tensor.register_hook")

    # subclasses implement: _run(grads) -> tuple of input grads; _release(); _saved_count
    def _run(self, grads):
        raise NotImplementedError


class OpNode(Node):
    """The backward of one registry op application."""
    __slots__ = ("op", "ctx", "_saved", "_freed", "_edge_inputs")

    def _run(self, grads):
        if self._freed:
            raise RuntimeError(_FREED_MSG)
        for saved in self._saved:
            if saved[0]._vc.value != saved[1]:
                raise RuntimeError(_inplace_error(*saved))
        op = self.op
        res = None
        if grad_mode._state.enabled:
            if op.saves_outputs:
                self._link_saved_outputs()
        elif op.eager_backward is not None:
            res = self._run_numpy(grads)
        if res is None:
            res = op.backward(self.ctx, *grads)
            res = res if isinstance(res, tuple) else (res,)
        if self._edge_inputs is not None:
            res = tuple([res[i] for i in self._edge_inputs])
        return res

    def _run_numpy(self, grads):
        """The op's numpy backward, when the gradients are what the op's outputs are (else
        the rule, with its checks, runs): tensors of the input gradients, or None."""
        arrays = []
        for g, meta in zip(grads, self.ctx.out_metas):
            if g is None:
                arrays.append(None)
                continue
            a = g._data
            if a is None or a.shape != meta.shape or \
                    a.dtype is not meta.dtype.np and a.dtype != meta.dtype.np:
                return None
            arrays.append(a)
        res = self.op.eager_backward(self.ctx, *arrays)
        if res is None:
            return None
        return tuple([None if a is None else
                      Tensor._wrap(a if type(a) is np.ndarray else np.asarray(a)) for a in res])

    def _link_saved_outputs(self):
        """Under create_graph, a rule that reads the op's output (tanh's ``1 - y^2``) must
        differentiate through it: the saved aliases become this node's outputs again, as
        torch's saved output variables do. (They are saved without it so that a graph that is
        never differentiated twice holds no cycle node -> output -> node.)"""
        for i, out in enumerate(self.ctx.outputs):
            if out.grad_fn is None and out.dtype.is_floating_point:
                out.grad_fn, out._output_nr, out._requires_grad = self, i, True

    def _release(self):
        if self._saved or self.op.saves_outputs:
            self._freed = True
            self.ctx.inputs = None
            self.ctx.outputs = None
            self._saved = ()


class AccumulateGrad(Node):
    """Adds the incoming gradient into a leaf's ``.grad``."""
    __slots__ = ("variable",)

    def __init__(self, variable):
        super().__init__(())
        self.variable = variable

    def name(self):
        return "torch::autograd::AccumulateGrad"  # what torch's name() says for C++ nodes

    def _run(self, grads):
        return ()

    def _release(self):
        pass


def accumulator_of(leaf):
    acc = leaf._accumulator() if leaf._accumulator is not None else None
    if acc is None:
        acc = AccumulateGrad(leaf)
        leaf._accumulator = weakref.ref(acc)
    return acc


def edge_of(t):
    """The (node, output_nr) a gradient for tensor ``t`` flows into, or (None, 0)."""
    base = t._base_
    if base is not None and t._view_hist != base._hist:
        t._refresh_view()  # what the grad_fn property does for a view with a stale history
    fn = t._grad_fn
    if fn is not None:
        return (fn, t._output_nr)
    if t._req:
        return (accumulator_of(t), 0)
    return (None, 0)


def node_class(name, base=OpNode):
    cls = _node_classes.get((name, base))
    if cls is None:
        cls = type(name, (base,), {"__slots__": ()})
        _node_classes[(name, base)] = cls
    return cls


def _inplace_error(tensor, version, producer=None, output_nr=0):
    """torch's message for a saved tensor changed in place; ``producer`` names the node that
    made a saved output (its alias carries no grad_fn of its own)."""
    if producer is None and tensor.grad_fn is not None:
        producer, output_nr = tensor.grad_fn.name(), tensor._output_nr
    return inplace_message(tensor.dtype, tensor.shape, tensor._vc.value, version, producer,
                           output_nr)


def inplace_message(dtype, shape, version_now, version, producer=None, output_nr=0):
    """torch's message for a saved tensor of ``dtype`` and ``shape``, at version
    ``version_now`` where the backward expected ``version``, made by the node named
    ``producer`` (None: a leaf)."""
    where = ""
    if producer is not None:
        # torch names the forward function: SigmoidBackward0 -> Sigmoid
        where = f", which is output {output_nr} of {re.sub(r'Backward[0-9]*$', '', producer)},"
    shape = ", ".join(str(s) for s in shape)
    return ("one of the variables needed for gradient computation has been modified by an "
            f"inplace operation: [{_legacy_type_name(dtype)} [{shape}]]{where} is at "
            f"version {version_now}; expected version {version} instead. Hint: enable "
            "anomaly detection to find the operation that failed to compute its gradient, with "
            "torch.autograd.set_detect_anomaly(True, check_nan=False).")


# ---------------------------------------------------------------------------------------------
# forward: run one op eagerly and record its node


def run_eager(op, inputs, attrs):
    # the hot path of every eager op: read the numpy arrays once, no Size/dtype properties
    arrays = [t._data for t in inputs]
    metas = tuple([_meta((a.shape, _BY_NP[a.dtype])) for a in arrays])
    kw = op_attrs(attrs) if attrs else attrs
    cache = op.infer_cache
    if cache is None:
        out_meta = op.infer(*metas, **kw)
    else:  # a shape rule worth remembering: the same shapes and attributes give the same
        try:
            key = (metas, tuple(kw.items()))
            out_meta = cache.get(key)
        except TypeError:  # an unhashable attribute: no caching
            key = out_meta = None
        if out_meta is None:
            out_meta = op.infer(*metas, **kw)
            if key is not None:
                if len(cache) >= _INFER_CACHE_SIZE:
                    cache.clear()
                cache[key] = out_meta
    result = op.eager(*arrays, **kw)
    if op.num_outputs == 1:
        metas_out = (out_meta,)
        outputs = [_output(op, result, out_meta)]
    else:
        metas_out = out_meta
        outputs = [_output(op, arr, meta) for arr, meta in zip(result, out_meta)]
    if op.is_view:
        base = inputs[0]
        for o in outputs:
            o._vc = base._vc
            o._base = base._base if base._base is not None else base
    if op.differentiable and grad_mode._state.enabled:
        record(op, inputs, outputs, metas, metas_out, attrs)
    return outputs[0] if op.num_outputs == 1 else tuple(outputs)


def record(op, inputs, outputs, metas, out_metas, attrs, cls=None, plan=None):
    """Record the node of one eager application of ``op`` (with grad mode on) if an input
    needs a gradient: what ``run_eager`` records, for a caller that ran the op's kernel itself
    (a lean path for a hot pair of ops). ``cls``: the node's class, when the caller knows
    which of the op's names this application has; ``plan``: ``edge_plan(op, floats)``, when
    the caller knows which inputs are floating-point."""
    # (a view with a stale history refreshes it through the property)
    needs = tuple([t._req if t._base_ is None else t._requires_grad for t in inputs])
    if True in needs:
        _record(op, inputs, outputs, metas, out_metas, attrs, needs, cls, plan)


# shape rules remembered per op (for ops that opt in, see registry.Op.infer_cache), at most
_INFER_CACHE_SIZE = 256
# Meta((shape, dtype)) without the namedtuple's Python-level constructor
_meta = meta_of = functools.partial(tuple.__new__, Meta)


def _output(op, arr, meta):
    """The eager result ``arr`` as a tensor of ``meta``'s dtype, checked against its shape."""
    if type(arr) is not np.ndarray:
        arr = np.asarray(arr)
    want = meta.dtype.np
    if arr.dtype is not want and arr.dtype != want:
        arr = arr.astype(want)
    if arr.shape != meta.shape and arr.shape != tuple(meta.shape):
        raise AssertionError(f"op {op.name}: eager result shape {arr.shape} disagrees with its "
                             f"shape rule {tuple(meta.shape)}")
    return Tensor._wrap(arr)


def _edge_plan(op, inputs):
    """(indices of the inputs that get an autograd edge, or None for all of them; indices of
    the saved inputs), cached per op and input dtypes: inputs that can never carry a gradient
    (integer tensors, a condition, a class weight) get no edge, like torch; float inputs that
    just do not require grad get (None, 0)."""
    key = tuple([t._data.dtype.kind == "f" for t in inputs])
    plan = op.edge_plans.get(key)
    return edge_plan(op, key) if plan is None else plan


def edge_plan(op, floats):
    """``_edge_plan`` of an application whose inputs are floating-point where ``floats``
    (one bool per input) says so."""
    plan = op.edge_plans.get(floats)
    if plan is None:
        keep = tuple(i for i, f in enumerate(floats) if f and i not in op.nondiff)
        plan = (None if len(keep) == len(floats) else keep,
                tuple(saved_input_indices(op, len(floats))))
        op.edge_plans[floats] = plan
    return plan


def _record(op, inputs, outputs, metas, out_metas, attrs, needs, cls=None, plan=None):
    edge_inputs, save_idx = _edge_plan(op, inputs) if plan is None else plan
    saved_inputs = [None] * len(inputs)
    saved = []
    for i in save_idx:
        t = inputs[i]
        saved_inputs[i] = t
        saved.append((t, t._vc.value))
    saved_outputs = None
    if op.saves_outputs:
        # alias the outputs without their grad_fn: no reference cycle node -> output -> node
        saved_outputs = []
        for o in outputs:
            alias = Tensor._wrap(o._data)
            alias._vc = o._vc
            saved_outputs.append(alias)
    ctx = Ctx(saved_inputs, saved_outputs, metas, out_metas, attrs, needs)
    if edge_inputs is None:
        edges = tuple([edge_of(t) for t in inputs])
    else:
        edges = tuple([edge_of(inputs[i]) for i in edge_inputs])
    if attrs and attrs.get("_none_edges"):
        # optional inputs that were not given (a convolution without bias) still have an edge
        edges += ((None, 0),) * attrs["_none_edges"]
    if cls is None:
        cls = op.node_cls
    if cls is None:
        cls = node_class(op.grad_fn_name(ctx))
        if not callable(op.grad_fn):  # a fixed name: one class for every application
            op.node_cls = cls
    node = cls(edges)
    node.op = op
    node.ctx = ctx
    node._edge_inputs = edge_inputs
    node._freed = False
    if saved_outputs is not None:
        for i, (o, alias) in enumerate(zip(outputs, saved_outputs)):
            saved.append((alias, o._vc.value, node.name(), i))
    node._saved = tuple(saved)
    for i, o in enumerate(outputs):
        if o._data.dtype.kind == "f":
            o._req = True
            o._grad_fn = node
            o._output_nr = i


# ---------------------------------------------------------------------------------------------
# backward


def _topo_order(roots):
    """(nodes reachable from ``roots`` in an order where every node precedes its inputs,
    {id of each AccumulateGrad node reached: the number of edges into it})."""
    order, seen, fan_in = [], set(), {}
    get, add, append = fan_in.get, seen.add, order.append
    for root in roots:
        if root is None:
            continue
        if type(root) is AccumulateGrad:  # backward() of a leaf
            fan_in[id(root)] = get(id(root), 0) + 1
        if id(root) in seen:
            continue
        stack = [(root, iter(root.next_functions))]
        add(id(root))
        while stack:
            node, it = stack[-1]
            for nxt, _ in it:
                if nxt is None:
                    continue
                k = id(nxt)
                if type(nxt) is AccumulateGrad:  # no inputs: finished as soon as reached
                    n = get(k)
                    if n is None:
                        fan_in[k] = 1
                        add(k)
                        append(nxt)
                    else:
                        fan_in[k] = n + 1
                elif k not in seen:
                    add(k)
                    stack.append((nxt, iter(nxt.next_functions)))
                    break
            else:
                stack.pop()
                append(node)
    order.reverse()
    return order, fan_in


def _accumulate(slot, index, grad):
    prev = slot[index]
    slot[index] = grad if prev is None else prev + grad


def run_backward(tensors, grad_tensors, retain_graph=False, create_graph=False, inputs=None,
                 allow_unused=True):
    """Propagate ``grad_tensors`` from ``tensors`` back through the graph.

    With ``inputs=None`` gradients are accumulated into leaves' ``.grad`` (``backward``);
    otherwise the gradients of ``inputs`` are returned (``autograd.grad``).

    A leaf reached by one edge of the graph gets its gradient as soon as that edge delivers
    it, as torch's engine runs an AccumulateGrad node first once it is ready; a leaf reached by
    several edges gets their sum at its place in the order."""
    roots = []
    for t in tensors:
        node, nr = edge_of(t)
        if node is None:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a "
                               "grad_fn")
        roots.append((node, nr))
    if inputs is None and len(roots) == 1:
        chain = _chain(roots[0][0])
        if chain is not None:
            state = grad_mode._state  # (what set_grad_enabled does, without its object)
            prev, state.enabled = state.enabled, bool(create_graph)
            try:
                _run_chain(chain, roots[0][1], grad_tensors[0], retain_graph, create_graph)
            finally:
                state.enabled = prev
            return None
    order, fan_in = _topo_order([n for n, _ in roots])
    # the gradients arriving at each node, made when the first one arrives
    pending = {}
    capture = wanted = None
    if inputs is not None:
        capture = {}
        wanted = {}
        for i, t in enumerate(inputs):
            node, nr = edge_of(t)
            if node is None:
                raise RuntimeError("One of the differentiated Tensors does not require grad")
            wanted.setdefault(id(node), []).append((i, nr))
            fan_in.pop(id(node), None)  # captured at its place in the order
    # the leaves the single edge into which accumulates directly (backward, not grad)
    direct = () if capture is not None else {k for k, n in fan_in.items() if n == 1}

    def deliver(node, nr, g, fresh):
        k = id(node)
        if k in direct:
            _accumulate_into_leaf(node.variable, g, create_graph, fresh)
            return
        slot = pending.get(k)
        if slot is None:
            slot = pending[k] = [None] * _num_outputs(node)
        _accumulate(slot, nr, g)

    with grad_mode.set_grad_enabled(create_graph):
        for (node, nr), g in zip(roots, grad_tensors):
            deliver(node, nr, g, False)
        for node in order:
            grads = pending.pop(id(node), None)
            if grads is None:  # nothing arrived (or a leaf already given its gradient)
                continue
            if node._hooks:
                for nr, hooks in node._hooks.items():
                    for hook in list(hooks.values()):
                        if grads[nr] is not None:
                            new = hook(grads[nr])
                            if new is not None:
                                grads[nr] = new
            if node._retained:
                for nr, ref in node._retained.items():
                    t = ref()
                    if t is not None and grads[nr] is not None:
                        g = grads[nr] if create_graph else grads[nr].detach()
                        t._grad = g.clone() if t._grad is None else t._grad + g
            leaf = type(node) is AccumulateGrad
            if capture is not None and id(node) in wanted:
                for i, nr in wanted[id(node)]:
                    capture[i] = grads[nr]
                if leaf:
                    continue
            if leaf:
                if capture is None and grads[0] is not None:
                    _accumulate_into_leaf(node.variable, grads[0], create_graph)
                continue
            if (grads[0] is None if len(grads) == 1 else all(g is None for g in grads)):
                continue
            in_grads = node._run(grads)
            if not retain_graph:
                node._release()
            fresh = node._fresh_results
            for (nxt, nr), g in zip(node.next_functions, in_grads):
                if nxt is None or g is None:
                    continue
                k = id(nxt)  # (what deliver does, inline: most edges pass here)
                if k in direct:
                    _accumulate_into_leaf(nxt.variable, g, create_graph, fresh)
                    continue
                slot = pending.get(k)
                if slot is None:
                    slot = pending[k] = [None] * _num_outputs(nxt)
                _accumulate(slot, nr, g)
    if capture is not None:
        result = []
        for i, t in enumerate(inputs):
            g = capture.get(i)
            if g is None and not allow_unused:
                raise RuntimeError("One of the differentiated Tensors appears to not have been "
                                   "used in the graph. Set allow_unused=True if this is the "
                                   "desired behavior.")
            result.append(g)
        return tuple(result)
    return None


def _chain(root):
    """The nodes from ``root`` on when the graph is a chain: each node has at most one edge to
    a node that is not a leaf, every leaf is reached by one edge, and no node has hooks or
    retained gradients (a training loss through a compiled module: the loss nodes, then the
    compiled backward, then the parameters). None for any other graph."""
    if type(root) is AccumulateGrad:
        return None
    nodes, leaves = [], set()
    node = root
    while node is not None:
        if node._hooks or node._retained:
            return None
        nodes.append(node)
        ids = node._leaf_ids
        if ids is not None:  # (known: every edge is to a leaf of its own)
            inner = None
        else:
            edges = node.next_functions
            if len(edges) == 1 and type(edges[0][0]) is not AccumulateGrad:
                inner = edges[0][0]  # (one edge, to an inner node or to nothing)
            else:
                inner, ids = _edges_shape(edges)
                if ids is None:
                    return None
        if ids:
            if not leaves.isdisjoint(ids):
                return None
            leaves |= ids
        node = inner
    return nodes


def _edges_shape(edges):
    """(the one edge to a node that is not a leaf, or None; the ids of the leaves' nodes)
    of a node's ``edges``; ids None when there are two inner edges or a leaf twice."""
    inner, ids = None, set()
    for nxt, _ in edges:
        if nxt is None:
            continue
        if type(nxt) is AccumulateGrad:
            k = id(nxt)
            if k in ids:
                return None, None
            ids.add(k)
        elif inner is None:
            inner = nxt
        else:
            return None, None
    return inner, ids


def _run_chain(nodes, nr, grad, retain_graph, create_graph):
    """``run_backward`` for a chain (see ``_chain``): the same node runs, releases and leaf
    accumulations in the same order, without the ordering and bookkeeping of a general
    graph."""
    grads = [None] * _num_outputs(nodes[0])
    grads[nr] = grad
    for node in nodes:
        if (grads[0] is None if len(grads) == 1 else all(g is None for g in grads)):
            return
        in_grads = node._run(grads)
        if not retain_graph:
            node._release()
        fresh = node._fresh_results
        grads = None
        for (nxt, nr), g in zip(node.next_functions, in_grads):
            if nxt is None or g is None:
                continue
            if type(nxt) is AccumulateGrad:
                leaf = nxt.variable
                if fresh and not create_graph and leaf._grad is None and \
                        leaf._hooks is None and g._ir is None and leaf._ir is None:
                    a, data = g._data, leaf._data
                    if a.shape == data.shape and a.dtype is data.dtype:
                        # (what _accumulate_into_leaf does for a first gradient made for
                        # this leaf alone: it becomes .grad)
                        leaf._grad = g
                        continue
                _accumulate_into_leaf(leaf, g, create_graph, fresh)
            else:  # the chain's next node: this is its only edge
                grads = [None] * _num_outputs(nxt)
                grads[nr] = g
        if grads is None:
            return


def _num_outputs(node):
    if isinstance(node, OpNode):
        return len(node.ctx.out_metas)
    return getattr(node, "_num_outputs", 1)


def _accumulate_into_leaf(leaf, grad, create_graph, fresh=False):
    """Add ``grad`` into ``leaf.grad`` (after the leaf's hooks). ``fresh``: nobody else holds
    ``grad`` (a compiled backward's result), so it may become ``.grad`` without a copy."""
    if leaf._hooks:
        for hook in list(leaf._hooks.values()):
            new = hook(grad)
            if new is not None:
                grad, fresh = new, False
    concrete = grad._ir is None and leaf._ir is None
    if concrete and not create_graph:  # the common case, on arrays
        a, data = grad._data, leaf._data
        if a.shape != data.shape:
            _invalid_gradient(grad, leaf)
        old = leaf._grad
        if old is None:
            if fresh and a.dtype is data.dtype:
                leaf._grad = grad  # made for this leaf alone, with no history
                return
            # detach().clone(), without two op dispatches: a copy with no history, laid out
            # like the leaf when that is row-major (torch's gradient layout contract: a
            # linear layer's weight gradient arrives transposed)
            order = "C" if data.flags.c_contiguous else "K"
            leaf._grad = Tensor._wrap(np.array(a, order=order, copy=True))
            if a.dtype is not data.dtype and a.dtype != data.dtype:
                leaf._grad = leaf._grad.to(leaf.dtype)
            return
        if old._ir is None and not old._requires_grad:
            np.add(old._data, a, out=old._data, casting="unsafe")
            old._vc.value += 1
            return
    if (grad._data.shape != leaf._data.shape if concrete
            else tuple(grad.shape) != tuple(leaf.shape)):
        _invalid_gradient(grad, leaf)
    if not create_graph and not fresh:
        if leaf._grad is None and concrete:
            # detach().clone(), without two op dispatches: a copy with no history, laid out
            # like the leaf when that is row-major (torch's gradient layout contract: a
            # linear layer's weight gradient arrives transposed)
            order = "C" if leaf._data.flags.c_contiguous else "K"
            leaf._grad = Tensor._wrap(np.array(grad._data, order=order, copy=True))
            if leaf._grad.dtype is not leaf.dtype:
                leaf._grad = leaf._grad.to(leaf.dtype)
            return
        grad = grad.detach()
    if leaf._grad is None:
        # own the storage (later accumulation happens in place): copy, unless the gradient
        # was made for this leaf alone (compiled backward results)
        leaf._grad = grad if create_graph or fresh else grad.clone()
        if leaf._grad.dtype is not leaf.dtype:
            leaf._grad = leaf._grad.to(leaf.dtype)
    elif create_graph or leaf._grad._requires_grad:
        leaf._grad = leaf._grad + grad
    else:
        np.add(leaf._grad._data, grad._data, out=leaf._grad._data, casting="unsafe")
        leaf._grad._vc.value += 1


def _invalid_gradient(grad, leaf):
    raise RuntimeError(f"Function AccumulateGrad returned an invalid gradient - got "
                       f"{list(grad.shape)} but expected shape compatible with "
                       f"{list(leaf.shape)}")


# this module is the ops' eager interpreter: the registry and ops.common call it through slots
registry._eager[0] = run_eager
common._accumulator_of[0] = accumulator_of
