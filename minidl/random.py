"""Global random state so that a run is reproducible given ``minidl.manual_seed(n)``.

Everything random in minidl (weight init, dropout masks, shuffling, augmentation) draws from
a NumPy ``Generator`` obtained here, never from NumPy's legacy global state. Randomness is
always generated on the CPU and then moved to the device, so CPU and GPU runs with the same
seed see the same numbers.
"""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed minidl's global random generator.

    >>> manual_seed(0); a = default_generator().random()
    >>> manual_seed(0); a == default_generator().random()
    True
    """
    global _generator
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"manual_seed: seed must be an int, got {type(seed).__name__}")
    _generator = np.random.default_rng(int(seed))


def default_generator() -> np.random.Generator:
    """Return the global generator (reseeded by ``manual_seed``).

    >>> manual_seed(1); int(default_generator().integers(0, 100))
    47
    """
    return _generator


def get_rng_state() -> dict:
    """Return the global generator's state (a JSON-friendly dict), for checkpoints.

    >>> state = get_rng_state(); a = default_generator().random()
    >>> set_rng_state(state); a == default_generator().random()
    True
    """
    return _generator.bit_generator.state


def set_rng_state(state: dict) -> None:
    """Restore a state returned by ``get_rng_state``.

    >>> manual_seed(3); state = get_rng_state(); a = default_generator().normal()
    >>> set_rng_state(state); a == default_generator().normal()
    True
    """
    _generator.bit_generator.state = state
