"""Normalization and noise: ``batch_norm`` (one fused op), ``layer_norm``, ``group_norm`` and
``dropout``.

Batch norm normalizes each channel ``c`` over the ``M = N * H * W`` values it takes in a
batch: ``xhat = (x - mean) * inv_std`` with ``inv_std = 1 / sqrt(var + eps)`` (biased
variance), then ``y = weight * xhat + bias``. Its backward is the classic fused formula

    gxhat = gy * weight
    gx    = inv_std / M * (M * gxhat - sum(gxhat) - xhat * sum(gxhat * xhat))

(sums over the ``M`` positions of a channel): three passes over the data instead of the
dozen that the chain of elementary ops would record. The formula is written with
differentiable ops, and when a graph of the backward pass is being recorded (double backward)
``xhat`` and ``inv_std`` are rebuilt from ``x`` with differentiable ops, so second derivatives
are exact; otherwise the arrays saved by the forward pass are reused as constants.

All scalars enter the math as Python floats, which NumPy 2 treats as "weak", so float32
inputs stay float32 (a NumPy ``float64`` scalar would silently promote).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minidl import _deprecated, backend
from minidl.autograd import Function, Tensor, is_grad_enabled
from minidl.functional.math import sqrt, upper
from minidl.functional.reduce import mean as _mean
from minidl.functional.reduce import sum as _sum
from minidl.kernels import norm as norm_kernels
from minidl.kernels.elementwise import relu_backward
from minidl.random import default_generator


def _const(array: Any) -> Tensor:
    return Tensor._make(array, False)


class BatchNormFunction(Function):
    """``y = xhat * weight + bias``, ``xhat = (x - mean) * inv_std`` per channel; y like x.

    Inputs: ``x`` (N, C, ...) and, when affine, ``weight (C,)`` and ``bias (C,)``.
    Backward (module docstring): ``gx = inv_std / M * (M * gxhat - sum(gxhat) - xhat *
    sum(gxhat * xhat))`` with ``gxhat = gy * weight`` (``gx = gxhat * inv_std`` with running
    statistics), ``gw = sum(gy * xhat)`` (C,), ``gb = sum(gy)`` (C,), sums over all axes
    but 1.

    Options: ``axes`` (the reduced axes), ``pshape`` (``(1, C, 1, ...)``, the broadcast shape
    of per-channel values), ``use_batch_stats``, ``running_mean``/``running_var`` (raw arrays
    or None), ``momentum``, ``eps``.
    """

    relu = False

    def forward(self, x: Any, weight: Any = None, bias: Any = None) -> Any:
        xp = backend.get_array_module(x)
        rows = norm_kernels.rows_view(x)
        if self.use_batch_stats:
            m = x.size // x.shape[1]
            if rows is not None:  # one fused pass for both statistics
                mean64, var64 = norm_kernels.batch_stats(rows)
                mean, var = mean64.reshape(self.pshape), var64.reshape(self.pshape)
            else:
                mean = x.mean(axis=self.axes, keepdims=True)
                xc = x - mean
                var = (xc * xc).mean(axis=self.axes, keepdims=True)
            rm, rv = self.running_mean, self.running_var
            if rm is not None:
                mom = self.momentum
                # Running variance is the unbiased estimate, as in PyTorch.
                unbiased = var.reshape(-1) * (m / (m - 1))
                rm[...] = (rm * (1.0 - mom) + mean.reshape(-1).astype(rm.dtype) * mom)
                rv[...] = (rv * (1.0 - mom) + unbiased.astype(rv.dtype) * mom)
        else:
            mean = self.running_mean.reshape(self.pshape)
            var = self.running_var.reshape(self.pshape)
        mean = mean.astype(x.dtype, copy=False)
        inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype, copy=False)
        self.save_for_backward(mean, inv_std)
        if rows is not None:
            c = x.shape[1]
            w = weight if weight is not None else np.ones(c, x.dtype)
            b = bias if bias is not None else np.zeros(c, x.dtype)
            y = np.empty_like(x)  # same memory layout as x, so it has a rows view too
            norm_kernels.normalize(rows, mean.reshape(-1), inv_std.reshape(-1), w, b,
                                   norm_kernels.rows_view(y), relu=self.relu)
            return y
        y = (x - mean) * inv_std
        if weight is not None:
            y = y * weight.reshape(self.pshape) + bias.reshape(self.pshape)
        return xp.maximum(y, 0) if self.relu else y

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``xhat`` and ``inv_std``: differentiable in ``x`` while recording a graph (double
        backward), otherwise constants rebuilt from the saved per-channel statistics."""
        mean, inv_std = self.saved
        if not (is_grad_enabled() and x.requires_grad):
            return _const((x.data - mean) * inv_std), _const(inv_std)
        if self.use_batch_stats:
            xc = x - _mean(x, axis=self.axes, keepdims=True)
            inv_std_t = 1.0 / sqrt(_mean(xc * xc, axis=self.axes, keepdims=True) + self.eps)
            return xc * inv_std_t, inv_std_t
        return (x - _const(mean)) * _const(inv_std), _const(inv_std)

    def _fast_backward(self, gy: Tensor) -> tuple | None:
        """Plain backward with batch statistics in two fused passes (``minidl.kernels.norm``);
        None when the layout or device does not allow it."""
        x = self.inputs[0]
        x_rows = norm_kernels.rows_view(x.data)
        if x_rows is None or not self.use_batch_stats:
            return None
        g = gy.data
        g_rows = norm_kernels.rows_view(g)
        if g_rows is None:  # e.g. an NCHW gradient: one copy into x's layout
            g = np.empty_like(x.data)
            g[...] = gy.data
            g_rows = norm_kernels.rows_view(g)
        mean, inv_std = self.saved
        affine = len(self.inputs) == 3
        c = x.shape[1]
        w = self.inputs[1].data if affine else np.ones(c, x.dtype)
        gx = np.empty_like(x.data) if self.needs_input_grad[0] else None
        gw, gb = norm_kernels.backward(g_rows, x_rows, mean.reshape(-1), inv_std.reshape(-1),
                                       w, None if gx is None else norm_kernels.rows_view(gx))
        gx_t = None if gx is None else Tensor._make(gx, False)
        if not affine:
            return gx_t
        return (gx_t, Tensor._make(gw.astype(x.dtype), False),
                Tensor._make(gb.astype(x.dtype), False))

    def backward(self, gy: Tensor) -> tuple:
        if self.relu:  # the fused activation: mask by the output first
            y = self.output().data
            gy = (Tensor._make(relu_backward(gy.data, y), False) if not is_grad_enabled()
                  else gy * _const((y > 0).astype(gy.dtype)))
        if not is_grad_enabled():
            fast = self._fast_backward(gy)
            if fast is not None:
                return fast
        x = self.inputs[0]
        affine = len(self.inputs) == 3
        need = self.needs_input_grad
        xhat, inv_std = self._stats(x)
        gxhat = gy * self.inputs[1].reshape(self.pshape) if affine else gy
        gx = None
        if need[0]:
            if self.use_batch_stats:
                m = x.size // x.shape[1]
                s1 = _sum(gxhat, axis=self.axes, keepdims=True)
                s2 = _sum(gxhat * xhat, axis=self.axes, keepdims=True)
                gx = (gxhat * float(m) - s1 - xhat * s2) * (inv_std * (1.0 / m))
            else:
                gx = gxhat * inv_std
        if not affine:
            return gx
        gw = _sum(gy * xhat, axis=self.axes).reshape(-1) if need[1] else None
        gb = _sum(gy, axis=self.axes).reshape(-1) if need[2] else None
        return gx, gw, gb


def _raw(t: Any, op: str, name: str) -> Any:
    if t is None:
        return None
    if isinstance(t, Tensor):
        return t.data
    if hasattr(t, "shape") and hasattr(t, "dtype"):
        return t
    raise TypeError(f"{op}: {name} must be a Tensor or an array, got {type(t).__name__}")


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: str | None = None,
) -> Tensor:
    """Batch normalization over every axis but the channel axis 1, as one fused op.

    In training mode the batch statistics are used and ``running_mean``/``running_var`` are
    updated **in place**: ``r = (1 - momentum) * r + momentum * stat`` (the running variance
    takes the unbiased batch variance, like PyTorch). In eval mode the running statistics
    are used. With ``running_mean=None`` the batch statistics are always used.

    Args:
        x: ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``.
        running_mean: ``(C,)`` tensor (a buffer) of running means, or None.
        running_var: ``(C,)`` tensor (a buffer) of running variances, or None (give both
            running statistics or neither).
        weight: optional ``(C,)`` affine scale (give both weight and bias or neither).
        bias: optional ``(C,)`` affine shift.
        training: use batch statistics and update the running ones.
        momentum: weight of the new batch statistic in the running average.
        eps: added to the variance for stability.
        activation: ``None`` or ``"relu"``: apply ReLU in the same pass (the usual
            conv-BN-ReLU block); equal to ``relu(batch_norm(...))``, one pass cheaper
            forward and backward.

    Returns:
        A tensor of the shape and dtype of ``x``.

    >>> import minidl
    >>> from minidl.functional.norm import batch_norm
    >>> x = minidl.tensor([[1.0], [3.0]])
    >>> rm, rv = minidl.zeros(1), minidl.ones(1)
    >>> batch_norm(x, rm, rv, training=True, eps=0.0).tolist()
    [[-1.0], [1.0]]
    >>> rm.tolist(), rv.tolist()
    ([0.20000000298023224], [1.100000023841858])
    """
    x, weight, bias = upper(x, weight, bias)  # float32 inside autocast
    op = "batch_norm"
    if activation not in (None, "relu"):
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor input, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{op}: input must be (N, C), (N, C, L) or (N, C, H, W), got shape "
                         f"{x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating point, got dtype {x.dtype}")
    c = x.shape[1]
    rm, rv = _raw(running_mean, op, "running_mean"), _raw(running_var, op, "running_var")
    if (rm is None) != (rv is None):
        raise ValueError(f"{op}: give both running_mean and running_var or neither")
    for name, r in (("running_mean", rm), ("running_var", rv)):
        if r is not None and tuple(r.shape) != (c,):
            raise ValueError(f"{op}: {name} must have shape ({c},) for an input with {c} "
                             f"channels, got {tuple(r.shape)} (input shape {x.shape})")
    if (weight is None) != (bias is None):
        raise ValueError(f"{op}: give both weight and bias or neither")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            if p.shape != (c,):
                raise ValueError(f"{op}: {name} must have shape ({c},) for an input with {c} "
                                 f"channels, got {p.shape} (input shape {x.shape})")
            if p.dtype != x.dtype:
                raise TypeError(f"{op}: {name} dtype {p.dtype} differs from input dtype "
                                f"{x.dtype}")
    use_batch = bool(training) or rm is None
    m = x.size // c if c else 0
    if use_batch and m <= 1:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got "
                         f"input shape {x.shape}")
    axes = (0,) + tuple(range(2, x.ndim))
    pshape = (1, c) + (1,) * (x.ndim - 2)
    args = (x,) if weight is None else (x, weight, bias)
    return BatchNormFunction.apply(
        *args, axes=axes, pshape=pshape, use_batch_stats=use_batch,
        running_mean=rm, running_var=rv,
        momentum=float(momentum), eps=float(eps), relu=activation == "relu",
    )


def _check_affine(op: str, x: Tensor, weight: Any, bias: Any, shape: tuple[int, ...]) -> None:
    """The affine parameters of a normalization have ``shape`` and the input's dtype."""
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != shape:
            raise ValueError(f"{op}: {name} must have shape {shape}, got {p.shape}")
        if p is not None and p.dtype != x.dtype:
            raise TypeError(f"{op}: {name} dtype {p.dtype} differs from input dtype {x.dtype}")


def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalization over the trailing ``normalized_shape`` dimensions.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the mean and (biased) variance
    taken over the last ``len(normalized_shape)`` axes of each sample. Built from
    differentiable ops, so any order of derivative works.

    Args:
        x: ``(..., *normalized_shape)``.
        normalized_shape: the trailing shape to normalize over.
        weight: optional scale, a tensor of shape ``normalized_shape``.
        bias: optional shift, a tensor of shape ``normalized_shape``.
        eps: added to the variance.

    Returns:
        A tensor of the shape and dtype of ``x``.

    >>> import minidl
    >>> from minidl.functional.norm import layer_norm
    >>> layer_norm(minidl.tensor([[1.0, 3.0]]), 2, eps=0.0).tolist()
    [[-1.0, 1.0]]
    """
    x, weight, bias = upper(x, weight, bias)  # float32 inside autocast
    op = "layer_norm"
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor input, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating point, got dtype {x.dtype}")
    shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) \
        else tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0 or x.shape[x.ndim - k:] != shape or x.ndim < k:
        raise ValueError(f"{op}: input shape {x.shape} does not end with normalized_shape "
                         f"{shape}")
    _check_affine(op, x, weight, bias, shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    xc = x - _mean(x, axis=axes, keepdims=True)
    var = _mean(xc * xc, axis=axes, keepdims=True)
    y = xc / sqrt(var + float(eps))
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _grouped(a: Any, groups: int) -> tuple[Any, Any]:
    """``a`` (N, C, *spatial) as (N, G, C/G, S) blocks, one per (sample, group), in C order
    (a copy for other layouts: NumPy's reductions over a channels-last array's strided
    group axes took 7x as long as the copy plus C-order reductions), and the function
    taking a same-shaped array back to (N, C, *spatial)."""
    n, c = a.shape[:2]
    a = backend.get_array_module(a).ascontiguousarray(a)
    shape = a.shape
    return a.reshape(n, groups, c // groups, -1), lambda v: v.reshape(shape)


class GroupNormFunction(Function):
    """``y = xhat * weight + bias`` with ``xhat`` normalized over each (sample, group):
    one op instead of the dozen elementary ones its formula takes.

    Backward, per (sample, group) of ``M = C/G * S`` values (like batch norm's per channel):
    ``gx = inv_std * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat))`` with ``gxhat =
    gy * weight``; ``gw = sum(gy * xhat)``, ``gb = sum(gy)`` over samples and positions.
    While a graph is being recorded (double backward) the same formula runs on
    differentiable ops, with ``xhat`` rebuilt from ``x``, so higher derivatives are exact.

    Options: ``groups``, ``eps``.
    """

    def forward(self, x: Any, weight: Any = None, bias: Any = None) -> Any:
        v, back = _grouped(x, self.groups)
        mean = v.mean(axis=(2, 3), keepdims=True)
        xc = v - mean
        var = (xc * xc).mean(axis=(2, 3), keepdims=True)
        inv_std = (1.0 / backend.get_array_module(x).sqrt(var + self.eps)).astype(x.dtype)
        self.save_for_backward(mean, inv_std)
        xc *= inv_std
        if weight is not None:
            pshape = (1, self.groups, -1, 1)
            xc *= weight.reshape(pshape)
            xc += bias.reshape(pshape)
        return back(xc)

    def backward(self, gy: Tensor) -> tuple:
        x = self.inputs[0]
        affine = len(self.inputs) == 3
        if is_grad_enabled():
            return self._graph_backward(gy)
        mean, inv_std = self.saved
        v, back = _grouped(x.data, self.groups)
        gv, _ = _grouped(gy.data, self.groups)
        xhat = (v - mean) * inv_std
        grads: list = []
        gxhat = gv * self.inputs[1].data.reshape(1, self.groups, -1, 1) if affine else gv
        if self.needs_input_grad[0]:
            gx = gxhat - gxhat.mean(axis=(2, 3), keepdims=True)
            gx -= xhat * (gxhat * xhat).mean(axis=(2, 3), keepdims=True)
            gx *= inv_std
            grads.append(Tensor._make(back(gx), False))
        else:
            grads.append(None)
        if affine:  # per-channel sums over the samples and positions
            c = x.shape[1]
            grads.append(Tensor._make((gv * xhat).sum(axis=(0, 3)).reshape(c), False))
            grads.append(Tensor._make(gv.sum(axis=(0, 3)).reshape(c), False))
        return tuple(grads)

    def _graph_backward(self, gy: Tensor) -> tuple:
        x = self.inputs[0]
        n, c = x.shape[:2]
        g = self.groups
        xg = x.reshape(n, g, -1)
        xc = xg - _mean(xg, axis=2, keepdims=True)
        inv_std = 1.0 / sqrt(_mean(xc * xc, axis=2, keepdims=True) + self.eps)
        xhat = xc * inv_std
        pshape = (1, c) + (1,) * (x.ndim - 2)
        gyg = gy.reshape(n, g, -1)
        gxhat = gy * self.inputs[1].reshape(pshape) if len(self.inputs) == 3 else gy
        gxhat = gxhat.reshape(n, g, -1)
        gx = inv_std * (gxhat - _mean(gxhat, axis=2, keepdims=True)
                        - xhat * _mean(gxhat * xhat, axis=2, keepdims=True))
        out = [gx.reshape(x.shape)]
        if len(self.inputs) == 3:
            red = (0,) + tuple(range(2, x.ndim))
            out.append(_sum((gyg * xhat).reshape(x.shape), axis=red))
            out.append(_sum(gy, axis=red))
        return tuple(out)


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group normalization (Wu & He, 2018): each sample's channels in ``num_groups`` groups,
    each group normalized over its channels and positions.

    For ``x (N, C, *spatial)`` and ``G = num_groups`` (dividing ``C``), the mean and biased
    variance are taken over the ``C/G * prod(spatial)`` values of each ``(n, g)``; then
    ``y = xhat * weight[c] + bias[c]``. No statistic mixes samples, so it behaves the same
    in training and evaluation and at any batch size (the batch-norm replacement for
    per-example training such as DP-SGD). ``G = 1`` is layer norm over ``(C, *spatial)``
    with per-channel affine parameters; ``G = C`` is instance norm. One op
    (``GroupNormFunction``) with a fused backward; any order of derivative works.

    Args:
        x: ``(N, C)`` or ``(N, C, *spatial)``.
        num_groups: ``G``, a divisor of ``C``.
        weight: optional ``(C,)`` scale.
        bias: optional ``(C,)`` shift.
        eps: added to the variance.

    Returns:
        A tensor of the shape and dtype of ``x``.

    >>> import minidl
    >>> from minidl.functional.norm import group_norm
    >>> group_norm(minidl.tensor([[1.0, 3.0, 10.0, 20.0]]), 2, eps=0.0).tolist()
    [[-1.0, 1.0, -1.0, 1.0]]
    """
    x, weight, bias = upper(x, weight, bias)  # float32 inside autocast
    op = "group_norm"
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor input, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating point, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{op}: expected an (N, C, ...) input, got shape {x.shape}")
    c = x.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) \
            or num_groups < 1 or c % num_groups:
        raise ValueError(f"{op}: num_groups must be a positive divisor of the {c} channels, "
                         f"got {num_groups!r}")
    _check_affine(op, x, weight, bias, (c,))
    args = (x,) if weight is None and bias is None else (
        x, weight if weight is not None else _const(backend.get_array_module(x.data).ones(
            c, x.dtype)),
        bias if bias is not None else _const(backend.get_array_module(x.data).zeros(
            c, x.dtype)))
    return GroupNormFunction.apply(*args, groups=int(num_groups), eps=float(eps))


def dropout(
    x: Tensor,
    p: float = 0.5,
    training: bool = True,
    mask: Tensor | Any | None = None,
) -> Tensor:
    """Inverted dropout: zero each element with probability ``p`` and scale the survivors by
    ``1 / (1 - p)``, so that eval mode is the identity.

    The keep-mask is drawn on the CPU from ``minidl.random.default_generator()`` (so runs
    are reproducible under ``manual_seed`` on every device) and then moved to ``x``'s device.

    Args:
        x: any shape.
        p: drop probability in ``[0, 1]``.
        training: when False, return ``x`` unchanged.
        mask: optional fixed keep-mask (bool or 0/1) of ``x``'s shape, e.g. for gradient
            checks; it is still scaled by ``1 / (1 - p)``.

    >>> import minidl
    >>> from minidl.functional.norm import dropout
    >>> x = minidl.ones(4)
    >>> dropout(x, 0.5, mask=[1, 0, 1, 0]).tolist()
    [2.0, 0.0, 2.0, 0.0]
    """
    op = "dropout"
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor input, got {type(x).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: p must be in [0, 1], got {p}")
    if not training or (p == 0.0 and mask is None):
        return x
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating point, got dtype {x.dtype}")
    if mask is None:
        keep = default_generator().random(x.shape) >= p
    else:
        keep = mask.data if isinstance(mask, Tensor) else mask
        if not hasattr(keep, "shape"):
            keep = np.asarray(keep)
        if tuple(keep.shape) != x.shape:
            raise ValueError(f"{op}: mask has shape {tuple(keep.shape)} but input has "
                             f"shape {x.shape}")
    keep = backend.to_device(keep, x.device)
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    factor = keep.astype(x.dtype) * scale  # a Python-float scale keeps x's dtype
    return x * _const(factor)


# The Function classes were named like the layers (``Conv2d``) before they took the
# ``Function`` suffix; the old names still work, with a DeprecationWarning.
__getattr__ = _deprecated.function_suffix(__name__)
