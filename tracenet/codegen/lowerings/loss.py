"""C lowerings of the pointwise losses with a node of their own: binary cross entropy (on
probabilities and on logits), smooth L1 and Huber. Each is one loop over the elements that
computes the loss in double precision and writes it, or accumulates its sum / mean; all render
``templates/loss_pointwise.c.j2``. Their backward rules are elementwise tracenet ops, lowered by
the elementwise kernels. (mse_loss, nll_loss and nll_loss_backward are lowered in kernels.py.)
"""
from ...ops.common import numel
from ...ops.loss import BCE_LOG_MIN
from ..kernels import Kernel, _broadcast_index, _fmt_float, ctype, lowering, node_lines, \
    signature
from ..templates import render


@lowering("binary_cross_entropy", "binary_cross_entropy_with_logits", "smooth_l1_loss",
          "huber_loss")
def lower_pointwise_loss(name, node, exported):
    x, t = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    shape = tuple(x.shape)
    reads = [("x", x), ("t", t)]
    weight_index = pos_weight_index = None
    extra = list(node.inputs[2:])
    attrs = node.attrs
    if node.op == "binary_cross_entropy" and extra:
        reads.append(("w", extra[0]))
        weight_index = _broadcast_index(extra[0].shape, shape)
    elif node.op == "binary_cross_entropy_with_logits":
        if attrs["weighted"]:
            w = extra.pop(0)
            reads.append(("w", w))
            weight_index = _broadcast_index(w.shape, shape)
        if attrs["pos_weighted"]:
            pw = extra.pop(0)
            reads.append(("pw", pw))
            pos_weight_index = _broadcast_index(pw.shape, shape)
    writes = [("out", out)]
    src = render("loss_pointwise.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), ctype=ctype(out), kind=node.op,
                 numel=numel(shape), reduction=attrs["reduction"],
                 log_min=_fmt_float(BCE_LOG_MIN, "double"),
                 beta=_fmt_float(attrs.get("beta", 1.0), "double"),
                 delta=_fmt_float(attrs.get("delta", 1.0), "double"),
                 weight_index=weight_index, pos_weight_index=pos_weight_index)
    return Kernel(name, reads, writes, src)
