"""The graph cache: what a compiled specialisation needs to run again in a new process (its
optimised graphs, entry points' metadata, the library it was built into, how to bind and check
it), stored next to the shared libraries so a warm start skips tracing, passes and codegen.

An entry is one pickle, ``graph-<key>.graph``, written atomically under the entry's lock and
recorded, like a library, with its size and SHA-256 in ``graph-<key>.meta`` written first. An
entry that does not match its record, does not unpickle, or was written by another format is
ignored with a warning (removed; the caller traces and stores it again). Unpickling only
resolves tracenet's and numpy's classes (and a few builtins): a tampered entry cannot name
arbitrary callables.
"""
import builtins
import hashlib
import io
import json
import os
import pickle
import warnings

import time

from ..ir.graph import Graph
from ..nn.modules.module import Module
from ..tensor import Tensor
from ..trace import Key
from . import build, debug
from .cache import CacheError, atomic_write, cache_dir, locked, remove

# bump when what is stored changes shape (the Graph objects' fields, the payload's keys)
FORMAT = 1
SUFFIX = ".graph"


# entries this process wrote: it traced them itself, so it keeps tracing (the cache is for
# warm starts; a process that changed tracenet's behaviour at run time, as tests do, sees it)
_stored_here = set()


def path_for(key):
    return os.path.join(cache_dir(), f"graph-{key}{SUFFIX}")


def _meta_path(path):
    return path[:-len(SUFFIX)] + ".meta"


def store(key, payload):
    """Write ``payload`` (any picklable object of tracenet/numpy values) as the entry ``key``.
    A failure to write is logged and otherwise ignored: the cache is an optimisation."""
    path = path_for(key)
    out = io.BytesIO()
    try:
        _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump((FORMAT, payload))
        data = out.getvalue()
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as e:
        debug.log("cache", f"graph not cached: it does not pickle ({e})")
        return None
    try:  # an entry that would be refused at load is not worth writing
        _Unpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        debug.log("cache", f"graph not cached: {e}")
        return None
    try:
        with locked(path):
            # the record goes first: whoever sees the entry can check it against the record
            atomic_write(_meta_path(path), json.dumps({
                "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "format": FORMAT}))
            atomic_write(path, data, mode="wb")
    except CacheError as e:
        debug.log("cache", f"graph not cached: {e}")
        return None
    _stored_here.add(path)
    debug.log("cache", f"stored graph {path}")
    return path


def load(key):
    """The payload stored as ``key``, or None (missing, or bad: then removed, with a warning)."""
    path = path_for(key)
    if path in _stored_here:
        debug.log("cache", f"graph {path} was stored by this process: tracing again")
        return None
    if not os.path.exists(path):
        debug.log("cache", f"graph miss {path}")
        return None
    try:
        with locked(path):  # (a writer replaces the record and the entry one after the other)
            with open(path, "rb") as f:
                data = f.read()
            with open(_meta_path(path)) as f:
                meta = json.load(f)
    except FileNotFoundError as e:
        if e.filename == path:  # removed meanwhile
            return None
        return _discard(path, "no record of how it was written")
    except CacheError as e:
        debug.log("cache", f"graph not read: {e}")
        return None
    except (OSError, ValueError) as e:
        return _discard(path, f"it cannot be read ({getattr(e, 'strerror', None) or e})")
    try:
        size, digest, fmt = meta["size"], meta["sha256"], meta["format"]
    except (KeyError, TypeError):
        return _discard(path, f"no valid {os.path.basename(_meta_path(path))}")
    if fmt != FORMAT:  # another version's entry: not an error
        debug.log("cache", f"graph {path} has format {fmt}, not {FORMAT}: ignored")
        return None
    if len(data) != size:
        return _discard(path, f"{len(data)} bytes where {size} were written")
    if hashlib.sha256(data).hexdigest() != digest:
        return _discard(path, "its contents changed since it was written")
    try:
        fmt, payload = _Unpickler(io.BytesIO(data)).load()
    except Exception as e:  # noqa: BLE001  (a bad entry of any kind is rebuilt)
        return _discard(path, f"it does not load ({type(e).__name__}: {e})")
    if fmt != FORMAT:
        return _discard(path, f"format {fmt!r} inside a format-{FORMAT} record")
    debug.log("cache", f"graph read {path}")
    return payload


def _discard(path, problem):
    warnings.warn(f"tracenet: ignoring the cached graph {path}: {problem}; tracing again",
                  RuntimeWarning, stacklevel=3)
    try:
        with locked(path):
            remove(_meta_path(path))
            remove(path)
    except CacheError:
        pass
    return None


def load_library(file_name, cdef):
    """The cached library ``file_name`` loaded with ``cdef``, if it passes the checks a build
    makes before loading a cached library (else None: the caller builds it again)."""
    start = time.perf_counter()
    so_path = os.path.join(cache_dir(), file_name)
    if os.path.basename(so_path) != file_name or not file_name.endswith(".so"):
        return None
    if so_path not in build._loaded and build._entry_problem(so_path) is not None:
        debug.log("cache", f"cached graph not used: its library {so_path} is not usable")
        return None
    try:
        ffi, lib = build._load(so_path, cdef)
    except OSError as e:
        debug.log("cache", f"cached graph not used: {so_path} does not load ({e})")
        return None
    debug.log("cache", f"hit {so_path}")
    return build.Library(ffi, lib, so_path, so_path[:-3] + ".c", True,
                         time.perf_counter() - start)


# graph attributes that hold the traced Python world (modules, code): never stored
_UNSTORED = frozenset(("reads", "user_code", "unportable", "captured", "captured_at",
                       "frozen", "name_guards"))


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if type(obj) is Graph:
            return Graph, (), {k: v for k, v in obj.__dict__.items() if k not in _UNSTORED}
        if type(obj) is Key:
            return Key, tuple(obj)
        if isinstance(obj, (Module, Tensor)):
            raise pickle.PicklingError(f"a graph cache entry would hold a live "
                                       f"{type(obj).__name__}")
        return NotImplemented


# builtins an entry may name: exception classes (data-check errors) and plain containers
_BUILTINS = frozenset(("set", "frozenset", "slice", "complex", "range", "bytearray", "tuple",
                       "list", "dict", "object"))
# numpy's array/scalar reconstruction helpers (numpy 1.x and 2.x spellings)
_NUMPY_FUNCTIONS = frozenset(("_reconstruct", "_frombuffer", "scalar", "dtype"))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "builtins":
            obj = getattr(builtins, name, None)
            if name in _BUILTINS or (isinstance(obj, type) and issubclass(obj, BaseException)):
                return obj
        elif module == "copyreg" and name in ("_reconstructor", "__newobj__"):
            return super().find_class(module, name)
        elif module == "_codecs" and name == "encode":  # numpy's byte strings
            return super().find_class(module, name)
        elif module.split(".")[0] in ("tracenet", "numpy"):
            obj = super().find_class(module, name)
            if isinstance(obj, type) or name in _NUMPY_FUNCTIONS or \
                    (module == "tracenet._dtype" and name == "_by_name"):
                return obj
        raise pickle.UnpicklingError(f"the entry names {module}.{name}, which a graph cache "
                                     f"entry never holds")
