"""Communicators: the few collective operations data-parallel training needs, on MPI or NCCL.

Data-parallel training runs one copy of the model per process ("rank"); the ranks only ever
talk through the *collectives* below, all of which every rank must call in the same order:

* ``allreduce_(a)``: every rank's ``a`` becomes the element-wise sum over all ranks, in
  place (the gradient average is this, divided by the world size);
* ``broadcast_(a, root)``: every rank's ``a`` becomes rank ``root``'s copy (the initial
  weights);
* ``allgather_object(obj)`` / ``broadcast_object(obj)``: small Python values (parameter
  names and shapes, a loaded checkpoint), for set-up and checks, never per step;
* ``barrier()``: wait until every rank has arrived (rank 0 writes a file, the others wait).

Three back ends share that interface:

* ``LocalCommunicator``: one process, every collective a no-op. ``get_world()`` returns it
  when ``init_process_group`` was never called, so single-process code needs no branch.
* ``MPICommunicator``: MPI through ``mpi4py`` (the ``mpi`` extra installs it with the MPICH
  wheel). NumPy arrays go through MPI's buffer interface without a copy; CuPy arrays are
  staged through the host (correct everywhere; use NCCL for speed on GPUs).
* ``NCCLCommunicator``: NVIDIA's NCCL through CuPy for CuPy arrays, bootstrapped over MPI
  (rank 0 creates the NCCL id and broadcasts it); objects, barriers and NumPy arrays still go
  through MPI.

minidl never implements a transport of its own: MPI (shared memory on one machine, TCP or
InfiniBand between machines) and NCCL do the moving.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from typing import Any

import numpy as np

from minidl import backend

_INSTALL_HINT = ("distributed training needs mpi4py and an MPI library: pip install "
                 "'minidl[mpi]' (mpi4py and the MPICH wheel), then launch with "
                 "mpiexec -n N python -m mpi4py script.py")


class Communicator:
    """The interface every back end implements; ``rank`` is in ``[0, size)``.

    Attributes:
        rank (int): this process's index.
        size (int): the number of processes (the world size).
        backend (str): ``"local"``, ``"mpi"`` or ``"nccl"``.
        stats (dict): ``calls``, ``bytes`` and ``seconds`` spent in ``allreduce_`` so far
            (what the benchmarks report as communication time).
    """

    rank: int = 0
    size: int = 1
    backend: str = ""

    def __init__(self) -> None:
        self.stats = {"calls": 0, "bytes": 0, "seconds": 0.0}

    def allreduce_(self, array: Any, op: str = "sum") -> Any:
        """Reduce ``array`` (NumPy or CuPy, contiguous) over all ranks, in place; return it.

        ``op`` is ``"sum"`` or ``"max"``.
        """
        _check_op(op)
        _check_contiguous(array, "allreduce_")
        start = time.perf_counter()
        if self.size > 1:
            self._allreduce(array, op)
        self.stats["calls"] += 1
        self.stats["bytes"] += int(array.nbytes)
        self.stats["seconds"] += time.perf_counter() - start
        return array

    def broadcast_(self, array: Any, root: int = 0) -> Any:
        """Overwrite ``array`` on every rank with rank ``root``'s; return it."""
        _check_contiguous(array, "broadcast_")
        if self.size > 1:
            self._broadcast(array, root)
        return array

    def allgather_object(self, obj: Any) -> list:
        """Return ``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        return [obj]

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """Return rank ``root``'s ``obj`` on every rank."""
        return obj

    def barrier(self) -> None:
        """Return once every rank has called ``barrier``."""

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now with exit status ``code``."""
        os._exit(code)

    def _allreduce(self, array: Any, op: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _broadcast(self, array: Any, root: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


def _check_op(op: str) -> None:
    if op not in ("sum", "max"):
        raise ValueError(f"allreduce_: op must be 'sum' or 'max', got {op!r}")


def _check_contiguous(array: Any, what: str) -> None:
    flags = getattr(array, "flags", None)
    if flags is None or not flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous NumPy or CuPy array, got "
                         f"{type(array).__name__}"
                         + ("" if flags is None else " that is not contiguous"))


class LocalCommunicator(Communicator):
    """A world of one process: every collective returns at once, leaving data as it is.

    >>> world = LocalCommunicator()
    >>> world.rank, world.size, world.allgather_object("x")
    (0, 1, ['x'])
    """

    backend = "local"


class MPICommunicator(Communicator):
    """Collectives over an ``mpi4py`` communicator (default ``MPI.COMM_WORLD``).

    NumPy arrays are passed to MPI as buffers (no copy, no pickling); CuPy arrays are copied
    to the host and back. Objects use mpi4py's pickle-based lowercase calls: they travel
    only between this job's own ranks, never through a file.
    """

    backend = "mpi"

    def __init__(self, comm: Any = None) -> None:
        super().__init__()
        mpi = _import_mpi()
        self.MPI = mpi
        self.comm = mpi.COMM_WORLD if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())

    def _allreduce(self, array: Any, op: str) -> None:
        mpi_op = self.MPI.SUM if op == "sum" else self.MPI.MAX
        if isinstance(array, np.ndarray):
            self.comm.Allreduce(self.MPI.IN_PLACE, array, op=mpi_op)
            return
        host = backend.to_numpy(array).copy()
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=mpi_op)
        array[...] = backend.get_array_module(array).asarray(host)

    def _broadcast(self, array: Any, root: int) -> None:
        if isinstance(array, np.ndarray):
            self.comm.Bcast(array, root=root)
            return
        host = backend.to_numpy(array).copy()
        self.comm.Bcast(host, root=root)
        array[...] = backend.get_array_module(array).asarray(host)

    def allgather_object(self, obj: Any) -> list:
        return list(self.comm.allgather(obj))

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def local_rank(self) -> int:
        """This rank's index among the ranks on its own machine (which GPU it takes)."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return int(node.Get_rank())
        finally:
            node.Free()


# NCCL's data type and reduction codes (ncclDataType_t, ncclRedOp_t in nccl.h).
_NCCL_DTYPES = {"int8": 0, "uint8": 1, "int32": 2, "uint32": 3, "int64": 4, "uint64": 5,
                "float16": 6, "float32": 7, "float64": 8}
_NCCL_OPS = {"sum": 0, "max": 2}


class NCCLCommunicator(Communicator):
    """NCCL collectives for CuPy arrays, on the current CUDA stream; MPI for the rest.

    Each rank must already be on its own GPU (``cupy.cuda.Device(local_rank).use()``, which
    ``init_process_group("nccl")`` does). Rank 0 creates the NCCL unique id, MPI broadcasts
    it, and every rank joins the NCCL communicator with it.

    Args:
        mpi: the ``MPICommunicator`` used for bootstrap, objects and NumPy arrays.
        nccl: the ``cupy.cuda.nccl`` module (tests pass a fake).
        stream: a callable returning the current stream's handle (an int).
    """

    backend = "nccl"

    def __init__(self, mpi: Communicator, nccl: Any = None, stream: Any = None) -> None:
        super().__init__()
        self.mpi = mpi
        self.rank, self.size = mpi.rank, mpi.size
        self.nccl = backend.nccl_module() if nccl is None else nccl
        self._stream = backend.current_stream_ptr if stream is None else stream
        uid = self.nccl.get_unique_id() if mpi.rank == 0 else None
        uid = mpi.broadcast_object(uid, root=0)
        self.comm = self.nccl.NcclCommunicator(self.size, uid, self.rank)

    def _nccl_args(self, array: Any) -> tuple[int, int]:
        name = np.dtype(array.dtype).name
        if name not in _NCCL_DTYPES:
            raise TypeError(f"NCCLCommunicator: dtype {name} is not supported by NCCL")
        return array.size, _NCCL_DTYPES[name]

    def _allreduce(self, array: Any, op: str) -> None:
        if isinstance(array, np.ndarray):
            self.mpi._allreduce(array, op)
            return
        count, dtype = self._nccl_args(array)
        ptr = array.data.ptr
        self.comm.allReduce(ptr, ptr, count, dtype, _NCCL_OPS[op], self._stream())

    def _broadcast(self, array: Any, root: int) -> None:
        if isinstance(array, np.ndarray):
            self.mpi._broadcast(array, root)
            return
        count, dtype = self._nccl_args(array)
        ptr = array.data.ptr
        self.comm.broadcast(ptr, ptr, count, dtype, root, self._stream())

    def allgather_object(self, obj: Any) -> list:
        return self.mpi.allgather_object(obj)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.mpi.broadcast_object(obj, root)

    def barrier(self) -> None:
        self.mpi.barrier()

    def abort(self, code: int = 1) -> None:
        self.mpi.abort(code)


def _import_mpi() -> Any:
    try:
        return importlib.import_module("mpi4py.MPI")
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from None


# -- the process group ---------------------------------------------------------------------

_world: Communicator | None = None
_LOCAL = LocalCommunicator()


def init_process_group(backend_name: str = "mpi") -> Communicator:
    """Join the job's ranks and make the communicator the default ``get_world()``.

    Call it once, at the start of every rank's script, launched with ``mpiexec -n N python
    -m mpi4py script.py`` (or ``python -m minidl.distributed -n N script.py``). Run as a
    plain ``python script.py`` it gives a world of one MPI rank. It also makes an uncaught
    exception on any rank print that rank's traceback and abort the whole job, so a failing
    rank never leaves the others waiting in a collective.

    Args:
        backend_name: ``"mpi"`` (NumPy arrays; CuPy arrays staged through the host) or
            ``"nccl"`` (CuPy arrays between GPUs; each rank takes GPU ``local_rank``).

    Returns:
        The communicator (also ``get_world()`` from now on).

    Raises:
        ImportError: mpi4py (or, for ``"nccl"``, CuPy) is missing; the message says what to
            install.
        RuntimeError: called twice with different back ends.
    """
    global _world
    if backend_name not in ("mpi", "nccl"):
        raise ValueError(f"init_process_group: backend must be 'mpi' or 'nccl', got "
                         f"{backend_name!r}")
    if _world is not None:
        if _world.backend != backend_name:
            raise RuntimeError(f"init_process_group: already initialised with backend "
                               f"{_world.backend!r}, asked for {backend_name!r}")
        return _world
    mpi = MPICommunicator()
    if backend_name == "nccl":
        backend.use_cuda_device(mpi.local_rank())
        world: Communicator = NCCLCommunicator(mpi)
    else:
        world = mpi
    _install_abort_hook(world)
    _world = world
    return world


def destroy_process_group() -> None:
    """Forget the default communicator (``get_world()`` is the local one again)."""
    global _world
    _world = None


def is_initialized() -> bool:
    """Whether ``init_process_group`` has run in this process.

    >>> isinstance(is_initialized(), bool)
    True
    """
    return _world is not None


def get_world() -> Communicator:
    """The default communicator: the initialised one, else a ``LocalCommunicator``.

    >>> get_world().size >= 1
    True
    """
    return _LOCAL if _world is None else _world


def get_rank() -> int:
    """This process's rank in the default world (0 without ``init_process_group``)."""
    return get_world().rank


def get_world_size() -> int:
    """The number of ranks in the default world (1 without ``init_process_group``)."""
    return get_world().size


def is_main_process() -> bool:
    """True on rank 0, the rank that writes files, logs and progress bars.

    >>> is_main_process()
    True
    """
    return get_world().rank == 0


def _install_abort_hook(world: Communicator) -> None:
    """Make an uncaught exception abort every rank, after printing it with its rank."""
    previous = sys.excepthook

    def hook(kind: type, value: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt) or world.size == 1:
            previous(kind, value, tb)
            return
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(f"minidl.distributed: rank {world.rank} of {world.size} raised; "
                         f"aborting the job\n{text}")
        world.abort(1)

    sys.excepthook = hook
