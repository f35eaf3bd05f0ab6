"""Samples for the ops of catalogue part 2: norms, distances, batched products, scatter,
histc, pooling helpers."""
import numpy as np

import tracenet as torch
import tracenet.nn.functional as F

rng = np.random.default_rng(2468)


def r(*shape):
    return rng.standard_normal(shape)


SAMPLES = {
    "linalg_vector_norm": (lambda a: torch.linalg.vector_norm(a, 3, 1), [r(3, 4)], [0]),
    "cdist": (lambda a, b: torch.cdist(a, b), [r(2, 3, 4), r(2, 5, 4)], [0, 1]),
    "baddbmm": (lambda c, a, b: torch.baddbmm(c, a, b, beta=0.5, alpha=2.0),
                [r(2, 3, 5), r(2, 3, 4), r(2, 4, 5)], [0, 1, 2]),
    "addbmm": (lambda c, a, b: torch.addbmm(c, a, b), [r(3, 5), r(2, 3, 4), r(2, 4, 5)],
               [0, 1, 2]),
    "scatter": (lambda x, s, i: torch.scatter(x, 1, i, s),
                [r(3, 4), r(3, 2), np.array([[0, 3], [1, 2], [2, 0]])], [0, 1]),
    "histc": (lambda a: torch.histc(a, 5, -1.0, 1.0), [r(20)], []),
    "adaptive_max_pool": (lambda x: F.adaptive_max_pool2d(x, (3, 2)), [r(2, 3, 7, 5)], [0]),
    "im2col": (lambda x: F.unfold(x, (2, 3), dilation=(1, 2), padding=1, stride=(2, 1)),
               [r(2, 3, 6, 7)], [0]),
    "embedding_renorm": (lambda w, i: F.embedding(i, w * 1.0, max_norm=1.5),
                         [r(6, 3), np.array([[0, 2, 2], [5, 1, 0]])], []),
    "col2im": (lambda c: F.fold(c, (4, 5), 2, padding=1, stride=2), [r(2, 12, 9)], [0]),
}
