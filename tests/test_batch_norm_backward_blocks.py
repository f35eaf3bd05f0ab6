"""The batch-norm backward's stashed walk (templates/norm_batch_norm_backward.c.j2,
``stashed``): where the backward's dx pass reads three tensors (the sum of two gradients and x,
or g and the x of two batch norms) and what it reads outgrows L2, blocks of channels whose sums
pass copies the gradient as the dx pass reads it (summed, masked) and x - mean into each
thread's scratch, the dx pass then reading that copy; the threads split the channels, so each
channel's sums come from one thread in one order.

Op-level steps (``tracenet.compile``) of the stashed forms (the sum of two gradients, masked or
not, and two batch norms of one gradient) against eager mode and PyTorch: float32 and float64,
channel counts no block size divides, planes shorter than a 256-value run, 1-D and 3-D inputs,
batch 1, a symbolic batch whose batches take either walk, work memory filled with NaN on 1-3
threads (the same bits on each), sizes that keep the image walk (a channel larger than the
stash, runs per image shorter than a page), and the forms reading two tensors (the gradient
alone or masked), never stashed."""
import numpy as np
import pytest

import sweep
import tracenet as tn
from compile_checks import nan_filled_arenas
from tracenet.ops.elementwise import threshold_backward
from tracenet.ops.normalization import batch_norm, batch_norm_backward, batch_norm_stats

torch = pytest.importorskip("torch")

EPS = 1e-5
STASHED = "the dx pass from the stash"  # (the stashed walk's comment in the kernel)
STASHED_FORMS = ("summed", "summed_masked", "pair")

# name -> (input shape, dtype): reads of more than 2 MB, blocks of 1-2 channels on one thread
STASHED_SHAPES = {
    "odd_channels": ((8, 13, 64, 64), np.float32),  # (blocks of 2 and one of 1)
    "float64": ((4, 13, 64, 64), np.float64),
    "batch_one": ((1, 13, 160, 160), np.float32),
    "sequence": ((32, 7, 1024), np.float32),  # (BatchNorm1d's (N, C, L))
    "volume": ((2, 7, 16, 32, 32), np.float32),
    # planes of fewer than 256 values (the sums in two vectors, then a scalar tail): blocks of
    # 22-33 channels
    "short_planes": ((40, 96, 7, 7), np.float32),
    "short_planes_float64": ((20, 96, 7, 7), np.float64),
}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _step(form):
    """The training-mode backward of ``form``: batch_norm(x) [relu'd] for the output gradient
    a [+ b]; ``pair``: two batch norms (of x and of x2) of the one gradient a."""
    masked = form.endswith("masked")
    summed = form.startswith("summed")

    def part(g, x, w, bias):
        mean, var = batch_norm_stats(x)
        y = batch_norm(x, mean, var, w, bias, eps=EPS, training=True)
        if masked:
            y = tn.nn.functional.relu(y)
            g = threshold_backward(g, y, 0.0)
        return batch_norm_backward(g, x, mean, var, w, eps=EPS, training=True)

    def step(a, b, x, x2, w, bias):
        if form == "pair":
            return part(a, x, w, bias) + part(a, x2, bias + 1, w)
        return part(a + b if summed else a, x, w, bias)
    return step


def _inputs(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    # offset means: x - mean must stay a difference of nearby values
    x, x2 = ((rng.standard_normal(shape) * 2 + 5).astype(dtype) for _ in range(2))
    w = rng.uniform(0.5, 1.5, shape[1]).astype(dtype)
    bias = rng.uniform(-0.5, 0.5, shape[1]).astype(dtype)  # (moves the mask)
    return a, b, x, x2, w, bias


def _torch_reference(form, a, b, x, x2, w, bias):
    """PyTorch's (grad_input, grad_weight, grad_bias) per batch norm of the form."""
    def part(g, x, w, bias):
        xt, wt, bt = (torch.from_numpy(v.copy()).requires_grad_(True) for v in (x, w, bias))
        y = torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True, eps=EPS)
        if form.endswith("masked"):
            y = torch.relu(y)
        y.backward(torch.from_numpy(g))
        return [xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()]
    if form == "pair":
        return part(a, x, w, bias) + part(a, x2, bias + 1, w)
    return part(a + b if form.startswith("summed") else a, x, w, bias)


def _tol(dtype):
    return 1e-9 if dtype == np.float64 else 2e-4


def _run(compiled, step, form, arrays):
    """The compiled step's outputs, checked against eager mode and PyTorch."""
    tol = _tol(arrays[0].dtype)
    args = [tn.from_numpy(v) for v in arrays]
    with tn.no_grad():
        got = [t.numpy() for t in compiled(*args)]
        eager = [t.numpy() for t in step(*args)]
    for i, (c, e, t) in enumerate(zip(got, eager, _torch_reference(form, *arrays))):
        np.testing.assert_allclose(c, e, rtol=tol, atol=tol, err_msg=f"output {i}")
        np.testing.assert_allclose(c, t, rtol=tol, atol=tol, err_msg=f"output {i}")
    return got


def _with_threads(threads, fn):
    old = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        return fn()
    finally:
        tn.set_num_threads(old)


# the default run: every form on the odd channels, and each other shape in one form (the forms
# taken in turn); the other pairs with -m sweep
DEFAULT_STASHED_FORM = {"float64": "summed_masked", "batch_one": "summed", "sequence": "pair",
                        "volume": "summed", "short_planes": "summed_masked",
                        "short_planes_float64": "pair"}


@sweep.keep(lambda p: p["name"] == "odd_channels" or DEFAULT_STASHED_FORM[p["name"]] == p["form"])
@pytest.mark.parametrize("form", STASHED_FORMS)
@pytest.mark.parametrize("name", list(STASHED_SHAPES))
def test_stashed_walk_matches_eager_and_torch(name, form):
    shape, dtype = STASHED_SHAPES[name]
    step = _step(form)
    compiled = tn.compile(step, dynamic=False)
    _with_threads(1, lambda: _run(compiled, step, form, _inputs(shape, dtype, 0)))
    assert STASHED in compiled.source()


@pytest.mark.parametrize("form", STASHED_FORMS)
def test_threads_on_nan_arenas_give_the_same_bits(monkeypatch, form):
    """1-3 threads split the 17 channels (5/6/6 at 3: blocks that end mid-share), each reading
    more than L2 holds (8 MB in all); every call's work memory is new and all NaN; each
    channel's sums come from one thread in one order, so every thread count gives the same
    bits."""
    nan_filled_arenas(monkeypatch)
    step = _step(form)
    compiled = tn.compile(step, dynamic=False)
    arrays = _inputs((10, 17, 64, 64), np.float32, 1)
    results = [_with_threads(t, lambda: _run(compiled, step, form, arrays)) for t in (1, 2, 3)]
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


def test_symbolic_batch_takes_either_walk():
    """One build, one thread: batches 8 and 6 read more than 2 MB (stashed), 1 and 2 less (the
    image walk)."""
    step = _step("summed_masked")
    compiled = tn.compile(step)
    for batch in (8, 1, 6, 2):
        _with_threads(1, lambda: _run(compiled, step, "summed_masked",
                                      _inputs((batch, 13, 64, 64), np.float32, batch)))
    assert len(compiled._specs) == 1
    assert "tn_N" in compiled.source() and STASHED in compiled.source()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(64, 3, 64, 64), (40000, 16)],
                         ids=["channel_larger_than_the_stash", "runs_shorter_than_a_page"])
def test_image_walk_where_blocks_do_not_pay(shape, threads):
    """A channel of 2 MB (more than the stash holds) and (N, C) rows (a block's run per image of
    a few values) keep the image walk. (Unmasked: among 640000 (N, C) values some relu input
    lies within rounding of 0 against PyTorch's, as it does before the stashed walk.)"""
    for form in ("plain", "summed", "pair"):
        step = _step(form)
        compiled = tn.compile(step, dynamic=False)
        _with_threads(threads, lambda: _run(compiled, step, form, _inputs(shape, np.float32, 2)))


@pytest.mark.parametrize("form", ["plain", "masked"])
def test_two_reads_keep_the_image_walk(form):
    """The gradient alone, or masked: the dx pass reads g and x, and stashing them stores as
    much as it saves reading (slower with AVX2 only)."""
    shape, dtype = STASHED_SHAPES["odd_channels"]
    step = _step(form)
    compiled = tn.compile(step, dynamic=False)
    _with_threads(2, lambda: _run(compiled, step, form, _inputs(shape, dtype, 0)))
    assert STASHED not in compiled.source()
