"""Array-level 2-D max and average pooling, forward and backward, with plain-loop references.

Notation: N batch, C channels, H, W input size, KH, KW window, SH, SW stride (defaults to the
window), PH, PW symmetric padding (at most KH // 2, KW // 2, as PyTorch requires),
DH, DW dilation (max pool only), OH, OW output size:
``OH = floor_or_ceil((H + 2*PH - DH*(KH-1) - 1) / SH) + 1``; with ``ceil_mode`` the last
window must start inside the input or the top/left padding.

Max pooling returns argmax ``indices`` (int32, flat ``ih * W + iw`` in the input plane, the
values PyTorch returns as int64) so backward scatters without recomputing the forward. Ties
go to the first maximum in row-major window order, and a NaN wins over any number (the last
NaN in the window), exactly like PyTorch's CPU kernel. Padding is -inf for max and 0 for avg.

Layout: with the numba kernels, outputs and ``indices`` keep the input's memory layout
(channels-last in, so channels-last out; see ``minidl.kernels.conv``), and ``gx`` keeps the
layout of ``indices`` (max) or the one asked for (avg); they have two loop orders, channels
innermost for channels-last memory and width innermost for C-order memory. CuPy arrays and
the ``"numpy"`` backend use generic loop-over-taps array code, whose outputs are C-order
NCHW whatever the input's layout (the values are the same).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from minidl import backend
from minidl.kernels._common import (
    array_module,
    check_4d,
    empty_channels_last,
    is_channels_last,
    out_size,
    pair,
    use_numba,
)

PoolGeom = tuple[int, int, int, int, int, int, int, int, int, int]


def pool2d_geometry(op: str, x_shape: tuple[int, ...], kernel_size: Any, stride: Any,
                    padding: Any, dilation: Any, ceil_mode: bool) -> PoolGeom:
    """Validate pooling arguments; return (KH, KW, SH, SW, PH, PW, DH, DW, OH, OW).

    >>> pool2d_geometry("max_pool2d", (1, 1, 5, 5), 2, None, 0, 1, True)[-2:]
    (3, 3)
    """
    if len(x_shape) != 4:
        raise ValueError(f"{op}: expected 4-D input (N, C, H, W), got {len(x_shape)}-D input "
                         f"of shape {tuple(x_shape)}")
    kh, kw = pair(op, "kernel_size", kernel_size)
    sh, sw = (kh, kw) if stride is None else pair(op, "stride", stride)
    ph, pw = pair(op, "padding", padding, allow_zero=True)
    dh, dw = pair(op, "dilation", dilation)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{op}: padding ({ph}, {pw}) must be at most half the kernel size "
                         f"({kh}, {kw})")
    h, w = int(x_shape[2]), int(x_shape[3])
    oh = out_size(h, 2 * ph, kh, sh, dh, ceil_mode, ph)
    ow = out_size(w, 2 * pw, kw, sw, dw, ceil_mode, pw)
    if oh < 1 or ow < 1:
        raise ValueError(f"{op}: kernel size (after dilation) ({eh}, {ew}) is larger than the "
                         f"padded input ({h + 2 * ph}, {w + 2 * pw}); output would be "
                         f"({oh}, {ow})")
    return kh, kw, sh, sw, ph, pw, dh, dw, oh, ow


# --------------------------------------------------------------------------- numba kernels


@njit(parallel=True, cache=True, fastmath=False)
def _max_fwd_cl(x, y, ind, KH, KW, SH, SW, PH, PW, DH, DW, b, use_bias, relu):  # noqa: N803
    # With use_bias / relu each value read is first mapped to act(x + b[c]), exactly as
    # the conv epilogue would (``minidl.kernels.conv_pool``): one pass instead of two.
    N, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for r in prange(N * OH):
        n = r // OH
        oh = r - n * OH
        m = np.empty(C, dtype=x.dtype)
        idx = np.empty(C, dtype=np.int32)
        for ow in range(OW):
            for c in range(C):
                m[c] = -np.inf
                idx[c] = -1
            for kh in range(KH):
                ih = oh * SH - PH + kh * DH
                if ih < 0 or ih >= H:
                    continue
                for kw in range(KW):
                    iw = ow * SW - PW + kw * DW
                    if iw < 0 or iw >= W:
                        continue
                    p = ih * W + iw
                    for c in range(C):
                        v = x[n, ih, iw, c]
                        if use_bias:
                            v += b[c]
                        if relu and v < 0:  # NaN passes through, as in the conv epilogue
                            v = 0
                        if idx[c] < 0 or v > m[c] or v != v:
                            m[c] = v
                            idx[c] = p
            for c in range(C):
                y[n, oh, ow, c] = m[c]
                ind[n, oh, ow, c] = idx[c]


@njit(parallel=True, cache=True, fastmath=False)
def _max_fwd_cf(x, y, ind, KH, KW, SH, SW, PH, PW, DH, DW):  # noqa: N803
    N, C, H, W = x.shape
    _, _, OH, OW = y.shape
    for r in prange(N * C):
        n = r // C
        c = r - n * C
        for oh in range(OH):
            for ow in range(OW):
                m = -np.inf
                best = -1
                for kh in range(KH):
                    ih = oh * SH - PH + kh * DH
                    if ih < 0 or ih >= H:
                        continue
                    for kw in range(KW):
                        iw = ow * SW - PW + kw * DW
                        if iw < 0 or iw >= W:
                            continue
                        v = x[n, c, ih, iw]
                        if best < 0 or v > m or v != v:
                            m = v
                            best = ih * W + iw
                y[n, c, oh, ow] = m
                ind[n, c, oh, ow] = best


@njit(parallel=True, cache=True, fastmath=False)
def _max_bwd_cl(gy, ind, gx):
    # gy: (N, OH, OW, C) view, any layout; ind: (N, OH*OW*C); gx: (N, H*W*C). One sample per
    # task: overlapping windows only collide inside a sample, so the scatter is race-free.
    # The flat index p = ih*W + iw makes gx's offset p*C + c: no division per element.
    N, OH, OW, C = gy.shape
    for n in prange(N):
        gx[n] = 0
        k = 0
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    gx[n, ind[n, k] * C + c] += gy[n, oh, ow, c]
                    k += 1


@njit(parallel=True, cache=True, fastmath=False)
def _max_bwd_cf(gy, ind, gx):
    # gy: (N, C, OH, OW) any layout; ind: (N*C, OH*OW); gx: (N*C, H*W).
    N, C, OH, OW = gy.shape
    for r in prange(N * C):
        n = r // C
        c = r - n * C
        gx[r] = 0
        k = 0
        for oh in range(OH):
            for ow in range(OW):
                gx[r, ind[r, k]] += gy[n, c, oh, ow]
                k += 1


@njit(cache=True)
def _avg_window(o, S, P, K, size, include_pad, override):  # noqa: N803
    # PyTorch's bounds: the window is clipped to the padded input before counting the
    # divisor, then to the input itself before summing.
    start = o * S - P
    end = min(start + K, size + P)
    pool = end - start
    start = max(start, 0)
    end = min(end, size)
    return start, end, pool


@njit(parallel=True, cache=True, fastmath=False)
def _avg_fwd_cl(x, y, KH, KW, SH, SW, PH, PW, include_pad, override):  # noqa: N803
    N, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for r in prange(N * OH):
        n = r // OH
        oh = r - n * OH
        acc = np.empty(C, dtype=np.float64)
        h0, h1, ph = _avg_window(oh, SH, PH, KH, H, include_pad, override)
        for ow in range(OW):
            w0, w1, pw = _avg_window(ow, SW, PW, KW, W, include_pad, override)
            if override > 0:
                div = override
            elif include_pad:
                div = ph * pw
            else:
                div = (h1 - h0) * (w1 - w0)
            for c in range(C):
                acc[c] = 0.0
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    for c in range(C):
                        acc[c] += x[n, ih, iw, c]
            for c in range(C):
                y[n, oh, ow, c] = acc[c] / div


@njit(parallel=True, cache=True, fastmath=False)
def _avg_fwd_cf(x, y, KH, KW, SH, SW, PH, PW, include_pad, override):  # noqa: N803
    N, C, H, W = x.shape
    _, _, OH, OW = y.shape
    for r in prange(N * C):
        n = r // C
        c = r - n * C
        for oh in range(OH):
            h0, h1, ph = _avg_window(oh, SH, PH, KH, H, include_pad, override)
            for ow in range(OW):
                w0, w1, pw = _avg_window(ow, SW, PW, KW, W, include_pad, override)
                if override > 0:
                    div = override
                elif include_pad:
                    div = ph * pw
                else:
                    div = (h1 - h0) * (w1 - w0)
                acc = 0.0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        acc += x[n, c, ih, iw]
                y[n, c, oh, ow] = acc / div


@njit(parallel=True, cache=True, fastmath=False)
def _avg_bwd_cl(gy, gx, KH, KW, SH, SW, PH, PW, include_pad, override):  # noqa: N803
    N, H, W, C = gx.shape
    _, OH, OW, _ = gy.shape
    for n in prange(N):
        for ih in range(H):
            for iw in range(W):
                for c in range(C):
                    gx[n, ih, iw, c] = 0
        for oh in range(OH):
            h0, h1, ph = _avg_window(oh, SH, PH, KH, H, include_pad, override)
            for ow in range(OW):
                w0, w1, pw = _avg_window(ow, SW, PW, KW, W, include_pad, override)
                if override > 0:
                    div = override
                elif include_pad:
                    div = ph * pw
                else:
                    div = (h1 - h0) * (w1 - w0)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        for c in range(C):
                            gx[n, ih, iw, c] += gy[n, oh, ow, c] / div


@njit(parallel=True, cache=True, fastmath=False)
def _avg_bwd_cf(gy, gx, KH, KW, SH, SW, PH, PW, include_pad, override):  # noqa: N803
    N, C, H, W = gx.shape
    _, _, OH, OW = gy.shape
    for r in prange(N * C):
        n = r // C
        c = r - n * C
        for ih in range(H):
            for iw in range(W):
                gx[n, c, ih, iw] = 0
        for oh in range(OH):
            h0, h1, ph = _avg_window(oh, SH, PH, KH, H, include_pad, override)
            for ow in range(OW):
                w0, w1, pw = _avg_window(ow, SW, PW, KW, W, include_pad, override)
                if override > 0:
                    div = override
                elif include_pad:
                    div = ph * pw
                else:
                    div = (h1 - h0) * (w1 - w0)
                g = gy[n, c, oh, ow] / div
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        gx[n, c, ih, iw] += g


# ------------------------------------------------------------------------- generic xp path
# CuPy arrays take these. A CuPy ElementwiseKernel/RawKernel port of the ``_cf`` kernels
# (one thread per output element) is where GPU-specific code would go.


def _tap_positions(xp: Any, o: int, s: int, p: int, k: int, d: int, size: int) -> Any:
    """(OH,) input row index of tap k for each output row, and whether it is inside."""
    pos = xp.arange(o) * s - p + k * d
    return pos, (pos >= 0) & (pos < size)


def _max_fwd_xp(x: Any, g: PoolGeom) -> tuple[Any, Any]:
    xp = array_module(x)
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    n, c, h, w = x.shape
    y = xp.full((n, c, oh, ow), -xp.inf, dtype=x.dtype)
    ind = xp.full((n, c, oh, ow), -1, dtype=np.int32)
    for i in range(kh):
        ih, vh = _tap_positions(xp, oh, sh, ph, i, dh, h)
        for j in range(kw):
            iw, vw = _tap_positions(xp, ow, sw, pw, j, dw, w)
            valid = vh[:, None] & vw[None, :]
            v = x[:, :, xp.clip(ih, 0, h - 1)[:, None], xp.clip(iw, 0, w - 1)[None, :]]
            upd = valid & ((ind < 0) | (v > y) | xp.isnan(v))
            y = xp.where(upd, v, y)
            ind = xp.where(upd, (ih[:, None] * w + iw[None, :]).astype(np.int32), ind)
    return y, ind


def _max_bwd_xp(gy: Any, ind: Any, x_shape: tuple[int, ...]) -> Any:
    xp = array_module(gy)
    n, c, h, w = x_shape
    flat = xp.zeros((n, c, h * w), dtype=gy.dtype)
    # Overlapping windows can pick the same input twice: a scatter that accumulates
    # (np.add.at / cupyx.scatter_add through the backend).
    plane = (xp.arange(n * c) * (h * w)).reshape(n, c, 1, 1)
    backend.scatter_add(flat.reshape(-1), (ind + plane).reshape(-1), gy.reshape(-1))
    return flat.reshape(n, c, h, w)


def _avg_divisor(xp: Any, g: PoolGeom, h: int, w: int, include_pad: bool,
                 override: int) -> tuple[Any, Any, Any, Any, Any]:
    kh, kw, sh, sw, ph, pw, _, _, oh, ow = g

    def axis(o: int, s: int, p: int, k: int, size: int) -> tuple[Any, Any, Any]:
        start = xp.arange(o) * s - p
        end = xp.minimum(start + k, size + p)
        pool = end - start
        return xp.maximum(start, 0), xp.minimum(end, size), pool

    h0, h1, ph_ = axis(oh, sh, ph, kh, h)
    w0, w1, pw_ = axis(ow, sw, pw, kw, w)
    if override:
        div = xp.full((oh, ow), override)
    elif include_pad:
        div = ph_[:, None] * pw_[None, :]
    else:
        div = (h1 - h0)[:, None] * (w1 - w0)[None, :]
    return div, h0, h1, w0, w1


def _avg_fwd_xp(x: Any, g: PoolGeom, include_pad: bool, override: int) -> Any:
    xp = array_module(x)
    kh, kw, sh, sw, ph, pw, _, _, oh, ow = g
    n, c, h, w = x.shape
    div, *_ = _avg_divisor(xp, g, h, w, include_pad, override)
    acc = xp.zeros((n, c, oh, ow), dtype=np.float64 if xp is np else x.dtype)
    for i in range(kh):
        ih, vh = _tap_positions(xp, oh, sh, ph, i, 1, h)
        for j in range(kw):
            iw, vw = _tap_positions(xp, ow, sw, pw, j, 1, w)
            v = x[:, :, xp.clip(ih, 0, h - 1)[:, None], xp.clip(iw, 0, w - 1)[None, :]]
            acc += xp.where(vh[:, None] & vw[None, :], v, 0)
    return (acc / div).astype(x.dtype)


def _avg_bwd_xp(gy: Any, x_shape: tuple[int, ...], g: PoolGeom, include_pad: bool,
                override: int) -> Any:
    xp = array_module(gy)
    kh, kw, sh, sw, ph, pw, _, _, oh, ow = g
    n, c, h, w = x_shape
    div, *_ = _avg_divisor(xp, g, h, w, include_pad, override)
    gd = (gy / div).astype(gy.dtype)
    gx = xp.zeros((n, c, h, w), dtype=gy.dtype)
    for i in range(kh):
        ih, vh = _tap_positions(xp, oh, sh, ph, i, 1, h)
        for j in range(kw):
            iw, vw = _tap_positions(xp, ow, sw, pw, j, 1, w)
            # Valid taps of one (i, j) hit distinct pixels only when the stride is at least 1
            # in index space, which it is; padded taps are routed to nowhere via the mask.
            sel_h = xp.nonzero(vh)[0]
            sel_w = xp.nonzero(vw)[0]
            if sel_h.size == 0 or sel_w.size == 0:
                continue
            gx[:, :, ih[sel_h][:, None], iw[sel_w][None, :]] += gd[:, :, sel_h[:, None],
                                                                   sel_w[None, :]]
    return gx


# ------------------------------------------------------------------------------ public API


def _check_float(op: str, x: Any) -> None:
    if x.dtype.kind != "f":
        raise ValueError(f"{op}: expected a floating-point input, got dtype {x.dtype}")


def max_pool2d_forward(x: Any, kernel_size: int | tuple[int, int],
                       stride: int | tuple[int, int] | None = None,
                       padding: int | tuple[int, int] = 0,
                       dilation: int | tuple[int, int] = 1,
                       ceil_mode: bool = False) -> tuple[Any, Any]:
    """Max pooling over (KH, KW) windows, returning the argmax of each window.

    Args:
        x: input (N, C, H, W), float; any memory layout.
        kernel_size: (KH, KW) or an int.
        stride: (SH, SW), an int, or None for the kernel size.
        padding: (PH, PW) or an int, at most (KH // 2, KW // 2); pads with -inf.
        dilation: (DH, DW) or an int.
        ceil_mode: round the output size up (PyTorch semantics).

    Returns:
        (y, indices), both (N, C, OH, OW) with x's layout; indices int32 flat ``ih*W + iw``.
        Backward needs only ``indices`` and x's shape: the caller keeps those, not x.

    >>> x = np.array([[[[1., 3.], [3., 0.]]]], np.float32)
    >>> y, i = max_pool2d_forward(x, 2); float(y[0, 0, 0, 0]), int(i[0, 0, 0, 0])
    (3.0, 1)
    """
    check_4d("max_pool2d", "input", x, "(N, C, H, W)")
    _check_float("max_pool2d", x)
    g = pool2d_geometry("max_pool2d", x.shape, kernel_size, stride, padding, dilation,
                        ceil_mode)
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    n, c = x.shape[:2]
    if not use_numba(x):
        return _max_fwd_xp(x, g)
    if is_channels_last(x) and c > 1:
        y = empty_channels_last(np, (n, c, oh, ow), x.dtype)
        ind = empty_channels_last(np, (n, c, oh, ow), np.int32)
        _max_fwd_cl(x.transpose(0, 2, 3, 1), y.transpose(0, 2, 3, 1), ind.transpose(0, 2, 3, 1),
                    kh, kw, sh, sw, ph, pw, dh, dw, x[:0, 0, 0, 0], False, False)
    else:
        y = np.empty((n, c, oh, ow), x.dtype)
        ind = np.empty((n, c, oh, ow), np.int32)
        _max_fwd_cf(np.ascontiguousarray(x), y, ind, kh, kw, sh, sw, ph, pw, dh, dw)
    return y, ind


def max_pool2d_backward(gy: Any, indices: Any, x_shape: tuple[int, int, int, int]) -> Any:
    """Route each output gradient to its window's argmax (summing where windows overlap).

    Args:
        gy: upstream gradient (N, C, OH, OW), any layout.
        indices: from ``max_pool2d_forward``.
        x_shape: (N, C, H, W) of the forward input.

    Returns:
        gx (N, C, H, W), a fresh array with the layout of ``indices``.

    >>> x = np.array([[[[1., 3.], [3., 0.]]]]); y, i = max_pool2d_forward(x, 2)
    >>> max_pool2d_backward(np.ones_like(y), i, x.shape)[0, 0].tolist()
    [[0.0, 1.0], [0.0, 0.0]]
    """
    check_4d("max_pool2d", "grad_output", gy, "(N, C, OH, OW)")
    if tuple(gy.shape) != tuple(indices.shape):
        raise ValueError(f"max_pool2d: grad_output shape {tuple(gy.shape)} differs from "
                         f"indices shape {tuple(indices.shape)}")
    x_shape = tuple(int(v) for v in x_shape)  # type: ignore[assignment]
    if not use_numba(gy, indices):
        return _max_bwd_xp(gy, indices, x_shape)
    n, c, h, w = x_shape
    if is_channels_last(indices) and c > 1:
        gx = np.empty((n, h * w * c), gy.dtype)
        _max_bwd_cl(gy.transpose(0, 2, 3, 1),
                    indices.transpose(0, 2, 3, 1).reshape(n, -1), gx)
        return gx.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    gx = np.empty((n * c, h * w), gy.dtype)
    _max_bwd_cf(gy, np.ascontiguousarray(indices).reshape(n * c, -1), gx)
    return gx.reshape(x_shape)


def _avg_override(divisor_override: int | None) -> int:
    if divisor_override is None:
        return 0
    if int(divisor_override) <= 0:
        raise ValueError(f"avg_pool2d: divisor_override must be positive, got "
                         f"{divisor_override}")
    return int(divisor_override)


def avg_pool2d_forward(x: Any, kernel_size: int | tuple[int, int],
                       stride: int | tuple[int, int] | None = None,
                       padding: int | tuple[int, int] = 0, ceil_mode: bool = False,
                       count_include_pad: bool = True,
                       divisor_override: int | None = None) -> Any:
    """Average pooling (PyTorch's ``avg_pool2d``), zero padding.

    Args:
        x: input (N, C, H, W), float.
        kernel_size: (KH, KW) or an int.
        stride: (SH, SW), an int, or None for the kernel size.
        padding: (PH, PW) or an int, at most (KH // 2, KW // 2); pads with zeros.
        ceil_mode: round the output size up (PyTorch semantics). There is no dilation.
        count_include_pad: divide by the window size clipped to the padded input (True,
            PyTorch's default) or by the number of real input pixels (False).
        divisor_override: divide by this instead.

    Returns:
        y (N, C, OH, OW), with x's memory layout on the numba path (C-order on the
        generic one). Backward needs only x's shape.

    >>> x = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> avg_pool2d_forward(x, 2).item()
    1.5
    """
    check_4d("avg_pool2d", "input", x, "(N, C, H, W)")
    _check_float("avg_pool2d", x)
    g = pool2d_geometry("avg_pool2d", x.shape, kernel_size, stride, padding, 1, ceil_mode)
    kh, kw, sh, sw, ph, pw, _, _, oh, ow = g
    ov = _avg_override(divisor_override)
    n, c = x.shape[:2]
    if not use_numba(x):
        return _avg_fwd_xp(x, g, count_include_pad, ov)
    if is_channels_last(x) and c > 1:
        y = empty_channels_last(np, (n, c, oh, ow), x.dtype)
        _avg_fwd_cl(x.transpose(0, 2, 3, 1), y.transpose(0, 2, 3, 1), kh, kw, sh, sw, ph, pw,
                    bool(count_include_pad), ov)
    else:
        y = np.empty((n, c, oh, ow), x.dtype)
        _avg_fwd_cf(np.ascontiguousarray(x), y, kh, kw, sh, sw, ph, pw,
                    bool(count_include_pad), ov)
    return y


def avg_pool2d_backward(gy: Any, x_shape: tuple[int, int, int, int],
                        kernel_size: int | tuple[int, int],
                        stride: int | tuple[int, int] | None = None,
                        padding: int | tuple[int, int] = 0, ceil_mode: bool = False,
                        count_include_pad: bool = True, divisor_override: int | None = None,
                        *, channels_last: bool | None = None) -> Any:
    """Spread each output gradient evenly (by the forward's divisor) over its window.

    Args:
        gy: upstream gradient (N, C, OH, OW).
        x_shape: (N, C, H, W) of the forward input.
        kernel_size: as in forward.
        stride: as in forward.
        padding: as in forward.
        ceil_mode: as in forward.
        count_include_pad: as in forward.
        divisor_override: as in forward.
        channels_last: layout of gx; None follows gy's layout.

    Returns:
        gx (N, C, H, W), fresh.

    >>> avg_pool2d_backward(np.ones((1, 1, 1, 1)), (1, 1, 2, 2), 2)[0, 0].tolist()
    [[0.25, 0.25], [0.25, 0.25]]
    """
    check_4d("avg_pool2d", "grad_output", gy, "(N, C, OH, OW)")
    x_shape = tuple(int(v) for v in x_shape)  # type: ignore[assignment]
    g = pool2d_geometry("avg_pool2d", x_shape, kernel_size, stride, padding, 1, ceil_mode)
    kh, kw, sh, sw, ph, pw, _, _, oh, ow = g
    want = (x_shape[0], x_shape[1], oh, ow)
    if tuple(gy.shape) != want:
        raise ValueError(f"avg_pool2d: grad_output has shape {tuple(gy.shape)}, expected {want}")
    ov = _avg_override(divisor_override)
    if not use_numba(gy):
        return _avg_bwd_xp(gy, x_shape, g, count_include_pad, ov)
    cl = is_channels_last(gy) if channels_last is None else channels_last
    if cl and x_shape[1] > 1:
        gx = empty_channels_last(np, x_shape, gy.dtype)
        _avg_bwd_cl(gy.transpose(0, 2, 3, 1), gx.transpose(0, 2, 3, 1), kh, kw, sh, sw, ph, pw,
                    bool(count_include_pad), ov)
    else:
        gx = np.empty(x_shape, gy.dtype)
        _avg_bwd_cf(gy, gx, kh, kw, sh, sw, ph, pw, bool(count_include_pad), ov)
    return gx


# ------------------------------------------------------------------------------ references


def max_pool2d_reference(x: np.ndarray, kernel_size: Any, stride: Any = None, padding: Any = 0,
                         dilation: Any = 1, ceil_mode: bool = False
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Plain-loop max pooling with PyTorch's tie and NaN rules (tests only).

    >>> max_pool2d_reference(np.array([[[[2., 2.]]]]), (1, 2))[1].tolist()
    [[[[0]]]]
    """
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = pool2d_geometry(
        "max_pool2d", x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), x.dtype)
    ind = np.empty((n, c, oh, ow), np.int32)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, m = -1, -np.inf
                    for a in range(kh):
                        for e in range(kw):
                            ih, iw = i * sh - ph + a * dh, j * sw - pw + e * dw
                            if 0 <= ih < h and 0 <= iw < w:
                                v = x[b, ch, ih, iw]
                                if best < 0 or v > m or np.isnan(v):
                                    best, m = ih * w + iw, v
                    y[b, ch, i, j], ind[b, ch, i, j] = m, best
    return y, ind


def max_pool2d_backward_reference(gy: np.ndarray, indices: np.ndarray,
                                  x_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Plain-loop scatter of gy to the argmax positions (tests only).

    >>> max_pool2d_backward_reference(np.ones((1, 1, 1, 1)), np.array([[[[1]]]]), (1, 1, 1, 2))
    array([[[[0., 1.]]]])
    """
    n, c, h, w = x_shape
    gx = np.zeros(x_shape, gy.dtype)
    for b in range(n):
        for ch in range(c):
            for i in range(gy.shape[2]):
                for j in range(gy.shape[3]):
                    p = int(indices[b, ch, i, j])
                    gx[b, ch, p // w, p % w] += gy[b, ch, i, j]
    return gx


def _avg_windows(x_shape: tuple[int, ...], kernel_size: Any, stride: Any, padding: Any,
                 ceil_mode: bool, count_include_pad: bool, divisor_override: int | None
                 ) -> tuple[tuple[int, int], list[tuple[int, int, int, int, int, int, float]]]:
    kh, kw, sh, sw, ph, pw, _, _, oh, ow = pool2d_geometry(
        "avg_pool2d", x_shape, kernel_size, stride, padding, 1, ceil_mode)
    h, w = x_shape[2], x_shape[3]
    out = []
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            div = (divisor_override or (size if count_include_pad else (he - hs) * (we - ws)))
            out.append((i, j, hs, he, ws, we, float(div)))
    return (oh, ow), out


def avg_pool2d_reference(x: np.ndarray, kernel_size: Any, stride: Any = None, padding: Any = 0,
                         ceil_mode: bool = False, count_include_pad: bool = True,
                         divisor_override: int | None = None) -> np.ndarray:
    """Plain-loop average pooling with PyTorch's divisor rules (tests only).

    >>> avg_pool2d_reference(np.ones((1, 1, 2, 2)), 2, padding=1)[0, 0].tolist()
    [[0.25, 0.25], [0.25, 0.25]]
    """
    (oh, ow), wins = _avg_windows(x.shape, kernel_size, stride, padding, ceil_mode,
                                  count_include_pad, divisor_override)
    y = np.zeros((x.shape[0], x.shape[1], oh, ow), x.dtype)
    for i, j, hs, he, ws, we, div in wins:
        y[:, :, i, j] = x[:, :, hs:he, ws:we].astype(np.float64).sum(axis=(2, 3)) / div
    return y


def avg_pool2d_backward_reference(gy: np.ndarray, x_shape: tuple[int, int, int, int],
                                  kernel_size: Any, stride: Any = None, padding: Any = 0,
                                  ceil_mode: bool = False, count_include_pad: bool = True,
                                  divisor_override: int | None = None) -> np.ndarray:
    """Plain-loop average pooling backward (tests only).

    >>> avg_pool2d_backward_reference(np.ones((1, 1, 1, 1)), (1, 1, 1, 2), (1, 2)).tolist()
    [[[[0.5, 0.5]]]]
    """
    _, wins = _avg_windows(x_shape, kernel_size, stride, padding, ceil_mode,
                           count_include_pad, divisor_override)
    gx = np.zeros(x_shape, gy.dtype)
    for i, j, hs, he, ws, we, div in wins:
        gx[:, :, hs:he, ws:we] += (gy[:, :, i, j] / div)[:, :, None, None]
    return gx
