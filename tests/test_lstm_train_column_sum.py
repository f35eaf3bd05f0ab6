"""Sums and means over leading dims (a bias gradient's column sum) on the column-block loop of
templates/reduce.c.j2: each block of columns summed in registers while the rows go by, each
column row by row in order, so the result is the loop's that accumulated into the output
row by row, bit for bit. Against PyTorch and eager
mode, float32 and float64, column counts around the vector widths, one row, values that are
not finite, NaN-filled work memory on 1-3 threads (the loop splits its blocks between
threads from 100k elements, and always here) and AVX2 only. Each test asserts the loop was
compiled; a symbolic shape keeps the row loop."""
import numpy as np
import pytest
import torch

import tracenet as tn
from compile_checks import nan_filled_arenas
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from tracenet.codegen.target import Parallelism

COLUMN_LOOP = "each block's sums in registers"


def _compiled(fn, x, dynamic=False):
    compiled = tn.compile(fn, dynamic=dynamic)
    return compiled, compiled(tn.tensor(x)).numpy()


def _in_row_order(x, dims, mean):
    """The sum over the leading ``dims`` row by row, in order (in x's dtype)."""
    rows = x.reshape((-1,) + x.shape[len(dims):])
    acc = np.zeros(rows.shape[1:], x.dtype)
    for row in rows:
        acc += row
    return acc / x.dtype.type(len(rows)) if mean else acc


def _check(fn, x, dims, mean=False):
    compiled, ours = _compiled(fn, x)
    eager = fn(tn.tensor(x)).numpy()
    theirs = (torch.tensor(x).mean(dims) if mean else torch.tensor(x).sum(dims)).numpy()
    np.testing.assert_array_equal(ours, _in_row_order(x, dims, mean))
    # other orders of the same additions: within the summation's error bound
    rows = x.size // max(ours.size, 1)
    bound = _in_row_order(np.abs(x).astype(np.float64), dims, mean) * \
        (rows * float(np.finfo(x.dtype).eps)) + float(np.finfo(x.dtype).tiny)
    assert np.all(np.abs(ours.astype(np.float64) - eager) <= bound)
    assert np.all(np.abs(ours.astype(np.float64) - theirs) <= bound)
    assert COLUMN_LOOP in compiled.source()
    return compiled


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(512, 90), (512, 256), (37, 1), (5, 7), (3, 33), (1, 90),
                                   (9, 100), (4, 3, 65)])
def test_sum_over_the_first_dim(monkeypatch, dtype, shape):
    nan_filled_arenas(monkeypatch)
    x = np.random.default_rng(len(shape) + shape[-1]).standard_normal(shape).astype(dtype)
    _check(lambda a: a.sum(0), x, (0,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_and_mean_over_two_leading_dims(monkeypatch, march, dtype):
    nan_filled_arenas(monkeypatch)
    x = np.random.default_rng(1).standard_normal((6, 7, 41)).astype(dtype)
    _check(lambda a: a.sum((0, 1)), x, (0, 1))
    _check(lambda a: a.mean((0, 1)), x, (0, 1), mean=True)
    _check(lambda a: a.mean(0), x, (0,), mean=True)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_blocks_split_between_threads(monkeypatch, threads):
    """Split between 1-3 threads (the blocks not a multiple of them): the same sums."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "memory_min_elements", 0)
    old = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        for shape, dtype in (((29, 90), np.float32), ((13, 161), np.float64),
                             ((512, 256), np.float32)):
            x = np.random.default_rng(threads).standard_normal(shape).astype(dtype)
            compiled = _check(lambda a: a.sum(0), x, (0,))
            assert "#pragma omp parallel for if(1)" in compiled.source()
    finally:
        tn.set_num_threads(old)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_values_not_finite_follow_eager(monkeypatch, value):
    nan_filled_arenas(monkeypatch)
    x = np.random.default_rng(2).standard_normal((11, 45)).astype(np.float32)
    x[3, 0], x[4, 40], x[5, 44] = value, value, value
    compiled, ours = _compiled(lambda a: a.sum(0), x)
    np.testing.assert_array_equal(ours, _in_row_order(x, (0,), False))
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(tn.tensor(x).sum(0).numpy()))
    np.testing.assert_allclose(ours, torch.tensor(x).sum(0).numpy(), rtol=1e-5, atol=1e-5)
    assert COLUMN_LOOP in compiled.source()


def test_a_bias_gradient_in_a_training_step(monkeypatch):
    """A linear layer's bias gradient (the column sum of the output gradient) against torch."""
    nan_filled_arenas(monkeypatch)
    tn.manual_seed(0)
    net = tn.nn.Linear(6, 90)
    tnet = torch.nn.Linear(6, 90)
    with torch.no_grad():
        tnet.weight.copy_(torch.tensor(net.weight.detach().numpy()))
        tnet.bias.copy_(torch.tensor(net.bias.detach().numpy()))
    opt = tn.optim.SGD(net.parameters(), lr=0.0)

    def step(x):
        opt.zero_grad()
        loss = (net(x) ** 2).sum()
        loss.backward()
        opt.step()
        return loss

    x = np.random.default_rng(3).standard_normal((37, 6)).astype(np.float32)
    compiled = tn.compile(step)
    compiled(tn.tensor(x))
    ours = net.bias.grad.numpy().copy()
    (tnet(torch.tensor(x)) ** 2).sum().backward()
    np.testing.assert_allclose(ours, tnet.bias.grad.numpy(), rtol=1e-5, atol=1e-4)
    assert COLUMN_LOOP in compiled.source()


def test_a_symbolic_shape_keeps_the_row_loop(monkeypatch):
    nan_filled_arenas(monkeypatch)
    fn = lambda a: a.sum(0)  # noqa: E731
    compiled = tn.compile(fn, dynamic=True)
    for n in (7, 12):
        x = np.random.default_rng(n).standard_normal((n, 90)).astype(np.float32)
        np.testing.assert_array_equal(compiled(tn.tensor(x)).numpy(), _in_row_order(x, (0,), False))
    assert COLUMN_LOOP not in compiled.source()
