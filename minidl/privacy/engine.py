"""``make_private``: turn a model, an optimizer and a loader into their DP-SGD versions."""

from __future__ import annotations

from minidl.data.loader import DataLoader
from minidl.nn.module import Module
from minidl.optim.optimizer import Optimizer
from minidl.privacy.accountant import (
    PrivacyAccountant,
    check_delta,
    check_noise_multiplier,
    get_noise_multiplier,
)
from minidl.privacy.data import PoissonDataLoader
from minidl.privacy.optimizer import DPOptimizer
from minidl.privacy.per_sample import PerSampleGradients


def make_private(model: Module, optimizer: Optimizer, loader: DataLoader, *,
                 max_grad_norm: float, noise_multiplier: float | None = None,
                 target_epsilon: float | None = None, target_delta: float | None = None,
                 epochs: int | None = None, max_physical_batch_size: int | None = None,
                 accountant: str | None = "rdp", poisson_sampling: bool = True,
                 loss_reduction: str = "mean", seed: int | None = None
                 ) -> tuple[Module, DPOptimizer, DataLoader]:
    """Make a training setup differentially private (DP-SGD).

    Args:
        model: built from layers with per-sample rules (``Linear``, ``Conv2d``,
            ``GroupNorm``, ``LayerNorm``; parameter-free layers of any kind); it is returned
            with forward hooks attached (``PerSampleGradients``), otherwise unchanged.
        optimizer: any minidl optimizer over ``model``'s parameters.
        loader: the training ``DataLoader``; its ``batch_size`` becomes the *expected*
            logical batch size and it is replaced by a ``PoissonDataLoader`` over the same
            dataset, transform, device and seed.
        max_grad_norm: the per-example clipping norm ``C``.
        noise_multiplier: ``sigma``; or give ``target_epsilon`` (with ``target_delta`` and
            ``epochs``) to have it computed.
        target_epsilon: the privacy budget of the whole run (needs ``epochs``).
        target_delta: the budget's delta, also the delta at which epsilon is reported;
            it must be below 1 / len(dataset).
        epochs: the run's length, for calibrating the noise to ``target_epsilon``.
        max_physical_batch_size: split the logical batches into chunks of at most this many
            examples (gradient accumulation over virtual steps).
        accountant: ``"rdp"``, ``"pld"`` or None (no epsilon).
        poisson_sampling: must be True when an accountant is used (its analysis assumes
            Poisson sampling); False keeps ``loader`` as it is (no privacy guarantee is
            then computed).
        loss_reduction: how the training loss combines examples, ``"mean"`` or ``"sum"``.
        seed: of the noise (None: from ``minidl.random``, so ``manual_seed`` fixes it).

    Returns:
        ``(model, dp_optimizer, dp_loader)``: train with them as before (``Trainer`` too);
        ``dp_optimizer.epoch_metrics()`` reports epsilon.

    >>> import numpy as np, minidl
    >>> from minidl import nn, optim
    >>> data = (np.random.default_rng(0).standard_normal((1000, 4)).astype(np.float32),
    ...         np.zeros(1000, np.int64))
    >>> model = nn.Sequential(nn.Linear(4, 2))
    >>> model, opt, loader = make_private(
    ...     model, optim.SGD(model.parameters(), lr=0.1), minidl.data.DataLoader(
    ...         data, batch_size=100), max_grad_norm=1.0, noise_multiplier=1.0,
    ...     target_delta=1e-5, seed=0)
    >>> loss_fn = nn.CrossEntropyLoss()
    >>> for x, y in loader:
    ...     opt.zero_grad(); loss_fn(model(x), y).backward(); _ = opt.step()
    >>> opt.steps, round(opt.epoch_metrics()["epsilon"], 2)
    (10, 3.44)
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(f"make_private: loader must be a minidl DataLoader, got "
                        f"{type(loader).__name__}")
    n = len(loader.dataset)
    if accountant is not None:
        if not poisson_sampling and not isinstance(loader, PoissonDataLoader):
            raise ValueError(
                "make_private: the accountant's analysis assumes Poisson sampling, but "
                "poisson_sampling=False keeps a loader that serves each example once per "
                "epoch; pass poisson_sampling=True (the default), or accountant=None to "
                "train without a privacy guarantee")
        if target_delta is None:
            raise ValueError(f"make_private: give target_delta (below 1/N = {1 / n:.2g}; "
                             "1e-5 is usual for CIFAR-10) for the accountant to report "
                             "epsilon at")
        check_delta(target_delta, n)
    if isinstance(loader, PoissonDataLoader) or not poisson_sampling:
        if max_physical_batch_size is not None:
            raise ValueError("make_private: max_physical_batch_size applies to the Poisson "
                             "loader make_private builds; with a PoissonDataLoader of your "
                             "own (or poisson_sampling=False) give it to that loader instead")
        dp_loader = loader
    else:
        dp_loader = PoissonDataLoader(
            loader.dataset, sample_rate=loader.batch_size / n,
            max_physical_batch_size=max_physical_batch_size, seed=loader.seed,
            transform=loader.transform, device=loader.device, prefetch=loader.prefetch,
            as_tensor=loader.as_tensor)
    q = dp_loader.sample_rate if isinstance(dp_loader, PoissonDataLoader) \
        else dp_loader.batch_size / n
    expected = dp_loader.batch_size
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError("make_private: give exactly one of noise_multiplier and "
                         "target_epsilon")
    if noise_multiplier is None:
        if accountant is None or epochs is None:
            raise ValueError("make_private: target_epsilon needs an accountant, target_delta "
                             "and epochs (the run's length) to find the noise multiplier")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"make_private: epochs must be a positive int, got {epochs!r}")
        steps = epochs * (dp_loader.steps_per_epoch if isinstance(dp_loader, PoissonDataLoader)
                          else len(dp_loader))
        noise_multiplier = get_noise_multiplier(target_epsilon, target_delta, q, steps,
                                                accountant)
    check_noise_multiplier(noise_multiplier)
    per_sample = PerSampleGradients(model, loss_reduction=loss_reduction)
    acc = None if accountant is None else PrivacyAccountant(accountant)
    dp_opt = DPOptimizer(optimizer, per_sample, noise_multiplier, max_grad_norm, expected,
                         seed=seed, loader=dp_loader, accountant=acc, sample_rate=q,
                         delta=target_delta)
    return model, dp_opt, dp_loader
