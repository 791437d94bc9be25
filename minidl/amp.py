"""Mixed precision: float16 activations and GEMMs, float32 master weights, loss scaling.

Half precision halves memory traffic and, on GPUs with tensor cores, runs GEMMs several
times faster. Two things make it safe:

* ``autocast("float16")``: inside the block, the GEMM ops (``conv2d``, ``linear``,
  ``matmul``) cast their floating inputs to float16 — with a differentiable cast, so the
  parameters stay float32 "master weights" and receive float32 gradients — while ops that
  need range or precision (``batch_norm``, ``layer_norm``, ``softmax``, ``log_softmax``,
  the losses) cast their inputs up to float32. Binary elementwise ops between the two
  precisions compute in the wider one. Outside autocast, minidl never mixes dtypes.
* ``GradScaler``: float16 gradients underflow below ~6e-8, so the loss is multiplied by a
  large scale before backward and the gradients are divided by it before the optimizer
  step; a step whose gradients overflowed (inf/NaN) is skipped and the scale halved, and
  after ``growth_interval`` clean steps the scale doubles.

Typical step::

    scaler = GradScaler()
    with autocast("float16"):
        loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()

On the CPU float16 is slow (NumPy has no half-precision BLAS): it is meant for CUDA and is
tested on the CPU for correctness only. bfloat16 is not a NumPy or CuPy array type and is
refused with a clear error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidl import _deprecated
from minidl.autograd import Tensor, _set_autocast_dtype, autocast_dtype
from minidl.functional.math import cast

__all__ = ["GradScaler", "autocast", "autocast_dtype"]


class autocast:  # noqa: N801 - a context manager named like PyTorch's
    """Run GEMM ops in half precision inside a ``with`` block (see the module docstring).

    Args:
        dtype: ``"float16"`` (``"bfloat16"`` is refused: NumPy and CuPy have no such type).
        enabled: False makes the block a no-op, handy for a command-line switch.

    >>> import minidl
    >>> w = minidl.randn(3, 4, requires_grad=True)
    >>> with autocast("float16"):
    ...     y = minidl.functional.linear(minidl.randn(2, 4), w)
    >>> y.dtype, w.dtype
    (dtype('float16'), dtype('float32'))
    """

    def __init__(self, dtype: str | Any = "float16", enabled: bool = True) -> None:
        if str(dtype) == "bfloat16":
            raise TypeError("autocast: bfloat16 is not supported (NumPy and CuPy arrays have "
                            "no bfloat16 type); use float16")
        dt = np.dtype(dtype)
        if dt != np.float16:
            raise TypeError(f"autocast: dtype must be float16, got {dt}")
        self.dtype = dt if enabled else None
        self._prev: list[Any] = []

    def __enter__(self) -> autocast:
        self._prev.append(_set_autocast_dtype(self.dtype))
        return self

    def __exit__(self, *exc: object) -> None:
        _set_autocast_dtype(self._prev.pop())


class GradScaler:
    """Dynamic loss scaling for float16 training.

    Args:
        init_scale: starting scale (2**16, as in PyTorch).
        growth_factor: multiply the scale by this after ``growth_interval`` clean steps.
        backoff_factor: multiply the scale by this after a step with inf/NaN gradients.
        growth_interval: clean steps between growths.
        enabled: False makes every method a pass-through (same code with and without amp).

    >>> import minidl
    >>> p = minidl.nn.Parameter(minidl.tensor([1.0]))
    >>> opt = minidl.optim.SGD([p], lr=0.1)
    >>> scaler = GradScaler(init_scale=8.0)
    >>> scaler.scale((p * 2.0).sum()).backward()
    >>> float(p.grad.item())  # scaled gradient
    16.0
    >>> scaler.step(opt)  # stepped with the true gradient, 2.0
    True
    >>> scaler.update(); round(p.item(), 6)
    0.8
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 enabled: bool = True) -> None:
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1:
            raise ValueError("GradScaler: need init_scale > 0, growth_factor > 1 and "
                             f"0 < backoff_factor < 1, got {init_scale}, {growth_factor}, "
                             f"{backoff_factor}")
        self.enabled = enabled
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._good_steps = 0
        self._found_inf: bool | None = None

    def scale(self, loss: Tensor) -> Tensor:
        """``loss * scale`` (in float32), ready for ``backward()``."""
        if not self.enabled:
            return loss
        return cast(loss, np.float32) * self.scale_value

    def unscale_(self, optimizer: Any) -> bool:
        """Divide every gradient by the scale; return True if any is inf/NaN.

        Each ``.grad`` is replaced by a new tensor rather than divided in place: after
        ``backward(create_graph=True)`` one gradient array may be shared by several
        parameters, or be a read-only broadcast view. One device-to-host read per step
        (the finiteness flag)."""
        if not self.enabled:
            return False
        if self._found_inf is not None:
            return self._found_inf
        inv = 1.0 / self.scale_value
        finite = True
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.data * p.grad.dtype.type(inv)
                p.grad = Tensor._make(g, False)
                finite = finite and bool(p.xp.isfinite(g).all())
        self._found_inf = not finite
        return self._found_inf

    def step(self, optimizer: Any) -> bool:
        """Unscale (if not done yet) and step the optimizer unless gradients overflowed;
        returns whether the step was taken."""
        if not self.enabled:
            optimizer.step()
            return True
        if self.unscale_(optimizer):
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Adjust the scale after a step: back off on overflow, grow after a clean run."""
        if not self.enabled:
            return
        if self._found_inf:
            self.scale_value *= self.backoff_factor
            self._good_steps = 0
        elif self._found_inf is not None:
            self._good_steps += 1
            if self._good_steps >= self.growth_interval:
                self.scale_value *= self.growth_factor
                self._good_steps = 0
        if not math.isfinite(self.scale_value) or self.scale_value <= 0:
            raise FloatingPointError(f"GradScaler: scale became {self.scale_value}")
        self._found_inf = None

    def state_dict(self) -> dict:
        """The scale and growth counter, for checkpoints."""
        return {"scale": self.scale_value, "good_steps": self._good_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``."""
        self.scale_value = float(state["scale"])
        self._good_steps = int(state["good_steps"])


# The cast policy moved beside ``cast`` (minidl.functional.math); the old names still work.
__getattr__ = _deprecated.aliases(__name__, {"lower": "minidl.functional.math.lower",
                                             "upper": "minidl.functional.math.upper"})
