"""``tracenet.autograd.Function``: user-defined ops with ``forward``/``backward`` staticmethods.

The backward node is named ``<ClassName>Backward`` like torch's ``BackwardCFunction`` nodes.

Under tracing (``tracenet.compile``) ``apply`` traces ``forward``'s ops inline and passes its
outputs through one ``custom_function`` node, whose backward rule is the Function's own
``backward``: autodiff calls it on traced tensors, so it is traced into the backward graph (the
ctx keeps the traced tensors ``forward`` saved). The compiler then drops the node (its
decomposition is the identity on the outputs).
"""
import os
import traceback

from .._meta import Meta
from .._trace_errors import TraceError, user_location
from ..ops import registry
from ..ops.creation import zeros
from ..tensor import Tensor
from . import engine, grad_mode


class FunctionCtx:
    def __init__(self):
        self.saved_tensors_ = ()
        self._versions = ()
        self.needs_input_grad = ()
        self.materialize_grads = True
        self.non_differentiable = set()
        self.dirty = set()
        self._freed = False

    def save_for_backward(self, *tensors):
        self.saved_tensors_ = tensors
        self._versions = tuple(t._vc.value if t is not None else 0 for t in tensors)

    @property
    def saved_tensors(self):
        if self._freed:
            raise RuntimeError(engine._FREED_MSG)
        for t, v in zip(self.saved_tensors_, self._versions):
            if t is not None and t._vc.value != v:
                raise RuntimeError(engine._inplace_error(t, v))
        return self.saved_tensors_

    def mark_non_differentiable(self, *tensors):
        self.non_differentiable.update(id(t) for t in tensors)

    def mark_dirty(self, *tensors):
        self.dirty.update(id(t) for t in tensors)

    def set_materialize_grads(self, value):
        self.materialize_grads = bool(value)


class FunctionNode(engine.Node):
    __slots__ = ("fn_cls", "fn_ctx", "_num_outputs", "_out_shapes")

    def _run(self, grads):
        if self.fn_ctx.materialize_grads:
            grads = tuple(zeros(s, dtype=d) if g is None else g
                          for g, (s, d) in zip(grads, self._out_shapes))
        res = self.fn_cls.backward(self.fn_ctx, *grads)
        if not isinstance(res, tuple):
            res = (res,)
        n = len(self.next_functions)
        if len(res) < n:
            raise RuntimeError(f"function {type(self).__name__} returned an incorrect number of "
                               f"gradients (expected {n}, got {len(res)})")
        return res[:n]

    def _release(self):
        self.fn_ctx._freed = True
        self.fn_ctx.saved_tensors_ = ()


def _custom_infer(*metas, n_in, **attrs):
    return tuple(Meta(m.shape, m.dtype) for m in metas[n_in:])


def _custom_eager(*arrays, n_in, **attrs):
    return tuple(arrays[n_in:])


def _custom_decomposition(*tensors, n_in, **attrs):
    return tuple(tensors[n_in:])


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _user_frame(tb):
    """'file:line' of the innermost frame of traceback ``tb`` outside tracenet."""
    for fs in reversed(traceback.extract_tb(tb)):
        if not os.path.abspath(fs.filename).startswith(_PACKAGE_DIR + os.sep):
            return f"{fs.filename}:{fs.lineno}"
    return None


def _custom_backward(ctx, *grads):
    """The node's backward rule: the Function's ``backward`` on the traced cotangents."""
    attrs = ctx.attrs
    cls, fctx, n_in, positions = attrs["function"], attrs["ctx"], attrs["n_in"], \
        attrs["positions"]
    try:
        res = cls.backward(fctx, *grads)
        if not isinstance(res, tuple):
            res = (res,)
        if len(res) < attrs["n_args"]:
            raise RuntimeError(f"function {cls.__name__}Backward returned an incorrect number of "
                               f"gradients (expected {attrs['n_args']}, got {len(res)})")
        out = []
        for i in positions:
            g = res[i]
            if g is not None and not isinstance(g, Tensor):
                raise TypeError(f"backward returned a {type(g).__name__}, not a Tensor or None")
            if g is not None and g._ir is None:
                raise TraceError("backward returned a tensor that does not depend on its traced "
                                 "inputs (computed outside tracenet ops, e.g. with numpy)")
            out.append(g)
    except Exception as e:  # noqa: BLE001  (any failure: the backward cannot be traced)
        where = _user_frame(e.__traceback__)
        applied = f" (applied at {attrs['loc']})" if attrs.get("loc") else ""
        at = f" at {where}" if where else ""
        reason = str(e).rstrip(".")
        raise TraceError(
            f"the backward of custom autograd.Function {cls.__name__}{applied} cannot be "
            f"traced{at}: {reason}. A compiled module runs a Function's backward as traced "
            "tracenet ops: it cannot use numpy, .item() or other concrete values of its "
            "tensors. Run this module in eager mode, or write the backward with "
            "tracenet ops.") from e
    return tuple(out) + (None,) * (len(ctx.inputs) - n_in)


CUSTOM_FUNCTION = registry.register(
    "custom_function", infer=_custom_infer, eager=_custom_eager, backward=_custom_backward,
    num_outputs=None, decomposition=_custom_decomposition,
    doc="A custom autograd.Function under tracing: its inputs' tensors, then the outputs its "
        "forward traced, passed through; differentiated by the Function's backward.")


def _apply_traced(cls, ctx, args, kwargs):
    """``apply`` while tracing: forward's ops inline, then the ``custom_function`` node."""
    try:
        with grad_mode.no_grad():
            out = cls.forward(ctx, *args, **kwargs)
    except TraceError as e:
        raise TraceError(f"in the forward of custom autograd.Function {cls.__name__}: {e}") \
            from e
    outs = out if isinstance(out, tuple) else (out,)
    positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
    results = [i for i, o in enumerate(outs)
               if isinstance(o, Tensor) and id(o) not in ctx.non_differentiable]
    if not results:
        return out
    loc = user_location()
    passed = registry.apply(
        CUSTOM_FUNCTION, *[args[i] for i in positions], *[outs[i] for i in results],
        n_in=len(positions), positions=tuple(positions), n_args=len(args), function=cls,
        ctx=ctx, loc=f"{loc[0]}:{loc[1]}" if loc else None)
    outs = list(outs)
    for i, t in zip(results, passed):
        outs[i] = t
    return tuple(outs) if isinstance(out, tuple) else outs[0]


class _FunctionMeta(type):
    def __init__(cls, name, bases, ns):
        super().__init__(name, bases, ns)
        cls._backward_cls = type(name + "Backward", (FunctionNode,), {"__slots__": ()})


class Function(metaclass=_FunctionMeta):
    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("You must implement the forward function for custom "
                                  "autograd.Function.")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("You must implement either the backward or vjp method for your "
                                  "custom autograd.Function to use it with backward mode AD.")

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = FunctionCtx()
        tensor_args = [a for a in args if isinstance(a, Tensor)]
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a._requires_grad for a in args)
        tracer = registry._tracer[0]
        if tracer is not None and (any(t._ir is not None for t in tensor_args) or
                                   tracer.__self__.captures_any(tensor_args)):
            return _apply_traced(cls, ctx, args, kwargs)
        with grad_mode.no_grad():
            out = cls.forward(ctx, *args, **kwargs)
        outs = out if isinstance(out, tuple) else (out,)
        if grad_mode.is_grad_enabled() and any(t._requires_grad for t in tensor_args):
            node = cls._backward_cls(tuple(engine.edge_of(a) if isinstance(a, Tensor)
                                           else (None, 0) for a in args))
            node.fn_cls, node.fn_ctx = cls, ctx
            node._num_outputs = len(outs)
            node._out_shapes = tuple((tuple(o.shape), o.dtype) if isinstance(o, Tensor)
                                     else ((), None) for o in outs)
            wrapped = []
            for i, o in enumerate(outs):
                if isinstance(o, Tensor):
                    if any(o is a for a in args):
                        o = o.view_as(o)  # returning an input: a new tensor in the graph
                        o.grad_fn = None
                    if id(o) not in ctx.non_differentiable and o.dtype.is_floating_point:
                        o._requires_grad, o.grad_fn, o._output_nr = True, node, i
                wrapped.append(o)
            outs = tuple(wrapped)
        return outs if isinstance(out, tuple) else outs[0]
