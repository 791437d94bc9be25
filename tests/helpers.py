"""The declarative op test (Chainer's ``function_link`` / tinygrad's ``helper_test_op`` idea).

An ``OpCase`` names a minidl function, a plain-NumPy reference and how to build its inputs;
``check_case`` derives from it every test an op needs:

1. forward in float64 against the reference (tight tolerance) and in float32 (the output
   must stay float32: no silent upcast);
2. backward in float32 (every gradient stays float32);
3. ``gradcheck`` (float64, random upstream gradient, every float input requiring grad);
4. ``gradgradcheck`` when ``gradgrad=True``.

Non-tensor arguments (axes, shapes, indices) are baked into the case's lambdas.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import minidl
from minidl.gradcheck import gradcheck, gradgradcheck

InputSpec = Any  # a shape tuple, an ndarray, a callable rng -> ndarray, or Const(...)


@dataclass(frozen=True)
class Const:
    """An input passed as a tensor that does not require grad (labels, masks, ...)."""

    spec: InputSpec


@dataclass(frozen=True)
class OpCase:
    id: str
    fn: Callable[..., minidl.Tensor]
    ref: Callable[..., Any]
    inputs: Sequence[InputSpec]
    gradgrad: bool = False
    low: float = -2.0
    high: float = 2.0
    atol: float = 1e-5
    rtol: float = 1e-3
    check_f32: bool = True

    def __str__(self) -> str:  # used as the pytest id
        return self.id


# ---------------------------------------------------------------------------------------
# input builders (each takes the generator and returns a float64 array)


def positive(*shape: int, lo: float = 0.5, hi: float = 2.0) -> Callable:
    return lambda rng: rng.uniform(lo, hi, shape)


def away_from_zero(*shape: int, lo: float = 0.2, hi: float = 2.0) -> Callable:
    """Values with |x| >= lo, for ops with a kink at 0 (abs, relu, ...)."""
    return lambda rng: rng.uniform(lo, hi, shape) * rng.choice([-1.0, 1.0], shape)


def distinct(*shape: int, gap: float = 0.05) -> Callable:
    """Values at least ``gap`` apart (no ties, so max/min have a clean derivative)."""
    n = int(np.prod(shape)) if shape else 1

    def make(rng: np.random.Generator) -> np.ndarray:
        vals = (np.arange(n) - n / 2) * gap * 4 + rng.uniform(-gap, gap, n)
        return rng.permutation(vals).reshape(shape)

    return make


def build(spec: InputSpec, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    if isinstance(spec, Const):
        spec = spec.spec
    if callable(spec):
        return np.asarray(spec(rng))
    if isinstance(spec, np.ndarray):
        return spec.copy()
    return rng.uniform(low, high, tuple(spec))


def make_arrays(case: OpCase) -> list[np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    return [build(s, rng, case.low, case.high) for s in case.inputs]


def to_tensors(case: OpCase, arrays: Sequence[np.ndarray], dtype: Any = np.float64,
               requires_grad: bool = True) -> list[minidl.Tensor]:
    out = []
    for spec, a in zip(case.inputs, arrays):
        if a.dtype.kind == "f":
            a = a.astype(dtype)
        diff = requires_grad and not isinstance(spec, Const) and a.dtype.kind == "f"
        out.append(minidl.tensor(a, requires_grad=diff))
    return out


def _outputs(y: Any) -> tuple:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


# ---------------------------------------------------------------------------------------
# checks


def check_forward(case: OpCase) -> None:
    arrays = make_arrays(case)
    expected = _outputs(case.ref(*[a.copy() for a in arrays]))
    got = _outputs(case.fn(*to_tensors(case, arrays, requires_grad=False)))
    assert len(got) == len(expected), f"{case.id}: {len(got)} outputs, expected {len(expected)}"
    for y, e in zip(got, expected):
        e = np.asarray(e)
        assert y.shape == e.shape, f"{case.id}: shape {y.shape}, expected {e.shape}"
        assert y.dtype == np.float64 or y.dtype.kind != "f", f"{case.id}: dtype {y.dtype}"
        np.testing.assert_allclose(y.numpy(), e, rtol=1e-9, atol=1e-12, err_msg=case.id)
    if case.check_f32:
        got32 = _outputs(case.fn(*to_tensors(case, arrays, np.float32, requires_grad=False)))
        for y, e in zip(got32, expected):
            if np.asarray(e).dtype.kind == "f":
                assert y.dtype == np.float32, f"{case.id}: float32 in, {y.dtype} out"
                np.testing.assert_allclose(y.numpy(), e, rtol=2e-4, atol=2e-5, err_msg=case.id)


def check_float32_backward(case: OpCase) -> None:
    """Backward in float32 runs and every gradient stays float32 (no upcast in backward)."""
    tensors = to_tensors(case, make_arrays(case), np.float32)
    outs = [y for y in _outputs(case.fn(*tensors)) if y.requires_grad]
    minidl.autograd.backward(outs, [minidl.ones(y.shape) for y in outs])
    for i, t in enumerate(tensors):
        if t.requires_grad:
            assert t.grad is not None and t.grad.dtype == np.float32, (
                f"{case.id}: input {i} float32, gradient {getattr(t.grad, 'dtype', None)}")


def check_grad(case: OpCase) -> None:
    tensors = to_tensors(case, make_arrays(case))
    assert gradcheck(case.fn, tensors, atol=case.atol, rtol=case.rtol)


def check_gradgrad(case: OpCase) -> None:
    tensors = to_tensors(case, make_arrays(case))
    assert gradgradcheck(case.fn, tensors, atol=case.atol, rtol=case.rtol)


def check_case(case: OpCase) -> None:
    """Forward, gradient and (if requested) double-gradient checks of one case."""
    check_forward(case)
    if case.check_f32:
        check_float32_backward(case)
    check_grad(case)
    if case.gradgrad:
        check_gradgrad(case)
