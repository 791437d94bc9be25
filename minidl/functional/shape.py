"""Shape ops: reshape, transpose/permute, flatten, squeeze/unsqueeze, indexing,
concatenate/stack and pad.

None of these changes a value, so each backward only moves the gradient back into the
input's layout: reshape it back, apply the inverse permutation, scatter it into the indexed
positions (accumulating repeats for advanced indexing), or slice it apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minidl import _deprecated, backend
from minidl.autograd import Function, Tensor


def _shape_arg(shape: tuple) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def _axis_or_dim(axis: Any, dim: Any, op: str) -> Any:
    """Resolve PyTorch's keyword ``dim=`` spelling of ``axis=`` (giving both is an error).

    Ops that take it default ``axis`` to None and document their effective default."""
    if dim is None:
        return axis
    if axis is not None:
        raise TypeError(f"{op}: got both axis={axis!r} and dim={dim!r}; pass only one")
    return dim


class ReshapeFunction(Function):
    """``y = x.reshape(shape)``, same size; backward ``gx = reshape(gy, x.shape)``."""

    def forward(self, x: Any) -> Any:
        return x.reshape(self.shape)

    def backward(self, gy: Tensor) -> Tensor:
        return reshape(gy, self.inputs[0].shape)


def reshape(x: Tensor, *shape: Any) -> Tensor:
    """Return ``x`` with a new shape (one entry may be -1).

    >>> import minidl
    >>> minidl.functional.reshape(minidl.ones(2, 3), -1).shape
    (6,)
    """
    shape = _shape_arg(shape)
    if shape == x.shape:
        return x
    try:
        out_shape = np.empty(x.shape, dtype=np.bool_).reshape(shape).shape
    except ValueError:
        raise ValueError(
            f"reshape: cannot reshape a tensor of shape {x.shape} ({x.size} elements) into "
            f"{shape}") from None
    return ReshapeFunction.apply(x, shape=out_shape)


class PermuteFunction(Function):
    """``y = x.transpose(axes)``: y axis i is x axis ``axes[i]``.

    Backward: ``gx = permute(gy, argsort(axes))``, the inverse permutation.
    """

    def forward(self, x: Any) -> Any:
        return x.transpose(self.axes)

    def backward(self, gy: Tensor) -> Tensor:
        return permute(gy, *np.argsort(self.axes).tolist())


def permute(x: Tensor, *dims: int) -> Tensor:
    """Reorder the axes: result axis ``i`` is input axis ``dims[i]``.

    >>> import minidl
    >>> minidl.functional.permute(minidl.ones(2, 3, 4), 2, 0, 1).shape
    (4, 2, 3)
    """
    dims = _shape_arg(dims)
    if (len(dims) != x.ndim or any(not -x.ndim <= d < x.ndim for d in dims)
            or sorted(d % x.ndim for d in dims) != list(range(x.ndim))):
        raise ValueError(f"permute: {dims} is not a permutation of the {x.ndim} axes of "
                         f"shape {x.shape}")
    dims = tuple(d % x.ndim for d in dims)
    if dims == tuple(range(x.ndim)):
        return x
    return PermuteFunction.apply(x, axes=dims)


def transpose(x: Tensor, dim0: int = -2, dim1: int = -1) -> Tensor:
    """Swap two axes (PyTorch's ``transpose``; use ``permute`` for a full reordering).

    >>> import minidl
    >>> minidl.functional.transpose(minidl.ones(2, 3)).shape
    (3, 2)
    """
    for d in (dim0, dim1):
        # 0-d and 1-d tensors accept axes -1 and 0 and come back unchanged, as in PyTorch
        if not -max(x.ndim, 1) <= d < max(x.ndim, 1):
            raise ValueError(f"transpose: axis {d} is out of range for shape {x.shape}")
    if x.ndim < 2:
        return x
    dims = list(range(x.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return permute(x, *dims)


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge axes ``start_dim..end_dim`` into one.

    >>> import minidl
    >>> minidl.functional.flatten(minidl.ones(2, 3, 4), 1).shape
    (2, 12)
    """
    for name, d in (("start_dim", start_dim), ("end_dim", end_dim)):
        # a 0-d tensor accepts -1 and 0 (and becomes 1-d), as in PyTorch
        if not -max(x.ndim, 1) <= d < max(x.ndim, 1):
            raise ValueError(f"flatten: {name} {d} is out of range for shape {x.shape}")
    if x.ndim == 0:
        return reshape(x, 1)
    s, e = start_dim % x.ndim, end_dim % x.ndim
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    return reshape(x, x.shape[:s] + (-1,) + x.shape[e + 1:])


def squeeze(x: Tensor, axis: int | None = None) -> Tensor:
    """Drop axis ``axis`` (which must have size 1), or all size-1 axes.

    >>> import minidl
    >>> x = minidl.ones(1, 3, 1)
    >>> minidl.functional.squeeze(x).shape, minidl.functional.squeeze(x, 0).shape
    ((3,), (3, 1))
    """
    if axis is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"squeeze: axis {axis} is out of range for shape {x.shape}")
    if x.shape[axis] != 1:
        raise ValueError(f"squeeze: axis {axis} has size {x.shape[axis]}, expected 1")
    shape = list(x.shape)
    del shape[axis]
    return reshape(x, tuple(shape))


def unsqueeze(x: Tensor, axis: int) -> Tensor:
    """Insert a size-1 axis at position ``axis``.

    >>> import minidl
    >>> minidl.functional.unsqueeze(minidl.ones(3), 0).shape
    (1, 3)
    """
    if not -(x.ndim + 1) <= axis <= x.ndim:
        raise ValueError(f"unsqueeze: axis {axis} out of range for a new axis of a tensor with "
                         f"{x.ndim} dims (expected {-(x.ndim + 1)}..{x.ndim})")
    axis = axis % (x.ndim + 1)
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


# ----------------------------------------------------------------------------------------
# indexing


def _index_arrays(index: Any, device: Any) -> Any:
    """Replace Tensors (and lists) inside an index with arrays on ``device``."""
    if isinstance(index, tuple):
        return tuple(_index_arrays(i, device) for i in index)
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, list):
        return backend.to_device(np.asarray(index), device)
    if isinstance(index, np.ndarray):
        return backend.to_device(index, device)
    return index


def _is_basic(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, np.integer, slice))
               for i in items)


class GetItemFunction(Function):
    """``y = x[index]``, basic or advanced indexing.

    Backward: ``gx = GetItemGradFunction(gy)``: gy scattered into zeros of x.shape (repeats add up).
    """

    def forward(self, x: Any) -> Any:
        return x[self.index]

    def backward(self, gy: Tensor) -> Tensor:
        x = self.inputs[0]
        return GetItemGradFunction.apply(gy, index=self.index, shape=x.shape)


class GetItemGradFunction(Function):
    """``gx = zeros(shape); gx[index] += gy``: the adjoint of indexing, gx of ``shape``.

    Repeated advanced indices accumulate. Backward (double backward of indexing):
    ``gg = ggx[index]``.
    """

    def forward(self, gy: Any) -> Any:
        xp = backend.get_array_module(gy)
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        if _is_basic(self.index):
            gx[self.index] = gy
        else:
            backend.scatter_add(gx, self.index, gy)
        return gx

    def backward(self, ggx: Tensor) -> Tensor:
        return getitem(ggx, self.index)


def getitem(x: Tensor, index: Any) -> Tensor:
    """``x[index]`` with basic or advanced (integer/boolean array) indexing.

    Repeated indices accumulate their gradients.

    >>> import minidl
    >>> x = minidl.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> minidl.functional.getitem(x, (slice(None), 1)).tolist()
    [2.0, 4.0]
    """
    index = _index_arrays(index, x.device)
    try:
        return GetItemFunction.apply(x, index=index)
    except IndexError as exc:
        raise IndexError(f"getitem: bad index for a tensor of shape {x.shape}: {exc}") from None


# ----------------------------------------------------------------------------------------
# joining and padding


class ConcatenateFunction(Function):
    """``y = concatenate(xs, axis)``: the xs agree except along ``axis``, where sizes add.

    Backward: ``gx_i`` = the slice of gy along ``axis`` that came from ``xs[i]``.
    """

    def forward(self, *xs: Any) -> Any:
        return backend.get_array_module(xs[0]).concatenate(xs, axis=self.axis)

    def backward(self, gy: Tensor) -> tuple:
        grads, start = [], 0
        for x, need in zip(self.inputs, self.needs_input_grad):
            size = x.shape[self.axis]
            if need:
                idx = (slice(None),) * self.axis + (slice(start, start + size),)
                grads.append(getitem(gy, idx))
            else:
                grads.append(None)
            start += size
        return tuple(grads)


def concatenate(tensors: Sequence[Tensor], axis: int | None = None, *,
                dim: int | None = None) -> Tensor:
    """Join tensors along an existing axis.

    Args:
        tensors: tensors of one dtype whose shapes agree except along ``axis``.
        axis: the axis to join along (default 0); negative counts from the end.
        dim: PyTorch's name for ``axis`` (keyword only; give one or the other).

    >>> import minidl
    >>> minidl.functional.concatenate([minidl.ones(2, 3), minidl.ones(1, 3)]).shape
    (3, 3)
    """
    axis = _axis_or_dim(axis, dim, "concatenate")
    axis = 0 if axis is None else axis
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concatenate: expected at least one tensor")
    ref = tensors[0]
    if ref.ndim == 0:
        raise ValueError("concatenate: zero-dimensional tensors cannot be concatenated")
    if not -ref.ndim <= axis < ref.ndim:
        raise ValueError(f"concatenate: axis {axis} is out of range for tensor 0's shape "
                         f"{ref.shape}")
    axis = axis % ref.ndim
    for i, t in enumerate(tensors):
        if t.ndim != ref.ndim or t.shape[:axis] + t.shape[axis + 1:] != (
                ref.shape[:axis] + ref.shape[axis + 1:]):
            raise ValueError(f"concatenate: tensor {i} has shape {t.shape}, incompatible with "
                             f"tensor 0's shape {ref.shape} along axis {axis}")
        if t.dtype != ref.dtype:
            raise TypeError(f"concatenate: tensor {i} has dtype {t.dtype}, tensor 0 has "
                            f"{ref.dtype}")
    return ConcatenateFunction.apply(*tensors, axis=axis)


def stack(tensors: Sequence[Tensor], axis: int | None = None, *,
          dim: int | None = None) -> Tensor:
    """Join same-shaped tensors along a new axis.

    Args:
        tensors: tensors of one shape and dtype.
        axis: the position of the new axis in the result (default 0), in
            ``-(ndim + 1)..ndim`` for inputs of ``ndim`` dims.
        dim: PyTorch's name for ``axis`` (keyword only; give one or the other).

    >>> import minidl
    >>> minidl.functional.stack([minidl.ones(2), minidl.ones(2)]).shape
    (2, 2)
    """
    axis = _axis_or_dim(axis, dim, "stack")
    axis = 0 if axis is None else axis
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected at least one tensor")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(f"stack: tensor {i} has shape {t.shape}, tensor 0 has "
                             f"{tensors[0].shape}")
    ndim = tensors[0].ndim
    if not -(ndim + 1) <= axis <= ndim:
        raise ValueError(f"stack: axis {axis} is out of range for stacking tensors of shape "
                         f"{tensors[0].shape} (expected {-(ndim + 1)}..{ndim})")
    axis = axis % (ndim + 1)
    return concatenate([unsqueeze(t, axis) for t in tensors], axis=axis)


class PadFunction(Function):
    """``y = pad(x, pad_width, value)``: each axis grows by ``before + after``.

    Backward: ``gx = gy[before:before + size]`` along every axis (the padding gets no grad).
    """

    def forward(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        return xp.pad(x, self.pad_width, mode="constant", constant_values=self.value)

    def backward(self, gy: Tensor) -> Tensor:
        idx = tuple(slice(b, s + b) for (b, _), s in zip(self.pad_width, self.inputs[0].shape))
        return getitem(gy, idx)


def pad(x: Tensor, pad_width: int | Sequence[Any], value: float = 0.0) -> Tensor:
    """Constant padding, with NumPy's ``pad_width``: an int, or one ``(before, after)``
    pair per axis.

    >>> import minidl
    >>> minidl.functional.pad(minidl.ones(1, 2, 3, 3), ((0, 0), (0, 0), (1, 1), (1, 1))).shape
    (1, 2, 5, 5)
    """
    if isinstance(pad_width, (int, np.integer)):
        width = ((int(pad_width), int(pad_width)),) * x.ndim
    else:
        width = tuple(tuple(int(v) for v in p) for p in pad_width)
        if len(width) != x.ndim or any(len(p) != 2 for p in width):
            raise ValueError(f"pad: pad_width must give one (before, after) pair for each of "
                             f"the {x.ndim} axes, got {pad_width}")
    if any(v < 0 for p in width for v in p):
        raise ValueError(f"pad: negative padding {pad_width}")
    return PadFunction.apply(x, pad_width=width, value=value)


# The Function classes were named like the layers (``Conv2d``) before they took the
# ``Function`` suffix; the old names still work, with a DeprecationWarning.
__getattr__ = _deprecated.function_suffix(__name__)
