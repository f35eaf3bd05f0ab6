"""``tracenet.autograd``: backward, grad, grad mode, Function and the legacy Variable."""
import numpy as np

from .. import _dtype
from ..ops.creation import ones_like, zeros_like
from ..tensor import Tensor
from .function import Function, FunctionCtx
from .grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from . import engine


def _make_grads(tensors, grad_tensors):
    grads = []
    for t, g in zip(tensors, grad_tensors):
        if g is None and t._ir is None and t._data.size == 1 and t._data.dtype.kind == "f":
            # the implicit gradient 1 of a concrete scalar (a plain array: no op dispatch)
            grads.append(Tensor._wrap(np.ones(t._data.shape, t._data.dtype)))
            continue
        if g is None:
            if t.numel() != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            if not t.dtype.is_floating_point:
                raise RuntimeError(f"grad can be implicitly created only for real scalar outputs "
                                   f"but got {t.dtype}")
            # the implicit gradient 1 (a plain array for a concrete output: no op dispatch)
            g = ones_like(t) if t._ir is not None else Tensor._wrap(np.ones((), t._data.dtype)
                                                                     .reshape(t._data.shape))
        elif not isinstance(g, Tensor):
            raise TypeError("gradients can be either Tensors or None, but got "
                            f"{type(g).__name__}")
        elif tuple(g.shape) != tuple(t.shape):
            raise RuntimeError(f"Mismatch in shape: grad_output[0] has a shape of {g.shape} and "
                               f"output[0] has a shape of {t.shape}.")
        grads.append(g)
    return grads


def _as_list(x):
    if x is None:
        return None
    return [x] if isinstance(x, Tensor) else list(x)


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, inputs=None):
    tensors = _as_list(tensors)
    grads = _make_grads(tensors, _as_list(grad_tensors) or [None] * len(tensors))
    if retain_graph is None:
        retain_graph = create_graph
    if inputs is not None:
        # accumulate only into the given tensors
        got = engine.run_backward(tensors, grads, retain_graph, create_graph,
                                  inputs=_as_list(inputs))
        for t, g in zip(_as_list(inputs), got):
            if g is not None:
                engine._accumulate_into_leaf(t, g, create_graph)
        return
    engine.run_backward(tensors, grads, retain_graph, create_graph)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         only_inputs=True, allow_unused=None, is_grads_batched=False, materialize_grads=False):
    outputs = _as_list(outputs)
    inputs_list = _as_list(inputs)
    grads = _make_grads(outputs, _as_list(grad_outputs) or [None] * len(outputs))
    if retain_graph is None:
        retain_graph = create_graph
    result = engine.run_backward(outputs, grads, retain_graph, create_graph, inputs=inputs_list,
                                 allow_unused=bool(allow_unused) or materialize_grads)
    if materialize_grads:
        result = tuple(zeros_like(t) if g is None else g for t, g in zip(inputs_list, result))
    return result


def Variable(data, requires_grad=False, volatile=False):
    """Legacy wrapper: returns the tensor itself (optionally marked as requiring grad)."""
    if requires_grad:
        data.requires_grad_(True)
    return data


def _tensor_backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    data = self._data
    if gradient is None and inputs is None and self._ir is None and data.size == 1 and \
            data.dtype.kind == "f":
        # a loss: its implicit gradient 1, without backward()'s argument handling
        # (np.array makes a 0-d one in C; np.ones runs Python)
        grad = Tensor._wrap(np.array(1, data.dtype) if data.ndim == 0 else
                            np.ones(data.shape, data.dtype))
        engine.run_backward([self], [grad], create_graph if retain_graph is None
                            else retain_graph, create_graph)
        return
    backward(self, gradient, retain_graph, create_graph, inputs=inputs)


Tensor.backward = _tensor_backward  # Tensor sits below autograd, which installs this method

__all__ = ["backward", "grad", "Function", "Variable", "no_grad", "enable_grad",
           "set_grad_enabled", "is_grad_enabled", "inference_mode"]
