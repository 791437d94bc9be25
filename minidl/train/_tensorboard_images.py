"""The images of the ``TensorBoard`` callback as ``(H, W, 3)`` uint8 arrays: a confusion
matrix and a grid of predictions, drawn by ``minidl.plot`` (matplotlib) when it is
installed, or with NumPy alone (no text), so that TensorBoard logging never needs the
``plot`` extra; and ``png``, their encoding, here because tensorboardX's ``add_image``
needs Pillow, which only the ``plot`` and ``images`` extras bring."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

CORRECT, WRONG = (0, 160, 0), (220, 0, 0)  # frame colours of the NumPy grid
BLUE = np.array([31, 119, 180], np.float64)  # matplotlib's "Blues" at its darkest, roughly


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def display_uint8(x: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` or ``(N, H, W, C)`` inputs as ``(N, H, W, C)`` uint8 for display:
    float inputs (normalized, so not 0..255) are rescaled per image to their own range."""
    x = np.asarray(x)
    if x.shape[1] in (1, 3):  # NCHW, the public layout (else NHWC)
        x = x.transpose(0, 2, 3, 1)
    if x.dtype == np.uint8:
        return x
    x = x.astype(np.float64)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    span = x.max(axis=(1, 2, 3), keepdims=True) - lo
    return np.round((x - lo) / np.where(span > 0, span, 1.0) * 255).astype(np.uint8)


def _figure_rgb(fig: Any) -> np.ndarray:
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def confusion_image(y: np.ndarray, pred: np.ndarray, names: Sequence[str],
                    use_matplotlib: bool) -> np.ndarray:
    """The confusion matrix of ``pred`` vs ``y``; without matplotlib a heat map, one
    square of ``cell`` pixels per (true row, predicted column), darker for more samples.

    >>> confusion_image(np.array([0, 1]), np.array([0, 0]), ["a", "b"], False).shape
    (320, 320, 3)
    """
    if use_matplotlib:
        from minidl.plot import confusion_matrix

        return _figure_rgb(confusion_matrix(y, pred, names))
    k = len(names)
    m = np.zeros((k, k), np.float64)
    np.add.at(m, (y, pred), 1)
    t = (m / max(m.max(), 1.0))[..., None]
    rgb = np.round(255 * (1 - t) + BLUE * t).astype(np.uint8)
    cell = max(4, 320 // k)
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


def grid_image(x: np.ndarray, y: np.ndarray, pred: np.ndarray, names: Sequence[str],
               use_matplotlib: bool, cols: int = 8) -> np.ndarray:
    """The images ``x`` titled ``prediction (truth)``, red when wrong; without
    matplotlib, tiled with a 2-pixel green (right) or red (wrong) frame each.

    >>> grid_image(np.zeros((3, 1, 8, 8), np.float32), np.array([0, 1, 1]),
    ...            np.array([0, 1, 0]), ["a", "b"], False).shape
    (12, 36, 3)
    """
    images = display_uint8(x)
    if use_matplotlib:
        from minidl.plot import prediction_grid

        return _figure_rgb(prediction_grid(images, y, pred, names, cols=cols))
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w, _ = images.shape
    cols = min(cols, n)
    rows = -(-n // cols)
    out = np.full((rows * (h + 4), cols * (w + 4), 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = out[r * (h + 4):(r + 1) * (h + 4), c * (w + 4):(c + 1) * (w + 4)]
        tile[...] = CORRECT if pred[i] == y[i] else WRONG
        tile[2:-2, 2:-2] = images[i]
    return out


def png(rgb: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` uint8 array as PNG bytes (8-bit RGB, no filtering).

    >>> png(np.zeros((2, 3, 3), np.uint8))[12:16]
    b'IHDR'
    """
    rgb = np.ascontiguousarray(rgb, np.uint8)
    h, w, _ = rgb.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    rows = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))
