"""The training loop: ``Trainer.fit`` / ``evaluate`` / ``predict``.

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

Data-parallel training: give a ``minidl.distributed.DistributedDataParallel`` model and
loaders with a ``DistributedSampler`` (arrays given to ``fit`` are sharded here, the batch
size being the global one). Every rank runs the same ``fit``; the trainer averages the
gradients after each backward, reduces the metrics over the ranks, makes the batch-norm
statistics equal before evaluating and checkpointing, and lets rank 0 alone write files
and show progress bars while the others wait.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from minidl import amp, backend, random
from minidl.autograd import Tensor, no_grad
from minidl.data import DataLoader
from minidl.distributed import (
    DistributedDataParallel,
    DistributedSampler,
    all_reduce_scalars,
    get_world,
    local_batch_size,
)
from minidl.functional import argmax, softmax_cross_entropy
from minidl.nn import Module
from minidl.optim import Optimizer
from minidl.optim.lr_scheduler import LRScheduler
from minidl.serialization import load, save
from minidl.train.callbacks import Callback, LRSchedulerStep
from minidl.train.history import History
from minidl.train.tta import _check_level, tta_logits

Batches = Iterable[Any] | tuple[Any, Any]
"""What ``fit``/``evaluate`` take: a re-iterable of ``(x, y)`` batches (a ``DataLoader``) or
an ``(x, y)`` pair of arrays/Tensors, batched by the trainer."""


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
                  seed: int | None, train: bool = False) -> Any:
    """A loader over ``(x, y)`` arrays; for a ``DistributedDataParallel`` model, this rank's
    shard of it, ``batch_size`` being the global batch (of training; evaluation shards
    without padding)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"Trainer: batch_size must be a positive int, got {batch_size!r}")
    arrays = tuple(a.data if isinstance(a, Tensor) else a for a in data)
    sampler = None
    if isinstance(model, DistributedDataParallel) and model.world.size > 1:
        world = model.world
        if train:
            batch_size = local_batch_size(int(batch_size), world)
            # Every rank must shuffle with the same seed: take rank 0's.
            seed = world.broadcast_object(seed if seed is not None else
                                          int(random.default_generator().integers(0, 2**63 - 1)))
        sampler = DistributedSampler(world, pad=train)
    return DataLoader(arrays, batch_size=int(batch_size), shuffle=shuffle, seed=seed,
                      device=_model_device(model), sampler=sampler)


# A first training step slower than this is explained to the user (numba compiling).
SLOW_FIRST_STEP_S = 5.0

_CHECKPOINT_FIELDS = ("model", "optimizer", "epoch", "rng")


def _check_checkpoint(state: Any, trainer: Trainer) -> tuple[dict, dict | None]:
    """Check a trainer checkpoint's fields before anything is changed; return the decoded
    random state and loader state. Raises ``ValueError`` naming what is wrong."""
    if not isinstance(state, dict):
        raise ValueError(f"expected a trainer checkpoint (a dict), got {type(state).__name__}")
    missing = [k for k in _CHECKPOINT_FIELDS if k not in state]
    if trainer.scheduler is not None and "scheduler" not in state:
        missing.append("scheduler")
    if missing:
        hint = ""
        if "model" in missing and state and all(hasattr(v, "shape") for v in state.values()):
            hint = ("; this looks like a model state_dict: load it with "
                    "model.load_state_dict(minidl.load(path))")
        elif missing == ["scheduler"]:
            hint = "; the checkpoint has no scheduler state but this trainer has a scheduler"
        raise ValueError(f"not a trainer checkpoint: missing field(s) {', '.join(missing)}"
                         + hint)
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"checkpoint field 'epoch' must be an int >= 0, got {epoch!r}")
    for field in ("model", "optimizer"):
        if not isinstance(state[field], dict):
            raise ValueError(f"checkpoint field {field!r} must be a dict (a state_dict), got "
                             f"{type(state[field]).__name__}")
    history = state.get("history", [])
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise ValueError("checkpoint field 'history' must be a list of dicts")
    if "meta" in state:  # absent in checkpoints written before it existed: fine
        _metadata_copy(state["meta"], "checkpoint field 'meta'")
    try:
        rng = json.loads(str(state["rng"]))
        if not isinstance(rng, dict) or "bit_generator" not in rng:
            raise ValueError("no bit_generator")
    except ValueError:
        raise ValueError("checkpoint field 'rng' is not a random state saved by minidl "
                         f"(got {str(state['rng'])[:60]!r})") from None
    loader = state.get("train_loader")
    if loader is not None:
        try:
            loader = {str(k): int(v) for k, v in loader.items()}
        except (AttributeError, TypeError, ValueError):
            raise ValueError("checkpoint field 'train_loader' must map names to ints, got "
                             f"{loader!r}") from None
    return rng, loader


def _metadata_copy(obj: Any, what: str) -> dict:
    """``_json_copy`` of a metadata dict (a dict at the top, JSON values inside)."""
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a dict of JSON values, got {type(obj).__name__}")
    return _json_copy(obj, what)


def _json_copy(obj: Any, what: str, path: str = "", depth: int = 0) -> Any:
    """A copy of ``obj`` made of JSON values only (dicts with str keys, lists, tuples, str,
    int, float, bool, None; NumPy bool/int/float scalars become Python ones);
    ``ValueError`` naming the key path of anything else.

    Checkpoint metadata is read by tools that know nothing of the training script, so it
    holds plain values, never arrays or objects; the copy keeps later changes of the
    caller's dict out of the checkpoints.
    """
    where = path or "<root>"
    if depth > 32:
        raise ValueError(f"{what}: nested more than 32 levels deep at {where!r}")
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise ValueError(f"{what}: key {bad[0]!r} at {where!r} is a "
                             f"{type(bad[0]).__name__}; keys must be strings")
        return {k: _json_copy(v, what, f"{path}/{k}" if path else k, depth + 1)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_copy(v, what, f"{path}/{i}" if path else str(i), depth + 1)
                for i, v in enumerate(obj)]
    hint = " (convert it with .tolist())" if isinstance(obj, np.ndarray) else ""
    raise ValueError(f"{what}: the value at {where!r} is a {type(obj).__name__}{hint}; "
                     "metadata holds JSON values only: dict, list, str, int, float, bool, None")


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
        metadata: a dict of JSON values (dicts with str keys, lists, str, int, float, bool,
            None) written into every checkpoint under ``"meta"``: what a checkpoint needs to
            be used without the script that trained it. ``minidl.predict`` reads the layout
            of ``minidl.inference.prediction_metadata`` (architecture, classes, input size
            and normalization). A trainer without metadata takes a loaded checkpoint's.

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
        model: Module,
        optimizer: Optimizer,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        scheduler: LRScheduler | None = None,
        scheduler_per: str = "epoch",
        callbacks: Iterable[Callback] = (),
        progress: bool = True,
        log_every: int = 10,
        mixed_precision: str | None = None,
        metadata: dict | None = None,
    ) -> None:
        if mixed_precision is not None and not getattr(optimizer, "supports_loss_scaling", True):
            raise ValueError(
                f"Trainer: mixed_precision={mixed_precision!r} scales the loss, which "
                f"{type(optimizer).__name__} cannot undo (it clips per-example gradients "
                "before any unscaling); train in float32 (mixed_precision=None)")
        self.model = model
        self.ddp = model if isinstance(model, DistributedDataParallel) else None
        self.world = self.ddp.world if self.ddp is not None else get_world()
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
        self.progress = progress and self.is_main_process
        self.log_every = max(1, int(log_every))
        self.history = History()
        self.epoch = 0  # epochs completed
        self.stop_training = False
        self.metadata = None if metadata is None else _metadata_copy(metadata,
                                                                        "Trainer: metadata")
        self.train_loader: Any = None
        self._loader_state: dict | None = None  # from a checkpoint, applied by fit()
        self._told_compile = False

    @property
    def is_main_process(self) -> bool:
        """True on rank 0 (always, in one process): the rank that writes files and logs."""
        return self.world.rank == 0

    @property
    def _distributed(self) -> bool:
        return self.ddp is not None and self.world.size > 1

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume: model, optimizer, scheduler, RNG, epoch, history and
        the training loader's seed.

        In a data-parallel run every rank must call it (the batch-norm statistics are
        averaged and every rank's random state is gathered into ``rng_ranks``)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "history": self.history.epochs,
            "rng": json.dumps(random.get_rng_state()),
        }
        if self._distributed:
            state["rng_ranks"] = json.dumps(self.world.allgather_object(
                random.get_rng_state()))
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.scaler.enabled:
            state["grad_scaler"] = self.scaler.state_dict()
        if self.metadata is not None:
            state["meta"] = _metadata_copy(self.metadata, "Trainer.metadata")
        loader_state = getattr(self.train_loader, "state_dict", None)
        if callable(loader_state):
            state["train_loader"] = {k: int(v) for k, v in loader_state().items()}
        elif self._loader_state is not None:
            state["train_loader"] = dict(self._loader_state)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``, all or nothing.

        The checkpoint's fields are checked first (a clear ``ValueError`` names what is
        missing or malformed, e.g. for a bare model ``state_dict``); then model, optimizer,
        scheduler, scaler, epoch, history and random state are restored, and if any of
        them refuses its part (a shape or name mismatch), everything already restored is
        put back, so a failed load never leaves a half-loaded trainer. The loader's seed
        is applied to the loader that the next ``fit`` receives (so a loader built with
        ``seed=None`` still replays the original run's order and augmentation).
        """
        rng, loader_state = _check_checkpoint(state, self)
        before = self._snapshot()
        try:
            self._apply(state, rng, loader_state)
        except BaseException:
            self._apply(*before)
            raise

    def _snapshot(self) -> tuple[dict, dict, dict | None]:
        """What ``load_state_dict`` changes, copied, in the form ``_apply`` takes."""
        state = self.state_dict()
        state["model"] = {k: np.array(backend.to_numpy(v.data if isinstance(v, Tensor) else v))
                          for k, v in state["model"].items()}
        state["history"] = [dict(e) for e in self.history.epochs]
        return state, random.get_rng_state(), self._loader_state

    def _apply(self, state: dict, rng: dict, loader_state: dict | None) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.enabled and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.epoch = int(state["epoch"])
        self.history = History(state.get("history", []))
        self._loader_state = loader_state
        ranks = state.get("rng_ranks")
        if ranks is not None and self._distributed:
            ranks = json.loads(str(ranks))
            if len(ranks) == self.world.size:  # same world: each rank resumes its own stream
                rng = ranks[self.world.rank]
        random.set_rng_state(rng)
        if self.metadata is None and state.get("meta") is not None:
            # A resumed run keeps writing what its first checkpoints said about the model.
            self.metadata = _metadata_copy(state["meta"], "checkpoint field 'meta'")

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write ``state_dict()`` to ``path`` atomically (``minidl.save``), creating its
        folder if needed. In a data-parallel run every rank calls it, rank 0 writes and the
        others wait until the file is complete."""
        state = self.state_dict()
        if self.is_main_process:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            save(state, path)
        self.world.barrier()

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint written by ``save_checkpoint``; ``fit`` then continues
        after its epoch. Nothing changes unless the whole checkpoint loads. In a
        data-parallel run rank 0 reads the file and sends it to the others (which need not
        see the file), and every rank raises the same error if it does not load."""
        try:
            state = load(path) if self.is_main_process else None
            error = None
        except (OSError, ValueError) as exc:
            state, error = None, exc
        if self._distributed:
            state, error = self.world.broadcast_object((state, error))
        if error is not None:
            if isinstance(error, ValueError):
                raise ValueError(f"Trainer.load_checkpoint: {os.fspath(path)}: {error}") \
                    from None
            raise error
        try:
            self.load_state_dict(state)
        except ValueError as exc:
            raise ValueError(f"Trainer.load_checkpoint: {os.fspath(path)}: {exc}") from None

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
        if self.ddp is not None:  # before the step, so that every rank checks the same grads
            self.ddp.allreduce_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, _accuracy_count(logits.detach(), y)

    def fit(
        self,
        train: Batches,
        y: Any = None,
        *,
        epochs: int,
        validation: Batches | None = None,
        batch_size: int = 32,
        shuffle: bool = True,
    ) -> History:
        """Train until ``epochs`` epochs are complete (counting epochs already done when
        resuming) and return the history.

        ``fit(loader, epochs=10)``, ``fit((x, y), epochs=10, batch_size=64)`` and, as in
        Keras, ``fit(x, y, epochs=10, batch_size=64)`` all work.

        Args:
            train: a ``DataLoader`` (or any re-iterable of ``(x, y)`` tensor batches), or a
                pair of arrays ``(x, y)`` (inputs already preprocessed), which is batched
                here with ``batch_size`` and ``shuffle``; or the input array ``x`` with the
                labels as ``y``.
            y: the labels, when ``train`` is the input array (Keras' ``fit(x, y)``).
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
        if y is not None:
            if not _is_array_pair((train, y)):
                raise TypeError(f"fit: with y, the first argument must be the input array x "
                                f"(got {type(train).__name__} and {type(y).__name__}); pass a "
                                "DataLoader alone, or arrays as fit(x, y, ...)")
            train = (train, y)
        if _is_array_pair(train):
            seed = self._loader_state["seed"] if self._loader_state else None
            train = _array_loader(train, self.model, batch_size, shuffle, seed, train=True)
        elif self._loader_state is not None and callable(getattr(train, "load_state_dict",
                                                                 None)):
            train.load_state_dict(self._loader_state)
        if _is_array_pair(validation):
            validation = _array_loader(validation, self.model, batch_size, False, 0)
        self._loader_state = None
        self.train_loader = train
        if self._distributed:
            self._check_sharded(train)
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

    def _note_slow_first_step(self, seconds: float, bar: Any) -> None:
        """Say why a run's first step was slow (numba compiling minidl's kernels), once."""
        self._told_compile = True
        if seconds > SLOW_FIRST_STEP_S and self.is_main_process:
            bar.write(f"(the first step took {seconds:.0f} s: numba compiled minidl's CPU "
                      "kernels for these shapes and dtypes; they are cached on disk, so the "
                      "next run starts at full speed)")

    def _check_sharded(self, loader: Any) -> None:
        """Fail on every rank, not hang, when the ranks' training loaders disagree: an
        unsharded loader, different seeds (different shuffles), or different numbers of
        batches (a rank with more would wait forever in the gradient allreduce)."""
        sampler = getattr(loader, "sampler", None)
        mine = (len(loader) if hasattr(loader, "__len__") else None,
                getattr(loader, "seed", None),
                None if sampler is None else getattr(sampler, "num_replicas", None))
        every = self.world.allgather_object(mine)
        size = self.world.size
        if isinstance(loader, DataLoader) and any(e[2] != size for e in every):
            raise ValueError(
                f"fit: in a {size}-rank run the training DataLoader needs "
                f"sampler=minidl.distributed.DistributedSampler() (ranks per sampler, rank 0 "
                f"first: {[e[2] for e in every]}); without it every rank trains on the whole "
                "data set")
        for k, what in ((0, "batches per epoch"), (1, "loader seeds")):
            values = [e[k] for e in every]
            if len(set(values)) > 1:
                raise ValueError(
                    f"fit: the ranks' training loaders have different {what}: {values} "
                    "(rank 0 first); build the same loader, with the same seed, on every rank")

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
                if x.shape[0] == 0:
                    # an empty draw of Poisson sampling (minidl.privacy): no loss to take,
                    # but the step still happens (a DP optimizer adds its noise)
                    self.optimizer.zero_grad()
                    self.optimizer.step()
                    bar.update(1)
                    for cb in self.callbacks:  # a per-batch schedule counts this step too
                        cb.on_batch_end(step, {"loss": None})
                    continue
                loss, hits = self.train_step(x, y)
                if step == 1 and not self._told_compile:
                    self._note_slow_first_step(time.perf_counter() - start, bar)
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
        if self._distributed:  # the epoch's metrics over every rank's images
            loss_sum, correct, seen = all_reduce_scalars([loss_sum, float(correct), seen],
                                                         self.world)
        elapsed = time.perf_counter() - start
        logs = {"epoch": epoch, "loss": loss_sum / seen, "accuracy": float(correct) / seen,
                "time": elapsed, "images_per_s": seen / max(elapsed, 1e-9)}
        groups = getattr(self.optimizer, "param_groups", None)
        if groups:
            logs["lr"] = float(groups[0]["lr"])
        # an optimizer may report metrics of its own each epoch: minidl.privacy's
        # DPOptimizer reports the privacy spent, {"epsilon": ...}
        extra = getattr(self.optimizer, "epoch_metrics", None)
        if callable(extra):
            logs.update(extra())
        return logs

    def evaluate(self, loader: Batches, desc: str = "evaluate", batch_size: int = 256,
                 tta: int = 0) -> dict:
        """Mean loss and accuracy over ``loader`` in eval mode, under ``no_grad``.

        Args:
            loader: a ``DataLoader``, a re-iterable of ``(x, y)`` batches, or ``(x, y)``
                arrays (batched with ``batch_size``).
            desc: the progress bar's label.
            batch_size: batch size when ``loader`` is a pair of arrays.
            tta: test-time augmentation level (``minidl.train.tta``): 0 plain, 1 averages
                with the mirrored images, 2 also with two one-pixel shifts. The loss is
                that of the averaged logits.

        Returns:
            ``{"loss": float, "accuracy": float}``.
        """
        tta = _check_level("Trainer.evaluate", tta)
        if _is_array_pair(loader):
            loader = _array_loader(loader, self.model, batch_size, False, 0)
        if self.ddp is not None:
            self.ddp.sync_buffers()
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        total = len(loader) if hasattr(loader, "__len__") else None
        bar = self._bar(total, desc)
        try:
            with no_grad(), self.autocast:
                for x, y in loader:
                    logits = tta_logits(self.model, x, tta)
                    n = x.shape[0]
                    loss_sum += float(self.loss_fn(logits, y).item()) * n
                    correct += int(_accuracy_count(logits, y))
                    seen += n
                    bar.update(1)
        finally:
            bar.close()
            self.model.train(was_training)
        if self._distributed:  # every rank's share of the data (each may have none)
            loss_sum, correct, seen = all_reduce_scalars([loss_sum, correct, seen], self.world)
        if seen == 0:
            raise ValueError(f"evaluate: the loader produced no batches (loader: {loader!r})")
        return {"loss": loss_sum / seen, "accuracy": correct / seen}

    def predict(self, loader: Any, batch_size: int = 256, tta: int = 0) -> np.ndarray:
        """Logits for every batch of ``loader`` (eval mode, ``no_grad``), as one NumPy array.

        The loader may yield ``(x, y)`` pairs or bare ``x`` batches; an array (or Tensor)
        of inputs is batched here with ``batch_size``. ``tta`` is the test-time
        augmentation level, as in ``evaluate``.
        """
        tta = _check_level("Trainer.predict", tta)
        return _infer("predict", self.model, loader, batch_size, tta)


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
    return _infer("predict", model, loader, batch_size, 0)


def tta_predict(model: Module, x: Any, level: int = 2, batch_size: int = 256) -> np.ndarray:
    """Batched inference with test-time augmentation: logits averaged over mirrored (and,
    at level 2, shifted) copies of the images, as one NumPy array.

    ``level`` 0 is ``predict``; 1 averages ``model(x)`` and ``model(flip(x))``; 2 averages
    that (weight 1/2) with the same on two copies reflect-padded by one pixel and cropped at
    offsets (0, 0) and (2, 2) (weight 1/4 each): see ``minidl.train.tta``. The model runs
    in eval mode under ``no_grad``, one forward pass per view and batch (``batch_size``
    images at a time, six passes at level 2); its training flag is restored afterwards.

    Args:
        model: the network, mapping ``(N, C, H, W)`` images to ``(N, classes)`` logits.
        x: preprocessed images ``(N, C, H, W)`` as an array or Tensor (batched with
            ``batch_size``), or a re-iterable of ``x`` or ``(x, ...)`` batches (a
            ``DataLoader``).
        level: 0, 1 or 2.
        batch_size: batch size when ``x`` is an array.

    Returns:
        ``(N, classes)`` logits.

    >>> import numpy as np
    >>> from minidl import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    >>> x = np.random.default_rng(0).normal(size=(5, 1, 3, 4)).astype(np.float32)
    >>> tta_predict(model, x, level=2, batch_size=2).shape
    (5, 2)
    >>> np.allclose(tta_predict(model, x, level=0), predict(model, x))
    True
    """
    level = _check_level("tta_predict", level)
    return _infer("tta_predict", model, x, batch_size, level)


def _infer(op: str, model: Any, loader: Any, batch_size: int, level: int) -> np.ndarray:
    """The loop of ``predict`` and ``tta_predict``: eval mode, ``no_grad``, NumPy logits."""
    if hasattr(loader, "shape") and hasattr(loader, "dtype"):
        # Inference is per rank: every rank predicts every row (never a shard of them).
        plain = model.module if isinstance(model, DistributedDataParallel) else model
        loader = _array_loader((loader,), plain, batch_size, False, 0)
    was_training = getattr(model, "training", False)
    model.eval()
    outs = []
    try:
        with no_grad():
            for batch in loader:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                outs.append(backend.to_numpy(tta_logits(model, x, level).data))
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError(f"{op}: the loader produced no batches (loader: {loader!r})")
    return np.concatenate(outs)
