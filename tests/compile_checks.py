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
        np.testing.assert_allclose(p.grad.numpy(), e, rtol=tol, atol=_grad_atol(e, tol))
    np.testing.assert_allclose(x.grad.numpy(), gx, rtol=tol, atol=_grad_atol(gx, tol))
    return compiled


def _grad_atol(expected, tol):
    """``tol``, scaled by the gradient's largest magnitude when that is above 1: a weight's
    gradient sums hundreds of products per element, and an element near zero among values of
    ~100 (a stride-2 block's weights under batch norms) differs by ~1e-4 between two float32
    summation orders (Winograd's and eager's im2col), each within ~3e-6 of the float64 gradient
    relative to its largest value."""
    return tol * max(1.0, float(np.abs(expected).max(initial=0.0)))


def sgd_steps_against_torch_and_eager(model, tmodel, eager, batches, tol, dynamic=True,
                                      sgd=(("lr", 0.1),)):
    """SGD steps (options ``sgd``) compiled (``compile_step`` on ``model``), in eager mode
    (``eager``, a copy of ``model``) and in PyTorch (``tmodel``) on each (x, y) of ``batches``:
    the losses, parameter gradients and updated parameters agree. Returns the compiled step."""
    import torch  # (only the tests that compare with PyTorch need it)
    eager.load_state_dict(model.state_dict())
    crit = tn.nn.CrossEntropyLoss()
    sgd = dict(sgd)
    step = tn.compile_step(lambda a, b: crit(model(a), b),
                           tn.optim.SGD(model.parameters(), **sgd), dynamic=dynamic)
    eager_opt = tn.optim.SGD(eager.parameters(), **sgd)
    topt = torch.optim.SGD(tmodel.parameters(), **sgd)
    for x, y in batches:
        loss = step(tn.from_numpy(x), tn.from_numpy(y)).item()
        eager_opt.zero_grad()
        eager_loss = crit(eager(tn.from_numpy(x)), tn.from_numpy(y))
        eager_loss.backward()
        eager_opt.step()
        topt.zero_grad()
        ref = torch.nn.CrossEntropyLoss()(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
        ref.backward()
        topt.step()
        np.testing.assert_allclose(loss, ref.item(), rtol=tol, atol=tol)
        np.testing.assert_allclose(loss, eager_loss.item(), rtol=tol, atol=tol)
        for (name, p), q, tp in zip(model.named_parameters(), eager.parameters(),
                                    tmodel.parameters()):
            for got, want in ((p.grad.numpy(), tp.grad.numpy()),
                              (p.grad.numpy(), q.grad.numpy()),
                              (p.detach().numpy(), tp.detach().numpy())):
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)
    return step


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
