"""Adaptive max pooling and unfold/fold (sliding blocks)."""
import numpy as np

from ...ops import adaptive_max, sliding
from .normalization import _check_dim_range, _list_with_default

__all__ = ["adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool1d_with_indices",
           "adaptive_max_pool2d_with_indices", "unfold", "fold"]


def _word(dt):
    return {"float32": "Float", "float64": "Double", "int64": "Long", "bool": "Bool"}[dt.name]


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _adaptive_max(n, input, out, return_indices):
    fn = f"adaptive_max_pool{n}d"
    if input.dim() not in (n + 1, n + 2):
        raise RuntimeError(f"{fn}(): Expected {n + 1}D or {n + 2}D tensor, but got: "
                           f"{list(input.shape)}")
    out = [int(v) for v in out]
    if len(out) != n:
        raise RuntimeError(f"{fn}(): internal error: output_size.size() must be {n}")
    if any(v < 0 for v in out):
        raise RuntimeError(f"Trying to create tensor with negative dimension {min(out)}: "
                           f"{list(input.shape[:-n]) + out}")
    shape = tuple(input.shape)
    for d in range(1 if input.dim() == n + 2 else 0, len(shape)):
        if shape[d] == 0:
            raise RuntimeError(f"{fn}(): Expected input to have non-zero size for non-batch "
                               f"dimensions, but input has sizes {list(shape)} with dimension "
                               f"{d} being empty")
    if not input.dtype.is_floating_point:
        raise NotImplementedError(f"\"{fn}\" not implemented for '{_word(input.dtype)}'")
    vals, idx = adaptive_max.adaptive_max_pool(input, out)
    return (vals, idx) if return_indices else vals


def adaptive_max_pool1d_with_indices(input, output_size, return_indices=False):
    vals = [int(output_size)] if _is_int(output_size) else list(output_size)
    if len(vals) != 1:
        raise RuntimeError(f"adaptive_max_pool1d() argument 'output_size' should contain one int "
                           f"(got {len(vals)})")
    _check_dim_range(input, "adaptive_max_pool1d")
    # as torch: the 2-d op over an inserted height of 1
    vals2, idx = _adaptive_max(2, input.unsqueeze(-2), [1, vals[0]], True)
    return vals2.squeeze(-2), idx.squeeze(-2)


def adaptive_max_pool1d(input, output_size, return_indices=False):
    vals, idx = adaptive_max_pool1d_with_indices(input, output_size)
    return (vals, idx) if return_indices else vals


def adaptive_max_pool2d_with_indices(input, output_size, return_indices=False):
    size = _list_with_default(output_size, input.size())
    size = [int(size)] * 2 if _is_int(size) else size
    return _adaptive_max(2, input, size, True)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    vals, idx = adaptive_max_pool2d_with_indices(input, output_size)
    return (vals, idx) if return_indices else vals


# --- sliding blocks -------------------------------------------------------------------------


def _pair(v):
    return (int(v), int(v)) if _is_int(v) else tuple(int(a) for a in v)


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):
    if input.dim() < 3:
        raise IndexError(f"Dimension out of range (expected to be in range of "
                         f"[-{input.dim()}, {input.dim() - 1}], but got {input.dim()})")
    return sliding.im2col(input, _pair(kernel_size), _pair(dilation), _pair(padding),
                          _pair(stride))


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    return sliding.col2im(input, _pair(output_size), _pair(kernel_size), _pair(dilation),
                          _pair(padding), _pair(stride))
