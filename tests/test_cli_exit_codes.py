"""Every CLI failure path of issue 14 item 6 prints ONE line on stderr (``error: ...``), no
traceback, and exits with the documented status 2 (README "CLI", docs/serving.md "CLI errors":
bad data, configuration, checkpoints and input -> one line, status 2; ``--debug`` shows the
traceback).  Before: eight of these printed a traceback and about fourteen exited with status 1.

In process through ``gmt_model.serving.cli.main`` on a small router trained once on the tiny demo
data; the read-only cases use a real read-only file (chmod, or ``chattr +i`` as root).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from gmt_model.serving.cli import main
from gmt_model.serving.feedback import FeedbackLog

EPOCHS = 2


@pytest.fixture(scope="module")
def env(tmp_path_factory, demo_paths, encoder_cache) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cli_exit")
    train = {
        "dataset": {"name": "demo", "path": str(root / "data")},
        "train": {"epochs": EPOCHS, "eval_every": EPOCHS, "prediction_count": 32, "seed": 1},
        "gmt_config": {"num_gnn_layers": 2, "hidden_dim": 16, "heads": 2, "predictor_dim": 16, "predictor_heads": 2},
        "checkpoint": {"root": str(root / "models"), "save_every": EPOCHS},
        "data_path": {"training_set": str(demo_paths["training"]), "valid_set": str(demo_paths["valid"]),
                      "test_set": str(demo_paths["test"])},
        "model_path": {"save_model_path": str(root / "saved" / "gmt.pt")},
    }
    out: dict[str, Any] = {"root": root}
    out["train"] = _yaml(root / "train.yaml", train)
    out["no_data"] = _yaml(root / "no_data.yaml", {**train, "data_path": {"training_set": str(root / "nowhere.jsonl")}})
    assert main(["train", "--config", str(out["train"]), "--device", "cpu", "--quiet", "--skip-test"]) == 0
    model = root / "saved" / "gmt"
    out["router"] = _yaml(root / "router.yaml", {"model_path": {"load_model_path": str(model)},
                                                 "router": {"device": "cpu", "feedback_log": str(root / "fb.sqlite")}})
    (root / "log_dir.sqlite").mkdir()
    out["router_dir_log"] = _yaml(root / "router_dir_log.yaml", {
        "model_path": {"load_model_path": str(model)},
        "router": {"device": "cpu", "feedback_log": str(root / "log_dir.sqlite")}})
    out["router_no_log"] = _yaml(root / "router_no_log.yaml", {"model_path": {"load_model_path": str(model)},
                                                               "router": {"device": "cpu"}})
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    from gmt_model.data.demo import LLMS

    out["router_dead_upstream"] = _yaml(root / "router_dead.yaml", {
        "model_path": {"load_model_path": str(model)}, "router": {"device": "cpu"},
        "endpoints": {m: {"base_url": f"http://127.0.0.1:{dead}/v1", "model": m} for m in LLMS}})
    out["latin1_yaml"] = root / "latin1.yaml"
    out["latin1_yaml"].write_bytes(b"model_path: {load_model_path: 'caf\xe9'}\n")
    out["latin1_jsonl"] = root / "latin1.jsonl"
    out["latin1_jsonl"].write_bytes(b'{"query_text": "ok"}\n{"query_text": "caf\xe9"}\n')
    out["bad_json"] = root / "bad.jsonl"
    out["bad_json"].write_text('{"query_text": "ok"}\n{"query_text": \n')
    out["not_object"] = root / "not_object.jsonl"
    out["not_object"].write_text('{"query_text": "ok"}\n[1, 2]\n')
    out["bad_turn"] = root / "bad_turn.jsonl"
    out["bad_turn"].write_text('{"query_text": "ok"}\n{"query_text": "hi", "turn": -3}\n')
    out["llm"] = LLMS[0]
    out["llm2"] = LLMS[1]
    return out


def _yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.contextmanager
def read_only(path: Path):
    """Make ``path`` really read-only (root ignores modes: chattr +i there), with its SQLite WAL when it
    exists (a write could otherwise go to the WAL alone; the -shm file stays: SQLite maps it)."""
    paths = [p for p in (path, Path(f"{path}-wal")) if p.exists()]
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        os.chmod(p, 0o444)
    immutable: list[Path] = []
    try:
        if os.access(path, os.W_OK):  # root
            for p in paths:
                proc = subprocess.run(["chattr", "+i", str(p)], capture_output=True)
                if proc.returncode != 0:
                    pytest.skip(f"cannot make {p} read-only here (root without chattr +i: {proc.stderr!r})")
                immutable.append(p)
        yield path
    finally:
        for p in immutable:
            subprocess.run(["chattr", "-i", str(p)], check=True)
        for p, mode in modes.items():
            os.chmod(p, mode)


def run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def feedback(e: dict, config: str, *extra: str) -> list:
    return ["feedback", "--config", e[config], "--user-id", "user_0001", "--query", "a fresh question 7", *extra]


# (id, argv builder, text the line must contain)
CASES: list[tuple[str, Callable[[dict], list], str]] = [
    ("train-device-cuda-without-gpu", lambda e: ["train", "--config", e["train"], "--device", "cuda", "--quiet"],
     "CUDA is not available"),
    ("train-device-bogus", lambda e: ["train", "--config", e["train"], "--device", "bogus", "--quiet"],
     "'bogus': not a device"),
    ("train-missing-training-set", lambda e: ["train", "--config", e["no_data"], "--quiet", "--device", "cpu"],
     "training set not found"),
    ("evaluate-split-nosuch", lambda e: ["evaluate", "--config", e["train"], "--split", "nosuch"],
     "--split 'nosuch': expected one of training, valid, test"),
    ("evaluate-output-is-a-folder", lambda e: ["evaluate", "--config", e["train"], "--output", e["root"]],
     "is a folder"),
    ("infer-feedback-log-is-a-folder", lambda e: ["infer", "--config", e["router_dir_log"], "--query", "hi",
                                                  "--route-only"], "router.feedback_log"),
    ("feedback-feedback-log-is-a-folder", lambda e: feedback(e, "router_dir_log", "--model", e["llm"], "--rating", "3"),
     "router.feedback_log"),
    ("infer-input-not-utf8", lambda e: ["infer", "--config", e["router"], "--input", e["latin1_jsonl"], "--route-only"],
     "latin1.jsonl:2: not UTF-8"),
    ("config-not-utf8", lambda e: ["infer", "--config", e["latin1_yaml"], "--query", "hi"], "latin1.yaml: not UTF-8"),
    ("infer-input-invalid-json", lambda e: ["infer", "--config", e["router"], "--input", e["bad_json"], "--route-only"],
     "bad.jsonl:2: invalid JSON"),
    ("infer-input-not-an-object", lambda e: ["infer", "--config", e["router"], "--input", e["not_object"],
                                             "--route-only"], "not_object.jsonl:2: expected an object"),
    ("infer-input-bad-field", lambda e: ["infer", "--config", e["router"], "--input", e["bad_turn"], "--route-only"],
     "bad_turn.jsonl:2:"),
    ("infer-empty-query", lambda e: ["infer", "--config", e["router"], "--query", " ", "--route-only"], "query"),
    ("infer-upstream-down", lambda e: ["infer", "--config", e["router_dead_upstream"], "--query", "hi"], "calling "),
    ("feedback-rating-and-pair", lambda e: feedback(e, "router", "--model", e["llm"], "--rating", "3",
                                                    "--preferred", e["llm"]), "not both"),
    ("feedback-rating-without-model", lambda e: feedback(e, "router", "--rating", "3"), "--model is required"),
    ("feedback-pair-without-rejected", lambda e: feedback(e, "router", "--preferred", e["llm"]),
     "--rejected is required"),
    ("feedback-without-log", lambda e: feedback(e, "router_no_log", "--model", e["llm"], "--rating", "3"),
     "feedback_log is not set"),
    ("feedback-unknown-model", lambda e: feedback(e, "router", "--model", "gpt-99", "--rating", "3"), "gpt-99"),
    ("feedback-same-pair", lambda e: feedback(e, "router", "--preferred", e["llm"], "--rejected", e["llm"]),
     "rejected"),
    ("serve-without-config-or-model", lambda e: ["serve"], "give --config"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_one_line_and_status_2(env, case):
    name, build, needle = case
    if name == "train-device-cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc, out, err = run(build(env))
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    assert "Traceback" not in err and needle in lines[0], lines[0]


def test_read_only_feedback_log(env):
    log = env["root"] / "fb.sqlite"
    with FeedbackLog(log) as fb:  # the log exists (as after a first feedback)
        before = fb.count()
    with read_only(log):
        rc, out, err = run(feedback(env, "router", "--model", env["llm"], "--rating", "3"))
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: the feedback log {log}: ") and "readonly" in lines[0], lines[0]
    assert "nothing was stored" in lines[0]
    with FeedbackLog(log) as fb:
        assert fb.count() == before


def test_read_only_embedding_cache(env, tmp_path, monkeypatch):
    """A read-only cache: one line, never a traceback.  Either the CLI stops (status 2) or, where the
    encoder goes on without caching, it routes (status 0) with at most one warning line."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GMTROUTER_CACHE_DIR", str(cache))
    assert run(["infer", "--config", env["router"], "--query", "warm the cache", "--route-only"])[0] == 0
    db = cache / "embeddings.sqlite"
    assert db.is_file()
    from gmt_model.data import encoder as enc

    monkeypatch.setattr(enc, "_ENCODERS", {})  # a new encoder object opens the (then read-only) file, as a new process
    with read_only(db):
        rc, out, err = run(["infer", "--config", env["router"], "--query", "a query never seen 42", "--route-only"])
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) <= 1, err
    if rc == 2:
        assert lines[0].startswith(f"error: the embedding cache {db}: ") and "readonly" in lines[0], lines[0]
    else:
        assert rc == 0 and json.loads(out)["model_name"], (rc, out, err)


def test_output_into_a_missing_folder_is_created_and_said(env, tmp_path):
    target = tmp_path / "new" / "folder" / "report.json"
    rc, out, err = run(["evaluate", "--config", env["train"], "--output", target, "--resamples", "5"])
    assert rc == 0 and target.is_file()
    assert f"note: created the folder {target.parent} for --output" in err
    # evaluation (~10 s on the demo) shows its progress: a bar from 0 to the last step
    bar = [part for part in err.replace("\r", "\n").splitlines() if part.startswith("evaluating (test)")]
    assert bar and " 0/12 " in bar[0] and "12/12" in bar[-1], err


def test_train_warning_is_one_line(env, tmp_path):
    """``train``'s warnings (here: users with fewer pairs than record_per_user) are one ``warning:`` line,
    without Python's source line, before the progress bar."""
    rc, out, err = run(["train", "--config", env["train"], "--device", "cpu", "--skip-test", "--out",
                        tmp_path / "run"])
    assert rc == 0, err
    lines = err.replace("\r", "\n").splitlines()
    warn = [i for i, line in enumerate(lines) if "record_per_user" in line]
    assert len(warn) == 1 and lines[warn[0]].startswith("warning: ") and "UserWarning" not in err, err
    assert "warnings.warn" not in err and "training.py" not in err
    assert warn[0] < min(i for i, line in enumerate(lines) if line.startswith("training:"))


def test_debug_shows_the_traceback(env):
    from gmt_model.errors import DeviceError

    with pytest.raises(DeviceError):
        main(["--debug", "train", "--config", str(env["train"]), "--device", "bogus"])
