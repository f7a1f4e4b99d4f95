"""``gmtrouter chat --terminal`` offline (no endpoints): each line is routed, the decision shown
(model, scores, reasoning), the choice rated, and the next route of the same message follows the
rating (issue 14: the offline demo's chat could neither answer nor show or rate a decision).

A real GMTRouter (tiny checkpoint, deterministic hash encoder) with a durable feedback log; stdin is
the user's typing."""

from __future__ import annotations

import io
from pathlib import Path

import yaml

from gmt_model.serving import cli
from gmt_model.serving.feedback import FeedbackLog
from test_server_reload import tiny_checkpoint, tiny_router


def test_terminal_chat_routes_rates_and_the_next_route_changes(tmp_path: Path, monkeypatch, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", seed=3)
    log = tmp_path / "feedback.sqlite"
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({"model_path": {"load_model_path": str(ckpt)},
                                      "router": {"device": "cpu", "feedback_log": str(log)}, "endpoints": {}}))
    monkeypatch.setattr(cli, "_router", lambda args: tiny_router(ckpt, log))  # the hash encoder instead of MiniLM
    typed = "write a poem about the sea\n\n/again\n1\n/again\n\n/quit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(typed))
    assert cli.main(["chat", "--terminal", "--config", str(config), "--user-id", "user_0001"]) == 0
    out = capsys.readouterr().out
    assert "route only (no endpoints configured)" in out
    routes = [line for line in out.splitlines() if "routed to " in line]
    assert len(routes) == 3, out
    first = routes[0].split("routed to ")[1].split()[0]
    assert routes[1].split("routed to ")[1].split()[0] == first and "changed" not in routes[1]  # no rating yet
    third = routes[2].split("routed to ")[1].split()[0]
    assert third != first and f"[changed after your rating, was {first}]" in routes[2], out
    assert "since your rating" in out and "Selected based on user user_0001's learned preferences" in out
    assert f"rated {first} 1/5 (feedback log row 1)" in out
    rows = FeedbackLog(log).read()
    assert [(r.user_id, r.model, r.rating, r.turn) for r in rows] == [("user_0001", first, 1.0, 1)]
