"""Turn C source into a loaded shared library, through a content-addressed on-disk cache.

The compiler is run directly (much faster than going through ``ffi.compile``) and the result
loaded with ``cffi``'s ``dlopen``. The cache key hashes the source, compiler identity, flags
and target CPU; a build is written under a temporary name and renamed into place atomically, so
concurrent processes never load a half-written library and a second process compiles nothing.
"""
import hashlib
import os
import subprocess
import tempfile
import time

import cffi

from . import debug, toolchain
from .cache import atomic_write, cache_dir
from .toolchain import CompilerError


def cache_key(source, flags):
    argv, identity = toolchain.compiler()
    h = hashlib.sha256()
    for part in (source, " ".join(argv), identity, " ".join(flags), toolchain.target_cpu()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


# Loaded libraries are never closed: unloading the last one that uses OpenMP would unload
# libgomp under its sleeping worker threads. They are small, and cached by source anyway.
_loaded = {}


class Library:
    """A loaded shared library plus where it came from."""

    def __init__(self, ffi, lib, path, source_path, cached, seconds):
        self.ffi, self.lib = ffi, lib
        self.path, self.source_path = path, source_path
        self.cached, self.seconds = cached, seconds


def build(source, cdef, name="graph", openmp=False):
    """Compile ``source`` (or reuse the cached build) and load it with ``cdef`` declarations."""
    flags = toolchain.flags() + (toolchain.openmp_flags() if openmp else ())
    key = cache_key(source, flags)
    d = cache_dir()
    so_path = os.path.join(d, f"{name}-{key}.so")
    c_path = os.path.join(d, f"{name}-{key}.c")
    start = time.perf_counter()
    cached = os.path.exists(so_path)
    if cached:
        debug.log("cache", f"hit {so_path}")
    else:
        debug.log("cache", f"miss {so_path}")
        _compile(source, c_path, so_path, flags)
    if so_path in _loaded:
        ffi, lib = _loaded[so_path]
    else:
        ffi = cffi.FFI()
        ffi.cdef(cdef)
        lib = ffi.dlopen(so_path)
        _loaded[so_path] = (ffi, lib)
    seconds = time.perf_counter() - start
    debug.log("c", f"source {c_path}")
    debug.log("time", f"{'load' if cached else 'compile+load'} {name}: {seconds * 1e3:.1f} ms")
    return Library(ffi, lib, so_path, c_path, cached, seconds)


def _compile(source, c_path, so_path, flags):
    atomic_write(c_path, source)  # kept next to the library for inspection and errors
    argv, _ = toolchain.compiler()
    fd, tmp_so = tempfile.mkstemp(dir=os.path.dirname(so_path), prefix=".tmp-", suffix=".so")
    os.close(fd)
    cmd = list(argv) + list(flags) + [c_path, "-o", tmp_so, "-lm"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except OSError as e:
        os.unlink(tmp_so)
        raise CompilerError(f"cannot run the C compiler {argv[0]!r}: {e}\n"
                            f"generated source kept at {c_path}") from None
    if res.returncode != 0:
        os.unlink(tmp_so)
        raise CompilerError(
            f"the C compiler failed (exit {res.returncode}) on generated source {c_path}\n"
            f"command: {' '.join(cmd)}\n{res.stderr.strip() or res.stdout.strip()}")
    os.replace(tmp_so, so_path)
