"""The forward and weight gradient of stride-1 convolutions with few input channels (the
ResNet's stem, 3 -> 16 on 32x32; ``lowerings/conv.py``'s ``_few_channels_geometry`` and
``_few_channels_weight_geometry``). The forward (``templates/conv2d.c.j2``'s ``few_band``):
register tiles of output channels x vectors of output columns summing the taps straight from
the padded image, with the epilogue (bias, eval-mode batch norm, residual, relu, a
training-mode batch norm's statistics) in registers; the weight gradient
(``templates/conv_backward_weight_few.c.j2``): register tiles of output channels x a kernel
row's taps summed along vectors of output columns, in double per image. Against PyTorch and
eager mode (values, running statistics, input and parameter gradients) in float32 and
float64, built for AVX-512 and for AVX2 only, at batch 1, at a symbolic batch, on 1-3
threads with NaN-filled work memory and over other geometries (1-d, dilated, unpadded,
oblong kernels); the batch-32 stem against float64; and the shapes the forms leave."""
import numpy as np
import pytest
import torch

import tracenet as tn

from compile_checks import check_compiled
from test_conv_batch_stats import _input
from test_conv_kernels import _copy_to_torch, _eval_follows_statistics, _step_against_torch, \
    _stepped_twins
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)

FEW = "output columns, which sum the"
FEW_WEIGHT = "per image and kernel row (c, kh), register tiles of"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _dtype(dtype):
    return (tn.float64, torch.float64) if dtype == np.float64 else (tn.float32, torch.float32)


def _stem(lib, cin=3, cout=16, bias=False, dtype=np.float32):
    """conv 3x3 padding 1 -> batch norm -> relu, the batch norm's affine parameters away from
    (1, 0)."""
    nn = lib.nn
    model = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=bias), nn.BatchNorm2d(cout),
                          nn.ReLU()).to(_dtype(dtype)[0 if lib is tn else 1])
    rng = np.random.default_rng(3)
    model[1].weight.data.copy_(lib.from_numpy(rng.uniform(0.5, 1.5, cout).astype(dtype)))
    model[1].bias.data.copy_(lib.from_numpy(rng.uniform(-0.5, 0.5, cout).astype(dtype)))
    return model


def _twins(cin=3, cout=16, bias=False, dtype=np.float32):
    tn.manual_seed(0)
    model, tmodel = _stem(tn, cin, cout, bias, dtype), _stem(torch, cin, cout, bias, dtype)
    _copy_to_torch(model, tmodel)
    return model, tmodel


def _normal(shape, dtype, seed):
    # (inputs off zero, as ``_input``'s, give the batch norm's input gradient a cancellation
    # that parts the float32 weight gradients of any two summation orders by more than the
    # tolerance: the statistics' rounding is tested against float64 below)
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _tol(dtype):
    return 1e-10 if dtype == np.float64 else 2e-4


# name -> (in channels, out channels, bias, input shape, dtype, whether the weight gradient's
# form takes it: images of 1024 positions or more)
CASES = {
    "stem_16x16": (3, 16, False, (2, 3, 16, 16), np.float32, False),
    "stem_32x32_batch1": (3, 16, False, (1, 3, 32, 32), np.float32, True),
    "two_channels_biased_oblong": (2, 16, True, (3, 2, 5, 32), np.float32, False),
    "one_channel_32_out_oblong": (1, 32, True, (2, 1, 16, 64), np.float32, True),
    "stem_float64": (3, 16, True, (2, 3, 32, 32), np.float64, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_training_step_matches_torch(march, name):
    """The training forward (the statistics in the tiles' epilogue) and its gradients, three
    steps (the running statistics move), then eval mode (the batch norm folded, relu)."""
    cin, cout, bias, shape, dtype, weight = CASES[name]
    model, tmodel = _twins(cin, cout, bias, dtype)
    compiled = tn.compile(model)
    for seed in range(3):
        _step_against_torch(compiled, model, tmodel, _normal(shape, dtype, seed), _tol(dtype))
    for stat in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(model[1], stat).numpy(),
                                   getattr(tmodel[1], stat).detach().numpy(),
                                   rtol=_tol(dtype), atol=_tol(dtype), err_msg=stat)
    assert compiled.source().count(FEW) == 1
    assert compiled.source().count(FEW_WEIGHT) == (1 if weight else 0)
    model.eval()
    tmodel.eval()
    compiled = tn.compile(model)
    x = _input(shape, dtype, 7)
    with tn.no_grad(), torch.no_grad():
        out, ref = compiled(tn.from_numpy(x)).numpy(), tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, rtol=_tol(dtype), atol=_tol(dtype))
    assert compiled.source().count(FEW) == 1


def _residual(lib):
    """relu(bn(conv(x)) + bn(shortcut(x))) in eval mode: the residual sum and relu in the
    epilogue of one of the two convolutions, each batch norm folded into its own."""
    nn = lib.nn

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
            self.short, self.bn_short = nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16)

        def forward(self, x):
            return lib.nn.functional.relu(self.bn(self.conv(x)) + self.bn_short(self.short(x)))
    return Residual()


def test_eval_residual_and_relu_in_the_epilogue():
    tn.manual_seed(0)
    torch.manual_seed(0)
    source = _eval_follows_statistics(_residual(tn), _residual(torch), (3, 3, 5, 32))
    assert source.count(FEW) == 2 and "conv_batch_norm_add_relu" in source


def test_plain_and_relu_forward_against_eager(march):
    """conv with a bias alone and conv -> relu, through ``check_compiled`` (eager mode)."""
    tn.manual_seed(0)
    for model in (tn.nn.Conv2d(3, 16, 3, 1, 1),
                  tn.nn.Sequential(tn.nn.Conv2d(3, 16, 3, 1, 1), tn.nn.ReLU())):
        compiled = check_compiled(model, (2, 3, 32, 32))
        assert compiled.source().count(FEW) == 1 and compiled.source().count(FEW_WEIGHT) == 1


# name -> (layer, input shape, dtype): other geometries both forms take (the weight gradient's
# on images of 1024 positions or more)
GEOMETRIES = {
    "conv1d": (lambda: tn.nn.Conv1d(3, 16, 3, padding=1), (2, 3, 2048), tn.float32),
    "dilated": (lambda: tn.nn.Conv2d(3, 16, 3, 1, 2, dilation=2), (2, 3, 32, 32), tn.float32),
    "unpadded": (lambda: tn.nn.Conv2d(2, 16, 3, 1, 0), (2, 2, 34, 34), tn.float32),
    "oblong_kernel": (lambda: tn.nn.Conv2d(3, 16, (3, 2), 1, (1, 0)), (2, 3, 32, 33),
                      tn.float32),
    "kernel_2x2_dilated_8_out": (lambda: tn.nn.Conv2d(1, 8, 2, 1, 0, dilation=(1, 3)),
                                 (3, 1, 33, 35), tn.float32),
    "biased_float64": (lambda: tn.nn.Conv2d(3, 16, 3, 1, 1).double(), (2, 3, 32, 32),
                       tn.float64),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_geometries_against_eager(march, name):
    make, shape, dtype = GEOMETRIES[name]
    tn.manual_seed(0)
    source = check_compiled(make(), shape, dtype=dtype,
                            tol=1e-9 if dtype is tn.float64 else 1e-4).source()
    assert source.count(FEW) == 1 and source.count(FEW_WEIGHT) == 1


def test_symbolic_batch():
    """One compiled module at batch 3, 2 and 1."""
    compiled = _stepped_twins(lambda lib: _stem(lib), [(b, 3, 32, 32) for b in (3, 2, 1)])
    assert len(compiled.specialisations) == 1
    source = compiled.source()
    assert "tn_N" in source and source.count(FEW) == 1 and source.count(FEW_WEIGHT) == 1


def test_stem_batch32_against_float64():
    """The ResNet's stem at batch 32: the normalised output and the batch's mean and variance
    (through the running statistics) against the float64 result, as close as PyTorch's
    float32 (output 1.1e-6 and 1.8e-6 from float64 on inputs about 0 and 3, PyTorch's 1.2e-6
    and 1.8e-6; the statistics' relative errors below 1e-7)."""
    tn.manual_seed(0)
    model = tn.nn.Sequential(tn.nn.Conv2d(3, 16, 3, 1, 1, bias=False), tn.nn.BatchNorm2d(16))
    compiled = tn.compile(model)
    w = torch.from_numpy(model[0].weight.detach().numpy()).double()
    rng = np.random.default_rng(2)
    for offset in (0.0, 3.0):
        model[1].reset_running_stats()
        x = (rng.standard_normal((32, 3, 32, 32)) * 2 + offset).astype(np.float32)
        out = compiled(tn.from_numpy(x)).detach().numpy()
        y = torch.nn.functional.conv2d(torch.from_numpy(x).double(), w, padding=1)
        mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
        exact = ((y - mean[None, :, None, None]) /
                 torch.sqrt(var[None, :, None, None] + 1e-5)).numpy()
        theirs = torch.nn.functional.batch_norm(
            torch.nn.functional.conv2d(torch.from_numpy(x), w.float(), padding=1), None, None,
            training=True).numpy()
        assert np.abs(out - exact).max() <= 1.25 * np.abs(theirs - exact).max() + 1e-7
        n = y.numel() // 16
        np.testing.assert_allclose(model[1].running_mean.numpy(), 0.1 * mean.numpy(),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(model[1].running_var.numpy(),
                                   0.9 + 0.1 * var.numpy() * n / (n - 1), rtol=1e-6)
    assert compiled.source().count(FEW) == 1


def test_weight_gradient_batch32_against_float64():
    """The stem's weight gradient at batch 32 (sums over 32768 positions a weight): against the
    float64 result within 1e-6 of the largest value (the tiles' float sums run over one
    image's row vectors, 64 products a lane, the images in double: 7.9e-5 on values up to 652,
    1.2e-7 of it, where PyTorch's float32 parts by 3.1e-3, 4.7e-6 of it)."""
    tn.manual_seed(0)
    model = tn.nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    compiled = tn.compile(model)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    gy = rng.standard_normal((32, 16, 32, 32)).astype(np.float32)
    compiled(tn.from_numpy(x)).backward(tn.from_numpy(gy))
    exact = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), (16, 3, 3, 3),
                                        torch.from_numpy(gy).double(), padding=1).numpy()
    assert np.abs(model.weight.grad.numpy() - exact).max() <= 1e-6 * np.abs(exact).max()
    assert compiled.source().count(FEW_WEIGHT) == 1


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_nan_arena_threads(nan_arenas_split, threads):
    """Work memory all NaN, batch 5 and 2 split between 1-3 threads: the padded image's zero
    border, the weights' tile order and the statistics' sums are all written before they are
    read (in training and in eval mode)."""
    tn.set_num_threads(threads)
    compiled = _stepped_twins(lambda lib: _stem(lib), [(b, 3, 32, 32) for b in (5, 2)])
    source = compiled.source()
    assert source.count(FEW) == 1 and source.count(FEW_WEIGHT) == 1
    assert "omp_get_thread_num()" in source
    model, tmodel = _twins()
    model.eval()
    tmodel.eval()
    compiled = tn.compile(model)
    x = _input((5, 3, 32, 32), np.float32)
    with tn.no_grad(), torch.no_grad():
        np.testing.assert_allclose(compiled(tn.from_numpy(x)).numpy(),
                                   tmodel(torch.from_numpy(x)).numpy(), rtol=2e-4, atol=2e-4)
    assert compiled.source().count(FEW) == 1


# name -> (layer, input shape, whether the forward's form takes it): shapes the forms leave
# to the other kernels (the weight gradient's form takes none of them)
NOT_TAKEN = {
    "width_not_a_vector": (lambda: tn.nn.Conv2d(3, 16, 3, 1, 1), (2, 3, 32, 12), False),
    "four_channels": (lambda: tn.nn.Conv2d(4, 16, 3, 1, 1), (2, 4, 32, 32), False),
    "six_out_channels": (lambda: tn.nn.Conv2d(3, 6, 3, 1, 1), (2, 3, 32, 32), False),
    "stride_2": (lambda: tn.nn.Conv2d(3, 16, 3, 2, 1), (2, 3, 32, 64), False),
    "groups": (lambda: tn.nn.Conv2d(2, 16, 3, 1, 1, groups=2), (2, 2, 32, 32), False),
    "five_taps_a_row": (lambda: tn.nn.Conv2d(3, 16, 5, 1, 2), (2, 3, 32, 32), True),
    "small_image": (lambda: tn.nn.Conv2d(3, 16, 3, 1, 1), (2, 3, 16, 16), True),
    "max_pooled": (lambda: tn.nn.Sequential(tn.nn.Conv2d(3, 16, 3, 1, 1), tn.nn.ReLU(),
                                            tn.nn.MaxPool2d(2)), (2, 3, 8, 32), False),
}


@pytest.mark.parametrize("name", list(NOT_TAKEN))
def test_not_taken_off_its_shapes(name):
    make, shape, forward = NOT_TAKEN[name]
    tn.manual_seed(0)
    source = check_compiled(make(), shape).source()
    assert source.count(FEW) == (1 if forward else 0)
    assert FEW_WEIGHT not in source
