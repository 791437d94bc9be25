"""Batch transforms against plain per-image loop references: shapes, dtypes (float32 stays
float32), flip/crop/cutout correctness, padding modes, determinism given the rng, errors;
RandomCrop as a reflect-padded translation (values, offset distribution, independence);
AlternatingFlip (two-epoch complement, batch-order independence, BatchInfo protocol)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl.data import transforms as T


def _batch(n=6, c=3, h=8, w=7, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, c, h, w))
    return x.astype(dtype) if dtype == np.uint8 else (x / 255).astype(dtype)


def test_to_float():
    x = _batch()
    out = T.ToFloat()(x, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, x / 255.0, rtol=1e-6)
    assert out.min() >= 0 and out.max() <= 1
    f64 = T.ToFloat()(x.astype(np.float64))
    assert f64.dtype == np.float32
    with pytest.raises(TypeError, match="ToFloat.*int32"):
        T.ToFloat()(x.astype(np.int32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_keeps_dtype_and_is_per_channel(dtype):
    x = _batch(dtype=dtype)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    out = T.Normalize(mean, std)(x, None)
    assert out.dtype == dtype
    ref = (x - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_normalize_errors():
    with pytest.raises(ValueError, match=r"Normalize: input has 1 channels but mean/std have 3"):
        T.Normalize([0.5] * 3, [0.5] * 3)(np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(TypeError, match="ToFloat first"):
        T.Normalize([0.5], [0.5])(np.zeros((2, 1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="std must be > 0"):
        T.Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="equal length"):
        T.Normalize([0.5, 0.5], [1.0])


def _flip_reference(x, rng, p):
    chosen = rng.random(len(x)) < p
    out = x.copy()
    for i in range(len(x)):
        if chosen[i]:
            for col in range(x.shape[3]):
                out[i, :, :, col] = x[i, :, :, x.shape[3] - 1 - col]
    return out


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_flip_matches_loop_reference(p, dtype):
    x = _batch(n=16, dtype=dtype)
    out = T.RandomHorizontalFlip(p)(x, np.random.default_rng(4))
    ref = _flip_reference(x, np.random.default_rng(4), p)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, ref)
    assert out is not x


def _crop_reference(x, rng, size, pad, mode, fill):
    n, _, h, w = x.shape
    th, tw = size
    top = rng.integers(0, h + 2 * pad - th + 1, size=n)
    left = rng.integers(0, w + 2 * pad - tw + 1, size=n)
    out = np.empty((n, x.shape[1], th, tw), x.dtype)
    for i in range(n):
        img = x[i]
        if pad:
            kw = {"constant_values": fill} if mode == "constant" else {}
            img = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode=mode, **kw)
        out[i] = img[:, top[i]:top[i] + th, left[i]:left[i] + tw]
    return out


@pytest.mark.parametrize("mode", ["constant", "reflect"])
@pytest.mark.parametrize("size, pad", [((8, 7), 2), ((5, 4), 0), ((6, 6), 3), ((10, 9), 1)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_crop_matches_loop_reference(mode, size, pad, dtype):
    x = _batch(n=9, dtype=dtype)
    fill = 7
    t = T.RandomCrop(size, padding=pad, padding_mode=mode, fill=fill)
    out = t(x, np.random.default_rng(1))
    assert out.shape == (9, 3, *size) and out.dtype == dtype
    ref = _crop_reference(x, np.random.default_rng(1), size, pad, mode, fill)
    np.testing.assert_array_equal(out, ref)


def test_crop_padding_modes_differ_at_border():
    x = np.ones((1, 1, 4, 4), np.float32)
    const = T.RandomCrop(6, padding=1)(x, np.random.default_rng(0))
    refl = T.RandomCrop(6, padding=1, padding_mode="reflect")(x, np.random.default_rng(0))
    assert const[0, 0, 0, 0] == 0 and refl[0, 0, 0, 0] == 1


def test_crop_errors():
    x = _batch(h=4, w=4)
    with pytest.raises(ValueError, match="larger than the padded image"):
        T.RandomCrop(9, padding=2)(x)
    with pytest.raises(ValueError, match="reflect padding"):
        T.RandomCrop(4, padding=4, padding_mode="reflect")(x)
    with pytest.raises(ValueError, match="padding_mode"):
        T.RandomCrop(4, padding_mode="edge")
    with pytest.raises(TypeError, match="size"):
        T.RandomCrop("4")


def _cutout_reference(x, rng, size, p):
    n, _, h, w = x.shape
    cy = rng.integers(0, h, size=n)
    cx = rng.integers(0, w, size=n)
    apply = rng.random(n) < p
    out = x.copy()
    for i in range(n):
        if apply[i]:
            y0, x0 = max(cy[i] - size // 2, 0), max(cx[i] - size // 2, 0)
            y1, x1 = min(cy[i] - size // 2 + size, h), min(cx[i] - size // 2 + size, w)
            out[i, :, y0:y1, x0:x1] = 0
    return out


@pytest.mark.parametrize("size, p", [(1, 1.0), (3, 1.0), (4, 0.5), (20, 1.0)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_cutout_matches_loop_reference(size, p, dtype):
    x = _batch(n=12, dtype=dtype) + (1 if dtype == np.uint8 else 0.01)  # no zeros inside
    x = x.astype(dtype)
    out = T.Cutout(size, p=p)(x, np.random.default_rng(2))
    assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_array_equal(out, _cutout_reference(x, np.random.default_rng(2), size, p))


def test_compose_deterministic_given_rng_and_float32_throughout():
    t = T.Compose([
        T.RandomCrop(8, padding=2, padding_mode="reflect"),
        T.RandomHorizontalFlip(),
        T.ToFloat(),
        T.Normalize([0.49, 0.48, 0.45], [0.25, 0.24, 0.26]),
        T.Cutout(3),
    ])
    x = _batch(w=8)
    a = t(x, np.random.default_rng(9))
    b = t(x, np.random.default_rng(9))
    c = t(x, np.random.default_rng(10))
    assert a.dtype == np.float32 and a.shape == (6, 3, 8, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert "RandomCrop" in repr(t)


@pytest.mark.parametrize("t", [T.ToFloat(), T.Normalize([0.5], [0.5]), T.RandomCrop(2),
                               T.RandomHorizontalFlip(), T.Cutout(2), T.AlternatingFlip()])
def test_wrong_rank_is_a_clear_error(t):
    name = type(t).__name__
    with pytest.raises(ValueError, match=rf"{name}: expected a batch of images of shape "
                                         r"\(N, C, H, W\), got shape \(32, 32, 3\)"):
        t(np.zeros((32, 32, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(TypeError, match=name):
        t([[1, 2]], np.random.default_rng(0))


def test_argument_validation():
    with pytest.raises(ValueError, match="RandomHorizontalFlip: p"):
        T.RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError, match="Cutout: size"):
        T.Cutout(0)
    with pytest.raises(TypeError, match="Compose: transform 1"):
        T.Compose([T.ToFloat(), 3])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       pad=st.integers(0, 3), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_crop_property_any_shape(n, c, h, w, pad, data, seed):
    mode = "reflect" if pad < min(h, w) and data.draw(st.booleans()) else "constant"
    size = (data.draw(st.integers(1, h + 2 * pad)), data.draw(st.integers(1, w + 2 * pad)))
    x = _batch(n=n, c=c, h=h, w=w, seed=seed % 1000)
    out = T.RandomCrop(size, padding=pad, padding_mode=mode)(x, np.random.default_rng(seed))
    ref = _crop_reference(x, np.random.default_rng(seed), size, pad, mode, 0)
    np.testing.assert_array_equal(out, ref)


# ------------------------------------------------- RandomCrop as a translation (airbench)


def test_reflect_translation_values_by_hand_and_against_np_pad():
    row = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4)
    padded = np.pad(row, ((0, 0), (0, 0), (0, 0), (2, 2)), mode="reflect")
    assert padded.ravel().tolist() == [2, 1, 0, 1, 2, 3, 2, 1]  # no repeated edge pixel
    windows = {tuple(padded[0, 0, 0, k:k + 4].tolist()) for k in range(5)}
    assert windows == {(2, 1, 0, 1), (1, 0, 1, 2), (0, 1, 2, 3), (1, 2, 3, 2), (2, 3, 2, 1)}
    t = T.RandomCrop((1, 4), padding=(0, 2), padding_mode="reflect")
    out = t(np.repeat(row, 200, axis=0), np.random.default_rng(0))
    assert {tuple(r) for r in out[:, 0, 0].tolist()} == windows  # every shift, nothing else


def _offsets(out, img, pad):
    """(top, left) of each output window inside np.pad(img, pad, 'reflect'); -1 if none."""
    h, w = img.shape[-2:]
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    found = np.full((len(out), 2), -1)
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            hit = (out == padded[:, top:top + h, left:left + w]).all(axis=(1, 2, 3))
            found[hit] = (top, left)
    return found


def test_translation_offsets_cover_every_shift_uniformly_and_independently():
    pad, n = 2, 5000
    img = np.random.default_rng(0).random((3, 6, 6)).astype(np.float32)  # distinct windows
    out = T.RandomCrop(6, padding=pad, padding_mode="reflect")(
        np.repeat(img[None], n, axis=0), np.random.default_rng(1))
    found = _offsets(out, img, pad)
    assert (found >= 0).all()  # each output is exactly one window of np.pad(reflect)
    counts = np.zeros((5, 5), int)
    np.add.at(counts, (found[:, 0], found[:, 1]), 1)
    # all 25 (top, left) pairs occur, each 1/25 of the time (5 sd): top and left are drawn
    # independently per image, not once per batch or tied to each other
    expected = n / 25
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    # consecutive images are independent: the pair (offset of i, offset of i+1) is uniform
    # over all 25 x 25 combinations rather than concentrated on the diagonal
    code = found[:, 0] * 5 + found[:, 1]
    assert np.mean(code[1:] == code[:-1]) < 2 / 25


def test_translation_is_reproducible_from_the_seed():
    x = _batch(n=32, h=6, w=6, dtype=np.float32)
    t = T.RandomCrop(6, padding=2, padding_mode="reflect")
    a, b = t(x, np.random.default_rng(5)), t(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, t(x, np.random.default_rng(6)))
    assert a.dtype == np.float32 and a.shape == x.shape


def test_translation_errors():
    x = _batch(h=4, w=4)
    with pytest.raises(ValueError, match="RandomCrop: padding must be >= 0"):
        T.RandomCrop(4, padding=-1)
    with pytest.raises(TypeError, match="RandomCrop: padding must be an int"):
        T.RandomCrop(4, padding=1.5)
    with pytest.raises(ValueError, match="RandomCrop: padding_mode must be"):
        T.RandomCrop(4, padding=2, padding_mode="mirror")
    with pytest.raises(ValueError, match=r"RandomCrop: reflect padding \(4, 4\) must be "
                                         r"smaller than the image \(4x4\)"):
        T.RandomCrop(4, padding=4, padding_mode="reflect")(x)


# ------------------------------------------------------------------------ AlternatingFlip


def test_alternating_flip_each_index_flipped_once_every_two_epochs():
    t = T.AlternatingFlip()
    idx = np.arange(4000)
    flips = np.stack([t.flipped(idx, epoch=e, seed=3) for e in range(6)])
    for e in range(5):
        assert (flips[e] ^ flips[e + 1]).all()  # complement: exactly once in any two epochs
    np.testing.assert_array_equal(flips[0], flips[2])
    np.testing.assert_array_equal(flips[1], flips[5])
    # epoch 0 flips a random half: each index with probability 1/2 (5 sd)
    assert abs(flips[0].mean() - 0.5) < 5 * np.sqrt(0.25 / len(idx))
    assert not np.array_equal(flips[0], t.flipped(idx, epoch=0, seed=4))


def test_alternating_flip_depends_only_on_seed_epoch_and_index():
    full = T.AlternatingFlip().flipped(np.arange(3000), epoch=1, seed=7)
    t = T.AlternatingFlip()  # grows its cached mask from small to large indices
    perm = np.random.default_rng(0).permutation(3000)
    for chunk in np.array_split(perm, 7):
        np.testing.assert_array_equal(t.flipped(chunk, epoch=1, seed=7), full[chunk])
    assert t.flipped(np.array([], np.int64), 0, 7).shape == (0,)
    # switching seeds and back gives the same masks
    t.flipped(np.arange(10), 0, seed=8)
    np.testing.assert_array_equal(t.flipped(np.arange(3000), 1, seed=7), full)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_alternating_flip_flips_exactly_the_marked_images(dtype):
    x = _batch(n=10, dtype=dtype)
    keep = x.copy()
    idx = np.array([9, 3, 0, 12, 5, 7, 1, 2, 8, 4])
    t = T.AlternatingFlip()
    for epoch in (0, 1):
        out = t(x, np.random.default_rng(0), info=T.BatchInfo(idx, epoch, 11))
        marked = t.flipped(idx, epoch, 11)
        assert out.dtype == dtype and out is not x
        for i in range(len(x)):
            np.testing.assert_array_equal(out[i], x[i, :, :, ::-1] if marked[i] else x[i])
    np.testing.assert_array_equal(x, keep)  # input untouched


def test_compose_hands_batch_info_only_to_transforms_that_ask():
    x = _batch(n=8, h=6, w=6)
    info = T.BatchInfo(np.arange(8), epoch=0, seed=2)
    crop, flip, cut = T.RandomCrop(6, padding=1), T.AlternatingFlip(), T.Cutout(2)
    composed = T.Compose([crop, flip, cut])
    assert composed.uses_batch_info and not T.Compose([crop, cut]).uses_batch_info
    rng = np.random.default_rng(4)
    ref = cut(flip(crop(x, rng), rng, info=info), rng)  # flip draws nothing from rng
    np.testing.assert_array_equal(composed(x, np.random.default_rng(4), info=info), ref)
    # without AlternatingFlip, Compose ignores info and behaves as before
    plain = T.Compose([crop, cut])
    np.testing.assert_array_equal(plain(x, np.random.default_rng(4), info=info),
                                  plain(x, np.random.default_rng(4)))


def test_alternating_flip_errors():
    t = T.AlternatingFlip()
    x = _batch(n=3)
    with pytest.raises(TypeError, match=r"AlternatingFlip: needs info=BatchInfo"):
        t(x, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"AlternatingFlip: needs info=BatchInfo"):
        T.Compose([t])(x, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"info.indices has shape \(2,\) but the batch has 3"):
        t(x, info=T.BatchInfo(np.arange(2), 0, 0))
    with pytest.raises(ValueError, match="AlternatingFlip: epoch must be an int >= 0"):
        t.flipped(np.arange(3), -1, 0)
    with pytest.raises(ValueError, match="AlternatingFlip: seed must be an int >= 0"):
        t.flipped(np.arange(3), 0, True)
    with pytest.raises(ValueError, match="AlternatingFlip: indices must be >= 0"):
        t.flipped(np.array([0, -2]), 0, 0)
    with pytest.raises(ValueError, match="AlternatingFlip: indices must be a 1-D array of int"):
        t.flipped(np.array([0.0, 1.0]), 0, 0)
    with pytest.raises(ValueError, match="AlternatingFlip: indices must be a 1-D array of int"):
        t.flipped(np.zeros((2, 2), np.int64), 0, 0)
    assert repr(t) == "AlternatingFlip()"
