"""The privacy accountant: how much privacy (epsilon, for a given delta) a run has spent.

Each DP-SGD step is a *Poisson-subsampled Gaussian mechanism*: every example joins the batch
independently with probability ``q`` (the sample rate), and the sum of the clipped gradients
gets Gaussian noise of standard deviation ``sigma * C`` (``sigma`` the noise multiplier,
``C`` the clipping norm). Composing ``T`` such steps is (epsilon, delta)-DP for an epsilon
that a numerical accountant computes. minidl does not reimplement that analysis: it asks
Google's ``dp-accounting`` library (``pip install "minidl[privacy]"``), which runs without
PyTorch, with either accountant:

* ``"rdp"``: Renyi DP (Mironov 2017; Abadi et al.'s moments accountant), the classic bound,
  fast, slightly loose;
* ``"pld"``: privacy loss distributions (Koskela et al.; Doroshenko et al. 2022), tighter
  (a smaller epsilon for the same run), slower.

>>> acc = PrivacyAccountant("rdp")
>>> acc.step(noise_multiplier=1.1, sample_rate=256 / 60000, steps=60000 // 256 * 15)
>>> 1.0 < acc.get_epsilon(1e-5) < 1.3      # Abadi et al.'s MNIST setting: epsilon ~ 1.2
True
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

ACCOUNTANTS = ("rdp", "pld")


def _dp_accounting() -> Any:
    try:
        import dp_accounting
    except ImportError as e:
        raise ImportError("minidl.privacy's accountant needs Google's dp-accounting library: "
                          'pip install "minidl[privacy]" (or pip install dp-accounting)') from e
    return dp_accounting


def check_noise_multiplier(sigma: Any) -> float:
    """``sigma`` as a float, or ``ValueError`` if it is not a finite number >= 0."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) \
            or sigma < 0:
        raise ValueError(f"privacy: noise_multiplier must be a finite number >= 0 (the noise's "
                         f"standard deviation in units of max_grad_norm), got {sigma!r}")
    return float(sigma)


def check_sample_rate(q: Any) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise ValueError(f"privacy: sample_rate must be in (0, 1] (expected batch size / "
                         f"dataset size), got {q!r}")
    return float(q)


def check_delta(delta: Any, dataset_size: int | None = None) -> float:
    """``delta`` as a float; ``ValueError`` unless 0 < delta < 1 and, given the dataset
    size N, delta < 1/N (a delta of 1/N allows a mechanism that publishes one example
    outright: the usual choice is well below it, e.g. 1e-5 for CIFAR-10's 50,000)."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(f"privacy: delta must be in (0, 1), got {delta!r}")
    if dataset_size is not None and delta >= 1.0 / dataset_size:
        raise ValueError(
            f"privacy: delta={delta:g} is not below 1/N = 1/{dataset_size} = "
            f"{1.0 / dataset_size:.3g}; a delta that large permits leaking an example "
            f"outright. Use delta < 1/N, e.g. {10 ** math.floor(math.log10(0.1 / dataset_size)):g}")
    return float(delta)


class PrivacyAccountant:
    """Records the DP-SGD steps taken and turns them into epsilon for any delta.

    Args:
        mechanism: ``"rdp"`` or ``"pld"`` (see the module docstring).

    Attributes:
        history (list): ``[noise_multiplier, sample_rate, steps]`` entries, consecutive
            steps with the same parameters merged; what ``state_dict`` saves.
    """

    def __init__(self, mechanism: str = "rdp") -> None:
        if mechanism not in ACCOUNTANTS:
            raise ValueError(f"PrivacyAccountant: mechanism must be one of {ACCOUNTANTS}, "
                             f"got {mechanism!r}")
        _dp_accounting()  # fail at construction, not after the first epoch
        self.mechanism = mechanism
        self.history: list[list] = []

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` DP-SGD steps with these parameters."""
        sigma = check_noise_multiplier(noise_multiplier)
        q = check_sample_rate(sample_rate)
        if self.history and self.history[-1][:2] == [sigma, q]:
            self.history[-1][2] += int(steps)
        else:
            self.history.append([sigma, q, int(steps)])

    @property
    def steps(self) -> int:
        return sum(h[2] for h in self.history)

    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before any step; inf with zero noise)."""
        delta = check_delta(delta)
        if not self.history:
            return 0.0
        if any(h[0] == 0 for h in self.history):
            return math.inf
        return _epsilon(self.mechanism, self.history, delta)

    def state_dict(self) -> dict:
        return {"mechanism": self.mechanism, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mechanism") not in ACCOUNTANTS:
            raise ValueError(f"PrivacyAccountant.load_state_dict: bad mechanism "
                             f"{state.get('mechanism')!r}")
        self.mechanism = state["mechanism"]
        self.history = []
        for sigma, q, steps in state["history"]:
            self.step(float(sigma), float(q), int(steps))

    def __repr__(self) -> str:
        return f"PrivacyAccountant({self.mechanism!r}, steps={self.steps})"


def _event(history: list) -> Any:
    dpa = _dp_accounting()
    events = [dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(s)), n)
              for s, q, n in history]
    return events[0] if len(events) == 1 else dpa.ComposedDpEvent(events)


def _fresh(mechanism: str) -> Any:
    dpa = _dp_accounting()
    if mechanism == "rdp":
        return dpa.rdp.RdpAccountant()
    return dpa.pld.PLDAccountant()


def _epsilon(mechanism: str, history: list, delta: float) -> float:
    with _quiet_absl():  # RDP computes its orders (and warns) in compose
        acc = _fresh(mechanism)
        acc.compose(_event(history))
        return float(acc.get_epsilon(delta))


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    # The RDP accountant logs a warning for each low Renyi order whose series does not
    # converge at large sample rates and drops that order from the bound (the bound stays
    # valid, from the other orders): for a user, noise on every epoch line.
    log = logging.getLogger("absl")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


def get_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                         mechanism: str = "rdp") -> float:
    """The smallest noise multiplier (to within 0.001, on the safe side: dp-accounting's
    search guarantees the epsilon of the value it returns is at most the target) for which
    ``steps`` DP-SGD steps at ``sample_rate`` stay within ``(target_epsilon, delta)``.

    PLD evaluations are slow at small sigma, so for ``"pld"`` the search is bracketed by
    the RDP answer (an upper bound: PLD's epsilon is never above RDP's for the same run)
    and 0.6 of it.

    >>> s = get_noise_multiplier(8.0, 1e-5, 256 / 50000, 50000 // 256 * 30)
    >>> acc = PrivacyAccountant(); acc.step(s, 256 / 50000, 50000 // 256 * 30)
    >>> 7.9 < acc.get_epsilon(1e-5) <= 8.0
    True
    """
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)) \
            or not 0 < target_epsilon < math.inf:
        raise ValueError(f"privacy: target_epsilon must be a positive number, got "
                         f"{target_epsilon!r}")
    delta, q = check_delta(delta), check_sample_rate(sample_rate)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"privacy: steps must be a positive int, got {steps!r}")
    if mechanism not in ACCOUNTANTS:
        raise ValueError(f"privacy: mechanism must be one of {ACCOUNTANTS}, got {mechanism!r}")
    dpa = _dp_accounting()

    def calibrate(mech: str, bracket: Any) -> float:
        with _quiet_absl():
            return float(dpa.calibrate_dp_mechanism(
                lambda: _fresh(mech), lambda s: _event([[s, q, steps]]), target_epsilon,
                delta, bracket, tol=1e-3))

    rdp = calibrate("rdp", dpa.LowerEndpointAndGuess(0.05, 1.0))
    if mechanism == "rdp":
        return rdp
    try:
        return calibrate("pld", dpa.ExplicitBracketInterval(0.6 * rdp, rdp))
    except ValueError:  # PLD's answer is below 0.6 of RDP's: search the wider bracket
        return calibrate("pld", dpa.ExplicitBracketInterval(0.05, rdp))
