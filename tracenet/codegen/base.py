"""What every lowering shares: C types, the ``Kernel`` record, signatures, errors and the
lowering table. It imports nothing else from codegen; the modules in ``codegen/lowerings``
register themselves here.

A lowering turns one IR node (or one fused group) into one C kernel. It is registered for op
names (``@lowering("max_pool")``) or for fused groups (``@group_lowering("conv")``, the
``group`` attribute fusion gives a fused node) and called as ``fn(name, node, exported,
target)``: ``exported`` are the node's output values something reads, ``target`` the
``codegen.target.Target``. Ops that only reinterpret their input's buffer register with
``alias_lowering``; elementwise ops need no registration: the elementwise group lowering
computes them from the registry's C expressions.
"""
import os

from .._sym import Specialize, Sym, is_one
from ..ir.printer import node_line
from ..ops.cexpr import SFX  # noqa: F401  (the lowerings' suffixes of typed C helpers)
from ..ops.common import numel
from ..ops.registry import REGISTRY

CTYPE = {"f32": "float", "f64": "double", "i64": "int64_t", "b8": "uint8_t"}


class LoweringError(NotImplementedError):
    """An op that has no C lowering."""


def ctype(value):
    return CTYPE[value.dtype.short]


class Kernel:
    def __init__(self, name, reads, writes, source, scratch=0, scratch_ctype="float", flops=0,
                 parallel=False, helpers=(), checks=(), symbols=()):
        self.name = name
        self.reads = reads          # [(role, Value)]
        self.writes = writes        # [(role, Value)]
        self.source = source
        # elements of scratch_ctype the kernel needs, or (per thread, "threads") for kernels
        # that give each OpenMP thread its own slice
        self.scratch = scratch
        self.scratch_ctype = scratch_ctype
        self.flops = flops          # for GFLOP/s under TRACENET_DEBUG=time
        self.parallel = parallel
        # [(name, source)] of functions several kernels share: emitted once per translation unit
        self.helpers = list(helpers)
        # the data checks the kernel makes, as (exception type, message format): see "data checks"
        self.checks = list(checks)
        self.extra_symbols = tuple(symbols)  # size symbols used besides those of its shapes

    def signature(self):
        return signature(self.reads, self.writes, self.scratch, self.scratch_ctype,
                         bool(self.checks), self.extra_symbols)

    @property
    def symbols(self):
        """The size symbols the kernel takes first (see ``signature``)."""
        return size_symbols(self.reads, self.writes, self.extra_symbols)


def size_symbols(reads, writes, extra=()):
    """The names of the size symbols in the shapes a kernel reads and writes (and ``extra``):
    a kernel takes each as a leading ``const int64_t tn_<name>`` argument, in this order."""
    return sorted({s for _, v in list(reads) + list(writes) for d in v.shape
                   if isinstance(d, Sym) for s in d.symbols()} | set(extra))


def signature(reads, writes, scratch=0, scratch_ctype="float", checks=False, symbols=()):
    parts = [f"const int64_t tn_{s}" for s in size_symbols(reads, writes, symbols)]
    parts += [f"const {ctype(v)} *restrict {role}" for role, v in reads]
    parts += [f"{ctype(v)} *restrict {role}" for role, v in writes]
    if scratch:
        parts.append(f"{scratch_ctype} *restrict scratch")
    if checks:
        parts.append("int64_t *restrict err")
    return ", ".join(parts) or "void"


# --- data checks ---------------------------------------------------------------------------------
#
# A kernel that validates its data (class targets, indices, probabilities) as eager mode does
# takes a trailing ``int64_t *err`` (the call's status, zeroed by the caller) and lists its
# checks in ``Kernel.checks``: (exception type, message format). When check ``c`` (1-based
# position in that list) fails, the kernel stores ``c`` in ``err[0]`` and up to
# ``STATUS_DETAILS`` values in ``err[1:]`` (the bad target, say) and returns (templates use the
# ``fail`` macro of ``_common.c.j2``); the entry point returns right after it, and the caller
# raises ``exc(message.format(*err[1:]))``. Constants of the message (a dim size) are part of
# the format, put there by the lowering.

STATUS_DETAILS = 3


def threads_scratch(per_thread, parallel, shared=0):
    """A kernel's scratch: ``shared`` elements every thread uses, then one slice of
    ``per_thread`` per possible thread when it runs in parallel (else one)."""
    if shared:
        return (per_thread, "threads", shared) if parallel else per_thread + shared
    return (per_thread, "threads") if parallel else per_thread


# --- sizes that may depend on the batch size ---------------------------------------------------
# Each is an int when known at compile time, else a C expression (a string) in the size
# symbols, so a lowering writes ``{{ rows }}`` into its template either way.

def size_max(a, b):
    try:
        return max(a, b)
    except (Specialize, TypeError):
        return f"({a} > {b} ? {a} : {b})"


def size_min(a, b):
    try:
        return min(a, b)
    except (Specialize, TypeError):
        return f"({a} < {b} ? {a} : {b})"


def size_ceil_div(a, b):
    """ceil(a / b) for positive sizes."""
    if isinstance(a, int) and isinstance(b, int):
        return -(-a // b)
    return f"(({a} + {b} - 1) / {b})"


def size_choice(condition, if_true, if_false):
    """``if_true`` when ``condition`` (0, 1, or a C condition from ``Parallelism``) holds."""
    if not isinstance(condition, str):
        return if_true if condition else if_false
    return f"({condition} ? {if_true} : {if_false})"


def offset_expr(shape, names):
    """C expression of the row-major offset of the element whose index along dim d is the C
    variable ``names[d]``."""
    strides = [numel(shape[d + 1:]) for d in range(len(shape))]
    terms = [names[d] if is_one(strides[d]) else f"{names[d]} * {strides[d]}"
             for d in range(len(shape)) if not is_one(shape[d])]
    return " + ".join(terms) or "0"


def node_lines(nodes):
    """The IR lines of ``nodes``, safe inside a C comment."""
    return [node_line(n, "").replace("*/", "* /") for n in nodes]


def where(node):
    if node.loc:
        return f" (traced at {os.path.basename(node.loc[0])}:{node.loc[1]})"
    return ""


def members(node):
    """The nodes a (possibly fused) node computes."""
    return node.members if node.op == "fused" else [node]


# --- the lowering table -------------------------------------------------------------------------

LOWERINGS = {}        # op name -> lowering
GROUP_LOWERINGS = {}  # fused group -> lowering
ALIAS = object()      # the lowering of an op whose result shares its input's buffer


def _register(table, keys, fn):
    for key in keys:
        if key in table:
            raise ValueError(f"{key!r} has two C lowerings")
        table[key] = fn
    return fn


def lowering(*ops):
    """Decorator registering the lowering of (unfused) nodes of the given ops."""
    return lambda fn: _register(LOWERINGS, ops, fn)


def group_lowering(*groups):
    """Decorator registering the lowering of fused nodes of the given groups."""
    return lambda fn: _register(GROUP_LOWERINGS, groups, fn)


def alias_lowering(*ops):
    """Ops whose result is their first input's buffer, reinterpreted: no kernel."""
    _register(LOWERINGS, ops, ALIAS)


def is_alias(op):
    return LOWERINGS.get(op) is ALIAS


def lowering_of(op):
    """The lowering of unfused ``op`` nodes, or None: registered ones first, then the
    elementwise kernel for ops the registry gives a C expression."""
    fn = LOWERINGS.get(op)
    if fn is None and op in REGISTRY and REGISTRY[op].c_expr is not None:
        fn = GROUP_LOWERINGS.get("elementwise")
    return fn


def has_lowering(op):
    return lowering_of(op) is not None


def lower_node(name, node, exported, target):
    """Kernel for a top-level node (fused or not); None for ops that only alias memory and for
    empty results."""
    if node.op == "fused":
        fn = GROUP_LOWERINGS.get(node.attrs["group"])
    else:
        fn = lowering_of(node.op)
    if fn is ALIAS:
        return None
    if all(numel(v.shape) == 0 for v in node.outputs):
        return None  # nothing to compute: empty outputs
    if fn is None:
        op = REGISTRY.get(node.op)
        why = f": {op.eager_only}" if op is not None and op.eager_only else ""
        raise LoweringError(f"op '{node.op}' has no C lowering{why}{where(node)}; run this "
                            "model in eager mode (without tracenet.compile)")
    return fn(name, node, set(exported), target)
