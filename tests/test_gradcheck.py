"""The gradient checker itself: it passes correct ops and catches wrong backward passes,
with a report that names the input, the location, and expected vs got."""

from __future__ import annotations

import numpy as np
import pytest

import minidl
from minidl import Function, Tensor
from minidl.gradcheck import GradcheckError, gradcheck, gradgradcheck


class SquareMissingFactor(Function):
    """x**2 whose backward forgets the factor 2."""

    def forward(self, x):
        return x * x

    def backward(self, gy):
        return gy * self.inputs[0]


class MatMulTransposedGrad(Function):
    """a @ b whose backward for ``a`` uses b instead of b^T (shapes match for square b)."""

    def forward(self, a, b):
        return a @ b

    def backward(self, gy):
        a, b = self.inputs
        return gy @ b, a.mT @ gy


class MulWrongSecond(Function):
    """a * b with a correct gradient for a and a wrong sign for b."""

    def forward(self, a, b):
        return a * b

    def backward(self, gy):
        a, b = self.inputs
        return gy * b, -(gy * a)


class ReverseNoFlip(Function):
    """x[::-1] whose backward forgets to flip: invisible to an all-ones upstream gradient."""

    def forward(self, x):
        return x[::-1].copy()

    def backward(self, gy):
        return gy


class CubeConstDerivative(Function):
    """x**3 with a right first derivative computed from raw data, so it is a constant to
    autograd and the second derivative comes out wrong (zero)."""

    def forward(self, x):
        return x ** 3

    def backward(self, gy):
        x = self.inputs[0]
        return gy * Tensor(3 * x.data ** 2)


class ScaleOffByTenPpm(Function):
    """2x whose backward is wrong by a relative 1e-5: the size of the error that dropping
    eps = 1e-5 from batch norm's inverse std makes at unit variance."""

    def forward(self, x):
        return x * 2.0

    def backward(self, gy):
        return gy * (2.0 * (1 + 1e-5))


class CubeSecondDerivativeOff(Function):
    """x**3 with a right first derivative whose own derivative is off by 2e-5 * gy * x
    (a relative ~3e-6 of the true 6 * gy * x)."""

    def forward(self, x):
        return x ** 3

    def backward(self, gy):
        x = self.inputs[0]
        x2 = x * x
        return gy * 3 * x2 + 1e-5 * (gy * x2 - gy * Tensor(x2.data))


def _x(rng, *shape):
    return minidl.tensor(rng.uniform(0.5, 1.5, shape), requires_grad=True)


@pytest.mark.parametrize("mode", ["elementwise", "directional"])
def test_catches_missing_factor(rng, mode) -> None:
    x = _x(rng, 3, 4)
    with pytest.raises(GradcheckError) as exc:
        gradcheck(SquareMissingFactor.apply, [x], mode=mode)
    msg = str(exc.value)
    assert "gradcheck failed for apply input 0 (shape (3, 4))" in msg
    assert "numerical" in msg and "analytical" in msg and "tolerance" in msg
    if mode == "elementwise":
        assert "at (" in msg  # an element location such as "at (1, 2)"
    else:
        assert "along random directions" in msg and "at direction" in msg


@pytest.mark.parametrize("mode", ["elementwise", "directional"])
def test_catches_transposed_gradient(rng, mode) -> None:
    a, b = _x(rng, 3, 3), _x(rng, 3, 3)
    with pytest.raises(GradcheckError, match=r"input 0 \(shape \(3, 3\)\)"):
        gradcheck(MatMulTransposedGrad.apply, [a, b], mode=mode)
    # input 1's gradient alone is right
    assert gradcheck(lambda b: MatMulTransposedGrad.apply(a.detach(), b), [b], mode=mode)


def test_report_names_the_wrong_input_and_values(rng) -> None:
    a, b = _x(rng, 2), _x(rng, 2)
    with pytest.raises(GradcheckError) as exc:
        gradcheck(MulWrongSecond.apply, [a, b], mode="elementwise")
    msg = str(exc.value)
    assert "input 1 (shape (2,))" in msg
    # expected (numerical) and got (analytical) differ only in sign here
    line = next(s for s in msg.splitlines() if s.strip().startswith("at ("))
    num = float(line.split("numerical ")[1].split(",")[0])
    ana = float(line.split("analytical ")[1].split(",")[0])
    assert num == pytest.approx(-ana, rel=1e-5)


def test_random_upstream_gradient_catches_what_ones_would_hide(rng) -> None:
    x = _x(rng, 5)
    # with an all-ones upstream gradient the wrong backward would agree with the numbers
    ReverseNoFlip.apply(x).sum().backward()
    assert x.grad.tolist() == [1.0] * 5
    with pytest.raises(GradcheckError):
        gradcheck(ReverseNoFlip.apply, [x])


def test_auto_mode_switches_to_directional(rng) -> None:
    x = _x(rng, 4, 4)
    with pytest.raises(GradcheckError, match="along random directions"):
        gradcheck(SquareMissingFactor.apply, [x], max_elements=8)


def test_raise_exception_false_returns_false(rng) -> None:
    assert gradcheck(SquareMissingFactor.apply, [_x(rng, 3)], raise_exception=False) is False


@pytest.mark.parametrize("mode", ["elementwise", "directional", "auto"])
def test_correct_ops_pass(rng, mode) -> None:
    a, b = _x(rng, 3, 4), _x(rng, 4, 2)
    assert gradcheck(lambda a, b: (a @ b).tanh(), [a, b], mode=mode)


def test_gradgradcheck_catches_wrong_double_backward(rng) -> None:
    x = _x(rng, 4)
    assert gradcheck(CubeConstDerivative.apply, [x])  # first derivative is right
    with pytest.raises(GradcheckError, match=r"gradcheck failed for grad of apply input 0"):
        gradgradcheck(CubeConstDerivative.apply, [x])
    assert gradgradcheck(lambda t: t ** 3, [x])


def test_multiple_outputs_and_non_tensor_args(rng) -> None:
    x = _x(rng, 2, 3)

    def f(t, scale, axis):
        return (t * scale).sum(axis=axis), t.exp()

    assert gradcheck(f, [x, 2.5, 1])
    assert gradgradcheck(f, [x, 2.5, 1])


def test_some_inputs_constant(rng) -> None:
    a = _x(rng, 3)
    c = minidl.tensor(rng.standard_normal(3))  # float64 but not requiring grad: not checked
    assert gradcheck(lambda a, c: a * c, [a, c])


def test_input_arrays_left_untouched(rng) -> None:
    x = _x(rng, 3, 2)
    before = x.detach().numpy().copy()
    gradcheck(lambda t: t * t, [x], mode="elementwise")
    gradcheck(lambda t: t * t, [x], mode="directional")
    np.testing.assert_array_equal(x.detach().numpy(), before)
    assert x.grad is None


def test_argument_errors(rng) -> None:
    with pytest.raises(TypeError, match="gradcheck: input 0 is float32; gradient checks need "
                                        "float64"):
        gradcheck(lambda t: t * 2, [minidl.ones(2, requires_grad=True)])
    with pytest.raises(ValueError, match="gradcheck: no input requires grad"):
        gradcheck(lambda t: t * 2, [minidl.ones(2, dtype=np.float64)])
    with pytest.raises(ValueError, match="gradcheck: mode must be"):
        gradcheck(lambda t: t * 2, [_x(rng, 2)], mode="fast")
    with pytest.raises(ValueError, match="gradcheck: no output depends differentiably"):
        gradcheck(lambda t: t > 1, [_x(rng, 2)])
    with pytest.raises(TypeError, match="gradcheck: output 0 is a float, expected Tensor"):
        gradcheck(lambda t: 1.0, [_x(rng, 2)])


def test_single_tensor_input_and_unused_input(rng) -> None:
    x, unused = _x(rng, 3), _x(rng, 2)
    assert gradcheck(lambda t: t.exp(), x)  # a bare Tensor instead of a list
    assert gradcheck(lambda a, b: a * 2, [x, unused])  # d/d(unused) is 0 both ways


@pytest.mark.parametrize("mode", ["elementwise", "directional"])
def test_default_tolerance_catches_a_ten_ppm_error(rng, mode) -> None:
    # The old defaults (atol=1e-5, rtol=1e-3) passed this; finite differences in float64
    # are good to ~1e-9, so rtol=1e-6 leaves room and still sees it.
    x = _x(rng, 3, 4)
    assert gradcheck(ScaleOffByTenPpm.apply, [x], mode=mode, atol=1e-5, rtol=1e-3)
    with pytest.raises(GradcheckError, match="rtol=1e-06"):
        gradcheck(ScaleOffByTenPpm.apply, [x], mode=mode)


def test_gradgradcheck_default_tolerance_catches_a_small_second_derivative_error(rng) -> None:
    x = _x(rng, 4)
    assert gradcheck(CubeSecondDerivativeOff.apply, [x])
    with pytest.raises(GradcheckError, match="grad of apply"):
        gradgradcheck(CubeSecondDerivativeOff.apply, [x])


@pytest.mark.parametrize("mode", ["auto", "directional"])
def test_default_tolerance_passes_correct_ops_with_large_outputs(rng, mode) -> None:
    # Round-off in L grows with S = sum |u * y|: here S ~ 1e4 and the finite differences
    # are off by up to ~2e-8 at eps=1e-5 (ten times that at eps=1e-6, above atol).
    a = minidl.tensor(rng.standard_normal((16, 32)), requires_grad=True)
    b = minidl.tensor(rng.standard_normal((32, 16)), requires_grad=True)
    assert gradcheck(lambda a, b: (a @ b) * 10 + (a @ b).tanh(), [a, b], mode=mode)


def test_gradgradcheck_names_a_backward_on_raw_arrays():
    """An op whose backward computes on arrays has no second derivative; gradgradcheck says
    why instead of gradcheck's generic 'no output depends differentiably'."""
    class RawCube(minidl.Function):
        def forward(self, x):
            self.save_for_backward(x)
            return x ** 3

        def backward(self, gy):
            (x,) = self.saved
            return minidl.Tensor(3 * x * x * gy.data)  # correct, but not differentiable

    x = minidl.tensor(np.array([0.5, -1.5]), requires_grad=True)
    assert gradcheck(lambda t: RawCube.apply(t), [x])
    with pytest.raises(ValueError, match="backward pass was not recorded.*Tensor ops"):
        gradgradcheck(lambda t: RawCube.apply(t), [x])
