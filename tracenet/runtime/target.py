"""The ``Target`` code generation builds for: this machine's C compiler, the flags it accepts
and whether OpenMP works (probed once by ``runtime.toolchain``, remembered on disk)."""
from ..codegen.target import Target
from . import build, toolchain


def current():
    """The Target for the compiler ``CC`` names now."""
    _, identity = toolchain.compiler()
    return Target(cc=identity, flags=toolchain.flags(), openmp=bool(toolchain.openmp_flags()),
                  cache_dir=build.cache_dir())
