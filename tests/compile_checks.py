"""Checks of compiled modules against eager mode, shared by the compile tests."""
import numpy as np

import tracenet as tn
from tracenet import executable


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


class _Forgotten(list):
    """An arena pool that keeps nothing: every call gets a new arena."""

    def append(self, arena):
        pass


def nan_filled_arenas(monkeypatch):
    """Make every compiled call's work memory new and all NaN (bytes 0xFF), so a kernel that
    reads what no kernel of this call wrote shows in the results."""
    make = executable._Arena.__init__

    def filled(self, nbytes):
        make(self, nbytes)
        np.frombuffer(executable._cffi_backend.buffer(self.pointer), np.uint8)[:] = 0xFF

    def forgetful(self):
        self.idle = _Forgotten()

    monkeypatch.setattr(executable._Arena, "__init__", filled)
    monkeypatch.setattr(executable.Arenas, "__init__", forgetful)
