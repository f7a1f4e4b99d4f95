"""Feedback as users give it, over HTTP (issue 7 item 2; issue 9 item 8: the stored row's id).

``/v1/feedback`` takes a rating ``{user, query, model, rating, session_id?, turn?}`` or a pairwise
preference ``{user, query, preferred, rejected, session_id?, turn?}``.  Bad feedback is a 400 whose
``param`` names the field, and nothing is stored.  A real ``GMTRouter`` (tiny random checkpoint) with a
durable feedback log on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gmt_model.serving.feedback import FeedbackLog
from gmt_model.serving.router import GMTRouter
from gmt_model.serving.server import create_app
from servers import ServerThread
from test_server_reload import tiny_checkpoint, tiny_router

needs_pairwise = pytest.mark.skipif(not hasattr(GMTRouter, "update_user_preference"),
                                    reason="GMTRouter.update_user_preference has not landed yet")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    log_path = root / "feedback.sqlite"
    router = tiny_router(tiny_checkpoint(root / "ckpt", seed=31), log_path)
    with ServerThread(create_app(router)) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield {"client": client, "router": router, "log": FeedbackLog(log_path)}


def err(r: httpx.Response) -> dict:
    return r.json()["error"]


def test_rating_of_a_turn_returns_the_stored_row(stack):
    client, log, router = stack["client"], stack["log"], stack["router"]
    fb = {"user": "ann", "query": "Translate 'hello' to French.", "model": "beta", "rating": 4.5,
          "session_id": "chat-1", "turn": 2}
    r = client.post("/v1/feedback", json=fb)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["feedback_id"] == log.max_id() and body["result"]["history_size"] == router.history_size("ann") == 1
    rec = log.read(since_id=body["feedback_id"] - 1)[0]
    assert (rec.user_id, rec.query, rec.model, rec.rating, rec.session_id, rec.turn) == (
        "ann", fb["query"], "beta", 4.5, "chat-1", 2)
    # user_id is accepted for user (the chat page and older clients send it)
    r = client.post("/v1/feedback", json={**{k: v for k, v in fb.items() if k != "user"}, "user_id": "ann",
                                          "turn": 3})
    assert r.status_code == 200 and r.json()["feedback_id"] == body["feedback_id"] + 1


@needs_pairwise
def test_pairwise_preference_is_stored_as_two_rows(stack):
    client, log, router = stack["client"], stack["log"], stack["router"]
    n = log.count()
    fb = {"user": "ben", "query": "Write a limerick about cats.", "preferred": "gamma", "rejected": "alpha",
          "session_id": "chat-2", "turn": 1}
    r = client.post("/v1/feedback", json=fb)
    assert r.status_code == 200, r.text
    ids = r.json()["feedback_ids"]
    assert len(ids) == 2 and log.count() == n + 2 and ids[1] == log.max_id()
    a, b = log.read(since_id=ids[0] - 1)
    lo, hi = router.rating_scale
    assert (a.model, a.rating, b.model, b.rating) == ("gamma", hi, "alpha", lo)
    assert a.user_id == b.user_id == "ben" and a.query_id == b.query_id and a.query_id
    assert a.session_id == b.session_id == "chat-2" and a.turn == b.turn == 1
    assert router.history_size("ben") == 2


BAD: list[tuple[dict[str, Any], str, str]] = [
    # (changes to a good pairwise body, param, message fragment)
    ({"preferred": "gpt-99"}, "preferred", "gpt-99"),
    ({"rejected": "gpt-99"}, "rejected", "gpt-99"),
    ({"rejected": "gamma"}, "rejected", "same model"),
    ({"model": "alpha", "rating": 3.0}, "preferred", "not both"),
    ({"rating": 3.0}, "preferred", "not both"),
    ({"rejected": None}, "rejected", "required"),
    ({"preferred": None, "rejected": None}, "rating", "model and rating"),
    ({"turn": 0}, "turn", "turn"),
    ({"turn": "2"}, "turn", "turn"),
    ({"session_id": "not an id"}, "session_id", "session_id"),
    ({"query_id": "q1"}, "query_id", "query_id"),
    ({"user": "not an id"}, "user", "'user'"),
    ({"user_id": "someone-else"}, "user_id", "differ"),
    ({"query": ""}, "query", "query"),
    ({"colour": "red"}, "colour", "colour"),
]


@needs_pairwise
@pytest.mark.parametrize("change, param, fragment", BAD)
def test_bad_pairwise_feedback_is_a_400_and_stores_nothing(stack, change, param, fragment):
    client, log, router = stack["client"], stack["log"], stack["router"]
    good = {"user": "cat", "query": "Summarise Hamlet.", "preferred": "gamma", "rejected": "beta"}
    body = {k: v for k, v in {**good, **change}.items() if v is not None}
    n, size = log.count(), router.history_size("cat")
    r = client.post("/v1/feedback", json=body)
    assert r.status_code == 400, r.text
    assert err(r)["param"] == param and fragment in err(r)["message"], r.text
    assert log.count() == n and router.history_size("cat") == size


@pytest.mark.parametrize("raw, param", [
    (b'{"user": "dan", "query": "q", "model": "alpha", "rating": NaN}', "rating"),
    (b'{"user": "dan", "query": "q", "model": "alpha", "rating": Infinity}', "rating"),
    (b'{"user": "dan", "query": "q", "model": "alpha", "rating": "4"}', "rating"),
    (b'{"user": "dan", "query": "q", "model": "alpha", "rating": true}', "rating"),
    (b'{"user": "dan", "query": "q", "model": "alpha", "rating": 99}', "rating"),
    (b'{"user": "dan", "query": "q", "model": "gpt-99", "rating": 3}', "model"),
    (b'{"user": "dan", "query": "q", "model": "alpha"}', "rating"),
    (b'{"user": "dan", "query": "q", "rating": 3}', "model"),
    (b'{"query": "q", "model": "alpha", "rating": 3}', "user"),
])
def test_bad_rating_is_a_400_and_stores_nothing(stack, raw, param):
    client, log, router = stack["client"], stack["log"], stack["router"]
    n = log.count()
    r = client.post("/v1/feedback", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert err(r)["param"] == param, r.text
    assert log.count() == n and router.history_size("dan") == 0


class RatingsOnlyRouter:
    candidates = ["alpha", "beta"]
    rating_scale = (1.0, 5.0)

    def update_user_feedback(self, user_id: str, query: str, model: str, rating: float,
                             session_id: str | None = None) -> dict[str, Any]:
        return {"user_id": user_id}


def test_pairwise_to_a_router_without_it_is_a_400(tmp_path):
    with TestClient(create_app(RatingsOnlyRouter(), feedback_log=FeedbackLog(tmp_path / "fb.sqlite"))) as c:
        r = c.post("/v1/feedback", json={"user": "u", "query": "q", "preferred": "alpha", "rejected": "beta"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "pairwise_unsupported"
