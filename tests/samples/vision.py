"""Op samples of the vision ops: upsampling (nearest, linear, bicubic) and their gradients
(pad and pad_backward have theirs in op_samples)."""
import numpy as np

import tracenet.nn.functional as F
from tracenet.ops import vision as vops

rng = np.random.default_rng(77)


def r(*shape):
    return rng.standard_normal(shape)


SAMPLES = {
    "upsample_nearest": (lambda x: F.interpolate(x, scale_factor=(1.5, 2.0), mode="nearest"),
                         [r(1, 2, 3, 2)], [0]),
    "upsample_nearest_backward": (lambda g: vops.upsample_backward(
        g, (1, 2, 3), (7,), (None,), "nearest-exact"), [r(1, 2, 7)], [0]),
    "upsample_linear": (lambda x: F.interpolate(x, size=(4, 5), mode="bilinear",
                                                align_corners=False), [r(1, 2, 3, 2)], [0]),
    "upsample_linear_backward": (lambda g: vops.upsample_backward(
        g, (1, 1, 2, 3, 2), (3, 2, 4), (None, None, None), "linear", True),
        [r(1, 1, 3, 2, 4)], [0]),
    "upsample_bicubic": (lambda x: F.interpolate(x, scale_factor=0.6, mode="bicubic",
                                                 antialias=True), [r(1, 1, 5, 4)], [0]),
    "upsample_bicubic_backward": (lambda g: vops.upsample_backward(
        g, (1, 1, 3, 3), (4, 5), (None, None), "cubic", False), [r(1, 1, 4, 5)], [0]),
}
