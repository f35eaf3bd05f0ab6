"""tracenet.set_num_threads / get_num_threads: the OpenMP threads of compiled code and the BLAS
threads of eager mode."""
import ctypes
import ctypes.util
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import tracenet as tn
from tracenet.runtime import threads

from test_ir import LeNet


@pytest.fixture(autouse=True)
def _restore():
    before, adaptive = tn.get_num_threads(), list(threads._adaptive)
    yield
    tn.set_num_threads(before)
    threads._adaptive[:] = adaptive
    threads.set_blas_threads(1)


def _cores():
    return len(os.sched_getaffinity(0))


def test_default_is_the_cores_this_process_may_use():
    if "OMP_NUM_THREADS" in os.environ:
        pytest.skip("OMP_NUM_THREADS sets the default")
    assert threads._default() == _cores()


def test_eager_blas_runs_on_the_calling_thread_by_default():
    if threads.blas_threads() is None:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    assert threads.blas_threads() == 1


def test_set_num_threads_sets_compiled_and_blas_threads():
    libgomp = ctypes.util.find_library("gomp")
    if libgomp is None:
        pytest.skip("no libgomp")
    gomp = ctypes.CDLL(libgomp)
    tn.manual_seed(0)
    net = LeNet()
    compiled = tn.compile(net)
    x = tn.randn(64, 1, 32, 32)  # large enough for parallel kernels
    with tn.no_grad():
        expect = net(x).numpy()
        for n in (1, 2, 3):
            tn.set_num_threads(n)
            assert tn.get_num_threads() == n
            np.testing.assert_allclose(compiled(x).numpy(), expect, rtol=1e-4, atol=1e-5)
            if "omp_set_num_threads(threads)" in compiled.source():
                # the entry point handed the count to OpenMP for this thread
                assert gomp.omp_get_max_threads() == n
            if threads.blas_threads() is not None:
                assert threads.blas_threads() == n
    assert "omp_set_num_threads(threads)" in compiled.source() or \
        "parallel for if(0)" in compiled.source()


def test_bad_thread_counts_raise_as_in_torch():
    with pytest.raises(RuntimeError, match="expects a positive integer"):
        tn.set_num_threads(0)
    with pytest.raises(RuntimeError, match="expects an int, but got float"):
        tn.set_num_threads(1.5)


def _watch_on(tmp_path, text, cores=2):
    path = tmp_path / "loadavg"
    path.write_text(text)
    watch = threads.LoadWatch(cores, period=0.0)
    watch._loadavg = os.open(path, os.O_RDONLY)
    watch._own_running = lambda: 1  # this thread only
    watch._stat = None  # the count alone (the CPU-time confirmation is tested below)
    return watch, path


def test_compiled_code_leaves_the_cores_other_processes_use(tmp_path):
    watch, path = _watch_on(tmp_path, "0.5 0.5 0.5 1/200 42\n")
    assert watch.free_cores(1.0) == 2  # only this thread runs
    path.write_text("4.0 4.0 4.0 4/200 42\n")  # three others running
    watch.free_cores(2.0)
    assert watch.free_cores(3.0) == 1  # the median of the last samples moved
    path.write_text("0.5 0.5 0.5 1/200 42\n")
    watch.free_cores(4.0)
    watch.free_cores(5.0)
    assert watch.free_cores(6.0) == 2


def test_load_is_sampled_at_most_once_a_period(tmp_path):
    watch, path = _watch_on(tmp_path, "4.0 4.0 4.0 4/200 42\n")
    watch.period = 10.0
    assert watch.free_cores(100.0) == 1
    path.write_text("0.5 0.5 0.5 1/200 42\n")
    assert watch.free_cores(105.0) == 1  # within the period: the last answer


def test_compiled_calls_follow_the_watch_within_and_after_a_period(tmp_path, monkeypatch):
    # (compiled_threads reads the watch's last answer itself within a period)
    watch, path = _watch_on(tmp_path, "4.0 4.0 4.0 4/200 42\n")
    watch.period = 10.0
    monkeypatch.setattr(threads, "_watch", watch)
    monkeypatch.setattr(threads, "_adaptive", [True])
    monkeypatch.setattr(threads, "_threads", [2])
    assert threads.compiled_threads(100.0) == 1
    path.write_text("0.5 0.5 0.5 1/200 42\n")
    assert threads.compiled_threads(105.0) == 1  # within the period: the last answer
    for now in (111.0, 122.0, 133.0):  # sampled again: the median moves back
        got = threads.compiled_threads(now)
    assert got == 2
    monkeypatch.setattr(threads, "_threads", [1])
    assert threads.compiled_threads(134.0) == 1  # never more than the set count


def test_a_set_thread_count_is_used_as_given(monkeypatch):
    monkeypatch.setattr(threads, "_adaptive", [True])
    tn.set_num_threads(2)
    assert threads._adaptive == [False]
    assert threads.compiled_threads() == 2


EXIT_AFTER_A_PARALLEL_REGION = """
import sys
sys.path.insert(0, sys.argv[1])
import tracenet as tn
tn.set_num_threads(2)
lin = tn.compile(tn.nn.Linear(512, 512))
x = tn.randn(256, 512)
with tn.no_grad():
    for _ in range(3):
        y = lin(x)
assert "omp parallel" in lin.source()
print("done")
"""


def test_a_process_exits_cleanly_right_after_a_parallel_region(tmp_path):
    """OpenMP's worker threads still spin after the last region (always, with
    OMP_WAIT_POLICY=active); unloading the libraries at exit used to unload libgomp under them
    and the process died of a segmentation fault after its last line."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # (without the suite's short GOMP_SPINCOUNT, which would override the wait policy)
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    env.update(TRACENET_CACHE_DIR=str(tmp_path), OMP_WAIT_POLICY="active", OMP_NUM_THREADS="2")
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", EXIT_AFTER_A_PARALLEL_REGION, root],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]


def test_a_thread_started_since_the_last_sample_counts_as_this_process(tmp_path):
    """A thread of this process that starts between two samples and runs is this process's,
    not another process keeping a core: the thread list is read at every sample."""
    import hashlib
    import threading
    watch = threads.LoadWatch(2, period=0.0)
    watch._list_threads()
    assert watch._own_running() >= 1
    stop = threading.Event()

    def spin():  # (hashing a large buffer runs without the interpreter lock)
        data = bytes(1 << 22)
        while not stop.is_set():
            hashlib.sha256(data).digest()
    t = threading.Thread(target=spin)
    t.start()
    try:
        deadline = time.monotonic() + 0.5  # (the list used to be read once a second)
        seen = 0
        while time.monotonic() < deadline and seen < 2:
            watch._list_threads()  # (as every sample does)
            seen = max(seen, watch._own_running())  # the spinning thread and this one
        assert seen == 2
    finally:
        stop.set()
        t.join()


def _stat_line(busy_s, idle_s):
    """A /proc/stat whose busy time (user, nice, system, irq, softirq) is ``busy_s`` seconds."""
    t = threads.TICKS
    return (f"cpu  {int(busy_s * t)} 0 0 {int(idle_s * t)} 0 0 0 0 0 0\n"
            "cpu0 0 0 0 0 0 0 0 0 0 0\nintr 0\n")


@pytest.mark.parametrize("others_busy, free", [(0.0, 2), (0.1, 2), (1.0, 1)])
def test_a_core_counts_as_taken_only_if_other_processes_used_its_time(tmp_path, monkeypatch,
                                                                        others_busy, free):
    """Three other tasks runnable at every sample, but over the last window other processes
    used ``others_busy`` cores of CPU time (the machine's busy time less this process's one
    core): tasks runnable for a moment (kernel threads, processes starting or exiting) leave
    the cores free."""
    watch, path = _watch_on(tmp_path, "4.0 4.0 4.0 4/200 42\n")
    stat = tmp_path / "stat"
    stat.write_text(_stat_line(0.0, 10.0))
    watch._stat = os.open(stat, os.O_RDONLY)
    own = [0.0]
    monkeypatch.setattr(threads, "own_cpu_seconds", lambda: own[0])
    for k in range(8):  # a sample every 50 ms: this process busy on one core throughout
        now = 100.0 + 0.05 * k
        own[0] = 0.05 * k
        stat.write_text(_stat_line((1.0 + others_busy) * 0.05 * k, 10.0))
        got = watch.free_cores(now)
        if now - 100.0 < watch.window / 2:
            assert got == 1  # no window yet: the count alone
    assert got == free


def test_without_proc_stat_the_count_alone_decides(tmp_path):
    watch, path = _watch_on(tmp_path, "4.0 4.0 4.0 4/200 42\n")
    assert watch._stat is None
    for k in range(8):
        got = watch.free_cores(100.0 + 0.05 * k)
    assert got == 1
