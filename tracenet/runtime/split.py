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
"""
import os

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
