"""A unit's C source for this machine's compiler, with the slow parts of a first compile
overlapped: a process that finds no record of the compiler's flags runs its test compiles
(~0.1 s, in other processes) while the kernel templates compile (Jinja, ~0.15 s of Python the
first time), and a unit that will likely be split (it has a convolution: large kernels that call
the GEMM) starts building the shared GEMM object as soon as the flags are known, before its
own kernels are rendered."""
import threading

from ..codegen.emit import generate as generate_source
from ..codegen.target import Target
from . import build, debug, split, target as runtime_target, toolchain


def generate(graphs, unit, timing=False):
    """``codegen.emit.generate(..., pieces=True)`` for the current target; the pieces carry
    ``early``, the shared object's build if it was started here."""
    early = []

    def start(source):
        if not early:
            early.append(build.SharedBuild(source, after=probe))

    on_shared = start if split.cores() > 1 and _convolves(graphs) else None
    probe = None
    if toolchain.probe_pending():
        probe = threading.Thread(target=_probe, name="tracenet-probe", daemon=True)
        probe.start()
        with debug.phase("render"):
            try:  # a throw-away rendering for a likely target: it compiles the templates
                generate_source(graphs, unit, Target(openmp=True, cache_dir=build.cache_dir()),
                                timing=timing, pieces=True, shared_ready=on_shared)
            except Exception:  # noqa: BLE001  (the rendering for the real target raises it)
                pass
        with debug.phase("probe"):
            probe.join()
    with debug.phase("probe"):
        target = runtime_target.current()
    with debug.phase("render"):
        result = generate_source(graphs, unit, target, timing=timing, pieces=True,
                                 shared_ready=on_shared)
    if early:
        result[4]["early"] = early[0]
    return result


def _convolves(graphs):
    return any("conv" in (node.attrs.get("kind") or node.op)
               for _, graph in graphs for node in graph.nodes)


def _probe():
    try:
        runtime_target.current()
    except Exception:  # noqa: BLE001  (raised again when the caller asks for the target)
        pass
