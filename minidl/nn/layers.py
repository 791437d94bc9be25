"""Basic layers: ``Linear`` (alias ``Dense``), ``Flatten``, ``Identity``, ``Dropout`` and the
activation modules.

Layers check their input's shape and name themselves in errors, so a wrong wiring reads
``Linear: input has 1600 features but layer expects 2304 (input shape (64, 1600))`` instead
of a bare matmul failure deep inside the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import minidl.functional as F
from minidl.autograd import Tensor, autocast_dtype
from minidl.functional.norm import dropout
from minidl.functional.scattering import num_coefficients
from minidl.nn import init
from minidl.nn.module import Module, Parameter


def _check_tensor(layer: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: expected a Tensor input, got {type(x).__name__}")


class Linear(Module):
    """Fully connected layer ``y = x @ weight.T + bias``.

    Args:
        in_features: size of the last input axis.
        out_features: size of the last output axis.
        bias: learn an additive bias.
        dtype: parameter dtype (float32 by default).

    Shape:
        - Input: ``(..., in_features)``, any number of leading axes.
        - Output: ``(..., out_features)``.

    Attributes:
        weight (Parameter): ``(out_features, in_features)``, initialized like PyTorch's
            (kaiming uniform with ``a = sqrt(5)``).
        bias (Parameter | None): ``(out_features,)``.

    >>> import minidl
    >>> minidl.nn.Linear(4, 3)(minidl.ones(2, 4)).shape
    (2, 3)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear: in_features and out_features must be positive, got "
                             f"{in_features} and {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(np.zeros((out_features, in_features), dtype=dtype))
        if bias:
            self.bias = Parameter(np.zeros(out_features, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the weights with the default initialization."""
        init.default_init_(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        _check_tensor("Linear", x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            got = x.shape[-1] if x.ndim else 0
            raise ValueError(f"Linear: input has {got} features but layer expects "
                             f"{self.in_features} (input shape {x.shape})")
        if x.dtype != self.weight.dtype and autocast_dtype() is None:
            raise TypeError(f"Linear: input dtype {x.dtype} differs from the layer's "
                            f"{self.weight.dtype}; cast the input or the model")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


Dense = Linear


class Flatten(Module):
    """Flatten axes ``start_dim..end_dim`` into one (by default all but the batch axis).

    Shape:
        - Input: ``(N, *dims)``.
        - Output: ``(N, prod(dims))`` with the defaults; in general the axes
          ``start_dim..end_dim`` are replaced by their product.

    >>> import minidl
    >>> minidl.nn.Flatten()(minidl.ones(2, 3, 4, 4)).shape
    (2, 48)
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        _check_tensor("Flatten", x)
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Return the input unchanged (a placeholder, e.g. for a disabled shortcut).

    >>> import minidl
    >>> x = minidl.ones(2)
    >>> minidl.nn.Identity()(x) is x
    True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        return x


class Dropout(Module):
    """Inverted dropout with drop probability ``p``; the identity in eval mode.

    In training each element is zeroed with probability ``p`` and the survivors are
    scaled by ``1 / (1 - p)``, so the expected output equals the input and eval needs no
    rescaling.

    Shape:
        - Input: any shape.
        - Output: the same shape.

    >>> import minidl
    >>> d = minidl.nn.Dropout(0.5).eval()
    >>> d(minidl.ones(3)).tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        _check_tensor("Dropout", x)
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReLU(Module):
    """``max(x, 0)`` elementwise; any shape.

    >>> import minidl
    >>> minidl.nn.ReLU()(minidl.tensor([-1.0, 2.0])).tolist()
    [0.0, 2.0]
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class LeakyReLU(Module):
    """``x`` if ``x > 0`` else ``negative_slope * x``; any shape.

    >>> import minidl
    >>> minidl.nn.LeakyReLU(0.5)(minidl.tensor([-2.0, 2.0])).tolist()
    [-1.0, 2.0]
    """

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    """The logistic function elementwise; any shape.

    >>> import minidl
    >>> minidl.nn.Sigmoid()(minidl.tensor([0.0])).tolist()
    [0.5]
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid(x)


class Tanh(Module):
    """Hyperbolic tangent elementwise; any shape.

    >>> import minidl
    >>> minidl.nn.Tanh()(minidl.tensor([0.0])).tolist()
    [0.0]
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class GELU(Module):
    """Exact GELU ``x * Phi(x)`` (``Phi`` the standard normal CDF); any shape.

    >>> import minidl
    >>> minidl.nn.GELU()(minidl.tensor([0.0])).tolist()
    [0.0]
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x)


class Scattering2D(Module):
    """The wavelet scattering transform (``functional.scattering2d``): fixed features,
    ``(B, C, H, W)`` -> ``(B, C * K, H / 2**J, W / 2**J)``, ``K = 1 + J L + L**2 J (J-1) / 2``
    (81 for the defaults: CIFAR-10's 3x32x32 images give 243x8x8). No parameters.

    Args:
        J: number of scales (output pixels average ``2**J x 2**J`` input pixels).
        L: number of wavelet orientations.

    >>> import minidl
    >>> s = minidl.nn.Scattering2D()
    >>> s(minidl.zeros((1, 3, 32, 32))).shape, s.out_channels(3)
    ((1, 243, 8, 8), 243)
    """

    def __init__(self, J: int = 2, L: int = 8) -> None:
        super().__init__()
        self.J, self.L = J, L
        self.coefficients = num_coefficients(J, L)  # validates J and L

    def out_channels(self, in_channels: int) -> int:
        """Channels of the output for ``in_channels`` input channels."""
        return in_channels * self.coefficients

    def forward(self, x: Tensor) -> Tensor:
        return F.scattering2d(x, J=self.J, L=self.L)

    def extra_repr(self) -> str:
        return f"J={self.J}, L={self.L}"


class Softmax(Module):
    """Softmax along ``dim``.

    Shape:
        - Input: any shape.
        - Output: the same shape; the entries along ``dim`` are positive and sum to 1.

    >>> import minidl
    >>> minidl.nn.Softmax(dim=1)(minidl.zeros(1, 2)).tolist()
    [[0.5, 0.5]]
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, axis=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
