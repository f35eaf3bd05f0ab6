"""``tracenet.autograd.Function``: user-defined ops with ``forward``/``backward`` staticmethods.

The backward node is named ``<ClassName>Backward`` like torch's ``BackwardCFunction`` nodes.
"""
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
