"""Small helpers of data-parallel runs: per-rank batch size, per-rank seeds, metric sums."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minidl.distributed.comm import Communicator, get_world


def local_batch_size(global_batch: int, world: Communicator | None = None) -> int:
    """The per-rank batch of a global batch of ``global_batch`` images.

    >>> local_batch_size(64)
    64

    Raises:
        ValueError: the world size does not divide ``global_batch``.
    """
    world = world or get_world()
    if isinstance(global_batch, bool) or not isinstance(global_batch, (int, np.integer)) \
            or global_batch < 1:
        raise ValueError(f"local_batch_size: the batch size must be a positive int, got "
                         f"{global_batch!r}")
    if global_batch % world.size:
        lo = global_batch // world.size * world.size
        below = lo if lo else world.size
        raise ValueError(
            f"the global batch size {global_batch} is not divisible by the {world.size} "
            f"ranks; use a multiple of {world.size} (e.g. {below} or {below + world.size})")
    return int(global_batch // world.size)


def rank_seed(seed: int, world: Communicator | None = None) -> int:
    """A seed for this rank's own randomness (dropout masks): ``seed`` itself on rank 0 (so
    a world of one is a plain run) and a different, reproducible one on every other rank.

    >>> rank_seed(7)
    7
    """
    world = world or get_world()
    if world.rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), world.rank]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


def all_reduce_scalars(values: Sequence[float], world: Communicator | None = None,
                       op: str = "sum") -> list[float]:
    """Sum (or max) a few Python numbers over all ranks, in one float64 message.

    >>> all_reduce_scalars([1.0, 2.5])
    [1.0, 2.5]
    """
    world = world or get_world()
    buf = np.asarray(values, dtype=np.float64).copy()
    world.allreduce_(buf, op=op)
    return [float(v) for v in buf]
