"""Symbolic sizes: a dimension whose value is known only when the compiled code runs.

``Sym`` is a polynomial with integer coefficients in named size symbols (today one: ``N``, the
batch size), each at least 1. Shape rules, the tracer's user code and the lowerings compute
with it like an int: ``+ - *``, exact ``//`` and ``%``, and comparisons whose answer is the same
for every value of the symbols. Anything else — an answer that depends on the value
(``N == 1``, ``N > 4``), ``int()``, indexing, a numpy array of that size — raises
``Specialize``: the compiler then gives up on the symbol and specialises on the exact size, so
a symbolic graph is never silently wrong.

In C a symbol is the ``int64_t`` variable ``tn_<name>`` (``str()`` renders the C expression,
so templates print a size as they always did); in the IR it prints by its name (``display``).

One rule is not a comparison: broadcasting never treats a symbolic dimension as a size-1
dimension to stretch (``is_one`` says False). That is sound: when the symbol is 1 at run time,
the other operand's dimension is 1 or the same symbol (anything else specialised), and
stretching a size-1 dimension to size 1 changes nothing.
"""


class Specialize(BaseException):
    """A computation needs the exact value of a symbolic size. (A BaseException so that no
    ``except Exception`` in traced code can swallow it and carry on with a wrong guess.)"""


class Sym:
    """An immutable polynomial: ``terms`` maps monomials (sorted tuples of symbol names; ``()``
    is the constant) to non-zero int coefficients. ``hint`` is its value for the sizes it was
    traced with: for performance heuristics only, never for what code computes."""

    __slots__ = ("terms", "hint")

    def __init__(self, terms, hint):
        self.terms = terms
        self.hint = hint

    # --- construction -------------------------------------------------------------------------
    @staticmethod
    def symbol(name, hint):
        return Sym({(name,): 1}, int(hint))

    @staticmethod
    def _make(terms, hint):
        terms = {m: c for m, c in terms.items() if c}
        if not terms:
            return 0
        if list(terms) == [()]:
            return terms[()]
        return Sym(terms, hint)

    # --- arithmetic --------------------------------------------------------------------------
    def __add__(self, other):
        if isinstance(other, (float, SymFloat)):
            return SymFloat.of(self) + other
        if not isinstance(other, (int, Sym)) or isinstance(other, bool):
            return NotImplemented
        terms = dict(self.terms)
        for m, c in _terms(other).items():
            terms[m] = terms.get(m, 0) + c
        return Sym._make(terms, self.hint + hint(other))

    __radd__ = __add__

    def __neg__(self):
        return Sym._make({m: -c for m, c in self.terms.items()}, -self.hint)

    def __pos__(self):
        return self

    def __sub__(self, other):
        if not isinstance(other, (int, float, Sym, SymFloat)):
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other):
        if not isinstance(other, (int, float)):
            return NotImplemented
        return (-self) + other

    def __mul__(self, other):
        if isinstance(other, (float, SymFloat)):
            return SymFloat.of(self) * other
        if not isinstance(other, (int, Sym)) or isinstance(other, bool):
            return NotImplemented
        terms = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in _terms(other).items():
                m = tuple(sorted(m1 + m2))
                terms[m] = terms.get(m, 0) + c1 * c2
        return Sym._make(terms, self.hint * hint(other))

    __rmul__ = __mul__

    def __truediv__(self, other):
        if not isinstance(other, (int, float, Sym, SymFloat)) or isinstance(other, bool):
            return NotImplemented
        return SymFloat.of(self) / other

    def __rtruediv__(self, other):
        if not isinstance(other, (int, float)) or isinstance(other, bool):
            return NotImplemented
        return SymFloat.of(other) / self

    def __floordiv__(self, other):
        q = _exact_quotient(self, other)
        if q is None:
            raise Specialize(f"{self.display()} // {display(other)} is not exact for every "
                             f"{_names(self, other)}")
        return q

    def __rfloordiv__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        q = _exact_quotient(other, self)
        if q is None:
            raise Specialize(f"{other} // {self.display()} depends on {_names(self)}")
        return q

    def __mod__(self, other):
        if _exact_quotient(self, other) is None:
            raise Specialize(f"{self.display()} % {display(other)} depends on "
                             f"{_names(self, other)}")
        return 0

    def __rmod__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        if other == 0:
            return 0
        raise Specialize(f"{other} % {self.display()} depends on {_names(self)}")

    # --- comparisons: answered only when the answer never depends on the symbols ----------
    def __eq__(self, other):
        if not isinstance(other, (int, Sym)) or isinstance(other, bool):
            return NotImplemented
        diff = self - other
        if not isinstance(diff, Sym):
            return diff == 0
        lo, hi = _bounds(diff.terms)
        if lo > 0 or hi < 0:
            return False
        raise Specialize(f"{self.display()} == {display(other)} depends on "
                         f"{_names(self, other)}")

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def _compare(self, other, strict, greater):
        if not isinstance(other, (int, Sym)) or isinstance(other, bool):
            return NotImplemented
        diff = (self - other) if greater else (other - self)  # holds iff diff > 0 (or >= 0)
        if not isinstance(diff, Sym):
            return diff > 0 if strict else diff >= 0
        lo, hi = _bounds(diff.terms)
        if lo > 0 or (lo >= 0 and not strict):
            return True
        if hi < 0 or (hi <= 0 and strict):
            return False
        op = (">" if greater else "<") + ("" if strict else "=")
        raise Specialize(f"{self.display()} {op} {display(other)} depends on "
                         f"{_names(self, other)}")

    def __gt__(self, other):
        return self._compare(other, True, True)

    def __ge__(self, other):
        return self._compare(other, False, True)

    def __lt__(self, other):
        return self._compare(other, True, False)

    def __le__(self, other):
        return self._compare(other, False, False)

    def __bool__(self):
        return self != 0

    def __hash__(self):
        return hash(frozenset(self.terms.items()))

    # --- what needs a value ------------------------------------------------------------------
    def _needs_value(self, what):
        raise Specialize(f"{what} of the symbolic size {self.display()}")

    def __index__(self):
        self._needs_value("the exact value")

    __int__ = __index__

    def __float__(self):
        self._needs_value("a float")

    # --- rendering ---------------------------------------------------------------------------
    def _render(self, name_of, plus):
        out = ""
        for m in sorted(self.terms, key=lambda m: (-len(m), m)):
            c = self.terms[m]
            factors = [name_of(s) for s in m]
            if abs(c) != 1 or not factors:
                factors.insert(0, str(abs(c)))
            sign = "-" if c < 0 else (plus if out else "")
            out += sign + "*".join(factors)
        return out

    def c(self):
        """The C expression (an int64_t)."""
        return "(" + self._render(lambda s: f"tn_{s}", "+") + ")"

    def display(self):
        """How the IR prints it: ``N``, ``4*N``, ``N*N+1``."""
        return self._render(lambda s: s, "+")

    def __str__(self):
        return self.c()

    def __repr__(self):
        return f"Sym({self.display()})"

    def evaluate(self, values):
        """The value for ``values`` (symbol name -> int)."""
        total = 0
        for m, c in self.terms.items():
            for s in m:
                c *= values[s]
            total += c
        return total

    def symbols(self):
        return sorted({s for m in self.terms for s in m})

    def __reduce__(self):
        return (Sym, (dict(self.terms), self.hint))


class SymFloat:
    """A float computed from size symbols (``2.0 / (10*N)``, a mean's scale): Python code uses
    it where it would use a float, and it becomes a tensor the way a Python float does (taking
    the other operand's dtype), computed in double precision by the compiled code. Like a
    ``Sym``, anything that needs its value raises ``Specialize``."""

    __slots__ = ("expr", "text", "hint", "names")

    def __init__(self, expr, text, hint, names):
        self.expr, self.text, self.hint, self.names = expr, text, hint, names

    @staticmethod
    def of(x):
        if isinstance(x, SymFloat):
            return x
        if isinstance(x, Sym):
            text = x.display() if len(x.terms) == 1 and 1 in x.terms.values() else \
                f"({x.display()})"
            return SymFloat(f"(double){x.c()}", text, float(x.hint), frozenset(x.symbols()))
        return SymFloat(repr(float(x)), repr(x), float(x), frozenset())

    def _binary(self, other, op, swap=False):
        if isinstance(other, bool) or not isinstance(other, (int, float, Sym, SymFloat)):
            return NotImplemented
        a, b = (SymFloat.of(other), self) if swap else (self, SymFloat.of(other))
        hints = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
                 "/": lambda x, y: x / y if y else float("nan")}
        return SymFloat(f"({a.expr} {op} {b.expr})", f"({a.text}{op}{b.text})",
                        hints[op](a.hint, b.hint), a.names | b.names)

    def __add__(self, other):
        return self._binary(other, "+")

    def __radd__(self, other):
        return self._binary(other, "+", True)

    def __sub__(self, other):
        return self._binary(other, "-")

    def __rsub__(self, other):
        return self._binary(other, "-", True)

    def __mul__(self, other):
        return self._binary(other, "*")

    def __rmul__(self, other):
        return self._binary(other, "*", True)

    def __truediv__(self, other):
        return self._binary(other, "/")

    def __rtruediv__(self, other):
        return self._binary(other, "/", True)

    def __neg__(self):
        return SymFloat(f"(-{self.expr})", f"-{self.text}", -self.hint, self.names)

    def _needs_value(self, *args):
        raise Specialize(f"the value of {self.text}, computed from symbolic sizes")

    __float__ = __int__ = __index__ = __bool__ = _needs_value
    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _needs_value
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = __rpow__ = _needs_value
    __round__ = __trunc__ = __abs__ = _needs_value
    __hash__ = object.__hash__

    def c(self):
        return self.expr

    def display(self):
        return self.text

    def __str__(self):
        return self.expr

    def __repr__(self):
        return f"SymFloat({self.text})"

    def symbols(self):
        return sorted(self.names)


def _terms(x):
    return x.terms if isinstance(x, Sym) else ({(): x} if x else {})


def hint(x):
    """The value ``x`` had when traced (an int stays itself)."""
    return x.hint if isinstance(x, (Sym, SymFloat)) else x


def display(x):
    return x.display() if isinstance(x, (Sym, SymFloat)) else str(x)


def _names(*xs):
    names = sorted({s for x in xs if isinstance(x, Sym) for s in x.symbols()})
    return ", ".join(names)


def has_symbols(shape):
    return any(isinstance(d, Sym) for d in shape)


def is_one(d):
    """Whether a dimension broadcasts as size 1 (never a symbolic one: see the module doc)."""
    return not isinstance(d, Sym) and d == 1


def is_one_or_symbol(d):
    """Whether ``d`` is 1 or a size symbol alone (N), not a product or sum of symbols: a size
    that is one at a batch of one, where code for that case is worth compiling in (a symbol is
    never compared with 1 when tracing: that would specialise the build on it)."""
    if not isinstance(d, Sym):
        return d == 1
    (monomial, coefficient), = d.terms.items() if len(d.terms) == 1 else ((None, 0),)
    return coefficient == 1 and monomial is not None and len(monomial) == 1


def _bounds(terms):
    """(lower, upper) bounds of the polynomial over all symbols >= 1, each +-inf when the
    polynomial is unbounded that way or the bound is not evident: with every symbol written
    as 1 + t (t >= 0), a polynomial whose coefficients are all >= 0 is smallest at t = 0."""
    shifted = {}
    for m, c in terms.items():
        # expand prod(1 + t_s) over the monomial's factors: every sub-multiset of them
        expansions = {(): c}
        for s in m:
            nxt = {}
            for sub, k in expansions.items():
                nxt[sub] = nxt.get(sub, 0) + k
                longer = tuple(sorted(sub + (s,)))
                nxt[longer] = nxt.get(longer, 0) + k
            expansions = nxt
        for sub, k in expansions.items():
            shifted[sub] = shifted.get(sub, 0) + k
    const = shifted.pop((), 0)
    rest = [c for c in shifted.values() if c]
    inf = float("inf")
    lo = const if all(c >= 0 for c in rest) else -inf
    hi = const if all(c <= 0 for c in rest) else inf
    return lo, hi


def _exact_quotient(p, q):
    """p // q when it is exact as polynomials (q an int or a single term), else None."""
    if isinstance(q, bool) or not isinstance(q, (int, Sym)):
        return None
    if isinstance(q, int):
        if q == 0:
            raise ZeroDivisionError("integer division or modulo by zero")
        qm, qc = (), q
    elif len(q.terms) == 1:
        (qm, qc), = q.terms.items()
    else:
        return None
    out = {}
    for m, c in _terms(p).items():
        rest = list(m)
        for s in qm:
            if s not in rest:
                return None
            rest.remove(s)
        if c % qc:
            return None
        out[tuple(rest)] = out.get(tuple(rest), 0) + c // qc
    return Sym._make(out, hint(p) // hint(q) if hint(q) else 0)


def as_size(d):
    """A user-given size as an int (a symbolic one stays a symbol)."""
    return d if isinstance(d, Sym) else int(d)


def same_shape(a, b):
    """Whether two shapes are the same in form: a symbolic size equals only the same
    expression (``N`` is not the same as 1, even though it may be 1 when the code runs). For
    choosing between a no-op and the general path, which must also be right when they are
    equal."""
    return len(a) == len(b) and all(same_size(x, y) for x, y in zip(a, b))


def same_size(x, y):
    """Whether two sizes are the same in form (see ``same_shape``)."""
    if isinstance(x, Sym) or isinstance(y, Sym):
        return isinstance(x, Sym) and isinstance(y, Sym) and x.terms == y.terms
    return x == y


def as_float(x):
    """``float(x)``, kept symbolic for a size computed from symbols."""
    return SymFloat.of(x) if isinstance(x, (Sym, SymFloat)) else float(x)


SYMBOLS = ("N", "T")  # the batch size and the sequence length, in the order code passes them
NO_SIZES = (0, 0)     # the run-time sizes of a graph without symbols


def evaluator(x):
    """A fast ``sizes -> value of x``, ``sizes`` the values of ``SYMBOLS`` in order."""
    if not isinstance(x, Sym):
        return lambda sizes: x
    if set(x.terms) <= {(), ("N",)}:
        a, b = x.terms.get((), 0), x.terms.get(("N",), 0)
        return lambda sizes: a + b * sizes[0]
    return lambda sizes: x.evaluate(dict(zip(SYMBOLS, sizes)))


def shape_evaluator(shape):
    """A fast ``sizes -> shape`` (see ``evaluator``)."""
    shape = tuple(shape)
    if not has_symbols(shape):
        return lambda sizes: shape
    if isinstance(shape[0], Sym) and shape[0].terms == {("N",): 1} and \
            not has_symbols(shape[1:]):
        rest = shape[1:]
        return lambda sizes: (sizes[0],) + rest
    dims = [evaluator(d) for d in shape]
    return lambda sizes: tuple(d(sizes) for d in dims)
