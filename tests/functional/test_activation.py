"""Activations: relu, leaky_relu, sigmoid, tanh, gelu (exact), softmax, log_softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import OpCase, away_from_zero, check_case

import minidl
import minidl.functional as F


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis=-1):
    return np.log(_softmax(x, axis))


def _gelu(x):
    return x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


CASES = [
    OpCase("relu", F.relu, lambda x: np.maximum(x, 0), [away_from_zero(3, 4)], gradgrad=True),
    OpCase("relu_method", lambda x: x.relu(), lambda x: np.maximum(x, 0), [away_from_zero(5)],
           op=F.relu),
    OpCase("leaky_relu", F.leaky_relu, lambda x: np.where(x > 0, x, 0.01 * x),
           [away_from_zero(3, 4)]),
    OpCase("leaky_relu_slope", lambda x: F.leaky_relu(x, 0.2),
           lambda x: np.where(x > 0, x, 0.2 * x), [away_from_zero(6)], gradgrad=True,
           op=F.leaky_relu),
    OpCase("sigmoid", F.sigmoid, lambda x: 1 / (1 + np.exp(-x)), [(3, 4)], gradgrad=True,
           low=-4, high=4),
    OpCase("tanh", F.tanh, np.tanh, [(3, 4)], gradgrad=True),
    OpCase("gelu", F.gelu, _gelu, [(3, 4)], gradgrad=True, low=-3, high=3),
    OpCase("softmax", F.softmax, _softmax, [(3, 4)], gradgrad=True),
    OpCase("softmax_axis0", lambda x: F.softmax(x, axis=0), lambda x: _softmax(x, 0),
           [(3, 4)], op=F.softmax),
    OpCase("softmax_3d_mid", lambda x: x.softmax(1), lambda x: _softmax(x, 1), [(2, 3, 2)],
           op=F.softmax),
    OpCase("log_softmax", F.log_softmax, _log_softmax, [(3, 4)], gradgrad=True),
    OpCase("log_softmax_axis0", lambda x: x.log_softmax(axis=-2),
           lambda x: _log_softmax(x, 0), [(3, 4)], gradgrad=True, op=F.log_softmax),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case: OpCase) -> None:
    check_case(case)


def test_gelu_known_values() -> None:
    y = F.gelu(minidl.tensor(np.array([-1.0, 0.0, 1.0, 3.0])))
    np.testing.assert_allclose(y.numpy(), [-0.15865525393145707, 0.0, 0.8413447460685429,
                                           2.99595030590511], rtol=1e-12)


def test_extreme_inputs_stay_finite() -> None:
    x = minidl.tensor([-1e4, -100.0, 0.0, 100.0, 1e4], requires_grad=True)
    for f in (F.sigmoid, F.tanh, F.softmax, F.log_softmax, F.gelu, F.relu):
        x.grad = None
        y = f(x)
        assert np.isfinite(y.detach().numpy()).all(), f.__name__
        (y * minidl.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
        assert np.isfinite(x.grad.numpy()).all(), f.__name__
    np.testing.assert_allclose(F.sigmoid(x).detach().numpy(), [0, 0, 0.5, 1, 1], atol=1e-30)
    np.testing.assert_allclose(F.softmax(x).detach().numpy(), [0, 0, 0, 0, 1])


def test_relu_grad_at_zero_is_zero() -> None:
    x = minidl.tensor([0.0, 1.0], requires_grad=True)
    F.relu(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0]


def test_softmax_rows_sum_to_one() -> None:
    y = F.softmax(minidl.randn(4, 7) * 10)
    np.testing.assert_allclose(y.numpy().sum(axis=1), np.ones(4), rtol=1e-6)


@pytest.mark.parametrize("f", [F.relu, F.leaky_relu, F.sigmoid, F.tanh, F.gelu, F.softmax,
                               F.log_softmax])
def test_int_input_rejected(f) -> None:
    with pytest.raises(TypeError, match=f"{f.__name__}: expected a floating-point tensor, got "
                                        "dtype int64"):
        f(minidl.tensor([1, 2]))


def test_softmax_axis_error() -> None:
    with pytest.raises(ValueError, match=r"softmax: axis 2 out of range for shape \(2, 3\)"):
        F.softmax(minidl.ones(2, 3), axis=2)
    with pytest.raises(ValueError, match="log_softmax: axis"):
        F.log_softmax(minidl.tensor(1.0))


@pytest.mark.parametrize("kernels", ["numba", "numpy"])
@pytest.mark.parametrize("layout", ["c", "channels_last", "strided"])
def test_gelu_kernels_match_the_formula(kernels, layout) -> None:
    # the one-pass numba kernels (C order and channels-last storage alike) and the generic
    # array path against the erf formula in float64, values and gradient
    import math

    from minidl.kernels import set_backend
    from minidl.kernels.elementwise import gelu_backward, gelu_forward

    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((2, 5, 4, 3)) * 3
    gy64 = rng.standard_normal(x64.shape)
    erf = np.vectorize(math.erf)
    want_y = 0.5 * x64 * (1 + erf(x64 / math.sqrt(2)))
    want_g = gy64 * (0.5 * (1 + erf(x64 / math.sqrt(2)))
                     + x64 * np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi))

    def arrange(a):
        if layout == "channels_last":
            return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        return a[:, ::2] if layout == "strided" else a

    old = set_backend(kernels)
    try:
        for dt, tol in ((np.float64, 1e-12), (np.float32, 2e-6)):
            x, gy = arrange(x64.astype(dt)), arrange(gy64.astype(dt))
            y, g = gelu_forward(x), gelu_backward(gy, x)
            assert y.dtype == dt and g.dtype == dt
            np.testing.assert_allclose(y, arrange(want_y), rtol=tol, atol=tol)
            np.testing.assert_allclose(g, arrange(want_g), rtol=tol, atol=tol)
    finally:
        set_backend(old)
    with pytest.raises(ValueError, match="gelu_backward: gy shape"):
        gelu_backward(np.zeros(3), np.zeros(4))
