"""The lean paths of the tutorial's training loop keep eager mode's and torch's behaviour: the
common cross entropy (an (N, C) batch, class targets, mean) records torch's two nodes and
gives torch's values, gradients, errors and graph semantics; the loop around a compiled module
trains exactly as eager mode does."""
import numpy as np
import pytest
import torch

import tracenet as tn


def _inputs(rng, n, c, dtype, targets=None):
    a = rng.standard_normal((n, c)).astype(dtype)
    t = rng.integers(0, c, n) if targets is None else np.array(targets)
    return (tn.tensor(a, requires_grad=True), tn.from_numpy(t),
            torch.tensor(a, requires_grad=True), torch.from_numpy(t))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 5])
def test_cross_entropy_values_gradients_and_nodes_match_torch(dtype, n):
    x, t, tx, tt = _inputs(np.random.default_rng(n), n, 7, dtype)
    loss = tn.nn.CrossEntropyLoss()(x, t)
    ref = torch.nn.CrossEntropyLoss()(tx, tt)
    assert repr(loss) == repr(ref)
    assert loss.dtype.name == str(ref.dtype).split(".")[1]
    assert loss.grad_fn.name() == ref.grad_fn.name() == "NllLossBackward0"
    (inner, _), = loss.grad_fn.next_functions
    (ref_inner, _), = ref.grad_fn.next_functions
    assert inner.name() == ref_inner.name() == "LogSoftmaxBackward0"
    assert inner.next_functions[0][0].name() == "torch::autograd::AccumulateGrad"
    loss.backward()
    ref.backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_cross_entropy_ignore_index_and_all_ignored_match_torch():
    for targets in ([2, -100, 0], [-100, -100, -100], [1, 4, 1]):
        x, t, tx, tt = _inputs(np.random.default_rng(0), 3, 5, np.float32, targets)
        loss = tn.nn.functional.cross_entropy(x, t, ignore_index=-100)
        ref = torch.nn.functional.cross_entropy(tx, tt, ignore_index=-100)
        np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-6, equal_nan=True)
        loss.backward()
        ref.backward()
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-6, atol=1e-7,
                                   equal_nan=True)
    x, t, tx, tt = _inputs(np.random.default_rng(1), 3, 5, np.float32, [1, 4, 1])
    loss = tn.nn.functional.cross_entropy(x, t, ignore_index=4)
    ref = torch.nn.functional.cross_entropy(tx, tt, ignore_index=4)
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-6)


def test_cross_entropy_errors_match_torch():
    x, t, tx, tt = _inputs(np.random.default_rng(2), 2, 3, np.float32, [0, 3])
    with pytest.raises(IndexError) as ours:
        tn.nn.functional.cross_entropy(x, t)
    with pytest.raises(IndexError) as theirs:
        torch.nn.functional.cross_entropy(tx, tt)
    assert str(ours.value) == str(theirs.value)
    x, _, tx, _ = _inputs(np.random.default_rng(2), 2, 3, np.float32, [0, 1])
    with pytest.raises(ValueError, match=r"Expected input batch_size \(2\) to match target "
                                         r"batch_size \(3\)"):
        tn.nn.functional.cross_entropy(x, tn.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"Expected input batch_size \(2\) to match target"):
        torch.nn.functional.cross_entropy(tx, torch.tensor([0, 1, 2]))
    loss = tn.nn.functional.cross_entropy(x, tn.tensor([0, 1]))
    loss.backward()
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second "
                                           "time"):
        loss.backward()


def test_cross_entropy_graph_semantics_match_torch():
    x, t, tx, tt = _inputs(np.random.default_rng(3), 4, 6, np.float64)
    # no gradient wanted: no node, as in torch
    with tn.no_grad():
        assert tn.nn.functional.cross_entropy(x, t).grad_fn is None
    assert tn.nn.functional.cross_entropy(x.detach(), t).grad_fn is None
    # retain_graph, accumulation and the gradient of the gradient
    loss = tn.nn.functional.cross_entropy(x, t)
    ref = torch.nn.functional.cross_entropy(tx, tt)
    loss.backward(retain_graph=True)
    loss.backward()
    ref.backward(retain_graph=True)
    ref.backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)
    loss = tn.nn.functional.cross_entropy(x, t)
    ref = torch.nn.functional.cross_entropy(tx, tt)
    (g,) = tn.autograd.grad(loss, x, create_graph=True)
    (tg,) = torch.autograd.grad(ref, tx, create_graph=True)
    (gg,) = tn.autograd.grad((g * g).sum(), x)
    (tgg,) = torch.autograd.grad((tg * tg).sum(), tx)
    np.testing.assert_allclose(gg.numpy(), tgg.numpy(), rtol=1e-10, atol=1e-14)
    # a hook on the logits sees the gradient torch's does
    seen = []
    x2 = x.detach().requires_grad_()
    tx2 = tx.detach().requires_grad_()
    x2.register_hook(lambda g: seen.append(g.numpy().copy()))
    tx2.register_hook(lambda g: seen.append(g.numpy().copy()))
    tn.nn.functional.cross_entropy(x2, t).backward()
    torch.nn.functional.cross_entropy(tx2, tt).backward()
    np.testing.assert_allclose(seen[0], seen[1], rtol=1e-12)


def _lenet_pair():
    torch.manual_seed(0)
    tnet = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 6 * 6, 10))
    net = tn.nn.Sequential(tn.nn.Conv2d(1, 3, 3), tn.nn.ReLU(), tn.nn.Flatten(),
                           tn.nn.Linear(3 * 6 * 6, 10))
    for (_, a), (_, b) in zip(tnet.named_parameters(), net.named_parameters()):
        b.data.copy_(tn.from_numpy(a.detach().numpy().copy()))
    return tnet, net


@pytest.mark.parametrize("batch", [1, 3])
def test_tutorial_loop_around_a_compiled_module_matches_torch(batch):
    tnet, net = _lenet_pair()
    cnet = tn.compile(net)
    opt = tn.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    t_opt = torch.optim.SGD(tnet.parameters(), lr=0.05, momentum=0.9)
    crit, t_crit = tn.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(batch)
    for step in range(4):
        x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, batch)
        opt.zero_grad()
        loss = crit(cnet(tn.from_numpy(x)), tn.from_numpy(y))
        loss.backward()
        opt.step()
        t_opt.zero_grad()
        ref = t_crit(tnet(torch.from_numpy(x)), torch.from_numpy(y))
        ref.backward()
        t_opt.step()
        np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-5)
    for (_, a), (_, b) in zip(tnet.named_parameters(), net.named_parameters()):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_compiled_backward_never_overwrites_a_gradient_someone_holds():
    """A compiled backward reuses the gradient arrays of an earlier one only when nothing
    else holds them: a kept ``.grad`` (or its array, or a view of it) keeps its values."""
    net = tn.nn.Linear(4, 3)
    ref = tn.nn.Linear(4, 3)
    ref.load_state_dict(net.state_dict())
    cnet = tn.compile(net)
    rng = np.random.default_rng(5)
    xs = [tn.from_numpy(rng.standard_normal((2, 4)).astype(np.float32)) for _ in range(4)]
    cnet(xs[0]).sum().backward()
    kept_tensor = net.weight.grad
    kept_array = net.bias.grad.numpy()
    kept_view = net.weight.grad.numpy()[:1]
    before = [kept_tensor.numpy().copy(), kept_array.copy(), kept_view.copy()]
    for x in xs[1:]:
        net.zero_grad()
        (cnet(x) * 3).sum().backward()
        ref.zero_grad()
        (ref(x) * 3).sum().backward()
        for p, q in zip(net.parameters(), ref.parameters()):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-6)
    for got, want in zip((kept_tensor.numpy(), kept_array, kept_view), before):
        np.testing.assert_array_equal(got, want)


def test_compiled_backward_reuses_dropped_gradient_arrays():
    net = tn.nn.Linear(4, 3)
    cnet = tn.compile(net)
    x = tn.randn(2, 4)
    cnet(x).sum().backward()
    first = id(net.weight.grad.numpy())
    net.zero_grad()  # drops .grad: the arrays are free again
    cnet(x).sum().backward()
    assert id(net.weight.grad.numpy()) == first
    expected = np.broadcast_to(x.numpy().sum(0), (3, 4))
    np.testing.assert_allclose(net.weight.grad.numpy(), expected, rtol=1e-6)
    # accumulation into a kept .grad adds a fresh gradient in place
    cnet(x).sum().backward()
    np.testing.assert_allclose(net.weight.grad.numpy(), 2 * expected, rtol=1e-6)


def test_backward_through_a_chain_matches_torch_with_hooks_and_repeated_leaves():
    """Graphs that are a chain of nodes ending at leaves take the engine's short path; leaf
    hooks, hooks on intermediate tensors, a leaf reached twice and retain_graph behave as in
    torch."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    w = rng.standard_normal((4, 2)).astype(np.float32)
    x, tx = tn.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    v, tv = tn.tensor(w, requires_grad=True), torch.tensor(w, requires_grad=True)
    order, t_order = [], []
    x.register_hook(lambda g: order.append("x"))
    v.register_hook(lambda g: order.append("v"))
    tx.register_hook(lambda g: t_order.append("x"))
    tv.register_hook(lambda g: t_order.append("v"))
    # a chain: mm -> relu -> sum, with a hook that doubles the gradient of the intermediate
    h, th = (x @ v).relu(), (tx @ tv).relu()
    h.register_hook(lambda g: g * 2)
    th.register_hook(lambda g: g * 2)
    loss, ref = h.sum(), th.sum()
    loss.backward(retain_graph=True)
    ref.backward(retain_graph=True)
    assert order == t_order
    loss.backward()
    ref.backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(v.grad.numpy(), tv.grad.numpy(), rtol=1e-6)
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second"):
        loss.backward()
    # the same chain without the intermediate hook, into the gradients accumulated so far
    order.clear()
    t_order.clear()
    (x @ v).relu().sum().backward()
    (tx @ tv).relu().sum().backward()
    assert order == t_order and len(order) == 2
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(v.grad.numpy(), tv.grad.numpy(), rtol=1e-6)
    # one leaf on two edges of one node: the gradients are summed
    y, ty = tn.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    (y * y).sum().backward()
    (ty * ty).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), ty.grad.numpy(), rtol=1e-6)


def test_compiled_module_called_on_one_leaf_twice_sums_its_gradients():
    class Pair(tn.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = tn.nn.Linear(3, 3)

        def forward(self, a, b):
            return self.lin(a) * b

    net = Pair()
    cnet = tn.compile(net)
    x = tn.randn(2, 3, requires_grad=True)
    cnet(x, x).sum().backward()
    x_eager = x.detach().clone().requires_grad_()
    net(x_eager, x_eager).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x_eager.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_compiled_module_returning_an_output_twice_gives_each_its_own_gradient():
    """The same value returned twice: each output takes its own cotangent (the second's was
    taken from the first's)."""
    class Twice(tn.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = tn.nn.Linear(3, 2)

        def forward(self, x):
            y = self.lin(x)
            return y, y

    net = Twice()
    x = tn.randn(4, 3)
    a, b = tn.compile(net)(x)
    (a + 2 * b).sum().backward()
    got = net.lin.weight.grad.numpy().copy()
    net.zero_grad()
    a, b = net(x)
    (a + 2 * b).sum().backward()
    np.testing.assert_allclose(got, net.lin.weight.grad.numpy(), rtol=1e-5, atol=1e-6)


def _loop_step(net, opt, crit, x, y, before_step=None):
    opt.zero_grad()
    loss = crit(net(x), y)
    loss.backward()
    if before_step is not None:
        before_step()
    opt.step()
    return loss.item()


def test_loop_follows_changes_between_steps_as_torch_does():
    """What the loop's per-call shortcuts remember (the parameters' edges, the gradient
    arrays the fused step checked last) gives way to a hook added, a parameter frozen and a
    gradient replaced between steps, as in torch."""
    tnet, net = _lenet_pair()
    cnet = tn.compile(net)
    opt = tn.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    t_opt = torch.optim.SGD(tnet.parameters(), lr=0.05, momentum=0.9)
    crit, t_crit = tn.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(11)

    def fortran(p):
        def run():
            p.grad = tn.from_numpy(np.asfortranarray(p.grad.numpy()))
        return run

    def fortran_torch(p):
        def run():
            p.grad = p.grad.t().contiguous().t()
        return run

    for step in range(7):
        if step == 2:  # a hook on a parameter: the gradient it returns accumulates
            net[3].weight.register_hook(lambda g: g * 2)
            tnet[3].weight.register_hook(lambda g: g * 2)
        if step == 4:  # a frozen parameter: no gradient, no update
            net[0].bias.requires_grad_(False)
            tnet[0].bias.requires_grad_(False)
        x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, 2)
        late = step == 5  # a gradient replaced by one of another layout before the step
        ours = _loop_step(cnet, opt, crit, tn.from_numpy(x), tn.from_numpy(y),
                          fortran(net[3].weight) if late else None)
        ref = _loop_step(tnet, t_opt, t_crit, torch.from_numpy(x), torch.from_numpy(y),
                         fortran_torch(tnet[3].weight) if late else None)
        np.testing.assert_allclose(ours, ref, rtol=1e-5)
        for (name, a), (_, b) in zip(tnet.named_parameters(), net.named_parameters()):
            np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-4,
                                       atol=1e-5, err_msg=f"step {step}: {name}")
            if a.grad is None:
                assert b.grad is None
            else:
                np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=1e-4,
                                           atol=1e-5, err_msg=f"step {step}: {name}.grad")
    assert net[0].bias.grad is None


def test_loop_still_checks_parameters_changed_in_place_before_backward():
    tnet, net = _lenet_pair()
    cnet = tn.compile(net)
    opt = tn.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    crit = tn.nn.CrossEntropyLoss()
    x, y = tn.randn(1, 1, 8, 8), tn.tensor([3])
    for _ in range(3):
        _loop_step(cnet, opt, crit, x, y)
    loss = crit(cnet(x), y)
    with tn.no_grad():
        net[3].weight.mul_(1.0)
    tx, ty = torch.randn(1, 1, 8, 8), torch.tensor([3])
    ref = torch.nn.CrossEntropyLoss()(tnet(tx), ty)
    with torch.no_grad():
        tnet[3].weight.mul_(1.0)
    with pytest.raises(RuntimeError) as theirs:
        ref.backward()
    with pytest.raises(RuntimeError) as ours:
        loss.backward()
    assert "modified by an inplace operation" in str(ours.value)
    assert str(ours.value).split(";")[0].split(":")[0] == \
        str(theirs.value).split(";")[0].split(":")[0]


def test_compiled_step_function_keeps_grad_tensors_and_versions():
    """``tracenet.compile(step_fn)`` leaves each parameter's .grad as the eager step would:
    the same tensor from call to call, its version bumped by every call that writes it, and
    given back after ``zero_grad`` dropped it."""
    _, net = _lenet_pair()
    opt = tn.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    crit = tn.nn.CrossEntropyLoss()

    def step(a, b):
        opt.zero_grad(set_to_none=False)
        loss = crit(net(a), b)
        loss.backward()
        opt.step()
        return loss

    f = tn.compile(step)
    x, y = tn.randn(2, 1, 8, 8), tn.tensor([1, 7])
    f(x, y)
    w = net[3].weight
    g = w.grad
    versions = (g._version, w._version)
    f(x, y)
    assert w.grad is g
    assert (g._version, w._version) == (versions[0] + 1, versions[1] + 1)
    w.grad = None
    f(x, y)
    assert w.grad is g


def test_compiled_module_keeps_no_graph_of_its_inputs_alive():
    """The edges a compiled module keeps from call to call are its parameters' alone: an
    input's graph is freed with the input, as after an eager call."""
    import gc
    import weakref
    net = tn.nn.Linear(3, 2)
    cnet = tn.compile(net)
    x = tn.randn(4, 3, requires_grad=True)
    for _ in range(2):
        h = x * 2
        node = weakref.ref(h.grad_fn)
        cnet(h).sum().backward()
        del h
        gc.collect()
        assert node() is None
    np.testing.assert_allclose(x.grad.numpy(), np.broadcast_to(
        4 * net.weight.detach().numpy().sum(0), (4, 3)), rtol=1e-5)


def test_compiled_module_reuses_saved_value_buffers_only_when_released():
    """The buffers of a call's saved values go back after its backward and are reused, as one
    set, by a later call of the same sizes; graphs alive at once (two forwards before one
    backward, retain_graph, another batch size) get buffers of their own, and every backward
    reads its own call's values."""
    tnet, net = _lenet_pair()
    cnet = tn.compile(net)
    spec_of = lambda: cnet._specs.last  # noqa: E731
    rng = np.random.default_rng(11)

    def pair(batch):
        x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
        return tn.from_numpy(x), torch.from_numpy(x)

    def check(loss, ref):
        net.zero_grad()
        tnet.zero_grad()
        loss.backward()
        ref.backward()
        for (_, a), (_, b) in zip(tnet.named_parameters(), net.named_parameters()):
            np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=1e-5, atol=1e-6)

    (x1, t1), (x2, t2) = pair(2), pair(2)
    first, second = (cnet(x1) ** 2).sum(), (cnet(x2) ** 2).sum()  # both graphs alive
    check(second, (tnet(t2) ** 2).sum())
    check(first, (tnet(t1) ** 2).sum())
    assert len(spec_of()._spare_sets) == 2  # both sets came back
    kept = {id(a) for _, spares in spec_of()._spare_sets for a in spares}
    (x3, t3) = pair(2)
    loss = (cnet(x3) ** 2).sum()
    ref = (tnet(t3) ** 2).sum()
    assert len(spec_of()._spare_sets) == 1  # one set taken again
    loss.backward(retain_graph=True)  # retained: its buffers stay with its graph
    ref.backward(retain_graph=True)
    assert len(spec_of()._spare_sets) == 1
    (x4, t4) = pair(3)  # another batch size: buffers of its own size
    check((cnet(x4) ** 2).sum(), (tnet(t4) ** 2).sum())
    check(loss, ref)  # the retained graph still reads its own saved values
    reused = {id(a) for _, spares in spec_of()._spare_sets for a in spares}
    assert kept & reused


def test_parameter_array_replaced_is_followed_or_refused_never_misread():
    """A parameter whose array is replaced between calls (``.data =``) is read from its new
    array when that has the shape and dtype the code was built for; one of another shape or
    dtype raises a clear error (the C code would read it as the old one), in a compiled
    module and in a compiled step function."""
    tnet, net = _lenet_pair()
    cnet = tn.compile(net)
    x = np.random.default_rng(12).standard_normal((2, 1, 8, 8)).astype(np.float32)
    cnet(tn.from_numpy(x)).sum().backward()
    new = np.random.default_rng(13).standard_normal((10, 108)).astype(np.float32)
    net[3].weight.data = tn.from_numpy(new.copy())
    tnet[3].weight.data = torch.from_numpy(new.copy())
    np.testing.assert_allclose(cnet(tn.from_numpy(x)).detach().numpy(),
                               tnet(torch.from_numpy(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    for bad in (np.zeros((11, 108), np.float32), np.zeros((10, 108), np.float64)):
        net[3].weight.data = tn.from_numpy(bad)
        with pytest.raises(RuntimeError, match=r"parameter 3\.weight is .* now; the compiled "
                                               r"code was built for float32 of shape "
                                               r"\(10, 108\)"):
            cnet(tn.from_numpy(x))

    _, net = _lenet_pair()
    opt = tn.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    crit = tn.nn.CrossEntropyLoss()

    def step(a, b):
        opt.zero_grad()
        loss = crit(net(a), b)
        loss.backward()
        opt.step()
        return loss

    compiled = tn.compile(step)
    y = tn.tensor([1, 7])
    compiled(tn.from_numpy(x), y)
    net[0].bias.data = tn.zeros(4)
    with pytest.raises(RuntimeError, match=r"state optimizer0\.group0\.param1 is float32 of "
                                           r"shape \(4,\) now; the compiled code was built "
                                           r"for float32 of shape \(3,\)"):
        compiled(tn.from_numpy(x), y)
