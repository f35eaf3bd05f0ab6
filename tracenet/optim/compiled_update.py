"""How an optimizer's update runs inside a compiled training step (``tracenet.compile_step``).

An optimizer class that can be compiled sets ``compiled_update = CompiledUpdate(...)``:

* ``op``: the graph op applying one update to one parameter
  (``tracenet/optim/update_ops.py``), called as ``op(param, grad, *state arrays, hyper,
  **flags)`` and returning the updated parameter and state arrays;
* ``state``: the per-parameter arrays the op reads and rewrites, in op-argument order, each a
  ``StateArray`` named as in ``optimizer.state[p]`` and created on the first step as the eager
  ``step()`` creates it;
* ``counter``: the name of a float32 step count in ``optimizer.state[p]`` incremented before
  each update (as the eager step does), or None;
* ``flags``: op attribute -> param-group entry, for the switches compiled into the C code
  (every parameter group must agree on them);
* ``hyper`` and ``hyper_from_group``: the layout of the float64 vector of run-time scalars the
  op reads (entry ``i`` of the vector is named ``hyper[i]``), the one definition the op's
  eager implementation unpacks and its C template indexes. Entries are read from the param group on
  every step (a learning-rate schedule never recompiles); the trailing per-parameter entries
  ``"step"`` (the counter after incrementing) and ``"first_step"`` (1 when the state arrays
  were created for this step) are filled in by the compiled step.

This module only describes; ``tracenet/compiled_function.py`` and ``tracenet/step_state.py`` act on it.
"""
import operator

PER_PARAMETER = ("step", "first_step")


class StateArray:
    """One per-parameter state array of the update, shaped and typed like the parameter.

    ``kept(group)``: whether the optimizer keeps it in ``optimizer.state`` (Adam keeps
    ``max_exp_avg_sq`` only with amsgrad); when not, the op gets a scratch array it does not
    use. ``fill(group)``: its value when created (zero by default)."""

    def __init__(self, name, kept=None, fill=None):
        self.name = name
        self.kept = kept or (lambda group: True)
        self.fill = fill or (lambda group: 0.0)


class CompiledUpdate:
    def __init__(self, op, state, flags, hyper, hyper_from_group=None, counter=None):
        self.op = op
        self.state = tuple(state)
        self.flags = dict(flags)
        self.hyper = tuple(hyper)
        self.counter = counter
        n_group = len(self.hyper)
        while n_group and self.hyper[n_group - 1] in PER_PARAMETER:
            n_group -= 1
        if any(name in PER_PARAMETER for name in self.hyper[:n_group]):
            raise ValueError(f"{op}: {PER_PARAMETER} come after the param-group entries")
        if "step" in self.hyper and counter is None:
            raise ValueError(f"{op}: a 'step' entry needs a counter")
        # hyper[:n_group] come from the param group: by default, the entries of those names
        self.n_group = n_group
        self.hyper_from_group = hyper_from_group or _entries(self.hyper[:n_group])

    def unpack(self, hyper):
        """``{name: value}`` of a hyper vector (what the op's eager implementation reads)."""
        return {name: float(v) for name, v in zip(self.hyper, hyper)}

    def flags_of(self, optimizer):
        """The compile-time flags: the same in every param group, else NotImplementedError."""
        groups = optimizer.param_groups
        flags = {attr: bool(groups[0].get(entry, False)) for attr, entry in self.flags.items()}
        for group in groups[1:]:
            for attr, entry in self.flags.items():
                if bool(group.get(entry, False)) != flags[attr]:
                    raise NotImplementedError(f"compile_step needs the same '{entry}' in every "
                                              "parameter group")
        return flags


def _entries(names):
    """``group -> tuple of group[name]`` for ``names``."""
    if not names:
        return lambda group: ()
    get = operator.itemgetter(*names)
    if len(names) == 1:
        return lambda group: (get(group),)
    return get
