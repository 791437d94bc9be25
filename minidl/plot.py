"""Plots of a training run (needs matplotlib: ``pip install 'minidl[plot]'``).

``training_curves`` draws loss and accuracy per epoch, train vs validation;
``confusion_matrix`` counts true vs predicted classes; ``prediction_grid`` shows test images
titled with predicted and true labels (red when wrong). Each returns the matplotlib
``Figure`` and, given ``path``, saves it as PNG (atomically).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minidl._fileio import atomic_write

try:
    import matplotlib

    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt
except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
    raise ImportError("minidl.plot needs matplotlib: pip install 'minidl[plot]'") from exc


def _save(fig: Any, path: str | os.PathLike | None) -> None:
    if path is not None:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def training_curves(history: Any, path: str | os.PathLike | None = None) -> Any:
    """Loss and accuracy per epoch, train vs validation, from a ``History`` (or its list
    of epoch dicts); a third panel shows the privacy spent when the rows have ``epsilon``
    (DP training, ``minidl.privacy``).

    Args:
        history: a ``minidl.train.History`` or a list of dicts with ``epoch``, ``loss``,
            ``accuracy`` and optionally ``val_loss``, ``val_accuracy``.
        path: where to save the PNG; None only returns the figure.

    Returns:
        The matplotlib ``Figure`` (two panels, or three with ``epsilon``).

    >>> import matplotlib.pyplot as plt
    >>> fig = training_curves([{"epoch": 1, "loss": 2.0, "accuracy": 0.3},
    ...                        {"epoch": 2, "loss": 1.5, "accuracy": 0.5}])
    >>> len(fig.axes); plt.close(fig)
    2
    """
    rows = getattr(history, "epochs", history)
    if not rows:
        raise ValueError("training_curves: the history is empty")
    epochs = [r["epoch"] for r in rows]
    private = any("epsilon" in r for r in rows)
    fig, axes = plt.subplots(1, 3 if private else 2, figsize=(15 if private else 10, 3.8))
    if private:
        ax = axes[2]
        ax.plot(epochs, [r.get("epsilon") for r in rows], "o-", color="tab:red")
        ax.set_xlabel("epoch")
        ax.set_title("privacy spent (epsilon)")
        ax.grid(alpha=0.3)
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, [r.get(key) for r in rows], "o-", label="train")
        if any(f"val_{key}" in r for r in rows):
            ax.plot(epochs, [r.get(f"val_{key}") for r in rows], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return fig


def confusion_counts(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """``m[i, j]`` = number of samples of true class ``i`` predicted as ``j``.

    >>> confusion_counts([0, 1, 1], [0, 1, 0], 2).tolist()
    [[1, 0], [1, 1]]
    """
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"confusion_counts: {y_true.shape} labels vs {y_pred.shape} "
                         "predictions")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"confusion_counts: num_classes must be a positive int, got "
                         f"{num_classes!r}")
    for name, a in (("labels", y_true), ("predictions", y_pred)):
        # np.add.at would wrap a negative class around silently
        bad = np.flatnonzero((a < 0) | (a >= num_classes))
        if bad.size:
            raise ValueError(f"confusion_counts: {name} must be in 0..{num_classes - 1}, got "
                             f"{int(a.ravel()[bad[0]])} at index {int(bad[0])}")
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def confusion_matrix(y_true: Any, y_pred: Any, classes: Sequence[str],
                     path: str | os.PathLike | None = None) -> Any:
    """A heat map of ``confusion_counts`` with the counts written in the cells.

    Args:
        y_true: ``(N,)`` true class indices.
        y_pred: ``(N,)`` predicted class indices.
        classes: class names; ``len(classes)`` is the number of classes.
        path: where to save the PNG; None only returns the figure.

    Returns:
        The matplotlib ``Figure``, titled with the accuracy.

    >>> import matplotlib.pyplot as plt
    >>> fig = confusion_matrix([0, 1, 1], [0, 1, 0], ["cat", "dog"])
    >>> fig.axes[0].get_title(); plt.close(fig)
    'confusion matrix (accuracy 0.667)'
    """
    m = confusion_counts(y_true, y_pred, len(classes))
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    acc = np.trace(m) / max(m.sum(), 1)
    ax.set_title(f"confusion matrix (accuracy {acc:.3f})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)
    return fig


def prediction_grid(images: Any, y_true: Any, y_pred: Any, classes: Sequence[str],
                    path: str | os.PathLike | None = None, cols: int = 8) -> Any:
    """Images (uint8 ``(N, C, H, W)`` or ``(N, H, W, C)``) titled ``pred / true``.

    Args:
        images: ``(N, C, H, W)`` or ``(N, H, W, C)`` with 1 or 3 channels.
        y_true: ``(N,)`` true class indices.
        y_pred: ``(N,)`` predicted class indices; titles of wrong ones are red.
        classes: class names.
        path: where to save the PNG; None only returns the figure.
        cols: images per row.

    Returns:
        The matplotlib ``Figure``.

    >>> import numpy as np, matplotlib.pyplot as plt
    >>> fig = prediction_grid(np.zeros((3, 1, 8, 8), np.uint8), [0, 1, 1], [0, 1, 0],
    ...                       ["cat", "dog"], cols=2)
    >>> len(fig.axes); plt.close(fig)
    4
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"prediction_grid: images must be 4-D, got shape {images.shape}")
    if images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    n = len(images)
    if n == 0:
        raise ValueError("prediction_grid: got no images")
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if len(y_true) < n or len(y_pred) < n:
        raise ValueError(f"prediction_grid: {n} images but {len(y_true)} labels and "
                         f"{len(y_pred)} predictions")
    if cols < 1:
        raise ValueError(f"prediction_grid: cols must be >= 1, got {cols}")
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        img = images[k]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
        ok = int(y_pred[k]) == int(y_true[k])
        ax.set_title(f"{classes[int(y_pred[k])]}\n({classes[int(y_true[k])]})", fontsize=7,
                     color="black" if ok else "red")
    fig.tight_layout()
    _save(fig, path)
    return fig


def save_training_report(folder: str | os.PathLike, history: Any, y_true: Any, y_pred: Any,
                         classes: Sequence[str], images: Any = None) -> None:
    """Write ``curves.png``, ``confusion.png`` and (given images) ``predictions.png``.

    Args:
        folder: output folder (created if needed).
        history: as for ``training_curves``.
        y_true: ``(N,)`` true class indices.
        y_pred: ``(N,)`` predicted class indices.
        classes: class names.
        images: optional ``(N, C, H, W)`` images; the first 32 are shown.

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_training_report(d, [{"epoch": 1, "loss": 1.0, "accuracy": 0.5}],
    ...                          [0, 1], [0, 0], ["cat", "dog"])
    ...     sorted(os.listdir(d))
    ['confusion.png', 'curves.png']
    """
    folder = Path(folder)
    for fig in (training_curves(history, folder / "curves.png"),
                confusion_matrix(y_true, y_pred, classes, folder / "confusion.png")):
        plt.close(fig)
    if images is not None:
        k = min(32, len(images))
        plt.close(prediction_grid(images[:k], y_true[:k], y_pred[:k], classes,
                                  folder / "predictions.png"))
