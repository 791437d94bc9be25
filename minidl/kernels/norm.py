"""Batch-norm kernels: statistics, normalization and the fused backward in two passes each.

Batch norm reduces each channel over ``M = N*H*W`` positions. When the data are laid out
as rows of channels, an ``(M, C)`` matrix (``(N, C)`` for 1-d batch norm, or a channels-last
``(N, C, H, W)`` tensor, which every convolution here returns), one parallel pass over the
rows gives all per-channel sums at once, and one more writes the result. The chain of NumPy
ops that the same formulas need makes about a dozen passes and as many temporaries.

Notation: ``x, gy (M, C)`` rows, ``mean, inv_std, w, b (C,)``,
``xhat = (x - mean) * inv_std``.

* forward:  ``y = xhat * w + b``
* backward: ``s1 = sum_M gy``, ``s2 = sum_M gy * xhat`` (these are also ``gb`` and ``gw``),
  ``gx = inv_std * w / M * (M * gy - s1 - xhat * s2)``

Sums accumulate in float64 in chunks, in parallel. ``xhat`` is recomputed in backward from
``x`` rather than stored, which saves one activation-sized array per layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from minidl.kernels._common import is_channels_last, use_numba

_CHUNK = 256


@njit(parallel=True, cache=True)
def _col_sums(x, mean, inv_std, gy, want_xhat):  # pragma: no cover - compiled
    # Per-column (sum of a, sum of a * b) with a = gy (or x when gy is empty) and
    # b = xhat (or a itself): one routine for forward statistics and backward sums.
    M, C = x.shape
    nchunks = (M + _CHUNK - 1) // _CHUNK
    part1 = np.zeros((nchunks, C), dtype=np.float64)
    part2 = np.zeros((nchunks, C), dtype=np.float64)
    use_gy = gy.shape[0] == M
    for k in prange(nchunks):
        r1 = min(M, (k + 1) * _CHUNK)
        for r in range(k * _CHUNK, r1):
            for c in range(C):
                # float64 before squaring: float32 products lose digits that the variance
                # (a difference of two large sums) needs
                v = np.float64(x[r, c])
                if want_xhat:
                    v = (v - mean[c]) * inv_std[c]
                a = np.float64(gy[r, c]) if use_gy else v
                part1[k, c] += a
                part2[k, c] += a * v
    s1 = np.zeros(C, dtype=np.float64)
    s2 = np.zeros(C, dtype=np.float64)
    for k in range(nchunks):
        for c in range(C):
            s1[c] += part1[k, c]
            s2[c] += part2[k, c]
    return s1, s2


@njit(parallel=True, cache=True)
def _normalize(x, mean, inv_std, w, b, relu, out):  # pragma: no cover - compiled
    M, C = x.shape
    for r in prange(M):
        for c in range(C):
            v = (x[r, c] - mean[c]) * inv_std[c] * w[c] + b[c]
            if relu and v < 0:  # NaN passes through, as in np.maximum
                v = 0
            out[r, c] = v


@njit(parallel=True, cache=True)
def _grad_input(gy, x, mean, inv_std, w, s1, s2, out):  # pragma: no cover - compiled
    M, C = x.shape
    for r in prange(M):
        for c in range(C):
            xhat = (x[r, c] - mean[c]) * inv_std[c]
            out[r, c] = inv_std[c] * w[c] / M * (M * gy[r, c] - s1[c] - xhat * s2[c])


def rows_view(a: Any) -> np.ndarray | None:
    """``a`` as an (M, C) row matrix without copying, or None if its layout does not allow.

    Works for C-contiguous ``(N, C)`` and channels-last ``(N, C, H, W)`` NumPy arrays.

    >>> rows_view(np.zeros((4, 3), np.float32)).shape
    (4, 3)
    """
    if not use_numba(a):
        return None
    if a.ndim == 2 and a.flags.c_contiguous:
        return a
    if a.ndim == 4 and is_channels_last(a):
        return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])
    return None


def batch_stats(x_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and biased variance of an (M, C) matrix, in float64.

    >>> m, v = batch_stats(np.array([[1.0, 2.0], [3.0, 2.0]]))
    >>> m.tolist(), v.tolist()
    ([2.0, 2.0], [1.0, 0.0])
    """
    empty = np.zeros((0, x_rows.shape[1]), x_rows.dtype)
    zeros = np.zeros(x_rows.shape[1], x_rows.dtype)
    s1, s2 = _col_sums(x_rows, zeros, zeros, empty, False)
    m = x_rows.shape[0]
    mean = s1 / m
    return mean, np.maximum(s2 / m - mean * mean, 0.0)


def normalize(x_rows: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, w: np.ndarray,
              b: np.ndarray, out_rows: np.ndarray, relu: bool = False) -> None:
    """``out = (x - mean) * inv_std * w + b`` row by row; (M, C) arrays, (C,) vectors."""
    _normalize(x_rows, mean, inv_std, w, b, relu, out_rows)


def backward(gy_rows: np.ndarray, x_rows: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
             w: np.ndarray, out_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Batch-norm backward with batch statistics; returns ``(gw, gb)`` in float64 and, when
    ``out_rows`` is given, writes ``gx`` into it.

    Args:
        gy_rows: upstream gradient (M, C).
        x_rows: the forward input (M, C).
        mean: per-channel batch mean (C,), in x's dtype.
        inv_std: per-channel ``1 / sqrt(var + eps)`` (C,), in x's dtype.
        w: per-channel scale (C,) (ones when not affine).
        out_rows: (M, C) array for ``gx``, or None to skip it.

    Returns:
        ``(s2, s1)``: the weight gradient ``sum gy * xhat`` and the bias gradient ``sum gy``.
    """
    s1, s2 = _col_sums(x_rows, mean, inv_std, gy_rows, True)
    if out_rows is not None:
        _grad_input(gy_rows, x_rows, mean, inv_std, w, s1.astype(x_rows.dtype),
                    s2.astype(x_rows.dtype), out_rows)
    return s2, s1
