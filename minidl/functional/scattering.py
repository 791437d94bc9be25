"""The 2-D wavelet scattering transform (Mallat 2012; Bruna & Mallat 2013): fixed,
data-independent image features made of Morlet wavelets, moduli and a low-pass average.

Why it is here: a scattering network is a CNN whose filters are not learned. Its features
are stable to small deformations and keep most of what a first few trained conv layers
would find, so a *small* trainable model on top of them learns well from few or noisy
gradients. That is what differentially private training needs: Tramer & Boneh (ICLR 2021)
reach 67-69% on CIFAR-10 at epsilon 3 with a linear model or a small CNN on these features,
against ~59% for the best end-to-end CNN (``docs/privacy.md``).

What it computes, for each input channel of an image ``x`` (H, W), with wavelets
``psi[j, t]`` at scales ``2**j`` (``j < J``) and ``L`` angles ``t``, and a Gaussian low-pass
``phi`` of width ``2**J``, all three subsampled by ``2**J``:

    order 0:  x * phi                                            1 map
    order 1:  |x * psi[j1, t1]| * phi                            J * L maps
    order 2:  ||x * psi[j1, t1]| * psi[j2, t2]| * phi, j2 > j1   L * L * J * (J - 1) / 2 maps

So ``(B, C, H, W)`` becomes ``(B, C * K, H / 2**J, W / 2**J)`` with ``K = 1 + J L +
L**2 J (J-1) / 2`` (81 for ``J=2, L=8``: CIFAR-10's 3x32x32 images give 243x8x8 features),
channel ``c * K + k`` holding coefficient ``k`` of input channel ``c`` (orders 0, 1, 2 in
that sequence; within an order ``j`` outer, angle inner).

How: every convolution is a product in the Fourier domain (the image is reflect-padded by
``2**J`` on each side first, so the circular convolution does not wrap one border onto the
other; the padding is cropped from the output). ``|x * psi[j1]|`` varies at the scale
``2**j1``, so it is kept ``2**j1``-subsampled. Subsampling by ``k`` in space is averaging
the ``k x k`` aliased blocks of the spectrum (``_fold``), so ``x * psi[j1]`` is sampled
exactly; the filters applied after the modulus (``phi``, ``psi[j2]``) then work at that
coarser resolution, which would be exact for a band-limited ``|.|`` and is a close
approximation (the Kymatio library's scheme, 3-5x less work than full resolution). Order 0
and the ``j1 = 0`` coefficients equal the full-resolution definition to rounding; the
others are within a few percent of it (``tests/functional/test_scattering.py``).

Derivative: the transform is linear maps and moduli, so its backward is the adjoint of each
linear map (Fourier-domain filters are real, ``fft`` and ``ifft`` are each other's adjoint
up to the size, which cancels against ``_fold``'s ``1 / k**2``) and ``d|a| = Re(conj(a /
|a|) da)``. First derivatives only (``gradcheck``-ed); the transform normally sits at the
input, where none is needed and nothing is saved for backward.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from minidl import backend
from minidl.autograd import Function, Tensor


def _check(J: Any, L: Any) -> tuple[int, int]:
    for name, v, low in (("J", J, 1), ("L", L, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"scattering2d: {name} must be an int >= {low}, got {v!r}")
    return int(J), int(L)


def num_coefficients(J: int, L: int = 8) -> int:
    """``K = 1 + J L + L**2 J (J - 1) / 2``, output channels per input channel.

    >>> num_coefficients(2, 8), num_coefficients(3, 8)
    (81, 217)
    """
    J, L = _check(J, L)
    return 1 + J * L + L * L * J * (J - 1) // 2


def _gabor(M: int, N: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Gabor filter on the periodic M x N grid (float64 complex, spatial): Gaussian
    envelope of width ``sigma`` (``sigma / slant`` across the direction ``theta``) times the
    wave ``exp(i xi x')`` along it, normalised to sum 1 for ``xi = 0``. Periodised over the
    neighbouring copies of the grid so that wide filters are not cut at its edges."""
    c, s = math.cos(theta), math.sin(theta)
    y, x = np.mgrid[-2 * M:3 * M, -2 * N:3 * N].astype(np.float64)
    along, across = c * x + s * y, -s * x + c * y
    g = np.exp(-(along ** 2 + (slant * across) ** 2) / (2 * sigma ** 2) + 1j * xi * along)
    g /= 2 * math.pi * sigma ** 2 / slant
    return g.reshape(5, M, 5, N).sum(axis=(0, 2))


def _morlet(M: int, N: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Gabor wave minus the multiple of its envelope that makes its mean zero: a band-pass
    filter, blind to constant regions (``psi``'s spectrum is 0 at frequency 0)."""
    wave = _gabor(M, N, sigma, theta, xi, slant)
    envelope = _gabor(M, N, sigma, theta, 0.0, slant)
    return wave - wave.sum() / envelope.sum() * envelope


def _block_sum(spectrum: np.ndarray, k: int) -> np.ndarray:
    """A filter's spectrum on the ``k``-times coarser grid: its aliased blocks summed
    (equal to the spectrum itself inside the coarse band for a band-limited filter)."""
    M, N = spectrum.shape[-2:]
    return spectrum.reshape(k, M // k, k, N // k).sum(axis=(0, 2))


@lru_cache(maxsize=8)
def filter_bank(M: int, N: int, J: int, L: int) -> dict:
    """The Fourier-domain filters for a padded ``M x N`` grid (float64, real: each filter
    is conjugate-symmetric in space), each at the resolutions it is applied at.

    Returns ``{"phi": {res: (M / 2**res, N / 2**res)}, "psi": [(j, t, {res: ...})]}``:
    ``phi`` at resolutions ``0..J - 1`` (where its inputs live), ``psi`` at scale ``j`` at
    ``0`` (the first order) and ``0..j - 1`` (the second, on ``|x * psi[j1]|`` sampled at
    ``2**j1``). Scales and widths follow the usual choice (Kymatio's): ``sigma = 0.8 *
    2**j``, centre frequency ``xi = 3 pi / 4 / 2**j``, slant ``4 / L``; ``phi`` is a round
    Gaussian of ``sigma = 0.8 * 2**J``.
    """
    phi = np.fft.fft2(_gabor(M, N, 0.8 * 2 ** J, 0.0, 0.0, 1.0)).real
    bank: dict = {"phi": {r: _block_sum(phi, 2 ** r) for r in range(J)}, "psi": []}
    for j in range(J):
        for t in range(L):
            theta = math.pi * t / L
            psi = np.fft.fft2(_morlet(M, N, 0.8 * 2 ** j, theta, 3 * math.pi / 4 / 2 ** j,
                                      4.0 / L)).real
            bank["psi"].append((j, t, {r: _block_sum(psi, 2 ** r) for r in range(max(j, 1))}))
    return bank


def _reflect_matrix(n: int, pad: int) -> np.ndarray:
    """``P`` with ``P @ v`` = ``v`` reflect-padded by ``pad`` on both ends ((n + 2 pad, n));
    its transpose is the adjoint (folds the padding back onto the values it copied)."""
    idx = np.pad(np.arange(n), pad, mode="reflect")
    P = np.zeros((n + 2 * pad, n))
    P[np.arange(n + 2 * pad), idx] = 1.0
    return P


def _fold(spectrum: Any, k: int) -> Any:
    """Spectrum of the ``k``-subsampled signal: the mean of the ``k x k`` aliased blocks
    (``(..., M, N) -> (..., M / k, N / k)``)."""
    if k == 1:
        return spectrum
    *lead, M, N = spectrum.shape
    return spectrum.reshape(*lead, k, M // k, k, N // k).sum(axis=(-4, -2)) / (k * k)


def _unfold(spectrum: Any, k: int) -> Any:
    """``_fold``'s adjoint times ``k**2`` (the tiled spectrum): the constants of the whole
    adjoint chain cancel, see the module docstring."""
    if k == 1:
        return spectrum
    xp = backend.get_array_module(spectrum)
    return xp.tile(spectrum, (k, k))


class _Plan:
    """The arrays one input geometry needs, on the input's device and in its precision."""

    def __init__(self, xp: Any, H: int, W: int, J: int, L: int, dtype: Any) -> None:
        self.J, self.L, self.pad = J, L, 2 ** J
        self.M, self.N = H + 2 * self.pad, W + 2 * self.pad
        bank = filter_bank(self.M, self.N, J, L)
        real = np.dtype(dtype)
        self.Pr = xp.asarray(_reflect_matrix(H, self.pad), dtype=real)
        self.Pc = xp.asarray(_reflect_matrix(W, self.pad), dtype=real)
        self.phi = {r: xp.asarray(f, dtype=real) for r, f in bank["phi"].items()}
        self.psi = [(j, {r: xp.asarray(f, dtype=real) for r, f in fs.items()})
                    for j, _, fs in bank["psi"]]

    def low(self, spectrum: Any, res: int) -> Any:
        """``x * phi``, ``2**J``-subsampled and cropped, from the spectrum of ``x`` at
        resolution ``res``: ``(n, M / 2**res, N / 2**res)`` -> ``(n, H / 2**J, W / 2**J)``."""
        xp = backend.get_array_module(spectrum)
        out = xp.fft.ifft2(_fold(spectrum * self.phi[res], 2 ** (self.J - res))).real
        return out[:, 1:-1, 1:-1]

    def low_adjoint(self, g: Any, res: int) -> Any:
        """The spectrum-domain gradient at resolution ``res`` from the gradient of ``low``'s
        output (to be summed with the others, then ``ifft``-ed once)."""
        xp = backend.get_array_module(g)
        n, h, w = g.shape
        full = xp.zeros((n, h + 2, w + 2), dtype=g.dtype)
        full[:, 1:-1, 1:-1] = g
        return self.phi[res] * _unfold(xp.fft.fft2(full), 2 ** (self.J - res))


class Scattering2DFunction(Function):
    """``x (B, C, H, W)`` -> ``(B, C * K, H / 2**J, W / 2**J)`` (module docstring).

    Options: ``J``, ``L``. Saves, only when ``x`` wants a gradient, the unit phases
    ``a / |a|`` of every wavelet response (what the modulus' derivative needs).
    """

    def forward(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        B, C, H, W = x.shape
        J, L = self.J, self.L
        plan = self.plan = _plan(x, H, W, J, L)
        keep = self.needs_input_grad[0]
        imgs = x.reshape(B * C, H, W)
        X = xp.fft.fft2(plan.Pr @ imgs @ plan.Pc.T)  # reflect-pad, then to the spectrum
        order0, order1, order2 = [plan.low(X, 0)], [], []
        self.phases1, self.phases2 = [], []
        for j1, psi1 in plan.psi:
            a = xp.fft.ifft2(_fold(X * psi1[0], 2 ** j1))  # x * psi, 2**j1-subsampled
            u = xp.abs(a)
            U = xp.fft.fft2(u)
            order1.append(plan.low(U, j1))
            if keep:
                self.phases1.append(_phase(xp, a, u))
            for j2, psi2 in plan.psi:
                if j2 <= j1:
                    continue
                b = xp.fft.ifft2(_fold(U * psi2[j1], 2 ** (j2 - j1)))
                v = xp.abs(b)
                order2.append(plan.low(xp.fft.fft2(v), j2))
                if keep:
                    self.phases2.append(_phase(xp, b, v))
        out = xp.stack(order0 + order1 + order2, axis=1)  # (B*C, K, h, w)
        h, w = out.shape[-2:]
        return xp.ascontiguousarray(out.reshape(B, C * out.shape[1], h, w).astype(x.dtype))

    def backward(self, gy: Tensor) -> Tensor:
        # x goes in too, unused, so that a graph of this backward (double backward) links to
        # x and reaches Scattering2DGrad's missing backward: a clear error, not a silent 0.
        return Scattering2DGradFunction.apply(gy, self.inputs[0], scattering=self)


class Scattering2DGradFunction(Function):
    """The scattering transform's adjoint chain, applied to the output gradient ``gy``
    (first derivatives only: its own backward is not implemented). Inputs ``(gy, x)``."""

    def forward(self, gy: Any, x: Any) -> Any:
        fwd = self.scattering
        plan, J = fwd.plan, fwd.J
        xp = backend.get_array_module(gy)
        B, CK, h, w = gy.shape
        K = num_coefficients(J, fwd.L)
        g = gy.reshape(B * (CK // K), K, h, w)
        nxt = 1 + len(plan.psi)  # index of the first second-order coefficient
        spec_x = plan.low_adjoint(g[:, 0], 0)
        k2 = 0
        for i1, (j1, psi1) in enumerate(plan.psi):
            spec_u = plan.low_adjoint(g[:, 1 + i1], j1)
            for j2, psi2 in plan.psi:
                if j2 <= j1:
                    continue
                gv = xp.fft.ifft2(plan.low_adjoint(g[:, nxt + k2], j2)).real
                gb = gv * fwd.phases2[k2]
                spec_u = spec_u + psi2[j1] * _unfold(xp.fft.fft2(gb), 2 ** (j2 - j1))
                k2 += 1
            gu = xp.fft.ifft2(spec_u).real
            ga = gu * fwd.phases1[i1]
            spec_x = spec_x + psi1[0] * _unfold(xp.fft.fft2(ga), 2 ** j1)
        gpad = xp.fft.ifft2(spec_x).real
        gx = plan.Pr.T @ gpad @ plan.Pc
        H, W = gx.shape[-2:]
        return xp.ascontiguousarray(gx.reshape(B, CK // K, H, W).astype(gy.dtype))


def _phase(xp: Any, a: Any, mod: Any) -> Any:
    """``a / |a|`` (0 where ``a`` is 0): the gradient of ``|a|`` as a complex number, so that
    ``d|a| = Re(conj(phase) da)``, i.e. the real-linear adjoint maps ``g -> g * phase``."""
    safe = xp.where(mod > 0, mod, 1)
    return xp.where(mod > 0, a / safe, 0)


_PLANS: dict = {}


def _plan(probe: Any, H: int, W: int, J: int, L: int) -> _Plan:
    """The cached ``_Plan`` for arrays like ``probe`` (device, dtype) of this geometry."""
    xp, dtype = backend.get_array_module(probe), probe.dtype
    key = (xp.__name__, str(backend.device_of(probe)), H, W, J, L, np.dtype(dtype).str)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 16:
            _PLANS.clear()
        plan = _PLANS[key] = _Plan(xp, H, W, J, L, dtype)
    return plan


def scattering2d(x: Tensor, J: int = 2, L: int = 8) -> Tensor:
    """The scattering transform of images ``x`` (B, C, H, W), a float tensor with ``H`` and
    ``W`` multiples of ``2**J`` and larger than ``2**J``: ``(B, C * K, H / 2**J, W / 2**J)``
    with ``K = num_coefficients(J, L)`` (module docstring).

    Args:
        x: the images (any float dtype; the transform runs in its precision).
        J: number of scales: features are averages over ``2**J`` pixels.
        L: number of wavelet orientations over half a turn.

    >>> import numpy as np, minidl
    >>> x = minidl.tensor(np.random.default_rng(0).random((2, 3, 32, 32), np.float32))
    >>> scattering2d(x).shape
    (2, 243, 8, 8)
    """
    J, L = _check(J, L)
    if not isinstance(x, Tensor):
        raise TypeError(f"scattering2d: x must be a Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"scattering2d: x must be 4-D images (B, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    if not np.issubdtype(np.dtype(x.dtype), np.floating):
        raise TypeError(f"scattering2d: x must be floating point, got {x.dtype}")
    H, W = x.shape[-2:]
    step = 2 ** J
    if H % step or W % step or H <= step or W <= step:
        raise ValueError(f"scattering2d: with J={J} the image height and width must be "
                         f"multiples of 2**J = {step} and larger than it, got {H}x{W}")
    return Scattering2DFunction.apply(x, J=J, L=L)
