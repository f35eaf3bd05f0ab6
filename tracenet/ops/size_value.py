"""``size_value``: a symbolic size used as a number (``loss / x.size(0)`` with a symbolic batch
size): a 0-dim tensor whose value the compiled code computes from the size symbols."""
import numpy as np

from .._meta import Meta
from .._sym import Sym, SymFloat
from ..tensor import Tensor
from . import registry
from .registry import register

size_value_op = register(
    "size_value", infer=lambda value, dtype: Meta((), dtype),
    eager=lambda value, dtype: np.array(value, dtype.np), differentiable=False)


def require_size(value, forbidden, exc, message, shape):
    """While tracing with symbolic sizes: the compiled code must raise ``exc(message)`` (its
    ``{size}`` the ``torch.Size`` of ``shape`` for the call) when ``value`` is ``forbidden``
    (batch norm in training refuses one value per channel). The check runs before each call
    (``Graph.size_checks``)."""
    tracer = registry._tracer[0]
    if tracer is None:
        raise RuntimeError(f"the symbolic size {value.display()} exists only while tracing")
    tracer.__self__.graph.size_checks.append((value, forbidden, exc, message, tuple(shape)))


def size_tensor(value, dtype):
    """``value`` (a number, or a ``Sym``/``SymFloat`` while tracing) as a 0-dim tensor of
    ``dtype``."""
    if isinstance(value, (Sym, SymFloat)):
        tracer = registry._tracer[0]
        if tracer is None:
            raise RuntimeError(f"the symbolic size {value.display()} exists only while tracing")
        return tracer(size_value_op, (), {"value": value, "dtype": dtype})
    return Tensor._wrap(np.array(value, dtype.np))

