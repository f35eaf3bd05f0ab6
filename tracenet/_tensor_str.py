"""The text form of tensors, laid out character for character as PyTorch prints them.

Printing has three steps:

1. pick one *formatter* for the whole tensor from the elements that will be shown: every element
   is written the same way (integer-valued ``1.``, fixed ``1.2500`` or scientific ``1.2500e+03``)
   and right-aligned to one common width, so columns line up across rows;
2. lay the elements out as nested brackets, wrapping long rows at ``linewidth`` and replacing the
   middle of long dimensions by ``...`` when the tensor has more than ``threshold`` elements;
3. append the suffixes (``size=``, ``dtype=``, ``grad_fn=``/``requires_grad=``), moving one onto
   its own line when it would overflow ``linewidth``.
"""
import math

import numpy as np

from . import _dtype

# --- print options ------------------------------------------------------------------------

_PROFILES = {
    "default": dict(precision=4, threshold=1000, edgeitems=3, linewidth=80),
    "short": dict(precision=2, threshold=1000, edgeitems=2, linewidth=80),
    "full": dict(precision=4, threshold=math.inf, edgeitems=3, linewidth=80),
}


class _PrintOptions:
    __slots__ = ("precision", "threshold", "edgeitems", "linewidth", "sci_mode")

    def __init__(self):
        for name, value in _PROFILES["default"].items():
            setattr(self, name, value)
        self.sci_mode = None  # None: choose per tensor; True/False: force it


_opts = _PrintOptions()


def set_printoptions(precision=None, threshold=None, edgeitems=None, linewidth=None,
                     profile=None, sci_mode=None):
    """Set the options used by ``repr(tensor)``; arguments left as None keep their value, except
    ``sci_mode``, which is always replaced (None means "decide from the values")."""
    if profile is not None and profile in _PROFILES:
        for name, value in _PROFILES[profile].items():
            setattr(_opts, name, value)
    for name, value in (("precision", precision), ("threshold", threshold),
                        ("edgeitems", edgeitems), ("linewidth", linewidth)):
        if value is not None:
            setattr(_opts, name, value)
    _opts.sci_mode = sci_mode


def get_printoptions():
    """The current options as a dict that can be passed back to ``set_printoptions(**opts)``."""
    return {name: getattr(_opts, name) for name in _PrintOptions.__slots__}


# --- choosing how elements look -----------------------------------------------------------

class _Formatter:
    """One way of writing every element of a tensor, padded to one common width.

    The choice looks only at the nonzero finite values: zeros, nan and inf are written in
    whatever style those values pick, and do not widen the columns.
    """

    def __init__(self, values, floating):
        self.floating = floating
        self.int_mode = True  # all values integral: write them as "3." with no decimals
        self.sci_mode = False
        self.width = 1
        if not floating:
            self.width = max([self.width] + [len(str(v)) for v in np.unique(values).tolist()])
            return
        shown = values[np.isfinite(values) & (values != 0)]
        if shown.size == 0:
            return  # nothing decides the style; the defaults above apply
        self._choose_style(shown)
        self.width = max(self.width, max(self._measure(v) for v in np.unique(shown).tolist()))

    def _choose_style(self, shown):
        magnitudes = np.abs(shown.astype(np.float64))
        lo, hi = magnitudes.min(), magnitudes.max()
        self.int_mode = bool(np.all(shown == np.ceil(shown)))
        if _opts.sci_mode is not None:
            self.sci_mode = bool(_opts.sci_mode)
        else:
            # a wide dynamic range or extreme magnitudes do not fit fixed-point notation
            with np.errstate(over="ignore"):  # an overflowing ratio is just "very wide"
                self.sci_mode = bool(hi / lo > 1000.0 or hi > 1.0e8 or lo < 1.0e-4)

    def _measure(self, value):
        precision = _opts.precision
        if self.sci_mode:
            return len(f"{value:.{precision}e}")
        if self.int_mode:
            return len(f"{value:.0f}") + 1  # room for the trailing "."
        return len(f"{value:.{precision}f}")

    def format(self, value):
        precision = _opts.precision
        if not self.floating:
            text = str(value)
        elif self.sci_mode:
            text = f"{value:{self.width}.{precision}e}"
        elif self.int_mode:
            text = f"{value:.0f}"
            if math.isfinite(value):
                text += "."  # marks the tensor as floating point
        else:
            text = f"{value:.{precision}f}"
        return text.rjust(self.width)


def _visible_values(arr):
    """The elements that summarised printing shows, flattened: the formatter is fitted to these
    only, so the hidden middle cannot change the width or style."""
    edge = _opts.edgeitems
    if arr.ndim == 0:
        return arr.reshape(-1)
    if arr.ndim == 1:
        if len(arr) > 2 * edge:
            # with edge == 0, arr[-0:] is the whole row, so everything counts then
            return np.concatenate((arr[:edge], arr[-edge:]))
        return arr
    if not edge:
        return arr.reshape(-1)[:0]
    rows = list(arr[:edge]) + list(arr[len(arr) - edge:]) if len(arr) > 2 * edge else list(arr)
    return np.concatenate([_visible_values(row) for row in rows])


# --- laying out the brackets --------------------------------------------------------------

def _vector_str(arr, indent, summarize, fmt):
    edge = _opts.edgeitems
    if summarize and not edge:
        items = ["..."]
    elif summarize and len(arr) > 2 * edge:
        items = ([fmt.format(v) for v in arr[:edge].tolist()] + [" ..."]
                 + [fmt.format(v) for v in arr[-edge:].tolist()])
    else:
        items = [fmt.format(v) for v in arr.tolist()]
    # each element costs its width plus ", "; wrapped lines start under the first element
    per_line = max(1, math.floor((_opts.linewidth - indent) / (fmt.width + 2)))
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"


def _nested_str(arr, indent, summarize, fmt):
    if arr.ndim == 0:
        return fmt.format(arr.item())
    if arr.ndim == 1:
        return _vector_str(arr, indent, summarize, fmt)
    edge = _opts.edgeitems
    n = len(arr)
    if summarize and n > 2 * edge:
        parts = ([_nested_str(arr[i], indent + 1, summarize, fmt) for i in range(edge)] + ["..."]
                 + [_nested_str(arr[i], indent + 1, summarize, fmt) for i in range(n - edge, n)])
    else:
        parts = [_nested_str(arr[i], indent + 1, summarize, fmt) for i in range(n)]
    # blocks of a 3-d tensor are separated by one blank line, of a 4-d one by two, and so on
    return "[" + ("," + "\n" * (arr.ndim - 1) + " " * (indent + 1)).join(parts) + "]"


def _data_str(arr, dtype, indent):
    summarize = arr.size > _opts.threshold
    values = _visible_values(arr) if summarize else arr.reshape(-1)
    fmt = _Formatter(values, dtype.is_floating_point)
    return _nested_str(arr, indent, summarize, fmt)


# --- suffixes and the whole repr ----------------------------------------------------------

def _add_suffixes(text, suffixes, indent):
    """Append ``, suffix`` items, starting a new line (aligned with the data) for any that would
    run past ``linewidth``."""
    out = [text]
    # measured as the last line plus two, which leaves room for the closing ")" and a comma
    used = len(text) - text.rfind("\n") + 1
    for suffix in suffixes:
        if used + len(suffix) + 2 > _opts.linewidth:
            out.append(",\n" + " " * indent + suffix)
            used = indent + len(suffix)
        else:
            out.append(", " + suffix)
            used += len(suffix) + 2
    out.append(")")
    return "".join(out)


def _grad_suffixes(t):
    grad_fn = t.grad_fn
    if grad_fn is not None:
        name = grad_fn.name() if hasattr(grad_fn, "name") else type(grad_fn).__name__
        return [f"grad_fn=<{name.rsplit('::', 1)[-1]}>"]
    if t.requires_grad:
        return ["requires_grad=True"]
    return []


def _prefix(t):
    # parameters print as plain tensors (under a "Parameter containing:" line); other
    # subclasses are named by their class
    name = type(t).__name__
    return "tensor(" if name in ("Tensor", "Parameter") else name + "("


def _contents_and_suffixes(t, indent):
    arr = t._data
    dtype = t.dtype
    default = _dtype.get_default_dtype()
    dtype_suffix = "dtype=torch." + dtype.name
    suffixes = []
    if arr.size == 0:
        # nothing to read the dtype or shape from, so both are spelled out (a 1-d shape is
        # implied by the single pair of brackets)
        if arr.ndim != 1:
            suffixes.append("size=" + str(tuple(arr.shape)))
        if dtype is not default:
            suffixes.append(dtype_suffix)
        return "[]", suffixes
    if not _opts.edgeitems:
        suffixes.append("size=" + str(tuple(arr.shape)))  # the data shows nothing of the shape
    # int64 and bool are what Python ints and bools become, so they go without saying
    if dtype not in (default, _dtype.int64, _dtype.bool_):
        suffixes.append(dtype_suffix)
    return _data_str(arr, dtype, indent), suffixes


def tensor_repr(t, tensor_contents=None):
    """``repr(t)``, as PyTorch writes it; ``tensor_contents`` replaces the bracketed data."""
    prefix = _prefix(t)
    indent = len(prefix)
    if t._ir is not None:
        # a traced value has a shape and dtype but no numbers yet
        shape = ", ".join(str(s) for s in t._ir.shape)
        contents, suffixes = f"<traced {t.dtype.short}[{shape}]>", []
    else:
        contents, suffixes = _contents_and_suffixes(t, indent)
    if tensor_contents is not None:
        contents = tensor_contents
    text = _add_suffixes(prefix + contents, suffixes + _grad_suffixes(t), indent)
    if type(t).__name__ == "Parameter":
        text = "Parameter containing:\n" + text
    return text
