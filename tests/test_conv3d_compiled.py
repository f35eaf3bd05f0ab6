"""3-d convolutions under tracenet.compile and compile_step against eager mode: the stride-1
path (GEMMs over shifted views of the padded image, one per output depth), the im2col path
(any stride), groups, the OpenMP split over the batch, both gradients, conv3d -> relu ->
max_pool3d groups, and a whole training step of a small 3-d net."""
import re

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as nn
import tracenet.optim as optim
from tracenet.runtime import target as runtime_target

from compile_checks import check_compiled


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _check_inference(model, shape, dtype=tn.float32, tol=1e-4):
    """Compiled forward without gradients (nothing but the last value is exported)."""
    compiled = tn.compile(model)
    x = tn.randn(*shape, dtype=dtype)
    with tn.no_grad():
        ref, out = model(x), compiled(x)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=tol, atol=tol)
    return compiled


def _conv_kernels(source):
    """The functions of the convolution kernels (forward and both gradients) in ``source``:
    those calling the GEMM core or a weight gradient's register tiles of dot products."""
    return [m.group(0) for m in re.finditer(
        r"static void (\w+)\((?:.|\n)*?\n}\n", source)
        if ("tn_gemm" in m.group(0) or re.search(r"\b\w+_dots\(", m.group(0)))
        and "static void tn_gemm" not in m.group(0)
        and "tn_tile" not in m.group(0) and "_dots" not in m.group(1)]


# (constructor, input shape, path the forward and both gradients take)
CASES = {
    # stride 1: one GEMM per output depth over shifted views of the zero-padded image
    "direct_padded_dilated": (lambda: nn.Conv3d(3, 4, (3, 2, 3), padding=(2, 1, 1),
                                                dilation=(2, 1, 2)), (2, 3, 5, 6, 7), "direct"),
    "direct_unpadded": (lambda: nn.Conv3d(2, 3, (2, 3, 2)), (2, 2, 4, 5, 6), "direct"),
    "direct_grouped": (lambda: nn.Conv3d(4, 6, 3, padding=1, groups=2, bias=False),
                       (2, 4, 4, 5, 3), "direct"),
    # depth padding around a single plane: whole output depths read nothing but padding
    "direct_depth_padding_only": (lambda: nn.Conv3d(2, 3, (1, 3, 3), padding=(1, 1, 0)),
                                  (2, 2, 1, 5, 6), "direct"),
    "direct_depthwise_dilated": (lambda: nn.Conv3d(3, 3, 2, padding=(0, 2, 1), dilation=(3, 2, 1),
                                                   groups=3), (1, 3, 5, 4, 6), "direct"),
    # a depth of 1 everywhere: the 2-d kernels
    "direct_flat_depth": (lambda: nn.Conv3d(2, 3, (1, 3, 3), padding=(0, 1, 1)), (2, 2, 1, 5, 6),
                          "direct"),
    "im2col_flat_depth": (lambda: nn.Conv3d(2, 3, (1, 3, 2), stride=(3, 2, 1)), (2, 2, 1, 7, 6),
                          "im2col"),
    # any other stride: im2col columns over (c, kd, kh, kw) x (od, oh, ow)
    "im2col_strided": (lambda: nn.Conv3d(3, 4, 3, stride=(2, 1, 2), padding=(1, 0, 2),
                                         dilation=(1, 2, 1)), (2, 3, 6, 7, 8), "im2col"),
    "im2col_depth_stride_only": (lambda: nn.Conv3d(2, 3, (3, 2, 2), stride=(2, 1, 1),
                                                   padding=(2, 1, 0)), (2, 2, 5, 4, 5), "im2col"),
    "im2col_grouped": (lambda: nn.Conv3d(6, 4, 2, stride=2, padding=1, groups=2),
                       (3, 6, 5, 4, 7), "im2col"),
    # a kernel past the padded image in depth: output depths whose taps all miss the image
    "im2col_padding_past_kernel": (lambda: nn.Conv3d(2, 2, 2, stride=3, padding=3),
                                   (2, 2, 3, 4, 5), "im2col"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_conv3d_matches_eager(name):
    make, shape, path = CASES[name]
    tn.manual_seed(0)
    compiled = check_compiled(make(), shape)
    kernels = _conv_kernels(compiled.source())
    # the forward and the weight gradient (and, as the input requires grad, the input gradient)
    assert len(kernels) >= 3, kernels
    for k in kernels:
        if path == "direct":
            assert "_taps" in k or "for each tap" in k
        else:
            assert "_taps" not in k and ("columns of a" in k or "column gradients" in k)


@pytest.mark.parametrize("name", list(CASES))
def test_conv3d_float64_inference(name):
    make, shape, _ = CASES[name]
    tn.manual_seed(0)
    _check_inference(make().double(), shape, dtype=tn.float64, tol=1e-10)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv3d_large_enough_for_openmp(stride):
    """Above the compute policy's 500k flops with a batch of 4: every convolution kernel
    splits its images between threads (when OpenMP works here)."""
    tn.manual_seed(0)
    model = nn.Conv3d(4, 8, 3, stride=stride, padding=1, dilation=(1, 2, 1), groups=2)
    compiled = check_compiled(model, (4, 4, 12, 12, 13))
    kernels = _conv_kernels(compiled.source())
    assert len(kernels) == 3
    if runtime_target.current().openmp:
        for k in kernels:
            assert "omp_get_thread_num()" in k


def test_conv3d_openmp_float64():
    tn.manual_seed(0)
    model = nn.Conv3d(3, 5, (2, 3, 3), padding=(1, 1, 0)).double()
    check_compiled(model, (3, 3, 8, 9, 10), dtype=tn.float64, tol=1e-10)


GROUPS = {
    "relu_pool": (lambda: nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(),
                                        nn.MaxPool3d(2)), (2, 2, 6, 7, 8)),
    "strided_relu_pool_padded": (lambda: nn.Sequential(
        nn.Conv3d(4, 6, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.MaxPool3d((2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0))), (2, 4, 7, 8, 9)),
    "pool_dilated_ceil": (lambda: nn.Sequential(
        nn.Conv3d(2, 3, (2, 3, 3), padding=(0, 1, 1)),
        nn.MaxPool3d(2, dilation=(1, 2, 1), ceil_mode=True)), (2, 2, 5, 7, 6)),
    # large enough for the OpenMP split of the convolution and of the pooling
    "relu_pool_parallel": (lambda: nn.Sequential(nn.Conv3d(4, 8, 3, padding=1), nn.ReLU(),
                                                 nn.MaxPool3d(2)), (4, 4, 10, 10, 10)),
}


@pytest.mark.parametrize("name", list(GROUPS))
def test_conv3d_relu_max_pool_group(name):
    make, shape = GROUPS[name]
    tn.manual_seed(0)
    model = make()
    compiled = check_compiled(model, shape)
    assert "_pool(" in compiled.source()
    # inference: the pooling input lives in the kernel's scratch only
    source = _check_inference(model, shape).source()
    fused = re.findall(r"static void (\w+_max_pool)\(([^)]*)\)", source)
    assert fused and all("scratch" in args and "relu_out" not in args for _, args in fused)


class Net3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv3d(2, 4, 3, padding=1)
        self.c2 = nn.Conv3d(4, 6, 3, stride=2, padding=(1, 0, 1), groups=2)
        self.c3 = nn.Conv3d(6, 6, (2, 1, 2), padding=(1, 0, 0), dilation=(1, 1, 2), bias=False)
        self.fc = nn.Linear(6 * 3 * 1 * 1, 5)

    def forward(self, x):
        x = nn.functional.max_pool3d(nn.functional.relu(self.c1(x)), 2)
        x = nn.functional.relu(self.c2(x))
        x = self.c3(x).tanh()
        return self.fc(x.flatten(1))


def test_compile_step_small_3d_net_matches_eager_loop():
    tn.manual_seed(0)
    eager, compiled = Net3d(), Net3d()
    compiled.load_state_dict(eager.state_dict())
    opt_e = optim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    opt_c = optim.SGD(compiled.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    step = tn.compile_step(lambda a, b: crit(compiled(a), b), opt_c)
    rng = np.random.default_rng(0)
    xs = [tn.from_numpy(rng.standard_normal((3, 2, 8, 9, 10)).astype(np.float32))
          for _ in range(3)]
    ys = [tn.from_numpy(rng.integers(0, 5, 3)) for _ in range(3)]
    for i in range(6):
        x, y = xs[i % 3], ys[i % 3]
        opt_e.zero_grad()
        loss_e = crit(eager(x), y)
        loss_e.backward()
        opt_e.step()
        np.testing.assert_allclose(step(x, y).item(), loss_e.item(), rtol=1e-5)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-4, atol=1e-6)
