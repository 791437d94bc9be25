"""Batch transforms against plain per-image loop references: shapes, dtypes (float32 stays
float32), flip/crop/cutout correctness, padding modes, determinism given the rng, errors."""

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
                               T.RandomHorizontalFlip(), T.Cutout(2)])
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
