"""Vector norms and pairwise distances: ``vector_norm`` (behind ``norm`` and ``linalg.norm``)
and ``cdist``, each one registry op whose decomposition is made of elementwise ops and
reductions that lower."""
import math

import numpy as np

from .._meta import Meta
from . import common
from .elementwise import where
from .reduce import _reduced_shape, amax, amin, sum as rsum
from .registry import apply

register = common.register_quiet
INF = math.inf


def _word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def _norm_np(a, ord, axis, keepdim):
    """||a||_ord over ``axis`` (numpy, ``a`` already the absolute values)."""
    if ord == INF:
        return np.max(a, axis=axis, keepdims=keepdim)
    if ord == -INF:
        return np.min(a, axis=axis, keepdims=keepdim)
    if ord == 0:
        return np.sum(a != 0, axis=axis, keepdims=keepdim).astype(a.dtype)
    if ord == 1:
        return np.sum(a, axis=axis, keepdims=keepdim)
    if ord == 2:
        return np.sqrt(np.sum(a * a, axis=axis, keepdims=keepdim))
    return np.sum(a ** ord, axis=axis, keepdims=keepdim) ** (1.0 / ord)


def _norm_of(a, ord, dims, keepdim):
    """The same with tracenet ops (``a`` the absolute values): the decompositions."""
    if ord == INF:
        return amax(a, dims, keepdim)
    if ord == -INF:
        return amin(a, dims, keepdim)
    if ord == 0:
        return rsum((a != 0).to(a.dtype), dims, keepdim)
    if ord == 1:
        return rsum(a, dims, keepdim)
    if ord == 2:
        return rsum(a * a, dims, keepdim).sqrt()
    return rsum(a.pow(ord), dims, keepdim).pow(1.0 / ord)


def _grad_of_norm(x, y, g, ord):
    """d||x||/dx * g, with ``y`` the norm and ``g`` already broadcast to x's shape; torch's
    conventions: 0 where the norm is 0, ties of the inf-norms share the gradient."""
    if ord == 0:
        return x * 0.0
    if ord == 1:
        return g * x.sign()
    if ord in (INF, -INF):
        return g * x.sign() * (x.abs() == y).to(x.dtype)
    zero = y == 0
    if ord == 2:
        return where(zero, 0.0, g * x / y)
    return where(zero, 0.0, g * x.sign() * x.abs().pow(ord - 1) / y.pow(ord - 1))


# --- vector_norm ----------------------------------------------------------------------------


def _vnorm_meta(x, ord, dims, keepdim):
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"linalg.vector_norm: Expected a floating point or complex tensor as "
                           f"input. Got {_word(x.dtype)}")
    if ord < 0 and common.numel(x.shape) == 0:
        raise RuntimeError(f"linalg.vector_norm cannot compute the {ord} norm on an empty tensor "
                           "because the operation does not have an identity")
    return Meta(_reduced_shape(tuple(x.shape), dims, keepdim), x.dtype)


def _vnorm_backward(ctx, g):
    x, y = ctx.inputs[0], ctx.output
    ord, dims, keepdim = ctx.attrs["ord"], ctx.attrs["dims"], ctx.attrs["keepdim"]
    shape = tuple(ctx.metas[0].shape)
    if not keepdim:
        y = y.reshape(_reduced_shape(shape, dims, True))
        g = g.reshape(_reduced_shape(shape, dims, True))
    grad = _grad_of_norm(x, y.expand(shape), g.expand(shape), ord)
    if ord in (INF, -INF):  # ties share it evenly
        grad = grad / rsum((x.abs() == y.expand(shape)).to(x.dtype), dims, True).expand(shape)
    return (grad,)


vector_norm_op = register(
    "linalg_vector_norm", kind="reduction", infer=_vnorm_meta,
    eager=lambda x, ord, dims, keepdim: _norm_np(np.abs(x), ord, tuple(d for d in dims
                                                                        if d < x.ndim), keepdim),
    saves=(0,), save_outputs=True, backward=_vnorm_backward, grad_fn="LinalgVectorNormBackward0",
    decomposition=lambda x, ord, dims, keepdim: _norm_of(x.abs(), ord, dims, keepdim))


def _ord_value(ord):
    if isinstance(ord, str) or isinstance(ord, bool):
        raise RuntimeError(f"linalg.vector_norm: ord must be a number, got {ord!r}")
    return float(ord)


def vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None):
    if dtype is not None:
        x = x.to(dtype)
    if isinstance(dim, (list, tuple)) and len(dim) == 0:
        dim = None
    dims = common.wrap_dims(dim, x.dim()) if dim is not None else tuple(range(x.dim()))
    return apply(vector_norm_op, x, ord=_ord_value(ord), dims=tuple(dims), keepdim=keepdim)


def _matrix_norm(x, ord, dim, keepdim):
    d0, d1 = (common.wrap_dim(d, x.dim()) for d in dim)
    if ord == "fro":
        return vector_norm(x, 2, (d0, d1), keepdim)
    if ord in ("nuc", 2, -2):
        raise NotImplementedError(f"matrix norm ord={ord!r} needs singular values, which "
                                  "tracenet does not compute yet")
    if ord not in (1, -1, INF, -INF):
        raise RuntimeError(f"linalg.matrix_norm: Order {ord} not supported.")
    # 1: largest column sum; inf: largest row sum
    inner, outer = (d0, d1) if abs(ord) == 1 else (d1, d0)
    sums = rsum(x.abs(), inner, keepdim=keepdim)
    if not keepdim and outer > inner:
        outer -= 1
    return amax(sums, outer, keepdim) if ord > 0 else amin(sums, outer, keepdim)


def matrix_norm(x, ord="fro", dim=(-2, -1), keepdim=False, *, dtype=None):
    if x.dim() < 2:
        raise RuntimeError("linalg.matrix_norm: The input tensor A must have at least 2 "
                           "dimensions.")
    if dtype is not None:
        x = x.to(dtype)
    return _matrix_norm(x, ord, dim, keepdim)


def linalg_norm(x, ord=None, dim=None, keepdim=False, *, dtype=None):
    """torch.linalg.norm: a vector norm, or a matrix norm for 2 dims and an ``ord``."""
    if isinstance(dim, int):
        dim = (dim,)
    if ord is None:
        return vector_norm(x, 2, dim, keepdim, dtype=dtype)
    if dim is None:
        if x.dim() == 2:
            return matrix_norm(x, ord, (-2, -1), keepdim, dtype=dtype)
        if x.dim() != 1:
            raise RuntimeError(f"linalg.norm: If dim is not specified but ord is, the input must "
                               f"be 1D or 2D. Got {x.dim()}D.")
        return vector_norm(x, ord, None, keepdim, dtype=dtype)
    if len(dim) == 2:
        return matrix_norm(x, ord, dim, keepdim, dtype=dtype)
    return vector_norm(x, ord, dim, keepdim, dtype=dtype)


def norm(x, p="fro", dim=None, keepdim=False, dtype=None):
    """torch.norm: ``p`` a number (vector norm), 'fro' (2-norm over ``dim``) or 'nuc'."""
    if isinstance(dim, int):
        dim = (dim,)
    if p == "fro" or p is None:
        return vector_norm(x, 2, dim, keepdim, dtype=dtype)
    if p == "nuc":
        raise NotImplementedError("the nuclear norm needs singular values, which tracenet does "
                                  "not compute yet")
    if isinstance(p, str):
        raise RuntimeError(f"linalg.vector_norm: ord must be a number, got {p!r}")
    return vector_norm(x, p, dim, keepdim, dtype=dtype)


# --- cdist ----------------------------------------------------------------------------------


def _cdist_meta(a, b, p):
    if len(a.shape) < 2:
        raise RuntimeError(f"cdist only supports at least 2D tensors, X1 got: {len(a.shape)}D")
    if len(b.shape) < 2:
        raise RuntimeError(f"cdist only supports at least 2D tensors, X2 got: {len(b.shape)}D")
    if a.shape[-1] != b.shape[-1]:
        raise RuntimeError(f"X1 and X2 must have the same number of columns. X1: {a.shape[-1]} "
                           f"X2: {b.shape[-1]}")
    if not a.dtype.is_floating_point or not b.dtype.is_floating_point:
        raise RuntimeError(f"cdist only supports floating-point dtypes, X1 got: "
                           f"{_word(a.dtype)}")
    if a.dtype is not b.dtype:
        raise RuntimeError(f"X1 and X2 must have the same dtype, but got: {_word(a.dtype)} and "
                           f"{_word(b.dtype)}")
    if tuple(a.shape[:-2]) != tuple(b.shape[:-2]):
        raise RuntimeError("cdist: the batch dimensions of X1 and X2 must be equal")
    return Meta(tuple(a.shape[:-1]) + (b.shape[-2],), a.dtype)


def _diff(a, b):
    return a.unsqueeze(-2) - b.unsqueeze(-3)  # (..., P, R, M)


def _cdist_backward(ctx, g):
    a, b = ctx.inputs
    p = ctx.attrs["p"]
    d = _diff(a, b)
    shape = tuple(d.shape)
    grad = _grad_of_norm(d, ctx.output.unsqueeze(-1).expand(shape), g.unsqueeze(-1).expand(shape),
                         p)
    return (rsum(grad, -2) if ctx.needs_input_grad[0] else None,
            -rsum(grad, -3) if ctx.needs_input_grad[1] else None)


cdist_op = register(
    "cdist", infer=_cdist_meta,
    eager=lambda a, b, p: _norm_np(np.abs(a[..., :, None, :] - b[..., None, :, :]), p, -1, False),
    saves=(0, 1), save_outputs=True, backward=_cdist_backward, grad_fn="CdistBackward0",
    decomposition=lambda a, b, p: _norm_of(_diff(a, b).abs(), p, (a.dim(),), False))


def cdist(x1, x2, p=2.0, compute_mode=None):
    if p < 0:
        raise RuntimeError("cdist only supports non-negative p values")
    return apply(cdist_op, x1, x2, p=float(p))
