"""Compiled sums and means over trailing dims (codegen/lowerings/reduce.py) add each
contiguous run by numpy's pairwise summation, as eager mode does: the same numbers as eager
(to the last bit for a float32 tensor numpy sums in one run) and as torch, where a chain of
additions drifted with the run's length."""
import numpy as np
import pytest

import tracenet as tn

torch = pytest.importorskip("torch")


class _Reduce(tn.nn.Module):
    def __init__(self, kind, dims):
        super().__init__()
        self.kind, self.dims = kind, dims

    def forward(self, x):
        return getattr(x, self.kind)(dim=self.dims) if self.dims is not None \
            else getattr(x, self.kind)()


@pytest.mark.parametrize("kind", ["sum", "mean"])
@pytest.mark.parametrize("shape,dims", [
    ((32, 32, 16, 16), None),          # the loss of a large output: one run of 262144
    ((7,), None), ((8,), None), ((129,), None), ((1000,), None),  # around the block sizes
    ((6, 300), (1,)), ((5, 3, 7, 11), (2, 3)), ((4, 257), (-1,)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_and_mean_over_trailing_dims_match_eager_and_torch(kind, shape, dims, dtype):
    rng = np.random.default_rng(0)
    # values far from zero with one sign: a chain of float32 additions loses digits here
    a = (rng.random(shape) + 10.0).astype(dtype)
    model = _Reduce(kind, dims)
    compiled = tn.compile(model)
    x = tn.from_numpy(a)
    with tn.no_grad():
        got = compiled(x).numpy()
        eager = model(x).numpy()
    tx = torch.from_numpy(a)
    expect = (getattr(tx, kind)(dim=dims) if dims is not None else getattr(tx, kind)()).numpy()
    assert got.dtype == eager.dtype
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(got, eager, rtol=rtol)
    np.testing.assert_allclose(got, expect, rtol=rtol)
    if dims is None and dtype == np.float32:
        assert got.tobytes() == eager.tobytes()  # numpy's own order


def test_mean_loss_of_a_large_output_trains_as_eager():
    """A training step whose loss is the mean of a large output, compiled and eager."""
    def make():
        tn.manual_seed(0)
        m = tn.nn.Conv2d(16, 32, 1, stride=2)
        return m, tn.optim.SGD(m.parameters(), lr=0.1)
    x = tn.from_numpy((np.random.default_rng(1).random((8, 16, 32, 32)) + 1).astype(np.float32))
    m1, o1 = make()
    m2, o2 = make()

    def step(model, opt):
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss

    compiled = tn.compile(lambda: step(m1, o1))
    for _ in range(3):
        a, b = compiled().item(), step(m2, o2).item()
        assert a == pytest.approx(b, rel=1e-6)
    np.testing.assert_allclose(m1.weight.detach().numpy(), m2.weight.detach().numpy(),
                               rtol=1e-5, atol=1e-7)


class _ThreeReductions(tn.nn.Module):
    def forward(self, x):
        return (x * 2).mean(), x.sum(dim=(1, 2)), x.mean(dim=-1)


def test_one_build_for_every_batch_size_including_empty():
    """The run length and the runs' start depend on the batch symbol; an empty batch gives
    eager's nan (mean) and zeros."""
    model = _ThreeReductions()
    compiled = tn.compile(model)
    for batch in (3, 5, 64, 1, 0):
        a = (np.random.default_rng(batch).random((batch, 37, 300)) + 10).astype(np.float32)
        with tn.no_grad():
            got = [t.numpy() for t in compiled(tn.from_numpy(a))]
            expect = [t.numpy() for t in model(tn.from_numpy(a))]
        for g, e in zip(got, expect):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=1e-6)


from test_conv_small_channels import march  # noqa: E402,F401  (the fixture)


@pytest.mark.parametrize("width", [7, 8, 49, 64, 129, 300])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_sums_are_numpys_with_each_instruction_set(march, width, dtype):
    """The pairwise sum's eight accumulators are one vector (templates/pairwise_sum.c.j2):
    with AVX-512 and with AVX2 only, each row's sum is numpy's, bit for bit, as a global
    average pool's mean over many short rows."""
    a = (np.random.default_rng(width).random((37, 5, width)) + 10.0).astype(dtype)
    x = tn.from_numpy(a)
    for kind in ("sum", "mean"):
        model = _Reduce(kind, (-1,))
        with tn.no_grad():
            got = tn.compile(model)(x).numpy()
            eager = model(x).numpy()
        assert got.tobytes() == eager.tobytes(), (march, kind)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_runs_split_between_threads_match_eager(nan_arenas_split, threads, dtype):
    """A mean over each plane (the ResNet's average pool, 64 channels of 8x8) with the runs
    split between 1-3 threads in contiguous ranges, built at batch 32 and called at 32, 7
    (ranges of unequal length) and 1, on work memory filled with NaN: the numbers eager
    mode gives, and the same bits on any number of threads (each run summed alone)."""
    tn.set_num_threads(threads)
    model = _Reduce("mean", (2, 3))
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for batch in (32, 7, 1):
        a = (rng.random((batch, 64, 8, 8)) + 10.0).astype(dtype)
        x = tn.from_numpy(a)
        with tn.no_grad():
            got = compiled(x).numpy()
            eager = model(x).numpy()
        rtol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(got, eager, rtol=rtol)
        tn.set_num_threads(1)
        with tn.no_grad():
            one = compiled(x).numpy()
        tn.set_num_threads(threads)
        assert got.tobytes() == one.tobytes()
    assert "#pragma omp parallel" in compiled.source()
