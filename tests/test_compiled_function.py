"""tracenet.compile(fn) on a whole training (or inference) step function: traced once with its
backward, gradient clipping and optimizer step, run as one C call, leaving parameters, .grad
and optimizer state as the eager function does."""
import copy

import numpy as np
import pytest

import tracenet as torch
import tracenet.nn as nn
from tracenet.trace import TraceError

import sweep
from test_ir import LeNet, MLP

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tn-cache"))


def _same_state(model, reference, opt, ref_opt):
    for p, q in zip(model.parameters(), reference.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **TOL)
        if q.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), **TOL)
    for p, q in zip(model.parameters(), reference.parameters()):
        mine, theirs = opt.state[p], ref_opt.state[q]
        assert set(mine) == set(theirs)
        for k in theirs:
            np.testing.assert_allclose(np.asarray(mine[k].numpy()), np.asarray(theirs[k].numpy()),
                                       **TOL)


def _pair(make, opt_class, **kw):
    torch.manual_seed(0)
    model = make()
    reference = copy.deepcopy(model)
    return model, reference, opt_class(model.parameters(), **kw), \
        opt_class(reference.parameters(), **kw)


def _step_fn(model, opt, criterion, clip=None):
    def train_step(x, y):
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        if clip == "norm":
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        elif clip == "value":
            nn.utils.clip_grad_value_(model.parameters(), 0.01)
        opt.step()
        return loss
    return train_step


# the default run: every optimizer and clipping but plain SGD with momentum (the step of the
# repeated-calls test below), which runs with -m sweep
DEFAULT_OPTIMIZERS = {torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
                      torch.optim.Adagrad}


# RMSprop divides by a running RMS of small gradients: a last-bit difference between the
# compiled and eager backward (another summation order) grows past float32 tolerances over a few
# steps (see tests/test_training_step.py), so it runs in float64.
@sweep.keep(lambda p: p["opt_class"] in DEFAULT_OPTIMIZERS or p["kw"].get("nesterov", False))
@pytest.mark.parametrize("opt_class,kw,clip,double", [
    (torch.optim.SGD, dict(lr=0.01, momentum=0.9), None, False),
    (torch.optim.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3), "norm",
     False),
    (torch.optim.Adam, dict(lr=1e-3), "value", False),
    (torch.optim.AdamW, dict(lr=1e-3, amsgrad=True), None, False),
    (torch.optim.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True), "norm", True),
    (torch.optim.Adagrad, dict(lr=1e-2), None, False),
])
def test_a_training_step_function_matches_the_eager_loop(opt_class, kw, clip, double):
    model, reference, opt, ref_opt = _pair(lambda: LeNet().double() if double else LeNet(),
                                           opt_class, **kw)
    criterion = nn.CrossEntropyLoss()
    step = torch.compile(_step_fn(model, opt, criterion, clip))
    eager = _step_fn(reference, ref_opt, criterion, clip)
    for batch in (4, 4, 3, 6):
        x, y = torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,))
        if double:
            x = x.double()
        loss = step(x, y)
        ref_loss = eager(x, y)
        np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=1e-5)
        _same_state(model, reference, opt, ref_opt)
    assert len(step._specs) == 1  # every batch size from one build
    assert loss.grad_fn is None


def test_a_scheduler_outside_the_function_changes_the_learning_rate_without_recompiling():
    model, reference, opt, ref_opt = _pair(MLP, torch.optim.SGD, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, 1, gamma=0.5)
    criterion = nn.MSELoss()
    step = torch.compile(_step_fn(model, opt, criterion))
    eager = _step_fn(reference, ref_opt, criterion)
    for _ in range(4):
        x, y = torch.randn(5, 20), torch.randn(5, 5)
        np.testing.assert_allclose(step(x, y).item(), eager(x, y).item(), rtol=1e-5)
        sched.step()
        ref_sched.step()
        _same_state(model, reference, opt, ref_opt)
    assert len(step._specs) == 1


def test_an_inference_function_compiles():
    torch.manual_seed(1)
    model = MLP().eval()

    def predict(x):
        with torch.no_grad():
            return model(x).softmax(1), model(x).sum(1)

    compiled = torch.compile(predict)
    x = torch.randn(7, 20)
    for got, want in zip(compiled(x), predict(x)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_backward_onto_gradients_from_outside_is_refused():
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 20)).sum().backward()  # gradients exist before the call

    def no_zero_grad(x):
        loss = model(x).sum()
        loss.backward()
        opt.step()
        return loss

    with pytest.raises(TraceError, match="zero_grad"):
        torch.compile(no_zero_grad)(torch.randn(2, 20))
    assert model.l1.weight.grad is not None and model.l1.weight.grad._ir is None


def test_compile_rejects_what_is_neither_a_module_nor_a_function():
    with pytest.raises(TypeError, match="nn.Module or a function"):
        torch.compile(42)


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def test_buffers_parameters_replaced_and_optimizer_state_loaded_follow_the_eager_step():
    """Running statistics are written back after every call; a parameter whose array is
    replaced, and optimizer state loaded from a state dict, are what the next call uses."""
    model, reference, opt, ref_opt = _pair(_BNNet, torch.optim.SGD, lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    step = torch.compile(_step_fn(model, opt, criterion))
    eager = _step_fn(reference, ref_opt, criterion)
    rng = np.random.default_rng(3)
    for i in range(5):
        x = torch.tensor(rng.standard_normal((6, 1, 8, 8)).astype(np.float32))
        y = torch.tensor(rng.integers(0, 5, 6))
        if i == 2:  # a new array for a parameter, the same values in both
            new = rng.standard_normal(tuple(model.fc.weight.shape)).astype(np.float32) * 0.1
            model.fc.weight.data = torch.tensor(new)
            reference.fc.weight.data = torch.tensor(new.copy())
        if i == 3:  # the optimizer's state replaced through a state dict
            saved = copy.deepcopy(ref_opt.state_dict())
            opt.load_state_dict(copy.deepcopy(saved))
            ref_opt.load_state_dict(saved)
        loss, ref_loss = step(x, y), eager(x, y)
        np.testing.assert_allclose(loss.item(), ref_loss.item(), **TOL)
        _same_state(model, reference, opt, ref_opt)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            np.testing.assert_allclose(getattr(model.bn, name).numpy(),
                                       getattr(reference.bn, name).numpy(), **TOL)


def _bn_step_fn(net, opt, criterion):
    """A step that reaches its model only through ``net`` (a compiled module, or the model)."""
    def train_step(x, y):
        opt.zero_grad()
        loss = criterion(net(x), y)
        loss.backward()
        opt.step()
        return loss
    return train_step


def test_a_step_through_a_compiled_module_matches_the_eager_loop():
    """``cnet = tracenet.compile(net)`` called inside a compiled step function: the step traces
    the module inline, its parameters and buffers (BatchNorm's running statistics) are the
    step's inputs, and parameters, .grad, running statistics and num_batches_tracked follow the
    same function run eagerly on a copy."""
    model, reference, opt, ref_opt = _pair(_BNNet, torch.optim.SGD, lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    step = torch.compile(_bn_step_fn(torch.compile(model), opt, criterion))
    eager = _bn_step_fn(reference, ref_opt, criterion)
    rng = np.random.default_rng(5)
    for batch in (6, 6, 4, 7):
        x = torch.tensor(rng.standard_normal((batch, 1, 8, 8)).astype(np.float32))
        y = torch.tensor(rng.integers(0, 5, batch))
        loss, ref_loss = step(x, y), eager(x, y)
        np.testing.assert_allclose(loss.item(), ref_loss.item(), **TOL)
        _same_state(model, reference, opt, ref_opt)
        assert all(p.grad is not None for p in model.parameters())
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            np.testing.assert_allclose(getattr(model.bn, name).numpy(),
                                       getattr(reference.bn, name).numpy(), **TOL)
    assert int(model.bn.num_batches_tracked.item()) == 4
    inputs = " ".join(v.name for v in step.graph.inputs)
    assert "running_mean" in inputs and "running_var" in inputs
    assert {type(m) for m in step.modules} == {_BNNet, nn.CrossEntropyLoss}  # (unwrapped)


def test_inference_through_a_compiled_module_reads_the_current_running_statistics():
    """An eval-mode compiled module inside a compiled function under no_grad gives eager's
    answer, also after eager training steps change the running statistics (they are inputs,
    not constants of the trace)."""
    torch.manual_seed(2)
    model = _BNNet().eval()
    cnet = torch.compile(model)

    def predict(x):
        with torch.no_grad():
            return cnet(x).softmax(1)

    compiled = torch.compile(predict)
    x = torch.randn(5, 1, 8, 8)
    for round_ in range(3):
        want = model(x).softmax(1)
        np.testing.assert_allclose(compiled(x).numpy(), want.detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
        model.train()
        model(torch.randn(8, 1, 8, 8) * (round_ + 2) + 1)  # moves the running statistics
        model.eval()
    assert all(p.grad is None for p in model.parameters())
    assert len(compiled._specs) == 1


def test_each_call_returns_outputs_of_its_own():
    # small outputs of static shapes are copied out of arrays the call keeps: a later call
    # never changes what an earlier one returned
    model, reference, opt, ref_opt = _pair(LeNet, torch.optim.SGD, lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()

    def with_sums(net, optimizer):
        def fn(x, y):
            optimizer.zero_grad()
            loss = criterion(net(x), y)
            loss.backward()
            optimizer.step()
            return loss, net.fc3.weight.sum(1)  # (10,): a static shape
        return fn

    compiled = torch.compile(with_sums(model, opt))
    eager = with_sums(reference, ref_opt)
    got, want = [], []
    for _ in range(3):
        x, y = torch.randn(1, 1, 32, 32), torch.randint(0, 10, (1,))
        got.append(compiled(x, y))
        want.append(eager(x, y))
    for (loss, sums), (ref_loss, ref_sums) in zip(got, want):
        np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=1e-5)
        np.testing.assert_allclose(sums.detach().numpy(), ref_sums.detach().numpy(), **TOL)
    assert len({id(loss._data) for loss, _ in got}) == 3
    assert len({id(sums._data) for _, sums in got}) == 3
    _same_state(model, reference, opt, ref_opt)


def test_bad_targets_between_good_steps_raise_each_time_and_change_nothing():
    # one argument vector serves every call: its status is zero again after each failure
    model, reference, opt, ref_opt = _pair(MLP, torch.optim.SGD, lr=0.1, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    step = torch.compile(_step_fn(model, opt, criterion))
    eager = _step_fn(reference, ref_opt, criterion)
    x = torch.randn(3, 20)
    good, bad = torch.tensor([0, 4, 2]), torch.tensor([0, 4, 7])
    for _ in range(3):
        np.testing.assert_allclose(step(x, good).item(), eager(x, good).item(), rtol=1e-5)
        for _ in range(2):
            with pytest.raises(IndexError, match="Target 7 is out of bounds."):
                step(x, bad)
        _same_state(model, reference, opt, ref_opt)
    assert len(step._specs) == 1


def test_optimizer_state_arrays_replaced_between_calls_are_what_the_next_call_uses():
    """A momentum buffer whose array is replaced (``.data =``) between calls, and a parameter
    moved to a new array by ``vector_to_parameters``, are read from their new arrays, as in
    the eager step."""
    model, reference, opt, ref_opt = _pair(MLP, torch.optim.SGD, lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    step = torch.compile(_step_fn(model, opt, criterion))
    eager = _step_fn(reference, ref_opt, criterion)
    rng = np.random.default_rng(5)
    for i in range(5):
        x = torch.tensor(rng.standard_normal((4, 20)).astype(np.float32))
        y = torch.tensor(rng.integers(0, 5, 4))
        if i == 2:
            for p, q in zip(model.parameters(), reference.parameters()):
                new = rng.standard_normal(tuple(p.shape)).astype(np.float32)
                opt.state[p]["momentum_buffer"].data = torch.tensor(new)
                ref_opt.state[q]["momentum_buffer"].data = torch.tensor(new.copy())
        if i == 3:
            flat = rng.standard_normal(sum(p.numel() for p in model.parameters()))
            flat = flat.astype(np.float32) * 0.1
            nn.utils.vector_to_parameters(torch.tensor(flat), model.parameters())
            nn.utils.vector_to_parameters(torch.tensor(flat.copy()), reference.parameters())
        loss, ref_loss = step(x, y), eager(x, y)
        np.testing.assert_allclose(loss.item(), ref_loss.item(), **TOL)
        _same_state(model, reference, opt, ref_opt)


def test_every_call_bumps_the_versions_of_what_it_writes_in_place():
    """Each call of a compiled step counts as one in-place change of every stepped parameter
    (seen through aliases sharing its version counter, as torch's optimizer.step() is), also
    when two compiled functions step the same parameters; an eager graph that saved a
    parameter before the call then refuses to backward through it."""
    import torch as pt
    model, reference, opt, ref_opt = _pair(MLP, torch.optim.SGD, lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    first = torch.compile(_step_fn(model, opt, criterion))
    second = torch.compile(_step_fn(model, opt, criterion, clip="value"))
    w = next(model.parameters())
    alias = w.detach()
    tw = pt.nn.Parameter(pt.zeros(3))
    topt = pt.optim.SGD([tw], lr=0.05, momentum=0.9)
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.standard_normal((4, 20)).astype(np.float32))
    y = torch.tensor(rng.integers(0, 5, 4))
    for step in (first, second, first, first, second):
        before, grad = w._version, w.grad
        grad_before = None if grad is None else grad._version
        tw.grad = pt.ones(3)
        torch_before = tw._version
        topt.step()
        step(x, y)
        assert w._version - before == tw._version - torch_before == 1
        assert alias._version == w._version
        if w.grad is grad:  # (the same .grad tensor again: written in place)
            assert grad._version == grad_before + 1
    version = w.grad._version
    w.grad.mul_(1.0)  # (an in-place op still counts once on top of the calls')
    assert w.grad._version == version + 1
    first(x, y)
    assert w.grad._version == version + 2
    saved = (w * w).sum()
    first(x, y)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()


def test_momentum_buffers_replaced_between_steps_match_torch():
    """``buf.data = ...`` on momentum buffers between steps: the compiled step, the eager
    step and torch's all continue from the new buffers."""
    import torch as pt
    rng = np.random.default_rng(8)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    xs = rng.standard_normal((4, 2, 4)).astype(np.float32)
    new_buf = rng.standard_normal((3, 4)).astype(np.float32)

    def run(lib, compiled):
        w = lib.nn.Parameter(lib.tensor(w0.copy()))
        opt = lib.optim.SGD([w], lr=0.1, momentum=0.9)

        def step(x):
            opt.zero_grad()
            loss = (lib.tanh(x @ w.t()) ** 2).sum()
            loss.backward()
            opt.step()
            return loss
        if compiled:
            step = lib.compile(step)
        losses = []
        for i, x in enumerate(xs):
            if i == 2:
                opt.state[w]["momentum_buffer"].data = lib.tensor(new_buf.copy())
            losses.append(step(lib.tensor(x)).item())
        return losses, w.detach().numpy().copy(), \
            opt.state[w]["momentum_buffer"].detach().numpy().copy()

    expected = run(pt, False)
    for compiled in (False, True):
        got = run(torch, compiled)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[2], expected[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3])
def test_repeated_calls_follow_new_inputs_learning_rates_and_keep_returned_losses(batch):
    """The calls after the first skip the key and re-read only what may have changed: a new
    tensor of the same shape, the same tensor written in place, a learning rate set in the
    param group between calls and a training flag switched are all seen, as by the eager
    step, and every returned loss keeps its value."""
    model, reference, opt, ref_opt = _pair(MLP, torch.optim.SGD, lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    step = torch.compile(_step_fn(model, opt, criterion))
    eager = _step_fn(reference, ref_opt, criterion)
    rng = np.random.default_rng(9)
    x = torch.tensor(rng.standard_normal((batch, 20)).astype(np.float32))
    y = torch.tensor(rng.integers(0, 5, batch))
    losses, ref_losses = [], []
    for i in range(8):
        if i == 3:  # another tensor of the same shape
            x = torch.tensor(rng.standard_normal((batch, 20)).astype(np.float32))
        if i == 4:  # the same tensor written in place
            x.mul_(0.5)
        if i == 5:
            for group in opt.param_groups + ref_opt.param_groups:
                group["lr"] = 0.01
        if i == 6:
            for group in opt.param_groups + ref_opt.param_groups:
                group["momentum"] = 0.5
        losses.append(step(x, y))
        ref_losses.append(eager(x, y))
        _same_state(model, reference, opt, ref_opt)
    assert len({id(loss) for loss in losses}) == len(losses)
    np.testing.assert_allclose([loss.item() for loss in losses],
                               [loss.item() for loss in ref_losses], rtol=1e-5)
    assert len(step._specs) == 1


def test_a_parameter_frozen_and_unfrozen_between_calls_follows_the_eager_step():
    """``requires_grad_(False)`` on a parameter between calls: the eager step leaves it, its
    .grad (None after zero_grad) and its momentum as they are; the compiled function compiles
    a specialisation without its update, and goes back to the first once it is unfrozen."""
    model, reference, opt, ref_opt = _pair(MLP, torch.optim.SGD, lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    step = torch.compile(_step_fn(model, opt, criterion))
    eager = _step_fn(reference, ref_opt, criterion)
    rng = np.random.default_rng(10)
    for i in range(7):
        x = torch.tensor(rng.standard_normal((4, 20)).astype(np.float32))
        y = torch.tensor(rng.integers(0, 5, 4))
        if i in (2, 5):
            for m in (model, reference):
                m.l1.weight.requires_grad_(i == 5)
        np.testing.assert_allclose(step(x, y).item(), eager(x, y).item(), rtol=1e-5)
        _same_state(model, reference, opt, ref_opt)
        assert (model.l1.weight.grad is None) == (2 <= i < 5)
    assert len(step._specs) == 2


def test_a_training_flag_switched_between_repeated_calls_takes_effect():
    """``eval()`` and ``train()`` between calls of the same inputs: each call runs the
    specialisation of the current flags (batch norm with the running statistics, or with the
    batch's and updating them), as the eager step does."""
    model, reference, opt, ref_opt = _pair(_BNNet, torch.optim.SGD, lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    step = torch.compile(_step_fn(model, opt, criterion))
    eager = _step_fn(reference, ref_opt, criterion)
    rng = np.random.default_rng(11)
    x = torch.tensor(rng.standard_normal((4, 1, 8, 8)).astype(np.float32))
    y = torch.tensor(rng.integers(0, 5, 4))
    for i in range(6):
        if i in (2, 4):
            for m in (model, reference):
                m.train(i == 4)
        np.testing.assert_allclose(step(x, y).item(), eager(x, y).item(), **TOL)
        _same_state(model, reference, opt, ref_opt)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            np.testing.assert_allclose(getattr(model.bn, name).numpy(),
                                       getattr(reference.bn, name).numpy(), **TOL)
    assert len(step._specs) == 2


def test_an_input_that_requires_grad_is_refused_when_backward_reaches_it():
    """The eager step would give such an input a .grad, which the compiled code does not
    compute: the call raises instead (also after calls on an input that did not require
    grad), and the step goes on with inputs that do not."""
    model, reference, opt, ref_opt = _pair(MLP, torch.optim.SGD, lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    step = torch.compile(_step_fn(model, opt, criterion))
    eager = _step_fn(reference, ref_opt, criterion)
    x, y = torch.randn(4, 20), torch.randint(0, 5, (4,))
    for needs_grad in (False, True, False):
        x.requires_grad_(needs_grad)
        if needs_grad:
            with pytest.raises(TraceError, match="reaches its input 0, which requires grad"):
                step(x, y)
            continue
        np.testing.assert_allclose(step(x, y).item(), eager(x, y).item(), rtol=1e-5)
        _same_state(model, reference, opt, ref_opt)
    assert x.grad is None


def test_an_input_that_is_not_a_tensor_is_refused_after_steady_calls():
    """A numpy array where a tensor was passed before: the call raises (on the path of
    repeated calls as on the first) and changes nothing; the next calls go on as the eager
    step does."""
    model, reference, opt, ref_opt = _pair(MLP, torch.optim.SGD, lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    step = torch.compile(_step_fn(model, opt, criterion))
    eager = _step_fn(reference, ref_opt, criterion)
    x, y = torch.randn(4, 20), torch.randint(0, 5, (4,))
    with pytest.raises(TypeError, match="compiled function input 0 must be a Tensor, got "
                                        "ndarray"):
        step(x.numpy(), y)
    for i in range(4):
        if i == 2:
            with pytest.raises(TypeError, match="input 1 must be a Tensor, got ndarray"):
                step(x, y.numpy())
            _same_state(model, reference, opt, ref_opt)
        np.testing.assert_allclose(step(x, y).item(), eager(x, y).item(), rtol=1e-5)
        _same_state(model, reference, opt, ref_opt)


def test_backward_without_zero_grad_refuses_to_add_to_a_grad_left_by_an_earlier_call():
    """A function that calls backward but not zero_grad: its first call's gradients are new
    ones; at the next call eager mode would add to them, which the compiled code does not do,
    so the call refuses (the trace's error) instead of silently leaving only this call's."""
    lin = nn.Linear(3, 1)

    def step(x):
        loss = lin(x).sum()
        loss.backward()
        return loss
    compiled = torch.compile(step)
    x = torch.ones(2, 3)
    compiled(x)
    np.testing.assert_allclose(lin.weight.grad.numpy(), [[2.0, 2.0, 2.0]])
    with pytest.raises(TraceError, match="would add to gradients computed outside it"):
        compiled(x)
    lin.weight.grad = lin.bias.grad = None  # as zero_grad(set_to_none=True) leaves them
    compiled(x)
    np.testing.assert_allclose(lin.weight.grad.numpy(), [[2.0, 2.0, 2.0]])


_NET = None
_OPT = None


def _global_step(x, y):
    _OPT.zero_grad()
    loss = nn.functional.mse_loss(_NET(x), y)
    loss.backward()
    _OPT.step()
    return loss


def _fresh(seed):
    torch.manual_seed(seed)
    net = nn.Linear(3, 2)
    return net, torch.optim.SGD(net.parameters(), lr=0.1)


def test_a_global_module_and_optimizer_rebound_after_compiling_are_used():
    """A notebook's pattern: the model and optimizer globals are made again after the step
    was compiled. The compiled step trains the new ones, as the eager step does."""
    global _NET, _OPT
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    try:
        _NET, _OPT = _fresh(0)
        compiled = torch.compile(_global_step)
        compiled(x, y)
        old = _NET
        _NET, _OPT = _fresh(1)
        reference = copy.deepcopy(_NET)
        ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
        before = old.weight.detach().clone()
        for _ in range(2):
            got = compiled(x, y)
            ref_opt.zero_grad()
            want = nn.functional.mse_loss(reference(x), y)
            want.backward()
            ref_opt.step()
            np.testing.assert_allclose(got.item(), want.item(), **TOL)
        _same_state(_NET, reference, _OPT, ref_opt)
        np.testing.assert_array_equal(old.weight.detach().numpy(), before.numpy())
    finally:
        _NET = _OPT = None


def test_a_closure_module_rebound_after_compiling_is_used():
    net = nn.Linear(3, 2)

    def f(x):
        return net(x)
    compiled = torch.compile(f)
    x = torch.randn(2, 3)
    with torch.no_grad():
        compiled(x)
        net = nn.Linear(3, 2)  # (rebinds the closure's cell)
        np.testing.assert_allclose(compiled(x).numpy(), f(x).numpy(), **TOL)
