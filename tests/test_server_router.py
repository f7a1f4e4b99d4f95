"""The HTTP server around the REAL GMTRouter (trained on the planted data).

The gmtrouter app and a fake OpenAI-compatible upstream (one tenant per LLM
of the planted data, each answering "<llm> answers: <question>") run as
uvicorn servers on 127.0.0.1.  Query texts of the planted data are unique
strings; a dict-backed encoder maps them to their stored embeddings.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gmt_model.method import schema as S
from gmt_model.serving.endpoints import load_endpoints
from gmt_model.serving.router import GMTRouter
from gmt_model.serving.server import ROUTED_MODEL_HEADER, create_app
from servers import ServerThread, TenantUpstream as Upstream

N_FEEDBACK = 8


class DictEncoder:
    """Maps the planted dataset's query texts to their stored embeddings."""

    name = "planted"

    def __init__(self, g: Any) -> None:
        self.table = {t: g.query_emb[i] for i, t in enumerate(g.query_text)}
        self.dim = g.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts])


# ---------------------------------------------------------------------------
# fixtures (module scope: one router, one upstream, one gmtrouter server)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def router(planted_models, planted_graph, tmp_path_factory) -> GMTRouter:
    pers, _ = planted_models
    return GMTRouter.from_checkpoint(pers.best_dir, encoder=DictEncoder(planted_graph),
                                     feedback_log=tmp_path_factory.mktemp("srv_fb") / "feedback.sqlite")


@pytest.fixture(scope="module")
def upstream():
    up = Upstream()
    with ServerThread(up.app) as srv:
        up.url = srv.url
        yield up


@pytest.fixture(scope="module")
def client(router, upstream):
    endpoints = load_endpoints({m: {"base_url": f"{upstream.url}/{m}/v1", "model": f"{m}-up"} for m in router.llms})
    app = create_app(router, endpoints=endpoints)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c


def _state_digest(router: GMTRouter) -> str:
    h = hashlib.sha256()
    for k, v in sorted(router.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def split_probe(router, planted_graph) -> tuple[str, dict[str, str]]:
    """A test-split query on which the router sends user0 and user1 (opposite tastes) to different LLMs."""
    g = planted_graph
    for i in np.flatnonzero(g.split_mask(S.SPLIT_TEST)):
        text = g.query_text[i]
        picks = {u: router.route_single({"query_text": text, "user_id": u})["model_name"] for u in ("user0", "user1")}
        if picks["user0"] != picks["user1"]:
            return text, picks
    pytest.fail("the planted router sends user0 and user1 to the same LLM on every test query")


# ---------------------------------------------------------------------------
# route
# ---------------------------------------------------------------------------
def test_route_returns_the_routers_choice(client, router, planted_graph, split_probe):
    g = planted_graph
    test_rows = np.flatnonzero(g.split_mask(S.SPLIT_TEST))[:40:4]
    queries = [{"query_text": g.query_text[i], "user_id": g.user_ids[g.user[i]]} for i in test_rows]
    queries.append({"query_text": g.query_text[test_rows[0]], "user_id": "user3", "candidates": ["m0", "m2"]})
    for q in queries:
        resp = client.post("/v1/route", json=q)
        assert resp.status_code == 200, resp.text
        got, want = resp.json(), router.route_single(q)
        assert got["model_name"] == want["model_name"], q
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)
        assert got["cold_start"] is False and q["user_id"] in got["reasoning"]
    assert set(resp.json()["scores"]) == {"m0", "m2"}
    batch = client.post("/v1/route", json={"queries": queries})
    assert batch.status_code == 200, batch.text
    assert [r["model_name"] for r in batch.json()["results"]] == [r["model_name"] for r in router.route_batch(queries)]
    # the user id is what personalises: same query, opposite tastes, different LLMs over HTTP
    text, picks = split_probe
    for user, model in picks.items():
        assert client.post("/v1/route", json={"query_text": text, "user_id": user}).json()["model_name"] == model


def test_chat_completions_forwards_to_the_chosen_models_upstream(client, upstream, split_probe):
    text, picks = split_probe
    for user, model in picks.items():
        n = len(upstream.requests)
        resp = client.post("/v1/chat/completions", json={"model": "router", "user": user,
                                                         "messages": [{"role": "user", "content": text}]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"] == model and resp.headers[ROUTED_MODEL_HEADER] == model
        assert body["choices"][0]["message"]["content"] == f"{model} answers: {text}"
        assert body["routing"]["routed"] is True and body["routing"]["model_name"] == model
        new = upstream.requests[n:]
        assert len(new) == 1 and new[0]["tenant"] == model and new[0]["body"]["model"] == f"{model}-up"
    # a concrete model name bypasses routing
    other = next(m for m in ("m0", "m1", "m2", "m3") if m != picks["user0"])
    resp = client.post("/v1/chat/completions", json={"model": other, "user": "user0",
                                                     "messages": [{"role": "user", "content": text}]})
    assert resp.status_code == 200, resp.text
    assert resp.headers[ROUTED_MODEL_HEADER] == other and upstream.requests[-1]["tenant"] == other
    assert resp.json()["routing"]["routed"] is False


# ---------------------------------------------------------------------------
# feedback changes routing, no retraining
# ---------------------------------------------------------------------------
def _favourites(g: Any, taste: int, topic_texts: set[str]) -> str:
    """Empirical best LLM of a taste group on the given queries (training data)."""
    users = {i for i, u in enumerate(g.user_ids) if int(u[4:]) % 2 == taste}
    score: dict[int, list[float]] = {}
    for i in np.flatnonzero(g.split_mask(S.SPLIT_TRAIN)):
        if g.user[i] in users and g.query_text[i] in topic_texts:
            score.setdefault(int(g.llm[i]), []).append(float(g.rating[i]))
    return g.llm_names[max(score, key=lambda k: np.mean(score[k]))]


def test_feedback_over_http_changes_routing_without_retraining(client, router, planted_graph):
    g = planted_graph
    by_topic: dict[str, set[str]] = {}
    for t in g.query_text:
        by_topic.setdefault(t.split(" question")[0], set()).add(t)
    topic, texts = next((k, v) for k, v in sorted(by_topic.items())
                        if _favourites(g, 0, v) != _favourites(g, 1, v))
    fav = {taste: _favourites(g, taste, texts) for taste in (0, 1)}
    cands = sorted(set(fav.values()))
    probe = sorted(texts)[0]
    digest = _state_digest(router)
    n_log = router.feedback_log.count()
    for taste in (0, 1):
        user = f"http-newcomer-{taste}"
        before = client.post("/v1/route", json={"query_text": probe, "user_id": user, "candidates": cands}).json()
        assert before["cold_start"] is True and before["history_size"] == 0
        # the newcomer rates like user0 / user1: the donor's own training ratings
        donor = g.user_ids[taste]
        rows = [i for i in np.flatnonzero(g.split_mask(S.SPLIT_TRAIN)) if g.user_ids[g.user[i]] == donor][:N_FEEDBACK]
        for k, i in enumerate(rows):
            resp = client.post("/v1/feedback", json={"user_id": user, "query": g.query_text[i],
                                                     "model": g.llm_names[g.llm[i]], "rating": float(g.raw_rating[i])})
            assert resp.status_code == 200, resp.text
            assert resp.json()["result"]["history_size"] == k + 1
        after = client.post("/v1/route", json={"query_text": probe, "user_id": user, "candidates": cands}).json()
        assert after["cold_start"] is False and after["history_size"] == N_FEEDBACK
        assert after["model_name"] == fav[taste], (topic, taste, after)
    assert fav[0] != fav[1]  # so the two newcomers, cold alike, now get different LLMs
    assert _state_digest(router) == digest  # no retraining: the weights did not change
    assert router.feedback_log.count() == n_log + 2 * N_FEEDBACK


# ---------------------------------------------------------------------------
# bad requests
# ---------------------------------------------------------------------------
def test_bad_requests_get_4xx_with_a_message(client, router, planted_graph):
    q = planted_graph.query_text[0]
    user_msg = [{"role": "user", "content": q}]
    # (path, body, status, message fragment, param: the field as the client named it)
    cases: list[tuple[str, Any, int, str, str | None]] = [
        ("/v1/route", b"", 400, "empty", None),
        ("/v1/route", b"{not json", 400, "not valid JSON", None),
        ("/v1/route", b"[1, 2]", 400, "JSON object", None),
        ("/v1/route", {"query_text": q}, 400, "user_id", "user_id"),
        ("/v1/route", {"query_text": q, "user_id": "bad-user", "extra": 1}, 400, "extra", "extra"),
        ("/v1/route", {"query_text": "   ", "user_id": "bad-user"}, 400, "query_text", "query_text"),
        ("/v1/route", {"query_text": q, "user_id": "bad user id"}, 400, "user_id", "user_id"),
        ("/v1/route", {"query_text": q, "user_id": "bad-user", "candidates": ["gpt-99"]}, 400, "gpt-99",
         "candidates"),
        ("/v1/route", {"query_text": q, "user_id": "bad-user", "turn": 0}, 400, "turn", "turn"),
        ("/v1/route", {"queries": []}, 400, "queries", "queries"),
        ("/v1/feedback", {"user_id": "bad-user", "query": q, "model": "m0", "rating": 99.0}, 400,
         "outside the rating scale", "rating"),
        ("/v1/feedback", {"user_id": "bad-user", "query": q, "model": "m0", "rating": "5"}, 400, "rating", "rating"),
        ("/v1/feedback", {"user_id": "bad-user", "query": q, "model": "gpt-99", "rating": 3.0}, 400, "gpt-99",
         "model"),
        ("/v1/feedback", {"user_id": "bad-user", "model": "m0", "rating": 3.0}, 400, "query", "query"),
        ("/v1/feedback", {"user": "bad user id", "query": q, "model": "m0", "rating": 3.0}, 400, "'user'", "user"),
        ("/v1/chat/completions", {"model": "router", "messages": user_msg}, 400, "user", "user"),
        # the router checks the id; the error names the client's field 'user', not the router's 'user_id'
        ("/v1/chat/completions", {"model": "router", "user": "bad user id", "messages": user_msg}, 400, "'user'",
         "user"),
        ("/v1/chat/completions", {"model": "gpt-99", "user": "bad-user", "messages": user_msg}, 404, "gpt-99",
         "model"),
        ("/v1/chat/completions", {"model": "router", "user": "bad-user", "messages": []}, 400, "messages",
         "messages"),
        ("/v1/chat/completions", {"model": "router", "user": "bad-user", "stream": "yes", "messages": user_msg}, 400,
         "stream", "stream"),
        ("/v1/chat/completions", {"model": "router", "user": "bad-user",
                                  "messages": [{"role": "system", "content": "be brief"}]}, 400, "role 'user'",
         "messages"),
    ]
    n_log = router.feedback_log.count()
    for path, body, status, fragment, param in cases:
        if isinstance(body, bytes):
            resp = client.post(path, content=body, headers={"Content-Type": "application/json"})
        else:
            resp = client.post(path, json=body)
        assert resp.status_code == status, (path, body, resp.status_code, resp.text)
        error = resp.json()["error"]
        assert fragment in error["message"], (path, body, error)
        assert error["param"] == param, (path, body, error)
        if param == "user":
            assert "user_id" not in error["message"], error
    assert router.feedback_log.count() == n_log  # nothing stored
    assert router.history_size("bad-user") == 0
