"""C lowerings of the pointwise losses with a node of their own: binary cross entropy (on
probabilities and on logits), smooth L1 and Huber. Each is one loop over the elements that
computes the loss in double precision and writes it, or accumulates its sum / mean; all render
``templates/loss_pointwise.c.j2``. Their backward rules are elementwise tracenet ops, lowered by
the elementwise kernels. Then the mean squared error and the negative log-likelihood, forward
and backward (cross entropy is log_softmax followed by nll_loss), and the two with their
backward fused over ``[N, C]`` logits (``cross_entropy``).
"""
from ..._sym import same_shape
from ...ops.common import numel
from ...ops.loss import BCE_LOG_MIN
from ...ops.cexpr import fmt_float
from ..base import Kernel, LoweringError, ctype, group_lowering, lowering, members, node_lines, \
    signature, where
from ..templates import render
from .elementwise import broadcast_index
from .reduce import _EXP_FLOPS


@lowering("binary_cross_entropy", "binary_cross_entropy_with_logits", "smooth_l1_loss",
          "huber_loss")
def lower_pointwise_loss(name, node, exported, target):
    x, t = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    shape = tuple(x.shape)
    reads = [("x", x), ("t", t)]
    weight_index = pos_weight_index = None
    extra = list(node.inputs[2:])
    attrs = node.attrs
    if node.op == "binary_cross_entropy" and extra:
        reads.append(("w", extra[0]))
        weight_index = broadcast_index(extra[0].shape, shape)
    elif node.op == "binary_cross_entropy_with_logits":
        if attrs["weighted"]:
            w = extra.pop(0)
            reads.append(("w", w))
            weight_index = broadcast_index(w.shape, shape)
        if attrs["pos_weighted"]:
            pw = extra.pop(0)
            reads.append(("pw", pw))
            pos_weight_index = broadcast_index(pw.shape, shape)
    writes = [("out", out)]
    checks = [(RuntimeError, f"all elements of {which} should be between 0 and 1")
              for which in ("input", "target")] if node.op == "binary_cross_entropy" else []
    src = render("loss_pointwise.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes, checks=bool(checks)), ctype=ctype(out),
                 kind=node.op,
                 numel=numel(shape), reduction=attrs["reduction"],
                 log_min=fmt_float(BCE_LOG_MIN, "double"),
                 beta=fmt_float(attrs.get("beta", 1.0), "double"),
                 delta=fmt_float(attrs.get("delta", 1.0), "double"),
                 weight_index=weight_index, pos_weight_index=pos_weight_index)
    return Kernel(name, reads, writes, src, checks=checks)


def _nll_layout(x_shape):
    if len(x_shape) == 1:
        return 1, x_shape[0], 1
    return x_shape[0], x_shape[1], numel(x_shape[2:])


# eager's message for a class target out of range: the nll_loss kernels' first check
_TARGET_CHECK = (IndexError, "Target {0} is out of bounds.")


@lowering("nll_loss", "nll_loss_backward")
def lower_nll_loss(name, node, exported, target):
    """The loss reads the log-probabilities ``x``; its backward the loss gradient ``g`` and
    writes the gradient of ``x`` (the shape that gives the layout)."""
    backward = node.op == "nll_loss_backward"
    src_v, t = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    reads = [("g" if backward else "x", src_v), ("target", t)]
    if len(node.inputs) > 2:
        reads.append(("weight", node.inputs[2]))
    writes = [("out", out)]
    # the loss checks the targets (eager's message); its backward, which runs after it, only
    # skips bad ones
    checks = [] if backward else [_TARGET_CHECK]
    n, c, d = _nll_layout(tuple(out.shape if backward else src_v.shape))
    src = render(f"{node.op}.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out if backward else src_v), acctype="double",
                 signature=signature(reads, writes, checks=bool(checks)), N=n, C=c, D=d,
                 weighted=len(node.inputs) > 2, reduction=node.attrs["reduction"],
                 ignore_index=int(node.attrs["ignore_index"]))
    return Kernel(name, reads, writes, src, checks=checks)


@lowering("mse_loss")
def lower_mse_loss(name, node, exported, target):
    a, b = node.inputs
    out = node.outputs[0]
    if not same_shape(a.shape, b.shape):
        raise LoweringError(f"mse_loss with broadcasting operands has no C lowering{where(node)}")
    reads, writes = [("a", a), ("b", b)], [("out", out)]
    src = render("mse_loss.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(out),
                 acctype="double", signature=signature(reads, writes), numel=numel(a.shape),
                 reduction=node.attrs["reduction"])
    return Kernel(name, reads, writes, src)


@group_lowering("cross_entropy")
def lower_cross_entropy(name, node, exported, target):
    """log_softmax -> nll_loss and their backward (``passes/fusion.py``,
    ``_cross_entropy_groups``): reads the logits ``x``, the targets, the loss gradient ``g``
    (and the class weights); writes the loss and the logits' gradient. Rows are split between
    threads as log_softmax's are."""
    by_op = {m.op: m for m in members(node)}
    nll, grad = by_op["nll_loss"], by_op["sub"]
    x, t = by_op["log_softmax"].inputs[0], nll.inputs[1]
    reads = [("x", x), ("target", t), ("g", by_op["nll_loss_backward"].inputs[0])]
    if len(nll.inputs) > 2:
        reads.append(("weight", nll.inputs[2]))
    writes = [("loss_out", nll.outputs[0]), ("grad", grad.outputs[0])]
    n, c = x.shape
    parallel = target.parallel.compute(numel(x.shape) * _EXP_FLOPS, n)
    src = render("nll_loss_log_softmax.c.j2", name=name, node_lines=node_lines(members(node)),
                 ctype=ctype(x), acctype="double",
                 signature=signature(reads, writes, checks=True), N=n, C=c,
                 weighted=len(nll.inputs) > 2, reduction=nll.attrs["reduction"],
                 ignore_index=int(nll.attrs["ignore_index"]), parallel=parallel, bias=False)
    return Kernel(name, reads, writes, src, checks=[_TARGET_CHECK], parallel=bool(parallel))
