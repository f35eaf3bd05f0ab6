"""The compiled softmax / log_softmax kernel (templates/softmax.c.j2): vector loops along a
contiguous dim and across blocks of inner positions otherwise, against eager and torch."""
import warnings

import numpy as np
import pytest
import torch

import tracenet
import tracenet.nn.functional as F
from tracenet.runtime import target as runtime_target
from tracenet.runtime import threads


class Soft(tracenet.nn.Module):
    def __init__(self, dim, log):
        super().__init__()
        self.dim, self.log = dim, log

    def forward(self, x):
        return (F.log_softmax if self.log else F.softmax)(x, dim=self.dim)


CASES = [((4, 90), 1), ((4, 90), 0), ((3, 17), -1), ((2, 5, 3), 1), ((2, 3, 70, 2), 1),
         ((2, 130), 0), ((1, 7, 3, 3), 1), ((6,), 0), ((2, 3, 4), 2)]


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,dim", CASES)
def test_compiled_softmax_matches_eager_and_torch(shape, dim, dtype, log):
    rng = np.random.default_rng(len(shape) * 10 + dim)
    data = (rng.standard_normal(shape) * 4).astype(dtype)
    weights = rng.standard_normal(shape).astype(dtype)
    x = tracenet.tensor(data, requires_grad=True)
    net = tracenet.compile(Soft(dim, log))
    out = net(x)
    (out * tracenet.tensor(weights)).sum().backward()
    ex = tracenet.tensor(data, requires_grad=True)
    eout = Soft(dim, log)(ex)
    (eout * tracenet.tensor(weights)).sum().backward()
    tx = torch.tensor(data, requires_grad=True)
    tout = (torch.log_softmax if log else torch.softmax)(tx, dim=dim)
    (tout * torch.tensor(weights)).sum().backward()
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(out.detach().numpy(), eout.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(x.grad.numpy(), ex.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dim", [1, 0])
def test_infinities_and_nan_follow_eager(dim, log):
    data = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [np.nan, 1.0, 2.0],
                     [np.inf, 0.0, 1.0]], dtype=np.float32)
    net = tracenet.compile(Soft(dim, log))
    with tracenet.no_grad():
        out = net(tracenet.tensor(data)).numpy()
    expect = (torch.log_softmax if log else torch.softmax)(torch.tensor(data), dim=dim).numpy()
    eager = Soft(dim, log)(tracenet.tensor(data)).numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(eager))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expect))
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("log", [False, True])
def test_eager_softmax_of_a_fully_masked_row_gives_nan_without_warnings(log):
    data = np.array([[-np.inf, -np.inf], [0.0, 1.0]], dtype=np.float32)
    x = tracenet.tensor(data, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = Soft(1, log)(x)
        out.sum().backward()
    expect = (torch.log_softmax if log else torch.softmax)(torch.tensor(data), 1).numpy()
    np.testing.assert_array_equal(np.isnan(out.detach().numpy()), np.isnan(expect))


def test_a_varying_batch_runs_one_build_along_a_non_contiguous_dim():
    net = tracenet.compile(Soft(1, True))
    for n in (3, 5):
        data = np.random.default_rng(n).standard_normal((n, 4, 67)).astype(np.float32)
        with tracenet.no_grad():
            out = net(tracenet.tensor(data)).numpy()
        np.testing.assert_allclose(out, torch.log_softmax(torch.tensor(data), 1).numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert len(net.specialisations) == 1


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("at", [0, 15, 16, 31, 36])
def test_long_rows_with_infinities_and_nan_follow_eager(at, log):
    """Rows of 37 (two 16-lane blocks of the maximum, then a tail of 5): an infinity or a
    NaN in a block or in the tail, and the maximum itself in either."""
    rng = np.random.default_rng(at)
    data = rng.standard_normal((5, 37)).astype(np.float32)
    data[0, at] = np.inf
    data[1, at] = np.nan
    data[2, at] = -np.inf
    data[3, at] = 9.0  # the row's maximum, in a block or in the tail
    data[4, :] = -np.inf
    net = tracenet.compile(Soft(1, log))
    with tracenet.no_grad():
        out = net(tracenet.tensor(data)).numpy()
    expect = (torch.log_softmax if log else torch.softmax)(torch.tensor(data), dim=1).numpy()
    eager = Soft(1, log)(tracenet.tensor(data)).numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(eager))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expect))
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("log", [False, True])
def test_many_rows_split_between_threads_match_eager_on_one_two_and_three_threads(log):
    """A language model's loss rows (512 x 90 at its traced batch): the rows are split between
    threads, with the condition on the batch size at run time; every thread count and a batch
    too small to split give eager's values."""
    if not runtime_target.current().openmp:
        pytest.skip("no OpenMP here")
    before, adaptive = tracenet.get_num_threads(), list(threads._adaptive)
    net = tracenet.compile(Soft(1, log))
    rng = np.random.default_rng(0)
    try:
        for n in (512, 3, 512):
            data = (rng.standard_normal((n, 90)) * 4).astype(np.float32)
            data[n // 2, 7] = np.inf  # (a row of the second thread's share)
            eager = Soft(1, log)(tracenet.tensor(data)).numpy()
            for count in (2, 1, 3):
                tracenet.set_num_threads(count)
                with tracenet.no_grad():
                    out = net(tracenet.tensor(data)).numpy()
                np.testing.assert_array_equal(np.isnan(out), np.isnan(eager))
                np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-6)
    finally:
        tracenet.set_num_threads(before)
        threads._adaptive[:] = adaptive
    assert len(net.specialisations) == 1  # one build: the split is decided at run time
    (split,) = [line for line in net.source().splitlines() if "omp parallel for if(" in line]
    assert "tn_N" in split  # (the batch size it splits from, checked at run time)
