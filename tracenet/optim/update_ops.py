"""Optimizer updates as graph ops, for compiling a whole training step into one C call. They
live with the optimizers, above the op registry they register into.

Each ``*_step`` op takes a parameter, its gradient, the optimizer's state arrays and a float64
``hyper`` vector of run-time scalars (learning rate, step count... so schedulers never force a
recompile) and returns the updated parameter and state. The optimizer class declares which op
it uses, its state arrays, flags and the layout of ``hyper`` (``compiled_update``, see
``tracenet/optim/compiled_update.py``); the eager implementations here unpack ``hyper`` with
that declaration and run the optimizer's own update rule (``tracenet.optim._functional``), so
the compiled step has one numerical definition to match. They have no gradient.
"""
import numpy as np

from .._meta import Meta
from ..ops.registry import apply, register
from . import _functional
from .adagrad import Adagrad
from .adam import Adam
from .rmsprop import RMSprop
from .sgd import SGD


def _same_metas(*metas):
    return tuple(Meta(tuple(m.shape), m.dtype) for m in metas)


def _copies(*arrays):
    return [np.array(a, copy=True) for a in arrays]


# --- SGD ------------------------------------------------------------------------------------


def _sgd_eager(param, grad, buf, hyper, nesterov, maximize):
    h = SGD.compiled_update.unpack(hyper)
    p = np.array(param, copy=True)
    b = None if h["first_step"] else np.array(buf, copy=True)
    b = _functional.sgd_update(p, grad, b, h["lr"], momentum=h["momentum"],
                               dampening=h["dampening"], weight_decay=h["weight_decay"],
                               nesterov=nesterov, maximize=maximize)
    return p, (b if b is not None else np.zeros_like(p))


sgd_step_op = register(
    "sgd_step", infer=lambda p, g, b, h, **kw: _same_metas(p, b), eager=_sgd_eager,
    num_outputs=2, differentiable=False)


def sgd_step(param, grad, buf, hyper, nesterov=False, maximize=False):
    return apply(sgd_step_op, param, grad, buf, hyper, nesterov=bool(nesterov),
                 maximize=bool(maximize))


# --- Adam -----------------------------------------------------------------------------------


def _adam_eager(param, grad, m, v, vmax, hyper, amsgrad, maximize, decoupled):
    h = Adam.compiled_update.unpack(hyper)
    p, m, v, vmax = _copies(param, m, v, vmax)
    _functional.adam_update(p, grad, m, v, vmax if amsgrad else None, h["step"], h["lr"],
                            beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
                            weight_decay=h["weight_decay"], amsgrad=amsgrad, maximize=maximize,
                            decoupled_weight_decay=decoupled)
    return p, m, v, vmax


adam_step_op = register(
    "adam_step", infer=lambda p, g, m, v, vm, h, **kw: _same_metas(p, m, v, vm),
    eager=_adam_eager, num_outputs=4, differentiable=False)


def adam_step(param, grad, m, v, vmax, hyper, amsgrad=False, maximize=False, decoupled=False):
    return apply(adam_step_op, param, grad, m, v, vmax, hyper, amsgrad=bool(amsgrad),
                 maximize=bool(maximize), decoupled=bool(decoupled))


# --- RMSprop --------------------------------------------------------------------------------


def _rmsprop_eager(param, grad, square_avg, momentum_buffer, grad_avg, hyper, centered,
                   maximize):
    h = RMSprop.compiled_update.unpack(hyper)
    p, sq, buf, avg = _copies(param, square_avg, momentum_buffer, grad_avg)
    _functional.rmsprop_update(p, grad, sq, avg if centered else None,
                               buf if h["momentum"] > 0 else None, h["lr"], alpha=h["alpha"],
                               eps=h["eps"], weight_decay=h["weight_decay"],
                               momentum=h["momentum"], centered=centered, maximize=maximize)
    return p, sq, buf, avg


rmsprop_step_op = register(
    "rmsprop_step", infer=lambda p, g, sq, b, a, h, **kw: _same_metas(p, sq, b, a),
    eager=_rmsprop_eager, num_outputs=4, differentiable=False)


def rmsprop_step(param, grad, square_avg, momentum_buffer, grad_avg, hyper, centered=False,
                 maximize=False):
    return apply(rmsprop_step_op, param, grad, square_avg, momentum_buffer, grad_avg, hyper,
                 centered=bool(centered), maximize=bool(maximize))


# --- Adagrad --------------------------------------------------------------------------------


def _adagrad_eager(param, grad, state_sum, hyper, maximize):
    h = Adagrad.compiled_update.unpack(hyper)
    p, s = _copies(param, state_sum)
    _functional.adagrad_update(p, grad, s, h["step"], h["lr"], lr_decay=h["lr_decay"],
                               weight_decay=h["weight_decay"], eps=h["eps"], maximize=maximize)
    return p, s


adagrad_step_op = register(
    "adagrad_step", infer=lambda p, g, s, h, **kw: _same_metas(p, s), eager=_adagrad_eager,
    num_outputs=2, differentiable=False)


def adagrad_step(param, grad, state_sum, hyper, maximize=False):
    return apply(adagrad_step_op, param, grad, state_sum, hyper, maximize=bool(maximize))
