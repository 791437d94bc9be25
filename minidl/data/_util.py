"""Small helpers shared by the data package: its error types, where datasets live on disk
by default, and atomic file writes.

Everything that writes a file in ``minidl.data`` writes it under a temporary name in the
same directory and then renames it with ``os.replace``, so that a crash or a full disk never
leaves a half-written file under the final name for a later run to trust.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from minidl._fileio import atomic_write, default_permissions

__all__ = ["DataFormatError", "DatasetNotFoundError", "atomic_write", "default_data_root",
           "default_permissions", "replace_dir"]


class DataFormatError(ValueError):
    """A data file exists but is corrupt, truncated or not in the expected format."""


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not where they were looked for."""


def default_data_root() -> Path:
    """Return the directory minidl looks in (and downloads to) when no root is given.

    In order: the environment variable ``MINIDL_DATA``; else ``$XDG_CACHE_HOME/minidl``; else
    ``~/.cache/minidl``.

    >>> isinstance(default_data_root(), Path)
    True
    """
    env = os.environ.get("MINIDL_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "minidl"


def replace_dir(src: Path, dst: Path, overwrite: bool) -> None:
    """Move the finished directory ``src`` to ``dst`` (same filesystem) as one rename.

    If ``dst`` exists and ``overwrite`` is true, it is first renamed aside and deleted only
    after ``src`` is in place, so ``dst`` is never observed half-written.
    """
    if dst.exists():
        if not overwrite:
            raise FileExistsError(f"{dst} already exists (pass overwrite=True to replace it)")
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
        old.rmdir()
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
