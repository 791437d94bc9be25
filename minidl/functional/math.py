"""Elementwise arithmetic and the broadcasting pair ``broadcast_to`` / ``sum_to``.

Binary ops broadcast like NumPy. In backward, a gradient has the *output's* shape; an input
that was broadcast (say ``b`` of shape ``(3,)`` added to ``a`` of shape ``(2, 3)``) must get
a gradient of its own shape, so the gradient is summed over the broadcast axes: that is
``sum_to``. ``broadcast_to`` and ``sum_to`` are each other's backward.

Dtypes never silently widen: a Python or NumPy scalar, or a non-tensor array, takes the
tensor's dtype (under NumPy 2 a ``float64`` scalar would otherwise turn float32 math into
float64), and mixing float32 and float64 *tensors* is an error that asks for an explicit
``astype``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidl import _deprecated, backend
from minidl.autograd import _DEFAULT_FLOAT, Function, Tensor, _is_float, autocast_dtype

# ----------------------------------------------------------------------------------------
# operand coercion


def _const(value: Any, like: Tensor, dtype: Any) -> Tensor:
    """A non-differentiable constant on ``like``'s device with the given dtype."""
    arr = value if _is_array_like(value) else np.asarray(value)
    arr = backend.to_device(arr, like.device)
    return Tensor._make(like.xp.asarray(arr, dtype=dtype), False)


def _operands(a: Any, b: Any, op: str) -> tuple[Tensor, Tensor]:
    """Turn the operands of a binary op into two tensors of one dtype (see module doc)."""
    ta, tb = isinstance(a, Tensor), isinstance(b, Tensor)
    if ta and tb:
        if a.dtype == b.dtype:
            return a, b
        fa, fb = _is_float(a.dtype), _is_float(b.dtype)
        if fa and fb and autocast_dtype() is not None:  # autocast: the wider wins
            wide = np.promote_types(a.dtype, b.dtype)
            return cast(a, wide), cast(b, wide)
        if fa and fb:
            raise TypeError(
                f"{op}: dtype mismatch, {a.dtype} and {b.dtype}; minidl never upcasts "
                "silently, cast one operand with .astype()"
            )
        if fa or fb:
            return (a, cast(b, a.dtype)) if fa else (cast(a, b.dtype), b)
        dt = np.result_type(a.dtype, b.dtype)
        return cast(a, dt), cast(b, dt)
    if not (ta or tb):
        raise TypeError(f"{op}: expected at least one Tensor operand")
    t, other = (a, b) if ta else (b, a)
    other_dt = (other.dtype if _is_array_like(other) else np.asarray(other).dtype)
    if other_dt.kind not in "biuf":  # None, strings, objects: no silent NaN or NumPy error
        raise TypeError(f"{op}: unsupported operand of type {type(other).__name__}")
    if _is_float(t.dtype) or other_dt.kind == "b":
        dt = t.dtype
    elif other_dt.kind in "iu":
        dt = np.result_type(t.dtype, other_dt) if _is_array_like(other) else t.dtype
        t = cast(t, dt)
    else:  # an integer tensor meets a float operand: compute in the default float type
        dt = np.dtype(_DEFAULT_FLOAT)
        t = cast(t, dt)
    c = _const(other, t, dt)
    return (t, c) if ta else (c, t)


def _is_array_like(v: Any) -> bool:
    return hasattr(v, "__array_interface__") or hasattr(v, "__cuda_array_interface__")


def _apply_binary(fn: type[Function], a: Tensor, b: Tensor, op: str, **options: Any) -> Tensor:
    """Run a broadcasting op; NumPy's broadcast error is reworded to name the op."""
    try:
        return fn.apply(a, b, **options)
    except ValueError as exc:
        shapes = [a.shape, b.shape]
        if "cond" in options:
            shapes.insert(0, tuple(options["cond"].shape))
        try:
            np.broadcast_shapes(*shapes)
        except ValueError:
            names = " and ".join(str(s) for s in shapes)
            raise ValueError(f"{op}: shapes {names} cannot be broadcast together") from None
        # some other complaint from NumPy (e.g. int ** negative int): name the op
        raise ValueError(f"{op}: {exc}") from exc


def _scalar_like(value: float, like: Tensor) -> Tensor:
    return Tensor._make(like.xp.asarray(value, dtype=like.dtype), False)


def _mask(cond: Any, like: Tensor) -> Tensor:
    """A constant (non-differentiable) float mask in ``like``'s dtype."""
    return Tensor._make(cond.astype(like.dtype), False)


# ----------------------------------------------------------------------------------------
# broadcasting


class BroadcastToFunction(Function):
    """``y = broadcast_to(x, shape)``, y of ``shape``; backward ``gx = sum_to(gy, x.shape)``."""

    def forward(self, x: Any) -> Any:
        self.in_shape = x.shape
        return backend.get_array_module(x).broadcast_to(x, self.shape)

    def backward(self, gy: Tensor) -> Tensor:
        return sum_to(gy, self.in_shape)


class SumToFunction(Function):
    """``y = sum_to(x, shape)``, y of ``shape``; backward ``gx = broadcast_to(gy, x.shape)``."""

    def forward(self, x: Any) -> Any:
        self.in_shape = x.shape
        lead = x.ndim - len(self.shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, s in enumerate(self.shape) if s == 1 and x.shape[lead + i] != 1
        )
        y = x.sum(axis=axes, keepdims=True) if axes else x
        return y.reshape(self.shape) if lead else y

    def backward(self, gy: Tensor) -> Tensor:
        return broadcast_to(gy, self.in_shape)


def broadcast_to(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Broadcast ``x`` to ``shape`` (a read-only view); backward sums back with ``sum_to``.

    >>> import minidl
    >>> minidl.functional.broadcast_to(minidl.tensor([1.0, 2.0]), (3, 2)).shape
    (3, 2)
    """
    shape = tuple(shape)
    if x.shape == shape:
        return x
    try:
        np.broadcast_shapes(x.shape, shape)
    except ValueError:
        raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to {shape}") from None
    return BroadcastToFunction.apply(x, shape=shape)


def sum_to(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Sum ``x`` over the axes along which a tensor of ``shape`` was broadcast to it.

    >>> import minidl
    >>> minidl.functional.sum_to(minidl.ones(3, 2), (1, 2)).tolist()
    [[3.0, 3.0]]
    """
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return SumToFunction.apply(x, shape=shape)


# ----------------------------------------------------------------------------------------
# arithmetic


class AddFunction(Function):
    """``y = a + b`` (broadcast, y of the broadcast shape).

    Backward: ``ga = sum_to(gy, a.shape)``, ``gb = sum_to(gy, b.shape)``.
    """

    def forward(self, a: Any, b: Any) -> Any:
        return a + b

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.inputs
        return sum_to(gy, a.shape), sum_to(gy, b.shape)


class SubFunction(Function):
    """``y = a - b`` (broadcast).

    Backward: ``ga = sum_to(gy, a.shape)``, ``gb = sum_to(-gy, b.shape)``.
    """

    def forward(self, a: Any, b: Any) -> Any:
        return a - b

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.inputs
        return sum_to(gy, a.shape), (sum_to(-gy, b.shape) if self.needs_input_grad[1] else None)


class MulFunction(Function):
    """``y = a * b`` (broadcast).

    Backward: ``ga = sum_to(gy * b, a.shape)``, ``gb = sum_to(gy * a, b.shape)``.
    """

    def forward(self, a: Any, b: Any) -> Any:
        return a * b

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.inputs
        ga = sum_to(gy * b, a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(gy * a, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class DivFunction(Function):
    """``y = a / b`` (broadcast).

    Backward: ``ga = sum_to(gy / b, a.shape)``, ``gb = sum_to(-gy * a / b**2, b.shape)``.
    """

    def forward(self, a: Any, b: Any) -> Any:
        return a / b

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.inputs
        ga = sum_to(gy / b, a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(-gy * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class NegFunction(Function):
    """``y = -x``, any shape; backward ``gx = -gy``."""

    def forward(self, x: Any) -> Any:
        return -x

    def backward(self, gy: Tensor) -> Tensor:
        return -gy


class PowFunction(Function):
    """``y = a ** b`` (broadcast).

    Backward: ``ga = sum_to(gy * b * a**(b - 1), a.shape)``,
    ``gb = sum_to(gy * y * log(a), b.shape)``.
    """

    def forward(self, a: Any, b: Any) -> Any:
        return a ** b

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.inputs
        ga = sum_to(gy * b * a ** (b - 1), a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(gy * self.output() * log(a), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


def add(a: Any, b: Any) -> Tensor:
    """Elementwise ``a + b`` with broadcasting.

    >>> import minidl
    >>> minidl.functional.add(minidl.tensor([1.0, 2.0]), 1).tolist()
    [2.0, 3.0]
    """
    a, b = _operands(a, b, "add")
    return _apply_binary(AddFunction, a, b, "add")


def sub(a: Any, b: Any) -> Tensor:
    """Elementwise ``a - b`` with broadcasting.

    >>> import minidl
    >>> minidl.functional.sub(minidl.tensor([[1.0, 2.0]]), minidl.tensor([1.0])).tolist()
    [[0.0, 1.0]]
    """
    a, b = _operands(a, b, "sub")
    return _apply_binary(SubFunction, a, b, "sub")


def mul(a: Any, b: Any) -> Tensor:
    """Elementwise ``a * b`` with broadcasting.

    >>> import minidl
    >>> minidl.functional.mul(minidl.tensor([1.0, 2.0]), 3).tolist()
    [3.0, 6.0]
    """
    a, b = _operands(a, b, "mul")
    return _apply_binary(MulFunction, a, b, "mul")


def div(a: Any, b: Any) -> Tensor:
    """Elementwise true division ``a / b`` with broadcasting (ints give the default float).

    >>> import minidl
    >>> minidl.functional.div(minidl.tensor([1, 3]), 2)
    tensor([0.5, 1.5])
    """
    a, b = _operands(a, b, "div")
    if not _is_float(a.dtype):
        a, b = cast(a, _DEFAULT_FLOAT), cast(b, _DEFAULT_FLOAT)
    return _apply_binary(DivFunction, a, b, "div")


def neg(x: Tensor) -> Tensor:
    """Elementwise ``-x``.

    >>> import minidl
    >>> minidl.functional.neg(minidl.tensor([1.0, -2.0])).tolist()
    [-1.0, 2.0]
    """
    return NegFunction.apply(x)


def pow(a: Any, b: Any) -> Tensor:  # noqa: A001 - mirrors torch.pow
    """Elementwise ``a ** b``; differentiable in both (``d/db = a**b * log a``).

    >>> import minidl
    >>> minidl.functional.pow(minidl.tensor([2.0, 3.0]), 2).tolist()
    [4.0, 9.0]
    """
    a, b = _operands(a, b, "pow")
    return _apply_binary(PowFunction, a, b, "pow")


# ----------------------------------------------------------------------------------------
# unary math


class ExpFunction(Function):
    """``y = exp(x)``, any shape; backward ``gx = gy * y``."""

    def forward(self, x: Any) -> Any:
        return backend.get_array_module(x).exp(x)

    def backward(self, gy: Tensor) -> Tensor:
        return gy * self.output()


class LogFunction(Function):
    """``y = log(x)``, any shape; backward ``gx = gy / x``."""

    def forward(self, x: Any) -> Any:
        return backend.get_array_module(x).log(x)

    def backward(self, gy: Tensor) -> Tensor:
        return gy / self.inputs[0]


class SqrtFunction(Function):
    """``y = sqrt(x)``, any shape; backward ``gx = gy / (2 * y)``."""

    def forward(self, x: Any) -> Any:
        return backend.get_array_module(x).sqrt(x)

    def backward(self, gy: Tensor) -> Tensor:
        return gy / (self.output() * 2)


class AbsFunction(Function):
    """``y = |x|``, any shape; backward ``gx = gy * sign(x)`` (0 at x = 0)."""

    def forward(self, x: Any) -> Any:
        return backend.get_array_module(x).abs(x)

    def backward(self, gy: Tensor) -> Tensor:
        x = self.inputs[0]
        return gy * _mask(x.xp.sign(x.data), x)


class ErfFunction(Function):
    """``y = erf(x)``, any shape; backward ``gx = gy * 2 / sqrt(pi) * exp(-x**2)``."""

    def forward(self, x: Any) -> Any:
        return backend.erf(x)

    def backward(self, gy: Tensor) -> Tensor:
        x = self.inputs[0]
        return gy * exp(-(x * x)) * (2.0 / math.sqrt(math.pi))


def _float_unary(fn: type[Function], name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    if not _is_float(x.dtype):
        x = cast(x, _DEFAULT_FLOAT)
    return fn.apply(x)


def exp(x: Tensor) -> Tensor:
    """Elementwise ``e**x``.

    >>> import minidl
    >>> minidl.functional.exp(minidl.tensor([0.0])).tolist()
    [1.0]
    """
    return _float_unary(ExpFunction, "exp", x)


def log(x: Tensor) -> Tensor:
    """Elementwise natural logarithm.

    >>> import minidl
    >>> minidl.functional.log(minidl.tensor([1.0])).tolist()
    [0.0]
    """
    return _float_unary(LogFunction, "log", x)


def sqrt(x: Tensor) -> Tensor:
    """Elementwise square root.

    >>> import minidl
    >>> minidl.functional.sqrt(minidl.tensor([4.0, 9.0])).tolist()
    [2.0, 3.0]
    """
    return _float_unary(SqrtFunction, "sqrt", x)


def abs(x: Tensor) -> Tensor:  # noqa: A001 - mirrors torch.abs
    """Elementwise absolute value; its gradient at 0 is 0 (``sign(0)``).

    >>> import minidl
    >>> x = minidl.tensor([-2.0, 0.0, 3.0], requires_grad=True)
    >>> minidl.functional.abs(x).sum().backward(); x.grad
    tensor([-1.,  0.,  1.])
    """
    return AbsFunction.apply(x)


def erf(x: Tensor) -> Tensor:
    """The error function, elementwise (used by the exact GELU).

    >>> import minidl
    >>> minidl.functional.erf(minidl.tensor([0.0])).tolist()
    [0.0]
    """
    return _float_unary(ErfFunction, "erf", x)


# ----------------------------------------------------------------------------------------
# selection


class WhereFunction(Function):
    """``y = where(cond, a, b)`` (broadcast; ``cond`` a constant bool array option).

    Backward: ``ga = sum_to(where(cond, gy, 0), a.shape)``,
    ``gb = sum_to(where(cond, 0, gy), b.shape)``.
    """

    def forward(self, a: Any, b: Any) -> Any:
        return backend.get_array_module(a).where(self.cond, a, b)

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.inputs
        zero = _scalar_like(0.0, gy)
        ga = sum_to(where(self.cond, gy, zero), a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(where(self.cond, zero, gy), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """Pick ``a`` where ``cond`` is true, else ``b`` (broadcasting); ``cond`` gets no grad.

    >>> import minidl
    >>> x = minidl.tensor([-1.0, 2.0])
    >>> minidl.functional.where(x > 0, x, 0.0).tolist()
    [0.0, 2.0]
    """
    a, b = _operands(a, b, "where")
    c = cond.data if isinstance(cond, Tensor) else backend.to_device(np.asarray(cond), a.device)
    if c.dtype != np.bool_:
        c = c.astype(bool)
    return _apply_binary(WhereFunction, a, b, "where", cond=c)


class MaximumFunction(Function):
    """``y = maximum(a, b)`` (``largest=True``) or ``minimum(a, b)`` (broadcast).

    Backward: with ``w = [a wins] + 0.5 * [a == b]``, ``ga = sum_to(gy * w, a.shape)``,
    ``gb = sum_to(gy * (1 - w), b.shape)``: ties split the gradient evenly.
    """

    def forward(self, a: Any, b: Any) -> Any:
        xp = backend.get_array_module(a)
        # Ties split the gradient evenly between the two inputs, as PyTorch does.
        self.weight = (a > b) + (a == b) * 0.5
        return xp.maximum(a, b) if self.largest else xp.minimum(a, b)

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.inputs
        w = self.weight if self.largest else 1.0 - self.weight
        wa = Tensor._make(gy.xp.asarray(w, dtype=gy.dtype), False)
        ga = sum_to(gy * wa, a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(gy * (1.0 - wa), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise maximum; at ties each input receives half the gradient.

    >>> import minidl
    >>> minidl.functional.maximum(minidl.tensor([1.0, 5.0]), 3.0).tolist()
    [3.0, 5.0]
    """
    a, b = _operands(a, b, "maximum")
    return _apply_binary(MaximumFunction, a, b, "maximum", largest=True)


def minimum(a: Any, b: Any) -> Tensor:
    """Elementwise minimum; at ties each input receives half the gradient.

    >>> import minidl
    >>> minidl.functional.minimum(minidl.tensor([1.0, 5.0]), 3.0).tolist()
    [1.0, 3.0]
    """
    a, b = _operands(a, b, "minimum")
    return _apply_binary(MaximumFunction, a, b, "minimum", largest=False)


class ClipFunction(Function):
    """``y = clip(x, lo, hi)``, any shape; backward ``gx = gy * [lo <= x <= hi]``."""

    def forward(self, x: Any) -> Any:
        lo, hi = self.lo, self.hi
        if _is_float(x.dtype):  # a float64 NumPy bound would otherwise upcast float32 x
            lo = None if lo is None else x.dtype.type(lo)
            hi = None if hi is None else x.dtype.type(hi)
        return backend.get_array_module(x).clip(x, lo, hi)

    def backward(self, gy: Tensor) -> Tensor:
        x = self.inputs[0].data
        inside = x == x  # all True, same shape
        if self.lo is not None:
            inside = inside & (x >= self.lo)
        if self.hi is not None:
            inside = inside & (x <= self.hi)
        return gy * _mask(inside, gy)


def clip(x: Tensor, min: float | None = None, max: float | None = None) -> Tensor:  # noqa: A002
    """Clamp to ``[min, max]``; the gradient passes where ``min <= x <= max``.

    >>> import minidl
    >>> minidl.functional.clip(minidl.tensor([-2.0, 0.5, 2.0]), -1, 1).tolist()
    [-1.0, 0.5, 1.0]
    """
    if min is None and max is None:
        raise ValueError("clip: at least one of min and max must be given")
    if min is not None and max is not None and min > max:
        raise ValueError(f"clip: min ({min}) is greater than max ({max})")
    return ClipFunction.apply(x, lo=min, hi=max)


# ----------------------------------------------------------------------------------------
# dtype and device


class CastFunction(Function):
    """``y = x.astype(dtype)``, same shape; backward ``gx = gy.astype(x.dtype)``."""

    def forward(self, x: Any) -> Any:
        self.in_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy: Tensor) -> Tensor:
        return cast(gy, self.in_dtype)


def cast(x: Tensor, dtype: Any) -> Tensor:
    """Return ``x`` as ``dtype`` (``x`` itself if it already is); float casts are
    differentiable.

    >>> import minidl
    >>> minidl.functional.cast(minidl.tensor([1, 2]), "float32").dtype
    dtype('float32')
    """
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    return CastFunction.apply(x, dtype=dtype)


# ----------------------------------------------------------------------------------------
# the autocast cast policy (the mode itself is minidl.autograd.autocast_dtype; the public
# switch is minidl.amp.autocast)


def _cast_floats(tensors: tuple[Any, ...], dtype: Any) -> list[Any]:
    return [cast(t, dtype) if isinstance(t, Tensor) and t.dtype.kind == "f" else t
            for t in tensors]


def lower(*tensors: Any) -> list[Any]:
    """Inside autocast: the float tensors cast to the half dtype (GEMM inputs); else as is.

    The cast is differentiable, so float32 parameters get float32 gradients.

    >>> import minidl
    >>> w = minidl.ones(2)
    >>> with minidl.amp.autocast("float16"):
    ...     (w16,) = lower(w)
    >>> w16.dtype, lower(w)[0] is w
    (dtype('float16'), True)
    """
    dt = autocast_dtype()
    return list(tensors) if dt is None else _cast_floats(tensors, dt)


def upper(*tensors: Any) -> list[Any]:
    """Inside autocast: float tensors cast to float32 (for precision-sensitive ops: norms,
    softmax, losses); else as is."""
    if autocast_dtype() is None:
        return list(tensors)
    return _cast_floats(tensors, np.float32)


class ToDeviceFunction(Function):
    """``y`` = x copied to ``device``, same shape.

    Backward: ``gx`` = gy copied back to x's device.
    """

    def forward(self, x: Any) -> Any:
        self.src = backend.device_of(x)
        return backend.to_device(x, self.device)

    def backward(self, gy: Tensor) -> Tensor:
        return to_device(gy, self.src)


def to_device(x: Tensor, device: Any) -> Tensor:
    """Copy ``x`` to ``device``; gradients flow back to the source device.

    >>> import minidl
    >>> minidl.functional.to_device(minidl.tensor([1.0]), "cpu").device
    Device('cpu')
    """
    return ToDeviceFunction.apply(x, device=backend.Device(device))


# The Function classes were named like the layers (``Conv2d``) before they took the
# ``Function`` suffix; the old names still work, with a DeprecationWarning.
__getattr__ = _deprecated.function_suffix(__name__)
