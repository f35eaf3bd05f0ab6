"""A large unit as several C files compiled at the same time, then linked.

gcc compiles one file on one core, and a unit's cold build is mostly gcc: a unit whose kernels
are large enough is cut into as many files as there are cores to run compilers on, kernels
dealt out by source size, and the GEMM micro-kernels every unit would otherwise compile again
come from one object file built (once per compiler and flags) and cached next to the libraries.
A small unit stays one file: a compiler's start-up and a link cost more than the split saves.
"""
import os

# kernel source (bytes) from which a unit is split: below it the compile of the kernels takes
# about as long as starting the compiler twice more and linking (~30 ms each)
MIN_KERNEL_BYTES = 12_000
# the smallest share of kernel source worth a compiler process of its own
MIN_PART_BYTES = 8_000


def cores():
    """How many compilers may run at once: ``TRACENET_BUILD_JOBS``, else the cores this
    process may run on."""
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
    return sum(len(src) for _, src, _, _ in pieces["kernels"])


def worth_splitting(pieces):
    return pieces is not None and cores() > 1 and kernel_bytes(pieces) >= MIN_KERNEL_BYTES


def part_sources(pieces, n):
    """The unit as ``n`` (or fewer) C sources: kernels dealt out largest first to the file with
    the least source so far; the constants and entry points go to the smallest file."""
    n = max(1, min(n, kernel_bytes(pieces) // MIN_PART_BYTES, len(pieces["kernels"])))
    bins = [[0, []] for _ in range(n)]
    for kernel in sorted(pieces["kernels"], key=lambda k: -len(k[1])):
        smallest = min(bins, key=lambda b: b[0])
        smallest[0] += len(kernel[1])
        smallest[1].append(kernel)
    out = []
    for i, (_, kernels) in enumerate(sorted(bins, key=lambda b: b[0])):
        kernels.sort(key=pieces["kernels"].index)  # the unit's order, for whoever reads it
        text = [pieces["header"]]
        done = set()
        for _, _, _, helpers in kernels:
            for h in helpers:
                if h not in done:
                    done.add(h)
                    text.append(pieces["helpers"][h])
        text += [k[1] for k in kernels]
        if i == 0:
            text.append(pieces["tail"])
        out.append("\n".join(text))
    return out
