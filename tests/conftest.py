"""The suite's processes ignore a prebuilt directory (``python -m tracenet.runtime.prebuild``
in this checkout): tests that count compiler runs expect the cache alone. The prebuilt path
has its own tests (tests/test_prebuilt.py), which point ``TRACENET_PREBUILT`` at theirs."""
import os

os.environ["TRACENET_PREBUILT"] = "0"


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
def nan_arenas_split(monkeypatch, tmp_path):
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
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path))  # builds of this policy apart
    before = tn.get_num_threads()
    yield
    tn.set_num_threads(before)
