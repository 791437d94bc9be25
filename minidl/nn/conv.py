"""Convolution and pooling layers: ``Conv2d``, ``MaxPool2d``, ``AvgPool2d``,
``AdaptiveAvgPool2d`` (NCHW, PyTorch's arguments).

The layers hold the hyperparameters and weights and check shapes; the arithmetic lives in
``minidl.functional`` (``conv2d``, ``max_pool2d``, ...), looked up when the layer runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import minidl.functional as F
from minidl.autograd import Tensor
from minidl.nn import init
from minidl.nn.module import Module, Parameter

IntPair = int | tuple[int, int]
"""An int ``n`` (meaning ``(n, n)``) or a pair ``(height, width)``."""


def _pair(v: IntPair, layer: str, name: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{layer}: {name} must be an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


def _check_nchw(layer: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: expected a Tensor input, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{layer}: expected a 4-D (N, C, H, W) input, got shape {x.shape}")


class Conv2d(Module):
    """2-D convolution over an NCHW input.

    Args:
        in_channels: channels of the input, C_in.
        out_channels: channels of the output, C_out.
        kernel_size: int or (KH, KW).
        stride: int or (SH, SW).
        padding: int or (PH, PW), or a string understood by ``minidl.functional.conv2d``
            (``"same"``, ``"valid"``).
        dilation: int or (DH, DW).
        groups: split channels into this many independent groups.
        bias: learn a per-output-channel bias.
        activation: ``"relu"`` fuses a ReLU into the convolution (Keras'
            ``Conv2D(..., activation="relu")``): the same result as ``Conv2d`` then ``ReLU``,
            one pass over the output cheaper in forward and in backward.

    Shape:
        - Input: ``(N, C_in, H, W)``.
        - Output: ``(N, C_out, OH, OW)`` with
          ``OH = floor((H + PH_top + PH_bottom - DH * (KH - 1) - 1) / SH) + 1`` and the same
          for ``OW``; ``padding="same"`` (stride 1 only) keeps ``OH = H``, an odd total
          padding putting the extra row at the bottom/right, as Keras and PyTorch do.

    Attributes:
        weight (Parameter): ``(C_out, C_in / groups, KH, KW)``, initialized like PyTorch's
            (kaiming uniform with ``a = sqrt(5)``).
        bias (Parameter | None): ``(C_out,)``.

    >>> import minidl
    >>> conv = minidl.nn.Conv2d(3, 32, 3)
    >>> conv.weight.shape, conv.num_parameters()
    ((32, 3, 3, 3), 896)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair | str = 0, dilation: IntPair = 1,
                 groups: int = 1, bias: bool = True, activation: str | None = None,
                 dtype: np.dtype | type = np.float32) -> None:
        super().__init__()
        if activation not in (None, "relu"):
            raise ValueError(f"Conv2d: activation must be None or 'relu', got {activation!r}")
        self.activation = activation
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must be divisible by groups ({groups})")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "Conv2d", "kernel_size")
        self.stride = _pair(stride, "Conv2d", "stride")
        self.padding = padding if isinstance(padding, str) else _pair(padding, "Conv2d",
                                                                       "padding")
        self.dilation = _pair(dilation, "Conv2d", "dilation")
        self.groups = int(groups)
        kh, kw = self.kernel_size
        self.weight = Parameter(np.zeros((out_channels, in_channels // groups, kh, kw),
                                         dtype=dtype))
        if bias:
            self.bias = Parameter(np.zeros(out_channels, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the weights with the default initialization."""
        init.default_init_(self.weight, self.bias)

    def check_input(self, x: Tensor) -> None:
        """Raise a ``Conv2d``-named error unless x is a 4-D Tensor with ``in_channels``."""
        _check_nchw("Conv2d", x)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d: input has {x.shape[1]} channels but layer expects "
                             f"{self.in_channels} (input shape {x.shape})")

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                      dilation=self.dilation, groups=self.groups, activation=self.activation)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.activation:
            s += f", activation={self.activation!r}"
        return s


class _Pool2d(Module):
    """Shared by the window poolings: the window geometry and the NCHW check."""

    _fn: Callable[..., Tensor]  # the functional op, a staticmethod of each subclass

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None,
                 padding: IntPair = 0) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, name, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, name, "stride")
        self.padding = _pair(padding, name, "padding")

    def forward(self, x: Tensor) -> Tensor:
        _check_nchw(type(self).__name__, x)
        return self._fn(x, self.kernel_size, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max over ``kernel_size`` windows (``stride`` defaults to ``kernel_size``).

    Shape:
        - Input: ``(N, C, H, W)``.
        - Output: ``(N, C, OH, OW)``, ``OH = floor((H + 2 * PH - KH) / SH) + 1`` (same for
          ``OW``).

    >>> import minidl
    >>> minidl.nn.MaxPool2d(2)
    MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))
    """

    _fn = staticmethod(F.max_pool2d)


class AvgPool2d(_Pool2d):
    """Mean over ``kernel_size`` windows (``stride`` defaults to ``kernel_size``).

    Shape:
        - Input: ``(N, C, H, W)``.
        - Output: ``(N, C, OH, OW)``, ``OH = floor((H + 2 * PH - KH) / SH) + 1`` (same for
          ``OW``).

    >>> import minidl
    >>> minidl.nn.AvgPool2d(3, stride=2, padding=1)
    AvgPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
    """

    _fn = staticmethod(F.avg_pool2d)


class AdaptiveAvgPool2d(Module):
    """Average-pool to a fixed ``output_size`` whatever the input size (``1``: global
    average pooling, as before a ResNet's classifier).

    Shape:
        - Input: ``(N, C, H, W)``.
        - Output: ``(N, C, *output_size)``; output cell ``i`` averages input rows
          ``floor(i * H / OH)`` to ``ceil((i + 1) * H / OH)`` (PyTorch's bins).

    >>> import minidl
    >>> minidl.nn.AdaptiveAvgPool2d(1)
    AdaptiveAvgPool2d(output_size=(1, 1))
    """

    def __init__(self, output_size: IntPair) -> None:
        super().__init__()
        self.output_size = _pair(output_size, "AdaptiveAvgPool2d", "output_size")

    def forward(self, x: Tensor) -> Tensor:
        _check_nchw("AdaptiveAvgPool2d", x)
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
