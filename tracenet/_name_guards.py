"""The Python names a trace read, as guards: a compiled call sees a rebinding, or a new value of
a number, as eager mode would.

For every user function that ran while tracing (``trace.forbidding_frozen_calls`` notes each
one's code, globals and the values its closure cells held), each global it loads and each of
its closure cells that holds

* a module, an optimizer or a compiled module (``found``), a tensor the trace captured or
  froze, or a function (a ``functools.partial``, a bound method) whose code ran, is checked by
  identity;
* a Python scalar (bool, int, float, complex, str, None; a numpy scalar), or a list, dict or
  tuple nesting at most ``SNAPSHOT_LEAVES`` of them, is compared by value (same types, equal)
  with what it held when the trace ended;

and a call where one does not hold traces again. Other values (Python modules, classes, other
objects, whose attributes are not watched) are not guarded. The values are taken when the
trace ends, so a name the traced code rebinds itself (a call counter) holds at the next call.
"""
import dis
import functools
import gc
import sys
import types

import numpy as np

from .nn.modules.module import Module
from .optim.optimizer import Optimizer

# the most scalars a guarded list, dict or tuple may hold: each call compares them all
SNAPSHOT_LEAVES = 64
_SCALARS = frozenset((int, float, bool, str, type(None), complex))
_MISSING = object()
_FOUND, _IDENTITY, _VALUE = "found", "identity", "value"


class NameGuards:
    """``found`` (modules, optimizers) and ``names`` (the rest): (getter, key, object) that must
    still hold that object; ``values``: (getter, key, snapshot, same) whose value must still
    be the snapshot or ``same(value, snapshot)`` (``comparison``). Each entry's ``where``,
    ``(kind, module name, global name)``, finds it again in another process (None: it cannot
    be, as a closure cell or a global of code run by ``exec``)."""

    def __init__(self):
        self.found, self.names, self.values = [], [], []
        self._where = {_FOUND: [], _IDENTITY: [], _VALUE: []}  # (in the order of each list)

    def add(self, kind, getter, key, value, where):
        if kind == _VALUE:
            self.values.append((getter, key, snapshot(value), comparison(value)))
        else:
            (self.found if kind == _FOUND else self.names).append((getter, key, value))
        self._where[kind].append(None if where is None else (kind,) + where)

    def without(self, places):
        """These guards less the ``places`` (getter, key, object) a caller checks already (a
        compiled function's own globals and closure holding its modules and optimizers)."""
        known = {_place_id(get, key) for get, key, _ in places}
        out = NameGuards()
        for kind, entries in ((_FOUND, self.found), (_IDENTITY, self.names)):
            for entry, where in zip(entries, self._where[kind]):
                if _place_id(*entry[:2]) not in known:
                    (out.found if kind == _FOUND else out.names).append(entry)
                    out._where[kind].append(where)
        out.values, out._where[_VALUE] = self.values, self._where[_VALUE]
        return out

    def portable(self):
        """``where`` of every entry, or None when one cannot be found in another process."""
        where = self._where[_FOUND] + self._where[_IDENTITY] + self._where[_VALUE]
        return None if any(w is None for w in where) else where

    @classmethod
    def found_again(cls, where):
        """The guards of a trace stored by another process (``portable``), on the globals as
        they are now; None when a name is not defined any more."""
        out = cls()
        for kind, module_name, name in where:
            g = getattr(sys.modules.get(module_name), "__dict__", None)
            if g is None or name not in g:
                return None
            out.add(kind, g.get, name, g[name], (module_name, name))
        return out


def _place_id(getter, key):
    """What a (getter, key) reads: a globals dict's name, or a cell."""
    owner = getattr(getter, "__self__", None)
    return (id(owner), key) if isinstance(owner, dict) else (None, id(key))


def snapshot(value):
    """A copy of a plain value's lists and dicts (their contents may change in place)."""
    t = type(value)
    if t is list or t is tuple:
        return t(map(snapshot, value))
    if t is dict:
        return {k: snapshot(v) for k, v in value.items()}
    return value


def comparison(value):
    """``same(now, snapshot)`` for a plain value: ``same_tree``, or for a flat list, tuple or
    dict of scalars an equivalent that compares in C (at load 9 on 2 cores: 0.9 against 2.1 us
    for three floats, 4.4 against 18 for 64; nested ones recurse, ~1 us per scalar: reading
    them along a layout made at the trace saved nothing)."""
    t = type(value)
    items = value.values() if t is dict else value if t in (list, tuple) else None
    if items is None or not all(type(v) in _SCALARS for v in items):
        return same_tree
    types = tuple(map(type, items))
    if t is dict:
        return lambda now, snap: (type(now) is dict and now == snap and
                                  tuple(map(type, now.values())) == types)
    return lambda now, snap: type(now) is t and now == snap and tuple(map(type, now)) == types


def same_tree(a, b):
    """Whether plain values ``a`` and ``b`` are equal with the same types throughout (2 and 2.0
    make different graphs: an int tensor times 2.0 is a float tensor)."""
    t = type(a)
    if t is not type(b):
        return False
    if t is list or t is tuple:
        return len(a) == len(b) and all(map(same_tree, a, b))
    if t is dict:
        return a.keys() == b.keys() and all(same_tree(v, b[k]) for k, v in a.items())
    return a is b or a == b


def _leaves(value, budget):
    """How many scalars the plain value ``value`` holds, or -1 when it holds anything else or
    more than ``budget``."""
    t = type(value)
    if t in _SCALARS or isinstance(value, np.generic):  # (numpy scalars compare as numbers)
        return 1
    if t is list or t is tuple:
        items = value
    elif t is dict:
        if not all(type(k) in _SCALARS for k in value):
            return -1
        items = value.values()
    else:
        return -1
    total = 0
    for v in items:
        n = _leaves(v, budget - total)
        if n < 0 or total + n > budget:
            return -1
        total += n
    return total


# the class of ``tracenet.compile(module)``, which stands for a module (registered by
# ``compiled_function.module_wrapper``: compiler.py imports that module)
module_wrappers = []


@functools.lru_cache(maxsize=None)
def global_names(code):
    """The names ``code`` loads as globals."""
    return tuple(sorted({i.argval for i in dis.get_instructions(code)
                         if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}))


def _code_of(value):
    """The code a function, ``functools.partial`` or bound method runs, or None."""
    while isinstance(value, (functools.partial, types.MethodType)):
        value = value.func if isinstance(value, functools.partial) else value.__func__
    return value.__code__ if isinstance(value, types.FunctionType) else None


class _Classifier:
    """How a value a trace's code found by name is guarded: by identity, by value or not."""

    def __init__(self, ran, tensors):
        self.ran = ran  # the code objects that ran while tracing
        self.tensor_ids = {id(t) for t in tensors}
        self.found_types = (Module, Optimizer) + tuple(module_wrappers)

    def kind(self, value):
        if type(value) in _SCALARS or _leaves(value, SNAPSHOT_LEAVES) >= 0:
            return _VALUE
        if isinstance(value, self.found_types):
            return _FOUND
        if id(value) in self.tensor_ids:
            return _IDENTITY
        code = _code_of(value)
        return _IDENTITY if code is not None and code in self.ran else None


def name_guards(codes, closures, tensors):
    """The ``NameGuards`` of a trace: ``codes`` (the code objects of the user functions that
    ran, each with its globals), ``closures`` ({code: [values its cells held at a call]}) and
    the tensors the trace captured or froze. None codes: the trace was not watched."""
    if not codes:
        return NameGuards()
    classify = _Classifier(codes, tensors)
    out = NameGuards()
    seen = set()
    for code, (g, _, _) in codes.items():
        module_name = g.get("__name__")
        portable = getattr(sys.modules.get(module_name), "__dict__", None) is g
        for name in global_names(code):
            value = g.get(name, _MISSING)
            if value is _MISSING or (id(g), name) in seen:
                continue
            seen.add((id(g), name))
            kind = classify.kind(value)
            if kind is not None:
                out.add(kind, g.get, name, value, (module_name, name) if portable else None)
    for cell in _cells_that_ran(closures, classify):
        value = cell_value(cell)
        kind = classify.kind(value)
        if kind is not None:
            out.add(kind, cell_value, cell, value, None)
    return out


def cell_value(cell):
    """What a closure cell holds (None once emptied)."""
    try:
        return cell.cell_contents
    except ValueError:
        return None


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:
        return _MISSING


def _cells_that_ran(closures, classify):
    """The closure cells of the functions whose calls ran while tracing (and that hold
    something guarded). A frame does not show its function, so the functions with each code
    are found once per trace (``gc.get_referrers``) and matched by what their cells held at the
    call: all cells the same objects; failing that, the same objects in the cells that do not
    hold scalars (the traced code may have reassigned those, e.g. a call counter). Every
    function that matches is guarded (two closures of one factory holding the same objects)."""
    wanted = {code: seen for code, seen in closures.items()
              if code.co_name not in _COMPREHENSIONS and
              any(v is not _MISSING and classify.kind(v) is not None
                  for values in seen for v in values)}
    if not wanted:
        return []
    found = {}
    for f in gc.get_referrers(*wanted):
        if type(f) is types.FunctionType and f.__code__ in wanted and f.__closure__:
            found.setdefault(f.__code__, []).append(f.__closure__)
    cells = {}
    for code, seen in wanted.items():
        for values in seen:
            candidates = found.get(code, ())
            matches = [c for c in candidates if _holds(c, values, exact=True)] or \
                [c for c in candidates if _holds(c, values, exact=False)]
            for closure in matches:
                cells.update((id(c), c) for c in closure)
    return list(cells.values())


# a comprehension's function lives while it runs, its cells those of the function around it
# (``[layer(x) for layer in self.layers]`` closes over ``self``): not searched for
_COMPREHENSIONS = frozenset(("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"))


def _holds(closure, values, exact):
    for cell, value in zip(closure, values):
        if _contents(cell) is not value and (exact or type(value) not in _SCALARS):
            return False
    return True
