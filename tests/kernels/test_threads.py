"""minidl stops idle OpenBLAS workers from spinning (see ``minidl.kernels._threads``).

Each check runs in a fresh interpreter, because OpenBLAS reads its settings once per
process. The spin is observed as CPU time burnt while the main thread sleeps right after a
threaded GEMM: a spinning worker burns about the whole sleep, a sleeping one nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minidl.kernels import _threads

PROBE = r"""
import json, os, time
import numpy as np
a = np.ones((512, 512))

def idle_cpu_ms():
    a @ a                      # wakes the OpenBLAS workers
    t0 = time.process_time()
    time.sleep(0.2)
    return (time.process_time() - t0) * 1e3

before = idle_cpu_ms()
import minidl  # noqa: E402
after = idle_cpu_ms()
print(json.dumps({"before": before, "after": after, "restarted": minidl.kernels._threads.apply(),
                  "timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
                  "omp": os.environ.get("OMP_WAIT_POLICY"),
                  "product_ok": bool(np.allclose(a @ a, 512.0))}))
"""


def _probe(**env: str) -> dict:
    e = {k: v for k, v in os.environ.items()
         if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")}
    e.update(OPENBLAS_NUM_THREADS="2", **env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_openblas = pytest.mark.skipif(
    not any("openblas" in p.lower() for p in _threads.loaded_openblas()),
    reason="NumPy here is not linked against OpenBLAS")


@needs_openblas
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="threaded GEMM needs 2 cores")
def test_import_stops_openblas_spin_even_after_numpy_was_loaded():
    r = _probe()
    assert r["timeout"] == _threads.OPENBLAS_TIMEOUT and r["omp"] == "PASSIVE"
    assert r["product_ok"]
    # Default OpenBLAS: the worker spins through most of the 200 ms sleep (r["before"],
    # about 200 ms of CPU). After importing minidl it sleeps: a few ms at most.
    assert r["after"] < 50, r


def test_user_settings_win():
    r = _probe(OPENBLAS_THREAD_TIMEOUT="30", OMP_WAIT_POLICY="ACTIVE")
    assert r["timeout"] == "30" and r["omp"] == "ACTIVE" and r["restarted"] == 0
    assert r["product_ok"]


def test_apply_is_idempotent_in_this_process():
    assert _threads.apply() == 0  # already applied when minidl was imported
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"]
