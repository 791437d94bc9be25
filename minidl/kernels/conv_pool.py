"""Kernels for a convolution whose output feeds a max-pool (``conv2d_max_pool2d``).

Forward epilogue in the pooling. The conv's GEMM writes ``y`` without bias; the pooling
reads each value once anyway, so it adds the bias and applies the ReLU as it reads
(``bias_act_max_pool2d``), the same operations in the same order as the conv epilogue
(bit-identical results) without a separate read-modify-write pass over ``y``.

Weight gradient from the pooled gradient. A max-pool passes each window's gradient to one
conv output only (its arg-max), so the conv's row-shaped gradient ``gy_rows`` (N*OH*OW, OC)
has at most one non-zero per window and channel: three quarters zeros for 2x2 pooling,
more where the ReLU mask zeroed the pooled gradient too. The dense weight gradient
``gy_rows.T @ cols`` multiplies all those zeros; the sum it computes is

    gw[oc, :] = sum over pooled (n, i, j) of gp[n, i, j, oc] * cols[row(n, arg-max), :]

which visits only the non-zeros: N*PH*PW*OC rows of K multiply-adds instead of
N*OH*OW*OC. For a layer with few input channels (the first layer: K = 3*3*3 = 27, where
the GEMM's two short sides of 27 and 32 keep BLAS far from its peak) this gather wins, and
the first layer, which needs no input gradient, never forms ``gy_rows`` at all. For wide
layers (K in the hundreds) BLAS's blocked GEMM wins, so ``conv2d_max_pool2d`` uses this
only for K <= ``SPARSE_MAX_K``, or when pooling keeps at most a quarter of the outputs.

Input gradient the same way. The dense route computes ``gcols = gy_rows @ w_mat`` (a GEMM
over all N*OH*OW rows, three quarters of them zero) and folds it with col2im. Scattering
each non-zero pooled gradient straight through the KH*KW taps of its conv output,

    gx[n, ih, iw, :] += gp[n, i, j, oc] * w[oc, :, kh, kw]   for every tap (kh, kw)

does a quarter of the multiply-adds (fewer still after the ReLU mask) and never forms the
(N*OH*OW, K) matrix ``gcols``. Each task owns whole samples of ``gx``: no races.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import njit, prange

from minidl.kernels.pool import _max_fwd_cl, pool2d_geometry

# Largest K = KH*KW*C for which the gather beats the dense GEMM (measured on the seed CNN:
# K=27, 1.2-1.8 ms against 3.0-3.4 ms for the scatter and GEMM it replaces; K=288 loses).
SPARSE_MAX_K = 64


def _check_pooled(op: str, gp: np.ndarray, pooled: np.ndarray, indices: np.ndarray) -> None:
    if not (gp.ndim == 4 and gp.shape == pooled.shape == indices.shape):
        raise ValueError(f"{op}: gradient {gp.shape}, pooled output {pooled.shape} and "
                         f"indices {indices.shape} must be the same 4-D shape")


@njit(parallel=True, cache=True, fastmath=False)
def _pooled_grad_weight(gp, out, ind, cols, plane, parts):  # pragma: no cover - compiled
    # gp, out, ind: (N, PH, PW, OC) views, any strides; ind flat in each sample's (OH, OW)
    # plane. Each task sums a block of samples into its own accumulator (no races),
    # allocated here so the compiler can see it aliases nothing and vectorise the k loop.
    # A zero gradient is skipped unless the pooled output is NaN or infinite: then its
    # receptive field holds a non-finite input, and 0 * inf must give NaN as in the GEMM.
    N, PH, PW, OC = gp.shape
    K = cols.shape[1]
    T = parts.shape[0]
    per = (N + T - 1) // T
    for t in prange(T):
        acc = np.zeros((OC, K), dtype=cols.dtype)
        for n in range(t * per, min(N, (t + 1) * per)):
            base = n * plane
            for i in range(PH):
                for j in range(PW):
                    for oc in range(OC):
                        g = gp[n, i, j, oc]
                        if g != 0 or not abs(out[n, i, j, oc]) < np.inf:
                            r = base + ind[n, i, j, oc]
                            for k in range(K):
                                acc[oc, k] += g * cols[r, k]
        parts[t] = acc


def pooled_grad_weight(gp: np.ndarray, pooled: np.ndarray, indices: np.ndarray,
                       cols: np.ndarray, conv_out_hw: tuple[int, int],
                       w_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Conv weight gradient from the gradient of its max-pooled output (NumPy arrays).

    Args:
        gp: gradient of the pooled output (N, OC, PH, PW), any layout; already masked by
            the ReLU when there is one.
        pooled: the pooled output itself (N, OC, PH, PW): where it is not finite, a zero
            gradient still multiplies its receptive field (0 * inf = NaN, as in a GEMM).
        indices: the pool's arg-max (N, OC, PH, PW), flat ``ih * OW + iw`` in the conv
            output plane, as ``max_pool2d_forward`` returns them.
        cols: the conv's im2col matrix (N*OH*OW, KH*KW*C), rows (n, oh, ow).
        conv_out_hw: (OH, OW), the conv output size the indices refer to.
        w_shape: (OC, C, KH, KW); groups are not supported.

    Returns:
        gw of shape w_shape, C-contiguous.

    >>> cols = np.arange(8.0).reshape(4, 2)          # one sample, 2x2 output, K = 2
    >>> gp = np.ones((1, 1, 1, 1)); ind = np.array([[[[3]]]], np.int32)
    >>> pooled_grad_weight(gp, gp, ind, cols, (2, 2), (1, 2, 1, 1)).ravel().tolist()
    [6.0, 7.0]
    """
    _check_pooled("pooled_grad_weight", gp, pooled, indices)
    n, oc, ph, pw = gp.shape
    oc_, c, kh, kw = w_shape
    if oc_ != oc or cols.shape != (n * conv_out_hw[0] * conv_out_hw[1], kh * kw * c):
        raise ValueError(f"pooled_grad_weight: shapes disagree: gp {gp.shape}, cols "
                         f"{cols.shape}, conv output {conv_out_hw}, weight {w_shape}")
    tasks = max(1, min(n, 4 * numba.get_num_threads()))
    parts = np.empty((tasks, oc, kh * kw * c), dtype=cols.dtype)
    _pooled_grad_weight(gp.transpose(0, 2, 3, 1), pooled.transpose(0, 2, 3, 1),
                        indices.transpose(0, 2, 3, 1), cols, conv_out_hw[0] * conv_out_hw[1],
                        parts)
    gw = parts.sum(axis=0, dtype=np.float64).astype(cols.dtype)
    return np.ascontiguousarray(gw.reshape(oc, kh, kw, c).transpose(0, 3, 1, 2))


def bias_act_max_pool2d(y: np.ndarray, b: np.ndarray | None, relu: bool, kernel_size: Any,
                        stride: Any = None, padding: Any = 0, dilation: Any = 1,
                        ceil_mode: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``max_pool2d_forward(act(y + b))`` in one pass, for a channels-last NumPy ``y``.

    Args:
        y: conv output before bias (N, OC, OH, OW), channels-last memory, OC > 1.
        b: bias (OC,) or None.
        relu: apply ReLU after the bias.
        kernel_size: max-pool arguments, as ``max_pool2d_forward``.
        stride: as ``max_pool2d_forward``.
        padding: as ``max_pool2d_forward``.
        dilation: as ``max_pool2d_forward``.
        ceil_mode: as ``max_pool2d_forward``.

    Returns:
        (p, indices), channels-last, as ``max_pool2d_forward`` of the activated ``y``.

    >>> y = np.arange(8.0).reshape(1, 2, 2, 2) - 6     # channel 0: -6..-3, channel 1: -2..1
    >>> y = np.ascontiguousarray(y.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    >>> p, i = bias_act_max_pool2d(y, np.array([0.0, 1.0]), True, 2)
    >>> p.ravel().tolist(), i.ravel().tolist()
    ([0.0, 2.0], [0, 3])
    """
    n, c = y.shape[:2]
    if c < 2 or not (isinstance(y, np.ndarray) and y.transpose(0, 2, 3, 1).flags.c_contiguous):
        raise ValueError("bias_act_max_pool2d: y must be a channels-last NumPy array with at "
                         f"least 2 channels, got shape {y.shape}")
    if b is not None and (tuple(b.shape) != (c,) or b.dtype != y.dtype):
        raise ValueError(f"conv2d: bias must have shape ({c},) and dtype {y.dtype}, got "
                         f"shape {tuple(b.shape)} and dtype {b.dtype}")
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = pool2d_geometry(
        "max_pool2d", y.shape, kernel_size, stride, padding, dilation, ceil_mode)
    p = np.empty((n, oh, ow, c), y.dtype)
    ind = np.empty((n, oh, ow, c), np.int32)
    _max_fwd_cl(y.transpose(0, 2, 3, 1), p, ind, kh, kw, sh, sw, ph, pw, dh, dw,
                y[:0, 0, 0, 0] if b is None else b, b is not None, relu)
    return p.transpose(0, 3, 1, 2), ind.transpose(0, 3, 1, 2)


@njit(parallel=True, cache=True, fastmath=False)
def _pooled_grad_input(gp, out, ind, wt, gx, SH, SW, PT, PL, DH, DW, OW):  # noqa: N803
    # gp, out, ind: (N, PH, PW, OC) views; wt: (OC, KH, KW, C); gx: (N, H, W, C) out.
    N, PH, PW, OC = gp.shape
    _, KH, KW, C = wt.shape
    H, W = gx.shape[1], gx.shape[2]
    for n in prange(N):
        gx[n] = 0
        for i in range(PH):
            for j in range(PW):
                for oc in range(OC):
                    g = gp[n, i, j, oc]
                    if g != 0 or not abs(out[n, i, j, oc]) < np.inf:
                        pos = ind[n, i, j, oc]
                        oh = pos // OW
                        ow = pos - oh * OW
                        for kh in range(KH):
                            ih = oh * SH - PT + kh * DH
                            if 0 <= ih < H:
                                for kw in range(KW):
                                    iw = ow * SW - PL + kw * DW
                                    if 0 <= iw < W:
                                        for c in range(C):
                                            gx[n, ih, iw, c] += g * wt[oc, kh, kw, c]


def pooled_grad_input(gp: np.ndarray, pooled: np.ndarray, indices: np.ndarray, w: np.ndarray,
                      x_shape: tuple[int, int, int, int], g: Any) -> np.ndarray:
    """Conv input gradient from the gradient of its max-pooled output (NumPy arrays).

    Args:
        gp: gradient of the pooled output (N, OC, PH, PW), any layout, ReLU-masked.
        pooled: the pooled output (N, OC, PH, PW) (non-finite values keep propagating).
        indices: the pool's arg-max, flat ``ih * OW + iw`` in the conv output plane.
        w: conv weight (OC, C, KH, KW); groups are not supported.
        x_shape: (N, C, H, W) of the conv input.
        g: the conv's ``ConvGeometry`` (``minidl.kernels.conv``), cropped to the outputs
            the pooling reads; its ``ow`` is the plane width the indices refer to.

    Returns:
        gx of shape x_shape, channels-last memory.

    >>> w = np.ones((1, 1, 2, 2)); gp = np.ones((1, 1, 1, 1))
    >>> from minidl.kernels.conv import conv2d_geometry
    >>> geo = conv2d_geometry((1, 1, 3, 3), w.shape)           # 2x2 conv output
    >>> gx = pooled_grad_input(gp, gp, np.array([[[[3]]]], np.int32), w, (1, 1, 3, 3), geo)
    >>> gx[0, 0].tolist()                 # arg-max at output (1, 1): its 2x2 input window
    [[0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
    """
    _check_pooled("pooled_grad_input", gp, pooled, indices)
    n, c, h, wd = x_shape
    if gp.shape[:2] != (n, g.oc) or g.groups != 1 or tuple(w.shape) != (g.oc, c, g.kh, g.kw):
        raise ValueError(f"pooled_grad_input: gradient {gp.shape} or weight {w.shape} does "
                         f"not match the geometry (groups must be 1)")
    gx = np.empty((n, h, wd, c), dtype=gp.dtype)
    wt = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
    _pooled_grad_input(gp.transpose(0, 2, 3, 1), pooled.transpose(0, 2, 3, 1),
                       indices.transpose(0, 2, 3, 1), wt, gx, g.sh, g.sw, g.pad[0], g.pad[2],
                       g.dh, g.dw, g.ow)
    return gx.transpose(0, 3, 1, 2)
