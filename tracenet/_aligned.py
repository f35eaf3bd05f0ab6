"""Arrays whose data start on a cache line.

numpy's allocator aligns data to 16 bytes, so the rows of a parameter, its gradient and its
optimizer state sit at different offsets within their cache lines, and a vector loop over them
splits a load or a store across two lines on most iterations. The fused gradient + SGD pass of
LeNet's fc1 (five 192 KB streams) took 11-12 us on such arrays and 9 us on 64-byte aligned
ones. Parameters (the tensor factories), gradients and optimizer state of compiled steps are
therefore allocated here.

An aligned array is a plain ``ndarray`` over part of a larger byte block, its ``base``. The
block is of a class of its own, so numpy stops at the aligned array when it sets the ``base``
of a view of it: views have the aligned array as their ``base``, as they would an array numpy
allocated (``tracenet.save`` finds the memory they share through it).
"""
import math

import numpy as np

CACHE_LINE = 64
# smaller arrays keep numpy's allocation: a few lines at most, and a cheaper call
ALIGNED_FROM_BYTES = 4096


class _Block(np.ndarray):
    """The bytes an aligned array lies in."""


def empty(shape, dtype):
    """``np.empty(shape, dtype)``, its data on a cache line when it is 4 KiB or more."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < ALIGNED_FROM_BYTES:
        return np.empty(shape, dtype)
    block = np.ndarray.__new__(_Block, (nbytes + CACHE_LINE,), np.uint8)
    start = -block.ctypes.data % CACHE_LINE
    return np.ndarray(shape, dtype, buffer=block, offset=start)


def full(shape, value, dtype):
    """``np.full(shape, value, dtype)``, its data on a cache line when it is 4 KiB or more."""
    out = empty(shape, dtype)
    np.copyto(out, value, casting="unsafe")  # (what np.full does)
    return out
