"""The training loop: ``Trainer.fit`` / ``evaluate`` / ``predict``, history and callbacks.

Keras users get ``fit(train, epochs, validation)``; under it is the loop every framework
runs, written out plainly::

    for batch (x, y):  logits = model(x); loss = loss_fn(logits, y)
                       optimizer.zero_grad(); loss.backward(); optimizer.step()

Around it: a tqdm progress bar (loss, accuracy, images/s), a validation pass each epoch
under ``no_grad``, a ``History`` saved as JSON and CSV, and callbacks (checkpoint, early
stopping, LR schedule). A checkpoint holds everything a run's future depends on: model,
optimizer, scheduler, the global random state (dropout masks), the epoch and the history.
The loaders derive each epoch's shuffle and augmentation from ``(seed, epoch)``, so
resuming from the checkpoint of epoch ``k`` replays epochs ``k+1...`` exactly as an
uninterrupted run would.

Device scalars (the loss on a GPU) are read back only once every ``log_every`` batches, so
the host does not wait for the device after every step.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minidl import amp, backend, random
from minidl._fileio import atomic_write_text
from minidl.autograd import Tensor, no_grad
from minidl.functional import argmax, softmax_cross_entropy


class History:
    """Per-epoch metrics: ``history.epochs`` is a list of dicts like
    ``{"epoch": 1, "loss": 1.5, "accuracy": 0.45, "val_loss": ..., "lr": ..., "time": ...}``.

    >>> h = History(); h.append({"epoch": 1, "loss": 2.0}); h["loss"]
    [2.0]
    """

    def __init__(self, epochs: Sequence[dict] | None = None) -> None:
        self.epochs: list[dict] = [dict(e) for e in (epochs or [])]

    def append(self, logs: dict) -> None:
        """Add one epoch's metrics (a copy of the dict ``logs``)."""
        self.epochs.append(dict(logs))

    def __getitem__(self, key: str) -> list:
        return [e.get(key) for e in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)

    def keys(self) -> list[str]:
        """Every metric name seen in any epoch, in first-seen order.

        >>> History([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "val_loss": 1.0}]).keys()
        ['epoch', 'loss', 'val_loss']
        """
        seen: dict[str, None] = {}
        for e in self.epochs:
            seen.update(dict.fromkeys(e))
        return list(seen)

    def to_json(self) -> str:
        """The epochs as a JSON list of objects (what ``save`` writes to history.json)."""
        return json.dumps(self.epochs, indent=1)

    def to_csv(self) -> str:
        """The epochs as CSV text, one row per epoch and a column per ``keys()`` entry;
        a metric missing in an epoch is an empty cell.

        >>> print(History([{"epoch": 1, "loss": 2.0}]).to_csv(), end="")
        epoch,loss
        1,2.0
        """
        buf = io.StringIO()
        # "\n" rows: the csv module's default "\r\n" shows up as ^M in Unix tools.
        w = csv.DictWriter(buf, fieldnames=self.keys(), lineterminator="\n")
        w.writeheader()
        w.writerows(self.epochs)
        return buf.getvalue()

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``history.json`` and ``history.csv`` into ``folder`` (atomically)."""
        atomic_write_text(Path(folder) / "history.json", self.to_json())
        atomic_write_text(Path(folder) / "history.csv", self.to_csv())


# ----------------------------------------------------------------------------------------
# callbacks


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
        (reading it with ``float()`` waits for the device)."""

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
        """Create the folder; take the best monitored value from a resumed history."""
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
        """Step the scheduler when ``per == "batch"``."""
        if self.per == "batch":
            self.scheduler.step()

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """Step the scheduler when ``per == "epoch"``."""
        if self.per == "epoch":
            self.scheduler.step()


# ----------------------------------------------------------------------------------------
# the trainer


def _accuracy_count(logits: Tensor, y: Tensor) -> Any:
    if y.ndim != 1:  # probability targets: compare with their arg-max
        y = argmax(y, axis=1)
    return (argmax(logits, axis=1).data == y.data).sum()


def _is_array_pair(data: Any) -> bool:
    """True for ``(x, y)`` given as two arrays/Tensors (Keras style), not a loader."""
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(hasattr(a, "shape") and hasattr(a, "dtype") for a in data))


def _model_device(model: Any) -> Any:
    params = getattr(model, "parameters", None)
    if params is None:
        return "cpu"
    first = next(iter(params()), None)
    return "cpu" if first is None else first.device


def _array_loader(data: Any, model: Any, batch_size: int, shuffle: bool,
                  seed: int | None) -> Any:
    from minidl.data import DataLoader

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"Trainer: batch_size must be a positive int, got {batch_size!r}")
    arrays = tuple(a.data if isinstance(a, Tensor) else a for a in data)
    return DataLoader(arrays, batch_size=int(batch_size), shuffle=shuffle, seed=seed,
                      device=_model_device(model))


class Trainer:
    """Train and evaluate a classifier.

    Args:
        model: an ``nn.Module`` mapping a batch ``(N, ...)`` to logits ``(N, classes)``.
        optimizer: a ``minidl.optim`` optimizer over the model's parameters.
        loss_fn: ``loss_fn(logits, y) -> scalar Tensor`` (default: softmax cross-entropy).
        scheduler: optional LR scheduler, stepped per epoch (or give ``scheduler_per``).
        scheduler_per: ``"epoch"`` or ``"batch"``: when ``scheduler`` is stepped.
        callbacks: extra ``Callback`` objects. ``LRSchedulerStep`` callbacks run before the
            others at each epoch end, so a checkpoint always holds the stepped schedule.
        progress: show a tqdm progress bar.
        log_every: read the loss back from the device every this many batches.
        mixed_precision: ``"float16"`` runs forward passes under ``minidl.amp.autocast``
            and scales the loss with a ``GradScaler`` (parameters stay float32); meant for
            CUDA, where half-precision GEMMs are fast. None (default): plain float32.

    Metrics are named as in Keras: ``loss``, ``accuracy`` and, with validation data,
    ``val_loss``, ``val_accuracy``; each history row also has ``epoch``, ``lr``, ``time``
    (seconds) and ``images_per_s``.

    >>> import minidl, numpy as np
    >>> from minidl import nn, optim
    >>> from minidl.data import DataLoader
    >>> minidl.manual_seed(0)
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int64)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.05), progress=False)
    >>> history = trainer.fit(DataLoader((x, y), batch_size=16, shuffle=True), epochs=5)
    >>> history["loss"][-1] < history["loss"][0]
    True
    >>> trainer.evaluate((x, y))["accuracy"] > 0.9  # arrays work too, Keras style
    True
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        scheduler: Any = None,
        scheduler_per: str = "epoch",
        callbacks: Iterable[Callback] = (),
        progress: bool = True,
        log_every: int = 10,
        mixed_precision: str | None = None,
    ) -> None:
        self.model = model
        self.autocast = amp.autocast(mixed_precision or "float16",
                                     enabled=mixed_precision is not None)
        self.scaler = amp.GradScaler(enabled=mixed_precision is not None)
        self.optimizer = optimizer
        self.loss_fn = loss_fn or softmax_cross_entropy
        self.scheduler = scheduler
        callbacks = list(callbacks)
        if scheduler is not None:
            callbacks.insert(0, LRSchedulerStep(scheduler, per=scheduler_per))
        # Schedulers first (stable sort): a ModelCheckpoint listed before a user's
        # LRSchedulerStep must still save the schedule as the next epoch will see it.
        self.callbacks = sorted(callbacks, key=lambda cb: not isinstance(cb, LRSchedulerStep))
        if self.scheduler is None:
            steppers = [cb for cb in self.callbacks if isinstance(cb, LRSchedulerStep)]
            if len(steppers) == 1:  # so that checkpoints include its state
                self.scheduler = steppers[0].scheduler
        for cb in self.callbacks:
            cb.trainer = self
        self.progress = progress
        self.log_every = max(1, int(log_every))
        self.history = History()
        self.epoch = 0  # epochs completed
        self.stop_training = False
        self.train_loader: Any = None
        self._loader_state: dict | None = None  # from a checkpoint, applied by fit()

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume: model, optimizer, scheduler, RNG, epoch, history and
        the training loader's seed."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "history": self.history.epochs,
            "rng": json.dumps(random.get_rng_state()),
        }
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.scaler.enabled:
            state["grad_scaler"] = self.scaler.state_dict()
        loader_state = getattr(self.train_loader, "state_dict", None)
        if callable(loader_state):
            state["train_loader"] = {k: int(v) for k, v in loader_state().items()}
        elif self._loader_state is not None:
            state["train_loader"] = dict(self._loader_state)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``. The loader's seed is applied to the loader that the
        next ``fit`` receives (so a loader built with ``seed=None`` still replays the
        original run's order and augmentation)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            if "scheduler" not in state:
                raise KeyError("Trainer.load_state_dict: checkpoint has no scheduler state but "
                               "this trainer has a scheduler")
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.enabled and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.epoch = int(state["epoch"])
        self.history = History(state.get("history", []))
        loader_state = state.get("train_loader")
        self._loader_state = ({k: int(v) for k, v in loader_state.items()}
                              if loader_state is not None else None)
        random.set_rng_state(json.loads(str(state["rng"])))

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write ``state_dict()`` to ``path`` atomically (``minidl.save``), creating its
        folder if needed."""
        from minidl.serialization import save

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save(self.state_dict(), path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint written by ``save_checkpoint``; ``fit`` then continues
        after its epoch."""
        from minidl.serialization import load

        self.load_state_dict(load(path))

    # -- loops ----------------------------------------------------------------------------
    def _bar(self, total: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, leave=True,
                    dynamic_ncols=True, unit="batch")

    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Any]:
        """One optimization step; returns the loss tensor and the correct-count array."""
        with self.autocast:
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, _accuracy_count(logits.detach(), y)

    def fit(
        self,
        train: Any,
        epochs: int,
        validation: Any = None,
        *,
        batch_size: int = 32,
        shuffle: bool = True,
    ) -> History:
        """Train until ``epochs`` epochs are complete (counting epochs already done when
        resuming) and return the history.

        Args:
            train: a ``DataLoader`` (or any re-iterable of ``(x, y)`` tensor batches), or a
                pair of arrays ``(x, y)`` (inputs already preprocessed), which is batched
                here with ``batch_size`` and ``shuffle``.
            epochs: total number of epochs.
            validation: optional loader (or ``(x, y)`` arrays) evaluated after each epoch
                (``val_loss``, ``val_accuracy``).
            batch_size: batch size when ``train``/``validation`` are arrays.
            shuffle: shuffle ``train`` each epoch when it is given as arrays.

        Raises:
            FloatingPointError: the loss became NaN or infinite.
            ValueError: the loader produced no batches.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"fit: epochs must be an int >= 0, got {epochs!r}")
        if _is_array_pair(train):
            seed = self._loader_state["seed"] if self._loader_state else None
            train = _array_loader(train, self.model, batch_size, shuffle, seed)
        elif self._loader_state is not None and callable(getattr(train, "load_state_dict",
                                                                 None)):
            train.load_state_dict(self._loader_state)
        if _is_array_pair(validation):
            validation = _array_loader(validation, self.model, batch_size, False, 0)
        self._loader_state = None
        self.train_loader = train
        self.stop_training = False
        for cb in self.callbacks:
            cb.on_train_begin()
        while self.epoch < epochs and not self.stop_training:
            epoch = self.epoch + 1
            if hasattr(train, "set_epoch"):
                train.set_epoch(epoch - 1)  # epochs are 0-based for the loader's RNG
            for cb in self.callbacks:
                cb.on_epoch_begin(epoch)
            logs = self._train_epoch(train, epoch, epochs)
            if validation is not None:
                val = self.evaluate(validation, desc=f"epoch {epoch} val")
                logs.update({f"val_{k}": v for k, v in val.items()})
            self.epoch = epoch
            self.history.append(logs)
            for cb in self.callbacks:
                cb.on_epoch_end(epoch, logs)
        for cb in self.callbacks:
            cb.on_train_end()
        return self.history

    def _flush(self, pending: list[tuple[Tensor, int]], step: int, epoch: int,
               total: int | None) -> tuple[float, int]:
        """Read the pending losses back (one device->host copy) and check them."""
        xp = pending[0][0].xp
        losses = backend.to_numpy(xp.stack([p[0].data.astype(np.float64) for p in pending]))
        counts = np.array([p[1] for p in pending], dtype=np.float64)
        finite = np.isfinite(losses)
        if not finite.all():
            k = int(np.flatnonzero(~finite)[0])
            bad_step = step - len(pending) + 1 + k
            groups = getattr(self.optimizer, "param_groups", None)
            lr = f" (lr {groups[0]['lr']:.3g})" if groups else ""
            of = f" of {total}" if total else ""
            raise FloatingPointError(
                f"fit: the training loss became {losses[k]} at epoch {epoch}, batch "
                f"{bad_step}{of}; training diverged. Lower the learning rate{lr}, clip the "
                "gradients (optim.clip_grad_norm_), or check the inputs for NaN/inf (on the "
                "GPU, an integer label outside [0, C) also gives a NaN loss)")
        return float((losses * counts).sum()), int(counts.sum())

    def _train_epoch(self, loader: Any, epoch: int, epochs: int) -> dict:
        self.model.train()
        total = len(loader) if hasattr(loader, "__len__") else None
        bar = self._bar(total, f"epoch {epoch}/{epochs}")
        start = time.perf_counter()
        seen = 0
        correct: Any = 0
        pending: list[tuple[Tensor, int]] = []
        loss_sum, loss_n = 0.0, 0
        step = 0
        try:
            for step, (x, y) in enumerate(loader, 1):
                loss, hits = self.train_step(x, y)
                n = x.shape[0]
                seen += n
                pending.append((loss.detach(), n))
                correct = correct + hits
                if step % self.log_every == 0 or step == total:
                    s, c = self._flush(pending, step, epoch, total)
                    loss_sum, loss_n = loss_sum + s, loss_n + c
                    pending.clear()
                    elapsed = time.perf_counter() - start
                    bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}",
                                    acc=f"{float(correct) / seen:.4f}",
                                    img_s=f"{seen / max(elapsed, 1e-9):.0f}")
                bar.update(1)
                for cb in self.callbacks:
                    cb.on_batch_end(step, {"loss": loss})
            if pending:
                s, c = self._flush(pending, step, epoch, total)
                loss_sum, loss_n = loss_sum + s, loss_n + c
        finally:
            bar.close()
        if seen == 0:
            raise ValueError(
                f"fit: the training loader produced no batches in epoch {epoch} (loader: "
                f"{loader!r}); is the dataset empty, or smaller than batch_size with "
                "drop_last=True?")
        elapsed = time.perf_counter() - start
        logs = {"epoch": epoch, "loss": loss_sum / seen, "accuracy": float(correct) / seen,
                "time": elapsed, "images_per_s": seen / max(elapsed, 1e-9)}
        groups = getattr(self.optimizer, "param_groups", None)
        if groups:
            logs["lr"] = float(groups[0]["lr"])
        return logs

    def evaluate(self, loader: Any, desc: str = "evaluate", batch_size: int = 256) -> dict:
        """Mean loss and accuracy over ``loader`` in eval mode, under ``no_grad``.

        Args:
            loader: a ``DataLoader``, a re-iterable of ``(x, y)`` batches, or ``(x, y)``
                arrays (batched with ``batch_size``).
            desc: the progress bar's label.
            batch_size: batch size when ``loader`` is a pair of arrays.

        Returns:
            ``{"loss": float, "accuracy": float}``.
        """
        if _is_array_pair(loader):
            loader = _array_loader(loader, self.model, batch_size, False, 0)
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        total = len(loader) if hasattr(loader, "__len__") else None
        bar = self._bar(total, desc)
        try:
            with no_grad(), self.autocast:
                for x, y in loader:
                    logits = self.model(x)
                    n = x.shape[0]
                    loss_sum += float(self.loss_fn(logits, y).item()) * n
                    correct += int(_accuracy_count(logits, y))
                    seen += n
                    bar.update(1)
        finally:
            bar.close()
            self.model.train(was_training)
        if seen == 0:
            raise ValueError(f"evaluate: the loader produced no batches (loader: {loader!r})")
        return {"loss": loss_sum / seen, "accuracy": correct / seen}

    def predict(self, loader: Any, batch_size: int = 256) -> np.ndarray:
        """Logits for every batch of ``loader`` (eval mode, ``no_grad``), as one NumPy array.

        The loader may yield ``(x, y)`` pairs or bare ``x`` batches; an array (or Tensor)
        of inputs is batched here with ``batch_size``.
        """
        return predict(self.model, loader, batch_size=batch_size)


def predict(model: Any, loader: Any, batch_size: int = 256) -> np.ndarray:
    """Batched inference: concatenated logits of ``model`` over ``loader`` (NumPy).

    The model is put in eval mode for the call and restored afterwards.

    Args:
        model: the network.
        loader: a re-iterable of ``x`` or ``(x, ...)`` batches, or one input array/Tensor
            ``(N, ...)`` (batched with ``batch_size``).
        batch_size: batch size when ``loader`` is an array.

    Returns:
        ``(N, classes)`` logits.

    >>> import numpy as np
    >>> from minidl import nn
    >>> predict(nn.Linear(2, 3), np.zeros((5, 2), np.float32), batch_size=2).shape
    (5, 3)
    """
    if hasattr(loader, "shape") and hasattr(loader, "dtype"):
        loader = _array_loader((loader,), model, batch_size, False, 0)
    was_training = getattr(model, "training", False)
    model.eval()
    outs = []
    try:
        with no_grad():
            for batch in loader:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                outs.append(backend.to_numpy(model(x).data))
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError(f"predict: the loader produced no batches (loader: {loader!r})")
    return np.concatenate(outs)


def report_run(trainer: Trainer, history: History, test: Any, out: str | os.PathLike,
               config: dict, wall_seconds: float, classes: Sequence[str] | None = None,
               images: Any = None, labels: Any = None) -> dict:
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

    Returns:
        The ``result.json`` contents.
    """
    import platform

    out = Path(out)
    history.save(out)
    final = trainer.evaluate(test, desc="test")
    print(f"test loss {final['loss']:.4f}  test accuracy {final['accuracy']:.4f}")
    result = dict(config)
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
        y_pred = trainer.predict(test).argmax(axis=1)
        plot.save_training_report(out, history, labels, y_pred, classes, images)
        print(f"plots written to {out}/")
    return result
