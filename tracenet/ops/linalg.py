"""Matrix products: mm, addmm, bmm (primitives) and matmul, mv, dot, outer built on them."""
import numpy as np

from .. import _dtype
from .._meta import Meta
from . import common
from .gemm import gemm
from .reduce import sum_to_shape
from .shape import _view
from .registry import apply, register


def _type_word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def _check_same_dtype(name, *metas):
    if len({m.dtype for m in metas}) != 1:
        words = [_type_word(m.dtype) for m in metas]
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: "
                           f"{words[0].lower()} != {words[1].lower()}")


def _no_bool(m, kernel):
    if m.dtype is _dtype.bool_:
        raise NotImplementedError(f"\"{kernel}\" not implemented for 'Bool'")


def _shape_str(shape):
    return "x".join(str(s) for s in shape)


def _mm_meta(a, b):
    if len(a.shape) != 2:
        raise RuntimeError(f"self must be a matrix")
    if len(b.shape) != 2:
        raise RuntimeError(f"mat2 must be a matrix")
    if a.shape[1] != b.shape[0]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({_shape_str(a.shape)} and "
                           f"{_shape_str(b.shape)})")
    _check_same_dtype("mm", a, b)
    _no_bool(a, "addmm_impl_cpu_")
    return Meta((a.shape[0], b.shape[1]), a.dtype)


def _mm_backward(ctx, g):
    a, b = ctx.inputs
    ga = g.mm(b.t()) if ctx.needs_input_grad[0] else None
    gb = a.t().mm(g) if ctx.needs_input_grad[1] else None
    return ga, gb


def _matmul2d(a, b):
    """A matrix product. numpy's matmul takes a slow loop for an inner size of 1 (the outer
    products of batch-1 weight gradients, ~10x slower); dot calls BLAS for it."""
    return np.dot(a, b) if a.shape[1] == 1 else np.matmul(a, b)


def _mm_backward_np(ctx, g):
    a, b = ctx.inputs[0]._data, ctx.inputs[1]._data
    need = ctx.needs_input_grad
    return (_matmul2d(g, b.T) if need[0] else None, _matmul2d(a.T, g) if need[1] else None)


mm_op = register("mm", infer=_mm_meta, eager=_matmul2d, saves=(0, 1), backward=_mm_backward,
                 eager_backward=_mm_backward_np,
                 decomposition=lambda a, b: gemm(a, b))


def _addmm_meta(bias, a, b, beta=1, alpha=1):
    out = _mm_meta(a, b)
    if bias.shape == out.shape[1:] or bias.shape == out.shape:
        return out  # a linear layer's bias (or a full matrix): nothing to broadcast or check
    try:
        shape = common.broadcast_shapes(tuple(bias.shape), tuple(out.shape))
    except RuntimeError:
        shape = None
    if shape != tuple(out.shape):
        raise RuntimeError(f"The expanded size of the tensor ({out.shape[-1]}) must match the "
                           f"existing size ({bias.shape[-1] if bias.shape else 1}) at "
                           "non-singleton dimension 1.  Target sizes: "
                           f"[{out.shape[0]}, {out.shape[1]}].  Tensor sizes: "
                           f"[{', '.join(map(str, bias.shape))}]")
    return out


def _addmm_eager(bias, a, b, beta=1, alpha=1):
    prod = _matmul2d(a, b)
    if alpha != 1:
        prod *= alpha
    return prod + (bias if beta == 1 else bias * beta)


def _addmm_backward(ctx, g):
    _, a, b = ctx.inputs
    beta, alpha = ctx.attrs.get("beta", 1), ctx.attrs.get("alpha", 1)
    gbias = None
    if ctx.needs_input_grad[0]:
        gbias = sum_to_shape(g if beta == 1 else g * beta, ctx.metas[0].shape)
    ga = gb = None
    if ctx.needs_input_grad[1]:
        ga = g.mm(b.t())
        ga = ga if alpha == 1 else ga * alpha
    if ctx.needs_input_grad[2]:
        gb = a.t().mm(g)
        gb = gb if alpha == 1 else gb * alpha
    return gbias, ga, gb


def _addmm_backward_np(ctx, g):
    if ctx.attrs.get("beta", 1) != 1 or ctx.attrs.get("alpha", 1) != 1:
        return None
    need = ctx.needs_input_grad
    a, b = ctx.inputs[1]._data, ctx.inputs[2]._data
    return (common.np_sum_to(g, ctx.metas[0].shape) if need[0] else None,
            _matmul2d(g, b.T) if need[1] else None,
            _matmul2d(a.T, g) if need[2] else None)


addmm_op = register("addmm", infer=_addmm_meta, eager=_addmm_eager, saves=(1, 2),
                    backward=_addmm_backward, eager_backward=_addmm_backward_np, cache_infer=True,
                    decomposition=lambda c, a, b, alpha=1, beta=1: gemm(a, b, c, alpha=alpha,
                                                                         beta=beta))


def _bmm_meta(a, b, trans_a=False, trans_b=False):
    if len(a.shape) != 3:
        raise RuntimeError("batch1 must be a 3D tensor")
    if len(b.shape) != 3:
        raise RuntimeError("batch2 must be a 3D tensor")
    m, k = (a.shape[2], a.shape[1]) if trans_a else (a.shape[1], a.shape[2])
    k2, n = (b.shape[2], b.shape[1]) if trans_b else (b.shape[1], b.shape[2])
    if a.shape[0] != b.shape[0] or k != k2:
        raise RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: "
                           f"[{a.shape[0]}, {k}] but got: [{b.shape[0]}, {k2}].")
    if a.dtype is not b.dtype:
        raise RuntimeError(f"expected scalar type {_type_word(a.dtype)} but found "
                           f"{_type_word(b.dtype)}")
    _no_bool(a, "bmm")
    return Meta((a.shape[0], m, n), a.dtype)


def _bmm_eager(a, b, trans_a=False, trans_b=False):
    return np.matmul(a.swapaxes(1, 2) if trans_a else a, b.swapaxes(1, 2) if trans_b else b)


def _bmm_backward(ctx, g):
    # as gemm's: the transposes stay flags, so no transposed copy is made
    a, b = ctx.inputs
    ta, tb = ctx.attrs.get("trans_a", False), ctx.attrs.get("trans_b", False)
    ga = gb = None
    if ctx.needs_input_grad[0]:
        ga = bmm_t(b, g, trans_a=tb, trans_b=True) if ta else bmm_t(g, b, trans_b=not tb)
    if ctx.needs_input_grad[1]:
        gb = bmm_t(g, a, trans_a=True, trans_b=ta) if tb else bmm_t(a, g, trans_a=not ta)
    return ga, gb


# torch.bmm, plus optional transposes of either operand (what attention's q @ k^T and every
# backward use); they print in the IR only when set
bmm_op = register("bmm", infer=_bmm_meta, eager=_bmm_eager, saves=(0, 1),
                  backward=_bmm_backward)


def _dot_meta(a, b):
    if len(a.shape) != 1 or len(b.shape) != 1:
        raise RuntimeError(f"1D tensors expected, but got {len(a.shape)}D and {len(b.shape)}D "
                           "tensors")
    if a.dtype is not b.dtype:
        raise RuntimeError(f"dot : expected both vectors to have same dtype, but found "
                           f"{_type_word(a.dtype)} and {_type_word(b.dtype)}")
    if a.shape[0] != b.shape[0]:
        raise RuntimeError(f"inconsistent tensor size, expected tensor [{a.shape[0]}] and src "
                           f"[{b.shape[0]}] to have the same number of elements, but got "
                           f"{a.shape[0]} and {b.shape[0]} elements respectively")
    _no_bool(a, "dot")
    return Meta((), a.dtype)


def _dot_backward(ctx, g):
    a, b = ctx.inputs
    return (g * b if ctx.needs_input_grad[0] else None,
            g * a if ctx.needs_input_grad[1] else None)


dot_op = register("dot", infer=_dot_meta, eager=lambda a, b: np.dot(a, b), saves=(0, 1),
                  backward=_dot_backward)


def _mv_meta(a, v):
    if len(a.shape) != 2 or len(v.shape) != 1:
        raise RuntimeError(f"vector + matrix @ vector expected, got 1, {len(a.shape)}, "
                           f"{len(v.shape)}")
    if a.shape[1] != v.shape[0]:
        raise RuntimeError(f"size mismatch, got input ({a.shape[0]}), mat ({a.shape[0]}x"
                           f"{a.shape[1]}), vec ({v.shape[0]})")
    if a.dtype is not v.dtype:
        raise RuntimeError(f"addmv input tensors must have the same dtype, but got "
                           f"{_type_word(v.dtype)}, {_type_word(a.dtype)}, and "
                           f"{_type_word(v.dtype)}")
    _no_bool(a, "addmv_impl_cpu")
    return Meta((a.shape[0],), a.dtype)


def _mv_backward(ctx, g):
    a, v = ctx.inputs
    ga = g.unsqueeze(1).mm(v.unsqueeze(0)) if ctx.needs_input_grad[0] else None
    gv = a.t().mv(g) if ctx.needs_input_grad[1] else None
    return ga, gv


mv_op = register("mv", infer=_mv_meta, eager=np.matmul, saves=(0, 1), backward=_mv_backward)


def mm(a, b):
    return apply(mm_op, *common.product_operands(a, b))


def addmm(bias, a, b, *, beta=1, alpha=1):
    attrs = {}
    if beta != 1:
        attrs["beta"] = beta
    if alpha != 1:
        attrs["alpha"] = alpha
    return apply(addmm_op, bias, *common.product_operands(a, b), **attrs)


def bmm(a, b):
    return apply(bmm_op, *common.product_operands(a, b))


def bmm_t(a, b, trans_a=False, trans_b=False):
    """a @ b over a batch, with a and/or b read transposed (their last two dims swapped)."""
    attrs = {k: True for k, v in (("trans_a", trans_a), ("trans_b", trans_b)) if v}
    return apply(bmm_op, *common.product_operands(a, b), **attrs)


def matmul(a, b):
    """numpy/torch matmul semantics, lowered to dot/mv/mm/bmm plus views (as torch does)."""
    da, db = a.dim(), b.dim()
    if da == 0 or db == 0:
        raise RuntimeError(f"both arguments to matmul need to be at least 1D, but they are "
                           f"{da}D and {db}D")
    if da == 1 and db == 1:
        return dot(a, b)
    if da == 2 and db == 1:
        return mv(a, b)
    if da == 1 and db == 2:
        out = mm(a.unsqueeze(0), b)
        return _view(out, tuple(out.shape[1:]), True, "SqueezeBackward4")
    if da == 2 and db == 2:
        return mm(a, b)
    if da >= 3 and db <= 2:
        # fold the batch dims into the rows: one mm (or mv)
        lead = tuple(a.shape[:-1])
        folded = a.reshape(common.numel(lead), a.shape[-1])
        out = mm(folded, b) if db == 2 else mv(folded, b)
        shape = lead + ((b.shape[-1],) if db == 2 else ())
        return _view(out, shape, True, "UnsafeViewBackward0")
    # batched: broadcast the batch dims, then one bmm
    a2 = a if da > 1 else a.unsqueeze(0)
    b2 = b if db > 1 else b.unsqueeze(-1)
    batch = common.broadcast_shapes(tuple(a2.shape[:-2]), tuple(b2.shape[:-2]))
    n, k = a2.shape[-2], a2.shape[-1]
    k2, m = b2.shape[-2], b2.shape[-1]
    nb = common.numel(batch)
    if k != k2:
        raise RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: "
                           f"[{nb}, {k}] but got: [{nb}, {k2}].")
    a3 = a2.expand(batch + (n, k)).reshape(nb, n, k)
    b3 = b2.expand(batch + (k2, m)).reshape(nb, k2, m)
    shape = batch + ((n,) if da > 1 else ()) + ((m,) if db > 1 else ())
    return _view(bmm(a3, b3), shape, True, "UnsafeViewBackward0")


def mv(a, v):
    return apply(mv_op, *common.product_operands(a, v))


def dot(a, b):
    return apply(dot_op, *common.product_operands(a, b))


def outer(a, b):
    return a.unsqueeze(1) * b.unsqueeze(0)


ger = outer


def einsum(equation, *operands):
    raise NotImplementedError("einsum is not supported yet")
