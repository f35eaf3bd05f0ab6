"""A large unit as several C files compiled at the same time, then linked.

gcc compiles one file on one core, and most of a unit's cold build is gcc, so a unit with
enough kernel code is cut into one file per free core, kernels dealt out largest first to the
file that would finish first. A file whose kernels call the GEMM gets its own static copy of it:
the compiler specialises that copy to its callers' arguments (known multiples, bounds and
alignments), which an object file shared by every unit could not be (one measured as ~2% slower
training steps). The file with the entry points keeps its kernels static, as in the one-file
unit; the others give theirs hidden external linkage. A small unit stays one file: a second
compiler process and a link would cost more than they save.
"""
import os

# kernel source (bytes) from which a unit may be split
MIN_KERNEL_BYTES = 12_000
# compile cost, in bytes of kernel source: starting one more compiler and linking the files
FILE_OVERHEAD = 4_000
LINK_OVERHEAD = 3_000
# the GEMM micro-kernels take ~1.3x as long to compile as kernel source of the same length
GEMM_WEIGHT = 1.3


def cores():
    """How many compilers to run at once: ``TRACENET_BUILD_JOBS``, else the cores this process
    may run on less those other processes keep busy (the one-minute load average, less this
    process)."""
    raw = os.environ.get("TRACENET_BUILD_JOBS", "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            pass
    try:
        n = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        busy = max(0, round(os.getloadavg()[0]) - 1)
    except OSError:
        busy = 0
    return max(1, n - busy)


def kernel_bytes(pieces):
    return sum(len(k[1]) for k in pieces["kernels"])


def plan(pieces, jobs=None):
    """The C sources to build the unit from, or None to build it as one file."""
    jobs = cores() if jobs is None else jobs
    kernels = pieces["kernels"]
    if jobs < 2 or len(kernels) < 2 or kernel_bytes(pieces) < MIN_KERNEL_BYTES:
        return None
    gemm = GEMM_WEIGHT * (len(pieces["gemm_header"]) - len(pieces["header"]))
    # largest first to the file that would finish first, the GEMM's copies counted; or every
    # kernel that calls the GEMM in one file (one copy, less work in all): the earlier finish
    files = min((_deal(kernels, jobs, gemm, one_copy) for one_copy in (True, False)),
                key=lambda fs: (max(f["cost"] for f in fs), sum(f["cost"] for f in fs)))
    files = [f for f in files if f["kernels"]]
    one_file = kernel_bytes(pieces) + (gemm if any(k[5] for k in kernels) else 0)
    if len(files) < 2 or max(f["cost"] for f in files) + LINK_OVERHEAD >= one_file:
        return None
    files.sort(key=lambda f: f["cost"])  # the entry points go with the least work
    order = {k[0]: i for i, k in enumerate(kernels)}
    out = []
    for i, f in enumerate(files):
        mine = sorted(f["kernels"], key=lambda k: order[k[0]])  # the unit's order
        text = [pieces["gemm_header"] if f["gemm"] else pieces["header"]]
        done = set()
        for k in mine:
            for h in k[4]:
                if h not in done:
                    done.add(h)
                    text.append(pieces["helpers"][h])
        if i == 0:  # static, as in the one-file unit, and the others declared
            text += [k[1] for k in mine]
            text += [k[3] for other in files[1:] for k in other["kernels"]]
            text.append(pieces["tail"])
        else:
            text += [k[2] for k in mine]
        out.append("\n".join(text))
    return out


def _deal(kernels, jobs, gemm, one_copy):
    files = [{"cost": FILE_OVERHEAD, "gemm": False, "kernels": []} for _ in range(jobs)]

    def add(f, k):
        f["cost"] += len(k[1]) + (gemm if k[5] and not f["gemm"] else 0)
        f["gemm"] = f["gemm"] or k[5]
        f["kernels"].append(k)

    ordered = sorted(kernels, key=lambda k: -len(k[1]))
    if one_copy:
        for k in ordered:
            if k[5]:
                add(files[0], k)
    for k in ordered:
        if not (one_copy and k[5]):
            add(min(files, key=lambda f: f["cost"] + len(k[1]) +
                    (gemm if k[5] and not f["gemm"] else 0)), k)
    return files
