"""The one door to the device: which array library (NumPy or CuPy) holds an array.

Every other module asks this one for ``xp`` (the array module) instead of importing CuPy,
so minidl imports and runs fully on a machine without CuPy or a GPU. CuPy is imported
lazily, the first time a CUDA device is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType
from typing import Any

import numpy as np

_cupy: ModuleType | None = None
_cupy_error: str | None = None


def _import_cupy() -> ModuleType:
    """Import CuPy once and check that a GPU is usable; raise a clear error otherwise."""
    global _cupy, _cupy_error
    if _cupy is not None:
        return _cupy
    if _cupy_error is None:
        try:
            cp = importlib.import_module("cupy")
            count = cp.cuda.runtime.getDeviceCount()
            if count < 1:
                raise RuntimeError("CuPy found no CUDA GPU")
            _cupy = cp
            return cp
        except Exception as exc:  # ImportError, CUDA driver errors, ...
            _cupy_error = f"{type(exc).__name__}: {exc}"
    raise RuntimeError(
        "CUDA device requested but CuPy or a GPU is not available "
        f"({_cupy_error}). Install the GPU extra (pip install 'minidl[gpu]') on a machine "
        "with an NVIDIA GPU, or use device='cpu'."
    )


def cuda_is_available() -> bool:
    """Return True when CuPy imports and sees at least one GPU.

    >>> isinstance(cuda_is_available(), bool)
    True
    """
    try:
        _import_cupy()
        return True
    except RuntimeError:
        return False


class Device:
    """A place arrays live: ``Device("cpu")``, ``Device("cuda")`` or ``Device("cuda:1")``.

    Devices compare equal by kind and index, so ``Device("cuda") == Device("cuda:0")``.

    >>> Device("cpu")
    Device('cpu')
    >>> Device("cpu") == "cpu"
    True
    """

    __slots__ = ("type", "index")

    def __init__(self, spec: str | Device = "cpu") -> None:
        if isinstance(spec, Device):
            self.type, self.index = spec.type, spec.index
            return
        if not isinstance(spec, str):
            raise TypeError(f"Device: expected a string like 'cpu' or 'cuda:0', got {spec!r}")
        kind, _, idx = spec.strip().lower().partition(":")
        if kind == "cpu" and not idx:
            self.type, self.index = "cpu", 0
        elif kind in ("cuda", "gpu"):
            if idx and not idx.isdigit():
                raise ValueError(f"Device: bad CUDA index in {spec!r}; expected e.g. 'cuda:1'")
            self.type, self.index = "cuda", int(idx) if idx else 0
        else:
            raise ValueError(f"Device: unknown device {spec!r}; expected 'cpu', 'cuda' or 'cuda:N'")

    @property
    def xp(self) -> ModuleType:
        """The array module for this device (``numpy`` or ``cupy``)."""
        return np if self.type == "cpu" else _import_cupy()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            try:
                other = Device(other)
            except (ValueError, TypeError):
                return False
        return isinstance(other, Device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __str__(self) -> str:
        return "cpu" if self.type == "cpu" else f"cuda:{self.index}"

    def __repr__(self) -> str:
        return f"Device({str(self)!r})"


def _is_cupy_array(a: Any) -> bool:
    # Checked by type name so that NumPy-only machines never import CuPy.
    return type(a).__module__.startswith("cupy")


def get_array_module(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    Accepts raw arrays and anything with a ``.data`` array (such as a ``Tensor``).

    >>> get_array_module(np.zeros(3)).__name__
    'numpy'
    """
    for a in arrays:
        a = getattr(a, "data", a) if not isinstance(a, np.ndarray) else a
        if _is_cupy_array(a):
            return _import_cupy()
    return np


def device_of(array: Any) -> Device:
    """Return the ``Device`` an array lives on.

    >>> device_of(np.zeros(2))
    Device('cpu')
    """
    if _is_cupy_array(array):
        return Device(f"cuda:{array.device.id}")
    return Device("cpu")


def to_device(array: Any, device: str | Device) -> Any:
    """Return ``array`` on ``device``, copying only when it is not already there.

    >>> a = np.arange(3.0)
    >>> to_device(a, "cpu") is a
    True
    """
    device = Device(device)
    if device.type == "cpu":
        if _is_cupy_array(array):
            return array.get()
        return np.asarray(array)
    cp = _import_cupy()
    with cp.cuda.Device(device.index):
        if _is_cupy_array(array) and array.device.id == device.index:
            return array
        return cp.asarray(array)


def device_scope(device: str | Device) -> contextlib.AbstractContextManager:
    """A ``with`` block in which new CuPy arrays are allocated on ``device`` (a no-op for
    the CPU): ``cupy.zeros`` otherwise lands on CuPy's *current* GPU, whatever the index.

    >>> with device_scope("cpu"):
    ...     pass
    """
    device = Device(device)
    if device.type == "cpu":
        return contextlib.nullcontext()
    return _import_cupy().cuda.Device(device.index)


def to_numpy(array: Any) -> np.ndarray:
    """Return a NumPy copy-or-view of ``array`` from any device.

    >>> to_numpy(np.ones(2)).tolist()
    [1.0, 1.0]
    """
    return array.get() if _is_cupy_array(array) else np.asarray(array)


def synchronize(device: str | Device = "cpu") -> None:
    """Wait for all queued work on ``device`` (no-op on CPU); use before timing GPU code.

    >>> synchronize("cpu")  # returns at once; on "cuda" it waits for the GPU
    """
    device = Device(device)
    if device.type == "cuda":
        cp = _import_cupy()
        with cp.cuda.Device(device.index):
            cp.cuda.Stream.null.synchronize()


def scatter_add(target: Any, index: Any, values: Any) -> None:
    """``target[index] += values`` with repeated indices accumulated (``np.add.at``).

    >>> import numpy as np
    >>> t = np.zeros(3); scatter_add(t, np.array([0, 0, 2]), np.ones(3)); t.tolist()
    [2.0, 0.0, 1.0]
    """
    if _is_cupy_array(target):
        cupyx = importlib.import_module("cupyx")
        cupyx.scatter_add(target, index, values)
    else:
        np.add.at(target, index, values)


_np_erf: Any = None


def erf(a: Any) -> Any:
    """The error function, elementwise, in the array's own dtype (NumPy has none).

    >>> float(erf(np.array([0.0]))[0])
    0.0
    """
    global _np_erf
    if _is_cupy_array(a):
        special = importlib.import_module("cupyx.scipy.special")
        return special.erf(a)
    if _np_erf is None:
        import math

        import numba

        def _erf(v):  # type: ignore[no-untyped-def]
            return math.erf(v)

        _np_erf = numba.vectorize(["float32(float32)", "float64(float64)"])(_erf)
    return _np_erf(a)


def nccl_module() -> ModuleType:
    """CuPy's NCCL bindings (``cupy.cuda.nccl``), for ``minidl.distributed``; a clear error
    when CuPy, a GPU or NCCL is missing."""
    _import_cupy()
    try:
        return importlib.import_module("cupy.cuda.nccl")
    except ImportError as exc:
        raise RuntimeError(
            f"NCCL is not available through CuPy ({exc}); install it (pip install "
            "nvidia-nccl-cu12) or use the 'mpi' distributed backend") from None


def current_stream_ptr() -> int:
    """The handle of CuPy's current CUDA stream (where NCCL queues its collectives)."""
    return int(_import_cupy().cuda.get_current_stream().ptr)


def use_cuda_device(index: int) -> None:
    """Make GPU ``index`` CuPy's current device for this process (one GPU per rank)."""
    _import_cupy().cuda.Device(int(index)).use()


_DLPACK_CPU, _DLPACK_CUDA = 1, 2  # DLDeviceType codes of the DLPack standard


def from_dlpack(obj: Any) -> Any:
    """The array behind a DLPack-capable object, without a copy: a NumPy array for CPU
    memory, a CuPy array for CUDA memory."""
    device = getattr(obj, "__dlpack_device__", None)
    if device is None or not hasattr(obj, "__dlpack__"):
        raise TypeError(f"from_dlpack: expected an object with __dlpack__ (an array or "
                        f"tensor), got {type(obj).__name__}")
    kind = int(device()[0])
    if kind == _DLPACK_CPU:
        return np.from_dlpack(obj)
    if kind == _DLPACK_CUDA:
        return _import_cupy().from_dlpack(obj)
    raise TypeError(f"from_dlpack: device type {kind} is neither the CPU (1) nor CUDA (2)")
