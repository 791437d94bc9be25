"""Shared pytest configuration: seeding, the device fixture, hypothesis profile.

Test directories have no ``__init__.py``; this file puts ``tests/`` on ``sys.path`` so
test modules anywhere below can ``import helpers``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import minidl  # noqa: E402

try:  # hypothesis is a test extra; property tests skip themselves without it
    from hypothesis import settings

    settings.register_profile("minidl", max_examples=25, deadline=None, derandomize=True)
    settings.load_profile("minidl")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same minidl random state."""
    minidl.manual_seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    """A NumPy generator, fresh per test, for building test inputs."""
    return np.random.default_rng(1234)


_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not minidl.cuda_is_available(), reason="CUDA (CuPy + GPU) not available"))]


@pytest.fixture(params=_DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over CPU and, when present, CUDA."""
    return request.param
