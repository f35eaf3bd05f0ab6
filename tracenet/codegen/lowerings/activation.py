"""C lowerings of the dropout mask (``templates/activation_dropout_mask.c.j2``: the same
counter-based generator as the numpy implementation, so a seed gives the same mask in both) and
of embedding lookup, which checks its indices as eager mode does, and its gradient
(``templates/activation_embedding*.c.j2``)."""
from ...ops import activation as act
from ...ops.common import INDEX_OUT_OF_RANGE, numel
from ...ops.cexpr import scalar
from ..base import Kernel, ctype, lowering, node_lines, signature
from ..templates import render

@lowering("dropout_mask")
def lower_dropout_mask(name, node, exported, target):
    seed, out = node.inputs[0], node.outputs[0]
    ct = ctype(out)
    p = node.attrs["p"]
    reads, writes = [("seed", seed)], [("out", out)]
    src = render("activation_dropout_mask.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), ctype=ct, numel=numel(out.shape), p=p,
                 bits=act.UNIT_BITS, threshold=act.drop_threshold(p),
                 scale=scalar(act.mask_scale(p), ct), golden=hex(act.GOLDEN),
                 mix1=hex(act.MIX1), mix2=hex(act.MIX2))
    return Kernel(name, reads, writes, src)


@lowering("embedding")
def lower_embedding(name, node, exported, target):
    weight, idx = node.inputs
    out = node.outputs[0]
    reads, writes = [("weight", weight), ("idx", idx)], [("out", out)]
    checks = [(IndexError, INDEX_OUT_OF_RANGE)]
    src = render("activation_embedding.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes, checks=True), ctype=ctype(out),
                 count=numel(idx.shape), D=weight.shape[1], num_weights=weight.shape[0])
    return Kernel(name, reads, writes, src, checks=checks)


@lowering("embedding_backward")
def lower_embedding_backward(name, node, exported, target):
    g, idx = node.inputs
    out = node.outputs[0]
    scale = node.attrs["scale_grad_by_freq"]
    num_weights = node.attrs["num_weights"]
    scratch = num_weights if scale else 0
    reads, writes = [("g", g), ("idx", idx)], [("out", out)]
    src = render("activation_embedding_backward.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes, scratch, "int64_t"), ctype=ctype(out),
                 count=numel(idx.shape), D=out.shape[1], num_weights=num_weights,
                 padding_idx=node.attrs["padding_idx"], scale=scale)
    return Kernel(name, reads, writes, src, scratch, "int64_t")
