"""Optimizer updates as graph ops, for compiling a whole training step into one C call.

``sgd_step`` and ``adam_step`` take a parameter, its gradient, the optimizer state and a
float64 ``hyper`` vector of run-time scalars (learning rate, bias corrections... so schedulers
never force a recompile) and return the updated parameter and state. Their eager
implementations are the optimizers' own update rules (``tracenet.optim._functional``), so the
compiled step has one numerical definition to match. They have no gradient.
"""
import numpy as np

from .._meta import Meta
from .registry import apply, register


def _same_metas(*metas, n):
    return tuple(Meta(tuple(m.shape), m.dtype) for m in metas[:n])


# --- SGD ------------------------------------------------------------------------------------
# hyper = [lr, momentum, dampening, weight_decay, first_step]


def sgd_hyper(group, first_step):
    return np.array([group["lr"], group["momentum"], group["dampening"], group["weight_decay"],
                     1.0 if first_step else 0.0], np.float64)


def _sgd_eager(param, grad, buf, hyper, nesterov, maximize):
    from ..optim._functional import sgd_update  # optim sits above ops: only run time needs it
    p = np.array(param, copy=True)
    lr, momentum, dampening, wd, first = (float(v) for v in hyper)
    b = None if first else np.array(buf, copy=True)
    b = sgd_update(p, grad, b, lr, momentum=momentum, dampening=dampening, weight_decay=wd,
                   nesterov=nesterov, maximize=maximize)
    return p, (b if b is not None else np.zeros_like(p))


sgd_step_op = register(
    "sgd_step", infer=lambda p, g, b, h, **kw: _same_metas(p, b, n=2), eager=_sgd_eager,
    num_outputs=2, differentiable=False)


def sgd_step(param, grad, buf, hyper, nesterov=False, maximize=False):
    return apply(sgd_step_op, param, grad, buf, hyper, nesterov=bool(nesterov),
                 maximize=bool(maximize))


# --- Adam -----------------------------------------------------------------------------------
# hyper = [lr, beta1, beta2, eps, weight_decay, step]


def adam_hyper(group, step):
    beta1, beta2 = group["betas"]
    return np.array([group["lr"], beta1, beta2, group["eps"], group["weight_decay"], step],
                    np.float64)


def _adam_eager(param, grad, m, v, vmax, hyper, amsgrad, maximize, decoupled):
    from ..optim._functional import adam_update  # optim sits above ops (see sgd above)
    p, m, v, vmax = (np.array(a, copy=True) for a in (param, m, v, vmax))
    lr, beta1, beta2, eps, wd, step = (float(x) for x in hyper)
    adam_update(p, grad, m, v, vmax if amsgrad else None, step, lr, beta1=beta1, beta2=beta2,
                eps=eps, weight_decay=wd, amsgrad=amsgrad, maximize=maximize,
                decoupled_weight_decay=decoupled)
    return p, m, v, vmax


adam_step_op = register(
    "adam_step", infer=lambda p, g, m, v, vm, h, **kw: _same_metas(p, m, v, vm, n=4),
    eager=_adam_eager, num_outputs=4, differentiable=False)


def adam_step(param, grad, m, v, vmax, hyper, amsgrad=False, maximize=False, decoupled=False):
    return apply(adam_step_op, param, grad, m, v, vmax, hyper, amsgrad=bool(amsgrad),
                 maximize=bool(maximize), decoupled=bool(decoupled))
