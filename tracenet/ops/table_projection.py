"""A loop's scanned input that is a linear map of embedding rows, computed from the table.

A recurrent layer over embedded tokens first projects every step's input at once
(``x W^T + b`` for all ``T * N`` token rows, ``nn._functional.rnn``). When the embedding table
has fewer rows than there are tokens, projecting the table once (``E W^T + b``) and then
picking each token's projected row gives the same values (each is the same dot product of the
same two vectors) with fewer multiplications, and the gradients come out cheaper too: the
token rows' gradients are summed into table rows before the two weight products, which then
have as many rows as the table.

``projected(x)`` is called while tracing, on a ``scan``'s scanned input (``ops.scan.scan``);
it records the cheaper form and returns it, or ``x`` itself when ``x`` is not such a product or
the table is not the smaller side. The nodes it replaces are left unused (dead-code elimination
removes them).
"""
from .._sym import hint, same_shape
from .common import numel, traced_tensor
from .registry import REGISTRY, apply


def _producer(value, op):
    node = value.producer
    return node if node is not None and node.op == op else None


def _embedded_rows(value):
    """(embedding node, dims of a permute of its leading dims or None) when ``value`` is an
    embedding's rows, maybe with its leading dims permuted."""
    node = _producer(value, "embedding")
    if node is not None:
        return node, None
    perm = _producer(value, "permute")
    if perm is None:
        return None
    node = _producer(perm.inputs[0], "embedding")
    dims = tuple(perm.attrs["dims"])
    if node is None or dims[-1] != len(dims) - 1:  # the rows themselves are not permuted
        return None
    return node, dims[:-1]


def projected(x):
    """``x`` (a traced tensor), or the same values as rows of a projected embedding table."""
    out = _producer(x._ir, "view")
    prod = _producer(out.inputs[0], "addmm") if out is not None else None
    if prod is None or set(prod.attrs) - {"alpha", "beta"} or \
            prod.attrs.get("alpha", 1) != 1 or prod.attrs.get("beta", 1) != 1:
        return x
    bias, rows, w = prod.inputs
    flat = _producer(rows, "view")
    found = _embedded_rows(flat.inputs[0]) if flat is not None else None
    if found is None:
        return x
    emb, dims = found
    table, idx = emb.inputs
    # padding rows and frequency scaling act on the table's gradient, which would then differ
    # from the sum of the token rows' gradients the weight's gradient needs
    if emb.attrs.get("padding_idx") is not None or emb.attrs.get("scale_grad_by_freq"):
        return x
    if len(table.shape) != 2 or len(bias.shape) != 1 or \
            not isinstance(table.shape[0], int) or table.shape[0] > hint(numel(idx.shape)):
        return x
    lead = idx.shape if dims is None else tuple(idx.shape[d] for d in dims)
    if not same_shape(rows.shape, (numel(lead), table.shape[1])) or \
            not same_shape(x.shape, lead + (prod.outputs[0].shape[1],)):
        return x
    idx_t = traced_tensor(idx)
    if dims is not None:
        idx_t = apply(REGISTRY["permute"], idx_t, dims=dims)
    projected_table = apply(REGISTRY["addmm"], *map(traced_tensor, (bias, table, w)))
    return apply(REGISTRY["embedding"], projected_table, idx_t, **emb.attrs)
