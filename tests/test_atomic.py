"""gmt_model.atomic: the one atomic writer (temp sibling + rename; nothing half-written, nothing left over)."""

from __future__ import annotations

import os
import stat

import pytest

from gmt_model.atomic import atomic_file, atomic_path, copy_file_atomic, replace_dir, write_lines_atomic, \
    write_text_atomic


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_replaces_and_keeps_the_mode(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    write_text_atomic(target, "one")
    assert target.read_text() == "one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()  # a plain open()'s mode, not mkstemp's 0600
    os.chmod(target, 0o640)
    assert write_lines_atomic(target, ["x", "y"]) == 2
    assert target.read_text() == "x\ny\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _leftovers(target.parent) == []


def _umask():
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_a_failing_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as fh:
            fh.write("half")
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with atomic_path(target, suffix=".png") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")

    def refuse(tmp):
        assert tmp.read_bytes() == b"new"  # the check sees the whole copy
        raise ValueError("bad digest")

    src = tmp_path / "src"
    src.write_bytes(b"new")
    with pytest.raises(ValueError):
        copy_file_atomic(src, target, check=refuse)
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []
    copy_file_atomic(src, target)
    assert target.read_bytes() == b"new"


def test_replace_dir_swaps_and_puts_the_old_folder_back_on_failure(tmp_path, monkeypatch):
    target, new = tmp_path / "t", tmp_path / "n"
    target.mkdir()
    (target / "f").write_text("old")
    new.mkdir()
    (new / "f").write_text("new")
    replace_dir(new, target)
    assert (target / "f").read_text() == "new" and not new.exists() and _leftovers(tmp_path) == []

    new.mkdir()
    real = os.replace
    calls = []

    def flaky(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError("disk gone")
        return real(a, b)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        replace_dir(new, target)
    monkeypatch.setattr(os, "replace", real)
    assert (target / "f").read_text() == "new" and _leftovers(tmp_path) == []


def test_copy_dir_atomic_puts_a_complete_copy_in_place_or_nothing(tmp_path):
    from gmt_model.atomic import copy_dir_atomic

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a" * 10)
    (src / "sub" / "b.txt").write_text("b")
    target = tmp_path / "out" / "current"
    copy_dir_atomic(src, target, prepare=lambda tmp: (tmp / "manifest.json").write_text("{}"))
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "a.bin", "manifest.json", "sub", "sub/b.txt"]
    # a failing prepare (or copy) leaves the old folder exactly as it was, and no temporary folder
    (src / "a.bin").write_bytes(b"changed")

    def refuse(tmp):
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        copy_dir_atomic(src, target, prepare=refuse)
    assert (target / "a.bin").read_bytes() == b"a" * 10 and (target / "manifest.json").is_file()
    assert _leftovers(target.parent) == []
    copy_dir_atomic(src, target)
    assert (target / "a.bin").read_bytes() == b"changed" and not (target / "manifest.json").exists()


def test_one_file_digest_for_the_whole_project(tmp_path):
    """The library's four file-sha256 helpers are one function (gmt_model.atomic.file_sha256)."""
    import hashlib

    from gmt_model.atomic import file_sha256
    from gmt_model.data import columnar, encoder, sources
    from gmt_model.method import checkpoint

    p = tmp_path / "f"
    p.write_bytes(os.urandom(3 << 20))
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    assert columnar.file_sha256 is sources.sha256_file is checkpoint.file_sha256 is encoder._file_sha256 is file_sha256
