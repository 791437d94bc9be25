"""Activations: relu, leaky_relu, sigmoid, tanh, gelu (exact, with erf), softmax,
log_softmax.

Each backward reuses what the forward computed: ``relu`` keeps no copy of its input (the
mask ``y > 0`` comes from the output), ``sigmoid``'s derivative is ``y (1 - y)``,
``tanh``'s is ``1 - y^2``, and softmax's Jacobian-vector product is
``y * (gy - sum(gy * y))`` along the softmax axis.
"""

from __future__ import annotations

import math
from typing import Any

from minidl import _deprecated, backend
from minidl.autograd import Function, Tensor, is_grad_enabled
from minidl.functional.math import _mask, erf, exp, upper
from minidl.functional.reduce import sum as _sum
from minidl.functional.shape import _axis_or_dim
from minidl.kernels.elementwise import gelu_backward, gelu_forward, relu_backward


class ReLUFunction(Function):
    """``y = max(x, 0)``, any shape; backward ``gx = gy * [y > 0]`` (from the output)."""

    def forward(self, x: Any) -> Any:
        return backend.get_array_module(x).maximum(x, 0)

    def backward(self, gy: Tensor) -> Tensor:
        y = self.output().data
        if not is_grad_enabled():  # plain backward: one fused pass
            return Tensor._make(relu_backward(gy.data, y), False)
        return gy * _mask(y > 0, gy)


class LeakyReLUFunction(Function):
    """``y = x if x > 0 else slope * x``, any shape.

    Backward: ``gx = gy * (1 if x > 0 else slope)``.
    """

    def forward(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        return xp.where(x > 0, x, x * x.dtype.type(self.slope))

    def backward(self, gy: Tensor) -> Tensor:
        x = self.inputs[0].data
        xp = backend.get_array_module(x)
        return gy * _mask(xp.where(x > 0, 1.0, self.slope), gy)


class GELUFunction(Function):
    """``y = x * Phi(x)``, Phi the standard normal CDF, any shape.

    Backward: ``gx = gy * (Phi(x) + x * phi(x))`` with ``phi(x) = exp(-x^2/2) / sqrt(2 pi)``.
    Both are one pass each (``minidl.kernels.elementwise``), where the formula in array ops
    takes five passes forward and about ten backward, each with a fresh temporary; under
    ``create_graph`` the backward is written in differentiable ops instead.
    """

    def forward(self, x: Any) -> Any:
        return gelu_forward(x)

    def backward(self, gy: Tensor) -> Tensor:
        x = self.inputs[0]
        if not is_grad_enabled():  # plain backward: one fused pass
            return Tensor._make(gelu_backward(gy.data, x.data), False)
        cdf = (erf(x * (1.0 / math.sqrt(2.0))) + 1.0) * 0.5
        return gy * (cdf + x * exp(x * x * -0.5) * (1.0 / math.sqrt(2.0 * math.pi)))


class SigmoidFunction(Function):
    """``y = 1 / (1 + exp(-x))``, any shape; backward ``gx = gy * y * (1 - y)``."""

    def forward(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        # tanh form: never overflows, unlike 1 / (1 + exp(-x)) for large negative x
        return (xp.tanh(x * x.dtype.type(0.5)) + 1) * x.dtype.type(0.5)

    def backward(self, gy: Tensor) -> Tensor:
        y = self.output()
        return gy * y * (1.0 - y)


class TanhFunction(Function):
    """``y = tanh(x)``, any shape; backward ``gx = gy * (1 - y**2)``."""

    def forward(self, x: Any) -> Any:
        return backend.get_array_module(x).tanh(x)

    def backward(self, gy: Tensor) -> Tensor:
        y = self.output()
        return gy * (1.0 - y * y)


class SoftmaxFunction(Function):
    """``y = exp(x) / sum(exp(x), axis)``, same shape as x.

    Backward: ``gx = y * gy - y * sum(y * gy, axis)``.
    """

    def forward(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        e = xp.exp(x - x.max(axis=self.axis, keepdims=True))
        return e / e.sum(axis=self.axis, keepdims=True)

    def backward(self, gy: Tensor) -> Tensor:
        y = self.output()
        gx = y * gy
        return gx - y * _sum(gx, axis=self.axis, keepdims=True)


class LogSoftmaxFunction(Function):
    """``y = x - logsumexp(x, axis)``, same shape as x.

    Backward: ``gx = gy - exp(y) * sum(gy, axis)``.
    """

    def forward(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        z = x - x.max(axis=self.axis, keepdims=True)
        return z - xp.log(xp.exp(z).sum(axis=self.axis, keepdims=True))

    def backward(self, gy: Tensor) -> Tensor:
        return gy - exp(self.output()) * _sum(gy, axis=self.axis, keepdims=True)


def _check_float(x: Any, op: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating-point tensor, got dtype {x.dtype}")


def relu(x: Tensor) -> Tensor:
    """``max(x, 0)``; the gradient at exactly 0 is 0 (PyTorch's convention).

    >>> import minidl
    >>> minidl.functional.relu(minidl.tensor([-1.0, 2.0])).tolist()
    [0.0, 2.0]
    """
    _check_float(x, "relu")
    return ReLUFunction.apply(x)


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """``x`` for ``x > 0`` else ``negative_slope * x``.

    >>> import minidl
    >>> minidl.functional.leaky_relu(minidl.tensor([-1.0, 2.0]), 0.1).tolist()
    [-0.10000000149011612, 2.0]
    """
    _check_float(x, "leaky_relu")
    return LeakyReLUFunction.apply(x, slope=float(negative_slope))


def sigmoid(x: Tensor) -> Tensor:
    """The logistic function ``1 / (1 + e^-x)``, computed without overflow.

    >>> import minidl
    >>> minidl.functional.sigmoid(minidl.tensor([0.0])).tolist()
    [0.5]
    """
    _check_float(x, "sigmoid")
    return SigmoidFunction.apply(x)


def tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent.

    >>> import minidl
    >>> minidl.functional.tanh(minidl.tensor([0.0])).tolist()
    [0.0]
    """
    _check_float(x, "tanh")
    return TanhFunction.apply(x)


def gelu(x: Tensor) -> Tensor:
    """Exact GELU, ``x * Phi(x)`` with ``Phi`` the standard normal CDF (via erf).

    >>> import minidl
    >>> round(minidl.functional.gelu(minidl.tensor([1.0])).item(), 4)
    0.8413
    """
    _check_float(x, "gelu")
    return GELUFunction.apply(x)


def _softmax_axis(x: Tensor, axis: int | None, dim: int | None, op: str) -> int:
    _check_float(x, op)
    axis = _axis_or_dim(axis, dim, op)
    axis = -1 if axis is None else axis
    if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis {axis} out of range for shape {x.shape}")
    return axis % x.ndim


def softmax(x: Tensor, axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``axis``, shifted by the max for stability.

    Args:
        x: a floating-point tensor.
        axis: the axis to normalize along (default -1, the last).
        dim: PyTorch's name for ``axis`` (keyword only; give one or the other).

    >>> import minidl
    >>> minidl.functional.softmax(minidl.tensor([0.0, 0.0])).tolist()
    [0.5, 0.5]
    """
    (x,) = upper(x)  # float32 inside autocast
    return SoftmaxFunction.apply(x, axis=_softmax_axis(x, axis, dim, "softmax"))


def log_softmax(x: Tensor, axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """``log(softmax(x))`` computed stably as ``x - logsumexp(x)``.

    Args:
        x: a floating-point tensor.
        axis: the axis to normalize along (default -1, the last).
        dim: PyTorch's name for ``axis`` (keyword only; give one or the other).

    >>> import minidl
    >>> minidl.functional.log_softmax(minidl.tensor([0.0, 0.0])).exp().tolist()
    [0.5, 0.5]
    """
    (x,) = upper(x)  # float32 inside autocast
    return LogSoftmaxFunction.apply(x, axis=_softmax_axis(x, axis, dim, "log_softmax"))


# The Function classes were named like the layers (``Conv2d``) before they took the
# ``Function`` suffix; the old names still work, with a DeprecationWarning.
__getattr__ = _deprecated.function_suffix(__name__)
