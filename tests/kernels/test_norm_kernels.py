"""The fused batch-norm kernels (channels-last / row layouts) against the generic NumPy path."""

import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl.kernels import norm as K


def _channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _bn(x, affine, training, rm=None, rv=None):
    c = x.shape[1]
    rng = np.random.default_rng(7)
    w = minidl.tensor(rng.standard_normal(c).astype(x.dtype), requires_grad=True) \
        if affine else None
    b = minidl.tensor(rng.standard_normal(c).astype(x.dtype), requires_grad=True) \
        if affine else None
    return F.batch_norm(x, rm, rv, w, b, training=training), w, b


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_fast_path_matches_generic_path(affine, training):
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((4, 5, 6, 3)) * 3 + 1).astype(np.float32)
    outs = []
    for layout in (np.ascontiguousarray, _channels_last):
        x = minidl.tensor(layout(base), requires_grad=True)
        assert (K.rows_view(x.data) is not None) == (layout is _channels_last)
        rm, rv = minidl.zeros(5), minidl.ones(5)
        y, w, b = _bn(x, affine, training, rm, rv)
        gy = rng.standard_normal(y.shape).astype(np.float32) if not outs else outs[0][-1]
        y.backward(minidl.tensor(gy))
        grads = [x.grad.numpy()] + ([w.grad.numpy(), b.grad.numpy()] if affine else [])
        outs.append((y.detach().numpy(), rm.numpy(), rv.numpy(), grads, gy))
    (y0, rm0, rv0, g0, _), (y1, rm1, rv1, g1, _) = outs
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm1, rm0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv1, rv0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        assert a.dtype == np.float32


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5, 2)])
def test_fast_path_gradcheck(shape):
    rng = np.random.default_rng(1)
    data = rng.standard_normal(shape)
    if len(shape) == 4:
        data = _channels_last(data)
    x = minidl.tensor(data, requires_grad=True)
    w = minidl.tensor(rng.standard_normal(shape[1]), requires_grad=True)
    b = minidl.tensor(rng.standard_normal(shape[1]), requires_grad=True)
    assert K.rows_view(x.data) is not None
    assert minidl.gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                            [x, w, b])
    assert minidl.gradgradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b,
                                                             training=True),
                                [x, w, b], mode="directional")


def test_batch_stats_are_float64_accurate():
    x = (np.random.default_rng(2).standard_normal((1000, 3)) + 1e3).astype(np.float32)
    mean, var = K.batch_stats(x)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(var, x.astype(np.float64).var(0), rtol=1e-6)


@pytest.mark.parametrize("layout", ["c", "channels_last", "rows"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_relu_equals_bn_then_relu(layout, training):
    rng = np.random.default_rng(3)
    shape = (6, 4) if layout == "rows" else (3, 4, 5, 2)
    data = rng.standard_normal(shape)
    if layout == "channels_last":
        data = _channels_last(data)
    x = minidl.tensor(data, requires_grad=True)
    w = minidl.tensor(rng.standard_normal(4), requires_grad=True)
    b = minidl.tensor(rng.standard_normal(4), requires_grad=True)
    rm, rv = minidl.tensor(rng.standard_normal(4)), minidl.tensor(rng.random(4) + 0.5)

    def fused(x, w, b):
        return F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.0,
                            activation="relu")

    def plain(x, w, b):
        return F.relu(F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.0))

    np.testing.assert_allclose(fused(x, w, b).detach().numpy(),
                               plain(x, w, b).detach().numpy(), rtol=1e-12, atol=1e-12)
    assert minidl.gradcheck(fused, [x, w, b])
    assert minidl.gradgradcheck(fused, [x, w, b], mode="directional")


def test_batchnorm2d_activation_option():
    bn = minidl.nn.BatchNorm2d(3, activation="relu")
    y = bn(minidl.randn(4, 3, 5, 5))
    assert (y.detach().numpy() >= 0).all() and "activation='relu'" in repr(bn)
    with pytest.raises(ValueError, match="activation"):
        minidl.nn.BatchNorm2d(3, activation="tanh")
