"""Compiled code and grad mode under several Python threads, and the memory compiled modules
hold: each calling thread gets its own work memory, which is freed with the module."""
import gc
import os
import threading

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as nn
import tracenet.optim as optim

from test_ir import LeNet

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


# --- one compiled module, several threads --------------------------------------------------------
def test_one_compiled_lenet_under_no_grad_from_threads():
    net = _lenet().eval()
    xs = _inputs(N_THREADS)
    with tn.no_grad():
        expect = [net(x).numpy() for x in xs]
        compiled = tn.compile(net)
        compiled(xs[0])  # compiled once, before the threads start

    def work(i):
        with tn.no_grad():
            for _ in range(ROUNDS):
                np.testing.assert_allclose(compiled(xs[i]).numpy(), expect[i], rtol=1e-4,
                                           atol=1e-5)
    run_threads(work)


def _eager_grads(net, x, gy):
    out = net(x)
    grads = tn.autograd.grad(out, [x] + list(net.parameters()), gy)
    return out.detach().numpy(), [g.numpy() for g in grads]


def test_one_compiled_lenet_forward_and_backward_from_threads():
    net = _lenet()
    xs = [x.requires_grad_() for x in _inputs(N_THREADS)]
    rng = np.random.default_rng(2)
    gys = [tn.from_numpy(rng.standard_normal((4, 10)).astype(np.float32)) for _ in xs]
    expect = [_eager_grads(net, x, gy) for x, gy in zip(xs, gys)]
    compiled = tn.compile(net)
    _eager_grads(compiled, xs[0], gys[0])

    def work(i):
        for _ in range(ROUNDS):
            out, grads = _eager_grads(compiled, xs[i], gys[i])
            np.testing.assert_allclose(out, expect[i][0], rtol=1e-4, atol=1e-5)
            for g, e in zip(grads, expect[i][1]):
                np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    run_threads(work)


def test_two_compiled_copies_of_one_net_from_two_threads():
    # the same net compiled twice shares one generated library
    nets = [_lenet(), _lenet()]
    xs = _inputs(2, batch=8)
    with tn.no_grad():
        expect = [net(x).numpy() for net, x in zip(nets, xs)]
    copies = [tn.compile(net) for net in nets]
    with tn.no_grad():
        for c, x in zip(copies, xs):
            c(x)
    assert copies[0]._last.library.path == copies[1]._last.library.path

    def work(i):
        with tn.no_grad():
            for _ in range(ROUNDS * 2):
                np.testing.assert_allclose(copies[i](xs[i]).numpy(), expect[i], rtol=1e-4,
                                           atol=1e-5)
    run_threads(work, 2)


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiling_from_threads_at_once(dynamic):
    # every thread meets a new specialisation (its own batch size) at the same time, or, with
    # a symbolic batch size, the same one
    net = _lenet().eval()
    xs = [_inputs(1, batch=b)[0] for b in (1, 2, 3)]
    with tn.no_grad():
        expect = [net(x).numpy() for x in xs]
    compiled = tn.compile(net, dynamic=dynamic)

    def work(i):
        with tn.no_grad():
            np.testing.assert_allclose(compiled(xs[i]).numpy(), expect[i], rtol=1e-4, atol=1e-5)
    run_threads(work, 3)
    assert len(compiled.specialisations) == (1 if dynamic else 3)


# --- training steps ----------------------------------------------------------------------------
def test_compile_step_from_two_threads_on_two_nets():
    def setup():
        tn.manual_seed(0)
        net = LeNet()
        return net, optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    rng = np.random.default_rng(3)
    batches = [(tn.from_numpy(rng.standard_normal((8, 1, 32, 32)).astype(np.float32)),
                tn.from_numpy(rng.integers(0, 10, 8))) for _ in range(2)]
    steps = ROUNDS
    expect = []
    for x, y in batches:  # the eager loop, one net per batch
        net, opt = setup()
        for _ in range(steps):
            opt.zero_grad()
            loss = crit(net(x), y)
            loss.backward()
            opt.step()
        expect.append([p.detach().numpy().copy() for p in net.parameters()])
    pairs = [setup() for _ in batches]
    compiled = [tn.compile_step(lambda a, b, net=net: crit(net(a), b), opt)
                for net, opt in pairs]

    def work(i):
        for _ in range(steps):
            compiled[i](*batches[i])
    run_threads(work, 2)
    for (net, _), e in zip(pairs, expect):
        for p, ep in zip(net.parameters(), e):
            np.testing.assert_allclose(p.detach().numpy(), ep, rtol=1e-3, atol=1e-5)


# --- memory ------------------------------------------------------------------------------------
def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_work_memory_is_released_with_the_module():
    # a wide hidden layer: at this batch the intermediate alone is 128 MiB
    batch, hidden = 32768, 1024
    tn.manual_seed(0)
    x = tn.randn(batch, 8)
    gc.collect()
    base = _rss_bytes()
    net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 4))
    compiled = tn.compile(net)
    with tn.no_grad():
        for b in (batch, batch // 2, batch // 4):
            compiled(x[:b])
    assert _rss_bytes() - base > 100 * 2**20  # the work memory was really used
    del compiled, net
    gc.collect()
    assert _rss_bytes() - base < 40 * 2**20


def test_specialisations_of_one_module_share_work_memory():
    net = nn.Sequential(nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 4))
    compiled = tn.compile(net)
    with tn.no_grad():
        for b in (64, 32, 16, 8):
            compiled(tn.randn(b, 8))
    arenas = compiled._specs.arenas
    assert len(arenas) == 1  # one thread called: one arena, as large as the largest need
    assert arenas.largest() >= 64 * 256 * 4
