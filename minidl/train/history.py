"""``History``: the per-epoch metrics of a run, as a list of dicts, saved as JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from minidl._fileio import atomic_write_text


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
