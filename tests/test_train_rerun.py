"""``gmtrouter train`` run again into the same folder does what it says.

* the same configuration after a success: "already trained (N epochs): use
  --no-resume to retrain", exit 0, nothing written;
* another ``lr``: one line naming ``--no-resume``, no traceback;
* after a kill: "resuming from epoch N" and the progress bar starts at N;
* ``--no-resume``: trains again from scratch.

In process (``gmt_model.serving.cli.main``) on a small planted dataset, few epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import planted_records, write_records
from gmt_model.serving.cli import main

EPOCHS = 8


def _config(root: Path, paths: dict[str, Path], **train: Any) -> Path:
    cfg = {
        "dataset": {"name": "planted", "path": str(root / "data")},
        "train": {"epochs": EPOCHS, "lr": 2e-3, "prediction_count": 32, "record_per_user": 4, "eval_every": 2,
                  "seed": 7, **train},
        "gmt_config": {"num_gnn_layers": 2, "hidden_dim": 16, "heads": 2, "predictor_dim": 16,
                       "predictor_heads": 2},
        "checkpoint": {"root": str(root / "models"), "save_every": 4},
        "data_path": {k + "_set": str(v) for k, v in paths.items()},
        "model_path": {"save_model_path": str(root / "saved" / "gmt.pt")},
    }
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _snapshot(folder: Path) -> dict[Path, tuple[int, bytes]]:
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    recs = planted_records(n_users=12, dim=8, groups_per_user=(10, 14), seed=1)
    return write_records(tmp_path_factory.mktemp("planted_small"), recs)


def _train(config: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["train", "--config", str(config), "--device", "cpu", "--skip-test", "--out", str(out), *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_rerun_after_success_says_already_trained(data, tmp_path, capsys):
    config = _config(tmp_path, data)
    rc, out, err = _train(config, tmp_path / "run", capsys, "--quiet")
    assert rc == 0 and '"best_epoch"' in out
    before = {d: _snapshot(tmp_path / d) for d in ("run", "saved")}
    rc, out, err = _train(config, tmp_path / "run", capsys, "--quiet")
    assert rc == 0
    assert f"already trained ({EPOCHS} epochs): use --no-resume to retrain" in err
    assert '"already_trained": true' in out
    assert {d: _snapshot(tmp_path / d) for d in ("run", "saved")} == before  # the result is untouched
    # --no-resume retrains from scratch
    rc, out, err = _train(config, tmp_path / "run", capsys)
    assert rc == 0 and "already trained" in err
    rc, out, err = _train(config, tmp_path / "run", capsys, "--no-resume")
    assert rc == 0 and "already trained" not in err and f"{EPOCHS}/{EPOCHS}" in err and "resuming" not in err
    assert _snapshot(tmp_path / "run") != before["run"]


def test_changed_lr_is_one_line_naming_no_resume(data, tmp_path, capsys):
    rc, *_ = _train(_config(tmp_path, data), tmp_path / "run", capsys, "--quiet")
    assert rc == 0
    before = _snapshot(tmp_path / "run")
    rc, out, err = _train(_config(tmp_path, data, lr=1e-2), tmp_path / "run", capsys, "--quiet")
    assert rc == 2 and len(err.splitlines()) == 1, err  # one line, exit status 2, no traceback
    msg = err.strip()
    assert msg.startswith("error: ") and "--no-resume" in msg and "train.lr: 0.002 -> 0.01" in msg
    assert str(tmp_path / "run" / "last") in msg
    assert "Traceback" not in err
    assert _snapshot(tmp_path / "run") == before
    rc, out, err = _train(_config(tmp_path, data, lr=1e-2), tmp_path / "run", capsys, "--quiet", "--no-resume")
    assert rc == 0 and '"best_epoch"' in out


def test_resumed_run_says_so_and_the_bar_starts_there(data, tmp_path, capsys):
    from gmt_model.method.config import load_train_config
    from gmt_model.data.graph_files import build_graph
    from gmt_model.method.training import train

    config = _config(tmp_path, data)
    cfg = load_train_config(config, {"device": "cpu"})

    class Killed(Exception):
        pass

    def kill_at_6(epoch: int, row: dict) -> None:
        if epoch == 6:
            raise Killed

    with pytest.raises(Killed):  # a run killed after its periodic checkpoint at epoch 4
        train(build_graph(cfg.split_paths(), relations=cfg.relations), cfg, tmp_path / "run", callback=kill_at_6)
    rc, out, err = _train(config, tmp_path / "run", capsys)
    assert rc == 0 and '"best_epoch"' in out
    assert "resuming from epoch 4" in err
    bar = [part for part in err.replace("\r", "\n").splitlines() if "training:" in part]
    assert bar and f" 4/{EPOCHS} " in bar[0], bar  # the bar starts at 4 ...
    assert f"{EPOCHS}/{EPOCHS}" in bar[-1] and not any(f" 0/{EPOCHS} " in b for b in bar)  # ... and ends at 8


def test_out_leaves_the_configured_model_alone(data, tmp_path, capsys):
    """``train --out DIR`` writes its model to DIR/best; the configured model and the default run's
    "already trained" answer stay as they were (issue 14: it used to overwrite the configured model)."""
    import json

    config = _config(tmp_path, data)
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--device", "cpu", "--skip-test", "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out)
    saved = tmp_path / "saved" / "gmt"
    assert first["model"] == str(saved)
    before = _snapshot(saved)
    rc, out, err = _train(config, tmp_path / "other", capsys, "--quiet", "--epochs", "2")
    assert rc == 0
    assert json.loads(out)["model"] == str(tmp_path / "other" / "best")
    assert (tmp_path / "other" / "best" / "config.json").exists()
    assert _snapshot(saved) == before  # the configured model is untouched
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--device", "cpu", "--skip-test", "--quiet"]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert again["already_trained"] and again["epochs"] == EPOCHS and again["best_epoch"] == first["best_epoch"]
    assert "note:" not in captured.err and _snapshot(saved) == before
