"""nn.functional against PyTorch: convolution, pooling, padding, activations and linear.

Each comparison feeds the same numpy data to both libraries and compares values, gradients,
grad_fn names and, for bad input, the exception type and message. The last part checks every
registry op of ``ops/nn.py`` and ``ops/loss.py`` (gradient ops included) against central
finite differences.
"""
import re
import types
import warnings

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn.functional as LF
from tracenet.ops import loss as lossops, nn as nnops
from tracenet.ops.registry import REGISTRY

torch = pytest.importorskip("torch")
TF = torch.nn.functional

# the same helper names over both libraries, so one lambda builds a case for either
TH = types.SimpleNamespace(F=TF, nn=torch.nn, lib=torch, z=torch.zeros, t=torch.tensor,
                           L=torch.int64, D=torch.float64, B=torch.bool)
TN = types.SimpleNamespace(F=LF, nn=tn.nn, lib=tn, z=tn.zeros, t=tn.tensor,
                           L=tn.int64, D=tn.float64, B=tn.bool)


def _run(fn, ns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn(ns), None, [str(w.message) for w in caught]
        except Exception as e:  # noqa: BLE001 - the exception itself is what is compared
            return None, e, [str(w.message) for w in caught]


def _sorted_sets(msg):
    """Python sets of strings print in hash order, which differs between set objects built from
    differently ordered sources: compare their contents, not their order."""
    return re.sub(r"\{'[^{}]*'\}", lambda m: "{" + ", ".join(sorted(m.group(0)[1:-1].split(
        ", "))) + "}", msg)


def assert_same_error(fn):
    """Both libraries raise the same exception type with the same message."""
    _, e_th, _ = _run(fn, TH)
    _, e_tn, _ = _run(fn, TN)
    assert e_th is not None, "torch did not raise"
    assert e_tn is not None, f"tracenet did not raise; torch raised {e_th!r}"
    assert type(e_tn).__name__ == type(e_th).__name__, (e_th, e_tn)
    assert _sorted_sets(str(e_tn)) == _sorted_sets(str(e_th))


def npy(t):
    return t.detach().numpy()


def close(a, b, rtol=1e-10, atol=1e-12):
    a, b = npy(a), npy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def pair_of(a, requires_grad=False):
    """The same array as a torch and a tracenet tensor."""
    return (torch.tensor(a, requires_grad=requires_grad),
            tn.tensor(a, requires_grad=requires_grad))


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# --- convolution ------------------------------------------------------------------------------

CONV_CASES = [
    # (dims, input shape, weight shape, bias, kwargs)
    (2, (2, 4, 9, 8), (6, 4, 3, 3), True, {}),
    (2, (3, 4, 11, 9), (6, 4, 3, 2), True, dict(stride=2, padding=1)),
    (2, (2, 4, 10, 12), (6, 4, 3, 5), True, dict(stride=(2, 1), padding=(4, 2), dilation=(3, 1))),
    (2, (2, 4, 9, 9), (6, 2, 3, 3), False, dict(groups=2)),
    (2, (2, 6, 7, 7), (6, 1, 3, 3), True, dict(groups=6, padding=1)),
    (2, (2, 4, 9, 8), (6, 4, 3, 3), True, dict(padding="same")),
    (2, (2, 4, 9, 8), (6, 4, 4, 2), True, dict(padding="same")),
    (2, (2, 4, 9, 8), (6, 4, 4, 3), True, dict(padding="same", dilation=(1, 2))),
    (2, (2, 4, 9, 8), (6, 4, 2, 2), True, dict(padding="same", dilation=3)),
    (2, (2, 4, 9, 8), (6, 4, 3, 3), True, dict(padding="valid")),
    (2, (2, 4, 9, 8), (6, 4, 3, 3), False, dict(padding="valid", stride=(3, 2), dilation=2)),
    (2, (4, 9, 8), (6, 4, 3, 3), True, dict(padding=1)),
    (1, (2, 4, 11), (6, 2, 3), True, dict(groups=2, stride=2, padding=1)),
    (1, (2, 4, 11), (5, 4, 4), True, dict(padding="same", dilation=2)),
    (1, (4, 11), (5, 4, 3), False, {}),
    (3, (2, 2, 5, 6, 7), (4, 2, 3, 3, 3), True, dict(stride=2, padding=1)),
    (3, (1, 2, 5, 6, 4), (4, 1, 2, 3, 2), True, dict(groups=2, padding="same")),
    (3, (1, 2, 7, 6, 5), (3, 2, 3, 2, 2), False, dict(dilation=(2, 1, 2), stride=(1, 2, 1))),
]


@pytest.mark.parametrize("dims,xs,ws,bias,kw", CONV_CASES,
                         ids=[f"{c[0]}d-{c[1]}-{c[2]}-{c[4]}" for c in CONV_CASES])
def test_conv_forward_and_gradients_float64(dims, xs, ws, bias, kw):
    fth = getattr(TF, f"conv{dims}d")
    ftn = getattr(LF, f"conv{dims}d")
    xt, xl = pair_of(rand(*xs, seed=1), True)
    wt, wl = pair_of(rand(*ws, seed=2), True)
    bt, bl = pair_of(rand(ws[0], seed=3), True) if bias else (None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # padding='same' with even kernels warns in both
        yt, yl = fth(xt, wt, bt, **kw), ftn(xl, wl, bl, **kw)
    close(yl, yt)
    assert yl.grad_fn.name() == yt.grad_fn.name()
    g = rand(*yt.shape, seed=4)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    close(xl.grad, xt.grad)
    close(wl.grad, wt.grad)
    if bias:
        close(bl.grad, bt.grad)


def test_conv_same_with_even_kernel_pads_explicitly_and_warns():
    xt, xl = pair_of(rand(1, 2, 6, 6), True)
    wt, wl = pair_of(rand(3, 2, 4, 4))
    with pytest.warns(UserWarning, match="Using padding='same' with even kernel lengths and odd "
                                         "dilation may require a zero-padded copy"):
        yl = LF.conv2d(xl, wl, padding="same")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yt = TF.conv2d(xt, wt, padding="same")
    close(yl, yt)
    assert yl.grad_fn.next_functions[0][0].name() == "ConstantPadNdBackward0"
    assert yt.grad_fn.next_functions[0][0].name() == "ConstantPadNdBackward0"


def test_conv2d_float32_tutorial_example():
    """nn.Conv2d docs example geometry on float32 (batch trimmed to keep the test fast)."""
    x = rand(4, 16, 50, 100).astype(np.float32)
    w = (rand(33, 16, 3, 5, seed=5) * 0.1).astype(np.float32)
    b = rand(33, seed=6).astype(np.float32)
    xt, xl = pair_of(x, True)
    wt, wl = pair_of(w, True)
    bt, bl = pair_of(b, True)
    kw = dict(stride=(2, 1), padding=(4, 2), dilation=(3, 1))
    yt, yl = TF.conv2d(xt, wt, bt, **kw), LF.conv2d(xl, wl, bl, **kw)
    assert tuple(yl.shape) == tuple(yt.shape) == (4, 33, 26, 100)
    assert yl.dtype == tn.float32
    close(yl, yt, rtol=1e-4, atol=1e-4)
    g = rand(*yt.shape, seed=7).astype(np.float32)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    close(xl.grad, xt.grad, rtol=1e-4, atol=1e-4)
    close(wl.grad, wt.grad, rtol=1e-4, atol=2e-3)
    close(bl.grad, bt.grad, rtol=1e-4, atol=1e-3)


def test_conv_integer_input():
    x = np.arange(2 * 4 * 5 * 5).reshape(2, 4, 5, 5)
    w = np.arange(6 * 2 * 3 * 3).reshape(6, 2, 3, 3) - 20
    b = np.arange(6)
    kw = dict(stride=2, padding=1, dilation=(1, 2), groups=2)
    yt = TF.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), **kw)
    yl = LF.conv2d(tn.tensor(x), tn.tensor(w), tn.tensor(b), **kw)
    assert yl.dtype == tn.int64
    np.testing.assert_array_equal(yl.numpy(), yt.numpy())


CONV_ERRORS = {
    "wrong channels": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 3, 3, 3)),
    "wrong channels groups": lambda T: T.F.conv2d(T.z(1, 3, 8, 8), T.z(6, 2, 3, 3), groups=2),
    "wrong channels unbatched": lambda T: T.F.conv2d(T.z(3, 8, 8), T.z(6, 4, 3, 3)),
    "input too small": lambda T: T.F.conv2d(T.z(1, 4, 2, 2), T.z(6, 4, 3, 3)),
    "input too small padded": lambda T: T.F.conv2d(T.z(1, 4, 2, 2), T.z(6, 4, 5, 5), padding=1),
    "input too small dilated": lambda T: T.F.conv2d(T.z(1, 4, 5, 5), T.z(6, 4, 3, 3),
                                                    dilation=3),
    "input too small 1d": lambda T: T.F.conv1d(T.z(1, 4, 2), T.z(6, 4, 3)),
    "input too small 3d": lambda T: T.F.conv3d(T.z(1, 4, 2, 5, 5), T.z(6, 4, 3, 3, 3)),
    "5d input to conv2d": lambda T: T.F.conv2d(T.z(1, 4, 8, 8, 8), T.z(6, 4, 3, 3)),
    "2d input to conv2d": lambda T: T.F.conv2d(T.z(8, 8), T.z(6, 4, 3, 3)),
    "1d input to conv1d": lambda T: T.F.conv1d(T.z(8), T.z(6, 4, 3)),
    "6d input to conv3d": lambda T: T.F.conv3d(T.z(1, 4, 8, 8, 8, 8), T.z(6, 4, 3, 3, 3)),
    "module wrong channels": lambda T: T.nn.Conv2d(3, 6, 5)(T.z(1, 1, 32, 32)),
    "module input too small": lambda T: T.nn.Conv2d(1, 6, 5)(T.z(1, 1, 3, 3)),
    "module wrong dims": lambda T: T.nn.Conv2d(1, 6, 5)(T.z(32, 32)),
    "module reflect pad too big": lambda T: T.nn.Conv2d(1, 6, 5, padding=4,
                                                        padding_mode="reflect")(T.z(2, 1, 4, 4)),
    "bool": lambda T: T.F.conv2d(T.z(1, 4, 8, 8, dtype=T.B), T.z(6, 4, 3, 3, dtype=T.B)),
    "bool 3d": lambda T: T.F.conv3d(T.z(1, 4, 8, 8, 8, dtype=T.B),
                                    T.z(6, 4, 3, 3, 3, dtype=T.B)),
    "weight dtype": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3, dtype=T.D)),
    "input dtype": lambda T: T.F.conv2d(T.z(1, 4, 8, 8, dtype=T.D), T.z(6, 4, 3, 3)),
    "long input": lambda T: T.F.conv2d(T.z(1, 4, 8, 8, dtype=T.L), T.z(6, 4, 3, 3)),
    "bias dtype": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), T.z(6, dtype=T.D)),
    "bias dtype long": lambda T: T.F.conv2d(T.z(1, 4, 8, 8, dtype=T.L),
                                            T.z(6, 4, 3, 3, dtype=T.L), T.z(6)),
    "bias dtype before channels": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 3, 3, 3),
                                                       T.z(6, dtype=T.D)),
    "channels before weight dtype": lambda T: T.F.conv2d(T.z(1, 4, 8, 8),
                                                         T.z(6, 3, 3, 3, dtype=T.D)),
    "size before weight dtype": lambda T: T.F.conv2d(T.z(1, 4, 2, 2), T.z(6, 4, 3, 3, dtype=T.D)),
    "bias size": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), T.z(5)),
    "bias dims": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), T.z(6, 1)),
    "groups too many": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(2, 4, 3, 3), groups=4),
    "groups not dividing": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 1, 3, 3), groups=4),
    "groups zero": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), groups=0),
    "stride zero": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), stride=0),
    "negative padding": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), padding=(-1, 0)),
    "zero dilation": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), dilation=(0, 1)),
    "negative dilation": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), dilation=-1),
    "stride length": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), stride=(1, 1, 1)),
    "padding length": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), padding=(1, 1, 1)),
    "empty padding": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), padding=[]),
    "dilation length": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), dilation=(1, 1, 1)),
    "3-d weight to conv2d": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3)),
    "5-d weight to conv2d": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3, 3)),
    "2-d weight": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4)),
    "5-d weight, 1-long params": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3, 3),
                                                      stride=(1,), padding=(0,), dilation=(1,)),
    "zero kernel": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 0, 3)),
    "zero kernel dilated": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 0, 3), dilation=2),
    "bad padding string": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), padding="foo"),
    "same strided": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), padding="same",
                                         stride=2),
    "same stride length": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), padding="same",
                                               stride=(1, 1, 1)),
    "same dilation length": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3),
                                                 padding="same", dilation=(1, 2, 3)),
    "same zero dilation": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), padding="same",
                                               dilation=0),
    "same zero groups": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3, 3), padding="same",
                                             groups=0),
    "same 3-d weight": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4, 3), padding="same"),
    "same 2-d weight": lambda T: T.F.conv2d(T.z(1, 4, 8, 8), T.z(6, 4), padding="same"),
    "valid stride length": lambda T: T.F.conv2d(T.z(1, 4, 5, 5), T.z(6, 4, 3, 3),
                                                padding="valid", stride=(1, 1, 1)),
    "ctor strided same": lambda T: T.nn.Conv2d(4, 6, 3, stride=2, padding="same"),
    "ctor bad padding string": lambda T: T.nn.Conv2d(4, 6, 3, padding="foo"),
    "ctor bad padding mode": lambda T: T.nn.Conv2d(4, 6, 3, padding_mode="bad"),
    "ctor zero groups": lambda T: T.nn.Conv2d(4, 6, 3, groups=0),
    "ctor in not divisible": lambda T: T.nn.Conv2d(4, 6, 3, groups=3),
    "ctor out not divisible": lambda T: T.nn.Conv2d(4, 6, 3, groups=4),
}


@pytest.mark.parametrize("name", list(CONV_ERRORS))
def test_conv_errors_match_torch(name):
    assert_same_error(CONV_ERRORS[name])


# --- max pooling ------------------------------------------------------------------------------


def _pool_params(rng, dims):
    k = tuple(int(v) for v in rng.integers(1, 4, dims))
    s = tuple(int(v) for v in rng.integers(1, 4, dims))
    p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    d = tuple(int(v) for v in rng.integers(1, 3, dims))
    shape = (2, 3) + tuple(int(v) for v in rng.integers(1, 8, dims))
    return k, s, p, d, bool(rng.integers(0, 2)), shape


def _outcome(fn):
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001
        return None, e


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_max_pool_random_geometry_values_indices_grads(dims):
    rng = np.random.default_rng(10 + dims)
    fth, ftn = getattr(TF, f"max_pool{dims}d"), getattr(LF, f"max_pool{dims}d")
    checked = 0
    for trial in range(60):
        k, s, p, d, ceil, shape = _pool_params(rng, dims)
        x = rng.standard_normal(shape)
        if trial % 3 == 0:
            x = np.round(x)  # ties: the first maximum must win, as in torch
        xt, xl = pair_of(x, True)
        rt, et = _outcome(lambda: fth(xt, k, s, p, d, ceil, True))
        rl, el = _outcome(lambda: ftn(xl, k, s, p, d, ceil, True))
        if et is not None or el is not None:
            assert et is not None and el is not None, (shape, k, s, p, d, ceil, et, el)
            assert (type(el), str(el)) == (type(et), str(et))
            continue
        close(rl[0], rt[0])
        np.testing.assert_array_equal(rl[1].numpy(), rt[1].numpy())
        assert rl[0].grad_fn.name() == rt[0].grad_fn.name()
        if torch.isinf(rt[0]).any():
            continue  # windows entirely in the padding: torch's backward writes out of bounds
        g = rng.standard_normal(tuple(rt[0].shape))
        rt[0].backward(torch.tensor(g))
        rl[0].backward(tn.tensor(g))
        close(xl.grad, xt.grad)
        checked += 1
    assert checked > 20


def test_max_pool_nan_and_minus_inf_follow_torch():
    nan, inf = float("nan"), float("inf")
    for row in ([nan, nan, 1.0, 2.0], [1.0, nan, 3.0, nan], [-inf, -inf, -inf, 2.0],
                [2.0, 2.0, -1.0, 2.0]):
        x = np.array(row)[None, None]
        for kw in (dict(kernel_size=3, stride=1), dict(kernel_size=2, padding=1),
                   dict(kernel_size=2, stride=1, padding=1, ceil_mode=True)):
            vt, it = TF.max_pool1d(torch.tensor(x), return_indices=True, **kw)
            vl, il = LF.max_pool1d(tn.tensor(x), return_indices=True, **kw)
            np.testing.assert_array_equal(il.numpy(), it.numpy())
            np.testing.assert_array_equal(vl.numpy(), vt.numpy())


def test_max_pool_window_entirely_in_padding():
    """A dilated window that misses the input: -inf value, torch's index, zero gradient."""
    x = np.array([[[[1.0], [2.0]]]])
    vt, it = TF.max_pool2d(torch.tensor(x), (1, 2), 1, (0, 1), (1, 2), return_indices=True)
    xl = tn.tensor(x, requires_grad=True)
    vl, il = LF.max_pool2d(xl, (1, 2), 1, (0, 1), (1, 2), return_indices=True)
    np.testing.assert_array_equal(vl.detach().numpy(), vt.numpy())
    np.testing.assert_array_equal(il.numpy(), it.numpy())
    vl.sum().backward()
    np.testing.assert_array_equal(xl.grad.numpy(), np.zeros_like(x))


def test_max_pool2d_tutorial_shapes_and_grad_fn():
    x = rand(64, 6, 28, 28).astype(np.float32)
    xt, xl = pair_of(x, True)
    yt, yl = TF.max_pool2d(xt, (2, 2)), LF.max_pool2d(xl, (2, 2))
    close(yl, yt, 0, 0)
    assert yl.grad_fn.name() == "MaxPool2DWithIndicesBackward0" == yt.grad_fn.name()
    vt, it = TF.max_pool2d(xt, 2, return_indices=True)
    vl, il = LF.max_pool2d(xl, 2, return_indices=True)
    np.testing.assert_array_equal(il.numpy(), it.numpy())
    g = rand(*yt.shape, seed=3).astype(np.float32)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    close(xl.grad, xt.grad, 0, 0)


def test_max_pool1d_graph_matches_torch():
    xt, xl = pair_of(rand(2, 3, 8), True)
    yt, yl = TF.max_pool1d(xt, 2), LF.max_pool1d(xl, 2)
    chain_t = [yt.grad_fn.name(), yt.grad_fn.next_functions[0][0].name(),
               yt.grad_fn.next_functions[0][0].next_functions[0][0].name()]
    chain_l = [yl.grad_fn.name(), yl.grad_fn.next_functions[0][0].name(),
               yl.grad_fn.next_functions[0][0].next_functions[0][0].name()]
    assert chain_l == chain_t == ["SqueezeBackward1", "MaxPool2DWithIndicesBackward0",
                                  "UnsqueezeBackward0"]


def test_unbatched_pooling_values():
    x = rand(3, 7, 6)
    xt, xl = pair_of(x, True)
    for ft, fl in ((TF.max_pool2d, LF.max_pool2d), (TF.avg_pool2d, LF.avg_pool2d)):
        yt, yl = ft(xt, 3, 2, 1), fl(xl, 3, 2, 1)
        close(yl, yt)
        yt.sum().backward()
        yl.sum().backward()
        close(xl.grad, xt.grad)
        xt.grad, xl.grad = None, None
    vt, it = TF.max_pool1d(xt[0], 2, return_indices=True)
    vl, il = LF.max_pool1d(xl[0], 2, return_indices=True)
    close(vl, vt)
    np.testing.assert_array_equal(il.numpy(), it.numpy())


def test_max_pool_integer_input():
    x = np.random.default_rng(0).integers(-50, 50, (2, 3, 6, 7))
    vt, it = TF.max_pool2d(torch.tensor(x), 3, 2, 1, ceil_mode=True, return_indices=True)
    vl, il = LF.max_pool2d(tn.tensor(x), 3, 2, 1, ceil_mode=True, return_indices=True)
    assert vl.dtype == tn.int64
    np.testing.assert_array_equal(vl.numpy(), vt.numpy())
    np.testing.assert_array_equal(il.numpy(), it.numpy())


# --- average pooling --------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_avg_pool_random_geometry(dims):
    rng = np.random.default_rng(20 + dims)
    fth, ftn = getattr(TF, f"avg_pool{dims}d"), getattr(LF, f"avg_pool{dims}d")
    checked = 0
    for _ in range(60):
        k, s, p, _, ceil, shape = _pool_params(rng, dims)
        cip = bool(rng.integers(0, 2))
        extra = () if dims == 1 else ((None, None, 3)[int(rng.integers(0, 3))],)
        x = rng.standard_normal(shape)
        xt, xl = pair_of(x, True)
        yt, et = _outcome(lambda: fth(xt, k, s, p, ceil, cip, *extra))
        yl, el = _outcome(lambda: ftn(xl, k, s, p, ceil, cip, *extra))
        if et is not None or el is not None:
            assert et is not None and el is not None, (shape, k, s, p, ceil, et, el)
            assert (type(el), str(el)) == (type(et), str(et))
            continue
        close(yl, yt)
        assert yl.grad_fn.name() == yt.grad_fn.name()
        g = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(g))
        yl.backward(tn.tensor(g))
        close(xl.grad, xt.grad)
        checked += 1
    assert checked > 20


@pytest.mark.parametrize("kw", [dict(), dict(count_include_pad=False, padding=1),
                                dict(ceil_mode=True, stride=2, padding=1),
                                dict(divisor_override=3, padding=1),
                                dict(ceil_mode=True, count_include_pad=False, stride=3)])
def test_avg_pool2d_options(kw):
    xt, xl = pair_of(rand(2, 3, 7, 8).astype(np.float32), True)
    yt, yl = TF.avg_pool2d(xt, 3, **kw), LF.avg_pool2d(xl, 3, **kw)
    close(yl, yt, 1e-6, 1e-6)
    assert yl.grad_fn.name() == "AvgPool2DBackward0" == yt.grad_fn.name()
    yt.sum().backward()
    yl.sum().backward()
    close(xl.grad, xt.grad, 1e-6, 1e-6)


def test_avg_pool_integer_input_truncates_like_torch():
    x = np.random.default_rng(0).integers(-50, 50, (2, 3, 6, 7))
    yt = TF.avg_pool2d(torch.tensor(x), 3, 2, 1)
    yl = LF.avg_pool2d(tn.tensor(x), 3, 2, 1)
    assert yl.dtype == tn.int64
    np.testing.assert_array_equal(yl.numpy(), yt.numpy())


def _pool_error_cases():
    cases = {}
    for kind, n in (("max", 1), ("max", 2), ("max", 3), ("avg", 1), ("avg", 2), ("avg", 3)):
        fn = f"{kind}_pool{n}d"
        shp = (2, 3) + (8,) * n
        kws = [dict(kernel_size=0), dict(kernel_size=2, stride=0), dict(kernel_size=3, padding=2),
               dict(kernel_size=3, padding=-1), dict(kernel_size=20),
               dict(kernel_size=(2,) * (n + 2)), dict(kernel_size=2, stride=(1,) * (n + 1)),
               dict(kernel_size=2, padding=(0,) * (n + 1)), dict(kernel_size=()),
               dict(kernel_size=(2,) * (n - 1) + (0,), stride=1),
               dict(kernel_size=2, stride=-1), dict(kernel_size=-2, stride=1),
               dict(kernel_size=2, stride=0, padding=5), dict(kernel_size=20, padding=5),
               dict(kernel_size=2.5)]
        if kind == "max":
            kws += [dict(kernel_size=2, dilation=0), dict(kernel_size=3, padding=2, dilation=2),
                    dict(kernel_size=3, padding=3, dilation=2), dict(kernel_size=2, dilation=-1),
                    dict(kernel_size=2, padding=5, dilation=0),
                    dict(kernel_size=2, dilation=(1,) * (n + 1))]
        for kw in kws:
            variants = [dict(return_indices=False), dict(return_indices=True)] \
                if kind == "max" else [{}]
            for v in variants:
                args = dict(kw, **v)
                cases[f"{fn} {args}"] = (lambda T, fn=fn, shp=shp, args=args:
                                         getattr(T.F, fn)(T.z(*shp), **args))
        for s in [(8,), (3, 8), (1, 1, 1, 1, 1, 1, 8), (2, 0) + (8,) * n, (2, 3) + (0,) * n,
                  (0,) + (8,) * n, (2, 3) + (1,) * n]:
            cases[f"{fn} shape {s}"] = (lambda T, fn=fn, s=s: getattr(T.F, fn)(T.z(*s), 2))
        for dt in ("L", "B"):
            cases[f"{fn} dtype {dt}"] = (lambda T, fn=fn, shp=shp, dt=dt:
                                         getattr(T.F, fn)(T.z(*shp, dtype=getattr(T, dt)), 2))
    cases["avg_pool2d divisor 0"] = lambda T: T.F.avg_pool2d(T.z(2, 3, 8, 8), 2,
                                                             divisor_override=0)
    cases["avg_pool3d divisor 0"] = lambda T: T.F.avg_pool3d(T.z(2, 3, 8, 8, 8), 2,
                                                             divisor_override=0)
    cases["MaxPool2d module"] = lambda T: T.nn.MaxPool2d(3, padding=2)(T.z(1, 1, 8, 8))
    cases["AvgPool2d module"] = lambda T: T.nn.AvgPool2d(9)(T.z(1, 1, 8, 8))
    return cases


POOL_ERRORS = _pool_error_cases()


def test_pool_errors_match_torch():
    checked = 0
    for name, fn in POOL_ERRORS.items():
        _, e_th, _ = _run(fn, TH)
        _, e_tn, _ = _run(fn, TN)
        if e_th is None:
            assert e_tn is None, (name, e_tn)
            continue
        assert e_tn is not None, (name, e_th)
        assert (type(e_tn).__name__, str(e_tn)) == (type(e_th).__name__, str(e_th)), name
        checked += 1
    assert checked > 100


# --- padding ------------------------------------------------------------------------------------

PAD_CASES = [((1, 2), (2, 3, 4)), ((1, 2, 2, 1), (2, 3, 4, 5)),
             ((1, 1, 1, 1, 1, 1), (2, 3, 4, 5, 6)), ((1, 2), (3, 4)), ((1, 1, 2, 2), (2, 3, 4)),
             ((3, 3), (2, 3, 4)), ((-1, 2), (2, 3, 4)), ((1, -1, 0, 2), (2, 3, 4, 5)), ((0, 0), (2, 3, 1)),
             ((-3, 1, -1, -2), (2, 3, 4, 4)), ((2, 0, 0, 3, 1, 1), (1, 2, 4, 4, 4))]


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("pads,shape", PAD_CASES, ids=[str(c) for c in PAD_CASES])
def test_pad_modes_values_and_grads(mode, pads, shape):
    x = rand(*shape)
    xt, xl = pair_of(x, True)
    rt, et = _outcome(lambda: TF.pad(xt, pads, mode))
    rl, el = _outcome(lambda: LF.pad(xl, pads, mode))
    if et is not None:
        assert el is not None and (type(el), str(el)) == (type(et), str(et))
        return
    assert el is None, el
    close(rl, rt)
    if mode == "circular":  # torch builds it from slice copies
        assert type(rl.grad_fn).__name__ == "CopySlices"
    else:
        assert rl.grad_fn.name() == rt.grad_fn.name()
    g = rand(*rt.shape, seed=9)
    rt.backward(torch.tensor(g))
    rl.backward(tn.tensor(g))
    close(xl.grad, xt.grad)


def test_pad_constant_value_and_dtype():
    for x, value in ((np.zeros((2, 3)), 2.5), (np.arange(6).reshape(2, 3), 2.5),
                     (np.arange(6).reshape(2, 3), -7)):
        yt = TF.pad(torch.tensor(x), (1, 2, 0, 1), value=value)
        yl = LF.pad(tn.tensor(x), (1, 2, 0, 1), value=value)
        np.testing.assert_array_equal(yl.numpy(), yt.numpy())
        assert str(yl.dtype) == str(yt.dtype)


PAD_ERRORS = {
    "odd length": lambda T: T.F.pad(T.z(2, 3), (1,)),
    "too long": lambda T: T.F.pad(T.z(2, 3), (1, 1, 1, 1, 1, 1)),
    "bad mode": lambda T: T.F.pad(T.z(2, 3), (1, 1), mode="foo"),
    "reflect value": lambda T: T.F.pad(T.z(2, 3, 4), (1, 1), mode="reflect", value=1.0),
    "reflect 1d input": lambda T: T.F.pad(T.z(4), (1, 1), mode="reflect"),
    "replicate 4 on 2d": lambda T: T.F.pad(T.z(3, 4), (1, 1, 2, 2), mode="replicate"),
    "circular 2 on 4d": lambda T: T.F.pad(T.z(1, 4, 8, 8), (1, 1), mode="circular"),
    "reflect 8 on 5d": lambda T: T.F.pad(T.z(2, 3, 4, 5, 6), (1,) * 8, mode="reflect"),
    "reflect too big last": lambda T: T.F.pad(T.z(2, 1, 4, 4), (4, 4, 4, 4), mode="reflect"),
    "reflect too big second": lambda T: T.F.pad(T.z(2, 1, 4, 4), (1, 1, 4, 4), mode="reflect"),
    "reflect too big 3d": lambda T: T.F.pad(T.z(2, 1, 4, 4, 4), (1, 1, 1, 1, 4, 4),
                                            mode="reflect"),
    "reflect size 1": lambda T: T.F.pad(T.z(2, 3, 1), (1, 1), mode="reflect"),
    "reflect empty dim": lambda T: T.F.pad(T.z(2, 3, 0), (1, 1), mode="reflect"),
    "replicate empty dim": lambda T: T.F.pad(T.z(2, 0, 3), (1, 1), mode="replicate"),
    "circular wraps twice": lambda T: T.F.pad(T.z(2, 1, 4, 4), (1, 1, 5, 1), mode="circular"),
    "circular empty dim": lambda T: T.F.pad(T.z(2, 3, 0), (1, 1), mode="circular"),
    "circular negative size": lambda T: T.F.pad(T.z(2, 3, 4), (-5, 0), mode="circular"),
    "reflect too small": lambda T: T.F.pad(T.z(2, 3, 4), (-4, 0), mode="reflect"),
    "replicate too small": lambda T: T.F.pad(T.z(2, 3, 4), (-5, 0), mode="replicate"),
    "reflect 2d too small": lambda T: T.F.pad(T.z(2, 3, 4, 4), (-4, 0, -4, 0), mode="reflect"),
    "replicate 2d too small": lambda T: T.F.pad(T.z(2, 3, 4, 4), (-4, 0, -4, 0),
                                                mode="replicate"),
    "replicate 3d too small": lambda T: T.F.pad(T.z(2, 3, 4, 4, 4), (-5, 0, -5, 0, -4, 0),
                                                mode="replicate"),
    "constant crop too much": lambda T: T.F.pad(T.z(2, 3), (-2, -2)),
    "constant crop too much one side": lambda T: T.F.pad(T.z(2, 3, 4, 4), (1, -3, 2, -5)),
}


@pytest.mark.parametrize("name", list(PAD_ERRORS))
def test_pad_errors_match_torch(name):
    assert_same_error(PAD_ERRORS[name])


# --- activations ------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "softmin"])
@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_softmax_family(fn, dim):
    x = rand(2, 3, 4) * 3
    xt, xl = pair_of(x, True)
    yt, yl = getattr(TF, fn)(xt, dim), getattr(LF, fn)(xl, dim)
    close(yl, yt)
    assert yl.grad_fn.name() == yt.grad_fn.name()
    g = rand(2, 3, 4, seed=2)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    close(xl.grad, xt.grad)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "softmin"])
@pytest.mark.parametrize("shape", [(), (3,), (2, 3), (2, 3, 4), (2, 3, 4, 5)])
def test_softmax_implicit_dim_warns_like_torch(fn, shape):
    x = rand(*shape)
    rt, et, wt = _run(lambda T: getattr(T.F, fn)(T.t(x)), TH)
    rl, el, wl = _run(lambda T: getattr(T.F, fn)(T.t(x)), TN)
    assert et is None and el is None
    assert wl == wt
    assert wl == [f"Implicit dimension choice for {fn} has been deprecated. Change the call to "
                  "include dim=X as an argument."]
    close(rl, rt)


def test_softmax_modules_and_dtype_argument():
    x = rand(2, 3, 4)
    for dim in (None, 0, 1, -1):
        for cls in ("Softmax", "LogSoftmax", "Softmin"):
            rt, _, wt = _run(lambda T: getattr(T.nn, cls)(dim)(T.t(x)), TH)
            rl, _, wl = _run(lambda T: getattr(T.nn, cls)(dim)(T.t(x)), TN)
            close(rl, rt)
            assert wl == wt
    yt = TF.softmax(torch.tensor(x, dtype=torch.float32), 1, dtype=torch.float64)
    yl = LF.softmax(tn.tensor(x, dtype=tn.float32), 1, dtype=tn.float64)
    assert yl.dtype == tn.float64
    close(yl, yt, 1e-6, 1e-7)


ACTIVATION_ERRORS = {
    "softmax long last": lambda T: T.F.softmax(T.z(5, 4, dtype=T.L), 1),
    "softmax long first": lambda T: T.F.softmax(T.z(5, 4, dtype=T.L), 0),
    "log_softmax long last": lambda T: T.F.log_softmax(T.z(5, 4, dtype=T.L), -1),
    "log_softmax long first": lambda T: T.F.log_softmax(T.z(5, 4, dtype=T.L), 0),
    "softmax bool": lambda T: T.F.softmax(T.z(5, 4, dtype=T.B), 1),
    "softmax 0-d long": lambda T: T.F.softmax(T.z((), dtype=T.L), 0),
    "softmax dim out of range": lambda T: T.F.softmax(T.z(5, 4), 2),
    "relu_ on leaf": lambda T: T.nn.ReLU(inplace=True)(T.z(3, requires_grad=True)),
}


@pytest.mark.parametrize("name", list(ACTIVATION_ERRORS))
def test_activation_errors_match_torch(name):
    assert_same_error(ACTIVATION_ERRORS[name])


def test_relu_and_inplace_relu():
    x = rand(4, 5)
    xt, xl = pair_of(x, True)
    yt, yl = TF.relu(xt), LF.relu(xl)
    close(yl, yt)
    assert yl.grad_fn.name() == "ReluBackward0" == yt.grad_fn.name()
    # in place on a non-leaf: same values, same node, gradient flows through
    at, al = xt * 2, xl * 2
    rt, rl = TF.relu(at, inplace=True), LF.relu(al, inplace=True)
    assert rl is al and rt is at
    close(al, at)
    assert al.grad_fn.name() == at.grad_fn.name() == "ReluBackward0"
    rt.sum().backward()
    rl.sum().backward()
    close(xl.grad, xt.grad)
    mt, ml = torch.tensor(x), tn.tensor(x)
    torch.nn.ReLU(inplace=True)(mt)
    tn.nn.ReLU(inplace=True)(ml)
    close(ml, mt)
    np.testing.assert_array_equal(LF.relu_(tn.tensor(x)).numpy(), np.maximum(x, 0))


# --- linear -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(120,), (3, 120), (2, 3, 120), (2, 2, 3, 120)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_shapes_values_grads_and_graph(shape, bias):
    xt, xl = pair_of(rand(*shape), True)
    wt, wl = pair_of(rand(84, 120, seed=1), True)
    bt, bl = pair_of(rand(84, seed=2), True) if bias else (None, None)
    yt, yl = TF.linear(xt, wt, bt), LF.linear(xl, wl, bl)
    close(yl, yt)
    if bias or len(shape) == 2:
        # torch folds N-d input into one addmm (or mm) and views the result back
        names_t = [yt.grad_fn.name()] + [n[0].name() for n in yt.grad_fn.next_functions
                                         if n[0] is not None and "Accumulate" not in n[0].name()]
        names_l = [yl.grad_fn.name()] + [n[0].name() for n in yl.grad_fn.next_functions
                                         if n[0] is not None and "Accumulate" not in n[0].name()]
        assert names_l == names_t
    g = rand(*yt.shape, seed=3)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    close(xl.grad, xt.grad)
    close(wl.grad, wt.grad)
    if bias:
        close(bl.grad, bt.grad)


def test_linear_non_contiguous_input():
    xt, xl = pair_of(rand(3, 2, 6), True)
    wt, wl = pair_of(rand(4, 6, seed=1))
    bt, bl = pair_of(rand(4, seed=2))
    yt, yl = TF.linear(xt.transpose(0, 1), wt, bt), LF.linear(xl.transpose(0, 1), wl, bl)
    close(yl, yt)
    assert yl.grad_fn.name() == yt.grad_fn.name() == "AddBackward0"


LINEAR_ERRORS = {
    "tutorial mismatch": lambda T: T.nn.Linear(120, 84)(T.z(1, 400)),
    "mismatch 3d": lambda T: T.nn.Linear(120, 84)(T.z(2, 3, 400)),
    "mismatch 1d": lambda T: T.nn.Linear(120, 84)(T.z(400)),
    "mismatch no bias": lambda T: T.nn.Linear(120, 84, bias=False)(T.z(5, 400)),
    "mismatch no bias 3d": lambda T: T.nn.Linear(120, 84, bias=False)(T.z(2, 5, 400)),
    "0-d input": lambda T: T.nn.Linear(120, 84)(T.z(())),
    "0-d functional": lambda T: T.F.linear(T.z(()), T.z(84, 120)),
    "bias size 2d": lambda T: T.F.linear(T.z(2, 120), T.z(84, 120), T.z(83)),
    "bias size 3d": lambda T: T.F.linear(T.z(2, 2, 120), T.z(84, 120), T.z(83)),
    "bias size 1d": lambda T: T.F.linear(T.z(120), T.z(84, 120), T.z(83)),
    "dtype mismatch": lambda T: T.F.linear(T.z(2, 120, dtype=T.D), T.z(84, 120)),
}


@pytest.mark.parametrize("name", list(LINEAR_ERRORS))
def test_linear_errors_match_torch(name):
    assert_same_error(LINEAR_ERRORS[name])


def test_linear_tutorial_error_text():
    with pytest.raises(RuntimeError, match=r"^mat1 and mat2 shapes cannot be multiplied "
                                           r"\(1x400 and 120x84\)$"):
        tn.nn.Linear(120, 84)(tn.zeros(1, 400))


# --- finite differences for every nn/loss registry op ------------------------------------------


def _sep(*shape, seed=0):
    """Distinct values far apart (no near-ties), so max pooling is locally linear."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) * 0.37 + rng.uniform(-0.05, 0.05, shape)) / n


def _idx_of(x, kernel, stride, padding, dilation):
    _, i = nnops.max_pool(tn.tensor(x), kernel, stride, padding, dilation, False)
    return i


_GEO = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=1)
_AVG = dict(kernel=(3, 2), stride=(2, 1), padding=(1, 1), ceil_mode=True,
            count_include_pad=False, divisor_override=None)
_T = tn.tensor([1, 0, -100, 3, 2])


def _apply(name, *inputs, **attrs):
    from tracenet.ops.registry import apply
    return apply(REGISTRY[name], *inputs, **attrs)


# name -> (function of tensors, input arrays, indices of inputs differentiated)
FD_SAMPLES = {
    "convolution": (lambda x, w, b: nnops.convolution(x, w, b, **_GEO),
                    [rand(2, 3, 7, 6), rand(4, 3, 3, 2, seed=1), rand(4, seed=2)], [0, 1, 2]),
    "convolution grouped": (lambda x, w: nnops.convolution(x, w, None, (1,), (1,), (2,), 2),
                            [rand(2, 4, 9), rand(6, 2, 3, seed=1)], [0, 1]),
    "conv_backward_input": (lambda g, w: nnops.conv_backward_input(g, w, (2, 3, 7, 6), **_GEO),
                            [rand(2, 4, 4, 4), rand(4, 3, 3, 2, seed=1)], [0, 1]),
    "conv_backward_weight": (lambda g, x: nnops.conv_backward_weight(g, x, (4, 3, 3, 2), **_GEO),
                             [rand(2, 4, 4, 4), rand(2, 3, 7, 6, seed=1)], [0, 1]),
    "max_pool": (lambda x: nnops.max_pool(x, (3, 2), (2, 1), (1, 1), (1, 2), True)[0],
                 [_sep(2, 2, 7, 6)], [0]),
    "max_pool_backward": (lambda g: nnops.max_pool_backward(
        g, _idx_of(_sep(2, 2, 6, 7), (2, 2), (2, 2), (0, 0), (1, 1)), (2, 2, 6, 7)),
        [rand(2, 2, 3, 3)], [0]),
    "max_pool_backward empty windows": (lambda g: nnops.max_pool_backward(
        g, _idx_of(_sep(1, 2, 2, 1), (1, 2), (1, 1), (0, 1), (1, 2)), (1, 2, 2, 1),
        kernel=(1, 2), stride=(1, 1), padding=(0, 1), dilation=(1, 2)),
        [rand(1, 2, 2, 1)], [0]),
    "avg_pool": (lambda x: nnops.avg_pool(x, **_AVG), [rand(2, 2, 7, 6)], [0]),
    "avg_pool_backward": (lambda g: _apply("avg_pool_backward", g, input_shape=(2, 2, 7, 6),
                                           **_AVG), [rand(2, 2, 4, 7)], [0]),
    "max_unpool": (lambda x: nnops.max_unpool(
        x, _idx_of(_sep(2, 2, 6, 7), (2, 2), (2, 2), (0, 0), (1, 1)), (6, 7)),
        [rand(2, 2, 3, 3)], [0]),
    "max_unpool_backward": (lambda g: _apply(
        "max_unpool_backward", g, _idx_of(_sep(2, 2, 6, 7), (2, 2), (2, 2), (0, 0), (1, 1))),
        [rand(2, 2, 6, 7)], [0]),
    "adaptive_avg_pool": (lambda x: nnops.adaptive_avg_pool(x, (3, 4)), [rand(2, 2, 7, 5)],
                          [0]),
    "adaptive_avg_pool_backward": (lambda g: _apply(
        "adaptive_avg_pool_backward", g, input_shape=(2, 2, 7, 5)), [rand(2, 2, 3, 4)], [0]),
    "softmax": (lambda x: nnops.softmax(x, 1), [rand(3, 4, 2)], [0]),
    "log_softmax": (lambda x: nnops.log_softmax(x, 0), [rand(3, 4)], [0]),
    "pad constant": (lambda x: nnops.pad(x, (1, -1, 2, 0), "constant", 0.5), [rand(2, 3, 4)],
                     [0]),
    "pad reflect": (lambda x: nnops.pad(x, (1, 2, 2, 1), "reflect", None), [rand(1, 2, 4, 4)],
                    [0]),
    "pad replicate": (lambda x: nnops.pad(x, (2, 1), "replicate", None), [rand(2, 3)], [0]),
    "pad circular": (lambda x: nnops.pad(x, (1, 2, -1, 1), "circular", None), [rand(1, 3, 4)],
                     [0]),
    "pad_backward": (lambda g: _apply("pad_backward", g, input_shape=(1, 2, 3, 3),
                                      pads=(1, 1, 2, 1), mode="replicate"),
                     [rand(1, 2, 6, 5)], [0]),
    "pad_backward reflect": (lambda g: _apply("pad_backward", g, input_shape=(2, 4),
                                              pads=(2, 3), mode="reflect"), [rand(2, 9)], [0]),
    "mse_loss": (lambda a, b: lossops.mse_loss(a, b, "mean"), [rand(3, 4), rand(3, 4, seed=1)],
                 [0, 1]),
    "mse_loss none broadcast": (lambda a, b: lossops.mse_loss(a, b, "none"),
                                [rand(3, 4), rand(4, seed=1)], [0, 1]),
    "nll_loss": (lambda x, w: lossops.nll_loss(x, _T, w, -100, "mean"),
                 [rand(5, 4), np.abs(rand(4, seed=1)) + 0.5], [0]),
    "nll_loss 4d none": (lambda x: lossops.nll_loss(
        x, tn.tensor([[[0, 2], [1, 1]]]), None, 1, "none"), [rand(1, 3, 2, 2)], [0]),
    "nll_loss_backward": (lambda g: _apply("nll_loss_backward", g, _T, input_shape=(5, 4),
                                           reduction="none", ignore_index=-100),
                          [rand(5)], [0]),
    "nll_loss_backward mean weighted": (lambda g: _apply(
        "nll_loss_backward", g, _T, tn.tensor([1.0, 2.0, 0.5, 3.0], dtype=tn.float64),
        input_shape=(5, 4), reduction="mean", ignore_index=-100), [rand()], [0]),
}


def _value(fn, arrays):
    with tn.no_grad():
        out = fn(*[tn.tensor(a) for a in arrays])
    return out.numpy()


def test_fd_samples_cover_every_nn_and_loss_op():
    ours = {name for name, op in REGISTRY.items()
            if getattr(op.eager, "__module__", "") in ("tracenet.ops.nn", "tracenet.ops.loss")}
    covered = {key.split(" ")[0] for key in FD_SAMPLES}
    assert ours <= covered, ours - covered


@pytest.mark.parametrize("name", list(FD_SAMPLES))
def test_backward_rule_matches_central_differences(name):
    fn, arrays, wrt = FD_SAMPLES[name]
    rng = np.random.default_rng(123)
    inputs = [tn.tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    out = fn(*inputs)
    cot = rng.standard_normal(tuple(out.shape))
    grads = tn.autograd.grad((out * tn.tensor(cot)).sum(), [inputs[i] for i in wrt])
    eps = 1e-6
    for g, i in zip(grads, wrt):
        a = arrays[i]
        numeric = np.zeros(a.shape)
        flat = numeric.reshape(-1)
        for j in range(a.size):
            hi, lo = a.copy().reshape(-1), a.copy().reshape(-1)
            hi[j] += eps
            lo[j] -= eps
            args_hi = [hi.reshape(a.shape) if k == i else arrays[k] for k in range(len(arrays))]
            args_lo = [lo.reshape(a.shape) if k == i else arrays[k] for k in range(len(arrays))]
            flat[j] = (np.sum(_value(fn, args_hi) * cot) - np.sum(_value(fn, args_lo) * cot)) \
                / (2 * eps)
        np.testing.assert_allclose(g.numpy(), numeric, rtol=1e-6, atol=1e-7,
                                   err_msg=f"{name}: input {i}")


def test_double_backward_of_conv_matches_torch():
    """Second derivatives run the gradient ops' own backward rules."""
    xt, xl = pair_of(rand(2, 3, 6, 5), True)
    wt, wl = pair_of(rand(4, 3, 3, 2, seed=1), True)
    yt = TF.conv2d(xt, wt, stride=(2, 1), padding=1)
    yl = LF.conv2d(xl, wl, stride=(2, 1), padding=1)
    gxt, gwt = torch.autograd.grad((yt ** 2).sum(), (xt, wt), create_graph=True)
    gxl, gwl = tn.autograd.grad((yl ** 2).sum(), (xl, wl), create_graph=True)
    close(gxl, gxt)
    close(gwl, gwt)
    ht = torch.autograd.grad((gxt.sin()).sum() + (gwt ** 2).sum(), (xt, wt))
    hl = tn.autograd.grad((gxl.sin()).sum() + (gwl ** 2).sum(), (xl, wl))
    close(hl[0], ht[0], 1e-9, 1e-10)
    close(hl[1], ht[1], 1e-9, 1e-10)
