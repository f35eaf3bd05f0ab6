"""The vision part of tracenet.nn.functional (re-exported there): pixel (un)shuffle and
interpolation / upsampling."""
import math
import numbers
import warnings

import numpy as np

from ...ops import elementwise as ew, shape as sh, vision as vops
from ...ops.registry import apply
from . import normalization

__all__ = ["pixel_shuffle", "pixel_unshuffle", "interpolate", "upsample", "upsample_nearest",
           "upsample_bilinear"]


# --- pixel shuffle ----------------------------------------------------------------------------


def _factor_arg(fn, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}(): argument '{name}' (position 2) must be int, not "
                        f"{type(value).__name__}")
    return int(value)


def _rearranged(x, split_shape, perm, out_shape, name):
    """``x`` viewed as ``split_shape``, permuted, and copied into ``out_shape``: a new tensor
    (never a view of ``x``) whose autograd node carries torch's name."""
    y = x.reshape(split_shape).permute(perm)
    if x._ir is not None:
        return sh._view(y, out_shape, copy_ok=True, name=name)
    y = ew.contiguous_copy(y)
    out = apply(sh.view_op, y, shape=tuple(out_shape), copy_ok=True, _name=name)
    out._base = None
    return out


def pixel_shuffle(input, upscale_factor):
    r = _factor_arg("pixel_shuffle", "upscale_factor", upscale_factor)
    if input.dim() < 3:
        raise RuntimeError(f"pixel_shuffle expects input to have at least 3 dimensions, but got "
                           f"input with {input.dim()} dimension(s)")
    if r <= 0:
        raise RuntimeError(f"pixel_shuffle expects a positive upscale_factor, but got {r}")
    shape = tuple(input.shape)
    lead, (c, h, w) = shape[:-3], shape[-3:]
    if c % (r * r):
        raise RuntimeError(f"pixel_shuffle expects its input's 'channel' dimension to be "
                           f"divisible by the square of upscale_factor, but input.size(-3)={c} "
                           f"is not divisible by {r * r}")
    k = len(lead)
    oc = c // (r * r)
    perm = tuple(range(k)) + (k, k + 3, k + 1, k + 4, k + 2)
    return _rearranged(input, lead + (oc, r, r, h, w), perm, lead + (oc, h * r, w * r),
                       "PixelShuffleBackward0")


def pixel_unshuffle(input, downscale_factor):
    r = _factor_arg("pixel_unshuffle", "downscale_factor", downscale_factor)
    if input.dim() < 3:
        raise RuntimeError(f"pixel_unshuffle expects input to have at least 3 dimensions, but "
                           f"got input with {input.dim()} dimension(s)")
    if r <= 0:
        raise RuntimeError(f"pixel_unshuffle expects a positive downscale_factor, but got {r}")
    shape = tuple(input.shape)
    lead, (c, h, w) = shape[:-3], shape[-3:]
    if h % r:
        raise RuntimeError(f"pixel_unshuffle expects height to be divisible by downscale_factor, "
                           f"but input.size(-2)={h} is not divisible by {r}")
    if w % r:
        raise RuntimeError(f"pixel_unshuffle expects width to be divisible by downscale_factor, "
                           f"but input.size(-1)={w} is not divisible by {r}")
    k = len(lead)
    perm = tuple(range(k)) + (k, k + 2, k + 4, k + 1, k + 3)
    return _rearranged(input, lead + (c, h // r, r, w // r, r), perm,
                       lead + (c * r * r, h // r, w // r), "PixelUnshuffleBackward0")


# --- interpolation ------------------------------------------------------------------------------

_ALL_MODES = "nearest | linear | bilinear | bicubic | trilinear | lanczos | area | nearest-exact"
# mode -> (input dims it needs, op mode)
_MODE_DIMS = {"linear": (3, "linear"), "bilinear": (4, "linear"), "trilinear": (5, "linear"),
              "bicubic": (4, "cubic")}


def _is_int(v):
    return isinstance(v, (numbers.Integral, np.integer)) or (
        hasattr(v, "dim") and v.dim() == 0 and not v.dtype.is_floating_point)


def _int_size(v):
    return int(v.item()) if hasattr(v, "item") and not isinstance(v, (int, np.integer)) \
        else int(v)


def _sequence(v):
    return isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim == 1)


def _size_type_error(size):
    types = [type(s) for s in size] if _sequence(size) else [type(size)]
    return TypeError("expected size to be one of int or Tuple[int] or Tuple[int, int] or "
                     f"Tuple[int, int, int], but got size with types {types}")


def _scale_type_error(value):
    return TypeError(f"interpolate(): scale_factor must be a float or a sequence of floats, "
                     f"got {type(value).__name__}")


def _float_scale(v):
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (numbers.Real, np.floating, np.integer)):
        return float(v)
    raise _scale_type_error(v)


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
    if mode in ("nearest", "area", "nearest-exact"):
        if align_corners is not None:
            raise ValueError("align_corners option can only be set with the interpolating "
                             "modes: linear | bilinear | bicubic | trilinear")
    elif align_corners is None:
        align_corners = False
    dim = input.dim() - 2
    spatial = list(input.shape[2:])
    output_size = scale_factors = None
    if size is not None and scale_factor is not None:
        raise ValueError("only one of size or scale_factor should be defined")
    if size is not None:
        if _sequence(size):
            if len(size) != dim:
                raise ValueError(
                    "Input and output must have the same number of spatial dimensions, but got "
                    f"input with spatial dimensions of {spatial} and output size of {size}. "
                    "Please provide input tensor in (N, C, d1, d2, ...,dK) format and output "
                    "size in (o1, o2, ...,oK) format.")
            if not all(_is_int(s) for s in size):
                raise _size_type_error(size)
            output_size = [_int_size(s) for s in size]
        else:
            if not _is_int(size):
                raise _size_type_error(size)
            output_size = [_int_size(size)] * dim
    elif scale_factor is not None:
        if _sequence(scale_factor):
            if len(scale_factor) != dim:
                raise ValueError(
                    "Input and scale_factor must have the same number of spatial dimensions, but "
                    f"got input with spatial dimensions of {spatial} and scale_factor of shape "
                    f"{scale_factor}. Please provide input tensor in (N, C, d1, d2, ...,dK) "
                    "format and scale_factor in (s1, s2, ...,sK) format.")
            scale_factors = [_float_scale(s) for s in scale_factor]
        else:
            scale_factors = [_float_scale(scale_factor)] * dim
    else:
        raise ValueError("either size or scale_factor should be defined")
    if recompute_scale_factor is not None and recompute_scale_factor and size is not None:
        raise ValueError("recompute_scale_factor is not meaningful with an explicit size.")
    if mode == "area" and output_size is None:
        recompute_scale_factor = True
    if recompute_scale_factor is not None and recompute_scale_factor:
        output_size = [math.floor(float(spatial[i]) * scale_factors[i]) for i in range(dim)]
        scale_factors = None
    if antialias and not (mode in ("bilinear", "bicubic", "lanczos") and input.dim() == 4):
        raise ValueError("Anti-alias option is restricted to bilinear, bicubic, and lanczos modes "
                         "and requires a 4-D tensor as input")
    nd = input.dim()
    if nd in (3, 4, 5) and mode in ("nearest", "nearest-exact"):
        return _upsample(input, output_size, scale_factors, mode, False)
    if nd in (3, 4, 5) and mode == "area":
        pool = getattr(normalization, f"adaptive_avg_pool{dim}d", None)
        if pool is None:
            raise NotImplementedError("interpolate(mode='area') needs adaptive average pooling")
        return pool(input, output_size)
    if mode in _MODE_DIMS:
        need, op_mode = _MODE_DIMS[mode]
        if nd == need:
            if antialias:
                op_mode += "_aa"
            return _upsample(input, output_size, scale_factors, op_mode, align_corners)
        if mode != "bicubic" and nd in (3, 4, 5):
            raise NotImplementedError(f"Got {nd}D input, but {mode} mode needs {need}D input")
    if mode == "lanczos" and nd == 4:
        raise NotImplementedError("interpolate(mode='lanczos') is not supported")
    raise NotImplementedError(f"Input Error: Only 3D, 4D and 5D input Tensors supported (got "
                              f"{nd}D) for the modes: {_ALL_MODES} (got {mode})")


def _upsample(x, output_size, scale_factors, mode, align_corners):
    if scale_factors is not None:
        # the op derives the output size from the scale factors (truncating, in double)
        output_size = [int(float(s) * f) for s, f in zip(x.shape[2:], scale_factors)]
    return vops.upsample(x, output_size, scale_factors, mode, align_corners)


def upsample(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    warnings.warn("`nn.functional.upsample` is deprecated. Use `nn.functional.interpolate` "
                  "instead.", stacklevel=2)
    return interpolate(input, size, scale_factor, mode, align_corners)


def upsample_nearest(input, size=None, scale_factor=None):
    warnings.warn("`nn.functional.upsample_nearest` is deprecated. Use "
                  "`nn.functional.interpolate` instead.", stacklevel=2)
    return interpolate(input, size, scale_factor, mode="nearest")


def upsample_bilinear(input, size=None, scale_factor=None):
    warnings.warn("`nn.functional.upsample_bilinear` is deprecated. Use "
                  "`nn.functional.interpolate` instead.", stacklevel=2)
    return interpolate(input, size, scale_factor, mode="bilinear", align_corners=True)
