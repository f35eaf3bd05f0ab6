"""C lowering of ``scan`` (``templates/scan.c.j2``): the loop body is planned once, with the
same planner as a whole graph, into a function of its own; the scan kernel calls it once per
step with the step's slices of the scanned inputs and outputs (pointer offsets) and its carries
alternating between two buffers, or, for a carry that is also a stacked output (an RNN's h,
the state a step read and its backward needs), in that output's slices. The body is planned
from ``scan_cell.cell_body``: a recurrent step's gate math as one kernel. Nothing in the C
grows with the trip count, which appears once, as the loop bound and the factor of the step
strides: a symbolic size there (a sequence length traced as the leading size ``N``) is the
run-time value ``tn_N``, and a symbolic batch size inside the body is passed on to the body
function.

The planner lives in ``codegen.emit`` (which imports the lowerings): it hands itself over with
``use_planner`` when it is imported. Also here: ``zeros``, a memset.
"""
import re

from ..._sym import Specialize, Sym, same_shape
from ...ops.common import INDEX_OUT_OF_RANGE, numel
from ..base import (SFX, Kernel, ctype, group_lowering, lowering, node_lines, signature,
                    size_symbols)
from ..templates import render
from .scan_cell import (COLUMN_BLOCK, GROUP, cell_body, rows_by_index, tiles_helper,
                        weight_panels)

_planner = [None]
ALIGN = 64


def use_planner(entry_point, plan):
    """``entry_point(name, graph)`` makes an entry record, ``plan(entry, prefix, target)``
    lowers its graph and lays out its memory (``codegen.emit.EntryPoint``/``plan_entry``)."""
    _planner[0] = (entry_point, plan)


def _aligned(nbytes):
    """``nbytes`` rounded up to a multiple of ``ALIGN`` (for every value of its symbols)."""
    if not isinstance(nbytes, Sym):
        return -(-nbytes // ALIGN) * ALIGN
    if any(c < 0 for c in nbytes.terms.values()):
        raise Specialize(f"no aligned layout for {nbytes.display()} bytes")
    return Sym({m: -(-c // ALIGN) * ALIGN for m, c in nbytes.terms.items()}, nbytes.hint)


def _nbytes(v):
    return numel(v.shape) * v.dtype.itemsize


@lowering("scan")
def lower_scan(name, node, exported, target, gather=None, head=None, unpermute=None,
               permute=None):
    """``gather``: the ``embedding`` whose rows are the first scanned input; ``head``: the
    [permute?, view, gemm] of a linear layer after it; ``unpermute``: the batch-first
    ``permute`` a scanned input is read through; ``permute``: the batch-first ``permute`` of
    a stacked output (a ``loop`` group: ``lower_loop``)."""
    body = cell_body(node.attrs["body"])  # the gate math as one kernel per step
    n_carry, n_xs = node.attrs["n_carry"], node.attrs["n_xs"]
    # the gate kernel reads the table's rows by index (none copied), when it alone reads them
    indexed = rows_by_index(body, n_carry) if gather is not None else None
    body = indexed or body
    packed = _packed_weight(body, n_carry + n_xs)
    entry_point, plan = _planner[0]
    entry = entry_point(f"{name}_body", body)
    constants, calls, copies = plan(entry, entry.name, target)
    helpers = [(f"{entry.name}_constants", "\n".join(constants))] if constants else []
    for k, _ in entry.kernels:
        helpers += k.helpers
        helpers.append((k.name, k.source))
    reads = [(f"in{i}", v) for i, v in enumerate(node.inputs)]
    if gather is not None:  # the table in the rows' place, and the indices
        reads[n_carry] = (f"in{n_carry}", gather.inputs[0])
        reads.append(("gidx", gather.inputs[1]))
    strided = None
    if unpermute is not None:  # the batch-first value in the scanned input's place
        slot = node.inputs.index(unpermute.output)
        reads[slot] = (f"in{slot}", unpermute.inputs[0])
        strided = _step_rows(body.inputs[slot], slot, f"in{slot}")
    writes = [(f"out{j}", v) for j, v in enumerate(node.outputs)]
    transposed = None
    if permute is not None:  # the stacked output's batch-first copy
        j = node.outputs.index(permute.inputs[0])
        writes.append(("tout", permute.output))
        transposed = {"ys": f"out{j}", "out": "tout", "stride": numel(body.outputs[j].shape),
                      "rows": numel(body.outputs[j].shape[:1]),
                      "row_bytes": numel(body.outputs[j].shape[1:]) *
                      body.outputs[j].dtype.itemsize}
    linear = None
    if head is not None:  # the layer's weight, bias and result
        gemm = head[-1]
        ys = (head[0] if head[0].op == "permute" else head[-2]).inputs[0]
        w = gemm.inputs[1]
        reads.append(("hw", w))
        if len(gemm.inputs) == 3:
            reads.append(("hb", gemm.inputs[2]))
        writes.append(("hout", gemm.output))
        width = w.shape[0]
        linear = {"ys": f"out{node.outputs.index(ys)}", "rows": numel(ys.shape[1:2]),
                  "k": ys.shape[2], "n": width, "npad": -(-width // COLUMN_BLOCK) * COLUMN_BLOCK,
                  "bias": len(gemm.inputs) == 3, "batch_first": head[0].op == "permute",
                  "block": COLUMN_BLOCK}
    n_in = len(body.inputs)
    n_out = len(body.outputs)
    work = 0  # bytes of scratch: the spare carry buffers, then the body's arena
    carries, skipped = [], set()
    for i in range(n_carry):
        c = {"slot": i, "out_slot": n_in + i, "init": f"in{i}", "out": f"out{i}",
             "spare": work, "mode": "swap", "bytes": _nbytes(node.outputs[i])}
        # a carry also stacked as a per-step output lives in that output's slices: the step
        # writes its new value into its own slice ("out"), or into the next step's slice when
        # the stacked value is the carry a step reads ("in"), instead of a copy per step
        same = [j for j in range(n_carry, n_out) if body.outputs[j] is body.outputs[i] and
                n_in + j not in skipped]
        read = [j for j in range(n_carry, n_out) if body.outputs[j] is body.inputs[i] and
                n_in + j not in skipped]
        if same or read:
            c["mode"], j = ("out", same[0]) if same else ("in", read[0])
            c["stack"], c["stride"] = f"out{j}", numel(body.outputs[j].shape)
            skipped.add(n_in + j)  # each stacked output holds one carry
        carries.append(c)
        work += _aligned(_nbytes(node.outputs[i]))
    packs = []
    if packed is not None:  # the weight in panels, packed once per call, read by every step
        slot, cell = packed
        w = body.inputs[slot]
        k, width = cell.attrs["pieces"], cell.attrs["narrow"][-1]
        per_gate, panels = weight_panels(k, width)
        packs.append({"slot": slot, "src": f"in{slot}", "K": w.shape[1], "gates": k,
                      "width": width, "per_gate": per_gate, "block": COLUMN_BLOCK, "at": work,
                      "ctype": ctype(w)})
        work += _aligned(panels * w.shape[1] * COLUMN_BLOCK * w.dtype.itemsize)
        if ctype(w) == "float":  # (its transpose: scan_tiles.c.j2)
            helpers += [h for h in [tiles_helper("float")] if h not in helpers]
    picked = None
    if gather is not None:  # two slices of picked rows (a step's, and the next one's) unless
        # the gate kernel reads the table by index
        table, idx = gather.inputs
        row_bytes = table.shape[1] * table.dtype.itemsize
        step_rows = numel(idx.shape[1:])
        picked = {"slot": n_carry, "table": f"in{n_carry}", "idx": "gidx",
                  "count": numel(idx.shape), "rows": step_rows, "table_rows": table.shape[0],
                  "row_bytes": row_bytes, "at": work, "by_index": indexed is not None,
                  "slice": _aligned(step_rows * row_bytes), "ctype": ctype(table)}
        work += 0 if indexed else 2 * picked["slice"]
    if strided is not None:  # two slices of its rows (a step's, and the next one's)
        strided["at"] = work
        work += 2 * strided["slice"]
    if linear is not None:  # the layer's weight transposed and its bias, their columns padded
        # to whole blocks (the tiles start from the bias: the pass that added it after them,
        # reloading what they had just stored, cost the LSTM LM's inference 359 -> 340 us on
        # one thread)
        linear["at"] = work
        work += _aligned(linear["k"] * linear["npad"] * 4)
        linear["bias_at"] = work
        work += _aligned(linear["npad"] * 4) if linear["bias"] else 0
    body_arena = work
    work += entry.arena_bytes
    copied = {p["slot"] for p in (picked, strided) if p is not None}
    steps = [{"slot": i, "ptr": f"in{i}", "stride": numel(body.inputs[i].shape)}
             for i in range(n_carry, n_carry + n_xs) if i not in copied]
    steps += [{"slot": n_in + j, "ptr": f"out{j}", "stride": numel(body.outputs[j].shape)}
              for j in range(n_carry, len(body.outputs))]
    n_consts = n_in - bool(indexed)  # (the step's indices: the body's last input)
    packed_slot = packs[0]["slot"] if packs else None
    consts = [{"slot": i, "ptr": f"(work + ({packs[0]['at']}))" if i == packed_slot else f"in{i}"}
              for i in range(n_carry + n_xs, n_consts)]
    if indexed:  # the whole table, and the step's indices
        consts.append({"slot": n_carry, "ptr": picked["table"]})
        steps.append({"slot": n_consts, "ptr": picked["idx"], "stride": picked["rows"]})
    # the body's copies into those outputs would copy a slice onto itself: left out (were one
    # kept, it would still copy nothing but the same bytes)
    copies = [c for c in copies if not any(c.startswith(f"memcpy((void *)args[{k}],")
                                           for k in skipped)]
    checks = list(entry.checks)
    body_calls = [c for _, c in calls]
    split = _thread_split(entry, body, body_calls, copies, n_carry, skipped, checks, target)
    if picked is not None:  # checked before the loop, as the embedding would
        picked["code"] = len(checks) + 1
        picked["own_rows"] = bool(split) and same_shape((split["rows"],), (picked["rows"],))
    for rows in (strided, transposed):
        if rows is not None:
            rows["own_rows"] = bool(split) and same_shape((split["rows"],), (rows["rows"],))
    if linear is not None:
        linear["own_rows"] = bool(split) and same_shape((split["rows"],), (linear["rows"],))
        # without a split loop, the steps' products after it, shared between threads
        linear["when"] = target.parallel.gemm(2 * linear["k"] * linear["n"] * numel(
            head[-1].output.shape[:1]), numel(head[-1].output.shape[:1]))
        helpers += [h for h in [tiles_helper("float")] if h not in helpers]
    if split:  # each thread on its rows or columns of every step; copies by one thread
        body_calls, copies = split["calls"], split["copies"]
        helpers = [h for h in helpers if h[0] not in split["replaced"]]
        helpers += [h for h in split.pop("helpers", ()) if h not in helpers]
    scratch = -(-work // 4)  # in floats
    src = render("scan.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes, scratch, "float",
                                     bool(checks) or picked is not None),
                 symbols=size_symbols(reads, writes),
                 calls=body_calls + copies, length=node.inputs[n_carry].shape[0],
                 n_args=max(entry.num_args, 1), consts=consts, carries=carries, steps=steps,
                 reverse=node.attrs.get("reverse", False), body_arena=body_arena,
                 checks=bool(checks), split=split, packs=packs, picked=picked, linear=linear,
                 strided=strided, transposed=transposed)
    if picked is not None:
        checks.append((IndexError, INDEX_OUT_OF_RANGE))  # as the embedding
    return Kernel(name, reads, writes, src, scratch=scratch, helpers=helpers, checks=checks,
                  parallel=bool(split) or bool(linear and linear["when"]) or
                  any(k.parallel for k, _ in entry.kernels))


@group_lowering("loop")
def lower_loop(name, node, exported, target):
    """A ``scan`` with the ``embedding`` whose rows it scans (or the batch-first ``permute``
    of a scanned input: each step copies its rows from the batch-first value, as a step
    without a gate kernel copies the table's rows below) and/or the linear layer after it (or
    the batch-first ``permute`` of a stacked output: each step's rows are copied to where they
    sit batch first, by the thread that wrote them when the threads split rows)
    (``passes/fusion.py``). The embedding: the loop checks the indices first; then the step's
    gate kernel reads row ``r`` of its input as the table's row ``index[r]`` (when it alone
    reads the rows: ``scan_cell.rows_by_index``), or each step copies its rows from the table
    into a slice in L1 (each thread the rows it runs, when the threads split rows), rather
    than reading them from a pass over every step's rows made before the loop by one thread.
    The linear layer: each step's rows of the stacked output
    are multiplied by its weight right after the step (by the thread that wrote them, when
    the threads split rows), on the loop's register tiles, and written where the layer's
    rows are (batch first, too); a loop that does not split multiplies them after it, the
    steps shared between threads."""
    members = list(node.members)
    gather = members.pop(0) if members[0].op == "embedding" else None
    unpermute = members.pop(0) if members[0].op == "permute" else None
    scan = members.pop(0)
    permute = members.pop(0) if [m.op for m in members] == ["permute"] else None
    return lower_scan(name, scan, exported, target, gather=gather, head=members or None,
                      unpermute=unpermute, permute=permute)


def _step_rows(value, slot, source):
    """A step's slice of a scanned input (``value``: [rows, ...]) copied by the loop into
    slices of its own from a batch-first ``source`` (row r of step t at row r * length + t):
    the template's ``step_rows``."""
    rows = numel(value.shape[:1])
    row_bytes = numel(value.shape[1:]) * value.dtype.itemsize
    return {"slot": slot, "table": source, "idx": None, "rows": rows, "row_bytes": row_bytes,
            "slice": _aligned(rows * row_bytes)}


def _packed_weight(body, first_const):
    """(slot, gate kernel): the body input (a loop constant) that a gate kernel's leading
    product reads as ``b^T`` and nothing else reads: the loop packs it once into panels of
    its transpose (``scan_cell.weight_panels``), and the product reads them row by row
    (register tiles of whole vectors, no reductions across lanes). None if none."""
    for node in body.nodes:
        if node.op == "fused" and node.attrs.get("group") == GROUP and \
                node.members[0].op == "gemm":
            w = node.members[0].inputs[1]
            if w not in body.inputs or body.inputs.index(w) < first_const or \
                    body.inputs.count(w) != 1 or w in body.outputs:
                return None
            if any(w in n.inputs for n in body.nodes if n is not node) or \
                    sum(w in m.inputs for m in node.members) != 1:
                return None
            node.attrs["packed"] = True
            return body.inputs.index(w), node
    return None


def _thread_split(entry, body, calls, copies, n_carry, skipped, checks, target):
    """How the threads share each step: None (one thread runs the loop), or a dict of the
    row and column counts of the gates (``rows``, ``width``), the C condition (or 1) under
    which they split the loop (``when``), the body's calls and copies as each thread runs
    them, whether the threads wait for each other at the end of every step when they split
    columns (``step_barrier``), and from how many rows per thread they split rows instead
    (``min_rows``; 0: never). The loop runs inside one parallel region, each thread owning
    the same rows or the same hidden units (columns of every gate and of the state) in every
    step.

    Split by rows (batch rows: each row's recurrence reads only its own row of the state),
    the threads never wait for each other inside the loop. Split by columns (a batch too
    small to share), every step of a recurrent loop needs the whole state of the step before,
    written by every thread.

    Two bodies qualify; no data check may stop the loop halfway in either:

    * a forward step, one gate kernel with the product inside (``_forward_split``): its
      columns are independent but for the product's reads of the whole state, which the
      barrier at the end of each step orders (split by columns);
    * a backward step, the gates' gradients then their product with the recurrent weight
      (``_backward_split``): split by columns, each thread computes its columns of the gate
      gradients, all wait, then each computes its columns of the state's gradient from all
      of them."""
    if checks:
        return None
    n_in = len(body.inputs)
    if len(entry.kernels) == 1 and len(calls) == 1:
        split = _forward_split(entry, body, calls, copies, n_in)
    elif len(entry.kernels) in (2, 3) and len(calls) == len(entry.kernels) and not copies:
        split = _backward_split(entry, body, calls, n_carry, skipped)
    else:
        return None
    if split is None:
        return None
    when = target.parallel.recurrent(split.pop("flops"), split["width"])
    if not when:
        return None
    (kernel, _) = entry.kernels[0]
    itemsize = kernel.writes[0][1].dtype.itemsize
    min_rows = target.parallel.recurrent_min_rows_per_thread if split.pop("row_copies", True) \
        else 0
    return dict(split, chunk=max(1, 64 // itemsize), when=when, rows=kernel.rows,
                min_rows=min_rows)


def _forward_split(entry, body, calls, copies, n_in):
    """A body that is one gate kernel: each thread runs its rows or columns of it. The body's
    copies must read the step's inputs: split by columns, one thread copies them whole after
    the barrier that ends the step before; split by rows, each thread copies its rows (which
    it wrote itself), when every copied value's leading dim is the rows (else the loop never
    splits rows: ``row_copies``)."""
    (kernel, _), = entry.kernels
    width = getattr(kernel, "columns", None)
    if width is None or not calls[0].startswith(kernel.name + "("):
        return None
    slots = body.inputs + body.outputs
    out, row_copies = [], True
    for c in copies:
        m = re.match(r"memcpy\(\(void \*\)args\[(\d+)\], \(const void \*\)args\[(\d+)\], "
                     r"(.*)\);$", c)
        if m is None or int(m.group(2)) >= n_in:
            return None
        dst, src, nbytes = m.groups()
        shape = slots[int(src)].shape
        if not shape or not same_shape(shape[:1], (kernel.rows,)):
            row_copies = False
            out.append(f"if (lead) {c}")
            continue
        row = f"(size_t)({numel(shape[1:]) * slots[int(src)].dtype.itemsize})"
        out.append(f"if (!by_columns) memcpy((char *)args[{dst}] + v0 * {row}, "
                   f"(const char *)args[{src}] + v0 * {row}, (v1 - v0) * {row}); "
                   f"else if (lead) {c}")
    return {"width": width, "flops": kernel.flops, "step_barrier": True,
            "calls": [_on_columns(kernel, calls[0])], "copies": out,
            "row_copies": row_copies, "replaced": ()}


def _on_columns(kernel, call):
    return re.sub(rf"^{kernel.name}\((.*)\);$", rf"{kernel.name}_cols(\1, v0, v1, u0, u1);",
                  call)


def _call_pointers(kernel, call):
    """The pointer arguments of a body call of ``kernel`` (reads, then writes)."""
    inner = call[len(kernel.name) + 1:call.rindex(")")]
    return inner.split(", ")[len(kernel.symbols):]


def _added(node):
    """The inputs of ``node`` if it is one addition of two values (alone or as a chain of
    one), else None."""
    if node.op == "fused" and node.attrs.get("group") == "elementwise" and \
            len(node.members) == 1:
        node = node.members[0]
    if node.op != "add" or len(node.inputs) != 2 or node.attrs.get("alpha", 1) != 1:
        return None
    return node.inputs


def _backward_split(entry, body, calls, n_carry, skipped):
    """A body that is a gate kernel (the gates' gradients) and then the product of its wide
    result with a weight the loop does not change (``dh_prev = dgates @ W``), maybe plus
    another gradient of the state (a GRU's ``z * dh``: ``dh_prev = d + dgates @ W``). Split
    by rows, each thread runs its rows of both. Split by columns, the threads run their
    columns of the gate kernel, wait for each other, then compute their columns of the
    product, which are the columns of the state gradient they read in the next step.

    So a thread reads another's results only in the product (the whole of the wide value),
    after the barrier; everything else it reads at its own columns, which it wrote itself.
    The wide value is rewritten in the next step; when it lives in the step's own slice of a
    stacked output (as the gate gradients do when the weight's gradient is summed after the
    loop), the next step writes another slice and the step needs no second barrier;
    elsewhere (the body's arena) every step ends with one."""
    (cell, cell_node), (prod, prod_node) = entry.kernels[:2]
    width = getattr(cell, "columns", None)
    if width is None or getattr(cell, "leading", False) or prod_node.op != "gemm" or \
            not calls[0].startswith(cell.name + "(") or not calls[1].startswith(prod.name + "("):
        return None
    a, b = prod_node.inputs[:2]
    attrs = prod_node.attrs
    if len(prod_node.inputs) != 2 or attrs.get("trans_a") or attrs.get("alpha", 1.0) != 1.0 \
            or a not in cell_node.outputs or len(a.shape) != 2 or len(b.shape) != 2:
        return None
    trans_b = bool(attrs.get("trans_b"))
    n = b.shape[0] if trans_b else b.shape[1]
    out = prod_node.outputs[0]
    # the product's columns are the hidden units the gate kernel reads at their own column
    if n != width or not same_shape(out.shape, cell_node.attrs["narrow"]):
        return None
    # the weight: read-only through the loop (a scanned slice or a constant operand)
    if b in body.inputs:
        if body.inputs.index(b) < n_carry:
            return None
    elif b.producer is None or b.producer.op != "constant":
        return None
    ptr_a, ptr_b, ptr_out = _call_pointers(prod, calls[1])
    start = ""  # the product is added to what the result's columns start as
    if len(entry.kernels) == 3:
        add, add_node = entry.kernels[2]
        terms = _added(add_node)
        if terms is None or not calls[2].startswith(add.name + "(") or out not in terms or \
                terms[0] is terms[1] or out in body.outputs or \
                any(out in n.inputs for n in body.nodes if n is not add_node):
            return None
        other = terms[1] if terms[0] is out else terms[0]
        if not same_shape(other.shape, out.shape) or \
                not same_shape(add_node.outputs[0].shape, out.shape):
            return None
        pointers = _call_pointers(add, calls[2])
        ptr_other, ptr_out = pointers[terms.index(other)], pointers[2]
        start = (f"for (long r = v0; r < v1; r++) for (int c = u0; c < u1; "
                 f"c++) ({ptr_out})[r * {width} + c] = ({ptr_other})[r * {width} + c]; ")
    n_in = len(body.inputs)
    stacked = {f"({ctype(a)} *)args[{n_in + j}]" for j in range(n_carry, len(body.outputs))
               if n_in + j not in skipped}
    # every other value is read only at the reader's own columns: by the same thread
    m, k = a.shape
    sfx = SFX[ctype(a)]
    acc = int(bool(start))
    if not same_shape((m,), (cell.rows,)):
        return None
    rows_a, rows_out = f"{ptr_a} + (size_t)v0 * {k}", f"{ptr_out} + (size_t)v0 * {n} + u0"
    tiles = False
    if trans_b:  # b is [n, k]: its rows [u0, u1)
        product = (f"tn_gemm_nt{sfx}((int)(v1 - v0), u1 - u0, {k}, {rows_a}, {k}, "
                   f"{ptr_b} + (size_t)u0 * {k}, {k}, NULL, {rows_out}, {n}, {acc});")
    elif ctype(a) == "float":  # b is [k, n]: its columns [u0, u1), whole blocks on the
        # step's own register tiles (the threads' shares are multiples of a block but for the
        # last), the rest on the GEMM's
        blk = COLUMN_BLOCK
        product = (f"int j = u0; for (; j + {blk} <= u1; j += {blk}) "
                   f"tn_scan_block{sfx}((int)(v1 - v0), {k}, {rows_a}, {k}, {ptr_b} + j, {n}, "
                   f"{ptr_out} + (size_t)v0 * {n} + j, {n}, {acc}); "
                   f"if (j < u1) tn_gemm{sfx}((int)(v1 - v0), u1 - j, {k}, {rows_a}, {k}, 1, "
                   f"{ptr_b} + j, {n}, NULL, {ptr_out} + (size_t)v0 * {n} + j, {n}, {acc});")
        tiles = True
    else:  # b is [k, n]: its columns [u0, u1)
        product = (f"tn_gemm{sfx}((int)(v1 - v0), u1 - u0, {k}, {rows_a}, {k}, 1, "
                   f"{ptr_b} + u0, {n}, NULL, {rows_out}, {n}, {acc});")
    return {"width": width, "flops": prod.flops,
            "step_barrier": ptr_a not in stacked,
            "calls": [_on_columns(cell, calls[0]),
                      "if (by_columns) {",
                      "#pragma omp barrier  /* the product reads every thread's gates */",
                      "}",
                      f"if (u1 > u0 && v1 > v0) {{ {start}{product} }}"],
            "copies": [],  # the product's and the addition's kernels are not called
            "replaced": tuple(k.name for k, _ in entry.kernels[1:]),
            "helpers": [tiles_helper(ctype(a))] if tiles else []}


@lowering("zeros")
def lower_zeros(name, node, exported, target):
    out = node.outputs[0]
    writes = [("out", out)]
    src = (f"static void {name}({signature([], writes)})\n{{\n"
           f"    memset(out, 0, {_nbytes(out)});\n}}\n")
    return Kernel(name, [], writes, src)
