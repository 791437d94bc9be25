"""Conv and pooling geometry against a table written by hand: output sizes, how
``padding="same"`` splits an odd total, ceil-mode windows.

The expected numbers are literals, worked out from the conventions PyTorch and Keras
document, never computed by minidl's geometry helpers (a reference that calls the code's
own helper agrees with any bug in it):

* PyTorch ``Conv2d`` / ``MaxPool2d`` (``Shape:`` sections):
  ``OH = floor((H + 2P - D(K - 1) - 1) / S) + 1``; ``ceil_mode`` rounds up instead, but a
  window that would start in the right (bottom) padding is dropped.
* ``padding="same"`` (PyTorch ``F.conv2d``, stride 1; TensorFlow/Keras ``"SAME"``): total
  padding ``D(K - 1)``, ``total // 2`` before (top/left) and the rest after
  (bottom/right), so an even kernel's extra row and column go to the bottom and right.
* Keras ``"valid"``: no padding, ``OH = floor((H - D(K - 1) - 1) / S) + 1``.
* ``avg_pool2d`` divisors (PyTorch): a window is clipped to the padded input before
  counting (``count_include_pad=True``), and to the input itself otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl import kernels
from minidl.kernels.conv import conv2d_geometry
from minidl.kernels.pool import pool2d_geometry


@pytest.fixture(params=["numba", "numpy"])
def kernel_backend(request):
    old = kernels.set_backend(request.param)
    yield request.param
    kernels.set_backend(old)


def _t(a) -> minidl.Tensor:
    return minidl.tensor(np.asarray(a, dtype=np.float64))


# (H, W, K, S, P, D) -> (OH, OW), PyTorch's conv formula by hand
CONV_SIZES = [
    (32, 32, 3, 1, 0, 1, 30, 30),     # the seed CNN's first layer
    (7, 8, 3, 2, 1, 1, 4, 4),         # (7 + 2 - 2 - 1) / 2 = 3, + 1; (8 + 2 - 3) / 2 = 3.5
    (8, 9, 3, 2, 1, 1, 4, 5),
    (5, 6, 2, 2, 0, 1, 2, 3),         # H: the last row is never read
    (10, 11, 3, 1, 0, 2, 6, 7),       # dilated: effective kernel 5
    (224, 224, 7, 2, 3, 1, 112, 112),  # ResNet's stem
    (225, 223, 7, 2, 3, 1, 113, 112),  # (225 + 6 - 7) / 2 = 112; (223 - 1) / 2 = 111
    (6, 7, 4, 3, 0, 1, 1, 2),
    (9, 10, 3, 2, 0, 1, 4, 4),
    (5, 6, 5, 1, 2, 1, 5, 6),
    (11, 12, 3, 3, 1, 2, 3, 4),       # (11 + 2 - 4 - 1) / 3 = 2.67 -> 2, + 1
]


@pytest.mark.parametrize("h,w,k,s,p,d,oh,ow", CONV_SIZES)
def test_conv_output_size_table(h, w, k, s, p, d, oh, ow) -> None:
    g = conv2d_geometry((1, 1, h, w), (1, 1, k, k), s, p, d)
    assert (g.oh, g.ow) == (oh, ow)
    y = F.conv2d(minidl.zeros(1, 1, h, w), minidl.zeros(1, 1, k, k), stride=s, padding=p,
                 dilation=d)
    assert y.shape == (1, 1, oh, ow)


@pytest.mark.parametrize("padding,h,k,oh", [
    ((0, 1, 2, 0), 5, 3, 4),   # (top, bottom, left, right): H + 1 - 3 + 1
    ((2, 0, 0, 1), 5, 3, 5),
    ("valid", 6, 4, 3),        # Keras: floor((6 - 4) / 1) + 1
])
def test_conv_explicit_and_valid_padding(padding, h, k, oh) -> None:
    g = conv2d_geometry((1, 1, h, h), (1, 1, k, k), 1, padding)
    want_pad = (0, 0, 0, 0) if padding == "valid" else padding
    assert g.pad == want_pad and g.oh == oh
    assert g.ow == {(0, 1, 2, 0): 5, (2, 0, 0, 1): 4, "valid": 3}[padding]


# (KH, KW), (DH, DW) -> (top, bottom, left, right) for padding="same"
SAME_SPLITS = [
    ((1, 1), (1, 1), (0, 0, 0, 0)),
    ((2, 2), (1, 1), (0, 1, 0, 1)),   # even kernel: the extra pixel goes bottom / right
    ((3, 3), (1, 1), (1, 1, 1, 1)),
    ((4, 4), (1, 1), (1, 2, 1, 2)),
    ((5, 5), (1, 1), (2, 2, 2, 2)),
    ((6, 6), (1, 1), (2, 3, 2, 3)),
    ((2, 4), (1, 1), (0, 1, 1, 2)),
    ((4, 1), (1, 1), (1, 2, 0, 0)),
    ((3, 3), (2, 2), (2, 2, 2, 2)),   # dilated: total D(K - 1) = 4
    ((2, 2), (3, 1), (1, 2, 0, 1)),   # total 3 rows: 1 above, 2 below
    ((2, 3), (1, 2), (0, 1, 2, 2)),
]


@pytest.mark.parametrize("k,d,pad", SAME_SPLITS,
                         ids=[f"k{k[0]}x{k[1]}-d{d[0]}x{d[1]}" for k, d, _ in SAME_SPLITS])
def test_same_padding_split_table(k, d, pad) -> None:
    g = conv2d_geometry((2, 3, 7, 9), (4, 3, *k), 1, "same", d)
    assert g.pad == pad
    assert (g.oh, g.ow) == (7, 9)
    y = F.conv2d(minidl.zeros(2, 3, 7, 9), minidl.zeros(4, 3, *k), padding="same",
                 dilation=d)
    assert y.shape == (2, 4, 7, 9)


def test_same_padding_even_kernel_values(kernel_backend) -> None:
    # 2x2 box filter with the extra zero row/column at the bottom/right: each output sums
    # the 2x2 block whose top-left corner it is (PyTorch gives exactly these numbers).
    x = _t(np.arange(1.0, 10.0).reshape(1, 1, 3, 3))
    y = F.conv2d(x, _t(np.ones((1, 1, 2, 2))), padding="same")
    np.testing.assert_array_equal(y.numpy()[0, 0], [[12, 16, 9], [24, 28, 15], [15, 17, 9]])
    # 1x4 kernel on a row: one zero on the left, two on the right
    row = _t(np.arange(1.0, 6.0).reshape(1, 1, 1, 5))
    y = F.conv2d(row, _t([[[[1.0, 10.0, 100.0, 1000.0]]]]), padding="same")
    np.testing.assert_array_equal(y.numpy().ravel(), [3210, 4321, 5432, 543, 54])
    # the same column-wise: the extra zero rows go below
    col = _t(np.arange(1.0, 6.0).reshape(1, 1, 5, 1))
    y = F.conv2d(col, _t(np.array([1.0, 10.0, 100.0, 1000.0]).reshape(1, 1, 4, 1)),
                 padding="same")
    np.testing.assert_array_equal(y.numpy().ravel(), [3210, 4321, 5432, 543, 54])
    # dilation 3, kernel 2: total 3 = 1 left + 2 right
    y = F.conv2d(row, _t([[[[1.0, 10.0]]]]), padding="same", dilation=3)
    np.testing.assert_array_equal(y.numpy().ravel(), [30, 41, 52, 3, 4])


# (H, K, S, P, D) -> (OH floor, OH ceil), PyTorch's pooling formula by hand
POOL_SIZES = [
    (5, 2, 2, 0, 1, 2, 3),   # ceil: a last window on row 4 alone
    (6, 2, 2, 0, 1, 3, 3),
    (5, 3, 2, 1, 1, 3, 3),
    (6, 3, 2, 1, 1, 3, 4),   # ceil: the 4th window starts at row 5, inside the input
    (5, 2, 2, 1, 1, 3, 3),   # ceil would give 4, but that window starts in the padding
    (3, 2, 2, 1, 1, 2, 2),   # the same: 3 dropped to 2
    (10, 3, 4, 1, 1, 3, 3),  # ceil 4 dropped: it would start past the padded input
    (4, 3, 3, 1, 1, 2, 2),
    (7, 3, 3, 0, 1, 2, 3),   # ceil: the window at row 6 runs off the input
    (4, 3, 2, 1, 1, 2, 3),   # ceil: starts at row 3, reads it and the bottom padding
    (2, 2, 2, 1, 1, 2, 2),
    (7, 2, 2, 0, 2, 3, 3),   # dilated: effective kernel 3
    (8, 2, 2, 0, 2, 3, 4),
    (1, 1, 2, 0, 1, 1, 1),
]


@pytest.mark.parametrize("h,k,s,p,d,floor_oh,ceil_oh", POOL_SIZES)
def test_pool_output_size_table(h, k, s, p, d, floor_oh, ceil_oh) -> None:
    for ceil, oh in ((False, floor_oh), (True, ceil_oh)):
        assert pool2d_geometry("max_pool2d", (1, 1, h, 1), (k, 1), (s, 1), (p, 0), (d, 1),
                               ceil)[-2:] == (oh, 1)
        x = minidl.zeros(1, 2, h, h)
        assert F.max_pool2d(x, k, s, p, d, ceil_mode=ceil).shape == (1, 2, oh, oh)
        if d == 1:
            assert F.avg_pool2d(x, k, s, p, ceil_mode=ceil).shape == (1, 2, oh, oh)


# 1-D rows (N = C = H = 1) so that each window is easy to check by eye; values from the
# rules in the module docstring, and what PyTorch prints.
POOL_VALUES = [
    # x, (KW, SW, PW), ceil, max, avg (count_include_pad), avg (excluding padding)
    ([1, 2, 4, 8], (3, 2, 1), False, [2, 8], [1, 14 / 3], [1.5, 14 / 3]),
    # ceil: a 3rd window starts at x[3] and runs over the right padding and beyond; its
    # divisor counts x[3] and one padding cell (2), or x[3] alone (1)
    ([1, 2, 4, 8], (3, 2, 1), True, [2, 8, 8], [1, 14 / 3, 4], [1.5, 14 / 3, 8]),
    ([1, 2, 3, 4, 5], (2, 2, 0), False, [2, 4], [1.5, 3.5], [1.5, 3.5]),
    ([1, 2, 3, 4, 5], (2, 2, 0), True, [2, 4, 5], [1.5, 3.5, 5], [1.5, 3.5, 5]),
    # windows [pad, 1], [2, 3], [4, 5]; ceil's 4th would start in the right padding: none
    ([1, 2, 3, 4, 5], (2, 2, 1), False, [1, 3, 5], [0.5, 2.5, 4.5], [1, 2.5, 4.5]),
    ([1, 2, 3, 4, 5], (2, 2, 1), True, [1, 3, 5], [0.5, 2.5, 4.5], [1, 2.5, 4.5]),
]


@pytest.mark.parametrize("x,kpw,ceil,mx,avg_in,avg_ex", POOL_VALUES)
def test_pool_window_values(x, kpw, ceil, mx, avg_in, avg_ex, kernel_backend) -> None:
    k, s, p = kpw
    row = _t(np.asarray(x, np.float64).reshape(1, 1, 1, -1))
    col = _t(np.asarray(x, np.float64).reshape(1, 1, -1, 1))
    for t, kk, ss, pp in ((row, (1, k), (1, s), (0, p)), (col, (k, 1), (s, 1), (p, 0))):
        np.testing.assert_allclose(F.max_pool2d(t, kk, ss, pp, ceil_mode=ceil).numpy().ravel(),
                                   mx, rtol=1e-15)
        np.testing.assert_allclose(F.avg_pool2d(t, kk, ss, pp, ceil_mode=ceil).numpy().ravel(),
                                   avg_in, rtol=1e-15)
        got = F.avg_pool2d(t, kk, ss, pp, ceil_mode=ceil, count_include_pad=False)
        np.testing.assert_allclose(got.numpy().ravel(), avg_ex, rtol=1e-15)
