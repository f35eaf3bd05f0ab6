"""Samples of the optimizer-update ops (sgd_step and adam_step are in op_samples.py)."""
import numpy as np

from tracenet.optim.update_ops import adagrad_step, rmsprop_step

rng = np.random.default_rng(7)


def r(*shape, low=None):
    a = rng.standard_normal(shape)
    return a if low is None else np.abs(a) + low


SAMPLES = {
    # hyper = [lr, alpha, eps, weight_decay, momentum]
    "rmsprop_step": (lambda p, g, sq, b, a, h: rmsprop_step(p, g, sq, b, a, h, centered=True)[0],
                     [r(3, 2), r(3, 2), r(3, 2, low=1.0), r(3, 2), r(3, 2) * 0.1,
                      np.array([1e-2, 0.9, 1e-8, 0.01, 0.5])], []),
    # hyper = [lr, lr_decay, weight_decay, eps, step]
    "adagrad_step": (lambda p, g, s, h: adagrad_step(p, g, s, h, maximize=True)[0],
                     [r(4), r(4), r(4, low=0.1), np.array([1e-2, 0.1, 0.01, 1e-10, 2.0])], []),
}
