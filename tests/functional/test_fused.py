"""The fused ``conv2d_max_pool2d`` op and ``Sequential``'s fusion of Conv2d -> (ReLU) ->
MaxPool2d: same values and gradients as the unfused layers, on both kernel paths."""

import numpy as np
import pytest
from helpers import OpCase, check_case, pool2d_ref

import minidl
import minidl.functional as F
from minidl import nn
from minidl.kernels import conv as K
from minidl.kernels import set_backend


@pytest.fixture(params=["numba", "numpy"])
def kernels(request):
    old = set_backend(request.param)
    yield request.param
    set_backend(old)


def _t(rng, shape, grad=True, dtype=np.float64):
    return minidl.tensor(rng.standard_normal(shape).astype(dtype), requires_grad=grad)


CONFIGS = [
    # x shape, w shape, conv (stride, padding, dilation, groups), pool (size, stride, padding)
    ((2, 3, 9, 9), (4, 3, 3, 3), (1, 0, 1, 1), (2, None, 0)),
    ((2, 3, 9, 8), (4, 3, 3, 3), (1, 1, 1, 1), (3, 2, 1)),      # overlapping windows, pad
    ((1, 4, 10, 10), (6, 2, 3, 3), (2, 1, 1, 2), (2, 1, 0)),    # groups, strided conv
    ((2, 2, 7, 7), (1, 2, 2, 2), (1, 0, 2, 1), (2, None, 0)),   # one output channel, dilated
]


def _pair(case, activation, bias):
    _, _, (s, p, d, g), (ps, pst, pp) = case

    def fused(x, w, b=None):
        return F.conv2d_max_pool2d(x, w, b, s, p, d, g, activation=activation, pool_size=ps,
                                   pool_stride=pst, pool_padding=pp)

    def unfused(x, w, b=None):
        return F.max_pool2d(F.conv2d(x, w, b, s, p, d, g, activation=activation), ps, pst, pp)

    return fused, unfused


# The declarative cases (tests/helpers.py) against conv and pool references; the tests
# below compare with the unfused ops on both kernel backends.
CASES = [
    OpCase("conv2d_max_pool2d_relu",
           lambda x, w, b: F.conv2d_max_pool2d(x, w, b, padding=1, activation="relu"),
           lambda x, w, b: pool2d_ref(np.maximum(K.conv2d_reference(x, w, b, 1, 1), 0), 2),
           [(2, 2, 6, 6), (3, 2, 3, 3), (3,)], op=F.conv2d_max_pool2d),
    OpCase("conv2d_max_pool2d_overlap",
           lambda x, w: F.conv2d_max_pool2d(x, w, stride=2, groups=2, pool_size=3,
                                            pool_stride=2, pool_padding=1),
           lambda x, w: pool2d_ref(K.conv2d_reference(x, w, None, 2, 0, 1, 2), 3, 2, 1),
           [(1, 4, 11, 9), (4, 2, 3, 3)], op=F.conv2d_max_pool2d),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case: OpCase) -> None:
    check_case(case)


@pytest.mark.parametrize("case", CONFIGS)
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_equals_unfused_and_gradchecks(case, activation, bias, kernels):
    rng = np.random.default_rng(0)
    xs, ws = case[:2]
    inputs = [_t(rng, xs), _t(rng, ws)] + ([_t(rng, (ws[0],))] if bias else [])
    fused, unfused = _pair(case, activation, bias)
    a, r = fused(*inputs), unfused(*inputs)
    np.testing.assert_array_equal(a.detach().numpy(), r.detach().numpy())
    gp = minidl.tensor(rng.standard_normal(a.shape))
    ga = minidl.autograd.grad((a * gp).sum(), inputs)
    gr = minidl.autograd.grad((r * gp).sum(), inputs)
    for u, v in zip(ga, gr):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-12, atol=1e-12)
    assert minidl.gradcheck(fused, inputs)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_fused_double_backward(activation):
    rng = np.random.default_rng(1)
    case = CONFIGS[0]
    inputs = [_t(rng, case[0]), _t(rng, case[1]), _t(rng, (case[1][0],))]
    fused, _ = _pair(case, activation, True)
    assert minidl.gradgradcheck(fused, inputs, mode="directional", directions=3)


def test_fused_float32_matches_unfused_and_keeps_dtype():
    rng = np.random.default_rng(2)
    inputs = [_t(rng, (4, 3, 16, 16), dtype=np.float32),
              _t(rng, (8, 3, 3, 3), dtype=np.float32), _t(rng, (8,), dtype=np.float32)]
    fused, unfused = _pair(CONFIGS[0], "relu", True)
    a, r = fused(*inputs), unfused(*inputs)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a.detach().numpy(), r.detach().numpy())
    ga = minidl.autograd.grad(a.sum(), inputs)
    gr = minidl.autograd.grad(r.sum(), inputs)
    for u, v in zip(ga, gr):
        assert u.dtype == np.float32
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-5, atol=1e-5)


def test_nan_and_all_negative_windows_route_like_unfused(kernels):
    # Windows whose conv outputs are all negative pool to 0 and pass no gradient; a NaN
    # wins its window and passes no gradient through the ReLU mask either.
    x = minidl.tensor(np.array([[[[1.0, -2.0, -1.0, -3.0],
                                  [np.nan, 0.5, -4.0, -5.0]]]]), requires_grad=True)
    # two output channels (weights 1 and -1): the pooling applies the ReLU itself
    w = minidl.tensor(np.array([1.0, -1.0]).reshape(2, 1, 1, 1), requires_grad=True)
    fused, unfused = _pair(((1, 1, 2, 4), (2, 1, 1, 1), (1, 0, 1, 1), (2, None, 0)),
                           "relu", False)
    a, r = fused(x, w), unfused(x, w)
    np.testing.assert_array_equal(a.detach().numpy(), r.detach().numpy())
    assert np.isnan(a.detach().numpy()[0, 0, 0, 0]) and a.detach().numpy()[0, 0, 0, 1] == 0
    for u, v in zip(minidl.autograd.grad(a.sum(), [x, w]), minidl.autograd.grad(r.sum(), [x, w])):
        np.testing.assert_array_equal(u.numpy(), v.numpy())


def test_fused_retain_graph_and_no_grad():
    rng = np.random.default_rng(3)
    x, w, b = _t(rng, (2, 3, 8, 8)), _t(rng, (4, 3, 3, 3)), _t(rng, (4,))
    y = F.conv2d_max_pool2d(x, w, b, activation="relu").sum()
    y.backward(retain_graph=True)
    first = [t.grad.numpy().copy() for t in (x, w, b)]
    y.backward()
    for t, g in zip((x, w, b), first):
        np.testing.assert_allclose(t.grad.numpy(), 2 * g, rtol=1e-12)
    with minidl.no_grad():
        p = F.conv2d_max_pool2d(x, w, b, activation="relu")
    assert p.grad_fn is None and not p.requires_grad


def test_fused_errors_name_the_op():
    x, w = minidl.randn(1, 3, 8, 8), minidl.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="conv2d_max_pool2d: activation"):
        F.conv2d_max_pool2d(x, w, activation="tanh")
    with pytest.raises(TypeError, match="conv2d_max_pool2d: weight"):
        F.conv2d_max_pool2d(x, w.numpy())
    with pytest.raises(ValueError, match="conv2d"):
        F.conv2d_max_pool2d(x, minidl.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="max_pool2d"):
        F.conv2d_max_pool2d(x, w, pool_size=3, pool_padding=2)
    for bad in (minidl.randn(5), minidl.randn(3), minidl.tensor(np.zeros(4))):  # float64
        with pytest.raises(ValueError, match="conv2d: bias"):
            F.conv2d_max_pool2d(x, w, bad, activation="relu")


# ------------------------------------------------------------------ Sequential fusion


def _net(pattern):
    if pattern == "conv_relu_act":
        layers = [nn.Conv2d(3, 6, 3, activation="relu"), nn.MaxPool2d(2)]
    elif pattern == "conv_then_relu":
        layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    else:
        layers = [nn.Conv2d(3, 6, 3), nn.MaxPool2d(3, stride=2, padding=1)]
    return nn.Sequential(*layers, nn.Flatten())


@pytest.mark.parametrize("pattern", ["conv_relu_act", "conv_then_relu", "conv_pool"])
def test_sequential_fuses_with_same_results(pattern):
    minidl.manual_seed(0)
    net = _net(pattern)
    x = minidl.tensor(np.random.default_rng(4).standard_normal((2, 3, 10, 10)),
                      requires_grad=True)
    x32 = x.detach().numpy().astype(np.float32)
    outs, grads = [], []
    for fuse in (True, False):
        old = nn.set_fusion(fuse)
        try:
            xi = minidl.tensor(x32, requires_grad=True)
            y = net(xi)
            net.zero_grad()
            (y * minidl.tensor(np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape))
             ).sum().backward()
            outs.append(y.detach().numpy())
            grads.append([xi.grad.numpy()] + [p.grad.numpy().copy() for p in net.parameters()])
        finally:
            nn.set_fusion(old)
    np.testing.assert_array_equal(outs[0], outs[1])
    for u, v in zip(*grads):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def _root_op(y):
    # the op that produced the flattened output's input
    return y.grad_fn.inputs[0].grad_fn.name


def test_sequential_fusion_switch_hooks_and_subclasses():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, activation="relu"), nn.MaxPool2d(2), nn.Flatten())
    x = minidl.randn(1, 3, 8, 8)
    assert nn.fusion_enabled() and _root_op(net(x)) == "Conv2dMaxPool2d"
    old = nn.set_fusion(False)
    try:
        assert _root_op(net(x)) == "MaxPool2d"
    finally:
        nn.set_fusion(old)
    seen = []
    h = net[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert _root_op(net(x)) == "MaxPool2d" and seen == [(1, 4, 6, 6)]
    h.remove()
    assert _root_op(net(x)) == "Conv2dMaxPool2d"

    class MyPool(nn.MaxPool2d):
        pass

    net[1] = MyPool(2)
    assert _root_op(net(x)) == "MaxPool2d"


def test_sequential_fusion_keeps_layer_errors():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match="Conv2d: input has 2 channels"):
        net(minidl.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="Conv2d: expected a 4-D"):
        net(minidl.randn(2, 8, 8))


def test_summary_still_lists_every_layer():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, activation="relu"), nn.MaxPool2d(2))
    text = nn.summary(net, (1, 3, 8, 8), print_fn=None)
    assert "Conv2d" in text and "MaxPool2d" in text and "(None, 4, 6, 6)" in text


def test_retained_graph_keeps_the_fast_path_and_frees_after():
    x = minidl.randn(2, 3, 8, 8)
    w, b = minidl.randn(4, 3, 3, 3, requires_grad=True), minidl.randn(4, requires_grad=True)
    p = F.conv2d_max_pool2d(x, w, b, activation="relu")
    node = p.grad_fn
    assert node.cols is not None
    p.sum().backward(retain_graph=True)
    assert node.cols is not None           # kept for the next backward
    p.sum().backward()
    assert node.cols is None               # freed with the graph


@pytest.mark.parametrize("c, hw, padding, fused", [
    (32, 8, 1, False),   # padded 8x8 maps, 32 channels: Winograd alone is faster
    (16, 8, 1, True),    # 16 channels: Winograd's transforms dominate, fuse
    (32, 15, 0, True),   # the seed CNN's 13x13 outputs: 16x16 tiles for 12x12 pooled, fuse
])
def test_sequential_fuses_unless_winograd_is_faster(c, hw, padding, fused):
    from minidl.kernels import set_conv_algorithm

    net = nn.Sequential(nn.Conv2d(c, c, 3, padding=padding), nn.MaxPool2d(2))
    x = minidl.randn(2, c, hw, hw)
    old = set_conv_algorithm("auto")
    try:
        assert net(x).grad_fn.name == ("Conv2dMaxPool2d" if fused else "MaxPool2d")
        set_conv_algorithm("im2col")
        assert net(x).grad_fn.name == "Conv2dMaxPool2d"
        set_conv_algorithm("winograd")     # forced: every eligible conv runs as Winograd
        assert net(x).grad_fn.name == "MaxPool2d"
    finally:
        set_conv_algorithm(old)
