"""Array-level 2-D convolution: forward, input gradient, weight gradient, bias gradient.

These functions take and return raw arrays (NumPy or CuPy) in PyTorch's NCHW *shapes*; an
autograd ``Function`` wraps them. Internally every convolution is one GEMM per group on an
im2col matrix of shape (N*OH*OW, K) (see ``minidl.kernels.im2col`` for notation).

Layout decision: the outputs ``y`` (forward) and ``gx`` (backward, when ``x`` was) are
*channels-last*: an (N, C, H, W)-shaped array whose memory is (N, H, W, C) in C order, like
PyTorch's ``torch.channels_last`` memory format. That is exactly the memory the GEMM
``cols @ w_mat.T`` writes, so no transpose runs after it, and the next layer's im2col copies
whole channel vectors. NumPy ufuncs keep a channels-last layout (``np.maximum(y, 0)`` is
channels-last too), so a conv -> ReLU -> pool -> conv chain never transposes. Semantics are
unaffected: the array is an ordinary strided NumPy array; call ``np.ascontiguousarray`` if a
C-contiguous NCHW buffer is required. Inputs may have any layout.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange

from minidl.kernels import winograd
from minidl.kernels._common import (
    array_module,
    check_4d,
    is_channels_last,
    pair,
    scratch,
    use_numba,
)
from minidl.kernels.im2col import Pad4, _geometry, col2im_into, im2col_into

OP = "conv2d"

# Which algorithm computes eligible convolutions (see ``set_conv_algorithm``).
_ALGORITHMS = ("auto", "im2col", "winograd")
_algorithm = os.environ.get("MINIDL_CONV_ALGORITHM", "auto").strip().lower() or "auto"
if _algorithm not in _ALGORITHMS:
    raise ValueError(f"MINIDL_CONV_ALGORITHM: expected one of {_ALGORITHMS}, got {_algorithm!r}")

# "auto" takes Winograd from this many input and output channels: below it the transforms,
# which are memory bound, cost more than the multiplications they save (the first layer of
# an image net, 3 -> 32 channels, stays on im2col).
WINOGRAD_MIN_CHANNELS = 16


class ConvGeometry(NamedTuple):
    """Validated convolution parameters (see ``conv2d_geometry``).

    Fields: input (n, c, h, w); oc output channels; kernel (kh, kw); stride (sh, sw);
    ``pad`` = (PT, PB, PL, PR); dilation (dh, dw); output (oh, ow); groups.

    >>> g = conv2d_geometry((2, 3, 8, 8), (4, 3, 3, 3), stride=2, padding=1)
    >>> (g.n, g.oc, g.oh, g.ow, g.pad)
    (2, 4, 4, 4, (1, 1, 1, 1))
    """

    n: int
    c: int
    h: int
    w: int
    oc: int
    kh: int
    kw: int
    sh: int
    sw: int
    pad: Pad4
    dh: int
    dw: int
    oh: int
    ow: int
    groups: int


def conv2d_geometry(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Any = 1,
                    padding: Any = 0, dilation: Any = 1, groups: int = 1) -> ConvGeometry:
    """Validate conv2d arguments and compute every size (errors name ``conv2d``).

    Args:
        x_shape: (N, C, H, W).
        w_shape: (OC, C // groups, KH, KW).
        stride: int or (SH, SW), positive.
        padding: int, (PH, PW), (PT, PB, PL, PR), ``"valid"`` (0) or ``"same"`` (stride 1
            only; odd total padding puts the extra row/column at the bottom/right, as PyTorch).
        dilation: int or (DH, DW), positive: spacing between kernel taps.
        groups: positive, divides C and OC.

    Returns:
        A ``ConvGeometry`` with padding normalised to (PT, PB, PL, PR) and OH, OW.

    >>> conv2d_geometry((64, 3, 32, 32), (32, 3, 3, 3)).oh
    30
    """
    if len(x_shape) != 4:
        raise ValueError(f"{OP}: expected 4-D input (N, C, H, W), got {len(x_shape)}-D input "
                         f"of shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"{OP}: expected 4-D weight (OC, C/groups, KH, KW), got "
                         f"{len(w_shape)}-D weight of shape {tuple(w_shape)}")
    n, c, h, w = (int(v) for v in x_shape)
    oc, cg, kh, kw = (int(v) for v in w_shape)
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{OP}: groups must be a positive int, got {groups!r}")
    if c % groups or oc % groups:
        raise ValueError(f"{OP}: groups={groups} must divide input channels ({c}) and output "
                         f"channels ({oc}) (weight shape {tuple(w_shape)})")
    if cg * groups != c:
        raise ValueError(f"{OP}: input has {c} channels but weight expects {cg * groups} "
                         f"(weight shape {tuple(w_shape)}" +
                         (f", groups={groups})" if groups != 1 else ")"))
    stride = pair(OP, "stride", stride)
    dilation = pair(OP, "dilation", dilation)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            padding = 0
        elif mode == "same":
            if stride != (1, 1):
                raise ValueError(f"{OP}: padding='same' requires stride 1, got stride {stride}")
            th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
            padding = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            raise ValueError(f"{OP}: padding must be an int, a pair, 'same' or 'valid', "
                             f"got {padding!r}")
    if kh < 1 or kw < 1:
        raise ValueError(f"{OP}: kernel size must be positive, got weight shape {w_shape}")
    kh_, kw_, sh, sw, dh, dw, pad, oh, ow = _geometry(OP, (n, c, h, w), (kh, kw), stride,
                                                      padding, dilation)
    return ConvGeometry(n, c, h, w, oc, kh, kw, sh, sw, pad, dh, dw, oh, ow, int(groups))


def crop_outputs(g: ConvGeometry, out_size: tuple[int, int] | None) -> ConvGeometry:
    """``g`` computing only the top-left ``out_size`` = (OH', OW') outputs (None: all).

    Each output depends only on its own receptive field, so the rows of the im2col matrix
    (and of ``gy``) for the dropped outputs are simply never formed: the GEMMs shrink by
    ``1 - OH'*OW' / (OH*OW)``. Used when a consumer reads only part of the output, as a
    2x2 max-pool reads 12x12 of a 13x13 map.

    >>> g = conv2d_geometry((1, 1, 15, 15), (1, 1, 3, 3))
    >>> g.oh, crop_outputs(g, (12, 12)).oh
    (13, 12)
    """
    if out_size is None:
        return g
    oh, ow = (int(v) for v in out_size)
    if not (1 <= oh <= g.oh and 1 <= ow <= g.ow):
        raise ValueError(f"{OP}: out_size {tuple(out_size)} must be between (1, 1) and the "
                         f"full output size ({g.oh}, {g.ow})")
    return g._replace(oh=oh, ow=ow)


def set_conv_algorithm(name: str) -> str:
    """Choose how 3x3 stride-1 convolutions run on the CPU; return the previous choice.

    ``"auto"`` (default): Winograd F(4x4, 3x3) (``minidl.kernels.winograd``) when the
    kernel is 3x3, stride 1, dilation 1, one group, padding at most 2 on each side, input
    and output channels at least ``WINOGRAD_MIN_CHANNELS``, on NumPy arrays with the numba
    backend; im2col + GEMM otherwise. ``"im2col"``: never Winograd. ``"winograd"``: Winograd
    for every eligible convolution whatever its channel count (tests use it). The
    environment variable ``MINIDL_CONV_ALGORITHM`` sets the initial value.

    >>> old = set_conv_algorithm("im2col"); _ = set_conv_algorithm(old); old in _ALGORITHMS
    True
    """
    global _algorithm
    name = str(name).strip().lower()
    if name not in _ALGORITHMS:
        raise ValueError(f"set_conv_algorithm: expected one of {_ALGORITHMS}, got {name!r}")
    old, _algorithm = _algorithm, name
    return old


def get_conv_algorithm() -> str:
    """The current choice of ``set_conv_algorithm``.

    >>> get_conv_algorithm() in ("auto", "im2col", "winograd")
    True
    """
    return _algorithm


def winograd_applies(g: ConvGeometry, x: Any) -> bool:
    """Whether a convolution of geometry ``g`` on array ``x`` runs as Winograd F(4x4, 3x3)
    under the current ``set_conv_algorithm`` choice.

    >>> g = conv2d_geometry((8, 64, 16, 16), (64, 64, 3, 3), padding=1)
    >>> old = set_conv_algorithm("auto")
    >>> winograd_applies(g, np.zeros(1, np.float32)), winograd_applies(g._replace(sh=2), None)
    (True, False)
    >>> _ = set_conv_algorithm(old)
    """
    if _algorithm == "im2col" or not use_numba(x):
        return False
    if (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.groups) != (3, 3, 1, 1, 1, 1, 1) or max(g.pad) > 2:
        return False
    return _algorithm == "winograd" or min(g.c, g.oc) >= WINOGRAD_MIN_CHANNELS


# --------------------------------------------------------------------------- numba helpers


@njit(parallel=True, cache=True, fastmath=False)
def _bias_act(y, b, use_bias, relu):
    # One pass over the GEMM output instead of one for += b and one for max(., 0).
    R, C = y.shape
    for r in prange(R):
        for c in range(C):
            v = y[r, c]
            if use_bias:
                v += b[c]
            if relu and v < 0:  # NaN passes through, as in PyTorch
                v = 0
            y[r, c] = v


@njit(parallel=True, cache=True, fastmath=False)
def _rows_from_cf(g, out):
    # (N, C, P) channels-first -> (N*P, C) rows: a per-sample transpose.
    N, C, P = g.shape
    for n in prange(N):
        for c in range(C):
            for p in range(P):
                out[n * P + p, c] = g[n, c, p]


@njit(parallel=True, cache=True, fastmath=False)
def _relu_mask(g, y, out):
    R, C = g.shape
    for r in prange(R):
        for c in range(C):
            out[r, c] = g[r, c] if y[r, c] > 0 else 0


@njit(parallel=True, cache=True, fastmath=False)
def _colsum(g, out):
    # Chunked float64 partial sums: parallel and far more accurate than one float32 running sum.
    R, C = g.shape
    chunk = 256
    nchunks = (R + chunk - 1) // chunk
    part = np.zeros((nchunks, C), dtype=np.float64)
    for k in prange(nchunks):
        r1 = min(R, (k + 1) * chunk)
        for r in range(k * chunk, r1):
            for c in range(C):
                part[k, c] += g[r, c]
    for c in range(C):
        s = 0.0
        for k in range(nchunks):
            s += part[k, c]
        out[c] = s


# ------------------------------------------------------------------------------- internals


def _check_dtypes(*named: tuple[str, Any]) -> None:
    first_name, first = named[0]
    for name, a in named[1:]:
        if a is not None and a.dtype != first.dtype:
            raise ValueError(f"{OP}: {name} dtype {a.dtype} differs from {first_name} dtype "
                             f"{first.dtype} (minidl never upcasts silently)")


def _wmat(w: Any) -> Any:
    """(OC, Cg, KH, KW) -> (OC, KH*KW*Cg), columns ordered (kh, kw, cg) like im2col's."""
    xp = array_module(w)
    return xp.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1)


def _cols_buffer(xp: Any, g: ConvGeometry, dtype: Any, owned: bool) -> Any:
    shape = (g.n * g.oh * g.ow, g.kh * g.kw * g.c)
    if owned or xp is not np:
        return xp.empty(shape, dtype=dtype)
    return scratch("conv_cols", shape, dtype)


def _grouped_matmul(a: Any, b: Any, out: Any, groups: int, a_block: int, b_block: int,
                    out_block: int, a_axis: int, b_axis: int) -> None:
    """out[:, g-block] = a[..g-block..] @ b[..g-block..] for each group (groups=1: one GEMM)."""
    xp = array_module(a)
    if groups == 1:
        xp.matmul(a, b, out=out)
        return
    for g in range(groups):
        sa = [slice(None), slice(None)]
        sb = [slice(None), slice(None)]
        sa[a_axis] = slice(g * a_block, (g + 1) * a_block)
        sb[b_axis] = slice(g * b_block, (g + 1) * b_block)
        out[:, g * out_block:(g + 1) * out_block] = a[tuple(sa)] @ b[tuple(sb)]


def _gy_rows(gy: Any, g: ConvGeometry, relu_output: Any = None) -> Any:
    """gy (N, OC, OH, OW) as an (N*OH*OW, OC) matrix, masked by relu_output > 0 if given.

    A free view when gy is channels-last; otherwise an internal scratch copy.
    """
    check_4d(OP, "grad_output", gy, "(N, OC, OH, OW)")
    want = (g.n, g.oc, g.oh, g.ow)
    if tuple(gy.shape) != want:
        raise ValueError(f"{OP}: grad_output has shape {tuple(gy.shape)}, expected {want}")
    rows_shape = (g.n * g.oh * g.ow, g.oc)
    if not use_numba(gy) or (relu_output is not None and not use_numba(relu_output)):
        xp = array_module(gy)
        rows = gy.transpose(0, 2, 3, 1).reshape(rows_shape)
        if relu_output is not None:
            rows = rows * (relu_output.transpose(0, 2, 3, 1).reshape(rows_shape) > 0)
        return xp.ascontiguousarray(rows)
    owned = False
    if is_channels_last(gy):
        rows = gy.transpose(0, 2, 3, 1).reshape(rows_shape)
    else:
        rows = scratch("conv_gy", rows_shape, gy.dtype)
        _rows_from_cf(np.ascontiguousarray(gy).reshape(g.n, g.oc, -1), rows)
        owned = True
    if relu_output is not None:
        if tuple(relu_output.shape) != want:
            raise ValueError(f"{OP}: relu_output has shape {tuple(relu_output.shape)}, "
                             f"expected {want}")
        yr = np.ascontiguousarray(relu_output.transpose(0, 2, 3, 1)).reshape(rows_shape)
        out = rows if owned else scratch("conv_gy", rows_shape, gy.dtype)
        _relu_mask(rows, yr, out)
        rows = out
    return rows


def _grad_bias(rows: Any) -> Any:
    if use_numba(rows):
        out = np.empty(rows.shape[1], dtype=rows.dtype)
        _colsum(rows, out)
        return out
    return rows.sum(axis=0)


def channel_sums(a: Any) -> Any:
    """``a.sum((0, 2, 3))`` for an (N, C, H, W) array: a bias gradient, shape (C,).

    Channels-last NumPy arrays are summed as (N*H*W, C) rows with float64 partial sums.

    >>> channel_sums(np.ones((2, 3, 4, 5), np.float32)).tolist()
    [40.0, 40.0, 40.0]
    """
    check_4d(OP, "grad_output", a, "(N, C, H, W)")
    if use_numba(a) and is_channels_last(a):
        return _grad_bias(a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1]))
    return a.sum(axis=(0, 2, 3))


def _grad_weight_rows(x: Any, rows: Any, g: ConvGeometry, w_shape: tuple[int, ...],
                      cols: Any) -> Any:
    xp = array_module(x)
    if cols is None:
        cols = _cols_buffer(xp, g, x.dtype, owned=False)
        im2col_into(x, cols, g.kh, g.kw, g.sh, g.sw, g.pad, g.dh, g.dw, g.oh, g.ow, g.groups)
    else:
        want = (g.n * g.oh * g.ow, g.kh * g.kw * g.c)
        if tuple(cols.shape) != want:
            raise ValueError(f"{OP}: cols has shape {tuple(cols.shape)}, expected {want}")
    ocg, kg = g.oc // g.groups, g.kh * g.kw * (g.c // g.groups)
    gw_mat = xp.empty((g.oc, kg), dtype=x.dtype)
    if g.groups == 1:
        xp.matmul(rows.T, cols, out=gw_mat)
    else:
        for gi in range(g.groups):
            gw_mat[gi * ocg:(gi + 1) * ocg] = (rows[:, gi * ocg:(gi + 1) * ocg].T
                                               @ cols[:, gi * kg:(gi + 1) * kg])
    oc, cg, kh, kw = w_shape
    return xp.ascontiguousarray(gw_mat.reshape(oc, kh, kw, cg).transpose(0, 3, 1, 2))


def _grad_input_rows(rows: Any, w: Any, g: ConvGeometry, channels_last: bool) -> Any:
    xp = array_module(rows)
    ocg, kg = g.oc // g.groups, g.kh * g.kw * (g.c // g.groups)
    shape = (g.n * g.oh * g.ow, g.kh * g.kw * g.c)
    gcols = scratch("conv_gcols", shape, rows.dtype) if xp is np else xp.empty(shape, rows.dtype)
    _grouped_matmul(rows, _wmat(w), gcols, g.groups, ocg, ocg, kg, a_axis=1, b_axis=0)
    x_shape = (g.n, g.c, g.h, g.w)
    if channels_last:
        gx = xp.empty((g.n, g.h, g.w, g.c), dtype=rows.dtype).transpose(0, 3, 1, 2)
    else:
        gx = xp.empty(x_shape, dtype=rows.dtype)
    col2im_into(gcols, gx, g.kh, g.kw, g.sh, g.sw, g.pad, g.dh, g.dw, g.oh, g.ow, g.groups)
    return gx


def _grad_weight(x: Any, rows: Any, g: ConvGeometry, w_shape: tuple[int, ...], cols: Any
                 ) -> Any:
    """gw from gy's (N*OH*OW, OC) rows: Winograd's adjoint or ``rows^T @ im2col(x)``."""
    if winograd_applies(g, x):
        return winograd.conv3x3_grad_weight(x, rows.reshape(g.n, g.oh, g.ow, g.oc), g.pad)
    return _grad_weight_rows(x, rows, g, w_shape, cols)


def _grad_input(rows: Any, w: Any, g: ConvGeometry, channels_last: bool) -> Any:
    """gx from gy's rows: Winograd's adjoint (a flipped-filter Winograd conv) or GEMM +
    col2im; channels-last memory if ``channels_last``, else C order."""
    if winograd_applies(g, rows):
        gx = winograd.conv3x3_grad_input(rows.reshape(g.n, g.oh, g.ow, g.oc), w,
                                         (g.h, g.w), g.pad)
        return gx if channels_last else np.ascontiguousarray(gx)
    return _grad_input_rows(rows, w, g, channels_last)


# ------------------------------------------------------------------------------ public API


def conv2d_forward(x: Any, w: Any, b: Any = None, stride: int | tuple[int, int] = 1,
                   padding: int | tuple[int, ...] | str = 0,
                   dilation: int | tuple[int, int] = 1, groups: int = 1, *,
                   relu: bool = False, return_cols: bool = False,
                   out_size: tuple[int, int] | None = None) -> Any:
    """2-D cross-correlation (PyTorch's ``conv2d``), optionally fused with bias and ReLU.

    Args:
        x: input (N, C, H, W), any memory layout, float32 or float64.
        w: weight (OC, C // groups, KH, KW), same dtype as x.
        b: bias (OC,) or None.
        stride: int or (SH, SW), as ``torch.nn.functional.conv2d``; see ``conv2d_geometry``.
        padding: int, (PH, PW), (PT, PB, PL, PR), ``"valid"`` or ``"same"``; see
            ``conv2d_geometry``.
        dilation: int or (DH, DW); see ``conv2d_geometry``.
        groups: number of channel groups; divides C and OC.
        relu: apply ReLU to the result in the same pass as the bias add. Backward then needs
            ``relu_output=y`` to mask the incoming gradient.
        return_cols: also return the im2col matrix so backward need not rebuild it
            (costs (N*OH*OW, K) memory per layer until backward; off by default). None in
            its place when the convolution ran as Winograd (see ``winograd_applies``),
            which has no im2col matrix.
        out_size: compute only the top-left (OH', OW') outputs (see ``crop_outputs``);
            OH, OW below then mean OH', OW'.

    Returns:
        y of shape (N, OC, OH, OW), channels-last memory (see module docstring); a fresh
        array the caller owns. With ``return_cols``: ``(y, cols)``, cols (N*OH*OW, K).
        For backward the caller keeps x and w (and cols if returned, y if ``relu``).

    >>> x = np.ones((2, 3, 5, 5), np.float32); w = np.ones((4, 3, 3, 3), np.float32)
    >>> y = conv2d_forward(x, w, np.zeros(4, np.float32), padding=1)
    >>> y.shape, float(y[0, 0, 2, 2]), float(y[0, 0, 0, 0])
    ((2, 4, 5, 5), 27.0, 12.0)
    """
    check_4d(OP, "input", x, "(N, C, H, W)")
    check_4d(OP, "weight", w, "(OC, C/groups, KH, KW)")
    g = crop_outputs(conv2d_geometry(x.shape, w.shape, stride, padding, dilation, groups),
                     out_size)
    _check_dtypes(("input", x), ("weight", w), ("bias", b))
    if b is not None and tuple(b.shape) != (g.oc,):
        raise ValueError(f"{OP}: bias must have shape ({g.oc},), got {tuple(b.shape)}")
    if winograd_applies(g, x):
        y = winograd.conv3x3_forward(x, w, b, g.pad, (g.oh, g.ow), relu)
        return (y, None) if return_cols else y
    xp = array_module(x)
    cols = _cols_buffer(xp, g, x.dtype, owned=return_cols)
    im2col_into(x, cols, g.kh, g.kw, g.sh, g.sw, g.pad, g.dh, g.dw, g.oh, g.ow, g.groups)
    y_rows = xp.empty((g.n * g.oh * g.ow, g.oc), dtype=x.dtype)
    ocg, kg = g.oc // g.groups, g.kh * g.kw * (g.c // g.groups)
    _grouped_matmul(cols, _wmat(w).T, y_rows, g.groups, kg, ocg, ocg, a_axis=1, b_axis=1)
    if use_numba(y_rows):
        if b is not None or relu:
            _bias_act(y_rows, y_rows[0] if b is None else b, b is not None, relu)
    else:
        if b is not None:
            y_rows += b
        if relu:
            xp.maximum(y_rows, 0, out=y_rows)
    y = y_rows.reshape(g.n, g.oh, g.ow, g.oc).transpose(0, 3, 1, 2)
    return (y, cols) if return_cols else y


def conv2d_grad_input(gy: Any, w: Any, x_shape: tuple[int, int, int, int],
                      stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1,
                      *, channels_last: bool = True, relu_output: Any = None) -> Any:
    """Gradient of ``conv2d`` with respect to its input: a transposed conv of gy with w.

    Args:
        gy: upstream gradient (N, OC, OH, OW), any layout.
        w: weight (OC, C // groups, KH, KW).
        x_shape: (N, C, H, W) of the forward input.
        stride: as in forward.
        padding: as in forward.
        dilation: as in forward.
        groups: as in forward.
        channels_last: memory layout of the result (shape is NCHW either way).
        relu_output: forward's y when it ran with ``relu=True``.

    Returns:
        gx of shape x_shape (fresh array).

    >>> gy = np.ones((1, 1, 2, 2)); w = np.ones((1, 1, 2, 2))
    >>> conv2d_grad_input(gy, w, (1, 1, 3, 3))[0, 0].tolist()
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
    """
    check_4d(OP, "weight", w, "(OC, C/groups, KH, KW)")
    g = conv2d_geometry(x_shape, w.shape, stride, padding, dilation, groups)
    _check_dtypes(("grad_output", gy), ("weight", w))
    return _grad_input(_gy_rows(gy, g, relu_output), w, g, channels_last)


def conv2d_grad_weight(x: Any, gy: Any, w_shape: tuple[int, int, int, int],
                       stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1,
                       *, cols: Any = None, relu_output: Any = None) -> Any:
    """Gradient of ``conv2d`` with respect to its weight: ``gy_rows.T @ im2col(x)``.

    Args:
        x: forward input (N, C, H, W).
        gy: upstream gradient (N, OC, OH, OW).
        w_shape: (OC, C // groups, KH, KW).
        stride: as in forward.
        padding: as in forward.
        dilation: as in forward.
        groups: as in forward.
        cols: forward's im2col matrix if it was kept (``return_cols=True``); else rebuilt.
        relu_output: forward's y when it ran with ``relu=True``.

    Returns:
        gw of shape w_shape, C-contiguous (fresh array).

    >>> x = np.ones((1, 1, 3, 3)); gy = np.ones((1, 1, 2, 2))
    >>> conv2d_grad_weight(x, gy, (1, 1, 2, 2))[0, 0].tolist()
    [[4.0, 4.0], [4.0, 4.0]]
    """
    check_4d(OP, "input", x, "(N, C, H, W)")
    g = conv2d_geometry(x.shape, w_shape, stride, padding, dilation, groups)
    _check_dtypes(("input", x), ("grad_output", gy))
    return _grad_weight(x, _gy_rows(gy, g, relu_output), g, tuple(w_shape), cols)


def conv2d_backward(x: Any, w: Any, gy: Any, stride: Any = 1, padding: Any = 0,
                    dilation: Any = 1, groups: int = 1, *, cols: Any = None,
                    relu_output: Any = None, need_input_grad: bool = True,
                    need_weight_grad: bool = True, need_bias_grad: bool = True,
                    out_size: tuple[int, int] | None = None) -> tuple[Any, Any, Any]:
    """All gradients of ``conv2d_forward`` in one call, sharing the reshaped gy.

    Args:
        x: forward input (N, C, H, W).
        w: weight (OC, C // groups, KH, KW).
        gy: upstream gradient (N, OC, OH, OW).
        stride: as in forward.
        padding: as in forward.
        dilation: as in forward.
        groups: as in forward.
        cols: forward's im2col matrix if kept; rebuilt into a scratch buffer otherwise.
        relu_output: forward's y when it ran with ``relu=True`` (masks gy by y > 0).
        need_input_grad: compute gx; False skips it (the first layer of a net needs no gx).
        need_weight_grad: compute gw; False skips it.
        need_bias_grad: compute gb; False skips it.
        out_size: forward's ``out_size``; gy then holds only those outputs (the others'
            gradients are zero).

    Returns:
        (gx, gw, gb): gx like x's shape and layout (channels-last if x was, else C order),
        gw (OC, C // groups, KH, KW), gb (OC,); None for each gradient not asked for.

    >>> x = np.ones((1, 1, 3, 3)); w = np.ones((1, 1, 2, 2))
    >>> gx, gw, gb = conv2d_backward(x, w, np.ones((1, 1, 2, 2)))
    >>> float(gx.sum()), float(gw.sum()), gb.tolist()
    (16.0, 16.0, [4.0])
    """
    check_4d(OP, "input", x, "(N, C, H, W)")
    check_4d(OP, "weight", w, "(OC, C/groups, KH, KW)")
    g = crop_outputs(conv2d_geometry(x.shape, w.shape, stride, padding, dilation, groups),
                     out_size)
    _check_dtypes(("input", x), ("weight", w), ("grad_output", gy))
    rows = _gy_rows(gy, g, relu_output)
    gb = _grad_bias(rows) if need_bias_grad else None
    gw = _grad_weight(x, rows, g, tuple(w.shape), cols) if need_weight_grad else None
    gx = _grad_input(rows, w, g, is_channels_last(x) and g.c > 1) if need_input_grad else None
    return gx, gw, gb


def conv2d_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                     stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1
                     ) -> np.ndarray:
    """Direct loop-over-taps convolution in NumPy, independent of im2col (tests only).

    >>> x = np.ones((1, 1, 3, 3)); w = np.ones((1, 1, 2, 2))
    >>> conv2d_reference(x, w).tolist()
    [[[[4.0, 4.0], [4.0, 4.0]]]]
    """
    g = conv2d_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    pt, pb, pl, pr = g.pad
    xp_ = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    cg, ocg = g.c // g.groups, g.oc // g.groups
    y = np.zeros((g.n, g.oc, g.oh, g.ow), dtype=x.dtype)
    for gi in range(g.groups):
        xs = xp_[:, gi * cg:(gi + 1) * cg]
        ws = w[gi * ocg:(gi + 1) * ocg]
        for i in range(g.kh):
            for j in range(g.kw):
                patch = xs[:, :, i * g.dh: i * g.dh + g.sh * (g.oh - 1) + 1: g.sh,
                           j * g.dw: j * g.dw + g.sw * (g.ow - 1) + 1: g.sw]
                y[:, gi * ocg:(gi + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y
