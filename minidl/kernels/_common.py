"""Shared plumbing for the kernels: backend choice, argument normalisation, scratch buffers.

Everything here is private to ``minidl.kernels``. The backend switch decides whether NumPy
arrays go through the numba kernels (default) or through the generic ``xp`` code that CuPy
arrays always take; tests flip it to run every path. Scratch buffers hold *internal*
temporaries only (im2col matrices recomputed in backward, reshaped gradients): nothing that
is handed back to a caller ever lives in one, so a later call can never overwrite a result
the caller still holds.
"""

from __future__ import annotations

import os
import threading
import types
from typing import Any

import numpy as np
from numba import njit

from minidl.backend import get_array_module
from minidl.kernels import _malloc, _threads

# Idle OpenMP and OpenBLAS workers must sleep, not spin, or they slow each other's kernels
# down 2x on a small machine: see ``_threads``.
_threads.apply()
# Freed activation memory is kept for the next step rather than unmapped: see ``_malloc``.
_malloc.apply()

# Below this many elements a kernel runs serially: waking the parallel workers costs
# 50-100 us on this 2-core machine (a trivial prange loop measured 75 us with
# OMP_WAIT_POLICY=PASSIVE), more than splitting a small loop saves.
SERIAL_BELOW = 1 << 15


def parallel_twins(fn: Any) -> tuple[Any, Any]:
    """Compile a ``prange`` kernel twice: (parallel, serial); choose with ``pick``."""
    # numba names its on-disk cache after the function's qualified name and line, not its
    # compile flags: the serial twin is a copy under another name, or the two would load
    # each other's machine code from the cache.
    serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                fn.__defaults__, fn.__closure__)
    serial.__qualname__ = fn.__qualname__ + "_serial"
    return njit(parallel=True, cache=True)(fn), njit(cache=True)(serial)


def pick(twins: tuple[Any, Any], size: int) -> Any:
    """The parallel twin for ``size`` >= ``SERIAL_BELOW`` elements, else the serial one."""
    return twins[0] if size >= SERIAL_BELOW else twins[1]


_BACKENDS = ("numba", "numpy")
_backend = os.environ.get("MINIDL_KERNELS", "numba").strip().lower() or "numba"
if _backend not in _BACKENDS:
    raise ValueError(
        f"MINIDL_KERNELS: expected one of {_BACKENDS}, got {_backend!r}"
    )


def set_backend(name: str) -> str:
    """Choose the CPU kernel implementation; return the previous one.

    ``"numba"`` (default) runs compiled parallel loops for NumPy arrays; ``"numpy"`` runs the
    generic array code (slicing + GEMM) that CuPy arrays always use. The environment variable
    ``MINIDL_KERNELS`` sets the initial value.

    >>> old = set_backend("numpy"); _ = set_backend(old); old in ("numba", "numpy")
    True
    """
    global _backend
    name = str(name).strip().lower()
    if name not in _BACKENDS:
        raise ValueError(f"set_backend: expected one of {_BACKENDS}, got {name!r}")
    old, _backend = _backend, name
    return old


def get_backend() -> str:
    """Return the current CPU kernel implementation (``"numba"`` or ``"numpy"``).

    >>> get_backend() in ("numba", "numpy")
    True
    """
    return _backend


def use_numba(*arrays: Any) -> bool:
    """True when the numba kernels should run: backend is numba and all arrays are NumPy
    (and none is float16, which the compiled kernels do not handle: half precision is for
    the GPU, and on the CPU runs the generic array path)."""
    return _backend == "numba" and all(isinstance(a, np.ndarray) and a.dtype != np.float16
                                       for a in arrays)


def array_module(a: Any) -> Any:
    """NumPy for NumPy arrays, CuPy for CuPy arrays (without importing CuPy otherwise)."""
    if isinstance(a, np.ndarray):
        return np
    return get_array_module(a)


def pair(op: str, name: str, v: Any, positive: bool = True, allow_zero: bool = False
         ) -> tuple[int, int]:
    """Normalise an int-or-pair argument, validating it with an op-named error."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        t = (int(v), int(v))
    elif (isinstance(v, (tuple, list)) and len(v) == 2
          and all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in v)):
        t = (int(v[0]), int(v[1]))
    else:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    if positive:
        lo = 0 if allow_zero else 1
        if t[0] < lo or t[1] < lo:
            what = "non-negative" if allow_zero else "positive"
            raise ValueError(f"{op}: {name} must be {what}, got {t}")
    return t


def check_4d(op: str, name: str, a: Any, layout: str) -> None:
    """Raise ``ValueError`` naming ``op``, ``name`` and ``layout`` unless ``a`` is 4-D."""
    if getattr(a, "ndim", None) != 4:
        shape = getattr(a, "shape", None)
        raise ValueError(
            f"{op}: expected 4-D {name} {layout}, got "
            f"{getattr(a, 'ndim', '?')}-D {name} of shape {tuple(shape) if shape else shape}"
        )


def out_size(size: int, pad_total: int, k: int, s: int, d: int, ceil_mode: bool = False,
             pad_begin: int | None = None) -> int:
    """Output length along one axis, PyTorch's formula (floor, or ceil for pooling).

    ``floor((size + pad_total - d*(k-1) - 1) / s) + 1``; with ``ceil_mode`` the last window
    may hang over the end but must start inside the input or the leading padding.
    """
    span = size + pad_total - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    o = -(-span // s) + 1
    pb = pad_total // 2 if pad_begin is None else pad_begin
    if (o - 1) * s >= size + pb:
        o -= 1
    return o


def is_channels_last(a: Any) -> bool:
    """True when a (N, C, H, W)-shaped array is laid out in memory as (N, H, W, C) C-order.

    >>> x = np.zeros((2, 3, 4, 5))
    >>> nhwc = np.zeros((2, 4, 5, 3)).transpose(0, 3, 1, 2)  # shape (2, 3, 4, 5)
    >>> is_channels_last(x), is_channels_last(nhwc)
    (False, True)
    """
    if a.ndim != 4:
        return False
    return bool(a.transpose(0, 2, 3, 1).flags.c_contiguous)


def empty_channels_last(xp: Any, shape: tuple[int, int, int, int], dtype: Any) -> Any:
    """A fresh (N, C, H, W)-shaped array whose memory is (N, H, W, C) C-order."""
    n, c, h, w = shape
    return xp.empty((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)


class _Scratch(threading.local):
    """Per-thread growable buffers for internal temporaries, one per tag.

    Each tag owns one flat buffer that only grows; callers get a reshaped view of its prefix.
    Views must not escape the kernel call that asked for them.
    """

    def __init__(self) -> None:
        self.bufs: dict[tuple[str, str], np.ndarray] = {}

    def get(self, tag: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = int(np.prod(shape))
        key = (tag, dtype.str)
        buf = self.bufs.get(key)
        if buf is None or buf.size < size:
            buf = np.empty(max(size, 1), dtype=dtype)
            self.bufs[key] = buf
        return buf[:size].reshape(shape)


_scratch = _Scratch()


def scratch(tag: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Reusable NumPy buffer for an internal temporary (never return it to a caller)."""
    return _scratch.get(tag, shape, dtype)


def clear_scratch() -> None:
    """Drop this thread's scratch buffers (frees their memory).

    >>> clear_scratch()
    """
    _scratch.bufs.clear()
