"""The 2-d convolution kernels on ResNet-like shapes (3x3 with 16-64 channels, strides 1 and 2,
1x1 shortcuts), odd sizes, dilation and groups, compiled against PyTorch and eager mode
(forward, input and weight gradients) at batch 1 and at two batch sizes of one symbolic
specialisation; eval-mode batch norm, residual add and relu fused into the convolution's
epilogue; and GEMMs whose last columns are fewer than one vector."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn
import tracenet.nn as nn

from tracenet.codegen.lowerings import conv, conv_winograd

from compile_checks import check_compiled


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _copy_to_torch(model, tmodel):
    """Give the torch twin the tracenet model's parameters and buffers."""
    theirs = dict(tmodel.state_dict())
    for name, value in model.state_dict().items():
        theirs[name].copy_(torch.from_numpy(np.array(value.numpy())))


def _step_against_torch(compiled, model, tmodel, x, tol, what=""):
    """One forward and backward through ``compiled`` (of ``model``) and the torch twin, their
    gradients zeroed first: the outputs and the input and parameter gradients compared."""
    model.zero_grad()
    tmodel.zero_grad()
    xn = tn.from_numpy(x).requires_grad_(True)
    xt = torch.from_numpy(x).requires_grad_(True)
    out, ref = compiled(xn), tmodel(xt)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=tol, atol=tol,
                               err_msg=what)
    gy = np.random.default_rng(1).standard_normal(ref.shape).astype(x.dtype)
    out.backward(tn.from_numpy(gy))
    ref.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol,
                               err_msg=what)
    for (name, p), tp in zip(model.named_parameters(), tmodel.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=tol, atol=tol,
                                   err_msg=f"{name} {what}")


def _stepped_twins(make, shapes, tol=1e-4, dtype=np.float32):
    """``make(lib)``'s model in tracenet and its torch twin with the same weights (seed 0),
    compiled once and stepped against torch at each input shape in turn (standard normal
    inputs, seed 0): the compiled module."""
    tn.manual_seed(0)
    model, tmodel = make(tn), make(torch)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for shape in shapes:
        _step_against_torch(compiled, model, tmodel, rng.standard_normal(shape).astype(dtype),
                            tol)
    return compiled


def _conv2d_twins_stepped(args, kw, shape, dtype, layer="Conv2d"):
    """``nn.Conv2d(*args, **kw)`` (or the ``layer`` named) in tracenet and torch with the same
    weights (seed 0), in ``dtype``, compiled and stepped against torch once on a standard
    normal input of ``shape`` (seed 0): (the compiled module, the tracenet layer, the
    tolerance used)."""
    tn.manual_seed(0)
    model = getattr(tn.nn, layer)(*args, **kw)
    tmodel = getattr(torch.nn, layer)(*args, **kw)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    _step_against_torch(compiled, model, tmodel, x, tol)
    return compiled, model, tol


def _against_torch(model, tmodel, x, tol=1e-4):
    """Compiled forward and gradients (input and parameters) against PyTorch's."""
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    _step_against_torch(compiled, model, tmodel, x, tol)
    return compiled


# name -> (Conv2d arguments, input shape)
CASES = {
    "resnet_3x3_stride1": ((16, 16, 3, 1, 1), dict(bias=False), (2, 16, 12, 12)),
    "resnet_3x3_stride2_odd": ((16, 32, 3, 2, 1), {}, (2, 16, 11, 11)),
    "shortcut_1x1_stride2": ((16, 32, 1, 2, 0), dict(bias=False), (2, 16, 8, 8)),
    # 78 positions on rows of width 10: 14 columns past the last two-vector panel
    "many_channels_8x8": ((64, 64, 3, 1, 1), dict(bias=False), (2, 64, 8, 8)),
    "dilated_padded": ((5, 7, 3, 1, 2), dict(dilation=2), (2, 5, 9, 10)),
    "grouped_strided": ((8, 12, 3, 2, 1), dict(groups=4), (3, 8, 7, 9)),
    "unpadded_odd_kernel_batch1": ((3, 5, (3, 2), 1, 0), {}, (1, 3, 7, 5)),
    "wide_odd_stride1": ((6, 9, 3, 1, 1), {}, (1, 6, 5, 23)),
    # eight or more input channels per group: the weight gradient's transposed GEMMs
    "grouped_16_per_group": ((32, 12, 3, 1, 1), dict(groups=2), (2, 32, 7, 6)),
    "grouped_16_per_group_strided": ((32, 12, 3, 2, 1), dict(groups=2, dilation=2), (2, 32, 9, 8)),
    "batch1_16_channels": ((16, 8, 3, 1, 1), {}, (1, 16, 6, 7)),
    "unpadded_8_channels": ((8, 24, 2, 1, 0), {}, (3, 8, 5, 5)),
    # padding past the kernel's reach: the input gradient's per-tap GEMMs
    "padding_past_reach": ((4, 5, 2, 1, 2), {}, (2, 4, 5, 6)),
}

# the default run: every shape but resnet_3x3_stride1, whose 16 channels on 12x12 take the
# Winograd F(4x4) form of two images a block as many_channels_8x8 does; it runs with -m sweep
@sweep.keep(lambda p: p["name"] != "resnet_3x3_stride1")
@pytest.mark.parametrize("name", list(CASES))
def test_conv2d_matches_torch(name):
    args, kwargs, shape = CASES[name]
    tn.manual_seed(0)
    model = nn.Conv2d(*args, **kwargs)
    tmodel = torch.nn.Conv2d(*args, **kwargs)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _against_torch(model, tmodel, x)
    tn.manual_seed(0)
    check_compiled(nn.Conv2d(*args, **kwargs), shape)


def test_conv2d_double_matches_eager():
    """Four lanes a vector in double: other tails."""
    tn.manual_seed(0)
    check_compiled(nn.Conv2d(6, 10, 3, padding=1).double(), (2, 6, 7, 6), dtype=tn.float64,
                   tol=1e-9)


@pytest.mark.parametrize("args,kwargs,shape", [
    ((8, 6, 3), dict(padding=1), (2, 8, 4, 5, 3)),
    ((16, 6, (2, 3, 2)), dict(stride=(2, 1, 2), padding=(1, 0, 1)), (2, 16, 5, 6, 5)),
])
def test_conv3d_many_channels_matches_torch(args, kwargs, shape):
    """3-d: the weight gradient's transposed GEMMs per output depth and tap, and on im2col
    columns."""
    tn.manual_seed(0)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _against_torch(nn.Conv3d(*args, **kwargs), torch.nn.Conv3d(*args, **kwargs), x)


@pytest.mark.parametrize("kwargs", [dict(stride=1, dilation=2, output_padding=1),
                                    dict(stride=1, padding=1, output_padding=(0, 1),
                                         dilation=(1, 2))])
def test_transposed_conv_output_padding_matches_torch(kwargs):
    """A stride-1 transposed convolution with output_padding: input-gradient kernels whose
    last rows or columns no output position reaches."""
    tn.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 8, 6, 7)).astype(np.float32)
    _against_torch(nn.ConvTranspose2d(8, 8, 3, **kwargs), torch.nn.ConvTranspose2d(8, 8, 3, **kwargs), x)


def test_symbolic_batch_two_sizes():
    """One compiled module at two batch sizes: the kernels take the batch size at run time."""
    tn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.ReLU(),
                          nn.Conv2d(16, 8, 3, 2, 1))
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, 1, 1, bias=False),
                                 torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3, 2, 1))
    rng = np.random.default_rng(0)
    compiled = None
    for batch in (3, 5):
        model.zero_grad()
        tmodel.zero_grad()
        x = rng.standard_normal((batch, 16, 10, 10)).astype(np.float32)
        compiled = compiled or tn.compile(model)
        _copy_to_torch(model, tmodel)
        xn = tn.from_numpy(x).requires_grad_(True)
        xt = torch.from_numpy(x).requires_grad_(True)
        out, ref = compiled(xn), tmodel(xt)
        np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=1e-4,
                                   atol=1e-4)
        out.sum().backward()
        ref.sum().backward()
        np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
        for p, tp in zip(model.parameters(), tmodel.parameters()):
            np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-4, atol=1e-3)
    assert len(compiled.specialisations) == 1
    assert "tn_N" in compiled.source()


# --- eval-mode batch norm, residual add and relu in the convolution's epilogue ---------------

def _block(lib, residual_first, stride=1, bias=False):
    nn_ = lib.nn

    class Block(nn_.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn_.Conv2d(8, 8, 3, stride, 1, bias=bias)
            self.bn1 = nn_.BatchNorm2d(8)
            self.conv2 = nn_.Conv2d(8, 8, 3, 1, 1, bias=bias)
            self.bn2 = nn_.BatchNorm2d(8)
            self.short = nn_.Conv2d(8, 8, 1, stride, bias=False)
            self.bn3 = nn_.BatchNorm2d(8)

        def forward(self, x):
            y = lib.nn.functional.relu(self.bn1(self.conv1(x)))
            s = self.bn3(self.short(x))
            z = s + self.bn2(self.conv2(y)) if residual_first else self.bn2(self.conv2(y)) + s
            return lib.nn.functional.relu(z)
    return Block()


def _randomise_stats(model, tmodel, rng):
    """New running statistics and affine parameters in both twins."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(tn.from_numpy(rng.standard_normal(c).astype(np.float32)))
            m.running_var.copy_(tn.from_numpy(rng.uniform(0.5, 2, c).astype(np.float32)))
            m.weight.data.copy_(tn.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
            m.bias.data.copy_(tn.from_numpy(rng.standard_normal(c).astype(np.float32)))
    _copy_to_torch(model, tmodel)


def _eval_follows_statistics(model, tmodel, shape):
    """``model`` compiled in eval mode against its torch twin over two calls, with new running
    statistics before each (they are folded when the kernel runs, not when it is built);
    returns the compiled source."""
    model.eval()
    tmodel.eval()
    rng = np.random.default_rng(0)
    _randomise_stats(model, tmodel, rng)
    compiled = tn.compile(model)
    x = rng.standard_normal(shape).astype(np.float32)
    for _ in range(2):
        with tn.no_grad(), torch.no_grad():
            out, ref = compiled(tn.from_numpy(x)), tmodel(torch.from_numpy(x))
        np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
        _randomise_stats(model, tmodel, rng)
    return compiled.source()


# the default run: the residual second on stride 1 (the Winograd kernel), first on stride 2 (the
# general one); the other two pairings with -m sweep
@sweep.keep(lambda p: p["residual_first"] == (p["stride"] == 2))
@pytest.mark.parametrize("residual_first", [False, True])
@pytest.mark.parametrize("stride,bias", [(1, False), (2, True)])
def test_eval_batch_norm_fused_into_conv(residual_first, stride, bias):
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _block(tn, residual_first, stride, bias), _block(torch, residual_first,
                                                                    stride, bias)
    src = _eval_follows_statistics(model, tmodel, (3, 8, 9, 9))
    # every batch norm, the residual add and both relus run in the convolutions' epilogues
    # (a Winograd kernel's direct twin for non-finite values, lowerings/conv_nonfinite.py,
    # has its own copy of the group's epilogue)
    twins = len(re.findall(r"static void \w+_direct\(", src))
    assert src.count("bn_scale[o] = ") == 3 + twins, src
    assert "_batch_norm(" not in src.replace("_conv_batch_norm", "")
    assert "conv_batch_norm_add_relu" in src and "conv_batch_norm_relu" in src


def test_train_mode_batch_norm_not_folded():
    """In training the statistics are the batch's: the block still matches PyTorch."""
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _block(tn, False), _block(torch, False)
    x = np.random.default_rng(0).standard_normal((4, 8, 6, 6)).astype(np.float32)
    compiled = _against_torch(model, tmodel, x, tol=2e-4)
    src = compiled.source()
    assert "bn_scale" not in src
    # the batch's statistics, then one pass of batch norm, residual add and relu
    assert "_batch_norm_add_relu(" in src and "_batch_norm_relu(" in src


@pytest.mark.parametrize("train", [False, True])
def test_batch_norm_relu_without_conv_matches_torch(train):
    """batch_norm -> relu and batch_norm -> add -> relu on a network's input (no convolution
    to fuse into): one kernel each."""
    def make(lib):
        class Net(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.bn1, self.bn2 = lib.nn.BatchNorm2d(5), lib.nn.BatchNorm2d(5)

            def forward(self, x):
                y = lib.nn.functional.relu(self.bn1(x))
                return lib.nn.functional.relu(x + self.bn2(y))
        return Net()

    model, tmodel = make(tn), make(torch)
    model.train(train)
    tmodel.train(train)
    rng = np.random.default_rng(0)
    _randomise_stats(model, tmodel, rng)
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)
    src = _against_torch(model, tmodel, x, tol=2e-4).source()
    assert "_batch_norm_add_relu(" in src and "_batch_norm_relu(" in src


def test_batch_norm_output_used_twice_not_fused():
    """A batch norm whose output has another reader keeps its own kernel (and its value)."""
    tn.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return tn.relu(y) + y * 2

    model = Net().eval()
    compiled = tn.compile(model)
    x = tn.randn(2, 3, 5, 5)
    with tn.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


# --- GEMM column tails ----------------------------------------------------------------------

class _MatMul(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return tn.matmul(x, self.w)


@pytest.mark.parametrize("m,k,n,dtype", [(5, 300, 13, np.float32), (7, 513, 3, np.float32),
                                         (4, 9, 6, np.float64), (1, 260, 21, np.float64),
                                         # 24+ rows and rows of B 256+ apart: packed panels
                                         (48, 300, 260, np.float32), (31, 520, 259, np.float64),
                                         (64, 784, 256, np.float32)])
def test_gemm_column_tail(m, k, n, dtype):
    """Columns past the last full vector, over more than one block of 256 rows of B; with
    many rows, column panels of B copied to a contiguous buffer."""
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    model = _MatMul(tn.from_numpy(w))
    compiled = tn.compile(model)
    x = tn.from_numpy(a).requires_grad_(True)
    out = compiled(x)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out.detach().numpy(), a @ w, rtol=tol, atol=tol)
    out.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.ones((m, n), dtype) @ w.T, rtol=tol, atol=tol)
    np.testing.assert_allclose(model.w.grad.numpy(), a.T @ np.ones((m, n), dtype), rtol=tol,
                               atol=tol)


def test_batch_norm_backward_large_mean_matches_torch():
    """The input gradient of a training-mode batch norm whose input has a large mean (the
    kernel subtracts the mean before scaling, in the element type)."""
    tn.manual_seed(0)
    model, tmodel = nn.BatchNorm2d(6), torch.nn.BatchNorm2d(6)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 6, 5, 7)) * 0.5 + 300).astype(np.float32)
    _against_torch(model, tmodel, x, tol=1e-4)


@pytest.mark.parametrize("shape,offset,dtype", [((3, 5, 17, 19), 300.0, np.float32),
                                                 ((2, 4, 32, 40), 0.0, np.float32),
                                                 ((2, 3, 23, 30), 50.0, np.float64)])
def test_batch_norm_backward_runs_match_torch(shape, offset, dtype):
    """Planes of several runs of 256 elements, the last one partial (the kernel's sums are
    in the element type per run, in double across runs): the input, weight and bias
    gradients against PyTorch."""
    tn.manual_seed(0)
    model, tmodel = nn.BatchNorm2d(shape[1]), torch.nn.BatchNorm2d(shape[1])
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    _against_torch(model, tmodel, x, tol=1e-9 if dtype == np.float64 else 1e-4)


# --- the gathered GEMM: vectors along the output channels, rows read through offset tables ---

GATHERED = {
    # LeNet's second convolution: 10-wide output on 14-wide rows (forward), 6 input channels
    # (weight gradient)
    "lenet_conv2": ((6, 16, 5), {}, (1, 6, 14, 14)),
    # the ResNet stem: 3 input channels, padded
    "stem_3_channels": ((3, 16, 3, 1, 1), dict(bias=False), (2, 3, 16, 16)),
    # a 3x3 stride-2 convolution, a batch worth two threads (1x1 ones: test_conv_pointwise.py)
    "stride2_parallel": ((16, 32, 3, 2, 1), dict(bias=False), (8, 16, 16, 16)),
    # eight output channels per group, dilated, padded, strided, positions not a multiple of 6
    "grouped_dilated": ((4, 16, 3), dict(stride=(2, 1), padding=2, dilation=2, groups=2),
                        (2, 4, 9, 7)),
    # 24 output channels: a two-vector and a one-vector column panel
    "three_vectors": ((5, 24, 3, 2, 1), {}, (3, 5, 7, 6)),
}


def _calls_gathered_gemm(source, kernel):
    """Whether a kernel whose name contains ``kernel`` calls the gathered GEMM (tn_ggemm)."""
    bodies = re.findall(r"\bvoid (\w+)\(.*?\n\{(.*?)\n\}", source, re.S)
    return any(kernel in name and re.search(r"\btn_ggemm_f(32|64)\(", body)
               for name, body in bodies)


@pytest.mark.parametrize("name", list(GATHERED))
def test_gathered_conv2d_matches_torch(name, monkeypatch):
    args, kwargs, shape = GATHERED[name]
    # (the stem's weight gradient takes the few-channel Winograd form with AVX-512:
    # test_resnet_wgrad_few_channels.py; its forward the few-channel register tiles:
    # test_resnet_stem_kernels.py)
    monkeypatch.setattr(conv_winograd, "_few_channels_weight", lambda geo, ct, target: False)
    monkeypatch.setattr(conv, "_few_channels_geometry", lambda *args: None)
    tn.manual_seed(0)
    model = nn.Conv2d(*args, **kwargs)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    compiled = _against_torch(model, torch.nn.Conv2d(*args, **kwargs), x)
    source = compiled.source()
    assert _calls_gathered_gemm(source, "conv") and \
        _calls_gathered_gemm(source, "conv_backward_weight")
    tn.manual_seed(0)
    check_compiled(nn.Conv2d(*args, **kwargs), shape)


# the default run: 16x16 (gathered) and 32x32 (shifted views); 8x8, gathered too, with -m sweep
@sweep.keep(lambda p: p["size"] != 8)
@pytest.mark.parametrize("size,gathered", [(16, True), (8, True), (32, False)])
def test_resnet_3x3_forward_form_by_padded_width(size, gathered, monkeypatch):
    """Stride-1 3x3 convolutions, padding 1: on 16x16 and 8x8 images the padded rows (18 and
    10 wide) compute 12 % and 25 % more positions than the output has, and the forward takes
    the gathered GEMM; on 32x32 (6 %) the shifted views. With a residual add and relu, in
    inference and in a training step, against torch. (The general kernel's choice: the
    Winograd form, which takes these where it pays, is left out.)"""
    monkeypatch.setattr(conv_winograd, "takes_forward", lambda geo, ct, target: False)
    def residual(lib):
        class Residual(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = lib.nn.Conv2d(32, 32, 3, 1, 1, bias=False)
                self.bn = lib.nn.BatchNorm2d(32)

            def forward(self, x):
                return lib.nn.functional.relu(self.bn(self.conv(x)) + x)
        return Residual()
    tn.manual_seed(0)
    model, tmodel = residual(tn), residual(torch)
    _copy_to_torch(model, tmodel)
    x = np.random.default_rng(size).standard_normal((2, 32, size, size)).astype(np.float32)
    compiled = tn.compile(model)
    _step_against_torch(compiled, model, tmodel, x, 2e-4)
    model.eval()
    tmodel.eval()
    compiled = tn.compile(model)
    with tn.no_grad():
        out = compiled(tn.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), tmodel(torch.from_numpy(x)).detach().numpy(),
                               rtol=2e-4, atol=2e-4)
    assert _calls_gathered_gemm(compiled.source(), "conv_batch_norm_add_relu") is gathered


def test_gathered_conv3d_and_double_match_torch():
    """3-d strided (depth in the tables), and double (four lanes a vector)."""
    tn.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6, 5)).astype(np.float32)
    args, kwargs = (3, 8, 3), dict(stride=2, padding=1)
    compiled = _against_torch(nn.Conv3d(*args, **kwargs), torch.nn.Conv3d(*args, **kwargs), x)
    assert _calls_gathered_gemm(compiled.source(), "conv")
    x = np.random.default_rng(0).standard_normal((2, 6, 9, 8))
    tn.manual_seed(0)
    model = nn.Conv2d(6, 8, 3, 2, 1).double()
    compiled = _against_torch(model, torch.nn.Conv2d(6, 8, 3, 2, 1).double(), x, tol=1e-9)
    assert _calls_gathered_gemm(compiled.source(), "conv")


@pytest.mark.parametrize("train", [False, True])
def test_gathered_lenet_matches_torch(train):
    """conv -> relu -> max_pool with a gathered forward (the epilogue reads the transposed
    result), in inference and in a training step's gradients."""
    tn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    x = np.random.default_rng(0).standard_normal((3, 6, 14, 14)).astype(np.float32)
    if train:
        compiled = _against_torch(model, tmodel, x)
    else:
        _copy_to_torch(model, tmodel)
        compiled = tn.compile(model)
        with tn.no_grad():
            out = compiled(tn.from_numpy(x))
        np.testing.assert_allclose(out.numpy(), tmodel(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-4, atol=1e-4)
    assert _calls_gathered_gemm(compiled.source(), "conv")
