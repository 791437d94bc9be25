"""Learning-rate schedules (``minidl.optim.lr_scheduler``), with PyTorch's semantics.

A scheduler sets ``group["lr"]`` of every parameter group from the group's ``initial_lr``
(recorded on construction) and a step counter ``last_epoch``. Construction counts as step
0 and sets the first lr; each ``step()`` advances by one. Whether a "step" is an epoch or a
batch is the caller's choice (``OneCycleLR`` and ``LinearWarmup`` are usually stepped per
batch). Every schedule here is a closed-form function of the step count, so
``state_dict()`` needs only a few numbers and resuming is exact.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from minidl.optim.optimizer import Optimizer


class LRScheduler:
    """Base class of the schedules: subclasses implement ``get_lr_at(epoch)``.

    A schedule of the form ``lr = base_lr * f(epoch)`` can instead subclass the internal
    ``_FactorScheduler`` and implement ``factor(epoch)``, as ``StepLR`` and ``LambdaLR`` do.
    Subclasses set their attributes *before* calling ``super().__init__``, which runs the
    first ``step()``.

    Args:
        optimizer: the optimizer whose ``param_groups`` get their ``"lr"`` set.
        last_epoch: the step count to resume from; -1 (the default) starts a new schedule
            and records each group's current lr as ``initial_lr``.

    Attributes:
        base_lrs (list[float]): the ``initial_lr`` of every group.
        last_epoch (int): steps taken so far (0 right after construction).

    >>> import minidl, minidl.nn, minidl.optim
    >>> class Halving(LRScheduler):
    ...     def get_lr_at(self, epoch):
    ...         return [base * 0.5 ** epoch for base in self.base_lrs]
    >>> opt = minidl.optim.SGD([minidl.nn.Parameter(minidl.zeros(1))], lr=1.0)
    >>> s = Halving(opt); s.step(); s.step(); s.get_last_lr(), opt.param_groups[0]["lr"]
    ([0.25], 0.25)
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        for g in optimizer.param_groups:
            if last_epoch == -1:
                g.setdefault("initial_lr", g["lr"])
            elif "initial_lr" not in g:
                raise KeyError(f"{type(self).__name__}: resuming with last_epoch={last_epoch} "
                               "needs 'initial_lr' in every parameter group")
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._last_lr: list[float] = []
        self.step()

    def get_lr_at(self, epoch: int) -> list[float]:  # pragma: no cover - abstract
        """The learning rate of every group after ``epoch`` steps."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one step and set the groups' learning rates."""
        self.last_epoch += 1
        lrs = self.get_lr_at(self.last_epoch)
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = float(lr)
        self._last_lr = [float(lr) for lr in lrs]

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the last ``step()`` (one per group)."""
        return list(self._last_lr)

    _config: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers: the step count, base learning rates and configuration."""
        d = {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
             "_last_lr": list(self._last_lr)}
        for k in self._config:
            v = getattr(self, k)
            d[k] = list(v) if isinstance(v, (tuple, list)) else v
        return d

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()`` (the optimizer's lr comes from its own state dict)."""
        for k, v in state_dict.items():
            if k not in ("last_epoch", "base_lrs", "_last_lr") and k not in self._config:
                raise KeyError(f"{type(self).__name__}.load_state_dict: unexpected key {k!r}")
            setattr(self, k, v)

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._config)
        return f"{type(self).__name__}({cfg})"


class _FactorScheduler(LRScheduler):
    """A schedule of the form ``lr = base_lr * factor(epoch)``."""

    def factor(self, epoch: int) -> float:  # pragma: no cover - abstract
        """The multiplier of ``base_lr`` after ``epoch`` steps."""
        raise NotImplementedError

    def get_lr_at(self, epoch: int) -> list[float]:
        f = self.factor(epoch)
        return [base * f for base in self.base_lrs]


class StepLR(_FactorScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` steps.

    >>> import minidl, minidl.nn, minidl.optim
    >>> opt = minidl.optim.SGD([minidl.nn.Parameter(minidl.zeros(1))], lr=1.0)
    >>> s = StepLR(opt, step_size=2, gamma=0.5)
    >>> lrs = []
    >>> for _ in range(5):
    ...     lrs.append(s.get_last_lr()[0]); s.step()
    >>> lrs
    [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    _config = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """``gamma ** (epoch // step_size)``."""
        return self.gamma ** (epoch // self.step_size)


class MultiStepLR(_FactorScheduler):
    """Multiply the lr by ``gamma`` at each of the ``milestones`` (step counts).

    >>> import minidl, minidl.nn, minidl.optim
    >>> opt = minidl.optim.SGD([minidl.nn.Parameter(minidl.zeros(1))], lr=1.0)
    >>> s = MultiStepLR(opt, milestones=[1, 3], gamma=0.5)
    >>> s.step(); s.get_last_lr()
    [0.5]
    """

    _config = ("milestones", "gamma")

    def __init__(self, optimizer: Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """``gamma ** k``, k the number of milestones <= ``epoch``."""
        return self.gamma ** bisect.bisect_right(self.milestones, epoch)


class ExponentialLR(_FactorScheduler):
    """Multiply the lr by ``gamma`` every step.

    >>> import minidl, minidl.nn, minidl.optim
    >>> opt = minidl.optim.SGD([minidl.nn.Parameter(minidl.zeros(1))], lr=1.0)
    >>> s = ExponentialLR(opt, gamma=0.9)
    >>> s.step(); s.step(); round(s.get_last_lr()[0], 4)
    0.81
    """

    _config = ("gamma",)

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """``gamma ** epoch``."""
        return self.gamma ** epoch


class LambdaLR(_FactorScheduler):
    """``lr = base_lr * lr_lambda(epoch)`` (the function itself is not saved).

    >>> import minidl, minidl.nn, minidl.optim
    >>> opt = minidl.optim.SGD([minidl.nn.Parameter(minidl.zeros(1))], lr=1.0)
    >>> s = LambdaLR(opt, lambda e: 1.0 / (e + 1))
    >>> s.step(); s.get_last_lr()
    [0.5]
    """

    def __init__(self, optimizer: Optimizer, lr_lambda: Callable[[int], float],
                 last_epoch: int = -1) -> None:
        self.lr_lambda = lr_lambda
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """``lr_lambda(epoch)``."""
        return float(self.lr_lambda(epoch))


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``.

    >>> import minidl, minidl.nn, minidl.optim
    >>> opt = minidl.optim.SGD([minidl.nn.Parameter(minidl.zeros(1))], lr=1.0)
    >>> s = CosineAnnealingLR(opt, T_max=2)
    >>> s.step(); round(s.get_last_lr()[0], 6)
    0.5
    """

    _config = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        if T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr_at(self, epoch: int) -> list[float]:
        c = (1.0 + math.cos(math.pi * epoch / self.T_max)) / 2.0
        return [self.eta_min + (base - self.eta_min) * c for base in self.base_lrs]


class LinearLR(_FactorScheduler):
    """Scale the lr linearly from ``start_factor`` to ``end_factor`` over ``total_iters``
    steps, then keep ``end_factor`` (PyTorch's ``LinearLR``).

    >>> import minidl, minidl.nn, minidl.optim
    >>> opt = minidl.optim.SGD([minidl.nn.Parameter(minidl.zeros(1))], lr=1.0)
    >>> s = LinearLR(opt, start_factor=0.5, total_iters=2)
    >>> s.get_last_lr(), (s.step(), s.get_last_lr())[1]
    ([0.5], [0.75])
    """

    _config = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3,
                 end_factor: float = 1.0, total_iters: int = 5, last_epoch: int = -1) -> None:
        if not 0.0 < start_factor <= 1.0 or not 0.0 <= end_factor <= 1.0:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1] and end_factor in "
                             f"[0, 1], got {start_factor} and {end_factor}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """``start_factor`` moved linearly to ``end_factor`` over ``total_iters`` steps."""
        frac = min(epoch, self.total_iters) / self.total_iters if self.total_iters else 1.0
        return self.start_factor + (self.end_factor - self.start_factor) * frac


class LinearWarmup(LRScheduler):
    """Ramp the lr linearly over ``warmup_steps`` steps, then hand over to ``after``.

    During warmup, step ``e`` (0-based) gets ``base_lr * (e + 1) / warmup_steps``, so the
    full lr is reached at step ``warmup_steps - 1``. From step ``warmup_steps`` on, the lr is
    ``after``'s schedule evaluated at ``e - warmup_steps`` (or constant ``base_lr`` without
    ``after``). Build ``after`` on the same optimizer first.

    >>> import minidl, minidl.nn, minidl.optim
    >>> opt = minidl.optim.SGD([minidl.nn.Parameter(minidl.zeros(1))], lr=1.0)
    >>> s = LinearWarmup(opt, 4, after=StepLR(opt, step_size=1, gamma=0.5))
    >>> lrs = []
    >>> for _ in range(6):
    ...     lrs.append(s.get_last_lr()[0]); s.step()
    >>> lrs
    [0.25, 0.5, 0.75, 1.0, 1.0, 0.5]
    """

    _config = ("warmup_steps",)

    def __init__(self, optimizer: Optimizer, warmup_steps: int,
                 after: LRScheduler | None = None, last_epoch: int = -1) -> None:
        if warmup_steps < 1:
            raise ValueError(f"LinearWarmup: warmup_steps must be >= 1, got {warmup_steps}")
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("LinearWarmup: `after` must schedule the same optimizer")
        self.warmup_steps, self.after = int(warmup_steps), after
        super().__init__(optimizer, last_epoch)

    def get_lr_at(self, epoch: int) -> list[float]:
        if epoch < self.warmup_steps:
            f = (epoch + 1) / self.warmup_steps
            return [base * f for base in self.base_lrs]
        if self.after is None:
            return list(self.base_lrs)
        return self.after.get_lr_at(epoch - self.warmup_steps)

    def state_dict(self) -> dict[str, Any]:
        d = super().state_dict()
        if self.after is not None:
            d["after"] = self.after.state_dict()
        return d

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        d = dict(state_dict)
        after = d.pop("after", None)
        super().load_state_dict(d)
        if after is not None and self.after is not None:
            self.after.load_state_dict(after)


class PiecewiseLinearLR(_FactorScheduler):
    """``lr = base_lr * interp(epoch, steps, factors)``: linear between the given points and
    constant outside them (e.g. ``steps=[0, 15, 30], factors=[0.1, 1, 0]`` for a triangle).

    >>> import minidl, minidl.nn, minidl.optim
    >>> opt = minidl.optim.SGD([minidl.nn.Parameter(minidl.zeros(1))], lr=1.0)
    >>> s = PiecewiseLinearLR(opt, steps=[0, 2, 4], factors=[0.0, 1.0, 0.0])
    >>> s.step(); s.get_last_lr()
    [0.5]
    """

    _config = ("steps", "factors")

    def __init__(self, optimizer: Optimizer, steps: Sequence[float], factors: Sequence[float],
                 last_epoch: int = -1) -> None:
        if len(steps) != len(factors) or not steps:
            raise ValueError(f"PiecewiseLinearLR: steps and factors must be non-empty and of "
                             f"equal length, got {len(steps)} and {len(factors)}")
        if any(b < a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"PiecewiseLinearLR: steps must be increasing, got {list(steps)}")
        self.steps, self.factors = [float(s) for s in steps], [float(f) for f in factors]
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """``interp(epoch, steps, factors)``, constant outside ``steps``."""
        return float(np.interp(epoch, self.steps, self.factors))


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin), PyTorch's ``OneCycleLR``: warm up from
    ``max_lr / div_factor`` to ``max_lr`` over ``pct_start`` of ``total_steps``, then anneal
    to ``max_lr / (div_factor * final_div_factor)``; momentum (or Adam's ``beta1``) moves
    inversely between ``max_momentum`` and ``base_momentum``. Step it once per batch.

    >>> import minidl, minidl.nn, minidl.optim
    >>> opt = minidl.optim.SGD([minidl.nn.Parameter(minidl.zeros(1))], lr=0.1, momentum=0.9)
    >>> s = OneCycleLR(opt, max_lr=1.0, total_steps=10)
    >>> round(s.get_last_lr()[0], 4), opt.param_groups[0]["momentum"]
    (0.04, 0.95)
    """

    _config = ("total_steps", "pct_start", "anneal_strategy", "three_phase",
               "cycle_momentum", "max_lrs", "initial_lrs", "min_lrs", "base_momentums",
               "max_momentums")

    def __init__(self, optimizer: Optimizer, max_lr: float | Sequence[float],
                 total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: float = 0.85, max_momentum: float = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4,
                 three_phase: bool = False, last_epoch: int = -1) -> None:
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
            total_steps = int(epochs) * int(steps_per_epoch)
        if total_steps < 1:
            raise ValueError(f"OneCycleLR: total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"OneCycleLR: pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        n = len(optimizer.param_groups)
        max_lrs = [float(v) for v in max_lr] if isinstance(max_lr, (list, tuple)) else \
            [float(max_lr)] * n
        if len(max_lrs) != n:
            raise ValueError(f"OneCycleLR: got {len(max_lrs)} max_lr values for {n} groups")
        self.total_steps, self.pct_start = int(total_steps), float(pct_start)
        self.anneal_strategy, self.three_phase = anneal_strategy, bool(three_phase)
        self.max_lrs = max_lrs
        self.initial_lrs = [m / div_factor for m in max_lrs]
        self.min_lrs = [i / final_div_factor for i in self.initial_lrs]
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentums = [float(base_momentum)] * n
        self.max_momentums = [float(max_momentum)] * n
        if self.cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError("OneCycleLR: cycle_momentum needs an optimizer with "
                                 "'momentum' or 'betas'; pass cycle_momentum=False")
        if last_epoch == -1:
            for g, lr in zip(optimizer.param_groups, self.initial_lrs):
                g["initial_lr"] = lr
        super().__init__(optimizer, last_epoch)

    def _phases(self) -> list[tuple[float, str, str]]:
        t = self.total_steps
        if self.three_phase:
            return [(self.pct_start * t - 1, "initial", "max"),
                    (2 * self.pct_start * t - 2, "max", "initial"),
                    (t - 1, "initial", "min")]
        return [(self.pct_start * t - 1, "initial", "max"), (t - 1, "max", "min")]

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _values(self, epoch: int) -> tuple[list[float], list[float]]:
        if epoch > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {epoch} times, but total_steps is "
                             f"{self.total_steps}")
        lrs, moms = [], []
        for i in range(len(self.max_lrs)):
            lr_of = {"initial": self.initial_lrs[i], "max": self.max_lrs[i],
                     "min": self.min_lrs[i]}
            # momentum runs opposite to the lr: high when the lr is low
            mom_of = {"initial": self.max_momentums[i], "max": self.base_momentums[i],
                      "min": self.max_momentums[i]}
            start = 0.0
            phases = self._phases()
            for k, (end, a, b) in enumerate(phases):
                if epoch <= end or k == len(phases) - 1:
                    pct = (epoch - start) / (end - start) if end != start else 1.0
                    lrs.append(self._anneal(lr_of[a], lr_of[b], pct))
                    moms.append(self._anneal(mom_of[a], mom_of[b], pct))
                    break
                start = end
        return lrs, moms

    def get_lr_at(self, epoch: int) -> list[float]:
        return self._values(epoch)[0]

    def step(self) -> None:
        super().step()
        if self.cycle_momentum:
            _, moms = self._values(self.last_epoch)
            for g, m in zip(self.optimizer.param_groups, moms):
                if "betas" in g:
                    g["betas"] = (m, g["betas"][1])
                else:
                    g["momentum"] = m
