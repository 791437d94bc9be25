"""``TensorBoard``: a callback that writes a run's metrics, images and text as TensorBoard
event files, through the optional ``tensorboardX`` package (``pip install -e
".[tensorboard]"``), then ``tensorboard --logdir <log_dir>``.

tensorboardX writes the event files without TensorFlow or PyTorch. Its ``add_graph`` needs
PyTorch, so the model is recorded as text instead: the ``model.summary`` table (layers,
output shapes, parameter counts), under the Text tab.

Tags (every scalar's x axis is the global step, the number of training batches so far, so
that per-step and per-epoch curves line up and a resumed run can hide the steps a crash
left behind):

* ``step/loss``, ``step/lr``: every ``log_every`` steps, the batch's loss and the learning
  rate that batch was trained with;
* ``train/<name>``, ``val/<name>``: at each epoch's last step, the epoch's metrics
  (``loss``, ``accuracy``; ``val_loss`` becomes ``val/loss``);
* ``epoch/<name>``: the epoch's other numbers (``epoch``, ``lr``, ``time``,
  ``images_per_s``, ``epsilon`` for DP training...);
* ``images/confusion_matrix``, ``images/predictions``: given ``images=(x, y)``;
* text ``model/summary`` and ``hparams`` (the HParams tab, too), at the start of ``fit``.
"""

from __future__ import annotations

import itertools
import os
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minidl.distributed import DistributedDataParallel
from minidl.train import _tensorboard_images as draw
from minidl.train.callbacks import Callback
from minidl.train.trainer import predict

INSTALL = 'pip install -e ".[tensorboard]"'
_files = itertools.count()  # event file names must differ even within one second
_warned_no_matplotlib = False


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"TensorBoard: {name} must be an int >= 1, got {value!r}")
    return int(value)


def _check_images(images: Any, class_names: Sequence[str] | None) -> tuple | None:
    """``images`` as ``(x, labels)`` NumPy arrays, checked now rather than at epoch end."""
    if images is None:
        if class_names is not None:
            raise ValueError("TensorBoard: class_names is only used with images=(x, y)")
        return None
    if not (isinstance(images, (tuple, list)) and len(images) == 2
            and all(hasattr(a, "shape") for a in images)):
        raise ValueError("TensorBoard: images must be a pair of arrays (x, y), got "
                         f"{type(images).__name__}")
    x, y = (np.asarray(getattr(a, "data", a)) for a in images)
    y = y.argmax(axis=1) if y.ndim == 2 else y  # one-hot / probability targets
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"TensorBoard: images must be (x, y) with x (N, ...) and labels "
                         f"(N,), N >= 1; got shapes {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise ValueError("TensorBoard: the labels of images must be class indices >= 0, got "
                         f"dtype {y.dtype}")
    if class_names is not None and int(y.max()) >= len(class_names):
        raise ValueError(f"TensorBoard: label {int(y.max())} in images but only "
                         f"{len(class_names)} class_names")
    return x, y.astype(np.int64)


def _hparam_value(v: Any) -> bool | int | float | str:
    """What TensorBoard's HParams tab can show: numbers, strings, booleans (else str)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v if isinstance(v, str) else str(v)


def epoch_tag(key: str, logs: dict) -> str:
    """The tag of the epoch metric ``key``: ``val/``, ``train/`` (the metrics that have a
    validation twin, or could) or ``epoch/`` (everything else).

    >>> [epoch_tag(k, {"val_loss": 0}) for k in ("loss", "val_loss", "lr")]
    ['train/loss', 'val/loss', 'epoch/lr']
    """
    if key.startswith("val_"):
        return "val/" + key[4:]
    if key in ("loss", "accuracy") or f"val_{key}" in logs:
        return "train/" + key
    return "epoch/" + key


class TensorBoard(Callback):
    """Write scalars, images and text for TensorBoard into ``log_dir`` (see the module
    docstring for the tags); view them with ``tensorboard --logdir <log_dir>``.

    Args:
        log_dir: the run's folder, created if needed. A resumed run (``load_checkpoint``)
            appends a new event file there: its steps continue from the checkpoint's
            (``trainer.epoch * len(train_loader)``; for a loader without ``len``, from the
            steps this object counted), and it hides what the interrupted run logged
            after them. A new run needs a folder of its own (TensorBoard shows one
            folder as one run).
        log_every: global steps between ``step/loss`` points. Reading a loss waits for the
            device, so not every step.
        images: optional ``(x, y)``: inputs as the model takes them and their class
            labels, e.g. a few hundred validation images. After each epoch the model
            predicts them (eval mode, ``no_grad``, training mode restored) for a confusion
            matrix and, for image batches ``(N, 1 or 3, H, W)``, a grid of the first
            ``max_images`` titled prediction / truth (red when wrong). Float inputs are
            rescaled per image to 0..255 for display.
        class_names: names of the classes of ``images`` (default: their indices).
        max_images: images in the prediction grid.
        input_shape: input shape for ``model.summary``, batch axis included (default:
            that of one image of ``images``); without either, the text is ``repr(model)``.
        hparams: optional run configuration (learning rate, batch size...; values other
            than numbers, strings and booleans are written as strings), for the HParams
            tab and as a text table.
        batch_size: batch size of the predictions on ``images``.

    The images are drawn with matplotlib (``minidl.plot``); without it, with NumPy alone:
    the same confusion matrix as a heat map and the grid with a green or red frame per
    image, without text (a warning says so once).

    In a data-parallel run only rank 0 (``trainer.is_main_process``) writes, or predicts.
    Events are flushed after every epoch, the file closed when ``fit`` ends; if ``fit``
    raises, call ``close()`` (or it is closed when this object is collected, or at exit).

    Raises:
        ImportError: tensorboardX is not installed.
        ValueError: an argument is out of range (its name is in the message); at the
            first epoch's end, if the model predicts a class that ``class_names`` lacks.
    """

    def __init__(self, log_dir: str | os.PathLike, log_every: int = 20, images: Any = None,
                 class_names: Sequence[str] | None = None, max_images: int = 32,
                 input_shape: Sequence[int] | None = None, hparams: dict | None = None,
                 batch_size: int = 256) -> None:
        try:
            import tensorboardX
        except ImportError as exc:
            raise ImportError(f"TensorBoard needs tensorboardX: {INSTALL}") from exc
        self._tbx = tensorboardX
        if not isinstance(log_dir, (str, os.PathLike)):
            raise ValueError(f"TensorBoard: log_dir must be a path, got {log_dir!r}")
        self.log_dir = Path(log_dir)
        self.log_every = _positive_int("log_every", log_every)
        self.max_images = _positive_int("max_images", max_images)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.images = _check_images(images, class_names)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        if input_shape is not None:
            input_shape = tuple(input_shape)
            if not input_shape or not all(isinstance(d, (int, np.integer)) and d > 0
                                          for d in input_shape):
                raise ValueError(f"TensorBoard: input_shape must be positive ints, batch "
                                 f"axis included, got {input_shape!r}")
        elif self.images is not None:
            input_shape = (1, *self.images[0].shape[1:])
        self.input_shape = input_shape
        if hparams is not None and not isinstance(hparams, dict):
            raise ValueError(f"TensorBoard: hparams must be a dict, got {type(hparams).__name__}")
        self.hparams = ({str(k): _hparam_value(v) for k, v in hparams.items()}
                        if hparams is not None else None)
        self.step = 0  # global step: training batches so far
        self._lr: float | None = None
        self.writer: Any = None
        self._finalizer: Any = None

    # -- the writer ------------------------------------------------------------------------
    def _open(self) -> None:
        self.close()  # a previous fit that raised may have left one open
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads a directory's files in name order, tensorboardX names them by
        # the second: the suffix orders a resumed run's file after the first run's and
        # keeps two writers of one second from overwriting each other.
        suffix = f".{self.step:012d}.{os.getpid()}.{next(_files):04d}"
        # After a resume, hide the interrupted run's events past the checkpoint's step.
        purge = self.step + 1 if self.step > 0 else None
        self.writer = self._tbx.SummaryWriter(logdir=str(self.log_dir), purge_step=purge,
                                              filename_suffix=suffix)
        self._finalizer = weakref.finalize(self, self.writer.close)

    def close(self) -> None:
        """Flush and close the event file (``fit`` does it at its end); safe to repeat."""
        if self._finalizer is not None:
            self._finalizer()  # closes the writer, once
        self.writer = self._finalizer = None

    def _lr_now(self) -> float | None:
        groups = getattr(self.trainer.optimizer, "param_groups", None)
        return float(groups[0]["lr"]) if groups else None

    # -- hooks -----------------------------------------------------------------------------
    def on_train_begin(self) -> None:
        """Open the writer (rank 0), set the global step from the trainer, write the text."""
        if not self.trainer.is_main_process:
            return
        loader = self.trainer.train_loader
        if hasattr(loader, "__len__"):
            self.step = self.trainer.epoch * len(loader)
        self._open()
        self.writer.add_text("model/summary", self._model_text(), self.step)
        if self.hparams is not None:
            self._write_hparams()

    def on_epoch_begin(self, epoch: int) -> None:
        self._lr = self._lr_now() if self.writer is not None else None

    def on_batch_end(self, step: int, logs: dict) -> None:
        """Count the step; every ``log_every`` steps write its loss (if any) and LR."""
        if self.writer is None:
            return
        self.step += 1
        # LR schedulers' callbacks run before this one: the optimizer already holds the
        # next batch's rate, so log the one read before this batch.
        lr, self._lr = self._lr, self._lr_now()
        if self.step % self.log_every:
            return
        loss = logs.get("loss")
        if loss is not None:
            self.writer.add_scalar("step/loss", float(loss), self.step)
        if lr is not None:
            self.writer.add_scalar("step/lr", lr, self.step)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """Write every numeric entry of ``logs``, the images, and flush."""
        if self.writer is None:
            return
        for key, value in logs.items():
            if isinstance(value, (int, float, np.integer, np.floating)) \
                    and not isinstance(value, bool):
                self.writer.add_scalar(epoch_tag(key, logs), float(value), self.step)
        if self.images is not None:
            self._write_images()
        self.writer.flush()

    def on_train_end(self) -> None:
        self.close()

    # -- content ---------------------------------------------------------------------------
    def _model_text(self) -> str:
        model = self.trainer.model
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if self.input_shape is not None and hasattr(model, "summary"):
            try:
                text = model.summary(self.input_shape, print_fn=None)
            except Exception as exc:  # a logging aid must not stop training
                text = f"(model.summary{self.input_shape} failed: {exc!r})\n\n{model!r}"
        else:
            text = repr(model)
        # four-space indent: Markdown code, so the table keeps its columns
        return "\n".join("    " + line for line in str(text).splitlines())

    def _write_hparams(self) -> None:
        from tensorboardX.summary import hparams as hparams_summaries

        metrics = {t: 0.0 for t in ("train/loss", "train/accuracy", "val/loss",
                                    "val/accuracy")}
        # The HParams tab reads the metrics' values from these scalar tags of the run.
        for summary in hparams_summaries(self.hparams, metrics):
            self.writer.file_writer.add_summary(summary, self.step)
        rows = "\n".join(f"| {k} | {v} |" for k, v in self.hparams.items())
        self.writer.add_text("hparams", "| name | value |\n|---|---|\n" + rows, self.step)

    def _write_images(self) -> None:
        x, y = self.images
        pred = predict(self.trainer.model, x, batch_size=self.batch_size).argmax(axis=1)
        names = self.class_names or [str(i) for i in range(max(int(y.max()),
                                                               int(pred.max())) + 1)]
        if int(pred.max()) >= len(names):
            raise ValueError(f"TensorBoard: the model predicts class {int(pred.max())} but "
                             f"only {len(names)} class_names were given")
        use_mpl = draw.have_matplotlib()
        global _warned_no_matplotlib
        if not use_mpl and not _warned_no_matplotlib:
            _warned_no_matplotlib = True
            warnings.warn("TensorBoard: matplotlib is not installed, so the confusion matrix "
                          "and prediction grid are drawn without text; pip install -e "
                          '".[plot]"', stacklevel=2)
        self._add_image("images/confusion_matrix", draw.confusion_image(y, pred, names,
                                                                         use_mpl))
        if x.ndim == 4 and (x.shape[1] in (1, 3) or x.shape[-1] in (1, 3)):
            k = min(self.max_images, len(x))
            self._add_image("images/predictions",
                            draw.grid_image(x[:k], y[:k], pred[:k], names, use_mpl))

    def _add_image(self, tag: str, rgb: np.ndarray) -> None:
        """``add_image`` without Pillow, which tensorboardX would need to encode it."""
        from tensorboardX.proto.summary_pb2 import Summary

        h, w, c = rgb.shape
        image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=draw.png(rgb))
        self.writer.file_writer.add_summary(
            Summary(value=[Summary.Value(tag=tag, image=image)]), self.step)
