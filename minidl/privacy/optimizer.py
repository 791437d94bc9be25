"""``DPOptimizer``: DP-SGD's clip-and-noise step in front of any minidl optimizer.

One DP-SGD step on a logical batch ``B`` (Abadi et al. 2016), for clipping norm ``C`` and
noise multiplier ``sigma``:

    g_i   = gradient of example i's loss                 (every parameter, per example)
    c_i   = min(1, C / ||g_i||)                           (||g_i|| over all parameters)
    g     = (sum_i c_i g_i + N(0, sigma^2 C^2 I)) / E[|B|] (one noise draw per step)

then the wrapped optimizer's update with ``g`` as the gradient. Clipping bounds what any one
example can move the sum (by ``C``); the Gaussian noise hides that move; the accountant
turns ``sigma``, the sample rate and the number of steps into (epsilon, delta). Dividing by
the *expected* batch size ``q N`` rather than the drawn one keeps the divisor independent of
the data (the drawn size is not private).

The noise of step ``t`` is drawn from ``np.random.default_rng([seed, t])``, so a run is
reproducible and a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidl import backend
from minidl.autograd import Tensor
from minidl.optim.optimizer import Optimizer
from minidl.privacy.accountant import PrivacyAccountant, check_delta, check_noise_multiplier
from minidl.privacy.per_sample import PerSampleGradients


class DPOptimizer:
    """Wraps ``optimizer``: ``step()`` clips each example's gradient to ``max_grad_norm``,
    sums, adds Gaussian noise of std ``noise_multiplier * max_grad_norm``, divides by
    ``expected_batch_size`` and runs ``optimizer.step()`` on the result.

    With a ``loader`` that splits logical batches into chunks (``PoissonDataLoader`` with
    ``max_physical_batch_size``), ``step()`` after a chunk that does not end its logical
    batch only accumulates the clipped sum and returns False ("virtual step").

    Args:
        optimizer: any minidl ``Optimizer`` over the model's parameters.
        per_sample: the model's ``PerSampleGradients``.
        noise_multiplier: ``sigma`` >= 0.
        max_grad_norm: ``C`` > 0.
        expected_batch_size: ``q N``, the divisor.
        seed: of the noise (None: drawn from ``minidl.random``).
        loader: the ``PoissonDataLoader`` whose ``end_of_logical_batch`` gates the steps.
        accountant: a ``PrivacyAccountant`` told of every step (with ``sample_rate``).
        sample_rate: ``q``, for the accountant.
        delta: reported with ``epoch_metrics()``: ``{"epsilon": ...}`` at this delta.

    Attributes:
        steps (int): optimizer steps taken (logical batches).
        last_step_taken (bool): whether the last ``step()`` stepped (False after a chunk
            that does not end its logical batch); per-batch LR schedules read it.
        last_norms (array): the per-example gradient norms of the last chunk (B,).
        last_clipped_fraction (float): the share of those examples that were clipped.
    """

    # Loss scaling (fp16 mixed precision) would scale the per-example gradients before
    # clipping; Trainer refuses it for optimizers that say so.
    supports_loss_scaling = False

    def __init__(self, optimizer: Optimizer, per_sample: PerSampleGradients,
                 noise_multiplier: float, max_grad_norm: float, expected_batch_size: int,
                 seed: int | None = None, loader: Any = None,
                 accountant: PrivacyAccountant | None = None, sample_rate: float | None = None,
                 delta: float | None = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"DPOptimizer: expected a minidl optimizer, got "
                            f"{type(optimizer).__name__}")
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float)) \
                or not 0 < max_grad_norm < math.inf:
            raise ValueError(f"DPOptimizer: max_grad_norm must be a positive number, got "
                             f"{max_grad_norm!r}")
        if isinstance(expected_batch_size, bool) or not isinstance(expected_batch_size, int) \
                or expected_batch_size < 1:
            raise ValueError(f"DPOptimizer: expected_batch_size must be a positive int, got "
                             f"{expected_batch_size!r}")
        if accountant is not None and sample_rate is None:
            raise ValueError("DPOptimizer: an accountant needs the sample_rate")
        self.optimizer, self.per_sample = optimizer, per_sample
        self.max_grad_norm = float(max_grad_norm)
        self.expected_batch_size = expected_batch_size
        if seed is None:
            from minidl.random import default_generator
            seed = int(default_generator().integers(0, 2**63 - 1))
        self.seed, self.loader, self.accountant = int(seed), loader, accountant
        self.sample_rate = sample_rate
        self.delta = None if delta is None else check_delta(delta)
        self.steps = 0
        self.last_step_taken = False
        self.last_norms: Any = None
        self.last_clipped_fraction = 0.0
        self._summed: dict[int, Any] | None = None
        # what a loaded checkpoint's run used (the accountant counts its steps at that sigma)
        self.saved_noise_multiplier: float | None = None
        trainable = {id(p) for g in optimizer.param_groups for p in g["params"]
                     if p.requires_grad}
        missing = trainable - {id(p) for p in per_sample.params}
        if missing:
            raise ValueError(f"DPOptimizer: {len(missing)} of the optimizer's trainable "
                             "parameters are not the model's that PerSampleGradients covers; "
                             "build the optimizer over the same model's parameters")
        self.params = [p for p in per_sample.params if id(p) in trainable]

    # the wrapped optimizer's face, so that schedulers, checkpoints and Trainer work unchanged
    @property
    def param_groups(self) -> list:
        return self.optimizer.param_groups

    @property
    def state(self) -> dict:
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameters' ``.grad`` (the per-example records stay until ``step``:
        ``Trainer`` zeroes gradients between the forward and the backward pass)."""
        self.optimizer.zero_grad(set_to_none)

    def _accumulate(self) -> None:
        ps = self.per_sample
        if ps.batch_size:
            norms = ps.norms()
            scale = self.max_grad_norm / np.maximum(norms, 1e-12)
            xp = backend.get_array_module(norms)
            scale = xp.minimum(scale, 1.0)
            self.last_norms = norms
            self.last_clipped_fraction = float((norms > self.max_grad_norm).mean())
            sums = ps.clipped_sum(scale)
            if self._summed is None:
                self._summed = sums
            else:
                for k, v in sums.items():
                    self._summed[k] = self._summed[k] + v
        ps.clear()
        for p in self.params:  # the ordinary (unclipped) batch gradient must not leak out
            p.grad = None

    def step(self) -> bool:
        """Accumulate this chunk's clipped gradients; at the end of a logical batch add the
        noise and step the wrapped optimizer. Returns whether it stepped."""
        self._accumulate()
        if self.loader is not None and not getattr(self.loader, "end_of_logical_batch", True):
            self.last_step_taken = False
            return False
        rng = np.random.default_rng([self.seed, self.steps])
        std = self.noise_multiplier * self.max_grad_norm
        summed = self._summed or {}
        for p in self.params:
            dtype = p.data.dtype
            noise = rng.standard_normal(p.shape).astype(dtype) * dtype.type(std)
            g = backend.to_device(noise, p.device)
            if id(p) in summed:
                g = g + summed[id(p)]
            p.grad = Tensor._make(g / dtype.type(self.expected_batch_size), False)
        self.optimizer.step()
        self._summed = None
        self.steps += 1
        self.last_step_taken = True
        if self.accountant is not None:
            self.accountant.step(self.noise_multiplier, self.sample_rate)
        return True

    def epoch_metrics(self) -> dict:
        """``{"epsilon": ...}`` spent so far at ``delta`` (what ``Trainer`` logs each epoch),
        or ``{}`` without an accountant or delta."""
        if self.accountant is None or self.delta is None:
            return {}
        return {"epsilon": self.accountant.get_epsilon(self.delta)}

    def state_dict(self) -> dict:
        """The wrapped optimizer's state plus the DP state (steps, noise seed, accountant)."""
        sd = self.optimizer.state_dict()
        sd["dp"] = {"steps": self.steps, "seed": self.seed,
                    "noise_multiplier": self.noise_multiplier,
                    "max_grad_norm": self.max_grad_norm,
                    "accountant": None if self.accountant is None
                    else self.accountant.state_dict()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        sd = dict(state_dict)
        dp = sd.pop("dp", None)
        if dp is None:
            raise ValueError("DPOptimizer.load_state_dict: the state has no 'dp' entry (it "
                             "was saved by a plain optimizer, whose privacy spent is unknown)")
        self.optimizer.load_state_dict(sd)
        self.steps, self.seed = int(dp["steps"]), int(dp["seed"])
        saved = dp.get("noise_multiplier")
        self.saved_noise_multiplier = None if saved is None else float(saved)
        if self.accountant is not None and dp["accountant"] is not None:
            self.accountant.load_state_dict(dp["accountant"])

    def __repr__(self) -> str:
        return (f"DPOptimizer({type(self.optimizer).__name__}, noise_multiplier="
                f"{self.noise_multiplier:.4g}, max_grad_norm={self.max_grad_norm:g}, "
                f"expected_batch_size={self.expected_batch_size}, steps={self.steps})")
