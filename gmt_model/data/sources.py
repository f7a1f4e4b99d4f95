"""Getting raw data: resumable, verified downloads and safe archive extraction.

``fetch`` copies a source (``http(s)://`` URL, ``file://`` URL or local path)
into a destination folder.  HTTP downloads go to ``<name>.part`` first and are
resumed with an HTTP ``Range`` request after a dropped connection; the final
file only appears (by ``os.replace``) once it is complete and, when a sha256
is configured, verified.  A file that fails verification is removed; a good
file fetched earlier under the same name is never touched by a failed fetch.

An HTML page is never saved as data.  Google Drive answers a large file with
an HTML confirmation page ("can't scan this file for viruses"); ``fetch``
follows that page's download form (action plus hidden inputs: ``confirm``,
``uuid``, ...) or its ``confirm=`` link, keeping Drive's cookies, and fails
with a clear :class:`SourceError` when the page has neither.  Any other HTML
answer is refused.  A file whose name promises an archive or Parquet file
(``.tar.gz``, ``.zip``, ``.parquet``, ...) must start with that format's
magic bytes (gzip: ``1f 8b``).

``extract`` unpacks tar (plain, gz, bz2, xz) and zip archives into a
temporary sibling folder after checking every member (no absolute paths, no
``..``, no links leaving the target, no device files), then swaps the result
into place, so a failed extraction leaves the previous one intact.

Only the standard library is used (``urllib``, ``tarfile``, ``zipfile``).
"""

from __future__ import annotations

import html
import html.parser
import http.client
import http.cookiejar
import json
import logging
import lzma
import os
import posixpath
import re
import shutil
import socket
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from gmt_model.atomic import copy_file_atomic, file_sha256, replace_dir

__all__ = ["SourceError", "fetch", "extract", "sha256_file"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
#: HTTP status codes worth another try
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: HTTP status codes meaning "nothing there": the configuration must change
_MISSING_STATUS = frozenset({404, 410})
#: at most this many HTML confirmation pages are followed for one download
_MAX_PAGES = 3
#: at most this much of an HTML page is read (confirmation pages are a few KB)
_PAGE_LIMIT = 1 << 20
#: Google Drive hosts (their HTML pages get Drive-specific error messages)
_DRIVE_HOSTS = ("drive.google.com", "drive.usercontent.google.com", "docs.google.com")
#: file-name endings -> (format, accepted leading bytes)
_MAGIC: tuple[tuple[str, str, tuple[bytes, ...]], ...] = (
    (".tar.gz", "gzip", (b"\x1f\x8b",)),
    (".tgz", "gzip", (b"\x1f\x8b",)),
    (".gz", "gzip", (b"\x1f\x8b",)),
    (".tar.bz2", "bzip2", (b"BZh",)),
    (".tbz2", "bzip2", (b"BZh",)),
    (".bz2", "bzip2", (b"BZh",)),
    (".tar.xz", "xz", (b"\xfd7zXZ\x00",)),
    (".txz", "xz", (b"\xfd7zXZ\x00",)),
    (".xz", "xz", (b"\xfd7zXZ\x00",)),
    (".zip", "zip", (b"PK\x03\x04", b"PK\x05\x06")),
    (".parquet", "Parquet", (b"PAR1",)),
)


class SourceError(RuntimeError):
    """A source could not be fetched, verified or extracted."""


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
#: hex sha256 of a file (the library's one helper, under the name this module exports)
sha256_file = file_sha256


def _hint(config_key: str | None) -> str:
    if config_key:
        return f"set {config_key} to a reachable URL or local path"
    return "pass a reachable URL or local path as the source"


def _normalise_sha(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    s = sha256.strip().lower()
    if s.startswith("sha256:"):
        s = s[len("sha256:"):]
    if not re.fullmatch(r"[0-9a-f]{64}", s):
        raise SourceError(f"configured sha256 {sha256!r} is not 64 hex digits")
    return s


def _check_filename(name: str, source: str) -> str:
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
        raise SourceError(
            f"cannot derive a safe file name from {source!r} (got {name!r}); pass filename=")
    return name


def _verify(path: Path, expected: str | None, source: str) -> None:
    """Raise SourceError (after removing ``path``) when its sha256 is wrong."""
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected:
        path.unlink(missing_ok=True)
        raise SourceError(
            f"sha256 mismatch for {source}: expected {expected}, got {got}; "
            f"the downloaded file was removed")


def _local_path_of(source: str | Path) -> Path | None:
    """The local path a source names, or None for an http(s) URL."""
    if isinstance(source, Path):
        return source
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"file URL {source!r} names a remote host {parsed.netloc!r}")
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise SourceError(f"unsupported URL scheme {parsed.scheme!r} in {source!r} "
                          "(expected http, https, file or a local path)")
    return Path(source)


# --------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------
def fetch(
    source: str | Path,
    dest_dir: Path,
    *,
    filename: str | None = None,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 60,
    backoff: float = 0.5,
    config_key: str | None = None,
) -> Path:
    """Fetch ``source`` into ``dest_dir`` and return the final path.

    ``source`` is an ``http(s)://`` URL, a ``file://`` URL or a local path.
    The file is written to ``dest_dir/<filename>`` (default: the last path
    component of the source).  HTTP downloads are streamed to
    ``<filename>.part`` and resumed with ``Range`` requests after a
    connection error or truncation; up to ``retries`` further attempts are
    made, sleeping ``backoff * 2**attempt`` seconds in between.  When
    ``sha256`` is given the result is verified: on mismatch the new file is
    removed and ``SourceError`` says the expected and the actual digest.  When
    a file with the right digest already exists at the destination it is
    reused without fetching.  ``config_key`` names the setting to change
    when the source does not exist (it appears in the error message).
    """
    expected = _normalise_sha(sha256)
    src = str(source)
    local = _local_path_of(source)
    if filename is None:
        if local is not None:
            filename = local.name
        else:
            filename = posixpath.basename(urllib.parse.unquote(urllib.parse.urlparse(src).path))
    filename = _check_filename(filename, src)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / filename

    if expected is not None and dest.is_file() and sha256_file(dest) == expected:
        log.info("reusing verified %s", dest)
        return dest

    if local is not None:
        return _fetch_local(local, dest, expected, src, config_key)
    return _fetch_http(src, dest, expected, retries=retries, timeout=timeout,
                       backoff=backoff, config_key=config_key)


def _fetch_local(path: Path, dest: Path, expected: str | None, src: str,
                 config_key: str | None) -> Path:
    if not path.exists():
        raise SourceError(f"source {src!r} does not exist ({path}); {_hint(config_key)}")
    if not path.is_file():
        raise SourceError(f"source {src!r} is not a regular file ({path}); {_hint(config_key)}")
    if path.resolve() == dest.resolve():
        _verify_in_place(dest, expected, src)
        return dest
    return copy_file_atomic(path, dest, suffix=".part", check=lambda tmp: _verify(tmp, expected, src))


def _verify_in_place(path: Path, expected: str | None, src: str) -> None:
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected:  # never delete the user's own source file
        raise SourceError(f"sha256 mismatch for {src}: expected {expected}, got {got}")


class _Retry(Exception):
    """Internal: this attempt failed in a way worth retrying."""


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes a-b/total`` or ``bytes */total`` -> (a, b, total)."""
    if not value:
        return None, None, None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value)
    if not m:
        return None, None, None
    start = int(m.group(1)) if m.group(1) else None
    end = int(m.group(2)) if m.group(2) else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, end, total


def _expected_magic(name: str) -> tuple[str, tuple[bytes, ...]] | None:
    """(format, accepted leading bytes) promised by a file name, or None."""
    low = name.lower()
    for suffix, fmt, magics in _MAGIC:
        if low.endswith(suffix):
            return fmt, magics
    return None


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<meta", b"<title", b"<!--"))


class _FollowPage(Exception):
    """Internal: the answer was a confirmation page; fetch ``url`` instead."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class _PageParser(html.parser.HTMLParser):
    """Title, forms (action, method, named inputs) and links of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self._in_title = False
        self.forms: list[dict] = []
        self.links: list[str] = []
        self._form: dict | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "title":
            self._in_title = True
        elif tag == "form":
            self._form = {"action": a.get("action", ""), "method": a.get("method", "get").lower(),
                          "id": a.get("id", ""), "inputs": []}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            if a.get("type", "text").lower() not in ("submit", "button", "image", "reset"):
                self._form["inputs"].append((a["name"], a.get("value", "")))
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "form":
            self._form = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def _confirm_link(page_url: str, parser: _PageParser) -> str | None:
    """The download URL a Drive confirmation page points at, or None."""
    for form in parser.forms:
        names = {n for n, _ in form["inputs"]}
        if "confirm" not in names and form["id"] != "download-form":
            continue
        if form["method"] not in ("", "get"):
            continue
        action = urllib.parse.urljoin(page_url, form["action"] or page_url)
        parts = urllib.parse.urlsplit(action)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query = [(k, v) for k, v in query if k not in names] + form["inputs"]
        target = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query), fragment=""))
        if parts.scheme in ("http", "https") and "confirm" in dict(query):
            return target
    for href in parser.links:
        target = urllib.parse.urljoin(page_url, href)
        parts = urllib.parse.urlsplit(target)
        if parts.scheme in ("http", "https") and "confirm" in dict(urllib.parse.parse_qsl(parts.query)):
            return urllib.parse.urlunsplit(parts._replace(fragment=""))
    return None


def _html_answer(url: str, page_url: str, body: bytes, config_key: str | None) -> _FollowPage:
    """A followable confirmation page -> _FollowPage; anything else raises SourceError."""
    parser = _PageParser()
    try:
        parser.feed(body.decode("utf-8", "replace"))
        parser.close()
    except Exception:  # noqa: BLE001 (a broken page is simply not followable)
        pass
    link = _confirm_link(page_url, parser)
    if link is not None:
        return _FollowPage(link)
    title = " ".join(parser.title.split())[:120] or "no title"
    hosts = {urllib.parse.urlsplit(u).hostname or "" for u in (url, page_url)}
    text = body.decode("utf-8", "replace")
    drive = bool(hosts & set(_DRIVE_HOSTS)) or any(
        m in text for m in ("Google Drive", "uc-download-link", "download-form", "download_warning"))
    if drive:
        raise SourceError(
            f"Google Drive returned a confirmation page that could not be followed for {url} (page "
            f"{title!r} at {page_url}: no download form or confirm link; the file may be over its download "
            f"quota or no longer shared); nothing was saved. Download the file in a browser and set "
            f"{config_key or 'the source'} to its local path")
    raise SourceError(f"{url} returned an HTML page ({title!r} at {page_url}) instead of the file; "
                      f"nothing was saved; {_hint(config_key)}")


def _fetch_http(url: str, dest: Path, expected: str | None, *, retries: int,
                timeout: float, backoff: float, config_key: str | None) -> Path:
    part = dest.with_name(dest.name + ".part")
    meta_path = dest.with_name(dest.name + ".part.json")
    meta: dict = {}
    if part.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
    if meta.get("url") != url:  # a stale partial download of another source
        part.unlink(missing_ok=True)
        meta = {"url": url}
    meta_path.write_text(json.dumps(meta))
    # one cookie jar per download: Drive's confirmation flow may rely on its cookies
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    magic = _expected_magic(dest.name)
    try:
        current = url
        pages = 0
        attempt = 0
        last_error: str = ""
        while True:
            try:
                _http_attempt(opener, url, current, part, meta, meta_path, timeout, config_key, magic)
            except _FollowPage as page:
                pages += 1
                if pages > _MAX_PAGES:
                    raise SourceError(f"{url}: got {pages} confirmation pages in a row (last link {page.url}); "
                                      f"nothing was saved; {_hint(config_key)}") from None
                log.info("following the confirmation page of %s to %s", url, page.url)
                current = page.url
                continue
            except _Retry as exc:
                last_error = str(exc)
                attempt += 1
                if attempt > retries:
                    kept = (f"; the partial file {part} is kept and the next fetch resumes it"
                            if part.exists() and part.stat().st_size else "")
                    raise SourceError(f"could not download {url} after {retries + 1} attempts: {last_error}{kept}") \
                        from None
                delay = backoff * (2 ** (attempt - 1))
                log.warning("retrying %s in %.1fs (attempt %d/%d): %s", url, delay,
                            attempt + 1, retries + 1, last_error)
                if delay > 0:
                    time.sleep(delay)
                continue
            break
        _check_magic(part, magic, url, config_key)
        try:
            _verify(part, expected, url)
        finally:
            if not part.exists():
                meta_path.unlink(missing_ok=True)
        os.replace(part, dest)
        meta_path.unlink(missing_ok=True)
        return dest
    except SourceError:
        # keep a partial download worth resuming; leave nothing else behind
        if not part.exists() or part.stat().st_size == 0:
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
        raise


def _check_magic(path: Path, magic: tuple[str, tuple[bytes, ...]] | None, url: str,
                 config_key: str | None) -> None:
    """Refuse (and remove) a downloaded file that does not start as its name promises."""
    if magic is None or not path.exists():
        return
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head.startswith(magic[1]):
        path.unlink(missing_ok=True)
        raise SourceError(_not_format(url, magic[0], head, config_key))


def _not_format(url: str, fmt: str, head: bytes, config_key: str | None) -> str:
    return (f"{url} sent data that is not a {fmt} file (it starts with {head[:16]!r}); "
            f"nothing was saved; {_hint(config_key)}")


def _http_attempt(opener: urllib.request.OpenerDirector, url: str, current: str, part: Path, meta: dict,
                  meta_path: Path, timeout: float, config_key: str | None,
                  magic: tuple[str, tuple[bytes, ...]] | None) -> None:
    """One request to ``current`` (``url`` or a confirmation link): append to ``part``."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "gmtrouter-fetch/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        etag = meta.get("etag")
        validator = etag if etag and not etag.startswith("W/") else meta.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    req = urllib.request.Request(current, headers=headers)
    try:
        resp = opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            _, _, total = _parse_content_range(exc.headers.get("Content-Range"))
            if total is not None and total == offset:
                return  # the partial file already holds everything
            part.unlink(missing_ok=True)
            raise _Retry(f"HTTP 416 for a resume at byte {offset}; restarting") from exc
        if exc.code in _MISSING_STATUS:
            raise SourceError(f"{url} answered HTTP {exc.code} ({exc.reason}); "
                              f"{_hint(config_key)}") from exc
        if exc.code in _RETRY_STATUS:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from exc
        raise SourceError(f"{url} answered HTTP {exc.code} ({exc.reason})") from exc
    except urllib.error.URLError as exc:
        raise _Retry(f"cannot connect: {exc.reason}") from exc
    except (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException) as exc:
        raise _Retry(f"connection error: {exc!r}") from exc

    with resp:
        status = resp.status
        ctype = (resp.headers.get("Content-Type") or "").lower()
        etag = resp.headers.get("ETag")
        last_modified = resp.headers.get("Last-Modified")
        length_header = resp.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        try:
            head = resp.read(_CHUNK)
        except (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException) as exc:
            raise _Retry(f"connection lost before the first bytes: {exc!r}") from exc
        fresh = status != 206
        promised = magic is not None and fresh and head.startswith(magic[1])
        if not promised and ("html" in ctype or _looks_like_html(head)):
            try:
                body = head + resp.read(_PAGE_LIMIT)
            except (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException):
                body = head
            raise _html_answer(url, resp.geturl() or current, body, config_key)
        if magic is not None and fresh and not promised:
            raise SourceError(_not_format(url, magic[0], head, config_key))
        if status == 206:
            start, _, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at byte {start}, expected {offset}; restarting")
            mode = "ab"
            expected_total = total if total is not None else (
                offset + length if length is not None else None)
        else:  # 200: the whole body (Range unsupported, or the file changed)
            offset = 0
            mode = "wb"
            expected_total = length
        meta.update({"etag": etag, "last_modified": last_modified, "total": expected_total})
        meta_path.write_text(json.dumps(meta))
        written = offset
        try:
            with open(part, mode) as out:
                chunk = head
                while chunk:
                    out.write(chunk)
                    written += len(chunk)
                    chunk = resp.read(_CHUNK)
                out.flush()
                os.fsync(out.fileno())
        except (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException) as exc:
            raise _Retry(f"connection lost after {written} bytes: {exc!r}") from exc
        if expected_total is not None and written != expected_total:
            if written > expected_total:
                part.unlink(missing_ok=True)
                raise _Retry(f"received {written} bytes, more than the announced {expected_total}")
            raise _Retry(f"truncated: received {written} of {expected_total} bytes")


# --------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------
def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    """Refuse absolute names and ``..`` components; return the relative path."""
    if not name or "\x00" in name:
        raise SourceError(f"archive {archive} has a member with an empty or invalid name {name!r}")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise SourceError(f"archive {archive} has a member with an absolute path: {name!r}")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SourceError(f"archive {archive} has a member with a '..' component: {name!r}")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _link_stays_inside(base: PurePosixPath, target: str) -> bool:
    """Whether ``target`` (relative to folder ``base`` inside the root) stays inside."""
    if not target or target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        return False
    depth = 0
    for p in [*base.parts, *target.replace("\\", "/").split("/")]:
        if p in ("", "."):
            continue
        if p == "..":
            depth -= 1
            if depth < 0:
                return False
        else:
            depth += 1
    return True


_CORRUPT = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile,
            OSError, ValueError)


def _check_tar(tf: tarfile.TarFile, archive: Path) -> None:
    for m in tf.getmembers():
        rel = _check_member_name(m.name, archive)
        if m.isdev():  # char, block devices and fifos
            raise SourceError(f"archive {archive} has a device or fifo member: {m.name!r}")
        if m.issym():
            if not _link_stays_inside(rel.parent, m.linkname):
                raise SourceError(f"archive {archive} has a symlink leaving the target: "
                                  f"{m.name!r} -> {m.linkname!r}")
        elif m.islnk():
            _check_member_name(m.linkname, archive)
            if not _link_stays_inside(PurePosixPath("."), m.linkname):
                raise SourceError(f"archive {archive} has a hard link leaving the target: "
                                  f"{m.name!r} -> {m.linkname!r}")
        elif not (m.isfile() or m.isdir()):
            raise SourceError(f"archive {archive} has an unsupported member type "
                              f"{m.type!r}: {m.name!r}")


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> None:
    for info in zf.infolist():
        rel = _check_member_name(info.filename, archive)
        mode = info.external_attr >> 16
        if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)
                     or stat.S_ISSOCK(mode)):
            raise SourceError(f"archive {archive} has a device or fifo member: {info.filename!r}")
        if mode and stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            if not _link_stays_inside(rel.parent, target):
                raise SourceError(f"archive {archive} has a symlink leaving the target: "
                                  f"{info.filename!r} -> {target!r}")
    bad = zf.testzip()  # reads every member and checks its CRC
    if bad is not None:
        raise SourceError(f"archive {archive} is corrupt: bad CRC in member {bad!r}")


def _check_tree(root: Path, archive: Path) -> None:
    """After extraction: no link anywhere in ``root`` may resolve outside it."""
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in (*dirnames, *filenames):
            p = Path(dirpath) / n
            if p.is_symlink():
                target = p.resolve()
                if target != real_root and real_root not in target.parents:
                    raise SourceError(f"archive {archive} produced a link leaving the target: {p}")


def extract(archive: Path, target_dir: Path) -> Path:
    """Safely extract a tar(.gz/.bz2/.xz) or zip ``archive`` into ``target_dir``.

    Every member is checked first (absolute paths, ``..`` components, links
    whose target leaves the folder and device files are refused with
    ``SourceError``); extraction goes to a temporary sibling folder which then
    replaces ``target_dir``.  On any failure, including a truncated or corrupt
    archive, the temporary folder is removed and a previous ``target_dir`` is
    left as it was.  Returns ``target_dir``.
    """
    archive = Path(archive)
    target_dir = Path(target_dir)
    if not archive.is_file():
        raise SourceError(f"archive {archive} does not exist")
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.extract-", dir=target_dir.parent))
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    _check_zip(zf, archive)
                    zf.extractall(tmp)
            else:
                try:
                    tf = tarfile.open(archive, "r:*")
                except tarfile.ReadError as exc:
                    raise SourceError(f"archive {archive} is not a readable tar or zip archive "
                                      f"(truncated or corrupt?): {exc}") from exc
                with tf:
                    _check_tar(tf, archive)
                    tf.extractall(tmp, filter="data")
        except SourceError:
            raise
        except tarfile.FilterError as exc:
            raise SourceError(f"archive {archive} has an unsafe member: {exc}") from exc
        except _CORRUPT as exc:
            raise SourceError(f"archive {archive} is truncated or corrupt, or could not be "
                              f"extracted: {exc!r}") from exc
        _check_tree(tmp, archive)
        replace_dir(tmp, target_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target_dir


