"""Elementwise kernels where NumPy needs several passes and temporaries for one formula.

``relu_backward(gy, y)`` is ``gy * (y > 0)``: in NumPy that is a boolean temporary, a cast
and a multiply (three passes over memory and two fresh arrays); here it is one parallel pass.
When both arrays share a memory layout (channels-last after a convolution) the loop runs
over their raw memory in storage order, whatever the logical shape; a 4-D ``gy`` in another
layout than a channels-last ``y`` is read through strides and the result is channels-last.
``gelu_forward``/``gelu_backward`` do the exact GELU and its derivative in one pass each,
and ``adam_update_`` a whole Adam step.

Each kernel is compiled twice, parallel and serial (``parallel_twins``): below
``SERIAL_BELOW`` elements, waking the worker threads costs more than they save.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

from minidl.backend import erf
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


def _gelu_fwd_flat_py(x, out, inv_sqrt2, half):  # pragma: no cover - compiled
    for i in prange(x.size):
        v = x[i]
        out[i] = half * v * (1 + math.erf(v * inv_sqrt2))


def _gelu_bwd_flat_py(gy, x, out, inv_sqrt2, half, inv_sqrt_2pi):  # pragma: no cover
    # d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the standard normal density
    for i in prange(x.size):
        v = x[i]
        cdf = half * (1 + math.erf(v * inv_sqrt2))
        out[i] = gy[i] * (cdf + v * inv_sqrt_2pi * math.exp(-half * v * v))


# float32: numba calls libm's scalar erff/expf, 3 ns per element on 2 cores (the GELUs took
# a quarter of an airbench94 step). These float32 kernels use only multiply, add, divide and
# min/max, which vectorise (16 lanes with AVX-512): erf as x * P(x^2) / Q(x^2) on x clamped
# to [-4, 4] (a rational minimax fit; max error 7e-8, below float32's resolution), and
# exp(-x^2/2) as a degree-9 Taylor polynomial of exp(-x^2/64) squared five times (relative
# error 1e-9 in exact arithmetic, ~1e-6 after float32 rounding; 0 beyond |x| = 6, where
# the density is below 1e-8). float64 keeps the exact libm kernels above.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)


def _erf32(z, c):  # pragma: no cover - inlined into the kernels below
    z = min(max(z, -c[12]), c[12])
    z2 = z * z
    p = c[0]
    for k in range(1, 7):
        p = p * z2 + c[k]
    q = c[7]
    for k in range(8, 12):
        q = q * z2 + c[k]
    return z * p / q


def _gelu_fwd_f32_py(x, out, c):  # pragma: no cover - compiled
    for i in prange(x.size):
        v = x[i]
        out[i] = c[13] * v * (c[14] + _erf32(v * c[15], c))


def _gelu_bwd_f32_py(gy, x, out, c):  # pragma: no cover - compiled
    for i in prange(x.size):
        v = x[i]
        cdf = c[13] * (c[14] + _erf32(v * c[15], c))
        a = min(abs(v), c[17])
        r = c[14]
        s = -(a * a) * c[18]
        for k in range(9, 0, -1):  # exp(s) by Horner on Taylor terms s^k / k!
            r = c[14] + s * r * c[18 + k]
        for _ in range(5):
            r = r * r
        out[i] = gy[i] * (cdf + v * c[16] * r)


_gelu_fwd_flat = parallel_twins(_gelu_fwd_flat_py)
_gelu_bwd_flat = parallel_twins(_gelu_bwd_flat_py)
_erf32 = njit(inline="always", cache=True)(_erf32)
_gelu_fwd_f32 = parallel_twins(_gelu_fwd_f32_py)
_gelu_bwd_f32 = parallel_twins(_gelu_bwd_f32_py)
# c[0:7] P, c[7:12] Q, c[12] erf clamp 4, c[13] 1/2, c[14] 1, c[15] 1/sqrt 2,
# c[16] 1/sqrt(2 pi), c[17] |x| clamp 6, c[18] 1/64 (and 1/1 for k=0 unused), c[19:28] 1/k
_GELU32 = np.array(_ERF_P + _ERF_Q + (4.0, 0.5, 1.0, 1 / math.sqrt(2), 1 / math.sqrt(2 * math.pi),
                                      6.0, 1 / 64) + tuple(1 / k for k in range(1, 10)),
                   dtype=np.float32)


def _flat_views(*arrays: Any) -> list | None:
    """1-D storage-order views of NumPy arrays of one dtype and one gap-free layout, for
    the numba kernels; None when any of that does not hold (the caller runs ``xp`` code)."""
    if not use_numba(*arrays) or any(a.dtype != arrays[0].dtype or a.strides != arrays[0].strides
                                     for a in arrays):
        return None
    flats = [_storage_view(a) for a in arrays]
    return None if any(f is None for f in flats) else flats


def gelu_forward(x: Any) -> Any:
    """Exact GELU ``x * Phi(x) = x/2 * (1 + erf(x / sqrt 2))`` in one pass (NumPy: five).

    Returns a fresh array in x's memory layout.

    >>> gelu_forward(np.array([0.0, 1.0])).round(4).tolist()
    [0.0, 0.8413]
    """
    out = array_module(x).empty_like(x)
    flats = _flat_views(x, out)
    if flats is None:
        return x * (erf(x * x.dtype.type(1 / math.sqrt(2))) + 1) * x.dtype.type(0.5)
    if x.dtype == np.float32:
        pick(_gelu_fwd_f32, x.size)(*flats, _GELU32)
        return out
    dt = x.dtype.type
    pick(_gelu_fwd_flat, x.size)(*flats, dt(1 / math.sqrt(2)), dt(0.5))
    return out


def gelu_backward(gy: Any, x: Any) -> Any:
    """Gradient of exact GELU: ``gy * (Phi(x) + x * phi(x))``, one pass.

    >>> gelu_backward(np.array([1.0, 1.0]), np.array([0.0, 1.0])).round(4).tolist()
    [0.5, 1.0833]
    """
    if gy.shape != x.shape:
        raise ValueError(f"gelu_backward: gy shape {gy.shape} != x shape {x.shape}")
    out = array_module(x).empty_like(x)
    flats = _flat_views(gy, x, out)
    dt = x.dtype.type
    if flats is None:
        xp = array_module(x)
        cdf = (erf(x * dt(1 / math.sqrt(2))) + 1) * dt(0.5)
        return gy * (cdf + x * dt(1 / math.sqrt(2 * math.pi)) * xp.exp(-dt(0.5) * x * x))
    if x.dtype == np.float32:
        pick(_gelu_bwd_f32, x.size)(*flats, _GELU32)
        return out
    pick(_gelu_bwd_flat, x.size)(*flats, dt(1 / math.sqrt(2)), dt(0.5),
                                 dt(1 / math.sqrt(2 * math.pi)))
    return out


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
