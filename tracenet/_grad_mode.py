"""Grad mode: whether ops record autograd nodes (``no_grad``, ``enable_grad``,
``set_grad_enabled``, ``inference_mode``), usable as context managers and decorators (with or
without parentheses, like torch).

Grad mode is per thread, as in torch: ``no_grad`` in one thread leaves graph building in the
others alone, and every thread starts with grad enabled."""
import functools
import inspect
import threading


class _GradState(threading.local):
    """``enabled``: this thread's grad mode (read by the ops on every call: one attribute)."""

    def __init__(self):
        self.enabled = True


_state = _GradState()


def is_grad_enabled():
    return _state.enabled


class _GradModeContext:
    """Sets grad mode to ``self._target`` inside a ``with`` block or a decorated function."""
    _target = True

    def __new__(cls, *args, **kwargs):
        # bare decorator: @no_grad on a function
        if cls in (no_grad, enable_grad) and len(args) == 1 and callable(args[0]) and \
                not kwargs:
            return cls()(args[0])
        return super().__new__(cls)

    def __enter__(self):
        self._prev = _state.enabled
        _state.enabled = self._target
        return self

    def __exit__(self, *exc):
        _state.enabled = self._prev
        return False

    def __call__(self, fn):
        target = self._target

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args, **kwargs):
                gen = fn(*args, **kwargs)
                value = None
                while True:
                    prev = _state.enabled
                    _state.enabled = target
                    try:
                        item = gen.send(value)
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        _state.enabled = prev
                    value = yield item
            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prev = _state.enabled
            _state.enabled = target
            try:
                return fn(*args, **kwargs)
            finally:
                _state.enabled = prev
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


class set_grad_enabled(_GradModeContext):
    """Takes effect at construction (like torch), and restores the old mode on ``__exit__``;
    as a decorator it leaves the mode it found and applies ``mode`` inside the function."""

    def __init__(self, mode):
        self._prev = _state.enabled
        self._target = bool(mode)
        _state.enabled = self._target

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _state.enabled = self._prev
        return False

    def __call__(self, fn):
        _state.enabled = self._prev  # used as a decorator: undo the constructor's switch
        return super().__call__(fn)

    def clone(self):
        return type(self)(self._target)
