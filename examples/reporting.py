"""What the example scripts do after training: evaluate on the test set and write the run's
files (``history.json``/``.csv``, ``result.json`` and, with matplotlib, the plots).

Shared by ``cifar10.py`` and ``fashion_mnist.py`` (a script's own folder is on ``sys.path``,
so they import it as ``reporting``). It is glue of the examples, not part of minidl.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minidl._fileio import atomic_write_text
from minidl.train import History, Trainer


def report_run(trainer: Trainer, history: History, test: Any, out: str | os.PathLike,
               config: dict, wall_seconds: float, classes: Sequence[str] | None = None,
               images: Any = None, labels: Any = None, predict_loader: Any = None) -> dict:
    """Finish a training run the way the examples do: evaluate on ``test``, write
    ``history.json``/``.csv``, ``result.json`` (``config`` plus the test
    metrics, times and machine) and, when matplotlib is installed, the plots.

    Args:
        trainer: the trainer that ran ``fit``.
        history: what ``fit`` returned.
        test: the test loader.
        out: the run's folder.
        config: what to record about the run (command, model, hyperparameters, seed...).
        wall_seconds: wall time of this process's ``fit``.
        classes: class names, for the plots.
        images: uint8 test images ``(N, C, H, W)`` for the prediction grid.
        labels: the test labels, for the confusion matrix.
        predict_loader: the whole test set in order, for the plots' predictions (default
            ``test``; a data-parallel run evaluates ``test`` sharded over the ranks).

    Every rank of a data-parallel run calls this (the evaluation is shared); rank 0 alone
    writes the files.

    Returns:
        The ``result.json`` contents.
    """
    out = Path(out)
    final = trainer.evaluate(test, desc="test")
    if not trainer.is_main_process:
        return {}
    history.save(out)
    print(f"test loss {final['loss']:.4f}  test accuracy {final['accuracy']:.4f}")
    result = dict(config)
    val = [(v, e) for e, v in zip(history["epoch"], history["val_accuracy"]) if v is not None]
    if val:
        best, best_epoch = max(val, key=lambda t: (t[0], -t[1]))
        result.update({"best_epoch": int(best_epoch), "best_val_accuracy": float(best)})
        kept = " (kept as best.npz)" if (out / "best.npz").exists() else ""
        print(f"best epoch {best_epoch}: val_accuracy {best:.4f}{kept}; last.npz is epoch "
              f"{history['epoch'][-1]}")
    result.update({
        "test_loss": final["loss"], "test_accuracy": final["accuracy"],
        "train_seconds_this_run": wall_seconds,
        "train_seconds_total": float(sum(r["time"] for r in history.epochs)),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.python_version()}",
        "numpy": np.__version__,
    })
    atomic_write_text(out / "result.json", json.dumps(result, indent=1))
    if classes is None or labels is None:
        return result
    try:
        from minidl import plot
    except ImportError:
        print("matplotlib not installed: skipping plots (pip install 'minidl[plot]')")
    else:
        y_pred = trainer.predict(predict_loader or test).argmax(axis=1)
        plot.save_training_report(out, history, labels, y_pred, classes, images)
        print(f"plots written to {out}/")
    return result
