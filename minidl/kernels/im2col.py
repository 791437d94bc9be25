"""im2col / col2im: unfold image patches into rows of a matrix so a convolution is one GEMM.

Notation used by every docstring in this module:

====  ==========================================================
N     batch size
C     input channels (``C = G * Cg``)
G     groups; Cg = C // G channels per group
H, W  input height, width
KH    kernel height;  KW kernel width
SH    stride along H; SW stride along W
PH    padding along H (PT top + PB bottom when asymmetric); PW likewise (PL left, PR right)
DH    dilation along H; DW dilation along W
OH    output height = floor((H + PT + PB - DH*(KH-1) - 1) / SH) + 1
OW    output width  = floor((W + PL + PR - DW*(KW-1) - 1) / SW) + 1
K     row length of the column matrix = G * KH * KW * Cg
====  ==========================================================

Layout. ``cols`` has shape ``(N*OH*OW, K)``: one row per output pixel, rows ordered
``(n, oh, ow)`` and columns ordered ``(g, kh, kw, cg)``. Rows in (n, oh, ow) order mean that
``cols @ w_mat.T`` is the convolution output already in NHWC memory order (channels last),
so no transpose follows the GEMM; channels innermost in a row mean that gathering from a
channels-last input copies ``Cg`` contiguous values at a time. Grouped columns are contiguous
blocks of length ``KH*KW*Cg`` so each group's GEMM is a plain strided sub-matrix.

Three implementations share that contract: plain-loop references (``im2col_reference``,
``col2im_reference``; slow, obviously right, used by tests), generic ``xp`` code (NumPy or
CuPy slicing) and numba-compiled parallel loops, the default for NumPy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from minidl.kernels._common import (
    array_module,
    check_4d,
    empty_channels_last,
    is_channels_last,
    out_size,
    pair,
    scratch,
    use_numba,
)

Pad4 = tuple[int, int, int, int]


def normalize_padding(op: str, padding: Any) -> Pad4:
    """Return ``(PT, PB, PL, PR)`` from an int, a pair ``(PH, PW)`` or a 4-tuple.

    Args:
        op: name of the calling op, used in error messages.
        padding: an int, (PH, PW) or (PT, PB, PL, PR); non-negative.

    >>> normalize_padding("im2col", 1), normalize_padding("im2col", (1, 2))
    ((1, 1, 1, 1), (1, 1, 2, 2))
    """
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        p = tuple(int(v) for v in padding)
    else:
        ph, pw = pair(op, "padding", padding, allow_zero=True)
        p = (ph, ph, pw, pw)
    if min(p) < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {padding!r}")
    return p  # type: ignore[return-value]


def _geometry(op: str, x_shape: tuple[int, ...], kernel_size: Any, stride: Any, padding: Any,
              dilation: Any) -> tuple[int, int, int, int, int, int, Pad4, int, int]:
    kh, kw = pair(op, "kernel_size", kernel_size)
    sh, sw = pair(op, "stride", stride)
    dh, dw = pair(op, "dilation", dilation)
    pad = normalize_padding(op, padding)
    h, w = x_shape[2], x_shape[3]
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if eh > h + pad[0] + pad[1] or ew > w + pad[2] + pad[3]:
        raise ValueError(
            f"{op}: kernel size (after dilation) ({eh}, {ew}) is larger than the padded input "
            f"({h + pad[0] + pad[1]}, {w + pad[2] + pad[3]})"
        )
    oh = out_size(h, pad[0] + pad[1], kh, sh, dh)
    ow = out_size(w, pad[2] + pad[3], kw, sw, dw)
    return kh, kw, sh, sw, dh, dw, pad, oh, ow


# --------------------------------------------------------------------------- numba kernels
# ``_cl`` kernels read/write channels-last (N, H, W, C) C-contiguous arrays; ``_cf`` kernels
# channels-first (N, C, H, W). Parallel loops run over (n, output row) so each thread writes
# disjoint memory; no atomics, no zero-initialised output needed (every element is written).


@njit(parallel=True, cache=True, fastmath=False)
def _im2col_cl(x, cols, KH, KW, SH, SW, PT, PL, DH, DW, OH, OW, G):  # noqa: N803
    # Slice copies compile to vectorised memcpy-like loops; scalar loops with computed
    # (signed) indices measured 2-5x slower. With G == 1 and DW == 1 the KW*C values of one
    # kernel row are contiguous in both x and cols, so an interior window row is one copy.
    N, H, W, C = x.shape
    Cg = C // G
    x2 = x.reshape(N, H, W * C)
    KWC = KW * Cg
    for r in prange(N * OH):
        n = r // OH
        oh = r - n * OH
        for ow in range(OW):
            row = r * OW + ow
            iw0 = ow * SW - PL
            run = G == 1 and DW == 1 and iw0 >= 0 and iw0 + KW <= W
            for g in range(G):
                c0 = g * Cg
                o = g * KH * KWC
                for kh in range(KH):
                    ih = oh * SH - PT + kh * DH
                    if ih < 0 or ih >= H:
                        cols[row, o:o + KWC] = 0
                    elif run:
                        cols[row, o:o + KWC] = x2[n, ih, iw0 * C:iw0 * C + KWC]
                    else:
                        for kw in range(KW):
                            iw = iw0 + kw * DW
                            if 0 <= iw < W:
                                cols[row, o + kw * Cg:o + (kw + 1) * Cg] = x[n, ih, iw, c0:c0 + Cg]
                            else:
                                cols[row, o + kw * Cg:o + (kw + 1) * Cg] = 0
                    o += KWC


@njit(parallel=True, cache=True, fastmath=False)
def _im2col_cf(x, cols, KH, KW, SH, SW, PT, PL, DH, DW, OH, OW, G):  # noqa: N803
    # For channels-first input with few channels (the RGB first layer), where per-pixel
    # channel vectors are too short for slice copies to pay.
    N, C, H, W = x.shape
    Cg = C // G
    for r in prange(N * OH):
        n = r // OH
        oh = r - n * OH
        row0 = r * OW
        # ow innermost: reads walk an input row; the (OW, K) block written stays in L1.
        for g in range(G):
            for cg in range(Cg):
                c = g * Cg + cg
                for kh in range(KH):
                    ih = oh * SH - PT + kh * DH
                    for kw in range(KW):
                        col = ((g * KH + kh) * KW + kw) * Cg + cg
                        if 0 <= ih < H:
                            for ow in range(OW):
                                iw = ow * SW - PL + kw * DW
                                if 0 <= iw < W:
                                    cols[row0 + ow, col] = x[n, c, ih, iw]
                                else:
                                    cols[row0 + ow, col] = 0
                        else:
                            for ow in range(OW):
                                cols[row0 + ow, col] = 0


@njit(parallel=True, cache=True, fastmath=False)
def _col2im_cl(cols, gx, KH, KW, SH, SW, PT, PL, DH, DW, OH, OW, G):  # noqa: N803
    # Scatter form, one sample per task: cols is read once, sequentially, and each sample's
    # gx (small, cache-resident) only receives adds from its own rows, so no races. A gather
    # form (each pixel pulls its taps) measured 3-4x slower: strided reads of cols.
    N, H, W, C = gx.shape
    Cg = C // G
    for n in prange(N):
        gx[n] = 0
        for oh in range(OH):
            for ow in range(OW):
                row = (n * OH + oh) * OW + ow
                for g in range(G):
                    c0 = g * Cg
                    o = g * KH * KW * Cg
                    for kh in range(KH):
                        ih = oh * SH - PT + kh * DH
                        if ih < 0 or ih >= H:
                            o += KW * Cg
                            continue
                        for kw in range(KW):
                            iw = ow * SW - PL + kw * DW
                            if 0 <= iw < W:
                                gx[n, ih, iw, c0:c0 + Cg] += cols[row, o:o + Cg]
                            o += Cg


@njit(parallel=True, cache=True, fastmath=False)
def _nchw_to_nhwc(x, out):
    N, C, H, W = x.shape
    for r in prange(N * H):
        n = r // H
        h = r - n * H
        for w in range(W):
            for c in range(C):
                out[n, h, w, c] = x[n, c, h, w]


@njit(parallel=True, cache=True, fastmath=False)
def _nhwc_to_nchw(x, out):
    N, H, W, C = x.shape
    for r in prange(N * C):
        n = r // C
        c = r - n * C
        for h in range(H):
            for w in range(W):
                out[n, c, h, w] = x[n, h, w, c]


# ------------------------------------------------------------------------- generic xp path


def _im2col_xp(x: Any, cols: Any, kh: int, kw: int, sh: int, sw: int, pad: Pad4, dh: int,
               dw: int, oh: int, ow: int, groups: int) -> None:
    # CuPy arrays take this path too. A CuPy RawKernel mirroring ``_im2col_cl`` would go here
    # once measured GPU speed asks for it; slicing + copy is already bandwidth-bound there.
    xp = array_module(x)
    n, c, _, _ = x.shape
    cg = c // groups
    xpad = xp.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    c7 = cols.reshape(n, oh, ow, groups, kh, kw, cg)
    for i in range(kh):
        for j in range(kw):
            patch = xpad[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                         j * dw: j * dw + sw * (ow - 1) + 1: sw]
            c7[:, :, :, :, i, j, :] = patch.reshape(n, groups, cg, oh, ow).transpose(0, 3, 4, 1, 2)


def _col2im_xp(cols: Any, gx: Any, kh: int, kw: int, sh: int, sw: int, pad: Pad4, dh: int,
               dw: int, oh: int, ow: int, groups: int) -> None:
    # CuPy RawKernel slot, as for _im2col_xp.
    xp = array_module(cols)
    n, c, h, w = gx.shape
    cg = c // groups
    gpad = xp.zeros((n, c, h + pad[0] + pad[1], w + pad[2] + pad[3]), dtype=cols.dtype)
    c7 = cols.reshape(n, oh, ow, groups, kh, kw, cg)
    for i in range(kh):
        for j in range(kw):
            # One (i, j) slice never hits the same pixel twice, so += is a plain add.
            gpad[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                 j * dw: j * dw + sw * (ow - 1) + 1: sw] += (
                c7[:, :, :, :, i, j, :].transpose(0, 3, 4, 1, 2).reshape(n, c, oh, ow))
    gx[...] = gpad[:, :, pad[0]: pad[0] + h, pad[2]: pad[2] + w]


# ----------------------------------------------------------------------------- dispatchers


# Below this many channels an NCHW input is unfolded directly; above it, transposing to
# NHWC first and copying channel vectors is faster (measured: C=3 direct 0.9 ms vs 1.6 ms;
# C=32 direct 3.8 ms vs 0.2 + 0.55 ms, batch 64).
_CF_MAX_CHANNELS = 8


def im2col_into(x: Any, cols: Any, kh: int, kw: int, sh: int, sw: int, pad: Pad4, dh: int,
                dw: int, oh: int, ow: int, groups: int) -> None:
    """Fill a preallocated ``cols`` (N*OH*OW, K) from x (N, C, H, W); arguments pre-checked.

    The no-allocation core of ``im2col``: kernel (kh, kw), stride (sh, sw), ``pad`` =
    (PT, PB, PL, PR), dilation (dh, dw) and output size (oh, ow) are trusted as given.

    >>> x = np.arange(4.0).reshape(1, 1, 2, 2); cols = np.empty((1, 4))
    >>> im2col_into(x, cols, 2, 2, 1, 1, (0, 0, 0, 0), 1, 1, 1, 1, 1); cols.tolist()
    [[0.0, 1.0, 2.0, 3.0]]
    """
    if use_numba(x, cols):
        if is_channels_last(x):
            xn = x.transpose(0, 2, 3, 1)
        elif x.shape[1] // groups < _CF_MAX_CHANNELS:
            _im2col_cf(np.ascontiguousarray(x), cols, kh, kw, sh, sw, pad[0], pad[2], dh, dw,
                       oh, ow, groups)
            return
        else:
            n, c, h, w = x.shape
            xn = scratch("im2col_nhwc", (n, h, w, c), x.dtype)
            _nchw_to_nhwc(x, xn)
        _im2col_cl(xn, cols, kh, kw, sh, sw, pad[0], pad[2], dh, dw, oh, ow, groups)
    else:
        _im2col_xp(x, cols, kh, kw, sh, sw, pad, dh, dw, oh, ow, groups)


def col2im_into(cols: Any, gx: Any, kh: int, kw: int, sh: int, sw: int, pad: Pad4, dh: int,
                dw: int, oh: int, ow: int, groups: int) -> None:
    """Overwrite ``gx`` (N, C, H, W; C-order or channels-last) with the folded ``cols``.

    The no-allocation core of ``col2im``; ``cols`` is (N*OH*OW, K) and the geometry
    arguments are those of ``im2col_into``, trusted as given.

    >>> gx = np.empty((1, 1, 2, 2))
    >>> col2im_into(np.ones((1, 4)), gx, 2, 2, 1, 1, (0, 0, 0, 0), 1, 1, 1, 1, 1)
    >>> gx[0, 0].tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    if use_numba(cols, gx):
        cols = np.ascontiguousarray(cols)
        if is_channels_last(gx):
            _col2im_cl(cols, gx.transpose(0, 2, 3, 1), kh, kw, sh, sw, pad[0], pad[2], dh, dw,
                       oh, ow, groups)
        else:
            n, c, h, w = gx.shape
            tmp = scratch("col2im_nhwc", (n, h, w, c), gx.dtype)
            _col2im_cl(cols, tmp, kh, kw, sh, sw, pad[0], pad[2], dh, dw, oh, ow, groups)
            _nhwc_to_nchw(tmp, gx)
    else:
        _col2im_xp(cols, gx, kh, kw, sh, sw, pad, dh, dw, oh, ow, groups)


def im2col(x: Any, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, ...] = 0, dilation: int | tuple[int, int] = 1,
           groups: int = 1) -> Any:
    """Unfold every receptive field of ``x`` into one row of a matrix.

    Args:
        x: input, shape (N, C, H, W); any memory layout (channels-last is fastest).
        kernel_size: (KH, KW) or an int.
        stride: (SH, SW) or an int.
        padding: an int, (PH, PW), or (PT, PB, PL, PR); padded values are 0.
        dilation: (DH, DW) or an int.
        groups: G; columns of each group form one contiguous block.

    Returns:
        cols, shape (N*OH*OW, G*KH*KW*Cg), rows ordered (n, oh, ow), columns (g, kh, kw, cg).
        A fresh array owned by the caller.

    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> im2col(x, 2, stride=2).tolist()[0]
    [0.0, 1.0, 4.0, 5.0]
    """
    check_4d("im2col", "input", x, "(N, C, H, W)")
    kh, kw, sh, sw, dh, dw, pad, oh, ow = _geometry("im2col", x.shape, kernel_size, stride,
                                                    padding, dilation)
    n, c = x.shape[:2]
    if groups < 1 or c % groups:
        raise ValueError(f"im2col: groups={groups} must be positive and divide channels {c}")
    xp = array_module(x)
    cols = xp.empty((n * oh * ow, kh * kw * c), dtype=x.dtype)
    im2col_into(x, cols, kh, kw, sh, sw, pad, dh, dw, oh, ow, groups)
    return cols


def col2im(cols: Any, x_shape: tuple[int, int, int, int], kernel_size: int | tuple[int, int],
           stride: int | tuple[int, int] = 1, padding: int | tuple[int, ...] = 0,
           dilation: int | tuple[int, int] = 1, groups: int = 1, *,
           channels_last: bool = False) -> Any:
    """Fold a column matrix back onto the image, summing overlaps (adjoint of ``im2col``).

    Args:
        cols: shape (N*OH*OW, G*KH*KW*Cg), the layout ``im2col`` produces.
        x_shape: (N, C, H, W) of the image to produce.
        kernel_size: (KH, KW) or an int, as for ``im2col``.
        stride: (SH, SW) or an int, as for ``im2col``.
        padding: an int, (PH, PW), or (PT, PB, PL, PR), as for ``im2col``.
        dilation: (DH, DW) or an int, as for ``im2col``.
        groups: G, as for ``im2col``.
        channels_last: return an (N, C, H, W)-shaped array whose memory is (N, H, W, C).

    Returns:
        gx, shape (N, C, H, W): ``gx[n, c, ih, iw]`` is the sum of every entry of ``cols``
        that ``im2col`` copied from that pixel (entries that read padding are dropped).

    >>> x = np.ones((1, 1, 3, 3), dtype=np.float32)
    >>> col2im(im2col(x, 2), x.shape, 2)[0, 0].tolist()
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
    """
    if len(x_shape) != 4:
        raise ValueError(f"col2im: expected x_shape (N, C, H, W), got {tuple(x_shape)}")
    x_shape = tuple(int(v) for v in x_shape)  # type: ignore[assignment]
    kh, kw, sh, sw, dh, dw, pad, oh, ow = _geometry("col2im", x_shape, kernel_size, stride,
                                                    padding, dilation)
    n, c = x_shape[:2]
    if groups < 1 or c % groups:
        raise ValueError(f"col2im: groups={groups} must be positive and divide channels {c}")
    want = (n * oh * ow, kh * kw * c)
    if tuple(cols.shape) != want:
        raise ValueError(f"col2im: expected cols of shape {want}, got {tuple(cols.shape)}")
    xp = array_module(cols)
    gx = (empty_channels_last(xp, x_shape, cols.dtype) if channels_last
          else xp.empty(x_shape, dtype=cols.dtype))
    col2im_into(cols, gx, kh, kw, sh, sw, pad, dh, dw, oh, ow, groups)
    return gx


# ------------------------------------------------------------------------------ references


def im2col_reference(x: np.ndarray, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                     dilation: Any = 1, groups: int = 1) -> np.ndarray:
    """Plain-loop ``im2col`` (slow; the definition the fast paths are tested against).

    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> bool((im2col_reference(x, 3) == im2col(x, 3)).all())
    True
    """
    kh, kw, sh, sw, dh, dw, pad, oh, ow = _geometry("im2col", x.shape, kernel_size, stride,
                                                    padding, dilation)
    n, c, h, w = x.shape
    cg = c // groups
    out = np.zeros((n, oh, ow, groups, kh, kw, cg), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    ih = i * sh - pad[0] + a * dh
                    iw = j * sw - pad[2] + b * dw
                    if 0 <= ih < h and 0 <= iw < w:
                        out[:, i, j, :, a, b, :] = x[:, :, ih, iw].reshape(n, groups, cg)
    return out.reshape(n * oh * ow, -1)


def col2im_reference(cols: np.ndarray, x_shape: tuple[int, int, int, int], kernel_size: Any,
                     stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1
                     ) -> np.ndarray:
    """Plain-loop ``col2im`` (slow; the definition the fast paths are tested against).

    >>> c = np.ones((4, 4))
    >>> float(col2im_reference(c, (1, 1, 3, 3), 2)[0, 0, 1, 1])
    4.0
    """
    kh, kw, sh, sw, dh, dw, pad, oh, ow = _geometry("col2im", x_shape, kernel_size, stride,
                                                    padding, dilation)
    n, c, h, w = x_shape
    cg = c // groups
    c7 = cols.reshape(n, oh, ow, groups, kh, kw, cg)
    gx = np.zeros(x_shape, dtype=cols.dtype)
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    ih = i * sh - pad[0] + a * dh
                    iw = j * sw - pad[2] + b * dw
                    if 0 <= ih < h and 0 <= iw < w:
                        gx[:, :, ih, iw] += c7[:, i, j, :, a, b, :].reshape(n, c)
    return gx
