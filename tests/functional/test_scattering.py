"""The scattering transform: against an independent reference of the same scheme (spatial
subsampling instead of spectral folding), against the full-resolution definition, its
invariances, gradient and errors."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import OpCase, check_case

import minidl
import minidl.functional as F
from minidl import nn
from minidl.functional.scattering import filter_bank, num_coefficients
from minidl.gradcheck import gradcheck


def _conv(u: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Circular convolution of images ``u`` (n, M, N) with one spatial filter (M, N)."""
    return np.fft.ifft2(np.fft.fft2(u) * np.fft.fft2(h))


def _coarse(h: np.ndarray, k: int) -> np.ndarray:
    """A spatial filter for signals sampled every ``k`` pixels: ``k**2 h[k m]``."""
    return k * k * h[::k, ::k]


def reference(x: np.ndarray, J: int = 2, L: int = 8, full: bool = False) -> np.ndarray:
    """The transform written in space: convolve, then keep every ``k``-th sample. With
    ``full`` every convolution runs at full resolution (the textbook definition)."""
    B, C, H, W = x.shape
    p = 2 ** J
    xp = np.pad(x.reshape(B * C, H, W), ((0, 0), (p, p), (p, p)), mode="reflect")
    bank = filter_bank(xp.shape[1], xp.shape[2], J, L)
    phi = np.fft.ifft2(bank["phi"][0])
    psis = [(j, np.fft.ifft2(fs[0])) for j, _, fs in bank["psi"]]

    def low(u: np.ndarray, res: int) -> np.ndarray:
        k = 2 ** (J - res)
        return _conv(u, _coarse(phi, 2 ** res)).real[:, ::k, ::k][:, 1:-1, 1:-1]

    order0, order1, order2 = [low(xp, 0)], [], []
    for j1, psi1 in psis:
        r1 = 0 if full else j1
        u = np.abs(_conv(xp, psi1))[:, :: 2 ** r1, :: 2 ** r1]
        order1.append(low(u, r1))
        for j2, psi2 in psis:
            if j2 > j1:
                r2 = 0 if full else j2
                step = 2 ** (r2 - r1)
                v = np.abs(_conv(u, _coarse(psi2, 2 ** r1)))[:, ::step, ::step]
                order2.append(low(v, r2))
    out = np.stack(order0 + order1 + order2, axis=1)
    return out.reshape(B, C * out.shape[1], *out.shape[-2:])


CASES = [
    OpCase("scattering2d", lambda x: F.scattering2d(x, J=2, L=4), lambda x: reference(x, 2, 4),
           [(2, 2, 16, 16)], op=F.scattering2d),
    OpCase("scattering2d_J1_rect", lambda x: F.scattering2d(x, J=1, L=3),
           lambda x: reference(x, 1, 3), [(1, 1, 12, 8)], op=F.scattering2d),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case: OpCase) -> None:
    check_case(case)


def test_shape_and_channel_order() -> None:
    x = np.random.default_rng(0).random((2, 3, 32, 32))
    y = F.scattering2d(minidl.tensor(x)).numpy()
    K = num_coefficients(2, 8)
    assert K == 81 and y.shape == (2, 3 * K, 8, 8)
    # channel c * K + k is coefficient k of input channel c: each colour on its own
    one = F.scattering2d(minidl.tensor(x[:, 1:2])).numpy()
    np.testing.assert_allclose(y[:, K:2 * K], one, rtol=1e-12, atol=1e-14)


def test_close_to_the_full_resolution_definition() -> None:
    x = np.random.default_rng(1).random((2, 1, 32, 32))
    got = F.scattering2d(minidl.tensor(x)).numpy()
    want = reference(x, full=True)
    # order 0 and the j1 = 0 wavelets are sampled exactly (1 + L coefficients) ...
    np.testing.assert_allclose(got[:, :9], want[:, :9], rtol=1e-10, atol=1e-13)
    # ... the rest are filtered at the coarser resolution: within a few percent
    for part in (slice(9, 17), slice(17, 81)):
        err = np.abs(got[:, part] - want[:, part]).max() / np.abs(want[:, part]).max()
        assert err < 0.05, (part, err)


def test_wavelet_coefficients_ignore_brightness() -> None:
    # The wavelets have zero mean: adding a constant changes order 0 alone.
    x = np.random.default_rng(2).random((1, 1, 16, 16))
    a = F.scattering2d(minidl.tensor(x)).numpy()
    b = F.scattering2d(minidl.tensor(x + 3.0)).numpy()
    np.testing.assert_allclose(a[:, 1:], b[:, 1:], atol=1e-12)
    np.testing.assert_allclose(b[:, 0], a[:, 0] + 3.0, atol=1e-12)


def test_stable_to_a_one_pixel_shift() -> None:
    # What the features are for: a shift moves smooth images' pixels by a lot and their
    # scattering coefficients by much less.
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((4, 1, 40, 40))
    kernel = np.fft.fft2(np.outer(*[np.exp(-np.minimum(np.arange(40), 40 - np.arange(40)) ** 2
                                           / 8.0)] * 2))
    smooth = np.fft.ifft2(np.fft.fft2(noise) * kernel).real
    x, shifted = smooth[..., 4:36, 4:36], smooth[..., 5:37, 4:36]
    rel = np.linalg.norm(shifted - x) / np.linalg.norm(x)
    s, t = (F.scattering2d(minidl.tensor(np.ascontiguousarray(v))).numpy() for v in (x, shifted))
    rel_s = np.linalg.norm(t - s) / np.linalg.norm(s)
    assert rel_s < 0.5 * rel, (rel_s, rel)


def test_float32_stays_float32_and_no_grad_saves_nothing() -> None:
    x = minidl.tensor(np.random.default_rng(4).random((1, 3, 16, 16), np.float32))
    y = F.scattering2d(x)
    assert y.dtype == np.float32 and not y.requires_grad
    np.testing.assert_allclose(y.numpy(), reference(x.numpy().astype(np.float64)),
                               rtol=1e-4, atol=1e-5)
    xg = minidl.tensor(x.numpy(), requires_grad=True)
    yg = F.scattering2d(xg)
    assert yg.grad_fn.phases1 and yg.grad_fn.phases2
    assert not F.scattering2d(minidl.tensor(x.numpy())).grad_fn


def test_gradcheck_default_geometry() -> None:
    # J=2, L=8 as used on CIFAR-10 (three scales of subsampling), on a small image.
    x = minidl.tensor(np.random.default_rng(5).standard_normal((1, 1, 16, 16)),
                      requires_grad=True)
    assert gradcheck(lambda t: F.scattering2d(t), (x,))


def test_second_derivative_is_a_clear_error() -> None:
    x = minidl.tensor(np.random.default_rng(6).standard_normal((1, 1, 8, 8)),
                      requires_grad=True)
    y = F.scattering2d(x, J=1, L=2)
    (g,) = minidl.autograd.grad([y.sum()], [x], create_graph=True)
    with pytest.raises(NotImplementedError, match="Scattering2DGrad"):
        g.sum().backward()


@pytest.mark.parametrize("kwargs, shape, dtype, match", [
    ({"J": 0}, (1, 1, 8, 8), np.float64, "J must be an int >= 1"),
    ({"L": True}, (1, 1, 8, 8), np.float64, "L must be an int"),
    ({}, (1, 1, 30, 32), np.float64, "multiples of 2\\*\\*J = 4"),
    ({"J": 3}, (1, 1, 8, 8), np.float64, "larger than it"),
    ({}, (1, 32, 32), np.float64, "4-D images"),
    ({}, (1, 1, 8, 8), np.int64, "floating point"),
])
def test_bad_input(kwargs: dict, shape: tuple, dtype, match: str) -> None:
    x = minidl.tensor(np.zeros(shape, dtype))
    with pytest.raises((ValueError, TypeError), match=match):
        F.scattering2d(x, **kwargs)


def test_module() -> None:
    s = nn.Scattering2D(J=2, L=4)
    assert s.out_channels(3) == 3 * num_coefficients(2, 4) and not list(s.parameters())
    assert repr(s) == "Scattering2D(J=2, L=4)"
    model = nn.Sequential(s, nn.GroupNorm(3, s.out_channels(3), affine=False), nn.Flatten())
    assert model(minidl.zeros((2, 3, 16, 16))).shape == (2, 3 * 25 * 16)
    with pytest.raises(ValueError, match="J must be"):
        nn.Scattering2D(J=-1)
