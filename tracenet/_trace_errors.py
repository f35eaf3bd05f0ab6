"""What tracing reports when traced code needs a concrete value. Kept apart from
``tracenet.trace`` so that ``Tensor`` (below the tracer) can raise it."""
import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class TraceError(RuntimeError):
    """Raised when traced code needs a concrete value (data-dependent control flow)."""


def user_location():
    """(filename, lineno) of the innermost frame outside tracenet: where the user's code is."""
    f = sys._getframe(1)
    while f is not None:
        fn = f.f_code.co_filename
        if not os.path.abspath(fn).startswith(_PACKAGE_DIR + os.sep):
            return (fn, f.f_lineno)
        f = f.f_back
    return None


def data_dependent(what):
    loc = user_location()
    where = f" at {loc[0]}:{loc[1]}" if loc else ""
    raise TraceError(
        f"{what} needs the value of a traced tensor{where}, but tracing only knows shapes and "
        "dtypes: data-dependent Python control flow (if/while on tensor values, .item(), "
        ".tolist(), .numpy(), bool()) cannot be compiled. Run this module in eager mode (call it "
        "without tracenet.compile), or move the data-dependent part outside forward.")
