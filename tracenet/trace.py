"""Tracing placeholder: the error raised when traced code needs a concrete value."""


class TraceError(RuntimeError):
    pass


def data_dependent(what):
    raise TraceError(f"{what} needs a concrete value, which a traced tensor does not have; "
                     "run this code in eager mode")
