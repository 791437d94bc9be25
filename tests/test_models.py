"""Tests of ``minidl.models``: parameter counts, output shapes, gradients and batch-norm
buffers of the ready-made CNNs."""

from __future__ import annotations

import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl import nn
from minidl.models import Residual, Scale, airbench94, airbench94_param_groups, resnet9, seed_cnn


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


# ------------------------------------------------------------------------------ airbench94


def _airbench_count(widths, classes=10, trainable=False) -> int:
    """Parameters of airbench94 by hand: whitening conv 24x3x2x2 + bias, per group two 3x3
    convs (no bias) and two batch norms (scale + shift), the head (no bias)."""
    total = (0 if trainable else 24 * 12) + 24
    cin = 24
    for c in widths:
        total += 9 * cin * c + 9 * c * c + (2 if trainable else 4) * c
        cin = c
    return total + widths[-1] * classes


def test_airbench94_shapes_counts_and_names() -> None:
    model = airbench94()
    assert n_params(model) == _airbench_count((64, 256, 256)) == 1_972_792
    assert model.num_parameters(trainable_only=True) == _airbench_count(
        (64, 256, 256), trainable=True) == 1_971_352
    out = model(images(2, 3, 32))
    assert out.shape == (2, 10) and out.dtype == np.float32
    small = airbench94(num_classes=4, widths=(4, 8, 6), scaling_factor=0.5)
    assert n_params(small) == _airbench_count((4, 8, 6), 4)
    for size in (25, 32, 48):
        assert small(images(2, 3, size)).shape == (2, 4)
    assert [n for n, _ in model.named_children()] == [
        "whiten", "act", "group1", "group2", "group3", "pool", "flatten", "head", "scale"]
    assert [n for n, _ in model.group1.named_children()] == [
        "conv1", "pool", "norm1", "act1", "conv2", "norm2", "act2"]
    assert isinstance(model[-1], Scale) and model.scale.factor == pytest.approx(1 / 9)
    assert model.head.bias is None and model.head.weight.shape == (10, 256)


def test_airbench94_frozen_weights_and_layer_settings() -> None:
    model = airbench94(widths=(8, 16, 16), batchnorm_momentum=0.3)
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == sorted(["whiten.weight"] + [f"group{g}.norm{k}.weight"
                                                 for g in (1, 2, 3) for k in (1, 2)])
    assert model.whiten.kernel_size == (2, 2) and model.whiten.padding == (0, 0)
    assert np.array_equal(model.whiten.bias.detach().numpy(), np.zeros(24, np.float32))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 6
    assert all(bn.eps == 1e-12 and bn.momentum == 0.3 for bn in bns)
    assert all(bn.weight.tolist() == [1.0] * bn.num_features for bn in bns)
    for g in (model.group1, model.group2, model.group3):
        for conv in (g.conv1, g.conv2):
            assert conv.padding == "same" and conv.bias is None
            w = conv.weight.detach().numpy()
            cin = conv.in_channels
            k = min(cin, conv.out_channels)
            eye = np.zeros((k, cin, 3, 3), np.float32)
            eye[np.arange(k), np.arange(k), 1, 1] = 1
            np.testing.assert_array_equal(w[:k], eye)  # identity filters first ...
            if k < conv.out_channels:  # ... the default init after them
                assert np.abs(w[k:]).max() > 0
    x = images(2, 24, 9)  # 24 -> 8 channels: the 8 outputs copy the first 8 inputs
    np.testing.assert_array_equal(model.group1.conv1(x).detach().numpy(), x.numpy()[:, :8])


def _call_with(model: nn.Module, names: list[str], tensors, x):
    """``model(x)`` computed with ``tensors`` in place of the parameters ``names`` (so that
    gradcheck, which perturbs copies of its inputs, sees them used)."""
    owners = dict(model.named_modules())
    slots = [(owners[n.rpartition(".")[0]], n.rpartition(".")[2]) for n in names]
    old = [m._parameters[k] for m, k in slots]
    try:
        for (m, k), t in zip(slots, tensors):
            m._parameters[k] = t
        return model(x)
    finally:
        for (m, k), t in zip(slots, old):
            m._parameters[k] = t


@pytest.mark.parametrize("training", [True, False])
def test_airbench94_gradcheck_tiny_float64(training) -> None:
    from minidl.gradcheck import gradcheck

    model = airbench94(num_classes=3, widths=(2, 3, 2)).double().train(training)
    rng = np.random.default_rng(5)
    with minidl.no_grad():  # eval mode: running statistics that are not the defaults
        for _ in range(2):
            model(minidl.tensor(rng.normal(size=(4, 3, 25, 25))))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    assert len(names) == 14 and "whiten.weight" not in names
    x = minidl.tensor(rng.normal(size=(2, 3, 25, 25)), requires_grad=True)
    inputs = [x] + [minidl.tensor(p.detach().numpy(), requires_grad=True) for _, p in named]

    def f(x, *ps):
        return _call_with(model, names, ps, x) * 9.0  # undo the 1/9: unit-sized outputs

    out = f(*inputs)  # not vacuous: every checked input does reach the output
    grads = minidl.autograd.grad([out], inputs, [minidl.ones(*out.shape, dtype=np.float64)])
    assert all(float(np.abs(g.numpy()).max()) > 0 for g in grads)
    # elementwise for every parameter (the biggest, group1.conv1.weight, has 432 entries),
    # random directions for the 3750-element input
    assert gradcheck(f, inputs, max_elements=512)


def test_airbench94_fused_conv_pool_matches_layer_by_layer() -> None:
    model = airbench94(widths=(4, 8, 8)).double()
    x = minidl.tensor(np.random.default_rng(2).normal(size=(3, 3, 32, 32)))
    u = minidl.tensor(np.random.default_rng(3).normal(size=(3, 10)))
    results = []
    for fused in (True, False):
        old = nn.set_fusion(fused)
        try:
            model.zero_grad()
            y = model(x)
            (y * u).sum().backward()
        finally:
            nn.set_fusion(old)
        results.append((y.detach().numpy(), {n: p.grad.numpy().copy() for n, p in
                                             model.named_parameters() if p.requires_grad}))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-10, atol=1e-12)
    for name, g in results[0][1].items():
        np.testing.assert_allclose(g, results[1][1][name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_airbench94_errors() -> None:
    for kwargs, msg in [
        (dict(widths=(64, 256)), r"widths must be three positive ints"),
        (dict(widths=(64, 0, 8)), r"widths must be three positive ints"),
        (dict(num_classes=0), r"num_classes must be >= 1, got 0"),
        (dict(batchnorm_momentum=1.5), r"batchnorm_momentum must be in \[0, 1\]"),
        (dict(scaling_factor=float("inf")), r"scaling_factor must be finite"),
    ]:
        with pytest.raises(ValueError, match="airbench94: " + msg):
            airbench94(**kwargs)


def test_airbench94_param_groups() -> None:
    model = airbench94(widths=(4, 8, 8))
    groups = airbench94_param_groups(model, lr=0.01, weight_decay=0.05, bias_scaler=64)
    assert len(groups) == 2
    norm, other = groups
    assert [n for n, _ in norm["params"]] == [f"group{g}.norm{k}.bias"
                                              for g in (1, 2, 3) for k in (1, 2)]
    assert [n for n, _ in other["params"]] == ["whiten.bias"] + [
        f"group{g}.conv{k}.weight" for g in (1, 2, 3) for k in (1, 2)] + ["head.weight"]
    assert norm["lr"] == pytest.approx(0.64) and other["lr"] == 0.01
    # the same decay step lr * weight_decay in both groups
    assert norm["lr"] * norm["weight_decay"] == pytest.approx(other["lr"] * other["weight_decay"])
    opt = minidl.optim.SGD(groups, momentum=0.85, nesterov=True)
    assert sorted(n for g in opt.param_groups for n in g["param_names"]) == sorted(
        n for n, p in model.named_parameters() if p.requires_grad)
    plain = nn.Sequential(nn.Linear(3, 2))
    assert len(airbench94_param_groups(plain, 0.1, 0.0)) == 1  # no batch norm: one group
    with pytest.raises(ValueError, match="airbench94_param_groups: bias_scaler must be > 0"):
        airbench94_param_groups(model, 0.1, 0.0, bias_scaler=0)
    with pytest.raises(ValueError, match="airbench94_param_groups: lr must be >= 0"):
        airbench94_param_groups(model, -0.1, 0.0)
    with pytest.raises(ValueError, match="has no parameter that requires grad"):
        airbench94_param_groups(plain.requires_grad_(False), 0.1, 0.0)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        airbench94_param_groups([], 0.1, 0.0)


def test_airbench94_recipe_steps_end_to_end() -> None:
    """Whitening init, SGD with the groups, label smoothing and Lookahead: a few steps on
    one batch lower its loss, frozen weights stay exactly put, and everything stays
    float32."""
    minidl.manual_seed(0)
    model = airbench94(num_classes=2, widths=(8, 16, 16))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 3, 32, 32)).astype(np.float32)
    y = np.arange(16) % 2
    x[y == 1, 0] += 1.0  # class 1 is redder
    nn.init.patch_whitening_(model.whiten.weight, x)
    frozen = {n: p.detach().numpy().copy() for n, p in model.named_parameters()
              if not p.requires_grad}
    opt = minidl.optim.SGD(airbench94_param_groups(model, lr=0.01, weight_decay=5e-4),
                           momentum=0.85, nesterov=True)
    lookahead = minidl.optim.Lookahead(model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2)
    xt, yt = minidl.tensor(x), minidl.tensor(y)
    losses = []
    for step in range(1, 9):
        loss = loss_fn(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
        if step % 2 == 0:
            lookahead.update(decay=0.5)
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        assert p.dtype == np.float32, n
        if n in frozen:
            np.testing.assert_array_equal(p.detach().numpy(), frozen[n], err_msg=n)
    assert all(v.dtype == np.float32 for s in opt.state.values() for v in s.values()
               if hasattr(v, "dtype"))
