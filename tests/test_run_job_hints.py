"""``python -m pipelines.run_job``'s "where to look" lines run as printed from a fresh shell
(issue 14: they said ``dagster-webserver`` and ``mlflow``, which are not on a fresh shell's PATH)."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.run_job import _venv_command

REPO = Path(__file__).resolve().parents[1]


def test_where_to_look_commands_run_from_a_fresh_shell(monkeypatch):
    monkeypatch.chdir(REPO)
    for name in ("dagster-webserver", "mlflow"):
        cmd = _venv_command(name)
        assert cmd == f".venv/bin/{name}"  # needs no PATH (the README's table runs these, see test_docs_commands)
        assert os.access(REPO / cmd, os.X_OK)


def test_select_names_an_unknown_asset_in_one_line(monkeypatch, tmp_path, capsys):
    """``--select`` takes only the job's own asset keys; anything else: one line naming them, exit 2."""
    from pipelines.run_job import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("GMTROUTER_HOME", str(tmp_path / "home"))
    assert main(["train_demo", "--select", "demo/trained_model,demo/nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "demo/nope" in err and "demo/trained_model" in err, err
    assert "Traceback" not in err
