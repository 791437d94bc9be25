"""Differentiable functions, grouped by kind; also bound to ``Tensor`` as operators/methods.

``minidl.functional`` (alias ``minidl.nn.functional``, spelled like PyTorch's) holds every
op as a plain function. Each is a thin wrapper that checks its arguments and calls a
``Function`` subclass defined beside it, so an op's forward and its local derivative sit
next to each other.
"""

from __future__ import annotations

from typing import Any

from minidl import backend
from minidl.autograd import Tensor
from minidl.functional.activation import (
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    softmax,
    tanh,
)
from minidl.functional.conv import conv2d
from minidl.functional.fused import conv2d_max_pool2d
from minidl.functional.linalg import linear, matmul
from minidl.functional.loss import cross_entropy, mse_loss, softmax_cross_entropy
from minidl.functional.math import (
    abs,
    add,
    broadcast_to,
    cast,
    clip,
    div,
    erf,
    exp,
    log,
    maximum,
    minimum,
    mul,
    neg,
    pow,
    sqrt,
    sub,
    sum_to,
    to_device,
    where,
)
from minidl.functional.norm import batch_norm, dropout, group_norm, layer_norm
from minidl.functional.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from minidl.functional.reduce import argmax, max, mean, min, sum
from minidl.functional.scattering import scattering2d
from minidl.functional.shape import (
    concatenate,
    flatten,
    getitem,
    pad,
    permute,
    reshape,
    squeeze,
    stack,
    transpose,
    unsqueeze,
)

clamp = clip
cat = concatenate

__all__ = [
    "abs", "adaptive_avg_pool2d", "add", "argmax", "avg_pool2d", "batch_norm", "broadcast_to",
    "cast", "cat", "clamp", "clip", "concatenate", "conv2d", "conv2d_max_pool2d", "cross_entropy",
    "div", "dropout", "erf", "exp", "flatten", "gelu", "getitem", "group_norm", "layer_norm",
    "leaky_relu", "linear", "log", "log_softmax", "matmul", "max", "max_pool2d", "maximum", "mean",
    "min", "minimum", "mse_loss", "mul", "neg", "pad", "permute", "pow", "relu", "reshape",
    "scattering2d", "sigmoid", "softmax", "softmax_cross_entropy", "sqrt", "squeeze", "stack",
    "sub", "sum", "sum_to", "tanh", "to_device", "transpose", "unsqueeze", "where",
]


def _compare(op: str) -> Any:
    def compare(self: Tensor, other: Any) -> Tensor:
        o = other.data if isinstance(other, Tensor) else other
        return Tensor(getattr(self.data, op)(o))

    compare.__name__ = op
    compare.__doc__ = f"Elementwise ``{op}`` as a bool tensor (not differentiable)."
    return compare


def _to(self: Tensor, device: Any) -> Tensor:
    """Return this tensor on ``device`` (self if already there); differentiable."""
    return self if backend.Device(device) == self.device else to_device(self, device)


def _astype(self: Tensor, dtype: Any) -> Tensor:
    """Cast to ``dtype`` (self if it already is); differentiable between float dtypes."""
    return cast(self, dtype)


def setup_tensor() -> None:
    """Give ``Tensor`` its operators and op methods: the one place they are bound.

    The engine (``minidl.autograd``) sits below the ops and cannot import them, so the
    package's ``__init__`` calls this once, after both are loaded (DeZero's
    ``setup_variable``). Each entry is a function of this package, so ``x + y`` *is*
    ``add(x, y)`` and ``x.sum(0)`` *is* ``sum(x, 0)``.
    """
    methods = {
        "__add__": add, "__radd__": lambda s, o: add(o, s),
        "__sub__": sub, "__rsub__": lambda s, o: sub(o, s),
        "__mul__": mul, "__rmul__": lambda s, o: mul(o, s),
        "__truediv__": div, "__rtruediv__": lambda s, o: div(o, s),
        "__pow__": pow, "__rpow__": lambda s, o: pow(o, s),
        "__matmul__": matmul, "__rmatmul__": lambda s, o: matmul(o, s),
        "__neg__": neg, "__abs__": abs, "__getitem__": getitem,
        "exp": exp, "log": log, "sqrt": sqrt, "abs": abs,
        "relu": relu, "sigmoid": sigmoid, "tanh": tanh,
        "softmax": softmax, "log_softmax": log_softmax,
        "sum": sum, "mean": mean, "max": max, "min": min, "argmax": argmax,
        "reshape": reshape, "view": reshape, "permute": permute, "transpose": transpose,
        "flatten": flatten, "squeeze": squeeze, "unsqueeze": unsqueeze,
        "clip": clip, "clamp": clip, "matmul": matmul, "pow": pow,
        "broadcast_to": broadcast_to, "sum_to": sum_to,
        "to": _to, "astype": _astype,
    }
    for op in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
        methods[op] = _compare(op)
    for name, fn in methods.items():
        setattr(Tensor, name, fn)
    Tensor.T = property(
        lambda s: permute(s, *reversed(range(s.ndim))),
        doc="All axes reversed: shape (a, b, c) -> (c, b, a); ``x.T`` of a matrix is its "
            "transpose. Differentiable.",
    )
    Tensor.mT = property(
        lambda s: transpose(s, -2, -1),
        doc="The last two axes swapped (a batch of matrices transposed): shape "
            "(..., m, n) -> (..., n, m). Differentiable.",
    )
