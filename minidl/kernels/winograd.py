"""Winograd F(4x4, 3x3): a 3x3 stride-1 convolution with 2.25-4x fewer multiplications.

The im2col route multiplies every output by all 9 taps: ``2 * 9 * C * OC`` flops per output
pixel. Winograd's minimal filtering algorithm (Lavin & Gray, 2015) computes a 4x4 block of
outputs from a 6x6 block of inputs with 36 multiplications per channel pair instead of
16 * 9 = 144. Per 4x4 output *tile* ``t`` and channel pair (c, oc)::

    Y_t = A^T [ (G g G^T) * (B^T d_t B) ] A        (* is the elementwise product)

with ``g`` the 3x3 filter, ``d_t`` the 6x6 input tile (tiles overlap by 2 pixels),
``B^T`` (6x6), ``G`` (6x3), ``A^T`` (4x6) fixed matrices, and the sum over input channels
taken in the transformed domain. Stacking all tiles turns that sum into 36 ordinary GEMMs,
one per position ``p`` of the 6x6 transformed tile::

    V[p] (T, C)     = input transform of every tile      (T = N * ceil(OH/4) * ceil(OW/4))
    U[p] (C, OC)    = filter transform
    M[p] (T, OC)    = V[p] @ U[p]                        (36 GEMMs: the real work)
    y (N, OH, OW, OC) = output transform of M, tile by tile

Backward is the adjoint of the same linear map, so it is exact too:

* ``gx``: a forward Winograd convolution of ``gy`` with the filter flipped in space and
  transposed in channels, ``w[:, :, ::-1, ::-1]`` as (C, OC), padded by ``2 - pad``.
* ``gw``: ``dM[p] = A gy_t A^T`` (the output transform's adjoint), ``dU[p] = V[p]^T @ dM[p]``
  (36 GEMMs), ``gw = G^T dU G`` (the filter transform's adjoint).

Cost and accuracy: F(4x4) is exact in exact arithmetic; in float32 its error is about
1e-5 of the output's scale (the transforms' coefficients reach 8 and 1/24), against about
1e-6 for im2col (measured in ``tests/kernels/test_winograd.py``). The transforms are memory
bound and vectorised over channels, which is why the layout is channels-last throughout.
One difference a user can see: a NaN or infinity in the input makes its whole 4x4 output
tile non-finite (the transforms mix a tile's pixels), where im2col confines it to the
outputs whose window holds it. Training has diverged by then either way.

Everything here runs on NumPy arrays through numba; ``minidl.kernels.conv`` decides when
(see ``winograd_applies``) and falls back to im2col otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from minidl.kernels._common import scratch

TILE = 4  # output tile side (the "4x4" of F(4x4, 3x3))
ALPHA = 6  # input tile side: TILE + 3 - 1

# Interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray's choice).
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)


def tiles(oh: int, ow: int) -> tuple[int, int]:
    """Number of 4x4 output tiles down and across an (OH, OW) output.

    >>> tiles(15, 15), tiles(32, 32)
    ((4, 4), (8, 8))
    """
    return -(-oh // TILE), -(-ow // TILE)


# ------------------------------------------------------------------------ numba transforms
#
# Each transform is two passes of 1-D 6-point (or 4-point) transforms, first down the
# columns of the tile, then along its rows, through a small scratch that stays in L1/L2.
# The innermost loop always runs over channels, contiguous in NHWC memory, so it
# vectorises; a single pass over all 36 values at once compiles to scalar code.


@njit(parallel=True, cache=True)
def _input_transform(x, v, pt, pl, th, tw, kc):
    # x (N, H, W, C) C-order; v (36, T, C) with T = N*th*tw, tiles ordered (n, i, j).
    # Tile (i, j) reads input rows 4i - pt .. 4i - pt + 5 (zeros outside the image).
    N, H, W, C = x.shape
    c2, c4, c5, zero = kc[0], kc[1], kc[2], kc[4]
    for row in prange(N * th):
        n = row // th
        i = row % th
        d = np.empty((ALPHA, ALPHA, C), dtype=x.dtype)
        s = np.empty((ALPHA, ALPHA, C), dtype=x.dtype)
        h0 = TILE * i - pt
        for j in range(tw):
            w0 = TILE * j - pl
            for r in range(ALPHA):
                hh = h0 + r
                for q in range(ALPHA):
                    ww = w0 + q
                    if 0 <= hh < H and 0 <= ww < W:
                        for c in range(C):
                            d[r, q, c] = x[n, hh, ww, c]
                    else:
                        for c in range(C):
                            d[r, q, c] = zero
            for q in range(ALPHA):  # s = B^T d, column by column
                for c in range(C):
                    d0 = d[0, q, c]
                    d1 = d[1, q, c]
                    d2 = d[2, q, c]
                    d3 = d[3, q, c]
                    d4 = d[4, q, c]
                    d5 = d[5, q, c]
                    s[0, q, c] = c4 * d0 - c5 * d2 + d4
                    s[1, q, c] = -(c4 * (d1 + d2)) + d3 + d4
                    s[2, q, c] = c4 * (d1 - d2) - d3 + d4
                    s[3, q, c] = c2 * (d3 - d1) - d2 + d4
                    s[4, q, c] = c2 * (d1 - d3) - d2 + d4
                    s[5, q, c] = c4 * d1 - c5 * d3 + d5
            t = row * tw + j
            for k in range(ALPHA):  # v = s B, row by row
                p = k * ALPHA
                for c in range(C):
                    e0 = s[k, 0, c]
                    e1 = s[k, 1, c]
                    e2 = s[k, 2, c]
                    e3 = s[k, 3, c]
                    e4 = s[k, 4, c]
                    e5 = s[k, 5, c]
                    v[p, t, c] = c4 * e0 - c5 * e2 + e4
                    v[p + 1, t, c] = -(c4 * (e1 + e2)) + e3 + e4
                    v[p + 2, t, c] = c4 * (e1 - e2) - e3 + e4
                    v[p + 3, t, c] = c2 * (e3 - e1) - e2 + e4
                    v[p + 4, t, c] = c2 * (e1 - e3) - e2 + e4
                    v[p + 5, t, c] = c4 * e1 - c5 * e3 + e5


@njit(parallel=True, cache=True)
def _output_transform(m, y, b, use_bias, relu, th, tw, kc):
    # m (36, T, OC); y (N, OH, OW, OC) C-order. y_tile = A^T m_tile A, cropped at the edge,
    # then + b and ReLU in the same pass.
    N, OH, OW, OC = y.shape
    c2, c4, c8, zero = kc[0], kc[1], kc[3], kc[4]
    for row in prange(N * th):
        n = row // th
        i = row % th
        s = np.empty((TILE, ALPHA, OC), dtype=y.dtype)
        o = np.empty((TILE, OC), dtype=y.dtype)
        for j in range(tw):
            t = row * tw + j
            for q in range(ALPHA):  # s = A^T m, column by column
                for c in range(OC):
                    m0 = m[q, t, c]
                    m1 = m[6 + q, t, c]
                    m2 = m[12 + q, t, c]
                    m3 = m[18 + q, t, c]
                    m4 = m[24 + q, t, c]
                    m5 = m[30 + q, t, c]
                    s[0, q, c] = m0 + m1 + m2 + m3 + m4
                    s[1, q, c] = m1 - m2 + c2 * (m3 - m4)
                    s[2, q, c] = m1 + m2 + c4 * (m3 + m4)
                    s[3, q, c] = m1 - m2 + c8 * (m3 - m4) + m5
            nw = min(TILE, OW - TILE * j)
            for k in range(min(TILE, OH - TILE * i)):  # y = s A, row by row
                for c in range(OC):
                    e0 = s[k, 0, c]
                    e1 = s[k, 1, c]
                    e2 = s[k, 2, c]
                    e3 = s[k, 3, c]
                    e4 = s[k, 4, c]
                    e5 = s[k, 5, c]
                    o[0, c] = e0 + e1 + e2 + e3 + e4
                    o[1, c] = e1 - e2 + c2 * (e3 - e4)
                    o[2, c] = e1 + e2 + c4 * (e3 + e4)
                    o[3, c] = e1 - e2 + c8 * (e3 - e4) + e5
                hh = TILE * i + k
                for col in range(nw):
                    ww = TILE * j + col
                    for c in range(OC):
                        val = o[col, c]
                        if use_bias:
                            val += b[c]
                        if relu and val < 0:  # NaN passes through, as in PyTorch
                            val = zero
                        y[n, hh, ww, c] = val


@njit(parallel=True, cache=True)
def _grad_output_transform(gy, dm, th, tw, kc):
    # The adjoint of _output_transform: gy (N, OH, OW, OC) C-order -> dm (36, T, OC),
    # dm_tile = A gy_tile A^T with the tile's outputs beyond the edge taken as zero.
    N, OH, OW, OC = gy.shape
    c2, c4, c8, zero = kc[0], kc[1], kc[3], kc[4]
    for row in prange(N * th):
        n = row // th
        i = row % th
        d = np.empty((TILE, TILE, OC), dtype=gy.dtype)
        s = np.empty((ALPHA, TILE, OC), dtype=gy.dtype)
        for j in range(tw):
            for k in range(TILE):
                hh = TILE * i + k
                for col in range(TILE):
                    ww = TILE * j + col
                    if hh < OH and ww < OW:
                        for c in range(OC):
                            d[k, col, c] = gy[n, hh, ww, c]
                    else:
                        for c in range(OC):
                            d[k, col, c] = zero
            for col in range(TILE):  # s = A d, column by column
                for c in range(OC):
                    d0 = d[0, col, c]
                    d1 = d[1, col, c]
                    d2 = d[2, col, c]
                    d3 = d[3, col, c]
                    s[0, col, c] = d0
                    s[1, col, c] = d0 + d1 + d2 + d3
                    s[2, col, c] = d0 - d1 + d2 - d3
                    s[3, col, c] = d0 + c2 * d1 + c4 * d2 + c8 * d3
                    s[4, col, c] = d0 - c2 * d1 + c4 * d2 - c8 * d3
                    s[5, col, c] = d3
            t = row * tw + j
            for r in range(ALPHA):  # dm = s A^T, row by row
                p = r * ALPHA
                for c in range(OC):
                    e0 = s[r, 0, c]
                    e1 = s[r, 1, c]
                    e2 = s[r, 2, c]
                    e3 = s[r, 3, c]
                    dm[p, t, c] = e0
                    dm[p + 1, t, c] = e0 + e1 + e2 + e3
                    dm[p + 2, t, c] = e0 - e1 + e2 - e3
                    dm[p + 3, t, c] = e0 + c2 * e1 + c4 * e2 + c8 * e3
                    dm[p + 4, t, c] = e0 - c2 * e1 + c4 * e2 - c8 * e3
                    dm[p + 5, t, c] = e3


# --------------------------------------------------------------------- filter transforms


# G (x) G: the 2-D filter transform as one (36, 9) matrix, U[a*6+b] = sum_ij G[a,i] G[b,j] g[i,j]
GG = np.kron(G, G)


def filter_transform(w: np.ndarray) -> np.ndarray:
    """``U = G g G^T`` for every (oc, c): w (OC, C, 3, 3) -> U (36, C, OC), in w's dtype.

    One GEMM, ``(G (x) G) @ w_taps`` with the taps as rows: (36, 9) @ (9, C*OC). (An einsum
    over the same indices took 20 ms at 256 x 256 channels; this takes about 1.)

    >>> filter_transform(np.ones((2, 5, 3, 3), np.float32)).shape
    (36, 5, 2)
    """
    oc, c = w.shape[:2]
    taps = np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(9, c * oc)
    return (GG.astype(w.dtype) @ taps).reshape(ALPHA * ALPHA, c, oc)


def filter_transform_adjoint(du: np.ndarray) -> np.ndarray:
    """``gw = G^T dU G``: dU (36, C, OC) -> gw (OC, C, 3, 3), the filter transform's adjoint
    (``(G (x) G)^T @ dU`` as one GEMM), C-contiguous.

    >>> filter_transform_adjoint(np.zeros((36, 5, 2), np.float32)).shape
    (2, 5, 3, 3)
    """
    c, oc = du.shape[1:]
    taps = GG.T.astype(du.dtype) @ du.reshape(ALPHA * ALPHA, c * oc)
    return np.ascontiguousarray(taps.reshape(3, 3, c, oc).transpose(3, 2, 0, 1))


# ---------------------------------------------------------------------------- convolutions


def _constants(dtype: Any) -> np.ndarray:
    # The transforms' integer coefficients and zero in the arrays' dtype: with Python ints
    # numba would compute float32 tiles in float64, at half the vector width.
    return np.array([2, 4, 5, 8, 0], dtype=dtype)


def _nhwc(a: np.ndarray) -> np.ndarray:
    """(N, C, H, W)-shaped array -> its (N, H, W, C) C-order view (a copy if not already)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def forward_nhwc(x: np.ndarray, u: np.ndarray, pad: tuple[int, int], out_hw: tuple[int, int],
                 b: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
    """Winograd 3x3 convolution on NHWC memory: x (N, H, W, C), U (36, C, OC) from
    ``filter_transform`` -> y (N, OH, OW, OC), a fresh array.

    ``pad = (top, left)``: output (0, 0) reads input (-top, -left); rows and columns outside
    the input are zero (so bottom/right padding is implied by ``out_hw``).
    """
    n, _, _, c = x.shape
    oc = u.shape[2]
    oh, ow = out_hw
    th, tw = tiles(oh, ow)
    t = n * th * tw
    v = scratch("winograd_v", (ALPHA * ALPHA, t, c), x.dtype)
    _input_transform(x, v, pad[0], pad[1], th, tw, _constants(x.dtype))
    m = scratch("winograd_m", (ALPHA * ALPHA, t, oc), x.dtype)
    np.matmul(v, u, out=m)
    y = np.empty((n, oh, ow, oc), dtype=x.dtype)
    _output_transform(m, y, y[0, 0, 0] if b is None else b, b is not None, relu, th, tw,
                      _constants(x.dtype))
    return y


def conv3x3_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                    pad: tuple[int, int, int, int], out_hw: tuple[int, int],
                    relu: bool = False) -> np.ndarray:
    """``conv2d(x, w, b, padding=pad)`` for a 3x3 stride-1 kernel: x (N, C, H, W) any layout,
    w (OC, C, 3, 3), pad (top, bottom, left, right) -> y (N, OC, OH, OW), channels-last.

    ``out_hw`` = (OH, OW) is the full output ``(H + top + bottom - 2, W + left + right - 2)``
    or its top-left part (``minidl.kernels.conv.crop_outputs``); gradients of the other
    outputs are then zero in ``conv3x3_grad_input``/``conv3x3_grad_weight``.

    >>> x = np.ones((1, 2, 5, 5), np.float32); w = np.ones((3, 2, 3, 3), np.float32)
    >>> y = conv3x3_forward(x, w, None, (1, 1, 1, 1), (5, 5))
    >>> y.shape, float(y[0, 0, 2, 2]), float(y[0, 0, 0, 0])
    ((1, 3, 5, 5), 18.0, 8.0)
    """
    pt, _, pl, _ = pad
    y = forward_nhwc(_nhwc(x), filter_transform(w), (pt, pl), out_hw, b, relu)
    return y.transpose(0, 3, 1, 2)


def conv3x3_grad_input(gy_nhwc: np.ndarray, w: np.ndarray, x_hw: tuple[int, int],
                       pad: tuple[int, int, int, int]) -> np.ndarray:
    """Input gradient of ``conv3x3_forward``: gy (N, OH, OW, OC) NHWC memory -> gx
    (N, C, H, W), channels-last: the forward convolution of gy with the flipped,
    channel-transposed filter, padded by ``2 - pad`` (so every pad must be <= 2)."""
    pt, _, pl, _ = pad
    u = filter_transform(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    gx = forward_nhwc(gy_nhwc, u, (2 - pt, 2 - pl), x_hw)
    return gx.transpose(0, 3, 1, 2)


def conv3x3_grad_weight(x: np.ndarray, gy_nhwc: np.ndarray, pad: tuple[int, int, int, int]
                        ) -> np.ndarray:
    """Weight gradient of ``conv3x3_forward``: x (N, C, H, W) any layout, gy (N, OH, OW, OC)
    NHWC memory -> gw (OC, C, 3, 3), C-contiguous.

    ``V`` is recomputed from x (one input transform, about 10% of the backward) rather than
    kept from forward, where it would hold 2.25x the input's memory until backward.
    """
    n, oh, ow, oc = gy_nhwc.shape
    c = x.shape[1]
    pt, _, pl, _ = pad
    th, tw = tiles(oh, ow)
    t = n * th * tw
    v = scratch("winograd_v", (ALPHA * ALPHA, t, c), x.dtype)
    _input_transform(_nhwc(x), v, pt, pl, th, tw, _constants(x.dtype))
    dm = scratch("winograd_m", (ALPHA * ALPHA, t, oc), x.dtype)
    _grad_output_transform(gy_nhwc, dm, th, tw, _constants(x.dtype))
    du = np.matmul(v.transpose(0, 2, 1), dm)
    return filter_transform_adjoint(du)
