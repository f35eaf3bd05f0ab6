"""A unit's C source for this machine's compiler. A process that finds no record of the
compiler's flags runs its test compiles (~0.1 s, in other processes) while the kernel templates
compile (Jinja, ~0.15 s of Python the first time): the two slow parts of a first compile
overlap."""
import threading

from ..codegen.emit import generate as generate_source
from ..codegen.target import Target
from . import build, debug, target as runtime_target, toolchain


def generate(graphs, unit, timing=False):
    """``codegen.emit.generate(..., pieces=True)`` for the current target."""
    if toolchain.probe_pending():
        probe = threading.Thread(target=_probe, name="tracenet-probe", daemon=True)
        probe.start()
        with debug.phase("render"):
            try:  # a throw-away rendering for a likely target: it compiles the templates
                generate_source(graphs, unit, Target(openmp=True, cache_dir=build.cache_dir()),
                                timing=timing)
            except Exception:  # noqa: BLE001  (the rendering for the real target raises it)
                pass
        with debug.phase("probe"):
            probe.join()
    with debug.phase("probe"):
        target = runtime_target.current()
    with debug.phase("render"):
        return generate_source(graphs, unit, target, timing=timing, pieces=True)


def _probe():
    try:
        runtime_target.current()
    except Exception:  # noqa: BLE001  (raised again when the caller asks for the target)
        pass
