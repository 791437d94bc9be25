"""Elementwise math: forward vs NumPy, gradients, double gradients, dtype rules, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import Const, OpCase, away_from_zero, check_case, positive

import minidl
import minidl.functional as F

_erf = np.vectorize(math.erf)

CASES = [
    # binary ops, same shape and broadcasting
    OpCase("add", lambda a, b: a + b, np.add, [(2, 3), (2, 3)], op=F.add),
    OpCase("add_bcast_3d", F.add, np.add, [(3, 1, 4), (2, 4)], gradgrad=True),
    OpCase("add_bcast_row", lambda a, b: a + b, np.add, [(4,), (3, 4)], op=F.add),
    OpCase("add_0d", lambda a, b: a + b, np.add, [(), (2, 3)], op=F.add),
    OpCase("add_pyscalar", lambda a: a + 2.5, lambda a: a + 2.5, [(2, 3)], op=F.add),
    OpCase("radd_pyscalar", lambda a: 2.5 + a, lambda a: 2.5 + a, [(3,)], op=F.add),
    OpCase("sub_bcast", lambda a, b: a - b, np.subtract, [(3, 1, 4), (2, 4)], op=F.sub),
    OpCase("rsub_pyscalar", lambda a: 1.0 - a, lambda a: 1.0 - a, [(2, 2)], op=F.sub),
    OpCase("sub_fn", F.sub, np.subtract, [(5,), ()]),
    OpCase("mul", lambda a, b: a * b, np.multiply, [(2, 3), (2, 3)], gradgrad=True, op=F.mul),
    OpCase("mul_bcast", F.mul, np.multiply, [(3, 1, 4), (2, 4)], gradgrad=True),
    OpCase("mul_self", lambda a: a * a, lambda a: a * a, [(4,)], gradgrad=True, op=F.mul),
    OpCase("rmul_pyscalar", lambda a: 3 * a, lambda a: 3 * a, [(2, 2)], op=F.mul),
    OpCase("div", lambda a, b: a / b, np.divide, [(2, 3), positive(2, 3)], gradgrad=True, op=F.div),
    OpCase("div_bcast", F.div, np.divide, [(3, 1, 4), away_from_zero(2, 4, lo=0.5)],
           gradgrad=True),
    OpCase("rdiv_pyscalar", lambda a: 2.0 / a, lambda a: 2.0 / a, [away_from_zero(3, lo=0.5)],
           op=F.div),
    OpCase("neg", lambda a: -a, np.negative, [(2, 3)], op=F.neg),
    OpCase("neg_fn", F.neg, np.negative, [(3,)], gradgrad=True),
    OpCase("pow_both", lambda a, b: a ** b, np.power, [positive(2, 3), (2, 3)], gradgrad=True,
           op=F.pow),
    OpCase("pow_bcast", F.pow, np.power, [positive(3, 1, 2), (4, 2)], gradgrad=True),
    OpCase("pow_int_exp", lambda a: a ** 3, lambda a: a ** 3, [(2, 3)], gradgrad=True, op=F.pow),
    OpCase("pow_half", lambda a: a ** 0.5, np.sqrt, [positive(4)], op=F.pow),
    OpCase("rpow", lambda a: 2.0 ** a, lambda a: 2.0 ** a, [(3,)], gradgrad=True, op=F.pow),
    # unary
    OpCase("exp", F.exp, np.exp, [(2, 3)], gradgrad=True),
    OpCase("exp_method", lambda a: a.exp(), np.exp, [()], op=F.exp),
    OpCase("log", F.log, np.log, [positive(2, 3)], gradgrad=True),
    OpCase("sqrt", F.sqrt, np.sqrt, [positive(2, 3)], gradgrad=True),
    OpCase("abs", F.abs, np.abs, [away_from_zero(2, 3)], gradgrad=True),
    OpCase("abs_builtin", lambda a: abs(a), np.abs, [away_from_zero(4)], op=F.abs),
    OpCase("erf", F.erf, _erf, [(2, 3)], gradgrad=True),
    # selection
    OpCase("where", lambda c, a, b: F.where(c, a, b), np.where,
           [Const(lambda r: r.random((2, 3)) > 0.5), (2, 3), (2, 3)], gradgrad=True, op=F.where),
    OpCase("where_bcast", lambda c, a, b: F.where(c, a, b), np.where,
           [Const(lambda r: r.random((3, 1)) > 0.5), (1, 4), (3, 4)], op=F.where),
    OpCase("where_scalar", lambda c, a: F.where(c, a, 0.0), lambda c, a: np.where(c, a, 0.0),
           [Const(np.array([True, False, True])), (3,)], op=F.where),
    OpCase("maximum", F.maximum, np.maximum, [(2, 3), (2, 3)], gradgrad=True),
    OpCase("maximum_bcast", F.maximum, np.maximum, [(3, 1, 4), (2, 4)]),
    OpCase("maximum_scalar", lambda a: F.maximum(a, 0.3), lambda a: np.maximum(a, 0.3),
           [away_from_zero(5, lo=0.4)], op=F.maximum),
    OpCase("minimum", F.minimum, np.minimum, [(2, 3), (3,)], gradgrad=True),
    OpCase("clip", lambda a: F.clip(a, -1.0, 1.0), lambda a: np.clip(a, -1, 1),
           [lambda r: r.choice([-1.7, -0.5, 0.3, 0.8, 1.6], (3, 4)) + r.uniform(-.1, .1, (3, 4))],
           gradgrad=True, op=F.clip),
    OpCase("clip_min_only", lambda a: F.clip(a, min=0.0), lambda a: np.clip(a, 0, None),
           [away_from_zero(6)], op=F.clip),
    OpCase("clamp_method_max_only", lambda a: a.clamp(max=0.5), lambda a: np.minimum(a, 0.5),
           [lambda r: r.choice([-1.0, 0.2, 1.5], (5,))], op=F.clip),
    OpCase("broadcast_to", lambda a: F.broadcast_to(a, (2, 3, 4)),
           lambda a: np.broadcast_to(a, (2, 3, 4)), [(3, 1)], gradgrad=True, op=F.broadcast_to),
    OpCase("sum_to", lambda a: F.sum_to(a, (3, 1)), lambda a: a.sum(axis=(0, 2))[:, None],
           [(2, 3, 4)], gradgrad=True, op=F.sum_to),
    # dtype and device moves. A float64 -> float32 cast rounds away what finite differences
    # measure, so the cast case goes to extended precision and back: exact both ways, and
    # both casts (and their backward casts of the gradient) run.
    OpCase("cast_roundtrip", lambda a: F.cast(F.cast(a, np.longdouble), a.dtype), lambda a: a,
           [(2, 3)], gradgrad=True, op=F.cast),
    # CPU to CPU: the autograd node (forward and backward) runs, the copy is a no-op; the
    # move between devices is test_to_device_gradient_returns_to_the_source_device.
    OpCase("to_device_cpu", lambda a: F.to_device(a, "cpu"), lambda a: a, [(2, 3)],
           gradgrad=True, op=F.to_device),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case: OpCase) -> None:
    check_case(case)


# ---------------------------------------------------------------------------------------
# dtype rules (NumPy 2 promotion trap)


def test_float32_times_numpy_float64_scalar_stays_float32() -> None:
    x = minidl.tensor([1.0, 2.0])
    for y in (x * np.float64(2.0), np.float64(2.0) * x, x + np.float64(1), x / np.float64(3),
              x ** np.float64(2), x - np.float64(0.5), np.float64(0.5) - x):
        assert y.dtype == np.float32


def test_float32_with_float64_array_stays_float32() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = x * np.array([0.5, 0.25])  # float64 ndarray operand takes the tensor's dtype
    assert y.dtype == np.float32
    y2 = np.array([0.5, 0.25]) + x  # ndarray on the left defers to Tensor.__radd__
    assert isinstance(y2, minidl.Tensor) and y2.dtype == np.float32
    (y + y2).sum().backward()
    assert x.grad.dtype == np.float32


def test_float32_plus_float64_tensor_raises() -> None:
    a = minidl.tensor([1.0])
    b = minidl.tensor(np.array([1.0]))
    with pytest.raises(TypeError, match=r"add: dtype mismatch, float32 and float64"):
        a + b
    with pytest.raises(TypeError, match="mul"):
        F.mul(b, a)
    assert (a + b.float()).dtype == np.float32


def test_int_dtype_rules() -> None:
    i = minidl.tensor([1, 2, 3])
    assert i.dtype == np.int64
    assert (i / 2).dtype == np.float32
    assert (i / i).dtype == np.float32
    assert (i + 1).dtype == np.int64
    assert (i * 1.5).dtype == np.float32
    assert (i + minidl.tensor([0.5, 0.5, 0.5])).dtype == np.float32
    assert F.exp(i).dtype == np.float32
    np.testing.assert_allclose((i / 2).numpy(), [0.5, 1.0, 1.5])


def test_clip_with_numpy_float64_bounds_keeps_float32() -> None:
    x = minidl.tensor([-2.0, 0.0, 2.0], requires_grad=True)
    y = F.clip(x, np.float64(-1.0), np.float64(1.0))
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0]


def test_maximum_ties_split_gradient() -> None:
    a = minidl.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = minidl.tensor([1.0, 5.0, 3.0], requires_grad=True)
    F.maximum(a, b).sum().backward()
    assert a.grad.tolist() == [0.5, 0.0, 0.5]
    assert b.grad.tolist() == [0.5, 1.0, 0.5]
    a.grad = b.grad = None
    F.minimum(a, b).sum().backward()
    assert a.grad.tolist() == [0.5, 1.0, 0.5]
    assert b.grad.tolist() == [0.5, 0.0, 0.5]


def test_abs_grad_at_zero_is_zero() -> None:
    x = minidl.tensor([0.0, -1.0], requires_grad=True)
    abs(x).sum().backward()
    assert x.grad.tolist() == [0.0, -1.0]


def test_broadcast_error_names_op_and_shapes() -> None:
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\) cannot be broadcast"):
        minidl.ones(2, 3) + minidl.ones(4)
    with pytest.raises(ValueError, match=r"where: shapes \(2,\) and \(2, 3\) and \(3,\) "
                                         "cannot be broadcast"):
        F.where(minidl.ones(2) > 0, minidl.ones(2, 3), minidl.ones(3))
    with pytest.raises(ValueError, match="Integers to negative integer powers"):
        minidl.tensor([2]) ** -1  # NumPy's own error when it is not about shapes
    with pytest.raises(ValueError, match=r"broadcast_to: cannot broadcast shape \(3,\) to"):
        F.broadcast_to(minidl.ones(3), (2, 4))


def test_clip_bad_bounds() -> None:
    with pytest.raises(ValueError, match="clip: at least one"):
        F.clip(minidl.ones(2))
    with pytest.raises(ValueError, match=r"clip: min \(1\) is greater than max \(0\)"):
        F.clip(minidl.ones(2), 1, 0)


def test_binary_op_needs_a_tensor() -> None:
    with pytest.raises(TypeError, match="add: expected at least one Tensor"):
        F.add(1.0, 2.0)
    with pytest.raises(TypeError, match="exp: expected a Tensor"):
        F.exp(1.0)


def test_pow_grad_wrt_constant_base() -> None:
    x = minidl.tensor(np.array([0.5, 1.5]), requires_grad=True)
    (3.0 ** x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.log(3.0) * 3.0 ** np.array([0.5, 1.5]))


def test_cast_is_differentiable_and_grad_keeps_input_dtype() -> None:
    x = minidl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x.float()
    assert y.dtype == np.float32 and y.requires_grad
    (y * 3).sum().backward()
    assert x.grad.dtype == np.float64 and x.grad.tolist() == [3.0, 3.0]
    assert F.cast(x, np.float64) is x


@pytest.mark.parametrize("bad", [None, "a", [None], object()])
def test_binary_op_rejects_non_numeric_operands(bad) -> None:
    x = minidl.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match=f"add: unsupported operand of type {type(bad).__name__}"):
        x + bad
    with pytest.raises(TypeError, match="mul: unsupported operand"):
        bad * x
    assert (x + True).tolist() == [2.0, 3.0] and (x + np.int8(1)).tolist() == [2.0, 3.0]


def test_to_device_gradient_returns_to_the_source_device(device: str) -> None:
    x = minidl.tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    y = F.to_device(x, device)
    assert y.device == minidl.backend.Device(device) and y.requires_grad
    (y * minidl.tensor(np.array([0.5, 2.0, -1.0]), device=device)).sum().backward()
    assert x.grad.device == minidl.backend.Device("cpu") and x.grad.dtype == np.float64
    assert x.grad.tolist() == [0.5, 2.0, -1.0]
