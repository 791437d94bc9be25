"""minidl._fileio.atomic_write: temporaries left by killed writers are removed by the next
write to the same target, while a live writer's temporary (same host or, through its lock,
another host) and unrelated files are never touched."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minidl
from minidl import _fileio
from minidl._fileio import atomic_write, atomic_write_text

# Loads _fileio.py by path (no minidl import, so it starts fast) and writes argv[2] from a
# generator that stops mid-write until the parent sends a line on stdin.
_WRITER = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_fileio", sys.argv[1])
fileio = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fileio)

def chunks():
    yield b"x" * 100_000
    print("ready", flush=True)
    sys.stdin.readline()
    yield b"y"

with fileio.atomic_write(sys.argv[2], "wb") as f:
    for chunk in chunks():
        f.write(chunk)
print("done", flush=True)
"""

_DEAD_PID = 2**22 + 12345  # above Linux's largest possible pid_max


def _start_writer(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, _fileio.__file__, str(target)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def _temporaries(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


def test_killed_writer_leaves_a_temporary_that_the_next_save_removes(tmp_path) -> None:
    target = tmp_path / "ckpt.npz"
    minidl.save({"epoch": 1}, target)
    procs = [_start_writer(target) for _ in range(2)]
    try:
        temps = _temporaries(target)
        assert len(temps) == 2 and all(t.stat().st_size >= 100_000 for t in temps)
        assert {int(t.name.split(".")[-3]) for t in temps} == {p.pid for p in procs}
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert _temporaries(target) == temps  # nothing ran at the kill: both stay behind
    minidl.save({"epoch": 2, "w": np.ones(3)}, target)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
    assert minidl.load(target)["epoch"] == 2


def test_live_writers_temporary_is_kept_and_its_rename_succeeds(tmp_path) -> None:
    target = tmp_path / "out.bin"
    proc = _start_writer(target)
    try:
        (temp,) = _temporaries(target)
        atomic_write_text(target, "from the parent")  # must not delete the live writer's temp
        assert temp.exists() and target.read_text() == "from the parent"
        out, _ = proc.communicate("go\n", timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and out == "done\n"
    assert target.read_bytes() == b"x" * 100_000 + b"y"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_locked_temporary_of_a_dead_pid_is_kept_until_unlocked(tmp_path) -> None:
    """A writer on another host of a shared filesystem: its pid means nothing here, its
    flock still does."""
    target = tmp_path / "h.json"
    temp = tmp_path / f".h.json.{_DEAD_PID}.{'ab' * 8}.tmp"
    temp.write_bytes(b"half")
    with open(temp, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        atomic_write_text(target, "1")
        assert temp.exists()
    atomic_write_text(target, "2")
    assert not temp.exists() and target.read_text() == "2"


def test_cleanup_touches_only_stale_temporaries_of_the_same_target(tmp_path) -> None:
    target = tmp_path / "a.txt"
    tag = "0123456789abcdef"
    stale = tmp_path / f".a.txt.{_DEAD_PID}.{tag}.tmp"
    keep = [
        tmp_path / f".a.txt.{os.getpid()}.{tag}.tmp",  # a live pid (ours)
        tmp_path / ".a.txt.k2j4_x9q.tmp",  # mkstemp-style, from another program
        tmp_path / f".b.txt.{_DEAD_PID}.{tag}.tmp",  # another target's
        tmp_path / f".a.txt.{_DEAD_PID}.{tag}.tmp.bak",
        tmp_path / f".a.txt.x.{_DEAD_PID}.{tag}.tmp",  # a temp of target "a.txt.x"
        tmp_path / "a.txt.1.0123456789abcdef.tmp",
    ]
    for p in [stale, *keep]:
        p.write_text("?")
    folder = tmp_path / f".a.txt.{_DEAD_PID}.{'f' * 16}.tmp"  # e.g. a memmap build folder
    folder.mkdir()
    atomic_write_text(target, "ok")
    assert not stale.exists() and folder.is_dir() and all(p.exists() for p in keep)


def test_long_names_and_failed_writes(tmp_path) -> None:
    target = tmp_path / ("n" * 250)
    with atomic_write(target, "w") as f:
        f.write("long")
    assert target.read_text() == "long"
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "long" and os.listdir(tmp_path) == [target.name]
