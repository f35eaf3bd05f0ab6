"""Collectives on tensors, in place as in torch.distributed, over the process group's MPI
communicator.

Before moving data every collective allgathers a few bytes of metadata (which collective, the
shapes, the dtype, the root): if the ranks disagree, all of them raise instead of waiting for
each other forever. ``check=False`` skips that round trip for callers that have checked the
layout once (DistributedDataParallel's gradient buckets).
"""
import enum

import numpy as np

from ..tensor import Tensor
from .group import communicator, mpi


class ReduceOp(enum.Enum):
    SUM = "sum"
    AVG = "avg"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"

    def __repr__(self):
        return f"<ReduceOp.{self.name}>"


_MPI_OPS = {ReduceOp.SUM: "SUM", ReduceOp.AVG: "SUM", ReduceOp.PRODUCT: "PROD",
            ReduceOp.MIN: "MIN", ReduceOp.MAX: "MAX"}
# numpy types MPI has a datatype for (mpi4py maps the buffer's typecode)
_MPI_DTYPES = {np.dtype(t) for t in (np.float32, np.float64, np.int8, np.int16, np.int32,
                                     np.int64, np.uint8, np.bool_, np.complex64,
                                     np.complex128)}


class Work:
    """What an ``async_op=True`` collective returns: ``wait()`` finishes it."""

    def __init__(self, request=None, finish=None):
        self._request, self._finish = request, finish

    def is_completed(self):
        if self._request is None:
            return True
        if self._request.Test():
            self.wait()
            return True
        return False

    def wait(self, timeout=None):
        if self._request is not None:
            self._request.Wait()
            self._request = None
            if self._finish is not None:
                self._finish()
        return True


def _array(tensor, what):
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{what}: expected a Tensor, got {type(tensor).__name__}")
    if tensor._ir is not None:
        raise RuntimeError(f"{what} on a traced tensor: collectives run eagerly, outside "
                           "compiled code")
    arr = tensor._data
    if arr.dtype not in _MPI_DTYPES:
        raise TypeError(f"{what}: tensors of dtype {tensor.dtype} cannot be sent over MPI")
    return arr


def _describe(arr):
    return f"{arr.dtype.name}{list(arr.shape)}"


def check_same(comm, what, *facts):
    """Raise on every rank unless every rank passed the same ``facts``."""
    everyone = comm.allgather((what,) + facts)
    if any(f != everyone[0] for f in everyone[1:]):
        shown = "; ".join(f"rank {r}: {f[0]} {', '.join(map(str, f[1:]))}"
                          for r, f in enumerate(everyone))
        raise RuntimeError(f"{what}: the ranks called mismatched collectives ({shown})")


def _written(tensor):
    tensor._vc.value += 1


def _mpi_op(op):
    if not isinstance(op, ReduceOp):
        raise ValueError(f"op must be a ReduceOp, got {op!r}")
    return getattr(mpi(), _MPI_OPS[op])


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False, check=True):
    """Reduce ``tensor`` over every rank; every rank gets the result in ``tensor``."""
    comm = communicator(group)
    arr = _array(tensor, "all_reduce")
    mpi_op = _mpi_op(op)
    if op is ReduceOp.AVG and arr.dtype.kind not in "fc":
        raise ValueError(f"all_reduce: ReduceOp.AVG needs a floating-point tensor, got "
                         f"{tensor.dtype}")
    if check:
        check_same(comm, "all_reduce", _describe(arr), op.name)
    buf = arr if arr.flags.c_contiguous and arr.flags.writeable else np.ascontiguousarray(arr)
    size = comm.Get_size()

    def finish():
        if op is ReduceOp.AVG:
            np.divide(buf, size, out=buf)
        if buf is not arr:
            np.copyto(arr, buf)
        _written(tensor)

    if async_op:
        return Work(comm.Iallreduce(mpi().IN_PLACE, buf, mpi_op), finish)
    comm.Allreduce(mpi().IN_PLACE, buf, mpi_op)
    finish()
    return None


def broadcast(tensor, src, group=None, async_op=False, check=True):
    """Copy rank ``src``'s ``tensor`` into every rank's ``tensor``."""
    comm = communicator(group)
    arr = _array(tensor, "broadcast")
    if not 0 <= src < comm.Get_size():
        raise ValueError(f"broadcast: src={src} is not a rank of a world of {comm.Get_size()}")
    if check:
        check_same(comm, "broadcast", _describe(arr), f"src={src}")
    buf = arr if arr.flags.c_contiguous and arr.flags.writeable else np.ascontiguousarray(arr)
    comm.Bcast(buf, root=src)
    if buf is not arr:
        np.copyto(arr, buf)
    _written(tensor)
    return Work() if async_op else None


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False):
    """``output_tensor`` (world size times the input's first dimension) gets every rank's
    ``input_tensor``, concatenated in rank order."""
    comm = communicator(group)
    src = _array(input_tensor, "all_gather_into_tensor")
    out = _array(output_tensor, "all_gather_into_tensor")
    check_same(comm, "all_gather_into_tensor", _describe(src), _describe(out))
    if out.size != src.size * comm.Get_size() or out.dtype != src.dtype:
        raise ValueError(f"all_gather_into_tensor: output {_describe(out)} must hold "
                         f"{comm.Get_size()} inputs of {_describe(src)}")
    buf = out if out.flags.c_contiguous and out.flags.writeable else np.empty_like(out)
    comm.Allgather(np.ascontiguousarray(src), buf)
    if buf is not out:
        np.copyto(out, buf)
    _written(output_tensor)
    return Work() if async_op else None


def all_gather(tensor_list, tensor, group=None, async_op=False):
    """``tensor_list[r]`` gets rank ``r``'s ``tensor``."""
    comm = communicator(group)
    src = _array(tensor, "all_gather")
    check_same(comm, "all_gather", _describe(src))
    if len(tensor_list) != comm.Get_size():
        raise ValueError(f"all_gather: tensor_list has {len(tensor_list)} tensors for a world "
                         f"of {comm.Get_size()}")
    for t in tensor_list:
        if _array(t, "all_gather").shape != src.shape or t._data.dtype != src.dtype:
            raise ValueError(f"all_gather: every output must be {_describe(src)}, got "
                             f"{_describe(t._data)}")
    gathered = np.empty((comm.Get_size(),) + src.shape, src.dtype)
    comm.Allgather(np.ascontiguousarray(src), gathered)
    for t, part in zip(tensor_list, gathered):
        np.copyto(t._data, part)
        _written(t)
    return Work() if async_op else None


def reduce_scatter_tensor(output, input, op=ReduceOp.SUM, group=None, async_op=False):
    """Rank ``r``'s ``output`` gets block ``r`` of ``input`` (split along its first
    dimension into world-size blocks) reduced over the ranks."""
    comm = communicator(group)
    src = _array(input, "reduce_scatter_tensor")
    out = _array(output, "reduce_scatter_tensor")
    mpi_op = _mpi_op(op)
    check_same(comm, "reduce_scatter_tensor", _describe(src), _describe(out), op.name)
    if src.size != out.size * comm.Get_size() or out.dtype != src.dtype:
        raise ValueError(f"reduce_scatter_tensor: input {_describe(src)} must hold "
                         f"{comm.Get_size()} outputs of {_describe(out)}")
    buf = np.empty(out.shape, out.dtype)
    comm.Reduce_scatter_block(np.ascontiguousarray(src), buf, mpi_op)
    if op is ReduceOp.AVG:
        buf = buf / comm.Get_size()
    np.copyto(out, buf)
    _written(output)
    return Work() if async_op else None


def reduce_scatter(output, input_list, op=ReduceOp.SUM, group=None, async_op=False):
    """Rank ``r``'s ``output`` gets ``input_list[r]`` reduced over the ranks."""
    comm = communicator(group)
    if len(input_list) != comm.Get_size():
        raise ValueError(f"reduce_scatter: input_list has {len(input_list)} tensors for a "
                         f"world of {comm.Get_size()}")
    stacked = np.stack([_array(t, "reduce_scatter") for t in input_list])
    return reduce_scatter_tensor(output, Tensor._wrap(stacked), op, group, async_op)
