"""Fetching and unpacking dataset archives: a resumable, checksum-verified HTTP download and
a tar extractor that refuses unsafe members.

A download streams into ``<file>.part``; when interrupted, the next call asks the server for
the remaining bytes only (an HTTP ``Range`` request) and carries on. The file gets its final
name only after its MD5 matches, so a file under the final name is always a verified one.
Extraction unpacks into a temporary directory next to the target and renames the finished
folder into place, so a half-extracted dataset is never found by a later run.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from minidl._fileio import _fsync_dir
from minidl.data._util import DataFormatError, default_permissions, replace_dir


class DownloadError(OSError):
    """A download failed: no network, an HTTP error, a truncated transfer or a bad checksum."""


def _md5_of_file(path: Path, hasher: hashlib._Hash | None = None) -> hashlib._Hash:
    hasher = hasher or hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher


def file_md5(path: str | os.PathLike) -> str:
    """Return the hex MD5 digest of a file, read in 1 MiB blocks.

    >>> import tempfile, os
    >>> fd, p = tempfile.mkstemp(); os.close(fd)
    >>> file_md5(p)
    'd41d8cd98f00b204e9800998ecf8427e'
    >>> os.unlink(p)
    """
    return _md5_of_file(Path(path)).hexdigest()


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: no bar, same download
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, leave=False)


def _publish(part: Path, path: Path) -> None:
    """Rename the finished (already fsynced) ``part`` to ``path`` and make the rename durable."""
    os.replace(part, path)
    _fsync_dir(path.parent)


def download_url(
    url: str,
    path: str | os.PathLike,
    md5: str | None = None,
    *,
    progress: bool = True,
    timeout: float = 30.0,
    chunk_size: int = 1 << 16,
) -> Path:
    """Download ``url`` to ``path``, resuming a previous partial download, verifying ``md5``.

    Bytes stream into ``path + ".part"``. If that file exists, only the missing tail is
    requested (``Range: bytes=<size>-``); a server that ignores ranges restarts the download.
    An interrupted or truncated transfer keeps the ``.part`` file (the next call resumes it)
    and raises ``DownloadError``; a finished file whose MD5 differs from ``md5`` is deleted
    and raises ``DownloadError``. Only a verified file is renamed to ``path``.

    Args:
        url: http(s) or file URL.
        path: destination file; its directory is created.
        md5: expected hex MD5 of the whole file, or None to skip the check.
        progress: show a tqdm progress bar (when tqdm is installed).
        timeout: socket timeout in seconds.
        chunk_size: bytes read per step.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        DownloadError: no connection, HTTP error, truncated transfer or MD5 mismatch.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.bin").write_bytes(b"abc")
    >>> out = download_url((d / "a.bin").as_uri(), d / "b.bin",
    ...                    md5="900150983cd24fb0d6963f7d28e17f72", progress=False)
    >>> out.read_bytes()
    b'abc'
    >>> import shutil; shutil.rmtree(d)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        if md5 is None or _md5_of_file(path).hexdigest() == md5.lower():
            return path
        path.unlink()  # a stale or foreign file under the final name: fetch it again
    part = path.with_name(path.name + ".part")

    for _attempt in range(2):  # a second pass only after a rejected resume
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "minidl"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=timeout
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # Nothing left to send: the .part may already be complete; check it below,
                # else start over.
                if md5 is None or _md5_of_file(part).hexdigest() == md5.lower():
                    with open(part, "rb+") as f:  # written by an earlier call, maybe unsynced
                        os.fsync(f.fileno())
                    _publish(part, path)
                    return path
                part.unlink()
                continue
            raise DownloadError(f"download_url: {url} answered HTTP {exc.code} {exc.reason}") \
                from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"download_url: cannot reach {url} ({reason})") from exc

        with response:
            status = getattr(response, "status", 200)
            content_range = response.headers.get("Content-Range", "") or ""
            if offset and not (status == 206 and content_range.startswith(f"bytes {offset}-")):
                offset = 0  # the server sent the whole file, not the tail we asked for
            hasher = _md5_of_file(part) if offset else hashlib.md5()
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None and length.isdigit() else None
            received = offset
            bar = _progress_bar(total, offset, path.name, progress)
            try:
                with open(part, "ab" if offset else "wb") as f:
                    while True:
                        try:
                            chunk = response.read(chunk_size)
                        except (http.client.IncompleteRead, OSError) as exc:
                            raise DownloadError(
                                f"download_url: connection to {url} lost after {received} of "
                                f"{total if total is not None else '?'} bytes ({exc}); the "
                                f"partial file {part} is kept and the next call resumes it"
                            ) from exc
                        if not chunk:
                            break
                        f.write(chunk)
                        hasher.update(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                    # on disk before the rename below, so a crash never leaves a file under
                    # the final name whose data was lost
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                if bar is not None:
                    bar.close()
        if total is not None and received != total:
            raise DownloadError(
                f"download_url: transfer of {url} ended after {received} of {total} bytes; "
                f"the partial file {part} is kept and the next call resumes it"
            )
        got = hasher.hexdigest()
        if md5 is not None and got != md5.lower():
            part.unlink()
            raise DownloadError(
                f"download_url: MD5 mismatch for {url}: expected {md5.lower()}, got {got}; "
                "the corrupt download was deleted, try again (or check the URL)"
            )
        _publish(part, path)
        return path
    raise DownloadError(f"download_url: could not resume {url}; delete {part} and retry")


def _check_member(archive: Path, member: tarfile.TarInfo) -> PurePosixPath:
    name = PurePosixPath(member.name)
    if (
        member.name.startswith(("/", "\\"))
        or name.is_absolute()
        or ".." in name.parts
        or "\\" in member.name
        or (name.parts and ":" in name.parts[0])
    ):
        raise DataFormatError(
            f"extract_archive: refusing member {member.name!r} of {archive}: absolute paths "
            "and '..' are not allowed in a dataset archive"
        )
    if not (member.isfile() or member.isdir()):
        raise DataFormatError(
            f"extract_archive: refusing member {member.name!r} of {archive}: only regular "
            "files and directories are allowed (links and devices are not)"
        )
    return name


def extract_archive(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> list[Path]:
    """Extract a tar (optionally gzip/bz2/xz) archive into ``dest_dir`` atomically and safely.

    Every member is checked before anything is written: absolute names, ``..`` components,
    links and device files are refused with ``DataFormatError``. Members are written into a
    temporary directory inside ``dest_dir``; each finished top-level entry is then renamed
    into ``dest_dir`` (replacing an existing one of the same name).

    Args:
        archive: path of the ``.tar``/``.tar.gz`` file.
        dest_dir: directory that receives the archive's top-level entries.

    Returns:
        The paths of the extracted top-level entries, sorted.

    Raises:
        DataFormatError: corrupt or truncated archive, or an unsafe member.

    >>> import tempfile, pathlib, tarfile, io
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with tarfile.open(d / "a.tar.gz", "w:gz") as t:
    ...     info = tarfile.TarInfo("top/x.txt"); info.size = 2
    ...     t.addfile(info, io.BytesIO(b"hi"))
    >>> [p.name for p in extract_archive(d / "a.tar.gz", d / "out")]
    ['top']
    >>> (d / "out" / "top" / "x.txt").read_text()
    'hi'
    >>> import shutil; shutil.rmtree(d)
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_dir))
    default_permissions(tmp, directory=True)
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()  # reads the whole index: finds truncation early
                names = [_check_member(archive, m) for m in members]
                for member, name in zip(members, names):
                    target = tmp.joinpath(*name.parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    assert src is not None  # regular files always have a stream
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            if isinstance(exc, (PermissionError, FileExistsError)):
                raise
            raise DataFormatError(
                f"extract_archive: {archive} is corrupt or truncated ({type(exc).__name__}: "
                f"{exc}); delete it and download it again"
            ) from exc
        tops = sorted(tmp.iterdir())
        out = []
        for top in tops:
            final = dest_dir / top.name
            replace_dir(top, final, overwrite=True) if top.is_dir() else os.replace(top, final)
            out.append(final)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
