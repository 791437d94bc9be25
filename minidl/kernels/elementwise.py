"""Elementwise kernels where NumPy needs several passes and temporaries for one formula.

``relu_backward(gy, y)`` is ``gy * (y > 0)``: in NumPy that is a boolean temporary, a cast
and a multiply (three passes over memory and two fresh arrays); here it is one parallel pass.
When both arrays share a memory layout (channels-last after a convolution) the loop runs
over their raw memory in storage order, whatever the logical shape; a 4-D ``gy`` in another
layout than a channels-last ``y`` is read through strides and the result is channels-last.

Each kernel is compiled twice, parallel and serial (``parallel_twins``): below
``SERIAL_BELOW`` elements, waking the worker threads costs more than they save.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import prange

from minidl.kernels._common import (
    array_module,
    empty_channels_last,
    is_channels_last,
    parallel_twins,
    pick,
    use_numba,
)


def _relu_bwd_flat_py(gy, y, out):  # pragma: no cover - compiled
    for i in prange(gy.size):
        out[i] = gy[i] if y[i] > 0 else 0


def _relu_bwd_nhwc_py(gy, y, out):  # pragma: no cover - compiled
    # (N, H, W, C) views; gy may have any strides
    N, H, W, C = y.shape
    for r in prange(N * H):
        n = r // H
        h = r - n * H
        for w in range(W):
            for c in range(C):
                out[n, h, w, c] = gy[n, h, w, c] if y[n, h, w, c] > 0 else 0


_relu_bwd_flat = parallel_twins(_relu_bwd_flat_py)
_relu_bwd_nhwc = parallel_twins(_relu_bwd_nhwc_py)


def _storage_view(a: np.ndarray) -> np.ndarray | None:
    """The 1-D view of ``a``'s memory in storage order, or None if it has gaps."""
    flat = a.ravel(order="K")
    return flat if np.shares_memory(flat, a) or a.size == 0 else None


def relu_backward(gy: Any, y: Any) -> Any:
    """Gradient of ReLU: ``gy`` where ``y > 0``, else 0 (same shape and dtype as gy).

    Args:
        gy: upstream gradient, any shape.
        y: the ReLU's output, same shape.

    Returns:
        A fresh array, in gy's memory layout, or channels-last when y is 4-D channels-last
        and gy is not (the layout the conv and pooling kernels read fastest).

    >>> relu_backward(np.array([1.0, 2.0, 3.0]), np.array([0.0, 5.0, -1.0])).tolist()
    [0.0, 2.0, 0.0]
    """
    if gy.shape != y.shape:
        raise ValueError(f"relu_backward: gy shape {gy.shape} != y shape {y.shape}")
    if use_numba(gy, y) and gy.dtype == y.dtype:
        if gy.strides == y.strides:
            out = np.empty_like(gy)  # keeps gy's layout (order="K")
            fg, fy, fo = _storage_view(gy), _storage_view(y), _storage_view(out)
            if (fg is not None and fy is not None and fo is not None
                    and out.strides == gy.strides):
                pick(_relu_bwd_flat, gy.size)(fg, fy, fo)
                return out
        elif y.ndim == 4 and is_channels_last(y):
            out = empty_channels_last(np, y.shape, y.dtype)
            pick(_relu_bwd_nhwc, y.size)(*(a.transpose(0, 2, 3, 1) for a in (gy, y, out)))
            return out
    xp = array_module(gy)
    return xp.where(y > 0, gy, xp.zeros((), dtype=gy.dtype))


def _adam_flat_py(p, g, m, v, b1, c1, b2, c2, step_size, bc2_sqrt, eps):  # pragma: no cover
    # Every scalar arrives in the arrays' dtype (c1 = 1 - b1, c2 = 1 - b2), so float32
    # arrays are updated in float32 arithmetic, as PyTorch does: a single float64 literal
    # would promote the loop to scalar float64 sqrt and division, 5x slower (measured
    # 1.5 ms vs 0.3 ms for the seed CNN's 295k-weight dense layer).
    for i in prange(p.size):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (np.sqrt(vi) / bc2_sqrt + eps)


_adam_flat = parallel_twins(_adam_flat_py)


def adam_update_(p: Any, g: Any, m: Any, v: Any, b1: float, b2: float, step_size: float,
                 bc2_sqrt: float, eps: float) -> bool:
    """One Adam step in place, in one pass: ``m``, ``v`` and ``p`` updated together.

    ``step_size`` is ``lr / (1 - b1^t)`` and ``bc2_sqrt`` is ``sqrt(1 - b2^t)``. Returns
    False (and does nothing) when the arrays are not NumPy arrays of one dtype and one
    gap-free layout; the caller then runs the plain array formula.

    >>> p, g = np.ones(3, np.float32), np.full(3, 0.5, np.float32)
    >>> m, v = np.zeros(3, np.float32), np.zeros(3, np.float32)
    >>> adam_update_(p, g, m, v, 0.9, 0.999, 0.1 / 0.1, np.sqrt(0.001), 1e-8), p.round(4)
    (True, array([0.9, 0.9, 0.9], dtype=float32))
    """
    arrays = (p, g, m, v)
    if not use_numba(*arrays) or any(a.dtype != p.dtype or a.strides != p.strides
                                     for a in arrays):
        return False
    flats = [_storage_view(a) for a in arrays]
    if any(f is None for f in flats):
        return False
    dt = p.dtype.type
    pick(_adam_flat, p.size)(*flats, dt(b1), dt(1.0 - b1), dt(b2), dt(1.0 - b2), dt(step_size),
                             dt(bc2_sqrt), dt(eps))
    return True
