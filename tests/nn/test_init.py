"""The structural initializers of ``minidl.nn.init``: ``dirac_`` (identity filters, checked
by convolving) and ``patch_whitening_`` (checked through the statistics of the whitened
patches, against a patch covariance computed here by an explicit loop)."""

from __future__ import annotations

import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl.nn import init


def _patches_by_loop(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Every kh x kw patch of (N, C, H, W) images, flattened in (C, KH, KW) order."""
    n, c, h, w = x.shape
    rows = [x[i, :, r:r + kh, s:s + kw].reshape(-1)
            for i in range(n) for r in range(h - kh + 1) for s in range(w - kw + 1)]
    return np.array(rows)


def _images(rng: np.random.Generator, shape=(6, 3, 9, 8)) -> np.ndarray:
    # correlated channels and neighbouring pixels (like real images), not white noise
    x = rng.normal(size=shape)
    if shape[1] > 1:
        x[:, 1] += 0.8 * x[:, 0]
    x[:, :, 1:] += 0.6 * x[:, :, :-1]
    return x + 0.3


# ------------------------------------------------------------------------------ dirac_


@pytest.mark.parametrize("shape", [(4, 4, 3, 3), (6, 4, 3, 3), (3, 5, 5, 5), (4, 4, 2, 2)])
def test_dirac_conv_copies_the_first_channels(shape, rng) -> None:
    w = init.dirac_(minidl.tensor(rng.normal(size=shape)))
    cout, cin, kh, kw = shape
    k = min(cout, cin)
    assert w.numpy().sum() == k and np.count_nonzero(w.numpy()) == k
    x = rng.normal(size=(2, cin, 7, 7))
    # the centre tap is K // 2 (PyTorch's): with padding P = (K - 1) // 2 output pixel i
    # copies input pixel i + K // 2 - P, i.e. i itself for odd K and i + 1 for even K
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    y = F.conv2d(minidl.tensor(x), w, padding=(ph, pw)).numpy()
    oh, ow = y.shape[2:]
    dh, dw = kh // 2 - ph, kw // 2 - pw
    np.testing.assert_array_equal(y[:, :k], x[:, :k, dh:dh + oh, dw:dw + ow])
    np.testing.assert_array_equal(y[:, k:], 0)


def test_dirac_groups_and_other_ranks() -> None:
    w = init.dirac_(minidl.ones(4, 1, 3), groups=4).numpy()  # depthwise conv1d
    assert w[:, 0, 1].tolist() == [1.0] * 4 and w.sum() == 4
    w = init.dirac_(minidl.ones(6, 2, 3, 3), groups=2).numpy()
    ones = sorted(tuple(int(i) for i in idx) for idx in zip(*np.nonzero(w)))
    assert ones == [(0, 0, 1, 1), (1, 1, 1, 1), (3, 0, 1, 1), (4, 1, 1, 1)]
    w = init.dirac_(minidl.ones(2, 2, 3, 3, 3))
    assert w.numpy()[1, 1, 1, 1, 1] == 1 and w.numpy().sum() == 2
    w32 = init.dirac_(minidl.ones(2, 2, 3, 3))
    assert w32.dtype == np.float32


def test_dirac_errors() -> None:
    with pytest.raises(ValueError, match=r"dirac_: expected a 3-D, 4-D or 5-D conv weight"):
        init.dirac_(minidl.zeros(3, 3))
    with pytest.raises(ValueError, match=r"dirac_: groups must be a positive divisor of the 6 "
                                         r"output channels, got 4"):
        init.dirac_(minidl.zeros(6, 1, 3, 3), groups=4)
    with pytest.raises(TypeError, match="dirac_: expected a Tensor"):
        init.dirac_(np.zeros((2, 2, 3, 3)))


# ------------------------------------------------------------------------------ whitening


def test_patch_whitening_whitens_the_patches(rng) -> None:
    x = _images(rng)
    w = init.patch_whitening_(minidl.zeros(24, 3, 2, 2, dtype=np.float64), x, eps=5e-4)
    first = w.numpy()[:12]
    y = F.conv2d(minidl.tensor(x), minidl.tensor(first)).numpy()  # (N, 12, 8, 7), no bias
    coords = y.transpose(0, 2, 3, 1).reshape(-1, 12)
    got = coords.T @ coords / len(coords)
    p = _patches_by_loop(x, 2, 2)
    lam = np.linalg.eigvalsh(p.T @ p / len(p))[::-1]
    np.testing.assert_allclose(got, np.diag(lam / (lam + 5e-4)), atol=1e-10)
    assert lam[-1] > 1e-3  # a real test: the smallest direction is damped only a little
    # the filters are the eigenvectors scaled by 1 / sqrt(lambda + eps), largest first
    flat = first.reshape(12, 12)
    np.testing.assert_allclose(np.sum(flat ** 2, axis=1), 1 / (lam + 5e-4), rtol=1e-10)
    v = flat * np.sqrt(lam + 5e-4)[:, None]
    np.testing.assert_allclose((v @ (p.T @ p / len(p)) @ v.T), np.diag(lam), atol=1e-10)
    assert np.all(np.diff(lam) < 0)


def test_patch_whitening_second_half_is_the_negated_first(rng) -> None:
    w = init.patch_whitening_(minidl.zeros(24, 3, 2, 2), _images(rng)).numpy()
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w[12:], -w[:12])
    # each eigenvector's largest-magnitude entry is positive (a sign fixed for determinism)
    flat = w[:12].reshape(12, -1)
    assert np.all(flat[np.arange(12), np.abs(flat).argmax(axis=1)] > 0)


def test_patch_whitening_eps_damps_small_directions(rng) -> None:
    x = _images(rng, (4, 1, 6, 6))
    p = _patches_by_loop(x, 3, 3)
    lam = np.linalg.eigvalsh(p.T @ p / len(p))[::-1]
    for eps in (0.0, 1e-2, 10.0):
        w = init.patch_whitening_(minidl.zeros(18, 1, 3, 3, dtype=np.float64), x, eps=eps)
        norms = np.sum(w.numpy()[:9].reshape(9, -1) ** 2, axis=1)
        np.testing.assert_allclose(norms, 1 / (lam + eps), rtol=1e-9)


def test_patch_whitening_takes_tensors_ints_and_many_chunks(rng) -> None:
    # 600 images of 3x34x34 with 3x3 patches: more than one chunk of about 32 MB
    x = rng.integers(0, 256, size=(600, 3, 34, 34)).astype(np.uint8)
    a = init.patch_whitening_(minidl.zeros(54, 3, 3, 3, dtype=np.float64), x)
    b = init.patch_whitening_(minidl.zeros(54, 3, 3, 3, dtype=np.float64),
                              minidl.tensor(x.astype(np.float32)))
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)
    sub = x[:7].astype(np.float64)
    p = _patches_by_loop(sub, 3, 3)
    c = init.patch_whitening_(minidl.zeros(54, 3, 3, 3, dtype=np.float64), sub)
    lam, vec = np.linalg.eigh(p.T @ p / len(p))
    np.testing.assert_allclose(np.abs(c.numpy()[0].reshape(-1)) * np.sqrt(lam[-1] + 5e-4),
                               np.abs(vec[:, -1]), rtol=1e-8)


def test_patch_whitening_errors() -> None:
    x = np.ones((2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"patch_whitening_: weight must be a 4-D conv weight"):
        init.patch_whitening_(minidl.zeros(24, 12), x)
    with pytest.raises(ValueError, match=r"patch_whitening_: images must be \(N, C, H, W\), "
                                         r"got shape \(3, 8, 8\)"):
        init.patch_whitening_(minidl.zeros(24, 3, 2, 2), x[0])
    with pytest.raises(ValueError, match=r"patch_whitening_: images have 3 channels but weight "
                                         r"expects 1"):
        init.patch_whitening_(minidl.zeros(8, 1, 2, 2), x)
    with pytest.raises(ValueError, match=r"patch_whitening_: weight needs 2 \* C \* KH \* KW = "
                                         r"24 filters .* got 12"):
        init.patch_whitening_(minidl.zeros(12, 3, 2, 2), x)
    with pytest.raises(ValueError, match=r"hold no 9x9 patch"):
        init.patch_whitening_(minidl.zeros(486, 3, 9, 9), x)
    with pytest.raises(ValueError, match=r"hold no 2x2 patch"):
        init.patch_whitening_(minidl.zeros(24, 3, 2, 2), x[:0])
    with pytest.raises(ValueError, match=r"eps must be >= 0, got -1.0"):
        init.patch_whitening_(minidl.zeros(24, 3, 2, 2), x, eps=-1.0)
    with pytest.raises(ValueError, match=r"singular .* use eps > 0"):
        init.patch_whitening_(minidl.zeros(24, 3, 2, 2), x, eps=0.0)  # constant images
    with pytest.raises(TypeError, match=r"patch_whitening_: images must be a Tensor or an "
                                        r"array, got list"):
        init.patch_whitening_(minidl.zeros(24, 3, 2, 2), [[1.0]])
    with pytest.raises(TypeError, match=r"images must be real numbers"):
        init.patch_whitening_(minidl.zeros(24, 3, 2, 2), x.astype(np.complex128))


def test_patch_whitening_and_dirac_on_each_device(device, rng) -> None:
    x = _images(rng)
    cpu = init.patch_whitening_(minidl.zeros(24, 3, 2, 2), x)
    w = minidl.zeros(24, 3, 2, 2).to(device)
    init.patch_whitening_(w, minidl.tensor(x.astype(np.float32)).to(device))
    assert w.device == minidl.backend.Device(device)
    np.testing.assert_allclose(minidl.backend.to_numpy(w.data), cpu.numpy(), rtol=1e-5,
                               atol=1e-6)
    d = init.dirac_(minidl.ones(2, 2, 3, 3).to(device))
    assert float(minidl.backend.to_numpy(d.data).sum()) == 2.0
