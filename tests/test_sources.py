"""Tests for gmt_model.sources: downloads (local HTTP server on 127.0.0.1,
file:// URLs, local paths) and safe archive extraction."""

from __future__ import annotations

import hashlib
import io
import os
import random
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gmt_model.sources import SourceError, extract, fetch, sha256_file


# --------------------------------------------------------------------------
# a small controllable HTTP server
# --------------------------------------------------------------------------
class _State:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.support_range = True
        self.cut_first = False  # first full request: send half the body, then drop
        self.fail_first = 0  # answer 503 to this many first requests
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()


def _make_handler(state: _State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, headers: dict, body: bytes, cut: bool = False) -> None:
            with state.lock:
                state.statuses.append(status)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if cut:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            with state.lock:
                state.requests.append({"path": self.path, **dict(self.headers)})
                n = len(state.requests)
            if self.path.startswith("/missing"):
                self._send(404, {"Content-Length": "0"}, b"")
                return
            if n <= state.fail_first:
                self._send(503, {"Content-Length": "0"}, b"")
                return
            data = state.payload
            rng = self.headers.get("Range")
            if rng and state.support_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    self._send(416, {"Content-Range": f"bytes */{len(data)}",
                                     "Content-Length": "0"}, b"")
                    return
                body = data[start:]
                self._send(206, {"Content-Length": str(len(body)), "ETag": '"v1"',
                                 "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
                           body)
                return
            cut = state.cut_first and not any(s == 200 for s in state.statuses)
            self._send(200, {"Content-Length": str(len(data)), "ETag": '"v1"',
                             "Accept-Ranges": "bytes" if state.support_range else "none"},
                       data, cut=cut)

    return Handler


@pytest.fixture()
def server():
    payload = random.Random(7).randbytes(300_000)
    state = _State(payload)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield base, state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------
# fetch over HTTP
# --------------------------------------------------------------------------
def test_resume_after_dropped_connection_uses_range(server, tmp_path):
    base, state = server
    state.cut_first = True
    out = fetch(f"{base}/files/blob.bin", tmp_path, sha256=_sha(state.payload), backoff=0)
    assert out == tmp_path / "blob.bin"
    assert out.read_bytes() == state.payload
    ranges = [r.get("Range") for r in state.requests if r.get("Range")]
    assert ranges == [f"bytes={len(state.payload) // 2}-"], state.requests
    assert state.statuses == [200, 206]
    assert not (tmp_path / "blob.bin.part").exists()


def test_resume_when_server_ignores_range(server, tmp_path):
    base, state = server
    state.cut_first = True
    state.support_range = False
    out = fetch(f"{base}/blob.bin", tmp_path, backoff=0)
    assert out.read_bytes() == state.payload
    assert state.statuses == [200, 200]  # restarted from scratch, not appended


def test_retries_after_server_errors(server, tmp_path):
    base, state = server
    state.fail_first = 2
    out = fetch(f"{base}/x.bin", tmp_path, retries=3, backoff=0)
    assert out.read_bytes() == state.payload
    assert state.statuses == [503, 503, 200]


def test_gives_up_after_retries(server, tmp_path):
    base, state = server
    state.fail_first = 10
    with pytest.raises(SourceError, match="after 3 attempts"):
        fetch(f"{base}/x.bin", tmp_path, retries=2, backoff=0)
    assert len(state.requests) == 3
    assert not (tmp_path / "x.bin").exists()


def test_connection_refused_is_retried_then_reported(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match="after 2 attempts"):
        fetch(f"http://127.0.0.1:{port}/x.bin", tmp_path, retries=1, backoff=0, timeout=5)


def test_http_404_names_the_config_key(server, tmp_path):
    base, _ = server
    with pytest.raises(SourceError) as ei:
        fetch(f"{base}/missing/data.tar.gz", tmp_path, config_key="datasets.gsm8k.url")
    assert "404" in str(ei.value) and "datasets.gsm8k.url" in str(ei.value)


def test_sha256_mismatch_keeps_earlier_good_file(server, tmp_path):
    base, state = server
    good = fetch(f"{base}/blob.bin", tmp_path, sha256=_sha(state.payload))
    assert good.read_bytes() == state.payload
    old = state.payload
    state.payload = b"something else entirely" * 100
    wrong = "0" * 64
    with pytest.raises(SourceError) as ei:
        fetch(f"{base}/blob.bin", tmp_path, sha256=wrong)
    msg = str(ei.value)
    assert wrong in msg and _sha(state.payload) in msg  # expected vs got
    assert good.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin"]


def test_verified_file_is_reused_without_request(server, tmp_path):
    base, state = server
    fetch(f"{base}/blob.bin", tmp_path, sha256=_sha(state.payload))
    n = len(state.requests)
    fetch(f"{base}/blob.bin", tmp_path, sha256=_sha(state.payload))
    assert len(state.requests) == n


def test_stale_partial_of_another_url_is_discarded(server, tmp_path):
    base, state = server
    (tmp_path / "blob.bin.part").write_bytes(b"junk from another download")
    out = fetch(f"{base}/blob.bin", tmp_path)
    assert out.read_bytes() == state.payload
    assert not any(r.get("Range") for r in state.requests)


# --------------------------------------------------------------------------
# fetch from local paths and file:// URLs
# --------------------------------------------------------------------------
def test_local_path_and_file_url(tmp_path):
    src = tmp_path / "src" / "data.jsonl"
    src.parent.mkdir()
    src.write_bytes(b'{"a": 1}\n')
    a = fetch(src, tmp_path / "a", sha256=_sha(src.read_bytes()))
    b = fetch(src.as_uri(), tmp_path / "b", filename="renamed.jsonl")
    assert a.read_bytes() == b.read_bytes() == src.read_bytes()
    assert b.name == "renamed.jsonl"


def test_local_sha_mismatch_keeps_earlier_file(tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"version 1")
    dest = tmp_path / "dest"
    fetch(src, dest)
    src.write_bytes(b"version 2")
    with pytest.raises(SourceError, match="expected 1{64}, got"):
        fetch(src.as_uri(), dest, sha256="1" * 64)
    assert (dest / "f.bin").read_bytes() == b"version 1"
    assert [p.name for p in dest.iterdir()] == ["f.bin"]


def test_missing_local_file_names_the_key(tmp_path):
    with pytest.raises(SourceError) as ei:
        fetch((tmp_path / "nope.tar.gz").as_uri(), tmp_path / "d",
              config_key="datasets.mt_bench.url (env GMTROUTER_MT_BENCH_URL)")
    assert "datasets.mt_bench.url" in str(ei.value)
    assert "GMTROUTER_MT_BENCH_URL" in str(ei.value)


def test_bad_sha_config_is_rejected(tmp_path):
    with pytest.raises(SourceError, match="64 hex"):
        fetch(tmp_path / "x", tmp_path, sha256="abc")


# --------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------
def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode="w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.fixture()
def previous(tmp_path):
    """A target folder holding a previous good extraction."""
    work = tmp_path / "work"
    work.mkdir()
    good = _tar(tmp_path / "good.tar.gz", [_file("data/mt_bench/a.txt", b"old")])
    target = extract(good, work / "target")
    assert (target / "data/mt_bench/a.txt").read_bytes() == b"old"
    return work, target


def _assert_untouched(tmp_path: Path, work: Path, target: Path) -> None:
    assert (target / "data/mt_bench/a.txt").read_bytes() == b"old"
    assert sorted(p.name for p in work.iterdir()) == ["target"]  # no temp dirs, no escapes
    assert sorted(p.name for p in target.rglob("*")) == ["a.txt", "data", "mt_bench"]
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside" / "evil").exists()


def test_extract_replaces_previous_extraction(tmp_path, previous):
    work, target = previous
    new = _tar(tmp_path / "new.tar.bz2", [_file("data/gsm8k/b.txt", b"new"),
                                          _link("data/gsm8k/c.txt", "b.txt")], mode="w:bz2")
    extract(new, target)
    assert (target / "data/gsm8k/b.txt").read_bytes() == b"new"
    assert (target / "data/gsm8k/c.txt").read_bytes() == b"new"  # inner symlink is fine
    assert not (target / "data/mt_bench").exists()
    assert sorted(p.name for p in work.iterdir()) == ["target"]


def _dev(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info, None


@pytest.mark.parametrize("members", [
    [_file("data/ok.txt", b"x"), _file("../evil", b"pwned")],
    [_file("data/../../evil", b"pwned")],
    [_link("data/link", "../../../outside"), _file("data/link/evil", b"pwned")],
    [_link("data/abs", "/etc/passwd")],
    [_link("data/hard", "../outside/evil", kind=tarfile.LNKTYPE)],
    [_dev("data/dev")],
], ids=["dotdot", "nested-dotdot", "symlink-escape", "symlink-absolute", "hardlink-escape", "device"])
def test_unsafe_tar_is_refused(tmp_path, previous, members):
    work, target = previous
    (tmp_path / "outside").mkdir()
    bad = _tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(SourceError, match="bad.tar.gz"):
        extract(bad, target)
    _assert_untouched(tmp_path, work, target)
    assert list((tmp_path / "outside").iterdir()) == []


def test_absolute_member_is_refused(tmp_path, previous):
    work, target = previous
    evil = tmp_path / "evil"
    bad = _tar(tmp_path / "abs.tar", [_file(str(evil), b"pwned")], mode="w")
    with pytest.raises(SourceError, match="absolute"):
        extract(bad, target)
    _assert_untouched(tmp_path, work, target)


def test_truncated_tar_gz_is_refused(tmp_path, previous):
    work, target = previous
    data = random.Random(1).randbytes(200_000)
    full = _tar(tmp_path / "full.tar.gz", [_file("data/big.bin", data)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(SourceError, match="cut.tar.gz"):
        extract(cut, target)
    _assert_untouched(tmp_path, work, target)


def test_zip_extract_and_refusals(tmp_path, previous):
    work, target = previous
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/x/training_set.jsonl", "{}\n" * 1000)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil", "pwned")
    with pytest.raises(SourceError, match="'\\.\\.'"):
        extract(bad, target)
    _assert_untouched(tmp_path, work, target)

    corrupt = tmp_path / "corrupt.zip"
    raw = bytearray(good.read_bytes())
    raw[40:60] = bytes(20)  # damage the compressed data of the member
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(SourceError, match="corrupt.zip"):
        extract(corrupt, target)
    _assert_untouched(tmp_path, work, target)

    extract(good, target)
    assert (target / "data/x/training_set.jsonl").read_text() == "{}\n" * 1000


def test_not_an_archive(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not an archive at all")
    with pytest.raises(SourceError, match="junk.tar.gz"):
        extract(junk, tmp_path / "t")
    assert not (tmp_path / "t").exists()
    assert sha256_file(junk) == _sha(b"this is not an archive at all")
    assert os.listdir(tmp_path) == ["junk.tar.gz"]
