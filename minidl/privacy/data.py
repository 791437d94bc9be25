"""Poisson sampling: the batches DP-SGD's privacy analysis assumes.

The accountant (``minidl.privacy.accountant``) analyses *Poisson-subsampled* steps: each
example joins each batch independently, with probability ``q``, so batch sizes vary around
``q * N`` (binomially). A shuffled loader that cuts an epoch into fixed-size batches is a
different mechanism (each example appears exactly once per epoch), whose privacy the
Poisson analysis does not bound; ``make_private`` therefore replaces the user's loader with
this one.

A large logical batch (DP-SGD likes thousands of examples per step: the noise is added once
per step, so its share of the averaged gradient shrinks as the batch grows) need not fit in
memory at once: ``max_physical_batch_size`` splits each sampled batch into chunks, each a
forward and backward pass; ``DPOptimizer.step`` accumulates the chunks' clipped gradients and
steps once per logical batch, when ``end_of_logical_batch`` is True. The flag is set as each
chunk is handed to the caller (after any prefetch), so it always describes the batch just
received.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from minidl.data.loader import DataLoader, _prefetch
from minidl.privacy.accountant import check_sample_rate


class PoissonDataLoader(DataLoader):
    """Batches drawn by Poisson sampling: in each of ``round(1 / sample_rate)`` steps per
    epoch, every example joins the batch independently with probability ``sample_rate``.

    Step ``s`` of epoch ``e`` draws its batch with ``np.random.default_rng([seed, e, s])``,
    so an epoch depends only on ``(seed, e)`` (``set_epoch``, ``state_dict`` and resumes
    work as for ``DataLoader``). A step can draw an empty batch (probability
    ``(1 - q)^N``): it is still served, with zero rows, because the privacy analysis counts
    every step; ``DPOptimizer`` then takes a noise-only step.

    Args:
        dataset: as ``DataLoader``'s.
        sample_rate: ``q`` in (0, 1]; the expected batch size is ``q * len(dataset)``.
        max_physical_batch_size: split each sampled batch into chunks of at most this many
            examples (None: never split).
        seed: as ``DataLoader``'s.
        transform: as ``DataLoader``'s.
        device: as ``DataLoader``'s.
        prefetch: as ``DataLoader``'s (the logical-batch flag still describes the batch
            just received).
        as_tensor: as ``DataLoader``'s.

    Attributes:
        end_of_logical_batch (bool): whether the chunk last served ends its sampled batch.

    >>> loader = PoissonDataLoader((np.zeros((1000, 2), np.float32), np.zeros(1000)),
    ...                            sample_rate=0.1, seed=0, as_tensor=False)
    >>> len(loader), sorted(len(x) for x, _ in loader)[::3]    # 10 steps, about 100 each
    (10, [78, 90, 93, 108])
    """

    def __init__(self, dataset: Any, sample_rate: float, max_physical_batch_size: int | None
                 = None, seed: int | None = None, transform: Any = None, device: Any = "cpu",
                 prefetch: int = 0, as_tensor: bool = True) -> None:
        super().__init__(dataset, batch_size=1, shuffle=False, seed=seed, transform=transform,
                         device=device, prefetch=prefetch, as_tensor=as_tensor)
        self.sample_rate = check_sample_rate(sample_rate)
        if max_physical_batch_size is not None and (
                isinstance(max_physical_batch_size, bool)
                or not isinstance(max_physical_batch_size, (int, np.integer))
                or max_physical_batch_size < 1):
            raise ValueError(f"PoissonDataLoader: max_physical_batch_size must be a positive "
                             f"int or None, got {max_physical_batch_size!r}")
        self.max_physical_batch_size = max_physical_batch_size
        self.batch_size = max(1, round(self.sample_rate * len(self.dataset)))  # expected
        self.end_of_logical_batch = True

    @property
    def steps_per_epoch(self) -> int:
        """Logical (sampled) batches per epoch: ``round(1 / sample_rate)``."""
        return max(1, round(1 / self.sample_rate))

    def __len__(self) -> int:
        """Batches served per epoch: the logical steps times the chunks an expected-size
        batch splits into (the actual number of chunks varies with the sampled sizes)."""
        chunks = 1 if self.max_physical_batch_size is None else math.ceil(
            self.batch_size / self.max_physical_batch_size)
        return self.steps_per_epoch * chunks

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All indices sampled in ``epoch``, step after step (an example may appear in
        several steps or none)."""
        return np.concatenate([self.sample(epoch, s) for s in range(self.steps_per_epoch)])

    def sample(self, epoch: int, step: int) -> np.ndarray:
        """The indices of step ``step``'s batch in ``epoch``: shape (B,), B ~ Binomial(N, q)."""
        rng = np.random.default_rng([self.seed, int(epoch), int(step)])
        return np.flatnonzero(rng.random(len(self.dataset)) < self.sample_rate)

    def __iter__(self) -> Iterator[tuple]:
        epoch = self._epoch
        self._epoch += 1
        items = self._flagged_batches(epoch)
        if self.prefetch:
            items = _prefetch(items, self.prefetch)
        for last, batch in items:
            self.end_of_logical_batch = last
            yield batch

    def _flagged_batches(self, epoch: int) -> Iterator[tuple[bool, tuple]]:
        cap = self.max_physical_batch_size
        b = 0
        for s in range(self.steps_per_epoch):
            idx = self.sample(epoch, s)
            pieces = [idx] if cap is None or len(idx) <= cap else \
                [idx[i:i + cap] for i in range(0, len(idx), cap)]
            for k, piece in enumerate(pieces):
                yield k == len(pieces) - 1, self._batch_or_empty(piece, epoch, b)
                b += 1

    def _batch_or_empty(self, idx: np.ndarray, epoch: int, b: int) -> tuple:
        if len(idx):
            return self._make_batch(idx, epoch, b)
        # an empty draw: zero rows of every field, with the fields' shapes and dtypes
        return tuple(f[:0] for f in self._make_batch(np.zeros(1, np.int64), epoch, b))

    def __repr__(self) -> str:
        return (f"PoissonDataLoader(samples={len(self.dataset)}, sample_rate="
                f"{self.sample_rate:.4g}, expected_batch_size={self.batch_size}, "
                f"max_physical_batch_size={self.max_physical_batch_size})")
