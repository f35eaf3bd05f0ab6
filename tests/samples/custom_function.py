"""A custom autograd.Function under tracing: the ``custom_function`` node."""
import numpy as np

import tracenet as torch

rng = np.random.default_rng(7)


class _ScaledSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k):
        ctx.save_for_backward(x)
        ctx.k = k
        return x * x * k

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x * (2 * ctx.k), None


SAMPLES = {
    "custom_function": (lambda x: _ScaledSquare.apply(x, 1.5), [rng.standard_normal((3, 4))],
                        [0]),
}
