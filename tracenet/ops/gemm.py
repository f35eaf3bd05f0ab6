"""``gemm``: alpha * op(a) @ op(b) + beta * c, with op() an optional transpose.

Eager code never calls it; ``mm`` and ``addmm`` decompose into it, and the compiler's
``lower_gemm`` pass folds the transposes around it into its flags, so the C code reads the
untransposed buffers directly. It is a registry op like any other, so rewritten graphs still verify, interpret and
differentiate.
"""
import numpy as np

from .._meta import Meta
from . import common
from .reduce import sum_to_shape
from .registry import apply, register


def _dims(m, trans):
    rows, cols = m.shape
    return (cols, rows) if trans else (rows, cols)


def _gemm_meta(a, b, *c, trans_a=False, trans_b=False, alpha=1.0, beta=1.0):
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise RuntimeError("gemm expects 2-D operands")
    m, k = _dims(a, trans_a)
    k2, n = _dims(b, trans_b)
    if k != k2:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({m}x{k} and {k2}x{n})")
    if c and common.broadcast_shapes(tuple(c[0].shape), (m, n)) != (m, n):
        raise RuntimeError(f"gemm: c of shape {list(c[0].shape)} does not broadcast to [{m}, {n}]")
    return Meta((m, n), a.dtype)


def _gemm_eager(a, b, *c, trans_a=False, trans_b=False, alpha=1.0, beta=1.0):
    out = np.matmul(a.T if trans_a else a, b.T if trans_b else b)
    if alpha != 1.0:
        out = out * np.asarray(alpha, out.dtype)
    if c:
        out = out + (c[0] if beta == 1.0 else c[0] * np.asarray(beta, out.dtype))
    return out


def _gemm_backward(ctx, g):
    a, b = ctx.inputs[0], ctx.inputs[1]
    ta, tb = ctx.attrs.get("trans_a", False), ctx.attrs.get("trans_b", False)
    alpha, beta = ctx.attrs.get("alpha", 1.0), ctx.attrs.get("beta", 1.0)
    g_out = g
    if alpha != 1.0:
        g = g * alpha
    ga = gb = gc = None
    if ctx.needs_input_grad[0]:
        # d op(a) = g @ op(b)^T; if a was transposed, d a = op(b) @ g^T
        ga = gemm(b, g, trans_a=tb, trans_b=True) if ta else \
            gemm(g, b, trans_a=False, trans_b=not tb)
    if ctx.needs_input_grad[1]:
        gb = gemm(g, a, trans_a=True, trans_b=ta) if tb else \
            gemm(a, g, trans_a=not ta, trans_b=False)
    if len(ctx.metas) > 2 and ctx.needs_input_grad[2]:
        gc = sum_to_shape(g_out if beta == 1.0 else g_out * beta, ctx.metas[2].shape)
    return (ga, gb, gc) if len(ctx.metas) > 2 else (ga, gb)


gemm_op = register("gemm", infer=_gemm_meta, eager=_gemm_eager, saves=(0, 1),
                   backward=_gemm_backward)


def gemm(a, b, c=None, trans_a=False, trans_b=False, alpha=1.0, beta=1.0):
    inputs = (a, b) if c is None else (a, b, c)
    return apply(gemm_op, *inputs, trans_a=bool(trans_a), trans_b=bool(trans_b),
                 alpha=float(alpha), beta=float(beta))
