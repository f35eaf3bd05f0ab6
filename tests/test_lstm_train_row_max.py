"""A row's maximum in the softmax kernels (``templates/_softmax.c.j2``'s ``row_max``): whole
blocks of 16 in lanes, the last 16 elements overlapping the blocks before them when a row has
that many, then the lanes in halves; a row shorter than 16 element by element. The fused cross
entropy of a training step (the LSTM LM's head) and the softmax kernel follow eager and torch
with rows around multiples of 16, the maximum in every part of a row (a whole block, the
overlap, the elements only the last 16 reach), infinities and NaN there, float64, one row, a
varying batch, 1-3 threads, NaN-filled work memory and AVX2 only; each test asserts that the
kernel takes the overlapping last 16 elements when the row has more than 16 and whole
blocks do not cover it."""
import re

import numpy as np
import pytest
import torch

import tracenet as tn
from compile_checks import nan_filled_arenas
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from test_lstm_train_cross_entropy import Setup, _data, check, fused_kernels
from test_scan_threads import _restore_threads  # noqa: F401  (the thread-count fixture)
from test_softmax_kernel import Soft
from tracenet.codegen.target import Parallelism


def overlaps_the_last_16(source, kernel, classes):
    """Whether ``kernel`` reads the last 16 elements of its rows as one block (built only for
    rows of 16 or more that whole blocks do not cover)."""
    body = re.search(rf"static void {kernel}\([^)]*\)\n\{{\n(.*?)\n\}}\n", source, re.S)[1]
    return f"[{classes} - 16 + j]" in body


def positions(c):
    """Where a row's maximum is put: a whole block's first and last element, the first element
    the overlap counts twice, the first element only the last 16 reach, the last element."""
    return sorted({p for p in (0, 15, max(c - 16, 0), c // 16 * 16, c - 1) if p < c})


def run_with_max_at(setup, compiled, c, dtype, seed, threads=1):
    for j in positions(c):
        x, t = _data(11, c, dtype, seed + j, ignored=2)
        with torch.no_grad():  # class j's logit the row's largest by far
            setup.net.bias.data[:] = 0
            setup.net.bias.data[j] = 30.0
            setup.tnet.bias.zero_()
            setup.tnet.bias[j] = 30.0
        check(setup, compiled, x, t, dtype, f"maximum at {j} of {c}, {threads} thread(s)")


@pytest.mark.parametrize("c", [5, 15, 16, 17, 31, 32, 33, 47, 90])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_finds_the_maximum_anywhere(monkeypatch, c, dtype):
    nan_filled_arenas(monkeypatch)
    setup = Setup(c, dtype)
    compiled = tn.compile(setup.step_fn(), dynamic=False)
    run_with_max_at(setup, compiled, c, dtype, c)
    (name,) = fused_kernels(compiled.source())
    assert overlaps_the_last_16(compiled.source(), name, c) == (c > 16 and c % 16 != 0)


def test_cross_entropy_avx2_only(march, monkeypatch):
    nan_filled_arenas(monkeypatch)
    setup = Setup(90, np.float32)
    compiled = tn.compile(setup.step_fn(), dynamic=False)
    run_with_max_at(setup, compiled, 90, np.float32, 3)
    (name,) = fused_kernels(compiled.source())
    assert overlaps_the_last_16(compiled.source(), name, 90)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cross_entropy_rows_split_between_threads(monkeypatch, threads):
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "compute_min_flops", 0)
    tn.set_num_threads(threads)
    setup = Setup(33, np.float32)
    compiled = tn.compile(setup.step_fn(), dynamic=False)
    run_with_max_at(setup, compiled, 33, np.float32, threads, threads)
    (name,) = fused_kernels(compiled.source())
    assert overlaps_the_last_16(compiled.source(), name, 33)


def test_cross_entropy_one_row_and_a_varying_batch(monkeypatch):
    nan_filled_arenas(monkeypatch)
    setup = Setup(21, np.float32)
    compiled = tn.compile(setup.step_fn())
    for n in (1, 9, 1, 30):
        x, t = _data(n, 21, np.float32, n)
        x[:, 0] += 5.0  # (inputs that move the maximum between classes from row to row)
        check(setup, compiled, x, t, np.float32, f"batch {n}")
    assert len(compiled._specs) == 1
    (name,) = fused_kernels(compiled.source())
    assert overlaps_the_last_16(compiled.source(), name, 21)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("j", [0, 18, 19])  # a block, the overlap, past the blocks
def test_cross_entropy_values_not_finite_anywhere(monkeypatch, value, j):
    nan_filled_arenas(monkeypatch)
    setup = Setup(20, np.float32)
    compiled = tn.compile(setup.step_fn(), dynamic=False)
    # (no target at j, none ignored: eager's loss is NaN there when class j's logit is -inf,
    # torch's inf or finite)
    x, t = _data(6, 20, np.float32, j)
    t[t == j] = (j + 1) % 20
    with torch.no_grad():
        setup.net.bias.data[j] = float(value)
        setup.tnet.bias[j] = float(value)
    ours = setup.ours(compiled, x, t)
    eager = setup.ours(setup.step_fn(), x, t)
    theirs = setup.torch_step(x, t)
    for a, e, w in zip(ours, eager, theirs):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(e))
        np.testing.assert_array_equal(np.isnan(a), np.isnan(w))
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6)
    (name,) = fused_kernels(compiled.source())
    assert overlaps_the_last_16(compiled.source(), name, 20)


def softmax_kernel(source):
    (name,) = re.findall(r"static void (\w+_(?:log_)?softmax)\(", source)
    return name


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("d", [7, 16, 17, 40])
def test_softmax_finds_the_maximum_anywhere(d, dtype, log):
    for j in positions(d):
        rng = np.random.default_rng(d * 100 + j)
        data = (rng.standard_normal((5, d)) * 4).astype(dtype)
        data[:, j] += 40.0
        data[1, (j + 1) % d] = np.inf if j % 2 else -np.inf
        net = tn.compile(Soft(1, log))
        with tn.no_grad():
            out = net(tn.tensor(data)).numpy()
            eager = Soft(1, log)(tn.tensor(data)).numpy()
        want = (torch.log_softmax if log else torch.softmax)(torch.tensor(data), dim=1).numpy()
        tol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(out, eager, rtol=tol, atol=tol, err_msg=f"maximum at {j}")
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol, err_msg=f"maximum at {j}")
        source = net.source()
        assert overlaps_the_last_16(source, softmax_kernel(source), d) == (d > 16 and d % 16 != 0)
