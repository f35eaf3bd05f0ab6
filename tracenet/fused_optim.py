"""Fused optimizer steps: ``optimizer.step()`` as one generated C call.

An optimizer class that declares its update (``compiled_update``, see
``tracenet/optim/compiled_update.py``) updates every parameter that has a gradient, over all
its param groups, in one call of a small compiled graph: one update node per parameter, reading
the parameter, its gradient, its state arrays and its row of run-time hyperparameters, and
writing the parameter and the state in place. The C code is the translation of the numpy rules
(``tracenet/optim/_functional.py``) that ``compile_step`` uses, so both paths agree.

The graph is specialised on which parameters have a gradient (with their shapes and dtypes)
and on each group's compile-time flags; hyperparameters (a scheduler's learning rate) are read
on every step. ``UpdateState`` creates state and counts steps as the eager step does.

The numpy path runs instead when there is no C compiler (logged under
``TRACENET_DEBUG=compile``), when ``TRACENET_FUSED_OPTIM=0``, for a group with
``fused=False``, ``differentiable=True`` or ``capturable=True``, with tensor
hyperparameters, and when an update rule of ``_functional`` has been replaced.

Importing this module installs it into ``tracenet.optim.optimizer.fused_step``.
"""
import operator
import os
import weakref

from ._meta import Meta
from ._dtype import float64
from .codegen.emit import c_identifier
from .executable import Executable, optimise
from .ir.graph import Graph
from .optim import _functional
from .optim import optimizer as optimizer_mod
from .runtime import debug
from .runtime.toolchain import CompilerError
from .step_state import UpdateState
from .tensor import Tensor

ENV = "TRACENET_FUSED_OPTIM"
MAX_SPECIALISATIONS = 8  # per optimizer: beyond, a new set of gradients takes the numpy path
_FP_DTYPES = ("float32", "float64")
# the rules the C code translates: if one is replaced (say, by another library's square root),
# the step must run it
_RULES = ("_sqrt", "fma", "sgd_update", "adam_update", "rmsprop_update", "adagrad_update")
_ORIGINAL_RULES = tuple(getattr(_functional, n) for n in _RULES)
_rules_now = operator.attrgetter(*_RULES)
STALE = "stale"
_data_of = operator.attrgetter("_data")
_grad_of = operator.attrgetter("_grad")
_is = operator.is_
# (a weak reference's referent, called from ``map`` in C)
_deref = getattr(operator, "call", None) or operator.methodcaller("__call__")


def _rules_replaced():
    # (a tuple comparison tries identity first: no rule's __eq__ runs while none is replaced)
    return _rules_now(_functional) != _ORIGINAL_RULES


# the environment as the process sees it (what ``os.environ.get`` reads, without its
# Python-level key encoding on every step); None where ``os.environ`` keeps no such mapping
_environ = getattr(os.environ, "_data", None)
_ENV_KEY, _OFF = (os.environ.encodekey(ENV), os.environ.encodevalue("0")) \
    if _environ is not None else (None, None)


def _disabled():
    """Whether ``TRACENET_FUSED_OPTIM=0`` (read on every step: a test or a script may set it
    between steps)."""
    if _environ is not None:
        return _environ.get(_ENV_KEY) == _OFF
    return os.environ.get(ENV, "1") == "0"


class _Group:
    """A param group with only the parameters that have a gradient (``"params"``); every other
    entry is read from the live group."""

    __slots__ = ("group", "params")

    def __init__(self, group, params):
        self.group, self.params = group, params

    def __getitem__(self, key):
        return self.params if key == "params" else self.group[key]

    def get(self, key, default=None):
        return self.params if key == "params" else self.group.get(key, default)


class _Pending(dict):
    """The state of a parameter that has none yet: a plain dict joins ``optimizer.state``
    when something is stored (SGD without momentum keeps no state, as in torch)."""

    def __init__(self, state, param):
        super().__init__()
        self._state, self._param = state, param

    def __setitem__(self, key, value):
        self._state.setdefault(self._param, {})[key] = value
        super().__setitem__(key, value)

    def __delitem__(self, key):
        del self._state[self._param][key]
        super().__delitem__(key)


class _LazyState:
    __slots__ = ("state",)

    def __init__(self, state):
        self.state = state

    def __getitem__(self, param):
        st = self.state.get(param)
        return _Pending(self.state, param) if st is None else st


class _Part:
    """The optimizer as ``UpdateState`` sees it for one specialisation: the live param groups
    (``load_state_dict`` replaces them), each with its parameters that have a gradient."""

    def __init__(self, optimizer, params_per_group, lazy):
        self.optimizer = optimizer
        self.params_per_group = params_per_group
        self.lazy = lazy
        self._groups = None

    @property
    def param_groups(self):
        groups = self.optimizer.param_groups
        made = self._groups
        # the same group dicts as last time: their views again (each reads its live group)
        if made is None or len(made) != len(groups) or \
                any(v.group is not g for v, g in zip(made, groups)):
            made = self._groups = [_Group(g, ps) for g, ps in zip(groups,
                                                                   self.params_per_group)]
        return made

    @property
    def state(self):
        state = self.optimizer.state
        return _LazyState(state) if self.lazy else state


class FusedStep:
    """One compiled update of the parameters ``params_per_group`` (per group, those with a
    gradient) with the compile-time flags ``flags_per_group``."""

    def __init__(self, optimizer, update, params_per_group, flags_per_group, unit):
        self.update = update
        self.params = [p for ps in params_per_group for p in ps]
        self.metas = [(p._data.shape, p._data.dtype) for p in self.params]
        flags = [f for f, ps in zip(flags_per_group, params_per_group) for _ in ps]
        self.executable = Executable([("step", optimise(self._graph(optimizer, flags)))], unit)
        # counters are created with the state, so only an update without one (SGD) must not
        # create empty state for the parameters it does not keep anything for
        self._part = _Part(optimizer, params_per_group, update.counter is None)
        self.state = UpdateState(self._part, update, self.params,
                                 live_state=lambda: optimizer.state)
        self.optimizer = optimizer  # (its state dict is replaced by load_state_dict)
        self._call = self._bind()
        self._data = None  # the parameter arrays of the last call
        self._bound = ()  # the arrays bound in the last call: parameters, then state
        self._arrays = None  # the state arrays of the last call
        self._bumped = ()  # what the update writes: version counters to increment
        # weak references to the last gradient arrays that passed ``_gradients``' checks as
        # they are (a loop whose compiled backward recycles its gradient arrays passes the
        # same ones every step); weak, so that they can still be recycled
        self._checked = []

    def _graph(self, optimizer, flags):
        """Inputs: gradients, parameters, then per parameter its state arrays and hyper row;
        outputs: updated parameters, then updated state (parameter by parameter)."""
        update = self.update
        graph = Graph(f"{type(optimizer).__name__.lower()}_update")
        names = [f"p{i}" for i in range(len(self.params))]
        grads = [graph.add_input(f"{n}.grad", p.shape, p.dtype)
                 for n, p in zip(names, self.params)]
        params = [graph.add_input(n, p.shape, p.dtype) for n, p in zip(names, self.params)]
        new_params, new_state = [], []
        for n, p, g, f in zip(names, params, grads, flags):
            state = [graph.add_input(f"{n}.{a.name}", p.shape, p.dtype) for a in update.state]
            h = graph.add_input(f"{n}.hyper", (len(update.hyper),), float64)
            node = graph.add_node(update.op, [p, g] + state + [h], f,
                                  [Meta(p.shape, p.dtype)] * (1 + len(state)))
            new_params.append(node.outputs[0])
            new_state += node.outputs[1:]
        graph.outputs = new_params + new_state
        debug.log("ir", f"fused optimizer step:\n{graph}")
        return graph

    def _bind(self):
        """Gradients are this call's arrays; parameters and state arrays are bound (each both
        an input and an output: updated in place); hyper rows are fixed."""
        call = self.executable.arguments[0]
        n, k = len(self.params), len(self.update.state)
        out = call.output_slot
        slots = [[n + i, out(i)] for i in range(n)]
        labels = [f"parameter {i}" for i in range(n)]
        for i in range(n):
            first = 2 * n + i * (k + 1)  # its state arrays, then its hyper row
            for s, spec in enumerate(self.update.state):
                slots.append([first + s, out(n + i * k + s)])
                labels.append(f"optimizer state {spec.name!r} of parameter {i}")
            call.fix([first + k], self.state.hyper[i])
        call.bind_slots(slots, labels)
        return call

    def run(self, values=None):
        """One step: True when done; False (nothing done) for gradients the numpy step must
        handle, STALE for parameter arrays that no longer fit the compiled code. ``values``:
        each param group's hyperparameters, if the caller has read them."""
        params = self.params
        data = list(map(_data_of, params))
        grads = list(map(_data_of, map(_grad_of, params)))
        checked = self._checked
        if len(checked) != len(grads) or not all(map(_is, grads, map(_deref, checked))):
            grads = self._gradients(grads, data)
            if grads is None:
                return False
        same = self._same(data)
        if not same and not self._fits(data):
            return STALE
        arrays = self.state.refresh(values)
        if arrays is not self._arrays:
            if not self._fits(arrays, len(self.update.state)):
                self.state.undo()  # state loaded with another shape: the numpy step raises
                return False
            self._arrays = arrays
            self._bumped = self._written()
            same = False
        if not same:
            # (the bound arrays as one tuple, passed again while nothing was replaced: the
            # arguments then take it without comparing its arrays)
            self._bound = tuple(data + arrays)
            self._data = data
        try:
            self._call(grads, (), self._bound)
        except BaseException:
            self.state.undo()
            raise
        for t in self._bumped:
            t._vc.value += 1
        return True

    def _gradients(self, grads, data):
        """The gradient arrays as the C code takes them (cast and made contiguous as the
        eager step casts them), or None for gradients the numpy step must handle."""
        out = []
        plain = True
        for g, d in zip(grads, data):
            if g is None or g.shape != d.shape:
                return None  # the numpy step broadcasts, or raises
            if g.dtype is not d.dtype and g.dtype != d.dtype or not g.flags.c_contiguous:
                g = g.astype(d.dtype, order="C")
                plain = False
            out.append(g)
        self._checked = list(map(weakref.ref, out)) if plain else []
        return out

    def _same(self, data):
        last = self._data
        return last is not None and len(last) == len(data) and all(map(_is, data, last))

    def _fits(self, arrays, per_param=1):
        """Whether new arrays (``per_param`` for each parameter, in order) still have the
        compiled shapes and dtypes, contiguous: the C code trusts them."""
        metas = [m for m in self.metas for _ in range(per_param)]
        return len(arrays) == len(metas) and all(
            (a.shape, a.dtype) == m and a.flags.c_contiguous for a, m in zip(arrays, metas))

    def _written(self):
        """The parameters and the state tensors the update writes (the counters count
        themselves)."""
        state = self.optimizer.state
        out = list(self.params)
        for group in self._part.param_groups:
            kept = [a.name for a in self.update.state if a.kept(group)]
            for p in group["params"]:
                out += [state[p][n] for n in kept]
        return out


class FusedOptimizer:
    """The fused steps of one optimizer, by the parameters that have a gradient and the
    flags of each group."""

    def __init__(self, optimizer, update):
        self.optimizer = optimizer
        self.update = update
        self.attrs = tuple(update.flags)
        self.entries = tuple(update.flags.values())
        self.from_group = update.hyper_from_group
        self.specs = {}  # key -> FusedStep, or None when it could not be compiled

    def step(self):
        opt = self.optimizer
        key = []
        values = []  # (read once: the update's hyper rows take them too)
        for g in opt.param_groups:
            if g.get("fused") is False or g.get("differentiable") or g.get("capturable"):
                return False
            hyper = self.from_group(g)
            for v in hyper:
                if isinstance(v, Tensor):
                    return False  # a tensor may change in place: the numpy step reads it
            values.append(hyper)
            key.append((tuple([id(p) for p in g["params"] if p._grad is not None]),
                        tuple([bool(g.get(e, False)) for e in self.entries])))
        key = tuple(key)
        spec = self.specs.get(key, self)
        if spec is self:
            spec = self._create(key)
        if spec is None:
            return False
        done = spec.run(values)
        if done is STALE:  # the parameters changed shape or layout: specialise again
            del self.specs[key]
            spec = self._create(key)
            done = spec is not None and spec.run()
        return done is True

    def _create(self, key):
        opt = self.optimizer
        groups = opt.param_groups
        params_per_group = [[p for p in g["params"] if p._grad is not None] for g in groups]
        params = [p for ps in params_per_group for p in ps]
        spec = None
        if not params:
            return None  # nothing to update: the numpy step skips every parameter
        if any(p._data is None or p._grad._data is None or not p._data.size
               or p.dtype.name not in _FP_DTYPES for p in params) \
                or len(set(map(id, params))) < len(params):
            debug.log("compile", f"{type(opt).__name__}.step(): numpy update (traced, empty, "
                                 "repeated or not float32/float64 parameters, or traced "
                                 "gradients)")
        elif len(self.specs) >= MAX_SPECIALISATIONS:
            debug.log("compile", f"{type(opt).__name__}.step(): {len(self.specs)} fused "
                                 "updates already; numpy update for this set of gradients")
            return None
        else:
            flags = [dict(zip(self.attrs, f)) for _, f in key]
            unit = c_identifier(f"{type(opt).__name__.lower()}_update_{len(self.specs)}")
            try:
                spec = FusedStep(opt, self.update, params_per_group, flags, unit)
            except CompilerError as e:
                debug.log("compile", f"{type(opt).__name__}.step(): numpy update, no fused "
                                     f"one: {e}")
        self.specs[key] = spec
        return spec


def fused_step(optimizer):
    """``optimizer.step()``'s update in compiled code: True when done, False to leave it to
    the numpy rules."""
    fused = optimizer.__dict__.get("_fused_update")
    if fused is None:
        update = getattr(type(optimizer), "compiled_update", None)
        if update is None:
            return False
        fused = optimizer.__dict__["_fused_update"] = FusedOptimizer(optimizer, update)
    if _disabled() or _rules_replaced():
        return False
    return fused.step()


optimizer_mod.fused_step[0] = fused_step
