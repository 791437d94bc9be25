"""safetensors weights: save and load a ``state_dict``, and take PyTorch's weights.

A safetensors file is an 8-byte header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw bytes. Reading it parses JSON and copies bytes, nothing
else, so a file from anywhere is safe to open: the reason the format exists (PyTorch's
``.pt`` files are pickles, which run code when loaded).

PyTorch and minidl store conv and linear weights in the same layouts (``(OC, C, KH, KW)``
and ``(out, in)``), and both list a model's entries module by module, parameters before
buffers. So the weights of an equivalent PyTorch model pair up with a minidl model's
entries **in order**, even where the names differ. minidl's seed CNN fuses each ReLU into
its conv (``Conv2d(..., activation="relu")``), so PyTorch's ``3.weight`` is minidl's
``2.weight``. ``load_torch_state_dict`` pairs them that way, checking every shape, and names
the first pair that does not fit.
"""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from minidl import backend
from minidl._fileio import atomic_write
from minidl.autograd import Tensor

_HINT = "pip install 'minidl[safetensors]' (or pip install safetensors)"


def _lib() -> Any:
    try:
        return importlib.import_module("safetensors.numpy")
    except ImportError as exc:
        raise ImportError(f"safetensors support needs the safetensors package: {_HINT} "
                          f"({exc})") from None


def _arrays(state: Any, op: str) -> OrderedDict[str, np.ndarray]:
    """A Module's ``state_dict`` or a mapping of names to arrays, as contiguous NumPy."""
    if hasattr(state, "state_dict") and callable(state.state_dict):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"{op}: expected a Module or a mapping of names to arrays, got "
                        f"{type(state).__name__}")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for k, v in state.items():
        if not isinstance(k, str):
            raise TypeError(f"{op}: names must be strings, got {k!r}")
        data = v.data if isinstance(v, Tensor) else v
        if not hasattr(data, "dtype") or not hasattr(data, "shape"):
            raise TypeError(f"{op}: {k!r} is a {type(v).__name__}, not an array or Tensor")
        a = backend.to_numpy(data)
        out[k] = a if a.flags.c_contiguous else a.copy(order="C")  # keeps 0-d arrays 0-d
    return out


def save_safetensors(state: Any, path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write a model's ``state_dict`` (or any mapping of names to arrays) to ``path`` as
    safetensors, atomically (a crash never leaves a half-written file).

    Args:
        state: an ``nn.Module`` or a mapping of names to arrays/Tensors (any device).
        path: the file to write.
        metadata: optional string-to-string header entries (e.g. ``{"format": "pt"}``).

    >>> import os, tempfile, minidl
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_safetensors(minidl.nn.Linear(3, 2), path)
    >>> sorted(load_safetensors(path))
    ['bias', 'weight']
    """
    lib = _lib()
    arrays = _arrays(state, "save_safetensors")
    meta = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    blob = lib.save(dict(arrays), metadata=meta)
    with atomic_write(path) as f:
        f.write(blob)


def load_safetensors(path: str | os.PathLike) -> OrderedDict[str, np.ndarray]:
    """Read a safetensors file into NumPy arrays, sorted by name (writers sort them, so the
    file keeps no other order); give the result to ``model.load_state_dict``, or to
    ``load_torch_state_dict`` for a file PyTorch wrote.

    Raises:
        ValueError: the file is not valid safetensors (the message names the file).
    """
    lib = _lib()
    try:
        with open(path, "rb") as f:
            blob = f.read()
        arrays = lib.load(blob)
    except OSError:
        raise
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ValueError(f"load_safetensors: {os.fspath(path)} is not a valid safetensors "
                         f"file ({type(exc).__name__}: {exc})") from None
    return OrderedDict(sorted(arrays.items()))


def load_torch_state_dict(model: Any, state: Mapping[str, Any],
                          order: list[str] | None = None) -> dict[str, str]:
    """Copy the weights of the equivalent PyTorch model into ``model``, pairing entries in
    order (see the module docstring); returns the pairing, minidl name -> PyTorch name.

    Args:
        model: the minidl model (its parameters and buffers are overwritten in place).
        state: PyTorch's weights: ``torch_model.state_dict()`` (tensors) or
            ``load_safetensors(path)`` of a file PyTorch wrote.
        order: PyTorch's names in ``torch_model.state_dict()`` order (default: the order
            of ``state``). Give it for weights read from a safetensors file, which stores
            them sorted by name: ``list(torch_model.state_dict())``, or the list in
            ``docs/interop.md`` for the bundled models.

    Raises:
        ValueError: the two models have different numbers of entries, or a pair differs in
            shape; nothing is copied then.
    """
    names = list(order) if order is not None else list(state)
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"load_torch_state_dict: order names {missing[:3]} that the state "
                         "does not have")
    ours = model.state_dict()
    if len(ours) != len(names):
        raise ValueError(f"load_torch_state_dict: the minidl model has {len(ours)} entries "
                         f"and the PyTorch weights {len(names)}; they are not the same "
                         "architecture")
    pairing: dict[str, str] = {}
    arrays = {}
    for (mine, t), theirs in zip(ours.items(), names):
        v = state[theirs]
        a = v.detach().cpu().numpy() if hasattr(v, "detach") and hasattr(v, "cpu") \
            else np.asarray(v)
        if tuple(a.shape) != tuple(t.shape):
            raise ValueError(f"load_torch_state_dict: minidl's {mine!r} {tuple(t.shape)} "
                             f"pairs with PyTorch's {theirs!r} {tuple(a.shape)}: shapes "
                             "differ, so the models differ at this entry")
        pairing[mine] = theirs
        arrays[mine] = a
    model.load_state_dict(arrays)
    return pairing
