"""One sample invocation per registry op, shared by the IR tests (trace, verify, interpret,
IR backward vs eager) and later by the compiler tests.

Each sample: (function of tensors, list of input arrays, indices of inputs that require grad).
Inputs are float64 unless the op needs otherwise, so gradient checks are tight.
"""
import numpy as np

import tracenet as torch
import tracenet.nn.functional as F
from tracenet.ops import index as ix, nn as nnops
from tracenet.ops.elementwise import threshold_backward
from tracenet.ops.gemm import gemm
from tracenet.optim.update_ops import adam_step, sgd_step
from tracenet.ops.registry import REGISTRY, apply

rng = np.random.default_rng(1234)


def r(*shape, low=None):
    a = rng.standard_normal(shape)
    if low is not None:
        a = np.abs(a) + low
    return a


def idx(*shape, high):
    return rng.integers(0, high, shape).astype(np.int64)


def _conv_grad_input(g, w):
    return nnops.conv_backward_input(g, w, (2, 3, 7, 6), stride=(2, 1), padding=(1, 0),
                                     dilation=(1, 2), groups=1)


def _conv_grad_weight(g, x):
    return nnops.conv_backward_weight(g, x, (4, 3, 3, 2), stride=(2, 1), padding=(1, 0),
                                      dilation=(1, 2), groups=1)


def _apply(name, *inputs, **attrs):
    return apply(REGISTRY[name], *inputs, **attrs)


def _pool_backward(g, x):
    _, i = F.max_pool2d(x.detach(), 2, return_indices=True)
    return nnops.max_pool_backward(g, i, tuple(x.shape))


SAMPLES = {
    "add": (lambda a, b: a + b, [r(3, 4), r(4)], [0, 1]),
    "sub": (lambda a, b: a - b, [r(3, 4), r(3, 1)], [0, 1]),
    "mul": (lambda a, b: a * b * 2.0, [r(2, 3), r(2, 3)], [0, 1]),
    "div": (lambda a, b: a / b, [r(2, 3), r(3, low=0.5)], [0, 1]),
    "div_rounding": (lambda a, b: torch.div(a, b, rounding_mode="floor") * a,
                     [r(2, 3), r(3, low=0.5)], [0]),
    "remainder": (lambda a, b: a % b, [r(2, 3), r(3, low=0.5)], [0, 1]),
    "pow": (lambda a, b: a ** b, [r(2, 3, low=0.5), r(2, 3)], [0, 1]),
    "pow_scalar": (lambda a: a ** 3, [r(2, 3)], [0]),
    "maximum": (lambda a, b: torch.maximum(a, b), [r(4), r(4)], [0, 1]),
    "minimum": (lambda a, b: torch.minimum(a, b), [r(4), r(4)], [0, 1]),
    "neg": (lambda a: -a, [r(3)], [0]),
    "exp": (lambda a: a.exp(), [r(3)], [0]),
    "log": (lambda a: a.log(), [r(3, low=0.5)], [0]),
    "log2": (lambda a: a.log2(), [r(3, low=0.5)], [0]),
    "log1p": (lambda a: a.log1p(), [r(3, low=0.1)], [0]),
    "expm1": (lambda a: a.expm1(), [r(3)], [0]),
    "sqrt": (lambda a: a.sqrt(), [r(3, low=0.5)], [0]),
    "rsqrt": (lambda a: a.rsqrt(), [r(3, low=0.5)], [0]),
    "reciprocal": (lambda a: a.reciprocal(), [r(3, low=0.5)], [0]),
    "tanh": (lambda a: a.tanh(), [r(3)], [0]),
    "sigmoid": (lambda a: a.sigmoid(), [r(3)], [0]),
    "sin": (lambda a: a.sin(), [r(3)], [0]),
    "cos": (lambda a: a.cos(), [r(3)], [0]),
    "abs": (lambda a: a.abs(), [r(3, low=0.1) * np.array([1, -1, 1])], [0]),
    "sign": (lambda a: a.sign() * a, [r(3, low=0.1)], [0]),
    "relu": (lambda a: a.relu(), [r(5)], [0]),
    "floor": (lambda a: a.floor() + a, [r(4)], [0]),
    "ceil": (lambda a: a.ceil() + a, [r(4)], [0]),
    "round": (lambda a: a.round() + a, [r(4)], [0]),
    "trunc": (lambda a: a.trunc() + a, [r(4)], [0]),
    "threshold_backward": (lambda g, y: threshold_backward(g, y, 0.0),
                           [r(5), r(5)], [0]),
    "eq": (lambda a, b: (a == b), [r(3), r(3)], []),
    "ne": (lambda a, b: (a != b), [r(3), r(3)], []),
    "lt": (lambda a, b: (a < b), [r(3), r(3)], []),
    "le": (lambda a, b: (a <= b), [r(3), r(3)], []),
    "gt": (lambda a, b: (a > b), [r(3), r(3)], []),
    "ge": (lambda a, b: (a >= b), [r(3), r(3)], []),
    "logical_and": (lambda a, b: (a > 0) & (b > 0), [r(3), r(3)], []),
    "logical_or": (lambda a, b: (a > 0) | (b > 0), [r(3), r(3)], []),
    "logical_xor": (lambda a, b: (a > 0) ^ (b > 0), [r(3), r(3)], []),
    "logical_not": (lambda a: ~(a > 0), [r(3)], []),
    "isnan": (lambda a: a.isnan(), [r(3)], []),
    "isinf": (lambda a: a.isinf(), [r(3)], []),
    "bitwise_and": (lambda a, b: a & b, [idx(3, high=8), idx(3, high=8)], []),
    "bitwise_or": (lambda a, b: a | b, [idx(3, high=8), idx(3, high=8)], []),
    "bitwise_xor": (lambda a, b: a ^ b, [idx(3, high=8), idx(3, high=8)], []),
    "where": (lambda c, a, b: torch.where(c > 0, a, b), [r(2, 3), r(2, 3), r(3)], [1, 2]),
    "clamp": (lambda a: a.clamp(-0.5, 0.5), [r(6)], [0]),
    "to_dtype": (lambda a: a.float().double() * 1.0, [r(3)], [0]),
    "clone": (lambda a: a.clone(), [r(3)], [0]),
    "sum": (lambda a: a.sum(1), [r(2, 3)], [0]),
    "mean": (lambda a: a.mean((0, 2), keepdim=True), [r(2, 3, 4)], [0]),
    "amax": (lambda a: a.amax(1), [r(3, 4)], [0]),
    "amin": (lambda a: a.amin(0), [r(3, 4)], [0]),
    "argmax": (lambda a: a.argmax(1), [r(3, 4)], []),
    "argmin": (lambda a: a.argmin(), [r(3, 4)], []),
    "max_dim": (lambda a: a.max(1).values, [r(3, 4)], [0]),
    "min_dim": (lambda a: a.min(0, keepdim=True)[0], [r(3, 4)], [0]),
    "var": (lambda a: a.var(1), [r(3, 4)], [0]),
    "std": (lambda a: a.std(0, correction=0), [r(3, 4)], [0]),
    "all": (lambda a: (a > 0).all(1), [r(3, 4)], []),
    "any": (lambda a: (a > 0).any(), [r(3, 4)], []),
    "view": (lambda a: a.view(4, 3), [r(3, 4)], [0]),
    "permute": (lambda a: a.permute(2, 0, 1), [r(2, 3, 4)], [0]),
    "expand": (lambda a: a.expand(3, 2, 4), [r(2, 1)], [0]),
    "cat": (lambda a, b: torch.cat([a, b], 1), [r(2, 3), r(2, 2)], [0, 1]),
    "stack": (lambda a, b: torch.stack([a, b], 1), [r(2, 3), r(2, 3)], [0, 1]),
    "flip": (lambda a: a.flip(0), [r(3, 2)], [0]),
    "detach": (lambda a: a.detach() * a, [r(3)], [0]),
    "index": (lambda a: a[1:, ::2] + a[torch.tensor([0, 2, 2])].sum(), [r(3, 4)], [0]),
    "index_backward": (lambda g: ix.index_backward(g, [], (4, 3), (("s", 1, 3, None),)),
                       [r(2, 3)], [0]),
    "index_put": (lambda a, v: ix.setitem_value(a, (slice(None), 1), v), [r(3, 4), r(3)],
                  [0, 1]),
    "gather": (lambda a: a.gather(1, torch.tensor([[0, 0], [1, 0], [2, 1]])), [r(3, 3)], [0]),
    "scatter_add": (lambda a, s: a.scatter_add(0, torch.tensor([[0, 1], [0, 0]]), s),
                    [r(2, 2), r(2, 2)], [0, 1]),
    "mm": (lambda a, b: a.mm(b), [r(3, 4), r(4, 2)], [0, 1]),
    "addmm": (lambda c, a, b: torch.addmm(c, a, b), [r(2), r(3, 4), r(4, 2)], [0, 1, 2]),
    "gemm": (lambda a, b, c: gemm(a, b, c, trans_a=True, trans_b=True, alpha=0.5, beta=2.0),
             [r(4, 3), r(2, 4), r(2)], [0, 1, 2]),
    "bmm": (lambda a, b: a.bmm(b), [r(2, 3, 4), r(2, 4, 2)], [0, 1]),
    "convolution": (lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(1, 0),
                                             dilation=(1, 2)),
                    [r(2, 3, 7, 6), r(4, 3, 3, 2), r(4)], [0, 1, 2]),
    "conv_backward_input": (_conv_grad_input, [r(2, 4, 4, 4), r(4, 3, 3, 2)], [0, 1]),
    "conv_backward_weight": (_conv_grad_weight, [r(2, 4, 4, 4), r(2, 3, 7, 6)], [0, 1]),
    "max_pool": (lambda x: F.max_pool2d(x, 3, 2, padding=1), [r(2, 3, 7, 7)], [0]),
    "max_pool_backward": (_pool_backward, [r(2, 3, 3, 3), r(2, 3, 6, 7)], [0]),
    "avg_pool": (lambda x: F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False),
                 [r(2, 3, 7, 7)], [0]),
    "avg_pool_backward": (lambda g: _apply("avg_pool_backward", g,
                                                    input_shape=(1, 2, 5, 5), kernel=(2, 2),
                                                    stride=(2, 2), padding=(0, 0),
                                                    ceil_mode=True, count_include_pad=True,
                                                    divisor_override=None),
                          [r(1, 2, 3, 3)], [0]),
    "softmax": (lambda x: F.softmax(x, 1), [r(3, 4)], [0]),
    "log_softmax": (lambda x: F.log_softmax(x, 0), [r(3, 4)], [0]),
    "pad": (lambda x: F.pad(x, (1, 2, 2, 1), mode="reflect"), [r(1, 2, 4, 4)], [0]),
    "pad_backward": (lambda g: _apply("pad_backward", g, input_shape=(1, 2, 3, 3),
                                               pads=(1, 1, 1, 1), mode="replicate"),
                     [r(1, 2, 5, 5)], [0]),
    "mse_loss": (lambda a, b: F.mse_loss(a, b), [r(3, 4), r(3, 4)], [0, 1]),
    "nll_loss": (lambda x, w: F.nll_loss(x, torch.tensor([0, 2, 1]), weight=w),
                 [r(3, 4), r(4, low=0.5)], [0]),
    "nll_loss_backward": (lambda g: _apply(
        "nll_loss_backward", g, torch.tensor([1, 0, 3]), input_shape=(3, 4), reduction="none",
        ignore_index=-100), [r(3)], [0]),
    "sgd_step": (lambda p, g, b, h: sgd_step(p, g, b, h, nesterov=True)[0],
                 [r(3, 2), r(3, 2), r(3, 2), np.array([0.1, 0.9, 0.1, 0.01, 0.0])], []),
    "adam_step": (lambda p, g, m, v, vm, h: adam_step(p, g, m, v, vm, h, amsgrad=True)[0],
                  [r(4), r(4), r(4), r(4, low=0.1), r(4, low=0.1),
                   np.array([1e-3, 0.9, 0.999, 1e-8, 0.01, 3.0])], []),
}

# more samples, one module per area: tests/samples/<area>.py defines SAMPLES (and optionally
# UNTRACEABLE) the same way
def _merge_area_samples():
    import importlib
    import os
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")
    for fname in sorted(os.listdir(here)):
        if fname.endswith(".py") and not fname.startswith("_"):
            mod = importlib.import_module(f"samples.{fname[:-3]}")
            for name, sample in mod.SAMPLES.items():
                if name in SAMPLES:
                    raise ValueError(f"two samples for op {name}")
                SAMPLES[name] = sample
            UNTRACEABLE.update(getattr(mod, "UNTRACEABLE", {}))


# ops that cannot be traced at all, with the reason
UNTRACEABLE = {"nonzero": "its output shape depends on the data",
               "size_value": "it has no tensor inputs: only a symbolic batch size makes one "
                             "(tests/test_symbolic_batch.py)"}

_merge_area_samples()
