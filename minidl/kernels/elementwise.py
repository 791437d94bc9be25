"""Elementwise kernels where NumPy needs several passes and temporaries for one formula.

``relu_backward(gy, y)`` is ``gy * (y > 0)``: in NumPy that is a boolean temporary, a cast
and a multiply (three passes over memory and two fresh arrays); here it is one parallel pass.
Both arrays usually share a memory layout (channels-last after a convolution), so the loop
runs over their raw memory in storage order, whatever the logical shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from minidl.kernels._common import array_module, use_numba


@njit(parallel=True, cache=True)
def _relu_bwd_flat(gy, y, out):  # pragma: no cover - compiled
    for i in prange(gy.size):
        out[i] = gy[i] if y[i] > 0 else 0


def _storage_view(a: np.ndarray) -> np.ndarray | None:
    """The 1-D view of ``a``'s memory in storage order, or None if it has gaps."""
    flat = a.ravel(order="K")
    return flat if np.shares_memory(flat, a) or a.size == 0 else None


def relu_backward(gy: Any, y: Any) -> Any:
    """Gradient of ReLU: ``gy`` where ``y > 0``, else 0 (same shape, dtype and layout as gy).

    Args:
        gy: upstream gradient, any shape.
        y: the ReLU's output, same shape.

    Returns:
        A fresh array.

    >>> relu_backward(np.array([1.0, 2.0, 3.0]), np.array([0.0, 5.0, -1.0])).tolist()
    [0.0, 2.0, 0.0]
    """
    if gy.shape != y.shape:
        raise ValueError(f"relu_backward: gy shape {gy.shape} != y shape {y.shape}")
    if use_numba(gy, y) and gy.strides == y.strides and gy.dtype == y.dtype:
        out = np.empty_like(gy)  # keeps gy's layout (order="K")
        fg, fy, fo = _storage_view(gy), _storage_view(y), _storage_view(out)
        if fg is not None and fy is not None and fo is not None and out.strides == gy.strides:
            _relu_bwd_flat(fg, fy, fo)
            return out
    xp = array_module(gy)
    return xp.where(y > 0, gy, xp.zeros((), dtype=gy.dtype))
