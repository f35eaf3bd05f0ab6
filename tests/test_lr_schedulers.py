"""tracenet.optim.lr_scheduler against torch.optim.lr_scheduler: the lr (and momentum / beta1)
sequences step by step, state dicts and resuming from them, combinations, errors."""
import copy
import warnings

import numpy as np
import pytest

import tracenet
import tracenet.optim as optim
from tracenet.optim import lr_scheduler
from tracenet.tensor import Tensor

torch = pytest.importorskip("torch")

SHAPES = [(3, 2), (2,), (2, 2), (2,)]  # a tiny two-layer model's weights and biases
LRS = (0.1, 0.03)


# --- helpers -------------------------------------------------------------------------------
class _Side:
    """One library's optimizer over the tiny model, with two parameter groups."""

    def __init__(self, kind, opt_name="SGD", opt_kwargs=None, seed=0):
        self.kind = kind
        self.optim = optim if kind == "tn" else torch.optim
        self.sched = self.optim.lr_scheduler
        rng = np.random.default_rng(seed)
        arrays = [np.asarray(rng.standard_normal(s), np.float32) for s in SHAPES]
        if kind == "tn":
            self.params = [Tensor._wrap(a, requires_grad=True) for a in arrays]
        else:
            self.params = [torch.nn.Parameter(torch.from_numpy(a)) for a in arrays]
        if opt_kwargs is None:
            opt_kwargs = dict(momentum=0.9) if opt_name == "SGD" else {}
        groups = [{"params": self.params[:2], "lr": LRS[0]}, {"params": self.params[2:]}]
        self.opt = getattr(self.optim, opt_name)(groups, lr=LRS[1], **opt_kwargs)
        self.rng = np.random.default_rng(seed + 1)

    def optimizer_step(self):
        for p in self.params:
            g = np.asarray(self.rng.standard_normal(tuple(p.shape)), np.float32)
            p.grad = Tensor._wrap(g) if self.kind == "tn" else torch.from_numpy(g)
        self.opt.step()

    def values(self, key):
        return [_num(group[key]) for group in self.opt.param_groups]


def _num(x):
    if isinstance(x, (list, tuple)):
        return [_num(v) for v in x]
    if isinstance(x, (Tensor, torch.Tensor)):
        return float(x.item())
    return x


def _equal(a, b, where):
    """Equal structures. The floats are compared exactly: the schedulers evaluate torch's
    formulas in the same order, so the lr sequences agree to the last bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a, b)
        for k in a:
            _equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    elif isinstance(a, (Tensor, torch.Tensor)) or isinstance(b, (Tensor, torch.Tensor)):
        _equal(_num(a), _num(b), where)
    elif callable(a) and callable(b):
        pass
    else:
        assert a == b, (where, a, b)


def _compare(tn, th, tn_s, th_s, where):
    _equal(_num(tn_s.get_last_lr()), _num(th_s.get_last_lr()), where + " get_last_lr")
    _equal(tn.values("lr"), th.values("lr"), where + " lr")
    for key in ("momentum", "betas"):
        if key in th.opt.defaults:
            _equal(tn.values(key), th.values(key), where + " " + key)


def _messages(record):
    return [str(w.message) for w in record]


def _run(make, step_args=None, steps=40, opt_name="SGD", opt_kwargs=None, resume_at=None):
    """Build the scheduler with ``make(sched_module, optimizer)`` in both libraries and step
    them side by side; ``step_args(k)`` gives the arguments of the k-th ``step``. Compares the
    warnings too. With ``resume_at``, a fresh tracenet optimizer and scheduler load the state
    dicts saved after that step and must continue exactly like the original."""
    sides, scheds, records = {}, {}, {}
    for kind in ("tn", "th"):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            side = _Side(kind, opt_name, opt_kwargs)
            scheds[kind] = make(side.sched, side.opt)
        sides[kind], records[kind] = side, rec
    tn, th = sides["tn"], sides["th"]
    _compare(tn, th, scheds["tn"], scheds["th"], "init")
    resumed = None
    for k in range(steps):
        args = step_args(k) if step_args else ()
        for kind in ("tn", "th"):
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                sides[kind].optimizer_step()
                scheds[kind].step(*args)
            records[kind] += rec
        _compare(tn, th, scheds["tn"], scheds["th"], f"step {k}")
        for a, b in zip(tn.params, th.params):
            np.testing.assert_allclose(a._data, b.detach().numpy(), rtol=1e-5, atol=1e-6)
        if resumed is not None:
            r_side, r_sched = resumed
            r_side.optimizer_step()
            r_sched.step(*args)
            _compare(r_side, th, r_sched, scheds["th"], f"resumed, step {k}")
        if k == resume_at:
            sd_opt = copy.deepcopy(tn.opt.state_dict())
            sd_sched = copy.deepcopy(scheds["tn"].state_dict())
            r_side = _Side("tn", opt_name, opt_kwargs)
            r_side.rng = copy.deepcopy(tn.rng)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r_sched = make(r_side.sched, r_side.opt)
            r_side.opt.load_state_dict(sd_opt)
            r_sched.load_state_dict(sd_sched)
            resumed = (r_side, r_sched)
    assert _messages(records["tn"]) == _messages(records["th"])
    _equal(scheds["tn"].state_dict(), scheds["th"].state_dict(), "state_dict")
    _equal(tn.opt.state_dict()["param_groups"], th.opt.state_dict()["param_groups"],
           "param_groups")
    return scheds


# --- one scheduler at a time ---------------------------------------------------------------
CASES = [
    ("CosineAnnealingLR", dict(T_max=10)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
    ("CosineAnnealingWarmRestarts", dict(T_0=5)),
    ("CosineAnnealingWarmRestarts", dict(T_0=3, T_mult=2, eta_min=1e-3)),
    ("LinearLR", dict()),
    ("LinearLR", dict(start_factor=0.25, end_factor=0.5, total_iters=12)),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.0, total_iters=20)),
    ("ConstantLR", dict()),
    ("ConstantLR", dict(factor=0.5, total_iters=11)),
    ("PolynomialLR", dict()),
    ("PolynomialLR", dict(total_iters=25, power=2.0)),
    ("PolynomialLR", dict(total_iters=30, power=0.5)),
    ("MultiplicativeLR", dict(lr_lambda=lambda e: 0.95)),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=5)),
    ("CyclicLR", dict(base_lr=[0.01, 0.002], max_lr=[0.1, 0.05], step_size_up=4,
                      step_size_down=7, mode="triangular2")),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=6, mode="exp_range",
                      gamma=0.97, base_momentum=0.7, max_momentum=0.95)),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=3,
                      scale_fn=lambda x: 1 / (1.0 + x), scale_mode="iterations")),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=3, scale_fn=lambda x: 0.5 ** x)),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=4, cycle_momentum=False)),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=40)),
    ("OneCycleLR", dict(max_lr=[0.5, 0.2], epochs=4, steps_per_epoch=10, pct_start=0.4,
                        anneal_strategy="linear")),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=45, three_phase=True, div_factor=10.0,
                        final_div_factor=100.0)),
    ("OneCycleLR", dict(max_lr=[0.5, 0.3], total_steps=40, base_momentum=[0.8, 0.7],
                        max_momentum=[0.9, 0.99])),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=40, cycle_momentum=False, pct_start=0.25)),
]
MOMENTUM_CYCLING = ("CyclicLR", "OneCycleLR")


def _case_id(case):
    name, kwargs = case
    return name + "-" + "-".join(f"{k}" for k in kwargs)


# Adam too for the schedulers that cycle the momentum (there: beta1)
OPT_CASES = [(name, kwargs, opt_name) for name, kwargs in CASES
             for opt_name in (("SGD", "Adam") if name in MOMENTUM_CYCLING else ("SGD",))]


@pytest.mark.parametrize("name,kwargs,opt_name", OPT_CASES,
                         ids=[_case_id(c[:2]) + "-" + c[2] for c in OPT_CASES])
def test_scheduler_matches_torch(name, kwargs, opt_name):
    _run(lambda sched, opt: getattr(sched, name)(opt, **kwargs), opt_name=opt_name,
         resume_at=17)


def test_cyclic_lr_needs_momentum_to_cycle():
    for kind in ("tn", "th"):
        side = _Side(kind, "Adagrad", {})
        with pytest.raises(ValueError, match="optimizer must support momentum or beta1"):
            side.sched.CyclicLR(side.opt, 0.01, 0.1)
        with pytest.raises(ValueError, match="optimizer must support momentum or beta1"):
            side.sched.OneCycleLR(side.opt, 0.1, total_steps=10)
        side.sched.CyclicLR(side.opt, 0.01, 0.1, cycle_momentum=False)


def test_cyclic_lr_callable_scale_fn_state_dict():
    class Scale:
        def __init__(self):
            self.rate = 0.5

        def __call__(self, x):
            return self.rate ** x

    saved = {}
    for kind in ("tn", "th"):
        side = _Side(kind)
        s = side.sched.CyclicLR(side.opt, 0.01, 0.1, step_size_up=3, scale_fn=Scale())
        side.opt.step()
        s.step()
        saved[kind] = copy.deepcopy(s.state_dict())
        assert saved[kind]["_scale_fn_custom"] == {"rate": 0.5}
        other = Scale()
        other.rate = 0.1
        s2 = side.sched.CyclicLR(side.opt, 0.01, 0.1, step_size_up=3, scale_fn=other)
        s2.load_state_dict(copy.deepcopy(saved[kind]))
        assert other.rate == 0.5
    _equal(saved["tn"], saved["th"], "state_dict")


# --- ReduceLROnPlateau ---------------------------------------------------------------------
def _metrics(k):
    # improves, then plateaus, with some noise and a late improvement
    seq = [1.0, 0.8, 0.7, 0.69995, 0.7, 0.71, 0.7, 0.72, 0.7, 0.69, 0.5, 0.5, 0.5, 0.5, 0.5]
    return (seq[k % len(seq)] - 0.01 * (k // len(seq)),)


PLATEAU_CASES = [
    dict(),
    dict(patience=2),
    dict(mode="max", factor=0.5, patience=1, threshold=0.01, threshold_mode="abs"),
    dict(factor=0.5, patience=1, cooldown=2, min_lr=[0.01, 0.005]),
    dict(factor=0.2, patience=0, min_lr=0.001, eps=1e-3, threshold=0.05),
    dict(patience=1, threshold_mode="abs", threshold=0.0),
]


@pytest.mark.parametrize("kwargs", PLATEAU_CASES)
def test_reduce_lr_on_plateau_matches_torch(kwargs):
    _run(lambda sched, opt: sched.ReduceLROnPlateau(opt, **kwargs), step_args=_metrics,
         steps=45, resume_at=20)


def test_reduce_lr_on_plateau_tensor_metric_and_epoch():
    for kind in ("tn", "th"):
        side = _Side(kind)
        s = side.sched.ReduceLROnPlateau(side.opt, patience=0)
        metric = tracenet.tensor([1.0]) if kind == "tn" else torch.tensor([1.0])
        s.step(metric)
        s.step(metric)
        assert side.values("lr") == pytest.approx([0.01, 0.003])
        with pytest.warns(UserWarning, match="The epoch parameter"):
            s.step(2.0, epoch=7)
        assert s.last_epoch == 7


# --- combinations ----------------------------------------------------------------------------
def _sequential(sched, opt):
    warmup = sched.LinearLR(opt, start_factor=0.1, total_iters=5)
    cosine = sched.CosineAnnealingLR(opt, T_max=20, eta_min=0.001)
    return sched.SequentialLR(opt, [warmup, cosine], milestones=[5])


def _sequential_three(sched, opt):
    return sched.SequentialLR(
        opt, [sched.ConstantLR(opt, factor=0.5, total_iters=4),
              sched.ExponentialLR(opt, gamma=0.9),
              sched.StepLR(opt, step_size=3, gamma=0.5)], milestones=[6, 15])


def _chained(sched, opt):
    return sched.ChainedScheduler([sched.ConstantLR(opt, factor=0.1, total_iters=2),
                                   sched.ExponentialLR(opt, gamma=0.9)])


def _chained_cosine(sched, opt):
    return sched.ChainedScheduler([sched.LinearLR(opt, start_factor=0.2, total_iters=6),
                                   sched.CosineAnnealingLR(opt, T_max=15)], optimizer=opt)


def _sequential_of_chained(sched, opt):
    chained = sched.ChainedScheduler([sched.LinearLR(opt, start_factor=0.5, total_iters=3),
                                      sched.ExponentialLR(opt, gamma=0.95)])
    return sched.SequentialLR(opt, [chained, sched.PolynomialLR(opt, total_iters=20)],
                              milestones=[8])


COMBOS = [_sequential, _sequential_three, _chained, _chained_cosine, _sequential_of_chained]


@pytest.mark.parametrize("make", COMBOS, ids=[f.__name__.strip("_") for f in COMBOS])
def test_combinations_match_torch(make):
    _run(make, resume_at=9)


# --- step(epoch) -----------------------------------------------------------------------------
def test_warm_restarts_fractional_epochs():
    for kwargs in (dict(T_0=4), dict(T_0=3, T_mult=2, eta_min=0.01)):
        iters = 5
        epochs = [e + i / iters for e in range(12) for i in range(iters)]
        _run(lambda sched, opt: sched.CosineAnnealingWarmRestarts(opt, **kwargs),
             step_args=lambda k: (epochs[k],), steps=len(epochs), resume_at=23)


def test_warm_restarts_errors():
    for kind in ("tn", "th"):
        side = _Side(kind)
        make = side.sched.CosineAnnealingWarmRestarts
        with pytest.raises(ValueError, match="Expected positive integer T_0, but got 0"):
            make(side.opt, T_0=0)
        with pytest.raises(ValueError, match="Expected positive integer T_0, but got 2.5"):
            make(side.opt, T_0=2.5)
        with pytest.raises(ValueError, match="Expected integer T_mult >= 1, but got 0"):
            make(side.opt, T_0=2, T_mult=0)
        with pytest.raises(ValueError, match="Expected float or int eta_min"):
            make(side.opt, T_0=2, eta_min="0")
        s = make(side.opt, T_0=2)
        with pytest.raises(ValueError, match="Expected non-negative epoch, but got -1"):
            s.step(-1)


@pytest.mark.parametrize("name,kwargs", [
    ("CosineAnnealingLR", dict(T_max=10, eta_min=0.01)),
    ("LinearLR", dict(start_factor=0.2, total_iters=6)),
    ("ConstantLR", dict(factor=0.3, total_iters=4)),
    ("PolynomialLR", dict(total_iters=8, power=1.5)),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=4)),
])
def test_step_with_epoch_uses_closed_form(name, kwargs):
    epochs = [3, 4, 9, 2, 12, 7, 0, 5]
    _run(lambda sched, opt: getattr(sched, name)(opt, **kwargs),
         step_args=lambda k: (epochs[k],), steps=len(epochs))


# --- resuming with last_epoch ----------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [
    ("CosineAnnealingLR", dict(T_max=10)),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=40)),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=5)),
])
def test_last_epoch_resume(name, kwargs):
    """A scheduler rebuilt with ``last_epoch`` from an optimizer that has ``initial_lr``."""
    def make(sched, opt):
        first = getattr(sched, name)(opt, **kwargs)
        for _ in range(6):
            opt.step()
            first.step()
        return getattr(sched, name)(opt, last_epoch=first.last_epoch, **kwargs)

    _run(make, steps=20)


# --- errors ------------------------------------------------------------------------------------
def _errors(sched, opt):
    """(callable, exception type, message regex) for invalid arguments."""
    return [
        (lambda: sched.OneCycleLR(opt, 0.1), ValueError,
         r"You must define either total_steps OR \(epochs AND steps_per_epoch\)"),
        (lambda: sched.OneCycleLR(opt, 0.1, epochs=3), ValueError,
         r"You must define either total_steps OR"),
        (lambda: sched.OneCycleLR(opt, 0.1, total_steps=0), ValueError,
         "Expected positive integer total_steps, but got 0"),
        (lambda: sched.OneCycleLR(opt, 0.1, total_steps=10.0), ValueError,
         "Expected positive integer total_steps, but got 10.0"),
        (lambda: sched.OneCycleLR(opt, 0.1, epochs=0, steps_per_epoch=3), ValueError,
         "Expected positive integer epochs, but got 0"),
        (lambda: sched.OneCycleLR(opt, 0.1, epochs=2, steps_per_epoch=-1), ValueError,
         "Expected positive integer steps_per_epoch, but got -1"),
        (lambda: sched.OneCycleLR(opt, 0.1, total_steps=10, pct_start=1.5), ValueError,
         "Expected float between 0 and 1 pct_start, but got 1.5"),
        (lambda: sched.OneCycleLR(opt, 0.1, total_steps=10, anneal_strategy="exp"),
         ValueError, "anneal_strategy must be one of 'cos' or 'linear', instead got exp"),
        (lambda: sched.OneCycleLR(opt, [0.1, 0.2, 0.3], total_steps=10), ValueError,
         "max_lr must have the same length as optimizer.param_groups. max_lr has 3 values, "
         "param_groups has 2."),
        (lambda: sched.OneCycleLR(object(), 0.1, total_steps=10), TypeError,
         "object is not an Optimizer"),
        (lambda: sched.ReduceLROnPlateau(opt, mode="avg"), ValueError, "mode avg is unknown!"),
        (lambda: sched.ReduceLROnPlateau(opt, threshold_mode="x"), ValueError,
         "threshold mode x is unknown!"),
        (lambda: sched.ReduceLROnPlateau(opt, factor=1.0), ValueError,
         r"Factor should be < 1.0."),
        (lambda: sched.ReduceLROnPlateau(opt, min_lr=[0.1]), ValueError,
         "expected 2 min_lrs, got 1"),
        (lambda: sched.ReduceLROnPlateau(object()), TypeError, "object is not an Optimizer"),
        (lambda: sched.CyclicLR(opt, 0.01, 0.1, mode="square"), ValueError,
         "mode is invalid and scale_fn is None"),
        (lambda: sched.CyclicLR(opt, [0.01], 0.1), ValueError,
         "base_lr must have the same length as optimizer.param_groups"),
        (lambda: sched.CyclicLR(opt, 0.01, 0.1, base_momentum=[0.1, 0.2, 0.3]), ValueError,
         "base_momentum must have the same length as optimizer.param_groups"),
        (lambda: sched.LinearLR(opt, start_factor=0), ValueError,
         "Starting multiplicative factor expected to be greater than 0 and less or equal to 1."),
        (lambda: sched.LinearLR(opt, end_factor=1.5), ValueError,
         "Ending multiplicative factor expected to be between 0 and 1."),
        (lambda: sched.ConstantLR(opt, factor=2.0), ValueError,
         "Constant multiplicative factor expected to be between 0 and 1."),
        (lambda: sched.SequentialLR(opt, [], []), ValueError,
         "SequentialLR expects at least one scheduler, but got no scheduler."),
        (lambda: sched.SequentialLR(opt, [sched.ConstantLR(opt), sched.ConstantLR(opt)], []),
         ValueError, "Sequential Schedulers expects number of schedulers provided to be one "
         "more than the number of milestone points, but got number of schedulers 2 and the "
         "number of milestones to be equal to 0"),
        (lambda: sched.SequentialLR(opt, [sched.ReduceLROnPlateau(opt)], []), ValueError,
         "SequentialLR does not support `ReduceLROnPlateau` scheduler"),
        (lambda: sched.SequentialLR(opt, [object()], []), TypeError,
         "SequentialLR at index 0 should have `optimizer` as its attribute."),
        (lambda: sched.ChainedScheduler([]), ValueError,
         "ChainedScheduler expects at least one scheduler to be chained, but got no "
         "scheduler."),
        (lambda: sched.ChainedScheduler([sched.ConstantLR(opt), sched.ReduceLROnPlateau(opt)]),
         ValueError, "ChainedScheduler does not support `ReduceLROnPlateau` scheduler as it "
         "requires additional kwargs to be specified when calling `step`, but got one at index 1"),
    ]


def test_errors_match_torch():
    tn, th = _Side("tn"), _Side("th")
    for (tn_fn, tn_exc, pattern), (th_fn, th_exc, _) in zip(_errors(tn.sched, tn.opt),
                                                            _errors(th.sched, th.opt)):
        with pytest.raises(th_exc, match=pattern):
            th_fn()
        with pytest.raises(tn_exc, match=pattern):
            tn_fn()


def test_schedulers_of_another_optimizer():
    for kind in ("tn", "th"):
        a, b = _Side(kind), _Side(kind)
        with pytest.raises(ValueError, match="expects all schedulers to belong to the same "
                                             "optimizer"):
            a.sched.SequentialLR(a.opt, [a.sched.ConstantLR(a.opt),
                                         a.sched.ConstantLR(b.opt)], milestones=[2])
        with pytest.raises(ValueError, match="expects all schedulers to belong to the same "
                                             "optimizer"):
            a.sched.ChainedScheduler([a.sched.ConstantLR(a.opt), a.sched.ConstantLR(b.opt)])


def test_one_cycle_too_many_steps():
    for kind in ("tn", "th"):
        side = _Side(kind)
        s = side.sched.OneCycleLR(side.opt, 0.1, total_steps=3)
        for _ in range(3):
            side.opt.step()
            s.step()
        with pytest.raises(ValueError, match="Tried to step 4 times. The specified number of "
                                             "total steps is 3"):
            s.step()


def test_get_lr_outside_step_warns():
    for kind in ("tn", "th"):
        side = _Side(kind)
        for s in (side.sched.CosineAnnealingLR(side.opt, 5), side.sched.LinearLR(side.opt),
                  side.sched.OneCycleLR(side.opt, 0.1, total_steps=10)):
            with pytest.warns(UserWarning, match="please use `get_last_lr\\(\\)`"):
                s.get_lr()


def test_scheduler_before_optimizer_step_warns():
    for kind in ("tn", "th"):
        side = _Side(kind)
        s = side.sched.OneCycleLR(side.opt, 0.1, total_steps=10)
        with pytest.warns(UserWarning, match=r"Detected call of `lr_scheduler.step\(\)` before"):
            s.step()


# --- with a compiled training step -----------------------------------------------------------
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_one_cycle_drives_compiled_step(opt_name, policy_cache):
    """The lr and momentum (beta1) a scheduler writes each step reach a ``compile_step`` without
    recompiling, and training matches the eager loop under the same schedule."""
    policy_cache("usual")
    import tracenet.nn as nn

    def make():
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    tracenet.manual_seed(0)
    eager, compiled = make(), make()
    compiled.load_state_dict(eager.state_dict())
    kwargs = dict(momentum=0.9) if opt_name == "SGD" else {}
    opt_e = getattr(optim, opt_name)(eager.parameters(), lr=0.01, **kwargs)
    opt_c = getattr(optim, opt_name)(compiled.parameters(), lr=0.01, **kwargs)
    crit = nn.CrossEntropyLoss()
    step = tracenet.compile_step(lambda a, b: crit(compiled(a), b), opt_c)
    sched_e = lr_scheduler.OneCycleLR(opt_e, 0.1, total_steps=15)
    sched_c = lr_scheduler.OneCycleLR(opt_c, 0.1, total_steps=15)
    x, y = tracenet.randn(5, 6), tracenet.randint(0, 3, (5,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(15):
            opt_e.zero_grad()
            loss = crit(eager(x), y)
            loss.backward()
            opt_e.step()
            sched_e.step()
            np.testing.assert_allclose(step(x, y).item(), loss.item(), rtol=1e-4, atol=1e-6)
            sched_c.step()
            assert sched_c.get_last_lr() == sched_e.get_last_lr()
    # a compiled step counts as the optimizer's step: no "scheduler before optimizer" warning
    assert not [w for w in caught if "optimizer.step()" in str(w.message)], \
        [str(w.message) for w in caught]
    for p, q in zip(eager.parameters(), compiled.parameters()):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-4,
                                   atol=1e-5)
    assert len(step._specs) == 1


# --- tensor learning rates -------------------------------------------------------------------
TENSOR_LR = [
    lambda S, o: S.CosineAnnealingLR(o, 5),
    lambda S, o: S.OneCycleLR(o, 0.1, total_steps=20),
    lambda S, o: S.CyclicLR(o, 0.01, 0.1, step_size_up=3),
    lambda S, o: S.SequentialLR(o, [S.LinearLR(o), S.CosineAnnealingLR(o, 5)], [3]),
    lambda S, o: S.CosineAnnealingWarmRestarts(o, 4, T_mult=2),
    lambda S, o: S.PolynomialLR(o, total_iters=8, power=2.0),
]


@pytest.mark.parametrize("make", TENSOR_LR)
def test_tensor_lr_filled_in_place(make):
    runs = {}
    for kind in ("tn", "th"):
        side = _Side(kind, "Adam", {})
        lib = tracenet if kind == "tn" else torch
        side.opt.param_groups[0]["lr"] = lib.tensor(0.01)
        lr = side.opt.param_groups[0]["lr"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = make(side.sched, side.opt)
            seq = []
            for _ in range(12):
                side.optimizer_step()
                s.step()
                assert side.opt.param_groups[0]["lr"] is lr
                seq.append((side.values("lr"), _num(s.get_last_lr()), side.values("betas")))
        runs[kind] = seq
    _equal(runs["tn"], runs["th"], "tensor lr")
