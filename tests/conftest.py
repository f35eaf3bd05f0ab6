"""The suite's processes ignore a prebuilt directory of this checkout (``python -m
tracenet.runtime.prebuild``): they use the session's own (``shared_prebuilt``), built once for
all workers, as an installed package uses the one its build wrote. Tests of the cache itself,
which count compiler runs or look for the GEMM objects in it, turn it off
(``no_prebuilt``); tests/test_prebuilt.py points ``TRACENET_PREBUILT`` at its own."""
import os
import subprocess
import sys

os.environ["TRACENET_PREBUILT"] = "0"
# OpenMP threads (compiled code's libgomp and torch's) spin for a while after each parallel
# region before they sleep (GOMP_SPINCOUNT 300000 by default); beside the other worker of the
# suite that spinning held the cores the next call's threads needed, and 20 two-thread tests
# of two files took 90 s instead of 56. Results do not depend on it. (Set before torch and the
# first compiled library load libgomp; the workers inherit it.)
os.environ.setdefault("GOMP_SPINCOUNT", "1000")


import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _session_dir(tmp_path_factory):
    """The directory shared by the session's processes (pytest-xdist's workers each have one
    of their own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def shared_prebuilt(tmp_path_factory):
    """Point ``TRACENET_PREBUILT`` at one prebuilt directory (the compiler probe's record and
    the GEMM objects) for the whole session, built by the first process that gets here while
    the others wait for it. Most tests compile into a cache directory of their own, and each
    of those probed the compiler and compiled the GEMM objects it needed again (all eight:
    2.9 s of gcc; in tests/test_warm_start.py 21 of its 31 gcc seconds). A compile for another
    compiler, CPU or set of flags (a wrapper ``CC``, ``TRACENET_MARCH``) does not match its
    keys and builds its own, as before. Without a working compiler it is left off."""
    from tracenet.runtime.cache import locked
    d = _session_dir(tmp_path_factory) / "prebuilt"
    done = d / "complete"
    with locked(str(d)):  # (the lock file is prebuilt.lock, beside it)
        if not done.exists():
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
            built = subprocess.run([sys.executable, "-m", "tracenet.runtime.prebuild", str(d)],
                                   env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL).returncode == 0
            if built:
                done.touch()
    if done.exists():
        os.environ["TRACENET_PREBUILT"] = str(d)
    yield


@pytest.fixture
def no_prebuilt(monkeypatch):
    """The cache alone, as without a prebuilt directory: for tests of the cache's own files
    and compiler runs."""
    monkeypatch.setenv("TRACENET_PREBUILT", "0")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Before ``-m`` selects: the cases a test's ``sweep.keep`` leaves out are ``sweep``."""
    from sweep import mark_sweep_cases
    mark_sweep_cases(items)


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
        d = _session_dir(tmp_path_factory) / f"cache-{name}"
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
