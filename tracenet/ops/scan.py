"""``scan``: a loop over one dim as a single IR node whose body is a subgraph.

``scan(carries..., xs..., consts...)`` with attributes ``body`` (a ``Graph``), ``n_carry`` and
``n_xs`` runs the body once per index ``t`` of the leading dim of the ``xs`` (from the last to
the first when ``reverse``). The body reads ``(carries, x_t for each xs, consts)`` and returns
``(new carries, y_t...)``; the node returns the final carries, then each ``y`` stacked along a
new leading dim. The trip count is the length of the xs' leading dim, nothing else.

Only tracing makes scan nodes (eager recurrent layers keep their Python loop); ``scan`` below
is the entry point code calls (step by step when nothing is traced). Its body is traced by ``tracenet.trace``, which installs
itself in ``body_tracer`` (the ops sit below tracing and never import it). The eager
implementation runs the body with ``Graph.run`` (the IR interpreter), for the interpreter and
constant folding.

``zeros`` is a zero-filled buffer (a loop's zero initial state; where a backward loop's
cotangents and gradient sums start): an op with no inputs, so constant folding never turns it
into a large literal in the C source, and its shape may hold symbolic sizes.
"""
import numpy as np

from .._meta import Meta
from . import registry, shape, table_projection
from .registry import register

# set by tracenet.trace: (fn, carries, xs) -> the outputs of the recorded scan node
body_tracer = [None]


def _scan_infer(*metas, body, n_carry, n_xs, reverse=False, n_saved=0):
    if n_xs < 1:
        raise ValueError("scan needs at least one scanned input (the trip count is its length)")
    if len(metas) != len(body.inputs):
        raise ValueError(f"scan body takes {len(body.inputs)} inputs, got {len(metas)}")
    length = metas[n_carry].shape[0] if metas[n_carry].shape else None
    for i, (m, v) in enumerate(zip(metas, body.inputs)):
        scanned = n_carry <= i < n_carry + n_xs
        want = ((length,) + v.shape) if scanned else v.shape
        if tuple(m.shape) != want or m.dtype is not v.dtype:
            raise ValueError(f"scan operand {i} is {m.dtype.short}{list(m.shape)}, its body "
                             f"input is {v.dtype.short}{list(want)}")
    outs = [Meta(v.shape, v.dtype) for v in body.outputs[:n_carry]]
    outs += [Meta((length,) + v.shape, v.dtype) for v in body.outputs[n_carry:]]
    return tuple(outs)


def _scan_eager(*arrays, body, n_carry, n_xs, reverse=False, n_saved=0):
    carries = list(arrays[:n_carry])
    xs = arrays[n_carry:n_carry + n_xs]
    consts = list(arrays[n_carry + n_xs:])
    length = xs[0].shape[0]
    ys = [np.empty((length,) + v.shape, v.dtype.np) for v in body.outputs[n_carry:]]
    for t in (range(length - 1, -1, -1) if reverse else range(length)):
        outs = body.run(*carries, *(x[t] for x in xs), *consts)
        carries = outs[:n_carry]
        for y, o in zip(ys, outs[n_carry:]):
            y[t] = o
    return tuple(carries) + tuple(ys)


def _graph_backward(ctx, *grads):
    raise RuntimeError("a scan node is differentiated on the IR as a whole "
                       "(tracenet.passes.scan_grad derives its backward body from its body)")


# as many outputs as the body has (``num_outputs`` != 1: results are tuples)
scan_op = register("scan", infer=_scan_infer, eager=_scan_eager, num_outputs=2,
                   backward=_graph_backward,
                   doc="a loop over the leading dim of its scanned inputs; see tracenet.ops.scan")


def _zeros_infer(*, shape, dtype):
    return Meta(tuple(shape), dtype)


zeros_op = register("zeros", infer=_zeros_infer,
                    eager=lambda *, shape, dtype: np.zeros(shape, dtype.np), differentiable=False,
                    doc="a zero-filled buffer (the start of a gradient sum)")


def zeros(shape, dtype):
    """A zero-filled tensor; while tracing, a ``zeros`` node (its shape may hold symbolic
    sizes, and constant folding leaves it alone)."""
    tracer = registry._tracer[0]
    if tracer is None:
        return registry._eager[0](zeros_op, (), {"shape": tuple(shape), "dtype": dtype})
    return tracer(zeros_op, (), {"shape": tuple(shape), "dtype": dtype})


def is_traced(*tensors):
    """Whether an op on ``tensors`` would be recorded into a graph (tracing is active and one
    of them is a traced value)."""
    return registry._tracer[0] is not None and any(
        t is not None and t._ir is not None for t in tensors)


def scan(fn, carries, xs, reverse=False):
    """A loop over dim 0 of the tensors ``xs``: ``fn(carries, xs_t) -> (new carries, ys_t)``
    takes and returns tuples of tensors. Returns ``(final carries, ys stacked along dim 0)``.

    While tracing, ``fn`` is traced once into the body of one scan node (traced values it reads
    from outside become the node's constant operands); otherwise it runs step by step. A
    scanned input that projects embedding rows is traced as rows of the projected table
    (``table_projection``)."""
    carries, xs = tuple(carries), tuple(xs)
    if is_traced(*carries, *xs):
        xs = tuple(map(table_projection.projected, xs))
        return body_tracer[0](fn, carries, xs, reverse)
    length = xs[0].shape[0]
    ys = [None] * length
    for t in (range(length - 1, -1, -1) if reverse else range(length)):
        carries, ys[t] = fn(carries, tuple(x[t] for x in xs))
        carries = tuple(carries)
    return carries, tuple(shape.stack([y[k] for y in ys], 0) for k in range(len(ys[0])))
