"""Weight initializers (``minidl.nn.init``), PyTorch's names and formulas.

Each ``*_`` function fills a tensor **in place** and returns it. Values are drawn on the CPU
from ``minidl.random.default_generator()`` in float64, cast to the tensor's dtype and then
moved to its device, so ``manual_seed(n)`` gives identical models on every device.

Fans: a ``Linear`` weight ``(out, in)`` has ``fan_in = in`` and ``fan_out = out``; a conv
weight ``(C_out, C_in/groups, KH, KW)`` has ``fan_in = C_in/groups * KH * KW`` and
``fan_out = C_out * KH * KW`` (each output sees a receptive field of that many inputs).

Two initializers are structural rather than random: ``dirac_`` (identity filters) and
``patch_whitening_``, which derives a first conv layer from data (airbench's CIFAR-10
recipe: the layer decorrelates the pixels of each small patch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidl import backend
from minidl.autograd import Tensor
from minidl.random import default_generator

_GAINS = {"linear": 1.0, "conv1d": 1.0, "conv2d": 1.0, "conv3d": 1.0, "sigmoid": 1.0,
          "tanh": 5.0 / 3, "relu": math.sqrt(2.0), "selu": 3.0 / 4}


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (PyTorch's table).

    >>> round(calculate_gain("relu"), 4)
    1.4142
    """
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}; expected one "
                         f"of {sorted([*_GAINS, 'leaky_relu'])}")
    return _GAINS[nonlinearity]


def calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of at least 2 dims (see the module doc).

    >>> import minidl
    >>> calculate_fan_in_and_fan_out(minidl.zeros(32, 3, 3, 3))
    (27, 288)
    """
    if tensor.ndim < 2:
        raise ValueError(f"init: fan in and fan out need a tensor with at least 2 dims, got "
                         f"shape {tensor.shape}")
    receptive = int(np.prod(tensor.shape[2:])) if tensor.ndim > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _fill(tensor: Tensor, values: np.ndarray) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"init: expected a Tensor, got {type(tensor).__name__}")
    arr = np.asarray(values, dtype=np.float64).astype(tensor.dtype)
    tensor.data[...] = backend.to_device(arr, tensor.device)
    return tensor


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """Fill with samples of U(a, b).

    >>> import minidl
    >>> bool((uniform_(minidl.zeros(5), 2.0, 3.0).data >= 2.0).all())
    True
    """
    return _fill(tensor, default_generator().uniform(a, b, tensor.shape))


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Fill with samples of N(mean, std^2).

    >>> import minidl
    >>> w = normal_(minidl.zeros(1000), 5.0, 0.1); round(float(w.mean().item()))
    5
    """
    return _fill(tensor, default_generator().normal(mean, std, tensor.shape))


def constant_(tensor: Tensor, val: float) -> Tensor:
    """Fill with ``val``.

    >>> import minidl
    >>> constant_(minidl.zeros(2), 0.5).tolist()
    [0.5, 0.5]
    """
    return _fill(tensor, np.full(tensor.shape, val, dtype=np.float64))


def zeros_(tensor: Tensor) -> Tensor:
    """Fill with zeros.

    >>> import minidl
    >>> zeros_(minidl.ones(2)).tolist()
    [0.0, 0.0]
    """
    return constant_(tensor, 0.0)


def ones_(tensor: Tensor) -> Tensor:
    """Fill with ones.

    >>> import minidl
    >>> ones_(minidl.zeros(2)).tolist()
    [1.0, 1.0]
    """
    return constant_(tensor, 1.0)


def _fan(tensor: Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu") -> Tensor:
    """He uniform init: U(-b, b) with ``b = gain * sqrt(3 / fan)``.

    >>> import minidl
    >>> w = kaiming_uniform_(minidl.zeros(64, 100), a=5 ** 0.5)   # Linear's default
    >>> bool(abs(w.data).max() <= 0.1)
    True
    """
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    return _fill(tensor, default_generator().uniform(-bound, bound, tensor.shape))


def kaiming_normal_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu") -> Tensor:
    """He normal init: N(0, std^2) with ``std = gain / sqrt(fan)``.

    >>> import minidl
    >>> kaiming_normal_(minidl.zeros(16, 8, 3, 3), nonlinearity="relu").shape
    (16, 8, 3, 3)
    """
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    return _fill(tensor, default_generator().normal(0.0, std, tensor.shape))


def xavier_uniform_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """Glorot uniform init: U(-b, b) with ``b = gain * sqrt(6 / (fan_in + fan_out))``.

    >>> import minidl
    >>> bool(abs(xavier_uniform_(minidl.zeros(3, 3)).data).max() <= 1.0)
    True
    """
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _fill(tensor, default_generator().uniform(-bound, bound, tensor.shape))


def xavier_normal_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """Glorot normal init: N(0, std^2) with ``std = gain * sqrt(2 / (fan_in + fan_out))``.

    >>> import minidl
    >>> w = xavier_normal_(minidl.zeros(100, 100))  # std = sqrt(2 / 200) = 0.1
    >>> 0.09 < float(w.numpy().std()) < 0.11
    True
    """
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return _fill(tensor, default_generator().normal(0.0, std, tensor.shape))


def default_init_(weight: Tensor, bias: Tensor | None) -> None:
    """PyTorch's default for Linear and Conv: kaiming_uniform with ``a = sqrt(5)`` (that is
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))) for the weight, and the same bound for the bias."""
    kaiming_uniform_(weight, a=math.sqrt(5.0))
    if bias is not None:
        fan_in, _ = calculate_fan_in_and_fan_out(weight)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound)


def dirac_(tensor: Tensor, groups: int = 1) -> Tensor:
    """Fill a conv weight with the identity filter: output channel ``d`` of each group copies
    input channel ``d`` through the kernel's centre tap (index ``K // 2`` along each kernel
    axis), every other entry 0. With fewer input than output channels per group, only the
    first ``C_in`` outputs of each group get an identity; the rest are zero (PyTorch's rule).

    Args:
        tensor: a conv weight ``(C_out, C_in / groups, *kernel)`` with 1 to 3 kernel axes
            (3-D, 4-D or 5-D).
        groups: conv groups; ``C_out`` must be divisible by it.

    Returns:
        ``tensor``, filled in place.

    >>> import minidl
    >>> w = dirac_(minidl.ones(2, 2, 3, 3))
    >>> w.numpy()[:, :, 1, 1].tolist(), float(w.numpy().sum())
    ([[1.0, 0.0], [0.0, 1.0]], 2.0)
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"dirac_: expected a Tensor, got {type(tensor).__name__}")
    if tensor.ndim not in (3, 4, 5):
        raise ValueError(f"dirac_: expected a 3-D, 4-D or 5-D conv weight (C_out, C_in, "
                         f"*kernel), got shape {tensor.shape}")
    groups = int(groups)
    if groups < 1 or tensor.shape[0] % groups:
        raise ValueError(f"dirac_: groups must be a positive divisor of the {tensor.shape[0]} "
                         f"output channels, got {groups} (weight shape {tensor.shape})")
    out_per_group = tensor.shape[0] // groups
    centre = tuple(k // 2 for k in tensor.shape[2:])
    values = np.zeros(tensor.shape)
    for g in range(groups):
        for d in range(min(out_per_group, tensor.shape[1])):
            values[(g * out_per_group + d, d) + centre] = 1.0
    return _fill(tensor, values)


def _patch_second_moment(images: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """``mean(p p^T)`` over every ``kh x kw`` patch ``p`` (stride 1, no padding) of the
    ``(N, C, H, W)`` images, each patch flattened in ``(C, KH, KW)`` order: a ``(D, D)``
    float64 matrix, ``D = C * KH * KW``.

    Per chunk of ``B`` images the patches are gathered as the columns of ``cols`` ``(D,
    B * OH * OW)``, one shifted window of the images per kernel tap (each a copy of whole
    image rows, which is fast), and ``cols @ cols.T`` sums their outer products in one
    GEMM. Chunks keep ``cols`` near 32 MB however many images come.
    """
    n, c, h, w = images.shape
    d, oh, ow = c * kh * kw, h - kh + 1, w - kw + 1
    step = max(1, (1 << 22) // (oh * ow * d))
    total = np.zeros((d, d))
    for start in range(0, n, step):
        x = np.asarray(images[start:start + step], dtype=np.float64).transpose(1, 0, 2, 3)
        cols = np.empty((c, kh, kw, x.shape[1], oh, ow))
        for i in range(kh):
            for j in range(kw):
                cols[:, i, j] = x[:, :, i:i + oh, j:j + ow]
        cols = cols.reshape(d, -1)
        total += cols @ cols.T
    return total / (n * oh * ow)


def patch_whitening_(weight: Tensor, images: Any, eps: float = 5e-4) -> Tensor:
    """Initialize a conv weight as a patch-whitening filter bank (airbench's first layer).

    With ``D = C * KH * KW`` and every ``KH x KW`` patch ``p`` of ``images`` (stride 1, no
    padding) flattened in ``(C, KH, KW)`` order, the patch second moment
    ``S = mean(p p^T)`` (``D x D``, uncentred, as airbench computes it) has eigenpairs
    ``S v_k = lambda_k v_k``, largest ``lambda`` first. Filter ``k < D`` becomes
    ``v_k / sqrt(lambda_k + eps)`` reshaped to ``(C, KH, KW)``, and filter ``D + k`` its
    negative (so that a following ReLU/GELU keeps both signs of each component). A conv with
    the first ``D`` filters maps patches to coordinates with ``mean(y y^T) =
    diag(lambda_k / (lambda_k + eps))``: whitened, with ``eps`` damping the directions of
    tiny variance (pixel noise) instead of blowing them up.

    Eigenvectors' signs are fixed (each one's entry of largest magnitude is positive), so
    the result does not depend on the LAPACK build; the arithmetic is float64 on the host,
    cast to the weight's dtype and put on its device. Round-off negatives in ``lambda`` are
    clipped to 0.

    Args:
        weight: ``(2 * D, C, KH, KW)`` conv weight, filled in place (e.g. ``(24, 3, 2, 2)``).
        images: ``(N, C, H, W)`` with ``H >= KH`` and ``W >= KW``: a Tensor or a NumPy/CuPy
            array, typically a few thousand normalized training images.
        eps: added to each eigenvalue before the square root; >= 0 (0 needs a
            non-singular ``S``).

    Returns:
        ``weight``.

    Raises:
        ValueError: on mismatched shapes (the message names both), a negative ``eps``, or
            ``eps == 0`` with a singular patch second moment.

    >>> import minidl, numpy as np
    >>> x = np.random.default_rng(0).normal(size=(8, 3, 8, 8))
    >>> w = patch_whitening_(minidl.zeros(24, 3, 2, 2), x)
    >>> bool(np.allclose(w.numpy()[12:], -w.numpy()[:12]))
    True
    """
    op = "patch_whitening_"
    if not isinstance(weight, Tensor):
        raise TypeError(f"{op}: weight must be a Tensor, got {type(weight).__name__}")
    if weight.ndim != 4:
        raise ValueError(f"{op}: weight must be a 4-D conv weight (2*C*KH*KW, C, KH, KW), got "
                         f"shape {weight.shape}")
    if weight.dtype.kind != "f":
        raise TypeError(f"{op}: weight must be floating point, got dtype {weight.dtype}")
    raw = images.data if isinstance(images, Tensor) else images
    if not hasattr(raw, "shape") or not hasattr(raw, "dtype"):
        raise TypeError(f"{op}: images must be a Tensor or an array, got "
                        f"{type(images).__name__}")
    x = backend.to_numpy(raw)
    if x.ndim != 4:
        raise ValueError(f"{op}: images must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{op}: images must be real numbers, got dtype {x.dtype}")
    n, c, h, w = x.shape
    out, cin, kh, kw = weight.shape
    d = cin * kh * kw
    if c != cin:
        raise ValueError(f"{op}: images have {c} channels but weight expects {cin} (images "
                         f"shape {tuple(x.shape)}, weight shape {weight.shape})")
    if out != 2 * d:
        raise ValueError(f"{op}: weight needs 2 * C * KH * KW = {2 * d} filters (the {d} "
                         f"whitening directions and their negatives), got {out} (weight "
                         f"shape {weight.shape})")
    if n == 0 or h < kh or w < kw:
        raise ValueError(f"{op}: images {tuple(x.shape)} hold no {kh}x{kw} patch (need N >= "
                         f"1, H >= {kh}, W >= {kw})")
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")
    lam, vec = np.linalg.eigh(_patch_second_moment(x, kh, kw))
    lam, vec = np.maximum(lam[::-1], 0.0), vec[:, ::-1]  # largest first
    if eps == 0 and lam[-1] <= 0:
        raise ValueError(f"{op}: the patch second moment is singular (smallest eigenvalue "
                         f"{lam[-1]:.3g}); use eps > 0")
    peak = np.abs(vec).argmax(axis=0)
    vec = vec * np.sign(vec[peak, np.arange(d)])
    filters = (vec / np.sqrt(lam + eps)).T.reshape(d, cin, kh, kw)
    return _fill(weight, np.concatenate([filters, -filters]))


__all__ = ["calculate_gain", "calculate_fan_in_and_fan_out", "constant_", "dirac_",
           "kaiming_normal_", "kaiming_uniform_", "normal_", "ones_", "patch_whitening_",
           "uniform_", "xavier_normal_", "xavier_uniform_", "zeros_"]

