"""Samples of the loss ops (mse_loss and nll_loss are in op_samples.py)."""
import numpy as np

import tracenet.nn.functional as F

rng = np.random.default_rng(2024)


def prob(*shape):
    """Probabilities away from 0 and 1, so finite differences stay inside the domain."""
    return rng.random(shape) * 0.8 + 0.1


def r(*shape):
    return rng.standard_normal(shape)


SAMPLES = {
    "binary_cross_entropy": (lambda x, t, w: F.binary_cross_entropy(x, t, weight=w),
                             [prob(3, 4), prob(3, 4), prob(4)], [0, 1]),
    "binary_cross_entropy_with_logits": (
        lambda x, t, w, pw: F.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw,
                                                               reduction="sum"),
        [r(3, 4) * 3, prob(3, 4), prob(3, 1), prob(4) * 2], [0, 1]),
    "smooth_l1_loss": (lambda x, t: F.smooth_l1_loss(x, t, reduction="none", beta=0.5),
                       [r(3, 4), r(3, 4)], [0, 1]),
    "huber_loss": (lambda x, t: F.huber_loss(x, t, delta=0.8), [r(2, 5), r(2, 5)], [0, 1]),
}
