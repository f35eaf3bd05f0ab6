"""Helpers for the C expressions of elementwise ops (``Op.c_expr``).

A C expression is a function ``(args, attrs, ctype) -> str``: ``args`` are the C expressions of
the op's inputs (already indexed for broadcasting), ``ctype`` is the C type of the result. The
code generator puts one such expression per op into its elementwise loops and GEMM epilogues.
"""


def fmt_float(value, ctype):
    """A C floating-point literal of ``ctype`` (``float`` gets an ``f`` suffix)."""
    if ctype == "float":
        return f"{float(value)!r}f".replace("inff", "INFINITY").replace("nanf", "NAN")
    return repr(float(value)).replace("inf", "INFINITY").replace("nan", "NAN")


def scalar(value, ctype):
    """``value`` as a C constant of ``ctype``, cast explicitly."""
    if ctype in ("float", "double"):
        return f"(({ctype}){fmt_float(value, ctype)})"
    return f"(({ctype}){int(value)})"


def template(text):
    """A C expression from a format string: ``{0}``, ``{1}``... are the inputs, ``{ct}`` the
    result's C type."""
    return lambda args, attrs, ct: text.format(*args, ct=ct)


# suffix of the typed C helpers in the preamble (templates/_preamble.c.j2), by C type
SFX = {"float": "_f32", "double": "_f64"}


def select(cond, a, b, ctype):
    """``cond ? a : b`` as a C expression of ``ctype``. For floating-point types, a select on
    the values' bits (``tn_keep``/``tn_pick``, templates/_preamble.c.j2): the same value, and a
    loop over it vectorises on targets without masked arithmetic, where gcc keeps a ternary
    whose arm is computed only for its element a branch."""
    sfx = SFX.get(ctype)
    if sfx is None:
        return f"({cond} ? {a} : {b})"
    if b == "0":
        return f"tn_keep{sfx}({cond}, {a})"
    return f"tn_pick{sfx}({cond}, {a}, {b})"
