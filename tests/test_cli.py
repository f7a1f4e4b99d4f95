"""The ``gmtrouter`` command line end to end on the tiny demo dataset.

``gmtrouter train`` runs once per module as a real subprocess (the seed's
config keys, ``--quiet``, ``--device cpu``); the other verbs run in-process
through ``gmt_model.serving.cli.main`` (one more subprocess checks a real non-zero
exit status).  ``infer`` without ``--route-only`` calls a fake
OpenAI-compatible upstream served by uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gmt_model.method import schema as S
from gmt_model.method.checkpoint import load_checkpoint
from gmt_model.serving.cli import main
from gmt_model.data.demo import LLMS
from gmt_model.serving.feedback import FeedbackLog
from servers import ServerThread, TenantUpstream as Upstream

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 8
API_KEY = "sk-cli-test-SECRET-9e1f"
KEY_ENV = "GMT_CLI_TEST_KEY"


# ---------------------------------------------------------------------------
# fake OpenAI-compatible upstream (one tenant per LLM name)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream():
    up = Upstream()
    with ServerThread(up.app) as srv:
        up.url = srv.url
        yield up


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _env(encoder_cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"GMTROUTER_CACHE_DIR": str(encoder_cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)})
    return env


def _cli(args: list[str], cwd: Path, encoder_cache: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gmt_model.serving.cli", *args], cwd=cwd, env=_env(encoder_cache),
                          capture_output=True, text=True, timeout=timeout)


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _train_config(root: Path, demo_paths: dict[str, Path], training_set: Path | None = None) -> dict[str, Any]:
    """A seed-style training config (every section of the seed) with small dimensions."""
    return {
        "dataset": {"name": "demo", "path": str(root / "data")},
        "train": {"epochs": EPOCHS, "lr": 2e-3, "prediction_count": 128, "objective": "auc", "binary": True,
                  "eval_every": EPOCHS, "seed": 7},
        "gmt_config": {"num_gnn_layers": 2, "hidden_dim": 32, "dropout": 0.1, "personalization": True,
                       "heads": 2, "predictor_dim": 32, "predictor_heads": 2},
        "checkpoint": {"root": str(root / "models"), "save_every": EPOCHS},
        "data_path": {"training_set": str(training_set or demo_paths[S.SPLIT_TRAIN]),
                      "valid_set": str(demo_paths[S.SPLIT_VALID]), "test_set": str(demo_paths[S.SPLIT_TEST])},
        # relative, as in the seed: resolved against the working directory
        "model_path": {"save_model_path": "saved_models/gmtrouter/gmtrouter.pt",
                       "load_model_path": "saved_models/gmtrouter/gmtrouter.pt"},
    }


def _router_config(path: Path, model_pt: Path, feedback: Path, endpoints: dict[str, Any] | None = None) -> Path:
    return _write_yaml(path, {"model_path": {"load_model_path": str(model_pt)},
                              "router": {"device": "cpu", "feedback_log": str(feedback)},
                              "endpoints": endpoints or {}})


def _run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(args) == 0
    return capsys.readouterr().out


def _exit_message(args: list[str]) -> str:
    """Run a verb that must fail with status 2 and one ``error:`` line on stderr; return that line."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args)
    assert rc == 2, (rc, err.getvalue())
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
    return lines[0]


def _demo_history(train_path: Path) -> dict[str, int]:
    """Training interactions per user, counted from the JSONL (one per conversation step)."""
    out: dict[str, int] = {}
    for line in train_path.read_text().splitlines():
        rec = json.loads(line)
        out[rec[S.F_JUDGE]] = out.get(rec[S.F_JUDGE], 0) + len(rec[S.F_CONVERSATION])
    return out


def _demo_query(train_path: Path) -> str:
    return json.loads(train_path.read_text().splitlines()[0])[S.F_CONVERSATION][0][S.F_QUERY]


# ---------------------------------------------------------------------------
# train once (subprocess)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_paths, encoder_cache) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("cli_train")
    cfg = _write_yaml(work / "train.yaml", _train_config(work, demo_paths))
    t0 = time.perf_counter()
    proc = _cli(["train", "--config", str(cfg), "--quiet", "--device", "cpu", "--resamples", "20"], work, encoder_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"work": work, "config": cfg, "proc": proc, "seconds": time.perf_counter() - t0,
            "model_pt": work / "saved_models" / "gmtrouter" / "gmtrouter.pt",
            "model_dir": work / "saved_models" / "gmtrouter" / "gmtrouter"}


@pytest.fixture
def route_yaml(trained, tmp_path) -> Path:
    return _router_config(tmp_path / "test.yaml", trained["model_pt"], tmp_path / "feedback.sqlite")


def test_train_writes_checkpoint_folder_and_prints_json(trained, demo_paths):
    proc = trained["proc"]
    summary = json.loads(proc.stdout)  # --quiet: stdout is exactly the JSON summary
    assert "GMTRouter Training" not in proc.stderr and "training:" not in proc.stderr  # no banner, no progress bar
    model_dir = trained["model_dir"]
    assert summary["model"] == str(model_dir)
    assert model_dir.is_dir() and not trained["model_pt"].exists()  # the .pt suffix names a folder without it
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert summary["device"] == "cpu"
    assert 0.0 <= summary["test_auc"] <= 1.0 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert 1 <= summary["best_epoch"] <= EPOCHS
    ck = load_checkpoint(model_dir)
    assert sorted(ck.llms) == sorted(LLMS)
    assert ck.model.cfg.hidden_dim == 32 and ck.model.cfg.num_gnn_layers == 2  # the config's gmt_config was used
    assert set(ck.users) == set(_demo_history(demo_paths[S.SPLIT_TRAIN]))


def test_train_with_missing_training_set_names_the_path(tmp_path, demo_paths):
    missing = tmp_path / "nowhere" / "training_set.jsonl"
    cfg = _write_yaml(tmp_path / "train.yaml", _train_config(tmp_path, demo_paths, training_set=missing))
    msg = _exit_message(["train", "--config", str(cfg), "--quiet", "--device", "cpu"])
    assert str(missing) in msg and "training set not found" in msg
    assert not (tmp_path / "models").exists()


def test_infer_route_only_prints_routing_json(trained, route_yaml, demo_paths, capsys):
    train_path = demo_paths[S.SPLIT_TRAIN]
    history = _demo_history(train_path)
    user = sorted(history)[0]
    query = "Explain entropy to a first-year university student."
    out = json.loads(_run_main(["infer", "--config", str(route_yaml), "--query", query, "--route-only",
                                "--user-id", user], capsys))
    assert {"query", "user_id", "model_name", "confidence", "user_preference", "scores", "reasoning"} <= set(out)
    assert out["query"] == query and out["user_id"] == user
    assert set(out["scores"]) == set(LLMS) and sum(out["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert out["model_name"] == max(out["scores"], key=out["scores"].get)
    assert out["confidence"] == pytest.approx(out["scores"][out["model_name"]], abs=1e-6)
    assert 0.0 <= out["user_preference"] <= 1.0
    assert "response" not in out  # route only: no model was called
    # the user's stored training history personalises the route
    assert out["cold_start"] is False and out["history_size"] == history[user] and user in out["reasoning"]
    cold = json.loads(_run_main(["infer", "--config", str(route_yaml), "--query", query, "--route-only",
                                 "--user-id", "brand-new-user"], capsys))
    assert cold["cold_start"] is True and "Cold start" in cold["reasoning"] and cold["history_size"] == 0
    assert cold["scores"] != out["scores"]


def test_infer_input_file_writes_one_result_per_line(trained, route_yaml, tmp_path, demo_paths, capsys):
    user = sorted(_demo_history(demo_paths[S.SPLIT_TRAIN]))[1]
    lines = [
        json.dumps({"query_text": "Write a haiku about autumn.", "user_id": user}),
        "",  # blank lines are skipped
        json.dumps({"query": "How do I reverse a linked list in Python?", "user_id": "someone-else",
                    "candidates": ["gpt-4o", "mistral-large"]}),
        json.dumps("What is the capital of Australia?"),  # a bare string: --user-id applies
    ]
    src = tmp_path / "queries.jsonl"
    src.write_text("\n".join(lines) + "\n")
    dst = tmp_path / "results.json"
    out = _run_main(["infer", "--config", str(route_yaml), "--input", str(src), "--output", str(dst),
                     "--route-only", "--user-id", "default-user"], capsys)
    assert "wrote 3 result(s)" in out
    results = json.loads(dst.read_text())
    assert [r["query"] for r in results] == ["Write a haiku about autumn.", "How do I reverse a linked list in Python?",
                                              "What is the capital of Australia?"]
    assert [r["user_id"] for r in results] == [user, "someone-else", "default-user"]
    assert set(results[1]["scores"]) == {"gpt-4o", "mistral-large"} and results[1]["model_name"] in results[1]["scores"]
    assert results[0]["cold_start"] is False and results[2]["cold_start"] is True
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "tmp" in p.name]  # no temp left


@pytest.mark.parametrize("bad, expected", [
    ("{not json", "invalid JSON"),
    ("42", "expected an object"),
])
def test_infer_input_file_bad_line_names_file_and_line(trained, route_yaml, tmp_path, bad, expected):
    src = tmp_path / "queries.jsonl"
    src.write_text(json.dumps({"query_text": "fine", "user_id": "u1"}) + "\n\n" + bad + "\n")
    dst = tmp_path / "results.json"
    msg = _exit_message(["infer", "--config", str(route_yaml), "--input", str(src), "--output", str(dst),
                         "--route-only"])
    assert f"{src}:3" in msg and expected in msg
    assert not dst.exists()


def test_infer_calls_the_chosen_models_endpoint(trained, tmp_path, upstream, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    endpoints = {m: {"base_url": f"{upstream.url}/{m}/v1", "model": f"{m}-upstream", "api_key_env": KEY_ENV}
                 for m in LLMS}
    cfg = _router_config(tmp_path / "test.yaml", trained["model_pt"], tmp_path / "fb.sqlite", endpoints)
    query = "Give me three tips for a job interview."
    n_before = len(upstream.requests)
    routed = json.loads(_run_main(["infer", "--config", str(cfg), "--query", query, "--route-only",
                                   "--user-id", "interviewee"], capsys))
    assert "response" not in routed
    assert len(upstream.requests) == n_before  # --route-only calls nothing
    # without it the chosen model's endpoint answers
    text = _run_main(["infer", "--config", str(cfg), "--query", query, "--user-id", "interviewee"], capsys)
    out = json.loads(text)
    chosen = out["model_name"]
    assert chosen == routed["model_name"]
    assert out["response"] == f"{chosen} answers: {query}"
    new = upstream.requests[n_before:]
    assert len(new) == 1 and new[0]["tenant"] == chosen
    assert new[0]["body"]["model"] == f"{chosen}-upstream"
    assert new[0]["body"]["messages"] == [{"role": "user", "content": query}]
    assert new[0]["auth"] == f"Bearer {API_KEY}"
    assert API_KEY not in text
    # an endpoint only for another model: the chosen one has none, so infer only routes
    other = next(m for m in LLMS if m != chosen)
    cfg2 = _router_config(tmp_path / "test2.yaml", trained["model_pt"], tmp_path / "fb.sqlite",
                          {other: endpoints[other]})
    out2 = json.loads(_run_main(["infer", "--config", str(cfg2), "--query", query, "--user-id", "interviewee"], capsys))
    assert out2["model_name"] == chosen and out2["response"] is None and chosen in out2["note"]
    assert len(upstream.requests) == n_before + 1


def test_feedback_appends_to_the_log(trained, route_yaml, tmp_path, capsys):
    lo, hi = load_checkpoint(trained["model_dir"]).rating_scale
    fb_path = tmp_path / "feedback.sqlite"
    args = ["feedback", "--config", str(route_yaml), "--user-id", "carol", "--query", "Summarise War and Peace.",
            "--model", "claude-3-5-sonnet", "--rating", str(hi), "--session-id", "s-1"]
    res = json.loads(_run_main(args, capsys))
    assert res["user_id"] == "carol" and res["model"] == "claude-3-5-sonnet" and res["rating"] == hi
    assert res["history_size"] == 1
    res2 = json.loads(_run_main(args[:-4] + ["--model", "gpt-4o", "--rating", str(lo)], capsys))
    assert res2["rating"] == lo
    recs = FeedbackLog(fb_path).read()
    assert [(r.user_id, r.query, r.model, r.rating, r.session_id) for r in recs] == [
        ("carol", "Summarise War and Peace.", "claude-3-5-sonnet", hi, "s-1"),
        ("carol", "Summarise War and Peace.", "gpt-4o", lo, None),
    ]
    # bad input: a message, nothing stored
    msg = _exit_message(args[:-2] + ["--model", "gpt-99"])
    assert "gpt-99" in msg and "model" in msg
    assert FeedbackLog(fb_path).count() == 2


def test_feedback_out_of_scale_rating_exits_nonzero(trained, route_yaml, tmp_path, encoder_cache):
    lo, hi = load_checkpoint(trained["model_dir"]).rating_scale
    fb_path = tmp_path / "feedback.sqlite"
    proc = _cli(["feedback", "--config", str(route_yaml), "--user-id", "dave", "--query", "Hello there",
                 "--model", "gpt-4o", "--rating", str(hi + 1)], tmp_path, encoder_cache)
    assert proc.returncode != 0
    assert "rating" in proc.stderr and "outside the rating scale" in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.strip() == ""
    assert not fb_path.exists() or FeedbackLog(fb_path).count() == 0


def test_feedback_without_a_log_is_refused(trained, tmp_path):
    cfg = _write_yaml(tmp_path / "nolog.yaml", {"model_path": {"load_model_path": str(trained["model_pt"])},
                                                "router": {"device": "cpu"}})
    msg = _exit_message(["feedback", "--config", str(cfg), "--user-id", "erin", "--query", "Hi",
                         "--model", "gpt-4o", "--rating", "3"])
    assert "feedback_log" in msg and str(cfg) in msg


def test_infer_without_endpoints_says_it_only_routed(trained, route_yaml, capsys):
    capsys.readouterr()
    assert main(["infer", "--config", str(route_yaml), "--query", "Plan a picnic.", "--user-id", "gus"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["model_name"] in LLMS and out["response"] is None
    assert "routed only" in out["note"] and "endpoints" in out["note"] and str(route_yaml) in out["note"]
    assert cap.err.startswith("note: routed only")
    capsys.readouterr()
    out = json.loads(_run_main(["infer", "--config", str(route_yaml), "--query", "Plan a picnic.", "--route-only"],
                               capsys))
    assert "note" not in out and "response" not in out  # --route-only asked for exactly that


def test_feedback_pairwise_and_turn(trained, route_yaml, tmp_path, capsys):
    from gmt_model.serving.router import GMTRouter

    if not hasattr(GMTRouter, "update_user_preference"):
        pytest.skip("GMTRouter.update_user_preference has not landed yet")
    lo, hi = load_checkpoint(trained["model_dir"]).rating_scale
    fb_path = tmp_path / "feedback.sqlite"
    base = ["feedback", "--config", str(route_yaml), "--user-id", "fay", "--query", "Plan a picnic.",
            "--session-id", "s-9", "--turn", "2"]
    res = json.loads(_run_main(base + ["--preferred", "gpt-4o", "--rejected", "mistral-large"], capsys))
    assert res["preferred"] == "gpt-4o" and res["rejected"] == "mistral-large" and len(res["feedback_ids"]) == 2
    recs = FeedbackLog(fb_path).read()
    assert [(r.id, r.model, r.rating, r.session_id, r.turn) for r in recs] == [
        (res["feedback_ids"][0], "gpt-4o", hi, "s-9", 2), (res["feedback_ids"][1], "mistral-large", lo, "s-9", 2)]
    rated = json.loads(_run_main(base + ["--model", "gpt-4o", "--rating", str(lo)], capsys))
    assert rated["feedback_id"] == FeedbackLog(fb_path).max_id() and FeedbackLog(fb_path).read()[-1].turn == 2
    # bad: both forms, half a pair, the same model twice, an unknown one: one message, nothing stored
    n = FeedbackLog(fb_path).count()
    for extra, needle in (
        (["--preferred", "gpt-4o", "--rejected", "mistral-large", "--model", "gpt-4o", "--rating", "3"], "not both"),
        (["--preferred", "gpt-4o"], "--rejected"),
        (["--preferred", "gpt-4o", "--rejected", "gpt-4o"], "rejected"),
        (["--preferred", "gpt-99", "--rejected", "gpt-4o"], "gpt-99"),
        ([], "--preferred"),
    ):
        msg = _exit_message(base + extra)
        assert msg.startswith("error: ") and needle in msg, (extra, msg)
    assert FeedbackLog(fb_path).count() == n
