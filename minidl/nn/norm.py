"""Normalization layers: ``BatchNorm1d``, ``BatchNorm2d``, ``LayerNorm`` and ``GroupNorm``.

Batch norm keeps ``running_mean``, ``running_var`` and ``num_batches_tracked`` as *buffers*:
saved in ``state_dict`` and moved by ``to()``, but not trained. In training mode it
normalizes with the batch statistics and updates the running ones; in eval mode it uses the
running ones, so ``model.eval()`` before evaluation matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minidl.autograd import Tensor
from minidl.functional.norm import batch_norm, group_norm, layer_norm
from minidl.nn.module import Module, Parameter


class _BatchNorm(Module):
    _ndims: tuple[int, ...] = ()
    _layout = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 activation: str | None = None, dtype: Any = np.float32) -> None:
        super().__init__()
        if activation not in (None, "relu"):
            raise ValueError(f"{type(self).__name__}: activation must be None or 'relu', got "
                             f"{activation!r}")
        self.activation = activation
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, dtype=dtype)))
            self.register_buffer("running_var", Tensor(np.ones(num_features, dtype=dtype)))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, dtype=np.int64)))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, zero batches seen."""
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def forward(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a Tensor input, got {type(x).__name__}")
        if x.ndim not in self._ndims:
            raise ValueError(f"{name}: expected a {self._layout} input, got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name}: input has {x.shape[1]} channels but layer expects "
                             f"{self.num_features} (input shape {x.shape})")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # cumulative moving average, as in PyTorch
                momentum = 1.0 / int(self.num_batches_tracked.data)
        use_batch = self.training or not self.track_running_stats
        return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                          training=use_batch, momentum=momentum, eps=self.eps,
                          activation=self.activation)

    def extra_repr(self) -> str:
        s = (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
             f"affine={self.affine}, track_running_stats={self.track_running_stats}")
        return s + (f", activation={self.activation!r}" if self.activation else "")


class BatchNorm1d(_BatchNorm):
    """Batch norm over ``(N, C)`` or ``(N, C, L)`` inputs, per feature ``C``.

    Shape:
        - Input: ``(N, C)`` or ``(N, C, L)``.
        - Output: the same shape.

    Attributes:
        weight, bias (Parameter): ``(C,)`` scale and shift (when ``affine``).
        running_mean, running_var (buffers): ``(C,)``, used in eval mode.

    >>> import minidl
    >>> bn = minidl.nn.BatchNorm1d(2)
    >>> y = bn(minidl.tensor([[1.0, 2.0], [3.0, 6.0]]))
    >>> [[round(v, 3) for v in row] for row in y.tolist()], bn.running_mean.tolist()
    ([[-1.0, -1.0], [1.0, 1.0]], [0.20000000298023224, 0.4000000059604645])
    """

    _ndims = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm over ``(N, C, H, W)`` inputs, per channel ``C``.

    Shape:
        - Input: ``(N, C, H, W)``.
        - Output: the same shape.

    Attributes:
        weight, bias (Parameter): ``(C,)`` scale and shift (when ``affine``).
        running_mean, running_var (buffers): ``(C,)``, used in eval mode.

    ``activation="relu"`` fuses the ReLU of a conv-BN-ReLU block into the normalization
    pass (same result as ``BatchNorm2d`` then ``ReLU``, one pass over the map cheaper).

    >>> import minidl
    >>> bn = minidl.nn.BatchNorm2d(8)
    >>> [name for name, _ in bn.named_buffers()]
    ['running_mean', 'running_var', 'num_batches_tracked']
    """

    _ndims = (4,)
    _layout = "(N, C, H, W)"


class LayerNorm(Module):
    """Normalize over the trailing ``normalized_shape`` axes of each sample.

    Shape:
        - Input: ``(*, *normalized_shape)``.
        - Output: the same shape.

    Attributes:
        weight, bias (Parameter): of ``normalized_shape`` (when ``elementwise_affine``).

    >>> import minidl
    >>> minidl.nn.LayerNorm(4)(minidl.ones(2, 4)).shape
    (2, 4)
    """

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, dtype: Any = np.float32) -> None:
        super().__init__()
        shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) \
            else tuple(int(s) for s in normalized_shape)
        self.normalized_shape, self.eps = shape, float(eps)
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(np.ones(shape, dtype=dtype))
            self.bias = Parameter(np.zeros(shape, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"LayerNorm: expected a Tensor input, got {type(x).__name__}")
        k = len(self.normalized_shape)
        if x.shape[x.ndim - k:] != self.normalized_shape or x.ndim < k:
            raise ValueError(f"LayerNorm: input shape {x.shape} does not end with "
                             f"normalized_shape {self.normalized_shape}")
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class GroupNorm(Module):
    """Normalize each sample's channels in groups (``minidl.functional.group_norm``).

    No statistic mixes the samples of a batch, so it behaves the same in training and eval
    mode, at any batch size, and under per-example (differentially private) training, where
    batch norm cannot be used.

    Args:
        num_groups: ``G``, a divisor of ``num_channels``.
        num_channels: ``C``.
        eps: added to the variance.
        affine: learn a per-channel scale and shift.
        dtype: of the parameters.

    Shape:
        - Input: ``(N, C, *)``.
        - Output: the same shape.

    Attributes:
        weight, bias (Parameter): ``(C,)`` scale and shift (when ``affine``).

    >>> import minidl
    >>> minidl.nn.GroupNorm(2, 4)(minidl.randn(3, 4, 5, 5)).shape
    (3, 4, 5, 5)
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, dtype: Any = np.float32) -> None:
        super().__init__()
        if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) \
                or num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_groups must be a positive divisor of "
                             f"num_channels={num_channels}, got {num_groups!r}")
        self.num_groups, self.num_channels, self.eps = int(num_groups), int(num_channels), \
            float(eps)
        self.affine = affine
        if affine:
            self.weight = Parameter(np.ones(num_channels, dtype=dtype))
            self.bias = Parameter(np.zeros(num_channels, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"GroupNorm: expected a Tensor input, got {type(x).__name__}")
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            got = x.shape[1] if x.ndim >= 2 else None
            raise ValueError(f"GroupNorm: input has {got} channels but layer expects "
                             f"{self.num_channels} (input shape {x.shape})")
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
