"""Shared by the privacy tests: the loop-of-single-examples reference for per-example
gradients, and an optimizer that records the gradients it is handed."""

from __future__ import annotations

import numpy as np

import minidl
import minidl.nn as nn
from minidl.optim.optimizer import Optimizer


def close(got, expected, what=""):
    """float64 results that only reorder sums agree to 1e-10."""
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-10, atol=1e-10,
                               err_msg=what)


def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def loop_reference(model, x, y, loss_fn=None):
    """Each example's own gradient, ``{id(param): (B, *shape)}``, by one forward and backward
    pass per example (with a one-example batch, mean and sum reductions are the same).
    Run it on a model without a PerSampleGradients attached (its hooks would record)."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    params = trainable(model)
    out = {id(p): [] for _, p in params}
    for i in range(len(x)):
        model.zero_grad()
        loss_fn(model(minidl.tensor(x[i:i + 1])), minidl.tensor(y[i:i + 1])).backward()
        for _, p in params:
            out[id(p)].append(np.zeros(p.shape) if p.grad is None else p.grad.numpy().copy())
    model.zero_grad()
    return {k: np.stack(v) for k, v in out.items()}


def ref_norms(ref):
    """Each example's gradient norm over all parameters, from ``loop_reference``."""
    return np.sqrt(sum((g.reshape(len(g), -1) ** 2).sum(1) for g in ref.values()))


class Recorder(Optimizer):
    """Records (copies of) the ``.grad`` of its parameters at each step; updates nothing."""

    def __init__(self, params) -> None:
        super().__init__(params, dict(lr=0.0))
        self.seen: list[list] = []

    def step(self) -> None:
        self.seen.append([None if p.grad is None else p.grad.numpy().copy()
                          for _, _, p in self._named()])
