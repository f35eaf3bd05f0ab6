"""A table projection's backward in one kernel (the ``table_gradient`` group of
``passes/fusion.py``, ``codegen/lowerings/embedding.py``): the embedding table's gradient, its
column sum (the input bias's gradient) and the two products that read it (the table's and the
input weight's gradients). One thread computes the gradient and its sum, then the threads
run one product each, or split each product's rows when the products are large enough to
split. Training
steps of an embedding -> RNN -> linear tagger under Adam (SGD's fused weight updates take the
products instead) follow eager and torch (time-major and batch
first, float32 and float64, batch 1, a varying batch, NaN-filled work memory, one to three
threads, AVX2 only); each test asserts the fused kernel was compiled."""
import re

import numpy as np
import pytest

import sweep
import tracenet as tn
from tracenet.codegen.target import Parallelism

from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from test_lstm_train_batch_first import Step, follows_in_a_step
from test_scan_fused import F32, F64, pair, tokens
from test_scan_threads import _restore_threads  # noqa: F401  (the thread-count fixture)
from compile_checks import nan_filled_arenas

torch = pytest.importorskip("torch")

KERNEL = r"static void (\w+_embedding_backward_gemm_gemm(?:_sum)?)\(([^)]*)\)"


def fused(step):
    """The fused kernels' names in the source of the step's last call (a step of fewer
    tokens than table rows has no table projection)."""
    source = step.compiled.source()
    return [name for name, _ in re.findall(KERNEL, source)]


# the default run: each cell time-major in float32, batch first (RNN) and float64 (GRU) once
# (LSTM batch first in test_threads_run_the_products); the other combinations with -m sweep
DEFAULT_CELLS = {("LSTM", False, False), ("GRU", False, False), ("RNN", False, False),
                 ("RNN", True, False), ("GRU", False, True)}


@sweep.keep(lambda p: (p["name"], p["batch_first"], p["f64"]) in DEFAULT_CELLS)
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("f64", [False, True])
def test_a_table_projection_s_backward_is_one_kernel(monkeypatch, name, batch_first, f64):
    nan_filled_arenas(monkeypatch)
    th, ours = pair(name, f64=f64, batch_first=batch_first)
    step = Step(ours, tn.optim.Adam)
    for batch, length, seed in ((4, 7, 0), (1, 5, 1), (6, 3, 2)):
        follows_in_a_step(th, ours, step, tokens(batch, length, batch_first, seed),
                          F64 if f64 else F32)
    # the last call's build (6 x 3 tokens: more than the table's rows), with the input bias's
    # gradient: the table gradient's column sum
    (kernel,) = fused(step)
    assert kernel.endswith("_sum")


@pytest.mark.parametrize("split_products", [False, True])
def test_threads_run_the_products(monkeypatch, tmp_path, split_products):
    """One to three threads, the kernel split however small: one product per thread, or
    (products worth splitting) each product's rows split between the threads."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "compute_min_flops", 0)
    if split_products:
        monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
        monkeypatch.setattr(Parallelism, "gemm_min_rows", 0)
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path))
    th, ours = pair("LSTM", batch_first=True)
    step = Step(ours, tn.optim.Adam)
    for n in (2, 3, 1):
        tn.set_num_threads(n)
        for batch, length in ((20, 5), (3, 6)):
            follows_in_a_step(th, ours, step, tokens(batch, length, True, n + batch), F32)
    source = step.compiled.source()
    kernel = fused(step)[0]
    body = re.search(rf"static void {kernel}\([^)]*\)\n\{{\n(.*?)\n\}}\n", source, re.S).group(1)
    assert "#pragma omp parallel if(1)" in body
    assert ("each split by rows between the threads" in body) == split_products


def test_avx2_only(monkeypatch, march):
    nan_filled_arenas(monkeypatch)
    th, ours = pair("LSTM", batch_first=True)
    step = Step(ours, tn.optim.Adam)
    follows_in_a_step(th, ours, step, tokens(5, 6, True, 3), F32)
    assert len(fused(step)) == 1


def test_an_index_out_of_range_raises_eager_s_error(monkeypatch):
    nan_filled_arenas(monkeypatch)
    th, ours = pair("LSTM")
    step = Step(ours, tn.optim.Adam)
    follows_in_a_step(th, ours, step, tokens(3, 4, False, 0), F32)
    bad = tokens(3, 4, False, 1)
    bad[2, 1] = 11
    weights = np.ones(bad.shape + (11,), np.float32)
    with pytest.raises(IndexError):
        step(bad, weights)
    with pytest.raises(IndexError):
        ours(tn.from_numpy(bad))
    assert len(fused(step)) == 1
