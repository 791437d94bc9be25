"""Test-time augmentation (TTA): a classifier's logits averaged over mirrored and shifted
copies of each image, as in airbench's CIFAR-10 recipe.

With ``m`` the model, ``flip`` the left-right mirror and ``t1``, ``t2`` the image
reflect-padded by one pixel and cropped back at offsets ``(0, 0)`` and ``(2, 2)`` (shifted
one pixel down-right and one pixel up-left)::

    level 0:  L0(x) = m(x)
    level 1:  L1(x) = (m(x) + m(flip(x))) / 2
    level 2:  L2(x) = L1(x) / 2 + (L1(t1(x)) + L1(t2(x))) / 4

Level 2 costs six forward passes. ``tta_logits`` is one batch; ``minidl.train.tta_predict``
and ``Trainer.evaluate(..., tta=level)`` run it over a whole data set in eval mode (they live
in ``trainer.py``, beside ``predict``, whose loop they share; this module imports nothing
from there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from minidl.autograd import Tensor
from minidl.backend import get_array_module

_LEVELS = (0, 1, 2)


def _check_level(op: str, level: Any) -> int:
    """Return ``level`` as an int, or raise naming ``op``: ``TypeError`` for a non-int,
    ``ValueError`` for an int other than 0, 1, 2."""
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
        raise TypeError(f"{op}: TTA level must be an int (0, 1 or 2), got {level!r}")
    if int(level) not in _LEVELS:
        raise ValueError(f"{op}: TTA level must be 0, 1 or 2, got {level!r}")
    return int(level)


def _mirrored(model: Callable[[Tensor], Tensor], a: Any) -> Tensor:
    """L1 of the raw batch ``a``: the mean of the model on it and on its mirror image."""
    xp = get_array_module(a)
    plain = model(Tensor(a))
    mirror = model(Tensor(xp.ascontiguousarray(a[..., ::-1])))
    return (plain + mirror) * 0.5


def tta_logits(model: Callable[[Tensor], Tensor], x: Tensor | np.ndarray, level: int = 2,
               ) -> Tensor:
    """The model's logits on one batch, averaged over the views of TTA ``level``.

    The model is called as it is: put it in eval mode and, for inference, wrap the call in
    ``no_grad`` (``tta_predict`` and ``Trainer.evaluate`` do both). The input is treated as
    data: no gradient flows back to ``x``.

    Args:
        model: maps a batch to logits ``(N, classes)``.
        x: the batch, a Tensor or array. Level 0 takes any shape the model takes; levels 1
            and 2 need images ``(N, C, H, W)``, level 2 with ``H, W >= 2`` (reflect padding).
        level: 0 (plain), 1 (+ mirror) or 2 (+ mirror, + two one-pixel shifts).

    Returns:
        ``(N, classes)`` logits, in the model's dtype.

    >>> import numpy as np
    >>> from minidl import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
    >>> model[1].weight.data[...] = [[1.0, 0.0, 0.0, 0.0]]   # reads the top-left pixel
    >>> x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    >>> [tta_logits(model, x, level).item() for level in (0, 1, 2)]
    [1.0, 1.5, 2.5]
    """
    level = _check_level("tta_logits", level)
    a = x.data if isinstance(x, Tensor) else x
    if level == 0:
        return model(x if isinstance(x, Tensor) else Tensor(a))
    shape = tuple(getattr(a, "shape", ()))
    if len(shape) != 4:
        raise ValueError(
            f"tta_logits: TTA level {level} mirrors images and needs a batch of shape "
            f"(N, C, H, W), got shape {shape}")
    h, w = shape[2], shape[3]
    if level == 2 and (h < 2 or w < 2):
        raise ValueError(
            f"tta_logits: TTA level 2 reflect-pads by one pixel and needs H, W >= 2, got "
            f"shape {shape}")
    level1 = _mirrored(model, a)
    if level == 1:
        return level1
    xp = get_array_module(a)
    padded = xp.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    down_right = _mirrored(model, xp.ascontiguousarray(padded[:, :, :h, :w]))
    up_left = _mirrored(model, xp.ascontiguousarray(padded[:, :, 2:, 2:]))
    return level1 * 0.5 + (down_right + up_left) * 0.25
