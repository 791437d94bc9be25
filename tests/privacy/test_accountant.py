"""PrivacyAccountant and get_noise_multiplier: epsilon is dp_accounting's own for the same
Poisson-subsampled Gaussian steps (RDP and PLD), histories merge and compose, checkpoints
round-trip, calibration lands just under the target; make_private's privacy arguments and
the delta < 1/N rule fail with messages that say what to do."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

import minidl.nn as nn
import minidl.privacy.accountant as accountant
from minidl import optim
from minidl.data import DataLoader
from minidl.privacy import PoissonDataLoader, PrivacyAccountant, get_noise_multiplier, make_private
from minidl.privacy.accountant import check_delta, check_noise_multiplier, check_sample_rate

DELTA = 1e-5


def library_epsilon(mechanism, phases, delta=DELTA):
    """dp_accounting's epsilon for ``[(sigma, q, steps), ...]``, composed in order."""
    events = [dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        q, dp_accounting.GaussianDpEvent(sigma)), steps) for sigma, q, steps in phases]
    acc = (dp_accounting.rdp.RdpAccountant() if mechanism == "rdp"
           else dp_accounting.pld.PLDAccountant())
    acc.compose(events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events))
    return acc.get_epsilon(delta)


def spent(mechanism, phases, delta=DELTA):
    acc = PrivacyAccountant(mechanism)
    for sigma, q, steps in phases:
        acc.step(sigma, q, steps)
    return acc.get_epsilon(delta)


# PLD's cost grows as the noise shrinks (about 1 s per epsilon at sigma ~ 1): keep sigma >= 1
RUNS = [(1.1, 256 / 60000, 600), (1.0, 0.1, 30), (2.0, 0.5, 8)]


@pytest.mark.parametrize("mechanism", ["rdp", "pld"])
@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"sigma={r[0]},q={r[1]:.3g},T={r[2]}")
def test_epsilon_is_dp_accountings(mechanism, run):
    eps = spent(mechanism, [run])
    assert eps == pytest.approx(library_epsilon(mechanism, [run]), rel=1e-12)
    assert 0 < eps < math.inf


def test_steps_one_at_a_time_equal_one_call():
    one = PrivacyAccountant()
    one.step(1.0, 0.1, steps=30)
    many = PrivacyAccountant()
    for _ in range(30):
        many.step(1.0, 0.1)
    assert many.history == one.history == [[1.0, 0.1, 30]]
    assert many.get_epsilon(DELTA) == one.get_epsilon(DELTA)


def test_history_merges_consecutive_equal_steps():
    acc = PrivacyAccountant()
    acc.step(1, 0.1)            # ints and floats with the same value merge
    acc.step(1.0, 0.1, steps=3)
    acc.step(2.0, 0.1)
    acc.step(2.0, 0.2)
    acc.step(1.0, 0.1)          # equal to the first entry, but not adjacent to it
    assert acc.history == [[1.0, 0.1, 4], [2.0, 0.1, 1], [2.0, 0.2, 1], [1.0, 0.1, 1]]
    assert acc.steps == 7
    assert repr(acc) == "PrivacyAccountant('rdp', steps=7)"


@pytest.mark.parametrize("mechanism", ["rdp", "pld"])
def test_two_phases_compose(mechanism):
    phases = [(1.0, 0.05, 40), (2.0, 0.2, 20)]
    eps = spent(mechanism, phases)
    assert eps == pytest.approx(library_epsilon(mechanism, phases), rel=1e-12)
    alone = [spent(mechanism, [p]) for p in phases]
    assert eps > max(alone)
    if mechanism == "rdp":  # RDP composition adds Renyi divergences: the order is irrelevant
        assert spent("rdp", phases[::-1]) == pytest.approx(eps, rel=1e-9)


def test_epsilon_before_any_step_and_without_noise():
    for mechanism in ("rdp", "pld"):
        acc = PrivacyAccountant(mechanism)
        assert acc.get_epsilon(DELTA) == 0.0
        acc.step(1.0, 0.1, 10)
        acc.step(0.0, 0.1)  # one noise-free step publishes a gradient in the clear
        assert acc.get_epsilon(DELTA) == math.inf


def test_epsilon_grows_with_steps_and_shrinks_with_delta():
    acc = PrivacyAccountant()
    eps = []
    for _ in range(4):
        acc.step(1.0, 0.05, 25)
        eps.append(acc.get_epsilon(DELTA))
    assert eps == sorted(eps) and len(set(eps)) == 4
    assert acc.get_epsilon(1e-3) < acc.get_epsilon(1e-5) < acc.get_epsilon(1e-7)


def test_state_dict_round_trip():
    acc = PrivacyAccountant("pld")
    acc.step(1.5, 0.1, 10)
    acc.step(2.0, 0.2, 5)
    state = acc.state_dict()
    assert state == {"mechanism": "pld", "history": [[1.5, 0.1, 10], [2.0, 0.2, 5]]}
    acc.step(1.5, 0.1)
    assert state["history"][-1] == [2.0, 0.2, 5]  # a snapshot, not a view
    other = PrivacyAccountant("rdp")
    other.step(3.0, 0.5)  # replaced, not appended to
    other.load_state_dict(state)
    assert other.mechanism == "pld"
    assert other.history == [[1.5, 0.1, 10], [2.0, 0.2, 5]]
    assert other.get_epsilon(DELTA) == library_epsilon("pld", [(1.5, 0.1, 10), (2.0, 0.2, 5)])
    with pytest.raises(ValueError, match="bad mechanism 'gdp'"):
        other.load_state_dict({"mechanism": "gdp", "history": []})


def test_get_noise_multiplier_rdp():
    target, q, steps = 2.0, 0.1, 20
    sigma = get_noise_multiplier(target, DELTA, q, steps)
    eps = spent("rdp", [(sigma, q, steps)])
    assert 0.99 * target <= eps <= target
    # the smallest such sigma, rounded up by at most 0.002: a bit less noise overspends
    assert spent("rdp", [(sigma - 0.0021, q, steps)]) > target
    assert get_noise_multiplier(4.0, DELTA, q, steps) < sigma   # more budget, less noise


def test_get_noise_multiplier_pld(monkeypatch):
    # Calibrating on the full-resolution PLD takes ~45 s here, almost all of it for
    # dp_accounting's epsilon at the search's lower endpoint sigma = 0.05. So calibrate on
    # a PLD discretised 100x more coarsely (pessimistic: its epsilon bounds the fine one
    # from above) and check the sigma found against the real, fine PLD.
    target, q, steps = 1.0, 0.2, 5
    fine = accountant._fresh

    def coarse(mechanism):
        if mechanism == "pld":
            return dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-2)
        return fine(mechanism)

    monkeypatch.setattr(accountant, "_fresh", coarse)
    sigma = get_noise_multiplier(target, DELTA, q, steps, mechanism="pld")
    monkeypatch.setattr(accountant, "_fresh", fine)
    eps = spent("pld", [(sigma, q, steps)])
    assert 0.99 * target <= eps <= target
    # PLD is tighter than RDP: it needs less noise for the same budget
    assert sigma < get_noise_multiplier(target, DELTA, q, steps, mechanism="rdp")


@pytest.mark.parametrize("run", RUNS[:2], ids=["mnist", "q=0.1"])
def test_pld_is_tighter_than_rdp(run):
    assert spent("pld", [run]) <= spent("rdp", [run])


# ---------------------------------------------------------------------------------------
# errors


def test_check_delta_below_one_over_n():
    assert check_delta(1e-5, 50_000) == 1e-5
    assert check_delta(0.00099, 1000) == 0.00099
    for bad in (1e-3, 2e-3, 0.5):
        with pytest.raises(ValueError, match=r"not below 1/N = 1/1000 = 0\.001.*e\.g\. 0\.0001"):
            check_delta(bad, 1000)


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -1e-5, 2.0, True, "1e-5", None])
def test_delta_outside_zero_one(bad):
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        check_delta(bad)
    acc = PrivacyAccountant()
    acc.step(1.0, 0.1)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        acc.get_epsilon(bad)


@pytest.mark.parametrize("bad", [-1.0, -1e-9, float("nan"), float("inf"), True, "1.0", None])
def test_bad_noise_multiplier(bad):
    with pytest.raises(ValueError, match="noise_multiplier must be a finite number >= 0"):
        check_noise_multiplier(bad)
    with pytest.raises(ValueError, match="noise_multiplier must be a finite number >= 0"):
        PrivacyAccountant().step(bad, 0.1)
    assert PrivacyAccountant().history == []


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0001, 2, True, float("nan"), None])
def test_bad_sample_rate(bad):
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        check_sample_rate(bad)
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        PrivacyAccountant().step(1.0, bad)
    assert check_sample_rate(1) == 1.0  # every example in every batch is allowed


def test_bad_mechanism_and_calibration_arguments():
    with pytest.raises(ValueError, match=r"mechanism must be one of \('rdp', 'pld'\)"):
        PrivacyAccountant("moments")
    with pytest.raises(ValueError, match="mechanism must be one of"):
        get_noise_multiplier(1.0, DELTA, 0.1, 10, mechanism="gdp")
    for bad in (0, -1.0, math.inf, True):
        with pytest.raises(ValueError, match="target_epsilon must be a positive number"):
            get_noise_multiplier(bad, DELTA, 0.1, 10)
    for bad in (0, 1.5, -3, True):
        with pytest.raises(ValueError, match="steps must be a positive int"):
            get_noise_multiplier(1.0, DELTA, 0.1, bad)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        get_noise_multiplier(1.0, 1.0, 0.1, 10)
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        get_noise_multiplier(1.0, DELTA, 0.0, 10)


# ---------------------------------------------------------------------------------------
# make_private's privacy arguments

N = 200


def setup(batch_size=20):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((N, 4)).astype(np.float32), rng.integers(0, 2, N))
    model = nn.Sequential(nn.Linear(4, 2))
    return model, optim.SGD(model.parameters(), lr=0.1), DataLoader(data, batch_size=batch_size,
                                                                  seed=1)


def test_make_private_delta_must_be_below_one_over_n():
    with pytest.raises(ValueError, match=r"delta=0\.005 is not below 1/N = 1/200"):
        make_private(*setup(), max_grad_norm=1.0, noise_multiplier=1.0, target_delta=1 / N)
    with pytest.raises(ValueError, match=r"give target_delta \(below 1/N = 0\.005"):
        make_private(*setup(), max_grad_norm=1.0, noise_multiplier=1.0)
    _, opt, _ = make_private(*setup(), max_grad_norm=1.0, noise_multiplier=1.0,
                             target_delta=0.99 / N)
    assert opt.delta == 0.99 / N


def test_make_private_needs_poisson_sampling_for_an_accountant():
    with pytest.raises(ValueError, match=r"assumes Poisson sampling.*pass poisson_sampling=True"
                                         r".*or accountant=None"):
        make_private(*setup(), max_grad_norm=1.0, noise_multiplier=1.0, target_delta=DELTA,
                     poisson_sampling=False)
    # without an accountant the loader is kept as it is, and no epsilon is claimed
    model, sgd, loader = setup()
    _, opt, kept = make_private(model, sgd, loader, max_grad_norm=1.0, noise_multiplier=1.0,
                                poisson_sampling=False, accountant=None)
    assert kept is loader and opt.accountant is None and opt.epoch_metrics() == {}
    assert opt.expected_batch_size == 20


def test_make_private_noise_arguments():
    for kw in ({}, dict(noise_multiplier=1.0, target_epsilon=3.0, epochs=2)):
        with pytest.raises(ValueError, match="exactly one of noise_multiplier and target_epsilon"):
            make_private(*setup(), max_grad_norm=1.0, target_delta=DELTA, **kw)
    with pytest.raises(ValueError, match="target_epsilon needs an accountant, target_delta and "
                                         "epochs"):
        make_private(*setup(), max_grad_norm=1.0, target_epsilon=3.0, target_delta=DELTA)
    with pytest.raises(ValueError, match="target_epsilon needs an accountant"):
        make_private(*setup(), max_grad_norm=1.0, target_epsilon=3.0, epochs=2,
                     accountant=None)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="epochs must be a positive int"):
            make_private(*setup(), max_grad_norm=1.0, target_epsilon=3.0, target_delta=DELTA,
                         epochs=bad)
    with pytest.raises(ValueError, match="noise_multiplier must be a finite number >= 0"):
        make_private(*setup(), max_grad_norm=1.0, noise_multiplier=-1.0, target_delta=DELTA)
    with pytest.raises(ValueError, match="mechanism must be one of"):
        make_private(*setup(), max_grad_norm=1.0, noise_multiplier=1.0, target_delta=DELTA,
                     accountant="gdp")
    with pytest.raises(TypeError, match="loader must be a minidl DataLoader"):
        model, sgd, loader = setup()
        make_private(model, sgd, [1, 2], max_grad_norm=1.0, noise_multiplier=1.0,
                     target_delta=DELTA)


def test_make_private_target_epsilon_calibrates_the_run():
    target, epochs = 3.0, 4
    model, opt, loader = make_private(*setup(), max_grad_norm=1.0, target_epsilon=target,
                                      target_delta=DELTA, epochs=epochs)
    assert isinstance(loader, PoissonDataLoader)
    q, steps = 20 / N, epochs * loader.steps_per_epoch
    assert loader.sample_rate == q and steps == 40
    assert opt.noise_multiplier == get_noise_multiplier(target, DELTA, q, steps)
    assert opt.sample_rate == q and opt.delta == DELTA
    assert opt.accountant.mechanism == "rdp" and opt.accountant.steps == 0
    opt.accountant.step(opt.noise_multiplier, q, steps)  # the whole planned run
    assert 0.99 * target <= opt.epoch_metrics()["epsilon"] <= target
