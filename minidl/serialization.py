"""``save`` and ``load``: checkpoints as a single ``.npz`` file, with no pickle anywhere.

A checkpoint is any nest of dicts, lists and tuples whose leaves are arrays (NumPy, CuPy or
``Tensor``), numbers, strings, booleans or None, e.g. ``{"model": model.state_dict(),
"optimizer": opt.state_dict(), "epoch": 3}``. Each array becomes one npz member named by
its flattened key path (``"model/fc.weight"``); everything else goes into one JSON member,
``__minidl__.json``, which also records the nesting. Loading uses
``np.load(allow_pickle=False)``, so a checkpoint cannot run code.

Writes are atomic: the file is written to a temporary file in the same directory, flushed
and fsynced, then renamed over the target, so a crash never leaves a half-written
checkpoint. Saving copies arrays to the CPU and never moves or changes the model; loading
returns NumPy arrays (``load_state_dict`` puts them on the module's current device).
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from minidl import backend
from minidl._fileio import atomic_write
from minidl.autograd import Tensor

_META = "__minidl__.json"
_FORMAT = "minidl-checkpoint"
_VERSION = 1


def _is_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) or type(v).__module__.startswith("cupy") and hasattr(
        v, "shape")


class _Encoder:
    """Turns an object tree into a JSON-able tree plus named arrays."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def _member(self, path: str) -> str:
        base = path or "root"
        name, i = base, 1
        while name in self.arrays or name == _META:
            name, i = f"{base}~{i}", i + 1
        return name

    def encode(self, obj: Any, path: str) -> Any:
        where = path or "<root>"
        if isinstance(obj, Tensor):
            obj = obj.data
        if _is_array(obj):
            arr = np.array(backend.to_numpy(obj), copy=True)
            if arr.dtype.hasobject:
                raise TypeError(f"save: array at key path {where!r} has dtype object, which "
                                "cannot be saved without pickle")
            name = self._member(path)
            self.arrays[name] = arr
            return {"__array__": name}
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, (int, float)) and not isinstance(obj, np.generic):
            return obj
        if isinstance(obj, np.generic):
            if obj.dtype.hasobject or obj.dtype.kind in "SUV":
                return self._unsupported(obj, where)
            return {"__scalar__": obj.item(), "dtype": obj.dtype.str}
        if isinstance(obj, dict):
            items = []
            for k, v in obj.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise TypeError(f"save: dict key {k!r} at key path {where!r} is a "
                                    f"{type(k).__name__}; only str and int keys are supported")
                items.append([k, self.encode(v, f"{path}/{k}" if path else str(k))])
            return {"__dict__": items}
        if isinstance(obj, (list, tuple)):
            kind = "__list__" if isinstance(obj, list) else "__tuple__"
            return {kind: [self.encode(v, f"{path}/{i}" if path else str(i))
                           for i, v in enumerate(obj)]}
        return self._unsupported(obj, where)

    @staticmethod
    def _unsupported(obj: Any, where: str) -> Any:
        raise TypeError(f"save: cannot save an object of type {type(obj).__name__} at key path "
                        f"{where!r}; supported: dict, list, tuple, arrays/Tensors, int, float, "
                        "str, bool, None")


def save(obj: Any, path: str | os.PathLike) -> None:
    """Save a nest of dicts/lists/tuples of arrays, tensors and plain values to ``path``.

    The file is an uncompressed ``.npz`` written exactly at ``path`` (no suffix is added).

    Args:
        obj: e.g. ``{"model": model.state_dict(), "optimizer": opt.state_dict()}``.
        path: destination file; its directory must exist.

    Raises:
        TypeError: for an unsupported value, naming its key path.

    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> save({"w": np.arange(3.0), "epoch": 2}, path)
    >>> ckpt = load(path)
    >>> ckpt["w"].tolist(), ckpt["epoch"]
    ([0.0, 1.0, 2.0], 2)
    """
    path = os.fspath(path)
    enc = _Encoder()
    tree = enc.encode(obj, "")
    meta = json.dumps({"format": _FORMAT, "version": _VERSION, "tree": tree})
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save: directory {directory!r} does not exist")
    with atomic_write(path, "wb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr(_META, meta)
            for name, arr in enc.arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)


def _decode(node: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if not isinstance(node, dict):
        return node
    if "__array__" in node:
        return arrays[node["__array__"]]
    if "__scalar__" in node:
        return np.dtype(node["dtype"]).type(node["__scalar__"])
    if "__dict__" in node:
        return {k: _decode(v, arrays, path) for k, v in node["__dict__"]}
    if "__list__" in node:
        return [_decode(v, arrays, path) for v in node["__list__"]]
    if "__tuple__" in node:
        return tuple(_decode(v, arrays, path) for v in node["__tuple__"])
    raise ValueError(f"load: {path!r} has an unknown node {sorted(node)} in its metadata")


def load(path: str | os.PathLike) -> Any:
    """Load what ``save`` wrote; arrays come back as NumPy arrays (on the CPU).

    Args:
        path: a file written by ``save``.

    Returns:
        The saved nest of dicts/lists/tuples, with NumPy arrays where arrays and tensors were.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a minidl checkpoint, or is corrupted or truncated.

    >>> import os, tempfile, minidl
    >>> path = os.path.join(tempfile.mkdtemp(), "t.npz")
    >>> save({"x": minidl.tensor([1.0, 2.0]), "name": "run"}, path); load(path)["x"]
    array([1., 2.], dtype=float32)
    >>> os.remove(path)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no such file {path!r}")
    bad = (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError)
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise _NotMinidl()
        with npz:
            if _META not in npz.files:
                raise _NotMinidl()
            meta = json.loads(npz.zip.read(_META).decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
                raise _NotMinidl()
            if meta.get("version", 0) > _VERSION:
                raise ValueError(f"written by a newer minidl (format version {meta['version']})")
            arrays = {n: npz[n] for n in npz.files if n != _META}
    except _NotMinidl:
        raise ValueError(f"load: {path!r} is not a minidl checkpoint (an .npy file, or an .npz "
                         f"without the {_META} member that minidl.save writes)") from None
    except bad as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"load: cannot read {path!r}: not a valid minidl checkpoint, or the "
                         f"file is corrupted or truncated ({type(exc).__name__}: {exc})"
                         ) from exc
    try:
        return _decode(meta["tree"], arrays, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"load: {path!r} has inconsistent metadata ({type(exc).__name__}: "
                         f"{exc}); the file may be corrupted") from exc


class _NotMinidl(Exception):
    pass
