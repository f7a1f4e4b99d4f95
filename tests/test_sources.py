"""Tests for gmt_model.data.sources: downloads (local HTTP server on 127.0.0.1,
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

from gmt_model.data.sources import SourceError, extract, fetch, sha256_file


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


# --------------------------------------------------------------------------
# Google Drive: the confirmation page for large files (a local mimic)
# --------------------------------------------------------------------------
DRIVE_ID = "1l-sAXV7i08S9sjJw1_UyvD0mP56QSIKt"
RELEASE = "GMTRouter_dataset.tar.gz"

# the shape of drive.usercontent.google.com's answer for a file too large to scan
_FORM_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>
<meta http-equiv="content-type" content="text/html; charset=utf-8"/></head><body>
<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p>
<p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={id}">{name}</a> (1.2G)</span>
is too large for Google to scan for viruses. Would you still like to download this file?</p>
<form id="download-form" action="{base}/download" method="get">
<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}">
</form></div></div></body></html>"""

# the older drive.google.com shape: a link with confirm=<token> and a download_warning cookie
_LINK_PAGE = """<html><head><title>Google Drive - Virus scan warning</title></head><body>
<a id="uc-download-link" href="/uc?export=download&amp;confirm={token}&amp;id={id}">Download anyway</a>
</body></html>"""

_QUOTA_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>
<p>Too many users have viewed or downloaded this file recently. Please try accessing the file again later.</p>
</body></html>"""

_ERROR_PAGE = """<!DOCTYPE html><html lang=en><meta charset=utf-8><title>Error 502 (Server Error)!!1</title>
<p><b>502.</b> That's an error. The server encountered a temporary error.</p></html>"""


class _Drive:
    """``/uc?export=download&id=ID`` -> 303 -> ``/download?id=ID&export=download`` -> confirmation
    page -> ``/download?...&confirm=t&uuid=U`` -> the archive (mode ``form``); other modes
    answer as the test needs."""

    def __init__(self, payload: bytes, mode: str = "form") -> None:
        self.payload = payload
        self.mode = mode
        self.uuid = "5f2c7f9e-0000-4000-8000-000000000001"
        self.token = "AbCd"
        self.requests: list[str] = []
        self.base = ""

    def handler(self):
        drive = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", ctype: str | None = None, **headers: str) -> None:
                self.send_response(status)
                if ctype:
                    self.send_header("Content-Type", ctype)
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _html(self, text: str, **headers: str) -> None:
                self._send(200, text.encode(), "text/html; charset=utf-8", **headers)

            def _file(self) -> None:
                self._send(200, drive.payload, "application/x-gzip",
                           Content_Disposition=f'attachment; filename="{RELEASE}"')

            def do_GET(self) -> None:  # noqa: N802
                drive.requests.append(self.path)
                from urllib.parse import parse_qs, urlsplit

                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/error.tar.gz":
                    return self._html(_ERROR_PAGE)
                if url.path == "/sniff.tar.gz":  # HTML sent as binary
                    return self._send(200, _ERROR_PAGE.encode(), "application/octet-stream")
                if url.path == "/notgzip.tar.gz":
                    return self._send(200, b"PK\x03\x04 not a gzip stream", "application/octet-stream")
                if q.get("id") != DRIVE_ID:
                    return self._send(404)
                if drive.mode == "link":
                    cookie = self.headers.get("Cookie") or ""
                    if url.path == "/uc" and q.get("confirm") == drive.token and drive.token in cookie:
                        return self._file()
                    return self._html(_LINK_PAGE.format(token=drive.token, id=DRIVE_ID),
                                      Set_Cookie=f"download_warning_{DRIVE_ID}={drive.token}; Path=/")
                if url.path == "/uc":
                    return self._send(303, Location=f"{drive.base}/download?id={DRIVE_ID}&export=download")
                if url.path != "/download":
                    return self._send(404)
                if drive.mode == "quota":
                    return self._html(_QUOTA_PAGE)
                if drive.mode == "nolink":  # the form lost its confirm input and id
                    return self._html(_FORM_PAGE.format(base=drive.base, id=DRIVE_ID, name=RELEASE, uuid="")
                                      .replace('id="download-form"', "")
                                      .replace('<input type="hidden" name="confirm" value="t">', ""))
                if drive.mode == "loop" or q.get("confirm") != "t" or q.get("uuid") != drive.uuid:
                    return self._html(_FORM_PAGE.format(base=drive.base, id=DRIVE_ID, name=RELEASE, uuid=drive.uuid))
                return self._file()

        return Handler


@pytest.fixture()
def drive():
    """A local stand-in for Google Drive on 127.0.0.1; its URLs have the real URL's shape."""
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tf:
        for name, data in (("data/mt_bench/readme.txt", b"release"),):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    state = _Drive(tgz.getvalue())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _drive_url(drive: _Drive) -> str:
    """The configured release URL with the Drive host replaced by the local mimic."""
    from gmt_model.data.datasets import load_source_config

    real = load_source_config("mmlu", env={}).url
    assert real == f"https://drive.google.com/uc?export=download&id={DRIVE_ID}"
    return real.replace("https://drive.google.com", drive.base)


def test_drive_confirmation_form_is_followed(drive, tmp_path):
    out = fetch(_drive_url(drive), tmp_path, filename=RELEASE, sha256=_sha(drive.payload), backoff=0)
    assert out == tmp_path / RELEASE and out.read_bytes() == drive.payload
    assert [r.split("?")[0] for r in drive.requests] == ["/uc", "/download", "/download"]
    assert "confirm=t" in drive.requests[-1] and f"uuid={drive.uuid}" in drive.requests[-1]
    assert os.listdir(tmp_path) == [RELEASE]
    assert (extract(out, tmp_path / "x") / "data/mt_bench/readme.txt").read_bytes() == b"release"


def test_drive_confirm_link_with_cookie_is_followed(drive, tmp_path):
    drive.mode = "link"
    out = fetch(_drive_url(drive), tmp_path, filename=RELEASE, backoff=0)
    assert out.read_bytes() == drive.payload
    assert f"confirm={drive.token}" in drive.requests[-1]
    assert os.listdir(tmp_path) == [RELEASE]


@pytest.mark.parametrize("mode", ["nolink", "quota"])
def test_drive_page_without_a_usable_link_fails_clearly(drive, tmp_path, mode):
    drive.mode = mode
    with pytest.raises(SourceError) as ei:
        fetch(_drive_url(drive), tmp_path, filename=RELEASE, backoff=0, config_key="datasets.mmlu.url")
    msg = str(ei.value)
    assert msg.startswith("Google Drive returned a confirmation page that could not be followed")
    assert "nothing was saved" in msg and "datasets.mmlu.url" in msg and "Google Drive - " in msg
    assert os.listdir(tmp_path) == []  # no archive, no .part, no .part.json


def test_drive_pages_that_never_end_are_refused(drive, tmp_path):
    drive.mode = "loop"
    with pytest.raises(SourceError, match="confirmation pages in a row"):
        fetch(_drive_url(drive), tmp_path, filename=RELEASE, backoff=0)
    assert os.listdir(tmp_path) == []
    assert len(drive.requests) == 5  # /uc, the page, then three follows


@pytest.mark.parametrize("path, match", [
    ("/error.tar.gz", "returned an HTML page"),  # text/html error page
    ("/sniff.tar.gz", "returned an HTML page"),  # HTML under a binary content type
    ("/notgzip.tar.gz", "not a gzip file"),  # not HTML, but not what the name promises
])
def test_html_or_wrong_format_is_never_saved(drive, tmp_path, path, match):
    earlier = tmp_path / "error.tar.gz"
    with pytest.raises(SourceError, match=match) as ei:
        fetch(f"{drive.base}{path}", tmp_path, retries=2, backoff=0, config_key="datasets.gsm8k.url")
    assert "nothing was saved" in str(ei.value) and "datasets.gsm8k.url" in str(ei.value)
    assert os.listdir(tmp_path) == []
    assert len(drive.requests) == 1  # refused at once, not retried
    # a good file fetched earlier under the same name survives
    earlier.write_bytes(b"\x1f\x8bgood")
    with pytest.raises(SourceError):
        fetch(f"{drive.base}/error.tar.gz", tmp_path, backoff=0)
    assert os.listdir(tmp_path) == ["error.tar.gz"] and earlier.read_bytes() == b"\x1f\x8bgood"


def test_release_source_downloads_through_the_drive_page(drive, tmp_path):
    """The configured release source, its host pointed at the mimic: fetched, extracted, found."""
    from gmt_model.data.datasets import load_source_config, prepare_raw

    src = load_source_config("mmlu", env={"GMTROUTER_RELEASE_URL": _drive_url(drive)},
                             overrides={"path_in_archive": "data/mt_bench"})
    assert src.kind == "gmtrouter_release" and src.filename == RELEASE
    with pytest.raises(SourceError, match="lacks"):  # the mimic's archive holds no split files
        prepare_raw("mmlu", src, tmp_path / "raw")
    assert (tmp_path / "raw" / "download" / RELEASE).read_bytes() == drive.payload
    assert (tmp_path / "raw" / "extracted" / "data" / "mt_bench" / "readme.txt").is_file()
    assert [r.split("?")[0] for r in drive.requests] == ["/uc", "/download", "/download"]
