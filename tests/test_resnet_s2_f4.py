"""The stride-2 3x3 forward's tiles of 4x4 outputs (templates/conv_winograd_s2.c.j2 with MT 4:
F(4, 2) on the even inputs, 81 products per 4x4 outputs), taken where the outputs are whole
tiles: against PyTorch (values, input and weight gradients) and eager mode, with the rows
split by 8x8 transposes (two and eight images a block, one image of 64 columns) or a store
per value (a last block of fewer images, batch 1, float64), the output rows by shuffles (one
and two images a block) or by transposes (eight images of 8x8 outputs) straight into the
output or through the buffer (an epilogue), a training batch norm's statistics, builds for
AVX-512 and AVX2 only, NaN-filled work memory on 1-3 threads; cut tiles keep 2x2 outputs."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _step_against_torch, _stepped_twins
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_resnet_stride2_winograd import INTERLEAVED, _down_block

F4 = "stride-2 3x3 convolution by its phases' Winograd forms (81 products per 4x4 outputs)"
F2 = "stride-2 3x3 convolution by its phases' Winograd forms (25 products per 2x2 outputs)"
SPLIT_TRANSPOSED = "the rows split by 8x8 transposes"
ROW_SHUFFLES = "p01 = __builtin_shufflevector"
OUT_TRANSPOSED = "tb[256]"
DIRECT = "no epilogue: the rows straight into the output"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _net(lib, cin, cout, bias):
    """A 1x1 convolution before (so the strided one's input gradient flows back), the strided
    one, a relu after it (an epilogue only with the bias)."""
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(cin, cin, 1), nn.Conv2d(cin, cout, 3, 2, 1, bias=bias),
                         nn.ReLU())


def _paths(source):
    return dict(f4=source.count(F4), f2=source.count(F2),
                split=SPLIT_TRANSPOSED in source, rows=ROW_SHUFFLES in source,
                transposed=OUT_TRANSPOSED in source, direct=DIRECT in source)


# name -> (in, out channels, bias, input shape, dtype, dynamic batch, images per block,
# rows split by transposes, output rows by shuffles, by transposes)
CASES = {
    "resnet_16_32": (16, 32, False, (2, 16, 32, 32), np.float32, False, 2, True, True, False),
    # the bias and relu an epilogue: the shuffled rows through the buffer
    "resnet_16_32_bias": (16, 32, True, (2, 16, 32, 32), np.float32, False, 2, True, True, False),
    "resnet_16_32_batch3": (16, 32, False, (3, 16, 32, 32), np.float32, True, 2, True, True,
                            False),
    "resnet_32_64_batch9": (32, 64, False, (9, 32, 16, 16), np.float32, True, 8, True, False,
                            True),
    "resnet_32_64_bias": (32, 64, True, (8, 32, 16, 16), np.float32, False, 8, True, False,
                          True),
    "batch1_32x32": (16, 32, False, (1, 16, 32, 32), np.float32, False, 1, False, False, False),
    "one_image_64x64": (16, 32, True, (2, 16, 64, 64), np.float32, False, 1, True, True, False),
    "odd_channels_24x40": (17, 33, False, (3, 17, 24, 40), np.float32, True, 3, False, False,
                           False),
    "float64_16x16": (16, 32, True, (3, 16, 16, 16), np.float64, True, 8, False, False, False),
}

# the default run: one case of each block form (two images a block with output rows straight
# into the output, eight through transposes, one image of 64 columns through the buffer, batch
# 1, odd channels, float64); the ResNet shapes' bias and batch-3 twins with -m sweep
DEFAULT_CASES = {"resnet_16_32", "resnet_32_64_batch9", "batch1_32x32", "one_image_64x64",
                 "odd_channels_24x40", "float64_16x16"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_f4_forward_matches_torch_and_eager(march, name):
    cin, cout, bias, shape, dtype, dynamic, images, split, rows, transposed = CASES[name]
    tn.manual_seed(0)
    model, tmodel = _net(tn, cin, cout, bias), _net(torch, cin, cout, bias)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model, dynamic=dynamic)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    _step_against_torch(compiled, model, tmodel, x, 1e-9 if dtype == np.float64 else 1e-4)
    source = compiled.source()
    paths = _paths(source)
    assert (paths["f4"], paths["f2"]) == (1, 0)
    assert {int(j) for j in INTERLEAVED.findall(source)} == {images}
    assert (paths["split"], paths["rows"], paths["transposed"]) == (split, rows, transposed)
    check_compiled(model, shape, dtype=tn.float64 if dtype == np.float64 else tn.float32)


def test_cut_tiles_keep_2x2_outputs():
    """Outputs of 7x5 are not whole 4x4 tiles: the 2x2 form."""
    tn.manual_seed(0)
    model, tmodel = _net(tn, 16, 32, False), _net(torch, 16, 32, False)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((2, 16, 14, 10)).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    paths = _paths(compiled.source())
    assert (paths["f4"], paths["f2"]) == (0, 1)


def test_rounding_within_the_stride1_forms():
    """The float32 result against the float64 sum on the ResNet's 16 -> 32 shape: F(4, 2)'s
    transforms (constants up to 8) round no worse than a few times PyTorch's direct sum."""
    tn.manual_seed(0)
    conv = tn.nn.Conv2d(16, 32, 3, 2, 1, bias=False)
    compiled = tn.compile(conv)
    x = np.random.default_rng(1).standard_normal((4, 16, 32, 32)).astype(np.float32)
    with tn.no_grad():
        got = compiled(tn.from_numpy(x)).numpy()
    assert F4 in compiled.source()
    w = conv.weight.detach().numpy()
    exact = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64),
                                       torch.tensor(w, dtype=torch.float64), stride=2,
                                       padding=1).numpy()
    direct = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), stride=2,
                                        padding=1).numpy()
    err, torch_err = np.abs(got - exact).max(), np.abs(direct - exact).max()
    assert err < 2e-5 and err < 10 * torch_err, (err, torch_err)


def test_training_statistics_match_torch(march):
    """Training mode on the ResNet's downsampling block at 32x32: the statistics summed from
    the rows stored straight into the output; the running statistics follow PyTorch's."""
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _down_block(tn, False), _down_block(torch, False)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = (rng.standard_normal((3, 16, 32, 32)) * 2 + 3).astype(np.float32)
        _step_against_torch(compiled, model, tmodel, x, 2e-4)
    for name, m in model.named_modules():
        if isinstance(m, tn.nn.BatchNorm2d):
            tm = dict(tmodel.named_modules())[name]
            for stat in ("running_mean", "running_var"):
                np.testing.assert_allclose(getattr(m, stat).numpy(), getattr(tm, stat).numpy(),
                                           rtol=2e-4, atol=2e-4, err_msg=f"{name}.{stat}")
    source = compiled.source()
    assert re.search(re.escape(F4) + r",\s+\S+ -> \S+, the batch statistics per block", source)
    assert _paths(source)["direct"]


# the default run: 32 -> 64 (blocks of eight, the transposes' buffer, U per thread) on 1-3
# threads; 16 -> 32 with -m sweep
@sweep.keep(lambda p: p["cin"] == 32)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("cin,cout,size", [(16, 32, 32), (32, 64, 16)])
def test_nan_arena_threads(nan_arenas_split, threads, cin, cout, size):
    """Nine and two images split between threads, work memory all NaN: the split rows' zeros,
    the transformed tiles, the transposes' buffer and every output element are written."""
    tn.set_num_threads(threads)
    compiled = _stepped_twins(
        lambda lib: _net(lib, cin, cout, True), [(batch, cin, size, size) for batch in (9, 2)])
    source = compiled.source()
    assert _paths(source)["f4"] == 1 and "omp_get_thread_num()" in source


# the stride-2 kernels' transformed weights U in each thread's own work memory, made before
# its first block (codegen/target.py, Parallelism.private_weights: 32 -> 64's 74k values),
# or halves of one shared copy (16 -> 32's 19k)
PRIVATE_U = "each thread transforms all of U before its first block"


# the default run: float32 on every shape and thread count, float64 on 32 -> 64 on 16x16;
# the other float64 cases with -m sweep
@sweep.keep(lambda p: p["dtype"] == np.float32 or (p["cin"], p["size"]) == (32, 16))
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("cin,cout,size,private", [(32, 64, 16, True), (16, 32, 32, False),
                                                   (32, 64, 12, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_transforms_per_thread_or_shared(nan_arenas_split, threads, cin, cout, size,
                                                private, dtype):
    """The forward and the input gradient with U per thread or shared, on work memory filled
    with NaN: 17 images (three blocks of up to eight for 32 -> 64, nine of two for 16 -> 32:
    odd counts, a thread without a block on 3 threads), then one, from one build (a symbolic
    batch); the same answers as PyTorch and eager on 1-3 threads, float32 and float64. On
    12x12 (6x6 outputs: cut tiles) both kernels take their 2x2-output and 4x4-value forms."""
    tn.set_num_threads(threads)
    tol = 1e-10 if dtype == np.float64 else 1e-4

    def make(lib):
        net = _net(lib, cin, cout, True)
        return net.double() if dtype == np.float64 else net

    compiled = _stepped_twins(make, [(batch, cin, size, size) for batch in (17, 1)], tol,
                              dtype)
    source = compiled.source()
    assert _paths(source)["f4" if size % 8 == 0 else "f2"] == 1
    assert source.count(PRIVATE_U) == (2 if private else 0)
