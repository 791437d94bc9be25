"""LR schedules against hand-computed sequences, and their state_dict round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minidl.nn as nn
from minidl.optim import SGD, Adam
from minidl.optim import lr_scheduler as S


def _opt(lr=1.0, **kw):
    return SGD([nn.Parameter(np.zeros(1, np.float32))], lr=lr, **kw)


def _lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        assert sched.optimizer.param_groups[0]["lr"] == out[-1]
        sched.step()
    return out


def test_step_multistep_exponential() -> None:
    assert _lrs(S.StepLR(_opt(), 3, gamma=0.1), 7) == pytest.approx(
        [1, 1, 1, 0.1, 0.1, 0.1, 0.01])
    assert _lrs(S.MultiStepLR(_opt(), [2, 5], gamma=0.5), 7) == pytest.approx(
        [1, 1, 0.5, 0.5, 0.5, 0.25, 0.25])
    assert _lrs(S.ExponentialLR(_opt(2.0), 0.5), 4) == pytest.approx([2, 1, 0.5, 0.25])
    assert _lrs(S.LambdaLR(_opt(), lambda e: 1 / (e + 1)), 3) == pytest.approx([1, 0.5, 1 / 3])


def test_cosine() -> None:
    got = _lrs(S.CosineAnnealingLR(_opt(1.0), T_max=4, eta_min=0.1), 5)
    want = [0.1 + 0.9 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)]
    assert got == pytest.approx(want)
    assert got[-1] == pytest.approx(0.1)


def test_linear_lr_and_warmup() -> None:
    assert _lrs(S.LinearLR(_opt(), start_factor=0.25, total_iters=3), 5) == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0])
    assert _lrs(S.LinearWarmup(_opt(), 4), 6) == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    opt = _opt()
    sched = S.LinearWarmup(opt, 2, after=S.CosineAnnealingLR(opt, T_max=2))
    assert _lrs(sched, 5) == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0], abs=1e-12)


def test_piecewise_linear() -> None:
    sched = S.PiecewiseLinearLR(_opt(0.4), steps=[0, 2, 6], factors=[0.0, 1.0, 0.0])
    assert _lrs(sched, 8) == pytest.approx([0, 0.2, 0.4, 0.3, 0.2, 0.1, 0, 0])


def test_one_cycle_matches_hand_computed() -> None:
    opt = _opt(0.1, momentum=0.9)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=10, pct_start=0.3)
    init, low = 1.0 / 25, 1.0 / 25 / 1e4

    def cos(a, b, pct):
        return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)

    want, moms = [], []
    for e in range(10):
        if e <= 2:  # phase 1 ends at step pct_start * total - 1 = 2
            want.append(cos(init, 1.0, e / 2))
            moms.append(cos(0.95, 0.85, e / 2))
        else:
            want.append(cos(1.0, low, (e - 2) / 7))
            moms.append(cos(0.85, 0.95, (e - 2) / 7))
    got, got_m = [], []
    for _ in range(10):
        got.append(sched.get_last_lr()[0])
        got_m.append(opt.param_groups[0]["momentum"])
        sched.step()
    assert got == pytest.approx(want) and got_m == pytest.approx(moms)
    assert got[2] == pytest.approx(1.0) and got[-1] == pytest.approx(low)
    with pytest.raises(ValueError, match="total_steps is 10"):
        sched.step()


def test_one_cycle_cycles_adam_beta1() -> None:
    opt = Adam([nn.Parameter(np.zeros(1, np.float32))], lr=0.1)
    S.OneCycleLR(opt, max_lr=0.1, total_steps=5, anneal_strategy="linear")
    assert opt.param_groups[0]["betas"] == (0.95, 0.999)


def test_param_groups_scaled_separately() -> None:
    a, b = nn.Parameter(np.zeros(1, np.float32)), nn.Parameter(np.zeros(1, np.float32))
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=1.0)
    sched = S.StepLR(opt, 1, gamma=0.5)
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.5, 0.05])


@pytest.mark.parametrize("make", [
    lambda o: S.StepLR(o, 2, 0.5), lambda o: S.CosineAnnealingLR(o, 10),
    lambda o: S.MultiStepLR(o, [3, 6]), lambda o: S.PiecewiseLinearLR(o, [0, 5, 10], [0, 1, 0]),
    lambda o: S.OneCycleLR(o, 1.0, total_steps=20),
    lambda o: S.LinearWarmup(o, 3, after=S.ExponentialLR(o, 0.9)),
])
def test_state_dict_round_trip(make) -> None:
    opt = _opt(0.5, momentum=0.9)
    sched = make(opt)
    for _ in range(4):
        sched.step()
    sd, opt_sd = sched.state_dict(), opt.state_dict()
    rest = _lrs(sched, 5)
    opt2 = _opt(0.5, momentum=0.9)
    sched2 = make(opt2)
    opt2.load_state_dict(opt_sd)
    sched2.load_state_dict(sd)
    assert _lrs(sched2, 5) == rest
