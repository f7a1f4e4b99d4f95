"""Atomic writes, the one implementation: build in a temporary sibling, then rename over the target.

Also the file helpers every layer shares: :func:`file_sha256` (the one file digest) and
:func:`copy_dir_atomic` (the one routine that copies a folder into place).

Readers see the old file (or folder) or the new one, never half of one; on an
error the target is untouched and no temporary file remains.  Files are
fsynced before the rename unless ``fsync=False``.  A new file gets the mode
a plain ``open()`` would give it (``0o666`` less the umask); a replaced file
keeps its mode.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_file", "atomic_path", "write_text_atomic", "write_lines_atomic", "copy_file_atomic",
           "replace_dir", "copy_tree", "copy_dir_atomic", "file_sha256"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_umask()


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        return _NEW_FILE_MODE


def _tmp_sibling(target: Path, suffix: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    return Path(tmp)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = ".tmp", fsync: bool = True) -> Iterator[Path]:
    """A temporary sibling path for a writer that wants a file name (``pq.write_table``,
    ``savefig``); renamed over ``path`` when the block succeeds, removed when it fails."""
    target = Path(path)
    mode = _mode_for(target)
    tmp = _tmp_sibling(target, suffix)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", *, suffix: str = ".tmp", fsync: bool = True,
                **open_kw: Any) -> Iterator[IO[Any]]:
    """An open handle on a temporary sibling of ``path`` (``mode`` ``"w"`` or ``"wb"``; text
    defaults to UTF-8), renamed over ``path`` when the block succeeds."""
    if "b" not in mode:
        open_kw.setdefault("encoding", "utf-8")
    with atomic_path(path, suffix=suffix, fsync=False) as tmp:
        with open(tmp, mode, **open_kw) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_file(path, "w") as fh:
        fh.write(text)
    return Path(path)


def write_lines_atomic(path: str | os.PathLike[str], lines: Iterable[str]) -> int:
    """Write ``lines`` (each followed by ``\\n``) to ``path`` atomically; returns the number written."""
    n = 0
    with atomic_file(path, "w", newline="\n") as fh:
        for line in lines:
            fh.write(line)
            fh.write("\n")
            n += 1
    return n


def copy_file_atomic(src: str | os.PathLike[str], dest: str | os.PathLike[str], *, suffix: str = ".tmp",
                     check: Any = None) -> Path:
    """Copy ``src`` to ``dest`` atomically; ``check(tmp_path)`` may inspect the copy (and raise)
    before it replaces ``dest``."""
    with atomic_file(dest, "wb", suffix=suffix) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)
        if check is not None:
            out.flush()
            check(Path(out.name))
    return Path(dest)


def replace_dir(new: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Replace folder ``target`` by the finished folder ``new`` (one rename each way);
    if the second rename fails the old folder is put back."""
    new, target = Path(new), Path(target)
    if not target.exists() and not target.is_symlink():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def copy_tree(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy folder ``src`` to ``dst`` (which must not exist; no symlinks followed), every file fsynced."""
    src_p, dst_p = Path(src), Path(dst)
    if not src_p.is_dir():
        raise FileNotFoundError(f"{src_p}: folder to copy does not exist")
    shutil.copytree(src_p, dst_p, symlinks=False)
    for dirpath, _dirs, files in os.walk(dst_p):
        for name in files:
            _fsync_file(Path(dirpath) / name)
    return dst_p


def copy_dir_atomic(src: str | os.PathLike[str], target: str | os.PathLike[str], *,
                    prepare: Any = None) -> Path:
    """Copy folder ``src`` into place at ``target``: a fsynced copy in a hidden sibling, ``prepare(tmp)``
    (may add files, e.g. a manifest, or raise), then :func:`replace_dir`.  On any error ``target`` is
    untouched and the copy is removed."""
    target_p = Path(target)
    target_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = target_p.with_name(f".{target_p.name}.copy-{uuid.uuid4().hex[:12]}")
    try:
        copy_tree(src, tmp)
        if prepare is not None:
            prepare(tmp)
        os.chmod(tmp, 0o755)
        replace_dir(tmp, target_p)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target_p


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (the one file digest of the project)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
