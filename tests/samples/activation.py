"""Samples of the activation, dropout-mask and embedding ops."""
import numpy as np

import tracenet as torch
import tracenet.nn.functional as F
from tracenet.ops import activation as act

rng = np.random.default_rng(77)

# away from every kink (0 for the rectifiers, 0.5 for softplus with beta=2 and threshold=1)
POINTS = np.array([[-2.1, -0.7, -0.2, 0.15], [0.3, 0.8, 1.4, -1.3], [2.2, -3.0, 0.65, 0.45]])


def r(*shape):
    return rng.standard_normal(shape)


def idx(*shape, high):
    return rng.integers(0, high, shape).astype(np.int64)


SAMPLES = {
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), [POINTS], [0]),
    "leaky_relu_backward": (lambda g, x: act.leaky_relu_backward(g, x, -0.3),
                            [r(3, 4), POINTS], [0]),
    "elu": (lambda x: F.elu(x, 0.7), [POINTS], [0]),
    "elu_backward": (lambda g, x: act.elu_backward(g, x, 1.3, 1.05, 0.9), [r(3, 4), POINTS],
                     [0, 1]),
    "gelu": (lambda x: F.gelu(x), [POINTS], [0]),
    "gelu_backward": (lambda g, x: (act.gelu_backward(g, x, "tanh") +
                                    act.gelu_backward(g, x, "none")),
                      [r(3, 4), POINTS], [0, 1]),
    "softplus": (lambda x: F.softplus(x, 2.0, 1.0), [POINTS], [0]),
    "softplus_backward": (lambda g, x: act.softplus_backward(g, x, 2.0, 1.0), [r(3, 4), POINTS],
                          [0, 1]),
    "silu": (lambda x: F.silu(x), [POINTS], [0]),
    "mish": (lambda x: F.mish(x), [POINTS * 3], [0]),
    # both sides of the kinks at -3 and 3
    "hardswish": (lambda x: F.hardswish(x), [POINTS * 1.7], [0]),
    "hardsigmoid": (lambda x: F.hardsigmoid(x), [POINTS * 1.7], [0]),
    "log_sigmoid": (lambda x: F.logsigmoid(x), [POINTS * 4], [0]),
    # both bounds crossed, none hit exactly
    "hardtanh": (lambda x: F.hardtanh(x, -0.9, 1.1), [POINTS], [0]),
    "prelu": (lambda x, w: F.prelu(x, w), [np.stack([POINTS, -POINTS]), np.array([0.2, -0.4, 0.7])],
              [0, 1]),
    "glu": (lambda x: F.glu(x, 1), [POINTS * 2], [0]),
    "dropout_mask": (lambda x, s: x * act.dropout_mask(s, (3, 4), 0.4, torch.float64),
                     [r(3, 4), np.array(12345, np.int64)], [0]),
    # padding_idx and scale_grad_by_freq change the gradient on purpose (not a derivative):
    # their backward paths are checked against torch in test_catalogue_activation.py
    "embedding": (lambda w, i: act.embedding(w, i),
                  [r(5, 3), np.array([[1, 2, 1], [0, 4, 2]], np.int64)], [0]),
    "embedding_backward": (lambda g, i: act.embedding_backward(g, i, 5, 2, True),
                           [r(2, 3, 3), np.array([[1, 2, 1], [0, 4, 2]], np.int64)], [0]),
}
