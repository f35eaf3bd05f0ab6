"""Adaptive max pooling: (values, flat per-plane indices) over the last 1-3 dims of a batched
(N, C, *in) tensor; the backward scatters through the indices as max pooling's does."""
import numpy as np

from .._meta import Meta
from .. import _dtype
from . import common
from .nn import _unbatch, adaptive_windows, max_pool_backward
from .registry import apply

register = common.register_quiet


def _meta(x, output_size):
    n = len(output_size)
    shape = tuple(x.shape)
    if len(shape) != n + 2:
        raise RuntimeError("the adaptive_max_pool op takes batched input")
    return (Meta(shape[:2] + tuple(output_size), x.dtype),
            Meta(shape[:2] + tuple(output_size), _dtype.int64))


def _eager(x, output_size):
    n = len(output_size)
    spatial = x.shape[2:]
    planes = x.reshape((-1,) + spatial)
    out = np.empty((planes.shape[0],) + tuple(output_size), x.dtype)
    idx = np.empty(out.shape, np.int64)
    windows = [adaptive_windows(spatial[i], output_size[i]) for i in range(n)]
    for cell in np.ndindex(*output_size):
        span = [windows[i][cell[i]] for i in range(n)]
        block = planes[(slice(None),) + tuple(slice(s, e) for s, e in span)]
        flat = block.reshape(planes.shape[0], -1)
        # the first maximum in window order; a NaN wins (numpy's argmax picks the first NaN)
        arg = np.argmax(flat, axis=1)
        local = np.unravel_index(arg, block.shape[1:])
        coords = tuple(local[i] + span[i][0] for i in range(n))
        at = (slice(None),) + cell
        out[at] = flat[np.arange(flat.shape[0]), arg]
        idx[at] = np.ravel_multi_index(coords, spatial) if planes.shape[0] else 0
    shape = x.shape[:2] + tuple(output_size)
    return out.reshape(shape), idx.reshape(shape)


def _backward(ctx, g, _gi=None):
    return (max_pool_backward(g, ctx.outputs[1], tuple(ctx.metas[0].shape)),)


adaptive_max_pool_op = register(
    "adaptive_max_pool", infer=_meta, eager=_eager, num_outputs=2, save_outputs=True,
    backward=_backward,
    grad_fn=lambda ctx: f"AdaptiveMaxPool{len(ctx.attrs['output_size'])}DBackward0")


def adaptive_max_pool(x, output_size):
    """(values, indices) over the last len(output_size) dims of a batched (N, C, *in) or
    unbatched (C, *in) tensor."""
    n = len(output_size)
    output_size = tuple(int(s) for s in output_size)
    if x.dim() == n + 1:
        vals, idx = apply(adaptive_max_pool_op, x.unsqueeze(0), output_size=output_size)
        return _unbatch(vals, f"AdaptiveMaxPool{n}DBackward0"), idx.squeeze(0)
    return apply(adaptive_max_pool_op, x, output_size=output_size)
