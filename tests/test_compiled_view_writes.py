"""In-place writes through a view of a traced tensor (an intermediate, an input, a parameter or
buffer) inside compiled code: the compiled call returns eager mode's values (and gradients),
which agree with PyTorch's, or raises ``TraceError`` at trace time; never a different answer.
Writes through a view of all of the tensor (view, reshape of a known layout, transpose,
permute, unsqueeze, squeeze, detach), through a basic index (ints, slices of any step, None,
..., select, narrow) or through the outputs of split/chunk/unbind, and chains of these, are
carried to it, and so are assignments ``h[key] = v`` (basic keys, a mask); writes through an
expand or a reshape eager mode may copy, and reads of a view taken before a write that may
have changed it, raise."""
import copy

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn
from tracenet.codegen.base import LoweringError
from tracenet.trace import TraceError

TOL = dict(rtol=1e-5, atol=1e-6)
DTYPES = {np.float32: (tn.float32, torch.float32), np.float64: (tn.float64, torch.float64)}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tn-cache"))


# the view ops eager mode has, on a (batch, 3) tensor, with whether compiled code carries a
# write through the view to an intermediate (True) or refuses it (False)
VIEWS = {
    "int index": (lambda h: h[0], True),
    "negative index": (lambda h: h[-1], True),
    "slice": (lambda h: h[:, 1:3], True),
    "slice to the end": (lambda h: h[:, 1:], True),
    "slice of all": (lambda h: h[:, :], True),
    "slice of a slice": (lambda h: h[:, :2][:, 1], True),
    "stepped slice": (lambda h: h[:, ::2], True),
    "stepped slice from 1": (lambda h: h[1::2, 1::2], True),
    "ellipsis index": (lambda h: h[..., 0], True),
    "None index": (lambda h: h[None], True),
    "None and int index": (lambda h: h[None, 0], True),
    "select": (lambda h: h.select(1, 0), True),
    "narrow": (lambda h: h.narrow(1, 0, 2), True),
    "narrow of the batch": (lambda h: h.narrow(0, 0, 1), True),
    "two partial dims": (lambda h: h[:1, 1:], True),
    "stepped slice of a slice": (lambda h: h[:, 1:][:, ::2], True),
    "slice then view": (lambda h: h[:, 1:3].unsqueeze(0), True),
    "slice then reshape": (lambda h: h[:, 1:3].reshape(-1), False),
    "view": (lambda h: h.view(-1), True),
    "view_as": (lambda h: h.view_as(h), True),
    "reshape": (lambda h: h.reshape(-1), False),  # (eager copies an intermediate of another
    "flatten": (lambda h: h.flatten(), False),    # layout: refused, not guessed)
    "unflatten": (lambda h: h.flatten().unflatten(0, (-1, 3)), False),
    "t": (lambda h: h.t(), True),
    "T": (lambda h: h.T, True),
    "mT": (lambda h: h.mT, True),
    "transpose": (lambda h: h.transpose(0, 1), True),
    "swapaxes": (lambda h: h.swapaxes(0, 1), True),
    "permute": (lambda h: h.permute(1, 0), True),
    "unsqueeze": (lambda h: h.unsqueeze(1), True),
    "squeeze": (lambda h: h.unsqueeze(0).squeeze(0), True),
    "transpose then view": (lambda h: h.t().unsqueeze(0), True),
    "transpose then reshape": (lambda h: h.t().reshape(-1), False),
    "transpose then index": (lambda h: h.t()[1], True),
    "expand": (lambda h: h[:, :1].expand(-1, 3), False),
    "chunk": (lambda h: h.chunk(3, 1)[0], True),
    "split": (lambda h: h.split(1, 1)[1], True),
    "split with sizes": (lambda h: h.split([1, 2], 1)[1], True),
    "unbind": (lambda h: h.unbind(1)[2], True),
    "chunk of the batch": (lambda h: h.chunk(2, 0)[-1], True),
    "chunk then index": (lambda h: h.chunk(3, 1)[2][0], True),
    "detach": (lambda h: h.detach(), True),
}


def _index_of_zeros(lib, v):
    return lib.zeros(tuple(v.shape[:-1]) + (1,), dtype=lib.int64)


# in-place ops of every kind, each a function of (library, view)
WRITES = {
    "add_": lambda lib, v: v.add_(1.5),
    "sub_": lambda lib, v: v.sub_(v * 0.5),
    "mul_": lambda lib, v: v.mul_(3),
    "div_": lambda lib, v: v.div_(4),
    "pow_": lambda lib, v: v.pow_(2),
    "+=": lambda lib, v: v.__iadd__(2),
    "clamp_": lambda lib, v: v.clamp_(max=0.25),
    "relu_": lambda lib, v: v.relu_(),
    "relu(inplace)": lambda lib, v: lib.nn.functional.relu(v, inplace=True),
    "sigmoid_": lambda lib, v: v.sigmoid_(),
    "masked_fill_": lambda lib, v: v.masked_fill_(v > 0, -2.0),
    "scatter_": lambda lib, v: v.scatter_(-1, _index_of_zeros(lib, v), 7.0),
    "copy_": lambda lib, v: v.copy_(v * 0 + 2),
    "fill_": lambda lib, v: v.fill_(2.5),
    "zero_": lambda lib, v: v.zero_(),
    "setitem": lambda lib, v: v.__setitem__(0, 4.0),
}
# outputs of an op returning several views: eager mode (as PyTorch) refuses to write them in
# place while recording grad, and so does compiled code, with its error
MULTI_VIEWS = {"chunk", "split", "split with sizes", "unbind", "chunk of the batch"}
MULTI_VIEW_ERROR = "is a view and is being modified inplace"


def _run(fn, compiled, x_array, grad, tn_dtype):
    """The output (and the input's gradient) of ``fn`` and of ``compiled`` on ``x_array``."""
    results = []
    for f in (fn, compiled):
        x = tn.tensor(x_array.copy(), dtype=tn_dtype, requires_grad=grad)
        out = f(x)
        if grad:
            (out * out).sum().backward()
        results.append((out.detach().numpy(), x.grad.numpy() if grad else None))
    return results


def _torch_run(fn, x_array, grad):
    x = torch.tensor(x_array.copy(), requires_grad=grad)
    out = fn(x)
    if grad:
        (out * out).sum().backward()
    return out.detach().numpy(), x.grad.numpy() if grad else None


def _same(a, b):
    np.testing.assert_allclose(a[0], b[0], **TOL)
    if a[1] is not None:
        np.testing.assert_allclose(a[1], b[1], **TOL)


def _through_view_of_intermediate(lib, view, write):
    def f(x):
        h = x * 2 - 1
        write(lib, view(h))
        return h * 3
    return f


def _check_eager_or_trace_error(lib_fn, torch_fn, carried, batches=(5, 1, 4),
                                dtype=np.float32, grad=False, lowered=True):
    """The compiled ``lib_fn`` gives eager mode's values and gradients (which agree with
    PyTorch's), batch after batch, or raises ``TraceError``; it does not raise when
    ``carried`` (but ``LoweringError`` when not ``lowered``). When eager mode raises, the
    compiled call raises too."""
    tn_dtype, _ = DTYPES[dtype]
    compiled = tn.compile(lib_fn)
    rng = np.random.default_rng(0)
    for batch in batches:
        x_array = rng.standard_normal((batch, 3)).astype(dtype)
        try:
            eager = _run(lib_fn, lib_fn, x_array, grad, tn_dtype)[0]
        except Exception:
            with pytest.raises(Exception):
                _run(lib_fn, compiled, x_array, grad, tn_dtype)
            return "eager error"
        if not carried:
            with pytest.raises(TraceError, match="through a view"):
                _run(lib_fn, compiled, x_array, grad, tn_dtype)
            return "refused"
        if not lowered:
            with pytest.raises(LoweringError, match="no C lowering"):
                _run(lib_fn, compiled, x_array, grad, tn_dtype)
            return "not lowered"
        _, compiled_result = _run(lib_fn, compiled, x_array, grad, tn_dtype)
        _same(compiled_result, eager)
        _same(eager, _torch_run(torch_fn, x_array, grad))
    return "carried"


# the default run: every view with a write of each kind (an op on the values, one under a mask,
# an assignment), every write through views of each kind (a part, a part of a part, all of
# it transposed, an output of chunk); `pytest -m sweep` runs every pair
DEFAULT_WRITES = {"add_", "masked_fill_", "setitem"}
DEFAULT_VIEWS = {"slice", "stepped slice of a slice", "transpose", "chunk"}


@sweep.keep(lambda p: p["write"] in DEFAULT_WRITES or p["view"] in DEFAULT_VIEWS)
@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("view", list(VIEWS))
def test_a_write_through_a_view_of_an_intermediate_gives_eager_values_or_refuses(view, write):
    make, carried = VIEWS[view]
    w = WRITES[write]
    outcome = _check_eager_or_trace_error(_through_view_of_intermediate(tn, make, w),
                                          _through_view_of_intermediate(torch, make, w),
                                          carried, batches=(5, 1))
    if view == "expand":
        assert outcome == "eager error"


# (a write through a view of an output of split with grad: eager mode writes it, PyTorch
# refuses it; compiled code gives eager mode's values, tested without grad)
CARRIED = [name for name, (_, carried) in VIEWS.items() if carried and name != "chunk then index"]


@sweep.keep(lambda p: p["dtype"] == np.float32 or p["view"] in DEFAULT_VIEWS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("view", CARRIED)
def test_a_write_through_a_view_of_all_of_an_intermediate_gets_eager_gradients(view, grad,
                                                                                dtype):
    make, _ = VIEWS[view]
    write = WRITES["masked_fill_" if grad else "add_"]
    carried = not (grad and view == "detach")  # (a detached view of a tensor needing grad)
    _check_eager_or_trace_error(_through_view_of_intermediate(tn, make, write),
                                _through_view_of_intermediate(torch, make, write),
                                carried, dtype=dtype, grad=grad)


@pytest.mark.parametrize("view", sorted(MULTI_VIEWS))
def test_a_write_through_an_output_of_split_with_grad_raises_eager_modes_error(view):
    make, _ = VIEWS[view]
    f = _through_view_of_intermediate(tn, make, WRITES["mul_"])
    x_array = np.ones((4, 3), np.float32)
    for fn in (f, tn.compile(f)):
        with pytest.raises(RuntimeError, match=MULTI_VIEW_ERROR) as eager_or_compiled:
            _run(fn, fn, x_array, True, tn.float32)
        assert not isinstance(eager_or_compiled.value, TraceError)
    with pytest.raises(RuntimeError, match=MULTI_VIEW_ERROR):
        _torch_run(_through_view_of_intermediate(torch, make, WRITES["mul_"]), x_array, True)


def test_the_reported_case_gives_eager_modes_answer():
    def f(x):
        h = x * 1
        h[0].mul_(5)
        return h
    assert f(tn.ones(2, 3)).tolist() == [[5, 5, 5], [1, 1, 1]]
    assert tn.compile(f)(tn.ones(2, 3)).tolist() == [[5, 5, 5], [1, 1, 1]]


def test_a_refused_write_raises_a_trace_error_naming_the_op():
    def f(x):
        h = x * 1
        h[:, 1:].reshape(-1).mul_(5)
        return h
    with pytest.raises(TraceError, match=r"mul_ writes in place through a view of a tensor "
                                         r"computed in the traced code.*eagerly"):
        tn.compile(f)(tn.ones(2, 3))


def test_a_setitem_through_a_view_names_the_assignment():
    def f(x):
        h = x * 1
        h[:, 1:].reshape(-1)[0] = 3.0
        return h
    with pytest.raises(TraceError, match=r"assignment to an index .* through a view"):
        tn.compile(f)(tn.ones(2, 3))


# --- stale views: taken, then their tensor changed in place, then read ------------------------

# a view taken, then its tensor changed in place (each a function of the tensor h and the
# input x), then the view read: eager mode's view sees the new values, and so does compiled
# code's, the view taken again of the tensor's new value
STALE = {
    "part, base written": lambda h, x: (h[0], h.add_(1))[0],
    "all, base written": lambda h, x: (h.view(-1), h.mul_(2))[0],
    "transposed, base written through another view": lambda h, x: (h.t(),
                                                                   h.view(-1).mul_(2))[0],
    "part, base written by setitem": lambda h, x: (h[:, 0], h.__setitem__(1, 5.0))[0],
    "a chunk, the other overlapping": lambda h, x: (h[:, :2], h[:, 1:3].mul_(x[:, :2]))[0],
    "a column, every other column written": lambda h, x: (h[:, 2], h[:, ::2].zero_())[0],
    "a row, a view of all written": lambda h, x: (h[1], h.t()[0].add_(1))[0],
    "a part, the tensor written by assignment": lambda h, x: (
        h[:, 2:], h.__setitem__((slice(None), 3), x[:, 0]))[0],
    "a view of a view, a part of it written": lambda h, x: (h[1:][:, 1:], h[:, 2].relu_())[0],
    "a parent, a part of it written": lambda h, x: (lambda a: (a, a[:, 1].mul_(x[:, 1]))[0])(
        h[:, :2]),
    "a detached view": lambda h, x: (h.detach()[0], h.add_(x))[0],
}


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("case", list(STALE))
def test_reading_a_view_taken_before_its_tensor_changed_reads_the_new_values(case, grad):
    def f(x):
        h = x * 2
        return STALE[case](h, x) * 3 + x.sum() * 0.5  # (a gradient however the view is)
    rng = np.random.default_rng(11)
    compiled = tn.compile(f)
    for batch in (3, 4):
        a = rng.standard_normal((batch, 4)).astype(np.float64)
        results = [_wide_run(fn, a, grad, tn.float64) for fn in (f, compiled)]
        _same(results[1], results[0])
        _same(results[0], _wide_run(f, a, grad, tn.float64, lib=torch))


def test_reading_a_reshape_eager_mode_may_have_copied_after_its_tensor_changed_raises():
    def f(x):
        h = (x * 2).t()
        v = h.reshape(-1)  # (of a transposed intermediate: a copy in eager mode)
        h.add_(1)
        return v * 1
    x = tn.ones(2, 3)
    np.testing.assert_allclose(f(x).numpy(), np.full(6, 2.0))
    with pytest.raises(TraceError, match="read after an in-place op"):
        tn.compile(f)(x)


def test_a_view_written_stays_readable_and_other_views_taken_after_see_the_write():
    def f(lib, x):
        h = x * 2
        v = h.t()
        v.mul_(3)
        w = h.view(-1)
        return v + 1, w * 1, h
    x = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    compiled = tn.compile(lambda x: f(tn, x))
    for got, eager, theirs in zip(compiled(tn.tensor(x)), f(tn, tn.tensor(x)),
                                  f(torch, torch.tensor(x))):
        np.testing.assert_allclose(got.numpy(), eager.numpy(), **TOL)
        np.testing.assert_allclose(eager.numpy(), theirs.numpy(), **TOL)


# --- inputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_write_through_a_view_of_an_input_reaches_the_callers_tensor(dtype):
    tn_dtype, _ = DTYPES[dtype]

    def f(x):
        x.t().mul_(2)
        x.unsqueeze(0).add_(1)
        x[0].mul_(5)
        x.narrow(1, 1, 2).clamp_(min=0)
        return x.sum(1)
    compiled = tn.compile(f)
    rng = np.random.default_rng(3)
    for batch in (5, 1, 4):
        a = rng.standard_normal((batch, 3)).astype(dtype)
        ours, eager, theirs = tn.tensor(a, dtype=tn_dtype), tn.tensor(a, dtype=tn_dtype), \
            torch.tensor(a)
        outs = [compiled(ours), f(eager), f(theirs)]
        for out, x in zip(outs[1:], (eager, theirs)):
            np.testing.assert_allclose(outs[0].numpy(), out.detach().numpy(), **TOL)
            np.testing.assert_allclose(ours.numpy(), x.numpy(), **TOL)
        assert ours._version == eager._version == 4


@pytest.mark.parametrize("view", ["transpose then reshape", "slice then reshape", "expand"])
def test_a_write_through_part_of_an_input_raises(view):
    make, _ = VIEWS[view]

    def f(x):
        make(x).add_(1)
        return x * 1
    with pytest.raises(TraceError, match="input 0"):
        tn.compile(f)(tn.ones(4, 3))


# --- modules: intermediates, parameters and buffers ---------------------------------------------

def _module(lib, view, write):
    class Net(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = lib.nn.Linear(3, 3)

        def forward(self, x):
            h = self.fc(x)
            write(lib, view(h))
            return h.tanh()
    return Net


def _module_twins(view, write, dtype):
    tn_dtype, torch_dtype = DTYPES[dtype]
    torch.manual_seed(0)
    theirs = _module(torch, view, write)().to(torch_dtype)
    ours = _module(tn, view, write)().to(tn_dtype)
    ours.load_state_dict({k: tn.tensor(v.detach().numpy().copy())
                          for k, v in theirs.state_dict().items()})
    return ours, copy.deepcopy(ours), theirs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("view", ["t", "view", "unsqueeze", "int index", "narrow", "slice",
                                  "split", "stepped slice"])
def test_a_compiled_module_writing_through_a_view_trains_as_eager_mode_or_refuses(view, dtype):
    make, carried = VIEWS[view]
    ours, eager, theirs = _module_twins(make, WRITES["clamp_"], dtype)
    tn_dtype, _ = DTYPES[dtype]
    compiled = tn.compile(ours)
    rng = np.random.default_rng(4)
    for batch in (6, 1):
        a = rng.standard_normal((batch, 3)).astype(dtype)
        if not carried:
            with pytest.raises(TraceError, match="through a view"):
                compiled(tn.tensor(a, dtype=tn_dtype))
            return
        if view in MULTI_VIEWS:
            for m in (compiled, eager):
                with pytest.raises(RuntimeError, match=MULTI_VIEW_ERROR):
                    m(tn.tensor(a, dtype=tn_dtype))
            return
        outs = []
        for m, x in ((compiled, tn.tensor(a, dtype=tn_dtype)),
                     (eager, tn.tensor(a, dtype=tn_dtype)), (theirs, torch.tensor(a))):
            out = m(x)
            (out ** 2).sum().backward()
            outs.append(out.detach().numpy())
        np.testing.assert_allclose(outs[0], outs[1], **TOL)
        np.testing.assert_allclose(outs[1], outs[2], **TOL)
        for p, q, t in zip(ours.parameters(), eager.parameters(), theirs.parameters()):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), **TOL)
            np.testing.assert_allclose(q.grad.numpy(), t.grad.numpy(), **TOL)


def _counting(lib, view):
    class Counting(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("seen", lib.zeros(2, 3))

        def forward(self, x):
            view(self.seen).add_(1)
            return x + self.seen.sum()
    return Counting


@pytest.mark.parametrize("view", ["view", "reshape", "t", "int index", "slice", "expand",
                                  "slice then reshape"])
def test_a_buffer_written_through_a_view_updates_as_eager_mode_or_refuses(view):
    make = {"view": lambda b: b.view(-1), "reshape": lambda b: b.reshape(3, 2),
            "t": lambda b: b.t(), "int index": lambda b: b[0],
            "slice": lambda b: b[:, 1:], "expand": lambda b: b[:, :1].expand(2, 3)[:, 0],
            "slice then reshape": lambda b: b[:, 1:].reshape(-1)}[view]
    # (a buffer's layout is known, row-major: its reshape is a view in eager mode)
    carried = view not in ("expand", "slice then reshape")
    ours, eager, theirs = _counting(tn, make)(), _counting(tn, make)(), _counting(torch, make)()
    compiled = tn.compile(ours)
    for batch in (3, 1):
        a = np.ones((batch, 2), np.float32)
        if not carried:
            with pytest.raises(TraceError, match="a parameter or buffer"):
                compiled(tn.tensor(a))
            return
        outs = [compiled(tn.tensor(a)), eager(tn.tensor(a)), theirs(torch.tensor(a))]
        for out in outs[1:]:
            np.testing.assert_allclose(outs[0].numpy(), out.detach().numpy(), **TOL)
        np.testing.assert_allclose(ours.seen.numpy(), eager.seen.numpy(), **TOL)
        np.testing.assert_allclose(eager.seen.numpy(), theirs.seen.numpy(), **TOL)


def test_a_parameter_written_through_a_view_with_grad_raises_eager_modes_error():
    class Net(tn.nn.Linear):
        def forward(self, x):
            self.weight.t().mul_(2)
            return super().forward(x)
    net = Net(3, 2)
    with pytest.raises(RuntimeError, match="view of a leaf Variable"):
        net(tn.ones(1, 3))
    with pytest.raises(RuntimeError, match="view of a leaf Variable"):
        tn.compile(net)(tn.ones(1, 3))


def test_a_parameter_is_left_unmarked_after_a_trace():
    class Net(tn.nn.Linear):
        def forward(self, x):
            w = self.weight.t()
            return x @ w
    net = Net(3, 2)
    tn.compile(net)(tn.ones(2, 3))
    assert "_traced_writes" not in net.weight.__dict__


# --- a compiled training step ---------------------------------------------------------------

@pytest.mark.parametrize("view", ["t", "int index", "chunk", "stepped slice", "two partial dims",
                                  "ellipsis index"])
def test_a_compiled_training_step_writing_through_a_view_trains_as_eager_mode_or_refuses(view):
    make, carried = VIEWS[view]

    def build():
        torch.manual_seed(0)
        theirs = _module(torch, make, WRITES["mul_"])()
        ours = _module(tn, make, WRITES["mul_"])()
        ours.load_state_dict({k: tn.tensor(v.detach().numpy().copy())
                              for k, v in theirs.state_dict().items()})
        return ours, theirs

    ours, theirs = build()
    eager, _ = build()

    def step(lib, net, opt, x):
        opt.zero_grad()
        loss = (net(x) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    opt_ours = tn.optim.SGD(ours.parameters(), lr=0.1)
    opt_eager = tn.optim.SGD(eager.parameters(), lr=0.1)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1)
    compiled = tn.compile(lambda x: step(tn, ours, opt_ours, x))
    rng = np.random.default_rng(5)
    for batch in (4, 1, 4):
        a = rng.standard_normal((batch, 3)).astype(np.float32)
        if not carried:
            with pytest.raises(TraceError, match="through a view"):
                compiled(tn.tensor(a))
            return
        if view in MULTI_VIEWS:
            with pytest.raises(RuntimeError, match=MULTI_VIEW_ERROR):
                compiled(tn.tensor(a))
            with pytest.raises(RuntimeError, match=MULTI_VIEW_ERROR):
                step(tn, eager, opt_eager, tn.tensor(a))
            return
        losses = [compiled(tn.tensor(a)), step(tn, eager, opt_eager, tn.tensor(a)),
                  step(torch, theirs, opt_theirs, torch.tensor(a))]
        for loss in losses[1:]:
            np.testing.assert_allclose(losses[0].item(), loss.item(), **TOL)
        for p, q, t in zip(ours.parameters(), eager.parameters(), theirs.parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **TOL)
            np.testing.assert_allclose(q.detach().numpy(), t.detach().numpy(), **TOL)


def test_a_write_through_a_view_keeps_the_batch_size_symbolic():
    def f(x):
        h = x * 2
        h.t().unsqueeze(0).mul_(3)
        h.view(-1).add_(1)
        h[:, 1:].relu_()
        h.t()[0].clamp_(max=2)
        return h.sum(1)
    compiled = tn.compile(f)
    for batch in (5, 1, 3):
        x = tn.tensor(np.arange(batch * 3, dtype=np.float32).reshape(batch, 3))
        np.testing.assert_allclose(compiled(x).numpy(), f(x).numpy(), **TOL)
    assert len(compiled._specs) == 1  # every batch size from one build


def test_a_write_through_a_part_of_the_batch_gives_eager_values_at_every_batch_size():
    def f(x):
        h = x * 2
        h[0].mul_(3)
        h[1:].add_(1)
        return h
    compiled = tn.compile(f)
    for batch in (5, 1, 3):
        x = np.arange(batch * 3, dtype=np.float32).reshape(batch, 3)
        np.testing.assert_allclose(compiled(tn.tensor(x)).numpy(), f(tn.tensor(x)).numpy(),
                                   **TOL)
        np.testing.assert_allclose(f(tn.tensor(x)).numpy(), f(torch.tensor(x)).numpy(), **TOL)


def test_writes_through_views_of_views_give_eager_values():
    def f(lib, x):
        h = x * 2
        v = h[1:3]
        v.mul_(2)
        v[:, 0].add_(10)  # (a view of a view written before)
        w = h.t()
        w.sub_(1)
        w[2].relu_()
        return h * 1
    a = np.random.default_rng(6).standard_normal((4, 3)).astype(np.float32)
    got = tn.compile(lambda x: f(tn, x))(tn.tensor(a)).numpy()
    np.testing.assert_allclose(got, f(tn, tn.tensor(a)).numpy(), **TOL)
    np.testing.assert_allclose(got, f(torch, torch.tensor(a)).numpy(), **TOL)


def test_a_write_under_no_grad_through_a_view_of_a_tensor_needing_grad_raises():
    def f(x):
        h = x * 2
        with tn.no_grad():
            h[0].mul_(3)
        return h * 3 + x
    with pytest.raises(TraceError, match="under no_grad"):
        tn.compile(f)(tn.ones(2, 3, requires_grad=True))


@pytest.mark.parametrize("kind", ["module", "function"])
def test_an_input_written_through_a_reshape_must_be_contiguous(kind):
    class Flat(tn.nn.Module):
        def forward(self, x):
            x.reshape(-1).mul_(2)
            return x.sum(1)
    compiled = tn.compile(Flat()) if kind == "module" else tn.compile(Flat().forward)
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    x, eager = tn.tensor(a), tn.tensor(a)
    np.testing.assert_allclose(compiled(x).numpy(), Flat()(eager).numpy(), **TOL)
    np.testing.assert_allclose(x.numpy(), eager.numpy(), **TOL)
    # eager mode's reshape of a transposed tensor is a copy: the write does not reach it
    x, eager = tn.tensor(a).t(), tn.tensor(a).t()
    Flat()(eager)
    np.testing.assert_allclose(eager.numpy(), a.T)
    with pytest.raises(TraceError, match="input 0 .* not contiguous"):
        compiled(x)
    np.testing.assert_allclose(x.numpy(), a.T)
    # a view that only adds or drops dims of size 1 is a view of any layout: no such check
    x, eager = tn.tensor(a).t(), tn.tensor(a).t()
    tn.compile(lambda x: x.unsqueeze(0).mul_(2).sum())(x)
    eager.unsqueeze(0).mul_(2)
    np.testing.assert_allclose(x.numpy(), eager.numpy(), **TOL)
    np.testing.assert_allclose(eager.numpy(), a.T * 2, **TOL)


# --- assignments h[key] = v on a traced tensor --------------------------------------------------

def _row(lib, h):
    return lib.arange(h.shape[1], dtype=h.dtype) * 0.5


# each a function of (library, h, x): writes h by assignment (x: the input, for values that
# carry its gradient)
ASSIGNMENTS = {
    "int, scalar": lambda lib, h, x: h.__setitem__(0, 4.0),
    "negative int, row": lambda lib, h, x: h.__setitem__(-1, _row(lib, h)),
    "slice, values of the input": lambda lib, h, x: h.__setitem__(
        (slice(None), slice(1, 3)), x[:, :2] * 10),
    "stepped slice": lambda lib, h, x: h.__setitem__((Ellipsis, slice(None, None, 2)), -1.0),
    "two partial dims": lambda lib, h, x: h.__setitem__((slice(1, 3), slice(2, 4)), x[:1, :2]),
    "None and int": lambda lib, h, x: h.__setitem__((None, 0), _row(lib, h)),
    "all": lambda lib, h, x: h.__setitem__(Ellipsis, x * 3),
    "mask, scalar": lambda lib, h, x: h.__setitem__(h > 0, 0.0),
    "mask, value of the input": lambda lib, h, x: h.__setitem__(x < 0, x.sum()),
    "mask of rows, row": lambda lib, h, x: h.__setitem__(h[:, 0] > 0, _row(lib, h)),
    "+= through a stepped slice": lambda lib, h, x: h[:, ::2].__iadd__(x[:, 1::2]),
    "through a view of a view": lambda lib, h, x: h[:, 1:][..., ::2].__setitem__(
        (slice(None), 1), 7.0),
    "through chunks": lambda lib, h, x: [c.__setitem__(0, 1.0 + i)
                                        for i, c in enumerate(h.chunk(2, 1))],
}


MULTI_VIEW_ASSIGNMENTS = {"through chunks"}
# (a key into the batch dim, or a value read through one, specialises on the batch size)
SYMBOLIC_ASSIGNMENTS = {"stepped slice", "all", "mask, scalar", "mask, value of the input",
                        "mask of rows, row", "+= through a stepped slice",
                        "through chunks"}


def _assigning(lib, assign):
    def f(x):
        h = x * 2 - 1
        assign(lib, h, x)
        return h * 3
    return f


def _wide_run(fn, x_array, grad, tn_dtype, lib=tn):
    x = tn.tensor(x_array.copy(), dtype=tn_dtype, requires_grad=grad) if lib is tn else \
        torch.tensor(x_array.copy(), requires_grad=grad)
    out = fn(x)
    if grad:
        (out * out).sum().backward()
    return out.detach().numpy(), x.grad.numpy() if grad else None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("assignment", list(ASSIGNMENTS))
def test_an_assignment_to_an_index_of_an_intermediate_gives_eager_values(assignment, grad,
                                                                          dtype):
    tn_dtype, _ = DTYPES[dtype]
    f = _assigning(tn, ASSIGNMENTS[assignment])
    compiled = tn.compile(f)
    rng = np.random.default_rng(7)
    if grad and assignment in MULTI_VIEW_ASSIGNMENTS:
        for fn in (f, compiled):
            with pytest.raises(RuntimeError, match=MULTI_VIEW_ERROR):
                _wide_run(fn, rng.standard_normal((3, 4)).astype(dtype), grad, tn_dtype)
        return
    for batch in (5, 1, 4):
        x_array = rng.standard_normal((batch, 4)).astype(dtype)
        eager = _wide_run(f, x_array, grad, tn_dtype)
        _same(_wide_run(compiled, x_array, grad, tn_dtype), eager)
        _same(eager, _wide_run(_assigning(torch, ASSIGNMENTS[assignment]), x_array, grad,
                               tn_dtype, lib=torch))
    if assignment in SYMBOLIC_ASSIGNMENTS:
        assert len(compiled._specs) == 1  # every batch size from one build


def test_an_assignment_through_index_tensors_raises_a_clear_lowering_error():
    def f(x):
        h = x * 1
        h[tn.tensor([0, 2])] = 5.0
        return h
    np.testing.assert_allclose(f(tn.ones(3, 2)).numpy(), [[5, 5], [1, 1], [5, 5]])
    with pytest.raises(LoweringError, match=r"assignment through index tensors.*eager mode"):
        tn.compile(f)(tn.ones(3, 2))


def test_an_assignment_through_a_mask_of_values_as_many_as_it_takes_raises():
    def f(x):
        h = x * 1
        h[h > 0] = tn.ones(6)
        return h
    assert f(tn.ones(3, 2)).tolist() == [[1, 1]] * 3
    with pytest.raises(TraceError, match=r"mask .* must not depend on how many elements"):
        tn.compile(f)(tn.ones(3, 2))


def test_an_assignment_to_an_input_reaches_the_callers_tensor():
    def f(lib, x):
        x[0] = 2.0
        x[:, ::2] *= 3
        x[x > 5] = 5.0
        return x.sum(1)
    compiled = tn.compile(lambda x: f(tn, x))
    rng = np.random.default_rng(8)
    for batch in (4, 1, 3):
        a = rng.standard_normal((batch, 3)).astype(np.float32)
        ours, eager, theirs = tn.tensor(a), tn.tensor(a), torch.tensor(a)
        outs = [compiled(ours), f(tn, eager), f(torch, theirs)]
        for out, x in zip(outs[1:], (eager, theirs)):
            np.testing.assert_allclose(outs[0].numpy(), out.numpy(), **TOL)
            np.testing.assert_allclose(ours.numpy(), x.numpy(), **TOL)
        assert ours._version == eager._version


# --- views apart: a write through one part leaves the others current ----------------------------

def test_writes_through_parts_apart_leave_each_other_current():
    def f(lib, x):
        h = x * 2
        a, b, c = h.chunk(3, 1)
        a.mul_(3)
        b.add_(1)         # (b is apart from a: still current)
        b[::2].neg_()
        row = a[1]
        a[0].sub_(1)      # (row 1 of a is apart from row 0)
        return h * 1, a + 0, b + 0, c * 1, row * 1
    rng = np.random.default_rng(9)
    compiled = tn.compile(lambda x: f(tn, x))
    for batch in (4, 3):
        a = rng.standard_normal((batch, 6)).astype(np.float32)
        for ours, eager, theirs in zip(compiled(tn.tensor(a)), f(tn, tn.tensor(a)),
                                       f(torch, torch.tensor(a))):
            np.testing.assert_allclose(ours.numpy(), eager.numpy(), **TOL)
            np.testing.assert_allclose(eager.numpy(), theirs.numpy(), **TOL)


@pytest.mark.parametrize("threads", [1, 2])
def test_writes_through_views_with_nan_arenas_and_threads(nan_arenas_split, threads):
    """Work memory all NaN, every kernel split between the threads: every element of a tensor
    written through a part is written (the unchanged ones copied)."""
    tn.set_num_threads(threads)

    def f(lib, x):
        h = x * 2
        h[:, ::2] = 1.0
        h[1:3, 1:3] += x[:2, :2]
        a, b = h.chunk(2, 1)
        b.relu_()
        h[h > 1.5] = 0.5
        return h.tanh()
    compiled = tn.compile(lambda x: f(tn, x))
    rng = np.random.default_rng(10)
    for batch in (9, 3):
        a = rng.standard_normal((batch, 5)).astype(np.float32)
        got = compiled(tn.tensor(a)).numpy()
        np.testing.assert_allclose(got, f(tn, tn.tensor(a)).numpy(), **TOL)
        np.testing.assert_allclose(got, f(torch, torch.tensor(a)).numpy(), **TOL)


def _writing_net(lib):
    class Net(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = lib.nn.Linear(4, 6)

        def forward(self, x):
            h = self.fc(x)
            h[:, ::2].mul_(3)  # (saves nothing that changes later: eager mode's backward runs)
            h[:, 1] = x[:, 0] * 2
            a, b = h[:, :3], h[:, 3:]  # (read after h changes below: eager sees it)
            with lib.no_grad():
                mask = h > 1
            h[mask] = 1.0
            return (a * b).sum(1)
    return Net


def test_compile_step_trains_a_model_writing_through_views_as_eager_mode():
    torch.manual_seed(0)
    theirs = _writing_net(torch)()
    ours, eager = _writing_net(tn)(), _writing_net(tn)()
    for m in (ours, eager):
        m.load_state_dict({k: tn.tensor(v.detach().numpy().copy())
                           for k, v in theirs.state_dict().items()})
    opts = [tn.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9),
            tn.optim.SGD(eager.parameters(), lr=0.05, momentum=0.9),
            torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)]
    step = tn.compile_step(lambda x: (ours(x) ** 2).mean(), opts[0])

    def eager_step(lib, net, opt, x):
        opt.zero_grad()
        loss = (net(x) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    rng = np.random.default_rng(12)
    for batch in (5, 1, 3, 5):
        a = rng.standard_normal((batch, 4)).astype(np.float32)
        losses = [step(tn.tensor(a)), eager_step(tn, eager, opts[1], tn.tensor(a)),
                  eager_step(torch, theirs, opts[2], torch.tensor(a))]
        for loss in losses[1:]:
            np.testing.assert_allclose(losses[0].item(), loss.item(), **TOL)
        for p, q, t in zip(ours.parameters(), eager.parameters(), theirs.parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **TOL)
            np.testing.assert_allclose(q.detach().numpy(), t.detach().numpy(), **TOL)
