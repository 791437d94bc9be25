"""Your own images: ``ImageFolder`` reads ``root/<class name>/<image files>`` (JPEG, PNG, ...)
as a dataset, decoding each image with Pillow when it is asked for, and ``load_image``
decodes one file the same way.

Every image goes through one decode path, ``_decode``: open, undo the camera's EXIF
rotation (a phone photo is stored sideways with a tag saying so), convert to ``mode``
(``"RGB"``: 3 channels, ``"L"``: 1) and resize to a fixed ``(H, W)`` (bilinear, which
Pillow antialiases when shrinking; the aspect ratio is not kept), giving a ``uint8``
``(C, H, W)`` array, NCHW as everywhere in minidl. ``ImageFolder``, ``convert_image_folder``
(which writes a folder as a memmap dataset once, for data sets decoded too slowly per epoch
or bigger than memory) and ``minidl.predict`` all use it, so a model sees at prediction
time exactly the pixels it was trained on. JPEGs are decoded at a reduced scale when the
target is much smaller than the photo (Pillow's ``draft``: the decoder skips the detail a
32x32 target would discard), which makes a folder of camera photos many times faster to
read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minidl.data._util import DataFormatError, DatasetNotFoundError
from minidl.data.loader import Dataset

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif",
                                     ".tiff", ".ppm")
"""File suffixes taken as images (compared case-insensitively)."""

_CHANNELS = {"RGB": 3, "L": 1}


def _pil(op: str) -> Any:
    """Pillow's ``Image`` module, or an ImportError saying how to install it."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(f"{op}: needs Pillow to decode images; install it with "
                          "`pip install pillow` (or minidl's extra: `pip install -e "
                          "\".[images]\"`)") from exc
    return Image


def _check_size(op: str, size: Any) -> tuple[int, int]:
    """``size`` (one int, or ``(H, W)``) as ``(H, W)`` of positive ints."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2 and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"{op}: size must be an int or a pair (H, W) of ints, got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"{op}: size must be positive, got {size!r}")
    return hw


def _check_mode(op: str, mode: Any) -> int:
    """The channel count of a Pillow ``mode`` minidl decodes to."""
    if mode not in _CHANNELS:
        raise ValueError(f"{op}: mode must be 'RGB' (3 channels) or 'L' (grey, 1 channel), "
                         f"got {mode!r}")
    return _CHANNELS[mode]


def _decode(op: str, path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """Decode one image file to ``uint8`` ``(C, H, W)``; DataFormatError naming the file."""
    Image = _pil(op)
    from PIL import ImageOps

    height, width = size
    try:
        with Image.open(path) as im:
            # JPEG only (a no-op for other formats): decode at the smallest 1/2, 1/4 or 1/8
            # scale still at least the target on both sides (either way round, as the EXIF
            # rotation below may swap them).
            side = max(height, width)
            im.draft(mode, (side, side))
            im = ImageOps.exif_transpose(im)
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")  # what Pillow asks for, instead of a warning
            im = im.convert(mode)
            if im.size != (width, height):
                im = im.resize((width, height), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataFormatError(f"{op}: cannot decode {path} ({exc})") from exc
    return arr.reshape(height, width, _CHANNELS[mode]).transpose(2, 0, 1)


def _scan(op: str, root: Path, extensions: Sequence[str]) -> tuple[list[str], list[Path],
                                                                   np.ndarray]:
    """Find ``root``'s class folders and their images: (classes, files, labels (N,) int64).

    Classes are the sub-folders in sorted order (label = position; hidden ones such as
    ``.ipynb_checkpoints`` are skipped); each folder's image files are taken in sorted
    order, its sub-folders ignored.
    """
    if not root.exists():
        raise DatasetNotFoundError(f"{op}: {root} does not exist")
    if not root.is_dir():
        raise DatasetNotFoundError(f"{op}: {root} is not a folder; expected a folder with one "
                                   "sub-folder of images per class")
    exts = tuple(e.lower() for e in extensions)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts)
        found = f" (it holds {loose} image file(s) directly)" if loose else ""
        raise DatasetNotFoundError(f"{op}: no class folders in {root}{found}; expected "
                                   "root/<class name>/<image files>, one sub-folder per class")
    files: list[Path] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        found = sorted(f for f in (root / name).iterdir()
                       if f.is_file() and f.suffix.lower() in exts)
        if not found:
            empty.append(name)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetNotFoundError(f"{op}: no images ({', '.join(exts)}) in the class folders "
                                   f"of {root}; expected root/<class name>/<image files>")
    if empty:
        names = ", ".join(map(repr, empty[:5])) + (f" and {len(empty) - 5} more"
                                                   if len(empty) > 5 else "")
        raise DatasetNotFoundError(f"{op}: no images ({', '.join(exts)}) in class folder(s) "
                                   f"{names} of {root}; add images or "
                                   "remove the folder (a class with no images cannot be "
                                   "learned)")
    return classes, files, np.asarray(labels, dtype=np.int64)


def load_image(path: str | os.PathLike, size: int | Sequence[int] = 32, mode: str = "RGB"
               ) -> np.ndarray:
    """Decode one image file as ``ImageFolder`` does: ``uint8`` array ``(C, H, W)``.

    Args:
        path: a JPEG, PNG, ... file (whatever Pillow reads).
        size: output ``(H, W)``, or one int for a square.
        mode: ``"RGB"`` (C = 3) or ``"L"`` (grey, C = 1).

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: the file is not an image Pillow can decode (the message names it).
        ImportError: Pillow is not installed.

    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "red.png"
    >>> Image.new("RGB", (40, 20), (255, 0, 0)).save(f)
    >>> x = load_image(f, size=(8, 16)); x.shape, x.dtype, x[:, 0, 0].tolist()
    ((3, 8, 16), dtype('uint8'), [255, 0, 0])
    """
    hw = _check_size("load_image", size)
    _check_mode("load_image", mode)
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"load_image: {path} {what}")
    return _decode("load_image", path, hw, mode)


class ImageFolder(Dataset):
    """A classification dataset from a folder of class folders, decoded on access.

    ``root/cat/1.jpg, root/cat/2.png, root/dog/a.jpg`` gives ``classes == ["cat", "dog"]``
    and ``ds[2] == (image of a.jpg, 1)``. Only the file names are read when the dataset is
    made; each image is decoded (``load_image``'s way) every time it is asked for, so memory
    holds one batch, whatever the number of images. A ``DataLoader`` batches it as any
    dataset (``get_batch`` decodes straight into the batch array); ``train_val_split``
    splits it by class. To decode once rather than every epoch, write it as a memmap
    dataset with ``convert_image_folder`` and read that with ``MemmapDataset``, or take the
    arrays of a small one with ``ds.get_batch(np.arange(len(ds)))``.

    Args:
        root: folder holding one sub-folder of images per class (sorted names give the
            labels; hidden folders and sub-sub-folders are ignored).
        size: output ``(H, W)`` of every image, or one int for squares.
        mode: ``"RGB"`` (3 channels) or ``"L"`` (grey, 1 channel).
        extensions: file suffixes taken as images (case-insensitive); other files are
            skipped.

    Attributes:
        classes (list[str]): class names, indexed by label.
        class_to_idx (dict[str, int]): the inverse.
        files (list[Path]): the image files, in order (class by class, sorted).
        targets (np.ndarray): ``(N,)`` int64, the label of each file.
        size (tuple[int, int]): ``(H, W)``.
        image_shape (tuple[int, int, int]): ``(C, H, W)`` of each item.

    Raises:
        DatasetNotFoundError: ``root`` is missing, has no class folders, or a class folder
            has no images.
        ValueError: bad ``size`` or ``mode``.
        ImportError: Pillow is not installed.

    Decoding errors come when the image is read: ``DataFormatError`` naming the file.

    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name, color in [("cat", (255, 0, 0)), ("dog", (0, 0, 255))]:
    ...     (root / name).mkdir()
    ...     Image.new("RGB", (50, 30), color).save(root / name / "a.png")
    >>> ds = ImageFolder(root, size=16)
    >>> len(ds), ds.classes, ds.targets.tolist()
    (2, ['cat', 'dog'], [0, 1])
    >>> x, y = ds[1]; x.shape, x[:, 0, 0].tolist(), int(y)
    ((3, 16, 16), [0, 0, 255], 1)
    """

    def __init__(self, root: str | os.PathLike, size: int | Sequence[int] = 32,
                 mode: str = "RGB", extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        _pil("ImageFolder")  # fail now, not at the first batch
        self.size = _check_size("ImageFolder", size)
        channels = _check_mode("ImageFolder", mode)
        self.mode = mode
        self.root = Path(root).expanduser()
        self.classes, self.files, self.targets = _scan("ImageFolder", self.root, extensions)
        self.class_to_idx = {name: k for k, name in enumerate(self.classes)}
        self.image_shape = (channels, *self.size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"ImageFolder: index {index} out of range for {n} images")
        return _decode("ImageFolder", self.files[index], self.size, self.mode), \
            self.targets[index]

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode the images at ``indices``: ``uint8 (B, C, H, W)`` and ``int64 (B,)``."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if indices.size and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"ImageFolder.get_batch: indices must be in 0..{n - 1}, got range "
                             f"{int(indices.min())}..{int(indices.max())}")
        images = np.empty((indices.size, *self.image_shape), np.uint8)
        for k, i in enumerate(indices.tolist()):
            images[k] = _decode("ImageFolder", self.files[i], self.size, self.mode)
        return images, self.targets[indices]

    def __repr__(self) -> str:
        return (f"ImageFolder('{self.root}', n={len(self)}, classes={len(self.classes)}, "
                f"size={self.size}, mode='{self.mode}')")
