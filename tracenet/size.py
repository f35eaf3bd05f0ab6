"""``tracenet.Size``: the tuple subclass returned by ``Tensor.size()`` / ``.shape``."""
from ._sym import Sym, display


class Size(tuple):
    def __new__(cls, dims=()):
        # a traced tensor's symbolic batch size stays a symbol
        return super().__new__(cls, (d if isinstance(d, Sym) else int(d) for d in dims))

    def __repr__(self):
        return f"torch.Size([{', '.join(display(d) for d in self)}])"

    __str__ = __repr__

    def numel(self):
        n = 1
        for d in self:
            n *= d
        return n

    def __getitem__(self, item):
        out = super().__getitem__(item)
        return Size(out) if isinstance(item, slice) else out

    def __add__(self, other):
        return Size(tuple(self) + tuple(other))
