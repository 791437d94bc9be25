"""Winograd F(4x4, 3x3) against the loop references: forward, both gradients, every edge.

The references (``conv2d_reference``, and im2col/col2im loop references for the gradients)
share no code with the Winograd transforms, so a wrong coefficient, a tile read one pixel
off, or a dropped edge tile shows up as a value mismatch here.
"""

import numpy as np
import pytest
from kernel_helpers import channels_last
from test_conv import _grads_reference

import minidl
from minidl.gradcheck import gradcheck
from minidl.kernels import conv as K
from minidl.kernels import winograd as W


@pytest.fixture
def algorithm():
    """Run the test with Winograd forced for every eligible convolution."""
    old_backend = minidl.kernels.set_backend("numba")
    old = K.set_conv_algorithm("winograd")
    yield
    K.set_conv_algorithm(old)
    minidl.kernels.set_backend(old_backend)


def test_matrices_compute_a_correlation():
    # The identity the algorithm rests on, in 1-D: A^T [(G g) * (B^T d)] = d correlated with g.
    rng = np.random.default_rng(0)
    g, d = rng.standard_normal(3), rng.standard_normal(6)
    want = np.array([d[i:i + 3] @ g for i in range(4)])
    np.testing.assert_allclose(W.AT @ ((W.G @ g) * (W.BT @ d)), want, rtol=1e-13, atol=1e-13)


# (N, C, OC, H, W, pad (top, bottom, left, right)): sizes that are and are not multiples of
# the 4x4 tile, one-tile and partial-tile outputs, every padding from 0 to 2 on each side.
CASES = [
    (2, 3, 4, 8, 8, (1, 1, 1, 1)),
    (1, 5, 7, 9, 6, (1, 1, 1, 1)),
    (3, 2, 3, 7, 11, (0, 0, 0, 0)),
    (2, 4, 2, 5, 5, (2, 2, 2, 2)),
    (1, 3, 5, 6, 7, (2, 0, 1, 2)),
    (2, 6, 3, 3, 3, (0, 1, 2, 0)),
    (1, 2, 2, 1, 1, (1, 1, 1, 1)),
    (2, 17, 19, 13, 10, (1, 1, 1, 1)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["c", "channels_last"])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_the_references(algorithm, case, layout, dtype):
    n, c, oc, h, w, pad = case
    rng = np.random.default_rng(sum(case[:5]))
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((oc, c, 3, 3))
    b = rng.standard_normal(oc)
    g = K.conv2d_geometry(x.shape, wt.shape, padding=pad)
    assert K.winograd_applies(g, x.astype(dtype))
    xin = (channels_last(x) if layout == "channels_last" else x).astype(dtype)
    y = K.conv2d_forward(xin, wt.astype(dtype), b.astype(dtype), padding=pad)
    ref = K.conv2d_reference(x, wt, b, padding=pad)
    assert y.dtype == dtype and y.shape == ref.shape and K.is_channels_last(y)
    tol = dict(rtol=1e-11, atol=1e-11) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, ref, **tol)
    gy = rng.standard_normal(ref.shape)
    gx, gw, gb = K.conv2d_backward(xin, wt.astype(dtype), gy.astype(dtype), padding=pad)
    rgx, rgw, rgb = _grads_reference(x, wt, gy, 1, pad, 1, 1)
    for got, want in ((gx, rgx), (gw, rgw), (gb, rgb)):
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, **tol)
    # the input gradient keeps the input's layout, as on the im2col path
    if h * w > 1:  # (1x1 maps are both layouts at once)
        assert K.is_channels_last(gx) == (layout == "channels_last" and c > 1)
    assert gw.flags.c_contiguous
    # the single-gradient entry points take the same route
    np.testing.assert_allclose(K.conv2d_grad_input(gy.astype(dtype), wt.astype(dtype), x.shape,
                                                   padding=pad), rgx, **tol)
    np.testing.assert_allclose(K.conv2d_grad_weight(xin, gy.astype(dtype), wt.shape,
                                                    padding=pad), rgw, **tol)


@pytest.mark.parametrize("crop", [(3, 5), (1, 1), (8, 8)])
def test_relu_and_cropped_outputs(algorithm, crop):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 8, 8))
    wt = rng.standard_normal((5, 4, 3, 3))
    b = rng.standard_normal(5)
    y = K.conv2d_forward(x, wt, b, padding=1, relu=True, out_size=crop)
    ref = np.maximum(K.conv2d_reference(x, wt, b, padding=1), 0)[:, :, :crop[0], :crop[1]]
    np.testing.assert_allclose(y, ref, rtol=1e-11, atol=1e-11)
    gy = rng.standard_normal(ref.shape)
    full = np.zeros((2, 5, 8, 8))
    full[:, :, :crop[0], :crop[1]] = gy * (ref > 0)
    got = K.conv2d_backward(x, wt, gy, padding=1, relu_output=y, out_size=crop)
    want = _grads_reference(x, wt, full, 1, 1, 1, 1)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-11)


def test_nan_passes_through_relu(algorithm):
    # A non-finite input poisons its whole 4x4 output tile (the transforms mix the tile's
    # pixels), not only the outputs whose window holds it; other tiles stay finite.
    x = np.ones((1, 2, 8, 8), np.float32)
    x[0, 0, 1, 1] = np.nan
    y = K.conv2d_forward(x, np.ones((3, 2, 3, 3), np.float32), None, padding=1, relu=True)
    assert np.isnan(y[0, :, :3, :3]).all() and np.isfinite(y[0, :, 4:, :]).all()


def test_float32_error_at_a_real_layer_size():
    # F(4x4) rounds more than im2col (coefficients up to 8 and 1/24): a few 1e-6 of the
    # output's scale at 64 channels, against about 1e-7 for im2col; both far below what
    # training notices. Measured here so a regression in the transforms' rounding shows.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 64, 15, 15))
    wt = rng.standard_normal((64, 64, 3, 3)) / 24
    ref = K.conv2d_reference(x, wt, None, padding=1)
    y = W.conv3x3_forward(x.astype(np.float32), wt.astype(np.float32), None, (1, 1, 1, 1),
                          (15, 15))
    err = np.abs(y - ref).max() / np.abs(ref).max()
    assert err < 2e-5, err


def test_outputs_are_fresh_arrays(algorithm):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 6, 6))
    wt = rng.standard_normal((8, 4, 3, 3))
    y1 = K.conv2d_forward(x, wt, None, padding=1)
    keep = y1.copy()
    K.conv2d_forward(x * 2, wt, None, padding=1)  # scratch buffers reused, results not
    np.testing.assert_array_equal(y1, keep)
    y, cols = K.conv2d_forward(x, wt, None, padding=1, return_cols=True)
    assert cols is None  # Winograd has no im2col matrix to keep


def test_which_convolutions_take_winograd():
    x32 = np.zeros(1, np.float32)
    geo = K.conv2d_geometry((8, 64, 16, 16), (64, 64, 3, 3), padding=1)
    old = K.set_conv_algorithm("auto")
    try:
        assert K.winograd_applies(geo, x32)
        small = K.conv2d_geometry((8, 3, 16, 16), (32, 3, 3, 3), padding=1)
        assert not K.winograd_applies(small, x32)  # below WINOGRAD_MIN_CHANNELS
        for other in (dict(stride=2), dict(dilation=2), dict(padding=3)):
            g = K.conv2d_geometry((8, 64, 16, 16), (64, 64, 3, 3), **{"padding": 1, **other})
            assert not K.winograd_applies(g, x32), other
        g5 = K.conv2d_geometry((8, 64, 16, 16), (64, 64, 5, 5), padding=2)
        assert not K.winograd_applies(g5, x32)
        g_grp = K.conv2d_geometry((8, 64, 16, 16), (64, 32, 3, 3), padding=1, groups=2)
        assert not K.winograd_applies(g_grp, x32)
        assert not K.winograd_applies(geo, np.zeros(1, np.float16))
        K.set_conv_algorithm("winograd")
        assert K.winograd_applies(small, x32)
        K.set_conv_algorithm("im2col")
        assert not K.winograd_applies(geo, x32)
        old_backend = minidl.kernels.set_backend("numpy")
        K.set_conv_algorithm("winograd")
        assert not K.winograd_applies(geo, x32)  # the generic path never takes it
        minidl.kernels.set_backend(old_backend)
    finally:
        K.set_conv_algorithm(old)


def test_bad_algorithm_name_is_a_clear_error():
    with pytest.raises(ValueError, match="set_conv_algorithm: expected one of"):
        K.set_conv_algorithm("fft")


def test_padding_beyond_two_falls_back_to_im2col():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 5, 5))
    wt = rng.standard_normal((2, 2, 3, 3))
    old = K.set_conv_algorithm("winograd")
    try:
        y = K.conv2d_forward(x, wt, None, padding=3)
    finally:
        K.set_conv_algorithm(old)
    np.testing.assert_allclose(y, K.conv2d_reference(x, wt, None, padding=3), rtol=1e-12)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_gradcheck_through_autograd(algorithm, activation):
    # float64 finite differences against Winograd's backward, all inputs, random upstream.
    rng = np.random.default_rng(6)
    x = minidl.tensor(rng.standard_normal((2, 3, 6, 5)), requires_grad=True)
    wt = minidl.tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    b = minidl.tensor(rng.standard_normal(4), requires_grad=True)

    def f(x, wt, b):
        return minidl.functional.conv2d(x, wt, b, padding=(1, 1), activation=activation)

    assert gradcheck(f, (x, wt, b))


def test_second_derivatives_through_autograd(algorithm):
    rng = np.random.default_rng(7)
    x = minidl.tensor(rng.standard_normal((1, 2, 5, 5)), requires_grad=True)
    wt = minidl.tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    y = minidl.functional.conv2d(x, wt, padding=1)
    (gx,) = minidl.autograd.grad((y * y).sum(), [x], create_graph=True)
    (ggw,) = minidl.autograd.grad(gx.sum(), [wt])
    K.set_conv_algorithm("im2col")
    try:
        y2 = minidl.functional.conv2d(x, wt, padding=1)
        (gx2,) = minidl.autograd.grad((y2 * y2).sum(), [x], create_graph=True)
        (ggw2,) = minidl.autograd.grad(gx2.sum(), [wt])
    finally:
        K.set_conv_algorithm("winograd")
    np.testing.assert_allclose(ggw.numpy(), ggw2.numpy(), rtol=1e-10, atol=1e-10)
