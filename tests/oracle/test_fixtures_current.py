"""Where PyTorch is installed: ``make_fixtures.py`` run in memory still gives the committed
``.npz`` files (same cases, same configurations, the same numbers to float64 rounding), so
the fixtures cannot drift from the script that documents them. Skipped without torch."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _script():
    spec = importlib.util.spec_from_file_location("make_fixtures",
                                                  os.path.join(HERE, "make_fixtures.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fixtures_are_small() -> None:
    sizes = {n: os.path.getsize(os.path.join(HERE, f"{n}.npz")) for n in _script().FILES}
    assert sum(sizes.values()) < 400_000, sizes


def test_committed_fixtures_match_a_fresh_run() -> None:
    pytest.importorskip("torch", reason="torch not installed; fixtures cannot be regenerated")
    script = _script()
    for name, fresh in script.build().items():
        with np.load(script.path(name), allow_pickle=False) as f:
            stored = {k: f[k] for k in f.files}
        assert sorted(stored) == sorted(fresh), f"{name}.npz: rerun make_fixtures.py"
        for key, want in fresh.items():
            got = stored[key]
            assert got.dtype == want.dtype and got.shape == want.shape, key
            if want.dtype.kind == "f":  # another CPU or BLAS may round the last bit apart
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, err_msg=key)
            else:
                np.testing.assert_array_equal(got, want, err_msg=key)
