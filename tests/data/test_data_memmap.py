"""Memmap datasets: round trip, shuffled batch reads in the asked order, bounded memory when
writing and reading, atomic writes, converters (CIFAR-10, image folders), corrupt folders."""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from minidl.data import (
    DataFormatError,
    DataLoader,
    DatasetNotFoundError,
    MemmapDataset,
    convert_cifar10,
    convert_image_folder,
    write_memmap_dataset,
)


def _data(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8),
            rng.integers(0, 4, n).astype(np.int64))


def test_round_trip_and_batch_order(tmp_path):
    x, y = _data()
    out = write_memmap_dataset(tmp_path / "ds", x, y, ["a", "b", "c", "d"], chunk_size=7)
    ds = MemmapDataset(out)
    assert len(ds) == 50 and ds.classes == ["a", "b", "c", "d"]
    assert isinstance(ds.images, np.memmap) and not ds.images.flags.writeable
    np.testing.assert_array_equal(ds.images, x)
    idx = np.array([41, 3, 17, 3, 0, 49])
    bx, by = ds.get_batch(idx)
    np.testing.assert_array_equal(bx, x[idx])
    np.testing.assert_array_equal(by, y[idx])
    assert by.dtype == np.int64 and bx.flags.writeable
    for idx in ([5, 6, 7, 8], [8, 7, 6, 5], [0, 1, 2, 30, 31, 29, 49], [], [-0]):
        bx, by = ds.get_batch(np.array(idx, dtype=np.int64))
        np.testing.assert_array_equal(bx, x[idx])
        np.testing.assert_array_equal(by, y[idx])
    with pytest.raises(IndexError, match="0..49"):
        ds.get_batch(np.array([3, 50]))
    np.testing.assert_array_equal(ds[-1][0], x[-1])
    ix, iy = ds[17]
    np.testing.assert_array_equal(ix, x[17])
    assert iy == y[17]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_samples"] == 50 and meta["image_shape"] == [3, 8, 8]


def test_loader_over_memmap_equals_in_memory(tmp_path):
    x, y = _data()
    ds = MemmapDataset(write_memmap_dataset(tmp_path / "ds", x, y))
    kw = dict(batch_size=8, shuffle=True, seed=5, as_tensor=False)
    for (a, b), (c, d) in zip(DataLoader(ds, prefetch=2, **kw), DataLoader((x, y), **kw)):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def _rss_file_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def test_bounded_memory_write_and_read(tmp_path):
    n = 8192  # 8192 x 3 x 32 x 32 uint8 = 24 MiB on disk
    src = np.lib.format.open_memmap(tmp_path / "src.npy", "w+", np.uint8, (n, 3, 32, 32))
    src[:] = 7
    src.flush()
    labels = np.zeros(n, np.int64)
    tracemalloc.start()
    try:
        out = write_memmap_dataset(tmp_path / "ds", src, labels, chunk_size=256)
        _, peak_write = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        ds = MemmapDataset(out)
        before = _rss_file_kib()
        max_rss_file = 0
        for bx, _ in DataLoader(ds, batch_size=128, shuffle=True, seed=0, as_tensor=False):
            assert bx[0, 0, 0, 0] == 7
            now = _rss_file_kib()
            if now is not None:
                max_rss_file = max(max_rss_file, now - before)
        _, peak_read = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    file_mib = (tmp_path / "ds" / "images.npy").stat().st_size / 2**20
    assert file_mib > 23
    assert peak_write < 4 * 2**20, f"writing peaked at {peak_write / 2**20:.1f} MiB"
    assert peak_read < 4 * 2**20, f"reading peaked at {peak_read / 2**20:.1f} MiB"
    if before is not None:
        # Mapped file pages are released every 2 MiB read: far below the 24 MiB file.
        assert max_rss_file < 12 * 1024, f"file-backed RSS grew by {max_rss_file} KiB"


def test_write_is_atomic_on_failure(tmp_path):
    class Exploding:
        shape, dtype = (10, 1, 2, 2), np.dtype(np.uint8)

        def __getitem__(self, s):
            if s.start >= 4:
                raise RuntimeError("disk on fire")
            return np.zeros((s.stop - s.start, 1, 2, 2), np.uint8)

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_memmap_dataset(tmp_path / "ds", Exploding(), np.zeros(10, np.int64), chunk_size=4)
    assert list(tmp_path.iterdir()) == []


def test_overwrite(tmp_path):
    x, y = _data()
    write_memmap_dataset(tmp_path / "ds", x, y)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_memmap_dataset(tmp_path / "ds", x[:5], y[:5])
    write_memmap_dataset(tmp_path / "ds", x[:5], y[:5], overwrite=True)
    assert len(MemmapDataset(tmp_path / "ds")) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_write_validates_labels(tmp_path):
    x, y = _data()
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.1"):
        write_memmap_dataset(tmp_path / "ds", x, y, ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        write_memmap_dataset(tmp_path / "ds", x, y[:3])
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_missing_folders(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="meta.json"):
        MemmapDataset(tmp_path)
    x, y = _data()
    out = write_memmap_dataset(tmp_path / "ds", x, y)
    images = out / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match="images.npy"):
        MemmapDataset(out)
    out = write_memmap_dataset(tmp_path / "ds2", x, y)
    meta = json.loads((out / "meta.json").read_text())
    meta["num_samples"] = 51
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataFormatError, match=r"images\.npy has shape"):
        MemmapDataset(out)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        MemmapDataset(out)


def test_convert_cifar10(cifar, tmp_path):
    cifar.write_folder(tmp_path / "raw", "python")
    out = convert_cifar10(tmp_path / "mm", tmp_path / "raw", train=True)
    ds = MemmapDataset(out)
    np.testing.assert_array_equal(ds.images, cifar.train[0])
    np.testing.assert_array_equal(ds.labels, cifar.train[1])
    assert ds.classes[0] == "airplane"


def test_convert_image_folder(tmp_path):
    image = pytest.importorskip("PIL.Image")
    colors = {"cats": (255, 0, 0), "dogs": (0, 0, 255)}
    for name, color in colors.items():
        (tmp_path / "src" / name).mkdir(parents=True)
        for k in range(3):
            image.new("RGB", (12 + k, 9), color).save(tmp_path / "src" / name / f"{k}.png")
    (tmp_path / "src" / "dogs" / "notes.txt").write_text("not an image")
    out = convert_image_folder(tmp_path / "src", tmp_path / "mm", size=(6, 5), chunk_size=2)
    ds = MemmapDataset(out)
    assert ds.classes == ["cats", "dogs"]
    assert ds.images.shape == (6, 3, 6, 5)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.images[0, :, 2, 2].tolist() == [255, 0, 0]
    assert ds.images[5, :, 2, 2].tolist() == [0, 0, 255]
    grey = MemmapDataset(convert_image_folder(tmp_path / "src", tmp_path / "g", 4, mode="L"))
    assert grey.images.shape == (6, 1, 4, 4)


def test_convert_image_folder_errors(tmp_path, monkeypatch):
    pytest.importorskip("PIL.Image")
    (tmp_path / "src" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no images"):
        convert_image_folder(tmp_path / "src", tmp_path / "mm")
    bad = tmp_path / "src" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataFormatError, match="broken.png"):
        convert_image_folder(tmp_path / "src", tmp_path / "mm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        convert_image_folder(tmp_path / "src", tmp_path / "mm")
