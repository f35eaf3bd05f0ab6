"""Fused optimizer steps (tracenet/fused_optim.py): one C call per ``step()``, the same
numbers as the numpy rules, and PyTorch's."""
import os

import numpy as np
import pytest

import tracenet
import tracenet.optim as optim
from tracenet import fused_optim
from tracenet.optim import _functional, lr_scheduler
from tracenet.runtime import toolchain
from tracenet.tensor import Tensor

torch = pytest.importorskip("torch")

SHAPES = [(4, 3), (7,), (), (2, 3, 5), (33,)]
STEPS = 20


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv(fused_optim.ENV, raising=False)


def _arrays(seed, dtype, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]


def _grads(seed, dtype, steps=STEPS, none_at=(), shapes=SHAPES):
    """Per step, a gradient per parameter (None at the (step, index) pairs ``none_at``)."""
    rng = np.random.default_rng(seed)
    return [[None if (k, i) in none_at else np.asarray(rng.standard_normal(s), dtype=dtype)
             for i, s in enumerate(shapes)] for k in range(steps)]


def _groups(params, spec):
    if spec is None:
        return list(params)
    return [dict({"params": [params[i] for i in idx]}, **opts) for idx, opts in spec]


class _Run:
    """One optimizer over parameters made from ``arrays``: ``lib`` "fused" or "numpy"
    (tracenet: its default step, or the numpy one forced by the environment) or "torch"."""

    def __init__(self, lib, name, kwargs, spec, arrays):
        self.lib = lib
        if lib == "torch":
            self.params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
            self.opt = getattr(torch.optim, name)(_groups(self.params, spec), **kwargs)
        else:
            self.params = [Tensor._wrap(a.copy(), requires_grad=True) for a in arrays]
            self.opt = getattr(optim, name)(_groups(self.params, spec), **kwargs)

    def step(self, grads):
        for p, g in zip(self.params, grads):
            if g is None:
                p.grad = None
            elif self.lib == "torch":
                p.grad = torch.from_numpy(g.copy())
            else:
                p.grad = Tensor._wrap(g.copy())
        if self.lib == "numpy":
            # (not ``fused=False``: a state dict carries it to the optimizer that loads it)
            os.environ[fused_optim.ENV] = "0"
            try:
                self.opt.step()
            finally:
                del os.environ[fused_optim.ENV]
        else:
            self.opt.step()

    def values(self):
        return [p.detach().numpy() for p in self.params]

    def fused_steps(self):
        """The compiled updates this optimizer made (None: could not compile)."""
        fused = self.opt.__dict__.get("_fused_update")
        return [] if fused is None else list(fused.specs.values())


def _close(a, b, rtol, what):
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype, what
        scale = max(1.0, float(np.max(np.abs(y), initial=0.0)))
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * 0.1 * scale,
                                   err_msg=f"{what}, param {i}")


def _states(opt):
    """optimizer.state_dict()["state"] as {index: {name: numpy array or number}}."""
    out = {}
    for k, st in opt.state_dict()["state"].items():
        out[k] = {n: (v.detach().numpy() if hasattr(v, "detach") else np.asarray(v))
                  for n, v in st.items()}
    return out


def _compare(name, kwargs, spec=None, dtype=np.float32, none_at=(), per_step=None,
             shapes=SHAPES, steps=STEPS):
    """Fused, numpy and torch side by side over ``steps`` steps; returns the three runs."""
    arrays = _arrays(0, dtype, shapes)
    runs = [_Run(lib, name, kwargs, spec, arrays) for lib in ("fused", "numpy", "torch")]
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    # tracenet's square roots are correctly rounded, torch's CPU ones are not (MKL)
    rtol_torch = 1e-5 if dtype == np.float32 else 1e-12
    for k, grads in enumerate(_grads(1, dtype, steps, none_at, shapes)):
        for r in runs:
            r.step(grads)
            if per_step is not None:
                per_step(r, k)
        fused, numpy_, th = (r.values() for r in runs)
        _close(fused, numpy_, rtol, f"{name} {kwargs} fused vs numpy, step {k}")
        _close(fused, th, rtol_torch, f"{name} {kwargs} fused vs torch, step {k}")
    sf, sn, st = (_states(r.opt) for r in runs)
    assert list(sf) == list(sn) == list(st)
    for idx in st:
        assert list(sf[idx]) == list(sn[idx]) == list(st[idx])
        for key in st[idx]:
            _close([sf[idx][key]], [sn[idx][key]], rtol, f"state {key}")
            _close([sf[idx][key]], [st[idx][key]], rtol_torch, f"state {key} vs torch")
    assert runs[0].opt.state_dict()["param_groups"] == runs[1].opt.state_dict()["param_groups"]
    return runs


CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.5, weight_decay=0.2, maximize=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.01, maximize=True)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.05, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, alpha=0.9, maximize=True, eps=1e-4, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.5, maximize=True, eps=1e-6)),
]


def _id(case):
    return case[0] + "(" + ",".join(f"{k}={v}" for k, v in case[1].items()) + ")"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_fused_matches_numpy_and_torch(case):
    fused, numpy_, _ = _compare(*case)
    steps = fused.fused_steps()
    assert len(steps) == 1 and steps[0] is not None  # one specialisation, compiled once
    assert numpy_.fused_steps() == []


@pytest.mark.parametrize("case", [CASES[3], CASES[9], CASES[12], CASES[17], CASES[19]],
                         ids=_id)
def test_float64_parameters(case):
    fused, _, _ = _compare(*case, dtype=np.float64)
    assert fused.fused_steps()[0] is not None
    for st in fused.opt.state.values():
        for key, v in st.items():
            assert v._data.dtype == (np.float32 if key == "step" else np.float64)


GROUPS = [
    ("SGD", dict(lr=0.1, momentum=0.9), [((0, 1), {"lr": 0.3, "momentum": 0.5}),
                                         ((2,), {"nesterov": True}), ((3, 4), {"momentum": 0})]),
    ("Adam", dict(lr=0.02), [((0, 1), {"lr": 0.05, "amsgrad": True}),
                             ((2, 3, 4), {"betas": (0.5, 0.6), "weight_decay": 0.3})]),
    ("AdamW", dict(lr=0.01), [((0, 4), {"lr": 0.003}), ((1, 2, 3), {"maximize": True})]),
    ("RMSprop", dict(lr=0.01), [((0, 1), {"lr": 0.002, "centered": True}),
                                ((2, 3, 4), {"momentum": 0.3})]),
    ("Adagrad", dict(lr=0.1), [((0, 1), {"lr": 0.05, "lr_decay": 0.1}), ((2, 3, 4), {})]),
]


@pytest.mark.parametrize("case", GROUPS, ids=[g[0] for g in GROUPS])
def test_param_groups_with_their_own_lrs_and_flags_in_one_call(case):
    fused, _, _ = _compare(*case)
    (step,) = fused.fused_steps()
    # one entry point, one update node per parameter, whatever flags each group has
    assert len(step.executable.arguments) == 1
    assert len(step.params) == len(SHAPES)


def test_one_c_call_per_step(monkeypatch):
    arrays = _arrays(0, np.float32)
    run = _Run("fused", "Adam", dict(lr=0.01), None, arrays)
    grads = _grads(1, np.float32, steps=3)
    run.step(grads[0])
    (step,) = run.fused_steps()
    calls = []
    inner = step._call
    monkeypatch.setattr(step, "_call", lambda *a: calls.append(1) or inner(*a))
    run.step(grads[1])
    run.step(grads[2])
    assert len(calls) == 2


def test_params_without_grad_are_skipped_as_in_eager():
    none_at = {(0, 1), (1, 1), (2, 0), (3, 3), (4, 2), (4, 4)}
    for name, kwargs in [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01)),
                         ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
                         ("Adagrad", dict(lr=0.1))]:
        fused, _, _ = _compare(name, kwargs, none_at=none_at)
        # every set of parameters with a gradient is a specialisation of its own: steps 0-1,
        # 2, 3, 4 and all the others
        assert len(fused.fused_steps()) == 5


def test_sgd_without_momentum_keeps_no_state():
    fused, _, th = _compare("SGD", dict(lr=0.1, weight_decay=0.1))
    assert len(fused.opt.state) == 0 and len(th.opt.state) == 0
    # with momentum, plain dicts (a checkpoint that torch loads with weights_only holds them)
    fused, _, _ = _compare("SGD", dict(lr=0.1, momentum=0.5))
    assert fused.fused_steps() and {type(st) for st in fused.opt.state.values()} == {dict}


def test_scheduler_changes_lr_without_recompiling():
    arrays = _arrays(0, np.float32)
    runs = [_Run(lib, "Adam", dict(lr=0.05), [((0, 1), {"lr": 0.1}), ((2, 3, 4), {})], arrays)
            for lib in ("fused", "numpy", "torch")]
    scheds = [lr_scheduler.StepLR(r.opt, step_size=2, gamma=0.5) for r in runs[:2]]
    scheds.append(torch.optim.lr_scheduler.StepLR(runs[2].opt, step_size=2, gamma=0.5))
    for grads in _grads(1, np.float32, steps=10):
        for r, s in zip(runs, scheds):
            r.step(grads)
            s.step()
        _close(runs[0].values(), runs[1].values(), 1e-6, "fused vs numpy")
        _close(runs[0].values(), runs[2].values(), 1e-5, "fused vs torch")
    assert runs[0].opt.param_groups[0]["lr"] == 0.1 * 0.5 ** 5
    assert len(runs[0].fused_steps()) == 1


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
                                         ("Adam", dict(lr=0.01, amsgrad=True)),
                                         ("RMSprop", dict(lr=0.01, momentum=0.5,
                                                          centered=True)),
                                         ("Adagrad", dict(lr=0.1, lr_decay=0.01))])
def test_state_dict_round_trips_between_the_paths(name, kwargs, monkeypatch):
    """Steps 0-9 on one path, its state dict loaded into a fresh optimizer on the other path
    for steps 10-19: the same as 20 steps on either path alone."""
    arrays = _arrays(0, np.float32)
    grads = _grads(1, np.float32)
    whole = _Run("fused", name, kwargs, None, arrays)
    for g in grads:
        whole.step(g)
    for first, second in (("fused", "numpy"), ("numpy", "fused")):
        a = _Run(first, name, kwargs, None, arrays)
        for g in grads[:10]:
            a.step(g)
        b = _Run(second, name, kwargs, None, [v.copy() for v in a.values()])
        b.opt.load_state_dict(a.opt.state_dict())
        for g in grads[10:]:
            b.step(g)
        _close(b.values(), whole.values(), 1e-6, f"{first} then {second}")
        assert bool(b.fused_steps()) == (second == "fused")
    # loading into the same optimizer between fused steps: the update follows the new state
    c = _Run("fused", name, kwargs, None, arrays)
    for g in grads[:10]:
        c.step(g)
    saved = {k: {n: v.clone() for n, v in st.items()} for k, st in c.opt.state_dict()["state"]
             .items()}
    values = [v.copy() for v in c.values()]
    for g in grads[10:15]:
        c.step(g)
    c.opt.load_state_dict({"state": saved, "param_groups": c.opt.state_dict()["param_groups"]})
    for p, v in zip(c.params, values):
        p._data[...] = v
    for g in grads[10:]:
        c.step(g)
    _close(c.values(), whole.values(), 1e-6, "reloaded")


def test_closure_and_versions():
    p = Tensor._wrap(np.ones(5, np.float32), requires_grad=True)
    opt = optim.Adam([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    v = p._version
    loss = opt.step(closure)
    assert float(loss.item()) == 5.0
    assert opt.__dict__["_fused_update"].specs
    assert p._version == v + 1
    opt.step(closure)
    assert p._version == v + 2 and opt.state[p]["exp_avg"]._version == 2
    assert float(opt.state[p]["step"].item()) == 2.0
    q = torch.nn.Parameter(torch.ones(5))
    th = torch.optim.Adam([q], lr=0.1)
    for _ in range(2):
        th.zero_grad()
        (q * q).sum().backward()
        th.step()
    np.testing.assert_allclose(p._data, q.detach().numpy(), rtol=1e-6)


def _one_param_opt(**kwargs):
    p = Tensor._wrap(np.ones(3, np.float32), requires_grad=True)
    p.grad = Tensor._wrap(np.ones(3, np.float32))
    return p, optim.Adam([p], lr=0.1, **kwargs)


def test_opting_out(monkeypatch):
    p, opt = _one_param_opt(fused=False)
    opt.step()
    assert not opt.__dict__["_fused_update"].specs
    p, opt = _one_param_opt(differentiable=True)
    opt.step()
    assert not opt.__dict__["_fused_update"].specs
    monkeypatch.setenv(fused_optim.ENV, "0")
    p, opt = _one_param_opt()
    opt.step()
    assert not opt.__dict__["_fused_update"].specs
    np.testing.assert_allclose(p._data, np.full(3, 0.9, np.float32), rtol=1e-6)
    monkeypatch.setenv(fused_optim.ENV, "1")
    opt.step()
    assert opt.__dict__["_fused_update"].specs


def test_capturable_raises_as_in_eager():
    p, opt = _one_param_opt(capturable=True)
    with pytest.raises(AssertionError, match="capturable=True"):
        opt.step()


def test_fused_and_foreach_errors_are_torch_s():
    for lib in (tracenet, torch):
        p = torch.nn.Parameter(torch.ones(2)) if lib is torch else \
            Tensor._wrap(np.ones(2, np.float32), requires_grad=True)
        with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True`"):
            lib.optim.Adam([p], fused=True, foreach=True)
        with pytest.raises(RuntimeError, match="`fused` does not support `differentiable`"):
            lib.optim.SGD([p], fused=True, differentiable=True)


def test_replaced_rule_takes_the_numpy_path(monkeypatch):
    seen = []

    def sqrt(a, out=None):
        seen.append(1)
        return np.sqrt(a, out=out)

    monkeypatch.setattr(_functional, "_sqrt", sqrt)
    p, opt = _one_param_opt()
    opt.step()
    assert seen and not opt.__dict__["_fused_update"].specs


def test_param_replaced_by_another_shape_respecialises():
    p, opt = _one_param_opt()
    opt.step()
    p.data = tracenet.ones(4)
    p.grad = tracenet.ones(4)
    opt.state.clear()
    opt.step()
    (step,) = opt.__dict__["_fused_update"].specs.values()
    assert step.metas == [((4,), np.float32)]
    np.testing.assert_allclose(p._data, np.full(4, 0.9, np.float32), rtol=1e-6)
    assert opt.state[p]["exp_avg"].shape == (4,)


@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")
@pytest.mark.parametrize("kind", ["repeated", "empty"])
def test_repeated_and_empty_parameters_take_the_numpy_path(kind, monkeypatch):
    results, opts, params = [], [], []
    for env in ("1", "0"):
        monkeypatch.setenv(fused_optim.ENV, env)
        p = Tensor._wrap(np.ones(3, np.float32), requires_grad=True)
        e = Tensor._wrap(np.ones(0, np.float32), requires_grad=True)
        p.grad, e.grad = Tensor._wrap(np.ones(3, np.float32)), Tensor._wrap(np.ones(0, np.float32))
        opts.append(optim.Adam([p, p] if kind == "repeated" else [p, e], lr=0.1))
        opts[-1].step()
        opts[-1].step()
        results.append(p._data.copy())
        params.append(p)
    np.testing.assert_array_equal(results[0], results[1])
    assert float(opts[0].state[params[0]]["step"].item()) == (4.0 if kind == "repeated" else 2.0)
    assert list(opts[0].__dict__["_fused_update"].specs.values()) == [None]


def test_state_of_another_shape_is_not_passed_to_c():
    p, opt = _one_param_opt()
    opt.step()
    opt.state[p]["exp_avg"] = tracenet.zeros(2)
    with pytest.raises(ValueError):  # numpy's broadcasting error, as in eager
        opt.step()


def test_no_compiler_runs_the_numpy_step_and_says_so(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRACENET_DEBUG", "compile")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    toolchain.reset()
    try:
        p, opt = _one_param_opt()
        opt.step()
        opt.step()
    finally:
        monkeypatch.delenv("CC")
        toolchain.reset()
    assert list(opt.__dict__["_fused_update"].specs.values()) == [None]
    err = capfd.readouterr().err
    assert err.count("[tracenet:compile] Adam.step(): numpy update") == 1  # tried once
    assert "/nonexistent/cc" in err
    assert float(opt.state[p]["step"].item()) == 2.0
    # numpy's two steps: the first moves by lr, the second by about lr again
    np.testing.assert_allclose(p._data, np.full(3, 0.8, np.float32), rtol=1e-5)


# parameters large enough for their update to be split between threads (codegen's
# Parallelism.memory), with sizes that are not whole cache lines or whole thread blocks
LARGE = [(397, 263), (100_003,), (5,)]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True)),
    ("Adagrad", dict(lr=0.1, weight_decay=0.1)),
])
def test_large_parameters_updated_by_threads_match_numpy_and_torch(name, kwargs, threads):
    before = tracenet.get_num_threads()
    tracenet.set_num_threads(threads)
    try:
        runs = _compare(name, kwargs, shapes=LARGE, steps=4)
    finally:
        tracenet.set_num_threads(before)
    (spec,) = runs[0].fused_steps()
    assert spec is not None, "the update did not compile"
