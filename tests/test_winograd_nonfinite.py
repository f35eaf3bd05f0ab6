"""Compiled 3x3 convolutions on values that are not all finite (lowerings/conv_nonfinite.py):
the Winograd forms mix every value of a tile, so a call whose values are not all finite is
computed again by the direct form compiled beside it. For each Winograd form (the forward with
its fused epilogues: relu, a training batch norm's statistics, an eval-mode batch norm with a
residual add and relu; the input and weight gradients; stride 1 F(4x4) and F(2x2) in float64,
stride 2 by phases, the downsampling block's fused groups; 16, 32 and 64 channels as the
ResNet's), a NaN or an inf at an inner input position, at a tile's edge, at a padded border's
neighbour, in a weight and in the output gradient: compiled gives eager mode's non-finite
pattern exactly (``np.isnan`` and ``np.isinf`` masks) and its finite values within the usual
tolerance, and PyTorch agrees where the padding plays no part (eager mode multiplies weights
and output gradients by the padding's zeros, which PyTorch skips); a symbolic batch (3, then
1), 1 and 2 threads, builds for AVX-512 and AVX2 only; finite data keeps the Winograd path
(no ``TRACENET_DEBUG=fallback`` line) and a non-finite call writes one."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)

FALLBACK = re.compile(r"\[tracenet:fallback\] (\w+): values not finite")

# an inner position, a tile's edge (F(4x4)'s tiles of 4, the phases' of 8), a padded
# border's neighbour and the last corner
POSITIONS = {"inner": (5, 6), "tile_edge": (3, 4), "border": (0, 1), "corner": (-1, -1)}
VALUES = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


@pytest.fixture(autouse=True)
def _debug(monkeypatch):
    monkeypatch.setenv("TRACENET_DEBUG", "fallback")
    before = tn.get_num_threads()
    yield
    tn.set_num_threads(before)


def _assert_same(got, want, tol, what):
    """The same NaN and inf positions (and inf signs), the finite values within ``tol``."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=f"{what}: +inf")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"{what}: -inf")
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=tol, atol=tol, err_msg=what)


class Net(tn.nn.Module):
    """A 3x3 convolution (``stride``) with the epilogue ``tail``: "relu", "batch_norm" (the
    training statistics), "residual" (eval: batch norm, the input added, relu), "shortcut"
    (a relu, then the 3x3 stride-2 and a 1x1 stride-2 shortcut summed: the downsampling
    block's input and weight gradient groups), "pair" (the 3x3 with its batch norm and relu
    beside the 1x1 with its own batch norm: the downsampling block's forward, one kernel for
    both; in training the convolutions' outputs are returned too)."""

    def __init__(self, cin, cout, stride, tail):
        super().__init__()
        nn = tn.nn
        self.tail = tail
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=tail == "relu")
        self.bn = nn.BatchNorm2d(cout)
        self.short = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.sbn = nn.BatchNorm2d(cout)

    def forward(self, x):
        F = tn.nn.functional
        if self.tail == "pair":
            y, s = self.conv(x), self.short(x)
            out = F.relu(self.bn(y)), self.sbn(s)
            return (y, s) + out if self.training else out
        if self.tail == "shortcut":
            x = F.relu(x)
            return self.conv(x) + self.short(x)
        y = self.conv(x)
        if self.tail == "relu":
            return F.relu(y)
        if self.tail == "batch_norm":
            return y, self.bn(y)
        return F.relu(self.bn(y) + x)


def _torch_forward(net, x):
    """PyTorch's result of ``net`` (its weights) on ``x``, with the same outputs."""
    T = torch.nn.functional
    p = {k: torch.from_numpy(v.numpy().copy()).requires_grad_(True)
         for k, v in net.state_dict().items() if v.dtype in (tn.float32, tn.float64)}
    conv = dict(stride=net.conv.stride, padding=1)
    if net.tail == "shortcut":
        x = T.relu(x)
        return T.conv2d(x, p["conv.weight"], None, **conv) + \
            T.conv2d(x, p["short.weight"], None, stride=net.conv.stride), p
    y = T.conv2d(x, p["conv.weight"], p.get("conv.bias"), **conv)
    if net.tail == "pair":
        s = T.conv2d(x, p["short.weight"], None, stride=net.conv.stride)
        out = tuple(T.batch_norm(v, p[f"{b}.running_mean"].detach().clone(),
                                 p[f"{b}.running_var"].detach().clone(), p[f"{b}.weight"],
                                 p[f"{b}.bias"], net.training) for v, b in ((y, "bn"), (s, "sbn")))
        out = (T.relu(out[0]), out[1])
        return ((y, s) + out if net.training else out), p
    if net.tail == "relu":
        return T.relu(y), p
    bn = (p["bn.running_mean"].detach(), p["bn.running_var"].detach(), p["bn.weight"],
          p["bn.bias"])
    if net.tail == "batch_norm":
        return (y, T.batch_norm(y, bn[0].clone(), bn[1].clone(), bn[2], bn[3], True)), p
    return T.relu(T.batch_norm(y, *bn, False) + x), p


def _used(net):
    """The parameters the tail reads, by name."""
    names = ["conv.weight"] + {"relu": ["conv.bias"], "batch_norm": [],
                               "residual": [], "shortcut": ["short.weight"], "pair": []}[net.tail]
    return [n for n in names if n in dict(net.named_parameters())]


def _run(model, net, x, gy, grads):
    """The outputs and, with ``grads``, the input and parameter gradients for the output
    gradient ``gy`` (the first output's)."""
    xt = tn.from_numpy(x)
    if grads:
        xt.requires_grad_(True)
        net.zero_grad()
        out = model(xt)
        first = out[0] if isinstance(out, tuple) else out
        first.backward(tn.from_numpy(gy))
        outs = [o.detach().numpy() for o in (out if isinstance(out, tuple) else (out,))]
        params = dict(net.named_parameters())
        return outs + [xt.grad.numpy().copy()] + [params[k].grad.numpy().copy()
                                                  for k in _used(net)]
    with tn.no_grad():
        out = model(xt)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _torch_run(net, x, gy, grads):
    xt = torch.from_numpy(x.copy()).requires_grad_(grads)
    out, p = _torch_forward(net, xt)
    outs = out if isinstance(out, tuple) else (out,)
    if not grads:
        return [o.detach().numpy() for o in outs]
    outs[0].backward(torch.from_numpy(gy))
    return [o.detach().numpy() for o in outs] + [xt.grad.numpy()] + \
        [p[k].grad.numpy() for k in _used(net)]


def _cases(shape, out_shape, dtype, rng, gradients, weights):
    """(name, x, a weight to spoil or None, gy) per case: a non-finite value in x at each
    position, in a weight (with ``weights``), in the output gradient (with ``gradients``), and
    finite data."""
    n, c, h, w = shape
    x = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal(out_shape).astype(dtype)
    yield "finite", x, None, gy
    for vname, v in VALUES.items():
        for pname, (i, j) in POSITIONS.items():
            spoiled = x.copy()
            spoiled[n - 1, c // 2, i, j] = v
            yield f"x_{pname}_{vname}", spoiled, None, gy
        if weights:
            yield f"weight_{vname}", x, ((1, c // 3, 1, 2), v), gy
        if gradients:
            for pname, (i, j) in POSITIONS.items():
                spoiled = gy.copy()
                spoiled[0, out_shape[1] // 2, i, j] = v
                yield f"gy_{pname}_{vname}", x, None, spoiled


def _check(cin, cout, size, stride, tail, dtype, threads, capfd, train=True, grads=True):
    tn.manual_seed(0)
    net = Net(cin, cout, stride, tail).to(getattr(tn, np.dtype(dtype).name))
    if not train:
        net.eval()
        with tn.no_grad():
            for bn in (net.bn, net.sbn):
                for i, p in enumerate(bn.parameters()):
                    p.copy_(tn.from_numpy(np.linspace(0.5, 1.5, cout).astype(dtype) + i))
                bn.running_var.copy_(tn.from_numpy(np.linspace(0.5, 2, cout).astype(dtype)))
    model = tn.compile(net)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    rng = np.random.default_rng(0)
    weight = net.conv.weight.detach().numpy().copy()
    for batch in (3, 1):  # (the second call: the symbolic batch's build)
        oh = -(-size[0] // stride)
        shape, out_shape = (batch, cin) + size, (batch, cout, oh, -(-size[1] // stride))
        # (a non-finite weight of a stride-2 convolution: eager mode's input gradient takes
        # the correlation with zeros between the output gradients or col2im by the problem's
        # size, NaN at other positions in each; stride 1 is checked)
        for name, x, spoil, gy in _cases(shape, out_shape, dtype, rng, grads, stride == 1):
            with tn.no_grad():
                w = weight.copy()
                if spoil is not None:
                    w[spoil[0]] = spoil[1]
                net.conv.weight.copy_(tn.from_numpy(w))
            capfd.readouterr()
            tn.set_num_threads(threads)
            got = _run(model, net, x, gy, grads)
            fell_back = FALLBACK.findall(capfd.readouterr().err)
            # (eager mode's reference on one thread: the thread count is the compiled calls'
            # concern, and eager's BLAS threads spinning between calls beside another test
            # process made a two-thread case ~5x slower)
            tn.set_num_threads(1)
            want = _run(net, net, x, gy, grads)
            if name == "finite":
                assert not fell_back, f"finite data took the direct form: {fell_back}"
            elif not all(np.isfinite(v).all() for v in want):
                # (a relu's mask may keep a non-finite output gradient from the convolution)
                assert fell_back, f"{name}: no call fell back"
            ref = _torch_run(net, x, gy, grads)
            assert len(got) == len(want) == len(ref)
            for k, (a, b, t) in enumerate(zip(got, want, ref)):
                what = f"{name}, batch {batch}, result {k}"
                _assert_same(a, b, tol, what + " against eager")
                if name == "finite" or name.startswith("x_"):
                    # (eager mode multiplies weights and output gradients by the padding's
                    # zeros: a non-finite one gives NaN at the border where PyTorch skips the
                    # padding; eager mode is the reference)
                    _assert_same(b, t, tol, what + ": eager against torch")


# (in, out channels, image size) of the ResNet's stride-1 3x3 convolutions
RESNET_S1 = [(16, 16, (32, 32)), (32, 32, (16, 16)), (64, 64, (8, 8))]

# the default run: each form on the ResNet's first shape (16 channels in) on 1 and 2 threads
# (several images a block: the partial tiles below), float64 and the batch norm's non-finite
# shift; the ResNet's other shapes (the same forms on more channels) with -m sweep
DEFAULT_CIN = 16


@sweep.keep(lambda p: p["cin"] == DEFAULT_CIN)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cin,cout,size", RESNET_S1)
def test_stride_1_relu(march, cin, cout, size, threads, capfd):
    """F(4x4) forward with a relu (its operands checked first), input and weight gradients."""
    _check(cin, cout, size, 1, "relu", np.float32, threads, capfd)


@pytest.mark.parametrize("threads", [1, 2])
def test_stride_1_batch_statistics(march, threads, capfd):
    """A training batch norm's statistics in the forward's epilogue: its means tell (the
    forward alone: a gradient through the batch norm is NaN over a channel whose statistics
    are)."""
    _check(16, 16, (32, 32), 1, "batch_norm", np.float32, threads, capfd, grads=False)


@sweep.keep(lambda p: p["cin"] == DEFAULT_CIN)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cin,size", [(16, (32, 32)), (64, (8, 8))])
def test_stride_1_eval_residual(march, cin, size, threads, capfd):
    """Inference: the batch norm folded, the residual added and relu, as the rows are stored."""
    _check(cin, cin, size, 1, "residual", np.float32, threads, capfd, train=False,
           grads=False)


@pytest.mark.parametrize("threads", [1, 2])
def test_stride_1_float64(march, threads, capfd):
    """float64 takes F(2x2) in all three kernels."""
    _check(16, 16, (12, 12), 1, "relu", np.float64, threads, capfd)


@sweep.keep(lambda p: p["cin"] == DEFAULT_CIN)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cin,cout,size", [(16, 32, (32, 32)), (32, 64, (16, 16))])
def test_stride_2(march, cin, cout, size, threads, capfd):
    """The stride-2 phases' forward with relu and input gradient (the weight gradient is the
    gathered GEMM's)."""
    _check(cin, cout, size, 2, "relu", np.float32, threads, capfd)


@sweep.keep(lambda p: p["cin"] == DEFAULT_CIN)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cin,cout,size", [(16, 32, (32, 32)), (32, 64, (16, 16))])
def test_downsampling_block(march, cin, cout, size, threads, capfd):
    """The downsampling block's input gradient (the shortcut's folded into the 3x3's phases,
    the relu's mask applied) and weight gradients (one kernel for both)."""
    _check(cin, cout, size, 2, "shortcut", np.float32, threads, capfd)


@sweep.keep(lambda p: p["cin"] == DEFAULT_CIN)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("cin,cout,size", [(16, 32, (32, 32)), (32, 64, (16, 16))])
def test_downsampling_forward_pair(march, cin, cout, size, train, threads, capfd):
    """The downsampling block's forward: the 3x3 stride-2 Winograd kernel with the 1x1
    shortcut's products beside it (``downsample_forward``), checked by the batch norm's
    means in training and by its notes with the folded batch norms in inference."""
    _check(cin, cout, size, 2, "pair", np.float32, threads, capfd, train=train, grads=False)


# the default run: every form's cut tiles on one thread, F(4x4) with relu on two as well; the
# other forms on two threads with -m sweep
@sweep.keep(lambda p: p["threads"] == 1 or (p["tail"], p["stride"], p["dtype"]) == (
    "relu", 1, np.float32))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("tail,stride,dtype,cout,size", [
    ("relu", 1, np.float32, 16, (13, 11)), ("residual", 1, np.float32, 16, (13, 11)),
    ("relu", 1, np.float64, 16, (13, 11)), ("relu", 2, np.float32, 32, (18, 14))])
def test_partial_tiles(march, tail, stride, dtype, cout, size, threads, capfd):
    """Sizes whose last tile row and column are cut (F(4x4), F(2x2) in float64, the stride-2
    phases' tiles of 2x2 outputs and 4x4 image-gradient values): the notes take the values
    past the edges too; the corner position is in such a tile, and the last image of the
    batch of 3 in a block of fewer images than the others (the scalar paths)."""
    _check(16, cout, size, stride, tail, dtype, threads, capfd, train=tail != "residual",
           grads=tail != "residual")


@pytest.mark.parametrize("threads", [1, 2])
def test_eval_batch_norm_not_finite(march, threads, capfd):
    """A NaN in the folded batch norm's bias: its shift is not finite, so the call is computed
    again by the direct form (the notes take the values before the epilogue)."""
    tn.set_num_threads(threads)
    tn.manual_seed(0)
    net = Net(16, 16, 1, "residual")
    net.eval()
    with tn.no_grad():
        bias = net.bn.bias.detach().numpy().copy()
        bias[5] = np.nan
        net.bn.bias.copy_(tn.from_numpy(bias))
    model = tn.compile(net)
    x = np.random.default_rng(0).standard_normal((3, 16, 16, 16)).astype(np.float32)
    capfd.readouterr()
    got = _run(model, net, x, None, False)
    assert FALLBACK.findall(capfd.readouterr().err), "no call fell back"
    want = _run(net, net, x, None, False)
    _assert_same(got[0], want[0], 1e-4, "against eager")
    _assert_same(want[0], _torch_run(net, x, None, False)[0], 1e-4, "eager against torch")
