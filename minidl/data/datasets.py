"""Readers for the standard image datasets: CIFAR-10 (official python and binary versions,
extracted or as ``.tar.gz``), MNIST and Fashion-MNIST (IDX files, raw or gzipped).

Every reader checks what it reads (sizes, magic numbers, label ranges) and names the file
when something is wrong, rather than returning garbage arrays. The python version of
CIFAR-10 is a pickle: it is read with a restricted unpickler that can build NumPy arrays
and nothing else, so a malicious file cannot run code. Images come back as ``uint8`` NCHW
arrays (``layout="NHWC"`` on request) and labels as ``int64``.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from minidl.data._util import DataFormatError, DatasetNotFoundError, default_data_root
from minidl.data.download import DownloadError, download_url, extract_archive
from minidl.data.loader import ArrayDataset

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_BINARY_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"

_CIFAR_PIXELS = 3 * 32 * 32
_CIFAR_FORMATS: dict[str, dict[str, Any]] = {
    "python": {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "url": CIFAR10_URL,
        "md5": CIFAR10_MD5,
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
    },
    "binary": {
        "folder": "cifar-10-batches-bin",
        "archive": "cifar-10-binary.tar.gz",
        "url": CIFAR10_BINARY_URL,
        "md5": CIFAR10_BINARY_MD5,
        "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test": ["test_batch.bin"],
        "meta": "batches.meta.txt",
    },
}


# --------------------------------------------------------------------------- safe pickle


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    return None


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Pickles of protocol <= 2 written by Python 3 store bytes as _codecs.encode(str,
    # 'latin1'); admit exactly that use and no other codec.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"restricted unpickler: codec {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


class _Admitted:
    """A stand-in for an admitted function: callable, but immutable to the pickle.

    A pickle's BUILD opcode sets attributes on whatever object is on the stack, including a
    global it just loaded; handed the real ``_frombuffer`` it could rewrite the function's
    ``__defaults__`` for the whole process. BUILD on this wrapper calls ``__setstate__``,
    which refuses, and there are no slots to set.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(
            f"restricted unpickler: refusing to set attributes on {self._fn.__name__}")


def _admit(fn: Any) -> _Admitted | None:
    return None if fn is None else _Admitted(fn)


_RECONSTRUCT = _admit(
    _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct"))
_FROMBUFFER = _admit(_numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer"))
# Classes are immutable types and go in as they are (NEWOBJ needs a real class).
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _Admitted(_latin1_encode),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR-10 batch needs (NumPy arrays).

    ``find_class`` is the only way a pickle reaches code; refusing every other name means
    a crafted file cannot call ``os.system`` or anything else.
    """

    def find_class(self, module: str, name: str) -> Any:
        obj = _SAFE_GLOBALS.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"restricted unpickler: refusing to load global {module}.{name}; only NumPy "
                "arrays, lists, dicts, strings and numbers may appear in a dataset pickle"
            )
        return obj


def safe_unpickle(data: bytes, name: str = "<bytes>") -> Any:
    """Unpickle ``data`` admitting only plain containers, numbers, strings and NumPy arrays.

    Python 2 strings come back as ``bytes`` (``encoding="bytes"``), as the official
    CIFAR-10 python batches need.

    Raises:
        DataFormatError: the pickle is corrupt, or names any other global (a function call
            such as ``os.system`` is refused before anything runs).

    >>> safe_unpickle(pickle.dumps({"a": np.arange(3)}))["a"].tolist()
    [0, 1, 2]
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataFormatError(f"safe_unpickle: {name}: {exc}") from exc
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError) as exc:
        raise DataFormatError(
            f"safe_unpickle: {name} is not a valid pickle (truncated or corrupt: "
            f"{type(exc).__name__}: {exc})"
        ) from exc


# --------------------------------------------------------------------------- CIFAR-10


def _get(d: dict, key: str) -> Any:
    # Official batches were pickled by Python 2 and have bytes keys under encoding="bytes".
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _check_labels(fn: str, name: str, labels: np.ndarray, num_classes: int = 10) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataFormatError(
            f"{fn}: {name}: label out of range at record {int(bad[0])}: got "
            f"{int(labels[bad[0]])}, expected 0..{num_classes - 1}"
        )


def _parse_cifar_binary(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    record = 1 + _CIFAR_PIXELS
    if len(data) == 0 or len(data) % record:
        raise DataFormatError(
            f"load_cifar10: {name} has {len(data)} bytes, which is not a whole, non-zero "
            f"number of {record}-byte records (1 label byte + 3072 pixel bytes); the file "
            "is truncated or is not a CIFAR-10 binary batch"
        )
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = rec[:, 0].astype(np.int64)
    _check_labels("load_cifar10", name, labels)
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def _parse_cifar_python(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(data, name)
    if not isinstance(batch, dict):
        raise DataFormatError(
            f"load_cifar10: {name}: expected a pickled dict, got {type(batch).__name__}"
        )
    images, labels = _get(batch, "data"), _get(batch, "labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != _CIFAR_PIXELS:
        got = (f"{images.dtype} array of shape {images.shape}"
               if isinstance(images, np.ndarray) else type(images).__name__)
        raise DataFormatError(
            f"load_cifar10: {name}: 'data' must be a uint8 array of shape (N, 3072), got {got}"
        )
    if labels is None:
        raise DataFormatError(f"load_cifar10: {name}: the pickled dict has no 'labels'")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataFormatError(f"load_cifar10: {name}: 'labels' are not integers ({exc})") \
            from exc
    if labels.shape != (images.shape[0],):
        raise DataFormatError(
            f"load_cifar10: {name}: {images.shape[0]} images but 'labels' has shape "
            f"{labels.shape}"
        )
    _check_labels("load_cifar10", name, labels)
    return images.reshape(-1, 3, 32, 32), labels


def _parse_cifar_meta(fmt: str, data: bytes, name: str) -> tuple[str, ...]:
    if fmt == "binary":
        try:
            names = [line.strip() for line in data.decode("utf-8").splitlines()]
        except UnicodeDecodeError as exc:
            raise DataFormatError(f"load_cifar10: {name} is not UTF-8 text ({exc})") from exc
    else:
        meta = safe_unpickle(data, name)
        raw = _get(meta, "label_names") if isinstance(meta, dict) else None
        if not isinstance(raw, list):
            raise DataFormatError(f"load_cifar10: {name}: expected a dict with 'label_names'")
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]
    names = [n for n in names if n]
    if len(names) != 10:
        raise DataFormatError(
            f"load_cifar10: {name}: expected 10 class names, got {len(names)}: {names}"
        )
    return tuple(names)


def _find_cifar(root: Path, fmt_order: list[str]) -> tuple[str, Path, str] | None:
    """Return ("dir"|"tar", path, fmt) for the first CIFAR-10 copy under ``root``."""
    for fmt in fmt_order:
        spec = _CIFAR_FORMATS[fmt]
        for folder in (root, root / spec["folder"]):
            # Any batch file makes it a copy; a missing one is then reported by name.
            if any((folder / f).is_file() for f in spec["train"] + spec["test"]):
                return "dir", folder, fmt
    for fmt in fmt_order:
        archive = root / _CIFAR_FORMATS[fmt]["archive"]
        if archive.is_file():
            return "tar", archive, fmt
    return None


def _cifar_roots(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    env = os.environ.get("MINIDL_CIFAR10_DIR")
    roots = [Path(env).expanduser()] if env else []
    roots.append(default_data_root())
    return list(dict.fromkeys(roots))


def _read_cifar_files(kind: str, path: Path, fmt: str, train: bool):
    spec = _CIFAR_FORMATS[fmt]
    wanted = spec["train"] if train else spec["test"]
    parse = _parse_cifar_binary if fmt == "binary" else _parse_cifar_python
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    classes: tuple[str, ...] = CIFAR10_CLASSES
    if kind == "dir":
        for fname in wanted:
            f = path / fname
            if not f.is_file():
                raise DatasetNotFoundError(
                    f"load_cifar10: {path} holds part of CIFAR-10 ({fmt} version) but "
                    f"{fname} is missing; expected {', '.join(wanted)} there"
                )
            parts.append(parse(f.read_bytes(), str(f)))
        if (path / spec["meta"]).is_file():
            classes = _parse_cifar_meta(fmt, (path / spec["meta"]).read_bytes(),
                                        str(path / spec["meta"]))
    else:
        members = {f"{spec['folder']}/{f}": f for f in wanted + [spec["meta"]]}
        blobs: dict[str, bytes] = {}
        try:
            # One sequential pass: seeking backwards in a .gz would decompress it again.
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if member.name in members and member.isfile():
                        stream = tar.extractfile(member)
                        if stream is not None:
                            blobs[members[member.name]] = stream.read()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DataFormatError(
                f"load_cifar10: archive {path} is corrupt or truncated ({type(exc).__name__}: "
                f"{exc}); delete it and download it again"
            ) from exc
        for fname in wanted:
            if fname not in blobs:
                raise DataFormatError(
                    f"load_cifar10: archive {path} has no member {spec['folder']}/{fname}"
                )
            parts.append(parse(blobs.pop(fname), f"{path}:{spec['folder']}/{fname}"))
        if spec["meta"] in blobs:
            classes = _parse_cifar_meta(fmt, blobs[spec["meta"]], f"{path}:{spec['meta']}")
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0].copy()
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, classes


def _download_cifar(dest: Path, fmt: str, url: str | None, md5: str | None,
                    progress: bool) -> Path:
    spec = _CIFAR_FORMATS[fmt]
    if url is None:
        url, md5 = spec["url"], (md5 or spec["md5"])
    archive = dest / spec["archive"]
    try:
        download_url(url, archive, md5, progress=progress)
    except DownloadError as exc:
        raise DownloadError(
            f"load_cifar10: could not download CIFAR-10 ({exc}). Without network access, "
            f"fetch {spec['archive']} on another machine and put it in {dest} (or put its "
            f"extracted folder {spec['folder']}/ with {', '.join(spec['train'] + spec['test'])}"
            f" and {spec['meta']} there), or pass root= pointing at such a folder"
        ) from exc
    try:
        extract_archive(archive, dest)
    except DataFormatError:
        archive.unlink()  # unreadable: a later call must download again, not re-read it
        raise
    folder = dest / spec["folder"]
    if not folder.is_dir():
        raise DataFormatError(
            f"load_cifar10: the archive from {url} has no {spec['folder']}/ folder; "
            "is it the CIFAR-10 archive?"
        )
    archive.unlink()  # verified and extracted: the folder is all that is read from now on
    return folder


def _load_cifar10(root, train, download, layout, format, url, md5, progress):
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"load_cifar10: layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if format not in ("auto", "python", "binary"):
        raise ValueError(
            f"load_cifar10: format must be 'auto', 'python' or 'binary', got {format!r}"
        )
    fmt_order = ["python", "binary"] if format == "auto" else [format]
    roots = _cifar_roots(root)
    found = None
    for r in roots:
        found = _find_cifar(r, fmt_order)
        if found:
            break
    if found is None:
        dest = Path(root).expanduser() if root is not None else default_data_root()
        if not download:
            looked = " and ".join(str(r) for r in roots)
            raise DatasetNotFoundError(
                f"load_cifar10: CIFAR-10 not found in {looked}. Looked for the folder "
                "cifar-10-batches-py/ (data_batch_1 ... data_batch_5, test_batch, "
                "batches.meta) or cifar-10-batches-bin/ (data_batch_1.bin ... "
                "data_batch_5.bin, test_batch.bin, batches.meta.txt), or the archive "
                "cifar-10-python.tar.gz / cifar-10-binary.tar.gz, in that directory or "
                f"directly inside it. Fix: pass download=True to fetch it into {dest}, put "
                "the files there, or pass root= (or set MINIDL_CIFAR10_DIR) to the folder that "
                "holds them"
            )
        fmt = "python" if format == "auto" else format
        found = ("dir", _download_cifar(dest, fmt, url, md5, progress), fmt)
    images, labels, classes = _read_cifar_files(*found, train=train)
    if layout == "NHWC":
        images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    return images, labels, classes, found[1]


def load_cifar10(
    root: str | os.PathLike | None = None,
    train: bool = True,
    download: bool = False,
    layout: str = "NCHW",
    *,
    format: str = "auto",
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load the CIFAR-10 training (50,000) or test (10,000) images and labels.

    ``root`` may be the batches folder itself, a directory holding ``cifar-10-batches-py/``
    or ``cifar-10-batches-bin/``, or one holding ``cifar-10-python.tar.gz`` /
    ``cifar-10-binary.tar.gz`` (read without extracting). Without ``root``: the folder in
    ``$MINIDL_CIFAR10_DIR``, then ``default_data_root()`` (``$MINIDL_DATA``, else
    ``$XDG_CACHE_HOME/minidl``, else ``~/.cache/minidl``). Already-extracted folders are not
    checksummed (copies other than the official release are fine); a download is.

    Args:
        root: where to look (and download to); see above.
        train: the five training batches (True) or the test batch (False).
        download: when nothing is found, download the official archive (MD5-verified,
            resumable) and extract it into ``root`` or the default directory.
        layout: ``"NCHW"`` (default) or ``"NHWC"``.
        format: ``"auto"`` (python version first), ``"python"`` or ``"binary"``; decides
            which version is looked for and downloaded.
        url: download from here instead of the official URL (tests, mirrors).
        md5: expected MD5 of the archive; defaults to the official one only when ``url``
            is None.
        progress: show a download progress bar.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` (or ``(N, 32, 32, 3)``) and int64
        ``(N,)`` with values in 0..9 (names in ``CIFAR10_CLASSES``).

    Raises:
        DatasetNotFoundError: nothing found and ``download`` is False.
        DataFormatError: a file is truncated or corrupt (the message names it).
        DownloadError: the download failed (the message says where to put the files).

    >>> import tempfile, pathlib, shutil
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> records = np.zeros((2, 3073), np.uint8); records[:, 0] = [3, 5]
    >>> _ = (d / "test_batch.bin").write_bytes(records.tobytes())
    >>> x, y = load_cifar10(d, train=False)
    >>> x.shape, x.dtype, y.tolist()
    ((2, 3, 32, 32), dtype('uint8'), [3, 5])
    >>> shutil.rmtree(d)
    """
    images, labels, _, _ = _load_cifar10(root, train, download, layout, format, url, md5,
                                         progress)
    return images, labels


class CIFAR10(ArrayDataset):
    """CIFAR-10 as a ``Dataset``: ``ds[i] -> (image uint8 (3, 32, 32), label int64)``.

    Arguments are those of ``load_cifar10``. Attributes: ``images`` (N, 3, 32, 32) uint8,
    ``labels`` (N,) int64, ``classes`` (10 names, from the batches' meta file), ``path``
    (the folder or archive read).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "test_batch.bin").write_bytes(bytes(3073))
    >>> ds = CIFAR10(d, train=False)
    >>> len(ds), ds.classes[0], ds[0][0].shape
    (1, 'airplane', (3, 32, 32))
    >>> import shutil; shutil.rmtree(d)
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        train: bool = True,
        download: bool = False,
        layout: str = "NCHW",
        *,
        format: str = "auto",
        url: str | None = None,
        md5: str | None = None,
        progress: bool = True,
    ) -> None:
        images, labels, classes, path = _load_cifar10(root, train, download, layout, format,
                                                      url, md5, progress)
        super().__init__(images, labels)
        self.images, self.labels, self.classes, self.path = images, labels, classes, path
        self.train = train

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"CIFAR10({split}, n={len(self)}, path='{self.path}')"


# --------------------------------------------------------------------------- IDX (MNIST)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), raw or gzip-compressed (detected by content).

    Header: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a
    big-endian uint32; then the data, big-endian, row-major.

    Returns:
        The array, in native byte order, of the shape in the header.

    Raises:
        DataFormatError: bad magic, unknown type, or a data size that does not match the
            header (truncated or padded file); the message names the file.

    >>> import tempfile, os, pathlib
    >>> fd, p = tempfile.mkstemp(); os.close(fd)
    >>> _ = pathlib.Path(p).write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(p).tolist()
    [7, 8, 9]
    >>> os.unlink(p)
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataFormatError(
                f"read_idx: {path} is a corrupt or truncated gzip file ({exc})"
            ) from exc
    if len(raw) < 4:
        raise DataFormatError(f"read_idx: {path} is too short ({len(raw)} bytes) for an IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFormatError(
            f"read_idx: {path} has bad magic {raw[:4].hex()}: expected 0000 followed by a type "
            f"code in {[hex(k) for k in _IDX_DTYPES]} and the number of dimensions"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"read_idx: {path} ends inside its header ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFormatError(
            f"read_idx: {path} should hold {expected} data bytes for shape {shape} of "
            f"{dtype.newbyteorder('=')} but holds {len(raw) - header}; the file is truncated "
            "or corrupt"
        )
    arr = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_dataset(fn: str, subdir: str, env: str, system_dir: str,
                      root: str | os.PathLike | None, train: bool):
    if root is not None:
        root = Path(root).expanduser()
        candidates = [root, root / subdir]
    else:
        candidates = [Path(os.environ[env]).expanduser()] if os.environ.get(env) else []
        candidates += [default_data_root() / subdir, Path(system_dir)]
    img_stem, lbl_stem = _IDX_FILES[train]
    for folder in candidates:
        img, lbl = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
        if img is None and lbl is None:
            continue
        if img is None or lbl is None:
            missing = img_stem if img is None else lbl_stem
            raise DatasetNotFoundError(f"{fn}: {folder} has no {missing} (nor {missing}.gz)")
        images, labels = read_idx(img), read_idx(lbl)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataFormatError(
                f"{fn}: {img} should hold uint8 images of shape (N, 28, 28), got "
                f"{images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataFormatError(
                f"{fn}: {lbl} holds labels of shape {labels.shape} but {img} holds "
                f"{images.shape[0]} images"
            )
        labels = labels.astype(np.int64)
        _check_labels(fn, str(lbl), labels)
        return images.reshape(-1, 1, 28, 28), labels, folder
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"{fn}: files not found; looked in {looked} for {img_stem}[.gz] and {lbl_stem}[.gz]. "
        f"Fix: put the four IDX files in one of those folders, pass root=, or set {env}"
        + (" (on Debian: apt-get install dataset-fashion-mnist)" if "fashion" in subdir else "")
    )


def load_fashion_mnist(
    root: str | os.PathLike | None = None, train: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Load Fashion-MNIST (60,000 train / 10,000 test 28x28 greyscale images).

    Looks in ``root`` and ``root/fashion-mnist``; without ``root``, in
    ``$MINIDL_FASHION_MNIST_DIR``, ``default_data_root()/fashion-mnist`` and Debian's
    ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``). Files:
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each raw or ``.gz``.

    Returns:
        ``(images, labels)``: uint8 ``(N, 1, 28, 28)`` and int64 ``(N,)`` in 0..9 (names
        in ``FASHION_MNIST_CLASSES``).

    >>> import tempfile, pathlib, gzip
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "t10k-images-idx3-ubyte.gz").write_bytes(
    ...     gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(784)))
    >>> _ = (d / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 1, 9]))
    >>> x, y = load_fashion_mnist(d, train=False)
    >>> x.shape, y.tolist()
    ((1, 1, 28, 28), [9])
    >>> import shutil; shutil.rmtree(d)
    """
    images, labels, _ = _load_idx_dataset(
        "load_fashion_mnist", "fashion-mnist", "MINIDL_FASHION_MNIST_DIR",
        "/usr/share/datasets/fashion-mnist", root, train,
    )
    return images, labels


def load_mnist(
    root: str | os.PathLike | None = None, train: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST digits from IDX files; same file names and return values as
    ``load_fashion_mnist``. Looks in ``root`` and ``root/mnist``; without ``root``, in
    ``$MINIDL_MNIST_DIR``, ``default_data_root()/mnist`` and ``/usr/share/datasets/mnist``.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "train-images-idx3-ubyte").write_bytes(
    ...     bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(2 * 784))
    >>> _ = (d / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 4, 2]))
    >>> x, y = load_mnist(d)
    >>> x.shape, x.dtype, y.dtype
    ((2, 1, 28, 28), dtype('uint8'), dtype('int64'))
    >>> import shutil; shutil.rmtree(d)
    """
    images, labels, _ = _load_idx_dataset(
        "load_mnist", "mnist", "MINIDL_MNIST_DIR", "/usr/share/datasets/mnist", root, train,
    )
    return images, labels


class FashionMNIST(ArrayDataset):
    """Fashion-MNIST as a ``Dataset`` (arguments of ``load_fashion_mnist``).

    >>> issubclass(FashionMNIST, ArrayDataset)
    True
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(self, root: str | os.PathLike | None = None, train: bool = True) -> None:
        images, labels, self.path = _load_idx_dataset(
            "FashionMNIST", "fashion-mnist", "MINIDL_FASHION_MNIST_DIR",
            "/usr/share/datasets/fashion-mnist", root, train,
        )
        super().__init__(images, labels)
        self.images, self.labels, self.train = images, labels, train


class MNIST(ArrayDataset):
    """MNIST as a ``Dataset`` (arguments of ``load_mnist``).

    >>> MNIST.classes[:3]
    ('0', '1', '2')
    """

    classes = MNIST_CLASSES

    def __init__(self, root: str | os.PathLike | None = None, train: bool = True) -> None:
        images, labels, self.path = _load_idx_dataset(
            "MNIST", "mnist", "MINIDL_MNIST_DIR", "/usr/share/datasets/mnist", root, train,
        )
        super().__init__(images, labels)
        self.images, self.labels, self.train = images, labels, train
