"""``save`` and ``load``: checkpoints as a single ``.npz`` file, with no pickle anywhere.

A checkpoint is any nest of dicts, lists and tuples whose leaves are arrays (NumPy, CuPy or
``Tensor``), numbers, strings, booleans or None, e.g. ``{"model": model.state_dict(),
"optimizer": opt.state_dict(), "epoch": 3}``. Each array becomes one npz member named by
its flattened key path (``"model/fc.weight"``); everything else goes into one JSON member,
``__minidl__.json``, which also records the nesting. Nothing is ever unpickled, so a
checkpoint cannot run code.

Writes are atomic: the file is written to a temporary file in the same directory, flushed
and fsynced, then renamed over the target, so a crash never leaves a half-written
checkpoint. Saving copies arrays to the CPU and never moves or changes the model; loading
returns NumPy arrays (``load_state_dict`` puts them on the module's current device).

Loading trusts nothing in the file. It reads the zip itself and checks each part before
using it: the member list (no duplicates, nothing unexpected, uncompressed as ``save``
writes it, sizes within the file), the JSON tree (every node of the expected shape, at
most ``_MAX_DEPTH`` containers deep, every array reference naming a member) and each
``.npy`` header (its shape times item size must equal the member's size) before the array
is allocated, so memory use stays within the file's size. Any file ``save`` could not have
written gives a ``ValueError`` naming the file and what is wrong, never raw bytes in place
of an array or a ``TypeError``/``RecursionError``.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zipfile
from collections import Counter
from typing import IO, Any

import numpy as np

from minidl import backend
from minidl._fileio import atomic_write
from minidl.autograd import Tensor

_META = "__minidl__.json"
_FORMAT = "minidl-checkpoint"
_VERSION = 1
# Far deeper than any real checkpoint, far shallower than Python's recursion limit: save
# refuses deeper nests (a dict that contains itself would otherwise recurse forever) and
# load refuses files that claim them.
_MAX_DEPTH = 100
# One container costs at most 3 JSON levels ({"__dict__": [[key, value], ...]}).
_MAX_JSON_DEPTH = 3 * _MAX_DEPTH + 2
# NumPy scalar kinds that survive JSON: bool, signed, unsigned, float.
_SCALAR_KINDS = "biuf"
_NPY_MAGIC = b"\x93NUMPY"
_READ_CHUNK = 1 << 24
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
# What zipfile and the .npy header parser raise on malformed input.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
                TypeError, KeyError, IndexError, OverflowError, SyntaxError, struct.error,
                NotImplementedError, RecursionError)


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

    def encode(self, obj: Any, path: str, depth: int = 0) -> Any:
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
            if obj.dtype.kind not in _SCALAR_KINDS:  # complex, datetime, str: not JSON
                return self._unsupported(obj, where)
            return {"__scalar__": obj.item(), "dtype": obj.dtype.str}
        if isinstance(obj, (dict, list, tuple)) and depth >= _MAX_DEPTH:
            raise ValueError(f"save: the value at key path {where!r} is nested more than "
                             f"{_MAX_DEPTH} containers deep (does a dict or list contain "
                             "itself?)")
        if isinstance(obj, dict):
            items = []
            for k, v in obj.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise TypeError(f"save: dict key {k!r} at key path {where!r} is a "
                                    f"{type(k).__name__}; only str and int keys are supported")
                items.append([k, self.encode(v, f"{path}/{k}" if path else str(k), depth + 1)])
            return {"__dict__": items}
        if isinstance(obj, (list, tuple)):
            kind = "__list__" if isinstance(obj, list) else "__tuple__"
            return {kind: [self.encode(v, f"{path}/{i}" if path else str(i), depth + 1)
                           for i, v in enumerate(obj)]}
        return self._unsupported(obj, where)

    @staticmethod
    def _unsupported(obj: Any, where: str) -> Any:
        raise TypeError(f"save: cannot save an object of type {type(obj).__name__} at key path "
                        f"{where!r}; supported: dict, list, tuple, arrays/Tensors, int, float, "
                        "str, bool, None and NumPy bool/int/float scalars")


def save(obj: Any, path: str | os.PathLike) -> None:
    """Save a nest of dicts/lists/tuples of arrays, tensors and plain values to ``path``.

    The file is an uncompressed ``.npz`` written exactly at ``path`` (no suffix is added).

    Args:
        obj: e.g. ``{"model": model.state_dict(), "optimizer": opt.state_dict()}``.
        path: destination file; its directory must exist.

    Raises:
        TypeError: for an unsupported value, naming its key path.
        ValueError: for a nest more than 100 containers deep (or one that contains itself).

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


def load(path: str | os.PathLike) -> Any:
    """Load what ``save`` wrote; arrays come back as NumPy arrays (on the CPU).

    Every part of the file is checked before use, so a corrupted, truncated or crafted
    file raises ``ValueError`` (naming the file and the problem) rather than returning
    wrong values or allocating more memory than the file's size.

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
    if os.path.isdir(path):
        raise ValueError(f"load: {path!r} is a directory, not a checkpoint file")
    with open(path, "rb") as fh:
        try:
            return _read_checkpoint(fh)
        except _NotMinidl as exc:
            raise ValueError(f"load: {path!r} is not a minidl checkpoint ({exc})") from None
        except _Invalid as exc:
            raise ValueError(f"load: cannot read {path!r}: {exc}") from exc.__cause__


class _NotMinidl(Exception):
    """The file is some other kind of file (an .npy, a plain .npz)."""


class _Invalid(Exception):
    """What is wrong with the file; ``load`` prefixes the file's name."""


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _where(path: str) -> str:
    return path or "<root>"


def _read_checkpoint(fh: IO[bytes]) -> Any:
    size = os.fstat(fh.fileno()).st_size
    if fh.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
        raise _NotMinidl("an .npy file; minidl.save writes an .npz")
    fh.seek(0)
    try:
        zf = zipfile.ZipFile(fh)
    except _READ_ERRORS as exc:
        raise _Invalid(f"not a zip (.npz) archive, or the file is corrupted or truncated "
                       f"({_why(exc)})") from exc
    with zf:
        members = _check_members(zf, size)
        tree = _read_meta(zf)
        refs: dict[str, str] = {}
        _check_node(tree, "", 0, members, refs)
        unreferenced = sorted(set(members) - {_META} - {name + ".npy" for name in refs})
        if unreferenced:
            raise _Invalid(f"unexpected member {unreferenced[0]!r}: no array in the metadata "
                           f"refers to it ({len(unreferenced)} such member(s))")
        arrays = {name: _read_npy(zf, members[name + ".npy"], where)
                  for name, where in refs.items()}
    return _build(tree, arrays)


def _check_members(zf: zipfile.ZipFile, size: int) -> dict[str, zipfile.ZipInfo]:
    infos = zf.infolist()
    counts = Counter(info.filename for info in infos)
    if _META not in counts:
        raise _NotMinidl(f"an .npz without the {_META} member that minidl.save writes")
    for name, n in counts.items():
        if n > 1:
            raise _Invalid(f"member {name!r} appears {n} times in the archive")
    total = 0
    for info in infos:
        name = info.filename
        if name != _META and not name.endswith(".npy"):
            raise _Invalid(f"unexpected member {name!r}: a checkpoint holds {_META} and "
                           ".npy members only")
        if info.flag_bits & 0x1:
            raise _Invalid(f"member {name!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _Invalid(f"member {name!r} is compressed (zip method {info.compress_type}, "
                           f"{info.compress_size} bytes expanding to {info.file_size}); "
                           "minidl.save stores members uncompressed, and load refuses "
                           "compressed ones so that a small file cannot expand to a huge one")
        if info.file_size != info.compress_size:
            raise _Invalid(f"member {name!r} is stored uncompressed but its sizes disagree "
                           f"({info.compress_size} bytes stored, {info.file_size} claimed)")
        if info.header_offset + info.compress_size > size:
            raise _Invalid(f"member {name!r} claims {info.file_size} bytes at offset "
                           f"{info.header_offset}, past the end of the {size}-byte file "
                           "(truncated?)")
        total += info.file_size
    if total > size:
        raise _Invalid(f"the members claim {total} bytes in all, more than the {size}-byte "
                       "file holds (overlapping members?)")
    return {info.filename: info for info in infos}


def _json_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of ``text``, found without recursion (strings skipped)."""
    marks = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8"), np.uint8)
    if marks.size == 0:
        return 0
    step = ((marks == ord("[")) | (marks == ord("{"))).astype(np.int64)
    step -= (marks == ord("]")) | (marks == ord("}"))
    return int(np.cumsum(step).max())


def _read_meta(zf: zipfile.ZipFile) -> Any:
    try:
        raw = zf.read(_META)
    except _READ_ERRORS as exc:
        raise _Invalid(f"member {_META!r} is corrupted or truncated ({_why(exc)})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid(f"member {_META!r} is not UTF-8 text ({exc})") from exc
    depth = _json_depth(text)
    if depth > _MAX_JSON_DEPTH:
        raise _Invalid(f"member {_META!r} nests {depth} levels deep; a checkpoint holds at "
                       f"most {_MAX_DEPTH} nested containers")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Invalid(f"member {_META!r} is not valid JSON ({_why(exc)})") from exc
    if not isinstance(meta, dict):
        raise _NotMinidl(f"its {_META} holds a JSON {_json_kind(meta)}, not an object")
    if meta.get("format") != _FORMAT:
        raise _NotMinidl(f"its {_META} has format {meta.get('format')!r}, not {_FORMAT!r}")
    if "version" not in meta:
        raise _Invalid(f"member {_META!r} has no 'version' field")
    version = meta["version"]
    if type(version) is not int:
        raise _Invalid(f"member {_META!r} has version {version!r} "
                       f"({type(version).__name__}); expected an integer")
    if version > _VERSION:
        raise _Invalid(f"written by a newer minidl (format version {version}; this minidl "
                       f"reads up to version {_VERSION}); upgrade minidl to load it")
    if version < 1:
        raise _Invalid(f"member {_META!r} has version {version}; versions start at 1")
    unknown = sorted(set(meta) - {"format", "version", "tree"})
    if unknown:
        raise _Invalid(f"member {_META!r} has unexpected fields {unknown}")
    if "tree" not in meta:
        raise _Invalid(f"member {_META!r} has no 'tree' field")
    return meta["tree"]


def _json_kind(node: Any) -> str:
    return {dict: "object", list: "array", str: "string"}.get(type(node), type(node).__name__)


def _scalar(node: dict) -> np.generic:
    """The NumPy scalar a ``__scalar__`` node holds; ValueError if it cannot be one."""
    value, dtype = node["__scalar__"], node["dtype"]
    if not isinstance(dtype, str):
        raise ValueError(f"its dtype is a JSON {_json_kind(dtype)}, not a string")
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"its dtype {dtype!r} is not a NumPy dtype") from exc
    if dt.kind not in _SCALAR_KINDS or dt.hasobject:
        raise ValueError(f"its dtype {dtype!r} is not a bool, integer or float dtype")
    if type(value) not in (bool, int, float):
        raise ValueError(f"its value is a JSON {_json_kind(value)}, not a number")
    try:
        return dt.type(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"its value {value!r} does not fit dtype {dtype!r} ({exc})") from exc


def _check_node(node: Any, path: str, depth: int, members: dict[str, zipfile.ZipInfo],
                refs: dict[str, str]) -> None:
    """Check that ``node`` is a tree ``save`` could have written; collect array references.

    Recursion is bounded by ``_MAX_DEPTH`` (checked here, and ``_read_meta`` has already
    refused deeper JSON).
    """
    if node is None or type(node) in (bool, int, float, str):
        return
    where = _where(path)
    if not isinstance(node, dict):
        raise _Invalid(f"the metadata at key path {where!r} is a JSON {_json_kind(node)}; "
                       "expected a value or a tagged object")
    keys = sorted(node)
    if keys == ["__array__"]:
        name = node["__array__"]
        if not isinstance(name, str):
            raise _Invalid(f"the array reference at key path {where!r} is a JSON "
                           f"{_json_kind(name)}, not a member name")
        if name + ".npy" not in members:
            raise _Invalid(f"the metadata at key path {where!r} refers to member "
                           f"{name + '.npy'!r}, which the file does not hold")
        if name in refs:
            raise _Invalid(f"member {name + '.npy'!r} is referred to twice (key paths "
                           f"{refs[name]!r} and {where!r})")
        refs[name] = where
        return
    if keys == ["__scalar__", "dtype"]:
        try:
            _scalar(node)
        except ValueError as exc:
            raise _Invalid(f"the scalar at key path {where!r} is invalid: {exc}") from None
        return
    if len(keys) != 1 or keys[0] not in ("__dict__", "__list__", "__tuple__"):
        raise _Invalid(f"the metadata at key path {where!r} is an unknown node with keys "
                       f"{keys}")
    if depth >= _MAX_DEPTH:
        raise _Invalid(f"the metadata at key path {where!r} is nested more than "
                       f"{_MAX_DEPTH} containers deep")
    kind = keys[0]
    items = node[kind]
    if not isinstance(items, list):
        raise _Invalid(f"the {kind} node at key path {where!r} holds a JSON "
                       f"{_json_kind(items)}, not an array")
    if kind != "__dict__":
        for i, v in enumerate(items):
            _check_node(v, f"{path}/{i}" if path else str(i), depth + 1, members, refs)
        return
    seen: set[str | int] = set()
    for item in items:
        if not isinstance(item, list) or len(item) != 2:
            raise _Invalid(f"an entry of the dict at key path {where!r} is not a "
                           "[key, value] pair")
        k, v = item
        if type(k) not in (str, int):
            raise _Invalid(f"a key of the dict at key path {where!r} is a JSON "
                           f"{_json_kind(k)}; keys are strings or integers")
        if k in seen:
            raise _Invalid(f"the dict at key path {where!r} has key {k!r} twice")
        seen.add(k)
        _check_node(v, f"{path}/{k}" if path else str(k), depth + 1, members, refs)


def _npy_header(fp: IO[bytes]) -> tuple[tuple, bool, np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        return fmt.read_array_header_1_0(fp)
    if version == (2, 0):
        return fmt.read_array_header_2_0(fp)
    if version == (3, 0):  # utf-8 field names; NumPy has no public reader for it
        from numpy.lib import _format_impl

        return _format_impl._read_array_header(fp, version)
    raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    name = info.filename
    what = f"member {name!r} (key path {where!r})"
    try:
        with zf.open(info) as fp:
            shape, fortran, dtype = _npy_header(fp)
            if not all(type(d) is int and d >= 0 for d in shape):
                raise _Invalid(f"{what} has an invalid shape {shape!r} in its .npy header")
            if dtype.hasobject or dtype.shape != ():
                raise _Invalid(f"{what} has dtype {dtype}; a checkpoint holds arrays of "
                               "numbers, booleans or plain records only")
            nbytes = info.file_size - fp.tell()
            need = math.prod(shape) * dtype.itemsize
            if need != nbytes:
                raise _Invalid(f"{what}: its .npy header says shape {shape} of {dtype} "
                               f"({need} bytes) but the member holds {nbytes} bytes of data")
            arr = np.empty(shape, dtype, order="F" if fortran else "C")
            flat = arr.reshape(-1, order="A").view(np.uint8) if need else None
            done = 0
            while done < need:
                chunk = fp.read(min(_READ_CHUNK, need - done))
                if not chunk:
                    raise EOFError(f"member data ends after {done} of {need} bytes")
                flat[done:done + len(chunk)] = np.frombuffer(chunk, np.uint8)
                done += len(chunk)
            if fp.read(1):  # reaching the end also makes zipfile check the CRC
                raise ValueError("data continues past the array")
    except _Invalid:
        raise
    except _READ_ERRORS as exc:
        raise _Invalid(f"{what} is corrupted or truncated ({_why(exc)})") from exc
    return arr


def _build(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The value of a tree ``_check_node`` accepted."""
    if not isinstance(node, dict):
        return node
    if "__array__" in node:
        return arrays[node["__array__"]]
    if "__scalar__" in node:
        return _scalar(node)
    if "__dict__" in node:
        return {k: _build(v, arrays) for k, v in node["__dict__"]}
    if "__list__" in node:
        return [_build(v, arrays) for v in node["__list__"]]
    return tuple(_build(v, arrays) for v in node["__tuple__"])
