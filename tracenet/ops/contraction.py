"""Products over named dimensions, written with views, reductions and mm/bmm (no op of their
own, as in torch): ``tensordot``, ``einsum``; and ``meshgrid``."""
import warnings

from . import common
from .creation import eye
from .linalg import matmul, mm
from .reduce import sum as rsum


def _mm3(a, b):
    """(B, n, k) @ (B, k, m); one mm when there is no batch."""
    if a.shape[0] == 1:
        return mm(a[0], b[0]).unsqueeze(0)
    return matmul(a, b)


def tensordot(a, b, dims=2, out=None):
    if common.is_tensor(dims):
        dims = dims.tolist()
    if isinstance(dims, int):
        if dims < 0:
            raise RuntimeError(f"tensordot expects dims >= 0, but got dims={dims}")
        da = list(range(a.dim() - dims, a.dim()))
        db = list(range(dims))
    else:
        da, db = ([d] if isinstance(d, int) else list(d) for d in dims)
    if len(da) != len(db):
        raise RuntimeError("both dimension lists should have same length")
    da = [common.wrap_dim(d, a.dim()) for d in da]
    db = [common.wrap_dim(d, b.dim()) for d in db]
    for i, j, di, dj in zip(da, db, _dims_text(da, dims, a), _dims_text(db, dims, b, True)):
        if a.shape[i] != b.shape[j]:
            raise RuntimeError(f"contracted dimensions need to match, but first has size "
                               f"{a.shape[i]} in dim {di} and second has size {b.shape[j]} in "
                               f"dim {dj}")
    fa = [d for d in range(a.dim()) if d not in da]
    fb = [d for d in range(b.dim()) if d not in db]
    k = common.numel([a.shape[d] for d in da])
    a2 = a.permute(fa + da).reshape(common.numel([a.shape[d] for d in fa]), k)
    b2 = b.permute(db + fb).reshape(k, common.numel([b.shape[d] for d in fb]))
    return mm(a2, b2).reshape(tuple(a.shape[d] for d in fa) + tuple(b.shape[d] for d in fb))


def _dims_text(ds, dims, t, second=False):
    """How torch names a contracted dim in its error: negative for the first operand when dims
    is a count."""
    if isinstance(dims, int) and not second:
        return [d - t.dim() for d in ds]
    return ds


# --- einsum ---------------------------------------------------------------------------------


def _parse(equation, operands):
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) > len(operands):
        raise RuntimeError("einsum(): fewer operands were provided than specified in the equation")
    if len(terms) < len(operands):
        raise RuntimeError("einsum(): more operands were provided than specified in the equation")
    # '...' becomes one non-ASCII letter per broadcast dim (never a user's subscript)
    spare = [chr(c) for c in range(0x100, 0x200)]
    n_ell = max((t.dim() - len(term.replace("...", "")) for term, t in zip(terms, operands)
                 if "..." in term), default=0)
    ell = "".join(spare[:n_ell])
    subs = []
    for term, t in zip(terms, operands):
        if "..." in term:
            k = t.dim() - len(term.replace("...", ""))
            term = term.replace("...", ell[n_ell - k:] if k else "")
        for c in term:
            if not (c.isalpha() or c in ell):
                raise RuntimeError(f"einsum(): invalid subscript given at index "
                                   f"{eq.index(c)} in the equation string, subscripts must be "
                                   "in [a-zA-Z]")
        if len(term) != t.dim():
            raise RuntimeError(f"einsum(): the number of subscripts in the equation "
                               f"({len(term)}) does not match the number of dimensions "
                               f"({t.dim()}) for operand {len(subs)}"
                               + ("" if "..." in lhs else " and no ellipsis was given"))
        subs.append(term)
    if arrow:
        out = rhs.replace("...", ell)
        for c in out:
            if c not in "".join(subs):
                raise RuntimeError(f"einsum(): output subscript {c} does not appear in the "
                                   "equation for any input operand")
    else:
        counts = {}
        for s in subs:
            for c in s:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    return subs, out


def _diagonals(t, s):
    """Take the diagonal of each subscript repeated within one operand (``ii->i``)."""
    while len(set(s)) != len(s):
        c = next(c for c in s if s.count(c) > 1)
        i = s.index(c)
        j = s.index(c, i + 1)
        n = t.shape[i]
        shape = [1] * t.dim()
        shape[i] = shape[j] = n
        t = rsum(t * eye(n, dtype=t.dtype).reshape(shape), j)
        s = s[:j] + s[j + 1:]
    return t, s


def _contract(a, sa, b, sb, keep):
    """Contract two operands: subscripts in both that are kept later are batch dims, the other
    shared ones are summed by one (b)mm."""
    batch = [c for c in sa if c in sb and c in keep]
    summed = [c for c in sa if c in sb and c not in keep]
    fa = [c for c in sa if c not in sb]
    fb = [c for c in sb if c not in sa]
    size = {}
    for t, s in ((a, sa), (b, sb)):
        for i, c in enumerate(s):
            size[c] = max(size.get(c, 1), t.shape[i])

    def arrange(t, s, order):
        t = t.permute([s.index(c) for c in order])
        return t.expand(tuple(size[c] if c in batch or c in summed else t.shape[i]
                              for i, c in enumerate(order)))

    nb = common.numel([size[c] for c in batch])
    nk = common.numel([size[c] for c in summed])
    a3 = arrange(a, sa, batch + fa + summed).reshape(nb, common.numel([size[c] for c in fa]), nk)
    b3 = arrange(b, sb, batch + summed + fb).reshape(nb, nk, common.numel([size[c] for c in fb]))
    out = _mm3(a3, b3).reshape(tuple(size[c] for c in batch + fa + fb))
    return out, "".join(batch + fa + fb)


def einsum(equation, *operands):
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    subs, out = _parse(equation, operands)
    sizes = {}
    for k, (t, s) in enumerate(zip(operands, subs)):
        for i, c in enumerate(s):
            n = t.shape[i]
            if c in sizes and sizes[c] != n and n != 1 and sizes[c] != 1:
                raise RuntimeError(f"einsum(): subscript {c} has size {n} for operand {k} which "
                                   f"does not broadcast with previously seen size {sizes[c]}")
            sizes[c] = n if c not in sizes or sizes[c] == 1 else sizes[c]
    terms = []
    for k, (t, s) in enumerate(zip(operands, subs)):
        t, s = _diagonals(t, s)
        # subscripts of this operand alone that the output drops: sum them now
        later = set(out).union(*(set(x) for j, x in enumerate(subs) if j != k))
        drop = [i for i, c in enumerate(s) if c not in later]
        if drop:
            t = rsum(t, drop)
            s = "".join(c for i, c in enumerate(s) if i not in drop)
        terms.append((t, s))
    t, s = terms[0]
    for k in range(1, len(terms)):
        keep = set(out).union(*(set(x) for _, x in terms[k + 1:]))
        t, s = _contract(t, s, terms[k][0], terms[k][1], keep)
    drop = [i for i, c in enumerate(s) if c not in out]
    if drop:
        t = rsum(t, drop)
        s = "".join(c for i, c in enumerate(s) if i not in drop)
    if s != out:
        t = t.permute([s.index(c) for c in out])
    return t


# --- meshgrid -------------------------------------------------------------------------------


def meshgrid(*tensors, indexing=None):
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if indexing is None:
        warnings.warn("torch.meshgrid: in an upcoming release, it will be required to pass the "
                      "indexing argument.", UserWarning, stacklevel=2)
        indexing = "ij"
    if indexing not in ("ij", "xy"):
        raise RuntimeError(f"torch.meshgrid: indexing must be one of \"xy\" or \"ij\", but "
                           f"received: {indexing}")
    if not tensors:
        raise RuntimeError("torch.meshgrid: Expected at least one tensor")
    for t in tensors:
        if t.dim() > 1:
            raise RuntimeError(f"torch.meshgrid: Expected 0D or 1D tensor in the tensor list but "
                               f"got: {t}")
    for t in tensors[1:]:
        if t.dtype is not tensors[0].dtype:
            raise RuntimeError("torch.meshgrid: Expected all tensors in the tensor list to have "
                               "the same dtype")
    n = len(tensors)
    order = list(range(n))  # output dim of each tensor
    if indexing == "xy" and n >= 2:
        order[0], order[1] = 1, 0
    sizes = [common.numel(t.shape) for t in tensors]
    shape = [0] * n
    for i, d in enumerate(order):
        shape[d] = sizes[i]
    outs = []
    for i, t in enumerate(tensors):
        view = [1] * n
        view[order[i]] = sizes[i]
        outs.append(t.reshape(view).expand(tuple(shape)))
    return tuple(outs)
