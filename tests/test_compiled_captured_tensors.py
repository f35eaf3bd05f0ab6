"""Tensors that compiled code reads but that are not its inputs, parameters or buffers: a
plain tensor attribute of a module, a closure's or a global's tensor. Each existed before the
trace, so the trace captures it as a graph input read on every call: a later in-place change,
a rebinding of its name and a gradient it requires behave as in eager mode (and PyTorch).
Tensors made inside the traced code stay constants."""
import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet.trace import TraceError

TOL = dict(rtol=1e-5, atol=1e-6)


def _close(got, want):
    got = got.detach().numpy() if hasattr(got, "detach") else np.asarray(got)
    want = want.detach().numpy() if hasattr(want, "detach") else np.asarray(want)
    np.testing.assert_allclose(got, want, **TOL)


def _captured_inputs(graph):
    return [v for v in graph.inputs if v.name.startswith("captured")]


class Scaled(tn.nn.Module):
    """A linear layer whose input is multiplied by a plain tensor attribute (not a buffer)."""

    def __init__(self):
        super().__init__()
        self.lin = tn.nn.Linear(3, 2)
        self.scale = tn.tensor([1.0, 2.0, 3.0])

    def forward(self, x):
        return self.lin(x * self.scale)


@pytest.mark.parametrize("grad", [False, True])
def test_module_tensor_attribute_changed_in_place_or_replaced(grad):
    net = Scaled()
    compiled = tn.compile(net)
    x = tn.randn(4, 3)
    with tn.set_grad_enabled(grad):
        _close(compiled(x), net(x))
        with tn.no_grad():
            net.scale.mul_(2)
        _close(compiled(x), net(x))          # the change in place is read, not frozen
        net.scale = tn.tensor([-1.0, 0.5, 4.0])
        _close(compiled(x), net(x))          # the new tensor is read
        net.scale.add_(1)
        _close(compiled(x), net(x))


def test_tensor_attribute_changed_in_place_reuses_the_build():
    net = Scaled()
    compiled = tn.compile(net)
    with tn.no_grad():
        for batch in (3, 5, 3):
            x = tn.randn(batch, 3)
            _close(compiled(x), net(x))
            net.scale.mul_(1.5)
    assert len(compiled._specs) == 1  # one symbolic build, the attribute an input of it
    assert len(_captured_inputs(compiled.graph)) == 1


SHIFT = tn.tensor([0.5, -1.0, 2.0])


def _shifted(x):
    return (x + SHIFT).sum(1)


def test_global_tensor_changed_in_place_or_rebound():
    global SHIFT
    f = tn.compile(_shifted)
    x = tn.randn(2, 3)
    _close(f(x), _shifted(x))
    SHIFT.mul_(3)
    _close(f(x), _shifted(x))
    saved = SHIFT
    try:
        SHIFT = tn.tensor([10.0, 20.0, 30.0])
        _close(f(x), _shifted(x))
    finally:
        SHIFT = saved


def test_closure_tensor_rebound():
    scale = tn.tensor([1.0, 2.0, 3.0])

    def f(x):
        return x * scale
    compiled = tn.compile(f)
    x = tn.randn(2, 3)
    _close(compiled(x), f(x))
    scale = tn.tensor([-4.0, 0.5, 9.0])  # (rebinds the closure's cell)
    _close(compiled(x), f(x))


def test_closure_tensor_changed_in_place():
    bias = tn.zeros(3)

    def f(x):
        return x * 2 + bias
    compiled = tn.compile(f)
    x = tn.randn(2, 3)
    _close(compiled(x), f(x))
    bias.fill_(7.0)
    _close(compiled(x), f(x))
    bias[1] = -3.0
    _close(compiled(x), f(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_free_tensor_requiring_grad_gets_eager_and_torch_gradients(dtype):
    """A closure's tensor that requires grad (not a parameter of any module): the compiled
    output's backward fills its .grad as eager mode's and PyTorch's, accumulating."""
    rng = np.random.default_rng(0)
    w0, x0 = rng.standard_normal(3).astype(dtype), rng.standard_normal((4, 3)).astype(dtype)

    def make(lib):
        w = lib.tensor(w0.copy(), requires_grad=True)

        def f(x):
            return (lib.tanh(x * w) * w).sum()
        return w, f
    (w, f), (we, fe), (wt, ft) = make(tn), make(tn), make(torch)
    compiled = tn.compile(f)
    for _ in range(2):
        out = compiled(tn.tensor(x0))
        assert out.requires_grad
        out.backward()
        fe(tn.tensor(x0)).backward()
        ft(torch.tensor(x0)).backward()
        _close(w.grad, we.grad)
        _close(w.grad, wt.grad)


def test_free_tensor_requiring_grad_in_a_step_function():
    """A step function that calls backward and steps an optimizer over the module's parameters
    also fills the .grad of a free tensor it reads, as eager mode does."""
    torch.manual_seed(0)
    ref = torch.nn.Linear(3, 2)

    def make(lib):
        lin = lib.nn.Linear(3, 2)
        lin.load_state_dict({k: lib.tensor(v.detach().numpy().copy())
                             for k, v in ref.state_dict().items()})
        gate = lib.tensor([0.5, 1.0, -2.0], requires_grad=True)
        opt = lib.optim.SGD(lin.parameters(), lr=0.1)

        def step(x):
            opt.zero_grad()
            loss = lin(x * gate).pow(2).sum()
            loss.backward()
            opt.step()
            return loss
        return lin, gate, step
    (lin, gate, step), (lin_e, gate_e, step_e) = make(tn), make(tn)
    compiled = tn.compile(step)
    x = tn.randn(5, 3)
    for _ in range(3):
        gate.grad = gate_e.grad = None
        _close(compiled(x), step_e(x))
        _close(gate.grad, gate_e.grad)
        _close(lin.weight, lin_e.weight)


class Counting(tn.nn.Module):
    """Counts its calls in a plain tensor attribute changed in place in forward."""

    def __init__(self):
        super().__init__()
        self.calls = tn.zeros((), dtype=tn.int64)
        self.lin = tn.nn.Linear(2, 2)

    def forward(self, x):
        self.calls.add_(1)
        return self.lin(x)


def test_in_place_write_to_a_captured_tensor_in_forward_is_kept():
    net, ref = Counting(), Counting()
    compiled = tn.compile(net)
    x = tn.randn(3, 2)
    for _ in range(3):
        compiled(x)
        ref(x)
    assert int(net.calls) == int(ref.calls) == 3


def test_tensors_made_inside_the_traced_code_stay_constants():
    def f(x):
        mask = tn.tensor([1.0, 0.0, 1.0])
        return x * mask * tn.ones(3)
    compiled = tn.compile(f)
    x = tn.randn(2, 3)
    _close(compiled(x), f(x))
    assert not _captured_inputs(compiled.graph)


def test_a_detached_or_reshaped_captured_tensor_is_captured():
    table = tn.arange(6.0)

    def f(x):
        return x * table.detach().reshape(2, 3)
    compiled = tn.compile(f)
    x = tn.randn(2, 3)
    _close(compiled(x), f(x))
    table.mul_(-2)
    _close(compiled(x), f(x))


def test_non_contiguous_captured_tensor_is_checked_on_every_call():
    """A captured tensor that is not row-major is frozen, and a change to it traces again."""
    base = tn.arange(6.0).reshape(2, 3)
    columns = base.t()  # (3, 2), not contiguous

    def f(x):
        return x @ columns
    compiled = tn.compile(f)
    x = tn.randn(4, 3)
    _close(compiled(x), f(x))
    _close(compiled(x), f(x))
    assert len(compiled._specs) == 1
    base.add_(1)  # (the view shares the base's version counter)
    _close(compiled(x), f(x))
    assert len(compiled._specs) == 2


def test_a_value_computed_from_a_captured_tensor_cannot_steer_python():
    limit = tn.tensor(2.0)

    def f(x):
        if (limit * 1) > 1:  # data-dependent control flow on a traced value
            return x * 2
        return x
    with pytest.raises(TraceError, match="data-dependent"):
        tn.compile(f)(tn.randn(3))


def test_a_captured_tensors_value_read_in_python_is_checked_on_every_call():
    """``.item()`` / ``bool()`` straight on a tensor from outside: its value is built into the
    graph, and a call after it changed traces again."""
    limit = tn.tensor(2.0)

    def f(x):
        if limit.item() > 1:
            return x * limit.item()
        return -x
    compiled = tn.compile(f)
    x = tn.randn(3)
    _close(compiled(x), f(x))
    limit.fill_(3.0)
    _close(compiled(x), f(x))
    limit.fill_(0.0)
    _close(compiled(x), f(x))
    assert len(compiled._specs) == 3


class _Cube(tn.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * a * a

    @staticmethod
    def backward(ctx, g):
        a, = ctx.saved_tensors
        return g * 3 * a * a


def test_custom_function_on_a_captured_tensor():
    w, we = (tn.tensor([0.5, -1.0, 2.0], requires_grad=True) for _ in range(2))

    def make(v):
        return lambda x: (x * _Cube.apply(v)).sum()
    f, fe = tn.compile(make(w)), make(we)
    x = tn.randn(4, 3)
    for _ in range(2):
        f(x).backward()
        fe(x).backward()
        _close(w.grad, we.grad)
    with tn.no_grad():
        w.mul_(2)
        we.mul_(2)
    _close(f(x), fe(x))


class Gated(tn.nn.Module):
    """A plain tensor attribute that requires grad (not a Parameter: not in parameters())."""

    def __init__(self, lib):
        super().__init__()
        self.lin = lib.nn.Linear(3, 2)
        self.gate = lib.tensor([0.5, 1.0, -2.0], requires_grad=True)

    def forward(self, x):
        return (self.lin(x * self.gate)).tanh()


def test_compiled_module_gives_a_tensor_attribute_requiring_grad_its_gradient():
    torch.manual_seed(0)
    ref = Gated(torch)
    net, eager = Gated(tn), Gated(tn)
    for m in (net, eager):
        m.lin.load_state_dict({k: tn.tensor(v.detach().numpy().copy())
                               for k, v in ref.lin.state_dict().items()})
    compiled = tn.compile(net)
    x = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    for _ in range(2):  # the second call's gradients add to the first's
        compiled(tn.tensor(x)).sum().backward()
        eager(tn.tensor(x)).sum().backward()
        ref(torch.tensor(x)).sum().backward()
        _close(net.gate.grad, eager.gate.grad)
        _close(net.gate.grad, ref.gate.grad)
        _close(net.lin.weight.grad, ref.lin.weight.grad)
