"""matmul (2-D, batched, broadcast batch, 1-D promotion) and linear."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import OpCase, check_case

import minidl
import minidl.functional as F


def _linear_ref(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


CASES = [
    OpCase("matmul_2d", F.matmul, np.matmul, [(3, 4), (4, 2)], gradgrad=True),
    OpCase("matmul_op", lambda a, b: a @ b, np.matmul, [(2, 3), (3, 3)], op=F.matmul),
    OpCase("matmul_batched", F.matmul, np.matmul, [(2, 3, 4), (2, 4, 5)], gradgrad=True),
    OpCase("matmul_bcast_batch", F.matmul, np.matmul, [(2, 1, 3, 4), (3, 4, 2)],
           gradgrad=True),
    OpCase("matmul_batch_2d", F.matmul, np.matmul, [(2, 3, 4), (4, 5)]),
    OpCase("matmul_2d_batch", F.matmul, np.matmul, [(3, 4), (2, 4, 5)]),
    OpCase("matmul_1d_2d", F.matmul, np.matmul, [(4,), (4, 3)], gradgrad=True),
    OpCase("matmul_2d_1d", F.matmul, np.matmul, [(3, 4), (4,)]),
    OpCase("matmul_1d_1d", F.matmul, np.matmul, [(4,), (4,)], gradgrad=True),
    OpCase("matmul_1d_batch", F.matmul, np.matmul, [(4,), (2, 4, 3)]),
    OpCase("matmul_self", lambda a: a @ a.T, lambda a: a @ a.T, [(3, 2)], gradgrad=True,
           op=F.matmul),
    OpCase("rmatmul_ndarray", lambda a: np.ones((2, 3)) @ a, lambda a: np.ones((2, 3)) @ a,
           [(3, 2)], op=F.matmul),
    OpCase("linear", F.linear, _linear_ref, [(5, 4), (3, 4), (3,)], gradgrad=True),
    OpCase("linear_nobias", F.linear, _linear_ref, [(2, 5, 4), (3, 4)]),
    OpCase("linear_batched_bias", F.linear, _linear_ref, [(2, 2, 4), (3, 4), (3,)]),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case: OpCase) -> None:
    check_case(case)


def test_matmul_errors() -> None:
    with pytest.raises(ValueError, match=r"matmul: inner dimensions differ, shapes \(2, 3\) "
                                         r"and \(4, 5\)"):
        minidl.ones(2, 3) @ minidl.ones(4, 5)
    with pytest.raises(ValueError, match="matmul: batch dimensions do not broadcast"):
        minidl.ones(2, 3, 4) @ minidl.ones(3, 4, 5)
    with pytest.raises(ValueError, match="matmul: operands must be at least 1-D"):
        F.matmul(minidl.ones(3), minidl.tensor(2.0))
    with pytest.raises(TypeError, match="matmul: dtype mismatch"):
        minidl.ones(2, 2) @ minidl.ones(2, 2, dtype=np.float64)


def test_linear_errors() -> None:
    x, w = minidl.ones(8, 4), minidl.ones(3, 4)
    with pytest.raises(ValueError, match=r"linear: input has 5 features but weight expects 4"):
        F.linear(minidl.ones(8, 5), w)
    with pytest.raises(ValueError, match="linear: weight must be 2-D"):
        F.linear(x, minidl.ones(4))
    with pytest.raises(ValueError, match=r"linear: bias must have shape \(3,\)"):
        F.linear(x, w, minidl.ones(4))
    with pytest.raises(TypeError, match="linear: weight dtype float64 differs"):
        F.linear(x, minidl.ones(3, 4, dtype=np.float64))


def test_matmul_grad_dtype_float32() -> None:
    a = minidl.randn(3, 4, requires_grad=True)
    b = minidl.randn(4, 2, requires_grad=True)
    (a @ b).sum().backward()
    assert a.grad.dtype == b.grad.dtype == np.float32
