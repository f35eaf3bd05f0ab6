"""Optimizer base class: parameter groups, per-parameter state, state_dict round trips."""
import copy
import functools
import warnings
from collections import OrderedDict, defaultdict
from itertools import chain

import numpy as np

from ..utils.hooks import add_hook
from ..autograd import grad_mode
from ..tensor import Tensor

__all__ = ["Optimizer", "required"]


class _RequiredParameter:
    """Marks a hyperparameter that has no default and must be given by each group."""

    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


def _typename(obj):
    if isinstance(obj, Tensor):
        return obj.type()
    cls = obj if isinstance(obj, type) else type(obj)
    module = getattr(cls, "__module__", "") or ""
    qualname = getattr(cls, "__qualname__", cls.__name__)
    if module in ("", "builtins"):
        return qualname
    return module + "." + qualname


def _value(x):
    """A hyperparameter as a Python number (a 1-element tensor gives its item)."""
    if isinstance(x, Tensor):
        return x.item()
    return x


# the fused update, installed by tracenet.fused_optim (compiled code lives in the layers above):
# ``fused_step[0](optimizer)`` updates every parameter that has a gradient in one C call and
# returns True, or returns False and leaves the step to the numpy rules
fused_step = [None]

_global_step_pre_hooks = OrderedDict()
_global_step_post_hooks = OrderedDict()


def register_optimizer_step_pre_hook(hook):
    """``hook(optimizer, args, kwargs)`` runs before every optimizer's ``step``; it may return a
    new ``(args, kwargs)`` pair."""
    return add_hook(_global_step_pre_hooks, hook)


def register_optimizer_step_post_hook(hook):
    """``hook(optimizer, args, kwargs)`` runs after every optimizer's ``step``."""
    return add_hook(_global_step_post_hooks, hook)


def _with_step_hooks(step):
    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        d = self.__dict__
        if not (_global_step_pre_hooks or _global_step_post_hooks
                or d.get("_optimizer_step_pre_hooks") or d.get("_optimizer_step_post_hooks")):
            out = step(self, *args, **kwargs)  # no hooks to run
            self._opt_called = True
            return out
        for hook in chain(_global_step_pre_hooks.values(), self._step_pre_hooks().values()):
            result = hook(self, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(f"{hook} must return None or a tuple of (new_args, "
                                       f"new_kwargs), but got {result}.")
                args, kwargs = result
        out = step(self, *args, **kwargs)
        self._opt_called = True
        for hook in chain(self._step_post_hooks().values(), _global_step_post_hooks.values()):
            hook(self, args, kwargs)
        return out
    wrapper._hooked = True
    return wrapper


class Optimizer:
    """Base class of all optimizers.

    ``params`` is an iterable of tensors, of ``(name, tensor)`` pairs, or of dicts (parameter
    groups: a ``"params"`` entry plus per-group hyperparameters overriding ``defaults``).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "_hooked", False):
            cls.step = _with_step_hooks(step)

    def __init__(self, params, defaults):
        self.defaults = defaults
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()

        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"Tensors or dicts, but got {_typename(params)}")

        self.state = defaultdict(dict)
        self.param_groups = []

        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    # --- hooks -----------------------------------------------------------------------------
    def _step_pre_hooks(self):
        return self.__dict__.setdefault("_optimizer_step_pre_hooks", OrderedDict())

    def _step_post_hooks(self):
        return self.__dict__.setdefault("_optimizer_step_post_hooks", OrderedDict())

    def register_step_pre_hook(self, hook):
        return add_hook(self._step_pre_hooks(), hook)

    def register_step_post_hook(self, hook):
        return add_hook(self._step_post_hooks(), hook)

    def _register(self, name, hook, prepend):
        return add_hook(self.__dict__.setdefault(name, OrderedDict()), hook, prepend)

    def register_state_dict_pre_hook(self, hook, prepend=False):
        """``hook(optimizer)`` runs before ``state_dict()`` builds its result."""
        return self._register("_optimizer_state_dict_pre_hooks", hook, prepend)

    def register_state_dict_post_hook(self, hook, prepend=False):
        """``hook(optimizer, state_dict)`` may return a replacement state dict."""
        return self._register("_optimizer_state_dict_post_hooks", hook, prepend)

    def register_load_state_dict_pre_hook(self, hook, prepend=False):
        """``hook(optimizer, state_dict)`` may return a replacement state dict to load."""
        return self._register("_optimizer_load_state_dict_pre_hooks", hook, prepend)

    def register_load_state_dict_post_hook(self, hook, prepend=False):
        """``hook(optimizer)`` runs after ``load_state_dict()``."""
        return self._register("_optimizer_load_state_dict_post_hooks", hook, prepend)

    # --- pickling --------------------------------------------------------------------------
    def __getstate__(self):
        return {"defaults": self.defaults, "state": self.state,
                "param_groups": self.param_groups}

    # group entries that older state dicts may lack, with the values each optimizer fills in
    _group_entry_defaults = {}

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
                     "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
                     "_optimizer_load_state_dict_pre_hooks",
                     "_optimizer_load_state_dict_post_hooks"):
            if name not in self.__dict__:
                setattr(self, name, OrderedDict())
        for group in self.__dict__.get("param_groups", ()):
            for key, value in self._group_entry_defaults.items():
                group.setdefault(key, value)
        self._step_tensor_to_float(self.__dict__.get("state", {}).values())

    def __repr__(self):
        text = self.__class__.__name__ + " ("
        for i, group in enumerate(self.param_groups):
            text += "\n"
            text += f"Parameter Group {i}\n"
            for key in sorted(group.keys()):
                if key != "params":
                    text += f"    {key}: {group[key]}\n"
        text += ")"
        return text

    # --- parameter groups --------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a group of parameters (a dict with a ``"params"`` entry) to optimize."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")

        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of tensors in sets will change between runs. "
                            "Please use a list instead.")
        else:
            params = list(params)

        tensors, names = [], []
        for p in params:
            if isinstance(p, tuple):
                names.append(p[0])
                tensors.append(p[1])
            else:
                tensors.append(p)
        if names:
            if len(names) != len(tensors):
                raise ValueError("all optimizer params should be with/without names. Some param "
                                 "names are missing")
            param_group["param_names"] = names
        param_group["params"] = tensors

        for p in tensors:
            if not isinstance(p, Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params is "
                                + _typename(p))
            if not self.defaults.get("differentiable", None) and not (
                    p.is_leaf or p.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")

        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError("parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            param_group.setdefault(name, default)

        ids = [id(p) for p in tensors]
        if len(ids) != len(set(ids)):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in "
                          "future, this will cause an error; see "
                          "github.com/pytorch/pytorch/issues/40967 for more information",
                          stacklevel=3)

        existing = set()
        for group in self.param_groups:
            existing.update(id(p) for p in group["params"])
        if not existing.isdisjoint(ids):
            raise ValueError("some parameters appear in more than one parameter group")

        if self.param_groups:
            had_names = "param_names" in self.param_groups[0]
            if had_names != ("param_names" in param_group):
                which = "without" if had_names else "with"
                raise ValueError("all optimizer param groups should be with/without names. "
                                 f"cannot add param group {which} names to the optimizer")

        self.param_groups.append(param_group)

    # --- gradients and steps -------------------------------------------------------------------
    def zero_grad(self, set_to_none=True):
        """Reset the gradients of all optimized tensors: drop them (``set_to_none=True``) or
        fill them with zeros in place."""
        for group in self.param_groups:
            for p in group["params"]:
                g = p._grad
                if g is None:
                    continue
                if set_to_none:
                    p._grad = None
                else:
                    if g.grad_fn is not None:
                        g.detach_()
                    else:
                        g._requires_grad = False
                    g._data[...] = 0
                    g._vc.value += 1

    def step(self, closure=None):
        """Perform a single optimization step; subclasses implement the update."""
        raise NotImplementedError

    def _step_fused(self):
        """Run this step's update as one compiled call if possible (True when done)."""
        run = fused_step[0]
        return run is not None and run(self)

    def _run_closure(self, closure):
        if closure is None:
            return None
        with grad_mode.enable_grad():
            return closure()

    # --- state_dict ------------------------------------------------------------------------
    def state_dict(self):
        """The optimizer state as a dict with ``"state"`` (per-parameter state keyed by the
        parameter's index over all groups) and ``"param_groups"`` (hyperparameters, with
        ``"params"`` holding those indices). State tensors are shared, not copied."""
        for hook in self.__dict__.get("_optimizer_state_dict_pre_hooks", {}).values():
            hook(self)

        index = {}
        start = 0

        def pack(group):
            nonlocal start
            packed = {k: v for k, v in group.items() if k != "params"}
            for i, p in enumerate(group["params"], start):
                index.setdefault(id(p), i)
            packed["params"] = [index[id(p)] for p in group["params"]]
            start += len(packed["params"])
            return packed

        groups = [pack(g) for g in self.param_groups]
        state = {(index[id(k)] if isinstance(k, Tensor) else k): v
                 for k, v in self.state.items()}
        result = {"state": state, "param_groups": groups}

        for hook in self.__dict__.get("_optimizer_state_dict_post_hooks", {}).values():
            out = hook(self, result)
            if out is not None:
                result = out
        return result

    @staticmethod
    def _cast_state_value(param, value, group, key=None):
        if isinstance(value, Tensor):
            if key == "step":
                if group.get("capturable", False) or group.get("fused", False):
                    return _as_dtype(value, np.float32)
                return value
            if param.is_floating_point():
                return _as_dtype(value, param._data.dtype)
            return value
        if isinstance(value, dict):
            return {k: Optimizer._cast_state_value(param, v, group, key=k)
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(Optimizer._cast_state_value(param, v, group) for v in value)
        return value

    def load_state_dict(self, state_dict):
        """Load a state dict made by ``state_dict()``; hyperparameters come from it, the
        parameters stay this optimizer's."""
        state_dict = state_dict.copy()
        for hook in self.__dict__.get("_optimizer_load_state_dict_pre_hooks", {}).values():
            out = hook(self, state_dict)
            if out is not None:
                state_dict = out

        groups = self.param_groups
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match "
                             "the size of optimizer's group")

        id_map = {}
        group_of = {}
        for g, s in zip(groups, saved_groups):
            for old, p in zip(s["params"], g["params"]):
                id_map[old] = p
                group_of[old] = g

        state = defaultdict(dict)
        for k, v in state_dict["state"].items():
            if k in id_map:
                param = id_map[k]
                state[param] = self._cast_state_value(param, v, group_of[k])
            else:
                state[k] = v

        new_groups = []
        for g, s in zip(groups, saved_groups):
            s["params"] = g["params"]
            if "param_names" in g and "param_names" not in s:
                s["param_names"] = g["param_names"]
            new_groups.append(s)

        self.__setstate__({"state": state, "param_groups": new_groups})

        for hook in self.__dict__.get("_optimizer_load_state_dict_post_hooks", {}).values():
            hook(self)

    # --- helpers for subclasses ------------------------------------------------------------------
    @staticmethod
    def _step_tensor_to_float(state_values):
        """Older state dicts may hold ``step`` as a number; it becomes a float32 0-dim tensor."""
        for s in state_values:
            if isinstance(s, dict) and "step" in s and not isinstance(s["step"], Tensor):
                s["step"] = Tensor._wrap(np.array(float(s["step"]), dtype=np.float32))


def _as_dtype(t, np_dtype):
    if t._data.dtype == np_dtype:
        return t
    out = Tensor._wrap(t._data.astype(np_dtype), t._requires_grad)
    return out


def _zeros_like(p, fill=0):
    if fill == 0:
        return Tensor._wrap(np.zeros_like(p._data))
    return Tensor._wrap(np.full_like(p._data, fill))


def _step_tensor(value=0.0):
    return Tensor._wrap(np.array(value, dtype=np.float32))


def _bump(t):
    t._vc.value += 1


def _capturable_unsupported():
    # capturable=True is meant for accelerator graphs; on the CPU there is nothing to capture
    raise AssertionError("If capturable=True, params and state_steps must be on supported "
                         "devices: ['cuda', 'xpu', 'hpu', 'privateuseone', 'xla'].")


def _grad_array(p):
    g = p._grad
    data = g._data
    if data is None:
        raise RuntimeError("optimizer step needs concrete gradients, but the gradient is traced")
    if data.dtype != p._data.dtype:
        data = data.astype(p._data.dtype)
    return data
