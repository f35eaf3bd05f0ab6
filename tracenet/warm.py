"""Warm starts: the graph cache's keys, and what a traced specialisation depends on in a form a
new process can check (stored with an entry, checked before it is used).

The key (computable before tracing) covers tracenet's own source, the toolchain and target, the
module trees (module types and names, parameter and buffer names, shapes, dtypes,
requires_grad, sharing, training flags) and the call (input shapes and dtypes, grad mode...,
and the sizes a symbolic specialisation is traced at: the generated code's plans, such as
thread splits and tiles, are chosen for them, so a new process restores what it would have
built itself, not the code another batch size was planned for).
What only the trace reveals is stored with the entry and re-checked at load (``check``):

* the contents of the user's source files whose code ran while tracing (and of the user
  modules that code names);
* the plain Python values that code read from module attributes (by path in the module tree)
  and from its modules' globals (by module name).

A trace that depended on anything else (a global tensor or dict, a closure's number, an
attribute holding an object, a module outside the trees, code that is not in a file, a trace
under a C-level profiler) cannot be checked in another process: ``analyse`` says why, and the
specialisation is simply not cached.
"""
import builtins
import functools
import hashlib
import os
import sys
import types
import warnings

import numpy as np

from . import _dtype
from ._name_guards import global_names
from .codegen.templates import template_dir
from .nn.modules import module as module_mod
from .nn.modules.module import Module
from .runtime import debug, graph_cache, toolchain, target as runtime_target
from .runtime.cache import CacheError, atomic_write
from .runtime.graph_cache import FORMAT
from .trace import _is_internal, _is_plain, _same_value

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class NotPortable(Exception):
    """Why a trace cannot be re-checked in another process (its message)."""


def _source_files():
    for top in (_PACKAGE_DIR, template_dir()):
        for root, dirs, names in os.walk(top):
            dirs.sort()
            for name in sorted(names):
                if name.endswith((".py", ".j2", ".h", ".c")):
                    path = os.path.join(root, name)
                    yield path, path[len(top):]


@functools.lru_cache(maxsize=1)
def tracenet_fingerprint():
    """A hash of tracenet's own source and templates (any edit invalidates every entry), with
    the Python and numpy versions whose objects the entries pickle. Reading every file takes a
    few milliseconds: the hash is remembered in the cache directory under a hash of the files'
    sizes and modification times, which any edit changes."""
    files = list(_source_files())
    stats = hashlib.sha256(f"{sys.version}\0{np.__version__}\0".encode())
    for path, name in files:
        st = os.stat(path)
        stats.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    memo = os.path.join(graph_cache.cache_dir(), f"graph-source-{stats.hexdigest()[:32]}.meta")
    try:
        with open(memo) as f:
            known = f.read().strip()
        if len(known) == 64:
            return known
    except OSError:
        pass
    h = hashlib.sha256(f"{sys.version}\0{np.__version__}\0".encode())
    for path, name in files:
        h.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    try:
        atomic_write(memo, h.hexdigest())
    except CacheError:
        pass
    return h.hexdigest()


def environment():
    """What the generated code and its build depend on besides the graphs."""
    argv, identity = toolchain.compiler()
    timing = debug.enabled("time")
    return (FORMAT, tracenet_fingerprint(), tuple(argv), identity, tuple(toolchain.flags()),
            tuple(toolchain.openmp_flags()), toolchain.target_cpu(),
            repr(runtime_target.current()), timing,
            os.environ.get("TRACENET_TIME_CLOCK") if timing else None,
            # tensors forward creates take the default dtype; global hooks run in every module
            _dtype.get_default_dtype().short, _hook_counts(module_mod))


def _hook_counts(owner):
    """How many hooks of each kind ``owner`` (a module, or the nn.Module module for the global
    ones) holds: a graph is cached only while there are none (their code is not checked)."""
    return tuple(len(v) for k, v in sorted(vars(owner).items())
                 if "hook" in k and ("forward" in k or "backward" in k) and isinstance(v, dict))


def _code_id(fn):
    code = getattr(fn, "__code__", None)
    if code is None:
        return repr(fn)
    return (code.co_filename, code.co_firstlineno, _qualname(code),
            hashlib.sha256(code.co_code).hexdigest()[:16])


def _type_name(obj):
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def tree(roots, tensors=()):
    """The structure of the module trees under ``roots``: per module its name, type and
    training flag; per parameter and buffer its name, shape, dtype, requires_grad and where
    the same tensor occurred first (tied weights), counting ``tensors`` first."""
    first = {id(t): i for i, t in enumerate(tensors)}
    out = []
    for root in roots:
        for name, m in root.named_modules(remove_duplicate=False):
            # the forward that runs (a class patched at run time has another), functions set
            # on the instance (a replaced forward), and hooks
            entry = [name, _type_name(m), bool(m.training), _code_id(type(m).forward),
                     tuple(sorted(k for k, v in vars(m).items()
                                  if callable(v) and not isinstance(v, (Module, type)))),
                     _hook_counts(m)]
            for kind, items in (("p", m._parameters), ("b", m._buffers)):
                for k, t in items.items():
                    if t is None:
                        entry.append((kind, k, None))
                        continue
                    where = first.setdefault(id(t), len(first))
                    entry.append((kind, k, tuple(t.shape), t.dtype.short,
                                  bool(t._requires_grad), where))
            out.append(tuple(entry))
    return tuple(out)


def digest(*parts):
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


# --- what the trace depended on ---------------------------------------------------------------
def _module_paths(roots):
    paths = {}
    for i, root in enumerate(roots):
        for name, m in root.named_modules(remove_duplicate=False):
            paths.setdefault(id(m), (i, name))
    return paths


def _plain_tree(value):
    """Whether ``value`` is a plain value or a list/tuple/dict nesting of them (compared by
    equality in another process)."""
    t = type(value)
    if t in (list, tuple):
        return all(_plain_tree(v) for v in value)
    if t is dict:
        return all(_is_plain(k) and _plain_tree(v) for k, v in value.items())
    return _is_plain(value) or isinstance(value, _dtype.dtype)


def _file_hash(path, memo):
    if path not in memo:
        try:
            with open(path, "rb") as f:
                memo[path] = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            memo[path] = None
    return memo[path]


def _qualname(code):
    return getattr(code, "co_qualname", code.co_name)


def analyse(graph, roots, named=()):
    """The checks a new process must pass to reuse a trace of code reading the module trees
    under ``roots`` (and the objects ``named``, which the key describes: a step function's
    optimizers): {"files": {path: sha256}, "globals": [(module name, name, value)],
    "reads": [(root index, module path, attribute, value)]}. Raises NotPortable."""
    codes = getattr(graph, "user_code", None)
    if codes is None:
        raise NotPortable("the code that ran while tracing was not watched (a C-level profiler "
                          "is active)")
    if any(_hook_counts(module_mod)) or any(
            any(_hook_counts(m)) for root in roots for m in root.modules()):
        raise NotPortable("hooks are registered")
    paths = _module_paths(roots)
    memo, files, globals_, reads = {}, {}, {}, []

    def add_file(path, what):
        h = _file_hash(path, memo)
        if h is None:
            raise NotPortable(f"{what} is not in a readable source file ({path})")
        files[path] = h

    def allowed(value, what):
        """Whether ``value``, met as ``what``, is determined by checked source files."""
        if isinstance(value, Module):
            if id(value) not in paths:
                raise NotPortable(f"{what} is a module outside the compiled module tree")
            return
        if value is None or isinstance(value, types.FunctionType) or \
                any(value is obj for obj in named):
            return  # (a function's code is checked if it runs)
        if isinstance(value, types.ModuleType):
            f = getattr(value, "__file__", None)
            if f and not _is_internal(f):
                add_file(f, f"module {value.__name__}")
            return
        if isinstance(value, type):
            f = getattr(sys.modules.get(value.__module__), "__file__", None)
            if f and not _is_internal(f):
                add_file(f, f"class {value.__qualname__}")
            return
        if isinstance(value, types.BuiltinFunctionType) and (
                value.__self__ is None or isinstance(value.__self__, types.ModuleType)):
            return  # (not a method bound to some object's state)
        raise NotPortable(f"{what} is a {type(value).__name__}")

    for code, (g, cells, arrays) in codes.items():
        add_file(code.co_filename, f"the code of {_qualname(code)}")
        if arrays:
            raise NotPortable(f"{_qualname(code)} was called with a concrete tensor as "
                              f"{arrays[0]!r}")
        for name, value in cells:
            allowed(value, f"closure variable {name!r} of {_qualname(code)}")
        module_name = g.get("__name__")
        for name in global_names(code):
            if name not in g:
                if hasattr(builtins, name):
                    continue
                raise NotPortable(f"global {name!r} of {_qualname(code)} is undefined")
            value = g[name]
            if _plain_tree(value):
                if sys.modules.get(module_name) is None or sys.modules[module_name].__dict__ \
                        is not g:
                    raise NotPortable(f"the globals of {_qualname(code)} are not its "
                                      f"module's")
                globals_[(module_name, name)] = value
            else:
                allowed(value, f"global {name!r} read by {_qualname(code)}")
    for m, name, value in list(graph.reads) + list(getattr(graph, "unportable", None) or ()):
        what = f"{type(m).__name__}.{name}"
        if id(m) not in paths:
            raise NotPortable(f"forward read {what} of a module outside the compiled tree")
        if not _plain_tree(value):
            raise NotPortable(f"forward read {what}, a {type(value).__name__}")
        reads.append(paths[id(m)] + (name, value))
    if getattr(graph, "captured", None) or getattr(graph, "frozen", None):
        raise NotPortable("the traced code reads tensors that are not inputs, parameters or "
                          "buffers (a new process could not find them)")
    if getattr(graph, "stale_saved", None):
        raise NotPortable("an output's backward raises: a tensor it reads is changed in place")
    return {"files": files, "globals": [k + (v,) for k, v in globals_.items()],
            "reads": reads}


_MISSING = object()


def check(checks, roots):
    """The module attribute reads of ``checks`` resolved in ``roots`` as (module, attribute,
    value) if every stored check holds now; None (and a log line saying why) otherwise."""
    memo = {}
    for path, h in checks["files"].items():
        if _file_hash(path, memo) != h:
            return _fails(f"{path} changed")
    for module_name, name, value in checks["globals"]:
        mod = sys.modules.get(module_name)
        if mod is None or not _same_value(mod.__dict__.get(name, _MISSING), value):
            return _fails(f"global {module_name}.{name} is not {value!r}")
    modules = [dict(root.named_modules(remove_duplicate=False)) for root in roots]
    reads = []
    for index, path, name, value in checks["reads"]:
        m = modules[index].get(path) if index < len(modules) else None
        if m is None or not _same_value(m.__dict__.get(name, _MISSING), value):
            return _fails(f"{path or type(roots[0]).__name__}.{name} is not {value!r}")
        reads.append((m, name, m.__dict__[name]))
    return reads


def _fails(why):
    debug.log("cache", f"cached graph not used: {why}")
    return None


# --- the entries -------------------------------------------------------------------------------
def enabled():
    """The graph cache is on unless ``TRACENET_GRAPH_CACHE=0``."""
    return os.environ.get("TRACENET_GRAPH_CACHE", "1") != "0"


def module_key(module, key, sizes):
    """The graph cache key of ``tracenet.compile(module)`` called with ``key`` (input shapes,
    dtypes and requires_grad, training flag, grad mode, input nesting) and ``sizes``."""
    return digest("module", environment(), tree([module]), key, sizes)


def checks_of(graph, roots, named=()):
    """``analyse``, or None (with a log line) when the trace cannot be checked elsewhere or
    the graph cache is off. Either way the graph lets go of the Python objects the trace
    recorded for it (code, globals, closures)."""
    try:
        return analyse(graph, roots, named) if enabled() else None
    except NotPortable as e:
        debug.log("cache", f"graph not cached: {e}")
        return None
    finally:
        graph.user_code = graph.unportable = None


class restoring:
    """Around rebuilding a specialisation from an entry: an entry that does not fit (written
    by a tracenet with the same source but a bug, or damaged in a way its record cannot show)
    is reported and skipped, so the caller traces instead."""

    def __init__(self, key):
        self.key = key

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None or not issubclass(kind, (KeyError, IndexError, TypeError, ValueError,
                                                 AttributeError)):
            return False
        warnings.warn(f"tracenet: ignoring the cached graph {graph_cache.path_for(self.key)}: "
                      f"it does not fit ({kind.__name__}: {exc}); tracing again",
                      RuntimeWarning, stacklevel=2)
        return True


def used(key):
    debug.log("cache", f"graph hit {graph_cache.path_for(key)}: not traced")


def store(key, state, checks):
    graph_cache.store(key, {"state": state, "checks": checks})


def load(key, roots):
    """(stored state, module attribute reads to guard) of the entry ``key`` if its checks
    hold for ``roots`` now, else None."""
    entry = graph_cache.load(key)
    if entry is None:
        return None
    try:
        reads = check(entry["checks"], roots)
    except (KeyError, TypeError, ValueError) as e:
        debug.log("cache", f"cached graph not used: malformed checks ({e})")
        return None
    return None if reads is None else (entry["state"], reads)
