"""Errors a person can read (issue 9 item 7): every ``gmtrouter`` verb prints one line and exits
non-zero for bad data, configuration, checkpoints and input; ``--debug`` shows the traceback.

Most cases run in-process through ``gmt_model.serving.cli.main`` (fast); one runs the real
command in a subprocess, where nothing else may reach stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import planted_records, write_records
from gmt_model.serving import cli
from gmt_model.serving.cli import main
from test_server_reload import tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_errors")
    paths = write_records(root / "data", planted_records(n_users=6, groups_per_user=(3, 5)))
    out: dict[str, Path] = {}
    # a truncated last line (a write cut short)
    lines = paths["training"].read_text().splitlines()
    truncated = root / "truncated.jsonl"
    truncated.write_text("\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 2]]) + "\n")
    out["truncated_line"] = len(lines)
    # a NaN rating on line 2 (Python's json writes NaN)
    rows = [json.loads(line) for line in lines]
    rows[1]["conversation"][0]["rating"] = float("nan")
    nan = root / "nan.jsonl"
    nan.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name, training in (("truncated", truncated), ("nan", nan)):
        cfg = {"dataset": {"name": "x", "path": str(root)}, "train": {"epochs": 2},
               "checkpoint": {"root": str(root / "models")},
               "data_path": {"training_set": str(training), "valid_set": str(paths["valid"]),
                             "test_set": str(paths["test"])}}
        out[f"{name}_yaml"] = root / f"{name}.yaml"
        out[f"{name}_yaml"].write_text(yaml.safe_dump(cfg))
        out[name] = training
    # a tampered checkpoint: one byte of the weights changed
    ckpt = tiny_checkpoint(root / "ckpt", seed=41)
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    out["ckpt"] = ckpt
    out["router_yaml"] = root / "router.yaml"
    out["router_yaml"].write_text(yaml.safe_dump({"model_path": {"load_model_path": str(ckpt)},
                                                  "router": {"device": "cpu"}}))
    good = tiny_checkpoint(root / "good", seed=42)
    out["good_yaml"] = root / "good.yaml"
    out["good_yaml"].write_text(yaml.safe_dump({"model_path": {"load_model_path": str(good)},
                                                "router": {"device": "cpu"}}))
    out["root"] = root
    return out


def one_error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run main(args): it must return non-zero and print exactly one stderr line; return that line."""
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    assert rc != 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_truncated_jsonl_line(files, capsys):
    line = one_error_line(["train", "--config", str(files["truncated_yaml"]), "--quiet", "--device", "cpu"], capsys)
    assert f"{files['truncated']}:{files['truncated_line']}:" in line and "JSON" in line


def test_nan_rating(files, capsys):
    line = one_error_line(["train", "--config", str(files["nan_yaml"]), "--quiet", "--device", "cpu"], capsys)
    assert f"{files['nan']}:2:" in line and "conversation[0].rating" in line and "finite" in line


def test_tampered_checkpoint(files, capsys):
    for args in (["infer", "--config", str(files["router_yaml"]), "--query", "hi", "--route-only"],
                 ["evaluate", "--config", str(files["truncated_yaml"]), "--checkpoint", str(files["ckpt"])]):
        line = one_error_line(args, capsys)
        assert str(files["ckpt"] / "model.safetensors") in line and "modified" in line


def test_bad_config_and_serve_settings(files, capsys, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model_path: {load_model_path: [unclosed\n")
    line = one_error_line(["infer", "--config", str(bad_yaml), "--query", "hi"], capsys)
    assert str(bad_yaml) in line and "YAML" in line
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"short": "alice"}))
    line = one_error_line(["serve", "--config", str(files["good_yaml"]), "--api-keys", str(keys)], capsys)
    assert str(keys) in line and "16 characters" in line and "short" not in line.replace("16 characters", "")
    line = one_error_line(["serve", "--model", str(tmp_path / "no-such-model")], capsys)
    assert str(tmp_path / "no-such-model" / "config.json") in line
    line = one_error_line(["serve", "--config", str(files["good_yaml"]), "--reload-interval", "-5"], capsys)
    assert "reload interval" in line


@pytest.mark.parametrize("module, cls, make", [
    ("gmt_model.data.sources", "SourceError", lambda c: c("https://example.invalid/x.zip: HTTP 404 (not there)")),
    ("gmt_model.errors", "RoutingError", lambda c: c("field 'rating': expected a finite number, got nan")),
    ("gmt_model.method.config", "ConfigError", lambda c: c("train.yaml: train.epochs: expected int,\n got 'ten'")),
])
def test_every_readable_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys, module, cls, make):
    import importlib

    exc_type = getattr(importlib.import_module(module), cls)

    def fail(args):  # any verb: here demo
        raise make(exc_type)

    monkeypatch.setattr(cli, "_demo", fail)
    line = one_error_line(["demo"], capsys)
    assert line == "error: " + " | ".join(p.strip() for p in str(make(exc_type)).splitlines())
    with pytest.raises(exc_type):
        main(["demo", "--debug"])
    with pytest.raises(exc_type):
        main(["--debug", "demo"])


def test_a_bug_still_shows_its_traceback(monkeypatch):
    def bug(args):
        raise KeyError("not a user error")

    monkeypatch.setattr(cli, "_demo", bug)
    with pytest.raises(KeyError):
        main(["demo"])


def test_real_command_prints_one_line(files):
    """A subprocess: nothing else (warnings, logging) reaches stderr. (--debug is checked in-process above.)"""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    args = [sys.executable, "-m", "gmt_model.serving.cli", "infer", "--config", str(files["router_yaml"]), "--query", "hi",
            "--route-only"]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=240, cwd=files["root"])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: "), proc.stderr
    assert "model.safetensors" in proc.stderr and "Traceback" not in proc.stderr
