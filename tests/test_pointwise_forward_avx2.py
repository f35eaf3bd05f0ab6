"""The forward of 1x1 stride-2 convolutions in AVX2's form (lowerings/conv_pointwise.py,
``_ymm_forward``: the strided positions gathered into 8-float vectors, register tiles of 6
output channels x 2 vectors with a training-mode batch norm's statistics or an eval-mode one's
scale and shift, the residual and relu on the registers) against PyTorch and eager mode: the
ResNet's shortcuts at batch 32, 1 and 3, odd channel counts, a last single vector of positions,
a large mean, running statistics, eval mode, 1, 2 and 3 threads over NaN-filled work memory
with the same values on each (a NaN through the relu and NaN work memory on 1 and 2 threads
in tests/test_resnet_shortcut_kernels.py), and the sizes that keep the other forms
(float64, output rows not a multiple of 8, odd inputs)."""
import numpy as np
import pytest
import torch

import tracenet as tn

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _eval_follows_statistics
from test_resnet_shortcut_kernels import AVX2, _shortcut_block, _training_steps, _twins, \
    _ymm_forward



@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


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
    model, tmodel = _twins(cin, cout, bias, dtype=dtype, offset=offset)
    # (with a large bias, its gradient, zero but for rounding, is ~1e-4 of noise in both)
    tol = 1e-9 if dtype == np.float64 else 5e-4 if offset else 1e-4
    source = _training_steps(model, tmodel, shapes, dtype, tol)
    assert _ymm_forward(source) == (applies and AVX2)


@pytest.mark.parametrize("name", ["resnet_32_64", "odd_channels", "single_last_vector",
                                  "rows_of_12"])
def test_training_matches_eager(name):
    cin, cout, bias, shapes, dtype, _, applies = TRAINING[name]
    model, _ = _twins(cin, cout, bias, dtype=dtype)
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
