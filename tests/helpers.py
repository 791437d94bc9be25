"""The declarative op test (Chainer's ``function_link`` / tinygrad's ``helper_test_op`` idea).

An ``OpCase`` names a minidl function, a plain-NumPy reference and how to build its inputs;
``check_case`` derives from it every test an op needs:

1. forward in float64 against the reference (tight tolerance) and in float32 (the output
   must stay float32: no silent upcast);
2. backward in float32 (every gradient stays float32);
3. invariants of one float64 forward/backward with a random upstream gradient: forward and
   backward leave the input arrays bitwise unchanged; a second backward over the retained
   graph gives bitwise the same gradients; ``create_graph=True`` (the double-backward code
   path, a separate one in some ops) gives the same gradients; and non-contiguous inputs
   (strided views whose gaps hold NaN, transposed / channels-last copies) give the same
   outputs and gradients as contiguous ones (Chainer's ``FunctionTestCase`` and PyTorch's
   ``gradcheck`` check the same things);
4. ``gradcheck`` (float64, random upstream gradient, every float input requiring grad);
5. ``gradgradcheck`` when ``gradgrad=True``.

Non-tensor arguments (axes, shapes, indices) are baked into the case's lambdas. Each case
names the public ``minidl.functional`` function(s) it exercises (``op``, or ``fn`` itself
when that is one), so that ``test_op_coverage.py`` can fail on an op without a case.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import minidl
from minidl import backend
from minidl.autograd import Tensor
from minidl.gradcheck import gradcheck, gradgradcheck

InputSpec = Any  # a shape tuple, an ndarray, a callable rng -> ndarray, or Const(...)

# A non-contiguous input, or the double-backward path, only reorders floating-point sums:
# float64 results may differ by a few ulps times the op's conditioning, never by more.
LAYOUT_RTOL, LAYOUT_ATOL = 1e-10, 1e-12


@dataclass(frozen=True)
class Const:
    """An input passed as a tensor that does not require grad (labels, masks, ...)."""

    spec: InputSpec


@dataclass(frozen=True)
class OpCase:
    """One declarative op test.

    ``atol``/``rtol`` of None use ``gradcheck``'s defaults (see docs/gradcheck.md for why
    those numbers); a case that needs looser ones says why in a comment. ``op`` is the
    public function (or a tuple of them) the case exercises; leave it None when ``fn`` is
    that function itself.
    """

    id: str
    fn: Callable[..., minidl.Tensor]
    ref: Callable[..., Any]
    inputs: Sequence[InputSpec]
    gradgrad: bool = False
    low: float = -2.0
    high: float = 2.0
    atol: float | None = None
    rtol: float | None = None
    check_f32: bool = True
    op: Callable[..., Any] | tuple[Callable[..., Any], ...] | None = None

    @property
    def ops(self) -> tuple[Callable[..., Any], ...]:
        """The public functions this case exercises."""
        if self.op is None:
            return (self.fn,)
        return self.op if isinstance(self.op, tuple) else (self.op,)

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
# NumPy references shared by several test modules


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def pool2d_ref(x: np.ndarray, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, mode: str = "max", count_include_pad: bool = True
               ) -> np.ndarray:
    """Max or average pooling of (N, C, H, W) by a loop over output positions (floor mode);
    padding is -inf for max and 0 for average, as in PyTorch."""
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel_size), _pair(padding), _pair(dilation)
    sh, sw = (kh, kw) if stride is None else _pair(stride)
    n, c, h, w = x.shape
    padded = np.full((n, c, h + 2 * ph, w + 2 * pw), -np.inf if mode == "max" else 0.0)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    inside = np.zeros(padded.shape[2:])
    inside[ph:ph + h, pw:pw + w] = 1.0
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows = slice(i * sh, i * sh + dh * (kh - 1) + 1, dh)
            cols = slice(j * sw, j * sw + dw * (kw - 1) + 1, dw)
            win = padded[:, :, rows, cols]
            if mode == "max":
                y[:, :, i, j] = win.max(axis=(2, 3))
            else:
                count = kh * kw if count_include_pad else inside[rows, cols].sum()
                y[:, :, i, j] = win.sum(axis=(2, 3)) / count
    return y


# ---------------------------------------------------------------------------------------
# non-contiguous layouts of the same values


def _gap_fill(dtype: np.dtype) -> Any:
    # What sits between a strided view's elements: an op that ignores strides reads it.
    if dtype.kind == "f":
        return np.nan
    if dtype.kind in "iu":
        return np.iinfo(dtype).max
    return True


def _strided(a: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``a``'s values as every other element along its last non-trivial axis of a buffer
    twice as long (the gaps hold NaN or a huge integer); returns (view, buffer)."""
    axes = [k for k in range(a.ndim) if a.shape[k] > 1]
    if not axes:
        return None  # 0-d or all sizes 1: every layout of it is contiguous
    k = axes[-1]
    shape = list(a.shape)
    shape[k] *= 2
    buf = np.full(shape, _gap_fill(a.dtype), a.dtype)
    view = buf[(slice(None),) * k + (slice(None, None, 2),)]
    view[...] = a
    return view, buf


def _transposed(a: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``a``'s values in a transposed memory layout: channels-last for 4-D (N, C, H, W)
    arrays (the layout minidl's kernels have their own paths for), reversed axes (Fortran
    order) otherwise; returns (view, buffer)."""
    if a.ndim < 2:
        return None
    order = (0, 2, 3, 1) if a.ndim == 4 else tuple(reversed(range(a.ndim)))
    buf = np.ascontiguousarray(a.transpose(order))
    return buf.transpose(np.argsort(order)), buf


_LAYOUTS = {"strided": _strided, "transposed": _transposed}


def _np(t: Tensor) -> np.ndarray:
    return np.array(backend.to_numpy(t.data))  # a copy, whether or not t requires grad


def _bytes(a: np.ndarray) -> tuple:
    return a.dtype, a.shape, a.tobytes()


def _leaves(case: OpCase, arrays: Sequence[np.ndarray]) -> list[Tensor]:
    # Tensor(array) wraps the array itself (minidl.tensor would copy it into a contiguous
    # one), so the op sees exactly this memory.
    return [Tensor(a, requires_grad=not isinstance(s, Const) and a.dtype.kind == "f")
            for s, a in zip(case.inputs, arrays)]


def _grads(roots: Sequence[Tensor], diff: Sequence[Tensor], us: Sequence[Tensor],
           **kwargs: Any) -> list[np.ndarray]:
    gs = minidl.autograd.grad(roots, diff, us, allow_unused=True, **kwargs)
    return [np.zeros(t.shape) if g is None else _np(g) for t, g in zip(diff, gs)]


def _assert_close(case: OpCase, what: str, got: Sequence[np.ndarray],
                  expected: Sequence[np.ndarray]) -> None:
    for k, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape, f"{case.id}: {what} {k} has shape {g.shape}, not {e.shape}"
        np.testing.assert_allclose(g, e, rtol=LAYOUT_RTOL, atol=LAYOUT_ATOL,
                                   err_msg=f"{case.id}: {what} {k}")


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


def check_invariants(case: OpCase) -> None:
    """Inputs untouched, repeatable backward, create_graph and non-contiguous inputs agree
    (item 3 of the module docstring); float64, one random upstream gradient."""
    arrays = make_arrays(case)
    leaves = _leaves(case, [a.copy() for a in arrays])
    before = [_bytes(t.data) for t in leaves]

    def untouched(ts: Sequence[Tensor], snapshot: Sequence[tuple], when: str) -> None:
        for i, (t, b) in enumerate(zip(ts, snapshot)):
            assert _bytes(t.data) == b, f"{case.id}: {when} modified input {i}"

    outs = _outputs(case.fn(*leaves))
    untouched(leaves, before, "forward")
    keep = [k for k, y in enumerate(outs) if y.dtype.kind == "f" and y.requires_grad]
    diff = [t for t in leaves if t.requires_grad]
    if not keep or not diff:
        return
    rng = np.random.default_rng(zlib.crc32(case.id.encode()) + 1)
    us = [Tensor(rng.standard_normal(outs[k].shape)) for k in keep]
    roots = [outs[k] for k in keep]
    first = _grads(roots, diff, us, retain_graph=True)
    untouched(leaves, before, "backward")
    again = _grads(roots, diff, us, retain_graph=True)
    for i, (a, b) in enumerate(zip(first, again)):
        assert np.array_equal(a, b), f"{case.id}: second backward gave a different gradient {i}"
    _assert_close(case, "create_graph=True gradient",
                  _grads(roots, diff, us, create_graph=True), first)
    values = [_np(y) for y in outs]
    for name, layout in _LAYOUTS.items():
        built = [layout(a) for a in arrays]
        if all(b is None for b in built):
            continue
        views = [a.copy() if b is None else b[0] for a, b in zip(arrays, built)]
        bufs = [v if b is None else b[1] for v, b in zip(views, built)]
        snapshot = [_bytes(b) for b in bufs]
        nc = _leaves(case, views)
        outs_nc = _outputs(case.fn(*nc))
        for i, (b, s) in enumerate(zip(bufs, snapshot)):
            assert _bytes(b) == s, f"{case.id}: forward modified {name} input {i} (or its gaps)"
        _assert_close(case, f"output with {name} inputs", [_np(y) for y in outs_nc], values)
        grads_nc = _grads([outs_nc[k] for k in keep], [t for t in nc if t.requires_grad], us)
        _assert_close(case, f"gradient with {name} inputs", grads_nc, first)


def _tolerances(case: OpCase) -> dict[str, float]:
    return {k: v for k, v in (("atol", case.atol), ("rtol", case.rtol)) if v is not None}


def check_grad(case: OpCase) -> None:
    tensors = to_tensors(case, make_arrays(case))
    assert gradcheck(case.fn, tensors, **_tolerances(case))


def check_gradgrad(case: OpCase) -> None:
    tensors = to_tensors(case, make_arrays(case))
    assert gradgradcheck(case.fn, tensors, **_tolerances(case))


def check_case(case: OpCase) -> None:
    """Forward, invariants, gradient and (if requested) double-gradient checks of a case."""
    check_forward(case)
    if case.check_f32:
        check_float32_backward(case)
    check_invariants(case)
    check_grad(case)
    if case.gradgrad:
        check_gradgrad(case)
