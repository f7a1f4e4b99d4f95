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
