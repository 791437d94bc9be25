"""conv2d forward/backward on both CPU paths: loop references, errors, and torch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import channels_last, tol

from minidl.kernels import (
    conv2d_backward,
    conv2d_forward,
    conv2d_grad_input,
    conv2d_grad_weight,
    is_channels_last,
)
from minidl.kernels.conv import conv2d_reference
from minidl.kernels.im2col import col2im_reference, im2col_reference


@st.composite
def conv_configs(draw):
    g = draw(st.sampled_from([1, 1, 1, 2, 4]))
    c = g * draw(st.integers(1, 3))
    oc = g * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding = draw(st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)),
                             st.just("valid"), st.just("same")))
    s = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    ph, pw = ((0, 0) if padding in ("valid", "same")
              else (padding, padding) if isinstance(padding, int) else padding)
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 10))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 10))
    return dict(n=draw(st.integers(1, 3)), c=c, oc=oc, h=h, w=w, k=(kh, kw), s=s, p=padding,
                d=(dh, dw), g=g, dtype=draw(st.sampled_from([np.float32, np.float64])),
                cl=draw(st.booleans()), bias=draw(st.booleans()), seed=draw(st.integers(0, 999)))


def _grads_reference(x, w, gy, s, p, d, g):
    """Gradients from the loop im2col/col2im references (independent of the fast paths)."""
    from minidl.kernels.conv import conv2d_geometry

    geo = conv2d_geometry(x.shape, w.shape, s, p, d, g)
    cols = im2col_reference(x, (geo.kh, geo.kw), s, geo.pad, d, g)
    rows = gy.transpose(0, 2, 3, 1).reshape(-1, geo.oc)
    ocg, cg = geo.oc // g, geo.c // g
    kg = geo.kh * geo.kw * cg
    wmat = w.transpose(0, 2, 3, 1).reshape(geo.oc, kg)
    gw = np.zeros_like(wmat)
    gcols = np.zeros_like(cols)
    for i in range(g):
        r, k = slice(i * ocg, (i + 1) * ocg), slice(i * kg, (i + 1) * kg)
        gw[r] = rows[:, r].T @ cols[:, k]
        gcols[:, k] = rows[:, r] @ wmat[r]
    gw = gw.reshape(geo.oc, geo.kh, geo.kw, cg).transpose(0, 3, 1, 2)
    gx = col2im_reference(gcols, x.shape, (geo.kh, geo.kw), s, geo.pad, d, g)
    return gx, gw, rows.sum(0)


@settings(max_examples=40, deadline=None)
@given(cfg=conv_configs())
def test_conv2d_matches_reference(backend, cfg):
    rng = np.random.default_rng(cfg["seed"])
    dt = cfg["dtype"]
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(dt)
    w = rng.standard_normal((cfg["oc"], cfg["c"] // cfg["g"], *cfg["k"])).astype(dt)
    b = rng.standard_normal(cfg["oc"]).astype(dt) if cfg["bias"] else None
    args = (cfg["s"], cfg["p"], cfg["d"], cfg["g"])
    xin = channels_last(x) if cfg["cl"] else x
    y = conv2d_forward(xin, w, b, *args)
    ref = conv2d_reference(x, w, b, *args)
    assert y.dtype == dt and y.shape == ref.shape
    np.testing.assert_allclose(y, ref, **tol(dt))
    gy = rng.standard_normal(y.shape).astype(dt)
    gx, gw, gb = conv2d_backward(xin, w, gy, *args)
    rgx, rgw, rgb = _grads_reference(x, w, gy, *args)
    for got, want in ((gx, rgx), (gw, rgw), (gb, rgb)):
        assert got.dtype == dt and got.shape == want.shape
        np.testing.assert_allclose(got, want, **tol(dt))
    np.testing.assert_allclose(conv2d_grad_input(gy, w, x.shape, *args), rgx, **tol(dt))
    np.testing.assert_allclose(conv2d_grad_weight(xin, gy, w.shape, *args), rgw, **tol(dt))


def test_fused_relu_and_saved_cols(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5, 9, 9)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    y, cols = conv2d_forward(x, w, b, 2, 1, relu=True, return_cols=True)
    ref = np.maximum(conv2d_reference(x, w, b, 2, 1), 0)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    got = conv2d_backward(x, w, gy, 2, 1, cols=cols, relu_output=y)
    want = conv2d_backward(x, w, gy * (ref > 0), 2, 1)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_outputs_are_channels_last_and_fresh(backend):
    rng = np.random.default_rng(4)
    x = channels_last(rng.standard_normal((2, 4, 6, 6)).astype(np.float32))
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    y1 = conv2d_forward(x, w, None, padding=1)
    keep = y1.copy()
    conv2d_forward(x * 2, w, None, padding=1)  # must not overwrite y1 (scratch reuse)
    np.testing.assert_array_equal(y1, keep)
    assert is_channels_last(y1)
    gx, _, _ = conv2d_backward(x, w, np.ones_like(y1), padding=1)
    assert is_channels_last(gx)


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=(3, 32, 32), w=(8, 3, 3, 3)), r"conv2d: expected 4-D input .* got 3-D input"),
    (dict(x=(2, 3, 8, 8), w=(8, 1, 3, 3)),
     r"conv2d: input has 3 channels but weight expects 1 \(weight shape \(8, 1, 3, 3\)\)"),
    (dict(x=(2, 3, 4, 4), w=(8, 3, 5, 5)), r"conv2d: kernel size .* larger than the padded"),
    (dict(x=(2, 3, 8, 8), w=(8, 3, 3, 3), stride=0), r"conv2d: stride must be positive"),
    (dict(x=(2, 4, 8, 8), w=(6, 2, 3, 3), groups=3), r"conv2d: groups=3 must divide"),
    (dict(x=(2, 3, 8, 8), w=(8, 3, 3, 3), stride=2, padding="same"), r"padding='same'"),
    (dict(x=(2, 3, 8, 8), w=(8, 3, 3, 3), padding="full"), r"conv2d: padding must be"),
])
def test_conv2d_errors(kwargs, match):
    x = np.zeros(kwargs.pop("x"), np.float32)
    w = np.zeros(kwargs.pop("w"), np.float32)
    with pytest.raises(ValueError, match=match):
        conv2d_forward(x, w, **kwargs)


def test_conv2d_dtype_mismatch_is_an_error():
    with pytest.raises(ValueError, match="conv2d: weight dtype float64 differs"):
        conv2d_forward(np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 1, 2, 2)))


# torch warns that it copies the input for 'same' with even kernels; the result is right
@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
@settings(max_examples=15, deadline=None)
@given(cfg=conv_configs())
def test_conv2d_matches_torch(backend, cfg):
    torch = pytest.importorskip("torch", reason="torch not installed (optional comparison)")
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    w = rng.standard_normal((cfg["oc"], cfg["c"] // cfg["g"], *cfg["k"]))
    b = rng.standard_normal(cfg["oc"])
    args = (cfg["s"], cfg["p"], cfg["d"], cfg["g"])
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, *args)
    y = conv2d_forward(x, w, b, *args)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    for got, t in zip(conv2d_backward(x, w, gy, *args), (xt, wt, bt)):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("x_layout", ["c", "channels_last"])
@pytest.mark.parametrize("case", [
    # x shape, w shape, stride, padding, dilation, groups, out_size
    ((2, 3, 15, 15), (4, 3, 3, 3), 1, 0, 1, 1, (12, 12)),
    ((1, 4, 9, 8), (6, 2, 3, 2), 2, 1, (1, 2), 2, (2, 3)),
    ((2, 2, 6, 6), (3, 2, 3, 3), 1, 1, 1, 1, (6, 6)),  # nothing dropped
])
def test_cropped_outputs_equal_the_full_conv_cropped(case, x_layout, backend):
    xs, ws, s, p, d, g, out_size = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal(xs)
    x = channels_last(x) if x_layout == "channels_last" else x
    w, b = rng.standard_normal(ws), rng.standard_normal(ws[0])
    oh, ow = out_size
    full = conv2d_forward(x, w, b, s, p, d, g)
    part = conv2d_forward(x, w, b, s, p, d, g, out_size=out_size)
    np.testing.assert_allclose(part, full[:, :, :oh, :ow], rtol=1e-12, atol=1e-12)
    gy_part = rng.standard_normal(part.shape)
    gy_full = np.zeros(full.shape)
    gy_full[:, :, :oh, :ow] = gy_part
    got = conv2d_backward(x, w, gy_part, s, p, d, g, out_size=out_size)
    want = conv2d_backward(x, w, gy_full, s, p, d, g)
    for a, r in zip(got, want):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)


def test_out_size_is_checked():
    x, w = np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: out_size \(4, 3\) must be between"):
        conv2d_forward(x, w, out_size=(4, 3))
