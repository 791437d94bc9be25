"""Max and average pooling on both CPU paths: loop references, ties, NaN, errors, torch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import channels_last, tol

from minidl.kernels import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    is_channels_last,
    max_pool2d_backward,
    max_pool2d_forward,
)
from minidl.kernels.pool import (
    avg_pool2d_backward_reference,
    avg_pool2d_reference,
    max_pool2d_backward_reference,
    max_pool2d_reference,
)


@st.composite
def pool_configs(draw, dilation=True):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    dh, dw = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 9))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 9))
    return dict(n=draw(st.integers(1, 2)), c=draw(st.integers(1, 5)), h=h, w=w, k=(kh, kw),
                s=stride, p=(ph, pw), d=(dh, dw), ceil=draw(st.booleans()),
                dtype=draw(st.sampled_from([np.float32, np.float64])), cl=draw(st.booleans()),
                ties=draw(st.booleans()), seed=draw(st.integers(0, 999)))


def _input(cfg):
    rng = np.random.default_rng(cfg["seed"])
    shape = (cfg["n"], cfg["c"], cfg["h"], cfg["w"])
    x = (rng.integers(0, 3, shape) if cfg["ties"] else rng.standard_normal(shape))
    return rng, x.astype(cfg["dtype"])


@settings(max_examples=40, deadline=None)
@given(cfg=pool_configs())
def test_max_pool_matches_reference(backend, cfg):
    rng, x = _input(cfg)
    args = (cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["ceil"])
    y, ind = max_pool2d_forward(channels_last(x) if cfg["cl"] else x, *args)
    ry, rind = max_pool2d_reference(x, *args)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(ind, rind)
    gy = rng.standard_normal(y.shape).astype(cfg["dtype"])
    gx = max_pool2d_backward(gy, ind, x.shape)
    assert gx.dtype == x.dtype
    np.testing.assert_allclose(gx, max_pool2d_backward_reference(gy, rind, x.shape),
                               **tol(cfg["dtype"]))


@settings(max_examples=40, deadline=None)
@given(cfg=pool_configs(dilation=False), include=st.booleans(),
       override=st.sampled_from([None, None, 3]))
def test_avg_pool_matches_reference(backend, cfg, include, override):
    rng, x = _input(cfg)
    args = (cfg["k"], cfg["s"], cfg["p"], cfg["ceil"], include, override)
    y = avg_pool2d_forward(channels_last(x) if cfg["cl"] else x, *args)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(y, avg_pool2d_reference(x, *args), **tol(cfg["dtype"]))
    gy = rng.standard_normal(y.shape).astype(cfg["dtype"])
    gy_in = channels_last(gy) if cfg["cl"] else gy
    np.testing.assert_allclose(avg_pool2d_backward(gy_in, x.shape, *args),
                               avg_pool2d_backward_reference(gy, x.shape, *args),
                               **tol(cfg["dtype"]))


def test_max_pool_ties_take_first_in_row_major_order(backend):
    x = np.array([[[[1, 5, 5], [5, 0, 5], [2, 5, 1]]]], np.float32)
    y, ind = max_pool2d_forward(x, 3)
    assert y.item() == 5 and ind.item() == 1
    y, ind = max_pool2d_forward(x, 2, 1)
    np.testing.assert_array_equal(ind[0, 0], [[1, 1], [3, 5]])


def test_max_pool_nan_wins_and_padding_never_wins(backend):
    x = np.array([[[[1, np.nan], [np.nan, 2]]]], np.float32)
    y, ind = max_pool2d_forward(x, 2)
    assert np.isnan(y.item()) and ind.item() == 2  # the last NaN, like PyTorch
    x = np.full((1, 1, 2, 2), -np.inf, np.float32)
    y, ind = max_pool2d_forward(x, 2, 1, 1)
    assert (ind >= 0).all() and (ind < 4).all()


def test_pool_keeps_channels_last(backend):
    # Both paths give the reference's numbers for channels-last input; the numba kernels
    # also keep its layout (the generic "numpy" path returns whatever its array code makes).
    x = channels_last(np.random.default_rng(0).standard_normal((2, 4, 6, 6)))
    gy = np.random.default_rng(1).standard_normal((2, 4, 3, 3))
    y, ind = max_pool2d_forward(x, 2)
    ry, rind = max_pool2d_reference(np.ascontiguousarray(x), 2)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(ind, rind)
    gx = max_pool2d_backward(gy, ind, x.shape)
    np.testing.assert_array_equal(gx, max_pool2d_backward_reference(gy, rind, x.shape))
    a = avg_pool2d_forward(x, 2)
    np.testing.assert_allclose(a, avg_pool2d_reference(np.ascontiguousarray(x), 2), rtol=1e-12)
    if backend == "numba":
        assert is_channels_last(y) and is_channels_last(ind) and is_channels_last(gx)
        assert is_channels_last(a)


@pytest.mark.parametrize("call, match", [
    (lambda: max_pool2d_forward(np.zeros((3, 4, 4)), 2), r"max_pool2d: expected 4-D input"),
    (lambda: max_pool2d_forward(np.zeros((1, 1, 4, 4)), 2, padding=2),
     r"max_pool2d: padding \(2, 2\) must be at most half the kernel"),
    (lambda: max_pool2d_forward(np.zeros((1, 1, 2, 2)), 3), r"max_pool2d: kernel size"),
    (lambda: avg_pool2d_forward(np.zeros((1, 1, 4, 4)), 2, stride=0),
     r"avg_pool2d: stride must be positive"),
    (lambda: avg_pool2d_forward(np.zeros((1, 1, 4, 4), np.int64), 2), r"floating-point"),
])
def test_pool_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@settings(max_examples=15, deadline=None)
@given(cfg=pool_configs(), include=st.booleans())
def test_pools_match_torch(backend, cfg, include):
    torch = pytest.importorskip("torch", reason="torch not installed (optional comparison)")
    rng, x = _input(dict(cfg, dtype=np.float64))
    xt = torch.tensor(x, requires_grad=True)
    k, s, p, d, ceil = cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["ceil"]
    yt, it = torch.nn.functional.max_pool2d(xt, k, s, p, d, ceil, return_indices=True)
    y, ind = max_pool2d_forward(x, k, s, p, d, ceil)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(ind, it.numpy())
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(max_pool2d_backward(gy, ind, x.shape), xt.grad.numpy(),
                               rtol=1e-12, atol=1e-12)
    xt.grad = None
    yt = torch.nn.functional.avg_pool2d(xt, k, s, p, ceil, include)
    y = avg_pool2d_forward(x, k, s, p, ceil, include)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(avg_pool2d_backward(gy, x.shape, k, s, p, ceil, include),
                               xt.grad.numpy(), rtol=1e-12, atol=1e-12)
