"""In-place ops on a compiled call's inputs leave the caller's tensors as eager mode (and
PyTorch) leaves them: their values and their versions (``_version``), for a compiled module,
a compiled function and a compiled training step. What compiled code cannot carry back (a write
through a view of an input, an input written in place that shares memory with another input,
an input that requires grad) raises a clear error; an input not written is not copied."""
import copy

import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet.codegen.base import LoweringError
from tracenet.trace import TraceError

TOL = dict(rtol=1e-5, atol=1e-6)
DTYPES = {np.float32: (tn.float32, torch.float32), np.float64: (tn.float64, torch.float64)}
LEAF_MESSAGE = "a leaf Variable that requires grad is being used in an in-place operation"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tn-cache"))


def _scaled_in_place(lib):
    """A module whose forward changes its input in place twice (version + 2) before a linear
    layer reads it."""
    class Scaled(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = lib.nn.Linear(3, 2)

        def forward(self, x):
            x.mul_(2)
            x.add_(1)
            return self.fc(x) + x.sum()
    return Scaled


def _twins(dtype):
    """The module in tracenet (to compile), an eager copy of it and PyTorch's, same weights."""
    tn_dtype, torch_dtype = DTYPES[dtype]
    torch.manual_seed(0)
    theirs = _scaled_in_place(torch)().to(torch_dtype)
    ours = _scaled_in_place(tn)().to(tn_dtype)
    ours.load_state_dict({k: tn.tensor(v.detach().numpy().copy())
                          for k, v in theirs.state_dict().items()})
    return ours, copy.deepcopy(ours), theirs


def _inputs(array):
    return tn.tensor(array.copy()), tn.tensor(array.copy()), torch.tensor(array.copy())


def _same(a, b):
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), **TOL)


def _check_call(outputs, inputs):
    """Outputs and the inputs after the call: the compiled call's, eager mode's and PyTorch's
    values agree, and the inputs' versions too."""
    for out in outputs[1:]:
        _same(outputs[0], out)
    for x in inputs[1:]:
        _same(inputs[0], x)
        assert inputs[0]._version == x._version


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_compiled_module_leaves_its_input_as_eager_mode(dtype, grad, threads):
    tn.set_num_threads(threads)
    ours, eager, theirs = _twins(dtype)
    compiled = tn.compile(ours)
    rng = np.random.default_rng(0)
    for batch in (5, 1, 4):  # (a symbolic batch, then batch 1)
        inputs = _inputs(rng.standard_normal((batch, 3)).astype(dtype))
        with tn.set_grad_enabled(grad), torch.set_grad_enabled(grad):
            outputs = [m(x) for m, x in zip((compiled, eager, theirs), inputs)]
        _check_call(outputs, inputs)
        assert inputs[0]._version == 2
    assert compiled._last.written_inputs == [0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_compiled_module_trained_on_an_input_it_changes_gets_eager_gradients(dtype):
    ours, eager, theirs = _twins(dtype)
    compiled = tn.compile(ours)
    rng = np.random.default_rng(1)
    for batch in (6, 1):
        inputs = _inputs(rng.standard_normal((batch, 3)).astype(dtype))
        for m, x in zip((compiled, eager, theirs), inputs):
            (m(x) ** 2).sum().backward()
        _check_call([], inputs)
        for p, q, t in zip(ours.parameters(), eager.parameters(), theirs.parameters()):
            _same(p.grad, q.grad)
            _same(p.grad, t.grad)


def test_an_input_the_backward_reads_and_the_forward_changes_fails_backward_as_eager_mode():
    def changed_after_use(lib):
        class ChangedAfterUse(lib.nn.Linear):
            def forward(self, x):
                y = super().forward(x)  # (saves x for the weight's gradient)
                x.mul_(2)
                return y
        return ChangedAfterUse

    torch.manual_seed(0)
    theirs = changed_after_use(torch)(3, 2)
    ours = changed_after_use(tn)(3, 2)
    ours.load_state_dict({k: tn.tensor(v.detach().numpy().copy())
                          for k, v in theirs.state_dict().items()})
    eager = copy.deepcopy(ours)
    compiled = tn.compile(ours)
    inputs = _inputs(np.ones((4, 3), np.float32))
    outputs = [m(x) for m, x in zip((compiled, eager, theirs), inputs)]
    _check_call(outputs, inputs)
    for out in outputs:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()


def _overwrites(lib):
    """copy_, fill_, zero_ and arithmetic on two inputs in place (versions 2 and 2)."""
    def fn(a, b):
        a.copy_(b * 2)
        a.add_(1)
        b.zero_()
        b.fill_(3.5)
        return a.sum() + b.sum()
    return fn


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_compiled_function_writes_copy_fill_zero_and_arithmetic_back(dtype):
    compiled = tn.compile(_overwrites(tn))
    rng = np.random.default_rng(2)
    for batch in (7, 1, 3):
        a, b = (rng.standard_normal((batch, 4)).astype(dtype) for _ in range(2))
        pairs = [_inputs(a), _inputs(b)]
        outputs = [f(x, y) for f, x, y in zip((compiled, _overwrites(tn), _overwrites(torch)),
                                               *pairs)]
        for inputs in pairs:
            _check_call([], inputs)
        _check_call(outputs, [])
        assert pairs[0][0]._version == 2 and pairs[1][0]._version == 2
    assert compiled._last.written_inputs == [0, 1]


def test_a_compiled_training_step_that_changes_its_input_matches_the_eager_loop():
    def make(lib):
        torch.manual_seed(0) if lib is torch else tn.manual_seed(0)
        return lib.nn.Sequential(lib.nn.Linear(4, 8), lib.nn.ReLU(), lib.nn.Linear(8, 3))

    net, ref = make(tn), make(tn)
    ref.load_state_dict(net.state_dict())
    opts = [tn.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (net, ref)]
    crit = tn.nn.CrossEntropyLoss()

    def loss_of(model):
        def loss(a, b):
            a.sub_(a.mean(1, keepdim=True))  # normalised in place, as a data step might
            return crit(model(a), b)
        return loss

    step = tn.compile_step(loss_of(net), opts[0])
    eager_loss = loss_of(ref)
    rng = np.random.default_rng(3)
    for batch in (8, 1, 5):
        x = rng.standard_normal((batch, 4)).astype(np.float32)
        y = rng.integers(0, 3, batch)
        cx, ex = tn.tensor(x.copy()), tn.tensor(x.copy())
        got = step(cx, tn.tensor(y))
        opts[1].zero_grad()
        want = eager_loss(ex, tn.tensor(y))
        want.backward()
        opts[1].step()
        _same(got, want)
        _check_call([], [cx, ex])
        for p, q in zip(net.parameters(), ref.parameters()):
            _same(p, q)


def test_an_input_not_written_is_not_copied_back():
    class Reads(tn.nn.Module):
        def forward(self, x):
            return x * 2

    compiled = tn.compile(Reads())
    x = tn.ones(4, 3)
    compiled(x)
    assert compiled._last.written_inputs == [] and x._version == 0

    def reads(a, b):
        return a + b

    f = tn.compile(reads)
    a = tn.ones(3)
    f(a, a)  # (the same tensor twice: nothing is written, nothing to refuse)
    f(a, a)
    assert f._last.written_inputs == [] and a._version == 0
    assert f._steady is not None  # (the steady call path)


def test_the_same_input_passed_twice_and_written_is_refused_and_left_unchanged():
    def scale(a, b):
        a.mul_(2)
        return a + b

    f = tn.compile(scale)
    a, b = tn.ones(3), tn.ones(3)
    np.testing.assert_array_equal(f(a, b).numpy(), [3, 3, 3])
    assert a._version == 1
    for make in (lambda x: (x, x), lambda x: (x[:3], x[:3]),
                 lambda x: (x[:3], x.view(2, 3)[0]),
                 lambda x: (x[:3], x[1:4])):  # (the same tensor, views of one storage)
        x = tn.ones(6)
        with pytest.raises(TraceError, match="share memory"):
            f(*make(x))
        np.testing.assert_array_equal(x.numpy(), np.ones(6))
        assert x._version == 0
    x, ex = tn.arange(6.0), tn.arange(6.0)  # disjoint views of one storage: as eager mode
    _same(f(x[:3], x[3:]), scale(ex[:3], ex[3:]))
    _same(x, ex)
    m = tn.compile(_AddTwo())
    x = tn.ones(2, 3)
    with pytest.raises(TraceError, match="share memory"):
        m(x, x)
    np.testing.assert_array_equal(x.numpy(), np.ones((2, 3)))


def test_an_input_written_in_place_that_is_a_parameter_is_refused_under_no_grad():
    ours, _, _ = _twins(np.float32)
    compiled = tn.compile(ours)
    with tn.no_grad():
        compiled(tn.ones(2, 3))
        before = ours.fc.weight.detach().numpy().copy()
        with pytest.raises(TraceError, match="shares memory with a parameter"):
            compiled(ours.fc.weight[:1, :])
        np.testing.assert_array_equal(ours.fc.weight.detach().numpy(), before)


class _AddTwo(tn.nn.Module):
    def forward(self, x, y):
        x.add_(y)
        return x * y


def test_writing_an_input_through_a_view_raises_a_clear_error():
    class ThroughView(tn.nn.Module):
        def forward(self, x):
            x.t().reshape(-1).mul_(5)  # (a reshape eager mode makes as a copy)
            return x + 1

    class ViewReadAfterWrite(tn.nn.Module):
        def forward(self, x):
            v = x.t().reshape(-1)  # (a copy in eager mode: it does not see the write)
            x.mul_(2)
            return v + 1

    for module, message in ((ThroughView(), "view of input 0"),
                            (ViewReadAfterWrite(), "view of input 0 is read")):
        x = tn.ones(3, 2)
        with pytest.raises(TraceError, match=message):
            tn.compile(module)(x)
        np.testing.assert_array_equal(x.numpy(), np.ones((3, 2)))
        assert x._version == 0


def test_a_view_taken_after_the_write_reads_the_new_values():
    class ViewAfterWrite(tn.nn.Module):
        def forward(self, x):
            x.mul_(2)
            return x.view(-1) + 1

    for lib_module, x in ((ViewAfterWrite(), tn.ones(3, 2)),):
        want_x = tn.ones(3, 2)
        want = ViewAfterWrite()(want_x)
        got = tn.compile(lib_module)(x)
        _same(got, want)
        _same(x, want_x)
        assert x._version == want_x._version == 1


def _through_whole_views(lib):
    """A function writing its input through views that hold all of it, in its order."""
    def fn(x):
        x.flatten(1).relu_()
        x.view(-1).mul_(3)
        x.detach().view(x.shape[0], 2, 3).add_(1)
        y = x.reshape(x.shape[0], 6)
        y.sub_(0.5)
        return y * 2 + x.sum()
    return fn


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("grad", [True, False])
def test_an_input_written_through_views_of_all_of_it_ends_as_in_eager_mode(dtype, grad):
    compiled = tn.compile(_through_whole_views(tn))
    rng = np.random.default_rng(6)
    for batch in (5, 1, 3):
        inputs = _inputs(rng.standard_normal((batch, 6)).astype(dtype))
        with tn.set_grad_enabled(grad), torch.set_grad_enabled(grad):
            outputs = [f(x) for f, x in zip((compiled, _through_whole_views(tn),
                                             _through_whole_views(torch)), inputs)]
        _check_call(outputs, inputs)
        assert inputs[0]._version == 4


def _scaled_through_views(lib, w):
    def fn(x):
        x.view(-1, 6).mul_(w)
        x.flatten(1).add_(1)
        return (x * x).sum(1)
    return fn


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_compiled_function_gives_a_non_leaf_input_written_through_views_its_history(dtype):
    """The outputs keep their history (no backward in the function), the non-leaf input that
    requires grad takes the call's: gradients through both are eager mode's and PyTorch's."""
    w = np.linspace(-1, 1, 6).astype(dtype)
    fns = (tn.compile(_scaled_through_views(tn, tn.tensor(w))),
           _scaled_through_views(tn, tn.tensor(w)),
           _scaled_through_views(torch, torch.tensor(w)))
    rng = np.random.default_rng(7)
    for batch in (3, 1):
        a = rng.standard_normal((batch, 2, 3)).astype(dtype)
        leaves, inputs, outputs = [], [], []
        for lib, f in zip((tn, tn, torch), fns):
            leaf = lib.tensor(a.copy(), requires_grad=True)
            x = leaf * 1
            out = f(x)
            (out.sum() + x.sum()).backward()
            leaves.append(leaf)
            inputs.append(x)
            outputs.append(out)
        _check_call(outputs, inputs)
        _check_call([], [leaf.grad for leaf in leaves])


def test_a_view_of_a_leaf_that_requires_grad_written_raises_as_eager_mode():
    def fn(x):
        x.view(-1).mul_(2)
        return x * 1

    for f in (fn, tn.compile(fn)):
        with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad"):
            f(tn.ones(2, 3, requires_grad=True))


def test_setitem_on_an_input_reaches_the_callers_tensor_or_raises_a_clear_error():
    class SetItem(tn.nn.Module):
        def forward(self, x):
            x[0] = 7
            return x + 1

    class SetThroughIndexTensor(tn.nn.Module):
        def forward(self, x):
            x[tn.tensor([0, 2])] = 7
            return x + 1

    x, ex = tn.ones(3, 2), tn.ones(3, 2)
    _same(tn.compile(SetItem())(x), SetItem()(ex))
    _same(x, ex)
    assert x._version == ex._version == 1
    x = tn.ones(3, 2)
    with pytest.raises(LoweringError, match="index_put"):
        tn.compile(SetThroughIndexTensor())(x)
    np.testing.assert_array_equal(x.numpy(), np.ones((3, 2)))


def test_in_place_on_an_input_that_requires_grad_raises_as_eager_mode_or_clearly():
    ours, eager, theirs = _twins(np.float32)
    compiled = tn.compile(ours)
    leaf = [tn.ones(2, 3, requires_grad=True), torch.ones(2, 3, requires_grad=True)]
    for m, x in ((eager, leaf[0]), (theirs, leaf[1]), (compiled, leaf[0])):
        with pytest.raises(RuntimeError, match=LEAF_MESSAGE):
            m(x)
    with tn.no_grad():  # (allowed without grad, as in eager mode)
        x, ex = tn.ones(2, 3, requires_grad=True), tn.ones(2, 3, requires_grad=True)
        _same(compiled(x), eager(ex))
        _same(x, ex)
        assert x._version == ex._version == 2


def _add_weight(lib):
    """A module whose forward changes its input in place by a value that requires grad."""
    class AddWeight(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = lib.nn.Linear(3, 2)
            self.w = lib.nn.Parameter(lib.linspace(-1, 1, 3))

        def forward(self, x):
            x.mul_(2)
            x.add_(self.w)
            return self.fc(x).sum(1)
    return AddWeight


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("non_leaf", [True, False])
def test_an_input_changed_in_place_takes_the_call_s_history_as_in_eager_mode(dtype, non_leaf):
    """A non-leaf input that requires grad, or an input changed by a value that requires
    grad, takes the history of the call: a backward through the output and through the input
    used after the call gives eager mode's and PyTorch's gradients."""
    tn_dtype, torch_dtype = DTYPES[dtype]
    torch.manual_seed(0)
    theirs = _add_weight(torch)().to(torch_dtype)
    ours = _add_weight(tn)().to(tn_dtype)
    ours.load_state_dict({k: tn.tensor(v.detach().numpy().copy())
                          for k, v in theirs.state_dict().items()})
    eager = copy.deepcopy(ours)
    compiled = tn.compile(ours)
    rng = np.random.default_rng(5)
    for batch in (4, 1):
        a = rng.standard_normal((batch, 3)).astype(dtype)
        leaves, inputs, outputs = [], [], []
        for lib, m in ((tn, compiled), (tn, eager), (torch, theirs)):
            leaf = lib.tensor(a.copy(), requires_grad=non_leaf)
            x = leaf * 1 if non_leaf else leaf
            out = m(x)
            assert x.requires_grad and not x.is_leaf
            (out.sum() + (x ** 2).sum()).backward()
            leaves.append(leaf)
            inputs.append(x)
            outputs.append(out)
        _check_call(outputs, inputs)
        for m in (eager, theirs):
            for p, q in zip(ours.parameters(), m.parameters()):
                _same(p.grad, q.grad)
        if non_leaf:
            _same(leaves[0].grad, leaves[1].grad)
            _same(leaves[0].grad, leaves[2].grad)
        for m in (ours, eager, theirs):
            m.zero_grad()


def test_a_view_input_taking_the_call_s_history_in_place_is_refused():
    compiled = tn.compile(_add_weight(tn)())
    base = tn.ones(4, 3, requires_grad=True) * 1
    with pytest.raises(TraceError, match="is a view"):
        compiled(base[1:])
    np.testing.assert_array_equal(base.detach().numpy(), np.ones((4, 3)))


def test_a_function_that_calls_backward_refuses_an_input_taking_history():
    net = _add_weight(tn)()

    def step(x):
        loss = net(x).sum()
        loss.backward()
        return loss.detach()

    f = tn.compile(step)
    with pytest.raises(TraceError, match="value that requires grad"):
        f(tn.ones(2, 3))
    with tn.no_grad():  # (without grad the input takes the values alone, as in eager mode)
        x, ex = tn.ones(2, 3), tn.ones(2, 3)
        _same(tn.compile(lambda a: net(a))(x), net(ex))
        _same(x, ex)


@pytest.mark.parametrize("threads", [1, 2])
def test_nan_arenas_and_threads(nan_arenas_split, threads):
    """Work memory all NaN, every kernel split between the threads: the inputs' new values
    are all written."""
    tn.set_num_threads(threads)
    ours, eager, theirs = _twins(np.float32)
    compiled = tn.compile(ours)
    rng = np.random.default_rng(4)
    for batch in (9, 2):
        inputs = _inputs(rng.standard_normal((batch, 3)).astype(np.float32))
        outputs = [m(x) for m, x in zip((compiled, eager, theirs), inputs)]
        _check_call(outputs, inputs)


# an input changed in place by an op whose backward reads its old value: eager mode's op
# saves a snapshot of that value (nothing to refuse); a backward reading the input itself,
# saved by an op before the change, or the changed input as the op's other operand, raises
SNAPSHOTS = {
    "x.mul_(w)": (lambda x, w: (x.mul_(w), x * 1)[1], {False: "ok", True: "ok"}),
    "x.mul_(x)": (lambda x, w: (x.mul_(x), x * w)[1], {False: "ok", True: "raises"}),
    "x.div_(w); x.add_(w)": (lambda x, w: (x.div_(w), x.add_(w), x * x)[2],
                             {False: "ok", True: "ok"}),
    "y = x * w; x.mul_(2)": (lambda x, w: (lambda y: (x.mul_(2), y)[1])(x * w),
                             {False: "raises", True: "raises"}),
    "y = x.sin(); x.add_(1)": (lambda x, w: (lambda y: (x.add_(1), y * w)[1])(x.sin()),
                               {False: "ok", True: "raises"}),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("input_grad", [False, True])
@pytest.mark.parametrize("case", list(SNAPSHOTS))
def test_an_input_changed_by_an_op_saving_its_old_value_backwards_as_eager_mode(case, input_grad,
                                                                                dtype):
    fn, outcome = SNAPSHOTS[case]
    compiled = tn.compile(fn)
    a = np.random.default_rng(13).uniform(0.5, 1.5, (4, 3)).astype(dtype)
    results = []
    for lib, f in ((tn, compiled), (tn, fn), (torch, fn)):
        leaf = lib.tensor(a.copy(), requires_grad=True)
        x = leaf * 1 if input_grad else lib.tensor(a.copy())
        w_leaf = lib.tensor(a[::-1].copy(), requires_grad=True)
        out = f(x, w_leaf * 2)
        if outcome[input_grad] == "raises":
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                out.sum().backward()
            continue
        out.sum().backward()
        results.append([t.detach().numpy() for t in (out, x, w_leaf.grad)] +
                       ([leaf.grad.numpy()] if input_grad else []))
    for ours, theirs in zip(results, results[1:]):
        for p, q in zip(ours, theirs):
            np.testing.assert_allclose(p, q, **TOL)
