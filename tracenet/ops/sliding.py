"""Sliding local blocks: ``im2col`` (``F.unfold``) and its adjoint ``col2im`` (``F.fold``) on
(N, C, H, W) images or unbatched (C, H, W). Each compiles through its decomposition: a
convolution (im2col) or a transposed convolution (col2im) with one-hot kernels, which
copies every element exactly once per block."""
import numpy as np

from .._meta import Meta
from . import common
from .nn import _windows, conv_backward_input, convolution
from .registry import apply

register = common.register_quiet


def _blocks(size, k, d, p, s):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _check_geometry(kernel, dilation, padding, stride):
    for what, key, v, low in (("kernel size", "kernel", kernel, 1),
                              ("dilation", "dilation", dilation, 1),
                              ("padding", "pad", padding, 0), ("stride", "stride", stride, 1)):
        if min(v) < low:
            rel = "greater than zero" if low else "non-negative"
            raise RuntimeError(f"{what} should be {rel}, but got {key}_height: {v[0]} "
                               f"{key}_width: {v[1]}")


def _im2col_meta(x, kernel, dilation, padding, stride):
    _check_geometry(kernel, dilation, padding, stride)
    shape = tuple(x.shape)
    if len(shape) not in (3, 4) or any(s == 0 for s in shape[-3:]):
        raise RuntimeError(f"Expected 3D or 4D (batch mode) tensor with possibly 0 batch size "
                           f"and other non-zero dimensions for input, but got: "
                           f"[{', '.join(map(str, shape))}]")
    h, w = shape[-2:]
    oh, ow = (_blocks(h, kernel[0], dilation[0], padding[0], stride[0]),
              _blocks(w, kernel[1], dilation[1], padding[1], stride[1]))
    if oh < 1 or ow < 1:
        raise RuntimeError(f"Given input with spatial size ({h}, {w}), kernel_size=({kernel[0]}, "
                           f"{kernel[1]}), dilation=({dilation[0]}, {dilation[1]}), padding="
                           f"({padding[0]}, {padding[1]}), calculated shape of the array of "
                           f"sliding blocks as ({oh}, {ow}), but its components must be at "
                           "least one.")
    return Meta(shape[:-3] + (shape[-3] * kernel[0] * kernel[1], oh * ow), x.dtype)


def _im2col_eager(x, kernel, dilation, padding, stride):
    batched = x.ndim == 4
    x4 = x if batched else x[None]
    n, c, h, w = x4.shape
    xp = np.pad(x4, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    oh = _blocks(h, kernel[0], dilation[0], padding[0], stride[0])
    ow = _blocks(w, kernel[1], dilation[1], padding[1], stride[1])
    win = _windows(xp, (oh, ow), kernel, stride, dilation)  # (N, C, oh, ow, kh, kw)
    cols = np.ascontiguousarray(win.transpose(0, 1, 4, 5, 2, 3)).reshape(
        n, c * kernel[0] * kernel[1], oh * ow)
    return cols if batched else cols[0]


def _onehot_kernel(kernel, dtype):
    k = kernel[0] * kernel[1]
    return common.tensor_cls()._wrap(np.eye(k, dtype=dtype.np).reshape(k, 1, *kernel))


def _im2col_decomposition(x, kernel, dilation, padding, stride):
    # every channel through a one-hot convolution: output channel j copies kernel tap j
    h, w = x.shape[-2:]
    y = convolution(x.reshape(-1, 1, h, w), _onehot_kernel(kernel, x.dtype), None, stride,
                    padding, dilation, 1)
    return y.reshape(tuple(x.shape[:-3]) + (-1, y.shape[-2] * y.shape[-1]))


im2col_op = register(
    "im2col", infer=_im2col_meta, eager=_im2col_eager,
    backward=lambda ctx, g: (col2im(g, tuple(ctx.metas[0].shape[-2:]), **ctx.attrs),),
    grad_fn="Im2ColBackward0", decomposition=_im2col_decomposition)


def _col2im_meta(cols, output_size, kernel, dilation, padding, stride):
    _check_geometry(kernel, dilation, padding, stride)
    shape = tuple(cols.shape)
    if len(shape) not in (2, 3) or any(s == 0 for s in shape[-2:]):
        raise RuntimeError(f"Expected 2D or 3D (batch mode) tensor for input with possibly 0 "
                           f"batch size and non-zero dimensions for input, but got: "
                           f"[{', '.join(map(str, shape))}]")
    k = kernel[0] * kernel[1]
    if shape[-2] % k:
        raise RuntimeError(f"Expected size of input's dimension 1 to be divisible by the product "
                           f"of kernel_size, but got input.size(1)={shape[-2]} and "
                           f"kernel_size=({kernel[0]}, {kernel[1]})")
    oh = _blocks(output_size[0], kernel[0], dilation[0], padding[0], stride[0])
    ow = _blocks(output_size[1], kernel[1], dilation[1], padding[1], stride[1])
    if oh * ow != shape[-1]:
        raise RuntimeError(f"Given output_size=({output_size[0]}, {output_size[1]}), "
                           f"kernel_size=({kernel[0]}, {kernel[1]}), dilation=({dilation[0]}, "
                           f"{dilation[1]}), padding=({padding[0]}, {padding[1]}), stride="
                           f"({stride[0]}, {stride[1]}), expected size of input's dimension 2 to "
                           f"match the calculated number of sliding blocks {oh} * {ow} = "
                           f"{oh * ow}, but got input.size(2)={shape[-1]}.")
    return Meta(shape[:-2] + (shape[-2] // k,) + tuple(output_size), cols.dtype)


def _col2im_eager(cols, output_size, kernel, dilation, padding, stride):
    batched = cols.ndim == 3
    c3 = cols if batched else cols[None]
    n, ck, _ = c3.shape
    kh, kw = kernel
    c = ck // (kh * kw)
    h, w = output_size
    oh = _blocks(h, kh, dilation[0], padding[0], stride[0])
    ow = _blocks(w, kw, dilation[1], padding[1], stride[1])
    blocks = c3.reshape(n, c, kh, kw, oh, ow)
    out = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            out[:, :, r0:r0 + stride[0] * (oh - 1) + 1:stride[0],
                c0:c0 + stride[1] * (ow - 1) + 1:stride[1]] += blocks[:, :, i, j]
    out = out[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]
    out = np.ascontiguousarray(out)
    return out if batched else out[0]


def _col2im_decomposition(cols, output_size, kernel, dilation, padding, stride):
    # the adjoint of the one-hot convolution: its input gradient
    h, w = output_size
    k = kernel[0] * kernel[1]
    oh = _blocks(h, kernel[0], dilation[0], padding[0], stride[0])
    ow = _blocks(w, kernel[1], dilation[1], padding[1], stride[1])
    planes = cols.reshape(-1, k, oh, ow)
    img = conv_backward_input(planes, _onehot_kernel(kernel, cols.dtype),
                              (planes.shape[0], 1, h, w), stride=tuple(stride),
                              padding=tuple(padding), dilation=tuple(dilation), groups=1)
    return img.reshape(tuple(cols.shape[:-2]) + (-1, h, w))


col2im_op = register(
    "col2im", infer=_col2im_meta, eager=_col2im_eager,
    backward=lambda ctx, g: (im2col(g, **{k: v for k, v in ctx.attrs.items()
                                          if k != "output_size"}),),
    grad_fn="Col2ImBackward0", decomposition=_col2im_decomposition)


def im2col(x, kernel, dilation, padding, stride):
    return apply(im2col_op, x, kernel=tuple(kernel), dilation=tuple(dilation),
                 padding=tuple(padding), stride=tuple(stride))


def col2im(cols, output_size, kernel, dilation, padding, stride):
    return apply(col2im_op, cols, output_size=tuple(output_size), kernel=tuple(kernel),
                 dilation=tuple(dilation), padding=tuple(padding), stride=tuple(stride))
