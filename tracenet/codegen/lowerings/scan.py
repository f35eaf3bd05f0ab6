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
from ..._sym import Specialize, Sym
from ...ops.common import numel
from ..base import Kernel, lowering, node_lines, signature, size_symbols
from ..templates import render
from .scan_cell import cell_body

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
def lower_scan(name, node, exported, target):
    body = cell_body(node.attrs["body"])  # the gate math as one kernel per step
    n_carry, n_xs = node.attrs["n_carry"], node.attrs["n_xs"]
    entry_point, plan = _planner[0]
    entry = entry_point(f"{name}_body", body)
    constants, calls, copies = plan(entry, entry.name, target)
    helpers = [(f"{entry.name}_constants", "\n".join(constants))] if constants else []
    for k, _ in entry.kernels:
        helpers += k.helpers
        helpers.append((k.name, k.source))
    reads = [(f"in{i}", v) for i, v in enumerate(node.inputs)]
    writes = [(f"out{j}", v) for j, v in enumerate(node.outputs)]
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
    body_arena = work
    work += entry.arena_bytes
    steps = [{"slot": i, "ptr": f"in{i}", "stride": numel(body.inputs[i].shape)}
             for i in range(n_carry, n_carry + n_xs)]
    steps += [{"slot": n_in + j, "ptr": f"out{j}", "stride": numel(body.outputs[j].shape)}
              for j in range(n_carry, len(body.outputs))]
    consts = [{"slot": i, "ptr": f"in{i}"} for i in range(n_carry + n_xs, n_in)]
    # the body's copies into those outputs would copy a slice onto itself: left out (were one
    # kept, it would still copy nothing but the same bytes)
    copies = [c for c in copies if not any(c.startswith(f"memcpy((void *)args[{k}],")
                                           for k in skipped)]
    checks = list(entry.checks)
    scratch = -(-work // 4)  # in floats
    src = render("scan.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes, scratch, "float", bool(checks)),
                 symbols=size_symbols(reads, writes),
                 calls=[c for _, c in calls] + copies, length=node.inputs[n_carry].shape[0],
                 n_args=max(entry.num_args, 1), consts=consts, carries=carries, steps=steps,
                 reverse=node.attrs.get("reverse", False), body_arena=body_arena,
                 checks=bool(checks))
    return Kernel(name, reads, writes, src, scratch=scratch, helpers=helpers, checks=checks,
                  parallel=any(k.parallel for k, _ in entry.kernels))


@lowering("zeros")
def lower_zeros(name, node, exported, target):
    out = node.outputs[0]
    writes = [("out", out)]
    src = (f"static void {name}({signature([], writes)})\n{{\n"
           f"    memset(out, 0, {_nbytes(out)});\n}}\n")
    return Kernel(name, [], writes, src)
