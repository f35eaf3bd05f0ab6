"""compile_step: a whole training step in one C call, checked against the eager loop."""
import numpy as np
import pytest

import sweep
import tracenet as torch
import tracenet.nn as nn
import tracenet.optim as optim

from test_ir import LeNet, MLP


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _pair(make):
    torch.manual_seed(0)
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    return a, b


OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.05),
    "sgd_momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd_nesterov_wd": lambda ps: optim.SGD(ps, lr=0.02, momentum=0.9, nesterov=True,
                                             weight_decay=1e-3),
    "sgd_dampening_maximize": lambda ps: optim.SGD(ps, lr=0.01, momentum=0.5, dampening=0.3,
                                                   maximize=True),
    "adam": lambda ps: optim.Adam(ps, lr=1e-3),
    "adam_amsgrad_wd": lambda ps: optim.Adam(ps, lr=1e-3, amsgrad=True, weight_decay=1e-2),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-3),
    "rmsprop": lambda ps: optim.RMSprop(ps, lr=1e-3),
    "adagrad": lambda ps: optim.Adagrad(ps, lr=0.05),
    "adagrad_decay_wd_init": lambda ps: optim.Adagrad(ps, lr=0.05, lr_decay=0.1,
                                                      weight_decay=1e-2,
                                                      initial_accumulator_value=0.5),
    "adagrad_eps_maximize": lambda ps: optim.Adagrad(ps, lr=0.01, eps=1e-6, maximize=True),
}


def _steps_match(make, make_opt, x, y, steps):
    """``steps`` compiled steps against the eager loop: losses, parameters and gradients."""
    eager, compiled = _pair(make)
    opt_e, opt_c = make_opt(eager.parameters()), make_opt(compiled.parameters())
    crit = nn.CrossEntropyLoss()
    step = torch.compile_step(lambda a, b: crit(compiled(a), b), opt_c)
    for _ in range(steps):
        opt_e.zero_grad()
        loss_e = crit(eager(x), y)
        loss_e.backward()
        opt_e.step()
        np.testing.assert_allclose(step(x, y).item(), loss_e.item(), rtol=1e-5)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-4, atol=1e-6)
    return eager, compiled, opt_e, opt_c


# the default run: every optimizer and update flag; SGD's momentum alone (as in its nesterov and
# dampening cases) and plain Adagrad (the code of its decay/weight decay case) with -m sweep
@sweep.keep(lambda p: p["name"] not in ("sgd_momentum", "adagrad"))
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_matches_eager_loop(name):
    eager, compiled, opt_e, opt_c = _steps_match(
        MLP, OPTIMIZERS[name], torch.randn(6, 20), torch.randint(0, 5, (6,)), 10)
    _state_matches(eager, compiled, opt_e, opt_c)


# RMSprop divides by a running RMS of the gradient that starts near |g|: where a gradient is
# small, one that differs in its last bits between the compiled and the eager forward/backward
# (another summation order) moves the update by up to lr * dg / eps. Over ten float32 steps
# that drifts past the tolerance above for these settings, so they run in float64, where
# compiled and eager agree to ~1e-13; the float32 update itself is bit-exact
# (test_update_kernel_is_the_eager_rule_bit_for_bit).
RMSPROP_OPTIONS = {
    "momentum_wd": lambda ps: optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-6,
                                            weight_decay=1e-2, momentum=0.9),
    "centered_maximize": lambda ps: optim.RMSprop(ps, lr=1e-3, alpha=0.3, centered=True,
                                                  maximize=True),
    "centered_momentum_wd": lambda ps: optim.RMSprop(
        ps, lr=1e-3, alpha=0.95, eps=1e-7, weight_decay=1e-3, momentum=0.5, centered=True),
}


@pytest.mark.parametrize("name", sorted(RMSPROP_OPTIONS))
def test_rmsprop_options_match_eager_loop_in_float64(name):
    eager, compiled, opt_e, opt_c = _steps_match(
        lambda: MLP().double(), RMSPROP_OPTIONS[name], torch.randn(6, 20).double(),
        torch.randint(0, 5, (6,)), 10)
    _state_matches(eager, compiled, opt_e, opt_c)


def _state_matches(eager, compiled, opt_e, opt_c):
    # the optimizer state is the eager optimizer's: stepping eagerly afterwards continues it
    assert opt_c.state_dict()["param_groups"] == opt_e.state_dict()["param_groups"]
    for p, q in zip(eager.parameters(), compiled.parameters()):
        assert list(opt_c.state[q]) == list(opt_e.state[p])
        for k, v in opt_e.state[p].items():
            if isinstance(v, torch.Tensor):
                np.testing.assert_allclose(opt_c.state[q][k].numpy(), v.numpy(), rtol=1e-4,
                                           atol=1e-6)


def test_lenet_100_steps_match_eager_training():
    eager, compiled = _pair(LeNet)
    opt_e = optim.SGD(eager.parameters(), lr=0.01, momentum=0.9)
    opt_c = optim.SGD(compiled.parameters(), lr=0.01, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    step = torch.compile_step(lambda x, y: crit(compiled(x), y), opt_c)
    rng = np.random.default_rng(0)
    xs = [torch.from_numpy(rng.standard_normal((4, 1, 32, 32)).astype(np.float32))
          for _ in range(5)]
    ys = [torch.from_numpy(rng.integers(0, 10, 4)) for _ in range(5)]
    for i in range(100):
        x, y = xs[i % 5], ys[i % 5]
        opt_e.zero_grad()
        loss_e = crit(eager(x), y)
        loss_e.backward()
        opt_e.step()
        loss_c = step(x, y)
        np.testing.assert_allclose(loss_c.item(), loss_e.item(), rtol=1e-3, atol=1e-5)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-3,
                                   atol=1e-4)
    assert len(step._specs) == 1
    # the linear layers' weight gradients are updated in the GEMM that computes them, in one
    # kernel with the layer's input gradient (masked by the relu before fc2 and fc3)
    kinds = [n.attrs["kind"] for n in step.graph.nodes if n.op == "fused"]
    assert sorted(k for k in kinds if k.endswith("gemm_sgd_step")) == \
        ["gemm_gemm_sgd_step"] + ["gemm_threshold_backward_gemm_sgd_step"] * 2


def test_learning_rate_change_does_not_recompile():
    torch.manual_seed(1)
    model = MLP()
    opt = optim.SGD(model.parameters(), lr=0.1)
    crit = nn.MSELoss()
    step = torch.compile_step(lambda x, y: crit(model(x), y), opt)
    x, y = torch.randn(4, 20), torch.randn(4, 5)
    step(x, y)
    before = model.l1.weight.detach().numpy().copy()
    opt.param_groups[0]["lr"] = 0.0
    step(x, y)
    np.testing.assert_array_equal(model.l1.weight.detach().numpy(), before)
    assert len(step._specs) == 1


class _SignDescent(optim.Optimizer):
    """An optimizer that declares no compiled update."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, dict(lr=lr))

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.data.sub_(group["lr"] * p.grad.sign())


def test_step_requires_scalar_loss_and_supported_optimizer():
    model = MLP()
    with pytest.raises(NotImplementedError, match="_SignDescent"):
        torch.compile_step(lambda x: model(x).sum(), _SignDescent(model.parameters()))
    step = torch.compile_step(lambda x: model(x), optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="scalar"):
        step(torch.randn(2, 20))


def test_switching_train_and_eval_respecialises():
    torch.manual_seed(2)
    eager = nn.Sequential(nn.Linear(20, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))
    compiled_net = nn.Sequential(nn.Linear(20, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))
    compiled_net.load_state_dict(eager.state_dict())
    opt_e = optim.SGD(eager.parameters(), lr=0.1)
    opt_c = optim.SGD(compiled_net.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    step = torch.compile_step(lambda x, y: crit(compiled_net(x), y), opt_c)
    x, y = torch.randn(6, 20), torch.randint(0, 5, (6,))
    for mode in ("train", "eval", "train"):
        eager.train(mode == "train")
        compiled_net.train(mode == "train")
        opt_e.zero_grad()
        loss_e = crit(eager(x), y)
        loss_e.backward()
        opt_e.step()
        np.testing.assert_allclose(step(x, y).item(), loss_e.item(), rtol=1e-5)
    assert len(step._specs) == 2
    np.testing.assert_allclose(compiled_net[1].running_mean.numpy(),
                               eager[1].running_mean.numpy(), rtol=1e-5, atol=1e-7)


class _TiedSquare(nn.Module):
    """One weight used by two layers: its gradient is a sum of two GEMMs, and the backward
    reads the weight after the first of them."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8) * 0.3)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(x @ self.w.t())
        return self.head(torch.tanh(h @ self.w))


def test_tied_weight_step_matches_eager():
    _steps_match(_TiedSquare, lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
                 torch.randn(5, 8), torch.randint(0, 3, (5,)), 5)


def test_rmsprop_param_groups_match_eager():
    """Per-group hyperparameters are per-parameter rows of the step's ``hyper`` inputs (in
    float64, see RMSPROP_OPTIONS)."""
    def make_opt(ps):
        ps = list(ps)
        return optim.RMSprop([{"params": ps[:2], "lr": 1e-3, "momentum": 0.9},
                              {"params": ps[2:], "lr": 3e-3, "weight_decay": 1e-2}],
                             alpha=0.9)
    _state_matches(*_steps_match(lambda: MLP().double(), make_opt, torch.randn(6, 20).double(),
                                 torch.randint(0, 5, (6,)), 5))


def test_compile_time_flags_must_agree_across_groups():
    model = MLP()
    ps = list(model.parameters())
    opt = optim.RMSprop([{"params": ps[:2]}, {"params": ps[2:], "centered": True}])
    step = torch.compile_step(lambda x, y: nn.MSELoss()(model(x), y), opt)
    with pytest.raises(NotImplementedError, match="centered"):
        step(torch.randn(4, 20), torch.randn(4, 5))


class _Update(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


UPDATES = {  # op, compile-time flags, number of state arrays, hyper vector
    "sgd_nesterov": ("sgd_step", dict(nesterov=True), 1, [0.1, 0.9, 0.0, 0.01, 0.0]),
    "adam_amsgrad": ("adam_step", dict(amsgrad=True), 3, [1e-3, 0.9, 0.999, 1e-8, 0.01, 3.0]),
    "rmsprop": ("rmsprop_step", {}, 3, [1e-2, 0.99, 1e-8, 0.0, 0.0]),
    "rmsprop_momentum_wd": ("rmsprop_step", {}, 3, [1e-2, 0.9, 1e-6, 0.01, 0.5]),
    "rmsprop_centered_maximize": ("rmsprop_step", dict(centered=True, maximize=True), 3,
                                  [1e-2, 0.3, 1e-6, 0.0, 0.9]),
    "adagrad": ("adagrad_step", {}, 1, [1e-2, 0.0, 0.0, 1e-10, 1.0]),
    "adagrad_decay_wd_maximize": ("adagrad_step", dict(maximize=True), 1,
                                  [1e-2, 0.1, 0.01, 1e-8, 7.0]),
}


# the default run: every rule and flag; plain RMSprop (the code of its momentum/weight decay
# case) with -m sweep
@sweep.keep(lambda p: p["name"] != "rmsprop")
@pytest.mark.parametrize("name", sorted(UPDATES))
def test_update_kernel_is_the_eager_rule_bit_for_bit(name):
    """The C update loop follows the numpy rule operation by operation: the same float32
    results. (In float64 the numpy rule rounds the product of a fused step separately, so
    results may differ in the last bit there.)"""
    dtype = np.float32
    from tracenet.optim import update_ops as optim_step
    op, flags, n_state, hyper = UPDATES[name]
    fn = getattr(optim_step, op)
    rng = np.random.default_rng(0)
    p, g, *state = (rng.standard_normal(37).astype(dtype) for _ in range(2 + n_state))
    # running averages of squares above the squared averages, as in training
    state = [np.abs(s) * (0.1 if i > 0 else 1) + (1 if i == 0 else 0)
             for i, s in enumerate(state)]
    args = [torch.from_numpy(a) for a in [p, g] + state + [np.array(hyper)]]
    update = _Update(lambda *a: fn(*a, **flags))
    eager = update(*args)
    with torch.no_grad():
        compiled = torch.compile(update)(*args)
    for e, c in zip(eager, compiled):
        np.testing.assert_array_equal(c.numpy(), e.numpy())


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.RMSprop, optim.Adagrad],
                         ids=lambda c: c.__name__)
def test_hyper_layout_is_documented_by_the_template_that_reads_it(cls):
    from tracenet.codegen.templates import template_dir
    update = cls.compiled_update
    rule = update.op[:-len("_step")]
    with open(f"{template_dir()}/{rule}_update.c.j2") as f:
        text = " ".join(f.read().split())
    for i, name in enumerate(update.hyper):
        assert f"h[{i}] {name}" in text, (rule, name)


def test_frozen_parameter_gets_no_gradient_and_no_update_as_in_eager_mode():
    """A parameter with requires_grad=False, though the optimizer holds it, is left alone by
    the eager step (no .grad, so no update and no state): so by the compiled one."""
    eager, compiled = _pair(MLP)
    for m in (eager, compiled):
        m.l1.weight.requires_grad_(False)
    opt_e = optim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    opt_c = optim.SGD(compiled.parameters(), lr=0.05, momentum=0.9)
    frozen = compiled.l1.weight.detach().numpy().copy()
    crit = nn.CrossEntropyLoss()
    step = torch.compile_step(lambda a, b: crit(compiled(a), b), opt_c)
    x, y = torch.randn(6, 20), torch.randint(0, 5, (6,))
    for _ in range(3):
        opt_e.zero_grad()
        loss_e = crit(eager(x), y)
        loss_e.backward()
        opt_e.step()
        np.testing.assert_allclose(step(x, y).item(), loss_e.item(), rtol=1e-5)
    np.testing.assert_array_equal(compiled.l1.weight.detach().numpy(), frozen)
    assert compiled.l1.weight.grad is None and compiled.l1.weight not in opt_c.state
    _state_matches(eager, compiled, opt_e, opt_c)
