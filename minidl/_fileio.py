"""Atomic file writes: a file is either the old one or the complete new one, never half.

Everything minidl saves (checkpoints, histories, plots, datasets) is written to a temporary
file in the destination folder, flushed to disk, then renamed over the destination (a
rename within one filesystem is atomic). Temporary files get the permissions an ordinary
``open(path, "w")`` would give (``0o666`` less the umask), not ``mkstemp``'s private
``0o600``. A temporary is named ``.{name}.{pid}.{random}.tmp`` after its target and its
writer, which holds an exclusive ``flock`` on it until the rename. A writer killed
mid-write leaves its temporary behind, so every write first removes the temporaries of
its target whose process id is dead on this host *and* whose lock is free; the lock also
covers writers on other hosts of a shared filesystem, whose process ids mean nothing here.
A live writer's temporary is never touched.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_TMP_STEM = 120
# What follows the prefix in a temporary's name: the writer's process id and a random tag.
_TMP_TAIL = re.compile(r"(\d+)\.[0-9a-f]{16}\.tmp")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_permissions(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file (``0o666``) or a directory (``0o777``) the umask's usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _fsync_dir(directory: Path) -> None:
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass
    finally:
        os.close(fd)


def _tmp_prefix(path: Path) -> str:
    # Cut long names so that the temporary's name stays under NAME_MAX (255).
    return f".{path.name[:_TMP_STEM]}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except (OverflowError, ValueError):  # not a process id at all
        return False
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` whose writer died before renaming them.

    A temporary goes only if its process id is dead on this host and nobody holds its
    lock; taking the lock ourselves before the unlink means a writer (on any host) can
    never lose a temporary it is still writing. Anything unclear is left alone.
    """
    if fcntl is None:  # pragma: no cover - no flock (Windows): cannot tell stale from live
        return
    prefix = _tmp_prefix(path)
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        match = _TMP_TAIL.fullmatch(entry.name, len(prefix))
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(fd), os.stat(entry.path, follow_symlinks=False)):
                os.unlink(entry.path)
        except OSError:  # locked by a live writer, or a filesystem without locks: keep it
            pass
        finally:
            os.close(fd)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Create and lock a fresh temporary next to ``path``; return its fd and name."""
    prefix = _tmp_prefix(path)
    while True:
        tmp = path.parent / f"{prefix}{os.getpid()}.{secrets.token_hex(8)}.tmp"
        try:  # mode 0o666 less the umask, exactly what open(path, "w") gives
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        if fcntl is None:  # pragma: no cover - Windows
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another host's cleaner took it first and will remove it
            os.close(fd)
            continue
        except OSError:  # no locks on this filesystem: the live process id still protects it
            return fd, tmp
        try:  # a cleaner elsewhere may have removed it between our create and our lock
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb",
                 encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only on success.

    The parent folder is created if needed. On any exception the temporary file is removed
    and ``path`` is left untouched. Temporaries of ``path`` left by killed writers are
    removed first (see the module docstring); those of live writers are kept.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_write(p, "w") as f:
    ...     _ = f.write("hello")
    >>> p.read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(os.dup(fd), mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(fd)  # releases the lock, only once the temporary is renamed or removed
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "b.json"
    >>> atomic_write_text(p, "{}"); p.read_text()
    '{}'
    """
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
