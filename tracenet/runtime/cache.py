"""The on-disk cache directory, and writing files into it atomically (shared by the build and
the compiler probes, which remember their results there).

Temporary files are named ``.tmp-<final name>~<random>`` so a later process can tell whose
they were and remove the ones a killed process left behind (see ``remove_stale_temps``).
"""
import atexit
import contextlib
import os
import shutil
import tempfile
import time
import warnings

try:
    import fcntl
except ImportError:  # not POSIX: builds are still atomic, only not deduplicated across processes
    fcntl = None

# a temporary file this old is abandoned whatever its lock says (the compiler timeout is 600 s)
STALE_SECONDS = 20 * 60


class CacheError(OSError):
    """A file of the build cache cannot be written or read; the message names it."""


_usable = {}  # configured directory -> the directory actually used


def cache_dir():
    """The cache directory: ``TRACENET_CACHE_DIR``, else ``~/.cache/tracenet``. When it cannot
    be created or written, a per-process temporary directory is used instead, with one
    warning (compiling still works, the cache is just not kept)."""
    d = os.environ.get("TRACENET_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                ".cache")
        d = os.path.join(base, "tracenet")
    if d not in _usable or not os.path.isdir(_usable[d]):  # (deleted meanwhile)
        problem = _unwritable(d)
        if problem:
            fallback = tempfile.mkdtemp(prefix="tracenet-cache-")
            atexit.register(shutil.rmtree, fallback, ignore_errors=True)
            warnings.warn(f"tracenet cache directory {d} is not usable ({problem}); using "
                          f"{fallback} for this process", RuntimeWarning, stacklevel=2)
            _usable[d] = fallback
        else:
            _usable[d] = d
    return _usable[d]


def prebuilt_dir():
    """The read-only directory of files built when the package was installed (the compiler
    probes' records and the GEMM objects; ``runtime.prebuild``), consulted after the cache:
    ``TRACENET_PREBUILT``, else ``_prebuilt/`` in the package; None when it is ``0`` or the
    directory does not exist. Its files are named as in the cache, by the same keys, so one
    built for another compiler, CPU or set of flags is never found."""
    d = os.environ.get("TRACENET_PREBUILT", "").strip()
    if d == "0":
        return None
    d = d or PACKAGE_PREBUILT
    return d if os.path.isdir(d) else None


# where the package build writes them
PACKAGE_PREBUILT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "_prebuilt")


def prebuilt(path):
    """The prebuilt file named as the cache file ``path`` is, if there is one (else None)."""
    d = prebuilt_dir()
    if d is None:
        return None
    candidate = os.path.join(d, os.path.basename(path))
    return candidate if os.path.isfile(candidate) else None


def _unwritable(d):
    """Why files cannot be created in directory ``d`` (None: they can)."""
    try:
        os.makedirs(d, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".tmp-probe~")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None


def temp_path(path, suffix=""):
    """A new empty file next to ``path``, to be renamed onto it once complete."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path),
                                   prefix=f".tmp-{os.path.basename(path)}~", suffix=suffix)
    except OSError as e:
        raise CacheError(f"cannot create a file next to {path}: {e.strerror or e}") from None
    os.close(fd)
    return tmp


def remove(path):
    """Delete a file (or directory) if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def atomic_write(path, data, mode="w"):
    """Write under a temporary name and rename into place: readers never see half a file."""
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        remove(tmp)
        raise CacheError(f"cannot write {path}: {e.strerror or e}") from None


def lock_path(path):
    """The lock file guarding the cache entry ``path`` (its name up to the first dot)."""
    d, name = os.path.split(path)
    return os.path.join(d, name.split(".", 1)[0] + ".lock")


@contextlib.contextmanager
def locked(path, blocking=True):
    """Hold an exclusive lock on ``path``'s entry across processes (released when the process
    dies, even by kill -9). Yields False, holding nothing, if not ``blocking`` and it is
    taken."""
    if fcntl is None:
        yield True
        return
    try:
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CacheError(f"cannot create lock file {lock_path(path)}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale_temps(d):
    """Delete temporary files of ``d`` nobody is writing any more: those of an entry whose lock
    is free (its writer finished or died) and any older than ``STALE_SECONDS``."""
    now = time.time()
    try:
        names = [n for n in os.listdir(d) if n.startswith(".tmp-") and "~" in n]
    except OSError:
        return
    for name in names:
        path = os.path.join(d, name)
        final = os.path.join(d, name[len(".tmp-"):].rsplit("~", 1)[0])
        try:
            old = now - os.lstat(path).st_mtime > STALE_SECONDS
        except FileNotFoundError:
            continue
        if old:
            remove(path)
        elif os.path.exists(lock_path(final)):
            with locked(final, blocking=False) as free:
                if free:
                    remove(path)
