"""A unit's C source for this machine's compiler. A process that finds no record of the
compiler's flags runs its test compiles (~0.1 s, in other processes) while the kernel templates
compile (Jinja, ~0.15 s of Python the first time): the two slow parts of a first compile
overlap. So do the compile of the GEMM objects the unit will probably link (when the cache
lacks them) and the rendering of its kernels."""
import threading

from ..codegen.emit import gemm_sources, generate as generate_source
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
    # a GEMM object the unit links compiles while the rest of its kernels are rendered
    with debug.phase("render"):
        return generate_source(graphs, unit, target, timing=timing, pieces=True,
                               on_gemm=lambda name: _start_gemm(target, name))


_rendered = {}  # (target, GEMM entry point) -> the source of its object


def _start_gemm(target, name):
    key = (repr(target), target.max_threads, name)
    if key not in _rendered:
        _rendered[key] = gemm_sources(target, [name])
    build.start_objects(_rendered[key])


def _probe():
    try:
        runtime_target.current()
    except Exception:  # noqa: BLE001  (raised again when the caller asks for the target)
        pass
