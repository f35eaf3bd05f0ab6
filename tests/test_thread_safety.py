"""Grad mode under several Python threads."""
import threading

import numpy as np
import pytest

import tracenet as tn

N_THREADS = 4
ROUNDS = 15


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def run_threads(work, n=N_THREADS):
    """``work(i)`` in ``n`` threads started together; re-raises the first failure."""
    errors = []
    start = threading.Barrier(n)

    def body(i):
        try:
            start.wait()
            work(i)
        except BaseException as e:  # noqa: B036 (reported in the main thread)
            errors.append(e)
    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _inputs(n, batch=4):
    rng = np.random.default_rng(1)
    return [tn.from_numpy(rng.standard_normal((batch, 1, 32, 32)).astype(np.float32))
            for _ in range(n)]


def _lenet():
    tn.manual_seed(0)
    return LeNet()


# --- grad mode ---------------------------------------------------------------------------------
def test_grad_mode_is_per_thread():
    inside, done = threading.Event(), threading.Event()
    seen = {}

    def other():
        with tn.no_grad():
            seen["other"] = tn.is_grad_enabled()
            inside.set()
            done.wait(10)
            a = tn.ones(3, requires_grad=True)
            seen["other_grad_fn"] = (a * 2).grad_fn
    t = threading.Thread(target=other)
    t.start()
    try:
        assert inside.wait(10)
        assert tn.is_grad_enabled()  # the other thread's no_grad does not reach this one
        x = tn.ones(3, requires_grad=True)
        y = (x * 3).sum()
        assert y.grad_fn is not None and y.requires_grad
        y.backward()
        np.testing.assert_array_equal(x.grad.numpy(), [3, 3, 3])
    finally:
        done.set()
        t.join()
    assert seen["other"] is False
    assert seen["other_grad_fn"] is None  # and this thread's grad mode does not reach it


def test_grad_mode_of_a_new_thread_is_enabled():
    seen = []
    with tn.no_grad():
        t = threading.Thread(target=lambda: seen.append(tn.is_grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]
