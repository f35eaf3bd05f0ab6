"""``baddbmm`` and ``addbmm``: batched products added to an input, one registry op each
(torch's BaddbmmBackward0 / AddbmmBackward0); addbmm compiles as one addmm, and both, forward
and backward, with bmm where they need batched products."""
import numpy as np

from .._meta import Meta
from . import common
from .linalg import addmm_op, bmm, bmm_t
from .reduce import sum_to_shape
from .registry import apply

register = common.register_quiet


def _check(b1, b2):
    if len(b1.shape) != 3:
        raise RuntimeError("batch1 must be a 3D tensor")
    if len(b2.shape) != 3:
        raise RuntimeError("batch2 must be a 3D tensor")
    if b1.dtype is not b2.dtype:
        raise RuntimeError("expected mat1 and mat2 to have the same dtype")


def _baddbmm_meta(c, b1, b2, beta=1, alpha=1):
    _check(b1, b2)
    if b1.shape[0] != b2.shape[0] or b1.shape[2] != b2.shape[1]:
        raise RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: "
                           f"[{b1.shape[0]}, {b1.shape[2]}] but got: [{b2.shape[0]}, "
                           f"{b2.shape[1]}].")
    shape = (b1.shape[0], b1.shape[1], b2.shape[2])
    if tuple(common.broadcast_shapes(tuple(c.shape), shape)) != shape:
        raise RuntimeError(f"The expanded size of the tensor ({shape[-1]}) must match the "
                           f"existing size ({c.shape[-1]}) at non-singleton dimension 2.  "
                           f"Target sizes: {list(shape)}.  Tensor sizes: {list(c.shape)}")
    return Meta(shape, b1.dtype)


def _combine(c, prod, beta, alpha):
    # beta == 0 ignores the input (its nan and inf too), as torch does
    out = alpha * prod if alpha != 1 else prod
    return out if beta == 0 else out + (beta * c if beta != 1 else c)


def _baddbmm_backward(ctx, g):
    c, b1, b2 = ctx.inputs
    beta, alpha = ctx.attrs.get("beta", 1), ctx.attrs.get("alpha", 1)
    gc = sum_to_shape(g * beta, tuple(ctx.metas[0].shape)) if ctx.needs_input_grad[0] else None
    ga = bmm_t(g, b2, trans_b=True) * alpha if ctx.needs_input_grad[1] else None
    gb = bmm_t(b1, g, trans_a=True) * alpha if ctx.needs_input_grad[2] else None
    return gc, ga, gb


baddbmm_op = register(
    "baddbmm", infer=_baddbmm_meta,
    eager=lambda c, b1, b2, beta=1, alpha=1: _combine(c, np.matmul(b1, b2), beta, alpha)
    .astype(b1.dtype),
    saves=(0, 1, 2), backward=_baddbmm_backward, grad_fn="BaddbmmBackward0",
    decomposition=lambda c, b1, b2, beta=1, alpha=1: _combine(c, bmm(b1, b2), beta, alpha))



def _addbmm_meta(c, b1, b2, beta=1, alpha=1):
    _check(b1, b2)
    if b1.shape[0] != b2.shape[0]:
        raise RuntimeError(f"batch1 and batch2 must have same number of batches, got "
                           f"{b1.shape[0]} and {b2.shape[0]}")
    if b1.shape[2] != b2.shape[1]:
        raise RuntimeError(f"Incompatible matrix sizes for bmm ({b1.shape[1]}x{b1.shape[2]} and "
                           f"{b2.shape[1]}x{b2.shape[2]})")
    shape = (b1.shape[1], b2.shape[2])
    if tuple(common.broadcast_shapes(tuple(c.shape), shape)) != shape:
        raise RuntimeError(f"The expanded size of the tensor ({shape[-1]}) must match the "
                           f"existing size ({c.shape[-1]}) at non-singleton dimension 1.  "
                           f"Target sizes: {list(shape)}.  Tensor sizes: {list(c.shape)}")
    return Meta(shape, b1.dtype)


def _addbmm_backward(ctx, g):
    c, b1, b2 = ctx.inputs
    beta, alpha = ctx.attrs.get("beta", 1), ctx.attrs.get("alpha", 1)
    gc = sum_to_shape(g * beta, tuple(ctx.metas[0].shape)) if ctx.needs_input_grad[0] else None
    gb = g.unsqueeze(0).expand((b1.shape[0],) + tuple(g.shape))
    ga = bmm_t(gb, b2, trans_b=True) * alpha if ctx.needs_input_grad[1] else None
    gbb = bmm_t(b1, gb, trans_a=True) * alpha if ctx.needs_input_grad[2] else None
    return gc, ga, gbb


def _addbmm_decomposition(c, b1, b2, beta=1, alpha=1):
    # sum_b b1[b] @ b2[b] is one product over the joint (b, k) index
    nb, n, k = b1.shape
    a2 = b1.permute(1, 0, 2).reshape(n, nb * k)
    m2 = b2.reshape(nb * k, b2.shape[2])
    full = c.expand((n, b2.shape[2]))
    attrs = {k_: v for k_, v in (("beta", beta), ("alpha", alpha)) if v != 1}
    return apply(addmm_op, full, a2, m2, **attrs)


addbmm_op = register(
    "addbmm", infer=_addbmm_meta,
    eager=lambda c, b1, b2, beta=1, alpha=1: _combine(c, np.matmul(b1, b2).sum(0), beta, alpha)
    .astype(b1.dtype),
    saves=(0, 1, 2), backward=_addbmm_backward, grad_fn="AddbmmBackward0",
    decomposition=_addbmm_decomposition)


def _attrs(beta, alpha):
    return {k: v for k, v in (("beta", beta), ("alpha", alpha)) if v != 1}


def baddbmm(input, batch1, batch2, *, beta=1, alpha=1, out=None):
    return apply(baddbmm_op, input, batch1, batch2, **_attrs(beta, alpha))


def addbmm(input, batch1, batch2, *, beta=1, alpha=1, out=None):
    return apply(addbmm_op, input, batch1, batch2, **_attrs(beta, alpha))
