"""Reductions: sum / mean / max / min over axes (negative, tuples, keepdims), argmax."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import OpCase, check_case, distinct

import minidl
import minidl.functional as F

_AXES = [None, 0, -1, 1, (0, 2), (-1, 0), ()]


def _cases() -> list[OpCase]:
    cases = []
    for axis in _AXES:
        for keep in (False, True):
            tag = f"axis={axis}-keep={keep}"
            gg = axis in (None, -1, (0, 2))
            cases += [
                OpCase(f"sum-{tag}", lambda x, a=axis, k=keep: F.sum(x, a, k),
                       lambda x, a=axis, k=keep: np.sum(x, a, keepdims=k), [(2, 3, 4)],
                       gradgrad=gg, op=F.sum),
                OpCase(f"mean-{tag}", lambda x, a=axis, k=keep: x.mean(a, keepdims=k),
                       lambda x, a=axis, k=keep: np.mean(x, a, keepdims=k), [(2, 3, 4)],
                       op=F.mean),
                OpCase(f"max-{tag}", lambda x, a=axis, k=keep: F.max(x, a, k),
                       lambda x, a=axis, k=keep: np.max(x, a, keepdims=k), [distinct(2, 3, 4)],
                       gradgrad=gg, op=F.max),
                OpCase(f"min-{tag}", lambda x, a=axis, k=keep: x.min(a, keepdims=k),
                       lambda x, a=axis, k=keep: np.min(x, a, keepdims=k), [distinct(2, 3, 4)],
                       op=F.min),
            ]
    cases += [
        OpCase("sum-0d", lambda x: x.sum(), np.sum, [()], op=F.sum),
        OpCase("sum-0d-axis0", lambda x: x.sum(0), lambda x: x, [()], op=F.sum),
        OpCase("max-1d", lambda x: x.max(), np.max, [distinct(7)], gradgrad=True, op=F.max),
        OpCase("mean-then-mul", lambda x: x.mean(axis=1) * x.sum(axis=1),
               lambda x: x.mean(axis=1) * x.sum(axis=1), [(3, 4)], gradgrad=True,
               op=(F.mean, F.sum, F.mul)),
    ]
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reduction(case: OpCase) -> None:
    check_case(case)


@pytest.mark.parametrize("op", [F.max, F.min])
def test_extreme_ties_share_gradient(op) -> None:
    x = minidl.tensor([[3.0, 1.0, 3.0, 3.0], [1.0, 1.0, 0.0, 2.0]], requires_grad=True)
    y = op(x, axis=1)
    y.sum().backward()
    g = x.grad.numpy()
    np.testing.assert_allclose(g.sum(axis=1), [1.0, 1.0])  # total gradient is preserved
    if op is F.max:
        np.testing.assert_allclose(g, [[1 / 3, 0, 1 / 3, 1 / 3], [0, 0, 0, 1]], rtol=1e-6)
    else:
        np.testing.assert_allclose(g, [[0, 1, 0, 0], [0, 0, 1, 0]])


def test_reductions_keep_float32() -> None:
    x = minidl.randn(3, 4)
    for y in (x.sum(), x.mean(axis=0), x.max(axis=-1), x.min()):
        assert y.dtype == np.float32
        assert isinstance(y.data, np.ndarray)


def test_mean_of_int_tensor_is_float32() -> None:
    y = minidl.tensor([[1, 2], [3, 5]]).mean(axis=0)
    assert y.dtype == np.float32 and y.tolist() == [2.0, 3.5]


def test_argmax() -> None:
    x = minidl.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]], requires_grad=True)
    a = F.argmax(x, axis=1)
    assert a.dtype == np.int64 and a.tolist() == [1, 0] and not a.requires_grad
    assert x.argmax().item() == 3


def test_axis_errors() -> None:
    x = minidl.ones(2, 3)
    with pytest.raises(ValueError, match="sum: axis 2 is out of range for a tensor with 2 dims"):
        x.sum(axis=2)
    with pytest.raises(ValueError, match="mean: axis -3 is out of range"):
        x.mean(axis=-3)
    with pytest.raises(ValueError, match=r"max: repeated axis in \(1, -1\)"):
        x.max(axis=(1, -1))
    with pytest.raises(ValueError, match=r"min: cannot reduce over an empty axis of shape "
                                         r"\(0, 3\)"):
        minidl.zeros(0, 3).min(axis=0)
    with pytest.raises(ValueError, match="mean: cannot average over empty axes"):
        minidl.zeros(0, 3).mean(axis=0)
