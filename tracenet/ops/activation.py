"""Activation functions with their gradient kernels, the dropout mask and embedding lookup.

Each activation is a pointwise forward op plus a pointwise ``*_backward`` op (the gradient
kernel, differentiable itself so double backward works), all fusable into elementwise kernels.

``dropout_mask`` draws a dropout mask from a counter-based generator: element ``i`` of the mask
is a hash of ``(seed, i)``, so the numpy implementation, the IR interpreter and the generated C
produce the same mask for the same seed. Eager code passes a seed drawn from tracenet's global
generator; under ``tracenet.compile`` the seed is a graph input given a fresh value on every
call, so the mask is never a traced constant.
"""
import math

import numpy as np

from .. import _dtype
from .._meta import Meta
from .._sym import as_size
from . import common
from .cexpr import scalar, select
from .elementwise import _sigmoid_np, where
from .reduce import sum_to_shape
from .shape import cat
from .registry import apply

register = common.register_quiet

_WORD = {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}


def _floating(kernel):
    """Shape rule of an activation defined for floating-point input only."""
    def infer(x, **attrs):
        if not x.dtype.is_floating_point:
            raise NotImplementedError(f"\"{kernel}\" not implemented for '{_WORD[x.dtype.name]}'")
        return common.same(x)
    return infer


def _grad_meta(g, x, **attrs):
    return Meta(common.broadcast_shapes(tuple(g.shape), tuple(x.shape)), g.dtype)


def _named(default):
    return lambda ctx: ctx.attrs.get("_name", default)


def _typed(value, arr):
    return np.asarray(value, dtype=arr.dtype)


# --- erf (numpy has none): W. J. Cody's rational Chebyshev approximations --------------------

_ERF_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
          3.20937758913846947e03, 1.85777706184603153e-1)
_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
          2.84423683343917062e03)
_ERF_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
          2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
          2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_ERF_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
          1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
          3.43936767414372164e03, 1.23033935480374942e03)
_ERF_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
          1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_ERF_Q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
          6.05183413124413191e-2, 2.33520497626869185e-3)
_INV_SQRT_PI = 5.6418958354775628695e-1


def erf(x):
    """The error function of a float array, computed in float64 (accurate to a few ulps)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.abs(x)
    out = np.empty_like(y)
    small = y <= 0.46875
    mid = (y > 0.46875) & (y <= 4.0)
    big = (y > 4.0) & (y < 6.0)
    out[y >= 6.0] = 1.0  # erfc(6) < 2e-17: erf rounds to 1
    if small.any():
        ys = y[small]
        z = ys * ys
        num, den = _ERF_A[4] * z, z
        for i in range(3):
            num = (num + _ERF_A[i]) * z
            den = (den + _ERF_B[i]) * z
        out[small] = ys * (num + _ERF_A[3]) / (den + _ERF_B[3])
    for sel, tail in ((mid, False), (big, True)):
        if not sel.any():
            continue
        ys = y[sel]
        if tail:
            z = 1.0 / (ys * ys)
            num, den = _ERF_P[5] * z, z
            for i in range(4):
                num = (num + _ERF_P[i]) * z
                den = (den + _ERF_Q[i]) * z
            r = (_INV_SQRT_PI - z * (num + _ERF_P[4]) / (den + _ERF_Q[4])) / ys
        else:
            num, den = _ERF_C[8] * ys, ys
            for i in range(7):
                num = (num + _ERF_C[i]) * ys
                den = (den + _ERF_D[i]) * ys
            r = (num + _ERF_C[7]) / (den + _ERF_D[7])
        # erfc(y) = exp(-y^2) r, with y^2 split so exp() loses no precision
        head = np.trunc(ys * 16.0) / 16.0
        r = np.exp(-head * head) * np.exp(-(ys - head) * (ys + head)) * r
        out[sel] = 1.0 - r
    nan = np.isnan(y)
    if nan.any():
        out[nan] = np.nan
    return np.copysign(out, x)


# --- leaky_relu ----------------------------------------------------------------------------------

_LEAKY_INPLACE_MSG = (
    "In-place leakyReLu backward calculation is triggered with a negative slope which is not "
    "supported. This is caused by calling in-place forward function with a negative slope, please "
    "call out-of-place version instead. File an issue at https://github.com/pytorch/pytorch if "
    "you do require supporting in-place leakRelu backward calculation with negative slope")


def _leaky_relu_eager(x, negative_slope):
    return np.where(x > 0, x, x * _typed(negative_slope, x))


def _leaky_relu_backward_rule(ctx, g):
    slope = ctx.attrs["negative_slope"]
    if ctx.attrs.get("_inplace") and slope < 0:
        raise RuntimeError(_LEAKY_INPLACE_MSG)
    return (leaky_relu_backward(g, ctx.inputs[0], slope),)


# --- C expressions of the elementwise activations (the compiler's elementwise kernels) -----


_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


_lit = scalar  # a floating-point literal of the result type


def _c_leaky_relu(a, at, ct):
    return select(f"{a[0]} > 0", a[0], f"{a[0]} * {_lit(at['negative_slope'], ct)}", ct)


def _c_leaky_relu_backward(a, at, ct):
    g, x = a
    return select(f"{x} > 0", g, f"{g} * {_lit(at['negative_slope'], ct)}", ct)


def _c_elu(a, at, ct):
    x = a[0]
    neg = f"expm1({x} * {_lit(at['input_scale'], ct)}) * {_lit(at['alpha'] * at['scale'], ct)}"
    return f"({x} > 0 ? {x} * {_lit(at['scale'], ct)} : {neg})"


def _c_elu_backward(a, at, ct):
    g, x = a
    k = at["input_scale"] * at["alpha"] * at["scale"]
    neg = f"{g} * {_lit(k, ct)} * exp({x} * {_lit(at['input_scale'], ct)})"
    return f"({x} > 0 ? {g} * {_lit(at['scale'], ct)} : {neg})"


def _c_tanh_inner(x, ct):
    return (f"tanh({_lit(_K_TANH, ct)} * ({x} + {_lit(_C_TANH, ct)} * {x} * {x} * "
            f"{x}))")


def _c_gelu(a, at, ct):
    x = a[0]
    if at["approximate"] == "tanh":
        return f"({_lit(0.5, ct)} * {x} * (1 + {_c_tanh_inner(x, ct)}))"
    return f"({_lit(0.5, ct)} * {x} * (1 + erf({x} * {_lit(_SQRT1_2, ct)})))"


def _c_gelu_backward(a, at, ct):
    g, x = a
    if at["approximate"] == "tanh":
        t = _c_tanh_inner(x, ct)
        du = f"{_lit(_K_TANH, ct)} * (1 + {_lit(3 * _C_TANH, ct)} * {x} * {x})"
        return (f"({g} * ({_lit(0.5, ct)} * (1 + {t}) + {_lit(0.5, ct)} * {x} * "
                f"(1 - {t} * {t}) * {du}))")
    cdf = f"{_lit(0.5, ct)} * (1 + erf({x} * {_lit(_SQRT1_2, ct)}))"
    pdf = f"{_lit(_INV_SQRT_2PI, ct)} * exp({_lit(-0.5, ct)} * {x} * {x})"
    return f"({g} * ({cdf} + {x} * {pdf}))"


def _c_softplus(a, at, ct):
    x = a[0]
    bx = f"({x} * {_lit(at['beta'], ct)})"
    return (f"({bx} > {_lit(at['threshold'], ct)} ? {x} : log1p(exp({bx})) / "
            f"{_lit(at['beta'], ct)})")


def _c_softplus_backward(a, at, ct):
    g, x = a
    bx = f"({x} * {_lit(at['beta'], ct)})"
    return f"({bx} > {_lit(at['threshold'], ct)} ? {g} : {g} * exp({bx}) / (exp({bx}) + 1))"


leaky_relu_op = register(
    "leaky_relu", infer=_floating("leaky_relu_cpu"), eager=_leaky_relu_eager, saves=(0,),
    backward=_leaky_relu_backward_rule, grad_fn=_named("LeakyReluBackward0"),
    c_expr=_c_leaky_relu)

leaky_relu_backward_op = register(
    "leaky_relu_backward", infer=_grad_meta,
    eager=lambda g, x, negative_slope: np.where(x > 0, g, g * _typed(negative_slope, g)),
    saves=(1,), c_expr=_c_leaky_relu_backward,
    # piecewise linear in x: the gradient for x is zero (as torch's, not absent)
    backward=lambda ctx, gg: (leaky_relu_backward(gg, ctx.inputs[1], ctx.attrs["negative_slope"]),
                              gg * 0 if ctx.needs_input_grad[1] else None))


def leaky_relu(x, negative_slope=0.01, **named):
    return apply(leaky_relu_op, x, negative_slope=float(negative_slope), **named)


def leaky_relu_backward(g, x, negative_slope):
    return apply(leaky_relu_backward_op, g, x, negative_slope=float(negative_slope))


# --- elu: scale * (x if x > 0 else alpha * (exp(input_scale * x) - 1)) --------------------

_ELU_INPLACE_MSG = (
    "In-place elu backward calculation is triggered with a negative slope which is not supported. "
    "This is caused by calling in-place forward function with a negative slope, please call "
    "out-of-place version instead.")


def _elu_eager(x, alpha, scale, input_scale):
    neg = np.expm1(x * _typed(input_scale, x)) * _typed(alpha * scale, x)
    return np.where(x > 0, x * _typed(scale, x), neg)


def _elu_grad_eager(g, x, alpha, scale, input_scale):
    neg = g * _typed(input_scale * alpha * scale, g) * np.exp(x * _typed(input_scale, x))
    return np.where(x > 0, g * _typed(scale, g), neg)


def _elu_attrs(ctx):
    a = {k: ctx.attrs[k] for k in ("alpha", "scale", "input_scale")}
    # torch's celu differentiates with input_scale 1 / float32(alpha)
    a["input_scale"] = ctx.attrs.get("_backward_input_scale", a["input_scale"])
    return a


def _elu_backward_rule(ctx, g):
    if ctx.attrs.get("_inplace") and ctx.attrs["alpha"] < 0:
        raise RuntimeError(_ELU_INPLACE_MSG)
    return (elu_backward(g, ctx.inputs[0], **_elu_attrs(ctx)),)


def _elu_backward_backward(ctx, gg):
    g, x = ctx.inputs
    a = _elu_attrs(ctx)
    dg = elu_backward(gg, x, **a) if ctx.needs_input_grad[0] else None
    dx = None
    if ctx.needs_input_grad[1]:
        k = a["input_scale"] * a["input_scale"] * a["alpha"] * a["scale"]
        curve = (x * a["input_scale"]).exp() * (g * gg) * k
        # torch masks with x < 0: the second derivative at 0 is 0
        dx = where(x < 0, curve, curve * 0)
    return dg, dx


elu_op = register(
    "elu", infer=_floating("elu_cpu"), eager=_elu_eager, saves=(0,), backward=_elu_backward_rule,
    grad_fn=_named("EluBackward0"), c_expr=_c_elu)

elu_backward_op = register(
    "elu_backward", infer=_grad_meta, eager=_elu_grad_eager, saves=(0, 1),
    backward=_elu_backward_backward, c_expr=_c_elu_backward)


def elu(x, alpha=1.0, scale=1.0, input_scale=1.0, **named):
    return apply(elu_op, x, alpha=float(alpha), scale=float(scale),
                 input_scale=float(input_scale), **named)


def elu_backward(g, x, alpha, scale, input_scale):
    return apply(elu_backward_op, g, x, alpha=float(alpha), scale=float(scale),
                 input_scale=float(input_scale))


# --- gelu ------------------------------------------------------------------------------------

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_K_TANH = math.sqrt(2.0 / math.pi)   # tanh approximation: tanh(K (x + C x^3))
_C_TANH = 0.044715
_GELU_MODES = ("none", "tanh")


def _gelu_meta(x, approximate):
    if approximate not in _GELU_MODES:
        raise RuntimeError("approximate argument must be either none or tanh.")
    return _floating("GeluKernelImpl")(x)


def _gelu_eager(x, approximate):
    xd = x.astype(np.float64)
    if approximate == "tanh":
        y = 0.5 * xd * (1.0 + np.tanh(_K_TANH * (xd + _C_TANH * xd * xd * xd)))
    else:
        y = 0.5 * xd * (1.0 + erf(xd * _SQRT1_2))
    return y.astype(x.dtype)


def _gelu_grad_eager(g, x, approximate):
    xd = x.astype(np.float64)
    if approximate == "tanh":
        t = np.tanh(_K_TANH * (xd + _C_TANH * xd * xd * xd))
        d = 0.5 * (1.0 + t) + 0.5 * xd * (1.0 - t * t) * _K_TANH * (1.0 + 3.0 * _C_TANH * xd * xd)
    else:
        d = 0.5 * (1.0 + erf(xd * _SQRT1_2)) + xd * _INV_SQRT_2PI * np.exp(-0.5 * xd * xd)
    return (g * d).astype(g.dtype)


def _gelu_second_derivative(x, approximate):
    """d^2 gelu / dx^2 with tracenet ops (runs on tensors and on traced values)."""
    if approximate == "tanh":
        x2 = x * x
        t = ((x + x2 * x * _C_TANH) * _K_TANH).tanh()
        du = (x2 * (3.0 * _C_TANH) + 1.0) * _K_TANH
        sech2 = 1.0 - t * t
        return sech2 * (du - x * t * du * du + x * x * (3.0 * _C_TANH * _K_TANH))
    return (x * x * -0.5).exp() * _INV_SQRT_2PI * (2.0 - x * x)


def _gelu_backward_backward(ctx, gg):
    g, x = ctx.inputs
    mode = ctx.attrs["approximate"]
    dg = gelu_backward(gg, x, mode) if ctx.needs_input_grad[0] else None
    dx = gg * g * _gelu_second_derivative(x, mode) if ctx.needs_input_grad[1] else None
    return dg, dx


gelu_op = register(
    "gelu", infer=_gelu_meta, eager=_gelu_eager, saves=(0,), grad_fn="GeluBackward0",
    backward=lambda ctx, g: (gelu_backward(g, ctx.inputs[0], ctx.attrs["approximate"]),),
    c_expr=_c_gelu)

gelu_backward_op = register(
    "gelu_backward", infer=_grad_meta, eager=_gelu_grad_eager, saves=(0, 1),
    backward=_gelu_backward_backward, c_expr=_c_gelu_backward)


def gelu(x, approximate="none"):
    return apply(gelu_op, x, approximate=approximate)


def gelu_backward(g, x, approximate):
    return apply(gelu_backward_op, g, x, approximate=approximate)


# --- SiLU, Mish, Hardswish, Hardsigmoid: elementwise ops whose backward rules are compositions
# of other elementwise ops (so the compiler fuses both directions into elementwise kernels)


def _silu_eager(x):
    return x * _sigmoid_np(x)


def _silu_backward(ctx, g):
    x = ctx.inputs[0]
    s = x.sigmoid()
    return (g * s * (1.0 + x * (1.0 - s)),)


silu_op = register(
    "silu", infer=_floating("silu_cpu"), eager=_silu_eager, saves=(0,), backward=_silu_backward,
    grad_fn="SiluBackward0", c_expr=lambda a, at, ct: f"({a[0]} / (1 + exp(-{a[0]})))")


def silu(x):
    return apply(silu_op, x)


def _softplus_np(x):
    """log(1 + exp(x)), linear from x > 20 (torch's softplus default threshold)."""
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def _mish_backward(ctx, g):
    x = ctx.inputs[0]
    t = softplus(x, 1.0, 20.0).tanh()
    return (g * (t + x * x.sigmoid() * (1.0 - t * t)),)


def _c_mish(a, at, ct):
    x = a[0]
    return f"({x} * tanh({x} > 20 ? {x} : log1p(exp({x}))))"


mish_op = register(
    "mish", infer=_floating("mish_cpu"), eager=lambda x: x * np.tanh(_softplus_np(x)),
    saves=(0,), backward=_mish_backward, grad_fn="MishBackward0", c_expr=_c_mish)


def mish(x):
    return apply(mish_op, x)


def _hardswish_eager(x):
    return x * np.clip(x + _typed(3, x), 0, 6) / _typed(6, x)


def _hardswish_backward(ctx, g):
    # torch's rule: 0 up to -3, x / 3 + 1/2 strictly between, 1 from 3 on
    x = ctx.inputs[0]
    slope = where(x <= -3.0, x * 0, where(x < 3.0, x / 3.0 + 0.5, x * 0 + 1.0))
    return (g * slope,)


def _c_hardswish(a, at, ct):
    x = a[0]
    return f"({x} <= -3 ? 0 : {x} >= 3 ? {x} : {x} * ({x} + 3) / 6)"


hardswish_op = register(
    "hardswish", infer=_floating("hardswish_cpu"), eager=_hardswish_eager, saves=(0,),
    backward=_hardswish_backward, grad_fn="HardswishBackward0", c_expr=_c_hardswish)


def hardswish(x):
    return apply(hardswish_op, x)


def _hardsigmoid_backward(ctx, g):
    # torch's rule: 1/6 strictly inside (-3, 3), 0 elsewhere; torch's 1/6 is a float32
    # constant in every dtype
    x = ctx.inputs[0]
    zero = x * 0  # (keeps the rule differentiable in x, as torch's: double backward works)
    return (g * where((x > -3.0).logical_and(x < 3.0), zero + _ONE_SIXTH_F32, zero),)


_ONE_SIXTH_F32 = float(np.float32(1.0) / np.float32(6.0))


def _c_hardsigmoid(a, at, ct):
    x = a[0]
    return f"({x} <= -3 ? 0 : {x} >= 3 ? 1 : ({x} + 3) / 6)"


hardsigmoid_op = register(
    "hardsigmoid", infer=_floating("hardsigmoid_cpu"),
    eager=lambda x: np.clip(x + _typed(3, x), 0, 6) / _typed(6, x), saves=(0,),
    backward=_hardsigmoid_backward, grad_fn="HardsigmoidBackward0", c_expr=_c_hardsigmoid)


def hardsigmoid(x):
    return apply(hardsigmoid_op, x)


# --- softplus: log(1 + exp(beta x)) / beta, linear where beta x > threshold ---------------------


def _softplus_eager(x, beta, threshold):
    bx = x * _typed(beta, x)
    return np.where(bx > threshold, x, np.log1p(np.exp(bx)) / _typed(beta, x))


def _softplus_grad_eager(g, x, beta, threshold):
    bx = x * _typed(beta, x)
    z = np.exp(bx)
    return np.where(bx > threshold, g, g * z / (z + 1))


def _softplus_backward_backward(ctx, gg):
    g, x = ctx.inputs
    beta, threshold = ctx.attrs["beta"], ctx.attrs["threshold"]
    dg = softplus_backward(gg, x, beta, threshold) if ctx.needs_input_grad[0] else None
    dx = None
    if ctx.needs_input_grad[1]:
        bx = x * beta
        s = bx.sigmoid()
        curve = g * gg * s * (1.0 - s) * beta
        # zero from the threshold on (torch's second derivative is 0 at beta x == threshold)
        dx = where(bx < threshold, curve, curve * 0)
    return dg, dx


softplus_op = register(
    "softplus", infer=_floating("softplus_cpu"), eager=_softplus_eager, saves=(0,),
    backward=lambda ctx, g: (softplus_backward(g, ctx.inputs[0], ctx.attrs["beta"],
                                               ctx.attrs["threshold"]),),
    grad_fn="SoftplusBackward0", c_expr=_c_softplus)

softplus_backward_op = register(
    "softplus_backward", infer=_grad_meta, eager=_softplus_grad_eager, saves=(0, 1),
    backward=_softplus_backward_backward, c_expr=_c_softplus_backward)


def softplus(x, beta=1.0, threshold=20.0):
    return apply(softplus_op, x, beta=float(beta), threshold=float(threshold))


def softplus_backward(g, x, beta, threshold):
    return apply(softplus_backward_op, g, x, beta=float(beta), threshold=float(threshold))


# --- log_sigmoid: min(x, 0) - log1p(exp(-|x|)) -------------------------------------------------


def _log_sigmoid_eager(x):
    return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))


log_sigmoid_op = register(
    "log_sigmoid", infer=_floating("log_sigmoid_cpu"), eager=_log_sigmoid_eager, saves=(0,),
    # d/dx log(sigmoid(x)) = sigmoid(-x) (a composition: differentiable again)
    backward=lambda ctx, g: (g * (-ctx.inputs[0]).sigmoid(),), grad_fn="LogSigmoidBackward0",
    c_expr=lambda a, at, ct: f"(fmin({a[0]}, 0) - log1p(exp(-fabs({a[0]}))))")


def log_sigmoid(x):
    return apply(log_sigmoid_op, x)


# --- hardtanh: clamp(x, min_val, max_val); relu6 is hardtanh(x, 0, 6) ---------------------------


def _hardtanh_eager(x, min_val, max_val):
    return np.clip(x, min_val, max_val).astype(x.dtype)


def _hardtanh_backward(ctx, g):
    # torch's rule: zero at and beyond the bounds, g strictly between (and at nan)
    x = ctx.inputs[0]
    lo, hi = ctx.attrs["min_val"], ctx.attrs["max_val"]
    zero = x * 0  # (keeps the rule in x's graph, as torch's: x's second derivative is zero)
    return (where((x <= lo).logical_or(x >= hi), zero, g),)


def _c_hardtanh(a, at, ct):
    x, lo, hi = a[0], _lit(at["min_val"], ct), _lit(at["max_val"], ct)
    return f"({x} <= {lo} ? {lo} : {x} >= {hi} ? {hi} : {x})"


hardtanh_op = register(
    "hardtanh", infer=lambda x, min_val, max_val: common.same(x), eager=_hardtanh_eager,
    saves=(0,), backward=_hardtanh_backward, grad_fn="HardtanhBackward0", c_expr=_c_hardtanh)


def hardtanh(x, min_val=-1.0, max_val=1.0):
    return apply(hardtanh_op, x, min_val=float(min_val), max_val=float(max_val))


# --- prelu: x if x > 0 else weight * x, the weight broadcast over the channel dim --------------


def _prelu_meta(x, w):
    if not x.dtype.is_floating_point:
        raise NotImplementedError(f"\"prelu_cpu\" not implemented for '{_WORD[x.dtype.name]}'")
    if w.dtype is not x.dtype:
        raise RuntimeError(f"prelu: Type promoting not supported. Got {_WORD[x.dtype.name]} and "
                           f"{_WORD[w.dtype.name]}")
    shape = tuple(x.shape)
    if common.broadcast_shapes(shape, tuple(w.shape)) != shape:
        raise RuntimeError("prelu: the weight must broadcast to the input's shape")
    return common.same(x)


def _prelu_backward(ctx, g):
    x, w = ctx.inputs
    pos = x > 0
    gx = where(pos, g, g * w) if ctx.needs_input_grad[0] else None
    gw = None
    if ctx.needs_input_grad[1]:
        gw = sum_to_shape(where(pos, g * 0, g * x), ctx.metas[1].shape)
    return gx, gw


prelu_op = register(
    "prelu", infer=_prelu_meta, eager=lambda x, w: np.where(x > 0, x, w * x), saves=(0, 1),
    backward=_prelu_backward, grad_fn="PreluKernelBackward0",
    c_expr=lambda a, at, ct: select(f"{a[0]} > 0", a[0], f"{a[1]} * {a[0]}", ct))


def prelu(x, weight):
    """``weight`` is already shaped to broadcast against ``x`` (see ``F.prelu``)."""
    return apply(prelu_op, x, weight)


# --- glu: a * sigmoid(b), a and b the two halves of x along dim --------------------------------


def _glu_meta(x, dim):
    if not x.dtype.is_floating_point:
        raise NotImplementedError(f"\"glu_cpu\" not implemented for '{_WORD[x.dtype.name]}'")
    if len(x.shape) == 0:
        raise RuntimeError("glu does not support scalars because halving size must be even")
    d = common.wrap_dim(dim, len(x.shape))
    if x.shape[d] % 2:
        raise RuntimeError(f"Halving dimension must be even, but dimension {d} is size "
                           f"{x.shape[d]}")
    shape = list(x.shape)
    shape[d] //= 2
    return Meta(tuple(shape), x.dtype)


def _glu_eager(x, dim):
    a, b = np.split(x, 2, axis=dim)
    return a * _sigmoid_np(b)


def _glu_halves(x, dim):
    h = x.shape[dim] // 2
    return x.narrow(dim, 0, h), x.narrow(dim, h, h)


def _glu_backward(ctx, g):
    dim = ctx.attrs["dim"]
    a, b = _glu_halves(ctx.inputs[0], dim)
    s = b.sigmoid()
    ga = g * s
    return (cat([ga, ga * a * (1.0 - s)], dim),)


def _glu_decomposition(x, dim):
    a, b = _glu_halves(x, dim)
    return a * b.sigmoid()


glu_op = register(
    "glu", infer=_glu_meta, eager=_glu_eager, saves=(0,), backward=_glu_backward,
    grad_fn="GluBackward0", decomposition=_glu_decomposition)


def glu(x, dim=-1):
    return apply(glu_op, x, dim=common.wrap_dim(dim, max(x.dim(), 1)))


# --- dropout mask ------------------------------------------------------------------------------

# SplitMix64 finaliser constants: mask element i is keep/drop by the top 53 bits of
# mix(seed + (i + 1) * GOLDEN)
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
UNIT_BITS = 53


def drop_threshold(p):
    """Element i is kept when its 53-bit draw is >= this: probability 1 - p."""
    return min(int(round(p * (1 << UNIT_BITS))), 1 << UNIT_BITS)


def mask_scale(p):
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def counter_hash(seed, n):
    """The 53-bit draws of elements 0..n-1 for ``seed`` (uint64 arithmetic wraps mod 2^64)."""
    z = np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF) + \
        np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(64 - UNIT_BITS)


def _dropout_mask_meta(seed, shape, p, dtype):
    if tuple(seed.shape) != () or seed.dtype is not _dtype.int64:
        raise RuntimeError("dropout_mask expects a 0-dim int64 seed")
    return Meta(tuple(shape), dtype)


def _dropout_mask_eager(seed, shape, p, dtype):
    keep = counter_hash(int(seed), common.numel(shape)) >= np.uint64(drop_threshold(p))
    scale = np.asarray(mask_scale(p), dtype.np)
    return np.where(keep, scale, np.zeros((), dtype.np)).reshape(tuple(shape))


dropout_mask_op = register("dropout_mask", infer=_dropout_mask_meta, eager=_dropout_mask_eager,
                           differentiable=False)


def dropout_mask(seed, shape, p, dtype):
    """A mask of ``shape`` whose elements are 0 with probability ``p``, else ``1 / (1 - p)``."""
    return apply(dropout_mask_op, seed, shape=tuple(as_size(s) for s in shape), p=float(p),
                 dtype=dtype)


# --- embedding ---------------------------------------------------------------------------------

_TYPE_NAME = {"float32": "torch.FloatTensor", "float64": "torch.DoubleTensor",
              "bool": "CPUBoolType"}


def _embedding_meta(weight, indices, padding_idx, scale_grad_by_freq):
    if len(weight.shape) != 2:
        raise RuntimeError("'weight' must be 2-D")
    if indices.dtype is not _dtype.int64:
        raise RuntimeError("Expected tensor for argument #1 'indices' to have one of the "
                           "following scalar types: Long, Int; but got "
                           f"{_TYPE_NAME[indices.dtype.name]} instead (while checking arguments "
                           "for embedding)")
    return Meta(tuple(indices.shape) + (weight.shape[1],), weight.dtype)


def _check_indices(indices, n):
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise IndexError(common.INDEX_OUT_OF_RANGE)


def _embedding_eager(weight, indices, padding_idx, scale_grad_by_freq):
    _check_indices(indices, weight.shape[0])
    return np.ascontiguousarray(weight[indices])


def _embedding_grad_eager(g, indices, num_weights, padding_idx, scale_grad_by_freq):
    dim = g.shape[-1]
    flat = indices.reshape(-1)
    _check_indices(flat, num_weights)
    rows = g.reshape(-1, dim)
    if scale_grad_by_freq and flat.size:
        counts = np.bincount(flat, minlength=num_weights)
        rows = rows * (1.0 / counts[flat]).astype(g.dtype)[:, None]
    out = np.zeros((num_weights, dim), g.dtype)
    np.add.at(out, flat, rows)
    if padding_idx is not None:
        out[padding_idx] = 0
    return out


def _embedding_backward_backward(ctx, gg):
    """The adjoint of the scatter-add: gather the rows back (with the same scaling/masking)."""
    idx = ctx.inputs[1]
    pad, scale = ctx.attrs["padding_idx"], ctx.attrs["scale_grad_by_freq"]
    rows = embedding(gg, idx)
    if scale:
        ones = common.tensor_cls()._wrap(np.ones(tuple(idx.shape) + (1,), gg.dtype.np))
        counts = embedding_backward(ones, idx, ctx.attrs["num_weights"], None, False)
        rows = rows / embedding(counts, idx)
    if pad is not None:
        rows = rows * (idx != pad).unsqueeze(-1).to(gg.dtype)
    return rows, None


embedding_op = register(
    "embedding", infer=_embedding_meta, eager=_embedding_eager, saves=(1,),
    grad_fn="EmbeddingBackward0",
    backward=lambda ctx, g: (embedding_backward(g, ctx.inputs[1], ctx.metas[0].shape[0],
                                                ctx.attrs["padding_idx"],
                                                ctx.attrs["scale_grad_by_freq"]), None))

embedding_backward_op = register(
    "embedding_backward",
    infer=lambda g, idx, num_weights, padding_idx, scale_grad_by_freq: Meta(
        (num_weights, g.shape[-1]), g.dtype),
    eager=_embedding_grad_eager, saves=(1,), backward=_embedding_backward_backward)


def embedding(weight, indices, padding_idx=None, scale_grad_by_freq=False):
    """Rows ``weight[indices]``; ``padding_idx`` rows get no gradient, ``scale_grad_by_freq``
    divides each row's gradient by how often its index occurs in ``indices``."""
    return apply(embedding_op, weight, indices, padding_idx=padding_idx,
                 scale_grad_by_freq=bool(scale_grad_by_freq))


def embedding_backward(g, indices, num_weights, padding_idx, scale_grad_by_freq):
    return apply(embedding_backward_op, g, indices, num_weights=int(num_weights),
                 padding_idx=padding_idx, scale_grad_by_freq=bool(scale_grad_by_freq))
