"""The fused cross entropy's rows in blocks of 8 (``templates/nll_loss_log_softmax.c.j2``): each
row's maximum, exponentials and sum, then the logarithms of the block's 8 sums as one vector
call, then each row's loss and gradient. A compiled training step follows eager and torch (loss
and every gradient) with batches around multiples of 8 (a short last block), ignored targets and
class weights inside a short block, every reduction, float64, a varying batch, blocks split
between 1-3 threads, NaN-filled work memory and AVX2 only; each test asserts that the kernel
takes its rows 8 at a time and computes the logarithms of a block together."""
import re

import numpy as np
import pytest

import tracenet as tn
from compile_checks import nan_filled_arenas
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from test_lstm_train_cross_entropy import Setup, _data, check, fused_kernels, run_case
from test_scan_threads import _restore_threads  # noqa: F401  (the thread-count fixture)
from tracenet.codegen.target import Parallelism


def takes_blocks_of_8(compiled):
    """Assert that the fused kernel runs its rows in blocks of 8, one vector of logarithms
    a block."""
    source = compiled.source()
    (name,) = fused_kernels(source)
    body = re.search(rf"static void {name}\([^)]*\)\n\{{\n(.*?)\n\}}\n", source, re.S)[1]
    assert re.search(r"for \(size_t n0 = 0; n0 < \(size_t\)\([^;]*\); n0 \+= 8\)", body)
    assert re.search(r"#pragma omp simd\n\s+for \(int r = 0; r < 8; r\+\+\)\n"
                     r"\s+logs\[r\] = \(\w+\)log\(sums\[r\]\);", body)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 17, 24])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batches_around_the_block(monkeypatch, n, dtype):
    nan_filled_arenas(monkeypatch)
    takes_blocks_of_8(run_case(n, 13, dtype, seed=n))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ignored_targets_and_weights_in_a_short_block(monkeypatch, reduction):
    nan_filled_arenas(monkeypatch)
    weight = np.random.default_rng(2).uniform(0.2, 2.0, 9).astype(np.float32)
    takes_blocks_of_8(run_case(19, 9, np.float32, ignored=4, weight=weight, ignore_index=3,
                               reduction=reduction))


def test_a_varying_batch(monkeypatch):
    nan_filled_arenas(monkeypatch)
    setup = Setup(90, np.float32)
    compiled = tn.compile(setup.step_fn())
    for n in (16, 3, 29, 1, 16):
        x, t = _data(n, 90, np.float32, n, ignored=n // 4)
        check(setup, compiled, x, t, np.float32, f"batch {n}")
    assert len(compiled._specs) == 1
    takes_blocks_of_8(compiled)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_blocks_split_between_threads(monkeypatch, threads):
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "compute_min_flops", 0)
    tn.set_num_threads(threads)
    compiled = run_case(45, 90, np.float32, seed=threads, ignored=5, calls=3)
    run_case(21, 7, np.float64, seed=threads, ignored=3, reduction="none")
    takes_blocks_of_8(compiled)
    assert "#pragma omp parallel for if(" in compiled.source()


def test_avx2_only(march, monkeypatch):
    nan_filled_arenas(monkeypatch)
    takes_blocks_of_8(run_case(37, 90, np.float32, ignored=3))
