"""Checks of compiled modules against eager mode, shared by the compile tests."""
import numpy as np

import tracenet as tn


def check_compiled(model, shape, dtype=tn.float32, tol=1e-4):
    """Compiled forward, parameter and input gradients against eager mode; returns the
    compiled module (its source is the training specialisation's)."""
    compiled = tn.compile(model)
    x = tn.randn(*shape, dtype=dtype, requires_grad=True)
    ref = model(x)
    out = compiled(x)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=tol, atol=tol)
    gy = tn.randn(*ref.shape, dtype=dtype)
    model.zero_grad()
    ref.backward(gy)
    expect = [p.grad.numpy().copy() for p in model.parameters()]
    gx, x.grad = x.grad.numpy().copy(), None
    model.zero_grad()
    out.backward(gy)
    for p, e in zip(model.parameters(), expect):
        np.testing.assert_allclose(p.grad.numpy(), e, rtol=tol, atol=tol)
    np.testing.assert_allclose(x.grad.numpy(), gx, rtol=tol, atol=tol)
    return compiled
