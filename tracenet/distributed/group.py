"""The default process group: MPI's world communicator, from mpi4py."""
import importlib.util

MISSING_MPI = ("tracenet.distributed needs mpi4py and an MPI library; install them with "
               "pip install 'tracenet[mpi]' (mpi4py and mpich)")
_NOT_INITIALIZED = ("Default process group has not been initialized, please make sure to call "
                    "init_process_group.")


class Backend(str):
    """Backend names; only MPI is available."""
    MPI = "mpi"

    def __new__(cls, name):
        value = str(name).lower()
        if value != cls.MPI:
            raise ValueError(f"tracenet.distributed supports only the 'mpi' backend, got "
                             f"{name!r}")
        return super().__new__(cls, value)


class _Group:
    comm = None      # a duplicate of MPI.COMM_WORLD: our messages never meet the user's
    backend = None


_default = _Group()


def is_available():
    """True when mpi4py can be imported (torch: whether the distributed package is built)."""
    return importlib.util.find_spec("mpi4py") is not None


def is_mpi_available():
    return is_available()


def mpi():
    """The ``mpi4py.MPI`` module, or an ImportError naming the extra to install."""
    try:
        # optional dependency: imported only when a process group is made
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(MISSING_MPI) from e
    return MPI


def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1,
                       store=None, group_name="", pg_options=None, device_id=None):
    """Join the default process group: every process ``mpiexec`` started. Rank and world size
    come from the launcher; ``world_size``/``rank``, when given, must agree with it."""
    if _default.comm is not None:
        raise RuntimeError("trying to initialize the default process group twice!")
    backend = Backend(backend if backend is not None else Backend.MPI)
    if init_method not in (None, "env://") or store is not None:
        raise ValueError("the MPI backend takes ranks from mpiexec: init_method and store are "
                         "not used")
    comm = mpi().COMM_WORLD.Dup()
    if world_size not in (-1, None) and world_size != comm.Get_size():
        comm.Free()
        raise ValueError(f"world_size={world_size} but mpiexec started {comm.Get_size()} "
                         "processes")
    if rank not in (-1, None) and rank != comm.Get_rank():
        r = comm.Get_rank()
        comm.Free()
        raise ValueError(f"rank={rank} but mpiexec made this process rank {r}")
    _default.comm, _default.backend = comm, backend


def is_initialized():
    return _default.comm is not None


def communicator(group=None):
    """The MPI communicator of ``group`` (only the default group exists)."""
    if group is not None and group is not _default:
        raise ValueError("only the default process group (group=None) is supported")
    if _default.comm is None:
        raise ValueError(_NOT_INITIALIZED)
    return _default.comm


def get_rank(group=None):
    return communicator(group).Get_rank()


def get_world_size(group=None):
    return communicator(group).Get_size()


def get_backend(group=None):
    communicator(group)
    return _default.backend


def barrier(group=None, async_op=False, device_ids=None):
    communicator(group).Barrier()


def destroy_process_group(group=None):
    comm = communicator(group)
    _default.comm = _default.backend = None
    comm.Free()
