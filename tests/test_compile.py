"""tracenet.compile: compiled forward/backward against eager, the module-like surface, the
build cache, compiler errors and debug output."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tracenet as torch
import tracenet.nn as nn
import tracenet.nn.functional as F
import tracenet.optim as optim
from tracenet.codegen.base import LoweringError
from tracenet.runtime import build, toolchain

from test_ir import MLP, LeNet, Residual

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # one cache per test session keeps the suite fast; tests that need a cold cache make one
    d = tmp_path_factory.getbasetemp() / "tracenet-cache"
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(d))


def _grads(model):
    return [p.grad.numpy().copy() for p in model.parameters()]


def _check_model(model, shape, steps=1):
    compiled = torch.compile(model)
    for _ in range(steps):
        x = torch.randn(*shape)
        ref = model(x)
        out = compiled(x)
        np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), **TOL)
        gy = torch.randn(tuple(ref.shape))
        model.zero_grad()
        ref.backward(gy)
        expect = _grads(model)
        model.zero_grad()
        out.backward(gy)
        for g, e in zip(_grads(model), expect):
            np.testing.assert_allclose(g, e, **TOL)
    return compiled


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_lenet_forward_backward_match_eager(batch):
    torch.manual_seed(batch)
    _check_model(LeNet(), (batch, 1, 32, 32))


@pytest.mark.parametrize("make,shape", [(lambda: LeNet(3), (2, 1, 32, 32)),
                                        (lambda: LeNet(5, use_view=True), (2, 1, 32, 32)),
                                        (MLP, (5, 20)), (Residual, (2, 3, 8, 8))])
def test_model_variants_match_eager(make, shape):
    torch.manual_seed(0)
    _check_model(make(), shape)


def test_sequential_with_strided_padded_grouped_conv():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.ReLU(),
                          nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(),
                          nn.Linear(6 * 3 * 3, 5), nn.Sigmoid())
    _check_model(model, (3, 4, 11, 11))


class _ReluUsedTwice(nn.Module):
    """The relu output feeds the max-pool and another op: its mask is applied after the
    max-pool gradient is scattered (and the relu output is saved)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)

    def forward(self, x):
        y = F.relu(self.conv(x))
        return (F.max_pool2d(y, 2) * 2 + y.mean((2, 3), keepdim=True)).flatten(1)


def test_relu_output_used_beside_max_pool():
    torch.manual_seed(3)
    _check_model(_ReluUsedTwice(), (3, 2, 6, 6))


def test_conv_dilation_and_rectangular_kernel():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(2, 1),
                                    dilation=(2, 1)), nn.Tanh(), nn.Flatten())
    _check_model(model, (2, 2, 9, 7))


def test_gradients_accumulate_like_eager():
    torch.manual_seed(3)
    model = LeNet()
    compiled = torch.compile(model)
    x = torch.randn(2, 1, 32, 32)
    model(x).sum().backward()
    model(x).sum().backward()
    expect = _grads(model)
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    compiled(x).sum().backward()
    compiled(x).sum().backward()
    for g, e in zip(_grads(model), expect):
        np.testing.assert_allclose(g, e, **TOL)


def test_input_gradient():
    model = MLP()
    compiled = torch.compile(model)
    x = torch.randn(3, 20, requires_grad=True)
    model(x).pow(2).sum().backward()
    expect = x.grad.numpy().copy()
    x.grad = None
    compiled(x).pow(2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), expect, **TOL)


def test_training_loop_matches_eager_trajectory():
    torch.manual_seed(4)
    eager_net = LeNet()
    compiled_net = LeNet()
    compiled_net.load_state_dict(eager_net.state_dict())
    compiled = torch.compile(compiled_net)
    opt_e = optim.SGD(eager_net.parameters(), lr=0.05, momentum=0.9)
    opt_c = optim.SGD(compiled.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(10):
        for net, opt in ((eager_net, opt_e), (compiled, opt_c)):
            opt.zero_grad()
            loss = crit(net(x), y)
            loss.backward()
            opt.step()
        np.testing.assert_allclose(crit(compiled(x), y).item(), crit(eager_net(x), y).item(),
                                   rtol=1e-4)
    assert len(compiled.specialisations) == 1  # weight updates never recompile


def test_no_grad_and_eval_save_nothing():
    model = LeNet()
    compiled = torch.compile(model)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = compiled(x)
    assert out.grad_fn is None and not out.requires_grad
    assert compiled.backward_graph is None
    np.testing.assert_allclose(out.numpy(), model(x).detach().numpy(), **TOL)
    compiled.eval()
    with torch.no_grad():
        compiled(x)
    assert len(compiled.specialisations) == 2


def test_module_surface_is_shared():
    model = MLP()
    compiled = torch.compile(model)
    assert list(compiled.parameters()) == list(model.parameters())
    assert compiled.state_dict().keys() == model.state_dict().keys()
    compiled(torch.randn(2, 20)).sum().backward()
    compiled.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        model.l1.weight.mul_(0.0)
        model.l1.bias.zero_()
    out = compiled(torch.randn(2, 20))
    np.testing.assert_allclose(out.detach().numpy(),
                               model(torch.randn(2, 20)).detach().numpy(), **TOL)


def test_new_batch_size_compiles_a_new_specialisation_when_not_dynamic(capfd, monkeypatch):
    monkeypatch.setenv("TRACENET_DEBUG", "cache")
    compiled = torch.compile(MLP(), dynamic=False)
    compiled(torch.randn(2, 20))
    compiled(torch.randn(2, 20))
    compiled(torch.randn(5, 20))
    assert len(compiled.specialisations) == 2
    err = capfd.readouterr().err
    assert "new specialisation" in err and "f32[5,20]" in err


def test_new_batch_size_reuses_the_symbolic_specialisation(capfd, monkeypatch):
    monkeypatch.setenv("TRACENET_DEBUG", "cache")
    compiled = torch.compile(MLP())
    compiled(torch.randn(2, 20))
    compiled(torch.randn(5, 20))
    assert len(compiled.specialisations) == 1
    err = capfd.readouterr().err
    assert "new specialisation" not in err
    assert "f32[N,20]" in str(compiled.graph)


def test_second_backward_raises_and_inplace_weight_change_is_caught():
    model = MLP()
    compiled = torch.compile(model)
    out = compiled(torch.randn(2, 20)).sum()
    out.backward()
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        out.backward()
    out = compiled(torch.randn(2, 20)).sum()
    with torch.no_grad():
        model.l2.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_inspection_graph_source_and_c_readability():
    compiled = torch.compile(LeNet())
    compiled(torch.randn(1, 1, 32, 32))
    assert "fused[conv_relu_max_pool]" in str(compiled.graph)
    assert "conv_backward_weight" in str(compiled.backward_graph)
    src = compiled.source()
    assert "conv_relu_max_pool" in src and "= convolution(" in src  # IR lines as comments
    assert "void tn_LeNet_0_forward(void *const *args, char *arena, int64_t *err, int64_t tn_N, " \
        "int64_t tn_T, int threads)" in src
    assert "void tn_LeNet_0_backward(void *const *args, char *arena, int64_t *err, int64_t tn_N, " \
        "int64_t tn_T, int threads)" in src


def test_debug_topics(capfd, monkeypatch):
    monkeypatch.setenv("TRACENET_DEBUG", "ir,fusion,c,time")
    compiled = torch.compile(MLP())
    compiled(torch.randn(2, 20)).sum().backward()
    err = capfd.readouterr().err
    assert "[tracenet:ir] before fusion:" in err
    assert "[tracenet:fusion] after fusion:" in err
    assert "[tracenet:c] source " in err and ".c" in err
    assert "[tracenet:time]" in err and " us" in err


def test_flags_never_fast_math():
    flags = toolchain.flags() + toolchain.openmp_flags()
    assert not any("fast-math" in f or f == "-Ofast" for f in flags)


def test_unsupported_op_names_op_and_line():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.flip(x, [0])  # no C lowering
    with pytest.raises(LoweringError) as info:
        torch.compile(Odd())(torch.randn(3))
    msg = str(info.value)
    assert "'flip'" in msg and "test_compile.py:" in msg


def test_weird_module_names_are_sanitised():
    Weird = type("Weird-Net $1", (MLP,), {})
    compiled = torch.compile(Weird())
    compiled(torch.randn(2, 20))
    assert "Weird_Net__1" in compiled.source()


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-cc-xyz")
    toolchain.reset()
    try:
        with pytest.raises(toolchain.CompilerError, match="no-such-cc-xyz"):
            torch.compile(MLP())(torch.randn(2, 20))
    finally:
        monkeypatch.delenv("CC")
        toolchain.reset()


def test_failing_compiler_reports_its_message_and_source(tmp_path, monkeypatch):
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\n"
                    "for a in \"$@\"; do case $a in --version) echo fakecc 1.0; exit 0;; esac; "
                    "done\n"
                    "case \"$*\" in *probe*) exec gcc \"$@\";; esac\n"
                    "echo 'kernel.c:1: error: the sky is falling' >&2; exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(fake))
    toolchain.reset()
    try:
        with pytest.raises(toolchain.CompilerError) as info:
            torch.compile(MLP())(torch.randn(2, 20))
        msg = str(info.value)
        assert "the sky is falling" in msg
        path = msg.split("generated source ")[1].split()[0]
        assert os.path.exists(path) and path.endswith(".c")
    finally:
        monkeypatch.delenv("CC")
        toolchain.reset()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 CPU levels")
def test_tracenet_march_targets_another_cpu(tmp_path, monkeypatch):
    """TRACENET_MARCH=x86-64-v3 builds for AVX2 + FMA machines (without AVX-512): the target
    says so, the build cache keeps those libraries apart, and the results are eager's."""
    from tracenet.runtime import target
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRACENET_MARCH", "x86-64-v3")
    toolchain.reset()
    try:
        t = target.current()
        assert "-march=x86-64-v3" in t.flags and "-march=native" not in t.flags
        assert t.vector_bits == 256
        _check_model(LeNet(), (3, 1, 32, 32))
    finally:
        monkeypatch.delenv("TRACENET_MARCH")
        toolchain.reset()
    assert "-march=native" in target.current().flags or not toolchain.flags()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 CPU levels")
def test_baseline_x86_64_without_avx(tmp_path, monkeypatch):
    """TRACENET_MARCH=x86-64 (SSE2 only, no AVX) builds the kernels whose register pins
    name a vector register (a 1x1 stride-2 convolution's statistics tiles, a batch-1
    linear layer's dot products): without AVX their 32-byte vectors fit no one register, so
    the pin is left out rather than failing to compile."""
    from tracenet.runtime import target
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRACENET_MARCH", "x86-64")
    toolchain.reset()
    try:
        assert target.current().vector_bits == 128
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 1, 2, bias=False),
                                    torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                                    torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 10))
        for batch in (4, 1):
            _check_model(model, (batch, 16, 8, 8))
    finally:
        monkeypatch.delenv("TRACENET_MARCH")
        toolchain.reset()


_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    import tracenet as torch
    from test_ir import LeNet
    torch.manual_seed(0)
    net = torch.compile(LeNet())
    t = time.perf_counter()
    out = net(torch.randn(2, 1, 32, 32))
    out.sum().backward()
    print("ready", time.perf_counter() - t)
""")


def test_second_process_uses_cache_without_compiling(tmp_path):
    cache, log = tmp_path / "cache", tmp_path / "cc.log"
    wrapper = tmp_path / "cc"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec gcc \"$@\"\n")
    wrapper.chmod(0o755)
    env = dict(os.environ, TRACENET_CACHE_DIR=str(cache), CC=str(wrapper))
    script = _SCRIPT.format(tests=os.path.dirname(__file__))
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert len([f for f in os.listdir(cache) if f.endswith(".so")]) == 1
    assert " -o " in log.read_text()
    log.write_text("")
    second = subprocess.run([sys.executable, "-c", script], env=dict(env, TRACENET_DEBUG="cache"),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "[tracenet:cache] hit" in second.stderr, (second.stderr, os.listdir(cache))
    calls = log.read_text().splitlines()
    assert calls == [], calls  # the compiler is neither asked for its version nor run
    assert not [f for f in os.listdir(cache) if f.startswith(".tmp-")]


@pytest.mark.skipif(not any(os.path.exists(os.path.join(p, "clang"))
                            for p in os.environ.get("PATH", "").split(os.pathsep)),
                    reason="clang is not installed")
def test_clang_builds_the_same_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "clang")
    toolchain.reset()
    try:
        assert "clang" in toolchain.compiler()[1]
        _check_model(LeNet(), (2, 1, 32, 32))
    finally:
        monkeypatch.delenv("CC")
        toolchain.reset()


def test_atomic_cache_write_leaves_no_partial_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path))
    src = "int tn_probe(void) { return 42; }\n"
    lib = build.build(src, "int tn_probe(void);", name="probe")
    assert lib.lib.tn_probe() == 42 and not lib.cached
    again = build.build(src, "int tn_probe(void);", name="probe")
    assert again.cached and again.path == lib.path
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


class _RunningMean(nn.Module):
    """Updates buffers in place during forward, like batch norm's running statistics."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("running", torch.zeros(3))
        self.register_buffer("steps", torch.tensor(0))

    def forward(self, x):
        y = self.fc(x)
        if self.training:
            with torch.no_grad():
                self.running.mul_(0.9).add_(y.mean(0) * 0.1)
                self.steps.add_(1)
        return y


def test_in_place_buffer_updates_are_written_back():
    torch.manual_seed(5)
    eager, model = _RunningMean(), _RunningMean()
    model.load_state_dict(eager.state_dict())
    compiled = torch.compile(model)
    x = torch.randn(5, 4)
    for _ in range(3):
        eager(x).sum().backward()
        compiled(x).sum().backward()
    np.testing.assert_allclose(model.running.numpy(), eager.running.numpy(), **TOL)
    assert model.steps.item() == eager.steps.item() == 3
    assert model.running.grad_fn is None and not model.running.requires_grad
    compiled.eval()
    with torch.no_grad():
        compiled(x)
    assert model.steps.item() == 3  # eval: no update


@pytest.mark.parametrize("padding", [0, 1])
def test_max_pool_ties_and_nans_match_eager(padding):
    model = nn.MaxPool2d(2, stride=2, padding=padding)
    x = torch.tensor(np.array([[[[1., 1., 2., float("nan")],
                                 [1., 0., float("nan"), float("nan")],
                                 [3., 3., -1., -1.],
                                 [3., 3., -1., -2.]]]], np.float32))
    with torch.no_grad():
        out = torch.compile(model)(x)
    eager = model(x)
    np.testing.assert_array_equal(out.numpy(), eager.numpy())
    _, idx = torch.nn.functional.max_pool2d(x, 2, 2, padding=padding, return_indices=True)
    x2 = x.clone().requires_grad_()
    model(x2).sum().backward()
    x3 = x.clone().requires_grad_()
    torch.compile(model)(x3).sum().backward()
    np.testing.assert_array_equal(x3.grad.numpy(), x2.grad.numpy())


class _Reductions(nn.Module):
    def __init__(self, op, dims, keepdim):
        super().__init__()
        self.op, self.dims, self.keepdim = op, dims, keepdim
        self.scale = nn.Parameter(torch.ones(3, 4, 5))

    def forward(self, x):
        y = x * self.scale
        if self.op == "sum":
            return y.sum(self.dims, keepdim=self.keepdim)
        if self.op == "mean":
            return y.mean(self.dims, keepdim=self.keepdim)
        return y.amax(self.dims, keepdim=self.keepdim)


@pytest.mark.parametrize("op", ["sum", "mean", "amax"])
@pytest.mark.parametrize("dims,keepdim", [((0,), False), ((2,), True), ((0, 2), False),
                                          ((1,), False), ((0, 1, 2), False)])
def test_reductions_match_eager(op, dims, keepdim):
    torch.manual_seed(6)
    _check_model(_Reductions(op, dims, keepdim), (3, 4, 5))


@pytest.mark.parametrize("cfg", [
    dict(kernel_size=3, padding=1), dict(kernel_size=(3, 2), padding=(2, 1), dilation=(2, 1)),
    dict(kernel_size=3, padding=1, groups=2), dict(kernel_size=1),
    dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 3), stride=(1, 2)),
    dict(kernel_size=5, padding=3, dilation=2)])
def test_convolution_input_and_weight_gradients(cfg):
    torch.manual_seed(7)
    conv = nn.Conv2d(4, 6, **cfg)
    compiled = torch.compile(conv)
    x1 = torch.randn(3, 4, 9, 8, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    ref, out = conv(x1), compiled(x2)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), **TOL)
    gy = torch.randn(tuple(ref.shape))
    ref.backward(gy)
    expect = _grads(conv)
    conv.zero_grad()
    out.backward(gy)
    np.testing.assert_allclose(x2.grad.numpy(), x1.grad.numpy(), **TOL)
    for g, e in zip(_grads(conv), expect):
        np.testing.assert_allclose(g, e, **TOL)


class _VectorProducts(nn.Module):
    def __init__(self):
        super().__init__()
        self.m = nn.Parameter(torch.randn(4, 6))
        self.u = nn.Parameter(torch.randn(4))

    def forward(self, x):
        y = torch.mv(self.m, x)          # matrix @ vector
        return torch.dot(y, self.u) * y   # vector . vector


def test_mv_and_dot():
    torch.manual_seed(8)
    _check_model(_VectorProducts(), (6,))


def test_nested_inputs_and_outputs_keep_their_structure():
    torch.manual_seed(9)
    lstm = nn.LSTM(5, 7, num_layers=2)
    compiled = torch.compile(lstm)
    x, h0, c0 = torch.randn(4, 3, 5), torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    out, (h, c) = compiled(x, (h0, c0))
    ref, (rh, rc) = lstm(x, (h0, c0))
    for a, b in ((out, ref), (h, rh), (c, rc)):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), **TOL)
    (out.sum() + h.sum()).backward()
    got = _grads(lstm)
    lstm.zero_grad()
    (ref.sum() + rh.sum()).backward()
    for g, e in zip(got, _grads(lstm)):
        np.testing.assert_allclose(g, e, **TOL)
    out2, state = compiled(x)  # default (None) state: a second specialisation
    assert isinstance(state, tuple) and len(compiled.specialisations) == 2


class _ConvReluPoolIndices(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv(x)), 2, return_indices=True)


@pytest.mark.parametrize("width", [10, 13, 18, 21, 36])
def test_conv_relu_pool_indices_ties_and_nan(width):
    """The vectorised 2x2 pooling epilogue keeps the eager rules: the first maximum in window
    order wins ties (relu's zeros, equal values), and a NaN wins over numbers."""
    torch.manual_seed(4)
    model = _ConvReluPoolIndices()
    with torch.no_grad():
        model.conv.weight[1].zero_()            # channel 1: every output is its bias: all ties
        model.conv.bias[1] = 0.5
        model.conv.weight[2] = model.conv.weight[2].abs()
        model.conv.bias[2] = -100.0              # channel 2: relu gives zeros: all ties
    x = torch.randn(2, 1, 12, width)
    x[0, 0, 3, 5] = float("nan")
    x[1, 0, 7, width - 2] = float("nan")
    compiled = torch.compile(model)
    with torch.no_grad():
        out, idx = compiled(x)
        ref, ref_idx = model(x)
    np.testing.assert_array_equal(idx.numpy(), ref_idx.numpy())
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    assert np.isnan(out.numpy()).any()


@pytest.mark.parametrize("batch", [5, 16])
def test_wide_linear_layers(batch):
    """Forward with bias and activations, input and weight gradients; at batch 16 the GEMMs
    are large enough to split their rows between threads."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(300, 256), nn.ReLU(), nn.Linear(256, 200), nn.Tanh())
    _check_model(model, (batch, 300), steps=2)


def test_portable_paths_without_vector_shuffles(monkeypatch):
    """Compilers without __builtin_shufflevector get the general pooling epilogue and the
    portable dot-product kernel: same results as eager mode."""
    from tracenet.codegen import emit
    render = emit.render
    monkeypatch.setattr(emit, "render", lambda name, **kw: render(name, **kw).replace(
        "#define TN_SHUFFLE 1", "/* no vector shuffles */"))
    torch.manual_seed(6)
    model = LeNet()
    compiled = _check_model(model, (3, 1, 32, 32))
    assert "no vector shuffles" in compiled.source()
