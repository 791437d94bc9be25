"""Property tests (hypothesis) over random shapes: broadcasting binary ops, reductions over
random axes, reshape/permute round trips, float32 preservation."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
import hypothesis.extra.numpy as hnp  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import minidl  # noqa: E402
import minidl.functional as F  # noqa: E402
from minidl.gradcheck import gradcheck  # noqa: E402

_SETTINGS = settings(max_examples=25, deadline=None)
_FLOATS = st.floats(-3, 3, allow_nan=False, allow_infinity=False, width=64)

_BINARY = {
    "add": (F.add, np.add),
    "sub": (F.sub, np.subtract),
    "mul": (F.mul, np.multiply),
    "div": (F.div, np.divide),
    "maximum": (F.maximum, np.maximum),
}


@st.composite
def broadcast_pair(draw):
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
    a = draw(hnp.arrays(np.float64, shapes.input_shapes[0], elements=_FLOATS))
    b = draw(hnp.arrays(np.float64, shapes.input_shapes[1], elements=_FLOATS))
    return a, b


@_SETTINGS
@given(pair=broadcast_pair(), op=st.sampled_from(sorted(_BINARY)))
def test_binary_broadcast_forward_and_grad(pair, op) -> None:
    a, b = pair
    if op == "div":
        b = np.where(np.abs(b) < 0.5, 0.5 + np.abs(b), b)
    if op == "maximum":  # keep the two operands apart so the derivative is defined
        b = np.where(np.abs(a - b) < 1e-3, b + 0.5, b)
    f, ref = _BINARY[op]
    ta = minidl.tensor(a, requires_grad=True)
    tb = minidl.tensor(b, requires_grad=True)
    y = f(ta, tb)
    np.testing.assert_allclose(y.detach().numpy(), ref(a, b), rtol=1e-12)
    assert gradcheck(f, [ta, tb])


@_SETTINGS
@given(pair=broadcast_pair())
def test_add_grad_is_sum_over_broadcast_axes(pair) -> None:
    a, b = pair
    ta = minidl.tensor(a, requires_grad=True)
    tb = minidl.tensor(b, requires_grad=True)
    out_shape = np.broadcast_shapes(a.shape, b.shape)
    (ta + tb).backward(np.ones(out_shape))
    assert ta.grad.shape == a.shape and tb.grad.shape == b.shape
    np.testing.assert_allclose(ta.grad.numpy(), np.full(a.shape, np.prod(out_shape) / a.size))
    np.testing.assert_allclose(tb.grad.numpy(), np.full(b.shape, np.prod(out_shape) / b.size))


@st.composite
def array_and_axes(draw, unique=False):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4))
    x = draw(hnp.arrays(np.float64, shape, elements=_FLOATS, unique=unique))
    axes = draw(hnp.valid_tuple_axes(len(shape)))
    if draw(st.booleans()):  # also exercise negative axes
        axes = tuple(a % len(shape) - len(shape) for a in axes)
    if len(axes) == 1 and draw(st.booleans()):
        axes = axes[0]  # a plain int axis
    return x, axes, draw(st.booleans())


@_SETTINGS
@given(args=array_and_axes())
def test_sum_mean_random_axes(args) -> None:
    x, axes, keep = args
    t = minidl.tensor(x, requires_grad=True)
    s = t.sum(axis=axes, keepdims=keep)
    m = F.mean(t, axis=axes, keepdims=keep)
    np.testing.assert_allclose(s.detach().numpy(), x.sum(axis=axes, keepdims=keep), atol=1e-12)
    np.testing.assert_allclose(m.detach().numpy(), x.mean(axis=axes, keepdims=keep), atol=1e-12)
    u = np.random.default_rng(0).standard_normal(s.shape)
    (s * minidl.tensor(u)).sum().backward()
    # d/dx of <u, sum(x)> is u broadcast back over the reduced axes
    u_kept = u if keep else np.expand_dims(u, axes if isinstance(axes, tuple) else (axes,))
    np.testing.assert_allclose(t.grad.numpy(), np.broadcast_to(u_kept, x.shape))


@_SETTINGS
@given(args=array_and_axes(unique=True), largest=st.booleans())
def test_max_min_random_axes(args, largest) -> None:
    x, axes, keep = args
    t = minidl.tensor(x, requires_grad=True)
    y = F.max(t, axes, keep) if largest else F.min(t, axes, keep)
    ref = (np.max if largest else np.min)(x, axis=axes, keepdims=True)
    np.testing.assert_allclose(y.detach().numpy(),
                               ref if keep else ref.reshape(y.shape))
    y.sum().backward()
    # unique values: the gradient is 1 exactly at each slice's extreme element
    np.testing.assert_array_equal(t.grad.numpy(), (x == ref).astype(np.float64))


@_SETTINGS
@given(data=st.data())
def test_permute_round_trip(data) -> None:
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=5, max_side=3))
    perm = data.draw(st.permutations(range(len(shape))))
    x = np.random.default_rng(1).standard_normal(shape)
    t = minidl.tensor(x, requires_grad=True)
    y = t.permute(*perm)
    np.testing.assert_array_equal(y.detach().numpy(), x.transpose(perm))
    back = y.permute(*np.argsort(perm).tolist())
    np.testing.assert_array_equal(back.detach().numpy(), x)
    u = np.random.default_rng(2).standard_normal(y.shape)
    y.backward(u)
    np.testing.assert_array_equal(t.grad.numpy(), u.transpose(np.argsort(perm)))


@_SETTINGS
@given(data=st.data())
def test_reshape_round_trip(data) -> None:
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, max_side=4))
    size = int(np.prod(shape))
    # a random factorization of the same size, with one -1
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    first = data.draw(st.sampled_from(divisors))
    new_shape = (first, -1)
    x = np.random.default_rng(3).standard_normal(shape)
    t = minidl.tensor(x, requires_grad=True)
    y = t.reshape(new_shape)
    assert y.shape == (first, size // first)
    z = y.reshape(shape)
    np.testing.assert_array_equal(z.detach().numpy(), x)
    u = np.random.default_rng(4).standard_normal(y.shape)
    y.backward(u)
    np.testing.assert_array_equal(t.grad.numpy(), u.reshape(shape))


@_SETTINGS
@given(pair=broadcast_pair(), op=st.sampled_from(sorted(_BINARY)),
       scalar=st.floats(0.5, 2.0))
def test_float32_never_upcast(pair, op, scalar) -> None:
    a, b = (np.abs(v) + 0.5 for v in pair)  # values don't matter here; avoid 0 / 0
    f, _ = _BINARY[op]
    ta = minidl.tensor(a.astype(np.float32), requires_grad=True)
    for y in (f(ta, b), f(b, ta), f(ta, np.float64(scalar)), f(np.float64(scalar), ta)):
        assert y.dtype == np.float32
    y.sum().backward()
    assert ta.grad.dtype == np.float32
