"""Trainer with make_private: a GroupNorm CNN trains for two epochs, the history gets an
"epsilon" column that grows with the epochs and is the accountant's, PrintEpoch shows it,
and training_curves draws it as a third panel."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

import minidl
import minidl.nn as nn
from minidl import optim
from minidl.data import DataLoader
from minidl.privacy import PrivacyAccountant, make_private
from minidl.train import PrintEpoch, Trainer

DELTA = 1e-5
N, BATCH, SIGMA = 64, 16, 0.5


@pytest.fixture(scope="module")
def run():
    """Two epochs of DP training on random 8x8 images: (trainer, history, opt, output)."""
    minidl.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 2, N)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    model, opt, loader = make_private(model, optim.SGD(model.parameters(), lr=0.1),
                                      DataLoader((x, y), batch_size=BATCH, seed=0),
                                      max_grad_norm=1.0, noise_multiplier=SIGMA,
                                      target_delta=DELTA, seed=0)
    trainer = Trainer(model, opt, progress=False, callbacks=[PrintEpoch()])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history = trainer.fit(loader, epochs=2)
    return trainer, history, opt, out.getvalue().splitlines()


def test_history_has_the_accountants_epsilon(run):
    trainer, history, opt, _ = run
    eps = history["epsilon"]
    assert len(eps) == 2 and 0 < eps[0] < eps[1] < np.inf
    assert eps[1] == opt.accountant.get_epsilon(DELTA)
    steps = N // BATCH  # q = 1/4: 4 logical steps per epoch
    assert opt.steps == opt.accountant.steps == 2 * steps
    assert opt.accountant.history == [[SIGMA, BATCH / N, 2 * steps]]
    first = PrivacyAccountant()
    first.step(SIGMA, BATCH / N, steps)
    assert eps[0] == first.get_epsilon(DELTA)
    assert all(np.isfinite(history["loss"])) and trainer.epoch == 2


def test_print_epoch_shows_epsilon(run):
    _, history, _, lines = run
    assert len(lines) == 2
    for k, (line, eps) in enumerate(zip(lines, history["epsilon"]), 1):
        assert line.startswith(f"epoch {k}  loss ")
        assert f"  epsilon {eps:.4f}" in line


def test_training_curves_has_an_epsilon_panel(run):
    pytest.importorskip("matplotlib", reason="minidl.plot needs matplotlib (the plot extra)")
    from minidl import plot

    fig = plot.training_curves(run[1])
    try:
        assert len(fig.axes) == 3
        assert fig.axes[2].get_title() == "privacy spent (epsilon)"
        np.testing.assert_array_equal(fig.axes[2].lines[0].get_ydata(), run[1]["epsilon"])
    finally:
        plot.plt.close(fig)


def test_trainer_steps_through_empty_poisson_batches():
    # 20 examples at q = 1/20 draw many empty batches: Trainer skips their forward pass but
    # still steps, so every one of the accountant's steps gets its noise
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 4)).astype(np.float32), np.zeros(20, np.int64)
    model = nn.Sequential(nn.Linear(4, 2))
    model, opt, loader = make_private(model, optim.SGD(model.parameters(), lr=0.1),
                                      DataLoader((x, y), batch_size=1, seed=0),
                                      max_grad_norm=1.0, noise_multiplier=1.0,
                                      target_delta=1e-3, seed=0)
    sizes = [len(b[0]) for b in loader]
    assert 0 in sizes and len(sizes) == 20
    before = model[0].weight.detach().numpy().copy()
    Trainer(model, opt, progress=False).fit(loader, epochs=1)
    assert opt.steps == 20 and opt.accountant.steps == 20
    assert not np.array_equal(model[0].weight.detach().numpy(), before)


def test_trainer_refuses_loss_scaling_with_dp():
    model = nn.Sequential(nn.Linear(4, 2))
    x = np.zeros((8, 4), np.float32)
    model, opt, _ = make_private(model, optim.SGD(model.parameters(), lr=0.1),
                                 DataLoader((x, np.zeros(8, np.int64)), batch_size=4),
                                 max_grad_norm=1.0, noise_multiplier=1.0, accountant=None)
    with pytest.raises(ValueError, match="scales the loss, which DPOptimizer cannot undo"):
        Trainer(model, opt, mixed_precision="float16")


def test_per_batch_schedule_counts_logical_steps():
    # with virtual steps, a per-batch LR schedule advances once per optimizer step, not once
    # per physical chunk
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((400, 4)).astype(np.float32), np.zeros(400, np.int64)
    model = nn.Sequential(nn.Linear(4, 2))
    sgd = optim.SGD(model.parameters(), lr=1.0)
    model, opt, loader = make_private(model, sgd, DataLoader((x, y), batch_size=100, seed=0),
                                      max_grad_norm=1.0, noise_multiplier=1.0,
                                      max_physical_batch_size=30, accountant=None, seed=0)
    sched = optim.lr_scheduler.StepLR(sgd, step_size=1, gamma=0.5)
    Trainer(model, opt, scheduler=sched, scheduler_per="batch", progress=False).fit(
        loader, epochs=1)
    assert opt.steps == 4 and len(loader) > 4
    assert sgd.param_groups[0]["lr"] == 0.5 ** 4
