"""``Meta(shape, dtype)``: the static description of a value that shape rules, the tracer and
the IR share (a tensor's or an IR value's shape and dtype, without its data)."""
from collections import namedtuple

Meta = namedtuple("Meta", "shape dtype")
