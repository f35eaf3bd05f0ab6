"""``embedding_renorm``: the table with the rows that ``indices`` look up scaled down to norm
``max_norm`` where theirs exceeds it (torch's embedding_renorm_, out of place so that a
compiled graph can write it back to the weight). Its gradient passes straight through: torch
renormalises the leaf weight under no_grad, so the lookup's gradient reaches the weight
unscaled."""
import numpy as np

from . import common
from .registry import apply

register = common.register_quiet


def row_norms(rows, p):
    """The ``p``-norms of float64 ``rows``, as eager mode computes them."""
    mag = np.abs(rows)
    if p == float("inf"):
        return mag.max(axis=1, initial=0.0)
    if p == float("-inf"):
        return mag.min(axis=1, initial=np.inf)
    if p == 0:
        return (mag != 0).sum(axis=1).astype(np.float64)
    return (mag ** p).sum(axis=1) ** (1.0 / p)


def renorm_rows_np(w, indices, max_norm, norm_type):
    """Scale, in ``w``, the looked-up rows whose norm exceeds ``max_norm``; True if any was."""
    rows = np.unique(indices.reshape(-1))
    if rows.size and (rows.min() < 0 or rows.max() >= w.shape[0]):
        raise IndexError(common.INDEX_OUT_OF_RANGE)
    norms = row_norms(w[rows].astype(np.float64), float(norm_type))
    big = norms > max_norm
    if big.any():
        scale = max_norm / (norms[big] + 1e-7)
        w[rows[big]] = (w[rows[big]] * scale[:, None]).astype(w.dtype)
    return bool(big.any())


def _eager(w, indices, max_norm, norm_type):
    out = np.array(w, copy=True)
    renorm_rows_np(out, indices, max_norm, norm_type)
    return out


embedding_renorm_op = register(
    "embedding_renorm", infer=lambda w, idx, max_norm, norm_type: common.same(w), eager=_eager,
    backward=lambda ctx, g: (g, None), nondiff=(1,))


def embedding_renorm(weight, indices, max_norm, norm_type):
    return apply(embedding_renorm_op, weight, indices, max_norm=float(max_norm),
                 norm_type=float(norm_type))
