"""Helpers for the kernel tests; the ``backend`` fixture runs a test on both CPU paths."""

import numpy as np
import pytest

from minidl.kernels import set_backend


@pytest.fixture(params=["numba", "numpy"], scope="module")
def backend(request):
    old = set_backend(request.param)
    yield request.param
    set_backend(old)


def channels_last(a: np.ndarray) -> np.ndarray:
    """Same values, (N, H, W, C) memory."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def tol(dtype) -> dict:
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}
