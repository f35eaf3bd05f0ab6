"""ConvTranspose1d/2d/3d and F.conv_transpose1d/2d/3d against torch, and compiled against eager."""
import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as nn
import tracenet.nn.functional as F
from compile_checks import check_compiled

torch = pytest.importorskip("torch")

CASES = [
    (1, {}), (2, {}),
    (1, dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2)),
    (2, dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2)),
    (2, dict(stride=(2, 1), padding=(0, 1), output_padding=(1, 0))),
    (2, dict(stride=1, dilation=2, output_padding=1)),  # output_padding < dilation only
    (3, {}),
    (3, dict(stride=(2, 1, 2), padding=1, output_padding=(1, 0, 0), groups=2, dilation=(1, 2, 1))),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,kw", CASES)
def test_functional_matches_torch(n, kw, bias, dtype):
    rng = np.random.default_rng(0)
    g = kw.get("groups", 1)
    x = rng.standard_normal((2, 4) + (5, 6, 4)[:n]).astype(dtype)
    w = rng.standard_normal((4, 3) + (3, 2, 2)[:n]).astype(dtype)
    b = rng.standard_normal(3 * g).astype(dtype) if bias else None
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if bias else None
    X, W = tn.tensor(x, requires_grad=True), tn.tensor(w, requires_grad=True)
    B = tn.tensor(b, requires_grad=True) if bias else None
    tf = getattr(torch.nn.functional, f"conv_transpose{n}d")
    f = getattr(F, f"conv_transpose{n}d")
    ref, out = tf(xt, wt, bt, **kw), f(X, W, B, **kw)
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert tuple(out.shape) == tuple(ref.shape)
    assert out.dtype == getattr(tn, dtype)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=tol, atol=tol)
    assert type(out.grad_fn).__name__ == type(ref.grad_fn).__name__ == "ConvolutionBackward0"
    gy = rng.standard_normal(ref.shape).astype(dtype)
    ref.backward(torch.tensor(gy))
    out.backward(tn.tensor(gy))
    np.testing.assert_allclose(X.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(W.grad.numpy(), wt.grad.numpy(), rtol=tol, atol=tol)
    if bias:
        np.testing.assert_allclose(B.grad.numpy(), bt.grad.numpy(), rtol=tol, atol=tol)


def test_unbatched():
    x, w = np.random.randn(4, 5), np.random.randn(4, 2, 3)
    ref = torch.nn.functional.conv_transpose1d(torch.tensor(x), torch.tensor(w), stride=2)
    out = F.conv_transpose1d(tn.tensor(x), tn.tensor(w), stride=2)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_module_matches_torch(n):
    kw = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2)
    m = getattr(nn, f"ConvTranspose{n}d")(4, 6, 3, **kw)
    t = getattr(torch.nn, f"ConvTranspose{n}d")(4, 6, 3, **kw)
    assert tuple(m.weight.shape) == tuple(t.weight.shape) == (4, 3) + (3,) * n
    assert repr(m) == repr(t)
    with torch.no_grad():
        t.weight.copy_(torch.tensor(m.weight.detach().numpy()))
        t.bias.copy_(torch.tensor(m.bias.detach().numpy()))
    x = np.random.randn(2, 4, *(5,) * n).astype(np.float32)
    np.testing.assert_allclose(m(tn.tensor(x)).detach().numpy(),
                               t(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_reprs():
    for args, kw in [((2, 3, 3), {}), ((4, 6, (3, 2)), dict(stride=2, bias=False)),
                     ((4, 6, 3), dict(padding=1, output_padding=1, stride=2, groups=2))]:
        assert repr(nn.ConvTranspose2d(*args, **kw)) == repr(torch.nn.ConvTranspose2d(*args, **kw))
        assert repr(nn.ConvTranspose1d(*args[:2], 3, **kw)) == \
            repr(torch.nn.ConvTranspose1d(*args[:2], 3, **kw))


def test_output_size():
    m = nn.ConvTranspose2d(4, 6, 3, stride=2)
    assert tuple(m(tn.randn(1, 4, 5, 5), output_size=[12, 12]).shape) == (1, 6, 12, 12)


def _message(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("n,call", [
    (1, lambda f, m: f.conv_transpose1d(m.randn(1, 4, 5), m.randn(4, 3, 3), output_padding=1)),
    (2, lambda f, m: f.conv_transpose2d(m.randn(1, 4, 5, 5), m.randn(4, 3, 3, 3),
                                        output_padding=(1, 0))),
    (2, lambda f, m: f.conv_transpose2d(m.randn(1, 4, 5, 5), m.randn(4, 3, 3, 3),
                                        stride=2, output_padding=2)),
    (2, lambda f, m: f.conv_transpose2d(m.randn(1, 4, 5, 5), m.randn(4, 3, 3, 3), groups=3)),
    (2, lambda f, m: f.conv_transpose2d(m.randn(1, 5, 5, 5), m.randn(4, 3, 3, 3))),
    (1, lambda f, m: f.conv_transpose1d(m.randn(2, 3, 4, 5), m.randn(3, 2, 3))),
])
def test_errors_match_torch(n, call):
    assert _message(lambda: call(F, tn)) == _message(lambda: call(torch.nn.functional, torch))


def test_padding_mode_error():
    for mod, tmod in [(nn.ConvTranspose1d, torch.nn.ConvTranspose1d),
                      (nn.ConvTranspose2d, torch.nn.ConvTranspose2d)]:
        assert _message(lambda: mod(4, 6, 3, padding_mode="reflect")) == \
            _message(lambda: tmod(4, 6, 3, padding_mode="reflect"))


@pytest.mark.parametrize("n,kw", CASES)
def test_compiled_matches_eager(n, kw):
    m = getattr(nn, f"ConvTranspose{n}d")(4, 6, (3, 2, 2)[:n] if n > 1 else 3, **kw)
    check_compiled(m, (2, 4) + (5, 6, 4)[:n])
