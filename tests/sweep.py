"""The ``sweep`` marker: a test's further cases, beyond those the default run keeps.

The default run (pyproject.toml: ``-m 'not fuzz and not sweep'``) keeps, for each test, the
cases that reach each code path it covers; the cases that repeat a path on more shapes,
dtypes, thread counts or combinations run with ``pytest -m sweep`` (or all of them with
``pytest -m 'not fuzz'``). A test names the cases it keeps::

    @sweep.keep(lambda p: p["name"] in ("resnet_16_32", "odd_channels"))
    @pytest.mark.parametrize("name", list(CASES))
    def test_...(name): ...

``p`` is the case's parameters (``item.callspec.params``, fixtures' parameters included);
tests/conftest.py marks every case for which it is false."""
import pytest


def keep(predicate):
    """The cases of the decorated test for which ``predicate(params)`` is false are ``sweep``."""
    return pytest.mark.sweep_keep.with_args(predicate)  # (a lone callable would be decorated)


def mark_sweep_cases(items):
    """Mark ``sweep`` each collected case its test's ``keep`` predicate leaves out."""
    for item in items:
        rule = item.get_closest_marker("sweep_keep")
        if rule is None:
            continue
        params = item.callspec.params if hasattr(item, "callspec") else {}
        if not rule.args[0](params):
            item.add_marker(pytest.mark.sweep)
