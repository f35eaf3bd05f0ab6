"""Data the generated C validates as eager mode does: out-of-range class targets, embedding
indices, index tensors and max-unpool indices, and binary cross entropy on values outside
[0, 1]. Each compiled call raises eager's exception (type and message, checked against torch
where they agree); a compiled training step that fails leaves parameters, gradients and optimizer
state untouched. Then two eager fixes: cross entropy where every target is ignored, and the
max pooling backward of an empty batch."""
import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn
import tracenet.nn.functional as LF
import tracenet.optim as toptim

torch = pytest.importorskip("torch")


@pytest.fixture
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tn-cache"))


class Fn(tnn.Module):
    """A module computing ``fn(*inputs)``: what tracenet.compile takes."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _error(fn, *args):
    with pytest.raises(Exception) as info:
        fn(*args)
    return type(info.value), str(info.value)


def same_error(fn, good, bad, torch_fn=None):
    """``fn`` (of tracenet tensors) compiled: right on ``good`` inputs, and raising eager's
    exception on ``bad`` ones (torch's too, when ``torch_fn`` is given); then right again."""
    compiled = tn.compile(Fn(fn))
    wrap = (lambda arrays: [tn.tensor(a) for a in arrays])
    np.testing.assert_allclose(compiled(*wrap(good)).numpy(), fn(*wrap(good)).numpy(),
                               rtol=1e-5, atol=1e-6)
    expect = _error(fn, *wrap(bad))
    assert _error(compiled, *wrap(bad)) == expect
    if torch_fn is not None:
        assert _error(torch_fn, *[torch.tensor(a) for a in bad]) == expect
    # the status is fresh on every call: a good call after a failed one works
    np.testing.assert_allclose(compiled(*wrap(good)).numpy(), fn(*wrap(good)).numpy(),
                               rtol=1e-5, atol=1e-6)
    return expect


X = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)


@pytest.mark.parametrize("bad", [12, 5, -3], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_target_out_of_range(bad, reduction, _cache):
    good, t = np.array([1, 4, -100, 0]), np.array([1, -100, bad, 0])
    exc, msg = same_error(lambda x, t: LF.cross_entropy(x, t, reduction=reduction),
                          [X, good], [X, t], lambda x, t: torch.nn.functional.cross_entropy(
                              x, t, reduction=reduction))
    assert (exc, msg) == (IndexError, f"Target {bad} is out of bounds.")


def test_nll_loss_spatial_target_out_of_range(_cache):
    x = np.log(np.full((2, 3, 2, 2), 1 / 3, np.float32))
    t = np.zeros((2, 2, 2), np.int64)
    bad = t.copy()
    bad[1, 0, 1], bad[1, 1, 1] = 7, 9
    exc, msg = same_error(LF.nll_loss, [x, t], [x, bad], torch.nn.functional.nll_loss)
    assert msg == "Target 7 is out of bounds."


@pytest.mark.parametrize("bad", [10, -1])
def test_embedding_index_out_of_range(bad, _cache):
    w = np.arange(20, dtype=np.float32).reshape(10, 2)
    exc, msg = same_error(lambda i, w: LF.embedding(i, w), [np.array([[1, 9]]), w],
                          [np.array([[1, bad]]), w],
                          lambda i, w: torch.nn.functional.embedding(i, w))
    assert (exc, msg) == (IndexError, "index out of range in self")


@pytest.mark.parametrize("bad", [5, -6, 100])
def test_advanced_indexing_out_of_range(bad, _cache):
    exc, msg = same_error(lambda x, i: x[:, i], [X, np.array([0, -5, 4])],
                          [X, np.array([0, bad, 4])], lambda x, i: x[:, i])
    assert (exc, msg) == (IndexError, f"index {bad} is out of bounds for dimension 0 with "
                                      "size 5")


def test_advanced_indexing_reports_first_index_tensor_first(_cache):
    # the second index tensor is bad earlier in the output, the first one later: eager names
    # the first index tensor (torch, checking position by position, names the second)
    exc, msg = same_error(lambda x, i, j: x[i, j], [X, np.array([0, 3]), np.array([4, 1])],
                          [X, np.array([0, 9]), np.array([8, 1])])
    assert msg == "index 9 is out of bounds for dimension 0 with size 4"


def test_index_select_out_of_range(_cache):
    # eager's message is advanced indexing's (torch words index_select's differently)
    exc, msg = same_error(lambda x, i: x.index_select(0, i), [X, np.array([3, 0])],
                          [X, np.array([3, 4])])
    assert (exc, msg) == (IndexError, "index 4 is out of bounds for dimension 0 with size 4")


@pytest.mark.parametrize("bad", [16, -1])
def test_max_unpool_index_out_of_range(bad, _cache):
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    idx = np.array([[[[0, 3], [9, 14]], [[1, 2], [5, 15]]]])
    worse = idx.copy()
    worse[0, 1, 0, 1] = bad
    exc, msg = same_error(lambda x, i: LF.max_unpool2d(x, i, 2), [x, idx], [x, worse],
                          lambda x, i: torch.nn.functional.max_unpool2d(x, i, 2))
    assert (exc, msg) == (RuntimeError, f"Found an invalid max index: {bad} (output volumes "
                                        "are of size 4x4)")


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", ["input", "input_nan", "target", "target_first"])
def test_binary_cross_entropy_outside_unit_interval(case, reduction, _cache):
    p = np.array([0.2, 0.5, 0.9, 0.4], np.float32)
    q = np.array([0.0, 1.0, 0.3, 1.0], np.float32)
    bad_p, bad_q = p.copy(), q.copy()
    which = case.split("_")[0]
    if case == "input":
        bad_p[2] = 1.5
    elif case == "input_nan":
        bad_p[1] = np.nan
    elif case == "target":
        bad_q[1] = 2.0
    else:  # a bad target before a bad input: the first bad element is reported
        bad_q[0], bad_p[3] = -1.0, 3.0
    exc, msg = same_error(lambda x, t: LF.binary_cross_entropy(x, t, reduction=reduction),
                          [p, q], [bad_p, bad_q],
                          lambda x, t: torch.nn.functional.binary_cross_entropy(
                              x, t, reduction=reduction))
    assert (exc, msg) == (RuntimeError, f"all elements of {which} should be between 0 and 1")


# --- a compiled training step that fails changes nothing -------------------------------------


class EmbedMLP(tnn.Module):
    def __init__(self):
        super().__init__()
        self.emb = tnn.Embedding(7, 8)
        self.l1, self.l2 = tnn.Linear(16, 32), tnn.Linear(32, 5)

    def forward(self, i):
        return self.l2(LF.relu(self.l1(self.emb(i).reshape(i.shape[0], -1))))


def _state(model, opt):
    params = [p.detach().numpy().copy() for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.numpy().copy() for p in model.parameters()]
    bufs = [{k: v.numpy().copy() for k, v in opt.state.get(p, {}).items()}
            for p in model.parameters()]
    return params, grads, bufs


def _assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            _assert_identical(list(x.values()), list(y.values()))
        elif isinstance(x, list):
            _assert_identical(x, y)
        elif x is None:
            assert y is None
        else:
            assert x.tobytes() == y.tobytes()


OPTIMIZERS = {"sgd_momentum": lambda p: toptim.SGD(p, lr=0.1, momentum=0.9),
              "sgd": lambda p: toptim.SGD(p, lr=0.1),
              "adam": lambda p: toptim.Adam(p, lr=0.01)}


@pytest.mark.parametrize("warm", [2, 0], ids=["after_steps", "first_step"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("bad", ["target", "embedding"])
def test_failed_compile_step_changes_nothing(bad, opt, warm, _cache):
    tn.manual_seed(0)
    model = EmbedMLP()
    optimizer = OPTIMIZERS[opt](model.parameters())
    step = tn.compile_step(lambda i, t: LF.cross_entropy(model(i), t), optimizer)
    i = tn.tensor(np.array([[0, 1], [2, 3], [4, 5], [6, 0]]))
    t = tn.tensor(np.array([0, 1, 2, 4]))
    for _ in range(warm):  # gradients, momentum buffers and step counts exist
        step(i, t)
    before = _state(model, optimizer)
    if bad == "target":
        args, expect = (i, tn.tensor(np.array([0, 1, 5, 4]))), "Target 5 is out of bounds."
    else:
        args, expect = (tn.tensor(np.array([[0, 1], [2, 7], [4, 5], [6, 0]])), t), \
            "index out of range in self"
    with pytest.raises(IndexError, match=expect):
        step(*args)
    _assert_identical(_state(model, optimizer), before)
    # every checking kernel runs before the first kernel writing an output other than the loss
    # (gradients, updated parameters and state)
    entry = step._last.executable.entries[0]
    checking = [n for n, (k, _) in enumerate(entry.kernels) if k.checks]
    outputs = set(entry.graph.outputs[1:])
    writing = [n for n, (k, _) in enumerate(entry.kernels)
               if any(v in outputs for _, v in k.writes)]
    assert checking and writing and max(checking) < min(writing)
    # and the next steps are those of a run without the failed one
    after = [step(i, t).item() for _ in range(2)]
    tn.manual_seed(0)
    clean = EmbedMLP()
    clean_opt = OPTIMIZERS[opt](clean.parameters())
    clean_step = tn.compile_step(lambda i, t: LF.cross_entropy(clean(i), t), clean_opt)
    expect = [clean_step(i, t).item() for _ in range(warm + 2)][warm:]
    assert after == expect
    _assert_identical(_state(model, optimizer), _state(clean, clean_opt))


# --- eager fixes -------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
def test_every_target_ignored_gives_zero_gradient(fn, weighted, _cache):
    x0 = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    t0 = np.full(3, -100)
    w0 = np.array([1, 2, 3, 4], np.float32)
    results = []
    for lib, F in ((tn, LF), (torch, torch.nn.functional)):
        x = lib.tensor(x0, requires_grad=True)
        kw = {"weight": lib.tensor(w0)} if weighted else {}
        loss = getattr(F, fn)(x, lib.tensor(t0), **kw)
        loss.backward()
        results.append((loss.item(), x.grad.numpy()))
    (le, ge), (lt, gt) = results
    assert np.isnan(le) and np.isnan(lt)
    np.testing.assert_array_equal(ge, gt)
    np.testing.assert_array_equal(ge, np.zeros_like(x0))
    # compiled agrees
    compiled = tn.compile(Fn(lambda x, t: getattr(LF, fn)(
        x, t, **({"weight": tn.tensor(w0)} if weighted else {}))))
    x = tn.tensor(x0, requires_grad=True)
    compiled(x, tn.tensor(t0)).backward()
    np.testing.assert_array_equal(x.grad.numpy(), gt)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_max_pool_backward_of_empty_batch(dims):
    shape = (0, 3) + (4,) * dims
    pools = {1: "MaxPool1d", 2: "MaxPool2d", 3: "MaxPool3d"}
    grads = []
    for lib in (tn, torch):
        x = lib.zeros(*shape, requires_grad=True)
        y = getattr(lib.nn, pools[dims])(2)(x)
        y.sum().backward()
        grads.append(x.grad)
    assert tuple(grads[0].shape) == tuple(grads[1].shape) == shape
    # and the double backward (the gradient of the gradient with respect to the cotangent)
    x = tn.zeros(*shape, requires_grad=True)
    y = getattr(tnn, pools[dims])(2)(x)
    g = tn.zeros(*y.shape, requires_grad=True)
    (gx,) = tn.autograd.grad(y, x, g, create_graph=True)
    gx.sum().backward()
    assert tuple(g.grad.shape) == tuple(y.shape)
