"""Samples of the batch-norm, layer-norm and group-norm ops and of the pooling extras (max
unpooling, adaptive average pooling)."""
import numpy as np

import tracenet as torch
import tracenet.nn.functional as F
from tracenet.ops import normalization as normops
from tracenet.ops.registry import REGISTRY, apply

rng = np.random.default_rng(4321)


def r(*shape, low=None):
    a = rng.standard_normal(shape)
    if low is not None:
        a = np.abs(a) + low
    return a


# indices of a 2x2/2 max pooling of a 5x6 image (no position twice), for the unpooling samples
_, _UNPOOL_IDX = F.max_pool2d(torch.from_numpy(r(2, 3, 5, 6)), 2, return_indices=True)
_RUNNING = (torch.from_numpy(r(3)), torch.from_numpy(r(3, low=0.5)))


def _batch_norm(x, w, b):
    train = F.batch_norm(x, None, None, w, b, training=True, eps=1e-3)
    evaluated = F.batch_norm(x, *_RUNNING, weight=w, bias=b, training=False)
    return train + evaluated * 0.5


def _batch_norm_backward(g, x, w):
    bc = (1, 3, 1)
    mean, var = normops.batch_norm_stats(x)
    gx, gw, gb = normops.batch_norm_backward(g, x, mean, var, w, eps=1e-3, training=True)
    ex, ew, eb = normops.batch_norm_backward(g, x, *_RUNNING, w, eps=1e-5, training=False)
    nx, nw, nb = normops.batch_norm_backward(g * 0.3, x, mean, var, eps=1e-2, training=True)
    return (gx + (gw * 0.7 + gb * 1.3).reshape(bc) + ex * 0.5 + (ew - eb * 0.2).reshape(bc)
            + nx + (nw * 1.1 + nb).reshape(bc))


def _stats(x):
    mean, var = normops.batch_norm_stats(x)
    return mean + var * 2


def _layer_norm(x, w, b):
    full = normops.layer_norm(x, w, b, norm_ndim=2, eps=1e-3)
    plain = normops.layer_norm(x, norm_ndim=1, eps=1e-5)
    return full + plain * 0.5 + normops.layer_norm(x, w, norm_ndim=2, eps=1e-2) * 0.3


def _group_norm(x, w, b):
    full = normops.group_norm(x, w, b, groups=2, eps=1e-3)
    plain = normops.group_norm(x, groups=4, eps=1e-5)
    return full + plain * 0.5 + normops.group_norm(x, None, b, groups=1, eps=1e-2) * 0.3


SAMPLES = {
    "layer_norm": (_layer_norm, [r(2, 3, 4, 5), r(4, 5), r(4, 5)], [0, 1, 2]),
    "group_norm": (_group_norm, [r(2, 4, 3, 2), r(4), r(4)], [0, 1, 2]),
    "batch_norm_stats": (_stats, [r(4, 3, 2, 2)], []),
    "batch_norm": (_batch_norm, [r(3, 3, 4), r(3), r(3)], [0, 1, 2]),
    "batch_norm_backward": (_batch_norm_backward, [r(2, 3, 5), r(2, 3, 5), r(3)], [0, 1, 2]),
    "max_unpool": (lambda x: F.max_unpool2d(x, _UNPOOL_IDX, 2, output_size=(5, 7)),
                   [r(2, 3, 2, 3)], [0]),
    "max_unpool_backward": (lambda g: apply(REGISTRY["max_unpool_backward"], g, _UNPOOL_IDX),
                            [r(2, 3, 5, 6)], [0]),
    "adaptive_avg_pool": (lambda x: F.adaptive_avg_pool2d(x, (3, 4)), [r(2, 3, 7, 5)], [0]),
    "adaptive_avg_pool_backward": (
        lambda g: apply(REGISTRY["adaptive_avg_pool_backward"], g, input_shape=(2, 2, 5, 7)),
        [r(2, 2, 3, 4)], [0]),
}
