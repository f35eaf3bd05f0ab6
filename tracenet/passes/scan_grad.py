"""The backward of a ``scan`` node: a scan running the other way over the saved per-step values.

The backward body is derived from the forward body by the ordinary autodiff pass (``grad``,
handed in by ``autodiff``, which calls this): one step's vector-Jacobian product. What that
step reads of the forward step becomes per-step data:

* values the forward body computes (a gate's sigmoid, the carry it read) are added to the
  forward body's outputs, so the forward scan stacks them along time (its trailing outputs,
  ``attrs["n_saved"]`` of them: JAX's partial evaluation of a scan does the same);
* a step's slice of a scanned input is read from that input; constant operands as they are.

The backward scan's carries are the cotangents of the forward carries, then the gradient sums
of the constant operands that need one (started from ``zeros``); its scanned inputs are the
cotangents of the stacked outputs, the stacked saved values and the scanned inputs it reads;
its stacked outputs are the gradients of the scanned inputs. A constant's gradient that is a
sum over the rows of per-step values (a weight read by a matrix product: ``P^T Q``; a bias:
column sums) is not summed step by step: the loop stacks those values and one product or
reduction over all steps follows it (what cuDNN does for a recurrent layer's weights).
"""
import copy

from .._meta import Meta
from ..ops import scan as scan_ops
from ..ops.registry import apply
from ..ir.graph import Graph
from ..trace import Tracer, traced_tensor, tracing


def scan_backward(forward, node, grads, tracer, grad, fwd_values):
    """Gradients (traced tensors or None) of ``node``'s inputs given the cotangents ``grads``
    of its outputs (None: zero). Records into ``tracer``'s graph; may add saved outputs to
    ``node`` (new values of ``forward``, added to ``fwd_values``)."""
    body = node.attrs["body"]
    nc, nx = node.attrs["n_carry"], node.attrs["n_xs"]
    n_saved = node.attrs.get("n_saved", 0)
    n_user = len(body.outputs) - n_saved
    n_in = len(body.inputs)
    step = copy.copy(body)  # one forward step without the saved outputs
    step.outputs = body.outputs[:n_user]
    wrt = [v for v in body.inputs if v.requires_grad]
    bb = grad(step, wrt)

    # where the backward step finds each forward value it reads
    stacked = {}  # body value -> index of the forward body output that stacks it
    for j in range(nc, len(body.outputs)):
        stacked.setdefault(body.outputs[j], j)
    sources = []
    for s in bb.saved:
        k = body.inputs.index(s) if s in body.inputs else None
        if k is not None and nc <= k < nc + nx:
            sources.append(("x", k))
        elif k is not None and k >= nc + nx:
            sources.append(("const", k))
        else:
            if s not in stacked:
                body.outputs.append(s)
                stacked[s] = len(body.outputs) - 1
                node.attrs["n_saved"] = node.attrs.get("n_saved", 0) + 1
                length = node.inputs[nc].shape[0]
                out = forward.new_value((length,) + s.shape, s.dtype, node)
                node.outputs.append(out)
                fwd_values.add(out)
            sources.append(("saved", stacked[s]))

    # the backward step's graph: inputs (carries, scanned, constants) in the order of the node
    bbody = Graph("body")
    carry_float = [i for i in range(nc) if body.inputs[i].dtype.is_floating_point]
    d_carry = {i: bbody.add_input(f"grad_carry{i}", body.inputs[i].shape, body.inputs[i].dtype)
               for i in carry_float}
    y_cots = [j for j in range(nc, n_user) if grads[j] is not None and
              body.outputs[j].requires_grad]
    gy = {j: bbody.add_input(f"grad_y{j - nc}", body.outputs[j].shape, body.outputs[j].dtype)
          for j in y_cots}
    saved_js = sorted({j for kind, j in sources if kind == "saved"})
    saved = {j: bbody.add_input(f"saved{j - nc}", body.outputs[j].shape, body.outputs[j].dtype)
             for j in saved_js}
    xs_ks = sorted({k for kind, k in sources if kind == "x"})
    xs_ks += [k for k in range(nc, nc + nx) if not (xs_ks or y_cots or saved_js)][:1]
    xs_in = {k: bbody.add_input(f"x{k - nc}", body.inputs[k].shape, body.inputs[k].dtype)
             for k in xs_ks}
    const_ks = sorted({k for kind, k in sources if kind == "const"})
    const_in = {k: bbody.add_input(body.inputs[k].ref[1:], body.inputs[k].shape,
                                   body.inputs[k].dtype) for k in const_ks}
    scanned_in = list(gy.values()) + list(saved.values()) + list(xs_in.values())

    def zeros(v):
        return _zeros(bbody, v)

    cot_values = []
    for j, v in enumerate(step.outputs):
        if not v.requires_grad:
            continue
        if j < nc:
            cot_values.append(d_carry[j])
        else:
            cot_values.append(gy[j] if j in gy else zeros(v))
    saved_values = []
    for kind, k in sources:
        saved_values.append(saved[k] if kind == "saved" else
                            xs_in[k] if kind == "x" else const_in[k])
    got = dict(zip(wrt, bbody.inline(bb, cot_values + saved_values)))

    # outputs: carries' cotangents, the gradient sums kept in the loop, scanned inputs'
    # gradients, then the per-step values the sums moved out of the loop read
    outs = [got[body.inputs[i]] if body.inputs[i] in got else zeros(body.inputs[i])
            for i in carry_float]
    d_xs = [k for k in range(nc, nc + nx) if body.inputs[k] in got]
    stacked_outs = [got[body.inputs[k]] for k in d_xs]
    summed = [k for k in range(nc + nx, n_in) if body.inputs[k] in got]
    hoisted = {}  # constant index -> (kind, per-step operands as sources, transposed)
    acc = {}
    for k in summed:
        found = _sum_over_rows(got[body.inputs[k]])
        sources_of = [_per_step_source(v, scanned_in, stacked_outs) for v in found[1]] \
            if found else None
        if sources_of and None not in sources_of:
            hoisted[k] = (found[0], sources_of, found[2])
        else:
            v = body.inputs[k]
            acc[k] = bbody.add_input(f"grad_{v.ref[1:]}", v.shape, v.dtype)
    with tracing(Tracer(bbody)):
        for k in acc:
            total = traced_tensor(acc[k]) + traced_tensor(got[body.inputs[k]])
            outs.append(total._ir)
    bbody.inputs = list(d_carry.values()) + list(acc.values()) + scanned_in + \
        list(const_in.values())
    bbody.outputs = outs + stacked_outs
    bbody.renumber()

    # the backward loop, recorded into the backward graph
    carries = [grads[i] if grads[i] is not None else
               traced_tensor(_zeros(tracer.graph, node.outputs[i])) for i in carry_float]
    carries += [traced_tensor(_zeros(tracer.graph, body.inputs[k])) for k in acc]
    xs = [grads[j] for j in y_cots] + [traced_tensor(node.outputs[j]) for j in saved_js]
    xs += [traced_tensor(node.inputs[k]) for k in xs_ks]
    consts = [traced_tensor(node.inputs[k]) for k in const_ks]
    res = apply(scan_ops.scan_op, *carries, *xs, *consts, body=bbody,
                n_carry=len(carries), n_xs=len(xs), reverse=not node.attrs.get("reverse"))
    result = [None] * len(node.inputs)
    for n, i in enumerate(carry_float):
        result[i] = res[n]
    for n, k in enumerate(acc):
        result[k] = res[len(carry_float) + n]
    for n, k in enumerate(d_xs):
        result[k] = res[len(carries) + n]

    def stacked(source):  # a per-step value over all steps, steps and rows merged
        kind, i = source
        t = xs[i] if kind == "in" else res[len(carries) + i]
        return t.reshape(-1, t.shape[-1])

    for k, (kind, operands, transposed) in hoisted.items():
        if kind == "sum":
            # written as a linear layer's bias gradient is, so that CSE merges the two when
            # the loop's bias and the hoisted input projection's read the same values
            total = stacked(operands[0]).sum(0, keepdim=True)
            result[k] = total.reshape(total.shape[-1])
        else:  # P^T Q summed over steps is the product of the stacked P and Q
            p, q = map(stacked, operands)
            g = p.t() @ q
            result[k] = g.t() if transposed else g
    return result


def _zeros(graph, like):
    """A ``zeros`` node in ``graph`` shaped like the value ``like`` (sizes may be symbolic)."""
    return graph.add_node("zeros", [], {"shape": like.shape, "dtype": like.dtype},
                          [Meta(like.shape, like.dtype)]).output


def _is_transpose(node):
    return node is not None and node.op == "permute" and tuple(node.attrs["dims"]) == (1, 0)


def _sum_over_rows(v):
    """How one step's gradient ``v`` of a constant sums over the rows (the batch) of per-step
    values: ``("sum", [X], False)`` for the column sums of X (a bias), ``("mm", [P, Q],
    transposed)`` for ``P^T Q`` (or its transpose: a weight read by a matrix product); None
    otherwise. Summed over the steps too, these are one reduction or one product over the
    stacked values, outside the loop, instead of a product and an addition per step."""
    node = v.producer
    if node is not None and node.op == "view":
        x = node.inputs[0]
        if x.producer is not None and x.producer.op == "sum" and len(x.shape) == 2 and \
                x.shape[0] == 1 and tuple(v.shape) == (x.shape[1],):
            node = x.producer
    if node is not None and node.op == "sum":
        x = node.inputs[0]
        if len(x.shape) == 2 and tuple(node.attrs["dims"]) == (0,) and \
                tuple(v.shape) == (x.shape[1],):
            return ("sum", [x], False)
        return None
    transposed = _is_transpose(node)
    if transposed:
        node = node.inputs[0].producer
    if node is None or node.op != "mm" or not _is_transpose(node.inputs[0].producer):
        return None
    p, q = node.inputs[0].producer.inputs[0], node.inputs[1]
    if len(p.shape) != 2 or len(q.shape) != 2:
        return None
    return ("mm", [p, q], transposed)


def _per_step_source(v, scanned_in, stacked_outs):
    """Where the backward loop has ``v`` for every step: ``("in", i)``, its i-th scanned
    input, or ``("out", j)``, its j-th stacked output (added if need be); None for values
    that are not per-step data (carries, constants)."""
    if v in scanned_in:
        return ("in", scanned_in.index(v))
    if v.producer is None or v.producer.op == "constant":
        return None
    if v not in stacked_outs:
        stacked_outs.append(v)
    return ("out", stacked_outs.index(v))
