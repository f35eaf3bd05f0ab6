"""Shape conditions of convolution kernel forms that the fusion pass groups nodes for. The code
generator (a layer above) takes its forms by the same conditions, so they live here, once:
``codegen/lowerings/conv_winograd_s2.py`` is the kernel they describe."""
from .._dtype import float32, float64

# Channel pairs (in x out) from which the stride-2 phases' Winograd forms are taken: below, the
# transforms cost about what the products save (one thread, a 1x1 convolution, this one and a
# relu, forward and backward at batch 32, against the general and phased kernels: 16 -> 32 on
# 32x32 and 32 -> 64 on 16x16, the ResNet's, win; 16 -> 16 on 16x16 0.97-0.98x, 16 -> 8 0.97x,
# 8 -> 16 0.97x, 8 -> 8 on 16x16 0.95x, on 32x32 1.02-1.03x; 12 -> 12 on 8x8 1.14x)
MIN_CHANNEL_PAIRS = 512


def enough_channels(c, o):
    return c * o >= MIN_CHANNEL_PAIRS


def input_tile(h, w):
    """Image-gradient values per tile side of the stride-2 input gradient of an h x w image: 8
    (the odd values F(4, 2) of five output-gradient values, the even ones w1 alone: 81 products
    per 8x8 values against 25 per 4x4) on whole tiles, else 4."""
    return 8 if h % 8 == 0 and w % 8 == 0 else 4


def folds_shortcut(conv, shortcut):
    """Whether the input gradient ``conv`` (a ``conv_backward_input``) takes the stride-2 tiles
    of 8x8 values and the input gradient ``shortcut`` of a 1x1 stride-2 convolution of the same
    image-gradient shape can join its even-even points (``conv_winograd_s2.py``'s docstring):
    float, 2-d, one group, no dilation, static channels and sizes, the output gradients' sizes
    half the image gradient's."""
    if conv.op != "conv_backward_input" or shortcut.op != "conv_backward_input":
        return False
    (gy, w), (gs, ws), dx = conv.inputs, shortcut.inputs, conv.output
    if dx.dtype not in (float32, float64) or \
            any(v.dtype is not dx.dtype for v in (gy, w, gs, ws, shortcut.output)) or \
            len(dx.shape) != 4 or len(w.shape) != 4 or len(ws.shape) != 4:
        return False
    sizes = [*dx.shape[1:], *shortcut.output.shape[1:], *gy.shape[1:], *gs.shape[1:]]
    if not all(isinstance(d, int) for d in sizes) or \
            tuple(dx.shape[1:]) != tuple(shortcut.output.shape[1:]):
        return False
    _, c, h, wd = dx.shape
    geometry = [(conv.attrs, (3, 3), (1, 1)), (shortcut.attrs, (1, 1), (0, 0))]
    return (tuple(w.shape[2:]) == (3, 3) and tuple(ws.shape[2:]) == (1, 1) and
            all(tuple(a["stride"]) == (2, 2) and tuple(a["padding"]) == pad and
                tuple(a["dilation"]) == (1, 1) and a["groups"] == 1
                for a, _, pad in geometry) and
            enough_channels(c, gy.shape[1]) and input_tile(h, wd) == 8 and
            tuple(gy.shape[2:]) == tuple(gs.shape[2:]) == (h // 2, wd // 2))


# Output positions per plane from which a 1x1 stride-2 shortcut's forward runs inside the 3x3
# stride-2 forward (``pairs_shortcut_forward``): one thread, the ResNet's kernels at batch 32,
# medians of 40 calls, against the two kernels: 16 -> 32 on 16x16 outputs 504 against
# 433 + 88 us (inference); 32 -> 64 on 8x8 398 against 329 + 51 us (inference), 434 against
# 346 + 59 us (training): its blocks of eight images of 2x2 tiles store through transposes and
# sum their statistics over runs of 64 values, which costs more than the shortcut's kernel
MIN_PAIRED_POSITIONS = 256


def pairs_shortcut_forward(conv, shortcut):
    """Whether the forward ``conv`` (a 3x3 stride-2 padding-1 ``convolution``, the stride-2
    Winograd form's) and ``shortcut`` (a 1x1 stride-2 one of the same input) run as one
    kernel, the shortcut's products from the V of the 3x3's even-even points
    (``conv_winograd_s2.py``'s docstring): float, 2-d, one group, no dilation, static channels
    and sizes, one dtype, at least ``MIN_PAIRED_POSITIONS`` outputs a plane."""
    if conv.op != "convolution" or shortcut.op != "convolution" or conv is shortcut or \
            conv.inputs[0] is not shortcut.inputs[0]:
        return False
    x, w, ws = conv.inputs[0], conv.inputs[1], shortcut.inputs[1]
    values = [x, *conv.inputs[1:], *shortcut.inputs[1:], conv.output, shortcut.output]
    if x.dtype not in (float32, float64) or any(v.dtype is not x.dtype for v in values) or \
            len(x.shape) != 4 or len(w.shape) != 4 or len(ws.shape) != 4:
        return False
    if not all(isinstance(d, int) for d in [*x.shape[1:], *w.shape, *ws.shape]):
        return False
    geometry = [(conv.attrs, (3, 3), (1, 1)), (shortcut.attrs, (1, 1), (0, 0))]
    return (tuple(w.shape[2:]) == (3, 3) and tuple(ws.shape[2:]) == (1, 1) and
            all(tuple(a["stride"]) == (2, 2) and tuple(a["padding"]) == pad and
                tuple(a["dilation"]) == (1, 1) and a["groups"] == 1
                for a, _, pad in geometry) and
            enough_channels(x.shape[1], w.shape[0]) and
            ((x.shape[2] + 1) // 2) * ((x.shape[3] + 1) // 2) >= MIN_PAIRED_POSITIONS)
