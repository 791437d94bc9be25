"""Losses: fused softmax cross-entropy and mean squared error.

``softmax_cross_entropy`` fuses log-softmax and the negative log-likelihood: with target
distribution ``q`` (one-hot, smoothed, or given probabilities) and ``p = softmax(x)``,
``loss_i = -sum_j q_ij log p_ij`` and its gradient is simply ``p_i * sum_j q_ij - q_i``:
no division by a tiny probability, so it is stable for any logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidl import _deprecated, backend
from minidl.autograd import Function, Tensor
from minidl.functional.activation import log_softmax, softmax
from minidl.functional.math import upper
from minidl.functional.reduce import mean as _mean
from minidl.functional.reduce import sum as _sum

_REDUCTIONS = ("mean", "sum", "none")


class SoftmaxCrossEntropyFunction(Function):
    """Per-sample ``loss_i = -sum_j q_ij log softmax(x)_ij``, loss ``(N,)``.

    Inputs: logits ``x (N, C)`` and, for probability targets, ``q (N, C)``; integer
    ``labels (N,)`` (an option) stand for ``q = (1 - s) one_hot + s / C``, s the smoothing.
    With ``nan_bad_labels`` (set on the GPU, where checking the range would cost a host
    sync), a row whose label is outside ``[0, C)`` gets a NaN loss and NaN gradients.

    Backward: ``gx = (softmax(x) * sum_j q_ij - q) * gy[:, None]`` (N, C) and
    ``gq = -log_softmax(x) * gy[:, None]`` (N, C).
    """

    nan_bad_labels = False

    def forward(self, x: Any, q: Any = None) -> Any:
        xp = backend.get_array_module(x)
        z = x - x.max(axis=1, keepdims=True)
        logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
        n, c = x.shape
        self.bad = None
        if q is None:  # integer labels, possibly smoothed
            if self.nan_bad_labels:
                # GPU indexing does not check bounds: clip so that it stays in bounds, and
                # mark the out-of-range rows to turn their loss into NaN
                self.bad = (self.labels < 0) | (self.labels >= c)
                self.labels = xp.clip(self.labels, 0, c - 1)
            picked = logp[xp.arange(n), self.labels]
            s = self.smoothing
            loss = -(1.0 - s) * picked - (s / c) * logp.sum(axis=1) if s else -picked
            if self.bad is not None:
                loss = xp.where(self.bad, xp.nan, loss)
        else:
            loss = -(q * logp).sum(axis=1)
        return loss.astype(x.dtype, copy=False)

    def _target(self, like: Tensor) -> tuple[Tensor, Any]:
        """The target distribution q as a constant tensor, and its row sums."""
        xp = like.xp
        n, c = like.shape
        if len(self.inputs) > 1:
            q = self.inputs[1]
            return q, _sum(q, axis=1, keepdims=True)
        s = self.smoothing
        qa = xp.full((n, c), s / c, dtype=like.dtype)
        qa[xp.arange(n), self.labels] += like.dtype.type(1.0 - s)
        if self.bad is not None:  # out-of-range labels: NaN gradients too
            qa = xp.where(self.bad[:, None], like.dtype.type(np.nan), qa)
        return Tensor._make(qa, False), 1.0

    def backward(self, gy: Tensor) -> tuple:
        x = self.inputs[0]
        q, qsum = self._target(x)
        g = gy.reshape(-1, 1)
        gx = (softmax(x, axis=1) * qsum - q) * g if self.needs_input_grad[0] else None
        if len(self.inputs) == 1:
            return gx
        gq = None
        if self.needs_input_grad[1]:
            gq = -log_softmax(x, axis=1) * g
        return gx, gq


def softmax_cross_entropy(
    logits: Tensor,
    target: Tensor | Any,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy between ``softmax(logits)`` and a target, fused and numerically stable.

    Args:
        logits: ``(N, C)`` unnormalized scores.
        target: ``(N,)`` integer class labels in ``[0, C)``, or ``(N, C)`` probabilities
            (same float dtype as the logits).
        reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` for ``(N,)`` losses.
        label_smoothing: ``s`` in ``[0, 1)``; integer labels become ``(1 - s) one_hot + s/C``.

    Raises:
        ValueError: on the CPU, for an integer label outside ``[0, C)``. On the GPU that
            check would cost a device-to-host sync each step, so instead such a label gives
            its row a NaN loss (and NaN gradients), which ``Trainer`` reports.

    >>> import minidl
    >>> logits = minidl.tensor([[2.0, 0.0, 0.0]])
    >>> round(minidl.functional.softmax_cross_entropy(logits, minidl.tensor([0])).item(), 4)
    0.2395
    """
    logits, target = upper(logits, target)  # float32 inside autocast
    op = "softmax_cross_entropy"
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise ValueError(f"{op}: logits must be a 2-D (N, C) tensor, got shape "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    if logits.dtype.kind != "f":
        raise TypeError(f"{op}: logits must be floating point, got {logits.dtype}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1), got {label_smoothing}")
    n, c = logits.shape
    t = target.data if isinstance(target, Tensor) else backend.to_device(
        np.asarray(target), logits.device)
    if t.dtype.kind in "iu":
        if t.shape != (n,):
            raise ValueError(f"{op}: integer labels must have shape ({n},), got {t.shape}")
        on_host = backend.get_array_module(t) is np
        if on_host and n and (t.min() < 0 or t.max() >= c):
            bad = int(t.min() if t.min() < 0 else t.max())
            raise ValueError(f"{op}: label {bad} is out of range for {c} classes")
        loss = SoftmaxCrossEntropyFunction.apply(logits, labels=t, smoothing=float(label_smoothing),
                                         nan_bad_labels=not on_host)
    elif t.dtype.kind == "f":
        if t.shape != (n, c):
            raise ValueError(f"{op}: probability targets must have shape ({n}, {c}), got "
                             f"{t.shape}")
        if not isinstance(target, Tensor):  # a plain array takes the logits' dtype
            t = t.astype(logits.dtype, copy=False)
        elif t.dtype != logits.dtype:
            raise TypeError(f"{op}: target dtype {t.dtype} differs from logits dtype "
                            f"{logits.dtype}")
        q = target if isinstance(target, Tensor) else Tensor._make(t, False)
        if label_smoothing:
            q = q * (1.0 - label_smoothing) + label_smoothing / c
        loss = SoftmaxCrossEntropyFunction.apply(logits, q, labels=None, smoothing=0.0)
    else:
        raise TypeError(f"{op}: target must hold integer labels or float probabilities, got "
                        f"dtype {t.dtype}")
    if reduction == "none":
        return loss
    return _mean(loss) if reduction == "mean" else _sum(loss)


cross_entropy = softmax_cross_entropy


def mse_loss(pred: Tensor, target: Tensor | Any, reduction: str = "mean") -> Tensor:
    """Mean squared error ``(pred - target)^2``; shapes must match exactly.

    >>> import minidl
    >>> minidl.functional.mse_loss(minidl.tensor([1.0, 3.0]), minidl.tensor([1.0, 1.0])).item()
    2.0
    """
    pred, target = upper(pred, target)  # float32 inside autocast
    if reduction not in _REDUCTIONS:
        raise ValueError(f"mse_loss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    tshape = getattr(target, "shape", np.shape(target))
    if tuple(tshape) != pred.shape:
        raise ValueError(f"mse_loss: pred has shape {pred.shape} but target has shape "
                         f"{tuple(tshape)}; they must match (no silent broadcasting)")
    d = pred - target
    sq = d * d
    if reduction == "none":
        return sq
    return _mean(sq) if reduction == "mean" else _sum(sq)


# The Function classes were named like the layers (``Conv2d``) before they took the
# ``Function`` suffix; the old names still work, with a DeprecationWarning.
__getattr__ = _deprecated.function_suffix(__name__)
