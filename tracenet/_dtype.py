"""dtypes: the four tensor element types and the promotion rule between them."""
import numpy as np

from ._sym import Sym


class dtype:
    """A tensor element type; compares by identity, prints like ``torch.float32`` (as PyTorch code expects)."""

    __slots__ = ("name", "np", "is_floating_point", "itemsize", "_category", "short")

    def __init__(self, name, np_dtype, category, short):
        self.name = name
        self.np = np.dtype(np_dtype)
        self.is_floating_point = category == 2
        self.itemsize = self.np.itemsize
        self._category = category  # bool < integer < floating: the promotion lattice
        self.short = short  # the IR spelling, e.g. f32

    def __repr__(self):
        return "torch." + self.name  # printed as torch does, so tutorial output matches

    def __reduce__(self):
        return (_by_name, (self.name,))


float32 = dtype("float32", np.float32, 2, "f32")
float64 = dtype("float64", np.float64, 2, "f64")
int64 = dtype("int64", np.int64, 1, "i64")
bool_ = dtype("bool", np.bool_, 0, "b8")
# torch's aliases
float = float32
double = float64
long = int64

ALL = (float32, float64, int64, bool_)
_BY_NP = {d.np: d for d in ALL}
_default_float = [float32]


def _by_name(name):
    return {d.name: d for d in ALL}[name]


def get_default_dtype():
    return _default_float[0]


def set_default_dtype(d):
    if d not in (float32, float64):
        raise TypeError("only floating-point types are supported as the default type")
    _default_float[0] = d


def from_numpy_dtype(np_dtype):
    """The tracenet dtype for a numpy dtype; narrower ints/floats map to the supported one."""
    np_dtype = np.dtype(np_dtype)
    if np_dtype in _BY_NP:
        return _BY_NP[np_dtype]
    if np_dtype.kind == "f":
        return float64 if np_dtype.itemsize > 4 else float32
    if np_dtype.kind in "iu":
        return int64
    if np_dtype.kind == "b":
        return bool_
    raise TypeError(f"can't convert np.ndarray of type {np_dtype}. The only supported types are: "
                    "float64, float32, int64, and bool.")


def scalar_dtype(value):
    """The dtype a Python scalar gets when it becomes a tensor on its own."""
    if isinstance(value, (bool, np.bool_)):
        return bool_
    if isinstance(value, (int, np.integer, Sym)):
        return int64
    return get_default_dtype()


def promote_types(a, b):
    if a is b:
        return a
    if a._category != b._category:
        return a if a._category > b._category else b
    return a if a.itemsize >= b.itemsize else b


def result_type(*operands):
    """torch's type promotion: dimensioned tensors outrank 0-dim tensors, which outrank Python
    scalars, unless a lower-ranked operand belongs to a higher category (bool < int < float)."""
    ranks = ([], [], [])  # tensors with dims, 0-dim tensors, python scalars
    for x in operands:
        if hasattr(x, "dtype") and hasattr(x, "shape") and not isinstance(x, np.generic):
            ranks[0 if len(x.shape) else 1].append(x.dtype)
        else:
            ranks[2].append(scalar_dtype(x))
    result = None
    for group in ranks:
        if not group:
            continue
        best = group[0]
        for d in group[1:]:
            best = promote_types(best, d)
        if result is None:
            result = best
        elif best._category > result._category:
            # a higher category from a lower rank: python float -> default dtype,
            # 0-dim tensor -> its own dtype
            result = get_default_dtype() if group is ranks[2] and best._category == 2 else best
    return result
