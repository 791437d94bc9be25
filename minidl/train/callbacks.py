"""Callbacks: hooks ``Trainer.fit`` calls at the start and end of the run, each epoch and
each batch (checkpoints, early stopping, LR schedules, one printed line per epoch).

A callback knows its trainer through ``self.trainer`` (set by ``Trainer.__init__``), so this
module needs nothing of ``trainer.py``, which imports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type hints only: trainer.py imports this module
    from minidl.train.trainer import Trainer


class Callback:
    """Hooks called by ``Trainer.fit``; override what you need. ``self.trainer`` is set.

    Attributes:
        trainer (Trainer): the trainer running the callback, set by ``Trainer.__init__``.

    >>> import numpy as np
    >>> from minidl import nn, optim
    >>> x, y = np.zeros((8, 2), np.float32), np.zeros(8, np.int64)
    >>> model = nn.Linear(2, 2)
    >>> class ShowKeys(Callback):
    ...     def on_epoch_end(self, epoch, logs):
    ...         print(epoch, sorted(logs)[:2])
    >>> from minidl.train import Trainer
    >>> t = Trainer(model, optim.SGD(model.parameters(), lr=0.1), callbacks=[ShowKeys()],
    ...             progress=False)
    >>> _ = t.fit((x, y), epochs=2, batch_size=4)
    1 ['accuracy', 'epoch']
    2 ['accuracy', 'epoch']
    """

    trainer: Trainer

    def on_train_begin(self) -> None:
        """Called once at the start of ``fit`` (after a resume too: the restored
        ``trainer.history`` is already there)."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Called before epoch ``epoch`` (1-based) trains."""

    def on_batch_end(self, step: int, logs: dict) -> None:
        """Called after each training batch; ``step`` is 1-based within the epoch and
        ``logs`` is ``{"loss": loss}``, the batch's loss as a 0-d Tensor still on the device
        (reading it with ``float()`` waits for the device), or None for an empty batch
        (Poisson sampling can draw one: the optimizer still stepped)."""

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """Called after epoch ``epoch`` (1-based) and its validation, with the epoch's
        metrics (the row just appended to ``trainer.history``). Set
        ``self.trainer.stop_training = True`` to stop after this epoch."""

    def on_train_end(self) -> None:
        """Called once when ``fit`` finishes (not when it raises)."""


class ModelCheckpoint(Callback):
    """Save a full checkpoint (``last.npz``) after every ``every`` epochs, atomically; also
    ``best.npz`` when ``monitor`` improves.

    Args:
        folder: where to write.
        every: epochs between checkpoints.
        monitor: a metric name such as ``"val_accuracy"`` (None: no best checkpoint).
        mode: ``"max"`` or ``"min"`` for the monitored metric.

    >>> import numpy as np
    >>> from minidl import nn, optim
    >>> x, y = np.zeros((8, 2), np.float32), np.zeros(8, np.int64)
    >>> model = nn.Linear(2, 2)
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     cb = ModelCheckpoint(d, monitor="loss", mode="min")
    ...     from minidl.train import Trainer
    ...     t = Trainer(model, optim.SGD(model.parameters(), lr=0.1), callbacks=[cb],
    ...                 progress=False)
    ...     _ = t.fit((x, y), epochs=1, batch_size=4)
    ...     sorted(os.listdir(d))
    ['best.npz', 'last.npz']
    """

    def __init__(self, folder: str | os.PathLike, every: int = 1, monitor: str | None = None,
                 mode: str = "max") -> None:
        if every < 1:
            raise ValueError(f"ModelCheckpoint: every must be >= 1, got {every}")
        if mode not in ("max", "min"):
            raise ValueError(f"ModelCheckpoint: mode must be 'max' or 'min', got {mode!r}")
        self.folder, self.every, self.monitor, self.mode = Path(folder), every, monitor, mode
        self.best: float | None = None

    def on_train_begin(self) -> None:
        """Create the folder (rank 0 of a data-parallel run); take the best monitored value
        from a resumed history."""
        if self.trainer.is_main_process:
            self.folder.mkdir(parents=True, exist_ok=True)
        # After a resume, the best value so far is in the restored history: without it the
        # first resumed epoch would overwrite best.npz even when it is worse.
        if self.monitor is None:
            return
        values = [float(v) for v in self.trainer.history[self.monitor] if v is not None]
        if values:
            self.best = max(values) if self.mode == "max" else min(values)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """Write ``last.npz`` every ``every`` epochs and ``best.npz`` on improvement."""
        if epoch % self.every == 0:
            self.trainer.save_checkpoint(self.folder / "last.npz")
        if self.monitor is not None and logs.get(self.monitor) is not None:
            value = float(logs[self.monitor])
            better = self.best is None or (value > self.best if self.mode == "max"
                                           else value < self.best)
            if better:
                self.best = value
                self.trainer.save_checkpoint(self.folder / "best.npz")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Args:
        monitor: the metric to watch, a key of the epoch logs (``"val_loss"``, ``"loss"``...).
        patience: epochs without improvement before stopping.
        mode: ``"min"`` (lower is better) or ``"max"``.
        min_delta: the smallest change that counts as an improvement.

    >>> import numpy as np
    >>> from minidl import nn, optim
    >>> x, y = np.zeros((8, 2), np.float32), np.zeros(8, np.int64)
    >>> model = nn.Linear(2, 2)
    >>> stop = EarlyStopping(monitor="loss", patience=1)  # lr 0: the loss never improves
    >>> from minidl.train import Trainer
    >>> t = Trainer(model, optim.SGD(model.parameters(), lr=0.0), callbacks=[stop],
    ...             progress=False)
    >>> len(t.fit((x, y), epochs=10, batch_size=4))
    2
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, mode: str = "min",
                 min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping: mode must be 'max' or 'min', got {mode!r}")
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {patience}")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best: float | None = None
        self.wait = 0

    def _update(self, value: float) -> None:
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.wait = value, 0
        else:
            self.wait += 1

    def on_train_begin(self) -> None:
        """Reset, then replay the (possibly restored) history of the monitored metric."""
        # Replay the (possibly restored) history so that a resumed run stops exactly where
        # the uninterrupted one would.
        self.best, self.wait = None, 0
        for value in self.trainer.history[self.monitor]:
            if value is not None:
                self._update(float(value))

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """Update the best value and set ``trainer.stop_training`` once patience runs out."""
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping: metric {self.monitor!r} not in the epoch logs "
                           f"({sorted(logs)}); pass validation data or monitor another one")
        self._update(float(logs[self.monitor]))
        if self.wait >= self.patience:
            self.trainer.stop_training = True


class PrintEpoch(Callback):
    """Print one line per epoch (Keras' ``verbose=2``): for logs, files and CI, where a
    progress bar is noise.

    >>> PrintEpoch().format({"epoch": 3, "loss": 0.5, "accuracy": 0.8, "time": 12.0})
    'epoch 3  loss 0.5000  accuracy 0.8000  time 12.0s'
    """

    def format(self, logs: dict) -> str:
        """The line printed for one epoch's ``logs`` (non-numeric entries are skipped)."""
        parts = [f"epoch {logs['epoch']}"]
        for k, v in logs.items():
            if k == "epoch" or not isinstance(v, (int, float)):
                continue
            if k == "time":
                parts.append(f"time {v:.1f}s")
            elif k == "images_per_s":
                parts.append(f"{v:.0f} img/s")
            elif k == "lr":
                parts.append(f"lr {v:.3g}")
            else:
                parts.append(f"{k} {v:.4f}")
        return "  ".join(parts)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.trainer.is_main_process:  # one line per epoch, not one per rank
            print(self.format(logs), flush=True)


class LRSchedulerStep(Callback):
    """Step an LR scheduler once per epoch (default) or once per batch.

    ``Trainer(scheduler=..., scheduler_per=...)`` adds one of these for you.

    Args:
        scheduler: a ``minidl.optim.lr_scheduler`` schedule (anything with ``step()``).
        per: ``"epoch"`` or ``"batch"``.

    >>> import numpy as np
    >>> from minidl import nn, optim
    >>> x, y = np.zeros((8, 2), np.float32), np.zeros(8, np.int64)
    >>> model = nn.Linear(2, 2)
    >>> opt = optim.SGD(model.parameters(), lr=1.0)
    >>> sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    >>> from minidl.train import Trainer
    >>> t = Trainer(model, opt, callbacks=[LRSchedulerStep(sched, per="batch")],
    ...             progress=False)
    >>> _ = t.fit((x, y), epochs=1, batch_size=4); opt.param_groups[0]["lr"]  # 2 batches
    0.25
    """

    def __init__(self, scheduler: Any, per: str = "epoch") -> None:
        if per not in ("epoch", "batch"):
            raise ValueError(f"LRSchedulerStep: per must be 'epoch' or 'batch', got {per!r}")
        self.scheduler, self.per = scheduler, per

    def on_batch_end(self, step: int, logs: dict) -> None:
        """Step the scheduler when ``per == "batch"`` and the optimizer stepped: an
        optimizer that accumulates several batches into one step (``minidl.privacy``'s
        ``DPOptimizer`` with virtual steps) says ``last_step_taken = False`` for the
        others, so the schedule counts optimizer steps."""
        if self.per == "batch" and getattr(self.trainer.optimizer, "last_step_taken", True):
            self.scheduler.step()

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """Step the scheduler when ``per == "epoch"``."""
        if self.per == "epoch":
            self.scheduler.step()
