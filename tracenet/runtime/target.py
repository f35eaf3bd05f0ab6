"""The ``Target`` code generation builds for: this machine's C compiler, the flags it accepts,
whether OpenMP works and the vector width (probed once by ``runtime.toolchain``, remembered on
disk)."""
import os

from ..codegen.target import Target
from . import build, debug, toolchain

_shown = [None]


def current():
    """The Target for the compiler ``CC`` names now (``TRACENET_MARCH`` picks the CPU;
    ``TRACENET_ARENA=staggered`` staggers memory plans, see ``codegen.memory_plan``)."""
    _, identity = toolchain.compiler()
    target = Target(cc=identity, flags=toolchain.flags(),
                    openmp=bool(toolchain.openmp_flags()), vector_bits=toolchain.vector_bits(),
                    cache_dir=build.cache_dir(),
                    staggered_arena=os.environ.get("TRACENET_ARENA") == "staggered")
    if repr(target) != _shown[0]:
        _shown[0] = repr(target)
        debug.log("cache", f"building for {target!r}")
    return target
