"""``tracenet.distributed``: process groups and collectives over MPI, with torch.distributed's
names and semantics.

Launch one process per rank with MPI's launcher (``mpiexec -n 2 python train.py``); each calls
``init_process_group("mpi")`` and takes its rank and the world size from the launcher. The
collectives work in place on tensors, as torch's do. MPI comes from the optional extra
``pip install 'tracenet[mpi]'`` (mpi4py and an MPICH build with its ``mpiexec``).
"""
from .group import (Backend, barrier, destroy_process_group, get_backend, get_rank,
                    get_world_size, init_process_group, is_available, is_initialized,
                    is_mpi_available)
from .collectives import (ReduceOp, Work, all_gather, all_gather_into_tensor, all_reduce,
                          broadcast, reduce_scatter, reduce_scatter_tensor)

__all__ = ["Backend", "ReduceOp", "Work", "all_gather", "all_gather_into_tensor", "all_reduce",
           "barrier", "broadcast", "destroy_process_group", "get_backend", "get_rank",
           "get_world_size", "init_process_group", "is_available", "is_initialized",
           "is_mpi_available", "reduce_scatter", "reduce_scatter_tensor"]
