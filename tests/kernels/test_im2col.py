"""im2col / col2im on both CPU paths against the plain-loop references."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import channels_last

from minidl.kernels import col2im, im2col
from minidl.kernels.im2col import col2im_reference, im2col_reference


@st.composite
def configs(draw):
    g = draw(st.sampled_from([1, 1, 2, 3]))
    c = g * draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pad = draw(st.one_of(st.integers(0, 2), st.tuples(*[st.integers(0, 2)] * 4)))
    pads = (pad,) * 4 if isinstance(pad, int) else pad
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[1]), 9))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[2] - pads[3]), 9))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    n = draw(st.integers(1, 3))
    return dict(n=n, c=c, h=h, w=w, k=(kh, kw), s=s, p=pad, d=(dh, dw), g=g,
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                cl=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=40, deadline=None)
@given(cfg=configs())
def test_im2col_col2im_match_reference(backend, cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(cfg["dtype"])
    args = (cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["g"])
    xin = channels_last(x) if cfg["cl"] else x
    cols = im2col(xin, *args)
    ref = im2col_reference(x, *args)
    assert cols.dtype == x.dtype
    np.testing.assert_array_equal(cols, ref)
    gcols = rng.standard_normal(cols.shape).astype(cfg["dtype"])
    gx = col2im(gcols, x.shape, *args, channels_last=cfg["cl"])
    assert gx.dtype == x.dtype and gx.shape == x.shape
    np.testing.assert_allclose(gx, col2im_reference(gcols, x.shape, *args), rtol=1e-5, atol=1e-5)


def test_col2im_is_adjoint_of_im2col(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 6))
    c = rng.standard_normal(im2col(x, 3, 2, 1, 2, 2).shape)
    lhs = (im2col(x, 3, 2, 1, 2, 2) * c).sum()
    rhs = (x * col2im(c, x.shape, 3, 2, 1, 2, 2)).sum()
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_large_channel_nchw_input_goes_through_transpose(backend):
    # C >= 8 channels-first input takes the transpose-then-unfold branch.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 6, 5)).astype(np.float32)
    np.testing.assert_array_equal(im2col(x, 3, 1, 1), im2col_reference(x, 3, 1, 1))
