"""The allocator settings of ``minidl.kernels._malloc``: freed big blocks are reused."""

import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocate, write and free a 48 MiB array 20 times; print the page faults that cost.
PROBE = """
import resource, sys
import numpy as np
import minidl
from minidl.kernels import _malloc
a = np.ones(12 * 2**20, np.float32); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = np.empty(12 * 2**20, np.float32); a[:] = 1; del a
print(_malloc.apply(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(env_value):
    import os
    env = dict(os.environ)
    env.pop("MINIDL_MALLOC", None)
    if env_value is not None:
        env["MINIDL_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not GLIBC, reason="the settings apply to glibc only")
def test_freed_blocks_are_reused_without_page_faults():
    applied, faults = _probe(None)
    assert applied
    # 20 x 48 MiB written through fresh mmaps would fault ~245,000 4-KiB pages (or ~480
    # huge pages); reusing the heap block faults almost none.
    assert faults < 100, faults


@pytest.mark.skipif(not GLIBC, reason="the settings apply to glibc only")
def test_minidl_malloc_system_keeps_glibc_defaults():
    applied, faults = _probe("system")
    assert not applied
    assert faults > 200, faults  # every big block is a fresh mapping again (>= 480 huge pages)
