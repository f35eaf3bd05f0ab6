"""Elementwise ops: broadcasting binary arithmetic, unary math, comparisons, where, casts."""
import numpy as np

from .. import _dtype
from .._meta import Meta
from . import common, reduce
from .cexpr import scalar, select, template
from .registry import apply

register = common.register_quiet

# ---------------------------------------------------------------------------------------------
# binary arithmetic (broadcasting; Python numbers become 0-dim tensors of the result dtype)


def _binary_meta(a, b):
    return Meta(common.broadcast_shapes(a.shape, b.shape), _dtype.result_type(a, b))


def _div_meta(a, b):
    m = _binary_meta(a, b)
    return m if m.dtype.is_floating_point else Meta(m.shape, _dtype.get_default_dtype())


def _unbroadcast(ctx, i, g):
    """The gradient of input ``i`` from a broadcast result's gradient ``g``."""
    if not ctx.needs_input_grad[i]:
        return None
    return reduce.sum_to_shape(g, ctx.metas[i].shape)


def _same_kind(arr_fn):
    """numpy binary op computed in the result dtype (avoids numpy's own promotion rules)."""
    return arr_fn


def _unbroadcast_np(ctx, i, g):
    return common.np_sum_to(g, ctx.metas[i].shape) if ctx.needs_input_grad[i] else None


def _same_dtypes(ctx, g):
    """Whether the operands and the gradient share one dtype (else a product's numpy backward
    would promote differently from the rule's ops)."""
    return all(m.dtype.np == g.dtype for m in ctx.metas)


def _mul_backward_np(ctx, g):
    if not _same_dtypes(ctx, g):
        return None
    a, b = ctx.inputs
    return (_unbroadcast_np(ctx, 0, np.multiply(g, b._data)) if ctx.needs_input_grad[0] else None,
            _unbroadcast_np(ctx, 1, np.multiply(g, a._data)) if ctx.needs_input_grad[1] else None)


add_op = register(
    "add", infer=_binary_meta, eager=np.add, c_expr=template("({0} + {1})"),
    backward=lambda ctx, g: (_unbroadcast(ctx, 0, g), _unbroadcast(ctx, 1, g)),
    eager_backward=lambda ctx, g: (_unbroadcast_np(ctx, 0, g), _unbroadcast_np(ctx, 1, g)),
    grad_fn=lambda ctx: ctx.attrs.get("_name", "AddBackward0"))

_SUB_BOOL_MSG = ("Subtraction, the `-` operator, with a bool tensor is not supported. If you are "
                 "trying to invert a mask, use the `~` or `logical_not()` operator instead.")
_SUB_BOOLS_MSG = ("Subtraction, the `-` operator, with two bool tensors is not supported. Use the "
                  "`^` or `logical_xor()` operator instead.")


def _sub_meta(a, b):
    if a.dtype is _dtype.bool_ and b.dtype is _dtype.bool_:
        raise RuntimeError(_SUB_BOOLS_MSG)
    if a.dtype is _dtype.bool_ or b.dtype is _dtype.bool_:
        raise RuntimeError(_SUB_BOOL_MSG)
    return _binary_meta(a, b)


sub_op = register(
    "sub", infer=_sub_meta, eager=np.subtract, c_expr=template("({0} - {1})"),
    backward=lambda ctx, g: (_unbroadcast(ctx, 0, g),
                             _unbroadcast(ctx, 1, neg(g)) if ctx.needs_input_grad[1] else None),
    eager_backward=lambda ctx, g: (
        _unbroadcast_np(ctx, 0, g),
        _unbroadcast_np(ctx, 1, np.negative(g)) if ctx.needs_input_grad[1] else None),
    grad_fn=lambda ctx: ctx.attrs.get("_name", "SubBackward0"))

mul_op = register(
    "mul", infer=_binary_meta, eager=np.multiply, saves=(0, 1), c_expr=template("({0} * {1})"),
    backward=lambda ctx, g: (
        _unbroadcast(ctx, 0, g * ctx.inputs[1]) if ctx.needs_input_grad[0] else None,
        _unbroadcast(ctx, 1, g * ctx.inputs[0]) if ctx.needs_input_grad[1] else None),
    eager_backward=_mul_backward_np)


def _div_backward(ctx, g):
    a, b = ctx.inputs
    ga = _unbroadcast(ctx, 0, g / b) if ctx.needs_input_grad[0] else None
    gb = _unbroadcast(ctx, 1, neg(g) * a / (b * b)) if ctx.needs_input_grad[1] else None
    return ga, gb


div_op = register("div", infer=_div_meta, eager=np.true_divide, saves=(0, 1),
                  backward=_div_backward, c_expr=template("(({ct}){0} / ({ct}){1})"))


def _check_int_divisor(b):
    if b.dtype.kind in "biu" and np.any(b == 0):
        raise RuntimeError("ZeroDivisionError")


def _div_rounding_meta(a, b, rounding_mode):
    if a.dtype is _dtype.bool_ and b.dtype is _dtype.bool_:
        raise NotImplementedError(f"\"div_{rounding_mode}_cpu\" not implemented for 'Bool'")
    return _binary_meta(a, b)


def _div_rounding_eager(a, b, rounding_mode):
    dt = _dtype.promote_types(_dtype.from_numpy_dtype(a.dtype), _dtype.from_numpy_dtype(b.dtype))
    a, b = a.astype(dt.np, copy=False), b.astype(dt.np, copy=False)
    if dt.is_floating_point:
        if rounding_mode == "floor":
            return np.floor_divide(a, b)
        return np.trunc(np.true_divide(a, b))
    _check_int_divisor(b)
    q = np.floor_divide(a, b)
    if rounding_mode == "trunc":  # floor rounds negative inexact quotients one further down
        q = q + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)))
    return q


div_rounding_op = register(
    "div_rounding", eager_only="no C lowering yet (integer division by zero must raise as in eager mode)", infer=_div_rounding_meta, eager=_div_rounding_eager,
    backward=lambda ctx, g: (_unbroadcast(ctx, 0, g * 0), _unbroadcast(ctx, 1, g * 0)),
    grad_fn="DivBackward2")


def _pow_backward(ctx, g):
    a, b = ctx.inputs
    ga = gb = None
    if ctx.needs_input_grad[0]:
        ga = _unbroadcast(ctx, 0, g * b * a ** (b - 1))
    if ctx.needs_input_grad[1]:
        # d(a^b)/db = a^b log a, taken as 0 where a == 0 (torch's convention)
        safe = where(a == 0, 1.0, a)
        gb = _unbroadcast(ctx, 1, g * (a ** b) * log(safe))
    return ga, gb


def _pow_eager(a, b):
    if b.dtype.kind in "iub" and a.dtype.kind in "iub":
        if np.any(b < 0):
            # torch: 1 ** -n == 1, (-1) ** -n == +-1, everything else truncates to 0
            out = np.power(a, np.where(b < 0, 0, b))
            neg_b = np.broadcast_to(b < 0, out.shape)
            base = np.broadcast_to(a, out.shape)
            parity = np.broadcast_to(np.abs(b) % 2, out.shape)
            inv = np.where(base == 1, 1, np.where(base == -1, np.where(parity == 1, -1, 1), 0))
            return np.where(neg_b, inv, out).astype(out.dtype)
    return np.power(a, b)


def _pow_meta(a, b):
    if a.dtype is _dtype.bool_ and b.dtype is _dtype.bool_:
        raise NotImplementedError("\"pow\" not implemented for 'Bool'")
    return _binary_meta(a, b)


pow_op = register("pow", infer=_pow_meta, eager=_pow_eager, saves=(0, 1),
                  backward=_pow_backward, c_expr=template("pow({0}, {1})"),
                  grad_fn=lambda ctx: ctx.attrs.get("_name", "PowBackward1"))


def _np_meta(x):
    return Meta(x.shape, _dtype.from_numpy_dtype(x.dtype))


def _pow_scalar_eager(x, exponent):
    dt = _dtype.result_type(_np_meta(x), exponent)
    if dt is _dtype.bool_:  # bool ** True is the tensor, bool ** False all True
        return x.copy() if exponent else np.ones_like(x)
    x = x.astype(dt.np, copy=False)
    if exponent == 2:
        return x * x
    if exponent == 0.5:
        return np.sqrt(x)
    return np.power(x, np.asarray(exponent, dtype=dt.np))


_NEG_INT_POW_MSG = "Integers to negative integer powers are not allowed."


def _pow_scalar_meta(x, exponent):
    if not x.dtype.is_floating_point and not isinstance(exponent, float) and exponent < 0:
        raise RuntimeError(_NEG_INT_POW_MSG)
    return Meta(tuple(x.shape), _dtype.result_type(x, exponent))


def _pow_scalar_backward(ctx, g):
    (x,), e = ctx.inputs, ctx.attrs["exponent"]
    if e == 0:
        return (g * 0,)
    if e == 1:
        return (g,)
    if e == 2:
        return (g * x * 2.0,)
    return (g * e * pow_scalar(x, e - 1),)


def _pow_scalar_c(args, attrs, ct):
    (a,), e = args, attrs["exponent"]
    if e == 2:
        return f"({a} * {a})"
    if e == 3:
        return f"({a} * {a} * {a})"
    if e == 1:
        return a
    if e == 0.5:
        return f"sqrt({a})"
    if e == -1:
        return f"(1 / {a})"
    return f"pow({a}, {scalar(e, ct)})"


pow_scalar_op = register("pow_scalar", infer=_pow_scalar_meta, eager=_pow_scalar_eager,
                         saves=(0,), backward=_pow_scalar_backward, grad_fn="PowBackward0",
                         c_expr=_pow_scalar_c)


def _minmax_backward(first_wins):
    """The gradient goes to the operand that was picked; ties split it evenly (as torch)."""
    def backward(ctx, g):
        a, b = ctx.inputs
        zero = g * 0
        tie = where(a == b, g * 0.5, zero)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = _unbroadcast(ctx, 0, where(first_wins(a, b), g, tie))
        if ctx.needs_input_grad[1]:
            gb = _unbroadcast(ctx, 1, where(first_wins(b, a), g, tie))
        return ga, gb
    return backward


# NaN propagates from either operand, as in numpy and torch
maximum_op = register("maximum", infer=_binary_meta, eager=np.maximum, saves=(0, 1),
                      backward=_minmax_backward(lambda a, b: a > b),
                      c_expr=template("(({0} != {0} || {0} > {1}) ? {0} : {1})"))
minimum_op = register("minimum", infer=_binary_meta, eager=np.minimum, saves=(0, 1),
                      backward=_minmax_backward(lambda a, b: a < b),
                      c_expr=template("(({0} != {0} || {0} < {1}) ? {0} : {1})"))


def add(a, b, alpha=1):
    a, b = common.as_tensor_pair(a, b)
    if alpha != 1:
        b = mul(b, alpha)
    return apply(add_op, a, b)


def _is_boolish(v):
    return v.dtype is _dtype.bool_ if common.is_tensor(v) else isinstance(v, (bool, np.bool_))


def sub(a, b, alpha=1, *, _name=None):
    if _is_boolish(a) or _is_boolish(b):
        raise RuntimeError(_SUB_BOOLS_MSG if _is_boolish(a) and _is_boolish(b)
                           else _SUB_BOOL_MSG)
    a, b = common.as_tensor_pair(a, b)
    if alpha != 1:
        b = mul(b, alpha)
    if _name is not None:
        return apply(sub_op, a, b, _name=_name)
    return apply(sub_op, a, b)


def rsub(a, b, alpha=1):
    """``b - alpha * a`` (torch's reflected subtraction, ``2 - x``)."""
    return sub(b, a, alpha=alpha,
               _name="RsubBackward0" if common.is_tensor(b) else "RsubBackward1")


def mul(a, b):
    return apply(mul_op, *common.product_operands(*common.as_tensor_pair(a, b)))


def div(a, b, rounding_mode=None):
    if rounding_mode not in (None, "trunc", "floor"):
        raise RuntimeError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' "
                           f"but found '{rounding_mode}'")
    a, b = common.as_tensor_pair(a, b)
    if rounding_mode is None:
        # a/b's gradient for a reads only b: a is needed only when b needs a gradient
        return apply(div_op, a if b._requires_grad else common.unsaved(a), b)
    return apply(div_rounding_op, a, b, rounding_mode=rounding_mode)


def pow(a, b):
    if common.is_tensor(a) and not common.is_tensor(b):
        return apply(pow_scalar_op, a, exponent=b.item() if isinstance(b, np.generic) else b)
    if not common.is_tensor(a):
        # a Python number to a tensor power (``2 ** x``): torch's PowBackward2
        return apply(pow_op, *common.as_tensor_pair(a, b), _name="PowBackward2")
    return apply(pow_op, *common.as_tensor_pair(a, b))


def pow_scalar(x, exponent):
    return apply(pow_scalar_op, x, exponent=exponent)


def maximum(a, b):
    return apply(maximum_op, *common.as_tensor_pair(a, b))


def minimum(a, b):
    return apply(minimum_op, *common.as_tensor_pair(a, b))


def _remainder_meta(a, b):
    if a.dtype is _dtype.bool_ and b.dtype is _dtype.bool_:
        raise NotImplementedError("\"remainder_cpu\" not implemented for 'Bool'")
    return _binary_meta(a, b)


def _remainder_np(a, b):
    """Python's (and torch's) modulo: the result takes the sign of the divisor."""
    if b.dtype.kind in "biu":
        _check_int_divisor(b)
    return np.mod(a, b)


def _remainder_eager(a, b):
    dt = _dtype.promote_types(_dtype.from_numpy_dtype(a.dtype), _dtype.from_numpy_dtype(b.dtype))
    return _remainder_np(a.astype(dt.np, copy=False), b.astype(dt.np, copy=False))


def _remainder_backward(ctx, g):
    """``a - b * floor(a / b)``: gradient 1 for ``a`` and ``-floor(a / b)`` for ``b``."""
    a, b = ctx.inputs
    ga = _unbroadcast(ctx, 0, g) if ctx.needs_input_grad[0] else None
    gb = _unbroadcast(ctx, 1, neg(g) * floor(a / b)) if ctx.needs_input_grad[1] else None
    return ga, gb


remainder_op = register("remainder", eager_only="no C lowering yet (integer division by zero must raise as in eager mode)", infer=_remainder_meta, eager=_remainder_eager, saves=(0, 1),
                        backward=_remainder_backward, grad_fn="RemainderBackward1")


def _remainder_scalar_eager(x, other):
    dt = _dtype.result_type(_np_meta(x), other)
    return _remainder_np(x.astype(dt.np, copy=False), np.asarray(other, dt.np))


# a Python-number divisor is an attribute: one graph edge, like torch's RemainderBackward0
remainder_scalar_op = register(
    "remainder_scalar", eager_only="no C lowering yet (integer division by zero must raise as in eager mode)", infer=lambda x, other: Meta(tuple(x.shape), _dtype.result_type(x, other)),
    eager=_remainder_scalar_eager, backward=lambda ctx, g: (g,), grad_fn="RemainderBackward0")


def remainder(a, b):
    if common.is_tensor(a) and not common.is_tensor(b):
        if not isinstance(b, (int, float, bool, np.number, np.bool_)):
            raise TypeError(f"remainder(): argument 'other' must be Tensor or Number, not "
                            f"{type(b).__name__}")
        return apply(remainder_scalar_op, a, other=b.item() if isinstance(b, np.generic) else b)
    return apply(remainder_op, *common.as_tensor_pair(a, b))


def floor_divide(a, b):
    return div(a, b, rounding_mode="floor")


true_divide = divide = div
multiply = mul
subtract = sub

# ---------------------------------------------------------------------------------------------
# unary math. Each entry: numpy implementation, backward from (ctx, g) using the saved input x
# or the saved output y, and the shape rule.


def _unary(name, eager, backward=None, uses="x", infer=common.float_meta, grad_fn=None,
           differentiable=True, c=None, eager_backward=None):
    saves = (0,) if uses == "x" else ()
    if infer is common.float_meta:
        np_fn = eager

        def eager(x):
            # integer/bool input: computed in the default float dtype, as torch does
            if x.dtype.kind in "biu":
                x = x.astype(_dtype.get_default_dtype().np)
            return np_fn(x)
    op = register(name, infer=infer, eager=eager, backward=backward, saves=saves,
                  save_outputs=(uses == "y"), grad_fn=grad_fn, differentiable=differentiable,
                  c_expr=c if callable(c) else template(c), eager_backward=eager_backward)

    def fn(x):
        return apply(op, x)
    fn.__name__ = name
    fn.op = op
    return fn


def _x(ctx):
    return ctx.inputs[0]


def _y(ctx):
    return ctx.output


def _sigmoid_np(x):
    # split by sign so neither branch overflows
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def _neg_meta(m):
    if m.dtype is _dtype.bool_:
        raise RuntimeError("Negation, the `-` operator, on a bool tensor is not supported. If you "
                           "are trying to invert a mask, use the `~` or `logical_not()` operator "
                           "instead.")
    return common.same(m)


neg = _unary("neg", np.negative, lambda ctx, g: (neg(g),), uses=None, infer=_neg_meta,
             c="(-{0})")
exp = _unary("exp", np.exp, lambda ctx, g: (g * _y(ctx),), uses="y", c="exp({0})")
log = _unary("log", np.log, lambda ctx, g: (g / _x(ctx),), c="log({0})")
log2 = _unary("log2", np.log2, lambda ctx, g: (g / (_x(ctx) * float(np.log(2.0))),),
              c="log2({0})")
log1p = _unary("log1p", np.log1p, lambda ctx, g: (g / (_x(ctx) + 1.0),),
               grad_fn="Log1PBackward0", c="log1p({0})")
expm1 = _unary("expm1", np.expm1, lambda ctx, g: (g * (_y(ctx) + 1.0),), uses="y",
               c="expm1({0})")
sqrt = _unary("sqrt", np.sqrt, lambda ctx, g: (g / (_y(ctx) * 2.0),), uses="y", c="sqrt({0})")
rsqrt = _unary("rsqrt", lambda x: 1.0 / np.sqrt(x),
               lambda ctx, g: (g * pow_scalar(_y(ctx), 3) * -0.5,), uses="y",
               c="(({ct})1 / sqrt(({ct}){0}))")
reciprocal = _unary("reciprocal", lambda x: 1.0 / x,
                    lambda ctx, g: (neg(g) * _y(ctx) * _y(ctx),), uses="y",
                    c="(({ct})1 / ({ct}){0})")
tanh = _unary("tanh", np.tanh, lambda ctx, g: (g * (1.0 - _y(ctx) * _y(ctx)),), uses="y",
              c="tanh({0})")
sigmoid = _unary("sigmoid", _sigmoid_np, lambda ctx, g: (g * _y(ctx) * (1.0 - _y(ctx)),),
                 uses="y", c="(1 / (1 + exp(-{0})))")
sin = _unary("sin", np.sin, lambda ctx, g: (g * cos(_x(ctx)),), c="sin({0})")
cos = _unary("cos", np.cos, lambda ctx, g: (neg(g) * sin(_x(ctx)),), c="cos({0})")


def _abs_meta(m):
    if m.dtype is _dtype.bool_:
        raise NotImplementedError("\"abs_cpu\" not implemented for 'Bool'")
    return common.same(m)


abs = _unary("abs", np.abs, lambda ctx, g: (g * sign(_x(ctx)),), infer=_abs_meta,
             c=lambda a, at, ct: f"fabs({a[0]})" if ct in ("float", "double") else
             f"({a[0]} < 0 ? -{a[0]} : {a[0]})")
sign = _unary("sign", lambda x: x.copy() if x.dtype == np.bool_ else np.sign(x),
              lambda ctx, g: (g * 0,), uses=None, infer=common.same,
              c="(({ct})(({0} > 0) - ({0} < 0)))")
relu = _unary("relu", lambda x: np.maximum(x, 0), uses="y", infer=common.same,
              backward=lambda ctx, g: (threshold_backward(g, _y(ctx), 0.0),),
              eager_backward=lambda ctx, g: (_threshold_backward_eager(g, ctx.output._data,
                                                                       0.0),),
              c="({0} <= 0 ? 0 : {0})")
floor = _unary("floor", np.floor, lambda ctx, g: (g * 0,), uses=None, infer=common.same,
               c="floor({0})")
ceil = _unary("ceil", np.ceil, lambda ctx, g: (g * 0,), uses=None, infer=common.same,
              c="ceil({0})")
round = _unary("round", np.round, lambda ctx, g: (g * 0,), uses=None, infer=common.same,
               c="nearbyint({0})")
trunc = _unary("trunc", np.trunc, lambda ctx, g: (g * 0,), uses=None, infer=common.same,
               c="trunc({0})")
absolute = abs
negative = neg


def square(x):
    return pow_scalar(x, 2)


def _threshold_backward_eager(g, y, threshold):
    # (torch's test: zero where y <= threshold, so a NaN y passes its gradient through)
    return np.where(y <= threshold, np.zeros((), g.dtype), g)


threshold_backward_op = register(
    "threshold_backward",
    infer=lambda g, y, threshold: Meta(common.broadcast_shapes(g.shape, y.shape), g.dtype),
    eager=_threshold_backward_eager, saves=(1,),
    c_expr=lambda a, at, ct: select(f"!({a[1]} <= {scalar(at['threshold'], ct)})", a[0], "0", ct),
    # the mask is piecewise constant in y: its gradient is zero (as torch's, not absent)
    backward=lambda ctx, gg: (threshold_backward(gg, ctx.inputs[1], ctx.attrs["threshold"]),
                              gg * 0 if ctx.needs_input_grad[1] else None))


def threshold_backward(g, y, threshold):
    """``g`` where ``y > threshold`` or ``y`` is NaN (as torch: zero where ``y <= threshold``),
    else 0: relu's gradient mask, one fused-able op."""
    return apply(threshold_backward_op, g, y, threshold=threshold)


# ---------------------------------------------------------------------------------------------
# comparisons and logic (no gradient)


def _compare_meta(a, b):
    return Meta(common.broadcast_shapes(a.shape, b.shape), _dtype.bool_)


def _compare(name, np_fn, c):
    op = register(name, infer=_compare_meta, eager=np_fn, differentiable=False,
                  c_expr=template(c))

    def fn(a, b):
        return apply(op, *common.as_tensor_pair(a, b))
    fn.__name__ = name
    fn.op = op
    return fn


eq = _compare("eq", np.equal, "({0} == {1})")
ne = _compare("ne", np.not_equal, "({0} != {1})")
lt = _compare("lt", np.less, "({0} < {1})")
le = _compare("le", np.less_equal, "({0} <= {1})")
gt = _compare("gt", np.greater, "({0} > {1})")
ge = _compare("ge", np.greater_equal, "({0} >= {1})")
logical_and = _compare("logical_and", np.logical_and, "({0} && {1})")
logical_or = _compare("logical_or", np.logical_or, "({0} || {1})")
logical_xor = _compare("logical_xor", np.logical_xor, "(!{0} != !{1})")
greater, greater_equal, less, less_equal, not_equal = gt, ge, lt, le, ne

logical_not_op = register("logical_not", infer=lambda m: Meta(tuple(m.shape), _dtype.bool_),
                          eager=np.logical_not, differentiable=False,
                          c_expr=template("(!{0})"))
isnan_op = register("isnan", infer=lambda m: Meta(tuple(m.shape), _dtype.bool_),
                    eager=np.isnan, differentiable=False, c_expr=template("({0} != {0})"))
isinf_op = register("isinf", infer=lambda m: Meta(tuple(m.shape), _dtype.bool_),
                    eager=np.isinf, differentiable=False,
                    c_expr=template("({0} == INFINITY || {0} == -INFINITY)"))


def logical_not(x):
    return apply(logical_not_op, x)


def isnan(x):
    return apply(isnan_op, x)


def isinf(x):
    return apply(isinf_op, x)


def isfinite(x):
    return logical_not(logical_or(isnan(x), isinf(x)))


def _bitwise(name, np_fn, c_op):
    def infer(a, b):
        if a.dtype.is_floating_point or b.dtype.is_floating_point:
            word = "Double" if _dtype.float64 in (a.dtype, b.dtype) else "Float"
            raise NotImplementedError(f"\"{name}_cpu\" not implemented for '{word}'")
        return _binary_meta(a, b)
    op = register(name, infer=infer, eager=np_fn, differentiable=False,
                  c_expr=template("(({ct}){0} %s ({ct}){1})" % c_op))

    def fn(a, b):
        return apply(op, *common.as_tensor_pair(a, b))
    return fn


bitwise_and = _bitwise("bitwise_and", np.bitwise_and, "&")
bitwise_or = _bitwise("bitwise_or", np.bitwise_or, "|")
bitwise_xor = _bitwise("bitwise_xor", np.bitwise_xor, "^")


def _where_meta(c, a, b):
    if c.dtype is not _dtype.bool_:
        raise RuntimeError(f"where expected condition to be a boolean tensor, but got a tensor "
                           f"with dtype {c.dtype.name.capitalize()}")
    shape = common.broadcast_shapes(c.shape, a.shape, b.shape)
    return Meta(shape, _dtype.result_type(a, b))


def _where_backward(ctx, g):
    c = ctx.inputs[0]
    zero = g * 0
    ga = _unbroadcast(ctx, 1, where(c, g, zero)) if ctx.needs_input_grad[1] else None
    gb = _unbroadcast(ctx, 2, where(c, zero, g)) if ctx.needs_input_grad[2] else None
    return None, ga, gb


where_op = register("where", infer=_where_meta, eager=np.where, saves=(0,),
                    backward=_where_backward,
                    c_expr=lambda a, at, ct: select(a[0], a[1], a[2], ct),
                    grad_fn=lambda ctx: ctx.attrs.get("_name", "WhereBackward0"))


def where(condition, a=None, b=None, *, _name=None):
    if a is None and b is None:
        return condition.nonzero(as_tuple=True)
    if not common.is_tensor(a) and not common.is_tensor(b):
        dt = _dtype.result_type(a, b)
        a, b = common.scalar_tensor(a, dt), common.scalar_tensor(b, dt)
    else:
        a, b = common.as_tensor_pair(a, b)
    if _name is not None:
        return apply(where_op, condition, a, b, _name=_name)
    return apply(where_op, condition, a, b)


# ---------------------------------------------------------------------------------------------
# clamp, casts, clone


def _clamp_eager(x, min, max):
    if min is not None and max is not None:
        return np.minimum(np.maximum(x, min), max)
    return np.maximum(x, min) if min is not None else np.minimum(x, max)


def _clamp_meta(x, min, max):
    if min is None and max is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    if not x.dtype.is_floating_point and any(isinstance(v, float) for v in (min, max)):
        return Meta(tuple(x.shape), _dtype.get_default_dtype())
    return common.same(x)


def _clamp_backward(ctx, g):
    x, lo, hi = ctx.inputs[0], ctx.attrs["min"], ctx.attrs["max"]
    if lo is not None and hi is not None:
        mask = logical_and(x >= lo, x <= hi)
    else:
        mask = x >= lo if lo is not None else x <= hi
    return (where(mask, g, g * 0),)


def _clamp_c(args, attrs, ct):
    (a,), lo, hi = args, attrs["min"], attrs["max"]
    expr = a
    if lo is not None:
        expr = f"({expr} < {scalar(lo, ct)} ? {scalar(lo, ct)} : {expr})"
    if hi is not None:
        expr = f"({expr} > {scalar(hi, ct)} ? {scalar(hi, ct)} : {expr})"
    return expr


clamp_op = register("clamp", infer=_clamp_meta, eager=_clamp_eager, saves=(0,),
                    backward=_clamp_backward, c_expr=_clamp_c,
                    grad_fn=lambda ctx: ctx.attrs.get("_name", "ClampBackward1"))


def _clamp_tensor_meta(x, lo, hi, has_min, has_max):
    present = [x] + [m for m, has in ((lo, has_min), (hi, has_max)) if has]
    return Meta(common.broadcast_shapes(*(tuple(m.shape) for m in present)),
                _dtype.result_type(*present))


def _clamp_tensor_eager(x, lo, hi, has_min, has_max):
    out = x
    if has_min:
        out = np.maximum(out, lo)
    if has_max:
        out = np.minimum(out, hi)
    return out


def _clamp_tensor_backward(ctx, g):
    """``x`` gets the gradient where it lies within the bounds; a bound gets it where it
    clipped (``max`` wins when ``min > max``)."""
    x, lo, hi = ctx.inputs
    has_min, has_max = ctx.attrs["has_min"], ctx.attrs["has_max"]
    zero = g * 0
    gx = glo = ghi = None
    if ctx.needs_input_grad[0]:
        if has_min and has_max:
            inside = logical_and(x >= lo, x <= hi)
        else:
            inside = x >= lo if has_min else x <= hi
        gx = _unbroadcast(ctx, 0, where(inside, g, zero))
    if has_min and ctx.needs_input_grad[1]:
        below = x < lo
        if has_max:
            below = logical_and(below, lo < hi)
        glo = _unbroadcast(ctx, 1, where(below, g, zero))
    if has_max and ctx.needs_input_grad[2]:
        above = x > hi
        if has_min:
            above = logical_or(above, hi < lo)
        ghi = _unbroadcast(ctx, 2, where(above, g, zero))
    return gx, glo, ghi


def _clamp_tensor_c(args, attrs, ct):
    """np.maximum then np.minimum: a NaN in x or in a bound propagates."""
    expr = args[0]
    if attrs["has_min"]:
        expr = f"(({expr}) != ({expr}) || ({expr}) > {args[1]} ? ({expr}) : {args[1]})"
    if attrs["has_max"]:
        expr = f"(({expr}) != ({expr}) || ({expr}) < {args[2]} ? ({expr}) : {args[2]})"
    return expr


clamp_tensor_op = register("clamp_tensor", infer=_clamp_tensor_meta, eager=_clamp_tensor_eager,
                           saves=(0, 1, 2), backward=_clamp_tensor_backward,
                           c_expr=_clamp_tensor_c,
                           grad_fn=lambda ctx: ctx.attrs.get("_name", "ClampBackward0"))


def clamp(x, min=None, max=None, *, _name=None):
    named = {} if _name is None else {"_name": _name}
    if common.is_tensor(min) or common.is_tensor(max):
        if min is None and max is None:
            raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")

        def bound(v):
            if v is None:
                return common.scalar_tensor(0, x.dtype)  # placeholder, never read
            return v if common.is_tensor(v) else common.scalar_tensor(v, x.dtype)
        if _name is not None:
            named["_name"] = _name[:-1] + "1"
        return apply(clamp_tensor_op, x, bound(min), bound(max), has_min=min is not None,
                     has_max=max is not None, **named)
    return apply(clamp_op, x, min=min, max=max, **named)


clip = clamp


def clamp_min(x, min):
    return clamp(x, min=min, _name="ClampMinBackward0")


def clamp_max(x, max):
    return clamp(x, max=max, _name="ClampMaxBackward0")


to_dtype_op = register(
    "to_dtype", infer=lambda x, dtype: Meta(tuple(x.shape), dtype),
    eager=lambda x, dtype: x.astype(dtype.np),
    backward=lambda ctx, g: (to_dtype(g, ctx.metas[0].dtype),), grad_fn="ToCopyBackward0",
    # a cast to bool is a test against zero, as numpy's astype(bool)
    c_expr=lambda a, at, ct: f"({a[0]} != 0)" if ct == "uint8_t" else f"(({ct}){a[0]})")


def to_dtype(x, dtype):
    if x.dtype is dtype:
        return x
    return apply(to_dtype_op, x, dtype=dtype)


clone_op = register(
    "clone", infer=lambda x, contiguous=False: common.same(x),
    # like torch's preserve_format, a copy keeps the memory layout unless asked for a
    # contiguous one
    eager=lambda x, contiguous=False: np.array(x, order="C" if contiguous else "K", copy=True),
    backward=lambda ctx, g: (g,), c_expr=template("{0}"))


def clone(x, memory_format=None):
    return apply(clone_op, x)


def contiguous_copy(x):
    """A row-major copy (``Tensor.contiguous`` of a non-contiguous tensor)."""
    return apply(clone_op, x, contiguous=True)


def lerp(a, b, weight):
    return a + (b - a) * weight


def addcmul(x, t1, t2, value=1):
    return x + t1 * t2 * value


def addcdiv(x, t1, t2, value=1):
    return x + t1 / t2 * value
