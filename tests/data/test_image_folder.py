"""Image folders: classes and labels from the folder layout, decoding and resizing (PNG,
JPEG, grey, EXIF rotation), batches through the DataLoader, the stratified split (same for
the same seed, each class split by the same fraction) and the errors that name what is
wrong (folder, class folder, file, size)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from minidl.data import (
    ArrayDataset,
    DataFormatError,
    DataLoader,
    DatasetNotFoundError,
    ImageFolder,
    MemmapDataset,
    Subset,
    convert_image_folder,
    load_image,
    train_val_split,
    write_memmap_dataset,
)

Image = pytest.importorskip("PIL.Image")

COLORS = {"apple": (250, 10, 10), "leaf": (10, 250, 10), "sky": (10, 10, 250)}


def make_folder(root: Path, counts: dict[str, int] | None = None,
                colors: dict[str, tuple[int, int, int]] = COLORS) -> Path:
    """``root/<class>/<k>.png|jpg``: flat-coloured images of varied sizes, alternately PNG
    and JPEG."""
    counts = counts or dict.fromkeys(colors, 4)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            suffix = "png" if k % 2 == 0 else "jpg"
            Image.new("RGB", (20 + 3 * k, 12 + k), colors[name]).save(root / name / f"{k}.{suffix}")
    return root


def test_classes_labels_and_files_come_from_the_layout(tmp_path):
    root = make_folder(tmp_path / "photos")
    (root / "sky" / "notes.txt").write_text("not an image")     # skipped: not an image suffix
    (root / ".ipynb_checkpoints").mkdir()                        # skipped: hidden
    (root / "leaf" / "nested").mkdir()                           # sub-sub-folders are ignored
    Image.new("RGB", (5, 5)).save(root / "leaf" / "nested" / "x.png")
    Image.new("RGB", (5, 5), COLORS["sky"]).save(root / "sky" / "UPPER.PNG")  # case-insensitive
    ds = ImageFolder(root, size=16)
    assert ds.classes == ["apple", "leaf", "sky"]
    assert ds.class_to_idx == {"apple": 0, "leaf": 1, "sky": 2}
    assert len(ds) == 13 and ds.targets.dtype == np.int64
    assert ds.targets.tolist() == [0] * 4 + [1] * 4 + [2] * 5
    assert [f.name for f in ds.files[8:]] == ["0.png", "1.jpg", "2.png", "3.jpg", "UPPER.PNG"]
    assert ds.image_shape == (3, 16, 16)
    assert "ImageFolder(" in repr(ds) and "classes=3" in repr(ds)


def test_items_are_uint8_chw_resized_to_the_size(tmp_path):
    ds = ImageFolder(make_folder(tmp_path), size=(10, 14))
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 10, 14) and x.dtype == np.uint8 and y.dtype == np.int64
        want = np.array(COLORS[ds.classes[int(y)]])
        # PNG is exact; JPEG of a flat colour is within a few levels
        tol = 0 if ds.files[i].suffix == ".png" else 6
        assert np.abs(x.astype(int) - want[:, None, None]).max() <= tol, ds.files[i]
    assert np.array_equal(ds[-1][0], ds[len(ds) - 1][0])
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
    grey = ImageFolder(tmp_path, size=8, mode="L")
    gx, _ = grey[0]
    assert gx.shape == (1, 8, 8)
    # ITU-R 601-2 luma of (250, 10, 10), as Pillow's convert("L") computes it
    assert abs(int(gx[0, 0, 0]) - round(250 * 0.299 + 10 * 0.587 + 10 * 0.114)) <= 1


def test_exif_rotation_is_undone(tmp_path):
    """A camera stores a portrait photo sideways plus an Orientation tag; decoding turns it
    upright, as every photo viewer does."""
    (tmp_path / "c").mkdir()
    stored = np.zeros((32, 32, 3), np.uint8)
    stored[:16] = (255, 0, 0)           # top half red, bottom half blue, as stored
    stored[16:] = (0, 0, 255)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6                    # Orientation 6: the stored top row is the right side
    im.save(tmp_path / "c" / "photo.jpg", exif=exif, quality=95)
    x = load_image(tmp_path / "c" / "photo.jpg", size=32)
    assert x[0, 16, 28] > 200 and x[2, 16, 28] < 60     # right: red
    assert x[2, 16, 3] > 200 and x[0, 16, 3] < 60       # left: blue
    assert np.array_equal(ImageFolder(tmp_path, size=32)[0][0], x)


def test_big_jpegs_shrink_smoothly(tmp_path):
    """Large JPEGs decode at a reduced scale (Pillow's draft) before the resize: the result
    stays close to decoding in full and resizing."""
    (tmp_path / "c").mkdir()
    rng = np.random.default_rng(0)
    big = np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3)), 64, 0), 64, 1).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "c" / "big.jpg", quality=95)
    x = load_image(tmp_path / "c" / "big.jpg", size=32).astype(int)
    with Image.open(tmp_path / "c" / "big.jpg") as im:
        full = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.abs(x - full).mean() < 3


def test_get_batch_and_dataloader(tmp_path):
    ds = ImageFolder(make_folder(tmp_path, {"apple": 5, "leaf": 3, "sky": 4}), size=8)
    idx = np.array([11, 0, 5])
    bx, by = ds.get_batch(idx)
    assert bx.shape == (3, 3, 8, 8) and bx.dtype == np.uint8
    assert by.tolist() == [2, 0, 1]
    for k, i in enumerate(idx):
        assert np.array_equal(bx[k], ds[int(i)][0])
    with pytest.raises(IndexError, match="indices must be in"):
        ds.get_batch(np.array([0, 12]))

    loader = DataLoader(ds, batch_size=5, shuffle=True, seed=3, prefetch=2, as_tensor=False)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [5, 5, 2]
    assert sorted(np.concatenate([y for _, y in batches]).tolist()) == ds.targets.tolist()
    again = list(DataLoader(ds, batch_size=5, shuffle=True, seed=3, as_tensor=False))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))

    train, val = train_val_split(ds, 0.25, seed=0)
    seen = np.concatenate([y.data for _, y in DataLoader(train, batch_size=4, shuffle=True,
                                                         seed=0)])
    assert sorted(seen.tolist()) == sorted(train.targets.tolist())
    vx, vy = next(iter(DataLoader(val, batch_size=len(val), as_tensor=False)))
    assert np.array_equal(vx, ds.get_batch(val.indices)[0])
    assert val.classes == ds.classes


def test_split_is_stratified_disjoint_and_deterministic(tmp_path):
    labels = np.repeat(np.arange(4), [40, 20, 10, 3])
    ds = ArrayDataset(np.zeros((len(labels), 1)), labels)
    train, val = train_val_split(ds, 0.2, seed=7)
    assert len(val) == 15 and len(train) == 58          # 0.2 * 73 = 14.6 -> 15
    assert np.bincount(val.targets, minlength=4).tolist() == [8, 4, 2, 1]
    both = np.concatenate([train.indices, val.indices])
    assert sorted(both.tolist()) == list(range(len(labels)))   # a partition
    assert np.all(np.diff(train.indices) > 0) and np.all(np.diff(val.indices) > 0)
    # same arguments, same split; another seed, another choice within each class
    assert np.array_equal(train_val_split(ds, 0.2, seed=7)[1].indices, val.indices)
    other = train_val_split(ds, 0.2, seed=8)[1]
    assert not np.array_equal(other.indices, val.indices)
    assert np.bincount(other.targets, minlength=4).tolist() == [8, 4, 2, 1]
    # without stratification: the same size, drawn from the whole
    plain = train_val_split(ds, 0.2, seed=7, stratify=False)[1]
    assert len(plain) == 15


def test_split_keeps_a_training_image_of_every_class(tmp_path):
    labels = np.array([0, 1, 1, 2, 2, 2, 2, 2, 2, 2])
    train, val = train_val_split(ArrayDataset(np.zeros(10), labels), 0.5, seed=0)
    assert set(train.targets.tolist()) == {0, 1, 2}
    assert np.bincount(val.targets, minlength=3)[0] == 0 and len(val) == 5
    ds = ImageFolder(make_folder(tmp_path, {"apple": 2, "leaf": 2, "sky": 2}), size=4)
    train, val = train_val_split(ds, 0.1, seed=0)              # at least one image held out
    assert len(val) == 1 and len(train) == 5


def test_split_over_memmap_and_errors(tmp_path):
    x = np.zeros((12, 1, 2, 2), np.uint8)
    out = write_memmap_dataset(tmp_path / "mm", x, np.arange(12) % 3, ["a", "b", "c"])
    with MemmapDataset(out) as mm:
        train, val = train_val_split(mm, 0.25, seed=0)
        assert np.bincount(val.targets).tolist() == [1, 1, 1]
        assert val.get_batch(np.array([0, 2]))[0].shape == (2, 1, 2, 2)
    ds = ArrayDataset(np.zeros(10), np.arange(10) % 2)
    for bad in (0, 0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
            train_val_split(ds, bad)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        train_val_split(ds, 0.5, seed=-1)
    with pytest.raises(ValueError, match="both need at least one"):
        train_val_split(ArrayDataset(np.zeros(2), np.array([0, 1])), 0.5)
    with pytest.raises(TypeError, match="pass stratify=False"):
        train_val_split(ArrayDataset(np.zeros(10)), 0.5)
    assert len(train_val_split(ArrayDataset(np.zeros(10)), 0.5, stratify=False)[1]) == 5
    with pytest.raises(IndexError, match="indices must be in 0..9"):
        Subset(ds, [3, 10])


def test_convert_image_folder_decodes_as_image_folder_does(tmp_path):
    root = make_folder(tmp_path / "src")
    ds = ImageFolder(root, size=(6, 9))
    with MemmapDataset(convert_image_folder(root, tmp_path / "mm", size=(6, 9))) as mm:
        assert mm.classes == ds.classes
        np.testing.assert_array_equal(mm.labels, ds.targets)
        np.testing.assert_array_equal(mm.images, ds.get_batch(np.arange(len(ds)))[0])


def test_errors_name_what_is_wrong(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="missing does not exist"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        ImageFolder(tmp_path / "file.png")
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in range(3):
        Image.new("RGB", (4, 4)).save(flat / f"{k}.png")
    with pytest.raises(DatasetNotFoundError, match=r"no class folders in .*flat \(it holds 3 "
                                                   r"image file\(s\) directly\)"):
        ImageFolder(flat)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetNotFoundError, match="no images .* in the class folders"):
        ImageFolder(empty)
    root = make_folder(tmp_path / "ok", {"apple": 2, "leaf": 2})
    (root / "sky").mkdir()
    with pytest.raises(DatasetNotFoundError, match="class folder\\(s\\) 'sky' of"):
        ImageFolder(root)
    for name in "bcdefg":   # a long list of empty folders is cut short
        (root / name).mkdir()
    with pytest.raises(DatasetNotFoundError, match="'b', 'c', 'd', 'e', 'f' and 2 more of"):
        ImageFolder(root)
    for name in "bcdefg":
        (root / name).rmdir()
    (root / "sky").rmdir()
    for size in (0, -3, (4,), (4, 0), "32", 2.5, True):
        with pytest.raises(ValueError, match="size must be"):
            ImageFolder(root, size=size)
    with pytest.raises(ValueError, match="mode must be 'RGB'"):
        ImageFolder(root, mode="RGBA")

    # An undecodable file is found when read, and named.
    (root / "leaf" / "broken.png").write_bytes(b"\x89PNG not really")
    ds = ImageFolder(root, size=8)
    broken = ds.files.index(root / "leaf" / "broken.png")
    with pytest.raises(DataFormatError, match="ImageFolder: cannot decode .*broken.png"):
        ds[broken]
    with pytest.raises(DataFormatError, match="broken.png"):
        list(DataLoader(ds, batch_size=2, prefetch=1))
    with open(root / "apple" / "1.jpg", "r+b") as f:   # a truncated JPEG
        f.truncate(40)
    with pytest.raises(DataFormatError, match="1.jpg"):
        ds[1]

    with pytest.raises(FileNotFoundError, match="nope.png does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_image(root)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        ImageFolder(root)
