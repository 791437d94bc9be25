"""Matrix products: ``matmul`` (batched, broadcasting like NumPy) and ``linear``.

For ``y = a @ b`` with ``a: (..., n, k)`` and ``b: (..., k, m)`` the gradients are
``ga = gy @ b^T`` of shape ``(..., n, k)`` and ``gb = a^T @ gy`` of shape ``(..., k, m)``,
each summed back over broadcast batch dimensions. 1-D operands are promoted to matrices and
the added axis is removed again, as in NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidl import _deprecated
from minidl.autograd import Function, Tensor
from minidl.functional.math import _operands, lower, sum_to


class MatMulFunction(Function):
    """``y = a @ b``: a (..., n, k), b (..., k, m), y (..., n, m), batch dims broadcast.

    Backward: ``ga = sum_to(gy @ b.mT, a.shape)``, ``gb = sum_to(a.mT @ gy, b.shape)``.
    """

    def forward(self, a: Any, b: Any) -> Any:
        return a @ b

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.inputs
        ga = sum_to(gy @ b.mT, a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(a.mT @ gy, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


def matmul(a: Any, b: Any) -> Tensor:
    """Matrix product with NumPy's rules (batched and broadcast over leading dims).

    >>> import minidl
    >>> a = minidl.ones(2, 3, 4); b = minidl.ones(4, 5)
    >>> minidl.functional.matmul(a, b).shape
    (2, 3, 5)
    """
    a, b = lower(a, b)  # float16 GEMM inside autocast
    a, b = _operands(a, b, "matmul")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must be at least 1-D, got shapes {a.shape} and "
                         f"{b.shape}")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: inner dimensions differ, shapes {a.shape} and {b.shape}")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch dimensions do not broadcast, shapes {a.shape} and "
                         f"{b.shape}") from None
    if a.ndim == 1:
        # (k,) @ (k,) squeezes to (); (k,) @ (..., k, m) drops the promoted row axis
        return matmul(a.reshape(1, -1), b).squeeze(-2 if b.ndim > 1 else -1)
    if b.ndim == 1:
        return matmul(a, b.reshape(-1, 1)).squeeze(-1)
    return MatMulFunction.apply(a, b)


class LinearFunction(Function):
    """``y = x @ w.T (+ b)``: x (..., in), w (out, in), b (out,), y (..., out).

    Backward: ``gx = gy @ w``; ``gw = gy2.T @ x2`` (out, in) and ``gb = gy2.sum(0)`` (out,),
    with gy2, x2 the inputs flattened to 2-D rows.
    """

    def forward(self, x: Any, w: Any, b: Any = None) -> Any:
        y = x @ w.T
        if b is not None:
            y += b
        return y

    def backward(self, gy: Tensor) -> tuple:
        x, w = self.inputs[:2]
        need = self.needs_input_grad
        gx = gy @ w if need[0] else None
        gw = gb = None
        if need[1]:
            gw = gy.reshape(-1, gy.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        if len(need) > 2 and need[2]:
            gb = gy.reshape(-1, gy.shape[-1]).sum(axis=0)
        return (gx, gw) if len(need) == 2 else (gx, gw, gb)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias``, the dense layer, as one op.

    Shapes: ``x (..., in)``, ``weight (out, in)`` (PyTorch's layout), ``bias (out,)``,
    result ``(..., out)``.

    >>> import minidl
    >>> minidl.functional.linear(minidl.ones(8, 4), minidl.ones(3, 4)).shape
    (8, 3)
    """
    x, weight, bias = lower(x, weight, bias)  # float16 GEMM inside autocast
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out, in), got shape {weight.shape}")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input has {x.shape[-1] if x.ndim else 0} features but weight expects "
            f"{weight.shape[1]} (input shape {x.shape}, weight shape {weight.shape})"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"linear: {name} dtype {t.dtype} differs from input dtype {x.dtype}")
    args = (x, weight) if bias is None else (x, weight, bias)
    return LinearFunction.apply(*args)


# The Function classes were named like the layers (``Conv2d``) before they took the
# ``Function`` suffix; the old names still work, with a DeprecationWarning.
__getattr__ = _deprecated.function_suffix(__name__)
