"""Samples for tensor-API registry ops beyond the core set in op_samples.py."""
import numpy as np

import tracenet as torch

rng = np.random.default_rng(4321)


def r(*shape):
    return rng.standard_normal(shape)


SAMPLES = {
    "remainder_scalar": (lambda a: a % 0.7, [r(3, 4)], [0]),
    "clamp_tensor": (lambda a, lo, hi: a.clamp(lo, hi + 2.0), [r(3, 4), r(4), r(3, 1)],
                     [0, 1, 2]),
    "dot": (lambda a, b: torch.dot(a, b), [r(5), r(5)], [0, 1]),
    "mv": (lambda a, v: a.mv(v), [r(3, 4), r(4)], [0, 1]),
    "split": (lambda a: a.split([1, 3], 1)[1] * 2, [r(2, 4)], [0]),
    "unbind": (lambda a: a.unbind(1)[2] * 3, [r(2, 4)], [0]),
    "repeat": (lambda a: a.repeat(2, 1, 3), [r(2, 3)], [0]),
    "logsumexp": (lambda a: a.logsumexp(1), [r(3, 4)], [0]),
    "sort": (lambda a: a.sort(1, descending=True)[0] * 2, [r(3, 5)], [0]),
    "topk": (lambda a: a.topk(2, 0)[0] * 2, [r(4, 3)], [0]),
    "cumsum": (lambda a: a.cumsum(1), [r(3, 4)], [0]),
    "cumprod": (lambda a: a.cumprod(1), [np.array([[0.5, -1.2, 0.0, 2.0, 0.7],
                                                   [1.1, 0.0, 0.3, 0.0, -0.4],
                                                   [0.9, 1.3, -0.8, 1.5, 0.6]])], [0]),
    "tril": (lambda a: a.tril(-1), [r(2, 3, 4)], [0]),
    "triu": (lambda a: a.triu(1), [r(4, 3)], [0]),
    "roll": (lambda a: a.roll((1, -2), (0, 1)), [r(3, 5)], [0]),
    "diag": (lambda a: torch.diag(a, 1), [r(3, 5)], [0]),
    "one_hot": (lambda a: torch.nn.functional.one_hot(a, 5), [np.array([[0, 4, 2], [1, 1, 3]])],
                []),
}

# data-dependent output shapes: eager only
UNTRACEABLE = {"bincount": "its output shape depends on the data",
               "unique": "its output shape depends on the data"}
