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
import collections
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
    three samples smooths out one-off tasks.

    A core counts as taken only if other processes also used CPU time to match over the last
    ``window`` seconds (``/proc/stat``'s busy time less this process's, at least a quarter of
    a core per core taken): a count of runnable tasks at one instant also catches tasks that
    run for a moment (kernel threads, processes starting or exiting), and had halved compiled
    code's threads on a quiet machine."""

    def __init__(self, cores, period=0.05, window=0.25):
        self.cores, self.period, self.window = cores, period, window
        self.free = cores
        self._last = -1.0
        self._samples = []
        self._tasks = {}  # thread id -> its open stat file
        self._cpu = collections.deque()  # (time, machine's busy CPU s, this process's CPU s)
        try:
            self._loadavg = os.open("/proc/loadavg", os.O_RDONLY)
        except OSError:
            self._loadavg = None  # not Linux: no adaptation
        try:
            self._stat = os.open("/proc/stat", os.O_RDONLY)
        except OSError:
            self._stat = None  # no confirmation: the count alone

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
        taken = sorted(self._samples)[len(self._samples) // 2]
        busy = self._busy_elsewhere(now)
        if busy is not None:
            taken = min(taken, int(busy + 0.75))
        self.free = max(1, self.cores - taken)
        return self.free

    def _busy_elsewhere(self, now):
        """The cores other processes kept busy on average over about the last ``window``
        seconds, or None before a window's worth of samples (or without ``/proc/stat``).
        Reading it takes ~20 us, once a sample."""
        if self._stat is None:
            return None
        try:
            line = os.pread(self._stat, 256, 0).split(b"\n", 1)[0]
            busy = busy_cpu_seconds([int(v) for v in line.split()[1:]])
        except (OSError, ValueError, IndexError):
            return None
        cpu = self._cpu
        cpu.append((now, busy, own_cpu_seconds()))
        while len(cpu) > 2 and now - cpu[1][0] >= self.window:
            cpu.popleft()
        then, busy_then, own_then = cpu[0]
        if now - then < self.window / 2:
            return None
        return max(0.0, (busy - busy_then) - (cpu[-1][2] - own_then)) / (now - then)

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


TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat's unit


def busy_cpu_seconds(counters):
    """The busy time in /proc/stat's "cpu" counters (ints, in the file's order): user, nice,
    system, irq and softirq; not idle, iowait or the host's steal."""
    return sum(counters[i] for i in (0, 1, 2, 5, 6)) / TICKS


def own_cpu_seconds():
    """This process's CPU time (all its threads)."""
    t = os.times()
    return t.user + t.system


_watch = LoadWatch(_cores())
# False once the user sets a thread count: then it is used as given
_adaptive = [os.environ.get("TRACENET_ADAPTIVE_THREADS", "1") != "0"
             and "OMP_NUM_THREADS" not in os.environ]


def compiled_threads(now=None):
    """The OpenMP threads for a compiled call starting now: the set count, or, unless one was
    set, no more than the cores other processes leave free."""
    if not _adaptive[0]:
        return _threads[0]
    if now is None:
        now = time.monotonic()
    # (the last sample's answer read here within its period: every compiled call asks, and
    # the method call cost as much as the rest)
    watch = _watch
    free = watch.free if now - watch._last < watch.period else watch.free_cores(now)
    n = _threads[0]
    return n if n < free else free


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
