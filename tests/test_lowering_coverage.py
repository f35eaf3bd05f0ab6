"""Every registry op compiles: it has a C lowering, or a decomposition into ops that have one,
or it states why it runs in eager mode only. The registry is the one list of ops, so the
checks walk it."""
import numpy as np
import pytest

import tracenet as torch
import tracenet.nn as nn
from tracenet.codegen.base import GROUP_LOWERINGS, LOWERINGS, has_lowering
from tracenet.ir import interpret, verify
from tracenet.ops.registry import KINDS, REGISTRY
from tracenet.passes.decompose import decompose
from tracenet.trace import trace

from op_samples import SAMPLES


def _tensors(arrays):
    return [torch.from_numpy(a.copy()) for a in arrays]


def test_every_op_lowers_decomposes_or_says_why():
    for name, op in REGISTRY.items():
        assert op.kind in KINDS, name
        if op.kind == "elementwise":
            assert callable(op.c_expr), f"elementwise op {name} has no C expression"
        if has_lowering(name):
            continue
        if op.eager_only is not None:
            assert isinstance(op.eager_only, str) and len(op.eager_only) > 8, name
            continue
        assert op.decomposition is not None, \
            f"op {name} has no C lowering, no decomposition and no eager-only reason"


def test_lowerings_are_registered_for_registry_ops_and_fusion_groups_only():
    assert set(LOWERINGS) <= set(REGISTRY), set(LOWERINGS) - set(REGISTRY)
    # the fusion pass's groups, and a recurrent step's gate math (grouped when a scan lowers)
    assert set(GROUP_LOWERINGS) == {"conv", "gemm", "elementwise", "pool_backward", "scan_cell",
                                    "norm", "norm_backward", "norm_backward_pair", "weight_update", "loop",
                                    "cross_entropy", "table_gradient", "pointwise_gradient_sum",
                                    "shortcut_input_gradient", "downsample_weight_gradient",
                                    "downsample_forward"}


DECOMPOSED = sorted(n for n, op in REGISTRY.items()
                    if op.decomposition is not None and not has_lowering(n))


def test_some_ops_decompose():
    assert {"mm", "addmm", "var", "std", "logsumexp", "all", "any"} <= set(DECOMPOSED)


@pytest.mark.parametrize("name", DECOMPOSED)
def test_decomposition_lowers_and_matches_eager(name):
    fn, arrays, _ = SAMPLES[name]
    inputs = _tensors(arrays)
    expected = fn(*inputs)
    graph = trace(fn, *_tensors(arrays))
    assert name in graph.op_counts()
    decompose(graph, has_lowering)
    verify(graph)
    assert name not in graph.op_counts()
    assert all(has_lowering(n.op) for n in graph.nodes if n.op != "constant"), str(graph)
    (out,) = interpret(graph, *inputs)
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-10, atol=1e-12)


class _Reductions(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = self.fc(x)
        return (y.var(1, keepdim=True) + y.std(0).sum() + torch.logsumexp(y, 1, keepdim=True)
                + y.gt(0).all(1, keepdim=True).float() + y.lt(-5).any().float())


def test_decomposed_ops_compile_forward_and_backward_as_eager():
    torch.manual_seed(0)
    net = _Reductions()
    x = torch.randn(4, 6)
    x[0, :] = -100.0  # a row of the logsumexp input far from zero
    eager = net(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    cnet = torch.compile(net)
    out = cnet(x)
    out.sum().backward()
    ops = {n.op for n in cnet.graph.nodes} | {m.op for n in cnet.graph.nodes
                                              for m in (n.members or ())}
    assert not ops & {"var", "std", "logsumexp", "all", "any", "addmm"}, ops
    np.testing.assert_allclose(out.detach().numpy(), eager.detach().numpy(), rtol=1e-5,
                               atol=1e-5)
    for p, g in zip(net.parameters(), grads):
        np.testing.assert_allclose(p.grad.numpy(), g.numpy(), rtol=1e-4, atol=1e-5)


def test_an_eager_only_op_names_its_reason_when_compiled():
    class Flip(nn.Module):
        def forward(self, x):
            return x.flip(0) * 2

    with pytest.raises(NotImplementedError, match="op 'flip' has no C lowering: no C lowering"):
        torch.compile(Flip())(torch.randn(3, 2))


def test_every_op_with_a_c_expression_fuses_into_one_kernel():
    """clone, expand, isnan and the logical ops used to compile alone; now the registry's C
    expression is all fusion asks for (a chain: each value read once)."""
    class Mixed(nn.Module):
        def forward(self, x, b, p, q, r):
            y = torch.isnan(b.expand(4, 5) + x.clone())
            return torch.logical_xor(torch.logical_or(torch.logical_and(
                torch.logical_not(y), p), q), r)

    x, b = torch.randn(4, 5), torch.randn(1, 5)
    x[1, 2] = float("nan")
    p, q, r = (torch.randn(4, 5) > 0 for _ in range(3))
    expected = Mixed()(x, b, p, q, r)
    cnet = torch.compile(Mixed())
    out = cnet(x, b, p, q, r)
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    fused = [n for n in cnet.graph.nodes if n.op == "fused"]
    assert len(fused) == 1 and len(cnet.graph.nodes) == 1, str(cnet.graph)
    ops = {m.op for m in fused[0].members}
    assert ops == {"expand", "clone", "add", "isnan", "logical_and", "logical_not",
                   "logical_or", "logical_xor"}, ops
