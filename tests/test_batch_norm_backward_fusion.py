"""The batch-norm backward with the prologue of its gradient (fusion group ``norm_backward``,
templates/norm_batch_norm_backward.c.j2 with ``summed``): the sum of two gradients, then
optionally a relu's mask recomputed from the batch norm's input, added (and masked) where each
of the kernel's two passes reads the gradient, so no pass writes the sum (the ResNet's stem,
whose relu's gradient sums the first block's two paths).

Op-level steps (``tracenet.compile`` of a function of the ops) against eager mode and PyTorch's
autograd of relu(batch_norm(x)) (or batch_norm(x)) with the output gradient a + b: float32 and
float64, planes shorter and longer than a 256-element run, an x far from zero, batch 1 and a
symbolic batch, work memory filled with NaN on 1 and 2 threads, and a sum with a second reader
(returned), which must keep its own pass. Training steps (``compile_step``) of a stem and
residual block against PyTorch and eager mode."""
import re

import numpy as np
import pytest

import tracenet as tn
from compile_checks import nan_filled_arenas, sgd_steps_against_torch_and_eager
from test_resnet_relu_mask_backward import twins_with_shifted_batch_norms
from tracenet.codegen.target import Parallelism
from tracenet.ops.elementwise import threshold_backward
from tracenet.ops.normalization import batch_norm, batch_norm_backward, batch_norm_stats

torch = pytest.importorskip("torch")

# the fused kernel's comment (templates/norm_batch_norm_backward.c.j2)
SUMMED = "the output gradient is the sum (g0 + g1) of two"
MASKED = "g is the output gradient masked by the relu after the forward batch norm"
EPS = 1e-5


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _step(masked, sum_read_after):
    """The backward of [relu(]batch_norm(x)[)] for the output gradient a + b, in training mode
    (statistics of the batch), as autodiff writes it; also returns a + b when
    ``sum_read_after`` (the sum then has a second reader)."""
    def step(a, b, x, w, bias):
        mean, var = batch_norm_stats(x)
        y = batch_norm(x, mean, var, w, bias, eps=EPS, training=True)
        if masked:
            y = tn.nn.functional.relu(y)
        g = a + b
        gy = threshold_backward(g, y, 0.0) if masked else g
        gx, gw, gb = batch_norm_backward(gy, x, mean, var, w, eps=EPS, training=True)
        return (gx, gw, gb, y) + ((g,) if sum_read_after else ())
    return step


def _inputs(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    # an offset mean: x - mean must stay a difference of nearby values
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    w = rng.uniform(0.5, 1.5, shape[1]).astype(dtype)
    bias = rng.uniform(-0.5, 0.5, shape[1]).astype(dtype)  # moves the mask
    return a, b, x, w, bias


def _torch_reference(masked, a, b, x, w, bias):
    """PyTorch's (grad_input, grad_weight, grad_bias, output) of [relu(]batch_norm(x)[)] for
    the output gradient a + b."""
    xt, wt, bt = (torch.from_numpy(v.copy()).requires_grad_(True) for v in (x, w, bias))
    y = torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True, eps=EPS)
    if masked:
        y = torch.relu(y)
    y.backward(torch.from_numpy(a) + torch.from_numpy(b))
    return xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy(), y.detach().numpy()


def _tol(dtype):
    return 1e-9 if dtype == np.float64 else 2e-4


def _check(compiled, step, masked, arrays, tol):
    """The compiled step against eager mode and PyTorch."""
    args = [tn.from_numpy(v) for v in arrays]
    with tn.no_grad():
        got = [t.numpy() for t in compiled(*args)]
        eager = [t.numpy() for t in step(*args)]
    want = _torch_reference(masked, *arrays)
    for i, (c, e) in enumerate(zip(got, eager)):
        np.testing.assert_allclose(c, e, rtol=tol, atol=tol, err_msg=f"output {i}")
    for i, (c, t) in enumerate(zip(got, want)):
        np.testing.assert_allclose(c, t, rtol=tol, atol=tol, err_msg=f"output {i}")
    if len(got) > len(want):  # the sum, returned
        np.testing.assert_array_equal(got[-1], arrays[0] + arrays[1])


def _kernels(source):
    """The fused backward kernels of a compiled step (their names)."""
    return re.findall(r"static void \w+_function_k\d+_(\w*batch_norm_backward)\(", source)


# name -> (input shape, dtype)
SHAPES = {
    "plane_shorter_than_a_run": ((3, 5, 7, 9), np.float32),
    "plane_longer_than_a_run": ((2, 3, 17, 19), np.float32),
    "resnet_stem_planes": ((2, 16, 32, 32), np.float32),
    "float64_short_plane": ((3, 4, 5, 6), np.float64),
    "float64_long_plane": ((2, 3, 16, 20), np.float64),
}


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_summed_gradient_matches_eager_and_torch(name, masked):
    shape, dtype = SHAPES[name]
    step = _step(masked, sum_read_after=False)
    compiled = tn.compile(step)
    _check(compiled, step, masked, _inputs(shape, dtype, 0), _tol(dtype))
    source = compiled.source()
    assert _kernels(source) == ["add_threshold_backward_batch_norm_backward" if masked else
                                "add_batch_norm_backward"]
    assert source.count(SUMMED) == 1 and source.count(MASKED) == int(masked)


def test_symbolic_batch_and_batch_one():
    """One specialisation for batches 3, 1 and 5."""
    step = _step(True, sum_read_after=False)
    compiled = tn.compile(step)
    for n in (3, 1, 5):
        _check(compiled, step, True, _inputs((n, 6, 10, 7), np.float32, n), 2e-4)
    assert len(compiled._specs) == 1
    assert "tn_N" in compiled.source() and SUMMED in compiled.source()


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_sum_with_a_second_reader_keeps_its_pass(masked):
    """The sum returned too: written by its own pass, the backward reads it."""
    step = _step(masked, sum_read_after=True)
    compiled = tn.compile(step)
    _check(compiled, step, masked, _inputs((3, 5, 7, 9), np.float32, 0), 2e-4)
    assert SUMMED not in compiled.source()
    assert not any(k.startswith("add") for k in _kernels(compiled.source()))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 4])
def test_threads_on_nan_arenas(monkeypatch, policy_cache, threads, batch):
    """Every call's work memory new and all NaN, the kernels split between threads however
    small (the images at batch 4, the channels at batch 1): a value a pass reads that no
    kernel of this call wrote shows in the results."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "memory_min_elements", 0)
    policy_cache("bn-backward-split")
    old = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        for masked in (True, False):
            step = _step(masked, sum_read_after=False)
            compiled = tn.compile(step, dynamic=False)
            _check(compiled, step, masked, _inputs((batch, 6, 9, 11), np.float32, batch), 2e-4)
            body = compiled.source().split(SUMMED)[1].split("\n}\n")[0]
            assert "omp_get_num_threads" in body  # (built to split the work)
    finally:
        tn.set_num_threads(old)


def _stem_and_block(lib, c):
    """The ResNet's stem and first block: y = relu(bn(conv(x))) is read by the block's first
    convolution and by its residual add, so its gradient is the sum of the two paths' (the
    block's output gradient masked by its relu, and the first convolution's input gradient),
    masked by y's relu, into the stem's batch-norm backward."""
    nn = lib.nn
    F = nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, c, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(c)
            self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.fc = nn.Linear(c, 10)

        def forward(self, x):
            y = F.relu(self.bn(self.conv(x)))
            z = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(y))))) + y)
            return self.fc(z.mean((2, 3)))
    return Net()


def _models(c, dtype):
    return twins_with_shifted_batch_norms(lambda lib: _stem_and_block(lib, c),
                                          ("bn", "bn1", "bn2"), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_step_of_stem_and_block(dtype):
    model, tmodel = _models(8, dtype)
    eager = _stem_and_block(tn, 8)
    if dtype == np.float64:
        eager = eager.double()
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((n, 3, 12, 10)).astype(dtype), rng.integers(0, 10, n))
               for n in (2, 1, 3)]
    step = sgd_steps_against_torch_and_eager(model, tmodel, eager, batches, _tol(dtype))
    source = step.source()
    assert source.count(SUMMED) == 1
    assert "add_threshold_backward_batch_norm_backward" in _kernels(source)
