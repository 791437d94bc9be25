"""Differentially private training (DP-SGD): per-sample gradients, clipping and noise, and
an accountant.

* ``make_private(model, optimizer, loader, max_grad_norm=..., noise_multiplier=... or
  target_epsilon=...)``: the one call most users need (``minidl.privacy.engine``);
* ``PerSampleGradients``: per-example gradient norms ("ghost" where cheaper) and clipped
  sums from one ordinary backward pass (``minidl.privacy.per_sample``);
* ``DPOptimizer``: clip, sum, add noise, step any optimizer (``minidl.privacy.optimizer``);
* ``PoissonDataLoader``: the sampling the analysis assumes (``minidl.privacy.data``);
* ``PrivacyAccountant``, ``get_noise_multiplier``: epsilon via Google's ``dp-accounting``
  (optional extra ``minidl[privacy]``; ``minidl.privacy.accountant``).

See ``docs/privacy.md`` for DP-SGD from the per-sample gradient up.
"""

from minidl.privacy.accountant import PrivacyAccountant, get_noise_multiplier
from minidl.privacy.data import PoissonDataLoader
from minidl.privacy.engine import make_private
from minidl.privacy.optimizer import DPOptimizer
from minidl.privacy.per_sample import PerSampleGradients, check_model

__all__ = ["DPOptimizer", "PerSampleGradients", "PoissonDataLoader", "PrivacyAccountant",
           "check_model", "get_noise_multiplier", "make_private"]
