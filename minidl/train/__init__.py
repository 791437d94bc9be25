"""Training: ``Trainer`` (fit / evaluate / predict), its ``History`` and ``Callback`` hooks.

* ``minidl/train/trainer.py``: the loop, checkpoints and resume, ``predict``;
* ``minidl/train/callbacks.py``: ``Callback`` and the ready-made ones (``ModelCheckpoint``,
  ``EarlyStopping``, ``PrintEpoch``, ``LRSchedulerStep``);
* ``minidl/train/history.py``: ``History``, the per-epoch metrics saved as JSON and CSV.

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
from minidl.train.trainer import Trainer, predict

__all__ = [
    "Callback", "EarlyStopping", "History", "LRSchedulerStep", "ModelCheckpoint",
    "PrintEpoch", "Trainer", "predict",
]
