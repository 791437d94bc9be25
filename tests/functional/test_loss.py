"""Losses: fused softmax cross-entropy (labels, probabilities, smoothing, reductions) and MSE."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Const, OpCase, check_case

import minidl
import minidl.functional as F

N, C = 4, 5


def _labels(rng):
    return rng.integers(0, C, N)


def _probs(rng):
    p = rng.uniform(0.1, 1.0, (N, C))
    return p / p.sum(axis=1, keepdims=True)


def ce_ref(x, target, reduction="mean", smoothing=0.0):
    z = x - x.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    q = np.eye(x.shape[1])[target] if target.dtype.kind in "iu" else target
    q = q * (1 - smoothing) + smoothing / x.shape[1]
    loss = -(q * logp).sum(axis=1)
    return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


def _mse_ref(p, t, reduction="mean"):
    d = (p - t) ** 2
    return {"mean": d.mean(), "sum": d.sum(), "none": d}[reduction]


def _cases() -> list[OpCase]:
    cases = []
    for red in ("mean", "sum", "none"):
        for s in (0.0, 0.1):
            tag = f"{red}-ls={s}"
            cases.append(OpCase(
                f"ce_labels-{tag}",
                lambda x, t, r=red, s=s: F.softmax_cross_entropy(x, t, r, s),
                lambda x, t, r=red, s=s: ce_ref(x, t, r, s),
                [(N, C), Const(_labels)], gradgrad=red == "mean", op=F.softmax_cross_entropy))
            # probability targets are differentiable too (both inputs require grad)
            cases.append(OpCase(
                f"ce_probs-{tag}",
                lambda x, t, r=red, s=s: F.cross_entropy(x, t, reduction=r, label_smoothing=s),
                lambda x, t, r=red, s=s: ce_ref(x, t, r, s),
                [(N, C), _probs], gradgrad=red == "sum", op=F.cross_entropy))
        cases.append(OpCase(f"mse-{red}", lambda p, t, r=red: F.mse_loss(p, t, r),
                            lambda p, t, r=red: _mse_ref(p, t, r), [(3, 4), (3, 4)],
                            gradgrad=red == "mean", op=F.mse_loss))
    cases.append(OpCase("ce_probs_const", lambda x, t: F.softmax_cross_entropy(x, t),
                        lambda x, t: ce_ref(x, t), [(N, C), Const(_probs)],
                        op=F.softmax_cross_entropy))
    cases.append(OpCase("mse_ndarray_target", lambda p: F.mse_loss(p, np.full((2, 3), 0.5)),
                        lambda p: _mse_ref(p, 0.5), [(2, 3)], op=F.mse_loss))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_loss(case: OpCase) -> None:
    check_case(case)


def test_ce_labels_equal_onehot_probs() -> None:
    x = minidl.randn(N, C)
    y = minidl.tensor([0, 3, 4, 1])
    onehot = minidl.tensor(np.eye(C, dtype=np.float32)[y.numpy()])
    a = F.softmax_cross_entropy(x, y, label_smoothing=0.2)
    b = F.softmax_cross_entropy(x, onehot, label_smoothing=0.2)
    np.testing.assert_allclose(a.item(), b.item(), rtol=1e-6)


def test_ce_extreme_logits_finite() -> None:
    x = minidl.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 1e4]], requires_grad=True)
    loss = F.softmax_cross_entropy(x, [1, 2], label_smoothing=0.1)
    assert np.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), ce_ref(x.detach().numpy().astype(np.float64),
                                                   np.array([1, 2]), smoothing=0.1), rtol=1e-6)
    loss.backward()
    assert np.isfinite(x.grad.numpy()).all()
    assert x.grad.dtype == np.float32


def test_ce_grad_rows_sum_to_zero() -> None:
    x = minidl.randn(N, C, requires_grad=True)
    F.softmax_cross_entropy(x, minidl.tensor([0, 1, 2, 3]), reduction="sum").backward()
    np.testing.assert_allclose(x.grad.numpy().sum(axis=1), np.zeros(N), atol=1e-6)


def test_ce_dtypes() -> None:
    x = minidl.randn(N, C, requires_grad=True)
    # int32 labels, a float64 NumPy one-hot and a list of labels all keep float32
    for t in (np.array([0, 1, 2, 3], dtype=np.int32), np.eye(C)[[0, 1, 2, 3]], [0, 1, 2, 3]):
        loss = F.softmax_cross_entropy(x, t)
        assert loss.dtype == np.float32
        loss.backward()
        assert x.grad.dtype == np.float32


def test_ce_label_out_of_range() -> None:
    x = minidl.randn(2, 3)
    with pytest.raises(ValueError, match="softmax_cross_entropy: label 3 is out of range for 3 "
                                         "classes"):
        F.softmax_cross_entropy(x, minidl.tensor([0, 3]))
    with pytest.raises(ValueError, match="label -1 is out of range"):
        F.softmax_cross_entropy(x, [-1, 0])


def test_ce_argument_errors() -> None:
    x = minidl.randn(2, 3)
    op = "softmax_cross_entropy"
    with pytest.raises(ValueError, match=rf"{op}: logits must be a 2-D \(N, C\) tensor, got "
                                         r"shape \(6,\)"):
        F.softmax_cross_entropy(x.reshape(-1), [0])
    with pytest.raises(TypeError, match=f"{op}: logits must be floating point"):
        F.softmax_cross_entropy(minidl.tensor([[1, 2]]), [0])
    with pytest.raises(ValueError, match=rf"{op}: integer labels must have shape \(2,\), got "
                                         r"\(3,\)"):
        F.softmax_cross_entropy(x, [0, 1, 2])
    with pytest.raises(ValueError, match=rf"{op}: probability targets must have shape \(2, 3\)"):
        F.softmax_cross_entropy(x, minidl.ones(2, 4))
    with pytest.raises(TypeError, match=f"{op}: target dtype float64 differs from logits dtype "
                                        "float32"):
        F.softmax_cross_entropy(x, minidl.ones(2, 3, dtype=np.float64))
    with pytest.raises(ValueError, match=f"{op}: reduction must be one of"):
        F.softmax_cross_entropy(x, [0, 1], reduction="avg")
    with pytest.raises(ValueError, match=f"{op}: label_smoothing must be in"):
        F.softmax_cross_entropy(x, [0, 1], label_smoothing=1.0)
    with pytest.raises(TypeError, match=f"{op}: target must hold integer labels"):
        F.softmax_cross_entropy(x, np.array([True, False]))


def test_mse_errors() -> None:
    with pytest.raises(ValueError, match=r"mse_loss: pred has shape \(2, 3\) but target has "
                                         r"shape \(3,\)"):
        F.mse_loss(minidl.ones(2, 3), minidl.ones(3))
    with pytest.raises(ValueError, match="mse_loss: reduction must be one of"):
        F.mse_loss(minidl.ones(2), minidl.ones(2), reduction="mean ")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_bad_labels_give_nan_without_a_host_check(smoothing: float) -> None:
    # The path the GPU takes (no device-to-host range check), exercised with NumPy arrays.
    from minidl.functional.loss import SoftmaxCrossEntropyFunction

    x = minidl.randn(4, 3, requires_grad=True)
    labels = np.array([0, 3, 2, -1])
    loss = SoftmaxCrossEntropyFunction.apply(x, labels=labels, smoothing=smoothing,
                                             nan_bad_labels=True)
    ref = F.softmax_cross_entropy(x, [0, 0, 2, 0], reduction="none", label_smoothing=smoothing)
    got = loss.detach().numpy()
    assert np.isnan(got[[1, 3]]).all() and loss.dtype == np.float32
    np.testing.assert_allclose(got[[0, 2]], ref.detach().numpy()[[0, 2]], rtol=1e-6)
    loss.backward(minidl.ones(4))
    g = x.grad.numpy()
    assert np.isnan(g[[1, 3]]).all() and np.isfinite(g[[0, 2]]).all()
    assert labels.tolist() == [0, 3, 2, -1]  # the caller's labels are left alone


def test_ce_label_out_of_range_on_device(device: str) -> None:
    x, t = minidl.randn(2, 3, device=device), minidl.tensor([0, 3], device=device)
    if device == "cpu":
        with pytest.raises(ValueError, match="label 3 is out of range"):
            F.softmax_cross_entropy(x, t)
    else:  # no host sync on the GPU: the bad row's loss is NaN instead
        loss = F.softmax_cross_entropy(x, t, reduction="none").numpy()
        assert np.isfinite(loss[0]) and np.isnan(loss[1])
