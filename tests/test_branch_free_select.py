"""Floating-point selects in the elementwise kernels (relu's and leaky relu's backward, where,
prelu) are written on the values' bits (``tracenet.ops.cexpr.select``): the same values as the
ternary, bit for bit, and a loop over them vectorises where the target has no masked
arithmetic. With the ternary, gcc kept relu's backward of a residual sum a branch per element
with AVX2 only (the arm's add is computed only for its element), and the ResNet's mask kernels
ran 4.4x slower than with AVX-512."""
import subprocess

import numpy as np
import pytest

import tracenet as tn
from tracenet.codegen.templates import render
from tracenet.ops.cexpr import select
from tracenet.ops.elementwise import threshold_backward_op, where_op
from tracenet.runtime import toolchain

torch = pytest.importorskip("torch")


def test_select_uses_the_bit_helpers_for_floating_point_only():
    assert select("c", "a", "0", "float") == "tn_keep_f32(c, a)"
    assert select("c", "a", "b", "double") == "tn_pick_f64(c, a, b)"
    assert select("c", "a", "b", "int64_t") == "(c ? a : b)"


def _gcc():
    argv, identity = toolchain.compiler()
    if "gcc" not in identity.lower() or "clang" in identity.lower():
        pytest.skip("the vectoriser's report is read in gcc's format")
    return list(argv)


def _loop(expr):
    return "\n".join([
        "#include <stdint.h>", "#include <stddef.h>", "#include <string.h>",
        "#include <tgmath.h>",
        render("_preamble.c.j2", max_threads=2, ctypes=set()),
        "void masked(size_t n, const float *restrict a, const float *restrict b,",
        "            const float *restrict m, const uint8_t *restrict c, float *restrict out)",
        "{", "    #pragma omp simd", "    for (size_t i = 0; i < n; i++)",
        f"        out[i] = {expr};", "}"])


@pytest.mark.parametrize("op, args, attrs", [
    (threshold_backward_op, ["(a[i] + b[i])", "m[i]"], {"threshold": 0.0}),  # a residual's mask
    (where_op, ["c[i]", "(a[i] * b[i])", "(a[i] + b[i])"], {}),
])
def test_the_select_loops_vectorise_with_avx2_only(tmp_path, op, args, attrs):
    src = tmp_path / "select.c"
    src.write_text(_loop(op.c_expr(args, attrs, "float")))
    flags = [f for f in toolchain.flags() if not f.startswith("-march") and f != "-shared"]
    out = subprocess.run(_gcc() + flags + ["-march=x86-64-v3", "-fopt-info-vec-optimized",
                                           "-c", str(src), "-o", str(tmp_path / "select.o")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "loop vectorized" in out.stderr, out.stderr


_SPECIAL = np.array([1.5, -2.0, 0.0, -0.0, np.inf, -np.inf, np.nan, 3e-39, -3e-39, 7.0,
                     -1e30, 1e30], np.float32)


def _bits(a):
    return np.asarray(a).view(np.uint32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_selects_keep_every_bit(dtype):
    """NaN, infinities, signed zeros and subnormals in either operand come out as eager
    mode's (and torch's) bit for bit: the bit select computes both arms and keeps one."""
    rng = np.random.default_rng(0)
    x = rng.permutation(np.tile(_SPECIAL, 6)).astype(dtype)
    g = rng.permutation(np.tile(_SPECIAL, 6)).astype(dtype)
    w = np.array([0.25], dtype)

    def fn(x, g, w):
        relu_grad = tn.ops.elementwise.threshold_backward(g + x, x, 0.0)
        leaky = tn.nn.functional.leaky_relu(x * 2, 0.1)
        leaky_grad = tn.ops.activation.leaky_relu_backward(g * 3, x, 0.1)
        picked = tn.where(x > 1, g + 1, x - g)
        prelu = tn.nn.functional.prelu(x + g, w)
        return relu_grad, leaky, leaky_grad, picked, prelu

    with tn.no_grad():
        args = [tn.from_numpy(a) for a in (x, g, w)]
        want = fn(*args)
        got = tn.compile(fn)(*args)
    for e, c in zip(want, got):
        np.testing.assert_array_equal(c.numpy().view(np.uint8), e.numpy().view(np.uint8))
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    np.testing.assert_array_equal(
        got[0].numpy().view(np.uint8),
        torch.ops.aten.threshold_backward(tg + tx, tx, 0.0).numpy().view(np.uint8))
    np.testing.assert_array_equal(
        got[3].numpy().view(np.uint8),
        torch.where(tx > 1, tg + 1, tx - tg).numpy().view(np.uint8))


@pytest.mark.parametrize("pool", [False, True])
def test_relu_gradient_at_nan_is_torchs(pool):
    """torch's relu backward zeroes the gradient where the output is <= 0: a NaN output passes
    its gradient through, in eager mode and compiled (the fused relu + max-pool backward too)."""
    x = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8) % 7 - 3
    x[0, 1, 2, 3] = x[1, 2, 5, 5] = np.nan
    w = (np.arange(x.size // (4 if pool else 1), dtype=np.float32) % 5 - 2).reshape(
        (2, 3, 4, 4) if pool else x.shape)

    def loss(lib, x, w):
        y = lib.nn.functional.relu(x)
        if pool:
            y = lib.nn.functional.max_pool2d(y, 2)
        return (y * w).sum()

    tx = torch.tensor(x, requires_grad=True)
    loss(torch, tx, torch.from_numpy(w)).backward()
    for mode in ("eager", "compiled"):
        nx = tn.tensor(x, requires_grad=True)
        class Loss(tn.nn.Module):
            def forward(self, a, b):
                return loss(tn, a, b)
        f = Loss() if mode == "eager" else tn.compile(Loss())
        f(nx, tn.from_numpy(w)).backward()
        np.testing.assert_array_equal(nx.grad.numpy(), tx.grad.numpy(), err_msg=mode)
