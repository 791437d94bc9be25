"""Datasets bigger than memory: images and labels in ``.npy`` files, read on demand.

A memmap dataset is a folder with ``images.npy`` (N, C, H, W), ``labels.npy`` (N,) int64
and ``meta.json`` (class names, shapes, format version). ``MemmapDataset`` opens the arrays
with ``np.load(mmap_mode="r")`` (validated header, zero-copy random access through
``ds.images``), and reads a batch's images with positional reads (``preadv``) at offsets
computed from that header, in ascending file order (forward seeks; adjacent records become
one read), straight into the batch array at their asked positions. Why not through the
mapping: pages touched through a file mapping count in the process's resident memory, and
on current kernels one touched record maps a whole large folio (up to 2 MiB) around it, so
a shuffled epoch through ``mmap`` shows a resident size near the file's size; positional
reads leave the data in the OS page cache only, and resident memory stays at a few batches.
The writers stream the arrays out in chunks into a temporary folder that is renamed into
place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minidl.data._util import (
    DataFormatError,
    DatasetNotFoundError,
    atomic_write,
    default_permissions,
    replace_dir,
)
from minidl.data.datasets import CIFAR10
from minidl.data.image_folder import (
    IMAGE_EXTENSIONS,
    _check_mode,
    _check_size,
    _decode,
    _pil,
    _scan,
)
from minidl.data.loader import Dataset

_FORMAT = "minidl-memmap"
_VERSION = 1
_IMAGES, _LABELS, _META = "images.npy", "labels.npy", "meta.json"


class _NpyStreamWriter:
    """Write an ``.npy`` file of known shape by appending C-ordered chunks along axis 0."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.rows = 0
        self.file = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": shape}
        np.lib.format.write_array_header_2_0(self.file, header)

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        if chunk.shape[1:] != self.shape[1:] or self.rows + chunk.shape[0] > self.shape[0]:
            raise ValueError(
                f"write_memmap_dataset: chunk of shape {chunk.shape} does not fit {self.path.name}"
                f" of shape {self.shape} at row {self.rows}"
            )
        self.file.write(chunk.data)
        self.rows += chunk.shape[0]

    def close(self) -> None:
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()


class _MemmapWriter:
    """Stream a memmap dataset into a temporary folder; ``commit`` renames it into place."""

    def __init__(self, out_dir: str | os.PathLike, n: int, image_shape: tuple[int, ...],
                 dtype: Any = np.uint8, overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir).expanduser()
        if self.out_dir.exists() and not overwrite:
            raise FileExistsError(
                f"write_memmap_dataset: {self.out_dir} already exists (pass overwrite=True)"
            )
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.overwrite = overwrite
        self.n, self.image_shape = int(n), tuple(int(s) for s in image_shape)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".tmp",
                                         dir=self.out_dir.parent))
        default_permissions(self.tmp, directory=True)
        try:
            self.images = _NpyStreamWriter(self.tmp / _IMAGES, (self.n, *self.image_shape), dtype)
            self.labels = _NpyStreamWriter(self.tmp / _LABELS, (self.n,), np.int64)
        except BaseException:
            self.abort()
            raise

    def append(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images.append(images)
        self.labels.append(labels)

    def commit(self, classes: Sequence[str] | None, extra: dict | None = None) -> Path:
        try:
            if self.images.rows != self.n:
                raise ValueError(
                    f"write_memmap_dataset: wrote {self.images.rows} of {self.n} images"
                )
            self.images.close()
            self.labels.close()
            meta = {
                "format": _FORMAT, "version": _VERSION, "num_samples": self.n,
                "image_shape": list(self.image_shape), "dtype": str(self.images.dtype),
                "classes": list(classes) if classes is not None else None,
                "images": _IMAGES, "labels": _LABELS, **(extra or {}),
            }
            with atomic_write(self.tmp / _META, "w") as f:
                json.dump(meta, f, indent=1)
            replace_dir(self.tmp, self.out_dir, self.overwrite)
            return self.out_dir
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        for w in (getattr(self, "images", None), getattr(self, "labels", None)):
            if w is not None and not w.file.closed:
                w.file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _check_labels_array(fn: str, labels: np.ndarray, n: int, classes: Sequence[str] | None):
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{fn}: labels must be an integer array of shape ({n},), got {labels.dtype} "
            f"{labels.shape}"
        )
    if n and (labels.min() < 0 or (classes is not None and labels.max() >= len(classes))):
        limit = f"0..{len(classes) - 1}" if classes is not None else ">= 0"
        raise ValueError(f"{fn}: labels must be in {limit}, got range "
                         f"{int(labels.min())}..{int(labels.max())}")
    return labels


def write_memmap_dataset(
    out_dir: str | os.PathLike,
    images: Any,
    labels: Any,
    classes: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    chunk_size: int = 4096,
) -> Path:
    """Write ``images`` and ``labels`` as a memmap dataset folder, in chunks, atomically.

    ``images`` may itself be a memmap or any array-like sliceable along axis 0: only
    ``chunk_size`` images are in memory at a time.

    Args:
        out_dir: folder to create (``images.npy``, ``labels.npy``, ``meta.json``).
        images: array ``(N, C, H, W)`` (any dtype; uint8 for images).
        labels: integer array ``(N,)``, stored as int64.
        classes: class names, indexed by label.
        overwrite: replace an existing ``out_dir``.
        chunk_size: images copied per step.

    Returns:
        ``out_dir`` as a ``Path``.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "ds"
    >>> _ = write_memmap_dataset(d, np.zeros((3, 1, 2, 2), np.uint8), [0, 1, 1], ["a", "b"])
    >>> ds = MemmapDataset(d)
    >>> len(ds), ds.classes, ds.get_batch(np.array([2, 0]))[1].tolist()
    (3, ['a', 'b'], [1, 0])
    >>> ds.close(); import shutil; shutil.rmtree(d.parent)
    """
    if not hasattr(images, "shape"):
        images = np.asarray(images)
    if len(images.shape) < 2:
        raise ValueError(
            f"write_memmap_dataset: images must have shape (N, ...), got {tuple(images.shape)}"
        )
    n = int(images.shape[0])
    labels = _check_labels_array("write_memmap_dataset", labels, n, classes)
    writer = _MemmapWriter(out_dir, n, tuple(images.shape[1:]), images.dtype, overwrite)
    try:
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            writer.append(np.asarray(images[start:stop]), labels[start:stop])
    except BaseException:
        writer.abort()
        raise
    return writer.commit(classes)


class MemmapDataset(Dataset):
    """A dataset read lazily from a folder written by ``write_memmap_dataset``.

    Attributes: ``images`` (read-only memmap, N x C x H x W), ``labels`` (read-only memmap,
    N, int64), ``classes`` (list of names or None), ``meta`` (the parsed ``meta.json``).
    ``get_batch`` and ``ds[i]`` read from the file without mapping it, so resident memory
    stays at the size of the batches whatever the size of the file. Call ``close()`` (or
    use ``with``) to release the file handle early.

    Args:
        path: the dataset folder.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "ds"
    >>> _ = write_memmap_dataset(d, np.arange(8, dtype=np.uint8).reshape(2, 1, 2, 2), [1, 0])
    >>> with MemmapDataset(d) as ds:
    ...     x, y = ds[1]
    >>> x.ravel().tolist(), int(y)
    ([4, 5, 6, 7], 0)
    >>> import shutil; shutil.rmtree(d.parent)
    """

    _fd: int | None = None

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        meta_path = self.path / _META
        if not meta_path.is_file():
            raise DatasetNotFoundError(
                f"MemmapDataset: {meta_path} not found; create the folder with "
                "write_memmap_dataset, convert_cifar10 or convert_image_folder"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"MemmapDataset: {meta_path} is not valid JSON ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise DataFormatError(f"MemmapDataset: {meta_path} is not a {_FORMAT} meta file")
        if meta.get("version") != _VERSION:
            raise DataFormatError(
                f"MemmapDataset: {meta_path} has format version {meta.get('version')}, "
                f"this minidl reads version {_VERSION}"
            )
        self.meta = meta
        images_file = self.path / meta.get("images", _IMAGES)
        self.images = self._open(images_file)
        self.labels = self._open(self.path / meta.get("labels", _LABELS))
        n = meta.get("num_samples")
        expected = (n, *meta.get("image_shape", []))
        if self.images.shape != tuple(expected) or not self.images.flags.c_contiguous:
            raise DataFormatError(
                f"MemmapDataset: {images_file} has shape {self.images.shape}, "
                f"meta.json says {tuple(expected)}"
            )
        if self.labels.shape != (n,) or self.labels.dtype != np.int64:
            raise DataFormatError(
                f"MemmapDataset: {self.path / _LABELS} should be int64 of shape ({n},), got "
                f"{self.labels.dtype} {self.labels.shape}"
            )
        self.classes = meta.get("classes")
        self._row_bytes = int(np.prod(self.images.shape[1:], dtype=np.int64)) * \
            self.images.dtype.itemsize
        self._data_offset = int(self.images.offset)  # bytes of .npy header before row 0
        self._images_file = images_file
        self._fd = os.open(images_file, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    @staticmethod
    def _open(file: Path) -> np.ndarray:
        if not file.is_file():
            raise DatasetNotFoundError(f"MemmapDataset: {file} is missing")
        try:
            return np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataFormatError(
                f"MemmapDataset: {file} is corrupt or truncated ({exc})"
            ) from exc

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"MemmapDataset: index {index} out of range for {n} samples")
        x, y = self.get_batch(np.array([index % n]))
        return x[0], y[0]

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read the images and labels at ``indices``: ``(B, C, H, W)`` and ``(B,)``.

        Records are read in ascending file order, each straight into its slot of the
        output; runs of adjacent records that land in adjacent slots become one read.
        """
        if self._fd is None:
            raise ValueError(f"MemmapDataset: {self.path} is closed")
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n, count = len(self), indices.size
        if count and (indices.min() < 0 or indices.max() >= n):
            raise IndexError(
                f"MemmapDataset.get_batch: indices must be in 0..{n - 1}, got range "
                f"{int(indices.min())}..{int(indices.max())}"
            )
        order = np.argsort(indices, kind="stable")  # order[k]: slot of the k-th smallest
        src = indices[order]
        images = np.empty((count, *self.images.shape[1:]), self.images.dtype)
        if count:
            cut = np.flatnonzero((np.diff(src) != 1) | (np.diff(order) != 1)) + 1
            starts = np.concatenate(([0], cut)).tolist()
            ends = np.concatenate((cut, [count])).tolist()
            out = memoryview(images.reshape(-1).view(np.uint8))
            row = self._row_bytes
            for s, e in zip(starts, ends):
                slot, first = int(order[s]), int(src[s])
                self._read_into(out[slot * row:(slot + e - s) * row],
                                self._data_offset + first * row)
        labels = np.empty(count, np.int64)
        labels[order] = self.labels[src]
        return images, labels

    def _read_into(self, buf: memoryview, offset: int) -> None:
        done = 0
        while done < len(buf):
            if hasattr(os, "preadv"):
                got = os.preadv(self._fd, [buf[done:]], offset + done)
            else:  # no preadv (Windows): read, then copy
                chunk = os.pread(self._fd, len(buf) - done, offset + done)
                buf[done:done + len(chunk)] = chunk
                got = len(chunk)
            if got == 0:
                raise DataFormatError(
                    f"MemmapDataset: {self._images_file} ended at byte {offset + done}; "
                    "was it truncated while open?"
                )
            done += got

    def close(self) -> None:
        """Close the file handle used by ``get_batch`` (the memmaps stay usable)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MemmapDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemmapDataset('{self.path}', n={len(self)}, image_shape={self.images.shape[1:]})"


def convert_cifar10(
    out_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    train: bool = True,
    *,
    overwrite: bool = False,
    **load_kwargs: Any,
) -> Path:
    """Write a CIFAR-10 split as a memmap dataset (for ``MemmapDataset``).

    Args:
        out_dir: folder to create.
        root: where the CIFAR-10 files are, as for ``load_cifar10``.
        train: the training split (True) or the test split.
        overwrite: replace an existing ``out_dir``.
        **load_kwargs: passed on to ``load_cifar10`` (``download``, ``format``, ...).

    Returns:
        ``out_dir`` as a ``Path``.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "test_batch.bin").write_bytes(bytes(3073))
    >>> MemmapDataset(convert_cifar10(d / "mm", d, train=False)).classes[:2]
    ['airplane', 'automobile']
    >>> import shutil; shutil.rmtree(d)
    """
    ds = CIFAR10(root, train=train, **load_kwargs)
    return write_memmap_dataset(out_dir, ds.images, ds.labels, ds.classes, overwrite=overwrite)


def convert_image_folder(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    size: int | Sequence[int] = 32,
    *,
    mode: str = "RGB",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    overwrite: bool = False,
    chunk_size: int = 512,
) -> Path:
    """Convert ``root/<class name>/<image files>`` into a memmap dataset, in bounded memory.

    Classes and files are those ``ImageFolder`` finds (sorted sub-folders, label =
    position; sorted files), and each image is decoded as ``ImageFolder`` and
    ``load_image`` decode it (EXIF rotation undone, converted to ``mode``, resized bilinear
    to ``size`` ignoring the aspect ratio), once: reading the result with ``MemmapDataset``
    costs no decoding per epoch. Needs Pillow.

    Args:
        root: folder of class folders.
        out_dir: memmap dataset folder to create.
        size: output ``(H, W)``, or one int for square images.
        mode: Pillow mode, ``"RGB"`` (3 channels) or ``"L"`` (1 channel).
        extensions: file suffixes taken as images (case-insensitive).
        overwrite: replace an existing ``out_dir``.
        chunk_size: images decoded before each write.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ImportError: Pillow is not installed.
        DatasetNotFoundError: ``root`` is missing, has no class folders, or a class folder
            has no images.
        DataFormatError: an image cannot be decoded (the message names it); nothing is
            left behind.

    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "cat").mkdir()
    >>> Image.new("RGB", (7, 5), (255, 0, 0)).save(d / "cat" / "a.png")
    >>> ds = MemmapDataset(convert_image_folder(d, d / "mm", size=4))
    >>> ds.images.shape, ds.classes, int(ds.images[0, 0, 0, 0])
    ((1, 3, 4, 4), ['cat'], 255)
    >>> ds.close(); import shutil; shutil.rmtree(d)
    """
    op = "convert_image_folder"
    _pil(op)
    size = _check_size(op, size)
    channels = _check_mode(op, mode)
    root = Path(root).expanduser()
    classes, files, labels = _scan(op, root, extensions)
    writer = _MemmapWriter(out_dir, len(files), (channels, *size), np.uint8, overwrite)
    try:
        for start in range(0, len(files), chunk_size):
            part = files[start:start + chunk_size]
            batch = np.empty((len(part), channels, *size), np.uint8)
            for k, f in enumerate(part):
                batch[k] = _decode(op, f, size, mode)
            writer.append(batch, labels[start:start + chunk_size])
    except BaseException:
        writer.abort()
        raise
    return writer.commit(classes, {"source": str(root)})
