"""The ``Target`` code generation builds for: this machine's C compiler, the flags it accepts,
whether OpenMP works and the vector width (probed once by ``runtime.toolchain``, remembered on
disk)."""
import functools
import os

from ..codegen.target import Target
from . import build, debug, toolchain

_shown = [None]


CPU_CACHES = "/sys/devices/system/cpu/cpu0/cache"


@functools.lru_cache(maxsize=None)
def l2_set_period(caches=CPU_CACHES):
    """This machine's L2 sets x line size in bytes (``Target.l2_set_period``), read from
    sysfs; 0 where it does not say, or says a size that is not a power of two."""
    try:
        for index in sorted(os.listdir(caches)):
            def read(name):
                with open(os.path.join(caches, index, name)) as f:
                    return f.read().strip()
            if read("level") == "2" and read("type") in ("Unified", "Data"):
                period = int(read("number_of_sets")) * int(read("coherency_line_size"))
                return period if period >= 4096 and period & (period - 1) == 0 else 0
    except (OSError, ValueError):
        pass
    return 0


def arena_layout():
    """(staggered_arena, l2_set_period) as ``TRACENET_ARENA`` asks: ``staggered`` staggers
    memory plans modulo a page, ``packed`` packs them, anything else (the default) spreads
    them over the L2's sets (``codegen.memory_plan``)."""
    layout = os.environ.get("TRACENET_ARENA")
    if layout == "staggered":
        return True, 0
    return False, 0 if layout == "packed" else l2_set_period()


def current():
    """The Target for the compiler ``CC`` names now (``TRACENET_MARCH`` picks the CPU;
    ``TRACENET_ARENA`` the memory plans' layout, see ``arena_layout``)."""
    _, identity = toolchain.compiler()
    staggered, period = arena_layout()
    target = Target(cc=identity, flags=toolchain.flags(),
                    openmp=bool(toolchain.openmp_flags()), vector_bits=toolchain.vector_bits(),
                    cache_dir=build.cache_dir(), staggered_arena=staggered,
                    l2_set_period=period)
    if repr(target) != _shown[0]:
        _shown[0] = repr(target)
        debug.log("cache", f"building for {target!r}")
    return target
