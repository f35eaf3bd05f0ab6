"""Adagrad: per-coordinate learning rates from the running sum of squared gradients."""
from ..tensor import Tensor
from . import _functional as F
from .compiled_update import CompiledUpdate, StateArray
from .optimizer import Optimizer, _bump, _grad_array, _step_tensor, _value, _zeros_like

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= _value(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError("Invalid initial_accumulator_value value: "
                             f"{initial_accumulator_value}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = _step_tensor()
                state["sum"] = _zeros_like(p, group["initial_accumulator_value"])

    # in a compiled step (layout of h: templates/adagrad_update.c.j2)
    compiled_update = CompiledUpdate(
        op="adagrad_step",
        state=[StateArray("sum", fill=lambda group: group["initial_accumulator_value"])],
        counter="step",
        flags={"maximize": "maximize"},
        hyper=("lr", "lr_decay", "weight_decay", "eps", "step"))

    _group_entry_defaults = {"foreach": None, "maximize": False, "differentiable": False,
                             "fused": None}

    def step(self, closure=None):
        """Perform a single optimization step; ``closure`` re-evaluates the model and returns
        the loss."""
        loss = self._run_closure(closure)
        if self._step_fused():
            return loss
        for group in self.param_groups:
            for p in group["params"]:
                if p._grad is None:
                    continue
                state = self.state[p]
                step_t = state["step"]
                step_t._data += step_t._data.dtype.type(1)
                _bump(step_t)
                F.adagrad_update(
                    p._data, _grad_array(p), state["sum"]._data, step_t.item(),
                    lr=_value(group["lr"]), lr_decay=group["lr_decay"],
                    weight_decay=group["weight_decay"], eps=group["eps"],
                    maximize=group["maximize"])
                _bump(p)
                _bump(state["sum"])
        return loss
