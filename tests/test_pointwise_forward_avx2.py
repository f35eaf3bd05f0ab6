"""The forward of 1x1 stride-2 convolutions in AVX2's form (lowerings/conv_pointwise.py,
``_ymm_forward``: the strided positions gathered into 8-float vectors, register tiles of 6
output channels x 2 vectors with a training-mode batch norm's statistics or an eval-mode one's
scale and shift, the residual and relu on the registers) against PyTorch and eager mode: the
ResNet's shortcuts at batch 32, 1 and 3, odd channel counts, a last single vector of positions,
a large mean, running statistics, eval mode, a NaN through the relu, 1, 2 and 3 threads over
NaN-filled work memory with the same values on each, and the sizes that keep the other forms
(float64, output rows not a multiple of 8, odd inputs)."""
import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet.runtime import target as runtime_target

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _eval_follows_statistics, _step_against_torch
from test_resnet_shortcut_kernels import _shortcut_block

# AVX2's form is taken on 256-bit targets (AVX-512 has its own)
AVX2 = runtime_target.current().vector_bits == 256


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _ymm_forward(source):
    """Whether the compiled source has the forward's AVX2 form."""
    return "_ygather(img, xs);" in source


def _conv_bn(lib, cin, cout, bias):
    return lib.nn.Sequential(lib.nn.Conv2d(cin, cout, 1, stride=2, bias=bias),
                             lib.nn.BatchNorm2d(cout))


def _twins(cin, cout, bias=False, dtype=np.float32, offset=0.0):
    tn.manual_seed(0)
    model, tmodel = _conv_bn(tn, cin, cout, bias), _conv_bn(torch, cin, cout, bias)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    if offset:
        model[0].bias.data.copy_(model[0].bias.data + offset)
    _copy_to_torch(model, tmodel)
    return model, tmodel


def _training_steps(model, tmodel, shapes, dtype, tol):
    """A step of the compiled model against torch per input shape (one module: a symbolic
    batch when they differ), the running statistics compared after each; the source."""
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = rng.standard_normal(shape).astype(dtype)
        _step_against_torch(compiled, model, tmodel, x, tol, what=str(shape))
        for ours, theirs in ((model[1].running_mean, tmodel[1].running_mean),
                             (model[1].running_var, tmodel[1].running_var)):
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=tol, atol=tol)
    return compiled.source()


# name -> (in channels, out channels, bias, input shapes, dtype, bias offset, whether AVX2's
# form applies)
TRAINING = {
    # the ResNet's shortcuts at batch 32, then 1 and 3 through the same module
    "resnet_16_32": (16, 32, False, [(32, 16, 32, 32), (1, 16, 32, 32), (3, 16, 32, 32)],
                     np.float32, 0.0, True),
    "resnet_32_64": (32, 64, False, [(32, 32, 16, 16), (1, 32, 16, 16), (3, 32, 16, 16)],
                     np.float32, 0.0, True),
    # odd channel counts: tiles of 6, 4, 2 and 1 channels (13) and 4, 2, 1 (7), a bias
    "odd_channels": (5, 13, True, [(2, 5, 16, 16)], np.float32, 0.0, True),
    "odd_channels_wide_rows": (3, 7, True, [(3, 3, 4, 64)], np.float32, 0.0, True),
    # 24 positions: a pair of vectors, then a last single one
    "single_last_vector": (8, 6, True, [(2, 8, 6, 16)], np.float32, 0.0, True),
    # means about 100 times the deviations: the sums are of deviations from a value of the
    # channel
    "large_mean": (16, 13, True, [(2, 16, 8, 16)], np.float32, 100.0, True),
    # the other forms: float64; output rows of 4 and of 12 positions; an odd input
    "float64": (16, 32, False, [(2, 16, 16, 16)], np.float64, 0.0, False),
    "rows_of_4": (16, 32, False, [(2, 16, 8, 8)], np.float32, 0.0, False),
    "rows_of_12": (8, 16, False, [(2, 8, 8, 24)], np.float32, 0.0, False),
    "odd_input": (16, 16, False, [(2, 16, 15, 16)], np.float32, 0.0, False),
}


@pytest.mark.parametrize("name", list(TRAINING))
def test_training_matches_torch(name):
    """conv 1x1 stride 2 -> training batch norm: output, gradients and running statistics
    against PyTorch; AVX2's form taken exactly where it applies."""
    cin, cout, bias, shapes, dtype, offset, applies = TRAINING[name]
    model, tmodel = _twins(cin, cout, bias, dtype, offset)
    # (with a large bias, its gradient, zero but for rounding, is ~1e-4 of noise in both)
    tol = 1e-9 if dtype == np.float64 else 5e-4 if offset else 1e-4
    source = _training_steps(model, tmodel, shapes, dtype, tol)
    assert _ymm_forward(source) == (applies and AVX2)


@pytest.mark.parametrize("name", ["resnet_32_64", "odd_channels", "single_last_vector",
                                  "rows_of_12"])
def test_training_matches_eager(name):
    cin, cout, bias, shapes, dtype, _, applies = TRAINING[name]
    model, _ = _twins(cin, cout, bias, dtype)
    source = check_compiled(model, shapes[0]).source()
    assert _ymm_forward(source) == (applies and AVX2)


def test_statistics_of_the_batch():
    """The batch mean and (biased) variance the training step normalises with, from the
    output itself: the normalised output of each channel has mean 0 and variance ~1."""
    model, _ = _twins(32, 64)
    compiled = tn.compile(model)
    x = (np.random.default_rng(1).standard_normal((32, 32, 16, 16)) * 3 + 2).astype(np.float32)
    out = compiled(tn.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), 1, rtol=1e-3)
    assert _ymm_forward(compiled.source()) == AVX2


@pytest.mark.parametrize("cin,cout,bias,shape", [(16, 32, False, (32, 16, 32, 32)),
                                                 (32, 64, True, (1, 32, 16, 16)),
                                                 (6, 13, True, (3, 6, 16, 16))])
def test_eval_residual_relu_matches_torch(cin, cout, bias, shape):
    """Inference of a downsampling block: the shortcut's batch norm folded into scale and
    shift, the residual added and relu applied on the tiles' registers."""
    tn.manual_seed(0)
    model, tmodel = _shortcut_block(tn, cin, cout, bias), _shortcut_block(torch, cin, cout, bias)
    _copy_to_torch(model, tmodel)
    source = _eval_follows_statistics(model, tmodel, shape)
    assert _ymm_forward(source) == AVX2


@pytest.mark.parametrize("batch", [32, 3])
def test_eval_batch_norm_matches_torch(batch):
    """Inference of conv -> batch norm, the ResNet's 32 -> 64 shortcut."""
    model, tmodel = _twins(32, 64)
    source = _eval_follows_statistics(model, tmodel, (batch, 32, 16, 16))
    assert _ymm_forward(source) == AVX2


def test_eval_bias_alone_matches_eager():
    """Inference of a convolution with a bias and nothing after it: the bias on the tiles."""
    tn.manual_seed(0)
    model = tn.nn.Conv2d(16, 20, 1, 2).eval()
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((3, 16, 32, 32)).astype(np.float32)
    with tn.no_grad():
        out, ref = compiled(tn.from_numpy(x)).numpy(), model(tn.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert _ymm_forward(compiled.source()) == AVX2


def test_relu_keeps_nan():
    """The tiles' relu keeps a NaN, as eager mode does."""
    tn.manual_seed(0)
    model = tn.nn.Sequential(tn.nn.Conv2d(8, 16, 1, 2), tn.nn.ReLU()).eval()
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((2, 8, 32, 32)).astype(np.float32)
    x[1, 3, 4, 6] = np.nan
    with tn.no_grad():
        out, ref = compiled(tn.from_numpy(x)).numpy(), model(tn.from_numpy(x)).numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    assert np.isnan(out[1, :, 2, 3]).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    assert _ymm_forward(compiled.source()) == AVX2


@pytest.mark.parametrize("threads", [1, 2])
def test_nan_arena_threads(nan_arenas_split, threads):
    """The packed panels and per-thread statistics in NaN work memory, five images and then
    two of one compiled module split between threads."""
    tn.set_num_threads(threads)
    model, tmodel = _twins(16, 24, bias=True)
    source = _training_steps(model, tmodel, [(5, 16, 16, 32), (2, 16, 16, 32)], np.float32,
                             1e-4)
    assert _ymm_forward(source) == AVX2
    assert "omp_get_thread_num()" in source


def _outputs(threads, x):
    """The training output and the running statistics after one call on ``threads``."""
    tn.set_num_threads(threads)
    model, _ = _twins(32, 64)
    compiled = tn.compile(model)
    out = compiled(tn.from_numpy(x)).detach().numpy()
    assert _ymm_forward(compiled.source()) == AVX2
    return out, model[1].running_mean.numpy().copy(), model[1].running_var.numpy().copy()


def test_same_values_on_every_thread_count(nan_arenas_split):
    """Each image's statistics are summed and merged alike whichever thread takes it: the
    same output and running statistics on 1, 2 and 3 threads."""
    x = (np.random.default_rng(2).standard_normal((8, 32, 16, 16)) + 1).astype(np.float32)
    one = _outputs(1, x)
    for threads in (2, 3):
        for a, b in zip(one, _outputs(threads, x)):
            np.testing.assert_array_equal(a, b)
