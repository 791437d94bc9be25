"""Training: ``Trainer`` (fit / evaluate / predict), its ``History`` and ``Callback`` hooks.

* ``minidl/train/trainer.py``: the loop, checkpoints and resume, ``predict`` and
  ``tta_predict``;
* ``minidl/train/callbacks.py``: ``Callback`` and the ready-made ones (``ModelCheckpoint``,
  ``EarlyStopping``, ``PrintEpoch``, ``LRSchedulerStep``);
* ``minidl/train/tensorboard.py``: ``TensorBoard``, a callback writing TensorBoard event
  files (optional ``tensorboardX``; its images drawn by ``_tensorboard_images.py``);
* ``minidl/train/history.py``: ``History``, the per-epoch metrics saved as JSON and CSV;
* ``minidl/train/tta.py``: test-time augmentation, ``tta_logits`` for one batch
  (``tta_predict`` and ``Trainer.evaluate(..., tta=level)`` run it over a data set).

``from minidl.train import Trainer`` is the usual entry point.
"""

from minidl.train.callbacks import (
    Callback,
    EarlyStopping,
    LRSchedulerStep,
    ModelCheckpoint,
    PrintEpoch,
)
from minidl.train.history import History
from minidl.train.tensorboard import TensorBoard
from minidl.train.trainer import Trainer, predict, tta_predict
from minidl.train.tta import tta_logits

__all__ = [
    "Callback", "EarlyStopping", "History", "LRSchedulerStep", "ModelCheckpoint",
    "PrintEpoch", "TensorBoard", "Trainer", "predict", "tta_logits", "tta_predict",
]
