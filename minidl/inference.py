"""Prediction from a checkpoint alone: ``minidl.predict(checkpoint, images, top=3)`` and the
``Predictor`` behind it (also ``python -m minidl predict``).

A checkpoint is usable on its own when its ``"meta"`` entry (``Trainer(metadata=...)``)
says what the weights need around them; ``prediction_metadata`` builds that entry::

    {"model": {"name": "seed_cnn", "kwargs": {"num_classes": 10}},   # minidl.models.MODELS
     "classes": ["airplane", ...],                                  # by label
     "input": {"size": [32, 32], "mode": "RGB",                     # ImageFolder's decode
               "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}}

An image is decoded as ``ImageFolder`` decodes training images (``load_image``: ``mode``,
resized to ``size``), scaled to [0, 1] and normalized with ``mean``/``std`` by the same
``ToFloat``/``Normalize`` transforms training used, so the network sees the pixels it
was trained on. The architecture is a name looked up in ``minidl.models.MODELS`` with
JSON keyword arguments, and the file is read by ``minidl.load``, which never unpickles:
loading a checkpoint from someone else cannot run their code.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minidl.data import transforms as T
from minidl.data.image_folder import _check_mode, _check_size, _decode, _pil
from minidl.models import MODELS, build_model
from minidl.nn import Module
from minidl.serialization import load
from minidl.train import predict as _logits

_HOW_TO_GET_ONE = (
    "checkpoints written by examples/cifar10.py, cifar10_dp.py and fashion_mnist.py (and "
    "airbench94.py --save) carry it; in your own training pass "
    "Trainer(..., metadata=minidl.inference.prediction_metadata(...))")


def prediction_metadata(model: str, classes: Sequence[str], size: int | Sequence[int],
                        *, model_kwargs: dict | None = None, mode: str = "RGB",
                        mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None) -> dict:
    """The ``"meta"`` entry that makes a checkpoint usable by ``minidl.predict`` alone.

    Give it to ``Trainer(metadata=...)``; every checkpoint the trainer writes carries it.

    Args:
        model: the architecture's name in ``minidl.models.MODELS`` (``"seed_cnn"``,
            ``"resnet9"``, ...).
        classes: class names, indexed by label (their count is the model's outputs).
        size: input ``(H, W)``, or one int for squares.
        model_kwargs: the builder's keyword arguments (JSON values), e.g. ``{"width": 32}``.
        mode: ``"RGB"`` or ``"L"``, as for ``ImageFolder``.
        mean: per-channel mean of the [0, 1] pixels that ``Normalize`` subtracted in
            training (None: no normalization).
        std: per-channel standard deviation, with ``mean``.

    Returns:
        ``{"model": {"name", "kwargs"}, "classes", "input": {"size", "mode", "mean",
        "std"}}``, JSON values only.

    Raises:
        ValueError: an unknown architecture, or fields that do not fit one another.

    >>> meta = prediction_metadata("seed_cnn", ["cat", "dog"], 32,
    ...                            model_kwargs={"num_classes": 2})
    >>> meta["model"], meta["input"]["size"]
    ({'name': 'seed_cnn', 'kwargs': {'num_classes': 2}}, [32, 32])
    """
    meta = {
        "model": {"name": model, "kwargs": dict(model_kwargs or {})},
        "classes": list(classes),
        "input": {"size": list(_check_size("prediction_metadata", size)), "mode": mode,
                  "mean": None if mean is None else [float(v) for v in mean],
                  "std": None if std is None else [float(v) for v in std]},
    }
    _check_metadata(meta, "prediction_metadata")
    return meta


def _check_metadata(meta: Any, op: str) -> None:
    """ValueError naming the first field of ``meta`` that ``Predictor`` could not use."""
    if not isinstance(meta, dict):
        raise ValueError(f"{op}: prediction metadata must be a dict, got {type(meta).__name__}")
    arch = meta.get("model")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) \
            or not isinstance(arch.get("kwargs", {}), dict):
        raise ValueError(f"{op}: metadata field 'model' must be {{'name': str, 'kwargs': "
                         f"dict}}, got {arch!r}")
    if arch["name"] not in MODELS:
        raise ValueError(f"{op}: unknown architecture {arch['name']!r}; minidl.models has "
                         f"{', '.join(sorted(MODELS))}")
    params = inspect.signature(MODELS[arch["name"]]).parameters
    unknown = sorted(set(arch.get("kwargs", {})) - set(params))
    if unknown:
        raise ValueError(f"{op}: {arch['name']} takes no argument(s) {', '.join(unknown)} "
                         f"(it takes {', '.join(params)})")
    classes = meta.get("classes")
    if not isinstance(classes, (list, tuple)) or not classes or not all(
            isinstance(c, str) for c in classes):
        raise ValueError(f"{op}: metadata field 'classes' must be a non-empty list of class "
                         f"names, got {classes!r}")
    inp = meta.get("input")
    if not isinstance(inp, dict):
        raise ValueError(f"{op}: metadata field 'input' must be a dict with 'size' and "
                         f"'mode', got {inp!r}")
    size = inp.get("size")
    _check_size(f"{op}: metadata field 'input.size'", list(size) if isinstance(
        size, (list, tuple)) else size)
    channels = _check_mode(f"{op}: metadata field 'input.mode'", inp.get("mode", "RGB"))
    mean, std = inp.get("mean"), inp.get("std")
    if (mean is None) != (std is None):
        raise ValueError(f"{op}: metadata fields 'input.mean' and 'input.std' go together, "
                         f"got mean={mean!r}, std={std!r}")
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and (not isinstance(v, (list, tuple)) or len(v) != channels or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise ValueError(f"{op}: metadata field 'input.{name}' must be {channels} "
                             f"number(s), one per channel of mode {inp.get('mode', 'RGB')!r}, "
                             f"got {v!r}")
    if std is not None and not all(x > 0 for x in std):
        raise ValueError(f"{op}: metadata field 'input.std' must be > 0, got {std!r}")


class Predictor:
    """A trained classifier with its classes and input pipeline: images in, classes out.

    Usually made by ``Predictor.from_checkpoint(path)``; ``minidl.predict`` makes one per
    call (keep a ``Predictor`` to classify many batches without reloading).

    Args:
        model: maps ``(N, C, H, W)`` float32 inputs to ``(N, K)`` logits.
        classes: the K class names.
        size: input ``(H, W)`` (one int for squares).
        mode: ``"RGB"`` or ``"L"``: how files are decoded.
        mean: per-channel normalization mean (None: none), as in ``transforms.Normalize``.
        std: per-channel standard deviation, with ``mean``.

    >>> from minidl.models import seed_cnn
    >>> p = Predictor(seed_cnn(num_classes=2), ["cat", "dog"], 32)
    >>> x = np.zeros((1, 3, 32, 32), np.uint8)
    >>> p.probabilities(x).shape, [name for name, _ in p.predict(x, top=2)[0]] in (
    ...     ["cat", "dog"], ["dog", "cat"])
    ((1, 2), True)
    """

    def __init__(self, model: Module, classes: Sequence[str], size: int | Sequence[int],
                 mode: str = "RGB", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        self.model = model
        self.classes = [str(c) for c in classes]
        self.size = _check_size("Predictor", size)
        self.channels = _check_mode("Predictor", mode)
        self.mode = mode
        if (mean is None) != (std is None):
            raise ValueError(f"Predictor: give mean and std together, got mean={mean!r}, "
                             f"std={std!r}")
        steps: list[Any] = [T.ToFloat()]
        if mean is not None:
            steps.append(T.Normalize(mean, std))
        self.transform = T.Compose(steps)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu") -> Predictor:
        """Rebuild the model a checkpoint describes, load its weights and put it on
        ``device``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a minidl checkpoint, no (or unusable) prediction metadata, an
                unknown architecture, or weights that do not fit it; each says which.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"predict: checkpoint {path} {what}")
        try:
            state = load(path)
        except ValueError as exc:
            raise ValueError(f"predict: {path} is not a minidl checkpoint: "
                             f"{str(exc).removeprefix('load: ')}") from None
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise ValueError(f"predict: {path} is a minidl file but holds no model weights "
                             "(no 'model' entry); give a checkpoint written by "
                             "Trainer.save_checkpoint or ModelCheckpoint")
        meta = state.get("meta")
        if meta is None:
            raise ValueError(f"predict: {path} has no prediction metadata (architecture, "
                             f"class names, input size); {_HOW_TO_GET_ONE}")
        _check_metadata(meta, f"predict: {path}")
        arch, inp = meta["model"], meta["input"]
        kwargs = dict(arch.get("kwargs", {}))
        try:
            model = build_model(arch["name"], **kwargs)
            model.load_state_dict(state["model"])
        except (KeyError, ValueError, TypeError) as exc:
            detail = str(exc.args[0] if exc.args else exc).splitlines()
            what = " ".join(line.strip() for line in detail[:2])
            raise ValueError(f"predict: the weights in {path} do not fit "
                             f"{arch['name']}({_kwargs_text(kwargs)}): {what}") from None
        model.to(device)
        return cls(model, meta["classes"], list(inp["size"]), inp.get("mode", "RGB"),
                   inp.get("mean"), inp.get("std"))

    def load_images(self, images: Any) -> np.ndarray:
        """Decode and resize ``images`` to ``uint8 (N, C, H, W)``.

        ``images``: a file path, a ``uint8`` array ``(C, H, W)`` or ``(N, C, H, W)``, or a
        list of paths and ``(C, H, W)`` arrays. Arrays of another size are resized as files
        are (bilinear).
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            if images.shape[1:] == (self.channels, *self.size) and images.dtype == np.uint8:
                return images
            items: list[Any] = list(images)
        elif isinstance(images, (str, os.PathLike, np.ndarray)):
            items = [images]
        else:
            items = list(images)
        if not items:
            raise ValueError("predict: no images given")
        out = np.empty((len(items), self.channels, *self.size), np.uint8)
        for k, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                path = Path(item).expanduser()
                if not path.is_file():
                    what = "is a folder, not an image file" if path.is_dir() else "does not exist"
                    raise FileNotFoundError(f"predict: image {path} {what}")
                out[k] = _decode("predict", path, self.size, self.mode)
            else:
                out[k] = self._array_image(item, k)
        return out

    def _array_image(self, item: Any, k: int) -> np.ndarray:
        arr = np.asarray(item)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] not in (1, 3):
            raise TypeError(f"predict: image {k} is a {arr.dtype} array of shape {arr.shape}; "
                            "give uint8 pixels (C, H, W) with C = 1 or 3 (ImageFolder's "
                            "items), or file paths")
        if arr.shape == (self.channels, *self.size):
            return arr
        Image = _pil("predict")
        im = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
        h, w = self.size
        im = im.convert(self.mode).resize((w, h), Image.BILINEAR)
        return np.asarray(im, np.uint8).reshape(h, w, self.channels).transpose(2, 0, 1)

    def probabilities(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, K)`` (float64, rows sum to 1): the softmax of the
        model's logits on the preprocessed ``images`` (as ``load_images`` takes them)."""
        x = self.transform(self.load_images(images), None)
        logits = _logits(self.model, x, batch_size=batch_size).astype(np.float64)
        if logits.ndim != 2 or logits.shape[1] != len(self.classes):
            raise ValueError(f"predict: the model gives logits of shape {logits.shape} for "
                             f"{len(self.classes)} classes")
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, images: Any, top: int = 3, batch_size: int = 256
                ) -> list[list[tuple[str, float]]]:
        """The ``top`` most probable classes of each image: one list per image of
        ``(class name, probability)``, most probable first."""
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
            raise ValueError(f"predict: top must be a positive int, got {top!r}")
        probs = self.probabilities(images, batch_size)
        k = min(int(top), probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def predict(checkpoint: str | os.PathLike | Predictor, images: Any, top: int = 3,
            device: str = "cpu", batch_size: int = 256) -> list[list[tuple[str, float]]]:
    """Classify images with a checkpoint that carries prediction metadata.

    Args:
        checkpoint: a checkpoint file (``runs/cifar10/best.npz``) or a ``Predictor``.
        images: a file path, a list of paths and/or ``uint8 (C, H, W)`` arrays, or a
            ``uint8 (N, C, H, W)`` array; each is resized to the model's input size.
        top: how many classes to give per image.
        device: where the model runs (``"cpu"``, ``"cuda"``).
        batch_size: images per forward pass.

    Returns:
        For each image, ``[(class name, probability), ...]``, most probable first.

    Raises:
        FileNotFoundError: a missing checkpoint or image file.
        ValueError: a file that is not a minidl checkpoint or has no prediction metadata,
            an unknown architecture; ``DataFormatError`` (a ``ValueError``) for an image
            that cannot be decoded. Each message names the file.

    >>> import tempfile, pathlib, minidl
    >>> from minidl.models import seed_cnn
    >>> from minidl.train import Trainer
    >>> model = seed_cnn(num_classes=2)
    >>> meta = prediction_metadata("seed_cnn", ["cat", "dog"], 32,
    ...                            model_kwargs={"num_classes": 2})
    >>> trainer = Trainer(model, minidl.optim.SGD(model.parameters(), lr=0.1), metadata=meta)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "ckpt.npz"
    >>> trainer.save_checkpoint(path)
    >>> (best, p), second = predict(path, np.zeros((3, 32, 32), np.uint8), top=2)[0]
    >>> best in ("cat", "dog") and 0.5 <= p <= 1
    True
    """
    predictor = checkpoint if isinstance(checkpoint, Predictor) else \
        Predictor.from_checkpoint(checkpoint, device=device)
    return predictor.predict(images, top=top, batch_size=batch_size)
