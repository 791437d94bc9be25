"""``DistributedSampler``: which images of each epoch a rank trains on.

Every rank builds the same ``DataLoader`` (same data, same ``seed``), so every rank draws
the same epoch permutation ``order`` (N,). The sampler cuts it into *global* batches of
``B = world_size * b`` images (``b``: the loader's per-rank ``batch_size``) and gives rank
``r`` the ``r``-th contiguous slice of ``b`` images of each::

    order      : [ g0 | g1 | g2 | ... ]           global batches of B = W * b images
    g_s        : [ rank 0: b | rank 1: b | ... ]
    rank r gets: g0[r*b:(r+1)*b], g1[r*b:(r+1)*b], ...

So step ``s`` of a ``W``-rank run sees exactly the images of step ``s`` of a one-process
run with batch ``B`` (which is why the averaged gradients are the same). The last, partial
global batch of ``m < B`` images is padded to a multiple of ``W`` with images from the start
of the epoch and split evenly, so every rank runs the same number of steps: a rank with one
step more would wait forever in the gradient allreduce. ``drop_last=True`` drops it instead.
For evaluation, ``pad=False`` splits the data without duplicates (ranks may then have
different numbers of batches, which is fine where no collective runs per batch).

The sampler holds no random state: the loader's ``(seed, epoch)`` decide the order, so
``set_epoch`` cannot be forgotten and resuming replays the same shards.
"""

from __future__ import annotations

import numpy as np

from minidl.distributed.comm import Communicator, get_world


class DistributedSampler:
    """Shard each epoch's order among the ranks (pass it as ``DataLoader(sampler=...)``).

    Args:
        world: the communicator (default ``get_world()``); or give ``num_replicas`` and
            ``rank`` directly (tests, or sharding without MPI).
        num_replicas: number of ranks.
        rank: this rank.
        drop_last: drop the last, partial global batch rather than pad it.
        pad: pad the last global batch so that all ranks run the same number of steps
            (training); ``False`` splits it without duplicates (evaluation).

    >>> s0, s1 = DistributedSampler(num_replicas=2, rank=0), DistributedSampler(
    ...     num_replicas=2, rank=1)
    >>> order = np.arange(10)
    >>> s0.shard(order, 2).tolist(), s1.shard(order, 2).tolist()
    ([0, 1, 4, 5, 8], [2, 3, 6, 7, 9])
    >>> s1.shard(np.arange(9), 2).tolist()  # 9 = 2 global batches of 4, then 1 padded to 2
    [2, 3, 6, 7, 0]
    """

    def __init__(self, world: Communicator | None = None, *, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False, pad: bool = True) -> None:
        if world is not None and (num_replicas is not None or rank is not None):
            raise ValueError("DistributedSampler: give either world or num_replicas and rank")
        if num_replicas is None and rank is None:
            world = world or get_world()
            num_replicas, rank = world.size, world.rank
        if num_replicas is None or rank is None:
            raise ValueError("DistributedSampler: give both num_replicas and rank")
        for name, v in (("num_replicas", num_replicas), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"DistributedSampler: {name} must be an int, got {v!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: need num_replicas >= 1 and 0 <= rank < "
                             f"num_replicas, got num_replicas={num_replicas}, rank={rank}")
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.drop_last, self.pad = bool(drop_last), bool(pad)

    @property
    def stream(self) -> tuple[int, ...]:
        """Extra words for the loader's per-batch transform seed, so that ranks draw
        different augmentations: ``()`` in a world of one (exactly a plain loader)."""
        return () if self.num_replicas == 1 else (self.rank,)

    def shard(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """This rank's indices of one epoch, in order, given the epoch's full ``order``
        (N,) and the per-rank ``batch_size``; shape ``(steps * batch_size,)`` or less in
        the last step."""
        order = np.asarray(order)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"DistributedSampler.shard: batch_size must be a positive int, "
                             f"got {batch_size!r}")
        w, b = self.num_replicas, int(batch_size)
        big = w * b
        full = len(order) // big
        head = order[: full * big].reshape(full, w, b)[:, self.rank, :].reshape(-1)
        tail = order[full * big:]
        if self.drop_last or len(tail) == 0:
            return head
        if self.pad:
            need = -len(tail) % w
            tail = np.concatenate([tail, np.resize(order, need)]) if need else tail
            per = len(tail) // w
            return np.concatenate([head, tail[self.rank * per:(self.rank + 1) * per]])
        bounds = np.linspace(0, len(tail), w + 1).round().astype(np.int64)
        return np.concatenate([head, tail[bounds[self.rank]:bounds[self.rank + 1]]])

    def __repr__(self) -> str:
        return (f"DistributedSampler(num_replicas={self.num_replicas}, rank={self.rank}, "
                f"drop_last={self.drop_last}, pad={self.pad})")
