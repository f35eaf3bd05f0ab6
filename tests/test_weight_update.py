"""A linear layer's backward fused with its SGD update (fusion group ``weight_update``,
``codegen/lowerings/weight_update.py``): at a batch of one, one pass over W computes the input
gradient with the old W, the weight gradient and the update, split between threads by blocks
of W's rows as the layer's forward splits them. Whole training steps under
``tracenet.compile(step_fn)`` leave the parameters, ``.grad`` and the momentum buffers as the
eager loop (and PyTorch) does, over several steps, at batch 1 and at a symbolic batch."""
import re

import numpy as np
import pytest

import sweep
import tracenet as tn
from tracenet.codegen.target import Parallelism
from tracenet.runtime import target as runtime_target

from compile_checks import nan_filled_arenas

torch = pytest.importorskip("torch")

# SGD settings: each switch of the update on its own
VARIANTS = {
    "momentum": dict(lr=0.05, momentum=0.9),
    "plain": dict(lr=0.05),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "dampening": dict(lr=0.05, momentum=0.8, dampening=0.3),
    "weight_decay": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
    "maximize": dict(lr=0.05, momentum=0.9, maximize=True),
}
# widths: LeNet's fully connected layers, odd ones (rows not a multiple of eight, columns
# past the last vector), and layers of 7, 6, 5, 4 and 3 rows (the one-pass kernel takes four
# rows at a time: every remainder, and fewer rows than four)
WIDTHS = {"lenet": (400, 120, 84, 10), "odd": (37, 131, 67, 19, 5),
          "rows_mod_4": (9, 7, 6, 5, 4, 3)}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _mlp(lib, widths, seed):
    lib.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [lib.nn.Linear(a, b)] + ([lib.nn.ReLU()] if i < len(widths) - 2 else [])
    return lib.nn.Sequential(*layers)


class _Loop:
    """A model, its SGD and the ordinary training step; ``run`` is eager or compiled."""

    def __init__(self, lib, widths, kwargs, dtype, compiled):
        self.lib = lib
        self.model = _mlp(lib, widths, 0)
        if lib is torch:  # the same initial weights as tracenet's
            for p, q in zip(self.model.parameters(), _mlp(tn, widths, 0).parameters()):
                p.data = torch.from_numpy(q.detach().numpy().copy())
        self.model = self.model.double() if dtype == np.float64 else self.model
        self.opt = opt = lib.optim.SGD(self.model.parameters(), **kwargs)
        model, crit = self.model, lib.nn.CrossEntropyLoss()

        def step(x, y):  # (compile finds the model and optimizer among its free variables)
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            return loss
        self.run = tn.compile(step) if compiled else step

    def __call__(self, x, y):
        return float(self.run(self.lib.from_numpy(x), self.lib.from_numpy(y)).detach())

    def state(self):
        """Parameters, gradients and momentum buffers, as numpy arrays."""
        out = []
        for p in self.model.parameters():
            out += [p.detach().numpy(), p.grad.numpy()]
            buf = self.opt.state[p].get("momentum_buffer")
            if buf is not None:
                out.append(buf.numpy())
        return out


def _batches(widths, sizes, dtype):
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((n, widths[0])).astype(dtype), rng.integers(0, widths[-1], n))
            for n in sizes]


def _train_and_compare(widths, kwargs, dtype, sizes, against_torch=False):
    """Steps of the compiled loop against the eager one (and PyTorch's), all compared after
    every step; returns the compiled loop."""
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    eager = _Loop(tn, widths, kwargs, dtype, compiled=False)
    compiled = _Loop(tn, widths, kwargs, dtype, compiled=True)
    ref = _Loop(torch, widths, kwargs, dtype, compiled=False) if against_torch else None
    for step, (x, y) in enumerate(_batches(widths, sizes, dtype)):
        np.testing.assert_allclose(compiled(x, y), eager(x, y), **tol)
        expected = eager.state()
        for i, (got, want) in enumerate(zip(compiled.state(), expected)):
            np.testing.assert_allclose(got, want, **tol, err_msg=f"step {step}, array {i}")
        if ref is not None:
            ref(x, y)
            for i, (got, want) in enumerate(zip(compiled.state(), ref.state())):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                                           err_msg=f"torch, step {step}, array {i}")
    return compiled


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sgd_variants_at_batch1_match_eager(variant):
    """Four steps at batch one, each SGD switch: the one-pass kernels are taken (the batch is
    symbolic, one at run time) and give the eager loop's numbers."""
    loop = _train_and_compare(WIDTHS["lenet"], VARIANTS[variant], np.float32, [1] * 4)
    source = loop.run.source()
    # every layer's update, and the input gradients of all but the first layer, are fused
    assert len(re.findall(r"static void \w+_gemm_sgd_step_one\(", source)) == 3
    assert len(re.findall(r"static void \w+_gemm_threshold_backward_gemm_sgd_step\(",
                          source)) == 2


# the default run: every width in float32, the odd widths in float64; float64's LeNet and rows
# mod 4 with -m sweep
@sweep.keep(lambda p: p["dtype"] == np.float32 or p["name"] == "odd")
@pytest.mark.parametrize("name", list(WIDTHS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch1_against_torch(name, dtype):
    """Momentum SGD at batch one, float32 and float64, against eager and PyTorch."""
    _train_and_compare(WIDTHS[name], VARIANTS["momentum"], dtype, [1] * 4, against_torch=True)


# the default run: momentum; nesterov and weight decay (each switch at batch 1 in
# test_sgd_variants_at_batch1_match_eager) with -m sweep
@sweep.keep(lambda p: p["variant"] == "momentum")
@pytest.mark.parametrize("variant", ["momentum", "nesterov", "weight_decay"])
def test_symbolic_batch_leaves_one_pass_for_the_gemms(variant):
    """Built at batch one, run at batches 3, 1, 5, 1: other batch sizes take the GEMM kernels
    in the same compiled step (no retrace), and the results follow eager's throughout."""
    loop = _train_and_compare(WIDTHS["odd"], VARIANTS[variant], np.float32, [1, 3, 1, 5, 1])
    assert "(tn_N) == 1" in loop.run.source()


def test_built_at_a_larger_batch_then_run_at_one():
    """Traced at batch 4 (the one-pass code is compiled in for a symbolic batch), then run at
    one: the same numbers as eager."""
    _train_and_compare(WIDTHS["lenet"], VARIANTS["momentum"], np.float32, [4, 1, 1, 4])



@pytest.fixture
def _nan_arenas_all_split(monkeypatch, policy_cache):
    """Every call's work memory is new and all NaN (bytes 0xFF); every layer's update and
    forward split W's rows between threads, however small."""
    if not runtime_target.current().openmp:
        pytest.skip("no OpenMP here")
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "weight_update_min_elements", 0)
    monkeypatch.setattr(Parallelism, "weight_update_min_rows", 0)
    policy_cache("weight-update-split")  # builds of this policy apart
    before = tn.get_num_threads()
    yield
    tn.set_num_threads(before)


# the default run: the odd widths (rows not in eights) on 1-3 threads; LeNet's with -m sweep
@sweep.keep(lambda p: p["name"] == "odd")
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("name", ["lenet", "odd"])  # (layers wide enough to split the forward)
def test_threads_split_rows_in_nan_arena(_nan_arenas_all_split, threads, name):
    """Each thread's rows, in a NaN-filled arena, with a new batch every step: a row no thread
    wrote would keep the last step's gradient, a partial sum read before it was written (or
    one thread's rows written by another from stale data) would show as NaN or a wrong value.
    Three threads split rows unevenly (blocks of eight rows); the forward splits alike."""
    tn.set_num_threads(threads)
    loop = _train_and_compare(WIDTHS[name], VARIANTS["momentum"], np.float32, [1, 1, 3, 1])
    source = loop.run.source()
    assert source.count("#pragma omp barrier") >= 2  # (each input gradient's partial sums)
    # the forward kernels split W's rows as the updates do
    assert len(re.findall(r"b's rows split between threads", source)) >= 2


def test_rows_split_is_a_partition():
    """The blocks of rows the threads own cover every row once, in blocks of eight but the
    last, for any thread count (the forward and the update use the same macro)."""
    from tracenet.codegen.templates import environment
    macro = environment().from_string(
        '{% import "_rows_split.c.j2" as s %}{{ s.rows(M, "r0", "r1", "nt", "t") }}')
    for m in (1, 5, 8, 67, 120, 131):
        text = macro.render(M=m)
        first = re.search(r"const int r0 = (.*);", text).group(1).replace("/", "//")
        last, other = re.search(r"const int r1 = t == nt - 1 \? (\d+) : (.*);", text).groups()
        for nt in range(1, 7):
            rows = []
            for t in range(nt):
                a = eval(first, {"t": t, "nt": nt})
                b = int(last) if t == nt - 1 else eval(other.replace("/", "//"), {"t": t, "nt": nt})
                assert a % 8 == 0 and (b % 8 == 0 or b == m)
                rows += list(range(a, b))
            assert rows == list(range(m)), (m, nt)
