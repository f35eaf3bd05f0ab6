"""Graph -> one C translation unit: kernels, constants, a memory plan, and one exported entry
point per graph.

Entry points take ``void *const *args``, the graph's inputs then its outputs as buffer
addresses; ``char *arena``, the caller's work memory (``EntryPoint.arena_bytes``, aligned to
``ARENA_ALIGN``): intermediates and kernel scratch live there, laid out by
``memory_plan`` (liveness-based, reusing the memory of dead values; views alias their source
buffer; optionally staggered modulo a page); ``int64_t *err``, the
call's status (see "data checks" in ``base``): an entry returns right after a kernel that
reports bad data, and ``EntryPoint.checks`` says how each status code is raised; and
``int64_t tn_N, int64_t tn_T``, the values of the size symbols ``N`` (batch size) and ``T``
(sequence length) in graphs whose shapes use them (sizes, offsets and the arena size are
then C expressions in them); and ``int threads``, the
OpenMP thread count for its parallel kernels (``tracenet.set_num_threads``). The generated
code keeps no state of its own besides read-only constants, so one library serves any number
of callers at once, each with its own arena and status.
"""
import hashlib
import os
import re

import numpy as np

from .._sym import SYMBOLS, display
from ..ops.common import numel
from . import lowerings  # noqa: F401  (registers every lowering)
from . import templates
from .base import CTYPE, ctype, is_alias, lower_node
from .memory_plan import ALIGN, Plan
from .templates import render

# what an entry point's arena is aligned to (a page measured slower at batch 64 here; a
# staggered plan keeps its buffers apart modulo a page relative to the arena either way)
ARENA_ALIGN = ALIGN
# the entry points' arguments after the status: the values of the size symbols (0 in graphs
# that do not use them)
SIZE_ARGUMENTS = ", ".join(f"int64_t tn_{s}" for s in SYMBOLS)


def c_identifier(text):
    """A safe C identifier derived from arbitrary text (module or attribute names); a long one
    is cut short and made unique by a hash (it also names files)."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", text)
    if not ident or ident[0].isdigit():
        ident = "_" + ident
    if len(ident) > 64:
        ident = ident[:48] + "_" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return ident


def c_comment(text):
    """Arbitrary text (a module's name) made safe inside a C comment: one line of printable
    ASCII that cannot end the comment."""
    text = "".join(c if " " <= c <= "~" and c != "\\" else "_" for c in str(text))
    return text.replace("*/", "*_/")


def root_of(v):
    """The value whose buffer ``v`` lives in (following views)."""
    while v.producer is not None and is_alias(v.producer.op):
        v = v.producer.inputs[0]
    return v


class EntryPoint:
    """One graph's C entry function and how to call it."""

    def __init__(self, name, graph):
        self.name = name
        self.graph = graph
        self.kernels = []          # (Kernel, node)
        self.arena_bytes = 0       # the work memory a call needs (0: pass NULL)
        self.copies = []           # (output index, value) copied at the end
        self.checks = []           # status code - 1 -> (exception type, message format)

    # whether its plan may stagger or spread buffers (``Target.staggered_arena``,
    # ``Target.l2_set_period``; see ``memory_plan``): not inside another kernel's scratch
    page_aligned = True

    @property
    def num_args(self):
        return len(self.graph.inputs) + len(self.graph.outputs)


def _exported(graph):
    """Values read by some node or returned: what a kernel must actually store."""
    used = set(graph.outputs)
    for node in graph.nodes:
        used.update(node.inputs)
    return used


def _format_constant(array, ct):
    flat = array.reshape(-1)
    if ct == "float":
        items = [float(x).hex() + "f" if np.isfinite(x) else
                 ("NAN" if np.isnan(x) else ("INFINITY" if x > 0 else "-INFINITY"))
                 for x in flat.astype(np.float64)]
    elif ct == "double":
        items = [float(x).hex() if np.isfinite(x) else
                 ("NAN" if np.isnan(x) else ("INFINITY" if x > 0 else "-INFINITY"))
                 for x in flat]
    else:
        items = [str(int(x)) for x in flat]
    body = ", ".join(items) if items else "0"
    return body


def _nbytes(v):
    return numel(v.shape) * v.dtype.itemsize


def plan_entry(entry, prefix, target):
    """Lower every node of ``entry.graph`` and lay out its memory; returns C source lines."""
    graph = entry.graph
    exported = _exported(graph)
    storage = {}           # root Value -> C pointer expression (untyped)
    decls = []
    n_in = len(graph.inputs)
    for i, v in enumerate(graph.inputs):
        storage[v] = f"args[{i}]"
    constants = []
    for node in graph.nodes:
        if node.op == "constant":
            v = node.output
            cname = f"{prefix}_c{v.id}"
            ct = ctype(v)
            arr = np.ascontiguousarray(node.attrs["value"])
            constants.append(f"static const {ct} {cname}[{max(arr.size, 1)}] "
                             f"__attribute__((aligned({ALIGN}))) = "
                             f"{{{_format_constant(arr, ct)}}};")
            storage[v] = f"(void *){cname}"
    for j, v in enumerate(graph.outputs):
        r = root_of(v)
        if r in storage or r.producer is None:
            entry.copies.append((j, v))
        else:
            storage[r] = f"args[{n_in + j}]"

    # lower nodes
    kernels = []
    for idx, node in enumerate(graph.nodes):
        if node.op == "constant":
            continue
        kname = f"{prefix}_k{idx}_{c_identifier(node.attrs.get('kind', node.op))}"
        k = lower_node(kname, node, [v for v in node.outputs if v in exported], target)
        if k is not None:
            kernels.append((idx, k, node))
        elif not is_alias(node.op):
            for v in node.outputs:  # empty results: nothing is ever read through them
                storage.setdefault(v, "(void *)0")

    # lifetimes of arena values (by node index), following aliases to their roots
    last_use = {}
    for idx, node in enumerate(graph.nodes):
        for v in node.inputs:
            r = root_of(v)
            last_use[r] = max(last_use.get(r, idx), idx)
    plan = Plan(staggered=entry.page_aligned and target.staggered_arena,
                spread=target.l2_set_period if entry.page_aligned else 0)
    live = []  # (end, slot)
    placements = {}
    scratch_at = {}
    for idx, k, node in kernels:
        for end, slot in [e for e in live if e[0] < idx]:
            plan.release(slot)
        live = [e for e in live if e[0] >= idx]
        for role, v in k.writes:
            r = root_of(v)
            if r in storage or r in placements:
                continue
            placements[r] = slot = plan.alloc(_nbytes(r))
            live.append((last_use.get(r, idx), slot))
        if k.scratch:
            # (per thread, "threads"[, shared]) reserves a slice per possible thread
            if isinstance(k.scratch, tuple):
                elems = k.scratch[0] * target.max_threads + \
                    (k.scratch[2] if len(k.scratch) > 2 else 0)
            else:
                elems = k.scratch
            nb = elems * np.dtype({"float": np.float32, "double": np.float64,
                                   "int64_t": np.int64}[k.scratch_ctype]).itemsize
            scratch_at[idx] = slot = plan.alloc(nb)
            live.append((idx, slot))
    base, entry.arena_bytes = plan.layout()
    for r, slot in placements.items():
        storage[r] = f"(void *)(arena + {Plan.offset(base, slot)})"
    scratch_at = {idx: Plan.offset(base, slot) for idx, slot in scratch_at.items()}

    def ptr(v):
        return f"({CTYPE[v.dtype.short]} *){storage[root_of(v)]}"

    body = []
    for idx, k, node in kernels:
        args = [ptr(v) for _, v in k.reads] + [ptr(v) for _, v in k.writes]
        if k.scratch:
            args.append(f"({k.scratch_ctype} *)(arena + {scratch_at[idx]})")
        sizes = [f"tn_{name}" for name in k.symbols]
        call = f"{k.name}({', '.join(sizes + args + ['err'] * bool(k.checks))});"
        if k.checks:  # the kernel's codes count from 1: shift them to the entry's
            base = len(entry.checks)
            entry.checks += k.checks
            call += f" if (err[0]) {{ {f'err[0] += {base}; ' if base else ''}return; }}"
        body.append((k, call))
        entry.kernels.append((k, node))
    copies = []
    for j, v in entry.copies:
        copies.append(f"memcpy((void *)args[{n_in + j}], (const void *){storage[root_of(v)]}, "
                      f"{_nbytes(v)});")
    return constants, body, copies


# a call of one of the GEMM's entry points (templates/_gemm.c.j2; tn_gemm_wide and tn_gemm_zmm
# are defined with tn_gemm), and their element types
_GEMM_CALL = re.compile(r"\b(tn_g?gemm(?:_nt|_dots)?)(?:_wide|_zmm)?(_f(?:32|64))\s*\(")


def _gemm_calls(text):
    """The GEMM entry points (named as their objects are) that C ``text`` calls."""
    return [entry + sfx for entry, sfx in _GEMM_CALL.findall(text)]


_GEMM_CTYPE = {"_f32": "float", "_f64": "double"}
# the entry point's name (less the type suffix) -> what ``_gemm.c.j2`` calls it in ``only``
_GEMM_ENTRY = {"tn_gemm": "nn", "tn_gemm_nt": "nt", "tn_ggemm": "gg", "tn_gemm_dots": "dots"}


def gemm_sources(target, names):
    """GEMM entry point name -> a C file defining just it, with hidden linkage: built once
    and linked into every unit that calls it."""
    return {g: "\n".join([
        "/* generated by tracenet: the GEMM's entry point, linked into the units that call it */",
        # (it needs only memcpy: no tgmath.h, which is most of a kernel file's parsing)
        "#define _POSIX_C_SOURCE 199309L", "#include <stdint.h>", "#include <string.h>",
        render("_preamble.c.j2", max_threads=target.max_threads, ctypes={_GEMM_CTYPE[g[-4:]]},
               gemm_linkage='__attribute__((visibility("hidden")))',
               gemm_only=(_GEMM_ENTRY[g[:-4]],))]) for g in names}


def generate(graphs, unit, target, timing=False, pieces=False, on_gemm=None):
    """C source for ``graphs`` (a list of (entry suffix, Graph)) built for ``target`` (a
    ``codegen.target.Target``); returns (source, cdef, [EntryPoint], whether OpenMP is
    used), and with ``pieces`` a fifth item: the same unit as pieces that can be compiled
    apart and linked (see ``runtime.split``), a dict of

    * ``header``: what every piece starts with, with the GEMM entry points declared (hidden)
      but not defined;
    * ``gemm``: GEMM entry point name -> a C file defining just it (hidden), built once and
      linked into every unit that calls it (``runtime.gemm``);
    * ``kernels``: [(name, source, definition with hidden external linkage, its prototype,
      [helper names], the GEMM entry points it calls)];
    * ``helpers``: helper name -> source, static in each piece that uses it;
    * ``tail``: constants and entry points (after the kernels it calls, or their prototypes).

    Kernels that come out identical but for their name (the same template with the same
    constants: repeated layers, equal-sized optimizer updates) are emitted once and called
    under the first one's name. ``on_gemm(name)`` is told of each GEMM entry point the unit
    calls as soon as the first kernel calling it is rendered (its object may start compiling
    while the rest is rendered)."""
    templates.use_cache_dir(target.cache_dir)
    prefix = c_identifier(f"tn_{unit}")
    includes = ["/* generated by tracenet: one translation unit, one entry point per graph */",
                "#define _POSIX_C_SOURCE 199309L", "#include <stdint.h>", "#include <stddef.h>",
                "#include <string.h>", "#include <tgmath.h>", ""]
    ctypes = {CTYPE[v.dtype.short] for _, g in graphs for n in g.nodes for v in n.outputs}
    parts = includes + [None]  # the preamble, rendered last with the GEMM entries called
    preamble_at = len(parts) - 1
    clock = []
    if timing:
        # TRACENET_TIME_CLOCK=cpu times kernels in process CPU time (steadier on a busy machine)
        which = "CLOCK_PROCESS_CPUTIME_ID" if os.environ.get("TRACENET_TIME_CLOCK") == "cpu" \
            else "CLOCK_MONOTONIC"
        clock = ["#include <time.h>",
                 "static double tn_now(void) { struct timespec t; "
                 f"clock_gettime({which}, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }}", ""]
    parts += clock
    cdefs, entries = [], []
    helpers = {}   # name -> source, in order of first use
    kernels = []   # (name, source, helper names), each distinct kernel once
    emitted = {}   # a kernel's source with its own name blanked -> the name it has in the unit
    tail = []      # constants and entry points
    gemm_seen = set()  # the GEMM entry points on_gemm was told of
    for suffix, graph in graphs:
        entry = EntryPoint(f"{prefix}_{c_identifier(suffix)}", graph)
        constants, body, copies = plan_entry(entry, entry.name, target)
        parts += constants
        parts.append("")
        tail += constants
        calls = []
        for k, call in body:
            # the leading comment shows the kernel's IR nodes: not part of what it computes
            about, code = "", k.source
            if code.lstrip().startswith("/*"):
                cut = code.index("*/") + 2
                about, code = code[:cut], code[cut:]
            name = emitted.setdefault(code.replace(k.name, "\0"), k.name)
            if name != k.name:  # a copy of a kernel already emitted: call that one
                assert call.startswith(k.name + "("), call
                call = name + call[len(k.name):]
                if about:  # whoever looks for these nodes finds where they run
                    parts.append(f"{about}\n/* (computed by {name}) */\n")
            else:
                for helper, source in k.helpers:
                    if helper not in helpers:
                        helpers[helper] = source
                        parts.append(source)
                parts.append(k.source)
                kernels.append((k.name, k.source, [h for h, _ in k.helpers]))
                if on_gemm is not None:
                    for g in _gemm_calls(k.source + "".join(h for _, h in k.helpers)):
                        if g not in gemm_seen:
                            gemm_seen.add(g)
                            on_gemm(g)
            calls.append(call)
        lines = []
        if timing:
            lines.append(f"static double {entry.name}_times[{max(len(body), 1)}];")
            lines.append(f"double *{entry.name}_kernel_times(void) {{ return "
                         f"{entry.name}_times; }}")
            cdefs.append(f"double *{entry.name}_kernel_times(void);")
        sig = f"void {entry.name}(void *const *args, char *arena, int64_t *err, " \
              f"{SIZE_ARGUMENTS}, int threads)"
        lines.append(f"/* graph {c_comment(graph.name)}: {len(graph.inputs)} inputs, "
                     f"{len(graph.outputs)} outputs, arena {display(entry.arena_bytes)} bytes */")
        lines.append(sig)
        lines.append("{")
        if any(k.parallel for k, _ in body):  # the caller's thread count, for its regions
            # per-thread scratch has a slice for at most TN_MAX_THREADS threads
            lines.append("    if (threads > TN_MAX_THREADS) threads = TN_MAX_THREADS;")
            lines.append("    omp_set_num_threads(threads);")
        for i, call in enumerate(calls):
            if timing:
                lines.append(f"    {{ double t0 = tn_now(); {call} "
                             f"{entry.name}_times[{i}] = tn_now() - t0; }}")
            else:
                lines.append(f"    {call}")
        for c in copies:
            lines.append(f"    {c}")
        lines.append("}")
        lines.append("")
        parts += lines
        tail += lines
        cdefs.append(sig + ";")
        entries.append(entry)
    uses_openmp = any(k.parallel for e in entries for k, _ in e.kernels)
    # only the GEMM entry points the kernels call: the whole GEMM is ~5000 lines, most of a
    # small unit's parsing (a unit of three elementwise kernels: gcc 104-153 -> 87-130 ms)
    called = {_GEMM_ENTRY[g[:-4]] for g in _gemm_calls("\n".join(parts[preamble_at + 1:]))}
    parts[preamble_at] = render("_preamble.c.j2", max_threads=target.max_threads, ctypes=ctypes,
                                gemm_only=tuple(sorted(called)))
    source, cdef = "\n".join(parts), "\n".join(cdefs)
    if not pieces:
        return source, cdef, entries, uses_openmp
    hidden = '__attribute__((visibility("hidden")))'
    split = []
    for name, ksource, helper_names in kernels:
        head = f"static void {name}("
        start = ksource.index(head)
        depth, end = 0, start + len(head) - 1
        for end in range(end, len(ksource)):  # the parameter list's closing parenthesis
            depth += {"(": 1, ")": -1}.get(ksource[end], 0)
            if depth == 0:
                break
        split.append((name, ksource, ksource[:start] + f"{hidden} void {name}(" +
                      ksource[start + len(head):],
                      f"{hidden} void {ksource[start + len('static void '):end + 1]};",
                      helper_names,
                      # (a loop's body functions, among its helpers, may call the GEMM too)
                      sorted({m for text in [ksource] + [helpers[h] for h in helper_names]
                              for m in _gemm_calls(text)})))
    called = sorted({g for k in split for g in k[5]})
    layout = {
        "header": "\n".join(includes + [render("_preamble.c.j2", max_threads=target.max_threads,
                                                ctypes=ctypes, with_gemm=False,
                                                gemm_declared=True, gemm_linkage=hidden)]),
        "gemm": gemm_sources(target, called),
        "kernels": split,
        "helpers": helpers,
        "tail": "\n".join(clock + tail),
    }
    return source, cdef, entries, uses_openmp, layout


class LoopBody(EntryPoint):
    """A scan's loop body: its arena lies in the scan kernel's scratch, aligned to ``ALIGN``
    only, so its plan packs buffers, never staggers them."""

    page_aligned = False


# the scan lowering plans its loop body as a function of its own, with this module's planner
lowerings.scan.use_planner(LoopBody, plan_entry)
