"""A unit built as several files compiled at the same time, then linked.

gcc compiles one file on one core, and most of a unit's cold build is gcc. Half of it is the
GEMM's generic code (packing, tails, every tile size), which is the same for every unit: each
of its entry points (tn_gemm, tn_gemm_nt and the convolutions' gathered tn_ggemm, per element
type) is built once into an object
file of the cache (``build.object_file``) and linked into every unit that calls it, so a
unit's own files hold only its kernels. The kernels are dealt out largest first to the core
that would finish first, the GEMM objects not built yet counted as jobs of their own; the file
with the entry points keeps its kernels static, as in the one-file unit, the others give theirs
hidden external linkage. A unit is built as one file when that is quicker: small, without GEMM
calls, or on one core with the GEMM objects still to build.

A unit with large kernels (``OBJECT_MIN_BYTES``) builds each of them as an object file of the
cache of its own (``object_plan``), keyed by its source like every entry: the same kernel in
another unit (the model traced again with another head: the ResNet's training step after its
classifier changed, 0.5 s of gcc instead of 14) is compiled once and linked into each. The
units name their kernels after themselves, so the object's copy is renamed after its content
(``kernel_object``), and each unit calls it under its own name through a macro.
"""
import hashlib
import os
import re

# kernel source (bytes) from which a unit without GEMM calls may be split
MIN_KERNEL_BYTES = 12_000
# compile cost, in bytes of kernel source: starting one more compiler and linking the files
FILE_OVERHEAD = 4_000
LINK_OVERHEAD = 3_000
# the GEMM takes longer to compile than kernel source of the same length (its tiles are
# inlined many times over)
GEMM_WEIGHT = 1.3


def cores():
    """How many compilers to run at once: ``TRACENET_BUILD_JOBS``, else the cores this process
    may run on. (Not fewer when the machine is busy: the load average counts this process's
    own compiles of a moment ago, and on a shared core two compilers still get their share.)"""
    raw = os.environ.get("TRACENET_BUILD_JOBS", "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            pass
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def kernel_bytes(pieces):
    return sum(len(k[1]) for k in pieces["kernels"])


def gemm_cost(source):
    return GEMM_WEIGHT * len(source)


class Plan:
    """``files``: the unit's C files (the first one has the entry points); ``objects``: the
    GEMM objects to link in; ``cores``: per core, the jobs it runs one after the other, each
    ("file", index in ``files``) or ("object", GEMM entry point name)."""

    def __init__(self, files, objects, cores):
        self.files, self.objects, self.cores = files, objects, cores


def plan(pieces, jobs=None, built=(), started=()):
    """How to build the unit: a ``Plan``, or None to build it as one file with the GEMM in it.
    ``built``: the GEMM objects already in the cache; ``started``: those being compiled
    already (they keep a core busy, but a unit that calls one links it rather than compile
    the GEMM again)."""
    jobs = cores() if jobs is None else jobs
    kernels, gemm = pieces["kernels"], pieces.get("gemm", {})
    called = sorted({g for k in kernels for g in k[5]})
    if not kernels or (not called and (jobs < 2 or len(kernels) < 2 or
                                       kernel_bytes(pieces) < MIN_KERNEL_BYTES)):
        return None
    one_file = FILE_OVERHEAD + kernel_bytes(pieces) + sum(gemm_cost(gemm[g]) for g in called)
    bins = [{"cost": 0.0, "jobs": [], "kernels": []} for _ in range(jobs)]
    # the GEMM objects still to build first (largest first, each to the least loaded core),
    # then the kernels: a core's kernels make one file
    for g in sorted((g for g in called if g not in built), key=lambda g: -len(gemm[g])):
        b = min(bins, key=lambda b: b["cost"])
        b["cost"] += FILE_OVERHEAD + gemm_cost(gemm[g])
        if g not in started:
            b["jobs"].append(("object", g))
    for k in sorted(kernels, key=lambda k: -len(k[1])):
        b = min(bins, key=lambda b: b["cost"] + len(k[1]) + (0 if b["kernels"] else
                                                             FILE_OVERHEAD))
        b["cost"] += len(k[1]) + (0 if b["kernels"] else FILE_OVERHEAD)
        b["kernels"].append(k)
    if max(b["cost"] for b in bins) + LINK_OVERHEAD >= one_file and \
            not set(started) & set(called):
        return None
    bins = [b for b in bins if b["jobs"] or b["kernels"]]
    # the entry points go with the least work
    with_files = sorted((b for b in bins if b["kernels"]), key=lambda b: b["cost"])
    order = {k[0]: i for i, k in enumerate(kernels)}
    files = []
    for i, b in enumerate(with_files):
        mine = sorted(b["kernels"], key=lambda k: order[k[0]])  # the unit's order
        text = [pieces["header"]]
        done = set()
        for k in mine:
            for h in k[4]:
                if h not in done:
                    done.add(h)
                    text.append(pieces["helpers"][h])
        if i == 0:  # static, as in the one-file unit, and the others declared
            text += [k[1] for k in mine]
            text += [k[3] for other in with_files[1:] for k in other["kernels"]]
            text.append(pieces["tail"])
        else:
            text += [k[2] for k in mine]
        files.append("\n".join(text))
        b["jobs"].insert(0, ("file", i))
    return Plan(files, called, [b["jobs"] for b in bins])


# kernel source (bytes) from which a kernel is compiled as an object of its own, shared by the
# units that have it. Compiling one file costs ~15 ms more than its kernel (the header; 62
# kernels of the ResNet's step, 15.2 s of gcc one by one against 14.2 s as one file), as
# much as ~3 KB of kernel source; below this the unit's own file compiles it.
OBJECT_MIN_BYTES = 8_000

_HIDDEN = '__attribute__((visibility("hidden")))'
# what the renaming reads: comments and literals (left alone, but for the kernel's own name as
# a whole string literal passed to a function) and identifiers
_TOKENS = r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|\b[A-Za-z_]\w*'


class KernelObject:
    """A kernel as a C file of its own: ``symbol`` (the name it is defined under, from its
    content), ``text`` and ``name_literal`` (whether the file refers to ``<symbol>_name``,
    the kernel's name in the unit as a string, which the unit defines)."""

    def __init__(self, name, symbol, text, name_literal):
        self.name, self.symbol, self.text, self.name_literal = name, symbol, text, name_literal


def _without_leading_comment(code):
    """The kernel without the comment it starts with (its IR nodes: not what it computes)."""
    if code.lstrip().startswith("/*"):
        return code[code.index("*/") + 2:]
    return code


def kernel_object(pieces, kernel):
    """``kernel`` (an item of ``pieces["kernels"]``) as a ``KernelObject``: the header, its
    helpers and its hidden definition, with its name and every identifier that starts with it
    (its own macros and functions) renamed after a hash of the renamed text. A string literal
    of exactly its name, passed to a function (a log line naming the kernel), becomes an array
    the unit defines; any other mention in a literal stays, and keeps the file the unit's own."""
    name = kernel[0]
    own = re.compile(rf"{re.escape(name)}\w*\Z")
    literal = f'"{name}"'
    uses_literal = []

    def rename(placeholder):
        def one(m):
            token = m.group(0)
            if token == literal and _argument(m.string, m.start(), m.end()):
                uses_literal.append(True)
                return placeholder + "_name"
            if token[0] in "\"'":
                return token
            if token.startswith("/"):
                return re.sub(rf"\b{re.escape(name)}", placeholder, token)
            return placeholder + token[len(name):] if own.match(token) else token
        return one

    body = "\n".join([pieces["helpers"][h] for h in kernel[4]] +
                      [_without_leading_comment(kernel[2])])
    generic = re.sub(_TOKENS, rename("\0"), body, flags=re.S)
    symbol = "tn_kernel_" + hashlib.sha256(
        (pieces["header"] + "\0" + generic).encode()).hexdigest()[:24]
    declared = [f"extern {_HIDDEN} const char {symbol}_name[];"] if uses_literal else []
    text = "\n".join([pieces["header"]] + declared + [generic.replace("\0", symbol)])
    return KernelObject(name, symbol, text, bool(uses_literal))


def _argument(text, start, end):
    """Whether text[start:end] stands alone as an argument of a call (where an array of
    unknown size can stand for it: not under ``sizeof``)."""
    head = text[:start].rstrip()
    before, after = head[-1:], text[end:].lstrip()[:1]
    if before == "(" and re.search(r"\b(sizeof|_Alignof|__alignof__)\s*$", head[:-1]):
        return False
    return before in ("(", ",") and after in (")", ",")


class ObjectPlan:
    """``entry``: the unit's own file (its small kernels, static, the others declared under
    their own names, then the entry points); ``kernels``: the ``KernelObject`` of each large
    kernel; ``objects``: the GEMM objects to link in."""

    def __init__(self, entry, kernels, objects):
        self.entry, self.kernels, self.objects = entry, kernels, objects


def object_plan(pieces):
    """How to build the unit from kernel objects: an ``ObjectPlan``, or None when it has no
    kernel of ``OBJECT_MIN_BYTES`` (``plan`` decides then)."""
    kernels = pieces["kernels"]
    large = [k for k in kernels if len(k[1]) >= OBJECT_MIN_BYTES]
    if not large:
        return None
    objects = [kernel_object(pieces, k) for k in large]
    small = [k for k in kernels if len(k[1]) < OBJECT_MIN_BYTES]
    text = [pieces["header"]]
    done = set()
    for k in small:
        for h in k[4]:
            if h not in done:
                done.add(h)
                text.append(pieces["helpers"][h])
    text += [k[1] for k in small]
    named = set()
    for obj, k in zip(objects, large):
        text.append(f"#define {k[0]} {obj.symbol}")  # (the unit calls it by its own name)
        text.append(k[3])
        if obj.name_literal and obj.symbol not in named:
            named.add(obj.symbol)
            text.append(f'{_HIDDEN} const char {obj.symbol}_name[] = "{k[0]}";')
    text.append(pieces["tail"])
    called = sorted({g for k in kernels for g in k[5]})
    return ObjectPlan("\n".join(text), objects, called)
