"""Tests of ``minidl.models``: parameter counts, output shapes, gradients and batch-norm
buffers of the ready-made CNNs."""

from __future__ import annotations

import numpy as np
import pytest

import minidl
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


def test_seed_cnn_fused_relu_equals_separate_relu() -> None:
    fused = seed_cnn()
    layers = []
    for m in fused:
        if isinstance(m, nn.Conv2d):
            plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size)
            plain.load_state_dict(m.state_dict())
            layers += [plain, nn.ReLU()]
        else:
            layers.append(m)
    unfused = nn.Sequential(*layers)
    x = images(4, 3, 32)
    np.testing.assert_array_equal(fused(x).detach().numpy(), unfused(x).detach().numpy())


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
    out = model(images(2, 1, 28))
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.shape == p.shape and p.grad.dtype == np.float32, name


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
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == (2, 3, 32, 32)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
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
    expected = 0.9 * buffers["0.1.running_mean"] + 0.1 * y.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(bn.running_mean.data, expected, rtol=1e-5, atol=1e-6)


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
