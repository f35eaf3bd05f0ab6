"""The on-disk cache directory, and writing files into it atomically (shared by the build and
the compiler probes, which remember their results there)."""
import os
import tempfile


def cache_dir():
    d = os.environ.get("TRACENET_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                ".cache")
        d = os.path.join(base, "tracenet")
    os.makedirs(d, exist_ok=True)
    return d


def atomic_write(path, data, mode="w"):
    """Write under a temporary name and rename into place: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, mode) as f:
        f.write(data)
    os.replace(tmp, path)
