"""Elementwise kernels whose inputs broadcast along leading dims as whole trailing blocks run
as an outer loop and a vector loop over the block (codegen/lowerings/elementwise.py); the
values are eager's for every broadcast pattern, dtype and batch size."""
import re

import numpy as np
import pytest
import torch

import tracenet


class Mix(tracenet.nn.Module):
    """a * b + exp(c) - a / (1 + b * b), every input broadcast to the output."""

    def forward(self, a, b, c):
        return a * b + tracenet.exp(c) - a / (1 + b * b)


PATTERNS = [
    ((5, 12), (5, 1), (1, 12)),                    # row statistic, column vector
    ((3, 4, 6, 5), (4, 1, 1), (3, 4, 6, 5)),         # per-channel value
    ((3, 4, 9), (3, 1, 9), (1, 4, 9)),               # middle broadcast: block is the last dim
    ((2, 3, 4, 10), (2, 3, 1, 1), (1,)),             # per-plane value and a scalar
    ((4, 3), (4, 1), (1, 3)),                        # block too short: one flat loop
    ((6, 16), (16,), (6, 16)),                       # leading broadcast of a whole row
]


def _run(shapes, dtype, batch_scale=1):
    rng = np.random.default_rng(sum(map(len, shapes)))
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return arrays


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shapes", PATTERNS)
def test_broadcast_patterns_match_eager_and_torch(shapes, dtype):
    arrays = _run(shapes, dtype)
    net = tracenet.compile(Mix())
    with tracenet.no_grad():
        out = net(*map(tracenet.tensor, arrays)).numpy()
    eager = Mix()(*map(tracenet.tensor, arrays)).numpy()
    ta, tb, tc = map(torch.tensor, arrays)
    expect = (ta * tb + torch.exp(tc) - ta / (1 + tb * tb)).numpy()
    tol = 1e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(out, eager, rtol=tol, atol=tol)
    np.testing.assert_allclose(out, expect, rtol=tol, atol=tol)


@pytest.mark.parametrize("n", [7, 2, 1])
def test_a_symbolic_batch_runs_the_split_loop_at_every_size(n):
    net = tracenet.compile(Mix())
    for batch in (5, n):
        a = np.random.default_rng(batch).standard_normal((batch, 4, 3, 3)).astype(np.float32)
        b = np.random.default_rng(batch + 1).standard_normal((batch, 4, 1, 1)).astype(np.float32)
        c = np.random.default_rng(batch + 2).standard_normal((4, 1, 1)).astype(np.float32)
        with tracenet.no_grad():
            out = net(tracenet.tensor(a), tracenet.tensor(b), tracenet.tensor(c)).numpy()
        expect = Mix()(tracenet.tensor(a), tracenet.tensor(b), tracenet.tensor(c)).numpy()
        np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)
    assert len(net.specialisations) == 1


def test_gradients_through_broadcast_inputs_match_torch():
    arrays = _run(((3, 4, 5, 5), (4, 1, 1), (3, 4, 1, 1)), "float64")
    xs = [tracenet.tensor(a, requires_grad=True) for a in arrays]
    net = tracenet.compile(Mix())
    net(*xs).sum().backward()
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    (ts[0] * ts[1] + torch.exp(ts[2]) - ts[0] / (1 + ts[1] * ts[1])).sum().backward()
    for x, t in zip(xs, ts):
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_the_row_broadcast_kernel_reads_the_row_value_once_per_row():
    net = tracenet.compile(Mix())
    a, b, c = _run(((8, 90), (8, 1), (8, 90)), "float32")
    with tracenet.no_grad():
        net(tracenet.tensor(a), tracenet.tensor(b), tracenet.tensor(c))
    src = net.source()
    body = src[src.index("elementwise("):]
    # the [N, 1] input is read at the outer position; no division by the row length per element
    assert re.search(r"for \(size_t j = 0; j < 90; j\+\+\)", body)
    assert "i / 90" not in body
