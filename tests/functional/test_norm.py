"""batch_norm, layer_norm and dropout: forward vs NumPy references, gradient and
double-gradient checks (float64), running statistics, dtypes and error messages."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Const, OpCase, check_case

import minidl
from minidl.functional.norm import batch_norm, dropout, group_norm, layer_norm
from minidl.gradcheck import gradcheck, gradgradcheck

# -- references -------------------------------------------------------------------------


def _axes(x: np.ndarray) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.ndim))


def _pshape(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def bn_train_ref(x, w=None, b=None, eps=1e-5):
    ax = _axes(x)
    mean = x.mean(axis=ax, keepdims=True)
    var = x.var(axis=ax, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if w is not None:
        y = y * w.reshape(_pshape(x)) + b.reshape(_pshape(x))
    return y


def bn_eval_ref(x, rm, rv, w=None, b=None, eps=1e-5):
    y = (x - rm.reshape(_pshape(x))) / np.sqrt(rv.reshape(_pshape(x)) + eps)
    if w is not None:
        y = y * w.reshape(_pshape(x)) + b.reshape(_pshape(x))
    return y


def ln_ref(x, k, w=None, b=None, eps=1e-5):
    ax = tuple(range(x.ndim - k, x.ndim))
    y = (x - x.mean(axis=ax, keepdims=True)) / np.sqrt(x.var(axis=ax, keepdims=True) + eps)
    if w is not None:
        y = y * w + b
    return y


def _train(x, *wb):
    c = x.shape[1]
    rm = minidl.zeros(c, dtype=x.dtype)
    rv = minidl.ones(c, dtype=x.dtype)
    return batch_norm(x, rm, rv, *wb, training=True)


RM = np.array([0.3, -0.2, 0.1])
RV = np.array([0.5, 1.5, 2.0])


def _eval(x, *wb):
    dt = x.dtype
    return batch_norm(x, minidl.tensor(RM.astype(dt)), minidl.tensor(RV.astype(dt)), *wb,
                      training=False)


def gn_ref(x, g, w=None, b=None, eps=1e-5):
    """Group norm by its definition: per sample and group of C/g channels."""
    n, c = x.shape[:2]
    grp = x.reshape(n, g, -1)
    y = ((grp - grp.mean(axis=2, keepdims=True))
         / np.sqrt(grp.var(axis=2, keepdims=True) + eps)).reshape(x.shape)
    pshape = (1, c) + (1,) * (x.ndim - 2)
    if w is not None:
        y = y * w.reshape(pshape) + b.reshape(pshape)
    return y


CASES = [
    OpCase("bn_train_2d", _train, bn_train_ref, [(6, 3)], gradgrad=True, op=batch_norm),
    OpCase("bn_train_2d_affine", _train, bn_train_ref, [(6, 3), (3,), (3,)], gradgrad=True,
           op=batch_norm),
    OpCase("bn_train_4d", _train, bn_train_ref, [(3, 3, 2, 2)], gradgrad=True, op=batch_norm),
    OpCase("bn_train_4d_affine", _train, bn_train_ref, [(2, 3, 3, 2), (3,), (3,)],
           gradgrad=True, op=batch_norm),
    OpCase("bn_eval_2d", _eval, lambda x: bn_eval_ref(x, RM, RV), [(5, 3)], gradgrad=True,
           op=batch_norm),
    OpCase("bn_eval_4d_affine", _eval, lambda x, w, b: bn_eval_ref(x, RM, RV, w, b),
           [(2, 3, 2, 2), (3,), (3,)], gradgrad=True, op=batch_norm),
    OpCase("ln_1", lambda x: layer_norm(x, 4), lambda x: ln_ref(x, 1), [(3, 4)],
           gradgrad=True, op=layer_norm),
    OpCase("ln_2_affine", lambda x, w, b: layer_norm(x, (3, 2), w, b),
           lambda x, w, b: ln_ref(x, 2, w, b), [(2, 4, 3, 2), (3, 2), (3, 2)], gradgrad=True,
           op=layer_norm),
    OpCase("gn_4d_affine", lambda x, w, b: group_norm(x, 2, w, b),
           lambda x, w, b: gn_ref(x, 2, w, b), [(3, 4, 2, 3), (4,), (4,)], gradgrad=True,
           op=group_norm),
    OpCase("gn_2d_instance", lambda x: group_norm(x, 3), lambda x: gn_ref(x, 3), [(4, 3)],
           gradgrad=True, op=group_norm),
    OpCase("gn_3d_one_group", lambda x, w, b: group_norm(x, 1, w, b),
           lambda x, w, b: gn_ref(x, 1, w, b), [(2, 3, 5), (3,), (3,)], gradgrad=True,
           op=group_norm),
    OpCase("dropout_mask", lambda x, m: dropout(x, 0.25, mask=m),
           lambda x, m: x * m / 0.75, [(4, 5), Const(lambda r: (r.random((4, 5)) > 0.3)
                                                      .astype(np.float64))], gradgrad=True,
                                                      op=dropout),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_norm_ops(case: OpCase) -> None:
    check_case(case)


def test_batch_norm_gradcheck_weight_only_paths(rng) -> None:
    # Gradients wanted for the affine parameters only, and for x only.
    x = minidl.tensor(rng.standard_normal((5, 2, 3)))
    w = minidl.tensor(rng.uniform(0.5, 2, 2), requires_grad=True)
    b = minidl.tensor(rng.standard_normal(2), requires_grad=True)
    assert gradcheck(lambda w, b: _train(x, w, b), [w, b])
    xg = minidl.tensor(rng.standard_normal((5, 2, 3)), requires_grad=True)
    wc, bc = minidl.tensor(rng.uniform(0.5, 2, 2)), minidl.tensor(rng.standard_normal(2))
    assert gradgradcheck(lambda x: _train(x, wc, bc), [xg])


def test_batch_norm_running_stats_update(rng) -> None:
    x = rng.standard_normal((8, 3, 4, 4)).astype(np.float32) * 2 + 1
    rm, rv = minidl.zeros(3), minidl.ones(3)
    y = batch_norm(minidl.tensor(x), rm, rv, training=True, momentum=0.2)
    m = x.size // 3
    mean = x.mean(axis=(0, 2, 3))
    var_unbiased = x.var(axis=(0, 2, 3)) * m / (m - 1)
    np.testing.assert_allclose(rm.numpy(), 0.2 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv.numpy(), 0.8 + 0.2 * var_unbiased, rtol=1e-5)
    assert y.dtype == rm.dtype == rv.dtype == np.float32
    # eval mode never touches the running statistics
    before = rm.numpy().copy(), rv.numpy().copy()
    batch_norm(minidl.tensor(x), rm, rv, training=False)
    np.testing.assert_array_equal(rm.numpy(), before[0])
    np.testing.assert_array_equal(rv.numpy(), before[1])


def test_batch_norm_without_running_stats_uses_batch(rng) -> None:
    x = rng.standard_normal((6, 2))
    y = batch_norm(minidl.tensor(x), None, None, training=False)
    np.testing.assert_allclose(y.numpy(), bn_train_ref(x), atol=1e-12)


def test_float32_stays_float32(rng) -> None:
    x = minidl.tensor(rng.standard_normal((4, 3, 2, 2)).astype(np.float32), requires_grad=True)
    w = minidl.tensor(np.ones(3, np.float32), requires_grad=True)
    b = minidl.tensor(np.zeros(3, np.float32), requires_grad=True)
    for out in (_train(x, w, b), _eval(x, w, b), layer_norm(x, (2, 2)), dropout(x, 0.3)):
        assert out.dtype == np.float32
        out.sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32


def test_dropout_statistics_and_seed() -> None:
    x = minidl.ones(200, 100)
    minidl.manual_seed(3)
    a = dropout(x, 0.3).numpy()
    minidl.manual_seed(3)
    b = dropout(x, 0.3).numpy()
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((a == 0).mean() - 0.3) < 0.02
    assert abs(a.mean() - 1.0) < 0.03  # inverted dropout keeps the expectation


def test_dropout_eval_and_edge_cases() -> None:
    x = minidl.ones(3, 3)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert dropout(x, 1.0).numpy().sum() == 0.0
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\], got 1.5"):
        dropout(x, 1.5)
    with pytest.raises(ValueError, match=r"dropout: mask has shape \(2,\) but input"):
        dropout(x, 0.5, mask=np.ones(2))


def test_batch_norm_errors() -> None:
    x = minidl.ones(4, 3)
    with pytest.raises(ValueError, match=r"batch_norm: running_mean must have shape \(3,\)"):
        batch_norm(x, minidl.zeros(2), minidl.ones(2), training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm(minidl.ones(1, 3), minidl.zeros(3), minidl.ones(3), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: weight must have shape \(3,\)"):
        batch_norm(x, None, None, minidl.ones(4), minidl.zeros(4))
    with pytest.raises(ValueError, match="batch_norm: input must be"):
        batch_norm(minidl.ones(3), None, None)


def test_layer_norm_errors() -> None:
    with pytest.raises(ValueError, match=r"layer_norm: input shape \(2, 3\) does not end with"):
        layer_norm(minidl.ones(2, 3), 4)


def test_group_norm_matches_batch_independence_and_errors() -> None:
    """No statistic mixes samples: each sample's output is the same alone or in a batch; the
    layer holds (C,) affine parameters; bad group counts name the op."""
    rng = np.random.default_rng(0)
    x = minidl.tensor(rng.normal(size=(4, 6, 3, 3)))
    gn = minidl.nn.GroupNorm(3, 6, dtype=np.float64)
    assert [n for n, _ in gn.named_parameters()] == ["weight", "bias"]
    whole = gn(x).detach().numpy()
    alone = gn(minidl.tensor(x.numpy()[1:2])).detach().numpy()
    assert np.allclose(whole[1:2], alone)
    gn.eval()
    assert np.allclose(gn(x).detach().numpy(), whole)
    with pytest.raises(ValueError, match="group_norm: num_groups must be a positive divisor "
                                         "of the 6 channels, got 4"):
        group_norm(x, 4)
    with pytest.raises(ValueError, match="GroupNorm: input has 5 channels but layer expects 6"):
        gn(minidl.ones(2, 5, 3, 3, dtype=np.float64))
