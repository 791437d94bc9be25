"""The autograd engine: Tensor basics, graph recording, backward walk, grad modes."""

from __future__ import annotations

import numpy as np
import pytest

import minidl
import minidl.autograd as ag
import minidl.functional as F
from minidl import Function, Tensor

# ---------------------------------------------------------------------------------------
# the README promise


def test_readme_example() -> None:
    x = minidl.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    assert x.grad.tolist() == [2.0, 4.0, 6.0]
    assert x.grad.dtype == np.float32 and not x.grad.requires_grad


# ---------------------------------------------------------------------------------------
# gradient accumulation and graph shape


def test_reused_node_accumulates() -> None:
    x = minidl.tensor(3.0, requires_grad=True)
    y = x * 2
    z = y * y + y  # y used three times
    z.backward()
    assert x.grad.item() == pytest.approx(2 * (2 * 6.0 + 1))


def test_diamond_graph() -> None:
    # a -> b, c -> d: b's and c's contributions must both reach a before a's op runs
    a = minidl.tensor(np.array([0.5, -1.0]), requires_grad=True)
    b = a.exp()
    c = a * 3
    d = (b * c).sum()
    d.backward()
    ea = np.exp([0.5, -1.0])
    np.testing.assert_allclose(a.grad.numpy(), ea * 3 * np.array([0.5, -1.0]) + ea * 3)


def test_grad_accumulates_across_backward_calls() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    assert x.grad.tolist() == [5.0, 7.0]
    x.zero_grad()
    assert x.grad is None


def test_backward_with_explicit_grad() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = x * x
    y.backward(np.array([1.0, 10.0]))  # a float64 array is taken in y's dtype
    assert x.grad.tolist() == [2.0, 40.0] and x.grad.dtype == np.float32


def test_backward_from_leaf() -> None:
    x = minidl.tensor(2.0, requires_grad=True)
    x.backward()
    assert x.grad.item() == 1.0


def test_multiple_roots() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    ag.backward([(x * 2).sum(), (x * x).sum()])
    assert x.grad.tolist() == [4.0, 6.0]


def test_unused_branch_gets_no_grad() -> None:
    x = minidl.tensor([1.0], requires_grad=True)
    w = minidl.tensor([1.0], requires_grad=True)
    _ = w * 5  # recorded but not part of the loss
    (x * 2).sum().backward()
    assert w.grad is None


def test_constant_inputs_get_no_grad() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    c = minidl.tensor([3.0, 4.0])
    (x * c).sum().backward()
    assert c.grad is None and x.grad.tolist() == [3.0, 4.0]


def test_deep_chain_no_recursion_error() -> None:
    x = minidl.tensor(1.0, requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    assert x.grad.item() == pytest.approx(1.0001 ** 10_000, rel=1e-3)
    # and the graph can be dropped without blowing the stack either
    z = x
    for _ in range(10_000):
        z = z + 1.0
    del z


def test_graph_released_after_backward() -> None:
    x = minidl.tensor([1.0], requires_grad=True)
    y = x * 2
    fn = y.grad_fn
    y.sum().backward()
    assert fn.inputs is None


# ---------------------------------------------------------------------------------------
# retain_graph, create_graph, autograd.grad


def test_second_backward_without_retain_graph_raises() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time.*"
                                           "retain_graph=True"):
        y.backward()


def test_retain_graph_allows_second_backward() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad.tolist() == [4.0, 8.0]


def test_create_graph_higher_order() -> None:
    x = minidl.tensor(np.array(2.0), requires_grad=True)
    y = x ** 3
    (g1,) = ag.grad(y, x, create_graph=True)
    assert g1.item() == pytest.approx(12.0) and g1.requires_grad
    (g2,) = ag.grad(g1, x, create_graph=True)
    assert g2.item() == pytest.approx(12.0)  # 6x
    (g3,) = ag.grad(g2, x)
    assert g3.item() == pytest.approx(6.0)


def test_backward_create_graph_then_backward_again() -> None:
    x = minidl.tensor(np.array(2.0), requires_grad=True)
    (x * x * x).backward(create_graph=True)
    g = x.grad
    assert g.requires_grad and g.item() == pytest.approx(12.0)
    x.grad = None
    g.backward()
    assert x.grad.item() == pytest.approx(12.0)


def test_autograd_grad_does_not_touch_dot_grad() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    w = minidl.tensor([3.0, 4.0], requires_grad=True)
    y = (x * w).sum()
    gx, gw = ag.grad(y, [x, w])
    assert gx.tolist() == [3.0, 4.0] and gw.tolist() == [1.0, 2.0]
    assert x.grad is None and w.grad is None


def test_autograd_grad_of_non_leaf() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2
    y = (h * h).sum()
    (gh,) = ag.grad(y, h)
    assert gh.tolist() == [4.0, 8.0]


def test_autograd_grad_unused_and_errors() -> None:
    x = minidl.tensor([1.0], requires_grad=True)
    u = minidl.tensor([1.0], requires_grad=True)
    y = (x * 2).sum()
    with pytest.raises(RuntimeError, match="grad\\(\\): input 1 was not used"):
        ag.grad(y, [x, u], retain_graph=True)
    gx, gu = ag.grad(y, [x, u], allow_unused=True)
    assert gu is None and gx.tolist() == [2.0]
    with pytest.raises(RuntimeError, match="grad\\(\\): input 0 does not require grad"):
        ag.grad((x * 2).sum(), [minidl.tensor([1.0])])
    with pytest.raises(ValueError, match="grad\\(\\): 2 grad_outputs for 1 outputs"):
        ag.grad((x * 2).sum(), x, grad_outputs=[None, None])


# ---------------------------------------------------------------------------------------
# grad modes, detach, retain_grad, leaves


def test_no_grad_context() -> None:
    x = minidl.tensor([1.0], requires_grad=True)
    with minidl.no_grad():
        assert not minidl.is_grad_enabled()
        y = x * 2
    assert minidl.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None


def test_no_grad_decorator() -> None:
    @minidl.no_grad()
    def f(t: Tensor) -> Tensor:
        return t * 2

    x = minidl.tensor([1.0], requires_grad=True)
    assert not f(x).requires_grad
    assert (x * 2).requires_grad


def test_enable_grad_inside_no_grad() -> None:
    x = minidl.tensor([1.0], requires_grad=True)
    with minidl.no_grad():
        with minidl.enable_grad():
            y = x * 2
        z = x * 2
    assert y.requires_grad and not z.requires_grad
    y.sum().backward()
    assert x.grad.tolist() == [2.0]


def test_grad_mode_restored_after_exception() -> None:
    with pytest.raises(KeyError), minidl.no_grad():
        raise KeyError("boom")
    assert minidl.is_grad_enabled()
    with minidl.set_grad_enabled(False):
        assert not minidl.is_grad_enabled()


def test_detach() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    d = y.detach()
    assert not d.requires_grad and d.is_leaf and d.grad_fn is None
    assert np.shares_memory(d.data, y.data)
    (d * x).sum().backward()  # d is a constant: x.grad = d
    assert x.grad.tolist() == [2.0, 4.0]


def test_retain_grad_on_non_leaf() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    h.retain_grad()
    k = x * 3
    (h * h + k).sum().backward()
    assert h.grad.tolist() == [6.0, 12.0]
    assert k.grad is None  # not retained
    with pytest.raises(RuntimeError, match="retain_grad\\(\\): tensor does not require grad"):
        minidl.ones(2).retain_grad()


def test_leaf_and_grad_fn() -> None:
    x = minidl.tensor([1.0], requires_grad=True)
    y = x + 1
    assert x.is_leaf and not y.is_leaf
    assert y.grad_fn.name == "Add"
    assert [f.name for f in ag.iter_graph((y * 2).sum())] == ["Sum", "Mul", "Add"]
    with pytest.raises(RuntimeError, match="cannot turn off gradients of a non-leaf"):
        y.requires_grad = False
    assert x.requires_grad_(False) is x and not x.requires_grad


def test_requires_grad_on_int_tensor_raises() -> None:
    with pytest.raises(TypeError, match="requires_grad: only floating-point tensors can require "
                                        "gradients, got dtype int64"):
        minidl.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match="dtype bool"):
        minidl.tensor([True]).requires_grad_()


def test_int_ops_do_not_require_grad() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    assert not F.argmax(x).requires_grad
    assert not (x > 1).requires_grad


# ---------------------------------------------------------------------------------------
# backward errors


def test_backward_non_scalar_without_grad_raises() -> None:
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"backward\(\): grad can be implicitly created only "
                                           r"for a single-element tensor, but this one has shape "
                                           r"\(2,\)"):
        (x * 2).backward()


def test_backward_on_tensor_without_grad_raises() -> None:
    with pytest.raises(RuntimeError, match="backward\\(\\): tensor does not require grad"):
        minidl.ones(1).backward()


def test_backward_grad_shape_and_dtype_checked() -> None:
    y = minidl.tensor([1.0, 2.0], requires_grad=True) * 2
    with pytest.raises(ValueError, match=r"backward\(\): grad has shape \(3,\) but the tensor "
                                         r"has shape \(2,\)"):
        y.backward(minidl.ones(3))
    with pytest.raises(TypeError, match="backward\\(\\): grad dtype float64 != tensor dtype "
                                        "float32"):
        y.backward(minidl.ones(2, dtype=np.float64))


def test_function_returning_bad_gradient_is_caught() -> None:
    class BadShape(Function):
        def forward(self, x):
            return x.sum()

        def backward(self, gy):
            return gy  # forgot to broadcast back to the input's shape

    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"BadShape.backward returned a gradient of shape \(\) "
                                           r"and dtype float32 for an input of shape \(2,\)"):
        BadShape.apply(x).backward()

    class TooMany(Function):
        def forward(self, x):
            return x * 2

        def backward(self, gy):
            return gy, gy

    with pytest.raises(RuntimeError, match="TooMany.backward returned 2 gradients for 1 inputs"):
        TooMany.apply(x).sum().backward()


def test_function_rejects_non_tensor_inputs() -> None:
    class Id(Function):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="Id: expected Tensor inputs, got ndarray"):
        Id.apply(np.ones(2))


def test_needs_input_grad() -> None:
    seen = {}

    class Spy(Function):
        def forward(self, a, b):
            return a * b

        def backward(self, gy):
            seen["needs"] = self.needs_input_grad
            a, b = self.inputs
            return (gy * b if self.needs_input_grad[0] else None,
                    gy * a if self.needs_input_grad[1] else None)

    a = minidl.tensor([1.0], requires_grad=True)
    Spy.apply(a, minidl.tensor([2.0])).sum().backward()
    assert seen["needs"] == (True, False) and a.grad.tolist() == [2.0]


# ---------------------------------------------------------------------------------------
# Tensor basics and conversions


def test_numpy_on_requires_grad_raises() -> None:
    x = minidl.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="numpy\\(\\): can't call numpy\\(\\) on a tensor that "
                                           "requires grad; use tensor.detach\\(\\).numpy\\(\\)"):
        x.numpy()
    assert x.detach().numpy().tolist() == [1.0]


def test_item_tolist_and_conversions() -> None:
    x = minidl.tensor([[1.5, 2.0]])
    assert x.tolist() == [[1.5, 2.0]]
    assert minidl.tensor([3.5]).item() == 3.5 and isinstance(minidl.tensor(2).item(), int)
    with pytest.raises(ValueError, match="item\\(\\): tensor has 2 elements, expected exactly one"):
        x.item()
    assert float(minidl.tensor(2.5)) == 2.5 and int(minidl.tensor(7)) == 7
    assert [10, 20, 30][minidl.tensor(1)] == 20
    with pytest.raises(TypeError, match="only integer tensors of a single element"):
        [1, 2][minidl.tensor(1.0)]
    assert len(x) == 1 and x.ndim == 2 and x.size == 2 and x.numel() == 2
    with pytest.raises(TypeError, match="len\\(\\) of a 0-d tensor"):
        len(minidl.tensor(1.0))
    assert bool(minidl.tensor([1.0])) is True
    with pytest.raises(RuntimeError, match="bool\\(\\): the truth value of a tensor with 2 "
                                           "elements is ambiguous"):
        bool(x)


def test_repr() -> None:
    assert repr(minidl.tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert repr(minidl.tensor([1, 2])) == "tensor([1, 2])"
    assert repr(minidl.tensor(np.array([1.0]))) == "tensor([1.], dtype=float64)"
    assert repr(minidl.tensor([1.0], requires_grad=True)) == "tensor([1.], requires_grad=True)"
    y = minidl.tensor([1.0], requires_grad=True) * 2
    assert repr(y) == "tensor([2.], grad_fn=<MulBackward>)"
    assert repr(minidl.tensor(np.array([1], dtype=np.int32))) == "tensor([1], dtype=int32)"


def test_tensor_dtype_rules() -> None:
    assert minidl.tensor(1.5).dtype == np.float32
    assert minidl.tensor([1.5, 2]).dtype == np.float32
    assert minidl.tensor(3).dtype == np.int64
    assert minidl.tensor([[1, 2]]).dtype == np.int64
    assert minidl.tensor(True).dtype == np.bool_
    assert minidl.tensor(np.array([1.0])).dtype == np.float64  # arrays keep their dtype
    assert minidl.tensor(np.array([1], dtype=np.int32)).dtype == np.int32
    assert minidl.tensor(np.float64(1.0)).dtype == np.float64
    assert minidl.tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert minidl.tensor(np.array([1.0]), dtype="float32").dtype == np.float32
    assert Tensor([1.0]).dtype == np.float32
    with pytest.raises(TypeError, match="tensor\\(\\): cannot build a tensor from"):
        minidl.tensor([object()])


def test_tensor_copies_numpy_input() -> None:
    a = np.zeros(2)
    t = minidl.tensor(a)
    a[0] = 5
    assert t.tolist() == [0.0, 0.0]


def test_factories() -> None:
    assert minidl.zeros(2, 3).dtype == np.float32 and minidl.zeros((2, 3)).shape == (2, 3)
    assert minidl.ones(2, dtype=np.float64).dtype == np.float64
    assert minidl.ones(3, requires_grad=True).requires_grad
    r = minidl.rand(100)
    assert r.dtype == np.float32 and 0 <= r.numpy().min() and r.numpy().max() < 1
    assert minidl.randn((2, 2), dtype=np.float64).dtype == np.float64


def test_manual_seed_determinism() -> None:
    minidl.manual_seed(42)
    a = minidl.randn(3, 4).numpy()
    b = minidl.rand(5).numpy()
    minidl.manual_seed(42)
    np.testing.assert_array_equal(minidl.randn(3, 4).numpy(), a)
    np.testing.assert_array_equal(minidl.rand(5).numpy(), b)
    minidl.manual_seed(43)
    assert not np.array_equal(minidl.randn(3, 4).numpy(), a)
    with pytest.raises(TypeError, match="manual_seed: seed must be an int"):
        minidl.manual_seed(1.5)


def test_comparisons_return_bool_tensors_without_grad() -> None:
    x = minidl.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for r, expect in ((x > 2, [False, False, True]), (x >= 2, [False, True, True]),
                      (x < 2, [True, False, False]), (x <= 2, [True, True, False]),
                      (x == 2, [False, True, False]), (x != 2, [True, False, True]),
                      (x == minidl.tensor([1.0, 0.0, 3.0]), [True, False, True])):
        assert isinstance(r, Tensor) and r.dtype == np.bool_ and not r.requires_grad
        assert r.tolist() == expect
    assert len({x, x}) == 1  # still hashable by identity despite __eq__


def test_operator_overloading_matches_functions() -> None:
    a = minidl.tensor([1.0, 2.0])
    b = minidl.tensor([3.0, 5.0])
    assert (a + b).tolist() == F.add(a, b).tolist() == [4.0, 7.0]
    assert (a - b).tolist() == [-2.0, -3.0] and (b / a).tolist() == [3.0, 2.5]
    assert (-a).tolist() == [-1.0, -2.0] and (a ** 2).tolist() == [1.0, 4.0]
    assert (2 ** a).tolist() == [2.0, 4.0] and (10 - a).tolist() == [9.0, 8.0]
    assert (np.float32(2) * a).tolist() == [2.0, 4.0]
    assert (a @ b).item() == 13.0


def test_reduction_output_data_is_ndarray() -> None:
    y = minidl.ones(2, 3).sum()
    assert isinstance(y.data, np.ndarray) and y.shape == ()


def test_retained_grad_accumulates_like_a_leaf() -> None:
    x = minidl.tensor([1.0], requires_grad=True)
    h = x * 2
    h.retain_grad()
    y = (h * 3).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert h.grad.tolist() == [6.0] and x.grad.tolist() == [12.0]


class _TwoOut(Function):
    """exp(x) and 2x; backward reads output 0, which the caller may have dropped."""

    def forward(self, x):
        return np.exp(x), x * 2

    def backward(self, g0, g1):
        return g0 * self.output(0) + g1 * 2


def test_multi_output_function_outputs_kept_alive_during_backward() -> None:
    x = minidl.tensor(np.array([0.5, 1.0]), requires_grad=True)
    y0, y1 = _TwoOut.apply(x)
    loss = y0.sum() + y1.sum()
    del y0, y1  # only the graph (and the pending gradients) hold them now
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp([0.5, 1.0]) + 2)


def test_multi_output_function_unused_freed_output_gets_zero_grad() -> None:
    class Split(Function):
        def forward(self, x):
            return x * 2, x * 3

        def backward(self, g0, g1):
            return g0 * 2 + g1 * 3

    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y0, _ = Split.apply(x)
    del _
    y0.sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]


def test_leaf_grads_own_writable_memory() -> None:
    x = minidl.tensor(np.ones(3), requires_grad=True)
    x.sum().backward()  # sum's backward is a zero-stride broadcast view
    assert x.grad.data.flags.writeable and x.grad.data.flags.owndata
    x.grad.data *= 2  # optimizers and users may edit gradients in place
    assert x.grad.tolist() == [2.0, 2.0, 2.0]
    a = minidl.ones(2, requires_grad=True)
    b = minidl.ones(2, requires_grad=True)
    (a + b).sum().backward()  # add hands the same gradient array to both inputs
    assert not np.shares_memory(a.grad.data, b.grad.data)


def test_grad_mode_is_thread_local() -> None:
    import threading

    entered, release = threading.Event(), threading.Event()
    seen = []

    @minidl.no_grad()
    def background() -> None:  # one decorator instance, entered from another thread
        entered.set()
        release.wait(5)
        seen.append(minidl.is_grad_enabled())

    t = threading.Thread(target=background)
    t.start()
    try:
        assert entered.wait(5)
        assert minidl.is_grad_enabled()
        x = minidl.tensor([1.0], requires_grad=True)
        assert (x * 2).requires_grad
        background()  # the same decorated function, in this thread, meanwhile
        assert minidl.is_grad_enabled()
    finally:
        release.set()
        t.join(5)
    assert seen == [False, False] and minidl.is_grad_enabled()


def test_tensor_ragged_and_int_negative_power_errors() -> None:
    with pytest.raises(ValueError, match=r"tensor\(\): ragged nested sequence"):
        minidl.tensor([[1, 2], [3]])
    with pytest.raises(ValueError, match="^pow: .*negative integer powers"):
        minidl.tensor([2, 3]) ** -1


class _FakeCuda:
    """Stands in for CuPy: records which GPU is current when an array is allocated."""

    current = 0
    allocations: list = []

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        def __enter__(self) -> None:
            self.prev, _FakeCuda.current = _FakeCuda.current, self.index

        def __exit__(self, *exc: object) -> None:
            _FakeCuda.current = self.prev


def test_zeros_ones_allocate_on_the_requested_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from minidl import backend

    def alloc(fill):
        def make(shape, dtype):
            _FakeCuda.allocations.append(_FakeCuda.current)
            return fill(shape, dtype=dtype)
        return make

    fake = types.SimpleNamespace(cuda=_FakeCuda, zeros=alloc(np.zeros), ones=alloc(np.ones))
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(_FakeCuda, "allocations", [])
    assert minidl.zeros(2, 3, device="cuda:1").shape == (2, 3)
    assert minidl.ones(4, device="cuda:2").tolist() == [1.0] * 4
    assert _FakeCuda.allocations == [1, 2] and _FakeCuda.current == 0


def test_a_leaf_given_twice_as_a_root_gets_each_seed_once() -> None:
    # Each root's seed gradient reaches the leaf once: [1, 2] + [10, 20], not twice their sum.
    x = minidl.tensor([0.0, 0.0], requires_grad=True)
    minidl.autograd.backward([x, x], [minidl.tensor([1.0, 2.0]), minidl.tensor([10.0, 20.0])])
    assert x.grad.tolist() == [11.0, 22.0]
    (gx,) = minidl.autograd.grad([x, x * 1.0], x, [minidl.ones(2), minidl.ones(2)])
    assert gx.tolist() == [2.0, 2.0]


def test_backward_returning_a_raw_array_is_a_clear_error():
    """A DeZero/cs231n habit: backward returns a NumPy array, not a Tensor. Both backward()
    and gradcheck must name the op and say to wrap the result (it used to pass gradcheck
    and then fail deep in the graph walk)."""
    from minidl.gradcheck import gradcheck

    class RawSquare(minidl.Function):
        def forward(self, x):
            self.save_for_backward(x)
            return x * x

        def backward(self, gy):
            (x,) = self.saved
            return 2 * x * gy.data  # an ndarray: the mistake

    x = minidl.tensor(np.array([1.0, -2.0]), requires_grad=True)
    with pytest.raises(TypeError, match=r"RawSquare\.backward returned a numpy\.ndarray "
                                        r"as the gradient of input 0.*minidl\.Tensor"):
        RawSquare.apply(x).sum().backward()
    with pytest.raises(TypeError, match="RawSquare.backward returned a numpy.ndarray"):
        gradcheck(lambda t: RawSquare.apply(t), [x])
