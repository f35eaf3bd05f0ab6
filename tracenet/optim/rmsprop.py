"""RMSprop, optionally centered and with momentum."""
from ..tensor import Tensor
from . import _functional as F
from .compiled_update import CompiledUpdate, StateArray
from .optimizer import (Optimizer, _bump, _capturable_unsupported, _grad_array, _step_tensor,
                        _value, _zeros_like)

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= _value(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults)

    # in a compiled step (layout of h: templates/rmsprop_update.c.j2)
    compiled_update = CompiledUpdate(
        op="rmsprop_step",
        state=[StateArray("square_avg"),
               StateArray("momentum_buffer", kept=lambda group: group["momentum"] > 0),
               StateArray("grad_avg", kept=lambda group: group["centered"])],
        counter="step",
        flags={"centered": "centered", "maximize": "maximize"},
        hyper=("lr", "alpha", "eps", "weight_decay", "momentum"))

    _group_entry_defaults = {"momentum": 0, "centered": False, "foreach": None,
                             "maximize": False, "differentiable": False, "capturable": False}

    def step(self, closure=None):
        """Perform a single optimization step; ``closure`` re-evaluates the model and returns
        the loss."""
        loss = self._run_closure(closure)
        if self._step_fused():
            return loss
        for group in self.param_groups:
            momentum = group["momentum"]
            centered = group["centered"]
            params = [p for p in group["params"] if p._grad is not None]
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = _step_tensor()
                    state["square_avg"] = _zeros_like(p)
                    if momentum > 0:
                        state["momentum_buffer"] = _zeros_like(p)
                    if centered:
                        state["grad_avg"] = _zeros_like(p)
            for p in params:
                state = self.state[p]
                if group["capturable"]:
                    _capturable_unsupported()
                step_t = state["step"]
                step_t._data += step_t._data.dtype.type(1)
                _bump(step_t)
                grad_avg = state["grad_avg"] if centered else None
                buf = state["momentum_buffer"] if momentum > 0 else None
                F.rmsprop_update(
                    p._data, _grad_array(p), state["square_avg"]._data,
                    None if grad_avg is None else grad_avg._data,
                    None if buf is None else buf._data,
                    lr=_value(group["lr"]), alpha=group["alpha"], eps=group["eps"],
                    weight_decay=group["weight_decay"], momentum=momentum, centered=centered,
                    maximize=group["maximize"])
                for t in (p, state["square_avg"], grad_avg, buf):
                    if t is not None:
                        _bump(t)
        return loss
