"""Train/validation splits: ``Subset`` (a view of some items of a dataset) and
``train_val_split``, which holds out a fraction of every class.

Why stratified: a folder of your own images is often unbalanced, and a purely random 10%
of a small one can leave a class out of validation altogether, or put most of a rare class
there. Splitting each class by the same fraction keeps both splits' class proportions
those of the whole. Why deterministic: the split depends only on the labels, the fraction
and the seed, never on global random state, so a resumed run or a later evaluation sees
the same validation images (and none of them was trained on).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minidl.data.loader import ArrayDataset, Dataset, _stack_items


class Subset(Dataset):
    """The items ``indices`` of ``dataset``, in that order: ``sub[k] == dataset[indices[k]]``.

    Batches go through the parent's ``get_batch`` (one fancy index for arrays and memmaps,
    decoding only the asked images for an ``ImageFolder``).

    Args:
        dataset: any map-style dataset (``len`` and ``[i]``).
        indices: ``(M,)`` integer positions in ``dataset``.

    Attributes:
        dataset: the parent dataset.
        indices (np.ndarray): ``(M,)`` int64.
        classes: the parent's ``classes`` (None if it has none).
        targets (np.ndarray): ``(M,)`` labels of the items, when the parent's are known.

    >>> ds = ArrayDataset(np.arange(10) * 10, np.arange(10) % 2)
    >>> sub = Subset(ds, [7, 2])
    >>> len(sub), int(sub[0][0]), sub.get_batch(np.array([1, 0]))[0].tolist()
    (2, 70, [20, 70])
    """

    def __init__(self, dataset: Any, indices: Sequence[int] | np.ndarray) -> None:
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
            raise ValueError(f"Subset: indices must be a 1-D integer array, got "
                             f"{indices.dtype} {indices.shape}")
        n = len(dataset)
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise IndexError(f"Subset: indices must be in 0..{n - 1}, got range "
                             f"{int(indices.min())}..{int(indices.max())}")
        self.dataset = dataset
        self.indices = indices.astype(np.int64)

    @property
    def classes(self) -> Any:
        return getattr(self.dataset, "classes", None)

    @property
    def targets(self) -> np.ndarray:
        return _labels_of(self.dataset, "Subset.targets")[self.indices]

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(self.indices[index])]

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, ...]:
        """The parent's items ``self.indices[indices]``, stacked field by field."""
        parent = self.indices[np.asarray(indices, dtype=np.int64)]
        get_batch = getattr(self.dataset, "get_batch", None)
        if get_batch is not None:
            return get_batch(parent)
        return _stack_items([self.dataset[int(i)] for i in parent], "Subset")

    def __repr__(self) -> str:
        return f"Subset({self.dataset!r}, n={len(self)})"


def _labels_of(dataset: Any, op: str) -> np.ndarray:
    """The ``(N,)`` integer labels of ``dataset`` without reading its inputs: its
    ``targets`` (``ImageFolder``, ``Subset``), ``labels`` (``MemmapDataset``, ``CIFAR10``)
    or second array (``ArrayDataset``)."""
    for attr in ("targets", "labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None:
            break
    else:
        arrays = getattr(dataset, "arrays", None) if isinstance(dataset, ArrayDataset) else None
        if arrays is None or len(arrays) < 2:
            raise TypeError(f"{op}: cannot tell the labels of {type(dataset).__name__} "
                            "without reading every item (it has no .targets or .labels); "
                            "pass stratify=False")
        labels = arrays[1]
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != len(dataset) or (
            labels.size and labels.dtype.kind not in "iu"):
        raise TypeError(f"{op}: stratifying needs one integer label per item, got "
                        f"{labels.dtype} labels of shape {labels.shape} for {len(dataset)} "
                        "items; pass stratify=False")
    return labels


def _val_size(fraction: float, n: int) -> int:
    """``fraction * n`` rounded half up, at least 1: what a split holds out of ``n``."""
    return max(1, int(np.floor(fraction * n + 0.5)))


def _val_counts(counts: np.ndarray, fraction: float) -> np.ndarray:
    """Validation images per class: ``fraction`` of each class, rounded so that the total
    is ``_val_size`` (largest remainders first), never a class's last image."""
    quota = counts * fraction
    val = np.floor(quota).astype(np.int64)
    cap = np.maximum(counts - 1, 0)  # every class keeps a training image
    val = np.minimum(val, cap)
    missing = _val_size(fraction, int(counts.sum())) - int(val.sum())
    # Largest fractional part first; ties by class order (a stable sort).
    for c in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if missing <= 0:
            break
        if val[c] < cap[c]:
            val[c] += 1
            missing -= 1
    return val


def train_val_split(dataset: Any, val_fraction: float = 0.1, seed: int = 0,
                    stratify: bool = True) -> tuple[Subset, Subset]:
    """Split ``dataset`` into training and validation ``Subset`` s, deterministically.

    With ``stratify`` (default) each class gives ``val_fraction`` of its items to
    validation (rounded so that the total is ``val_fraction * N`` rounded half up, at
    least 1; a class always keeps at least one training item), chosen at random by
    ``np.random.default_rng(seed)``; without it, that many items are drawn from the
    whole. Both subsets list their indices in ascending order (the ``DataLoader``
    shuffles), and the split depends only on the labels, ``val_fraction`` and ``seed``.

    Args:
        dataset: a dataset with ``len``; for ``stratify``, labels readable without
            decoding (``ImageFolder.targets``, ``MemmapDataset.labels``, an
            ``ArrayDataset``'s second array).
        val_fraction: in (0, 1), the share held out.
        seed: a non-negative int.
        stratify: split class by class.

    Returns:
        ``(train, val)``.

    Raises:
        ValueError: ``val_fraction`` outside (0, 1), a bad seed, or a split that leaves
            either side empty.
        TypeError: ``stratify`` on a dataset whose labels cannot be read.

    >>> ds = ArrayDataset(np.zeros((20, 1)), np.array([0] * 15 + [1] * 5))
    >>> train, val = train_val_split(ds, 0.2, seed=0)
    >>> len(train), len(val), np.bincount(val.targets).tolist()
    (16, 4, [3, 1])
    >>> val.indices.tolist() == train_val_split(ds, 0.2, seed=0)[1].indices.tolist()
    True
    """
    fraction = float(val_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"train_val_split: seed must be a non-negative int, got {seed!r}")
    n = len(dataset)
    rng = np.random.default_rng(int(seed))
    if stratify:
        labels = _labels_of(dataset, "train_val_split")
        classes, inverse = np.unique(labels, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(classes))
        want = _val_counts(counts, fraction)
        val_parts = []
        for c in range(len(classes)):
            members = np.flatnonzero(inverse == c)
            val_parts.append(rng.permutation(members)[: want[c]])
        val_idx = np.sort(np.concatenate(val_parts)) if val_parts else np.empty(0, np.int64)
    else:
        val_idx = np.sort(rng.permutation(n)[: _val_size(fraction, n)])
    keep = np.ones(n, bool)
    keep[val_idx] = False
    train_idx = np.flatnonzero(keep)
    if val_idx.size == 0 or train_idx.size == 0:
        raise ValueError(f"train_val_split: val_fraction {fraction} of {n} item(s) leaves "
                         f"{train_idx.size} for training and {val_idx.size} for validation; "
                         "both need at least one (add images or change val_fraction)")
    return Subset(dataset, train_idx), Subset(dataset, val_idx)
