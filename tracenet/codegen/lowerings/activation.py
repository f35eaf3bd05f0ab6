"""C lowerings of the activation ops (pointwise C expressions, fused by the elementwise
kernels), of the dropout mask (``templates/activation_dropout_mask.c.j2``: the same
counter-based generator as the numpy implementation, so a seed gives the same mask in both) and
of embedding lookup and its gradient (``templates/activation_embedding*.c.j2``)."""
import math

from ...ops import activation as act
from ...ops.common import numel
from ..kernels import C_EXPR, Kernel, _fmt_float, ctype, lowering, node_lines, signature
from ..templates import render

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _lit(value, ct):
    """A floating-point literal of the result type."""
    return f"(({ct}){_fmt_float(value, ct)})"


def _leaky_relu(a, at, ct):
    return f"({a[0]} > 0 ? {a[0]} : {a[0]} * {_lit(at['negative_slope'], ct)})"


def _leaky_relu_backward(a, at, ct):
    g, x = a
    return f"({x} > 0 ? {g} : {g} * {_lit(at['negative_slope'], ct)})"


def _elu(a, at, ct):
    x = a[0]
    neg = f"expm1({x} * {_lit(at['input_scale'], ct)}) * {_lit(at['alpha'] * at['scale'], ct)}"
    return f"({x} > 0 ? {x} * {_lit(at['scale'], ct)} : {neg})"


def _elu_backward(a, at, ct):
    g, x = a
    k = at["input_scale"] * at["alpha"] * at["scale"]
    neg = f"{g} * {_lit(k, ct)} * exp({x} * {_lit(at['input_scale'], ct)})"
    return f"({x} > 0 ? {g} * {_lit(at['scale'], ct)} : {neg})"


def _tanh_inner(x, ct):
    return (f"tanh({_lit(act._K_TANH, ct)} * ({x} + {_lit(act._C_TANH, ct)} * {x} * {x} * "
            f"{x}))")


def _gelu(a, at, ct):
    x = a[0]
    if at["approximate"] == "tanh":
        return f"({_lit(0.5, ct)} * {x} * (1 + {_tanh_inner(x, ct)}))"
    return f"({_lit(0.5, ct)} * {x} * (1 + erf({x} * {_lit(_SQRT1_2, ct)})))"


def _gelu_backward(a, at, ct):
    g, x = a
    if at["approximate"] == "tanh":
        t = _tanh_inner(x, ct)
        du = f"{_lit(act._K_TANH, ct)} * (1 + {_lit(3 * act._C_TANH, ct)} * {x} * {x})"
        return (f"({g} * ({_lit(0.5, ct)} * (1 + {t}) + {_lit(0.5, ct)} * {x} * "
                f"(1 - {t} * {t}) * {du}))")
    cdf = f"{_lit(0.5, ct)} * (1 + erf({x} * {_lit(_SQRT1_2, ct)}))"
    pdf = f"{_lit(_INV_SQRT_2PI, ct)} * exp({_lit(-0.5, ct)} * {x} * {x})"
    return f"({g} * ({cdf} + {x} * {pdf}))"


def _softplus(a, at, ct):
    x = a[0]
    bx = f"({x} * {_lit(at['beta'], ct)})"
    return (f"({bx} > {_lit(at['threshold'], ct)} ? {x} : log1p(exp({bx})) / "
            f"{_lit(at['beta'], ct)})")


def _softplus_backward(a, at, ct):
    g, x = a
    bx = f"({x} * {_lit(at['beta'], ct)})"
    return f"({bx} > {_lit(at['threshold'], ct)} ? {g} : {g} * exp({bx}) / (exp({bx}) + 1))"


C_EXPR.update({
    "leaky_relu": _leaky_relu, "leaky_relu_backward": _leaky_relu_backward,
    "elu": _elu, "elu_backward": _elu_backward,
    "gelu": _gelu, "gelu_backward": _gelu_backward,
    "softplus": _softplus, "softplus_backward": _softplus_backward,
})


@lowering("dropout_mask")
def lower_dropout_mask(name, node, exported):
    seed, out = node.inputs[0], node.outputs[0]
    ct = ctype(out)
    p = node.attrs["p"]
    reads, writes = [("seed", seed)], [("out", out)]
    src = render("activation_dropout_mask.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), ctype=ct, numel=numel(out.shape), p=p,
                 bits=act.UNIT_BITS, threshold=act.drop_threshold(p),
                 scale=_lit(act.mask_scale(p), ct), golden=hex(act.GOLDEN),
                 mix1=hex(act.MIX1), mix2=hex(act.MIX2))
    return Kernel(name, reads, writes, src)


@lowering("embedding")
def lower_embedding(name, node, exported):
    weight, idx = node.inputs
    out = node.outputs[0]
    reads, writes = [("weight", weight), ("idx", idx)], [("out", out)]
    src = render("activation_embedding.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), ctype=ctype(out), count=numel(idx.shape),
                 D=weight.shape[1], num_weights=weight.shape[0],
                 is_float=out.dtype.is_floating_point)
    return Kernel(name, reads, writes, src)


@lowering("embedding_backward")
def lower_embedding_backward(name, node, exported):
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
