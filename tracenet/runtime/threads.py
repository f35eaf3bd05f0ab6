"""How many threads tracenet's work uses: the OpenMP threads of compiled code and the BLAS
threads of eager mode's numpy calls (``tracenet.set_num_threads``).

Compiled code uses ``compiled_threads()`` threads, passed to every entry point, which hands it
to OpenMP for the calling thread (so each Python thread's calls follow the current setting).
The default is the number of cores this process may run on (``OMP_NUM_THREADS`` when set).

Eager mode's BLAS calls (numpy's OpenBLAS) run on the calling thread by default: OpenBLAS
worker threads spin between calls, and on a loaded machine they slowed eager training steps
several times over while compiled code's threads competed with them; with one BLAS thread no
thread beyond the compiled code's ever runs. ``set_num_threads(n)`` sets both to ``n``, as
torch's does for its intra-op pool. A BLAS library other than OpenBLAS is left alone.
"""
import ctypes
import os
import re

from . import debug


def _cores():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _default():
    raw = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else _cores()


_threads = [_default()]


def compiled_threads():
    return _threads[0]


def set_num_threads(n):
    # torch's errors
    if isinstance(n, bool) or not isinstance(n, int):
        raise RuntimeError(f"set_num_threads expects an int, but got {type(n).__name__}")
    if n < 1:
        raise RuntimeError("set_num_threads expects a positive integer")
    _threads[0] = n
    set_blas_threads(n)


def get_num_threads():
    return _threads[0]


def _openblas():
    """(setter, getter) of numpy's OpenBLAS thread count, or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", f.read())))
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                setter = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
                    return setter, getter
    return None


_blas = []


def _blas_functions():
    if not _blas:
        import numpy  # noqa: F401  (loads the BLAS library whose threads are set)
        _blas.append(_openblas())
        if _blas[0] is None:
            debug.log("compile", "no OpenBLAS found: BLAS threads left as they are")
    return _blas[0]


def set_blas_threads(n):
    functions = _blas_functions()
    if functions is not None:
        functions[0](n)


def blas_threads():
    """The BLAS library's thread count (None when it cannot be read)."""
    functions = _blas_functions()
    return None if functions is None else functions[1]()
