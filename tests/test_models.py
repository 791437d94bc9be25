"""Tests of ``minidl.models``: parameter counts, output shapes, gradients and batch-norm
buffers of the ready-made CNNs."""

from __future__ import annotations

import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl import nn
from minidl.models import Residual, Scale, resnet9, seed_cnn


def n_params(model: nn.Module) -> int:
    return sum(p.size for p in model.parameters())


def images(n: int, c: int, size: int) -> minidl.Tensor:
    x = np.random.default_rng(0).normal(size=(n, c, size, size)).astype(np.float32)
    return minidl.tensor(x)


def test_seed_cnn_matches_the_keras_tutorial() -> None:
    model = seed_cnn()
    # conv 3*9*32+32, conv 32*9*64+64, dense 2304*128+128, dense 128*10+10
    assert n_params(model) == 896 + 18_496 + 295_040 + 1_290 == 315_722
    out = model(images(5, 3, 32))
    assert out.shape == (5, 10) and out.dtype == np.float32
    assert [type(m).__name__ for m in model] == [
        "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert model[0].activation == model[2].activation == "relu"


def _unfused_reference(model: nn.Sequential, x: minidl.Tensor) -> minidl.Tensor:
    """``model`` run layer by layer with fusion off: conv2d, then a separate relu, then
    max_pool2d, each its own op (the fused kernels never run)."""
    old = nn.set_fusion(False)
    try:
        h = x
        for m in model:
            if isinstance(m, nn.Conv2d):
                h = F.relu(F.conv2d(h, m.weight, m.bias, stride=m.stride, padding=m.padding))
            else:
                h = m(h)
        return h
    finally:
        nn.set_fusion(old)


def _grads(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: p.grad.numpy().copy() for name, p in model.named_parameters()}


def test_seed_cnn_fused_relu_equals_separate_relu() -> None:
    model = seed_cnn()
    assert nn.fusion_enabled()
    x = images(4, 3, 32)
    r = minidl.tensor(np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32))
    fused = model(x)
    (fused * r).sum().backward()
    fused_grads = _grads(model)
    model.zero_grad()
    ref = _unfused_reference(model, x)
    (ref * r).sum().backward()
    np.testing.assert_allclose(fused.detach().numpy(), ref.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    for name, g in _grads(model).items():
        np.testing.assert_allclose(fused_grads[name], g, rtol=1e-4,
                                   atol=1e-5 * np.abs(g).max(), err_msg=name)
    old = nn.set_fusion(False)  # unfused, Conv2d(activation="relu") runs the conv epilogue
    try:
        np.testing.assert_allclose(model(x).detach().numpy(), ref.detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
    finally:
        nn.set_fusion(old)
    # the ReLU matters here: without it (or with |y| in its place) the output changes
    old = nn.set_fusion(False)
    try:
        h = x
        for m in model[:4]:
            h = F.conv2d(h, m.weight, m.bias) if isinstance(m, nn.Conv2d) else m(h)
    finally:
        nn.set_fusion(old)
    assert (h.detach().numpy() < 0).mean() > 0.1


@pytest.mark.parametrize(("in_channels", "size", "classes", "flat"),
                         [(1, 28, 10, 64 * 5 * 5), (3, 32, 4, 64 * 6 * 6), (1, 10, 3, 64)])
def test_seed_cnn_other_inputs(in_channels: int, size: int, classes: int, flat: int) -> None:
    model = seed_cnn(num_classes=classes, in_channels=in_channels, image_size=size)
    assert model[5].weight.shape == (128, flat)
    out = model(images(3, in_channels, size))
    assert out.shape == (3, classes)
    expected = (in_channels * 9 * 32 + 32) + (32 * 9 * 64 + 64) + (flat * 128 + 128) \
        + (128 * classes + classes)
    assert n_params(model) == expected


def test_seed_cnn_rejects_too_small_images() -> None:
    with pytest.raises(ValueError, match="image_size must be >= 10"):
        seed_cnn(image_size=9)


def test_seed_cnn_backward_reaches_every_parameter() -> None:
    model = seed_cnn(in_channels=1, image_size=28)
    x = images(2, 1, 28)
    model(x).sum().backward()
    got = _grads(model)
    model.zero_grad()
    _unfused_reference(model, x).sum().backward()
    shapes = {name: p.shape for name, p in model.named_parameters()}
    for name, want in _grads(model).items():
        assert got[name].shape == shapes[name] and got[name].dtype == np.float32, name
        assert np.abs(want).max() > 0, name
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                   err_msg=name)


def test_resnet9_shapes_and_parameter_count() -> None:
    w = 8
    model = resnet9(width=w)
    # conv weights (no bias): 27w + 18w^2 + 2*36w^2 + 72w^2 + 288w^2 + 2*576w^2;
    # batch norms: 2 * (w + 2w + 2*2w + 4w + 8w + 2*8w); linear (no bias): 8w * 10
    assert n_params(model) == 27 * w + 1602 * w * w + 2 * 35 * w + 80 * w == 103_944
    x = images(2, 3, 32)
    x.requires_grad = True
    out = model(x)
    assert out.shape == (2, 10) and out.dtype == np.float32
    r = np.random.default_rng(2).standard_normal((2, 10)).astype(np.float32)
    (out * minidl.tensor(r)).sum().backward()
    assert x.grad is not None and x.grad.shape == (2, 3, 32, 32)
    assert np.isfinite(x.grad.numpy()).all() and np.abs(x.grad.numpy()).max() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        g = p.grad.numpy()
        assert np.isfinite(g).all() and np.abs(g).max() > 0, name  # reached, not zero
    assert isinstance(model[3], Residual) and isinstance(model[-1], Scale)


def test_resnet9_full_width_is_the_dawnbench_size() -> None:
    assert n_params(resnet9()) == 6_573_120
    assert n_params(resnet9(num_classes=100, width=4)) == 1602 * 16 + 177 * 4 - 80 * 4 \
        + 8 * 4 * 100


def test_resnet9_batchnorm_buffers_update_in_train_mode_only() -> None:
    model = resnet9(width=4)
    bn = model[0][1]
    assert isinstance(bn, nn.BatchNorm2d)
    buffers = {k: np.array(v.data) for k, v in model.named_buffers()}
    assert "0.1.running_mean" in buffers

    model.eval()
    model(images(2, 3, 32))
    for k, v in model.named_buffers():
        np.testing.assert_array_equal(v.data, buffers[k], err_msg=k)

    model.train()
    x = images(4, 3, 32)
    model(x)
    assert int(bn.num_batches_tracked.data) == 1
    changed = [k for k, v in model.named_buffers()
               if not np.array_equal(v.data, buffers[k])]
    assert len(changed) == len(buffers)  # every mean, var and counter moved
    # the first BN sees conv0(x): its running mean moved towards that batch's mean
    with minidl.no_grad():
        y = model[0][0](x).data
    y = y.astype(np.float64)
    expected = 0.9 * buffers["0.1.running_mean"] + 0.1 * y.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(bn.running_mean.data, expected, rtol=1e-5, atol=1e-6)
    m = y.size // y.shape[1]  # the running variance takes the unbiased batch variance
    unbiased = ((y - y.mean(axis=(0, 2, 3), keepdims=True)) ** 2).sum(axis=(0, 2, 3)) / (m - 1)
    expected = 0.9 * buffers["0.1.running_var"] + 0.1 * unbiased
    np.testing.assert_allclose(bn.running_var.data, expected, rtol=1e-5, atol=1e-6)


def test_resnet9_train_and_eval_outputs_differ_but_eval_is_deterministic() -> None:
    model = resnet9(width=4)
    x = images(3, 3, 32)
    model.eval()
    a, b = model(x).data, model(x).data
    np.testing.assert_array_equal(a, b)
    model.train()
    assert not np.allclose(model(x).data, a)  # batch statistics, not running ones


def test_scale_and_residual() -> None:
    s = Scale(0.5)
    assert s(minidl.tensor([2.0, 4.0])).tolist() == [1.0, 2.0]
    assert "factor=0.5" in repr(s)
    r = Residual(Scale(3.0))
    assert r(minidl.tensor([1.0, -2.0])).tolist() == [4.0, -8.0]
