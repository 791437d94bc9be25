"""``LayerStats``: per-layer activation and gradient statistics, for debugging training.

When a model does not learn, the first questions are per layer: do the activations keep a
sensible scale through the depth, or do they explode or vanish? How many ReLU outputs are
zero (dead units)? How large is each layer's gradient, compared with its weights? How
far will one optimizer step move them? ``LayerStats`` answers them for one forward and
backward pass, through forward hooks: each leaf module's output is recorded, asked to
keep its gradient (``retain_grad``), and summarised after ``backward``.

Hooks turn off ``Sequential``'s layer fusion for the watched layers (the fused op never
materialises the conv output), so the statistics describe the plain path. The results are
the same, and the step is a little slower while watching.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidl import backend
from minidl.autograd import Tensor
from minidl.nn.module import Module


def _stats(a: Any) -> tuple[float, float, float]:
    """(mean, std, fraction exactly zero) of an array, in float64 on the host."""
    v = backend.to_numpy(a).astype(np.float64, copy=False)
    return float(v.mean()), float(v.std()), float((v == 0).mean())


class LayerStats:
    """Record each leaf layer's output and output gradient while the block runs.

    Use it around one forward and backward pass, then read ``rows`` (one dict per layer,
    in forward order) or print ``table()``.

    Columns of each row: ``layer`` (its name in the model), ``type``, ``shape`` (of the
    output), ``mean``/``std`` of the output, ``zeros`` (fraction of outputs exactly 0: for
    a ReLU, dead units), ``grad_std`` (std of d loss / d output; None before backward or
    when the output needs no gradient), and for layers with a ``weight``: ``weight_std``
    and ``weight_grad_ratio`` = ``|grad W| / |W|``, which times the learning rate is the
    relative size of a plain SGD step (healthy training usually sits near 1e-3 per step).

    Args:
        model: the module to watch (its leaf modules, those without children, are
            hooked).

    >>> import minidl
    >>> from minidl import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> with LayerStats(model) as stats:
    ...     model(minidl.randn(16, 4)).sum().backward()
    >>> [r["type"] for r in stats.rows]
    ['Linear', 'ReLU', 'Linear']
    >>> 0 <= stats.rows[1]["zeros"] <= 1 and stats.rows[0]["grad_std"] > 0
    True
    """

    def __init__(self, model: Module) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"LayerStats: expected an nn.Module, got {type(model).__name__}")
        self.model = model
        self._handles: list[Any] = []
        self._seen: list[tuple[str, Module, Tensor]] = []

    def __enter__(self) -> LayerStats:
        self._seen.clear()
        for name, module in self.model.named_modules():
            if next(module.children(), None) is not None:
                continue  # containers: their leaves are watched instead
            self._handles.append(module.register_forward_hook(self._hook(name or "(model)")))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Any:
        def record(module: Module, inputs: tuple, out: Any) -> None:
            if isinstance(out, Tensor):
                if out.requires_grad:
                    out.retain_grad()
                self._seen.append((name, module, out))
        return record

    @property
    def rows(self) -> list[dict]:
        """One summary dict per recorded layer output, in forward order."""
        rows = []
        for name, module, out in self._seen:
            mean, std, zeros = _stats(out.data)
            row = {"layer": name, "type": type(module).__name__, "shape": tuple(out.shape),
                   "mean": mean, "std": std, "zeros": zeros,
                   "grad_std": None if out.grad is None else _stats(out.grad.data)[1]}
            w = getattr(module, "weight", None)
            if isinstance(w, Tensor):
                wv = backend.to_numpy(w.data).astype(np.float64)
                row["weight_std"] = float(wv.std())
                if w.grad is not None:
                    gv = backend.to_numpy(w.grad.data).astype(np.float64)
                    norm = float(np.linalg.norm(wv))
                    row["weight_grad_ratio"] = (float(np.linalg.norm(gv)) / norm
                                                if norm > 0 else math.inf)
            rows.append(row)
        return rows

    def table(self) -> str:
        """The rows as an aligned text table (also printed by ``print(stats)``)."""
        head = (f"{'layer':<14}{'type':<12}{'shape':<20}{'mean':>10}{'std':>10}{'zeros':>8}"
                f"{'grad std':>11}{'|gW|/|W|':>11}")
        lines = [head, "-" * len(head)]

        def num(v: Any, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)
        for r in self.rows:
            lines.append(f"{r['layer']:<14}{r['type']:<12}{str(r['shape']):<20}"
                         f"{r['mean']:>10.3g}{r['std']:>10.3g}{r['zeros']:>8.1%}"
                         f"{num(r['grad_std'], '.3g'):>11}"
                         f"{num(r.get('weight_grad_ratio'), '.3g'):>11}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
