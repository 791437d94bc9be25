"""nn.LayerStats: per-layer statistics equal what the tensors hold, hooks are removed."""

from __future__ import annotations

import numpy as np
import pytest

import minidl
from minidl import nn
from minidl.functional import cross_entropy


def _model() -> nn.Sequential:
    minidl.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 5))


def test_rows_match_the_tensors_and_the_plain_gradients():
    model = _model()
    x = minidl.randn(6, 3, 8, 8)
    y = minidl.tensor(np.arange(6) % 5)
    outs = {}
    for name, m in model.named_modules():
        if name:
            m.register_forward_hook(lambda mod, i, o, n=name: outs.setdefault(n, o))
    with nn.LayerStats(model) as stats:
        loss = cross_entropy(model(x), y)
        loss.backward()
    rows = stats.rows
    assert [r["layer"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r["type"] for r in rows] == ["Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear"]
    relu = outs["1"].detach().numpy()
    assert rows[1]["zeros"] == pytest.approx(float((relu == 0).mean()))
    assert rows[1]["std"] == pytest.approx(float(relu.astype(np.float64).std()), rel=1e-6)
    assert rows[0]["shape"] == (6, 4, 6, 6)
    # grad_std is the std of d loss / d output: the last layer's is the loss gradient
    logits = outs["4"].detach().numpy().astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = (p - np.eye(5)[np.arange(6) % 5]) / 6
    assert rows[4]["grad_std"] == pytest.approx(float(expected.std()), rel=1e-5)
    w, gw = model[4].weight.detach().numpy(), model[4].weight.grad.numpy()
    assert rows[4]["weight_grad_ratio"] == pytest.approx(
        float(np.linalg.norm(gw) / np.linalg.norm(w)), rel=1e-5)
    assert "weight_grad_ratio" not in rows[1]
    text = stats.table()
    assert "Conv2d" in text and "|gW|/|W|" in text and len(text.splitlines()) == 7


def test_hooks_are_removed_and_fusion_returns():
    block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
    x = minidl.randn(2, 3, 8, 8)
    with nn.LayerStats(block) as stats:
        watched = block(x)
    assert watched.grad_fn.name == "MaxPool2d"  # hooks see every layer: no fusion
    assert len(stats.rows) == 3
    assert all(not m._forward_hooks for m in block.modules())
    assert block(x).grad_fn.name == "Conv2dMaxPool2d"  # fused again once the hooks are gone
    assert np.allclose(block(x).detach().numpy(), watched.detach().numpy())


def test_before_backward_and_without_grad():
    model = _model()
    with nn.LayerStats(model) as stats, minidl.no_grad():
        model(minidl.randn(2, 3, 8, 8))
    assert all(r["grad_std"] is None for r in stats.rows)
    with pytest.raises(TypeError, match="LayerStats: expected an nn.Module"):
        nn.LayerStats("model")
