"""Reductions: ``sum``, ``mean``, ``max``, ``min`` (with ``axis`` and ``keepdims``), ``argmax``.

Backward of a reduction broadcasts the gradient back over the reduced axes. ``max``/``min``
send the gradient to the elements that attained the extreme value; when several tie, they
share it equally (so the gradient of ``max`` still sums to the upstream gradient).
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from minidl import _deprecated
from minidl.autograd import Function, Tensor
from minidl.functional.math import _mask, broadcast_to, cast
from minidl.functional.shape import _axis_or_dim

Axis = int | tuple[int, ...] | None


def _norm_axis(axis: Axis, ndim: int, op: str) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a tensor with {ndim} dims")
        out.append(int(a) % builtins.max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {axis}")
    if ndim == 0:  # axis 0 / -1 of a 0-d tensor is accepted (as in PyTorch): nothing to reduce
        return ()
    return tuple(sorted(out))


def _kept_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


class SumFunction(Function):
    """``y = x.sum(axes, keepdims)``: x of any shape, y with ``axes`` removed (or kept as 1).

    Backward: ``gx = broadcast_to(gy reshaped with the reduced axes as 1, x.shape)``.
    """

    def forward(self, x: Any) -> Any:
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy: Tensor) -> Tensor:
        x = self.inputs[0]
        if not self.keepdims:
            gy = gy.reshape(_kept_shape(x.shape, self.axes))
        return broadcast_to(gy, x.shape)


class ExtremeFunction(Function):
    """``y = x.max(axes)`` (``largest=True``) or ``x.min(axes)``, reduced axes removed
    unless ``keepdims``.

    Backward: ``gx = broadcast_to(gy, x.shape) * [x == y] / count``, count the number of
    tied extremes in each reduced slice (ties share the gradient equally).
    """

    def forward(self, x: Any) -> Any:
        y = x.max(axis=self.axes, keepdims=True) if self.largest else x.min(
            axis=self.axes, keepdims=True)
        hit = x == y
        self.weight = hit / hit.sum(axis=self.axes, keepdims=True)
        return y if self.keepdims else y.reshape(
            tuple(s for i, s in enumerate(x.shape) if i not in self.axes))

    def backward(self, gy: Tensor) -> Tensor:
        x = self.inputs[0]
        if not self.keepdims:
            gy = gy.reshape(_kept_shape(x.shape, self.axes))
        return broadcast_to(gy, x.shape) * _mask(self.weight, gy)


def sum(x: Tensor, axis: Axis = None, keepdims: bool = False, *,  # noqa: A001
        dim: Axis = None) -> Tensor:
    """Sum over ``axis`` (all axes by default).

    Args:
        x: the input tensor.
        axis: an axis or tuple of axes to reduce (negative counts from the end); None (the
            default) reduces all of them.
        keepdims: keep the reduced axes with size 1.
        dim: PyTorch's name for ``axis`` (keyword only; give one or the other).

    >>> import minidl
    >>> minidl.functional.sum(minidl.tensor([[1.0, 2.0], [3.0, 4.0]]), axis=0).tolist()
    [4.0, 6.0]
    """
    axis = _axis_or_dim(axis, dim, "sum")
    return SumFunction.apply(x, axes=_norm_axis(axis, x.ndim, "sum"), keepdims=keepdims)


def mean(x: Tensor, axis: Axis = None, keepdims: bool = False, *, dim: Axis = None) -> Tensor:
    """Arithmetic mean over ``axis`` (integers are averaged in the default float type).

    Args:
        x: the input tensor.
        axis: an axis or tuple of axes to reduce (negative counts from the end); None (the
            default) reduces all of them.
        keepdims: keep the reduced axes with size 1.
        dim: PyTorch's name for ``axis`` (keyword only; give one or the other).

    >>> import minidl
    >>> minidl.functional.mean(minidl.tensor([1.0, 2.0, 3.0])).item()
    2.0
    """
    axis = _axis_or_dim(axis, dim, "mean")
    axes = _norm_axis(axis, x.ndim, "mean")
    if x.dtype.kind not in "fc":
        x = cast(x, np.float32)
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    if count == 0:
        raise ValueError(f"mean: cannot average over empty axes {axis} of shape {x.shape}")
    return sum(x, axes, keepdims) * (1.0 / count)


def _extreme(x: Tensor, axis: Axis, keepdims: bool, largest: bool, op: str) -> Tensor:
    axes = _norm_axis(axis, x.ndim, op)
    if any(x.shape[a] == 0 for a in axes):
        raise ValueError(f"{op}: cannot reduce over an empty axis of shape {x.shape}")
    return ExtremeFunction.apply(x, axes=axes, keepdims=keepdims, largest=largest)


def max(x: Tensor, axis: Axis = None, keepdims: bool = False, *,  # noqa: A001
        dim: Axis = None) -> Tensor:
    """Maximum over ``axis``; tied maxima share the gradient equally.

    Args:
        x: the input tensor.
        axis: an axis or tuple of axes to reduce (negative counts from the end); None (the
            default) reduces all of them.
        keepdims: keep the reduced axes with size 1.
        dim: PyTorch's name for ``axis`` (keyword only; give one or the other).

    >>> import minidl
    >>> minidl.functional.max(minidl.tensor([[1.0, 5.0], [7.0, 2.0]]), axis=1).tolist()
    [5.0, 7.0]
    """
    return _extreme(x, _axis_or_dim(axis, dim, "max"), keepdims, True, "max")


def min(x: Tensor, axis: Axis = None, keepdims: bool = False, *,  # noqa: A001
        dim: Axis = None) -> Tensor:
    """Minimum over ``axis``; tied minima share the gradient equally.

    Args:
        x: the input tensor.
        axis: an axis or tuple of axes to reduce (negative counts from the end); None (the
            default) reduces all of them.
        keepdims: keep the reduced axes with size 1.
        dim: PyTorch's name for ``axis`` (keyword only; give one or the other).

    >>> import minidl
    >>> x = minidl.tensor([1.0, 1.0, 3.0], requires_grad=True)
    >>> minidl.functional.min(x).backward(); x.grad.tolist()
    [0.5, 0.5, 0.0]
    """
    return _extreme(x, _axis_or_dim(axis, dim, "min"), keepdims, False, "min")


def argmax(x: Tensor, axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """Index of the maximum along ``axis`` (int64, not differentiable).

    Args:
        x: the input tensor.
        axis: the axis to search; None (the default) searches the flattened tensor.
        dim: PyTorch's name for ``axis`` (keyword only; give one or the other).

    >>> import minidl
    >>> minidl.functional.argmax(minidl.tensor([[1.0, 5.0], [7.0, 2.0]]), axis=1).tolist()
    [1, 0]
    """
    axis = _axis_or_dim(axis, dim, "argmax")
    return Tensor(x.data.argmax(axis=axis).astype(np.int64))


# The Function classes were named like the layers (``Conv2d``) before they took the
# ``Function`` suffix; the old names still work, with a DeprecationWarning.
__getattr__ = _deprecated.function_suffix(__name__)
