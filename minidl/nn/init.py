"""Weight initializers (``minidl.nn.init``), PyTorch's names and formulas.

Each ``*_`` function fills a tensor **in place** and returns it. Values are drawn on the CPU
from ``minidl.random.default_generator()`` in float64, cast to the tensor's dtype and then
moved to its device, so ``manual_seed(n)`` gives identical models on every device.

Fans: a ``Linear`` weight ``(out, in)`` has ``fan_in = in`` and ``fan_out = out``; a conv
weight ``(C_out, C_in/groups, KH, KW)`` has ``fan_in = C_in/groups * KH * KW`` and
``fan_out = C_out * KH * KW`` (each output sees a receptive field of that many inputs).
"""

from __future__ import annotations

import math

import numpy as np

from minidl import backend
from minidl.autograd import Tensor
from minidl.random import default_generator

_GAINS = {"linear": 1.0, "conv1d": 1.0, "conv2d": 1.0, "conv3d": 1.0, "sigmoid": 1.0,
          "tanh": 5.0 / 3, "relu": math.sqrt(2.0), "selu": 3.0 / 4}


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (PyTorch's table).

    >>> round(calculate_gain("relu"), 4)
    1.4142
    """
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}; expected one "
                         f"of {sorted([*_GAINS, 'leaky_relu'])}")
    return _GAINS[nonlinearity]


def calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of at least 2 dims (see the module doc).

    >>> import minidl
    >>> calculate_fan_in_and_fan_out(minidl.zeros(32, 3, 3, 3))
    (27, 288)
    """
    if tensor.ndim < 2:
        raise ValueError(f"init: fan in and fan out need a tensor with at least 2 dims, got "
                         f"shape {tensor.shape}")
    receptive = int(np.prod(tensor.shape[2:])) if tensor.ndim > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _fill(tensor: Tensor, values: np.ndarray) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"init: expected a Tensor, got {type(tensor).__name__}")
    arr = np.asarray(values, dtype=np.float64).astype(tensor.dtype)
    tensor.data[...] = backend.to_device(arr, tensor.device)
    return tensor


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """Fill with samples of U(a, b).

    >>> import minidl
    >>> bool((uniform_(minidl.zeros(5), 2.0, 3.0).data >= 2.0).all())
    True
    """
    return _fill(tensor, default_generator().uniform(a, b, tensor.shape))


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Fill with samples of N(mean, std^2).

    >>> import minidl
    >>> w = normal_(minidl.zeros(1000), 5.0, 0.1); round(float(w.mean().item()))
    5
    """
    return _fill(tensor, default_generator().normal(mean, std, tensor.shape))


def constant_(tensor: Tensor, val: float) -> Tensor:
    """Fill with ``val``.

    >>> import minidl
    >>> constant_(minidl.zeros(2), 0.5).tolist()
    [0.5, 0.5]
    """
    return _fill(tensor, np.full(tensor.shape, val, dtype=np.float64))


def zeros_(tensor: Tensor) -> Tensor:
    """Fill with zeros.

    >>> import minidl
    >>> zeros_(minidl.ones(2)).tolist()
    [0.0, 0.0]
    """
    return constant_(tensor, 0.0)


def ones_(tensor: Tensor) -> Tensor:
    """Fill with ones.

    >>> import minidl
    >>> ones_(minidl.zeros(2)).tolist()
    [1.0, 1.0]
    """
    return constant_(tensor, 1.0)


def _fan(tensor: Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu") -> Tensor:
    """He uniform init: U(-b, b) with ``b = gain * sqrt(3 / fan)``.

    >>> import minidl
    >>> w = kaiming_uniform_(minidl.zeros(64, 100), a=5 ** 0.5)   # Linear's default
    >>> bool(abs(w.data).max() <= 0.1)
    True
    """
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    return _fill(tensor, default_generator().uniform(-bound, bound, tensor.shape))


def kaiming_normal_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu") -> Tensor:
    """He normal init: N(0, std^2) with ``std = gain / sqrt(fan)``.

    >>> import minidl
    >>> kaiming_normal_(minidl.zeros(16, 8, 3, 3), nonlinearity="relu").shape
    (16, 8, 3, 3)
    """
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    return _fill(tensor, default_generator().normal(0.0, std, tensor.shape))


def xavier_uniform_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """Glorot uniform init: U(-b, b) with ``b = gain * sqrt(6 / (fan_in + fan_out))``.

    >>> import minidl
    >>> bool(abs(xavier_uniform_(minidl.zeros(3, 3)).data).max() <= 1.0)
    True
    """
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _fill(tensor, default_generator().uniform(-bound, bound, tensor.shape))


def xavier_normal_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """Glorot normal init: N(0, std^2) with ``std = gain * sqrt(2 / (fan_in + fan_out))``.

    >>> import minidl
    >>> w = xavier_normal_(minidl.zeros(100, 100))  # std = sqrt(2 / 200) = 0.1
    >>> 0.09 < float(w.numpy().std()) < 0.11
    True
    """
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return _fill(tensor, default_generator().normal(0.0, std, tensor.shape))


def default_init_(weight: Tensor, bias: Tensor | None) -> None:
    """PyTorch's default for Linear and Conv: kaiming_uniform with ``a = sqrt(5)`` (that is
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))) for the weight, and the same bound for the bias."""
    kaiming_uniform_(weight, a=math.sqrt(5.0))
    if bias is not None:
        fan_in, _ = calculate_fan_in_and_fan_out(weight)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound)


__all__ = ["calculate_gain", "calculate_fan_in_and_fan_out", "constant_", "kaiming_normal_",
           "kaiming_uniform_", "normal_", "ones_", "uniform_", "xavier_normal_",
           "xavier_uniform_", "zeros_"]

