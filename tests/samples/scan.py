"""Samples of the loop op (``scan``) and of ``zeros`` (a loop's zero initial state, where its
backward's gradient sums start)."""
import numpy as np

import tracenet as torch
from tracenet.ops.scan import scan, zeros

rng = np.random.default_rng(11)


def _loop(x, h, w):
    """A small recurrence: traced, one scan node; eager, a Python loop."""
    def step(carry, xs):
        h = torch.tanh(xs[0] + carry[0] @ w)
        return (h,), (h * 2.0, xs[0] * h)
    (hn,), (ys, zs) = scan(step, (h,), (x,))
    return ys.sum(0) + zs.sum(0) + hn


SAMPLES = {
    "scan": (_loop, [rng.standard_normal((5, 2, 3)), rng.standard_normal((2, 3)),
                     rng.standard_normal((3, 3)) * 0.5], [0, 1, 2]),
    "zeros": (lambda x: x * 2.0 + zeros(x.shape, x.dtype), [rng.standard_normal((2, 3))], [0]),
}
