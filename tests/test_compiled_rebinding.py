"""Compiled functions see the Python around them as eager mode does: a module, an optimizer or
a tensor named by a global or closure variable of any function the traced code ran (not only
the compiled function's own) and rebound after compiling is used, and a Python number read
from one (or from a small list or dict of numbers) is not frozen at the value it had at the
trace: a call where one changed traces again, a call where nothing changed does not."""
import functools
import gc
import json
import os
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest

import tracenet as tn
from tracenet import _name_guards, compiled_function, compiler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = dict(rtol=1e-5, atol=1e-6)


def _close(got, want):
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), **TOL)


def _grads(module):
    return [p.grad.numpy().copy() for p in module.parameters()]


@pytest.fixture
def made(monkeypatch):
    """Counts the specialisations compiled callables make (traced, or read from the graph
    cache; not a trace that asked for exact sizes instead of symbolic ones)."""
    count = [0]
    for owner in (compiled_function, compiler):
        def counting(*args, _real=owner._specialise, **kwargs):
            spec = _real(*args, **kwargs)
            count[0] += 1
            return spec
        monkeypatch.setattr(owner, "_specialise", counting)
    return count


# --- a module named by a helper's global, rebound -----------------------------------------------
net = tn.nn.Linear(4, 3)


def _apply_net(x):
    return net(x)


def test_module_in_a_helpers_global_rebound_is_used(made):
    global net
    saved = net
    try:
        f = tn.compile(lambda x: _apply_net(x).sum())
        x = tn.randn(2, 4)
        _close(f(x), _apply_net(x).sum())
        net = tn.nn.Linear(4, 3)
        _close(f(x), _apply_net(x).sum())
        assert made[0] == 2
        # (as for the compiled function's own names: it finds its modules again, forgetting
        # the specialisations made for the others, which then hold no module alive)
        net = saved
        _close(f(x), _apply_net(x).sum())
        assert made[0] == 3
    finally:
        net = saved


def test_gradients_reach_the_rebound_module():
    global net
    saved = net
    try:
        f = tn.compile(lambda x: _apply_net(x).pow(2).sum())
        x = tn.randn(2, 4)
        for _ in range(2):
            net.zero_grad()
            f(x).backward()
        got = _grads(net)
        net.zero_grad()
        _apply_net(x).pow(2).sum().backward()
        for g, w in zip(got, _grads(net)):
            np.testing.assert_allclose(g, w, **TOL)
        net = tn.nn.Linear(4, 3)
        f(x).backward()
        got = _grads(net)
        net.zero_grad()
        _apply_net(x).pow(2).sum().backward()
        for g, w in zip(got, _grads(net)):
            np.testing.assert_allclose(g, w, **TOL)
        assert saved.weight.grad is not None  # (the old module's gradient is left alone)
    finally:
        net = saved


def test_a_module_rebound_in_a_helper_is_let_go():
    """As for the compiled function's own names, the module is found again: the
    specialisations made for the old one are dropped and hold it alive no more."""
    global net
    saved = net
    try:
        net = tn.nn.Linear(4, 3)
        old = weakref.ref(net)
        f = tn.compile(lambda x: _apply_net(x).sum())
        x = tn.randn(2, 4)
        f(x)
        net = tn.nn.Linear(4, 3)
        _close(f(x), _apply_net(x).sum())
        gc.collect()
        assert old() is None
    finally:
        net = saved


# --- a module in a helper's closure cell, rebound ------------------------------------------------
def _closure_pair():
    m = tn.nn.Linear(4, 3)

    def helper(x):
        return m(x)

    def rebind():
        nonlocal m
        m = tn.nn.Linear(4, 3)
    return helper, rebind


def test_module_in_a_helpers_closure_rebound_is_used(made):
    helper, rebind = _closure_pair()
    f = tn.compile(lambda x: helper(x).sum())
    x = tn.randn(2, 4)
    _close(f(x), helper(x).sum())
    for _ in range(3):
        _close(f(x), helper(x).sum())
    assert made[0] == 1
    rebind()
    _close(f(x), helper(x).sum())
    assert made[0] == 2


def test_two_closures_of_one_factory_each_guarded(made):
    h1, rebind1 = _closure_pair()
    h2, rebind2 = _closure_pair()
    f = tn.compile(lambda x: (h1(x) + h2(x)).sum())
    x = tn.randn(2, 4)
    _close(f(x), (h1(x) + h2(x)).sum())
    rebind2()
    _close(f(x), (h1(x) + h2(x)).sum())
    rebind1()
    _close(f(x), (h1(x) + h2(x)).sum())
    assert made[0] == 3


# --- Python numbers read by the traced code -----------------------------------------------------
scale = 2.0
table = [2.0, 3.0]
options = {"shift": 1.0, "mode": "add"}


def _scaled(x):
    return x * scale


def _from_table(x):
    return x * table[0] + table[1]


def _from_options(x):
    return x + options["shift"] if options["mode"] == "add" else x - options["shift"]


def test_global_number_rebound_traces_again(made):
    global scale
    try:
        f = tn.compile(lambda x: _scaled(x).sum())
        x = tn.randn(2, 4)
        _close(f(x), _scaled(x).sum())
        _close(f(x), _scaled(x).sum())
        assert made[0] == 1
        scale = 3.0
        _close(f(x), _scaled(x).sum())
        assert made[0] == 2
        scale = 3.0 + 0.0  # (another float object of the same value: no new trace)
        _close(f(x), _scaled(x).sum())
        assert made[0] == 2
        scale = 2.0  # (numbers come back to the older specialisation)
        _close(f(x), _scaled(x).sum())
        assert made[0] == 2
    finally:
        scale = 2.0


class _Scaling(tn.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = tn.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) * scale


@pytest.mark.parametrize("kind", ["function", "module"])
def test_a_number_changing_on_every_call_runs_eagerly_after_a_few_traces(made, kind):
    """A global number that changes on every call would trace and build on every call: after
    MAX_GUARDED_VARIANTS traces the calls that none fits run eagerly (eager mode's values),
    with one warning naming the global; a value seen before still runs its compiled code."""
    global scale
    limit = compiled_function.MAX_GUARDED_VARIANTS
    net = _Scaling()
    f = tn.compile(net) if kind == "module" else tn.compile(lambda x: _scaled(x).sum())
    eager = net if kind == "module" else (lambda x: _scaled(x).sum())
    x = tn.randn(2, 4)
    try:
        with pytest.warns(RuntimeWarning, match="traced 8 times.*'scale'") as warned:
            for i in range(limit + 4):
                scale = 1.0 + i
                _close(f(x), eager(x))
        assert made[0] == limit
        assert len([w for w in warned if "traced" in str(w.message)]) == 1
        scale = 3.0  # (one of the traced values: its compiled code, no new trace)
        _close(f(x), eager(x))
        assert made[0] == limit
    finally:
        scale = 2.0


def test_number_of_another_type_traces_again(made):
    global scale
    try:
        f = tn.compile(lambda x: _scaled(x))
        x = tn.tensor([1, 2, 3])
        scale = 2
        assert f(x).dtype == _scaled(x).dtype == tn.int64
        scale = 2.0  # equal, but an int tensor times 2.0 is a float tensor
        out = f(x)
        assert out.dtype == _scaled(x).dtype == tn.float32
        assert made[0] == 2
    finally:
        scale = 2.0


def test_list_element_of_another_type_traces_again(made):
    f = tn.compile(lambda x: _from_table(x))
    x = tn.tensor([1, 2, 3])
    try:
        table[:] = [2, 3]
        assert f(x).dtype == _from_table(x).dtype == tn.int64
        table[0] = 2.0
        got = f(x)
        assert got.dtype == _from_table(x).dtype == tn.float32
        _close(got, _from_table(x))
        assert made[0] == 2
    finally:
        table[:] = [2.0, 3.0]


def test_list_and_dict_changed_in_place_trace_again(made):
    f = tn.compile(lambda x: _from_table(x).sum())
    g = tn.compile(lambda x: _from_options(x).sum())
    x = tn.randn(2, 4)
    try:
        _close(f(x), _from_table(x).sum())
        _close(g(x), _from_options(x).sum())
        table[0] = 5.0
        options["mode"] = "sub"
        _close(f(x), _from_table(x).sum())
        _close(g(x), _from_options(x).sum())
        options["shift"] = 4.0
        _close(g(x), _from_options(x).sum())
        assert made[0] == 5
    finally:
        table[:] = [2.0, 3.0]
        options.update(shift=1.0, mode="add")


def test_closure_number_changed_traces_again_and_gradients_follow(made):
    w = tn.randn(4, requires_grad=True)
    factor = 2.0

    def helper(x):
        return (x * w * factor).sum()

    f = tn.compile(helper)
    x = tn.randn(3, 4)
    for value in (2.0, 2.0, -1.5):
        factor = value
        w.grad = None
        got = f(x)
        got.backward()
        got_grad = w.grad.numpy().copy()
        w.grad = None
        want = helper(x)
        want.backward()
        _close(got, want)
        np.testing.assert_allclose(got_grad, w.grad.numpy(), **TOL)
    assert made[0] == 2


def test_a_counter_the_traced_code_updates_does_not_trace_again(made):
    calls = 0

    def counted(x):
        nonlocal calls
        calls += 1
        return x * 2

    f = tn.compile(counted)
    x = tn.randn(3)
    for _ in range(4):
        _close(f(x), x * 2)
    assert made[0] == 1 and calls == 1  # (the trace ran the Python once)


def test_steady_calls_do_not_trace_again(made):
    f = tn.compile(lambda x: (_scaled(x) + _from_table(x) + _apply_net(x).sum()).sum())
    x = tn.randn(2, 4)
    for _ in range(5):
        _close(f(x), (_scaled(x) + _from_table(x) + _apply_net(x).sum()).sum())
    assert made[0] == 1
    spec = f._last
    assert spec.guards.hold()


# --- helpers two levels deep, in another file, partials, methods --------------------------------
def _outer(x):
    return _inner(x) + 1


def _inner(x):
    return _apply_net(x) * scale


def test_helpers_two_levels_deep(made):
    global net, scale
    saved = net
    try:
        f = tn.compile(lambda x: _outer(x).sum())
        x = tn.randn(2, 4)
        _close(f(x), _outer(x).sum())
        scale = -1.0
        _close(f(x), _outer(x).sum())
        net = tn.nn.Linear(4, 3)
        _close(f(x), _outer(x).sum())
        assert made[0] == 3
    finally:
        net, scale = saved, 2.0


def test_a_helper_function_rebound_traces_again(made):
    global _inner
    saved = _inner
    try:
        f = tn.compile(lambda x: _outer(x).sum())
        x = tn.randn(2, 4)
        _close(f(x), _outer(x).sum())
        _inner = lambda x: _apply_net(x) - 5.0  # noqa: E731
        _close(f(x), _outer(x).sum())
        assert made[0] == 2
    finally:
        _inner = saved


HELPERS = textwrap.dedent('''
    import tracenet as tn
    GAIN = 2.0
    layer = tn.nn.Linear(4, 2)

    def helper(x):
        return layer(x) * GAIN
''')


@pytest.fixture
def helpers(tmp_path, monkeypatch):
    (tmp_path / "rebinding_helpers.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import rebinding_helpers
    yield rebinding_helpers
    sys.modules.pop("rebinding_helpers", None)


def test_helper_in_another_module_file(helpers, made):
    f = tn.compile(lambda x: helpers.helper(x).sum())
    x = tn.randn(3, 4)
    _close(f(x), helpers.helper(x).sum())
    helpers.GAIN = 0.5
    _close(f(x), helpers.helper(x).sum())
    helpers.layer = tn.nn.Linear(4, 2)
    _close(f(x), helpers.helper(x).sum())
    assert made[0] == 3


def _weighted(x, m, k):
    return m(x) * k


def test_functools_partial(made):
    global _partial
    m = tn.nn.Linear(4, 3)
    _partial = functools.partial(_weighted, m=m, k=2.0)
    try:
        f = tn.compile(lambda x: _partial(x).sum())
        x = tn.randn(2, 4)
        _close(f(x), _partial(x).sum())
        _partial = functools.partial(_weighted, m=tn.nn.Linear(4, 3), k=-1.0)
        _close(f(x), _partial(x).sum())
        assert made[0] == 2
    finally:
        del _partial


class _Head(tn.nn.Module):
    """A module whose forward calls a helper reading a global number and module."""

    def __init__(self):
        super().__init__()
        self.fc = tn.nn.Linear(4, 4)

    def forward(self, x):
        return _inner(self.fc(x))


def test_compiled_module_whose_forward_calls_helpers(made):
    global net, scale
    saved = net
    try:
        head = _Head()
        compiled = tn.compile(head)
        x = tn.randn(2, 4)
        _close(compiled(x), head(x))
        scale = 0.25
        _close(compiled(x), head(x))
        net = tn.nn.Linear(4, 3)
        got = compiled(x)
        _close(got, head(x))
        got.sum().backward()
        got_grads = _grads(head)
        head.zero_grad()
        head(x).sum().backward()
        for g, w in zip(got_grads, _grads(head)):
            np.testing.assert_allclose(g, w, **TOL)
        assert made[0] == 3
    finally:
        net, scale = saved, 2.0


class _Stack(tn.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = tn.nn.ModuleList([tn.nn.Linear(4, 4) for _ in range(2)])

    def forward(self, x):
        return sum(self.layers[i](x) * scale for i in range(len(self.layers)))


def test_comprehensions_closing_over_self_are_not_searched(monkeypatch, made):
    """A comprehension's function lives while it runs, its cells those of ``forward``'s
    frame: nothing outside can rebind them, so no trace searches the heap for it."""
    global scale
    def refuse(*objects):
        raise AssertionError("searched the heap for closures")
    monkeypatch.setattr(_name_guards.gc, "get_referrers", refuse)
    stack = _Stack()
    compiled = tn.compile(stack)
    x = tn.randn(2, 4)
    try:
        _close(compiled(x), stack(x))
        scale = 0.5  # (the generator's global)
        _close(compiled(x), stack(x))
        assert made[0] == 2
    finally:
        scale = 2.0


def test_a_function_calling_a_module_whose_methods_call_helpers(made):
    global scale
    head = _Head()
    f = tn.compile(lambda x: head(x).sum())
    x = tn.randn(2, 4)
    try:
        _close(f(x), head(x).sum())
        scale = 4.0
        _close(f(x), head(x).sum())
        assert made[0] == 2
    finally:
        scale = 2.0


# --- compile_step -------------------------------------------------------------------------------
def _loss(x, y):
    return ((_apply_net(x) * scale - y) ** 2).sum()


def test_compile_step_with_helpers(made):
    global net, scale
    saved = net
    try:
        tn.manual_seed(0)
        net = tn.nn.Linear(4, 3)
        ref = tn.nn.Linear(4, 3)
        ref.load_state_dict(net.state_dict())
        opt = tn.optim.SGD(list(net.parameters()) + list(ref.parameters()), lr=0.1)
        step = tn.compile_step(_loss, opt)
        x, y = tn.randn(5, 4), tn.randn(5, 3)
        for new_scale in (2.0, 2.0, 0.5):
            scale = new_scale
            got = step(x, y)
            compiled_weights = net.weight.detach().numpy().copy()
            # the same step in eager mode on the copy
            net, compiled_net = ref, net
            opt.zero_grad()
            want = _loss(x, y)
            want.backward()
            opt.step()
            net = compiled_net
            _close(got, want)
            np.testing.assert_allclose(compiled_weights, ref.weight.detach().numpy(), **TOL)
        assert made[0] == 2
    finally:
        net, scale = saved, 2.0


# --- the graph cache ----------------------------------------------------------------------------
CHILD = textwrap.dedent('''
    import json, sys
    import tracenet as tn
    import rebinding_helpers as h
    tn.manual_seed(0)
    h.layer = tn.nn.Linear(4, 2)
    net = h.layer  # (named by the compiled function: its tree is in the cache key)
    f = tn.compile(lambda x: h.helper(net(x) @ tn.ones(2, 4)).sum())
    x = tn.ones(3, 4)
    out = [[f(x).item(), h.helper(net(x) @ tn.ones(2, 4)).sum().item()]]
    if sys.argv[1:] == ["change"]:
        h.GAIN = 5.0
        out.append([f(x).item(), h.helper(net(x) @ tn.ones(2, 4)).sum().item()])
    print(json.dumps(out))
''')


def test_a_stored_graph_guards_the_globals_it_read_in_a_new_process(tmp_path):
    (tmp_path / "rebinding_helpers.py").write_text(HELPERS)
    (tmp_path / "child.py").write_text(CHILD)
    env = dict(os.environ, TRACENET_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=ROOT,
               TRACENET_DEBUG="cache")
    logs = []
    for argv in ([], ["change"]):
        res = subprocess.run([sys.executable, "child.py"] + argv, cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        for got, want in json.loads(res.stdout.splitlines()[-1]):
            assert got == pytest.approx(want, rel=1e-5)
        logs.append(res.stderr)
    assert "stored graph" in logs[0]
    # the new process's first call is the stored graph's; after GAIN changed it traces again
    assert "graph hit" in logs[1] and "new specialisation" in logs[1], logs[1]
