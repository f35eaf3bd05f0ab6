"""The suite's processes ignore a prebuilt directory (``python -m tracenet.runtime.prebuild``
in this checkout): tests that count compiler runs expect the cache alone. The prebuilt path
has its own tests (tests/test_prebuilt.py), which point ``TRACENET_PREBUILT`` at theirs."""
import os

os.environ["TRACENET_PREBUILT"] = "0"
# OpenMP threads (compiled code's libgomp and torch's) spin for a while after each parallel
# region before they sleep (GOMP_SPINCOUNT 300000 by default); beside the other worker of the
# suite that spinning held the cores the next call's threads needed, and 20 two-thread tests
# of two files took 90 s instead of 56. Results do not depend on it. (Set before torch and the
# first compiled library load libgomp; the workers inherit it.)
os.environ.setdefault("GOMP_SPINCOUNT", "1000")


import pytest  # noqa: E402


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject.toml): one worker per core, except for tests of one file, which
    run in this process: starting the workers (each importing torch) doubled a single test's
    time (18 -> 36 s on the loaded machine)."""
    files = {arg.split("::", 1)[0] for arg in config.args}
    if len(files) == 1 and os.path.isfile(next(iter(files))):
        return 0
    return None  # (xdist's own answer: the cores)


@pytest.fixture
def policy_cache(tmp_path_factory, monkeypatch):
    """``policy_cache(name)`` points ``TRACENET_CACHE_DIR`` at this process's cache for builds
    under the compile policy ``name`` (a test that changes a threshold or the target), apart
    from builds under the usual one and shared by the tests of that policy: a directory per
    test probed the compiler and built the GEMM objects again each time, and built the same
    library once per thread count. Sharing is safe because a library's file is named by the
    hash of its source and flags, and is built under a per-file lock (a second process waits
    and reuses it). The session's pytest-xdist workers share the directory too (a case on one
    thread and its twin on two often run on different workers, and built the same library
    twice); the graph cache is off there, so no test reads a graph another process traced."""
    def use(name):
        base = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            base = base.parent  # (the session's directory, above the worker's own)
        d = base / f"cache-{name}"
        monkeypatch.setenv("TRACENET_CACHE_DIR", str(d))
        monkeypatch.setenv("TRACENET_GRAPH_CACHE", "0")
        return d
    return use


@pytest.fixture
def nan_arenas_split(monkeypatch, policy_cache):
    """Every call's work memory is new and all NaN, and every kernel that can split its work
    between threads does, however small: an output a thread leaves unwritten shows as NaN."""
    import tracenet as tn
    from compile_checks import nan_filled_arenas
    from tracenet.codegen.target import Parallelism
    from tracenet.runtime import target as runtime_target
    if not runtime_target.current().openmp:
        pytest.skip("no OpenMP here")
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "compute_min_flops", 0)
    policy_cache("nan-arenas-split")  # builds of this policy apart
    before = tn.get_num_threads()
    yield
    tn.set_num_threads(before)
