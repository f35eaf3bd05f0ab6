"""Flatten parameters into one vector and back."""
import numpy as np

from ... import _dtype
from ...ops.shape import cat
from ...tensor import Tensor, replace_array
from ..modules.module import _typename

__all__ = ["parameters_to_vector", "vector_to_parameters"]


def parameters_to_vector(parameters):
    """Concatenate the flattened ``parameters`` into one 1-D tensor (a copy)."""
    params = list(parameters)
    if not params:
        raise ValueError("torch.cat(): expected a non-empty list of Tensors")
    if any(p.requires_grad for p in params) and all(hasattr(p, "reshape") for p in params):
        # the library's own op, so autograd records the concatenation
        return cat([p.reshape(-1) for p in params])
    result_dtype = params[0].dtype
    for p in params[1:]:
        result_dtype = _dtype.promote_types(result_dtype, p.dtype)
    return Tensor._wrap(np.concatenate(
        [p._concrete("parameters_to_vector").reshape(-1).astype(result_dtype.np, copy=False)
         for p in params]))


def vector_to_parameters(vec, parameters):
    """Point each parameter's storage at its slice of ``vec`` (the parameters then share memory
    with ``vec`` and take its dtype)."""
    if not isinstance(vec, Tensor):
        raise TypeError(f"expected torch.Tensor, but got: {_typename(vec)}")
    data = vec._concrete("vector_to_parameters")
    pointer = 0
    for param in parameters:
        shape = tuple(param.shape)
        num = param.numel()
        chunk = data[pointer:pointer + num]
        if chunk.size != num:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {chunk.size}")
        replace_array(param, chunk.reshape(shape))
        param._vc.value += 1
        pointer += num
