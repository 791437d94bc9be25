"""Gradient checks of the conv2d and pooling autograd ops (the kernels themselves are
compared with plain-loop references in tests/kernels)."""

import numpy as np
import pytest
from helpers import OpCase, check_case, distinct, pool2d_ref
from hypothesis import given, settings
from hypothesis import strategies as st

import minidl
import minidl.functional as F
from minidl.kernels import conv as K
from minidl.kernels import is_channels_last, set_backend
from minidl.kernels.elementwise import relu_backward


@pytest.fixture(params=["numba", "numpy"])
def kernels(request):
    old = set_backend(request.param)
    yield request.param
    set_backend(old)


def _t(rng, shape, grad=True):
    return minidl.tensor(rng.standard_normal(shape), requires_grad=grad)


def _adaptive_ref(x, out):
    # PyTorch's windows: [floor(i*H/OH), ceil((i+1)*H/OH))
    (oh, ow), (h, w) = out, x.shape[2:]
    y = np.empty(x.shape[:2] + out)
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = x[:, :, (i * h) // oh:-(-(i + 1) * h // oh),
                              (j * w) // ow:-(-(j + 1) * w // ow)].mean(axis=(2, 3))
    return y


# The declarative cases (tests/helpers.py): forward against plain-loop references, dtypes,
# input/layout/repeat invariants and gradient checks. The tests below add configurations,
# both kernel backends and double backward.
CASES = [
    OpCase("conv2d", lambda x, w, b: F.conv2d(x, w, b, padding=1),
           lambda x, w, b: K.conv2d_reference(x, w, b, 1, 1), [(2, 2, 5, 5), (3, 2, 3, 3), (3,)],
           op=F.conv2d),
    OpCase("conv2d_stride_pad_dilation_groups",
           lambda x, w: F.conv2d(x, w, None, (2, 1), (1, 0), (1, 2), 2),
           lambda x, w: K.conv2d_reference(x, w, None, (2, 1), (1, 0), (1, 2), 2),
           [(1, 4, 6, 7), (4, 2, 2, 3)], op=F.conv2d),
    OpCase("conv2d_relu", lambda x, w, b: F.conv2d(x, w, b, stride=2, activation="relu"),
           lambda x, w, b: np.maximum(K.conv2d_reference(x, w, b, 2), 0),
           [(1, 3, 7, 6), (2, 3, 3, 3), (2,)], op=F.conv2d),
    OpCase("max_pool2d", lambda x: F.max_pool2d(x, 2), lambda x: pool2d_ref(x, 2),
           [distinct(2, 2, 4, 5)], gradgrad=True, op=F.max_pool2d),
    OpCase("max_pool2d_stride_pad_dilation", lambda x: F.max_pool2d(x, 3, 2, 1, dilation=2),
           lambda x: pool2d_ref(x, 3, 2, 1, 2), [distinct(1, 2, 7, 6)], op=F.max_pool2d),
    OpCase("avg_pool2d", lambda x: F.avg_pool2d(x, (2, 3)),
           lambda x: pool2d_ref(x, (2, 3), mode="avg"), [(2, 2, 4, 6)], gradgrad=True,
           op=F.avg_pool2d),
    OpCase("avg_pool2d_pad_exclude", lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
           lambda x: pool2d_ref(x, 3, 2, 1, mode="avg", count_include_pad=False),
           [(1, 2, 5, 6)], op=F.avg_pool2d),
    OpCase("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (2, 3)),
           lambda x: _adaptive_ref(x, (2, 3)), [(1, 2, 5, 7)], gradgrad=True,
           op=F.adaptive_avg_pool2d),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case: OpCase) -> None:
    check_case(case)


CONV_CASES = [
    # (x shape, w shape, stride, padding, dilation, groups, bias)
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 0, 1, 1, True),
    ((2, 4, 7, 6), (6, 2, 3, 2), (2, 1), (1, 2), (1, 2), 2, True),
    ((1, 2, 6, 6), (3, 2, 3, 3), 3, 1, 1, 1, False),  # stride does not divide
    ((2, 3, 5, 5), (2, 3, 3, 3), 1, "same", 1, 1, True),
    ((1, 4, 5, 7), (4, 1, 3, 3), 2, (1, 0, 2, 1), 1, 4, True),  # depthwise, asymmetric pad
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_conv2d_gradcheck(case, activation, kernels):
    xs, ws, stride, padding, dilation, groups, bias = case
    rng = np.random.default_rng(0)
    x, w = _t(rng, xs), _t(rng, ws)
    inputs = [x, w] + ([_t(rng, (ws[0],))] if bias else [])

    def f(x, w, b=None):
        return F.conv2d(x, w, b, stride, padding, dilation, groups, activation=activation)

    assert minidl.gradcheck(f, inputs)
    ref = K.conv2d_reference(x.data, w.data, inputs[2].data if bias else None, stride,
                             padding, dilation, groups)
    if activation:
        ref = np.maximum(ref, 0)
    np.testing.assert_allclose(f(*inputs).detach().numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CONV_CASES[:3])
def test_conv2d_double_backward(case):
    xs, ws, stride, padding, dilation, groups, bias = case
    rng = np.random.default_rng(1)
    inputs = [_t(rng, xs), _t(rng, ws)] + ([_t(rng, (ws[0],))] if bias else [])
    assert minidl.gradgradcheck(
        lambda *a: F.conv2d(*a, stride=stride, padding=padding, dilation=dilation,
                            groups=groups), inputs, mode="directional", directions=3)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), oc=st.integers(1, 3), h=st.integers(3, 7),
       w=st.integers(3, 7), k=st.integers(1, 3), s=st.integers(1, 3), p=st.integers(0, 1),
       relu=st.booleans())
def test_conv2d_gradcheck_random_configs(n, c, oc, h, w, k, s, p, relu):
    rng = np.random.default_rng(n * 100 + c * 10 + h)
    x, wt, b = _t(rng, (n, c, h, w)), _t(rng, (oc, c, k, k)), _t(rng, (oc,))
    act = "relu" if relu else None
    assert minidl.gradcheck(lambda x, wt, b: F.conv2d(x, wt, b, s, p, activation=act),
                            [x, wt, b])


def test_conv2d_float32_stays_float32():
    x = minidl.randn(2, 3, 8, 8, requires_grad=True)
    w = minidl.randn(4, 3, 3, 3, requires_grad=True)
    b = minidl.zeros(4, requires_grad=True)
    y = F.conv2d(x, w, b, padding=1, activation="relu")
    y.sum().backward()
    assert y.dtype == x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32


def test_conv2d_bad_input_errors():
    x, w = minidl.ones(1, 3, 5, 5), minidl.ones(8, 1, 3, 3)
    with pytest.raises(ValueError, match="input has 3 channels but weight expects 1"):
        F.conv2d(x, w)
    with pytest.raises(ValueError, match="conv2d"):
        F.conv2d(minidl.ones(3, 5, 5), minidl.ones(8, 3, 3, 3))
    with pytest.raises(ValueError, match="activation"):
        F.conv2d(x, minidl.ones(8, 3, 3, 3), activation="tanh")


POOL_CASES = [((2, 3, 7, 6), 2, None, 0), ((1, 2, 7, 7), 3, 2, 1), ((2, 2, 6, 5), (2, 3), (2, 1),
                                                                      (1, 1))]


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
def test_max_pool2d_grad_and_double_grad(shape, k, s, p, kernels):
    x = _t(np.random.default_rng(2), shape)
    assert minidl.gradcheck(lambda x: F.max_pool2d(x, k, s, p), [x])
    assert minidl.gradgradcheck(lambda x: F.max_pool2d(x, k, s, p), [x])


def test_max_pool2d_ties_go_to_first_max():
    x = minidl.tensor(np.ones((1, 1, 2, 2)), requires_grad=True)
    F.max_pool2d(x, 2).sum().backward()
    assert x.grad.numpy()[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
@pytest.mark.parametrize("include_pad", [True, False])
def test_avg_pool2d_grad_and_double_grad(shape, k, s, p, include_pad, kernels):
    x = _t(np.random.default_rng(3), shape)

    def f(x):
        return F.avg_pool2d(x, k, s, p, count_include_pad=include_pad)

    assert minidl.gradcheck(f, [x])
    assert minidl.gradgradcheck(f, [x])


@pytest.mark.parametrize("out", [1, (2, 3), (3, 2), (5, 4)])
def test_adaptive_avg_pool2d(out):
    x = _t(np.random.default_rng(4), (2, 3, 5, 6))
    assert minidl.gradcheck(lambda x: F.adaptive_avg_pool2d(x, out), [x])
    y = F.adaptive_avg_pool2d(x, out).detach().numpy()
    oh, ow = (out, out) if isinstance(out, int) else out
    # PyTorch's windows: [floor(i*H/OH), ceil((i+1)*H/OH))
    for i in range(oh):
        for j in range(ow):
            r0, r1 = (i * 5) // oh, -(-(i + 1) * 5 // oh)
            c0, c1 = (j * 6) // ow, -(-(j + 1) * 6 // ow)
            np.testing.assert_allclose(y[:, :, i, j], x.data[:, :, r0:r1, c0:c1].mean((2, 3)))


def _channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("layout", ["c", "channels_last", "strided", "c_grad_cl_output"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (16, 32, 10, 11)])  # serial and parallel
def test_relu_backward_kernel_matches_numpy(layout, shape):
    rng = np.random.default_rng(5)
    gy = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(shape).astype(np.float32)
    if layout == "channels_last":
        gy, y = _channels_last(gy), _channels_last(y)
    elif layout == "strided":
        gy, y = gy[:, :, ::2], y[:, :, ::2]
    elif layout == "c_grad_cl_output":  # e.g. a Flatten gradient into a pooled conv output
        y = _channels_last(y)
    out = relu_backward(gy, y)
    np.testing.assert_array_equal(out, gy * (y > 0))
    assert out.dtype == np.float32
    if layout == "c_grad_cl_output":
        assert is_channels_last(out)
