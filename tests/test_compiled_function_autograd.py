"""tracenet.compile(fn) on a function that does not call backward itself, called with grad
enabled: its outputs keep their autograd history (one CompiledFunctionBackward node, as a
compiled module's outputs have), and a later backward fills the .grad of parameters and inputs
as eager mode and PyTorch do. What cannot keep its history is refused at call time."""
import copy
import types

import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet.trace import TraceError

TOL = dict(rtol=1e-4, atol=1e-5)
DTYPES = {np.float32: (tn.float32, torch.float32), np.float64: (tn.float64, torch.float64)}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tn-cache"))


def _features(lib):
    return lib.nn.Sequential(lib.nn.Conv2d(2, 4, 3, padding=1), lib.nn.BatchNorm2d(4),
                             lib.nn.ReLU())


def _head(lib):
    return lib.nn.Sequential(lib.nn.Flatten(), lib.nn.Linear(4 * 5 * 5, 3))


class _Twins:
    """Two modules (features, head) in tracenet, an eager copy of them and PyTorch's, with
    the same weights; ``tn`` is what the compiled function reaches."""

    def __init__(self, dtype=np.float32, seed=0):
        tn_dtype, torch_dtype = DTYPES[dtype]
        torch.manual_seed(seed)
        self.torch = [_features(torch).to(torch_dtype), _head(torch).to(torch_dtype)]
        self.tn = [_features(tn).to(tn_dtype), _head(tn).to(tn_dtype)]
        for ours, theirs in zip(self.tn, self.torch):
            ours.load_state_dict({k: tn.tensor(v.detach().numpy().copy())
                                  for k, v in theirs.state_dict().items()})
        self.eager = copy.deepcopy(self.tn)
        self.dtype = dtype

    def inputs(self, rng, batch, requires_grad=False):
        """(x, y) for the compiled function, eager mode and PyTorch."""
        x = rng.standard_normal((batch, 2, 5, 5)).astype(self.dtype)
        y = rng.integers(0, 3, batch)
        return [(lib.tensor(x.copy(), requires_grad=requires_grad), lib.tensor(y))
                for lib in (tn, tn, torch)]

    def parameters(self, which):
        return [p for m in getattr(self, which) for p in m.parameters()]

    def check_grads(self, inputs=None):
        """Every parameter's .grad (and each input's, of ``inputs``) is eager mode's and
        PyTorch's."""
        for p, q, t in zip(*(self.parameters(w) for w in ("tn", "eager", "torch"))):
            if t.grad is None:
                assert p.grad is None and q.grad is None
                continue
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), **TOL)
            np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), **TOL)
        for x, ex, tx in inputs or ():
            np.testing.assert_allclose(x.grad.numpy(), ex.grad.numpy(), **TOL)
            np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), **TOL)

    def check_buffers(self):
        for ours, eager, theirs in zip(self.tn, self.eager, self.torch):
            for (name, b), e, t in zip(ours.named_buffers(), eager.buffers(), theirs.buffers()):
                np.testing.assert_allclose(b.numpy(), e.numpy(), **TOL, err_msg=name)
                np.testing.assert_allclose(b.numpy(), t.numpy(), **TOL, err_msg=name)


def _loss_fn(lib, features, head):
    criterion = lib.nn.CrossEntropyLoss()

    def loss_fn(x, y):
        return criterion(head(features(x)), y)
    return loss_fn


def _close(got, want):
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), **TOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_keeps_its_history_and_backward_fills_grads_as_eager_and_torch(dtype):
    """Batches 3 and 5 (one symbolic build) and 1, an input that requires grad: the loss's
    value and node, the parameters' and the input's .grad (accumulated over two calls), and
    the batch-norm running statistics follow eager mode and PyTorch."""
    twins = _Twins(dtype)
    f = tn.compile(_loss_fn(tn, *twins.tn))
    eager, ref = _loss_fn(tn, *twins.eager), _loss_fn(torch, *twins.torch)
    rng = np.random.default_rng(1)
    for batch in (3, 5, 1):
        inputs = twins.inputs(rng, batch, requires_grad=True)
        for _ in range(2):  # the second call's gradients add to the first's
            losses = [fn(*xy) for fn, xy in zip((f, eager, ref), inputs)]
            loss = losses[0]
            assert loss.requires_grad and not loss.is_leaf and loss.dtype is losses[1].dtype
            assert loss.grad_fn.name() == "CompiledFunctionBackward"
            _close(loss, losses[1])
            _close(loss, losses[2])
            for each in losses:
                each.backward()
            twins.check_grads([tuple(x for x, _ in inputs)])
            twins.check_buffers()
        if batch == 5:
            assert len(f._specs) == 1  # batches 3 and 5 from one build
    net = tn.compile(twins.tn[0])  # a compiled module's outputs name their node the same
    assert type(net(inputs[0][0]).grad_fn) is type(loss.grad_fn)


def test_float32_against_a_float64_reference():
    """The compiled function's float32 loss and gradients are as close to a float64 eager
    reference as eager float32's are (the compiled module's kernels: no new rounding)."""
    twins, wide = _Twins(np.float32), _Twins(np.float64)
    f = tn.compile(_loss_fn(tn, *twins.tn))
    eager, reference = _loss_fn(tn, *twins.eager), _loss_fn(tn, *wide.eager)
    (x, y), (ex, ey), _ = twins.inputs(np.random.default_rng(2), 4)
    f(x, y).backward()
    eager(ex, ey).backward()
    reference(tn.tensor(x.numpy().astype(np.float64)), y).backward()
    # (one vector of all the gradients: the convolution's bias, before batch norm, has a
    # gradient of zero but for rounding)
    grads = [np.concatenate([p.grad.numpy().ravel() for p in twins.parameters(which)])
             for which in ("tn", "eager")]
    exact = np.concatenate([p.grad.numpy().ravel() for p in wide.parameters("eager")])
    ours, theirs = (np.abs(g - exact).max() / np.abs(exact).max() for g in grads)
    assert ours < 1e-6 and ours < 4 * theirs, (ours, theirs)


def _outputs(lib, features, head):
    def several(x):
        h = features(x)
        logits = head(h)
        return logits, logits, h.sum()  # the logits twice, the same tensor
    return several


def test_several_outputs_an_output_returned_twice_and_used_twice():
    """Each output takes its own cotangent, also the same value returned twice; an output
    used twice afterwards, a given gradient, and backward on one output at a time."""
    twins = _Twins()
    f = tn.compile(_outputs(tn, *twins.tn))
    fns = (f, _outputs(tn, *twins.eager), _outputs(torch, *twins.torch))
    rng = np.random.default_rng(3)
    inputs = twins.inputs(rng, 4)
    gradient = rng.standard_normal((4, 3)).astype(np.float32)
    for lib, fn, (x, _) in zip((tn, tn, torch), fns, inputs):
        a, b, c = fn(x)
        ((a * a).sum() + 2 * b.sum() + c).backward(retain_graph=True)
        a.backward(lib.tensor(gradient))  # one output, a given gradient
    twins.check_grads()
    outs = f(inputs[0][0])
    assert outs[0] is not outs[1] and outs[0].grad_fn is outs[1].grad_fn
    assert [o._output_nr for o in outs] == [0, 1, 2]


def test_retain_graph_twice_eager_ops_after_and_a_third_backward_refused():
    twins = _Twins()
    f = tn.compile(_loss_fn(tn, *twins.tn))
    fns = (f, _loss_fn(tn, *twins.eager), _loss_fn(torch, *twins.torch))
    inputs = twins.inputs(np.random.default_rng(4), 3, requires_grad=True)
    finals = []
    for fn, (x, y) in zip(fns, inputs):
        final = (fn(x, y).exp() * 3).sum()  # eager ops on the output
        final.backward(retain_graph=True)
        final.backward()
        finals.append(final)
    twins.check_grads([tuple(x for x, _ in inputs)])
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        finals[0].backward()


def test_hooks_retain_grad_and_autograd_grad_behave_as_with_a_compiled_module():
    """A hook on an output changes the gradient that reaches the compiled backward, a hook on
    a parameter the one it accumulates; ``retain_grad`` keeps the output's gradient;
    ``tracenet.autograd.grad`` returns the gradients and leaves every .grad alone: as a
    compiled module's outputs (and eager mode's, and PyTorch's) do."""
    twins = _Twins()
    f = tn.compile(_outputs(tn, *twins.tn))
    fns = (f, _outputs(tn, *twins.eager), _outputs(torch, *twins.torch))
    inputs = twins.inputs(np.random.default_rng(5), 2, requires_grad=True)
    retained, seen = [], []
    for (x, _), fn, head in zip(inputs, fns, (twins.tn[1], twins.eager[1], twins.torch[1])):
        head[1].weight.register_hook(lambda g: g * 3)
        logits, _, _ = fn(x)
        logits.register_hook(lambda g: g * 2)
        logits.retain_grad()
        logits.register_hook(lambda g, seen=seen: seen.append(g.numpy().copy()))
        (logits ** 2).sum().backward()
        retained.append(logits.grad.numpy())
    twins.check_grads([tuple(x for x, _ in inputs)])
    np.testing.assert_allclose(retained[0], retained[2], **TOL)
    np.testing.assert_allclose(seen[0], seen[2], **TOL)
    # autograd.grad: the gradients of the input and a weight, no .grad touched
    (x, _), (ex, _) = inputs[0], inputs[1]
    weight, eager_weight = twins.tn[0][0].weight, twins.eager[0][0].weight
    before = weight.grad.numpy().copy(), x.grad.numpy().copy()
    got = tn.autograd.grad(f(x)[2], [x, weight])
    want = tn.autograd.grad(_outputs(tn, *twins.eager)(ex)[2], [ex, eager_weight])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), **TOL)
    np.testing.assert_array_equal(weight.grad.numpy(), before[0])
    np.testing.assert_array_equal(x.grad.numpy(), before[1])


def test_a_frozen_parameter_gets_no_gradient_and_unfreezing_is_followed():
    twins = _Twins()
    f = tn.compile(_loss_fn(tn, *twins.tn))
    fns = (f, _loss_fn(tn, *twins.eager), _loss_fn(torch, *twins.torch))
    rng = np.random.default_rng(6)
    for frozen in (True, False):
        for m in (twins.tn, twins.eager, twins.torch):
            m[0][0].weight.requires_grad_(not frozen)
            for p in (p for part in m for p in part.parameters()):
                p.grad = None
        for fn, xy in zip(fns, twins.inputs(rng, 3)):
            fn(*xy).backward()
        assert (twins.tn[0][0].weight.grad is None) == frozen
        twins.check_grads()
    assert len(f._specs) == 2


def test_a_function_of_a_compiled_module_and_backward_then_step_outside():
    """The function calls ``tracenet.compile(features)`` (traced inline) and zeroes the
    gradients itself; backward and the optimizer's step run outside it, three steps as in
    eager mode and PyTorch."""
    twins = _Twins()
    compiled_features = tn.compile(twins.tn[0])
    opts = [lib.optim.SGD(twins.parameters(which), lr=0.1, momentum=0.9)
            for lib, which in ((tn, "tn"), (tn, "eager"), (torch, "torch"))]

    def forward_loss(lib, features, head, opt):
        criterion = lib.nn.CrossEntropyLoss()

        def step_loss(x, y):
            opt.zero_grad()
            return criterion(head(features(x)), y)
        return step_loss

    fns = [forward_loss(tn, compiled_features, twins.tn[1], opts[0]),
           forward_loss(tn, *twins.eager, opts[1]),
           forward_loss(torch, *twins.torch, opts[2])]
    fns[0] = tn.compile(fns[0])
    rng = np.random.default_rng(7)
    for _ in range(3):
        losses = []
        for fn, opt, xy in zip(fns, opts, twins.inputs(rng, 4)):
            loss = fn(*xy)
            loss.backward()
            opt.step()
            losses.append(loss)
        _close(losses[0], losses[1])
        _close(losses[0], losses[2])
        twins.check_grads()
        for p, q in zip(twins.parameters("tn"), twins.parameters("torch")):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **TOL)
        twins.check_buffers()
    assert len(fns[0]._specs) == 1


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_inside_acts_as_in_eager_mode(set_to_none):
    twins = _Twins()
    opts = [tn.optim.SGD(twins.parameters(which), lr=0.1) for which in ("tn", "eager")]

    def zeroing(features, head, opt):
        loss_fn = _loss_fn(tn, features, head)

        def fn(x, y):
            opt.zero_grad(set_to_none=set_to_none)
            return loss_fn(x, y)
        return fn

    f, eager = tn.compile(zeroing(*twins.tn, opts[0])), zeroing(*twins.eager, opts[1])
    rng = np.random.default_rng(8)
    for _ in range(2):
        (x, y), (ex, ey), _ = twins.inputs(rng, 2)
        loss, ref = f(x, y), eager(ex, ey)
        for p, q in zip(twins.parameters("tn"), twins.parameters("eager")):
            assert (p.grad is None) == (q.grad is None)
            if q.grad is not None:
                np.testing.assert_array_equal(p.grad.numpy(), 0)
        loss.backward()
        ref.backward()
        for p, q in zip(twins.parameters("tn"), twins.parameters("eager")):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), **TOL)


def test_without_grad_the_outputs_have_no_history_and_no_backward_is_planned():
    """Under ``no_grad``, or with nothing that requires grad, the outputs are as before:
    no history, a specialisation without a backward graph (nothing more to run)."""
    twins = _Twins()
    f = tn.compile(_loss_fn(tn, *twins.tn))
    (x, y), (ex, ey), _ = twins.inputs(np.random.default_rng(9), 3)
    for grad in (False, True, False, True):  # the grad mode is part of the key
        with tn.set_grad_enabled(grad):
            loss = f(x, y)
            _close(loss, _loss_fn(tn, *twins.eager)(ex, ey))
        assert (loss.grad_fn is not None) == loss.requires_grad == grad
        assert (f._last.pair is not None) == grad
    assert len(f._specs) == 2
    for p in twins.parameters("tn"):
        p.requires_grad_(False)
    loss = f(x, y)
    assert loss.grad_fn is None and not loss.requires_grad and f._last.pair is None
    assert all(p.grad is None for p in twins.parameters("tn"))


def _step_fn(features, head, opt):
    loss_fn = _loss_fn(tn, features, head)

    def train_step(x, y):
        opt.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        return loss
    return train_step


def test_a_step_function_is_unchanged():
    """A function that calls backward itself: its loss has no history (as before), it takes
    the steady call path, and it trains as the eager step does."""
    twins = _Twins()
    opts = [tn.optim.SGD(twins.parameters(which), lr=0.1, momentum=0.9)
            for which in ("tn", "eager")]
    step = tn.compile(_step_fn(*twins.tn, opts[0]))
    eager = _step_fn(*twins.eager, opts[1])
    rng = np.random.default_rng(10)
    for _ in range(3):
        (x, y), (ex, ey), _ = twins.inputs(rng, 4)
        loss = step(x, y)
        _close(loss, eager(ex, ey))
        assert loss.grad_fn is None and not loss.requires_grad
        for p, q in zip(twins.parameters("tn"), twins.parameters("eager")):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), **TOL)
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **TOL)
    assert step._last.pair is None and step._steady is not None


@pytest.mark.parametrize("threads", [1, 2])
def test_nan_arenas_and_threads(nan_arenas_split, threads):
    """Work memory all NaN, every kernel split between the threads: the forward's outputs and
    saved values and the backward's gradients are all written."""
    tn.set_num_threads(threads)
    twins = _Twins()
    f = tn.compile(_loss_fn(tn, *twins.tn))
    fns = (f, _loss_fn(tn, *twins.eager), _loss_fn(torch, *twins.torch))
    rng = np.random.default_rng(11)
    for batch in (5, 2):
        inputs = twins.inputs(rng, batch, requires_grad=True)
        for fn, xy in zip(fns, inputs):
            fn(*xy).backward()
        twins.check_grads([tuple(x for x, _ in inputs)])


def test_a_function_that_needs_the_exact_batch_size_keeps_history_per_size():
    """A trace that reads the batch size's value falls back to exact sizes: each batch size
    gets a specialisation of its own, whose outputs keep their history."""
    twins = _Twins()
    features, head = twins.tn

    def scaled(lib, features, head):
        def fn(x):
            return head(features(x)) * (2.0 if x.shape[0] > 2 else 0.5)
        return fn

    f = tn.compile(scaled(tn, features, head))
    fns = (f, scaled(tn, *twins.eager), scaled(torch, *twins.torch))
    rng = np.random.default_rng(12)
    for batch in (4, 2, 3):
        for fn, (x, _) in zip(fns, twins.inputs(rng, batch)):
            fn(x).pow(2).sum().backward()
        twins.check_grads()
    assert len(f._specs) == 3


def test_dropout_each_backward_uses_its_own_calls_mask():
    """Random ops draw a fresh mask per call; two calls' outputs alive at once, each backward
    reads the mask (the seed) of its own call."""
    tn.manual_seed(0)
    lin, drop = tn.nn.Linear(6, 5), tn.nn.Dropout(0.5)
    f = tn.compile(lambda a: drop(lin(a)))
    x = tn.randn(8, 6, requires_grad=True)
    first, second = f(x), f(x)
    masks = [(out.detach().numpy() != 0) for out in (first, second)]
    assert (masks[0] != masks[1]).any()
    for out, mask in ((second, masks[1]), (first, masks[0])):
        lin.bias.grad = x.grad = None
        out.sum().backward()
        np.testing.assert_allclose(lin.bias.grad.numpy(), 2.0 * mask.sum(0), rtol=1e-6)
        np.testing.assert_allclose(x.grad.numpy(), 2.0 * mask @ lin.weight.detach().numpy(),
                                   rtol=1e-5, atol=1e-6)


def _refused(fn, *inputs):
    with pytest.raises(TraceError) as e:
        tn.compile(fn)(*inputs)
    return str(e.value)


def test_what_cannot_keep_its_history_is_refused_at_call_time():
    """An output that is an input or a view of one that requires grad (eager mode's shares its
    memory), an input or a parameter that requires grad changed in place, an optimizer stepped
    without backward, one zeroed that the function does not name: a clear error, never outputs
    without history."""
    net = tn.nn.Linear(3, 2)
    opt = tn.optim.SGD(net.parameters(), lr=0.1)
    x = tn.randn(4, 3, requires_grad=True)

    def doubled_in_place(a):
        with tn.no_grad():
            a.mul_(2)
        return net(a)

    def clamped_weight(a):
        with tn.no_grad():
            net.weight.clamp_(-1, 1)
        return net(a)

    def stepped(a):
        opt.step()
        return net(a)

    assert "output 1 of the compiled function is its input 0" in \
        _refused(lambda a: (net(a), a), x)
    assert "output 0 of the compiled function is a view of its input 0" in \
        _refused(lambda a: a.t(), x)
    assert "output 0 of the compiled function is a view of Linear.weight" in \
        _refused(lambda a: net.weight[0], x)
    assert "changes its input 0, which requires grad, in place" in \
        _refused(doubled_in_place, x)
    assert "changes Linear.weight, which requires grad, in place" in \
        _refused(clamped_weight, x)
    assert "SGD.step() in a compiled function that does not call backward" in \
        _refused(stepped, x)
    holder = types.SimpleNamespace(opt=opt)  # (the function does not name the optimizer)
    assert "SGD.zero_grad() on an optimizer the compiled function does not name" in \
        _refused(lambda a: (holder.opt.zero_grad(), net(a))[1], x)
    # what needs no history is not refused
    x.requires_grad_(False)
    out = tn.compile(lambda a: (net(a), a.t()))(x)
    assert out[0].grad_fn is not None and out[1].grad_fn is None
    with tn.no_grad():
        tn.compile(doubled_in_place)(x.detach())
