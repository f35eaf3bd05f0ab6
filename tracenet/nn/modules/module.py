"""``Module``: the base class of every layer and network.

Assigning a ``Parameter``, a ``Module`` or a buffer as an attribute registers it, which is what
``parameters()``, ``state_dict()``, ``to()``, ``train()`` and the printed tree walk over.
"""
import functools
import itertools
import warnings
import weakref
from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import numpy as np

from ... import _dtype
from ...size import Size
from ...tensor import Tensor, _check_device, device as device_cls, replace_array
from ...autograd import grad_mode
from ..parameter import Buffer, Parameter
from ...utils.hooks import RemovableHandle, add_hook

__all__ = [
    "Module", "RemovableHandle", "register_module_forward_pre_hook",
    "register_module_forward_hook", "register_module_buffer_registration_hook",
    "register_module_module_registration_hook", "register_module_parameter_registration_hook",
]


# --- helpers -------------------------------------------------------------------------------

def _typename(obj):
    """How torch names an object's type in error messages (``torch.FloatTensor``, ``int``...)."""
    if isinstance(obj, Tensor):
        return obj.type()
    module = getattr(obj, "__module__", "") or ""
    if hasattr(obj, "__qualname__"):
        qualname = obj.__qualname__
    elif hasattr(obj, "__name__"):
        qualname = obj.__name__
    else:
        module = type(obj).__module__ or ""
        qualname = type(obj).__qualname__
    if module in ("", "builtins"):
        return qualname
    return f"{module}.{qualname}"


def _addindent(text, num_spaces):
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    pad = " " * num_spaces
    return "\n".join([lines[0]] + [pad + line for line in lines[1:]])


class IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    __slots__ = ()

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


class _IncompatibleKeys(IncompatibleKeys):
    __slots__ = ()


# --- global hooks (apply to every module) -------------------------------------------------

# Mutation epochs, for the guards of compiled modules: every change to a module's attributes,
# parameters, buffers or submodules advances ``_epoch[0]`` and stamps the module with the new
# value (``_changed``). A compiled module's guards hold while the epoch they were checked at is
# still current, or while none of the modules they read carries a later stamp.
_epoch = [0]


def _changed(module):
    """Record that ``module``'s state or structure changed."""
    _epoch[0] = epoch = _epoch[0] + 1
    object.__setattr__(module, "_mutation_epoch", epoch)


def mutation_epoch(module):
    """The epoch of ``module``'s last change (0 if none since it was created)."""
    return module.__dict__.get("_mutation_epoch", 0)


_global_forward_pre_hooks = OrderedDict()
# callables told of every module call (the tracer uses this to note the modules a traced
# function runs, so a compiled training step re-specialises when one switches train/eval)
_call_observers = []
_global_forward_hooks = OrderedDict()
_global_forward_hooks_always_called = OrderedDict()
_global_forward_hooks_with_kwargs = OrderedDict()
_global_buffer_registration_hooks = OrderedDict()
_global_module_registration_hooks = OrderedDict()
_global_parameter_registration_hooks = OrderedDict()


def register_module_forward_pre_hook(hook):
    """Register ``hook(module, args)`` to run before every module's ``forward``."""
    return add_hook(_global_forward_pre_hooks, hook)


def register_module_forward_hook(hook, *, with_kwargs=False, always_call=False):
    """Register ``hook(module, args, output)`` to run after every module's ``forward``."""
    handle = RemovableHandle(_global_forward_hooks,
                             extra_dict=(_global_forward_hooks_always_called,
                                         _global_forward_hooks_with_kwargs))
    _global_forward_hooks[handle.id] = hook
    if with_kwargs:
        _global_forward_hooks_with_kwargs[handle.id] = True
    if always_call:
        _global_forward_hooks_always_called[handle.id] = True
    return handle


def register_module_buffer_registration_hook(hook):
    return add_hook(_global_buffer_registration_hooks, hook)


def register_module_module_registration_hook(hook):
    return add_hook(_global_module_registration_hooks, hook)


def register_module_parameter_registration_hook(hook):
    return add_hook(_global_parameter_registration_hooks, hook)


def _has_global_forward_hooks():
    return bool(_global_forward_pre_hooks or _global_forward_hooks)


def _forward_unimplemented(self, *input):
    raise NotImplementedError(
        f'Module [{type(self).__name__}] is missing the required "forward" function')


class _WrappedHook:
    """A load-state-dict pre-hook, optionally called with the module as first argument."""

    def __init__(self, hook, module=None):
        self.hook = hook
        functools.update_wrapper(self, hook)
        self.with_module = module is not None
        if self.with_module:
            self.module = weakref.ref(module)

    def __call__(self, *args, **kwargs):
        if self.with_module:
            module = self.module()
            if module is None:
                raise RuntimeError("You are trying to call the hook of a dead Module!")
            return self.hook(module, *args, **kwargs)
        return self.hook(*args, **kwargs)

    def __getstate__(self):
        state = {"hook": self.hook, "with_module": self.with_module}
        if self.with_module:
            state["module"] = self.module()
        return state

    def __setstate__(self, state):
        self.hook = state["hook"]
        self.with_module = state["with_module"]
        if self.with_module:
            if state["module"] is None:
                raise RuntimeError("You are trying to revive the hook of a dead Module!")
            self.module = weakref.ref(state["module"])


def _is_tensor_like(value):
    if isinstance(value, Tensor):
        return True
    # a real PyTorch tensor (e.g. from a checkpoint saved by PyTorch) is accepted too
    return (type(value).__module__.split(".")[0] == "torch" and hasattr(value, "numpy")
            and hasattr(value, "shape"))


def _as_tensor(value):
    if isinstance(value, Tensor):
        return value
    arr = np.asarray(value.detach().cpu().numpy())
    return Tensor._wrap(np.array(arr, dtype=_dtype.from_numpy_dtype(arr.dtype).np))


def _shape_str(shape):
    return repr(Size(shape))


_FLOAT_TYPE_NAMES = {
    "torch.FloatTensor": _dtype.float32, "torch.DoubleTensor": _dtype.float64,
    "torch.LongTensor": _dtype.int64, "torch.BoolTensor": _dtype.bool_,
}


def _parse_to(*args, **kwargs):
    """Parse ``Module.to``'s overloads: (device, dtype, non_blocking), (dtype, non_blocking),
    (tensor, non_blocking); returns (device, dtype, non_blocking)."""
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    non_blocking = kwargs.pop("non_blocking", False)
    kwargs.pop("copy", None)
    kwargs.pop("memory_format", None)
    bad = bool(kwargs)
    args = list(args)

    def is_device(x):
        return isinstance(x, (str, int, device_cls)) and not isinstance(x, bool)

    if args and isinstance(args[0], Tensor):
        dtype = args.pop(0).dtype
    elif args and isinstance(args[0], _dtype.dtype):
        dtype = args.pop(0)
    elif args and (args[0] is None or is_device(args[0])):
        device = args.pop(0)
        if args and (args[0] is None or isinstance(args[0], _dtype.dtype)):
            dtype = args.pop(0)
    if args and isinstance(args[0], bool):
        non_blocking = args.pop(0)
    if args and isinstance(args[0], bool):  # copy
        args.pop(0)
    if args or bad:
        got = ", ".join(type(a).__name__ for a in list(args) + list(kwargs.values()))
        raise TypeError(
            f"to() received an invalid combination of arguments - got ({got}), but expected one "
            "of:\n * (torch.device device = None, torch.dtype dtype = None, bool non_blocking = "
            "False, bool copy = False, *, torch.memory_format memory_format = None)\n * "
            "(torch.dtype dtype, bool non_blocking = False, bool copy = False, *, "
            "torch.memory_format memory_format = None)\n * (Tensor tensor, bool non_blocking = "
            "False, bool copy = False, *, torch.memory_format memory_format = None)\n")
    if isinstance(device, int):
        device = f"cuda:{device}"
    if dtype is not None and not isinstance(dtype, _dtype.dtype):
        raise TypeError(f"to() expected a dtype, but got {_typename(dtype)}")
    return device, dtype, non_blocking


def _cast_fn(target, only_floating=True):
    """A function Tensor -> Tensor converting to ``target`` (returns the input when unchanged)."""
    def fn(t):
        if t.dtype is target or (only_floating and not t.dtype.is_floating_point):
            return t
        return Tensor._wrap(t._concrete("dtype conversion").astype(target.np),
                            t._requires_grad and target.is_floating_point)
    return fn


def _no_half(name):
    raise TypeError(f"Module.{name}() is not available: tracenet tensors are float32 or float64 "
                    "(no 16-bit floating point types); use .float() or .double()")


# --- Module ----------------------------------------------------------------------------------

class Module:
    """Base class for all neural network modules; subclass it and implement ``forward``."""

    dump_patches = False
    _version = 1
    training: bool
    call_super_init = False

    def __init__(self, *args, **kwargs):
        if self.call_super_init is False and kwargs:
            raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument "
                            f"'{next(iter(kwargs))}'")
        if self.call_super_init is False and args:
            raise TypeError(f"{type(self).__name__}.__init__() takes 1 positional argument but "
                            f"{len(args) + 1} were given")
        setattr_ = object.__setattr__
        setattr_(self, "training", True)
        setattr_(self, "_mutation_epoch", 0)
        setattr_(self, "_parameters", OrderedDict())
        setattr_(self, "_buffers", OrderedDict())
        setattr_(self, "_non_persistent_buffers_set", set())
        setattr_(self, "_backward_pre_hooks", OrderedDict())
        setattr_(self, "_backward_hooks", OrderedDict())
        setattr_(self, "_is_full_backward_hook", None)
        setattr_(self, "_forward_hooks", OrderedDict())
        setattr_(self, "_forward_hooks_with_kwargs", OrderedDict())
        setattr_(self, "_forward_hooks_always_called", OrderedDict())
        setattr_(self, "_forward_pre_hooks", OrderedDict())
        setattr_(self, "_forward_pre_hooks_with_kwargs", OrderedDict())
        setattr_(self, "_state_dict_hooks", OrderedDict())
        setattr_(self, "_state_dict_pre_hooks", OrderedDict())
        setattr_(self, "_load_state_dict_pre_hooks", OrderedDict())
        setattr_(self, "_load_state_dict_post_hooks", OrderedDict())
        setattr_(self, "_modules", OrderedDict())
        if self.call_super_init:
            super().__init__(*args, **kwargs)

    forward = _forward_unimplemented

    # --- registration --------------------------------------------------------------------
    def _check_state_name(self, kind, name, store):
        """PyTorch's checks of a new buffer or parameter name (``store`` holds that kind)."""
        if not isinstance(name, str):
            raise TypeError(f"{kind} name should be a string. Got {_typename(name)}")
        if "." in name:
            raise KeyError(f'{kind} name can\'t contain "."')
        if name == "":
            raise KeyError(f'{kind} name can\'t be empty string ""')
        if hasattr(self, name) and name not in store:
            raise KeyError(f"attribute '{name}' already exists")

    def register_buffer(self, name, tensor, persistent=True):
        """Add a buffer: module state that is not a parameter (e.g. running statistics).
        Persistent buffers are part of ``state_dict``."""
        if "_buffers" not in self.__dict__:
            raise AttributeError("cannot assign buffer before Module.__init__() call")
        self._check_state_name("buffer", name, self._buffers)
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign '{_typename(tensor)}' object to buffer '{name}' "
                            "(torch Tensor or None required)")
        for hook in _global_buffer_registration_hooks.values():
            output = hook(self, name, tensor)
            if output is not None:
                tensor = output
        self._buffers[name] = tensor
        _changed(self)
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def register_parameter(self, name, param):
        """Add a parameter (a ``Parameter`` or None) under ``name``."""
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign parameter before Module.__init__() call")
        self._check_state_name("parameter", name, self._parameters)
        if param is None:
            self._parameters[name] = None
            _changed(self)
            return
        if not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{_typename(param)}' object to parameter '{name}' "
                            "(torch.nn.Parameter or None required)")
        if param.grad_fn is not None:
            raise ValueError(
                f"Cannot assign non-leaf Tensor to parameter '{name}'. Model parameters must be "
                f"created explicitly. To express '{name}' as a function of another Tensor, "
                "compute the value in the forward() method.")
        for hook in _global_parameter_registration_hooks.values():
            output = hook(self, name, param)
            if output is not None:
                param = output
        self._parameters[name] = param
        _changed(self)

    def add_module(self, name, module):
        """Add a child module, reachable as attribute ``name``."""
        if not isinstance(module, Module) and module is not None:
            raise TypeError(f"{_typename(module)} is not a Module subclass")
        if not isinstance(name, str):
            raise TypeError(f"module name should be a string. Got {_typename(name)}")
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute '{name}' already exists")
        if "." in name:
            raise KeyError(f'module name can\'t contain ".", got: {name}')
        if name == "":
            raise KeyError('module name can\'t be empty string ""')
        for hook in _global_module_registration_hooks.values():
            output = hook(self, name, module)
            if output is not None:
                module = output
        self._modules[name] = module
        _changed(self)

    def register_module(self, name, module):
        """Alias for ``add_module``."""
        self.add_module(name, module)

    # --- lookup by dotted path --------------------------------------------------------------
    def get_submodule(self, target):
        """The submodule at dotted path ``target`` (``""`` is ``self``)."""
        if target == "":
            return self
        mod = self
        for item in target.split("."):
            if not hasattr(mod, item):
                raise AttributeError(mod._get_name() + " has no attribute `" + item + "`")
            mod = getattr(mod, item)
            if not isinstance(mod, Module):
                raise AttributeError("`" + item + "` is not an nn.Module")
        return mod

    def set_submodule(self, target, module, strict=False):
        """Replace (or, unless ``strict``, add) the submodule at dotted path ``target``."""
        if target == "":
            raise ValueError("Cannot set the submodule without a target name!")
        atoms = target.split(".")
        if not isinstance(module, Module):
            raise ValueError("`module` is not an nn.Module, found " + str(type(module)))
        parent = self.get_submodule(".".join(atoms[:-1])) if len(atoms) > 1 else self
        name = atoms[-1]
        if strict and not hasattr(parent, name):
            raise AttributeError(parent._get_name() + " has no attribute `" + name + "`")
        if hasattr(parent, name) and not isinstance(getattr(parent, name), Module):
            raise AttributeError("`" + name + "` is not an nn.Module")
        setattr(parent, name, module)

    def _split_target(self, target):
        module_path, _, name = target.rpartition(".")
        return self.get_submodule(module_path), name

    def get_parameter(self, target):
        """The parameter at dotted path ``target`` (e.g. ``"net.0.weight"``)."""
        mod, name = self._split_target(target)
        if not hasattr(mod, name):
            raise AttributeError(mod._get_name() + " has no attribute `" + name + "`")
        param = getattr(mod, name)
        if not isinstance(param, Parameter):
            raise AttributeError("`" + name + "` is not an nn.Parameter")
        return param

    def get_buffer(self, target):
        """The buffer at dotted path ``target``."""
        mod, name = self._split_target(target)
        if not hasattr(mod, name):
            raise AttributeError(mod._get_name() + " has no attribute `" + name + "`")
        buffer = getattr(mod, name)
        if name not in mod._buffers:
            raise AttributeError("`" + name + "` is not a buffer")
        return buffer

    def get_extra_state(self):
        """Override (together with ``set_extra_state``) to put extra state in ``state_dict``."""
        raise RuntimeError("Module.get_extra_state() was called although it is not overridden; "
                           "override both get_extra_state() and set_extra_state() to store extra "
                           "state in the state_dict.")

    def set_extra_state(self, state):
        raise RuntimeError("Module.set_extra_state() was called although it is not overridden; "
                           "override both get_extra_state() and set_extra_state() to load extra "
                           "state from the state_dict.")

    # --- conversions -----------------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        """Apply ``fn`` (Tensor -> Tensor) to every parameter, gradient and buffer. Parameters
        keep their identity: their storage is replaced by the converted values."""
        if recurse:
            for module in self.children():
                module._apply(fn)
        with grad_mode.no_grad():
            for key, param in self._parameters.items():
                if param is None:
                    continue
                applied = fn(param)
                if applied is not param:
                    replace_array(param, applied._concrete("Module._apply"))
                    if not param._data.dtype.kind == "f":
                        param._requires_grad = False
                    param._vc.value += 1
                grad = param._grad
                if grad is not None:
                    grad_applied = fn(grad)
                    if grad_applied is not grad:
                        replace_array(grad, grad_applied._concrete("Module._apply"))
                        grad._vc.value += 1
            for key, buf in self._buffers.items():
                if buf is not None:
                    self._buffers[key] = fn(buf)
            _changed(self)
        return self

    def apply(self, fn):
        """Call ``fn`` on every submodule (children first) and then on ``self``."""
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    def cuda(self, device=None):
        _check_device("cuda" if device is None else
                      (f"cuda:{device}" if isinstance(device, int) else device))
        return self

    def xpu(self, device=None):
        _check_device("xpu")
        return self

    def ipu(self, device=None):
        _check_device("ipu")
        return self

    def mtia(self, device=None):
        _check_device("mtia")
        return self

    def cpu(self):
        """Modules always live on the CPU: returns ``self``."""
        return self

    def type(self, dst_type):
        """Cast all parameters and buffers to ``dst_type`` (a dtype or ``'torch.FloatTensor'``
        style name)."""
        if isinstance(dst_type, str):
            if dst_type not in _FLOAT_TYPE_NAMES:
                raise ValueError(f"invalid type: '{dst_type}'")
            dst_type = _FLOAT_TYPE_NAMES[dst_type]
        if not isinstance(dst_type, _dtype.dtype):
            raise TypeError(f"Module.type() expects a dtype or a type name, got "
                            f"{_typename(dst_type)}")
        return self._apply(_cast_fn(dst_type, only_floating=False))

    def float(self):
        """Cast floating point parameters and buffers to float32."""
        return self._apply(_cast_fn(_dtype.float32))

    def double(self):
        """Cast floating point parameters and buffers to float64."""
        return self._apply(_cast_fn(_dtype.float64))

    def half(self):
        _no_half("half")

    def bfloat16(self):
        _no_half("bfloat16")

    def to_empty(self, *, device=None, recurse=True):
        """Move parameters and buffers to ``device`` without copying their values."""
        _check_device(device)
        return self._apply(lambda t: Tensor._wrap(np.empty_like(t._concrete("to_empty")),
                                                  t._requires_grad), recurse=recurse)

    def to(self, *args, **kwargs):
        """``to(device)``, ``to(dtype)``, ``to(device, dtype)`` or ``to(tensor)``: cast floating
        point parameters and buffers in place (parameters keep their identity)."""
        device, dtype, non_blocking = _parse_to(*args, **kwargs)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError("nn.Module.to only accepts floating point or complex dtypes, but got "
                            f"desired dtype={dtype}")
        _check_device(device)
        if dtype is None:
            return self
        return self._apply(_cast_fn(dtype))

    def share_memory(self):
        return self

    # --- hooks -------------------------------------------------------------------------------
    def register_forward_pre_hook(self, hook, *, prepend=False, with_kwargs=False):
        """Register ``hook(module, args)`` (or ``hook(module, args, kwargs)`` with
        ``with_kwargs=True``) to run before ``forward``; a non-None result replaces the input."""
        handle = RemovableHandle(self._forward_pre_hooks,
                                 extra_dict=self._forward_pre_hooks_with_kwargs)
        self._forward_pre_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_pre_hooks_with_kwargs[handle.id] = True
        if prepend:
            self._forward_pre_hooks.move_to_end(handle.id, last=False)
        return handle

    def register_forward_hook(self, hook, *, prepend=False, with_kwargs=False,
                              always_call=False):
        """Register ``hook(module, args, output)`` (or ``hook(module, args, kwargs, output)``)
        to run after ``forward``; a non-None result replaces the output."""
        handle = RemovableHandle(self._forward_hooks,
                                 extra_dict=(self._forward_hooks_with_kwargs,
                                             self._forward_hooks_always_called))
        self._forward_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_hooks_with_kwargs[handle.id] = True
        if always_call:
            self._forward_hooks_always_called[handle.id] = True
        if prepend:
            self._forward_hooks.move_to_end(handle.id, last=False)
        return handle

    def _backward_hooks_unsupported(self, *args, **kwargs):
        raise NotImplementedError("module backward hooks are not supported by tracenet; "
                                  "use Tensor.register_hook on the module's inputs or outputs")

    register_full_backward_pre_hook = _backward_hooks_unsupported
    register_full_backward_hook = _backward_hooks_unsupported
    register_backward_hook = _backward_hooks_unsupported

    def _call_impl(self, *args, **kwargs):
        forward_call = self.forward
        if not (self._forward_hooks or self._forward_pre_hooks or _global_forward_hooks
                or _global_forward_pre_hooks):
            return forward_call(*args, **kwargs)

        called_always = set()
        result = None
        try:
            for hook_id, hook in itertools.chain(_global_forward_pre_hooks.items(),
                                                 self._forward_pre_hooks.items()):
                if hook_id in self._forward_pre_hooks_with_kwargs:
                    out = hook(self, args, kwargs)
                    if out is not None:
                        if isinstance(out, tuple) and len(out) == 2:
                            args, kwargs = out
                        else:
                            raise RuntimeError("forward pre-hook must return None or a tuple of "
                                               f"(new_args, new_kwargs), but got {out}.")
                else:
                    out = hook(self, args)
                    if out is not None:
                        if not isinstance(out, tuple):
                            out = (out,)
                        args = out

            result = forward_call(*args, **kwargs)

            for hook_id, hook in itertools.chain(_global_forward_hooks.items(),
                                                 self._forward_hooks.items()):
                if (hook_id in self._forward_hooks_always_called
                        or hook_id in _global_forward_hooks_always_called):
                    called_always.add(hook_id)
                if (hook_id in self._forward_hooks_with_kwargs
                        or hook_id in _global_forward_hooks_with_kwargs):
                    out = hook(self, args, kwargs, result)
                else:
                    out = hook(self, args, result)
                if out is not None:
                    result = out
            return result
        except Exception:
            for hook_id, hook in itertools.chain(_global_forward_hooks.items(),
                                                 self._forward_hooks.items()):
                always = (hook_id in self._forward_hooks_always_called
                          or hook_id in _global_forward_hooks_always_called)
                if not always or hook_id in called_always:
                    continue
                try:
                    if (hook_id in self._forward_hooks_with_kwargs
                            or hook_id in _global_forward_hooks_with_kwargs):
                        out = hook(self, args, kwargs, result)
                    else:
                        out = hook(self, args, result)
                    if out is not None:
                        result = out
                except Exception as e:
                    warnings.warn("forward hook with ``always_call=True`` raised an exception "
                                  "that was silenced as another error was raised in forward: "
                                  f"{str(e)}")
            raise

    def __call__(self, *args, **kwargs):
        if _call_observers:
            for observe in _call_observers:
                observe(self)  # tracing records which modules (and training flags) it went through
        elif not (self._forward_hooks or self._forward_pre_hooks or _global_forward_hooks
                  or _global_forward_pre_hooks):
            return self.forward(*args, **kwargs)  # no hooks: what _call_impl does, one call less
        return self._call_impl(*args, **kwargs)

    # --- attribute protocol --------------------------------------------------------------------
    def __getstate__(self):
        return self.__dict__.copy()

    def __setstate__(self, state):
        self.__dict__.update(state)
        defaults = {
            "_forward_pre_hooks": OrderedDict, "_forward_pre_hooks_with_kwargs": OrderedDict,
            "_forward_hooks": OrderedDict, "_forward_hooks_with_kwargs": OrderedDict,
            "_forward_hooks_always_called": OrderedDict, "_state_dict_hooks": OrderedDict,
            "_state_dict_pre_hooks": OrderedDict, "_load_state_dict_pre_hooks": OrderedDict,
            "_load_state_dict_post_hooks": OrderedDict, "_non_persistent_buffers_set": set,
            "_backward_pre_hooks": OrderedDict, "_backward_hooks": OrderedDict,
        }
        for name, factory in defaults.items():
            if name not in self.__dict__:
                object.__setattr__(self, name, factory())
        if "_is_full_backward_hook" not in self.__dict__:
            object.__setattr__(self, "_is_full_backward_hook", None)

    def __getattr__(self, name):
        d = self.__dict__
        if "_parameters" in d:
            params = d["_parameters"]
            if name in params:
                return params[name]
        if "_buffers" in d:
            buffers = d["_buffers"]
            if name in buffers:
                return buffers[name]
        if "_modules" in d:
            modules = d["_modules"]
            if name in modules:
                return modules[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name, value):
        def remove_from(*dicts_or_sets):
            for d in dicts_or_sets:
                if name in d:
                    if isinstance(d, dict):
                        del d[name]
                    else:
                        d.discard(name)

        _changed(self)
        d = self.__dict__
        params = d.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign parameters before Module.__init__() call")
            remove_from(d, self._buffers, self._modules, self._non_persistent_buffers_set)
            self.register_parameter(name, value)
            return
        if params is not None and name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{_typename(value)}' as parameter '{name}' "
                                "(torch.nn.Parameter or None expected)")
            self.register_parameter(name, value)
            return
        modules = d.get("_modules")
        if isinstance(value, Module):
            if modules is None:
                raise AttributeError("cannot assign module before Module.__init__() call")
            remove_from(d, self._parameters, self._buffers, self._non_persistent_buffers_set)
            for hook in _global_module_registration_hooks.values():
                output = hook(self, name, value)
                if output is not None:
                    value = output
            modules[name] = value
            return
        if modules is not None and name in modules:
            if value is not None:
                raise TypeError(f"cannot assign '{_typename(value)}' as child module '{name}' "
                                "(torch.nn.Module or None expected)")
            for hook in _global_module_registration_hooks.values():
                output = hook(self, name, value)
                if output is not None:
                    value = output
            modules[name] = value
            return
        buffers = d.get("_buffers")
        is_buffer = isinstance(value, Buffer)
        if is_buffer or (buffers is not None and name in buffers):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{_typename(value)}' as buffer '{name}' "
                                "(torch.nn.Buffer, torch.Tensor or None expected)")
            if is_buffer:
                persistent = value.persistent
                if buffers is not None:
                    remove_from(d, self._parameters, self._modules)
            else:
                persistent = name not in self._non_persistent_buffers_set
            self.register_buffer(name, value, persistent)
            return
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        _changed(self)
        d = self.__dict__
        if name in d.get("_parameters", ()):
            del self._parameters[name]
        elif name in d.get("_buffers", ()):
            del self._buffers[name]
            self._non_persistent_buffers_set.discard(name)
        elif name in d.get("_modules", ()):
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    def __dir__(self):
        keys = set(dir(type(self)))
        keys.update(self.__dict__.keys())
        keys.update(self._parameters.keys())
        keys.update(self._modules.keys())
        keys.update(self._buffers.keys())
        return sorted(k for k in keys if not k[0].isdigit())

    # --- state dict ------------------------------------------------------------------------------
    def _register_state_dict_hook(self, hook):
        """``hook(module, state_dict, prefix, local_metadata)``; a non-None result replaces the
        state dict."""
        if getattr(hook, "_from_public_api", False):
            raise RuntimeError("Cannot register the same function as the state dict post hook "
                               "that was previously registered via register_state_dict_post_hook")
        return add_hook(self._state_dict_hooks, hook)

    def register_state_dict_post_hook(self, hook):
        """``hook(module, state_dict, prefix, local_metadata)`` runs after ``state_dict`` and may
        modify it in place."""
        try:
            hook._from_public_api = True
        except AttributeError:
            pass
        return add_hook(self._state_dict_hooks, hook)

    def register_state_dict_pre_hook(self, hook):
        """``hook(module, prefix, keep_vars)`` runs before ``state_dict``."""
        return add_hook(self._state_dict_pre_hooks, hook)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """Write this module's own parameters and persistent buffers (not its children's)."""
        for name, param in self._parameters.items():
            if param is not None:
                destination[prefix + name] = param if keep_vars else param.detach()
        for name, buf in self._buffers.items():
            if buf is not None and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = buf if keep_vars else buf.detach()
        if type(self).get_extra_state is not Module.get_extra_state:
            destination[prefix + "_extra_state"] = self.get_extra_state()

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        """An ``OrderedDict`` of all parameters and persistent buffers by dotted name. Values are
        detached tensors sharing memory with the module's (the originals with ``keep_vars``)."""
        if args:
            warnings.warn(
                "Positional args are being deprecated, use kwargs instead. Refer to "
                "https://pytorch.org/docs/main/generated/torch.nn.Module.html"
                "#torch.nn.Module.state_dict for details.", FutureWarning, stacklevel=2)
            if destination is None and len(args) > 0:
                destination = args[0]
            if prefix == "" and len(args) > 1:
                prefix = args[1]
            if keep_vars is False and len(args) > 2:
                keep_vars = args[2]
        if destination is None:
            destination = OrderedDict()
            destination._metadata = OrderedDict()
        local_metadata = dict(version=self._version)
        if hasattr(destination, "_metadata"):
            destination._metadata[prefix[:-1]] = local_metadata
        for hook in self._state_dict_pre_hooks.values():
            hook(self, prefix, keep_vars)
        self._save_to_state_dict(destination, prefix, keep_vars)
        for name, module in self._modules.items():
            if module is not None:
                module.state_dict(destination=destination, prefix=prefix + name + ".",
                                  keep_vars=keep_vars)
        for hook in self._state_dict_hooks.values():
            result = hook(self, destination, prefix, local_metadata)
            if getattr(hook, "_from_public_api", False):
                if result is not None:
                    raise RuntimeError("state_dict post-hook must return None")
            elif result is not None:
                destination = result
        return destination

    def _register_load_state_dict_pre_hook(self, hook, with_module=False):
        handle = RemovableHandle(self._load_state_dict_pre_hooks)
        self._load_state_dict_pre_hooks[handle.id] = _WrappedHook(
            hook, self if with_module else None)
        return handle

    def register_load_state_dict_pre_hook(self, hook):
        """``hook(module, state_dict, prefix, local_metadata, strict, missing_keys,
        unexpected_keys, error_msgs)`` runs before this module loads its entries."""
        return self._register_load_state_dict_pre_hook(hook, with_module=True)

    def register_load_state_dict_post_hook(self, hook):
        """``hook(module, incompatible_keys)`` runs after ``load_state_dict``; it may edit the
        key lists in place and must return None."""
        return add_hook(self._load_state_dict_post_hooks, hook)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Load this module's own parameters and persistent buffers from ``state_dict``,
        recording problems in the given lists (children are handled by ``load_state_dict``)."""
        for hook in self._load_state_dict_pre_hooks.values():
            hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                 error_msgs)

        local_state = {k: v for k, v in self._parameters.items() if v is not None}
        for k, v in self._buffers.items():
            if v is not None and k not in self._non_persistent_buffers_set:
                local_state[k] = v
        assign = local_metadata.get("assign_to_params_buffers", False)

        for name, param in local_state.items():
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing_keys.append(key)
                continue
            input_param = state_dict[key]
            if not _is_tensor_like(input_param):
                error_msgs.append(f'While copying the parameter named "{key}", expected '
                                  "torch.Tensor or Tensor-like object from checkpoint but "
                                  f"received {type(input_param)}")
                continue
            input_param = _as_tensor(input_param)
            in_shape = tuple(input_param.shape)
            if len(param.shape) == 0 and in_shape == (1,):
                input_param = Tensor._wrap(input_param._concrete("load_state_dict").reshape(()))
                in_shape = ()
            if in_shape != tuple(param.shape):
                error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                                  f"{_shape_str(in_shape)} from checkpoint, the shape in current "
                                  f"model is {_shape_str(param.shape)}.")
                continue
            try:
                with grad_mode.no_grad():
                    if assign:
                        if isinstance(param, Parameter):
                            if not isinstance(input_param, Parameter):
                                input_param = Parameter(
                                    input_param,
                                    requires_grad=param.requires_grad
                                    and input_param.dtype.is_floating_point)
                            else:
                                input_param.requires_grad_(param.requires_grad)
                        setattr(self, name, input_param)
                    else:
                        dst = param._concrete("load_state_dict")
                        dst[...] = input_param._concrete("load_state_dict")
                        param._vc.value += 1
            except Exception as ex:
                error_msgs.append(
                    f'While copying the parameter named "{key}", whose dimensions in the model '
                    f"are {_shape_str(param.shape)} and whose dimensions in the checkpoint are "
                    f"{_shape_str(in_shape)}, an exception occurred : {ex.args}.")

        extra_state_key = prefix + "_extra_state"
        if type(self).set_extra_state is not Module.set_extra_state:
            if extra_state_key in state_dict:
                self.set_extra_state(state_dict[extra_state_key])
            elif strict:
                missing_keys.append(extra_state_key)
        elif strict and extra_state_key in state_dict:
            unexpected_keys.append(extra_state_key)

        if strict:
            for key in state_dict.keys():
                if key.startswith(prefix) and key != extra_state_key:
                    parts = key[len(prefix):].split(".", 1)
                    if len(parts) > 1:
                        if parts[0] not in self._modules:
                            unexpected_keys.append(key)
                    elif parts[0] not in local_state:
                        unexpected_keys.append(key)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Copy parameters and buffers from ``state_dict`` into this module (in place, or by
        assigning the given tensors with ``assign=True``). Returns ``(missing_keys,
        unexpected_keys)``; with ``strict`` any of those is an error."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        missing_keys = []
        unexpected_keys = []
        error_msgs = []
        metadata = getattr(state_dict, "_metadata", None)
        state_dict = OrderedDict(state_dict)
        if metadata is not None:
            state_dict._metadata = metadata

        def load(module, local_state_dict, prefix=""):
            local_metadata = {} if metadata is None else dict(metadata.get(prefix[:-1], {}))
            if assign:
                local_metadata["assign_to_params_buffers"] = assign
            module._load_from_state_dict(local_state_dict, prefix, local_metadata, True,
                                         missing_keys, unexpected_keys, error_msgs)
            for name, child in module._modules.items():
                if child is not None:
                    child_prefix = prefix + name + "."
                    child_state = {k: v for k, v in local_state_dict.items()
                                   if k.startswith(child_prefix)}
                    load(child, child_state, child_prefix)
            incompatible = _IncompatibleKeys(missing_keys, unexpected_keys)
            for hook in module._load_state_dict_post_hooks.values():
                out = hook(module, incompatible)
                if out is not None:
                    raise RuntimeError("Hooks registered with "
                                       "``register_load_state_dict_post_hook`` are not expected "
                                       "to return new values, if incompatible_keys need to be "
                                       "modified, it should be done inplace.")

        load(self, state_dict)
        del load

        if strict:
            if unexpected_keys:
                error_msgs.insert(0, "Unexpected key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in unexpected_keys)))
            if missing_keys:
                error_msgs.insert(0, "Missing key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in missing_keys)))
        if error_msgs:
            raise RuntimeError("Error(s) in loading state_dict for {}:\n\t{}".format(
                type(self).__name__, "\n\t".join(error_msgs)))
        return _IncompatibleKeys(missing_keys, unexpected_keys)

    # --- iteration -------------------------------------------------------------------------------
    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        memo = set()
        if recurse:
            modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
        else:
            modules = [(prefix, self)]
        for module_prefix, module in modules:
            for k, v in get_members_fn(module):
                if v is None or id(v) in memo:
                    continue
                if remove_duplicate:
                    memo.add(id(v))
                yield (module_prefix + ("." if module_prefix else "") + k), v

    def parameters(self, recurse=True):
        """Iterate over the parameters (of submodules too unless ``recurse=False``), each once."""
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """Iterate over ``(dotted_name, parameter)`` pairs."""
        yield from self._named_members(lambda m: m._parameters.items(), prefix=prefix,
                                       recurse=recurse, remove_duplicate=remove_duplicate)

    def buffers(self, recurse=True):
        """Iterate over the buffers (persistent or not)."""
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        """Iterate over ``(dotted_name, buffer)`` pairs."""
        yield from self._named_members(lambda m: m._buffers.items(), prefix=prefix,
                                       recurse=recurse, remove_duplicate=remove_duplicate)

    def children(self):
        """Iterate over the immediate child modules."""
        for _, module in self.named_children():
            yield module

    def named_children(self):
        """Iterate over ``(name, child)`` pairs, each child once."""
        memo = set()
        for name, module in self._modules.items():
            if module is not None and module not in memo:
                memo.add(module)
                yield name, module

    def modules(self, remove_duplicate=True):
        """Iterate over all modules in the tree, ``self`` first."""
        for _, module in self.named_modules(remove_duplicate=remove_duplicate):
            yield module

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """Iterate over ``(dotted_name, module)`` for the whole tree, depth first, ``self``
        first with name ``prefix``; modules in ``memo`` (or already seen) are skipped."""
        if memo is None:
            memo = set()
        if self in memo:
            return
        if remove_duplicate:
            memo.add(self)
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            sub_prefix = prefix + ("." if prefix else "") + name
            yield from module.named_modules(memo, sub_prefix, remove_duplicate)

    # --- modes and gradients --------------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode on this module and all its descendants; returns ``self``."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for module in self.children():
            module.train(mode)
        return self

    def eval(self):
        """Set evaluation mode (``train(False)``); returns ``self``."""
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` on every parameter; returns ``self``."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        """Reset the gradients of all parameters: to None (default) or to zeros in place."""
        for p in self.parameters():
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
                data = g._concrete("zero_grad")
                data[...] = 0
                g._vc.value += 1

    # --- printing ----------------------------------------------------------------------------------
    def _get_name(self):
        return type(self).__name__

    def extra_repr(self):
        """Extra text shown inside this module's printed form; override in subclasses."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = []
        for key, module in self._modules.items():
            child_lines.append("(" + key + "): " + _addindent(repr(module), 2))
        lines = extra_lines + child_lines
        main = self._get_name() + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                main += extra_lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"
