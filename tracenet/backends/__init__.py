"""``tracenet.backends``: the switches tutorials set; tracenet accepts and records them."""
from . import cudnn, mps  # noqa: F401
