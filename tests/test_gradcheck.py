"""Finite differences check the backward rule of every differentiable registry op (through
its sample in op_samples), in float64 with central differences."""
import numpy as np
import pytest

import tracenet as torch
from tracenet.ops.registry import REGISTRY

from op_samples import SAMPLES

# to_dtype's sample goes through float32: its (linear) function is differenced with a large
# step so float32 rounding does not swamp the difference
TOLERANCE = {"to_dtype": 1e-3}
STEP = {"to_dtype": 1e-2}


def _numeric_grad(fn, arrays, i, cot, eps=1e-6):
    base = [a.copy() for a in arrays]
    grad = np.zeros_like(base[i])
    flat = grad.reshape(-1)
    for k in range(flat.size):
        plus = [a.copy() for a in base]
        minus = [a.copy() for a in base]
        plus[i].reshape(-1)[k] += eps
        minus[i].reshape(-1)[k] -= eps
        fp = fn(*[torch.from_numpy(a) for a in plus]).detach().numpy()
        fm = fn(*[torch.from_numpy(a) for a in minus]).detach().numpy()
        flat[k] = np.sum((fp - fm) * cot) / (2 * eps)
    return grad


DIFFERENTIABLE = sorted(n for n, (_, _, g) in SAMPLES.items()
                        if g and REGISTRY[n].differentiable)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_backward_rule_matches_finite_differences(name):
    fn, arrays, grad_idx = SAMPLES[name]
    arrays = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    inputs = [torch.from_numpy(a.copy()).requires_grad_(i in grad_idx)
              for i, a in enumerate(arrays)]
    out = fn(*inputs)
    cot = np.random.default_rng(3).standard_normal(out.shape)
    out.backward(torch.from_numpy(cot))
    for i in grad_idx:
        expect = _numeric_grad(fn, arrays, i, cot, eps=STEP.get(name, 1e-6))
        tol = TOLERANCE.get(name, 1e-5)
        np.testing.assert_allclose(inputs[i].grad.numpy(), expect, rtol=tol, atol=tol / 10,
                                   err_msg=f"{name}: input {i}")
