"""Adam, with optional AMSGrad and decoupled (AdamW-style) weight decay."""
from ..tensor import Tensor
from . import _functional as F
from .compiled_update import CompiledUpdate, StateArray
from .optimizer import (Optimizer, _bump, _capturable_unsupported, _grad_array, _step_tensor,
                        _value, _zeros_like)

__all__ = ["Adam"]


def _check_adam_args(lr, betas, eps, weight_decay, foreach, capturable):
    if isinstance(lr, Tensor):
        if foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and "
                             "foreach=True")
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= _value(lr):
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= _value(betas[0]) < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= _value(betas[1]) < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not ((isinstance(betas[0], float) and isinstance(betas[1], float))
            or (isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor))):
        raise ValueError("betas must be either both floats or both Tensors")


def _check_fused(foreach, differentiable, fused):
    if fused:
        if differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


class Adam(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False):
        _check_adam_args(lr, betas, eps, weight_decay, foreach, capturable)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)
        _check_fused(foreach, differentiable, fused)

    # in a compiled step (AdamW inherits it; layout of h: templates/adam_update.c.j2)
    compiled_update = CompiledUpdate(
        op="adam_step",
        state=[StateArray("exp_avg"), StateArray("exp_avg_sq"),
               StateArray("max_exp_avg_sq", kept=lambda group: group["amsgrad"])],
        counter="step",
        flags={"amsgrad": "amsgrad", "maximize": "maximize",
               "decoupled": "decoupled_weight_decay"},
        hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "step"),
        hyper_from_group=lambda group: (group["lr"], *group["betas"], group["eps"],
                                        group["weight_decay"]))

    _group_entry_defaults = {"amsgrad": False, "maximize": False, "foreach": None,
                             "capturable": False, "differentiable": False,
                             "decoupled_weight_decay": False, "fused": None}

    def step(self, closure=None):
        """Perform a single optimization step; ``closure`` re-evaluates the model and returns
        the loss."""
        loss = self._run_closure(closure)
        if self._step_fused():
            return loss
        for group in self.param_groups:
            beta1, beta2 = (_value(b) for b in group["betas"])
            amsgrad = group["amsgrad"]
            params = [p for p in group["params"] if p._grad is not None]
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = _step_tensor()
                    state["exp_avg"] = _zeros_like(p)
                    state["exp_avg_sq"] = _zeros_like(p)
                    if amsgrad:
                        state["max_exp_avg_sq"] = _zeros_like(p)
            for p in params:
                state = self.state[p]
                if group["capturable"]:
                    _capturable_unsupported()
                step_t = state["step"]
                step_t._data += step_t._data.dtype.type(1)
                _bump(step_t)
                max_sq = state["max_exp_avg_sq"] if amsgrad else None
                F.adam_update(
                    p._data, _grad_array(p), state["exp_avg"]._data, state["exp_avg_sq"]._data,
                    None if max_sq is None else max_sq._data, step_t.item(),
                    lr=_value(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=group["weight_decay"], amsgrad=amsgrad,
                    maximize=group["maximize"],
                    decoupled_weight_decay=group["decoupled_weight_decay"])
                _bump(p)
                _bump(state["exp_avg"])
                _bump(state["exp_avg_sq"])
                if max_sq is not None:
                    _bump(max_sq)
        return loss
