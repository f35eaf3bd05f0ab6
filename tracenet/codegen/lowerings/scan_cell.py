"""A recurrent step's gate math as one kernel (``scan`` bodies: ``codegen/lowerings/scan.py``).

A recurrent layer's step computes its gates as one wide ``[rows, k*H]`` product, ``split`` s it
into ``k`` gates of ``[rows, H]``, and applies elementwise ops to them (LSTM: the cell update
and ``h = o * tanh(c)``); its backward does the elementwise part in reverse and ``cat`` s the
``k`` gate gradients into one wide value for the next product. The ordinary fusion makes one
kernel per chain whose intermediates nothing else reads, so a step ran ten kernels and copied
the gates apart. ``cell_body`` regroups the run of elementwise ops, splits and cats that
follows the step's product into one ``fused`` node (group ``scan_cell``), lowered here to one
loop over ``(row, column of a gate)`` that reads each gate of a wide value at its column offset
and writes each piece of a ``cat`` in place: one kernel after the product, in every step.

A forward step's product (``h @ W^T + b``, read only by the gates) joins the kernel: each
block of columns of every gate (the same hidden units' ``i, f, g, o`` columns) is multiplied
into a tile in L1 and gated there, so the wide product is never stored, and the threads of a
loop can each take a share of the batch rows or of the hidden units (``{name}_cols``;
``scan.py``). The loop hands
the weight over transposed once per call, so the product runs on whole-vector register tiles.

The IR graph is not changed: the regrouped body is a planning copy made when the scan lowers.
"""
import copy
import re

from ..._dtype import int64
from ..._sym import is_one, same_shape
from ...ir.graph import Node
from ...ops.common import numel
from ...ops.registry import REGISTRY
from ..base import SFX, Kernel, ctype, group_lowering, node_lines, signature, size_symbols
from ..templates import render
from .elementwise import broadcast_index, c_expr

GROUP = "scan_cell"


def _pointwise(node):
    entry = REGISTRY.get(node.op)
    return entry is not None and entry.c_expr is not None


def _pieces(node):
    """(k, narrow shape) of a split or cat into/from ``k`` equal pieces along the last dim."""
    if node.op == "split":
        wide, narrow = node.inputs[0].shape, node.outputs[0].shape
        sizes, parts = node.attrs.get("sizes"), node.outputs
    elif node.op == "cat":
        wide, narrow = node.output.shape, node.inputs[0].shape
        sizes, parts = None, node.inputs
    else:
        return None
    nd = len(wide)
    if nd < 1 or node.attrs.get("dim", 0) % nd != nd - 1 or len(parts) < 2:
        return None
    if any(not same_shape(p.shape, narrow) for p in parts) or \
            (sizes is not None and len(set(sizes)) != 1):
        return None
    if not isinstance(narrow[-1], int) or not same_shape(wide[-1:], (narrow[-1] * len(parts),)):
        return None
    return len(parts), tuple(narrow)


def _items(body):
    """The body's nodes with fused elementwise chains opened into their members, each with the
    top-level node it came from."""
    out = []
    for node in body.nodes:
        if node.op == "fused" and node.attrs.get("group") == "elementwise":
            out += [(m, node) for m in node.members]
        else:
            out.append((node, node))
    return out


def cell_body(body):
    """``body`` with the elementwise run after its product (splits and cats of equal gates
    included) as one ``scan_cell`` fused node; ``body`` itself when there is nothing to
    regroup (no split or cat of gates, or fewer than two kernels to merge)."""
    items = _items(body)
    shape = next((p for n, _ in items for p in [_pieces(n)] if p), None)
    if shape is None:
        return body
    k, narrow = shape
    wide = narrow[:-1] + (narrow[-1] * k,)

    def shaped(v):  # 0: narrow, 1: wide, None: neither
        return 0 if same_shape(v.shape, narrow) else 1 if same_shape(v.shape, wide) else None

    members, produced = [], {}
    first = None
    for pos, (node, _) in enumerate(items):
        if _pointwise(node) and len(node.outputs) == 1:
            kind = shaped(node.output)
            ok = kind is not None and all(produced.get(v, kind) == kind for v in node.inputs)
        else:
            ok = _pieces(node) == (k, narrow) and all(
                v not in produced or produced[v] == (1 if node.op == "split" else 0)
                for v in node.inputs)
        if ok:
            if first is None:
                first = pos
            members.append(node)
            for v in node.outputs:
                produced[v] = shaped(v)
            continue
        if any(v in produced for v in node.inputs):
            if any(m.op in ("split", "cat") for m in members):
                break  # a reader of the run that cannot join it ends the run
            members, produced, first = [], {}, None  # no gates yet: start again after it
    if len(members) < 2 or not any(m.op in ("split", "cat") for m in members):
        return body
    lead = _leading_product(items, members, produced, first, body, narrow, wide)
    if lead is not None:  # the product the gates are read from, computed block by block
        members.insert(0, lead)
        produced[lead.output] = 1
        first = next(i for i, (n, _) in enumerate(items) if n is lead)
    member_ids = {id(m) for m in members}
    # a chain the ordinary fusion made is kept whole or not at all
    for node, top in items:
        if top is not node and (id(node) in member_ids) != \
                all(id(m) in member_ids for m in top.members):
            return body
    last = max(i for i, (n, _) in enumerate(items) if id(n) in member_ids)
    readers_after = set(body.outputs)
    for node, _ in items[last + 1:]:
        readers_after.update(node.inputs)
    for node, _ in items[first:last]:
        if id(node) not in member_ids and any(v in produced for v in node.inputs):
            return body
    inputs = []
    for m in members:
        for v in m.inputs:
            if v not in produced and v not in inputs:
                inputs.append(v)
    fused = Node("fused", inputs,
                 {"group": GROUP, "kind": "cell", "pieces": k, "narrow": narrow},
                 loc=members[-1].loc, members=members)
    fused.outputs = [v for m in members for v in m.outputs if v in readers_after]
    nodes, placed = [], set()
    for pos, (node, top) in enumerate(items):
        if id(node) in member_ids:
            if pos == last:
                nodes.append(fused)
            continue
        if top is not node:  # a member of a chain that stays whole
            if id(top) not in placed:
                placed.add(id(top))
                nodes.append(top)
            continue
        nodes.append(node)
    out = copy.copy(body)
    out.nodes = nodes
    return out


def rows_by_index(body, slot):
    """``body`` (from ``cell_body``) with its gate kernel reading input ``slot`` (a gate-wide
    value) by index: row ``r`` of it is row ``index[r]`` of a table passed in its place, and the
    step's indices are a new last input. A loop whose scanned input is a table's rows so reads
    them where they are instead of copying each step's rows first. None when anything else
    reads that input (another kernel, the gate kernel's leading product, the body's result)."""
    x = body.inputs[slot]
    readers = [n for n in body.nodes if x in n.inputs]
    if len(readers) != 1 or x in body.outputs or body.inputs.count(x) != 1:
        return None
    (cell,) = readers
    if cell.op != "fused" or cell.attrs.get("group") != GROUP:
        return None
    k, narrow = cell.attrs["pieces"], cell.attrs["narrow"]
    if len(narrow) != 2 or not same_shape(x.shape, (narrow[0], narrow[1] * k)) or \
            (cell.members[0].op == "gemm" and x in cell.members[0].inputs):
        return None
    out = copy.copy(body)
    index = out.new_value(narrow[:1], int64, name=f"{x.ref[1:]}_rows")
    indexed = Node("fused", cell.inputs + [index], dict(cell.attrs, by_index=(x, index)),
                   loc=cell.loc, members=cell.members)
    indexed.outputs = cell.outputs
    out.inputs = body.inputs + [index]
    out.nodes = [indexed if n is cell else n for n in body.nodes]
    return out


def _plain_gemm(node):
    """``a @ b^T [+ c]``: the product a step's gates are read from."""
    a = node.attrs
    return node.op == "gemm" and not a.get("trans_a") and bool(a.get("trans_b")) \
        and a.get("alpha", 1.0) == 1.0 and (len(node.inputs) == 2 or a.get("beta", 1.0) == 1.0)


def _readers(items, body, v):
    return [n for n, _ in items if v in n.inputs] + [None] * body.outputs.count(v)


def _leading_product(items, members, produced, first, body, narrow, wide):
    """The ``gemm`` (``a @ b^T [+ c]``, before the run) whose wide result only the run reads:
    joined to the run, each block of gate columns is multiplied and gated while it is in the
    cache, and the wide result is never stored. None when there is none."""
    if len(narrow) != 2:
        return None
    ids = {id(m) for m in members}
    for node, top in items[:first]:
        if top is not node or not _plain_gemm(node) or not same_shape(node.output.shape, wide):
            continue
        if node.output in produced or any(r is None or id(r) not in ids
                                          for r in _readers(items, body, node.output)):
            continue
        return node
    return None


# a block of the leading product: ROW_BLOCK rows x COLUMN_BLOCK columns of each gate, in L1
ROW_BLOCK, COLUMN_BLOCK = 16, 16


def weight_panels(k, width):
    """How the loop packs the leading product's weight (``[k * width, K]``, read as ``b^T``)
    once per call: one panel of ``[K, COLUMN_BLOCK]`` per block of columns of each gate, gate
    ``g``'s block ``j0 / COLUMN_BLOCK`` the ``g * per_gate + j0 / COLUMN_BLOCK``-th, columns
    past ``width`` zero. A block's product then reads its panel's rows one after the other:
    in ``[K, k * width]`` rows 1 KB apart (the LSTM LM's 64 x 256) fell into 4 of L1's 64 sets,
    and each tile read its 64 rows from L2 again (the zoo's LM forward loop, one thread, in a
    C harness: 281 -> 262 us; the transpose itself 15 -> 5 us). Returns ``(per_gate,
    panels)``."""
    per_gate = -(-width // COLUMN_BLOCK)
    return per_gate, k * per_gate


def panel_at(g, j0, k, width, K):
    """C expression: the offset (in elements) of gate ``g``'s column ``j0`` (a C expression)
    in the packed weight (``weight_panels``): in its panel's first row."""
    per_gate, _ = weight_panels(k, width)
    return (f"(size_t)({g * per_gate} + ({j0}) / {COLUMN_BLOCK}) * {K * COLUMN_BLOCK}"
            f" + ({j0}) % {COLUMN_BLOCK}")


# the register tiles of a float block: with AVX-512VL rows of one vector of 16 floats (8
# accumulators and 8 broadcasts a step of k in the largest), else rows of two vectors of 8
# (the first, 6, taken only while the rest is not 8 or 4 rows: scan_tiles.c.j2)
ZTILE_ROWS = (8, 4, 2, 1)
TILE_ROWS, TILE_VECTORS = (6, 4, 2, 1), 2


def tiles_helper(ct):
    """(name, source) of ``tn_scan_block{sfx}(rb, K, a, lda, b, ldb, c, ldc, acc)``: a step's
    product of ``rb`` rows with a block of ``COLUMN_BLOCK`` columns (float only);
    ``tn_scan_block_from{sfx}(..., acc, start)``: its rows starting from ``start`` (a bias)."""
    return (f"tn_scan_tiles{SFX[ct]}", render("scan_tiles.c.j2", ct=ct, sfx=SFX[ct],
                                              nv=TILE_VECTORS, rows=TILE_ROWS, zrows=ZTILE_ROWS,
                                              columns=COLUMN_BLOCK))


@group_lowering(GROUP)
def lower_cell(name, node, exported, target):
    """``{name}_cols(..., v0, v1, u0, u1)`` computes rows ``[v0, v1)`` of columns ``[u0, u1)``
    of every gate (the threads of a loop split a step by one or the other); ``{name}(...)``
    all of them."""
    k, narrow = node.attrs["pieces"], node.attrs["narrow"]
    width = narrow[-1]
    rows = numel(narrow[:-1])
    wide = narrow[:-1] + (width * k,)
    reads = [(f"in{j}", v) for j, v in enumerate(node.inputs)]
    writes = [(f"out{j}", v) for j, v in enumerate(node.outputs)]
    role = {v: r for r, v in reads + writes}
    members = node.members
    lead = members[0] if members[0].op == "gemm" else None
    ct = ctype(node.outputs[0])

    def index(shape, piece):
        """Flat index into a value of ``shape`` read at (row r, column c) of gate ``piece``
        (None: of a narrow value)."""
        target, flat = (narrow, "i") if piece is None else (wide, f"iw + {piece * width}")
        if same_shape(shape, target):
            return flat
        if is_one(numel(shape)):
            return "0"
        if len(shape) and all(is_one(d) for d in shape[:-1]) and \
                same_shape(shape[-1:], target[-1:]):
            return "c" if piece is None else f"c + {piece * width}"
        return re.sub(r"\bi\b", f"({flat})", broadcast_index(shape, target))

    expr = {}  # (value, piece or None) -> C expression
    by_index = node.attrs.get("by_index")  # (a table's rows, their indices): rows_by_index
    for r, v in reads:
        if by_index is not None and v is by_index[0]:
            start = f"(size_t){role[by_index[1]]}[row] * {width * k}"
            for g in range(k):
                expr[(v, g)] = f"{r}[{start} + c + {g * width}]"
            continue
        expr[(v, None)] = f"{r}[{index(v.shape, None)}]"
        for g in range(k):
            expr[(v, g)] = f"{r}[{index(v.shape, g)}]"
    lines = []
    for n, m in enumerate(members):
        if m is lead:  # gate g's block of the product, plus its bias
            for g in range(k):
                bias = f" + {expr[(m.inputs[2], g)]}" if len(m.inputs) > 2 else ""
                lines.append(f"const {ct} t{n}_{g} = tile[it + {g * COLUMN_BLOCK}]{bias};")
                expr[(m.output, g)] = f"t{n}_{g}"
        elif m.op == "split":
            for g, v in enumerate(m.outputs):
                expr[(v, None)] = expr[(m.inputs[0], g)]
        elif m.op == "cat":
            for g, v in enumerate(m.inputs):
                expr[(m.output, g)] = expr[(v, None)]
        else:
            v = m.output
            pieces = [None] if same_shape(v.shape, narrow) else range(k)
            for g in pieces:
                tmp = f"t{n}" if g is None else f"t{n}_{g}"
                lines.append(f"const {ctype(v)} {tmp} = "
                             f"{c_expr(m, [expr[(x, g)] for x in m.inputs])};")
                expr[(v, g)] = tmp
    # a gate-wide result is written through one pointer per gate: through one pointer, a
    # gate's column c and the next gate's column c - width would be the same element, and the
    # compiler may carry stores from one column to a later one, storing after the loop
    # columns of another thread's share (gcc 12's predictive commoning does, at -O2)
    gate_ptrs, gate_args = [], []
    for r, v in writes:
        if same_shape(v.shape, narrow):
            lines.append(f"{r}[i] = {expr[(v, None)]};")
            gate_ptrs.append(f"{ctype(v)} *restrict {r}")
            gate_args.append(r)
        else:
            lines += [f"{r}_{g}[iw] = {expr[(v, g)]};" for g in range(k)]
            gate_ptrs += [f"{ctype(v)} *restrict {r}_{g}" for g in range(k)]
            gate_args += [f"{r} + {g * width}" for g in range(k)]
    sig = signature(reads, writes)
    symbols = [f"tn_{s}" for s in size_symbols(reads, writes)]
    args = symbols + [r for r, _ in reads + writes]
    gates_sig = ", ".join([p for p in sig.split(", ") if "*restrict out" not in p] + gate_ptrs)
    # (only a kernel with a gate-wide result needs the function with a pointer per gate)
    gates_args = ", ".join(symbols + [r for r, _ in reads] + gate_args) \
        if len(gate_args) > len(writes) else None
    product, helpers = None, []
    if lead is not None:
        a, b = lead.inputs[0], lead.inputs[1]
        # packed: the loop hands over b in panels (weight_panels, packed by scan.py)
        packed = node.attrs.get("packed")
        K = a.shape[1]
        # float blocks of two whole vectors on the step's own tiles (scan_tiles.c.j2)
        product = dict(a=role[a], b=role[b], K=K, packed=packed,
                       tiles=bool(packed) and ct == "float",
                       panels=[panel_at(g, "j0", k, width, K) for g in range(k)])
        if product["tiles"]:
            helpers.append(tiles_helper(ct))
    # the pointers the gates of a block read and write (scan_cell.c.j2's {name}_block)
    block_sig = gates_sig if gates_args else sig
    block = dict(signature=block_sig,
                 args=", ".join(p.split()[-1].lstrip("*") for p in block_sig.split(", ")))
    src = render("scan_cell.c.j2", name=name, signature=sig, args=", ".join(args), block=block,
                 gates_signature=gates_sig, gates_args=gates_args,
                 node_lines=node_lines(members), rows=rows, width=width, k=k, lines=lines,
                 sfx=SFX[ct], ctype=ct, product=product,
                 row_block=ROW_BLOCK, column_block=COLUMN_BLOCK)
    flops = 2 * rows * width * k * product["K"] if product else 0
    kernel = Kernel(name, reads, writes, src, flops=flops, helpers=helpers)
    kernel.columns = width  # what the threads of a loop may split a step by
    kernel.rows = rows
    kernel.leading = lead is not None  # whether it reads the whole state (in its product)
    return kernel
