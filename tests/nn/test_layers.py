"""Layers: batch norm / layer norm / dropout modules, activations, losses, conv and pooling
layers (skipped until ``minidl.functional`` provides the ops) and ``summary``."""

from __future__ import annotations

import numpy as np
import pytest

import minidl
import minidl.functional as F
import minidl.nn as nn


def _need(*names: str) -> None:
    missing = [n for n in names if not hasattr(minidl.functional, n)]
    if missing:
        pytest.skip(f"minidl.functional.{', '.join(missing)} not available yet")


def _unbiased_var(x: np.ndarray, axes) -> np.ndarray:
    """Per-channel unbiased variance, written out (not ``np.var``'s ``ddof``) on purpose."""
    m = x.size // x.shape[1]
    mean = x.mean(axis=axes, keepdims=True)
    return ((x - mean) ** 2).sum(axis=axes) / (m - 1)


def test_batchnorm2d_train_eval_and_buffers(rng) -> None:
    bn = nn.BatchNorm2d(3, momentum=0.5)
    x64 = rng.standard_normal((4, 3, 2, 2)) * 3 + 2
    x = minidl.tensor(x64.astype(np.float32))
    y = bn(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.detach().numpy().mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert int(bn.num_batches_tracked.item()) == 1
    xf = x.numpy().astype(np.float64)
    # r = (1 - momentum) r + momentum * stat, from r = 0 (mean) and r = 1 (variance); the
    # variance is the unbiased one (m = 16 values per channel: factor 16 / 15)
    want_mean = 0.5 * xf.mean(axis=(0, 2, 3))
    want_var = 0.5 * 1.0 + 0.5 * _unbiased_var(xf, (0, 2, 3))
    np.testing.assert_allclose(bn.running_mean.numpy(), want_mean, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), want_var, rtol=1e-5)
    biased = 0.5 + 0.5 * xf.var(axis=(0, 2, 3))
    assert np.abs(want_var - biased).min() > 1e-3 * want_var.max()  # the two differ here
    bn.eval()
    y2 = bn(x).detach().numpy()
    ref = (xf - want_mean.reshape(1, 3, 1, 1)) / np.sqrt(want_var.reshape(1, 3, 1, 1) + 1e-5)
    np.testing.assert_allclose(y2, ref, rtol=1e-5, atol=1e-5)
    assert int(bn.num_batches_tracked.item()) == 1  # eval does not count batches


def test_batchnorm_running_stats_over_batches_by_hand(rng) -> None:
    bn = nn.BatchNorm1d(2, momentum=0.3).double()
    bn.weight.data[...] = [2.0, 0.5]
    bn.bias.data[...] = [1.0, -1.0]
    rm, rv = np.zeros(2), np.ones(2)
    for k in range(3):
        x = rng.standard_normal((4, 2, 3)) * (k + 1) + k
        bn(minidl.tensor(x))
        rm = 0.7 * rm + 0.3 * x.mean(axis=(0, 2))
        rv = 0.7 * rv + 0.3 * _unbiased_var(x, (0, 2))
        np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-12, err_msg=str(k))
        np.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-12, err_msg=str(k))
    assert int(bn.num_batches_tracked.item()) == 3
    bn.eval()
    x = rng.standard_normal((3, 2, 3))
    want = ((x - rm[None, :, None]) / np.sqrt(rv[None, :, None] + 1e-5)
            * np.array([2.0, 0.5])[None, :, None] + np.array([1.0, -1.0])[None, :, None])
    np.testing.assert_allclose(bn(minidl.tensor(x)).detach().numpy(), want, rtol=1e-12,
                               atol=1e-12)


def test_batchnorm_cumulative_average_and_no_tracking(rng) -> None:
    bn = nn.BatchNorm1d(2, momentum=None)
    xs = [rng.standard_normal((5, 2)).astype(np.float32) * (k + 1) for k in range(3)]
    for x in xs:
        bn(minidl.tensor(x))
    x64 = [x.astype(np.float64) for x in xs]
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([x.mean(0) for x in x64], 0),
                               rtol=1e-5, atol=1e-6)
    # momentum 1/k at batch k: the first batch replaces the initial 1, then a plain average
    np.testing.assert_allclose(bn.running_var.numpy(),
                               np.mean([_unbiased_var(x, 0) for x in x64], 0), rtol=1e-5)
    free = nn.BatchNorm1d(2, track_running_stats=False, affine=False).eval()
    assert list(free.state_dict()) == []
    np.testing.assert_allclose(free(minidl.tensor(xs[0])).numpy().mean(0), 0, atol=1e-6)


def test_batchnorm_errors() -> None:
    with pytest.raises(ValueError, match=r"BatchNorm2d: input has 4 channels but layer expects "
                                         r"3 \(input shape \(2, 4, 5, 5\)\)"):
        nn.BatchNorm2d(3)(minidl.zeros(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected a \(N, C, H, W\) input"):
        nn.BatchNorm2d(3)(minidl.zeros(2, 3))


def test_layernorm_module(rng) -> None:
    ln = nn.LayerNorm((2, 3))
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    y = ln(minidl.tensor(x)).detach().numpy()
    ref = (x - x.mean((1, 2), keepdims=True)) / np.sqrt(x.var((1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert [n for n, _ in ln.named_parameters()] == ["weight", "bias"]
    with pytest.raises(ValueError, match="LayerNorm: input shape"):
        ln(minidl.zeros(2, 3, 2))


@pytest.mark.parametrize("p", [0.2, 0.7])  # not 0.5, where 1/p equals 1/(1-p)
def test_dropout_module_drops_a_fraction_p_and_scales_by_1_over_1_minus_p(p) -> None:
    d = nn.Dropout(p)
    x = minidl.ones(200, 250, requires_grad=True)  # n = 50,000 draws
    y = d(x)
    out = y.detach().numpy()
    dropped = out == 0
    # the dropped fraction is Binomial(n, p) / n: within 5 standard deviations of p
    sd = np.sqrt(p * (1 - p) / out.size)
    assert abs(dropped.mean() - p) < 5 * sd, dropped.mean()
    np.testing.assert_allclose(out[~dropped], 1.0 / (1.0 - p), rtol=1e-6)  # survivors
    assert abs(out.mean() - 1.0) < 5 * sd / (1 - p)  # the expectation is unchanged
    assert y.dtype == np.float32
    y.backward(minidl.ones(200, 250))
    np.testing.assert_array_equal(x.grad.numpy(), out)  # same mask, same scale
    d.eval()
    assert d(x) is x


@pytest.mark.parametrize("mod,fn", [
    (nn.ReLU(), F.relu), (nn.Sigmoid(), F.sigmoid), (nn.Tanh(), F.tanh), (nn.GELU(), F.gelu),
    (nn.LeakyReLU(0.2), lambda x: F.leaky_relu(x, 0.2)),
    (nn.Softmax(dim=1), lambda x: F.softmax(x, axis=1)), (nn.Identity(), lambda x: x),
    (nn.Flatten(), lambda x: x.reshape(x.shape[0], -1)),
])
def test_activation_modules(mod, fn, rng) -> None:
    x = minidl.tensor(rng.standard_normal((3, 4)).astype(np.float32))
    np.testing.assert_array_equal(mod(x).numpy(), fn(x).numpy())


def test_losses(rng) -> None:
    logits = minidl.tensor(rng.standard_normal((5, 4)).astype(np.float32))
    y = minidl.tensor(np.array([0, 1, 2, 3, 1]))
    for red in ("mean", "sum", "none"):
        for s in (0.0, 0.1):
            got = nn.CrossEntropyLoss(reduction=red, label_smoothing=s)(logits, y)
            want = F.softmax_cross_entropy(logits, y, reduction=red, label_smoothing=s)
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    a, b = minidl.ones(3), minidl.zeros(3)
    assert nn.MSELoss()(a, b).item() == 1.0
    assert nn.MSELoss(reduction="sum")(a, b).item() == 3.0
    assert repr(nn.CrossEntropyLoss(label_smoothing=0.1)) == (
        "CrossEntropyLoss(reduction='mean', label_smoothing=0.1)")


def test_summary_mlp_totals_and_model_untouched() -> None:
    m = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                      nn.Linear(16, 3))
    m[4].bias.requires_grad = False
    before = {k: v.numpy().copy() for k, v in m.state_dict().items()}
    state = minidl.random.get_rng_state()
    printed = []
    assert m.summary((2, 8), print_fn=printed.append) is None  # a REPL echoes nothing more
    text = printed[0]
    assert text == m.summary((2, 8), print_fn=None)
    assert "Total params: 227" in text and "Trainable params: 224" in text
    assert "Non-trainable params: 3" in text
    assert "1 (BatchNorm1d)" in text and "(None, 16)" in text
    assert all(mod.training for mod in m.modules())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])
    assert minidl.random.get_rng_state() == state
    assert "Total params: 227" in nn.summary(m, (None, 8), print_fn=None)
    with pytest.raises(ValueError, match="summary: input_shape must be a full shape"):
        nn.summary(m, (8, None), print_fn=None)


def seed_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dense(2304, 128), nn.ReLU(), nn.Dense(128, 10))


def test_seed_net_param_count_without_running() -> None:
    m = seed_net()
    counts = [sum(p.size for p in layer.parameters()) for layer in m if
              any(True for _ in layer.parameters())]
    assert counts == [896, 18496, 295040, 1290]
    assert m.num_parameters() == 315_722


def test_seed_net_summary() -> None:
    _need("conv2d", "max_pool2d")
    text = nn.summary(seed_net(), (1, 3, 32, 32), print_fn=None)
    assert "Total params: 315,722" in text
    assert "Trainable params: 315,722" in text and "Non-trainable params: 0" in text
    assert "(None, 32, 30, 30)" in text and "(None, 64, 6, 6)" in text
    assert "(None, 2304)" in text and "(None, 10)" in text


def test_summary_shows_fused_activations() -> None:
    _need("conv2d")
    m = nn.Sequential(nn.Conv2d(3, 4, 3, activation="relu"), nn.BatchNorm2d(4),
                      nn.BatchNorm2d(4, activation="relu"))
    text = m.summary((1, 3, 8, 8), print_fn=None)
    assert "0 (Conv2d + relu)" in text and "1 (BatchNorm2d) " in text
    assert "2 (BatchNorm2d + relu)" in text


def test_conv_and_pool_layers(rng) -> None:
    _need("conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")
    x = minidl.tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    conv = nn.Conv2d(3, 4, 3, padding=1)
    y = conv(x)
    assert y.shape == (2, 4, 8, 8) and y.dtype == np.float32
    want = F.conv2d(x, conv.weight, conv.bias, stride=1, padding=1)
    np.testing.assert_array_equal(y.detach().numpy(), want.detach().numpy())
    assert nn.MaxPool2d(2)(x).shape == (2, 3, 4, 4)
    assert nn.AvgPool2d(2, stride=1)(x).shape == (2, 3, 7, 7)
    assert nn.AdaptiveAvgPool2d(1)(x).shape == (2, 3, 1, 1)
    with pytest.raises(ValueError, match=r"Conv2d: input has 3 channels but layer expects 1"):
        nn.Conv2d(1, 4, 3)(x)


def test_conv_layer_errors_without_functional() -> None:
    with pytest.raises(ValueError, match=r"Conv2d: expected a 4-D \(N, C, H, W\) input"):
        nn.Conv2d(1, 4, 3)(minidl.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="must be divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
