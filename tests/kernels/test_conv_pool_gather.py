"""The conv -> max-pool weight-gradient gather (``minidl.kernels.conv_pool``) against the
dense formula ``gy_rows.T @ cols``, and its use by ``conv2d_max_pool2d``."""

import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl.kernels import conv_pool
from minidl.kernels.im2col import im2col
from minidl.kernels.pool import max_pool2d_backward, max_pool2d_forward


def _dense(gp, ind, cols, y_shape, w_shape):
    gy = max_pool2d_backward(gp, ind, y_shape)
    rows = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).reshape(-1, y_shape[1])
    oc, c, kh, kw = w_shape
    return (rows.T @ cols).reshape(oc, kh, kw, c).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool", [(2, 2), (3, 2), (2, 1)])
def test_gather_equals_dense_product(dtype, pool):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 11, 11)).astype(dtype)
    w_shape = (6, 3, 3, 3)
    cols = im2col(x, 3)                                   # conv output 9x9
    y = rng.standard_normal((5, 6, 9, 9)).astype(dtype)
    p, ind = max_pool2d_forward(y, pool[0], pool[1])
    gp = rng.standard_normal(p.shape).astype(dtype) * (rng.random(p.shape) < 0.6)
    got = conv_pool.pooled_grad_weight(gp, p, ind, cols, (9, 9), w_shape)
    want = _dense(gp, ind, cols, y.shape, w_shape)
    assert got.dtype == dtype and got.shape == w_shape and got.flags.c_contiguous
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_non_finite_inputs_still_poison_the_gradient():
    x = np.ones((1, 1, 4, 4))
    x[0, 0, 1, 1] = np.inf
    cols = im2col(x, 1)
    y = x.copy()
    p, ind = max_pool2d_forward(y, 2)
    gp = np.zeros(p.shape)                                 # e.g. masked away upstream
    got = conv_pool.pooled_grad_weight(gp, p, ind, cols, (4, 4), (1, 1, 1, 1))
    assert np.isnan(got).all()                             # 0 * inf, as the GEMM gives


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="pooled_grad_weight: shapes disagree"):
        conv_pool.pooled_grad_weight(np.ones((1, 2, 1, 1)), np.ones((1, 2, 1, 1)),
                                     np.zeros((1, 2, 1, 1), np.int32), np.ones((4, 3)),
                                     (2, 2), (2, 1, 1, 1))


@pytest.mark.parametrize("sparse_max_k", [0, conv_pool.SPARSE_MAX_K])
@pytest.mark.parametrize("x_needs_grad", [False, True])
def test_fused_op_gather_and_dense_paths_agree_with_unfused(sparse_max_k, x_needs_grad,
                                                            monkeypatch):
    monkeypatch.setattr(conv_pool, "SPARSE_MAX_K", sparse_max_k)
    rng = np.random.default_rng(1)
    x = minidl.tensor(rng.standard_normal((8, 3, 16, 16)).astype(np.float32),
                      requires_grad=x_needs_grad)
    w = minidl.tensor(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), requires_grad=True)
    b = minidl.tensor(rng.standard_normal(16).astype(np.float32), requires_grad=True)
    fused = F.conv2d_max_pool2d(x, w, b, activation="relu")
    ref = F.max_pool2d(F.conv2d(x, w, b, activation="relu"), 2)
    gp = minidl.tensor(rng.standard_normal(fused.shape).astype(np.float32))
    inputs = [x, w, b] if x_needs_grad else [w, b]
    got = minidl.autograd.grad((fused * gp).sum(), inputs)
    want = minidl.autograd.grad((ref * gp).sum(), inputs)
    for a, r in zip(got, want):
        np.testing.assert_allclose(a.numpy(), r.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("conv", [
    # x shape, w shape, stride, padding, dilation
    ((3, 4, 12, 12), (6, 4, 3, 3), 1, 0, 1),
    ((2, 3, 13, 11), (5, 3, 3, 3), 1, 1, 1),
    ((2, 2, 15, 15), (4, 2, 3, 2), 2, (1, 0), (1, 2)),
])
def test_input_scatter_equals_dense_transposed_conv(dtype, conv):
    from minidl.kernels.conv import conv2d_backward, conv2d_forward, conv2d_geometry

    xs, ws, s, p, d = conv
    rng = np.random.default_rng(2)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    y = conv2d_forward(x, w, None, s, p, d)
    pooled, ind = max_pool2d_forward(y, 2)
    gp = rng.standard_normal(pooled.shape).astype(dtype) * (rng.random(pooled.shape) < 0.7)
    g = conv2d_geometry(xs, ws, s, p, d)
    got = conv_pool.pooled_grad_input(gp, pooled, ind, w, xs, g)
    gy = max_pool2d_backward(gp, ind, y.shape)
    want = conv2d_backward(x, w, gy, s, p, d, need_weight_grad=False, need_bias_grad=False)[0]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert got.shape == xs and got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_input_scatter_rejects_groups():
    from minidl.kernels.conv import conv2d_geometry

    g = conv2d_geometry((1, 4, 6, 6), (4, 2, 3, 3), groups=2)
    with pytest.raises(ValueError, match="groups must be 1"):
        conv_pool.pooled_grad_input(np.ones((1, 4, 2, 2)), np.ones((1, 4, 2, 2)),
                                    np.zeros((1, 4, 2, 2), np.int32), np.ones((4, 2, 3, 3)),
                                    (1, 4, 6, 6), g)


def test_pooled_arrays_must_agree():
    ok = np.ones((1, 2, 1, 1))
    with pytest.raises(ValueError, match="pooled_grad_weight: gradient .* must be the same"):
        conv_pool.pooled_grad_weight(ok, np.ones((1, 2, 1, 2)), np.zeros((1, 2, 1, 1), np.int32),
                                     np.ones((4, 1)), (2, 2), (2, 1, 1, 1))
