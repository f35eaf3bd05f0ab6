"""``TRACENET_DEBUG=ir,fusion,c,cache,time``: comma-separated topics printed to stderr.

Under ``time``, each new specialisation prints where its compile time went, as one block:
the front end marks its phases with ``CompileClock.lap`` (trace, autodiff, passes...), the
build marks its own with ``phase`` (probe, render, gcc, load), and a lap counts only the time
its nested phases did not claim, so the rows add up to the total.
"""
import contextlib
import os
import sys
import threading
import time

TOPICS = ("ir", "fusion", "c", "cache", "time", "compile")


def enabled(topic):
    raw = os.environ.get("TRACENET_DEBUG", "")
    if not raw:
        return False
    topics = {t.strip() for t in raw.split(",")}
    return topic in topics or "all" in topics


def log(topic, message):
    if enabled(topic):
        for line in str(message).splitlines() or [""]:
            print(f"[tracenet:{topic}] {line}", file=sys.stderr)


_clocks = threading.local()  # .current: the CompileClock of this thread's compile, if any


class CompileClock:
    """Seconds per phase of one specialisation's compile (``phases``, in first-seen order).

    ``lap(name)`` charges the time since the previous lap to ``name``, less what ``phase``
    blocks inside it claimed; ``done(note)`` charges the remainder to ``other``, logs the block
    under ``time`` and returns the total. Only the thread that made the clock records into it;
    a newer clock on the thread replaces an abandoned one (a compile that raised)."""

    def __init__(self, title):
        self.title = title
        self.phases = {}
        self.start = self._last = time.perf_counter()
        self._nested = 0.0  # seconds claimed by phase() since the last lap
        _clocks.current = self

    def add(self, name, seconds):
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def lap(self, name):
        now = time.perf_counter()
        self.add(name, now - self._last - self._nested)
        self._last, self._nested = now, 0.0

    def done(self, note=""):
        self.lap("other")
        if getattr(_clocks, "current", None) is self:
            _clocks.current = None
        self.total = self._last - self.start
        if enabled("time"):
            log("time", self.report(note))
        return self.total

    def report(self, note=""):
        total = max(self.total, 1e-9)
        lines = [f"compile {self.title}: {total * 1e3:.1f} ms{f' ({note})' if note else ''}"]
        width = max(map(len, self.phases), default=0)
        for name, s in self.phases.items():
            lines.append(f"  {name:<{width}} {s * 1e3:8.1f} ms {100 * s / total:5.1f}%")
        return "\n".join(lines)


@contextlib.contextmanager
def phase(name):
    """Charge the time spent inside the block to ``name`` in this thread's compile clock (does
    nothing when no compile is being timed)."""
    clock = getattr(_clocks, "current", None)
    if clock is None:
        yield
        return
    start, outer = time.perf_counter(), clock._nested
    clock._nested = 0.0
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        clock.add(name, seconds - clock._nested)  # less its own nested phases
        clock._nested = outer + seconds
