"""Numerical gradient checking: does an op's ``backward`` match finite differences?

The check reduces the function's outputs ``y_k`` to one scalar with a *random* upstream
gradient, ``L(x) = sum_k <u_k, y_k>``, so that every output element is weighted differently
(an all-ones upstream gradient hides bugs such as a transposed or mis-broadcast gradient).
Backward gives ``dL/dx`` analytically; central differences give it numerically:

    dL/dx_j ~= (L(x + eps e_j) - L(x - eps e_j)) / (2 eps)      error O(eps^2)

in float64. The error has two parts: truncation, ``eps^2 / 6`` times the third derivative
of ``L``, and round-off, about ``1e-16 * S / eps`` with ``S = sum_k |u_k * y_k|`` (the size
of the terms summed into ``L``). ``eps = 1e-5`` sits near their balance point (the cube
root of float64's 2.2e-16) and leaves errors of order 1e-11 to 1e-9 on unit-sized ops, so
the defaults ``atol=1e-7, rtol=1e-6`` keep a wide margin and still fail a backward that is
wrong by a relative 1e-5 (batch norm's eps dropped from its inverse std). Outputs with
``S`` far above 1e3 need a looser ``atol``, about ``1e-15 * S / eps``; see
docs/gradcheck.md.

* ``mode="elementwise"`` perturbs every element of every input (exact location of a bug).
* ``mode="directional"`` perturbs along a few random directions ``v`` and compares
  ``(L(x + eps v) - L(x - eps v)) / (2 eps)`` with ``<dL/dx, v>``: two evaluations per
  direction instead of two per element, for big tensors.
* ``mode="auto"`` (default) picks elementwise for inputs up to ``max_elements`` elements.

``gradgradcheck`` checks second derivatives by gradient-checking the backward pass itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from minidl import backend
from minidl.autograd import Tensor, enable_grad, grad, no_grad


class GradcheckError(AssertionError):
    """Raised when analytical and numerical gradients disagree; the message says where."""


def _as_tuple(out: Any) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _objective(fn: Callable, inputs: Sequence[Tensor], us: Sequence[Any]) -> float:
    with no_grad():
        outs = _as_tuple(fn(*inputs))
    total = 0.0
    for y, u in zip(outs, us):
        if u is not None:
            total += float((backend.to_numpy(y.data).astype(np.float64) * u).sum())
    return total


def _report(name: str, idx: Any, num: np.ndarray, ana: np.ndarray, where: np.ndarray,
            atol: float, rtol: float, what: str) -> str:
    err = np.abs(num - ana)
    order = np.argsort(-(err - atol - rtol * np.abs(num)).ravel())[:5]
    lines = [f"gradcheck failed for {name} {what}:"]
    for k in order:
        if not where.ravel()[k]:
            continue
        loc = np.unravel_index(k, num.shape) if num.ndim else ()
        loc_s = tuple(int(i) for i in loc) if idx is None else f"direction {int(k)}"
        lines.append(f"  at {loc_s}: numerical {num.ravel()[k]:.8g}, analytical "
                     f"{ana.ravel()[k]:.8g}, |diff| {err.ravel()[k]:.3g}")
    lines.append(f"  (tolerance: atol={atol}, rtol={rtol}; max |diff| {err.max():.3g})")
    return "\n".join(lines)


def gradcheck(
    fn: Callable[..., Any],
    inputs: Tensor | Sequence[Any],
    *,
    eps: float = 1e-5,
    atol: float = 1e-7,
    rtol: float = 1e-6,
    mode: str = "auto",
    max_elements: int = 512,
    directions: int = 4,
    seed: int = 0,
    raise_exception: bool = True,
) -> bool:
    """Compare ``fn``'s backward with central finite differences for every input that
    requires grad.

    Args:
        fn: takes the inputs (Tensors; other arguments passed through) and returns a Tensor
            or a tuple of Tensors.
        inputs: the inputs; those with ``requires_grad=True`` must be float64.
        eps: finite-difference step (1e-5 balances truncation and round-off in float64;
            see the module doc).
        atol: absolute tolerance: a gradient entry passes if
            ``|num - ana| <= atol + rtol * |num|``. The default 1e-7 sits about 100x above
            the finite-difference error of unit-sized ops.
        rtol: relative tolerance, in the same test. The default 1e-6 fails a backward that
            is wrong by a relative 1e-5.
        mode: ``"elementwise"``, ``"directional"`` or ``"auto"`` (see the module doc).
        max_elements: in auto mode, inputs with more elements are checked directionally.
        directions: number of random directions per input in directional mode.
        seed: seeds the random upstream gradient and directions.
        raise_exception: raise ``GradcheckError`` with a report (default) or return False.

    Returns:
        True when every checked input passes.

    >>> import minidl, numpy as np
    >>> x = minidl.tensor(np.random.rand(3, 4), requires_grad=True)
    >>> gradcheck(lambda t: (t * t).sum(axis=1), [x])
    True
    """
    if mode not in ("auto", "elementwise", "directional"):
        raise ValueError(f"gradcheck: mode must be auto/elementwise/directional, got {mode!r}")
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad; nothing to check")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype}; gradient checks need "
                            "float64 inputs (finite differences are meaningless in float32)")
    rng = np.random.default_rng(seed)
    # Work on private copies so that perturbing never touches the caller's arrays.
    work = [Tensor(t.data.copy(), requires_grad=t.requires_grad) if isinstance(t, Tensor)
            else t for t in inputs]

    outs = _as_tuple(fn(*work))
    us = []
    for k, y in enumerate(outs):
        if not isinstance(y, Tensor):
            raise TypeError(f"gradcheck: output {k} is a {type(y).__name__}, expected Tensor")
        usable = y.dtype.kind == "f" and y.requires_grad
        us.append(rng.standard_normal(y.shape) if usable else None)
    roots = [y for y, u in zip(outs, us) if u is not None]
    if not roots:
        raise ValueError("gradcheck: no output depends differentiably on the inputs")
    root_grads = [Tensor._make(y.xp.asarray(u, dtype=y.dtype), False)
                  for y, u in zip(outs, us) if u is not None]
    ana_t = grad(roots, [work[i] for i in checked], root_grads, allow_unused=True)
    ok = True
    for i, g in zip(checked, ana_t):
        x = work[i]
        ana = np.zeros(x.shape) if g is None else backend.to_numpy(g.data).astype(np.float64)
        if g is not None and g.dtype != x.dtype:
            raise GradcheckError(f"gradcheck: gradient of input {i} has dtype {g.dtype}, "
                                 f"input has {x.dtype}")
        data = x.data
        flat = data.reshape(-1)  # a view: perturbations show through to x.data
        elementwise = mode == "elementwise" or (mode == "auto" and x.size <= max_elements)
        if elementwise:
            num = np.zeros(x.size)
            for j in range(x.size):
                orig = flat[j].item()
                flat[j] = orig + eps
                plus = _objective(fn, work, us)
                flat[j] = orig - eps
                minus = _objective(fn, work, us)
                flat[j] = orig
                num[j] = (plus - minus) / (2 * eps)
            num, ana_cmp, idx = num.reshape(x.shape), ana, None
        else:
            num = np.zeros(directions)
            ana_cmp = np.zeros(directions)
            orig = data.copy()
            for d in range(directions):
                v = rng.standard_normal(x.shape)
                vx = backend.to_device(v, x.device)
                data[...] = orig + eps * vx
                plus = _objective(fn, work, us)
                data[...] = orig - eps * vx
                minus = _objective(fn, work, us)
                data[...] = orig
                num[d] = (plus - minus) / (2 * eps)
                ana_cmp[d] = float((ana * v).sum())
            idx = "directions"
        bad = np.abs(num - ana_cmp) > atol + rtol * np.abs(num)
        if bad.any():
            ok = False
            what = f"input {i} (shape {x.shape})" + (" along random directions" if idx else "")
            msg = _report(f"{getattr(fn, '__name__', 'fn')}", idx, num, ana_cmp, bad, atol,
                          rtol, what)
            if raise_exception:
                raise GradcheckError(msg)
    return ok


def gradgradcheck(
    fn: Callable[..., Any],
    inputs: Tensor | Sequence[Any],
    *,
    seed: int = 1,
    **kwargs: Any,
) -> bool:
    """Check second derivatives: gradient-check the map ``(inputs, u) -> d<u, fn>/dinputs``
    built with ``create_graph=True``.

    Args:
        fn: as for ``gradcheck``.
        inputs: as for ``gradcheck`` (float64 where ``requires_grad=True``).
        seed: seeds the random vectors ``u`` (one per output, shaped like it) and
            ``gradcheck``'s own draws.
        **kwargs: passed on to ``gradcheck`` (``eps``, ``atol``, ``rtol``, ``mode``, ...).

    Returns:
        True when every checked input passes (``GradcheckError`` otherwise, by default).

    >>> import minidl, numpy as np
    >>> x = minidl.tensor(np.random.rand(3), requires_grad=True)
    >>> gradgradcheck(lambda t: (t * t * t).sum(), [x])
    True
    """
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    rng = np.random.default_rng(seed)
    with no_grad():
        outs = _as_tuple(fn(*inputs))
    diff_outs = [k for k, y in enumerate(outs) if y.dtype.kind == "f"]
    us = [Tensor(backend.to_device(rng.standard_normal(outs[k].shape), outs[k].device),
                 requires_grad=True) for k in diff_outs]
    n = len(inputs)

    def first_grads(*args: Any) -> tuple[Tensor, ...]:
        xs, u = list(args[:n]), args[n:]
        with enable_grad():  # the numerical pass calls this under no_grad
            ys = _as_tuple(fn(*xs))
            roots = [ys[k] for k in diff_outs]
            gs = grad(roots, [xs[i] for i in checked], list(u), create_graph=True,
                      allow_unused=True)
        out = []
        for i, g in zip(checked, gs):
            if g is None:  # the output does not depend on this input
                g = Tensor._make(xs[i].xp.zeros(xs[i].shape), False)
            out.append(g)
        return tuple(out)

    first_grads.__name__ = f"grad of {getattr(fn, '__name__', 'fn')}"
    if not any(g.requires_grad for g in first_grads(*inputs, *us)):
        # gradcheck would only say "no output depends differentiably on the inputs".
        raise ValueError(
            "gradgradcheck: the first derivatives do not depend differentiably on the inputs: "
            "the backward pass was not recorded, so there is no second derivative to check. "
            "This happens when an op's backward computes on raw arrays (.data, NumPy calls) "
            "and wraps the result as a constant Tensor; write that backward with Tensor ops "
            "(minidl.functional) to support double backward, or do not claim it")
    return gradcheck(first_grads, inputs + us, seed=seed, **kwargs)
