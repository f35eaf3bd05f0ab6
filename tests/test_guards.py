"""Guards of compiled modules and steps: the Python values a trace read (module attributes, the
module tree) re-specialise when they change; calls that would freeze a per-call value
(random, time) raise; custom autograd Functions are differentiated by their own backward.
Also: keyword inputs and pickling of compiled modules, torch's TypeError for non-tensor
inputs."""
import pickle
import random
import time

import numpy as np
import pytest
import torch as pt

import tracenet as torch
import tracenet.nn as nn
import tracenet.optim as optim
from tracenet.trace import TraceError

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.getbasetemp() / "tracenet-cache"
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(d))


def _close(a, b):
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), **TOL)


# --- module attributes ----------------------------------------------------------------------

class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = 2.0
        self.mode = "plain"
        self.double = False

    def forward(self, x):
        y = self.fc(x) * self.scale
        if self.double:
            y = y + y
        if self.mode == "relu":
            y = y.relu()
        return y


def test_changed_scalar_attribute_respecialises():
    net = Scaled()
    c = torch.compile(net)
    x = torch.randn(2, 4)
    _close(c(x), net(x))
    net.scale = 5.0
    _close(c(x), net(x))
    assert len(c.specialisations) == 2
    net.scale = 2.0  # back to the first value: the first specialisation again, no new trace
    _close(c(x), net(x))
    assert len(c.specialisations) == 2
    c.double = True  # set through the compiled module
    _close(c(x), net(x))
    net.mode = "relu"
    _close(c(x), net(x))
    assert len(c.specialisations) == 4


def test_unread_and_unchanged_attributes_do_not_respecialise():
    net = Scaled()
    c = torch.compile(net)
    x = torch.randn(2, 4)
    c(x)
    net.comment = "not read by forward"
    net.scale = 2.0  # same value
    net.train()  # same flags
    c(x)
    other = nn.Linear(2, 2)  # changes to unrelated modules
    other.bias = None
    c(x)
    assert len(c.specialisations) == 1


def test_replaced_submodule_respecialises():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    c = torch.compile(net)
    x = torch.randn(2, 4)
    assert tuple(c(x).shape) == (2, 3)
    net[2] = nn.Linear(4, 5)
    out = c(x)
    assert tuple(out.shape) == (2, 5)
    _close(out, net(x))
    out.sum().backward()
    assert net[2].weight.grad is not None
    del net[1]
    _close(c(x), net(x))
    net.append(nn.Tanh())
    _close(c(x), net(x))


def test_replaced_parameter_and_frozen_parameter_respecialise():
    net = nn.Linear(4, 3)
    c = torch.compile(net)
    x = torch.randn(2, 4)
    c(x).sum().backward()
    net.weight = nn.Parameter(torch.randn(3, 4))
    net.zero_grad()
    _close(c(x), net(x))
    c(x).sum().backward()
    assert net.weight.grad is not None
    net.zero_grad()
    net.weight.requires_grad_(False)
    out = c(x)
    _close(out, net(x))
    out.sum().backward()
    assert net.weight.grad is None and net.bias.grad is not None


def test_nested_module_attribute():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Scaled()

        def forward(self, x):
            return self.inner(x) + 1

    net = Outer()
    c = torch.compile(net)
    x = torch.randn(2, 4)
    _close(c(x), net(x))
    net.inner.scale = -1.0
    _close(c(x), net(x))


# --- calls that would freeze a per-call value -----------------------------------------------

class RandomDepth(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        for _ in range(random.randint(1, 4)):
            x = self.fc(x)
        return x


class NumpyNoise(nn.Module):
    def forward(self, x):
        return x * float(np.random.rand())


class Clock(nn.Module):
    def forward(self, x):
        return x + time.time() % 1


@pytest.mark.parametrize("cls, name", [(RandomDepth, "random.randint"),
                                       (NumpyNoise, "numpy.random.rand"),
                                       (Clock, "time.time")])
def test_random_and_time_calls_raise(cls, name):
    c = torch.compile(cls())
    with pytest.raises(TraceError, match=rf"{name}\(\) called while tracing at "
                                         rf".*test_guards.py:\d+"):
        c(torch.randn(2, 4))
    assert np.random.rand is not None and random.random() < 1  # restored afterwards
    import sys
    assert sys.getprofile() is None


def test_random_calls_in_eager_mode_still_work():
    net = RandomDepth()
    assert tuple(net(torch.randn(2, 4)).shape) == (2, 4)


# --- compile_step ------------------------------------------------------------------------------

def test_compile_step_respecialises_on_attribute():
    net = Scaled()
    ref = Scaled()
    ref.load_state_dict(net.state_dict())
    opt = optim.SGD(net.parameters(), lr=0.1)
    ref_opt = optim.SGD(ref.parameters(), lr=0.1)

    def loss_fn(x):
        return net(x).pow(2).mean()

    step = torch.compile_step(loss_fn, opt)
    x = torch.randn(2, 4)
    for scale in (2.0, 3.0, 3.0):
        net.scale = ref.scale = scale
        loss = step(x)
        ref_opt.zero_grad()
        ref_loss = ref(x).pow(2).mean()
        ref_loss.backward()
        ref_opt.step()
        _close(loss, ref_loss)
    _close(net.fc.weight, ref.fc.weight)
    assert len(step._specs) == 2


# --- custom autograd.Function --------------------------------------------------------------

def _function_classes(lib):
    class MulAdd(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, k):
            ctx.save_for_backward(x, w)
            ctx.k = k
            return x * w + k

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            # a deliberately non-standard gradient, so that autodiff of forward would differ
            return g * w * ctx.k, (g * x).sum(0) * 2, None

    class Net(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = lib.nn.Linear(4, 3)
            self.w = lib.nn.Parameter(lib.ones(3) * 0.5)

        def forward(self, x):
            return MulAdd.apply(self.fc(x), self.w, 3.0).tanh()

    return MulAdd, Net


def test_custom_function_gradients_match_eager_and_torch():
    _, Net = _function_classes(torch)
    _, TNet = _function_classes(pt)
    net, tnet = Net(), TNet()
    with pt.no_grad():
        for p, q in zip(net.parameters(), tnet.parameters()):
            q.copy_(pt.tensor(p.detach().numpy()))
    c = torch.compile(net)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    out = c(torch.tensor(x))
    eager = net(torch.tensor(x))
    _close(out, eager)
    out.sum().backward()
    compiled_grads = [p.grad.numpy().copy() for p in net.parameters()]
    net.zero_grad()
    eager.sum().backward()
    tout = tnet(pt.tensor(x))
    tout.sum().backward()
    for cg, p, q in zip(compiled_grads, net.parameters(), tnet.parameters()):
        assert np.abs(cg).max() > 0
        np.testing.assert_allclose(cg, p.grad.numpy(), **TOL)
        np.testing.assert_allclose(cg, q.grad.numpy(), **TOL)


def test_custom_function_with_two_outputs_and_input_gradient():
    class SplitScale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 2, x * 3

        @staticmethod
        def backward(ctx, ga, gb):
            (x,) = ctx.saved_tensors
            return ga * 2 + gb * 3 + x * 0

    class Net(nn.Module):
        def forward(self, x):
            a, b = SplitScale.apply(x)
            return (a * b).sum(1)

    net = Net()
    c = torch.compile(net)
    x1 = torch.randn(2, 4, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    out, ref = c(x1), net(x2)
    _close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    _close(x1.grad, x2.grad)


def test_untraceable_custom_backward_raises_naming_the_function():
    class NumpyBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return torch.tensor(g.numpy() * 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return NumpyBackward.apply(self.fc(x))

    c = torch.compile(Net())
    with pytest.raises(TraceError, match=r"backward of custom autograd.Function "
                                         r"NumpyBackward.*test_guards.py:\d+"):
        c(torch.randn(2, 4))
    with torch.no_grad():  # no backward needed: compiles
        assert tuple(c(torch.randn(2, 4)).shape) == (2, 3)


# --- keyword inputs, pickling, non-tensor inputs -----------------------------------------------

class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, bias=None, *, gain=None):
        y = self.fc(x)
        if bias is not None:
            y = y + bias
        if gain is not None:
            y = y * gain
        return y


def test_keyword_inputs():
    net = TwoInputs()
    c = torch.compile(net)
    x, b, g = torch.randn(2, 4), torch.randn(3), torch.randn(2, 3)
    _close(c(x, bias=b), net(x, bias=b))
    _close(c(x, gain=g, bias=b), net(x, gain=g, bias=b))
    _close(c(x, b, gain=g), net(x, b, gain=g))
    _close(c(x), net(x))
    b2 = torch.randn(3)
    _close(c(x, bias=b2), net(x, bias=b2))  # new values, same key
    xg = x.detach().clone().requires_grad_()
    c(xg, gain=g).sum().backward()
    assert xg.grad is not None


def test_pickle_compiled_module():
    net = Scaled()
    c = torch.compile(net)
    x = torch.randn(2, 4)
    c(x)
    c2 = pickle.loads(pickle.dumps(c))
    assert type(c2) is type(c)
    assert c2._module is not net and isinstance(c2._module, Scaled)
    _close(c2(x), c(x))
    assert len(c2.specialisations) == 1


def test_linear_of_a_float_is_a_type_error_like_torch():
    with pytest.raises(TypeError) as theirs:
        pt.nn.Linear(2, 3)(3.0)
    with pytest.raises(TypeError) as ours:
        nn.Linear(2, 3)(3.0)
    assert str(ours.value) == str(theirs.value)
