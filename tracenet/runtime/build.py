"""Turn C source into a loaded shared library, through a content-addressed on-disk cache.

The compiler is run directly (much faster than going through ``ffi.compile``) and the result
loaded with ``cffi``'s ``dlopen``. The cache key hashes the source, compiler identity, flags
and target CPU. An entry is built under a per-key file lock (a second process waits for the
first one's build and reuses it), written under a temporary name and renamed into place
atomically, and recorded with its size and SHA-256 in a ``.meta`` file written just before the
rename. An entry whose ``.meta`` is missing or does not match is never loaded (a truncated
library would crash the process on load): it is removed and rebuilt, with a warning unless it
merely has no ``.meta`` (built by an older version). A large unit may be compiled as several
files at once and linked (``split``): the entry, its key and its checks are the same. The
GEMM's entry points are object files of the cache, built once (the same way: key, lock,
record, checks) and linked into every unit that calls them.
"""
import atexit
import contextlib
import hashlib
import json
import os
import re
import stat
import struct
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import cffi

from . import debug, split, toolchain
from .cache import CacheError, atomic_write, cache_dir, locked, prebuilt, remove, \
    remove_stale_temps, temp_path
from .toolchain import CompilerError

# seconds one compile may take before it is killed
COMPILE_TIMEOUT = 600


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
# ...not even when the interpreter exits and frees ``_loaded``: a library using OpenMP is
# linked so that dlclose leaves it (and so libgomp) loaded. Otherwise a worker thread still
# spinning after the last parallel region (OMP_WAIT_POLICY=active always does) runs unmapped
# code and the process dies of a segmentation fault at exit.
KEEP_LOADED = ("-Wl,-z,nodelete",) if sys.platform.startswith("linux") else ()


class Library:
    """A loaded shared library plus where it came from."""

    def __init__(self, ffi, lib, path, source_path, cached, seconds):
        self.ffi, self.lib = ffi, lib
        self.path, self.source_path = path, source_path
        self.cached, self.seconds = cached, seconds


def file_stem(name):
    """``name`` as the start of a file name: a short run of safe characters (the cache key
    that follows it keeps entries apart)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)[:40] or "unit"


def build(source, cdef, name="graph", openmp=False, pieces=None):
    """Compile ``source`` (or reuse the cached build) and load it with ``cdef`` declarations.
    ``pieces``: the same unit in pieces (``codegen.emit.generate``), which a large unit is
    built from, as several files compiled at once (``split``); the library is the same."""
    flags = toolchain.flags() + (toolchain.openmp_flags() + KEEP_LOADED if openmp else ())
    key = cache_key(source, flags)
    d = cache_dir()
    so_path = os.path.join(d, f"{file_stem(name)}-{key}.so")
    c_path = so_path[:-3] + ".c"
    start = time.perf_counter()
    with debug.phase("cache"):
        cached = so_path in _loaded or _entry_problem(so_path) is None
    if not cached:
        with debug.phase("gcc"):
            cached = _build_entry(source, c_path, so_path, flags, pieces=pieces)
    debug.log("cache", f"{'hit' if cached else 'miss'} {so_path}")
    try:
        with debug.phase("load"):
            ffi, lib = _load(so_path, cdef)
    except OSError as e:
        if not cached:
            raise CompilerError(f"cannot load the library just built from {c_path}: {e}") \
                from None
        with debug.phase("gcc"):
            cached = _build_entry(source, c_path, so_path, flags, bad=f"it does not load ({e})",
                                  pieces=pieces)
        with debug.phase("load"):
            ffi, lib = _load(so_path, cdef)
    seconds = time.perf_counter() - start
    debug.log("c", f"source {c_path}")
    return Library(ffi, lib, so_path, c_path, cached, seconds)


def _load(so_path, cdef):
    if so_path not in _loaded:
        ffi = cffi.FFI()
        ffi.cdef(cdef)
        _loaded[so_path] = (ffi, ffi.dlopen(so_path))
    return _loaded[so_path]


def _build_entry(source, c_path, so_path, flags, bad=None, pieces=None):
    """Build the entry under its lock; True if another process built it meanwhile. ``bad``:
    why the entry there now must be replaced whatever its checksum says."""
    with locked(so_path):
        problem = bad or _entry_problem(so_path)
        if problem is None:
            return True
        _clear(so_path, problem)
        remove_stale_temps(os.path.dirname(so_path))
        objects = {g: object_path(g, text) for g, text in (pieces or {}).get("gemm", {}).items()}
        layout = split.plan(pieces, built={g for g, path in objects.items()
                                           if _entry_problem(path) is None},
                            started={g for g, path in objects.items() if path in _started}) \
            if pieces else None
        if layout:
            _compile_split(source, pieces, c_path, so_path, flags, layout, objects)
        else:
            _compile(source, c_path, so_path, flags)
        return False


_NO_RECORD = "no record of its build"


def _meta_path(path):
    return os.path.splitext(path)[0] + ".meta"


def _digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entry_problem(so_path):
    """Why the cached library ``so_path`` must not be loaded (None: it is the one built)."""
    try:
        st = os.stat(so_path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return e.strerror
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not os.path.exists(_meta_path(so_path)):
        return _NO_RECORD
    try:
        with open(_meta_path(so_path)) as f:
            meta = json.load(f)
        if st.st_size != meta["size"]:
            return f"{st.st_size} bytes where {meta['size']} were written"
        if _digest(so_path) != meta["sha256"]:
            return "its contents changed since it was built"
    except (OSError, ValueError, KeyError, TypeError):
        return f"no valid {os.path.basename(_meta_path(so_path))}"
    return None


def _clear(path, problem):
    """Remove the cache entry ``path`` before it is rebuilt (the caller holds its lock)."""
    if problem == _NO_RECORD:  # built by an older version: replaced without a warning
        debug.log("cache", f"no record for {path}: rebuilding")
        remove(path)
    elif os.path.lexists(path):
        _quarantine(path, problem)


def _quarantine(so_path, problem):
    """Remove a bad entry (the caller holds its lock)."""
    warnings.warn(f"tracenet: discarding the cached library {so_path}: {problem}; rebuilding",
                  RuntimeWarning, stacklevel=2)
    remove(_meta_path(so_path))
    remove(so_path)


def _library_problem(path):
    """Why the file the compiler wrote is not a complete shared library (None: it looks like
    one). On ELF systems the section headers come last, so their end is the file's size."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return e.strerror
    if size == 0:
        return "it is empty"
    if head[:4] == b"\x7fELF" and len(head) == 64:
        order = "<" if head[5] == 1 else ">"
        if head[4] == 2:  # 64-bit
            (shoff,), (shentsize, shnum) = struct.unpack_from(order + "Q", head, 0x28), \
                struct.unpack_from(order + "HH", head, 0x3A)
        else:
            (shoff,), (shentsize, shnum) = struct.unpack_from(order + "I", head, 0x20), \
                struct.unpack_from(order + "HH", head, 0x2E)
        if size < shoff + shentsize * shnum:
            return f"it is truncated ({size} of {shoff + shentsize * shnum} bytes)"
    elif sys.platform.startswith("linux"):
        return "it is not an ELF file"
    return None


def _compile(source, c_path, so_path, flags):
    atomic_write(c_path, source)  # kept next to the library for inspection and errors
    argv, _ = toolchain.compiler()
    tmp_so = temp_path(so_path)
    cmd = list(argv) + list(flags) + [c_path, "-o", tmp_so] + list(toolchain.libraries())
    try:
        _run(cmd, c_path)
        _check_output(tmp_so, "a library", c_path, argv)
        _publish(tmp_so, so_path)
    finally:
        remove(tmp_so)



def _check_output(tmp, what, source_path, argv):
    problem = _library_problem(tmp)
    if problem:
        raise CompilerError(f"the C compiler {argv[0]!r} reported success on generated "
                            f"source {source_path} but its output is not {what}: {problem}")


def _run(cmd, source_path):
    code, out, err = toolchain.run_compiler(cmd, COMPILE_TIMEOUT,
                                            f"on generated source {source_path}")
    if code != 0:
        raise CompilerError(
            f"the C compiler failed (exit {code}) on generated source {source_path}\n"
            f"command: {' '.join(cmd)}\n{err.strip() or out.strip()}")


def _publish(tmp, path):
    """Record ``tmp``'s size and digest, then rename it to ``path`` (the caller holds the
    entry's lock)."""
    size, digest = os.path.getsize(tmp), _digest(tmp)
    # the record goes first: whoever sees the file can check it against the record
    atomic_write(_meta_path(path), json.dumps({"size": size, "sha256": digest}))
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise CacheError(f"cannot write {path}: {e.strerror or e}") from None


def _compile_flags(flags):
    return [f for f in flags if f != "-shared"] + ["-c"]


def _compile_split(source, pieces, c_path, so_path, flags, layout, objects):
    """Build the unit as ``layout`` (a ``split.Plan``): its files and the GEMM objects it
    lacks compiled at once, each core's jobs one after the other, then linked (the caller
    holds the entry's lock)."""
    atomic_write(c_path, source)  # the whole unit, for inspection
    argv, _ = toolchain.compiler()
    temps = []
    for i, text in enumerate(layout.files):
        atomic_write(f"{so_path[:-3]}.part{i}.c", text)  # kept for inspection and messages
        temps.append(temp_path(so_path[:-3] + f".part{i}.o"))

    def run(jobs):
        for what, which in jobs:
            if what == "object":
                build_object(objects[which], pieces["gemm"][which])
            else:
                part = f"{so_path[:-3]}.part{which}.c"
                _run(list(argv) + _compile_flags(flags) + [part, "-o", temps[which]], part)

    try:
        with ThreadPoolExecutor(max_workers=len(layout.cores)) as pool:
            for job in [pool.submit(run, jobs) for jobs in layout.cores]:
                job.result()
        for g in layout.objects:  # (those compiling in the background: waited for)
            build_object(objects[g], pieces["gemm"][g])
        linked = temps + [objects[g] for g in layout.objects]
        tmp_so = temp_path(so_path)
        temps.append(tmp_so)
        _run(list(argv) + list(flags) + linked + ["-o", tmp_so] + list(toolchain.libraries()),
             c_path)
        _check_output(tmp_so, "a library", c_path, argv)
        _publish(tmp_so, so_path)
    finally:
        for tmp in temps:
            remove(tmp)


def object_flags():
    """What the shared objects (the GEMM) are compiled with: the library flags, less linking
    and OpenMP (they have no parallel regions), so every unit can link the same ones."""
    return _compile_flags(toolchain.flags())


def object_path(name, source):
    """Where the object file compiled from ``source`` is: the one built when the package was
    installed (``cache.prebuilt``) if it is there and intact, else the cache's."""
    path = os.path.join(cache_dir(), f"{file_stem(name)}-{cache_key(source, object_flags())}.o")
    ready = prebuilt(path)
    return ready if ready is not None and _entry_problem(ready) is None else path


class _Started:
    """An object file being compiled in the background. The entry's lock is held until the
    compiler ends and a thread of its own has published the object (or given up): not until
    this process asks for it, which may be after another process that waits for that lock."""

    def __init__(self, path, source, hold):
        self.path, self.hold = path, hold
        c_path = path[:-2] + ".c"
        atomic_write(c_path, source)
        argv, _ = toolchain.compiler()
        self.tmp = temp_path(path)
        try:
            self.proc = subprocess.Popen(list(argv) + object_flags() + [c_path, "-o", self.tmp],
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except OSError:
            remove(self.tmp)
            raise
        self.thread = threading.Thread(target=self._publish, name="tracenet-object",
                                       daemon=True)
        self.thread.start()

    def _publish(self):
        """A failure is left for ``build_object`` to run again and report."""
        try:
            try:
                self.proc.communicate(timeout=COMPILE_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
            if self.proc.returncode == 0 and _library_problem(self.tmp) is None:
                _publish(self.tmp, self.path)
        except OSError:
            pass
        finally:
            remove(self.tmp)
            self.hold.close()

    def finish(self, kill=False):
        if kill and self.proc.poll() is None:
            self.proc.kill()
        self.thread.join()


_started = {}  # object path -> _Started, in this process


def start_objects(sources):
    """Start compiling, in the background, the objects of ``sources`` (name -> C source) that
    the cache lacks; ``build_object`` waits for them. Only with a core to spare (on one core
    this would only slow down the rest of the compile) and only those no other process is
    building."""
    if split.cores() < 2:
        return
    for name, source in sources.items():
        path = object_path(name, source)
        if path in _started or _entry_problem(path) is None:
            continue
        hold = contextlib.ExitStack()
        try:
            if not hold.enter_context(locked(path, blocking=False)):
                hold.close()
                continue
            problem = _entry_problem(path)
            if problem is None:
                hold.close()
                continue
            _clear(path, problem)
            if not _started:
                atexit.register(_abandon_started)
            with debug.phase("gcc"):
                _started[path] = _Started(path, source, hold)
        except (OSError, CompilerError):
            hold.close()  # (the build compiles it in the foreground, and reports why not)


def _abandon_started():
    """At exit: objects still compiling in the background that nothing waited for."""
    for started in list(_started.values()):
        started.finish(kill=True)
    _started.clear()


def build_object(path, source):
    """Compile ``source`` to the cached object ``path`` unless it is there: under the entry's
    lock (a process that finds another one building it waits and reuses it), checked and
    published like a library."""
    started = _started.pop(path, None)
    if started is not None:
        started.finish()
    elif _entry_problem(path) is None:  # (the cache's, or a prebuilt one: not locked)
        return
    with locked(path):
        problem = _entry_problem(path)
        if problem is None:
            return
        _clear(path, problem)
        c_path = path[:-2] + ".c"
        atomic_write(c_path, source)
        argv, _ = toolchain.compiler()
        tmp = temp_path(path)
        try:
            _run(list(argv) + object_flags() + [c_path, "-o", tmp], c_path)
            _check_output(tmp, "an object file", c_path, argv)
            _publish(tmp, path)
        finally:
            remove(tmp)
