"""Grad mode: whether ops record autograd nodes (``no_grad``, ``enable_grad``,
``set_grad_enabled``, ``inference_mode``), usable as context managers and decorators."""
import functools

_enabled = [True]


def is_grad_enabled():
    return _enabled[0]


class _GradModeContext:
    _target = True

    def __enter__(self):
        self._prev = _enabled[0]
        _enabled[0] = self._target
        return self

    def __exit__(self, *exc):
        _enabled[0] = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)
        return wrapper

    def clone(self):
        return type(self)()


class no_grad(_GradModeContext):
    _target = False


class enable_grad(_GradModeContext):
    _target = True


class inference_mode(_GradModeContext):
    def __init__(self, mode=True):
        self._target = not mode

    def __call__(self, fn):
        target = self._target

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with inference_mode(not target):
                return fn(*args, **kwargs)
        return wrapper


class set_grad_enabled(_GradModeContext):
    """Takes effect at construction (like torch), and restores the old mode on ``__exit__``."""

    def __init__(self, mode):
        self._prev = _enabled[0]
        self._target = bool(mode)
        _enabled[0] = self._target

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _enabled[0] = self._prev
        return False
