"""The optimizer's side of a compiled training step.

On every call the step's update ops need each parameter's state arrays and a row of run-time
hyperparameters. ``UpdateState`` keeps them in step with ``optimizer.state`` and the param
groups exactly as the eager ``optimizer.step()`` would: state created on the first step,
step counters incremented, hyperparameters re-read. It knows optimizers only through their
``compiled_update`` declaration (``tracenet/optim/compiled_update.py``).
"""
import operator
from itertools import repeat

import numpy as np

from . import _aligned
from .tensor import Tensor, arrays_replaced

# what ``refresh`` looks a parameter without state up in (never written)
_NO_STATE = repeat({})
_UNSET = object()  # no state tensor is this one


def declaration_of(optimizer):
    """The optimizer's ``CompiledUpdate``; NotImplementedError for one that has none."""
    update = getattr(type(optimizer), "compiled_update", None)
    if update is None:
        raise NotImplementedError(
            f"compile_step cannot compile {type(optimizer).__name__}: it declares no compiled "
            "update (use tracenet.compile(model) with the optimizer in eager mode instead)")
    return update


class UpdateState:
    """State arrays and ``hyper`` rows of the parameters ``params`` (in the optimizer's
    order) for one compiled step."""

    def __init__(self, optimizer, update, params, live_state=None):
        self.optimizer = optimizer
        # the optimizer's state dict as it is now, read without creating entries
        self._live_state = live_state or (lambda: optimizer.state)
        self.update = update
        self.params = params
        # (the step's graph holds one ``hyper`` input per parameter: these rows, never moved)
        self.hyper = np.zeros((len(params), len(update.hyper)), np.float64)
        names = [a.name for a in update.state] + ([update.counter] if update.counter else [])
        # (parameter, state name) pairs to look up, as two columns for ``map``
        self._lookup_params = [p for p in params for _ in names]
        self._lookup_names = names * len(params)
        self._step_column = update.hyper.index("step") if "step" in update.hyper else None
        self._first_column = update.hyper.index("first_step") \
            if "first_step" in update.hyper else None
        self._scratch = {}  # (parameter index, name) -> array the optimizer does not keep
        self._values = None
        self._replaced = None  # ``arrays_replaced`` when the arrays were read
        # (one entry per lookup from the start: the identity check pairs them one to one)
        self._tensors = [_UNSET] * len(self._lookup_params)
        self.arrays = []    # per parameter, its state arrays in the op's argument order
        self._counters = []
        self._created = []  # (state dict, name) of the entries the last refresh created

    def refresh(self, values=None):
        """Bring state and hyper rows up to date for one step; returns ``arrays`` (the same
        list object while no state array was replaced, so binding them again is free).
        ``values``: each param group's hyperparameters, if the caller has read them."""
        if values is None:
            values = list(map(self.update.hyper_from_group, self.optimizer.param_groups))
        # (a first step creates state, so the step after it takes the slow path once more)
        if self._created:
            self._created = []
        # the state tensors compared with the last step's as they are looked up (in C), with
        # no list made unless one changed (a state tensor may also have another array:
        # ``arrays_replaced``)
        if values != self._values or arrays_replaced[0] != self._replaced or \
                not self._same_state_tensors():
            tensors = self._state_tensors()
            self._sync(values)
            self._values = values
            self._tensors = tensors
            self._replaced = arrays_replaced[0]
        if self._counters:
            self._count()
        return self.arrays

    def _same_state_tensors(self):
        entries = map(self._live_state().get, self._lookup_params, _NO_STATE)
        try:  # (per-parameter state dicts, as the optimizers keep them)
            return all(map(operator.is_, map(dict.get, entries, self._lookup_names),
                           self._tensors))
        except TypeError:  # a state entry that is not a dict
            return False

    def _state_tensors(self):
        """The tensors of ``optimizer.state`` the update reads, in lookup order (None where
        there is none yet)."""
        entries = map(self._live_state().get, self._lookup_params)
        return [None if st is None else st.get(name)
                for st, name in zip(entries, self._lookup_names)]

    def _sync(self, values):
        """Create missing state as the eager step does; re-read every array and hyper row."""
        update, state = self.update, self.optimizer.state
        group_of = [(gi, g) for gi, g in enumerate(self.optimizer.param_groups)
                    for _ in g["params"]]
        arrays, counters = [], []
        for i, p in enumerate(self.params):
            gi, group = group_of[i]
            st = state[p]
            if update.counter is not None:
                if update.counter not in st:
                    st[update.counter] = Tensor._wrap(np.zeros((), np.float32))
                    self._created.append((st, update.counter))
                counters.append(st[update.counter])
            created = False
            for spec in update.state:
                if not spec.kept(group):  # the op still takes an array: a scratch one
                    arrays.append(self._scratch_array(i, spec.name, p))
                    continue
                if spec.name not in st:
                    st[spec.name] = Tensor._wrap(
                        _aligned.full(p.shape, spec.fill(group), p.dtype.np))
                    self._created.append((st, spec.name))
                    created = True
                arrays.append(st[spec.name]._data)
            self.hyper[i, :update.n_group] = [float(v) for v in values[gi]]
            if self._first_column is not None:
                self.hyper[i, self._first_column] = 1.0 if created else 0.0
        self.arrays = arrays
        self._counters = [(t, t._data.dtype.type(1)) for t in counters]

    def undo(self):
        """Take back what the last ``refresh`` did, for a step that failed (bad data): as in
        eager mode, where the error comes before ``optimizer.step()``, counters and state are
        as before (state it created is dropped; the next step creates it again)."""
        for t, one in self._counters:
            t._data -= one
            t._vc.value += 1
        for st, name in self._created:
            del st[name]
        if self._created:
            self._values = None
        self._created = []

    def _scratch_array(self, i, name, p):
        arr = self._scratch.get((i, name))
        if arr is None:
            arr = self._scratch[(i, name)] = _aligned.full(p.shape, 0, p.dtype.np)
        return arr

    def _count(self):
        """Increment the step counters (before the update, as the eager step does)."""
        col = self._step_column
        hyper = self.hyper
        for i, (t, one) in enumerate(self._counters):
            d = t._data
            # (a scalar add and store: the same float32 arithmetic as ``d += one``, at a
            # quarter of an in-place ufunc's cost on a 0-d array; 4 counters 5.4 -> 1.5 us)
            new = d[()] + one
            d[()] = new
            t._vc.value += 1
            if col is not None:
                hyper[i, col] = new
