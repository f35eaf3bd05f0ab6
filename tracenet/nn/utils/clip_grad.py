"""Gradient clipping: ``clip_grad_norm_``, ``clip_grad_value_``, ``get_total_norm`` and
``clip_grads_with_norm_``. Gradients are scaled in place (their version counters advance)."""
import math
import types
import warnings

import numpy as np

from ... import _dtype
from ..._trace_errors import TraceError
from ...ops.shape import stack
from ...tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_norm", "clip_grad_value_", "get_total_norm",
           "clip_grads_with_norm_"]


def _as_list(tensors):
    if isinstance(tensors, Tensor):
        return [tensors]
    return list(tensors)


def _vector_norm(arr, ord):
    """``torch.linalg.vector_norm`` of a flat float64 array."""
    a = np.abs(arr.reshape(-1))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _vector_norm_abs(a, ord)


def _vector_norm_abs(a, ord):
    if ord == math.inf:
        return float(a.max()) if a.size else 0.0
    if ord == -math.inf:
        return float(a.min()) if a.size else math.inf
    if ord == 0:
        return float(np.count_nonzero(a))
    if ord == 1:
        return float(a.sum())
    if ord == 2:
        return float(math.sqrt(np.dot(a, a)))
    return float(np.sum(a ** ord) ** (1.0 / ord))


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """The ``norm_type`` norm of all ``tensors`` taken together (as if concatenated), as a
    0-dim tensor."""
    tensors = [t for t in _as_list(tensors) if t is not None]
    norm_type = float(norm_type)
    if not tensors:
        return Tensor._wrap(np.array(0.0, dtype=_dtype.get_default_dtype().np))
    result_dtype = tensors[0].dtype
    for t in tensors[1:]:
        result_dtype = _dtype.promote_types(result_dtype, t.dtype)
    if any(t._ir is not None for t in tensors):  # traced (a compiled step function)
        if error_if_nonfinite:
            raise TraceError("clip_grad_norm_(error_if_nonfinite=True) needs the norm's value: "
                             "it cannot be compiled")
        return _traced_total_norm(tensors, norm_type).to(result_dtype)
    norms = np.array([_vector_norm(t._concrete("clip_grad_norm_").astype(np.float64), norm_type)
                      for t in tensors])
    total = _vector_norm(norms, norm_type)
    if error_if_nonfinite and (math.isnan(total) or math.isinf(total)):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, "
            "so it cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`")
    return Tensor._wrap(np.array(total, dtype=result_dtype.np))


def _traced_total_norm(tensors, ord):
    """``get_total_norm`` with tensor ops (in float64, as the numpy path computes it)."""
    norms = [t.to(_dtype.float64).abs() for t in tensors]
    if ord == math.inf:
        return stack([a.amax() for a in norms]).amax()
    if ord == -math.inf:
        return stack([a.amin() for a in norms]).amin()
    if ord == 0:
        return stack([(a != 0).to(_dtype.float64).sum() for a in norms]).sum()
    if ord == 1:
        return stack([a.sum() for a in norms]).sum()
    if ord == 2:
        return stack([(a * a).sum() for a in norms]).sum().sqrt()
    return stack([(a ** ord).sum() for a in norms]).sum() ** (1.0 / ord)


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None):
    """Scale the gradients of ``parameters`` by ``min(1, max_norm / (total_norm + 1e-6))``."""
    parameters = _as_list(parameters)
    grads = [p._grad for p in parameters if p._grad is not None]
    if not grads:
        return
    max_norm = float(max_norm)
    if isinstance(total_norm, Tensor) and total_norm._ir is not None:  # traced
        coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(g.dtype))
        return
    if isinstance(total_norm, Tensor):
        total = total_norm._concrete("clip_grads_with_norm_")
    else:
        total = np.asarray(total_norm, dtype=_dtype.get_default_dtype().np)
    dt = total.dtype.type
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        coef = np.minimum(dt(max_norm) / (total + dt(1e-6)), dt(1.0))
    for g in grads:
        data = g._concrete("clip_grads_with_norm_")
        with np.errstate(invalid="ignore", over="ignore"):
            data *= coef.astype(data.dtype)
        g._vc.value += 1


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False,
                    foreach=None):
    """Clip the gradient norm of ``parameters`` (taken together) to at most ``max_norm``.

    Returns the total norm before clipping as a 0-dim tensor. ``norm_type`` may be
    ``float('inf')``.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and not parameters:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.",
                          stacklevel=2)
    grads = [p._grad for p in parameters if p._grad is not None]
    total_norm = get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    clip_grads_with_norm_(parameters, max_norm, total_norm, foreach)
    return total_norm


def clip_grad_norm(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Deprecated alias of :func:`clip_grad_norm_`."""
    warnings.warn("`torch.nn.utils.clip_grad_norm` is now deprecated in favor of "
                  "`torch.nn.utils.clip_grad_norm_`.", FutureWarning, stacklevel=2)
    return clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient of ``parameters`` to ``[-clip_value, clip_value]`` in place."""
    parameters = _as_list(parameters)
    clip_value = float(clip_value)
    for p in parameters:
        g = p._grad
        if g is None:
            continue
        if g._ir is not None:  # traced (a compiled step function)
            g.clamp_(-clip_value, clip_value)
            continue
        data = g._concrete("clip_grad_value_")
        np.clip(data, -clip_value, clip_value, out=data)
        g._vc.value += 1
