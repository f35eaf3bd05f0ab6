"""nn.utils: gradient clipping and parameter/vector conversion, compared with PyTorch on
identical gradients."""
import math
import warnings

import numpy as np
import pytest

from tracenet.tensor import Tensor
from tracenet.nn.parameter import Parameter
from tracenet.nn.utils import clip_grad, convert_parameters as cp


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def make_params(seed, shapes, dtypes, with_grad=None, scale=1.0):
    """Parameters with random values and grads as numpy arrays (shared by both libraries)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (shape, dt) in enumerate(zip(shapes, dtypes)):
        value = rng.standard_normal(shape).astype(dt)
        grad = None
        if with_grad is None or with_grad[i]:
            grad = (rng.standard_normal(shape) * scale).astype(dt)
        out.append((value, grad))
    return out


def tn_params(spec):
    params = []
    for value, grad in spec:
        p = Parameter(Tensor._wrap(value.copy()))
        if grad is not None:
            p.grad = Tensor._wrap(grad.copy())
        params.append(p)
    return params


def th_params(torch, spec):
    params = []
    for value, grad in spec:
        p = torch.nn.Parameter(torch.from_numpy(value.copy()))
        if grad is not None:
            p.grad = torch.from_numpy(grad.copy())
        params.append(p)
    return params


def rel_close(a, b, rtol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    both_nan = np.isnan(a) & np.isnan(b)
    ok = both_inf | both_nan | (np.abs(a - b) <= rtol * np.maximum(np.abs(b), 1e-30))
    return bool(np.all(ok))


SHAPES = [(10, 20), (20,), (3, 4, 5, 5), (1,)]


@pytest.mark.parametrize("norm_type", [2.0, 1, 3.0, 0.5, math.inf, "inf", 0])
@pytest.mark.parametrize("max_norm", [0.1, 1.0, 1e4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, dtype, torch):
    spec = make_params(0, SHAPES, [dtype] * len(SHAPES), with_grad=[True, True, True, False])
    ours, theirs = tn_params(spec), th_params(torch, spec)
    versions = [p.grad._version for p in ours if p.grad is not None]
    total = clip_grad.clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert isinstance(total, Tensor) and total.dim() == 0
    assert total._data.dtype == expected.numpy().dtype
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert rel_close(total.item(), expected.item(), rtol)
    for p, q in zip(ours, theirs):
        if q.grad is None:
            assert p.grad is None
        else:
            assert p.grad._data.dtype == q.grad.numpy().dtype
            assert rel_close(p.grad._data, q.grad.numpy(), 2 * rtol)
    assert all(p.grad._version > v for p, v in
               zip([p for p in ours if p.grad is not None], versions))


def test_clip_grad_norm_mixed_dtypes_and_single_tensor(torch):
    spec = make_params(1, [(5,), (6,)], [np.float32, np.float64])
    ours, theirs = tn_params(spec), th_params(torch, spec)
    total = clip_grad.clip_grad_norm_(ours, 0.5)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert total._data.dtype == expected.numpy().dtype == np.float64
    assert rel_close(total.item(), expected.item(), 1e-6)

    spec = make_params(2, [(7, 3)], [np.float32])
    ours, theirs = tn_params(spec), th_params(torch, spec)
    total = clip_grad.clip_grad_norm_(ours[0], 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs[0], 1.0)
    assert rel_close(total.item(), expected.item(), 1e-6)
    assert rel_close(ours[0].grad._data, theirs[0].grad.numpy(), 2e-6)


def test_clip_grad_norm_accepts_generators_and_no_grads(torch):
    spec = make_params(3, [(4,), (4,)], [np.float32] * 2)
    ours = tn_params(spec)
    total = clip_grad.clip_grad_norm_((p for p in ours), 1.0)
    ours_ref = th_params(torch, spec)
    expected = torch.nn.utils.clip_grad_norm_((p for p in ours_ref), 1.0)
    assert rel_close(total.item(), expected.item(), 1e-6)

    none_spec = make_params(4, [(3,)], [np.float32], with_grad=[False])
    total = clip_grad.clip_grad_norm_(tn_params(none_spec), 1.0)
    assert total.item() == 0.0 and total._data.dtype == np.float32 and total.dim() == 0
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert clip_grad.clip_grad_norm_((p for p in []), 1.0).item() == 0.0
    with warnings.catch_warnings(record=True) as rec_t:
        warnings.simplefilter("always")
        torch.nn.utils.clip_grad_norm_((p for p in []), 1.0)
    assert [str(w.message) for w in rec] == [str(w.message) for w in rec_t]


def test_clip_grad_norm_nonfinite(torch):
    spec = make_params(5, [(4,)], [np.float32])
    spec[0][1][1] = np.inf
    for norm_type in (2.0, math.inf):
        ours, theirs = tn_params(spec), th_params(torch, spec)
        with pytest.raises(RuntimeError) as ours_err:
            clip_grad.clip_grad_norm_(ours, 1.0, norm_type, error_if_nonfinite=True)
        with pytest.raises(RuntimeError) as theirs_err:
            torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type, error_if_nonfinite=True)
        assert str(ours_err.value) == str(theirs_err.value)
        total = clip_grad.clip_grad_norm_(ours, 1.0, norm_type)
        expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
        assert math.isinf(total.item()) and math.isinf(expected.item())
        np.testing.assert_array_equal(ours[0].grad._data, theirs[0].grad.numpy())


def test_clip_grad_norm_legacy_warns(torch):
    spec = make_params(6, [(3, 3)], [np.float32])
    ours, theirs = tn_params(spec), th_params(torch, spec)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        total = clip_grad.clip_grad_norm(ours, 0.1)
    with warnings.catch_warnings(record=True) as rec_t:
        warnings.simplefilter("always")
        expected = torch.nn.utils.clip_grad_norm(theirs, 0.1)
    assert [(w.category, str(w.message)) for w in rec] == \
        [(w.category, str(w.message)) for w in rec_t]
    assert rec[0].category is FutureWarning
    assert rel_close(total.item(), expected.item(), 1e-6)
    assert rel_close(ours[0].grad._data, theirs[0].grad.numpy(), 2e-6)


@pytest.mark.parametrize("clip_value", [0.1, 0.5, 2, 10.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_value_matches_torch(clip_value, dtype, torch):
    spec = make_params(7, SHAPES, [dtype] * len(SHAPES), with_grad=[True, False, True, True])
    ours, theirs = tn_params(spec), th_params(torch, spec)
    assert clip_grad.clip_grad_value_(ours, clip_value) is None
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    for p, q in zip(ours, theirs):
        if q.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_array_equal(p.grad._data, q.grad.numpy())
    single = tn_params(spec[:1])[0]
    clip_grad.clip_grad_value_(single, 0.01)
    assert np.abs(single.grad._data).max() <= 0.01


def test_get_total_norm_and_clip_grads_with_norm(torch):
    spec = make_params(8, SHAPES, [np.float32] * len(SHAPES))
    ours, theirs = tn_params(spec), th_params(torch, spec)
    total = clip_grad.get_total_norm([p.grad for p in ours], 3.0)
    expected = torch.nn.utils.get_total_norm([p.grad for p in theirs], 3.0)
    assert rel_close(total.item(), expected.item(), 1e-6)
    clip_grad.clip_grads_with_norm_(ours, 1.0, total)
    torch.nn.utils.clip_grads_with_norm_(theirs, 1.0, expected)
    for p, q in zip(ours, theirs):
        assert rel_close(p.grad._data, q.grad.numpy(), 2e-6)


# --- parameters_to_vector / vector_to_parameters --------------------------------------------------

def test_parameters_to_vector_matches_torch(torch):
    for dtypes in ([np.float32] * 3, [np.float32, np.float64, np.float32]):
        spec = make_params(9, [(2, 3), (4,), (1, 2, 2)], dtypes)
        vec = cp.parameters_to_vector(tn_params(spec))
        expected = torch.nn.utils.parameters_to_vector(th_params(torch, spec))
        assert tuple(vec.shape) == tuple(expected.shape)
        assert vec.dtype.name == str(expected.dtype).split(".")[1]
        np.testing.assert_array_equal(np.asarray(vec.detach()._data), expected.detach().numpy())
    with pytest.raises(ValueError) as ours_err:
        cp.parameters_to_vector(iter([]))
    with pytest.raises(ValueError) as theirs_err:
        torch.nn.utils.parameters_to_vector(iter([]))
    assert str(ours_err.value) == str(theirs_err.value)


def test_parameters_to_vector_is_a_copy():
    params = tn_params(make_params(10, [(2, 2), (3,)], [np.float32] * 2))
    vec = cp.parameters_to_vector(params)
    vec._data[...] = 0
    assert params[0]._data.any()


def test_vector_to_parameters_matches_torch(torch):
    spec = make_params(11, [(2, 3), (4,), (1, 2, 2)], [np.float32] * 3)
    ours, theirs = tn_params(spec), th_params(torch, spec)
    vec_np = np.arange(14, dtype=np.float32) * 0.5
    vec = Tensor._wrap(vec_np.copy())
    ids = [id(p) for p in ours]
    versions = [p._version for p in ours]
    assert cp.vector_to_parameters(vec, ours) is None
    torch.nn.utils.vector_to_parameters(torch.from_numpy(vec_np.copy()), theirs)
    for p, q, i, v in zip(ours, theirs, ids, versions):
        assert id(p) == i and type(p) is Parameter and p.requires_grad
        assert tuple(p.shape) == tuple(q.shape) and p._version > v
        np.testing.assert_array_equal(p._data, q.detach().numpy())
    # like torch, the parameters now view the vector's memory
    vec._data[0] = 100.0
    assert ours[0]._data[0, 0] == 100.0


def test_vector_to_parameters_errors(torch):
    spec = make_params(12, [(2, 2), (3,)], [np.float32] * 2)
    cases = [
        (lambda: cp.vector_to_parameters(3, tn_params(spec)),
         lambda: torch.nn.utils.vector_to_parameters(3, th_params(torch, spec))),
        (lambda: cp.vector_to_parameters(Tensor._wrap(np.zeros(3, np.float32)),
                                         tn_params(spec)),
         lambda: torch.nn.utils.vector_to_parameters(torch.zeros(3), th_params(torch, spec))),
    ]
    for ours, theirs in cases:
        with pytest.raises(Exception) as e1:
            ours()
        with pytest.raises(Exception) as e2:
            theirs()
        assert type(e1.value).__name__ == type(e2.value).__name__
        assert str(e1.value) == str(e2.value)
