"""Pooling as autograd ops: ``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d``.

Shapes: input ``(N, C, H, W)``, output ``(N, C, OH, OW)`` with
``OH = floor((H + 2 PH - DH (KH - 1) - 1) / SH) + 1`` (``ceil`` with ``ceil_mode``).

Max pooling remembers, for each output, the flat position ``ih * W + iw`` of its window's
maximum; backward routes each output gradient to exactly that input (adding up where
windows overlap). Ties go to the *first* maximum in row-major window order, as in PyTorch.
Its double backward gathers from those same positions. Average pooling is linear: its
backward spreads each gradient evenly over the window, and the backward of that is the
average pooling again.
"""

from __future__ import annotations

from typing import Any

from minidl import _deprecated, backend
from minidl.autograd import Function, Tensor
from minidl.functional.shape import stack
from minidl.kernels import pool as K


class MaxPool2dFunction(Function):
    """``y[n, c, i, j] = max`` of window (i, j) of x: x (N, C, H, W), y (N, C, OH, OW); keeps
    the flat arg-max ``indices`` (N, C, OH, OW).

    Backward: ``gx = MaxPool2dGradFunction(gy)``: each ``gy[n, c, i, j]`` added at its arg-max.
    """

    def forward(self, x: Any) -> Any:
        y, self.indices = K.max_pool2d_forward(x, *self.args)
        return y

    def backward(self, gy: Tensor) -> Tensor:
        return MaxPool2dGradFunction.apply(gy, indices=self.indices, x_shape=self.inputs[0].shape)


class MaxPool2dGradFunction(Function):
    """Scatter ``gy`` to the arg-max positions (differentiable in ``gy``).

    ``gx = zeros(x_shape); gx.flat[indices] += gy`` per (n, c): gy (N, C, OH, OW), gx
    (N, C, H, W). Backward: ``ggy = MaxPool2dGather(ggx)``.
    """

    def forward(self, gy: Any) -> Any:
        return K.max_pool2d_backward(gy, self.indices, self.x_shape)

    def backward(self, ggx: Tensor) -> Tensor:
        return MaxPool2dGatherFunction.apply(ggx, indices=self.indices)


class MaxPool2dGatherFunction(Function):
    """Pick the arg-max positions out of an input-shaped tensor (adjoint of the scatter).

    ``y = a.flat[indices]`` per (n, c): a (N, C, H, W), y (N, C, OH, OW). Backward:
    ``ga = MaxPool2dGradFunction(gy)``.
    """

    def forward(self, a: Any) -> Any:
        n, c, h, w = a.shape
        self.x_shape = a.shape
        flat = a.reshape(n, c, h * w)
        ind = self.indices.reshape(n, c, -1)
        xp = backend.get_array_module(a)
        return xp.take_along_axis(flat, ind.astype(xp.intp), axis=2).reshape(self.indices.shape)

    def backward(self, gy: Tensor) -> Tensor:
        return MaxPool2dGradFunction.apply(gy, indices=self.indices, x_shape=self.x_shape)


class AvgPool2dFunction(Function):
    """``y`` = the mean of each window: x (N, C, H, W), y (N, C, OH, OW).

    Backward: ``gx = AvgPool2dGradFunction(gy)``: each ``gy[n, c, i, j]`` / divisor over its window.
    """

    def forward(self, x: Any) -> Any:
        return K.avg_pool2d_forward(x, *self.args)

    def backward(self, gy: Tensor) -> Tensor:
        return AvgPool2dGradFunction.apply(gy, x_shape=self.inputs[0].shape, args=self.args)


class AvgPool2dGradFunction(Function):
    """Spread ``gy`` over the windows; its own backward is average pooling again.

    ``gx[n, c, h, w] = sum`` of ``gy[n, c, i, j] / divisor`` over the windows (i, j) that
    hold (h, w): gy (N, C, OH, OW), gx of ``x_shape`` (N, C, H, W). Backward:
    ``ggy = AvgPool2d(ggx)``.
    """

    def forward(self, gy: Any) -> Any:
        return K.avg_pool2d_backward(gy, self.x_shape, *self.args)

    def backward(self, ggx: Tensor) -> Tensor:
        return AvgPool2dFunction.apply(ggx, args=self.args)


def _check(x: Any, op: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: input must be a Tensor, got {type(x).__name__}")


def max_pool2d(
    x: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
) -> Tensor:
    """Max over ``kernel_size`` windows; ``stride`` defaults to the kernel size.

    >>> import minidl
    >>> max_pool2d(minidl.ones(2, 3, 7, 7), 2).shape
    (2, 3, 3, 3)
    """
    _check(x, "max_pool2d")
    return MaxPool2dFunction.apply(x, args=(kernel_size, stride, padding, dilation, ceil_mode))


def avg_pool2d(
    x: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """Mean over ``kernel_size`` windows (zero padding counted, like PyTorch's default).

    >>> import minidl
    >>> avg_pool2d(minidl.ones(1, 1, 4, 4), 2).tolist()
    [[[[1.0, 1.0], [1.0, 1.0]]]]
    """
    _check(x, "avg_pool2d")
    return AvgPool2dFunction.apply(x, args=(kernel_size, stride, padding, ceil_mode,
                                            count_include_pad, divisor_override))


def adaptive_avg_pool2d(x: Tensor, output_size: int | tuple[int | None, int | None]) -> Tensor:
    """Average-pool to a fixed ``(OH, OW)`` whatever the input size (PyTorch's windows:
    output cell ``i`` covers input rows ``floor(i H / OH)`` to ``ceil((i + 1) H / OH)``).

    >>> import minidl
    >>> adaptive_avg_pool2d(minidl.ones(2, 8, 5, 7), 1).shape
    (2, 8, 1, 1)
    """
    _check(x, "adaptive_avg_pool2d")
    if x.ndim != 4:
        raise ValueError(f"adaptive_avg_pool2d: input must be 4-D (N, C, H, W), got shape "
                         f"{x.shape}")
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    n, c, h, w = x.shape
    oh, ow = h if oh is None else int(oh), w if ow is None else int(ow)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be positive, got "
                         f"{output_size}")
    if (oh, ow) == (1, 1):
        return x.mean(axis=(2, 3), keepdims=True)
    if h % oh == 0 and w % ow == 0:
        return avg_pool2d(x, (h // oh, w // ow))
    rows = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        cells = []
        for j in range(ow):
            c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            cells.append(x[:, :, r0:r1, c0:c1].mean(axis=(2, 3)))
        rows.append(stack(cells, axis=-1))
    return stack(rows, axis=-2)


# The Function classes were named like the layers (``Conv2d``) before they took the
# ``Function`` suffix; the old names still work, with a DeprecationWarning.
__getattr__ = _deprecated.function_suffix(__name__)
