"""The ResNet's 1x1 stride-2 shortcut convolutions in AVX-512's forms (lowerings/conv_pointwise.py:
the forward's 16-float position vectors gathered from two loads, with a training-mode batch
norm's statistics or an eval-mode one's scale and shift on the register tiles; the weight
gradient's positions gathered and transposed in 16 x 16 register blocks) against
PyTorch and eager mode: values and gradients, batch 1 and others, a symbolic batch, 1 and 2
threads over NaN-filled work memory, float64 and the sizes that keep the other forms."""
import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet.runtime import target as runtime_target

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _eval_follows_statistics, _step_against_torch

AVX512 = runtime_target.current().vector_bits >= 512
AVX2 = runtime_target.current().vector_bits == 256  # (the forward's AVX2 form)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _zmm_forward(source):
    """Whether the compiled source has the forward's AVX-512 form."""
    return "_zgather(img, xs);" in source


def _ymm_forward(source):
    """Whether the compiled source has the forward's AVX2 form."""
    return "_ygather(img, xs);" in source


def _zmm_weight(source):
    """Whether the compiled source has the weight gradient's AVX-512 form."""
    return "_zgather_t(img, xt);" in source


def _conv_bn(lib, cin, cout, bias=False, stride=2):
    return lib.nn.Sequential(lib.nn.Conv2d(cin, cout, 1, stride=stride, bias=bias),
                             lib.nn.BatchNorm2d(cout))


def _twins(cin, cout, bias=False, stride=2, dtype=np.float32, offset=0.0):
    tn.manual_seed(0)
    model, tmodel = _conv_bn(tn, cin, cout, bias, stride), _conv_bn(torch, cin, cout, bias,
                                                                     stride)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    if offset:
        model[0].bias.data.copy_(model[0].bias.data + offset)
    _copy_to_torch(model, tmodel)
    return model, tmodel


def _training_steps(model, tmodel, shapes, dtype, tol):
    """Steps of the compiled model against torch, one per input shape (a symbolic batch when
    they differ), the running statistics compared after each; the compiled source."""
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = rng.standard_normal(shape).astype(dtype)
        _step_against_torch(compiled, model, tmodel, x, tol, what=str(shape))
        for ours, theirs in ((model[1].running_mean, tmodel[1].running_mean),
                             (model[1].running_var, tmodel[1].running_var)):
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=tol, atol=tol)
    return compiled.source()


# name -> (in channels, out channels, bias, input shapes (batches), dtype, bias offset, forms:
# whether the forward's and the weight gradient's AVX-512 forms apply)
TRAINING = {
    # the ResNet's shortcuts: output rows of 16 positions (one vector) and of 8 (two rows a
    # vector), batch 2 then 1 and 3 (one compiled module)
    "resnet_16_32": (16, 32, False, [(2, 16, 32, 32), (1, 16, 32, 32), (3, 16, 32, 32)],
                     np.float32, 0.0, (True, True)),
    "resnet_32_64": (32, 64, False, [(2, 32, 16, 16), (1, 32, 16, 16)], np.float32, 0.0,
                     (True, True)),
    # the weight gradient's tiles of one vector of input channels (three blocks) and of two
    # (two blocks), odd output channel counts (tiles of 8, 4 and 1; of 12 and 1)
    "weight_48_channels_odd_outputs": (48, 13, True, [(2, 48, 8, 32)], np.float32, 0.0,
                                       (True, True)),
    "weight_64_channels": (64, 25, False, [(3, 64, 16, 16), (1, 64, 16, 16)], np.float32, 0.0,
                           (True, True)),
    # output rows of two vectors, odd channel counts (tiles of 4, 2 and 1 channels), a bias
    "two_vector_rows_odd_channels": (5, 7, True, [(2, 5, 4, 64)], np.float32, 0.0,
                                     (True, False)),
    # 48 positions: a last single vector after a tile of four
    "single_last_vector": (8, 6, True, [(2, 8, 12, 16)], np.float32, 0.0, (True, False)),
    # means about 100 times the deviations: the sums are of deviations from a value of the
    # channel
    "large_mean": (16, 13, True, [(2, 16, 8, 16)], np.float32, 100.0, (True, True)),
    # the other forms: float64; output rows of 4 positions, of 7 (odd input), of 8 with an odd
    # count of output rows (a vector would span two images' rows)
    "float64": (16, 32, False, [(2, 16, 16, 16)], np.float64, 0.0, (False, False)),
    "rows_of_4": (16, 32, False, [(2, 16, 8, 8)], np.float32, 0.0, (False, False)),
    "odd_input": (16, 16, False, [(2, 16, 15, 15)], np.float32, 0.0, (False, False)),
    "odd_output_rows": (16, 16, False, [(2, 16, 14, 16)], np.float32, 0.0, (False, False)),
}


@pytest.mark.parametrize("name", list(TRAINING))
def test_training_forward_matches_torch(name):
    """conv 1x1 stride 2 -> training batch norm: output, input and parameter gradients and
    running statistics against PyTorch; the AVX-512 forms taken exactly where they apply."""
    cin, cout, bias, shapes, dtype, offset, (forward, weight) = TRAINING[name]
    model, tmodel = _twins(cin, cout, bias, dtype=dtype, offset=offset)
    # (with a large bias, its gradient, zero but for rounding, is ~1e-4 of noise in both)
    tol = 1e-9 if dtype == np.float64 else 5e-4 if offset else 1e-4
    source = _training_steps(model, tmodel, shapes, dtype, tol)
    assert _zmm_forward(source) == (forward and AVX512)
    assert _zmm_weight(source) == (weight and AVX512)


@pytest.mark.parametrize("name", ["resnet_32_64", "weight_48_channels_odd_outputs",
                                  "two_vector_rows_odd_channels", "rows_of_4"])
def test_training_forward_matches_eager(name):
    cin, cout, bias, shapes, dtype, _, (forward, weight) = TRAINING[name]
    model, _ = _twins(cin, cout, bias, dtype=dtype)
    source = check_compiled(model, shapes[0]).source()
    assert _zmm_forward(source) == (forward and AVX512)
    assert _zmm_weight(source) == (weight and AVX512)


def test_stride_3_keeps_the_other_form():
    model, tmodel = _twins(16, 32, stride=3)
    source = _training_steps(model, tmodel, [(2, 16, 48, 48)], np.float32, 1e-4)
    assert not _zmm_forward(source) and not _zmm_weight(source)


def _shortcut_block(lib, cin, cout, bias):
    """relu(bn(conv3x3 stride 2(x)) + bn_short(conv1x1 stride 2(x))): in eval mode the
    shortcut's kernel folds its batch norm, adds the block's value and applies the relu."""
    nn_, F = lib.nn, lib.nn.functional

    class Block(nn_.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn_.Conv2d(cin, cout, 3, 2, 1, bias=False)
            self.bn = nn_.BatchNorm2d(cout)
            self.short = nn_.Conv2d(cin, cout, 1, 2, bias=bias)
            self.bn_short = nn_.BatchNorm2d(cout)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return F.relu(self.bn_short(self.short(x)) + y)
    return Block()


@pytest.mark.parametrize("cin,cout,bias,shape", [(16, 32, False, (2, 16, 32, 32)),
                                                 (32, 64, True, (1, 32, 16, 16)),
                                                 (6, 13, True, (3, 6, 16, 16))])
def test_eval_residual_relu_matches_torch(cin, cout, bias, shape):
    """Inference: the batch norm folded, the residual and relu on the tiles' registers."""
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _shortcut_block(tn, cin, cout, bias), _shortcut_block(torch, cin, cout, bias)
    _copy_to_torch(model, tmodel)
    source = _eval_follows_statistics(model, tmodel, shape)
    assert _zmm_forward(source) == AVX512


def test_eval_batch_norm_alone_matches_torch():
    """Inference of conv -> batch norm, the ResNet's shortcut at 32 -> 64."""
    model, tmodel = _twins(32, 64)
    source = _eval_follows_statistics(model, tmodel, (2, 32, 16, 16))
    assert _zmm_forward(source) == AVX512


def test_relu_keeps_nan():
    """The tiles' relu (v <= 0 ? 0 : v on the bits) keeps a NaN, as eager mode does."""
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
    assert _zmm_forward(compiled.source()) == AVX512
    assert _ymm_forward(compiled.source()) == AVX2


@pytest.mark.parametrize("threads", [1, 2])
def test_nan_arena_threads(nan_arenas_split, threads):
    """The packed panels, per-thread statistics and weight gradient sums in NaN work memory,
    five images and then two of one compiled module split between threads (each thread's
    first image stores its sums, the later ones add to them)."""
    tn.set_num_threads(threads)
    model, tmodel = _twins(16, 24, bias=True)
    source = _training_steps(model, tmodel, [(5, 16, 16, 32), (2, 16, 16, 32)], np.float32,
                             1e-4)
    assert _zmm_forward(source) == AVX512
    assert _ymm_forward(source) == AVX2
    assert _zmm_weight(source) == AVX512
