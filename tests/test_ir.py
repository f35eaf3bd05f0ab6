"""Tracing, the IR (printing, verifier, interpreter), autodiff on the IR and the passes,
checked against eager mode."""
import os

import numpy as np
import pytest

import tracenet as torch
import tracenet.nn as nn
import tracenet.nn.functional as F
from tracenet.ir import VerificationError, grad, interpret, verify
from tracenet.ir.interpret import interpret_backward
from tracenet.ops.registry import REGISTRY
from tracenet.passes import cse, dce, fold_constants, fuse, joint_forward, simplify
from tracenet.trace import TraceError, trace

from op_samples import SAMPLES, UNTRACEABLE


def _tensors(arrays, grad_idx):
    return [torch.from_numpy(a.copy()).requires_grad_(i in grad_idx and a.dtype.kind == "f")
            for i, a in enumerate(arrays)]


# --- every registry op ---------------------------------------------------------------------


def test_every_registry_op_has_rules_and_a_sample():
    for name, op in REGISTRY.items():
        assert callable(op.infer), name
        assert callable(op.eager), name
        if op.differentiable:
            assert callable(op.backward), f"differentiable op {name} has no backward rule"
        assert name in SAMPLES or name in UNTRACEABLE, f"op {name} has no IR test sample"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_op_traces_verifies_interprets_and_differentiates(name):
    fn, arrays, grad_idx = SAMPLES[name]
    inputs = _tensors(arrays, grad_idx)
    eager_out = fn(*inputs)
    graph = trace(fn, *_tensors(arrays, grad_idx))
    verify(graph)
    assert name in graph.op_counts(), f"{name} does not appear in its sample's graph:\n{graph}"
    # (tensors the sample reads from its module, such as running statistics, are inputs too)
    inputs += [t for _, t in graph.captured]
    (out,) = interpret(graph, *inputs)
    np.testing.assert_allclose(out, eager_out.detach().numpy(), rtol=1e-12, atol=1e-12)
    if not eager_out.requires_grad:
        return
    cot = np.random.default_rng(0).standard_normal(eager_out.shape)
    eager_out.backward(torch.from_numpy(cot))
    bwd = grad(graph)
    verify(bwd)
    got = interpret_backward(graph, bwd, inputs, [cot])
    for v, g in zip(bwd.grad_of, got):
        i = graph.inputs.index(v)
        np.testing.assert_allclose(g, inputs[i].grad.numpy(), rtol=1e-5, atol=1e-8,
                                   err_msg=f"{name}: gradient of input {i}")


# --- model zoo ----------------------------------------------------------------------------


class LeNet(nn.Module):
    def __init__(self, k=5, use_view=False):
        super().__init__()
        self.use_view = use_view
        self.conv1 = nn.Conv2d(1, 6, k)
        self.conv2 = nn.Conv2d(6, 16, k)
        side = ((32 - k + 1) // 2 - k + 1) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        if self.use_view:
            x = x.view(-1, self.num_flat_features(x))
        else:
            x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def num_flat_features(self, x):
        size = x.size()[1:]
        n = 1
        for s in size:
            n *= s
        return n


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(20, 32), nn.Linear(32, 32), nn.Linear(32, 5)

    def forward(self, x):
        return self.l3(torch.tanh(self.l2(F.relu(self.l1(x)))))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        y = F.relu(self.conv(x)) + x  # x is used twice: cotangents must be summed
        y = y * 0.5 + y.sigmoid()
        return self.fc(y.flatten(1))


def _models():
    torch.manual_seed(0)
    return [
        ("lenet5", LeNet(5), (2, 1, 32, 32)),
        ("lenet3", LeNet(3), (2, 1, 32, 32)),
        ("lenet5_view", LeNet(5, use_view=True), (2, 1, 32, 32)),
        ("lenet3_view", LeNet(3, use_view=True), (1, 1, 32, 32)),
        ("mlp", MLP(), (4, 20)),
        ("residual", Residual(), (2, 3, 8, 8)),
        ("sequential", nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Flatten(), nn.Linear(4 * 3 * 3, 3)), (3, 1, 8, 8)),
    ]


@pytest.mark.parametrize("name,model,shape", _models(), ids=[m[0] for m in _models()])
@pytest.mark.parametrize("fused", [False, True])
def test_model_forward_and_backward_match_eager(name, model, shape, fused):
    x = torch.randn(*shape)
    params = list(model.parameters())
    graph = trace(model, x)
    verify(graph)
    bwd = grad(graph)
    verify(bwd)
    if fused:
        graph, bwd = fuse(simplify(graph)), fuse(simplify(bwd))
        verify(graph)
        verify(bwd)
    (out,) = interpret(graph, x, *params)
    eager = model(x)
    np.testing.assert_allclose(out, eager.detach().numpy(), rtol=1e-5, atol=1e-6)
    cot = np.random.default_rng(1).standard_normal(eager.shape).astype(np.float32)
    model.zero_grad()
    eager.backward(torch.from_numpy(cot))
    grads = interpret_backward(graph, bwd, [x] + params, [cot])
    assert [graph.inputs.index(v) for v in bwd.grad_of] == list(range(1, 1 + len(params)))
    for p, g in zip(params, grads):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_input_gradient_when_input_requires_grad():
    model = MLP()
    x = torch.randn(3, 20, requires_grad=True)
    graph = trace(model, x)
    bwd = grad(graph)
    assert bwd.grad_of[0] is graph.inputs[0]
    eager = model(x)
    eager.sum().backward()
    got = interpret_backward(graph, bwd, [x] + list(model.parameters()),
                             [np.ones(eager.shape, np.float32)])
    np.testing.assert_allclose(got[0], x.grad.numpy(), rtol=1e-5, atol=1e-6)


# --- graph structure and printing -------------------------------------------------------


def test_graph_inputs_are_named_in_named_parameters_order():
    model = LeNet()
    graph = trace(model, torch.randn(1, 1, 32, 32))
    assert [v.name for v in graph.inputs] == ["x"] + [n for n, _ in model.named_parameters()]
    text = str(graph)
    assert "%conv1.weight: f32[6,1,5,5]" in text
    assert "max_pool(" in text and "kernel=[2,2]" in text
    assert "# test_ir.py:" in text  # user source locations


def test_print_is_stable_across_runs():
    a = str(trace(LeNet(), torch.randn(1, 1, 32, 32)))
    b = str(trace(LeNet(), torch.randn(1, 1, 32, 32)))
    assert a == b


def test_graph_snapshot_lines():
    text = str(trace(LeNet(), torch.randn(1, 1, 32, 32))).splitlines()
    assert text[0] == "# specialised for inputs=(f32[1,1,32,32]) training=True grad=True"
    assert text[2].startswith("  %0: f32[1,6,28,28] = convolution(%x, %conv1.weight, "
                              "%conv1.bias)  stride=[1,1] padding=[0,0] dilation=[1,1] groups=1")
    assert text[3].startswith("  %1: f32[1,6,28,28] = relu(%0)")
    assert text[-2] == "  return %16"


def test_specialisation_key_reflects_shape_dtype_and_training():
    model = MLP()
    k1 = trace(model, torch.randn(2, 20)).key
    k2 = trace(model, torch.randn(3, 20)).key
    model.eval()
    k3 = trace(model, torch.randn(2, 20)).key
    with torch.no_grad():
        k4 = trace(model, torch.randn(2, 20)).key
    assert len({k1, k2, k3, k4}) == 4
    assert "training=False" in str(k3)


def test_to_dot():
    dot = trace(MLP(), torch.randn(2, 20)).to_dot()
    assert dot.startswith('digraph "MLP"') and "addmm" in dot and dot.rstrip().endswith("}")


def test_parameters_untouched_after_trace():
    model = MLP()
    trace(model, torch.randn(2, 20))
    for p in model.parameters():
        assert p._ir is None
    model(torch.randn(2, 20)).sum().backward()  # eager still works


# --- data-dependent control flow ----------------------------------------------------------


class DataDependent(nn.Module):
    def __init__(self, what):
        super().__init__()
        self.what = what
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        if self.what == "if":
            if y.sum() > 0:
                return y
            return -y
        if self.what == "item":
            return y * y.sum().item()
        if self.what == "tolist":
            return y * len(y.tolist())
        if self.what == "numpy":
            return y * float(y.numpy().sum())
        raise AssertionError


@pytest.mark.parametrize("what", ["if", "item", "tolist", "numpy"])
def test_data_dependent_control_flow_raises_trace_error(what):
    with pytest.raises(TraceError) as info:
        trace(DataDependent(what), torch.randn(2, 4))
    msg = str(info.value)
    assert "test_ir.py:" in msg and "eager mode" in msg


def test_python_control_flow_is_specialised():
    def f(x):
        for _ in range(3):
            x = x * 2.0
        if x.shape[0] > 1:
            x = x + 1.0
        return x
    graph = trace(f, torch.randn(2, 3))
    assert graph.op_counts()["mul"] == 3 and graph.op_counts()["add"] == 1


# --- verifier and passes -------------------------------------------------------------------


def test_verifier_catches_wrong_shape_and_use_before_def():
    graph = trace(MLP(), torch.randn(2, 20))
    bad = graph.copy()
    bad.nodes[1].outputs[0].shape = (9, 9)
    with pytest.raises(VerificationError, match="shape rule gives"):
        verify(bad)
    bad = graph.copy()
    bad.nodes[0], bad.nodes[1] = bad.nodes[1], bad.nodes[0]
    with pytest.raises(VerificationError, match="before it is defined"):
        verify(bad)
    bad = graph.copy()
    bad.outputs = [bad.nodes[0].outputs[0].__class__(99, (1,), bad.inputs[0].dtype)]
    with pytest.raises(VerificationError, match="never defined"):
        verify(bad)


def test_dce_and_cse():
    def f(x):
        unused = x.exp()  # noqa: F841  (dead)
        a = x * 2.0
        b = x * 2.0  # common subexpression
        return a + b
    x = torch.randn(3)
    graph = trace(f, x)
    ref = interpret(graph, x)[0]
    assert graph.op_counts()["exp"] == 1 and graph.op_counts()["mul"] == 2
    cse(graph)
    verify(graph)
    assert graph.op_counts()["mul"] == 1 and graph.op_counts()["exp"] == 1
    dce(graph)
    verify(graph)
    assert "exp" not in graph.op_counts()
    np.testing.assert_allclose(interpret(graph, x)[0], ref, rtol=1e-6)


def test_constant_folding_in_backward_graph():
    def f(x):
        exponent = torch.tensor([3.0, 2.0, 1.5])  # a constant of the forward graph
        return x ** exponent
    x = torch.rand(3, requires_grad=True) + 0.5
    x = x.detach().requires_grad_()
    graph = trace(f, x)
    bwd = grad(graph)
    ref = interpret_backward(graph, bwd, [x], [np.ones(3, np.float32)])[0]
    before = len(bwd.nodes)
    fold_constants(bwd)
    verify(bwd)
    assert len(bwd.nodes) < before  # (exponent - 1) and log(exponent)-style terms folded
    assert all(any(not (i.producer and i.producer.op == "constant") for i in n.inputs)
               for n in bwd.nodes if n.op != "constant")
    np.testing.assert_allclose(interpret_backward(graph, bwd, [x], [np.ones(3, np.float32)])[0],
                               ref, rtol=1e-6)
    f(x).sum().backward()
    np.testing.assert_allclose(ref, x.grad.numpy(), rtol=1e-5)


def test_constant_folding_does_not_spread_a_scalar_over_a_large_tensor(tmp_path, monkeypatch):
    """The gradient of a mean loss is the scalar 1/n expanded over the output: folded, its n
    copies were written into the C source one by one (6 MB for n = 262144); it stays an
    expand of a small constant, and the step still trains as eager mode does. The sources of a
    layer of 4096 outputs are no larger than those of one of 16 (the GEMM code they include is
    the same) by more than a few lines."""
    tn = torch  # (this file's "torch" is tracenet)

    def largest_source(outputs):
        cache = tmp_path / str(outputs)
        monkeypatch.setenv("TRACENET_CACHE_DIR", str(cache))

        def make():
            tn.manual_seed(0)
            m = tn.nn.Linear(64, outputs)
            return m, tn.optim.SGD(m.parameters(), lr=0.1)
        x = tn.from_numpy(np.random.default_rng(0).random((64, 64)).astype(np.float32))
        m1, o1 = make()
        m2, o2 = make()
        step = tn.compile_step(lambda a: m1(a).square().mean(), o1)
        for _ in range(2):
            got = step(x).item()
            o2.zero_grad()
            loss = m2(x).square().mean()
            loss.backward()
            o2.step()
            assert got == pytest.approx(loss.item(), rel=1e-6)
        sources = list(cache.rglob("*.c"))
        assert sources
        return max(p.stat().st_size for p in sources)
    assert largest_source(4096) < largest_source(16) + 20_000


def test_fusion_groups_lenet():
    model = LeNet()
    x = torch.randn(2, 1, 32, 32)
    graph = fuse(simplify(trace(model, x)))
    verify(graph)
    kinds = [n.attrs["kind"] for n in graph.nodes if n.op == "fused"]
    assert kinds.count("conv_relu_max_pool") == 2
    assert kinds.count("addmm_relu") == 2
    np.testing.assert_allclose(interpret(graph, x, *model.parameters())[0],
                               model(x).detach().numpy(), rtol=1e-6, atol=1e-6)
    assert "fused[conv_relu_max_pool]" in str(graph)


def test_backward_fusion_of_lenet():
    from tracenet.codegen.base import has_lowering
    from tracenet.passes.decompose import decompose
    from tracenet.passes.lower import lower_gemm
    model = LeNet()
    x = torch.randn(2, 1, 32, 32)
    graph = trace(model, x)
    bwd = grad(graph)
    ref = interpret_backward(graph, bwd, [x] + list(model.parameters()),
                             [np.ones((2, 10), np.float32)])
    fuse(lower_gemm(simplify(decompose(bwd, has_lowering))))
    verify(bwd)
    kinds = [n.attrs["kind"] for n in bwd.nodes if n.op == "fused"]
    # relu -> max_pool: the pooled gradient is masked by the pooled output, then scattered
    assert kinds.count("threshold_backward_max_pool_backward_sum") == 2
    # ... so the relu outputs are not saved, only the pooled ones
    saved = [tuple(v.shape) for v in bwd.saved]
    assert (2, 6, 28, 28) not in saved and (2, 16, 10, 10) not in saved
    assert (2, 6, 14, 14) in saved and (2, 16, 5, 5) in saved
    assert kinds.count("gemm_threshold_backward") == 2
    got = interpret_backward(graph, bwd, [x] + list(model.parameters()),
                             [np.ones((2, 10), np.float32)])
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fusion_of_elementwise_chain_and_mm_bias():
    def f(x, w, b):
        y = x.mm(w) + b
        y = y.tanh()
        return (y * 2.0 - 1.0).exp().sigmoid()
    args = [torch.randn(3, 4), torch.randn(4, 5), torch.randn(5)]
    graph = trace(f, *args)
    ref = interpret(graph, *args)[0]
    fuse(graph)
    verify(graph)
    kinds = sorted(n.attrs["kind"] for n in graph.nodes if n.op == "fused")
    assert kinds == ["elementwise", "mm_add_tanh"]
    np.testing.assert_allclose(interpret(graph, *args)[0], ref, rtol=1e-6)


def test_joint_forward_outputs_saved_values():
    model = LeNet()
    x = torch.randn(2, 1, 32, 32)
    graph = trace(model, x)
    bwd = grad(graph)
    joint = joint_forward(graph, bwd)
    verify(joint)
    saved_ops = {v.producer.op for v in bwd.saved if v.producer is not None}
    # relu saves its output (the mask is recomputed), max-pool its indices
    assert "relu" in saved_ops and "max_pool" in saved_ops
    pool_saved = [v for v in bwd.saved if v.producer is not None and v.producer.op == "max_pool"]
    assert sum(v.dtype.short == "i64" for v in pool_saved) == 2  # both pools' argmax indices
    assert len(joint.outputs) == 1 + len([v for v in bwd.saved if v.producer is not None])
    assert [k for k, _ in joint.saved_sources].count("input") == \
        len([v for v in bwd.saved if v.producer is None])
