"""Stochastic gradient descent, optionally with (Nesterov) momentum."""
from ..tensor import Tensor
from . import _functional as F
from .compiled_update import CompiledUpdate, StateArray
from .optimizer import Optimizer, _bump, _grad_array, _value

__all__ = ["SGD"]


class SGD(Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False, foreach=None, differentiable=False, fused=None):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if _value(lr) < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if _value(weight_decay) < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    # in a compiled step: the buffer is kept only with momentum; on the first step the op
    # starts it from the gradient, as sgd_update does (layout of h: templates/sgd_update.c.j2)
    compiled_update = CompiledUpdate(
        op="sgd_step",
        state=[StateArray("momentum_buffer", kept=lambda group: group["momentum"] != 0)],
        flags={"nesterov": "nesterov", "maximize": "maximize"},
        hyper=("lr", "momentum", "dampening", "weight_decay", "first_step"))

    _group_entry_defaults = {"nesterov": False, "maximize": False, "foreach": None,
                             "differentiable": False, "fused": False}

    def step(self, closure=None):
        """Perform a single optimization step; ``closure`` re-evaluates the model and returns
        the loss."""
        loss = self._run_closure(closure)
        if self._step_fused():
            return loss
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p._grad is None:
                    continue
                buf = None
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                new_buf = F.sgd_update(
                    p._data, _grad_array(p), None if buf is None else buf._data,
                    lr=_value(group["lr"]), momentum=momentum, dampening=group["dampening"],
                    weight_decay=_value(group["weight_decay"]), nesterov=group["nesterov"],
                    maximize=group["maximize"])
                _bump(p)
                if momentum != 0:
                    if buf is None:
                        self.state[p]["momentum_buffer"] = Tensor._wrap(new_buf)
                    else:
                        _bump(buf)
        return loss
