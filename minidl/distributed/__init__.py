"""Data-parallel training over MPI (NumPy arrays) or NCCL (CuPy arrays on GPUs).

One process per core, GPU or machine ("rank"), each with a full copy of the model and a
shard of every batch; after ``backward`` the gradients are averaged across ranks, so every
rank takes the same optimizer step and the copies stay identical (``docs/distributed.md``
explains why this equals one big batch and what breaks that). The pieces, under PyTorch's
names where it has them:

* ``minidl/distributed/comm.py``: ``init_process_group``, ``get_world``, ``get_rank``,
  ``get_world_size``, ``is_main_process`` and the communicators (``MPICommunicator``,
  ``NCCLCommunicator``, ``LocalCommunicator``);
* ``minidl/distributed/ddp.py``: ``DistributedDataParallel`` (broadcast of the initial
  weights, bucketed gradient averaging, buffer synchronisation);
* ``minidl/distributed/sampler.py``: ``DistributedSampler``, each rank's share of an epoch;
* ``minidl/distributed/sync_bn.py``: ``SyncBatchNorm``;
* ``python -m minidl.distributed -n N script.py ...``: a launcher around ``mpiexec``.

``minidl.train.Trainer`` takes a ``DistributedDataParallel`` model and does the rest: rank 0
alone writes checkpoints, logs and progress bars, metrics are reduced across ranks. MPI
comes from the optional extra ``pip install 'minidl[mpi]'``; without it this package still
imports, and ``init_process_group`` says what to install.

>>> from minidl import distributed as dist
>>> dist.get_world_size(), dist.get_rank(), dist.is_main_process()
(1, 0, True)
"""

from minidl.distributed.comm import (
    Communicator,
    LocalCommunicator,
    MPICommunicator,
    NCCLCommunicator,
    destroy_process_group,
    get_rank,
    get_world,
    get_world_size,
    init_process_group,
    is_initialized,
    is_main_process,
)
from minidl.distributed.ddp import DistributedDataParallel, check_same_model
from minidl.distributed.sampler import DistributedSampler
from minidl.distributed.sync_bn import SyncBatchNorm, SyncBatchNormFunction
from minidl.distributed.util import all_reduce_scalars, local_batch_size, rank_seed

__all__ = [
    "Communicator", "DistributedDataParallel", "DistributedSampler", "LocalCommunicator",
    "MPICommunicator", "NCCLCommunicator", "SyncBatchNorm", "SyncBatchNormFunction",
    "all_reduce_scalars", "check_same_model", "destroy_process_group", "get_rank",
    "get_world", "get_world_size", "init_process_group", "is_initialized", "is_main_process",
    "local_batch_size", "rank_seed",
]
