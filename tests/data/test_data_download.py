"""The downloader against a local HTTP server on 127.0.0.1: full, resumed, truncated and
corrupted downloads; CIFAR-10 download + extraction into the cache; unsafe tar members."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import minidl.data.datasets as datasets_mod
from minidl.data import (
    DataFormatError,
    DownloadError,
    download_url,
    extract_archive,
    load_cifar10,
)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        state = self.server.state
        state["requests"].append((self.path, self.headers.get("Range")))
        data = state["files"].get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not state["ignore_range"]:
            start, status = int(match.group(1)), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state["truncate"] is not None:  # announce the full length, send less, hang up
            body = body[: state["truncate"]]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = {"files": {}, "requests": [], "ignore_range": False, "truncate": None}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    state = httpd.state
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


PAYLOAD = bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8))
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def _serve(server, name="/f.bin", data=PAYLOAD):
    server["files"][name] = data
    return server["url"] + name


def test_download_full(server, tmp_path):
    out = download_url(_serve(server), tmp_path / "sub" / "f.bin", PAYLOAD_MD5, progress=True)
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "f.bin.part").exists()
    # A verified file is not fetched again.
    download_url(server["url"] + "/f.bin", out, PAYLOAD_MD5, progress=False)
    assert len(server["requests"]) == 1


def test_download_resumes_from_part(server, tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:7000])
    download_url(_serve(server), dest, PAYLOAD_MD5, progress=False)
    assert server["requests"] == [("/f.bin", "bytes=7000-")]
    assert dest.read_bytes() == PAYLOAD


def test_download_restarts_when_server_ignores_range(server, tmp_path):
    server["ignore_range"] = True
    (tmp_path / "f.bin.part").write_bytes(b"junk" * 100)
    download_url(_serve(server), tmp_path / "f.bin", PAYLOAD_MD5, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_download_complete_part_answered_416(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    download_url(_serve(server), tmp_path / "f.bin", PAYLOAD_MD5, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_download_md5_mismatch_leaves_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match=r"MD5 mismatch.*expected 0{32}.*" + PAYLOAD_MD5):
        download_url(_serve(server), tmp_path / "f.bin", "0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_corrupt_part_is_detected_and_removed(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(b"\xff" * 5000)  # wrong bytes, resumed after
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download_url(_serve(server), tmp_path / "f.bin", PAYLOAD_MD5, progress=False)
    assert list(tmp_path.iterdir()) == []
    download_url(server["url"] + "/f.bin", tmp_path / "f.bin", PAYLOAD_MD5, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_truncated_download_keeps_part_and_resumes(server, tmp_path):
    server["truncate"] = 6000
    url = _serve(server)
    with pytest.raises(DownloadError, match=r"6000 of 20000 bytes.*resumes"):
        download_url(url, tmp_path / "f.bin", PAYLOAD_MD5, progress=False)
    assert (tmp_path / "f.bin.part").stat().st_size == 6000
    assert not (tmp_path / "f.bin").exists()
    server["truncate"] = None
    download_url(url, tmp_path / "f.bin", PAYLOAD_MD5, progress=False)
    assert server["requests"][-1] == ("/f.bin", "bytes=6000-")
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_download_http_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_url(server["url"] + "/missing", tmp_path / "f", progress=False)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_cifar10_download_into_cache(server, cifar, clean_env, fmt):
    data = cifar.archive_bytes(fmt)
    url = _serve(server, "/cifar.tar.gz", data)
    x, y = load_cifar10(download=True, url=url, md5=hashlib.md5(data).hexdigest(),
                        format=fmt, progress=False)
    np.testing.assert_array_equal(x, cifar.train[0])
    np.testing.assert_array_equal(y, cifar.train[1])
    folder = "cifar-10-batches-bin" if fmt == "binary" else "cifar-10-batches-py"
    assert [p.name for p in clean_env.iterdir()] == [folder]  # archive and temp dirs gone
    # Now cached: no further request.
    x2, _ = load_cifar10(train=False, download=True, url=url, format=fmt)
    np.testing.assert_array_equal(x2, cifar.test[0])
    assert len(server["requests"]) == 1


def test_cifar10_download_md5_mismatch_leaves_cache_empty(server, cifar, tmp_path):
    url = _serve(server, "/cifar.tar.gz", cifar.archive_bytes("python"))
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        load_cifar10(tmp_path, download=True, url=url, md5="1" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cifar10_official_url_uses_official_md5(server, cifar, tmp_path, monkeypatch):
    # Redirect the "official" URL to the local server: the synthetic archive must then be
    # rejected, since the official checksum is enforced by default.
    url = _serve(server, "/cifar.tar.gz", cifar.archive_bytes("python"))
    spec = dict(datasets_mod._CIFAR_FORMATS["python"], url=url)
    monkeypatch.setitem(datasets_mod._CIFAR_FORMATS, "python", spec)
    with pytest.raises(DownloadError, match=datasets_mod.CIFAR10_MD5):
        load_cifar10(tmp_path, download=True, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cifar10_corrupt_archive_from_server(server, tmp_path):
    url = _serve(server, "/cifar.tar.gz", b"this is not a tar file" * 50)
    with pytest.raises(DataFormatError, match="corrupt or truncated"):
        load_cifar10(tmp_path, download=True, url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cifar10_no_network_says_where_to_put_files(tmp_path):
    with pytest.raises(DownloadError) as info:
        load_cifar10(tmp_path, download=True, url=_closed_port_url(), progress=False)
    msg = str(info.value)
    for needle in (str(tmp_path), "cifar-10-python.tar.gz", "cifar-10-batches-py",
                   "data_batch_1", "test_batch", "batches.meta"):
        assert needle in msg


# ------------------------------------------------------------------------- safe extraction


def _tar_with(tmp_path, add) -> str:
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def _add_file(tar, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name", ["../evil.txt", "top/../../evil.txt", "/tmp/evil-abs.txt",
                                  "C:/evil.txt"])
def test_extract_refuses_unsafe_paths(tmp_path, name):
    def add(tar):
        _add_file(tar, "top/ok.txt")
        _add_file(tar, name)

    dest = tmp_path / "dest"
    with pytest.raises(DataFormatError, match="refusing member"):
        extract_archive(_tar_with(tmp_path, add), dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_extract_refuses_links(tmp_path):
    def add(tar):
        info = tarfile.TarInfo("top/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)

    dest = tmp_path / "dest"
    with pytest.raises(DataFormatError, match="links"):
        extract_archive(_tar_with(tmp_path, add), dest)
    assert list(dest.iterdir()) == []


def test_extract_replaces_existing_folder(tmp_path):
    dest = tmp_path / "dest"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "stale.txt").write_text("old")
    extract_archive(_tar_with(tmp_path, lambda t: _add_file(t, "top/new.txt", b"new")), dest)
    assert sorted(p.name for p in (dest / "top").iterdir()) == ["new.txt"]
    assert [p.name for p in dest.iterdir()] == ["top"]


@pytest.mark.parametrize("resumed", [False, True], ids=["fresh", "complete-part-416"])
def test_download_fsyncs_part_before_rename_and_folder_after(server, tmp_path, monkeypatch,
                                                             resumed):
    import os
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    if resumed:  # a finished .part from an earlier run: the server answers 416
        (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    download_url(_serve(server), tmp_path / "f.bin", PAYLOAD_MD5, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    k = events.index("replace")
    assert "fsync-file" in events[:k] and "fsync-dir" in events[k + 1:]
