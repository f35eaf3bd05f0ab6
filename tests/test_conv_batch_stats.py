"""A convolution followed by a training-mode batch norm: the convolution's kernel sums each
output plane as it writes it (fusion group ``conv`` with ``batch_norm_stats``), so the batch
statistics need no second pass over the output. Compared against PyTorch (outputs, running
statistics, gradients) and eager mode, over the convolution's options, batch sizes, dtypes,
thread counts and a NaN-filled arena."""
import numpy as np
import pytest

import tracenet as tn
from compile_checks import nan_filled_arenas
from test_conv_kernels import _step_against_torch

torch = pytest.importorskip("torch")

# name -> (rank, Conv arguments, Conv keyword arguments, input shape)
CASES = {
    "resnet_3x3": (2, (16, 16, 3, 1, 1), dict(bias=False), (4, 16, 10, 10)),
    "strided_biased": (2, (3, 8, 3, 2, 1), {}, (3, 3, 11, 9)),
    "shortcut_1x1_stride2": (2, (16, 32, 1, 2, 0), dict(bias=False), (2, 16, 8, 8)),
    "pointwise_stride1_biased": (2, (6, 10, 1, 1, 0), {}, (3, 6, 5, 7)),
    "dilated_grouped": (2, (8, 12, 3, 1, 2), dict(dilation=2, groups=4), (2, 8, 9, 7)),
    "gathered_many_channels": (2, (32, 64, 3, 1, 1), dict(bias=False), (2, 32, 6, 6)),
    "batch1_unpadded": (2, (4, 6, (3, 2), 1, 0), {}, (1, 4, 7, 5)),
    "conv1d": (1, (5, 7, 3, 1, 1), {}, (3, 5, 12)),
    "conv3d": (3, (2, 4, 3, 1, 1), {}, (2, 2, 4, 5, 6)),
}

_CONV = {1: "Conv1d", 2: "Conv2d", 3: "Conv3d"}
_BN = {1: "BatchNorm1d", 2: "BatchNorm2d", 3: "BatchNorm3d"}


def _block(lib, rank, args, kwargs, dtype):
    nn = lib.nn
    return nn.Sequential(getattr(nn, _CONV[rank])(*args, **kwargs),
                         getattr(nn, _BN[rank])(args[1]), nn.ReLU()).to(dtype)


def _pair(case, dtype=np.float32):
    rank, args, kwargs, shape = CASES[case]
    torch.manual_seed(0)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tmodel = _block(torch, rank, args, kwargs, tdtype)
    with torch.no_grad():  # batch norm's affine parameters away from (1, 0)
        tmodel[1].weight.uniform_(0.5, 1.5)
        tmodel[1].bias.uniform_(-0.5, 0.5)
    model = _block(tn, rank, args, kwargs, tn.float64 if dtype == np.float64 else tn.float32)
    model.load_state_dict({k: tn.from_numpy(v.detach().numpy().copy())
                           for k, v in tmodel.state_dict().items()})
    return model, tmodel, shape


def _input(shape, dtype, seed=0):
    # an offset mean: a one-pass sum of squares would lose the variance to cancellation
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + 30).astype(dtype)


def _step(compiled, model, tmodel, x, tol):
    """One training forward and backward against torch (outputs, input and parameter
    gradients), then the running statistics the forward updated."""
    _step_against_torch(compiled, model, tmodel, x, tol)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(model[1], name).numpy(),
                                   getattr(tmodel[1], name).detach().numpy(),
                                   rtol=tol, atol=tol, err_msg=name)


def _statistics_fused(compiled):
    return "_merge(stats" in compiled.source()


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_block_matches_torch_with_statistics_in_the_convolution(case):
    model, tmodel, shape = _pair(case)
    compiled = tn.compile(model)
    for seed in range(3):  # the running statistics move each step
        _step(compiled, model, tmodel, _input(shape, np.float32, seed), 2e-4)
    assert _statistics_fused(compiled)


def test_float64():
    model, tmodel, shape = _pair("strided_biased", np.float64)
    compiled = tn.compile(model)
    _step(compiled, model, tmodel, _input(shape, np.float64), 1e-10)
    assert _statistics_fused(compiled)


def test_symbolic_batch_sizes_including_one():
    model, tmodel, shape = _pair("resnet_3x3")
    compiled = tn.compile(model)
    for n in (4, 1, 3, 5):
        _step(compiled, model, tmodel, _input((n,) + shape[1:], np.float32, n), 2e-4)
    assert "tn_N" in compiled.source() and _statistics_fused(compiled)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_give_eager_statistics(threads):
    """Each thread merges the planes it wrote; the threads are merged in order. Against
    eager mode on the same weights, for a batch big enough to run in parallel."""
    model, _, _ = _pair("resnet_3x3")
    twin, _, _ = _pair("resnet_3x3")
    before = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        compiled = tn.compile(model)
        x = _input((16, 16, 10, 10), np.float32)
        out = compiled(tn.from_numpy(x))
        ref = twin(tn.from_numpy(x))
    finally:
        tn.set_num_threads(before)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=1e-4, atol=1e-4)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(model[1], name).numpy(),
                                   getattr(twin[1], name).numpy(), rtol=1e-5, atol=1e-6)


def test_nan_filled_arena(monkeypatch):
    """Every per-thread sum starts from zero: nothing is read from the arena unwritten."""
    nan_filled_arenas(monkeypatch)
    model, tmodel, shape = _pair("gathered_many_channels")
    compiled = tn.compile(model)
    for seed in range(2):
        _step(compiled, model, tmodel, _input(shape, np.float32, seed), 2e-4)


def test_constant_planes_have_zero_variance():
    """A zero weight makes every output plane its bias: variance 0, not a rounding residue
    (the normalised output is then the batch norm's bias, and the running variance decays by
    exactly the momentum)."""
    model, tmodel, shape = _pair("strided_biased")
    with torch.no_grad():
        tmodel[0].weight.zero_()
    model[0].weight.data.zero_()
    compiled = tn.compile(model)
    x = _input(shape, np.float32)
    with tn.no_grad():
        out = compiled(tn.from_numpy(x)).numpy()
    np.testing.assert_array_equal(model[1].running_var.numpy(), np.full(8, 0.9, np.float32))
    bias = np.maximum(model[1].bias.detach().numpy(), 0)
    np.testing.assert_allclose(out, np.broadcast_to(bias[:, None, None], out.shape[1:])[None]
                               .repeat(out.shape[0], 0), rtol=0, atol=1e-6)


def test_eval_mode_keeps_the_folded_batch_norm():
    model, tmodel, shape = _pair("resnet_3x3")
    model.eval()
    tmodel.eval()
    x = _input(shape, np.float32)
    compiled = tn.compile(model)
    with tn.no_grad():
        out = compiled(tn.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), tmodel(torch.from_numpy(x)).detach().numpy(),
                               rtol=2e-4, atol=2e-4)
    assert not _statistics_fused(compiled)
