"""Fixtures for the data tests: small synthetic CIFAR-10 copies in both official formats
(python pickles and binary records), as folders and as .tar.gz archives."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]
PER_BATCH, N_TEST = 6, 5


class SyntheticCifar:
    """Random CIFAR-like arrays: 5 train batches of PER_BATCH records and a test batch."""

    def __init__(self, seed: int = 0, classes: list[str] | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.classes = classes or CLASSES
        self.train_batches = [
            (rng.integers(0, 256, (PER_BATCH, 3, 32, 32), dtype=np.uint8),
             rng.integers(0, 10, PER_BATCH).astype(np.int64))
            for _ in range(5)
        ]
        self.test = (rng.integers(0, 256, (N_TEST, 3, 32, 32), dtype=np.uint8),
                     rng.integers(0, 10, N_TEST).astype(np.int64))

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([b[0] for b in self.train_batches]),
                np.concatenate([b[1] for b in self.train_batches]))

    # -- file contents in the official formats ------------------------------------------
    @staticmethod
    def binary_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
        rec = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(-1, 3072)], 1)
        return rec.tobytes()

    @staticmethod
    def python_batch(images: np.ndarray, labels: np.ndarray, protocol: int = 2) -> bytes:
        # What Python 3 sees in the official (Python 2) files: bytes keys and names, a list
        # of int labels, a (N, 3072) uint8 array.
        d = {b"batch_label": b"synthetic batch", b"labels": [int(v) for v in labels],
             b"data": images.reshape(-1, 3072), b"filenames": [b"x.png"] * len(labels)}
        return pickle.dumps(d, protocol=protocol)

    def files(self, fmt: str, protocol: int = 2) -> dict[str, bytes]:
        out = {}
        batches = self.train_batches + [self.test]
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name, (x, y) in zip(names, batches):
            if fmt == "binary":
                out[name + ".bin"] = self.binary_batch(x, y)
            else:
                out[name] = self.python_batch(x, y, protocol)
        if fmt == "binary":
            out["batches.meta.txt"] = ("\n".join(self.classes) + "\n\n").encode()
        else:
            meta = {b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072,
                    b"label_names": [c.encode() for c in self.classes]}
            out["batches.meta"] = pickle.dumps(meta, protocol=protocol)
        return out

    def write_folder(self, parent: Path, fmt: str, protocol: int = 2) -> Path:
        folder = parent / ("cifar-10-batches-bin" if fmt == "binary" else "cifar-10-batches-py")
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files(fmt, protocol).items():
            (folder / name).write_bytes(data)
        return folder

    def archive_bytes(self, fmt: str) -> bytes:
        top = "cifar-10-batches-bin" if fmt == "binary" else "cifar-10-batches-py"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo(top)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
            for name, data in sorted(self.files(fmt).items(), reverse=True):
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def write_archive(self, parent: Path, fmt: str) -> Path:
        name = "cifar-10-binary.tar.gz" if fmt == "binary" else "cifar-10-python.tar.gz"
        parent.mkdir(parents=True, exist_ok=True)
        path = parent / name
        path.write_bytes(self.archive_bytes(fmt))
        return path


@pytest.fixture(scope="session")
def cifar() -> SyntheticCifar:
    return SyntheticCifar()


@pytest.fixture(scope="session")
def cifar_factory() -> type[SyntheticCifar]:
    return SyntheticCifar


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No dataset env vars, and a private cache dir, so the user's real files are unseen."""
    for var in ("MINIDL_DATA", "MINIDL_CIFAR10_DIR", "MINIDL_MNIST_DIR",
                "MINIDL_FASHION_MNIST_DIR"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache / "minidl"
