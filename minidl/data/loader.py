"""Datasets as indexable collections and the ``DataLoader`` that turns them into batches.

A ``Dataset`` answers ``len(ds)`` and ``ds[i]``; it may also answer ``ds.get_batch(indices)``
so that a whole batch comes out of one fancy-indexing operation instead of a Python loop
(``ArrayDataset`` and ``MemmapDataset`` do). The ``DataLoader`` draws the epoch's order and
every random choice of its transforms from generators seeded by ``(seed, epoch)`` and never
from global state, so epoch ``k`` is the same whether the run started at epoch 0 or was
resumed at ``k``: that is what makes checkpoint/resume exact. Batches are moved to the
target device while still ``uint8`` (four times fewer bytes than float32) and transformed
there.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from minidl.autograd import Tensor
from minidl.backend import Device, get_array_module, to_device
from minidl.data.transforms import BatchInfo, _call
from minidl.random import default_generator

Transform = Callable[[Any, np.random.Generator], Any]


class Dataset:
    """Base class of map-style datasets: ``len(ds)`` items, ``ds[i]`` returns ``(x, y)``.

    Subclasses implement ``__len__`` and ``__getitem__``; they may override ``get_batch``
    to read many items at once (the default stacks items one by one).

    >>> class Squares(Dataset):
    ...     def __len__(self): return 4
    ...     def __getitem__(self, i): return np.array([i]), np.int64(i * i)
    >>> x, y = Squares().get_batch(np.array([3, 1]))
    >>> x.shape, y.tolist()
    ((2, 1), [9, 1])
    """

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__}: __len__ is not implemented")

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__}: __getitem__ is not implemented")

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, ...]:
        """Return the items at ``indices`` stacked field by field: ``(X[B, ...], Y[B, ...])``."""
        return _stack_items([self[int(i)] for i in indices], type(self).__name__)


def _stack_items(items: list, owner: str) -> tuple[np.ndarray, ...]:
    if not items:
        raise ValueError(f"{owner}.get_batch: got no indices")
    if not isinstance(items[0], tuple):
        return (np.stack([np.asarray(it) for it in items]),)
    width = len(items[0])
    return tuple(np.stack([np.asarray(it[k]) for it in items]) for k in range(width))


class ArrayDataset(Dataset):
    """A dataset over arrays that share their first dimension, e.g. images and labels.

    The arrays are kept as given (no copy; NumPy memmaps stay on disk); a batch is one
    fancy-index per array.

    Args:
        *arrays: arrays of shape ``(N, ...)``, all with the same ``N``.

    >>> ds = ArrayDataset(np.zeros((5, 3, 2, 2), np.uint8), np.arange(5))
    >>> len(ds), int(ds[2][1]), ds.get_batch(np.array([4, 0]))[1].tolist()
    (5, 2, [4, 0])
    """

    def __init__(self, *arrays: Any) -> None:
        if not arrays:
            raise ValueError("ArrayDataset: expected at least one array, got none")
        arrays = tuple(a if hasattr(a, "shape") else np.asarray(a) for a in arrays)
        n = arrays[0].shape[0] if arrays[0].ndim else None
        for k, a in enumerate(arrays):
            if a.ndim == 0 or a.shape[0] != n:
                shapes = [tuple(b.shape) for b in arrays]
                raise ValueError(
                    f"ArrayDataset: all arrays must share their first dimension; array {k} "
                    f"has shape {tuple(a.shape)} (shapes: {shapes})"
                )
        self.arrays = arrays

    def __len__(self) -> int:
        return int(self.arrays[0].shape[0])

    def __getitem__(self, index: int) -> tuple:
        return tuple(a[index] for a in self.arrays)

    def get_batch(self, indices: np.ndarray) -> tuple[Any, ...]:
        """Return ``tuple(a[indices] for a in arrays)``."""
        out = []
        for a in self.arrays:
            xp = get_array_module(a)
            out.append(a[indices if xp is np else xp.asarray(indices)])
        return tuple(out)


def _as_dataset(data: Any) -> Any:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)):
        return ArrayDataset(*data)
    if hasattr(data, "shape"):
        return ArrayDataset(data)
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return data  # any duck-typed map-style dataset
    raise TypeError(
        "DataLoader: dataset must be a Dataset, an array or a tuple of arrays, "
        f"got {type(data).__name__}"
    )


_ITEM, _END, _ERROR = 0, 1, 2


def _prefetch(source: Iterator, depth: int) -> Iterator:
    """Run ``source`` in a background thread, at most ``depth`` items ahead of the consumer.

    The worker holds no reference to this generator, so abandoning the loop (``break``,
    an exception, garbage collection) runs the ``finally`` below, which stops and joins the
    thread. An exception in the worker is re-raised here, in the consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in source:
                if stop.is_set():
                    return
                q.put((_ITEM, item))
                if stop.is_set():
                    return
            q.put((_END, None))
        except BaseException as exc:  # handed to the consumer, who re-raises it
            q.put((_ERROR, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=worker, name="minidl-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = q.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise payload
            yield payload
    finally:
        stop.set()
        # Emptying the queue frees a worker blocked in put(); it then sees `stop` and exits
        # after at most one more put, which the emptied queue has room for.
        while True:
            try:
                q.get_nowait()
            except queue.Empty:
                break
        thread.join()


class DataLoader:
    """Iterate over a dataset in (optionally shuffled, transformed, prefetched) batches.

    Each ``iter(loader)`` is one epoch. Epoch ``e`` shuffles with
    ``np.random.default_rng([seed, e]).permutation(len(dataset))`` and gives batch ``b``'s
    transform the generator ``np.random.default_rng([seed, e, b])``, so an epoch depends only
    on ``(seed, e)``: ``set_epoch(e)`` (or ``load_state_dict``) before iterating reproduces an
    uninterrupted run exactly. The epoch counter advances by one at each ``iter()``.

    Each batch is read with ``dataset.get_batch(indices)`` (one fancy index for array and
    memmap datasets: the dataset is never copied), moved to ``device``, then the transform
    is applied there to the first field. A transform that declares ``uses_batch_info``
    (``transforms.AlternatingFlip``, or a ``Compose`` holding one) is called
    ``transform(x, rng, info=BatchInfo(indices, epoch, seed))`` with the batch's dataset
    indices, so that it can treat each image by its index.

    A ``sampler`` decides which part of each epoch's order this loader serves: data-parallel
    training gives every rank the same loader with a ``minidl.distributed.DistributedSampler``,
    whose ``shard(order, batch_size)`` returns this rank's indices of the epoch and whose
    ``stream`` (a tuple of ints) is appended to each batch's transform seed, so that ranks
    draw different augmentations. The order itself still comes from ``(seed, epoch)``.

    Args:
        dataset: a ``Dataset``, an array, or a tuple of arrays ``(images, labels)``.
        batch_size: samples per batch.
        shuffle: shuffle the order each epoch.
        drop_last: drop the last, smaller batch.
        seed: non-negative int; None draws one from ``minidl.random.default_generator()``
            (so ``minidl.manual_seed`` makes it reproducible).
        transform: callable ``t(x, rng) -> x`` applied to the first field of each batch.
        device: where the batches go (``"cpu"``, ``"cuda"``, ...).
        prefetch: batches prepared ahead in a background thread (0: none).
        as_tensor: yield ``minidl.autograd.Tensor`` objects (True) or raw arrays (False).
        sampler: None (serve the whole epoch) or an object with ``shard(order,
            batch_size) -> indices`` and ``stream`` (see above).

    Yields:
        batch (tuple): One batch per step, like ``(x, y)``: x of shape ``(B, C, H, W)``, y of shape
            ``(B,)`` (Tensors, or arrays with ``as_tensor=False``).

    >>> images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    >>> loader = DataLoader((images, np.arange(10)), batch_size=4, seed=0, as_tensor=False)
    >>> len(loader), [y.tolist() for _, y in loader]
    (3, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]])
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        transform: Transform | None = None,
        device: str | Device = "cpu",
        prefetch: int = 0,
        as_tensor: bool = True,
        sampler: Any = None,
    ) -> None:
        self.dataset = _as_dataset(dataset)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) \
                or prefetch < 0:
            raise ValueError(f"DataLoader: prefetch must be an int >= 0, got {prefetch!r}")
        if seed is None:
            seed = int(default_generator().integers(0, 2**63 - 1))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"DataLoader: seed must be a non-negative int, got {seed!r}")
        if transform is not None and not callable(transform):
            raise TypeError(
                f"DataLoader: transform must be callable t(x, rng), got {type(transform).__name__}"
            )
        if sampler is not None and not callable(getattr(sampler, "shard", None)):
            raise TypeError("DataLoader: sampler must have a shard(order, batch_size) method "
                            f"(a minidl.distributed.DistributedSampler), got "
                            f"{type(sampler).__name__}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.transform = transform
        self.device = Device(device)
        self.prefetch = int(prefetch)
        self.as_tensor = bool(as_tensor)
        self._epoch = 0

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.sampler is not None:
            n = len(self.sampler.shard(np.arange(n), self.batch_size))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter(loader)`` will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` produce epoch ``epoch`` (then count up from it)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"DataLoader.set_epoch: epoch must be an int >= 0, got {epoch!r}")
        self._epoch = int(epoch)

    def state_dict(self) -> dict:
        """Return ``{"seed", "epoch"}``: all a checkpoint needs to resume the data order."""
        return {"seed": self.seed, "epoch": self._epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        seed = state["seed"]
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"DataLoader.load_state_dict: bad seed {seed!r}")
        self.seed = int(seed)
        self.set_epoch(state["epoch"])

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Return the sample indices of ``epoch`` in the order they are served: shape (N,),
        or this rank's share of them with a ``sampler``."""
        n = len(self.dataset)
        order = (np.random.default_rng([self.seed, int(epoch)]).permutation(n) if self.shuffle
                 else np.arange(n))
        return order if self.sampler is None else self.sampler.shard(order, self.batch_size)

    def __iter__(self) -> Iterator[tuple]:
        epoch = self._epoch
        self._epoch += 1
        batches = self._batches(epoch)
        return _prefetch(batches, self.prefetch) if self.prefetch else batches

    def _batches(self, epoch: int) -> Iterator[tuple]:
        order = self.epoch_order(epoch)
        n = len(order)
        steps = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        for b in range(steps):
            yield self._make_batch(order[b * self.batch_size:(b + 1) * self.batch_size],
                                   epoch, b)

    def _make_batch(self, idx: np.ndarray, epoch: int, b: int) -> tuple:
        """Read the samples ``idx`` as batch ``b`` of ``epoch``: fetch, move to the device,
        transform the first field with the batch's generator, wrap as Tensors."""
        get_batch = getattr(self.dataset, "get_batch", None)
        if get_batch is not None:
            fields = get_batch(idx)
        else:
            fields = _stack_items([self.dataset[int(i)] for i in idx], "DataLoader")
        if not isinstance(fields, tuple):
            fields = (fields,)
        fields = [to_device(f, self.device) for f in fields]
        if self.transform is not None and len(idx):
            stream = () if self.sampler is None else tuple(self.sampler.stream)
            rng = np.random.default_rng([self.seed, epoch, b, *stream])
            info = BatchInfo(idx, epoch, self.seed)
            fields[0] = _call(self.transform, fields[0], rng, info)
        if self.as_tensor:
            fields = [Tensor(f, requires_grad=False) for f in fields]
        return tuple(fields)

    def __repr__(self) -> str:
        return (
            f"DataLoader(n={len(self.dataset)}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed}, "
            f"device='{self.device}', prefetch={self.prefetch}"
            + ("" if self.sampler is None else f", sampler={self.sampler!r}") + ")"
        )

