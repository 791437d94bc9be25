"""PyTorch as an oracle: forward and backward of a sample of core ops on random inputs.

Skipped when torch is not installed (it is an optional test dependency).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed; oracle tests skipped")

import minidl  # noqa: E402
import minidl.functional as F  # noqa: E402

TF = torch.nn.functional


def _compare(m_fn, t_fn, arrays, atol=1e-10, rtol=1e-8):
    """Run both frameworks in float64 with the same random upstream gradient."""
    mx = [minidl.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    tx = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    my, ty = m_fn(*mx), t_fn(*tx)
    np.testing.assert_allclose(my.detach().numpy(), ty.detach().numpy(), atol=atol, rtol=rtol)
    u = np.random.default_rng(7).standard_normal(my.shape)
    my.backward(u)
    ty.backward(torch.tensor(u))
    for m, t in zip(mx, tx):
        if t.requires_grad:
            np.testing.assert_allclose(m.grad.numpy(), t.grad.numpy(), atol=atol, rtol=rtol)


R = np.random.default_rng(0)


def _r(*shape):
    return R.standard_normal(shape)


CASES = {
    "add_bcast": (lambda a, b: a + b, lambda a, b: a + b, [_r(3, 1, 4), _r(2, 4)]),
    "div": (lambda a, b: a / b, lambda a, b: a / b, [_r(2, 3), np.abs(_r(3)) + 0.5]),
    "pow": (lambda a, b: a ** b, lambda a, b: a ** b, [np.abs(_r(2, 3)) + 0.1, _r(2, 3)]),
    "matmul_batched": (F.matmul, torch.matmul, [_r(2, 1, 3, 4), _r(3, 4, 2)]),
    "sum_axes": (lambda x: x.sum(axis=(0, 2), keepdims=True),
                 lambda x: x.sum(dim=(0, 2), keepdim=True), [_r(2, 3, 4)]),
    "mean": (lambda x: x.mean(axis=-1), lambda x: x.mean(dim=-1), [_r(2, 3, 4)]),
    "getitem_adv": (lambda x: x[[0, 2, 0], 1:], lambda x: x[[0, 2, 0], 1:], [_r(3, 4)]),
    "gelu": (F.gelu, TF.gelu, [_r(4, 5) * 3]),
    "sigmoid": (F.sigmoid, torch.sigmoid, [_r(4, 5) * 5]),
    "tanh": (F.tanh, torch.tanh, [_r(4, 5)]),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), lambda x: TF.leaky_relu(x, 0.1), [_r(10)]),
    "softmax": (lambda x: F.softmax(x, 0), lambda x: torch.softmax(x, 0), [_r(4, 3)]),
    "log_softmax": (F.log_softmax, lambda x: torch.log_softmax(x, -1), [_r(4, 3) * 10]),
    "pad": (lambda x: F.pad(x, ((0, 0), (1, 2))), lambda x: TF.pad(x, (1, 2)), [_r(2, 3)]),
    "stack_permute": (lambda a, b: F.stack([a, b], 1).permute(2, 0, 1),
                      lambda a, b: torch.stack([a, b], 1).permute(2, 0, 1),
                      [_r(2, 3), _r(2, 3)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_against_torch(name) -> None:
    m_fn, t_fn, arrays = CASES[name]
    _compare(m_fn, t_fn, arrays)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_cross_entropy_labels(reduction, smoothing) -> None:
    labels = R.integers(0, 5, 6)
    _compare(lambda x: F.softmax_cross_entropy(x, labels, reduction, smoothing),
             lambda x: TF.cross_entropy(x, torch.tensor(labels), reduction=reduction,
                                        label_smoothing=smoothing),
             [_r(6, 5) * 4])


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_probabilities(smoothing) -> None:
    p = np.abs(_r(6, 5))
    p /= p.sum(axis=1, keepdims=True)
    _compare(lambda x, q: F.softmax_cross_entropy(x, q, label_smoothing=smoothing),
             lambda x, q: TF.cross_entropy(x, q, label_smoothing=smoothing),
             [_r(6, 5), p])


def test_max_ties_like_amax() -> None:
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [5.0, 1.0, 5.0, 4.0]])
    _compare(lambda t: F.max(t, axis=1), lambda t: torch.amax(t, dim=1), [x])
    _compare(lambda t: F.min(t), lambda t: torch.amin(t), [x])


def test_maximum_ties() -> None:
    a = np.array([1.0, 2.0, 3.0, -1.0])
    b = np.array([1.0, 0.0, 3.0, 4.0])
    _compare(F.maximum, torch.maximum, [a, b])
    _compare(F.minimum, torch.minimum, [a, b])


def test_float32_mse_and_linear() -> None:
    x = minidl.randn(5, 4, requires_grad=True)
    w = minidl.randn(3, 4, requires_grad=True)
    b = minidl.randn(3, requires_grad=True)
    t = minidl.randn(5, 3)
    F.mse_loss(F.linear(x, w, b), t).backward()
    tx, tw, tb = (torch.tensor(v.detach().numpy(), requires_grad=True) for v in (x, w, b))
    TF.mse_loss(TF.linear(tx, tw, tb), torch.tensor(t.numpy())).backward()
    for m, o in ((x, tx), (w, tw), (b, tb)):
        assert m.grad.dtype == np.float32
        np.testing.assert_allclose(m.grad.numpy(), o.grad.numpy(), rtol=1e-5, atol=1e-6)
