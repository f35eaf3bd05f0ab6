"""The PyTorch "Neural Networks" tutorial (LeNet) in both libraries with copied weights:
forward output, the autograd graph, every parameter gradient, an SGD-with-momentum training
trajectory, and the example script itself."""
import os
import subprocess
import sys

import numpy as np
import pytest

import tracenet
import tracenet.nn as tnn
import tracenet.nn.functional as LF
import tracenet.optim as toptim

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_net(lib, nn, F):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, input):
            c1 = F.relu(self.conv1(input))
            s2 = F.max_pool2d(c1, (2, 2))
            c3 = F.relu(self.conv2(s2))
            s4 = F.max_pool2d(c3, 2)
            s4 = lib.flatten(s4, 1)
            f5 = F.relu(self.fc1(s4))
            f6 = F.relu(self.fc2(f5))
            return self.fc3(f6)

    return Net


def twin_nets(seed=0):
    torch.manual_seed(seed)
    th = define_net(torch, torch.nn, torch.nn.functional)()
    ours = define_net(tracenet, tnn, LF)()
    for (name, pt), (name2, pl) in zip(th.named_parameters(), ours.named_parameters()):
        assert name == name2
        pl.data = tracenet.tensor(pt.detach().numpy().copy())
    return th, ours


def close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol, atol=atol)


def data(n=1, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 1, 32, 32)).astype(np.float32),
            rng.standard_normal((n, 10)).astype(np.float32))


def node_name(node):
    # torch spells the leaf accumulator "torch::autograd::AccumulateGrad" in name() while its
    # repr (and tracenet's node class) is "AccumulateGrad"
    return node.name().replace("torch::autograd::", "")


def chain(node, depth=0):
    """The whole backward graph below ``node`` as nested (name, [children]) lists."""
    if node is None:
        return None
    return [node_name(node), [chain(n[0], depth + 1) for n in node.next_functions]]


def test_net_structure_and_repr():
    th, ours = twin_nets()
    assert repr(ours) == repr(th)
    params_t, params_l = list(th.parameters()), list(ours.parameters())
    assert len(params_l) == len(params_t) == 10
    assert params_l[0].size() == params_t[0].size()
    assert str(params_l[0].size()) == "torch.Size([6, 1, 5, 5])"
    assert [tuple(p.shape) for p in params_l] == [tuple(p.shape) for p in params_t]


def test_forward_output_and_graph():
    th, ours = twin_nets()
    x, _ = data()
    out_t, out_l = th(torch.tensor(x)), ours(tracenet.tensor(x))
    assert tuple(out_l.shape) == (1, 10)
    close(out_l, out_t)
    assert out_l.grad_fn.name() == "AddmmBackward0"
    assert "grad_fn=<AddmmBackward0>" in repr(out_l)
    assert chain(out_l.grad_fn) == chain(out_t.grad_fn)


def test_loss_graph_names_and_parameter_gradients():
    th, ours = twin_nets()
    x, target = data()
    crit_t, crit_l = torch.nn.MSELoss(), tnn.MSELoss()
    loss_t = crit_t(th(torch.tensor(x)), torch.tensor(target))
    loss_l = crit_l(ours(tracenet.tensor(x)), tracenet.tensor(target))
    close(loss_l, loss_t)
    assert loss_l.grad_fn.name() == "MseLossBackward0"
    assert repr(loss_l.grad_fn).startswith("<MseLossBackward0 object at ")
    # the tutorial's walk: loss -> Linear (addmm) -> its first input (fc3's bias)
    first = [n[0].name() if n[0] else None for n in loss_l.grad_fn.next_functions]
    assert first == [n[0].name() if n[0] else None for n in loss_t.grad_fn.next_functions]
    assert first == ["AddmmBackward0", None] or first == ["AddmmBackward0"]
    nxt = loss_l.grad_fn.next_functions[0][0].next_functions[0][0]
    assert repr(nxt).startswith("<AccumulateGrad object at ")
    assert chain(loss_l.grad_fn) == chain(loss_t.grad_fn)

    th.zero_grad()
    ours.zero_grad()
    assert ours.conv1.bias.grad is None
    loss_t.backward()
    loss_l.backward()
    for (name, pt), (_, pl) in zip(th.named_parameters(), ours.named_parameters()):
        assert pl.grad is not None, name
        assert pl.grad.dtype == tracenet.float32
        np.testing.assert_allclose(pl.grad.numpy(), pt.grad.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=name)


def test_backward_with_explicit_gradient_then_manual_update():
    th, ours = twin_nets(seed=2)
    x, _ = data(seed=3)
    g = np.random.default_rng(4).standard_normal((1, 10)).astype(np.float32)
    th.zero_grad()
    ours.zero_grad()
    th(torch.tensor(x)).backward(torch.tensor(g))
    ours(tracenet.tensor(x)).backward(tracenet.tensor(g))
    for f_t, f_l in zip(th.parameters(), ours.parameters()):
        np.testing.assert_allclose(f_l.grad.numpy(), f_t.grad.numpy(), rtol=1e-4, atol=1e-6)
        f_t.data.sub_(f_t.grad.data * 0.01)
        f_l.data.sub_(f_l.grad.data * 0.01)
        close(f_l, f_t)


def test_sgd_momentum_training_trajectory():
    th, ours = twin_nets(seed=5)
    x, target = data(n=8, seed=6)
    opt_t = torch.optim.SGD(th.parameters(), lr=0.01, momentum=0.9)
    opt_l = toptim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    crit_t, crit_l = torch.nn.MSELoss(), tnn.MSELoss()
    xt, xl = torch.tensor(x), tracenet.tensor(x)
    tt, tl = torch.tensor(target), tracenet.tensor(target)
    losses_t, losses_l = [], []
    for _ in range(5):
        opt_t.zero_grad()
        opt_l.zero_grad()
        loss_t = crit_t(th(xt), tt)
        loss_l = crit_l(ours(xl), tl)
        loss_t.backward()
        loss_l.backward()
        opt_t.step()
        opt_l.step()
        losses_t.append(loss_t.item())
        losses_l.append(loss_l.item())
        for (name, pt), (_, pl) in zip(th.named_parameters(), ours.named_parameters()):
            np.testing.assert_allclose(pl.detach().numpy(), pt.detach().numpy(), rtol=1e-4,
                                       atol=1e-6, err_msg=name)
    np.testing.assert_allclose(losses_l, losses_t, rtol=1e-5)
    assert losses_l[-1] < losses_l[0]


def test_batch_forward_backward_is_fast_enough():
    """Speed sanity for the vectorised kernels (not a strict timing assert)."""
    import time
    _, ours = twin_nets()
    x = tracenet.randn(64, 1, 32, 32)
    target = tracenet.randn(64, 10)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        loss = LF.mse_loss(ours(x), target)
        ours.zero_grad()
        loss.backward()
        best = min(best, time.perf_counter() - start)
    assert all(p.grad is not None for p in ours.parameters())
    assert best < 5.0, best  # typically a few tens of milliseconds


def test_tutorial_script_runs():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "tutorial.py")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = out.splitlines()
    th, _ = twin_nets()
    net_repr = repr(th)
    assert out.startswith(net_repr + "\n")
    assert lines[len(net_repr.splitlines())] == "10"
    assert "torch.Size([6, 1, 5, 5])" in lines
    assert "grad_fn=<AddmmBackward0>" in out
    assert "<MseLossBackward0 object at" in out
    assert "<AddmmBackward0 object at" in out
    assert "<AccumulateGrad object at" in out
    i = lines.index("conv1.bias.grad before backward")
    assert lines[i + 1] == "None"
    j = lines.index("conv1.bias.grad after backward")
    assert lines[j + 1].startswith("tensor([")
    assert any(ln.startswith("tensor(") and ln.endswith("grad_fn=<MseLossBackward0>)")
               for ln in lines[j + 2:])
