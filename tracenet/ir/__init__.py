"""The IR: ``Graph``/``Node``/``Value``, text and dot printing, the verifier, the numpy
interpreter, and ``grad`` (autodiff on the IR)."""
from .graph import Graph, Node, Value
from .interpret import interpret
from .verify import VerificationError, verify


def grad(graph):
    # passes sit above the IR (autodiff imports the tracer, which imports ir.graph)
    from ..passes.autodiff import grad as _grad
    return _grad(graph)


__all__ = ["Graph", "Node", "Value", "interpret", "verify", "VerificationError", "grad"]
