"""Loss modules: ``CrossEntropyLoss`` (fused softmax + negative log-likelihood, optional
label smoothing) and ``MSELoss``, thin wrappers over ``minidl.functional``."""

from __future__ import annotations

from typing import Any

import minidl.functional as F
from minidl.autograd import Tensor
from minidl.nn.module import Module


class CrossEntropyLoss(Module):
    """Cross-entropy of ``softmax(logits)`` against integer labels or probabilities.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        label_smoothing: ``s`` in ``[0, 1)``: the target becomes ``(1 - s) one_hot + s / C``.

    Shape:
        - Input: logits ``(N, C)``; target ``(N,)`` integer labels or ``(N, C)``
          probabilities.
        - Output: a scalar, or ``(N,)`` with ``reduction="none"``.

    >>> import minidl
    >>> loss = minidl.nn.CrossEntropyLoss()
    >>> round(loss(minidl.zeros(2, 4), minidl.tensor([0, 3])).item(), 4)
    1.3863
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.reduction, self.label_smoothing = reduction, float(label_smoothing)

    def forward(self, logits: Tensor, target: Any) -> Tensor:
        return F.softmax_cross_entropy(logits, target, reduction=self.reduction,
                                       label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        s = f"reduction={self.reduction!r}"
        return s + (f", label_smoothing={self.label_smoothing}" if self.label_smoothing else "")


class MSELoss(Module):
    """Mean squared error; ``pred`` and ``target`` must have the same shape.

    >>> import minidl
    >>> minidl.nn.MSELoss()(minidl.tensor([1.0, 3.0]), minidl.tensor([1.0, 1.0])).item()
    2.0
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, pred: Tensor, target: Any) -> Tensor:
        return F.mse_loss(pred, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
