"""The server under hostile but fair clients (issue 14): bounded work, no head-of-line blocking, no
acknowledgement without durability, degraded not broken, reload keyed by content, strict input.

A tiny real GMTRouter (random weights, tests/test_server_reload.py) serves; encoders are stand-ins that
block on an event or count calls, so nothing here depends on timing.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gmt_model.data.encoder import Encoder
from gmt_model.serving.app_state import Limits
from gmt_model.serving.feedback import FeedbackLog
from gmt_model.serving.server import ModelReloader, RouterHolder, checkpoint_source, create_app
from test_server_reload import DIM, HashEncoder, tiny_checkpoint, tiny_router

ADMIN = "admin-token-for-limits-1"


class GatedEncoder(HashEncoder):
    """Hash embeddings; texts starting with "new" wait for ``gate`` (an encoder busy with a big batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def encode(self, texts: list[str]) -> np.ndarray:
        if any(t.startswith("new") for t in texts):
            self.waiting.set()
            assert self.gate.wait(30), "the gate was never opened"
        return super().encode(texts)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("limits") / "v1", seed=7)


# ---------------------------------------------------------------------------
# no head-of-line blocking
# ---------------------------------------------------------------------------
def test_router_encodes_a_batch_outside_its_lock(ckpt):
    enc = GatedEncoder()
    router = tiny_router(ckpt, encoder=enc)
    router.route_single({"query_text": "cached question", "user_id": "u1"})  # encoded and cached
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(router.route_batch, [{"query_text": f"new text {i}", "user_id": "u2"} for i in range(50)])
        assert enc.waiting.wait(10)
        cached = pool.submit(router.route_single, {"query_text": "cached question", "user_id": "u1"})
        try:
            # while the big batch is encoding, a cached route goes through
            assert cached.result(timeout=10)["model_name"] in router.candidates
        finally:
            enc.gate.set()
        assert len(big.result(timeout=30)) == 50


def test_a_big_batch_does_not_block_cached_routes_or_feedback(ckpt, tmp_path):
    enc = GatedEncoder()
    router = tiny_router(ckpt, feedback_log=tmp_path / "fb.sqlite", encoder=enc)
    with TestClient(create_app(router)) as c, ThreadPoolExecutor(3) as pool:
        assert c.post("/v1/route", json={"query_text": "cached question", "user_id": "u1"}).status_code == 200
        big = pool.submit(c.post, "/v1/route",
                          json={"queries": [{"query_text": f"new text {i}", "user_id": "u2"} for i in range(200)]})
        assert enc.waiting.wait(10)
        try:
            route = pool.submit(c.post, "/v1/route", json={"query_text": "cached question", "user_id": "u1"})
            fb = pool.submit(c.post, "/v1/feedback", json={"user": "u1", "query": "cached question",
                                                           "model": "alpha", "rating": 5.0})
            assert route.result(timeout=10).status_code == 200
            assert fb.result(timeout=10).status_code == 200
        finally:
            enc.gate.set()
        r = big.result(timeout=60)
        assert r.status_code == 200 and len(r.json()["results"]) == 200


def test_batch_size_limit_and_time_budget(ckpt):
    enc = GatedEncoder()
    router = tiny_router(ckpt, encoder=enc)
    app = create_app(router, limits=Limits(max_batch=5, request_timeout=0.5, encode_chunk=2))
    with TestClient(app) as c:
        r = c.post("/v1/route", json={"queries": [{"query_text": f"q{i}", "user_id": "u1"} for i in range(6)]})
        assert r.status_code == 413 and r.json()["error"]["code"] == "batch_too_large"
        # the encoder is stuck: the batch runs past its budget between chunks -> 503 with Retry-After
        threading.Timer(1.0, enc.gate.set).start()
        r = c.post("/v1/route", json={"queries": [{"query_text": f"new {i}", "user_id": "u1"} for i in range(5)]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "timeout" and int(r.headers["retry-after"]) >= 1


def test_admission_sheds_load_with_503(ckpt):
    router = tiny_router(ckpt)
    app = create_app(router, limits=Limits(max_inflight=1))
    with TestClient(app) as c:
        app.state.gmt.inflight = 1  # one request in flight already
        r = c.post("/v1/route", json={"query_text": "hi", "user_id": "u1"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded" and "retry-after" in r.headers
        app.state.gmt.inflight = 0
        assert c.post("/v1/route", json={"query_text": "hi", "user_id": "u1"}).status_code == 200


# ---------------------------------------------------------------------------
# no acknowledgement without durability
# ---------------------------------------------------------------------------
def test_feedback_without_a_log_is_refused(ckpt, caplog):
    router = tiny_router(ckpt)  # serve --model <folder> without a config: no feedback log
    before = router.history_size("u1")
    with caplog.at_level(logging.WARNING, logger="gmt_model.serving.server"):
        app = create_app(router)
    assert "POST /v1/feedback is refused" in caplog.text  # said at start
    with TestClient(app) as c:
        r = c.post("/v1/feedback", json={"user": "u1", "query": "q", "model": "alpha", "rating": 5.0})
        assert r.status_code == 409 and r.json()["error"]["code"] == "feedback_log_not_configured"
        assert "feedback_log" in r.json()["error"]["message"]
        r = c.post("/v1/feedback", json={"user": "u1", "query": "q", "preferred": "alpha", "rejected": "beta"})
        assert r.status_code == 409
        assert c.post("/v1/route", json={"query_text": "q", "user_id": "u1"}).status_code == 200
    assert router.history_size("u1") == before  # nothing applied


def _read_only(log: FeedbackLog) -> None:
    """Reopen the log's connection read-only (SQLite then refuses writes as on a read-only file; the tests
    run as root, for whom chmod would not do)."""
    with log._lock:
        log._connection().close()
        conn = sqlite3.connect(f"file:{log.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        log._conn = conn


def test_read_only_feedback_log_refuses_feedback_and_routing_goes_on(ckpt, tmp_path):
    router = tiny_router(ckpt, feedback_log=tmp_path / "fb.sqlite")
    with TestClient(create_app(router, admin_token=ADMIN)) as c:
        fb = {"user": "u1", "query": "q", "model": "alpha", "rating": 5.0}
        ok = c.post("/v1/feedback", json=fb)
        assert ok.status_code == 200 and ok.json()["feedback_id"] == 1
        _read_only(router.feedback_log)
        r = c.post("/v1/feedback", json=fb)
        assert r.status_code == 503 and r.json()["error"]["code"] == "feedback_log_unavailable"
        assert "retry-after" in r.headers
        assert c.post("/v1/route", json={"query_text": "q2", "user_id": "u1"}).status_code == 200
        assert c.get("/health").json() == {"status": "degraded"}
        detail = c.get("/health", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert detail["checks"]["feedback"]["status"] == "degraded"
        assert str(tmp_path) not in json.dumps(detail)  # no absolute paths
        router.feedback_log.close()  # writable again (reopened on next use)
        r = c.post("/v1/feedback", json=fb)
        assert r.status_code == 200 and r.json()["feedback_id"] == 2
        assert c.get("/health").json() == {"status": "ok"}
    assert [row.id for row in FeedbackLog(tmp_path / "fb.sqlite").read()] == [1, 2]


def test_full_feedback_log_is_a_507(ckpt, tmp_path, monkeypatch):
    router = tiny_router(ckpt, feedback_log=tmp_path / "fb.sqlite")
    before = router.history_size("u1")
    real = sqlite3.Connection

    class Full:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def execute(self, sql: str, *a: Any) -> Any:
            if sql.startswith("INSERT"):
                raise sqlite3.OperationalError("database or disk is full")
            return self.conn.execute(sql, *a)

    log = router.feedback_log
    with log._lock:
        log._conn = Full(log._connection())
    assert isinstance(log._conn.conn, real)
    with TestClient(create_app(router)) as c:
        r = c.post("/v1/feedback", json={"user": "u1", "query": "q", "model": "alpha", "rating": 5.0})
        assert r.status_code == 507 and r.json()["error"]["code"] == "feedback_log_full"
        assert c.post("/v1/route", json={"query_text": "q", "user_id": "u1"}).status_code == 200
    assert router.history_size("u1") == before  # not applied either


def test_no_acknowledged_feedback_is_lost(ckpt, tmp_path):
    """Concurrent feedback while the log turns read-only and back: every acknowledged id is stored, and
    nothing refused is stored."""
    router = tiny_router(ckpt, feedback_log=tmp_path / "fb.sqlite")
    acked: list[int] = []
    refused = 0
    with TestClient(create_app(router)) as c:
        def send(i: int) -> None:
            nonlocal refused
            r = c.post("/v1/feedback", json={"user": f"user{i % 7}", "query": f"q{i}", "model": "beta",
                                             "rating": float(1 + i % 5)})
            if r.status_code == 200:
                acked.append(r.json()["feedback_id"])
            else:
                assert r.status_code == 503
                refused += 1

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(40)))
            _read_only(router.feedback_log)
            list(pool.map(send, range(40, 60)))
            router.feedback_log.close()
            list(pool.map(send, range(60, 100)))
    stored = [row.id for row in FeedbackLog(tmp_path / "fb.sqlite").read()]
    assert refused == 20 and len(acked) == 80
    assert sorted(acked) == sorted(stored)


# ---------------------------------------------------------------------------
# degraded, not broken: the embedding cache
# ---------------------------------------------------------------------------
class _StubModel:
    def get_embedding_dimension(self) -> int:
        return DIM

    def encode(self, texts: list[str], **kw: Any) -> np.ndarray:
        return HashEncoder().encode(list(texts))


def test_read_only_embedding_cache_degrades(ckpt, tmp_path, caplog):
    enc = Encoder(cache_dir=tmp_path / "cache", backend="torch")
    enc._model, enc._dim = _StubModel(), DIM
    enc.cache.set_dim(enc.name, DIM)
    enc.encode(["seen before"])
    path = enc.cache.path
    enc.cache._conn.close()
    enc.cache._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    router = tiny_router(ckpt, encoder=enc)
    with caplog.at_level(logging.WARNING), TestClient(create_app(router, admin_token=ADMIN)) as c:
        for i in range(3):
            r = c.post("/v1/route", json={"query_text": f"a new question {i}", "user_id": "u1"})
            assert r.status_code == 200
        assert c.get("/health").json() == {"status": "degraded"}
        checks = c.get("/health", headers={"Authorization": f"Bearer {ADMIN}"}).json()["checks"]
        assert checks["embedding_cache"]["status"] == "degraded" and "read-only" in checks["embedding_cache"]["detail"]
    assert caplog.text.count("without caching") == 1  # warned once
    assert enc.cache is None and enc.degraded


# ---------------------------------------------------------------------------
# reload keyed by content
# ---------------------------------------------------------------------------
def test_a_half_written_then_completed_checkpoint_is_picked_up(tmp_path):
    folder = tiny_checkpoint(tmp_path / "current", seed=21)
    resolve = checkpoint_source(folder)
    ref = resolve()
    holder = RouterHolder(tiny_router(folder), {"uri": ref.uri, "version": ref.version})
    reloader = ModelReloader(holder, resolve, lambda r, cur: tiny_router(Path(r.location)))
    new = tiny_checkpoint(tmp_path / "next", seed=22)
    # the copy is caught half-way: config.json complete, the weights truncated
    shutil.copy(new / "config.json", folder / "config.json")
    weights = (new / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    out = reloader.reload(retry_refused=False)  # as polling does
    assert out["status"] == "refused" and out["version"] == ref.version
    # the copy completes: a new version, loaded by the next poll
    for f in new.iterdir():
        shutil.copy(f, folder / f.name)
    out = reloader.reload(retry_refused=False)
    assert out["status"] == "reloaded" and out["previous"] == ref.version
    assert holder.current.info["version"] == resolve().version != ref.version


# ---------------------------------------------------------------------------
# strict input
# ---------------------------------------------------------------------------
BAD_BODIES = [
    ("/v1/route", '{"query_text": "hi", "user_id": "u1", "turn": ' + "9" * 4400 + "}", "huge integer"),
    ("/v1/feedback", '{"user": "u1", "query": "q", "model": "alpha", "rating": ' + "1" * 4400 + "}", "huge integer"),
    ("/v1/route", '{"query_text": "hi", "user_id": "u1", "x": ' + "[" * 5000 + "]" * 5000 + "}", "deep nesting"),
    ("/v1/chat/completions", '{"model": "router", "user": "u1", "messages": ' + "[" * 5000 + "]" * 5000 + "}",
     "deep nesting"),
    ("/v1/route", json.dumps({"query_text": "hi", "user_id": "u1", "conversation_history": [
        {"query": "earlier", "model": ["alpha"], "rating": 4.0}]}), "history model as a list"),
    ("/v1/route", json.dumps({"query_text": "hi", "user_id": "alice\n"}), "id with a line break"),
    ("/v1/feedback", json.dumps({"user": "alice\n", "query": "q", "model": "alpha", "rating": 4.0}),
     "id with a line break"),
    ("/v1/chat/completions", json.dumps({"model": "router", "user": "alice\n",
                                         "messages": [{"role": "user", "content": "hi"}]}), "id with a line break"),
    ("/v1/route", json.dumps({"query_text": "hi", "user_id": "u1", "session_id": "s\n"}), "session id"),
]


@pytest.mark.parametrize("path, body, what", BAD_BODIES, ids=[f"{b[0]}-{b[2]}" for b in BAD_BODIES])
def test_malformed_bodies_are_4xx_and_store_nothing(ckpt, tmp_path, path, body, what):
    router = tiny_router(ckpt, feedback_log=tmp_path / "fb.sqlite")
    before = router.history_size("u1")
    with TestClient(create_app(router), raise_server_exceptions=False) as c:
        r = c.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (what, r.status_code, r.text[:300])
        assert r.json()["error"]["message"]
    assert router.feedback_log.count() == 0 and router.history_size("u1") == before


def test_non_json_content_type_is_415(ckpt):
    with TestClient(create_app(tiny_router(ckpt)), raise_server_exceptions=False) as c:
        body = json.dumps({"query_text": "hi", "user_id": "u1"})
        r = c.post("/v1/route", content=body, headers={"Content-Type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        assert c.post("/v1/route", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
                      ).status_code == 200


def test_query_id_is_stored_or_refused_never_dropped(ckpt, tmp_path):
    # the server keeps the log for a router without one: the query id is stored
    log = FeedbackLog(tmp_path / "server.sqlite")
    router = tiny_router(ckpt)
    with TestClient(create_app(router, feedback_log=log)) as c:
        r = c.post("/v1/feedback", json={"user": "u1", "query": "q", "model": "alpha", "rating": 4.0,
                                         "query_id": "q-17"})
        assert r.status_code == 200 and log.read()[0].query_id == "q-17"
    # a router that writes its own log but cannot store a query id: refused, not dropped
    router = tiny_router(ckpt, feedback_log=tmp_path / "router.sqlite")
    with TestClient(create_app(router)) as c:
        r = c.post("/v1/feedback", json={"user": "u1", "query": "q", "model": "alpha", "rating": 4.0,
                                         "query_id": "q-17"})
        if r.status_code == 200:
            assert router.feedback_log.read()[0].query_id == "q-17"
        else:
            assert r.status_code == 400 and r.json()["error"]["param"] == "query_id"
            assert router.feedback_log.count() == 0


def test_stored_feedback_is_applied_even_past_the_time_budget(ckpt, tmp_path):
    """Feedback is stored first (outside the router queue), then applied through the queue: that second
    step is never dropped for a deadline, so a stored row is never left unapplied in the live router."""
    router = tiny_router(ckpt, feedback_log=tmp_path / "fb.sqlite")
    gate, busy = threading.Event(), threading.Event()
    real = router.route_batch

    def slow_batch(queries):  # the router queue's worker is stuck in a routing batch
        busy.set()
        assert gate.wait(20)
        return real(queries)

    router.route_batch = slow_batch
    app = create_app(router, limits=Limits(request_timeout=0.5))
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        route = pool.submit(c.post, "/v1/route", json={"query_text": "q", "user_id": "u1"})
        assert busy.wait(10)
        fb = pool.submit(c.post, "/v1/feedback", json={"user": "u9", "query": "q", "model": "alpha", "rating": 5.0})
        threading.Timer(1.5, gate.set).start()  # past the feedback's 0.5 s budget
        r = fb.result(timeout=30)
        assert route.result(timeout=30).status_code in (200, 503)
    assert r.status_code == 200 and r.json()["feedback_id"] is not None
    assert router.history_size("u9") == 1  # applied once, in the live router
    assert [row.user_id for row in FeedbackLog(tmp_path / "fb.sqlite").read()] == ["u9"]
