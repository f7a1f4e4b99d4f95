"""HTTP of the open LLM pool (admin /admin/llms, /v1/models) and of cost-aware routing
(cost_weight in /v1/route and in the chat body or the X-Cost-Weight header; Prometheus)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gmt_model.serving.server import create_app
from test_llm_pool import NEW_DESC, make

ADMIN = "admin-token-0123456789"


@pytest.fixture
def client(planted_models, planted_graph, tmp_path):
    r = make(planted_models, planted_graph, tmp_path / "fb.sqlite")
    with TestClient(create_app(r, admin_token=ADMIN)) as c:
        c.router = r
        yield c


def _admin(c, method, path, **kw):
    return c.request(method, path, headers={"Authorization": f"Bearer {ADMIN}"}, **kw)


def test_admin_llms_add_update_remove_and_models(client, planted_graph):
    c = client
    assert c.post("/admin/llms", json={"name": "x", "description": "d"}).status_code == 401  # admin only
    r = _admin(c, "POST", "/admin/llms", json={"name": "newlm", "description": NEW_DESC, "cost": 0.2})
    assert r.status_code == 201 and r.json()["name"] == "newlm" and r.json()["cost"] == 0.2
    events = c.router.feedback_log.read_llm_events()
    for bad, status, param in [({"name": "newlm", "description": "again"}, 409, "name"),
                               ({"name": "y", "description": ""}, 400, "description"),
                               ({"name": "y", "description": "d", "cost": -1}, 400, "cost"),
                               ({"name": "y", "description": "d", "price": 1}, 400, "price")]:
        r = _admin(c, "POST", "/admin/llms", json=bad)
        assert r.status_code == status and r.json()["error"]["param"] == param, r.json()
    assert c.router.feedback_log.read_llm_events() == events  # nothing stored
    models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}  # the pool, with costs and descriptions
    assert models["newlm"]["description"] == NEW_DESC and models["newlm"]["cost"] == 0.2
    assert models["newlm"]["trained"] is False and models["m0"]["trained"] is True and models["m0"]["cost"] is None
    assert c.get("/v1/models/newlm").json()["cost"] == 0.2
    assert _admin(c, "PATCH", "/admin/llms/newlm", json={"cost": 0.1}).json()["cost"] == 0.1
    assert _admin(c, "PATCH", "/admin/llms/nope", json={"cost": 0.1}).status_code == 404
    assert _admin(c, "DELETE", "/admin/llms/m0").status_code == 200
    assert "m0" not in [m["id"] for m in c.get("/v1/models").json()["data"]]
    listed = _admin(c, "GET", "/admin/llms?all=true").json()["data"]
    assert {d["name"]: d["active"] for d in listed}["m0"] is False


def test_cost_weight_over_http_and_metrics(client, planted_graph):
    c = client
    for m, cost in {"m0": 30.0, "m1": 10.0, "m2": 1.0, "m3": 0.5}.items():
        _admin(c, "PATCH", f"/admin/llms/{m}", json={"cost": cost})
    q = planted_graph.query_text[0]
    r = c.post("/v1/route", json={"query_text": q, "user_id": "u", "cost_weight": 1000})
    assert r.status_code == 200 and r.json()["model_name"] == "m3" and r.json()["cost"] == 0.5
    assert c.post("/v1/route", json={"query_text": q, "user_id": "u", "cost_weight": -1}).status_code == 400
    chat = {"model": "router", "messages": [{"role": "user", "content": q}], "user": "u"}
    # no upstream is configured: the 404 still reports the routing decision
    r = c.post("/v1/chat/completions", json=chat, headers={"X-Cost-Weight": "1000"})
    assert r.json()["error"]["routing"]["model_name"] == "m3"
    r = c.post("/v1/chat/completions", json=dict(chat, cost_weight=1000, max_cost=5))
    assert r.json()["error"]["routing"]["model_name"] == "m3"
    assert c.post("/v1/chat/completions", json=chat, headers={"X-Cost-Weight": "cheap"}).status_code == 400
    text = c.get("/metrics").text
    assert 'gmtrouter_routes_total{model="m3"}' in text and 'gmtrouter_llm_price_usd_per_mtok{model="m0"} 30.0' in text


def test_cli_llms_verbs(planted_models, planted_graph, tmp_path, monkeypatch, capsys):
    """gmtrouter llms add|update|remove|list: durable through the log; bad input is one line, exit 2, nothing stored."""
    import json

    import gmt_model.data.encoder
    from gmt_model.serving.cli import main
    from gmt_model.serving.feedback import FeedbackLog
    from test_llm_pool import PlantedEncoder

    monkeypatch.setattr(gmt_model.data.encoder, "get_encoder", lambda name=None, **kw: PlantedEncoder(planted_graph))
    cfg = tmp_path / "router.yaml"
    log = tmp_path / "fb.sqlite"
    cfg.write_text(f"model_path: {{load_model_path: {planted_models[0].best_dir}}}\nrouter: {{feedback_log: {log}}}\n")
    c = ["--config", str(cfg)]
    assert main(["llms", "add", "newlm", "--description", NEW_DESC, "--cost", "0.2", *c]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "newlm"
    assert main(["llms", "update", "newlm", "--cost", "0.1", *c]) == 0
    assert main(["llms", "remove", "m0", *c]) == 0
    capsys.readouterr()
    assert main(["llms", "list", *c]) == 0
    listed = {d["name"]: d["cost"] for d in json.loads(capsys.readouterr().out)}
    assert listed == {"m1": None, "m2": None, "m3": None, "newlm": 0.1}
    n = len(FeedbackLog(log).read_llm_events())
    for argv, msg in [(["llms", "add", "newlm", "--description", "x"], "already in the pool"),
                      (["llms", "add", "y", "--description", "d", "--cost", "-1"], "cost"),
                      (["llms", "add", "y", "--description", " "], "description"),
                      (["llms", "remove", "nope"], "not in the pool")]:
        assert main([*argv, *c]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1
    assert len(FeedbackLog(log).read_llm_events()) == n
    assert main(["infer", "--query", planted_graph.query_text[0], "--route-only", "--cost-weight", "1000", *c]) == 0
    assert json.loads(capsys.readouterr().out)["model_name"] in listed
