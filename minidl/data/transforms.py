"""Batch image transforms for data augmentation, vectorized over a whole NCHW batch.

Every transform is a callable ``t(x, rng) -> x`` where ``x`` is a NumPy or CuPy array of
shape ``(N, C, H, W)`` and ``rng`` is a ``np.random.Generator`` supplied by the
``DataLoader``. A transform that must know *which* images it holds (``AlternatingFlip``
flips by dataset index and epoch) sets ``uses_batch_info = True`` and is then called
``t(x, rng, info=BatchInfo(indices, epoch, seed))``; ``Compose`` forwards ``info`` to the
transforms that ask for it and calls the others as before. Random choices (crop offsets,
which images flip, where the cutout goes) are drawn on the CPU from ``rng``, one vector per
batch, and then applied with the array's own module ``xp``; so a CPU run and a GPU run
with the same seed augment identically, and no Python loop runs over the images. Outputs
keep the input dtype (float32 stays float32: constants are cast to the array's dtype before
they meet it, since NumPy 2 would promote float32 combined with a float64 array to
float64).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minidl.backend import get_array_module
from minidl.random import default_generator


def _check_batch(name: str, x: Any) -> tuple[int, int, int, int]:
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(x).__name__}")
    if len(shape) != 4:
        raise ValueError(
            f"{name}: expected a batch of images of shape (N, C, H, W), got shape "
            f"{tuple(shape)}; add a batch axis with x[None] for a single image"
        )
    n, c, h, w = (int(s) for s in shape)
    return n, c, h, w


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return default_generator() if rng is None else rng


def _pair(name: str, arg: str, value: int | Sequence[int], minimum: int) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name}: {arg} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name}: {arg} must be >= {minimum}, got {value!r}")
    return pair


def _flip_images(x: Any, chosen: np.ndarray) -> Any:
    """A copy of ``x`` with the images at positions ``chosen`` (a NumPy int array)
    mirrored left-right."""
    out = x.copy()
    if chosen.size:
        xp = get_array_module(x)
        idx = xp.asarray(chosen)
        out[idx] = x[idx][..., ::-1]
    return out


@dataclass(frozen=True, eq=False)
class BatchInfo:
    """Where a batch comes from: what the ``DataLoader`` tells transforms that ask.

    A transform declares ``uses_batch_info = True`` to be called
    ``t(x, rng, info=BatchInfo(...))``; the others never see it.

    Attributes:
        indices: ``(N,)`` integer array, the dataset index of each image of the batch, in
            batch order.
        epoch: the loader's epoch (0-based) the batch belongs to.
        seed: the loader's seed; a transform derives per-run random choices from it, so
            that restoring the loader's ``state_dict`` restores them too.

    >>> info = BatchInfo(np.array([4, 0]), epoch=1, seed=0)
    >>> info.indices.tolist(), info.epoch
    ([4, 0], 1)
    """

    indices: np.ndarray
    epoch: int
    seed: int


def _call(t: Callable, x: Any, rng: np.random.Generator, info: BatchInfo | None) -> Any:
    """Apply ``t``, handing it ``info`` only if it declares ``uses_batch_info``."""
    if getattr(t, "uses_batch_info", False):
        return t(x, rng, info=info)
    return t(x, rng)


class Compose:
    """Apply transforms one after another, passing each the same ``rng``.

    Transforms that declare ``uses_batch_info`` also get the ``info`` given here.

    Args:
        transforms: callables ``t(x, rng) -> x``.

    >>> t = Compose([ToFloat(), Normalize([0.5], [0.5])])
    >>> t(np.full((1, 1, 1, 1), 255, np.uint8), np.random.default_rng(0)).tolist()
    [[[[1.0]]]]
    """

    def __init__(self, transforms: Sequence[Callable]) -> None:
        transforms = list(transforms)
        for k, t in enumerate(transforms):
            if not callable(t):
                raise TypeError(f"Compose: transform {k} is not callable: {t!r}")
        self.transforms = transforms

    @property
    def uses_batch_info(self) -> bool:
        """True when one of the transforms uses the batch's ``BatchInfo``."""
        return any(getattr(t, "uses_batch_info", False) for t in self.transforms)

    def __call__(self, x: Any, rng: np.random.Generator | None = None, *,
                 info: BatchInfo | None = None) -> Any:
        rng = _rng(rng)
        for t in self.transforms:
            x = _call(t, x, rng, info)
        return x

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class ToFloat:
    """Convert a batch to float32; uint8 pixels are scaled from [0, 255] to [0, 1].

    Floating inputs are cast to float32 without scaling.

    >>> ToFloat()(np.array([[[[0, 51, 255]]]], np.uint8)).tolist()
    [[[[0.0, 0.20000000298023224, 1.0]]]]
    """

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        _check_batch("ToFloat", x)
        dtype = np.dtype(x.dtype)
        if dtype == np.uint8:
            out = x.astype(np.float32)
            out /= np.float32(255.0)
            return out
        if dtype.kind == "f":
            return x.astype(np.float32, copy=False)
        raise TypeError(f"ToFloat: expected uint8 or floating input, got dtype {dtype}")

    def __repr__(self) -> str:
        return "ToFloat()"


class Normalize:
    """Per-channel standardization ``(x - mean[c]) / std[c]`` of a floating NCHW batch.

    Args:
        mean: one value per channel (length C).
        std: one positive value per channel (length C).

    >>> t = Normalize(mean=[0.5, 0.0], std=[0.5, 2.0])
    >>> out = t(np.ones((1, 2, 1, 1), np.float32))
    >>> out.ravel().tolist(), out.dtype
    ([1.0, 0.5], dtype('float32'))
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise ValueError(
                f"Normalize: mean and std must be 1-D and of equal length, got shapes "
                f"{self.mean.shape} and {self.std.shape}"
            )
        if not np.all(self.std > 0):
            raise ValueError(f"Normalize: std must be > 0, got {self.std.tolist()}")

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        _, c, _, _ = _check_batch("Normalize", x)
        if np.dtype(x.dtype).kind != "f":
            raise TypeError(
                f"Normalize: expected a floating batch, got dtype {x.dtype}; apply ToFloat first"
            )
        if c != self.mean.shape[0]:
            raise ValueError(
                f"Normalize: input has {c} channels but mean/std have {self.mean.shape[0]} "
                f"(input shape {tuple(x.shape)})"
            )
        xp = get_array_module(x)
        # Constants in the input's dtype: float32 data stays float32 under NumPy 2 rules.
        mean = xp.asarray(self.mean.astype(x.dtype).reshape(1, c, 1, 1))
        inv_std = xp.asarray((1.0 / self.std).astype(x.dtype).reshape(1, c, 1, 1))
        return (x - mean) * inv_std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomCrop:
    """Pad each image, then cut a random ``size`` window from it (a random translation).

    With ``size`` equal to the image size this translates each image by ``-padding`` to
    ``+padding`` pixels along each axis, each of the ``(2 * padding + 1)**2`` offsets
    equally likely and drawn independently per image; ``padding_mode="reflect"`` fills the
    uncovered border with mirrored pixels instead of zeros. airbench's ``translate=2`` is
    ``RandomCrop(32, padding=2, padding_mode="reflect")``.

    Args:
        size: output ``(H', W')`` or one int for a square.
        padding: pixels added on each side, an int or ``(pad_h, pad_w)``.
        padding_mode: ``"constant"`` (fill with ``fill``) or ``"reflect"`` (mirror without
            repeating the edge pixel; needs ``padding < H`` and ``< W``).
        fill: value of constant padding.

    Shapes: ``(N, C, H, W) -> (N, C, H', W')``; offsets are drawn per image.

    >>> x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    >>> RandomCrop(4, padding=1)(x, np.random.default_rng(0)).shape
    (1, 1, 4, 4)
    >>> RandomCrop(2)(x, np.random.default_rng(0)).dtype
    dtype('uint8')
    """

    def __init__(
        self,
        size: int | Sequence[int],
        padding: int | Sequence[int] = 0,
        padding_mode: str = "constant",
        fill: float = 0,
    ) -> None:
        self.size = _pair("RandomCrop", "size", size, 1)
        self.padding = _pair("RandomCrop", "padding", padding, 0)
        if padding_mode not in ("constant", "reflect"):
            raise ValueError(
                f"RandomCrop: padding_mode must be 'constant' or 'reflect', got {padding_mode!r}"
            )
        self.padding_mode = padding_mode
        self.fill = fill

    def _pad(self, x: Any, h: int, w: int) -> Any:
        ph, pw = self.padding
        if ph == 0 and pw == 0:
            return x
        xp = get_array_module(x)
        widths = ((0, 0), (0, 0), (ph, ph), (pw, pw))
        if self.padding_mode == "reflect":
            if ph >= h or pw >= w:
                raise ValueError(
                    f"RandomCrop: reflect padding {self.padding} must be smaller than the image "
                    f"({h}x{w})"
                )
            return xp.pad(x, widths, mode="reflect")
        return xp.pad(x, widths, mode="constant", constant_values=self.fill)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        n, c, h, w = _check_batch("RandomCrop", x)
        rng = _rng(rng)
        th, tw = self.size
        hp, wp = h + 2 * self.padding[0], w + 2 * self.padding[1]
        if th > hp or tw > wp:
            raise ValueError(
                f"RandomCrop: crop size {self.size} is larger than the padded image ({hp}, {wp}) "
                f"(input shape {tuple(x.shape)}, padding {self.padding})"
            )
        top = rng.integers(0, hp - th + 1, size=n)
        left = rng.integers(0, wp - tw + 1, size=n)
        xp = get_array_module(x)
        padded = xp.ascontiguousarray(self._pad(x, h, w))
        s0, s1, s2, s3 = padded.strides
        # A read-only view of every window position: (N, C, oh, ow, th, tw). One gather
        # then picks each image's window; no loop over images.
        windows = xp.lib.stride_tricks.as_strided(
            padded, shape=(n, c, hp - th + 1, wp - tw + 1, th, tw),
            strides=(s0, s1, s2, s3, s2, s3),
        )
        return windows[xp.arange(n), :, xp.asarray(top), xp.asarray(left)]

    def __repr__(self) -> str:
        return (
            f"RandomCrop(size={self.size}, padding={self.padding}, "
            f"padding_mode={self.padding_mode!r})"
        )


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``.

    >>> x = np.arange(3, dtype=np.uint8).reshape(1, 1, 1, 3)
    >>> RandomHorizontalFlip(p=1.0)(x, np.random.default_rng(0)).ravel().tolist()
    [2, 1, 0]
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        n, _, _, _ = _check_batch("RandomHorizontalFlip", x)
        return _flip_images(x, np.flatnonzero(_rng(rng).random(n) < self.p))

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def _check_index(name: str, arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: {arg} must be an int >= 0, got {value!r}")
    return int(value)


# Names the stream of AlternatingFlip's epoch-0 mask. A SeedSequence with a spawn key never
# equals the loader's own streams, default_rng([seed, epoch]) and default_rng([seed, epoch,
# batch]) (plain entropy lists, of which [s, e] and [s, e, 0] would collide with each other).
_ALTERNATING_FLIP_KEY = 0xF11B


class AlternatingFlip:
    """Mirror each image in every other epoch, so that every image is seen both ways in
    any two consecutive epochs (airbench's alternating flip).

    In epoch 0 each dataset index is flipped with probability 1/2 (about half of them),
    from a mask drawn once from the loader's seed; in every later epoch exactly the indices
    not flipped in the epoch before are flipped: index ``i`` is flipped in epoch ``e`` iff
    ``mask[i] != (e % 2 == 1)``. Random flipping shows a quarter of the images unflipped
    two epochs running (and a quarter flipped twice); this shows none.

    The flips depend only on ``(seed, epoch, index)``: not on the batch order, the batch
    size or earlier epochs. A ``DataLoader`` restored with ``load_state_dict`` (or moved
    with ``set_epoch``) therefore replays them exactly, and a checkpoint needs nothing
    beyond the loader's ``{"seed", "epoch"}``.

    It declares ``uses_batch_info``, so the ``DataLoader`` (also through ``Compose``) calls
    it with ``info=BatchInfo(indices, epoch, seed)``; called by hand, pass ``info``. The
    mask of the indices seen so far is cached (one bool per index).

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``, same dtype; ``info.indices`` is ``(N,)``.

    >>> t = AlternatingFlip()
    >>> idx = np.arange(6)
    >>> t.flipped(idx, epoch=0, seed=0).tolist()
    [False, True, True, True, True, False]
    >>> t.flipped(idx, epoch=1, seed=0).tolist()  # the complement
    [True, False, False, False, False, True]
    >>> x = np.arange(4, dtype=np.uint8).reshape(2, 1, 1, 2)
    >>> t(x, info=BatchInfo(np.array([1, 0]), epoch=0, seed=0)).reshape(2, 2).tolist()
    [[1, 0], [2, 3]]
    """

    uses_batch_info = True

    def __init__(self) -> None:
        self._cache: tuple[int | None, np.ndarray] = (None, np.zeros(0, dtype=bool))

    def _mask(self, seed: int, size: int) -> np.ndarray:
        """Epoch 0's flips of indices ``0 .. size - 1`` (at least), for ``seed``."""
        cached_seed, mask = self._cache
        if cached_seed != seed or mask.size < size:
            grown = 2 * mask.size if cached_seed == seed else 0
            ss = np.random.SeedSequence(seed, spawn_key=(_ALTERNATING_FLIP_KEY,))
            # Generator.random draws its output one value at a time, so the first k entries
            # do not depend on the length asked for: growing the mask changes no index's flip.
            mask = np.random.default_rng(ss).random(max(size, grown, 1024)) < 0.5
            self._cache = (seed, mask)  # one assignment: safe with a prefetch thread
        return mask

    def flipped(self, indices: Sequence[int] | np.ndarray, epoch: int, seed: int) -> np.ndarray:
        """Which of ``indices`` are mirrored in ``epoch`` of a loader seeded ``seed``.

        Args:
            indices: ``(N,)`` dataset indices (ints >= 0).
            epoch: 0-based epoch.
            seed: the loader's seed.

        Returns:
            ``(N,)`` bool array.
        """
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ValueError(
                f"AlternatingFlip: indices must be a 1-D array of ints, got shape "
                f"{idx.shape} and dtype {idx.dtype}"
            )
        epoch = _check_index("AlternatingFlip", "epoch", epoch)
        seed = _check_index("AlternatingFlip", "seed", seed)
        if idx.size == 0:
            return np.zeros(0, dtype=bool)
        if idx.min() < 0:
            raise ValueError(f"AlternatingFlip: indices must be >= 0, got {int(idx.min())}")
        return self._mask(seed, int(idx.max()) + 1)[idx] ^ (epoch % 2 == 1)

    def __call__(self, x: Any, rng: np.random.Generator | None = None, *,
                 info: BatchInfo | None = None) -> Any:
        n, _, _, _ = _check_batch("AlternatingFlip", x)
        if info is None:
            raise TypeError(
                "AlternatingFlip: needs info=BatchInfo(indices, epoch, seed), the dataset "
                "index of each image and the epoch; a DataLoader passes it (also through "
                "Compose) when it is the loader's transform"
            )
        if np.shape(info.indices) != (n,):
            raise ValueError(
                f"AlternatingFlip: info.indices has shape {np.shape(info.indices)} but the "
                f"batch has {n} images (input shape {tuple(x.shape)})"
            )
        return _flip_images(x, np.flatnonzero(self.flipped(info.indices, info.epoch, info.seed)))

    def __repr__(self) -> str:
        return "AlternatingFlip()"


class Cutout:
    """Blank a ``size`` x ``size`` square at a random centre of each image (DeVries & Taylor).

    The centre is uniform over the image and the square is clipped at the borders, so an
    image may lose less than ``size**2`` pixels. The same square covers all channels.

    Args:
        size: side of the square, in pixels.
        p: probability that an image gets a square.
        fill: value written into the square.

    >>> out = Cutout(2)(np.ones((1, 1, 4, 4), np.float32), np.random.default_rng(0))
    >>> out.dtype, 0 < int((out == 0).sum()) <= 4
    (dtype('float32'), True)
    """

    def __init__(self, size: int, p: float = 1.0, fill: float = 0) -> None:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"Cutout: size must be a positive int, got {size!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Cutout: p must be in [0, 1], got {p!r}")
        self.size, self.p, self.fill = int(size), float(p), fill

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        n, _, h, w = _check_batch("Cutout", x)
        rng = _rng(rng)
        cy = rng.integers(0, h, size=n)
        cx = rng.integers(0, w, size=n)
        apply = rng.random(n) < self.p
        y0 = np.clip(cy - self.size // 2, 0, h)
        y1 = np.where(apply, np.clip(cy - self.size // 2 + self.size, 0, h), y0)
        x0 = np.clip(cx - self.size // 2, 0, w)
        x1 = np.clip(cx - self.size // 2 + self.size, 0, w)
        # Only the four (N,) bound vectors cross to the device; the mask is built there.
        xp = get_array_module(x)
        y0, y1, x0, x1 = (xp.asarray(v)[:, None] for v in (y0, y1, x0, x1))
        rows, cols = xp.arange(h), xp.arange(w)
        in_rows = (rows >= y0) & (rows < y1)  # (N, H)
        in_cols = (cols >= x0) & (cols < x1)  # (N, W)
        mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (N, 1, H, W)
        return xp.where(mask, xp.asarray(np.asarray(self.fill, x.dtype)), x)

    def __repr__(self) -> str:
        return f"Cutout(size={self.size}, p={self.p})"
