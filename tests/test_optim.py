"""tracenet.optim against torch.optim: parameter trajectories, state dicts, repr, errors."""
import copy
import warnings

import numpy as np
import pytest

import tracenet
import tracenet.optim as optim
from tracenet.optim import _functional
from tracenet.optim import lr_scheduler
from tracenet.tensor import Tensor

torch = pytest.importorskip("torch")

SHAPES = [(4, 3), (7,), (), (2, 3, 5)]
STEPS = 6


# --- helpers -------------------------------------------------------------------------------
def _arrays(seed, shapes=SHAPES, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]


def _tn_params(arrays):
    return [Tensor._wrap(a.copy(), requires_grad=True) for a in arrays]


def _th_params(arrays):
    return [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]


def _grad_sequence(seed, shapes=SHAPES, steps=STEPS, dtype=np.float32, none_at=()):
    """``steps`` lists of gradients; ``none_at`` holds (step, param index) pairs left None."""
    rng = np.random.default_rng(seed)
    seq = []
    for k in range(steps):
        grads = []
        for i, s in enumerate(shapes):
            g = np.asarray(rng.standard_normal(s), dtype=dtype)
            grads.append(None if (k, i) in none_at else g)
        seq.append(grads)
    return seq


def _set_grads(params, grads, lib):
    for p, g in zip(params, grads):
        if g is None:
            p.grad = None
        elif lib == "tn":
            p.grad = Tensor._wrap(g.copy())
        else:
            p.grad = torch.from_numpy(g.copy())


def _groups(params, spec):
    """``spec`` None: a plain list; otherwise a list of (indices, options) groups."""
    if spec is None:
        return list(params)
    return [dict({"params": [params[i] for i in idx]}, **opts) for idx, opts in spec]


def _tn_value(x):
    return x._data if isinstance(x, Tensor) else x


def _th_value(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else x


def _run_pair(name, kwargs, spec=None, seed=0, steps=STEPS, none_at=(), dtype=np.float32,
              check=None):
    """Run tracenet and torch side by side; ``check(tn_params, th_params, step)`` after each
    step. Returns both optimizers and parameter lists."""
    arrays = _arrays(seed, dtype=dtype)
    tn_p, th_p = _tn_params(arrays), _th_params(arrays)
    tn_opt = getattr(optim, name)(_groups(tn_p, spec), **kwargs)
    th_opt = getattr(torch.optim, name)(_groups(th_p, spec), **kwargs)
    for k, grads in enumerate(_grad_sequence(seed + 1, steps=steps, dtype=dtype,
                                             none_at=none_at)):
        _set_grads(tn_p, grads, "tn")
        _set_grads(th_p, grads, "th")
        tn_opt.step()
        th_opt.step()
        if check is not None:
            check(tn_p, th_p, k)
    return tn_opt, th_opt, tn_p, th_p


def _assert_close(tn_p, th_p, k, exact=False):
    for i, (a, b) in enumerate(zip(tn_p, th_p)):
        a, b = a._data, b.detach().numpy()
        assert a.dtype == b.dtype
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=f"step {k}, param {i}")
        else:
            # ulp-level sqrt differences move whole arrays; atol follows the array's scale
            scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * scale,
                                       err_msg=f"step {k}, param {i}")


def _assert_states_close(tn_opt, th_opt, exact=False):
    tn_sd, th_sd = tn_opt.state_dict(), th_opt.state_dict()
    assert list(tn_sd) == list(th_sd) == ["state", "param_groups"]
    assert list(tn_sd["state"]) == list(th_sd["state"])
    for idx, th_state in th_sd["state"].items():
        tn_state = tn_sd["state"][idx]
        assert list(tn_state) == list(th_state)
        for key, th_v in th_state.items():
            tn_v = tn_state[key]
            assert isinstance(tn_v, Tensor) == isinstance(th_v, torch.Tensor)
            a, b = _tn_value(tn_v), _th_value(th_v)
            assert a.dtype == b.dtype and a.shape == b.shape, key
            if exact or key == "step":
                np.testing.assert_array_equal(a, b, err_msg=key)
            else:
                # buffers such as RMSprop's momentum sum many terms; compare on their scale
                scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * scale, err_msg=key)
    assert len(tn_sd["param_groups"]) == len(th_sd["param_groups"])
    for g1, g2 in zip(tn_sd["param_groups"], th_sd["param_groups"]):
        assert list(g1) == list(g2)
        assert g1 == g2


# --- trajectories against torch ---------------------------------------------------------
TWO_GROUPS = [((0, 1), {"lr": 0.05}), ((2, 3), {})]

CASES = [
    ("SGD", dict(lr=0.1), None),
    ("SGD", dict(lr=0.1, momentum=0.9), None),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3), None),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True), None),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1), None),
    ("SGD", dict(lr=0.1, weight_decay=0.01, maximize=True), None),
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.5, weight_decay=0.2, maximize=True), None),
    ("SGD", dict(lr=0.1, momentum=0.9), [((0, 1), {"lr": 0.3, "momentum": 0.5}),
                                         ((2, 3), {"nesterov": True})]),
    ("Adam", dict(), None),
    ("Adam", dict(lr=0.01), None),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6), None),
    ("Adam", dict(lr=0.01, weight_decay=0.1), None),
    ("Adam", dict(lr=0.01, amsgrad=True), None),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.05, maximize=True), None),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True), None),
    ("Adam", dict(lr=0.02), [((0, 1), {"lr": 0.05, "amsgrad": True}),
                             ((2, 3), {"betas": (0.5, 0.6), "weight_decay": 0.3})]),
    ("AdamW", dict(), None),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True), None),
    ("AdamW", dict(lr=0.01), TWO_GROUPS),
    ("RMSprop", dict(), None),
    ("RMSprop", dict(lr=0.01, alpha=0.9), None),
    ("RMSprop", dict(lr=0.01, centered=True), None),
    ("RMSprop", dict(lr=0.01, momentum=0.9), None),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1), None),
    ("RMSprop", dict(lr=0.01, maximize=True, eps=1e-4, weight_decay=0.01), None),
    ("RMSprop", dict(lr=0.01), [((0, 1), {"lr": 0.002, "centered": True}),
                                ((2, 3), {"momentum": 0.3})]),
    ("Adagrad", dict(), None),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1), None),
    ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.5, maximize=True, eps=1e-6), None),
    ("Adagrad", dict(lr=0.1), TWO_GROUPS),
]


def _case_id(case):
    name, kwargs, spec = case
    opts = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{name}({opts}){'-groups' if spec else ''}"


def _uses_sqrt(name):
    return name != "SGD"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_trajectory_matches_torch(case):
    name, kwargs, spec = case
    # SGD has no sqrt and agrees bit for bit; the others differ only through torch's CPU
    # sqrt (MKL), which is not correctly rounded (up to ~0.75 ulp).
    exact = not _uses_sqrt(name)
    tn_opt, th_opt, _, _ = _run_pair(
        name, kwargs, spec, check=lambda a, b, k: _assert_close(a, b, k, exact=exact))
    _assert_states_close(tn_opt, th_opt, exact=exact)


def _torch_sqrt(a, out=None):
    r = torch.from_numpy(np.ascontiguousarray(a)).sqrt().numpy()
    if out is None:
        return r
    out[...] = r
    return out


@pytest.mark.parametrize("case", [c for c in CASES if _uses_sqrt(c[0])],
                         ids=[_case_id(c) for c in CASES if _uses_sqrt(c[0])])
def test_trajectory_bit_exact_with_torch_sqrt(case, monkeypatch):
    """With the square root taken from torch, every other operation agrees bit for bit."""
    monkeypatch.setattr(_functional, "_sqrt", _torch_sqrt)
    name, kwargs, spec = case
    tn_opt, th_opt, _, _ = _run_pair(name, kwargs, spec,
                                     check=lambda a, b, k: _assert_close(a, b, k, exact=True))
    _assert_states_close(tn_opt, th_opt, exact=True)


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ("Adagrad", dict(lr=0.1)),
])
def test_params_without_grad_are_skipped(name, kwargs):
    none_at = {(0, 1), (1, 1), (2, 0), (3, 3), (4, 2)}  # param 1 gets no state until step 2
    tn_opt, th_opt, tn_p, th_p = _run_pair(
        name, kwargs, none_at=none_at,
        check=lambda a, b, k: _assert_close(a, b, k, exact=name == "SGD"))
    _assert_states_close(tn_opt, th_opt, exact=name == "SGD")


def test_grad_none_leaves_param_and_state_untouched():
    p = Tensor._wrap(np.ones(3, np.float32), requires_grad=True)
    for cls in (optim.SGD, optim.Adam, optim.RMSprop):
        opt = cls([p], lr=0.1)
        opt.step()
        np.testing.assert_array_equal(p._data, np.ones(3, np.float32))
        assert len(opt.state) == 0


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
                                         ("Adam", dict(lr=0.01, weight_decay=0.1)),
                                         ("RMSprop", dict(lr=0.01, centered=True))])
def test_float64_params(name, kwargs):
    tn_opt, th_opt, _, _ = _run_pair(
        name, kwargs, dtype=np.float64,
        check=lambda a, b, k: [np.testing.assert_allclose(x._data, y.detach().numpy(),
                                                          rtol=1e-12, atol=1e-14)
                               for x, y in zip(a, b)])
    for group in tn_opt.state.values():
        for key, v in group.items():
            assert v._data.dtype == (np.float32 if key == "step" else np.float64)


def test_step_bumps_versions():
    p = Tensor._wrap(np.ones(3, np.float32), requires_grad=True)
    p.grad = Tensor._wrap(np.ones(3, np.float32))
    opt = optim.Adam([p])
    v = p._version
    opt.step()
    assert p._version == v + 1
    st = opt.state[p]
    assert st["step"]._data.shape == () and st["step"]._data.dtype == np.float32
    assert float(st["step"].item()) == 1.0
    opt.step()
    assert p._version == v + 2 and st["exp_avg"]._version == 2


def test_update_functions_match_optimizers():
    """The per-parameter functions are the optimizers' whole update."""
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(10).astype(np.float32)
    grads = [rng.standard_normal(10).astype(np.float32) for _ in range(4)]

    p = Tensor._wrap(p0.copy(), requires_grad=True)
    opt = optim.RMSprop([p], lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)
    ref = p0.copy()
    sq, ga, buf = (np.zeros(10, np.float32) for _ in range(3))
    for g in grads:
        p.grad = Tensor._wrap(g)
        opt.step()
        _functional.rmsprop_update(ref, g, sq, ga, buf, lr=0.01, momentum=0.9, centered=True,
                                   weight_decay=0.1)
        np.testing.assert_array_equal(p._data, ref)

    p = Tensor._wrap(p0.copy(), requires_grad=True)
    opt = optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, maximize=True)
    ref, buf = p0.copy(), None
    for g in grads:
        p.grad = Tensor._wrap(g)
        opt.step()
        buf = _functional.sgd_update(ref, g, buf, lr=0.1, momentum=0.9, dampening=0.1,
                                     maximize=True)
        np.testing.assert_array_equal(p._data, ref)

    p = Tensor._wrap(p0.copy(), requires_grad=True)
    opt = optim.Adam([p], lr=0.01, amsgrad=True)
    ref = p0.copy()
    m, v, mx = (np.zeros(10, np.float32) for _ in range(3))
    for k, g in enumerate(grads, 1):
        p.grad = Tensor._wrap(g)
        opt.step()
        _functional.adam_update(ref, g, m, v, mx, k, lr=0.01, amsgrad=True)
        np.testing.assert_array_equal(p._data, ref)


def test_fma_helpers_round_once():
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal(1000).astype(np.float32) for _ in range(2))
    got = _functional.add_(a.copy(), b, 0.3)
    expect = torch.from_numpy(a).add(torch.from_numpy(b), alpha=0.3).numpy()
    np.testing.assert_array_equal(got, expect)
    for w in (0.1, 0.5, 0.9):
        got = _functional.lerp_(a.copy(), b, w)
        expect = torch.from_numpy(a.copy()).lerp_(torch.from_numpy(b), w).numpy()
        np.testing.assert_array_equal(got, expect)


# --- state_dict ---------------------------------------------------------------------------
SD_CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True), None),
    ("SGD", dict(lr=0.1), None),
    ("Adam", dict(lr=0.01, amsgrad=True), TWO_GROUPS),
    ("AdamW", dict(lr=0.01), None),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True), TWO_GROUPS),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01), None),
]


@pytest.mark.parametrize("case", SD_CASES, ids=[_case_id(c) for c in SD_CASES])
def test_state_dict_round_trip(case):
    name, kwargs, spec = case
    arrays = _arrays(7)
    grads = _grad_sequence(8, steps=8, none_at={(1, 2)})

    full_p = _tn_params(arrays)
    full = getattr(optim, name)(_groups(full_p, spec), **kwargs)
    for g in grads:
        _set_grads(full_p, g, "tn")
        full.step()

    first_p = _tn_params(arrays)
    first = getattr(optim, name)(_groups(first_p, spec), **kwargs)
    for g in grads[:4]:
        _set_grads(first_p, g, "tn")
        first.step()
    saved = copy.deepcopy(first.state_dict())  # what torch.save/torch.load would give

    second_p = _tn_params([p._data for p in first_p])
    second = getattr(optim, name)(_groups(second_p, spec), lr=123.0)
    second.load_state_dict(saved)
    assert repr(second) == repr(first)
    for g in grads[4:]:
        _set_grads(second_p, g, "tn")
        second.step()
    for a, b in zip(full_p, second_p):
        np.testing.assert_array_equal(a._data, b._data)
    for p_full, p_second in zip(full_p, second_p):
        for key, v in full.state[p_full].items():
            np.testing.assert_array_equal(v._data, second.state[p_second][key]._data)


@pytest.mark.parametrize("case", SD_CASES, ids=[_case_id(c) for c in SD_CASES])
def test_state_dict_format_matches_torch_and_loads_torch_state(case):
    name, kwargs, spec = case
    tn_opt, th_opt, tn_p, th_p = _run_pair(name, kwargs, spec, seed=3, steps=3,
                                           none_at={(0, 2)})
    _assert_states_close(tn_opt, th_opt, exact=name == "SGD")

    # a torch state dict, its tensors turned into tracenet tensors, loads and continues the
    # torch trajectory
    th_sd = th_opt.state_dict()
    converted = {
        "state": {k: {kk: Tensor._wrap(vv.detach().numpy().copy())
                      if isinstance(vv, torch.Tensor) else vv for kk, vv in v.items()}
                  for k, v in th_sd["state"].items()},
        "param_groups": copy.deepcopy(th_sd["param_groups"]),
    }
    fresh_p = _tn_params([p.detach().numpy() for p in th_p])
    fresh = getattr(optim, name)(_groups(fresh_p, spec))
    fresh.load_state_dict(converted)
    for grads in _grad_sequence(11, steps=3):
        _set_grads(fresh_p, grads, "tn")
        _set_grads(th_p, grads, "th")
        fresh.step()
        th_opt.step()
    _assert_close(fresh_p, th_p, "continued", exact=name == "SGD")


def test_state_dict_shares_tensors_and_load_casts():
    p = Tensor._wrap(np.zeros(3, np.float32), requires_grad=True)
    p.grad = Tensor._wrap(np.ones(3, np.float32))
    opt = optim.Adam([p])
    opt.step()
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"] is opt.state[p]["exp_avg"]
    assert sd["param_groups"][0]["params"] == [0]
    assert opt.param_groups[0]["params"][0] is p

    q = Tensor._wrap(np.zeros(3, np.float32), requires_grad=True)
    other = optim.Adam([q])
    other.load_state_dict({
        "state": {0: {"step": 3, "exp_avg": Tensor._wrap(np.ones(3, np.float64)),
                      "exp_avg_sq": Tensor._wrap(np.ones(3, np.float32))}, 7: {"x": 1}},
        "param_groups": [{"params": [0], "lr": 0.3}],
    })
    st = other.state[q]
    assert st["exp_avg"]._data.dtype == np.float32
    assert st["step"]._data.dtype == np.float32 and float(st["step"].item()) == 3.0
    assert other.state[7] == {"x": 1}
    assert list(other.param_groups[0]) == [
        "params", "lr", "amsgrad", "maximize", "foreach", "capturable", "differentiable",
        "decoupled_weight_decay", "fused"]


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_load_fills_missing_group_keys_like_torch(name):
    arrays = _arrays(0, shapes=[(3,)])
    tn = getattr(optim, name)(_tn_params(arrays))
    th = getattr(torch.optim, name)(_th_params(arrays))
    sd = {"state": {}, "param_groups": [{"params": [0], "lr": 0.3}]}
    tn.load_state_dict(copy.deepcopy(sd))
    th.load_state_dict(copy.deepcopy(sd))
    assert [(k, v) for k, v in tn.param_groups[0].items() if k != "params"] == \
        [(k, v) for k, v in th.param_groups[0].items() if k != "params"]


def test_load_state_dict_errors_match_torch():
    def build(lib, tensor):
        a, b = tensor(3), tensor(2)
        src = lib.SGD([a, b], lr=0.1)
        return src.state_dict(), lib, tensor

    def run(lib, tensor):
        out = []
        sd, _, _ = build(lib, tensor)
        for target in ([tensor(3)], [{"params": [tensor(3)]}, {"params": [tensor(2)]}]):
            try:
                lib.SGD(target).load_state_dict(sd)
                out.append(None)
            except Exception as e:  # noqa: BLE001
                out.append((type(e), str(e)))
        return out

    tn = run(optim, lambda n: Tensor._wrap(np.zeros(n, np.float32), requires_grad=True))
    th = run(torch.optim, lambda n: torch.nn.Parameter(torch.zeros(n)))
    assert tn == th
    assert all(r is not None for r in tn)


def test_named_parameters_in_state_dict():
    arrays = _arrays(0, shapes=[(3,), (2,)])
    tn = optim.Adam(list(zip("ab", _tn_params(arrays))))
    th = torch.optim.Adam(list(zip("ab", _th_params(arrays))))
    assert tn.state_dict()["param_groups"] == th.state_dict()["param_groups"]
    assert repr(tn) == repr(th)


# --- repr ------------------------------------------------------------------------------------
REPR_CASES = [
    ("SGD", {}, None), ("Adam", {}, None), ("AdamW", {}, None), ("RMSprop", {}, None),
    ("Adagrad", {}, None),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4), None),
    ("Adam", dict(lr=0.01, betas=[0.5, 0.6], amsgrad=True, fused=True), None),
    ("RMSprop", dict(centered=True, momentum=0.1, foreach=False), None),
    ("SGD", dict(lr=0.1), [((0, 1), {"lr": 0.5, "extra": "x"}), ((2, 3), {})]),
    ("Adam", dict(lr=0.1), TWO_GROUPS),
]


@pytest.mark.parametrize("case", REPR_CASES, ids=[_case_id(c) for c in REPR_CASES])
def test_repr_matches_torch(case):
    name, kwargs, spec = case
    arrays = _arrays(0)
    tn = getattr(optim, name)(_groups(_tn_params(arrays), spec), **kwargs)
    th = getattr(torch.optim, name)(_groups(_th_params(arrays), spec), **kwargs)
    assert repr(tn) == repr(th)
    assert tn.defaults == th.defaults
    assert [list(g) for g in tn.param_groups] == [list(g) for g in th.param_groups]


# --- errors ----------------------------------------------------------------------------------
class _Lib:
    def __init__(self, kind):
        self.kind = kind
        self.optim = optim if kind == "tn" else torch.optim

    def param(self, n=3):
        if self.kind == "tn":
            return Tensor._wrap(np.zeros(n, np.float32), requires_grad=True)
        return torch.nn.Parameter(torch.zeros(n))

    def param_with_grad(self):
        p = self.param()
        if self.kind == "tn":
            p.grad = Tensor._wrap(np.ones(3, np.float32))
        else:
            p.grad = torch.ones(3)
        return p

    def plain(self, dtype="float32"):
        if self.kind == "tn":
            return Tensor._wrap(np.zeros(3, dtype))
        return torch.zeros(3, dtype=getattr(torch, dtype))

    def non_leaf(self):
        if self.kind == "tn":
            t = Tensor._wrap(np.zeros(3, np.float32), requires_grad=True)
            t.grad_fn = object()
            return t
        return torch.zeros(3, requires_grad=True) * 2

    def scalar_tensor(self, v):
        if self.kind == "tn":
            return Tensor._wrap(np.array(v, np.float32))
        return torch.tensor(v)


ERROR_CASES = {
    "empty": lambda L: L.optim.SGD([]),
    "bare_tensor": lambda L: L.optim.SGD(L.param()),
    "bare_double_tensor": lambda L: L.optim.Adam(L.plain("float64")),
    "duplicate_across_groups": lambda L: (lambda p: L.optim.SGD(
        [{"params": [p]}, {"params": [p]}]))(L.param()),
    "non_leaf": lambda L: L.optim.SGD([L.non_leaf()]),
    "not_a_tensor": lambda L: L.optim.SGD([3]),
    "dict_after_tensor": lambda L: L.optim.SGD([L.param(), {"params": [L.param()]}]),
    "set_in_group": lambda L: L.optim.SGD([{"params": {L.param()}}]),
    "missing_params_key": lambda L: L.optim.SGD([{"lr": 0.1}]),
    "int_params": lambda L: L.optim.SGD(3),
    "none_params": lambda L: L.optim.SGD(None),
    "names_mixed": lambda L: L.optim.Adam([("a", L.param()), L.param()]),
    "add_group_without_names": lambda L: L.optim.Adam([("a", L.param())]).add_param_group(
        {"params": [L.param()]}),
    "add_group_with_names": lambda L: L.optim.Adam([L.param()]).add_param_group(
        {"params": [("b", L.param())]}),
    "sgd_lr_int": lambda L: L.optim.SGD([L.param()], lr=-1),
    "sgd_lr_float": lambda L: L.optim.SGD([L.param()], lr=-0.5),
    "sgd_lr_before_params": lambda L: L.optim.SGD([], lr=-1),
    "sgd_lr_tensor_negative": lambda L: L.optim.SGD([L.param()], lr=L.scalar_tensor(-0.5)),
    "sgd_momentum": lambda L: L.optim.SGD([L.param()], momentum=-1),
    "sgd_weight_decay": lambda L: L.optim.SGD([L.param()], weight_decay=-0.1),
    "sgd_nesterov_no_momentum": lambda L: L.optim.SGD([L.param()], nesterov=True),
    "sgd_nesterov_dampening": lambda L: L.optim.SGD([L.param()], momentum=0.9, dampening=0.1,
                                                    nesterov=True),
    "sgd_lr_none": lambda L: L.optim.SGD([L.param()], lr=None),
    "sgd_fused_foreach": lambda L: L.optim.SGD([L.param()], fused=True, foreach=True),
    "sgd_fused_differentiable": lambda L: L.optim.SGD([L.param()], fused=True,
                                                      differentiable=True, foreach=True),
    "sgd_too_many_positional": lambda L: L.optim.SGD([L.param()], 0.1, 0.9, 0, 0, False,
                                                     False),
    "adam_lr": lambda L: L.optim.Adam([L.param()], lr=-1),
    "adam_eps": lambda L: L.optim.Adam([L.param()], eps=-1, betas=(2.0, 2.0)),
    "adam_beta0": lambda L: L.optim.Adam([L.param()], betas=(1.0, 0.9)),
    "adam_beta1": lambda L: L.optim.Adam([L.param()], betas=(0.9, -0.1), weight_decay=-1),
    "adam_weight_decay": lambda L: L.optim.Adam([L.param()], weight_decay=-1),
    "adam_int_betas": lambda L: L.optim.Adam([L.param()], betas=(0, 0.5)),
    "adam_fused_foreach": lambda L: L.optim.Adam([L.param()], fused=True, foreach=True),
    "adam_fused_empty": lambda L: L.optim.Adam([], fused=True, foreach=True),
    "adamw_lr": lambda L: L.optim.AdamW([L.param()], lr=-1e-3),
    "rmsprop_lr": lambda L: L.optim.RMSprop([L.param()], lr=-1, eps=-1),
    "rmsprop_eps": lambda L: L.optim.RMSprop([L.param()], eps=-1, momentum=-1),
    "rmsprop_momentum": lambda L: L.optim.RMSprop([L.param()], momentum=-1, alpha=-1),
    "rmsprop_weight_decay": lambda L: L.optim.RMSprop([L.param()], weight_decay=-1, alpha=-1),
    "rmsprop_alpha": lambda L: L.optim.RMSprop([L.param()], alpha=-1),
    "adagrad_lr_decay": lambda L: L.optim.Adagrad([L.param()], lr_decay=-1, eps=-1),
    "adagrad_weight_decay": lambda L: L.optim.Adagrad([L.param()], weight_decay=-1),
    "adagrad_initial": lambda L: L.optim.Adagrad([L.param()], initial_accumulator_value=-1),
    "adagrad_eps": lambda L: L.optim.Adagrad([L.param()], eps=-1),
    "adam_capturable_on_cpu": lambda L: L.optim.Adam([L.param_with_grad()],
                                                     capturable=True).step(),
    "rmsprop_capturable_on_cpu": lambda L: L.optim.RMSprop([L.param_with_grad()],
                                                           capturable=True).step(),
    "base_step": lambda L: L.optim.Optimizer([L.param()], {}).step(),
}


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_errors_match_torch(name):
    results = []
    for kind in ("tn", "th"):
        with pytest.raises(Exception) as info:
            ERROR_CASES[name](_Lib(kind))
        results.append((type(info.value), str(info.value)))
    assert results[0] == results[1]


def test_group_not_a_dict():
    for kind in ("tn", "th"):
        L = _Lib(kind)
        with pytest.raises(TypeError, match="param_group must be a dict, but got <class"):
            L.optim.SGD([{"params": [L.param()]}, L.param()])


@pytest.mark.parametrize("kind", ["tn", "th"])
def test_accepted_inputs(kind):
    L = _Lib(kind)
    p, q = L.param(), L.param(2)
    assert len(L.optim.SGD({p}).param_groups[0]["params"]) == 1  # a top-level set is fine
    assert L.optim.SGD(x for x in [p, q]).param_groups[0]["params"][1] is q
    assert L.optim.SGD([{"params": p}]).param_groups[0]["params"] == [p]
    assert len(L.optim.SGD([{"params": [q]}, {"params": []}]).param_groups) == 2
    assert L.optim.SGD([L.plain()]) is not None  # a leaf without requires_grad is accepted
    assert L.optim.SGD([L.non_leaf()], differentiable=True) is not None
    with pytest.warns(UserWarning, match="duplicate parameters"):
        L.optim.SGD([p, p])


# --- zero_grad, closure, hooks ---------------------------------------------------------------
def test_zero_grad():
    p = Tensor._wrap(np.ones(3, np.float32), requires_grad=True)
    q = Tensor._wrap(np.ones(2, np.float32), requires_grad=True)
    opt = optim.SGD([p, q], lr=0.1)
    g = Tensor._wrap(np.full(3, 2.0, np.float32))
    p.grad = g
    opt.zero_grad(set_to_none=False)
    assert p.grad is g and q.grad is None
    np.testing.assert_array_equal(g._data, np.zeros(3, np.float32))
    assert g._version == 1
    opt.zero_grad()
    assert p.grad is None and q.grad is None
    opt.zero_grad(False)
    assert p.grad is None


def test_closure():
    calls = []
    arrays = _arrays(0, shapes=[(3,)])
    grad = np.array([1.0, -2.0, 0.5], np.float32)
    from tracenet.autograd import grad_mode

    def make_closure(p, lib):
        def closure():
            calls.append(lib)
            if lib == "tn":
                assert grad_mode.is_grad_enabled()
            else:
                assert torch.is_grad_enabled()
            _set_grads([p], [grad], lib)
            return 1.25
        return closure

    tn_p, th_p = _tn_params(arrays), _th_params(arrays)
    tn_opt = optim.SGD(tn_p, lr=0.1, momentum=0.9)
    th_opt = torch.optim.SGD(th_p, lr=0.1, momentum=0.9)
    for _ in range(3):
        with grad_mode.no_grad():
            assert tn_opt.step(make_closure(tn_p[0], "tn")) == 1.25
        with torch.no_grad():
            assert th_opt.step(make_closure(th_p[0], "th")) == 1.25
        assert grad_mode.is_grad_enabled()
        _assert_close(tn_p, th_p, 0, exact=True)
    assert calls == ["tn", "th"] * 3
    assert optim.Adam(_tn_params(arrays)).step() is None


def test_step_hooks():
    p = Tensor._wrap(np.ones(3, np.float32), requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    seen = []
    pre = opt.register_step_pre_hook(lambda o, a, k: seen.append(("pre", o is opt)))
    post = opt.register_step_post_hook(lambda o, a, k: seen.append(("post", o is opt)))
    opt.step()
    pre.remove()
    opt.step()
    post.remove()
    opt.step()
    assert seen == [("pre", True), ("post", True), ("post", True)]


def test_optimizer_pickles():
    import pickle
    p = Tensor._wrap(np.ones(3, np.float32), requires_grad=True)
    p.grad = Tensor._wrap(np.ones(3, np.float32))
    opt = optim.Adam([p], lr=0.1)
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    assert repr(clone) == repr(opt)
    (q,) = clone.param_groups[0]["params"]
    np.testing.assert_array_equal(clone.state[q]["exp_avg"]._data, opt.state[p]["exp_avg"]._data)
    q.grad = Tensor._wrap(np.ones(3, np.float32))
    clone.step()


@pytest.mark.parametrize("name, missing", [("Adam", ("amsgrad", "maximize", "fused")),
                                           ("SGD", ("nesterov", "foreach")),
                                           ("RMSprop", ("centered", "momentum")),
                                           ("Adagrad", ("differentiable",))])
def test_older_state_dict_gets_group_defaults_and_tensor_step(name, missing):
    """A state dict saved before some group entries existed loads with their defaults, and a
    numeric ``step`` becomes a float32 tensor, as in torch."""
    p = Tensor._wrap(np.ones(3, np.float32), requires_grad=True)
    p.grad = Tensor._wrap(np.ones(3, np.float32))
    opt = getattr(optim, name)([p], lr=0.1)
    opt.step()
    expected = {k: opt.param_groups[0][k] for k in missing}
    sd = opt.state_dict()
    for k in missing:
        del sd["param_groups"][0][k]
    for st in sd["state"].values():
        if "step" in st:
            st["step"] = 1.0
    fresh = getattr(optim, name)([p], lr=0.1)
    fresh.load_state_dict(sd)
    assert {k: fresh.param_groups[0][k] for k in missing} == expected
    for st in fresh.state.values():
        if "step" in st:
            assert isinstance(st["step"], Tensor) and st["step"].dtype == tracenet.float32


# --- lr schedulers ---------------------------------------------------------------------------
SCHED_CASES = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("StepLR", dict(step_size=1)),
    ("MultiStepLR", dict(milestones=[2, 5, 5], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("LambdaLR", dict(lr_lambda=lambda e: 1.0 / (e + 1))),
]


@pytest.mark.parametrize("name,kwargs", SCHED_CASES, ids=[c[0] for c in SCHED_CASES])
def test_schedulers_match_torch(name, kwargs):
    arrays = _arrays(0)
    tn_p, th_p = _tn_params(arrays), _th_params(arrays)
    tn_opt = optim.SGD(_groups(tn_p, TWO_GROUPS), lr=0.1, momentum=0.9)
    th_opt = torch.optim.SGD(_groups(th_p, TWO_GROUPS), lr=0.1, momentum=0.9)
    tn_s = getattr(lr_scheduler, name)(tn_opt, **kwargs)
    th_s = getattr(torch.optim.lr_scheduler, name)(th_opt, **kwargs)
    assert tn_s.get_last_lr() == th_s.get_last_lr()
    for grads in _grad_sequence(2, steps=8):
        _set_grads(tn_p, grads, "tn")
        _set_grads(th_p, grads, "th")
        tn_opt.step()
        th_opt.step()
        tn_s.step()
        th_s.step()
        assert tn_s.get_last_lr() == th_s.get_last_lr()
        _assert_close(tn_p, th_p, 0, exact=True)
    assert tn_s.state_dict() == th_s.state_dict()
    assert tn_opt.state_dict()["param_groups"] == th_opt.state_dict()["param_groups"]


def test_scheduler_warnings_and_resume():
    for kind in ("tn", "th"):
        L = _Lib(kind)
        sched = L.optim.lr_scheduler
        opt = L.optim.SGD([L.param()], lr=1.0)
        s = sched.StepLR(opt, 2)
        with pytest.warns(UserWarning, match=r"Detected call of `lr_scheduler.step\(\)` before"):
            s.step()
        with pytest.warns(UserWarning, match="please use `get_last_lr\\(\\)`"):
            s.get_lr()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.step()
            s.step()
        with pytest.raises(KeyError, match="initial_lr"):
            sched.StepLR(L.optim.SGD([L.param()]), 2, last_epoch=3)
        with pytest.raises(ValueError, match="Expected 1 lr_lambdas, but got 2"):
            sched.LambdaLR(opt, [lambda e: 1, lambda e: 2])
        with pytest.raises(TypeError, match="object is not an Optimizer"):
            sched.StepLR(object(), 2)
