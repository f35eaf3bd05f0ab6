"""The shortcuts of eager dispatch and of the backward engine keep torch's behaviour: leaves
get their gradients as torch's engine gives them, remembered shape rules and parsed arguments
still raise torch's errors, the small convolution input gradient equals torch's, and a
compiled module's recycled argument slots follow new arrays."""
import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet.ops import registry


def _pair(rng, *shape):
    a = rng.standard_normal(shape).astype(np.float32)
    return tn.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


def test_leaf_hooks_run_in_torchs_order_and_gradients_accumulate():
    """A leaf used once gets its gradient as soon as it arrives (torch runs a ready
    AccumulateGrad first), one used twice gets the sum once both arrived; hooks on leaves and
    on an intermediate value see the same sequence in both libraries."""
    rng = np.random.default_rng(0)
    a0, b0 = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)

    def run(lib):
        a, b = lib.tensor(a0, requires_grad=True), lib.tensor(b0, requires_grad=True)
        log = []
        a.register_hook(lambda g: log.append(("a", g.sum().item())))
        b.register_hook(lambda g: log.append(("b", g.sum().item())))
        h = a * 2
        h.register_hook(lambda g: log.append(("h", g.sum().item())))
        ((h * b).sum() + (b * b).sum()).backward()  # a once (through h), b twice
        (a * b).sum().backward()  # accumulates into the existing .grad
        return log, a.grad.detach().numpy().copy(), b.grad.detach().numpy().copy()

    (tlog, ta, tb), (plog, pa, pb) = run(tn), run(torch)
    assert [n for n, _ in tlog] == [n for n, _ in plog]
    np.testing.assert_allclose([v for _, v in tlog], [v for _, v in plog], rtol=1e-6)
    np.testing.assert_allclose(ta, pa, rtol=1e-6)
    np.testing.assert_allclose(tb, pb, rtol=1e-6)


def test_backward_of_a_leaf_and_grad_of_a_single_use_leaf():
    rng = np.random.default_rng(1)
    x, tx = _pair(rng, 4)
    x.backward(tn.ones(4))
    tx.backward(torch.ones(4))
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())
    w, tw = _pair(rng, 4)
    (g,) = tn.autograd.grad((x * w).sum(), [w])
    (tg,) = torch.autograd.grad((tx * tw).sum(), [tw])
    np.testing.assert_allclose(g.numpy(), tg.numpy())
    assert w.grad is None and tw.grad is None  # grad() does not accumulate


def test_compiled_module_gradients_become_grad_and_accumulate():
    """A compiled backward's gradients are kept as .grad without a copy, then accumulated in
    place by a second backward, as eager mode does."""
    net = tn.nn.Linear(3, 2)
    ref = tn.nn.Linear(3, 2)
    ref.load_state_dict(net.state_dict())
    compiled = tn.compile(net)
    x = tn.randn(4, 3)
    for _ in range(2):
        compiled(x).sum().backward()
        ref(x).sum().backward()
    for p, q in zip(net.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-6)
        assert p.grad.grad_fn is None and not p.grad.requires_grad


def test_remembered_shape_rules_still_raise_and_follow_new_shapes():
    op = registry.REGISTRY["convolution"]
    assert op.infer_cache is not None
    conv = tn.nn.functional.conv2d
    x, w = tn.randn(1, 2, 6, 6), tn.randn(3, 2, 3, 3)
    assert tuple(conv(x, w).shape) == (1, 3, 4, 4)
    assert tuple(conv(tn.randn(2, 2, 7, 5), w).shape) == (2, 3, 5, 3)
    for _ in range(2):  # the same bad call raises every time
        with pytest.raises(RuntimeError, match="expected input"):
            conv(tn.randn(1, 4, 6, 6), w)
        with pytest.raises(RuntimeError) as got:
            torch.nn.functional.conv2d(torch.randn(1, 4, 6, 6), torch.randn(3, 2, 3, 3))
        assert "channels" in str(got.value)


def test_parsed_geometry_arguments_still_raise_and_accept_lists():
    x = tn.randn(1, 1, 8, 8)
    w = tn.randn(1, 1, 3, 3)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="expected stride"):
            tn.nn.functional.conv2d(x, w, stride=(1, 1, 1))
        with pytest.raises(TypeError):
            tn.nn.functional.max_pool2d(x, 2.5)
    a = tn.nn.functional.conv2d(x, w, stride=[2, 1], padding=[1, 0])
    b = tn.nn.functional.conv2d(x, w, stride=(2, 1), padding=(1, 0))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert tuple(tn.nn.functional.max_pool2d(x, [2, 2], stride=(2, 1)).shape) == (1, 1, 4, 7)


@pytest.mark.parametrize("n,c,o,size,k,stride,pad,dil,groups", [
    (1, 6, 16, 14, 5, 1, 0, 1, 1),   # LeNet's conv2 at batch 1
    (2, 4, 6, 9, 3, 2, 1, 2, 2),     # strided, padded, dilated, grouped
    (1, 3, 4, 7, 3, 3, 2, 1, 1),     # windows that skip input positions
])
def test_small_convolution_input_gradient_matches_torch(n, c, o, size, k, stride, pad, dil,
                                                         groups):
    rng = np.random.default_rng(2)
    x, tx = _pair(rng, n, c, size, size + 1)
    w, tw = _pair(rng, o, c // groups, k, k)
    geo = dict(stride=stride, padding=pad, dilation=dil, groups=groups)
    y = tn.nn.functional.conv2d(x, w, **geo)
    ty = torch.nn.functional.conv2d(tx, tw, **geo)
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    y.backward(tn.from_numpy(g))
    ty.backward(torch.from_numpy(g))
    assert x.grad.numpy().flags.c_contiguous and x.grad.dtype == tn.float32
    # sums of up to 400 float32 products of size ~25 (tracenet adds the input gradient's
    # shares in float64): equal to float32 rounding of sums that size
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-4)


def test_compiled_module_follows_a_new_input_array_in_a_recycled_slot():
    net = tn.nn.Sequential(tn.nn.Linear(4, 3), tn.nn.ReLU(), tn.nn.Linear(3, 2))
    compiled = tn.compile(net)
    rng = np.random.default_rng(3)
    x = tn.from_numpy(rng.standard_normal((5, 4)).astype(np.float32))
    for step in range(3):
        out = compiled(x)
        np.testing.assert_allclose(out.detach().numpy(), net(x).detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
        out.sum().backward()
        if step == 1:
            x.data[...] = 0.5  # the same array, new values
        else:
            x = tn.from_numpy(rng.standard_normal((5, 4)).astype(np.float32))  # a new array


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 3, 1), (2, 3, 0), (3, 2, 1)])
def test_max_pool_gradient_equals_torchs_bit_for_bit(kernel, stride, padding):
    """Disjoint windows place the gradient by assignment, overlapping ones sum it: both give
    torch's values, signed zeros included."""
    rng = np.random.default_rng(4)
    x, tx = _pair(rng, 2, 3, 8, 8)
    y = tn.nn.functional.max_pool2d(x, kernel, stride, padding)
    ty = torch.nn.functional.max_pool2d(tx, kernel, stride, padding)
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    g[0, 0, 0, 0] = -0.0
    y.backward(tn.from_numpy(g))
    ty.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())
    np.testing.assert_array_equal(np.signbit(x.grad.numpy()), np.signbit(tx.grad.numpy()))
