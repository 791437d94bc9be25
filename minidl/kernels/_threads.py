"""Keep two thread pools from fighting over the cores: OpenBLAS's and OpenMP's (numba's).

A training step alternates GEMMs (OpenBLAS, its own pthreads) with numba kernels
(im2col, pooling, ...; OpenMP threads via numba's ``omp`` layer). Each pool's idle workers
busy-wait by default, in the hope of more work soon:

* OpenBLAS workers spin for 2**28 CPU cycles (about 0.1 s) after every GEMM. The numba
  kernel that follows the GEMM then shares each core with a spinning thread, and on this
  project's 2-core machine ran 2x slower (measured: a 0.66 ms im2col took 2.3 ms right
  after a GEMM; the seed-CNN step went from 23.5 to 20.9 ms when the spin was cut).
* OpenMP workers spin for a while after each parallel loop unless ``OMP_WAIT_POLICY`` says
  ``PASSIVE``; then the GEMMs are the ones slowed down.

So minidl makes idle workers of both pools sleep almost at once, through the settings both
libraries document: ``OMP_WAIT_POLICY=PASSIVE`` (libgomp reads it when numba first starts
a parallel loop, which is after this import) and ``OPENBLAS_THREAD_TIMEOUT=4`` (2**4
cycles). OpenBLAS reads its variable when it is loaded, which is when NumPy is imported,
usually before minidl; :func:`apply` therefore also asks an already-loaded OpenBLAS to
re-read its environment and restart its (idle) workers, through two functions OpenBLAS
exports (``openblas_read_env``, and ``blas_thread_shutdown_``, which is what OpenBLAS runs
itself around ``fork``). A value the user set for either variable is left alone.
"""

from __future__ import annotations

import ctypes
import os
import threading

OPENBLAS_TIMEOUT = "4"  # log2 of the spin in CPU cycles; OpenBLAS clamps it to [4, 30]


def loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux; else empty).

    >>> isinstance(loaded_openblas(), list)
    True
    """
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/") and ".so" in p)


def _restart_openblas_workers() -> int:
    """Make each loaded OpenBLAS re-read its environment; return how many did."""
    done = 0
    for path in loaded_openblas():
        try:
            lib = ctypes.CDLL(path)  # already mapped: this only returns its handle
            read_env, shutdown = lib.openblas_read_env, lib.blas_thread_shutdown_
        except (OSError, AttributeError):  # not an OpenBLAS we know how to talk to
            continue
        read_env()
        # Workers are recreated, with the new timeout, by the next threaded GEMM.
        shutdown()
        done += 1
    return done


def apply() -> int:
    """Set the wait policies described in the module docstring; idempotent.

    Returns the number of already-loaded OpenBLAS libraries that were told to re-read their
    environment (0 when the user chose ``OPENBLAS_THREAD_TIMEOUT``, when none is loaded,
    or when other Python threads exist, which might be inside a GEMM right now).

    >>> apply() >= 0
    True
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return 0
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_TIMEOUT
    if threading.active_count() > 1:
        return 0
    return _restart_openblas_workers()
