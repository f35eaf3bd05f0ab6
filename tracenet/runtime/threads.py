"""How many threads tracenet's work uses: the OpenMP threads of compiled code and the BLAS
threads of eager mode's numpy calls (``tracenet.set_num_threads``).

Compiled code uses ``compiled_threads()`` threads, passed to every entry point, which hands it
to OpenMP for the calling thread (so each Python thread's calls follow the current setting).
The default is the number of cores this process may run on (``OMP_NUM_THREADS`` when set),
lowered while other processes keep cores busy (``LoadWatch``) unless a count was set.

Eager mode's BLAS calls (numpy's OpenBLAS) run on the calling thread by default: OpenBLAS
worker threads spin between calls, and on a loaded machine they slowed eager training steps
several times over while compiled code's threads competed with them; with one BLAS thread no
thread beyond the compiled code's ever runs. ``set_num_threads(n)`` sets both to ``n``, as
torch's does for its intra-op pool. A BLAS library other than OpenBLAS is left alone.
"""
import ctypes
import os
import re
import time

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


class LoadWatch:
    """How many cores other processes leave free, sampled at most every ``period`` seconds:
    the machine's runnable tasks now (``/proc/loadavg``) minus this process's own. A parallel
    kernel whose second thread waits for a core another process holds takes a scheduler time
    slice per region instead of microseconds (tens of times slower than one thread), so
    compiled code uses no more threads than there are free cores. The median of the last
    three samples smooths out one-off tasks."""

    def __init__(self, cores, period=0.05):
        self.cores, self.period = cores, period
        self.free = cores
        self._last = -1.0
        self._samples = []
        self._tasks = {}  # thread id -> its open stat file
        try:
            self._loadavg = os.open("/proc/loadavg", os.O_RDONLY)
        except OSError:
            self._loadavg = None  # not Linux: no adaptation

    def free_cores(self, now):
        if self._loadavg is None or now - self._last < self.period:
            return self.free
        self._last = now
        try:
            # this process's running threads counted before and after the machine's: a thread
            # that goes to sleep or wakes up between the two readings (an OpenMP worker that
            # stops spinning, ours or another library's in this process) counts as ours, not
            # as another process (that race read a quiet machine as busy and halved the
            # threads of whole benchmark rows)
            self._list_threads()
            own = self._own_running()
            running = int(os.pread(self._loadavg, 128, 0).split()[3].split(b"/")[0])
            others = max(0, running - max(own, self._own_running()))
        except (OSError, ValueError, IndexError):
            return self.free
        self._samples = (self._samples + [others])[-3:]
        self.free = max(1, self.cores - sorted(self._samples)[len(self._samples) // 2])
        return self.free

    def _list_threads(self):
        """This process's threads, listed at every sample (~7 us): a thread started since the
        last listing (a library's thread pool growing, say torch's going from one thread to
        two) would count as another process while it runs."""
        tids = set(os.listdir("/proc/self/task"))
        for tid in self._tasks.keys() - tids:
            os.close(self._tasks.pop(tid))
        for tid in tids - self._tasks.keys():
            try:
                self._tasks[tid] = os.open(f"/proc/self/task/{tid}/stat", os.O_RDONLY)
            except OSError:
                pass

    def _own_running(self):
        running = 0
        for fd in self._tasks.values():
            try:
                stat = os.pread(fd, 512, 0)
            except OSError:
                continue
            running += stat.rsplit(b")", 1)[-1].split()[0] == b"R"
        return max(1, running)  # this thread is running


_watch = LoadWatch(_cores())
# False once the user sets a thread count: then it is used as given
_adaptive = [os.environ.get("TRACENET_ADAPTIVE_THREADS", "1") != "0"
             and "OMP_NUM_THREADS" not in os.environ]


def compiled_threads(now=None):
    """The OpenMP threads for a compiled call starting now: the set count, or, unless one was
    set, no more than the cores other processes leave free."""
    if not _adaptive[0]:
        return _threads[0]
    return min(_threads[0], _watch.free_cores(time.monotonic() if now is None else now))


def set_num_threads(n):
    # torch's errors
    if isinstance(n, bool) or not isinstance(n, int):
        raise RuntimeError(f"set_num_threads expects an int, but got {type(n).__name__}")
    if n < 1:
        raise RuntimeError("set_num_threads expects a positive integer")
    _threads[0] = n
    _adaptive[0] = False
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
