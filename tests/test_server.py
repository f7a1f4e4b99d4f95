"""The HTTP server: OpenAI-compatible routing proxy, route/feedback/models/health/metrics.

A fake OpenAI-compatible upstream (two "tenants" answering differently, with
SSE streaming) and the gmtrouter app both run as real uvicorn servers on
127.0.0.1; a deterministic fake router stands in for the GNN router.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.testclient import TestClient

from gmt_model.serving.endpoints import (
    Endpoint,
    EndpointConfigError,
    MissingAPIKeyError,
    UpstreamError,
    chat_completion,
    load_endpoints,
)
from gmt_model.serving.feedback import FeedbackLog
from gmt_model.serving.router import RoutingError
from gmt_model.serving.server import ROUTED_MODEL_HEADER, create_app
from servers import ServerThread as _ServerThread

TOKEN = "test-bearer-token-123"
ALPHA_KEY = "sk-alpha-SECRET-4f1d9a"
BETA_KEY = "sk-beta-SECRET-77c2e0"
BROKEN_KEY = "sk-broken-SECRET-0b0b0b"
KEYS = (ALPHA_KEY, BETA_KEY, BROKEN_KEY)
ENV = {"GMT_TEST_ALPHA_KEY": ALPHA_KEY, "GMT_TEST_BETA_KEY": BETA_KEY, "GMT_TEST_BROKEN_KEY": BROKEN_KEY}
CANDIDATES = ["alpha", "beta", "gamma", "delta", "broken"]


# ---------------------------------------------------------------------------
# fakes
# ---------------------------------------------------------------------------
class FakeRouter:
    """Deterministic stand-in for GMTRouter.

    Rule: a user who rated a model >= 4 gets that model; otherwise a query
    mentioning "code" goes to beta, one naming another candidate goes there,
    anything else to alpha.
    """

    rating_scale = (1.0, 5.0)

    def __init__(self, candidates: list[str] = CANDIDATES, feedback_log: FeedbackLog | None = None) -> None:
        self.candidates = list(candidates)
        self.route_calls: list[dict[str, Any]] = []
        self.feedback_calls: list[dict[str, Any]] = []
        self.preferred: dict[str, str] = {}
        if feedback_log is not None:
            self.feedback_log = feedback_log

    def _choose(self, text: str, user: str, cands: list[str]) -> str:
        if self.preferred.get(user) in cands:
            return self.preferred[user]
        words = set(re.findall(r"[a-z]+", text.lower()))
        if "code" in words and "beta" in cands:
            return "beta"
        for c in cands:
            if c in words:
                return c
        return "alpha" if "alpha" in cands else cands[0]

    def route_single(self, query: dict[str, Any]) -> dict[str, Any]:
        text, user = query.get("query_text"), query.get("user_id")
        if not isinstance(text, str) or not text.strip():
            raise RoutingError("query_text must be a non-empty string")
        if not isinstance(user, str) or not user:
            raise RoutingError("user_id must be a non-empty string")
        cands = query.get("candidates") or self.candidates
        unknown = [c for c in cands if c not in self.candidates]
        if unknown:
            raise RoutingError(f"unknown candidates {unknown}")
        self.route_calls.append(dict(query))
        choice = self._choose(text, user, cands)
        rest = (1.0 - 0.7) / max(1, len(cands) - 1)
        scores = {c: (0.7 if c == choice else rest) for c in cands}
        return {
            "model_name": choice,
            "confidence": 0.7,
            "user_preference": 0.5,
            "scores": scores,
            "reasoning": f"fake rule for {user}",
            "cold_start": user not in self.preferred,
        }

    def route_batch(self, queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.route_single(q) for q in queries]

    def update_user_feedback(self, user_id: str, query: str, model: str, rating: float,
                             session_id: str | None = None) -> dict[str, Any]:
        if not user_id or not query:
            raise RoutingError("user_id and query must be non-empty")
        if model not in self.candidates:
            raise RoutingError(f"field 'model': unknown model {model!r}")  # the real router's message shape
        lo, hi = self.rating_scale
        if not lo <= rating <= hi:
            raise RoutingError(f"field 'rating': {rating} outside [{lo}, {hi}]")
        self.feedback_calls.append(
            {"user_id": user_id, "query": query, "model": model, "rating": rating, "session_id": session_id}
        )
        if rating >= 4:
            self.preferred[user_id] = model
        fid = None
        if getattr(self, "feedback_log", None) is not None:  # like GMTRouter: its own log, answers the row id
            fid = self.feedback_log.append(user_id, query, model, rating, session_id=session_id)
        return {"user_id": user_id, "model": model, "rating": rating, "history_size": len(self.feedback_calls),
                "feedback_id": fid}


class Upstream:
    """A fake OpenAI-compatible API; ``/{tenant}/v1/chat/completions``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.gate = threading.Event()
        self.gate_seen: list[bool] = []
        self.sent_chunks: list[bytes] = []
        app = FastAPI()

        @app.post("/{tenant}/v1/chat/completions")
        async def completions(tenant: str, request: Request):
            body = await request.json()
            self.requests.append({"tenant": tenant, "headers": dict(request.headers), "body": body})
            model = body["model"]
            if tenant == "broken":  # echoes the key, as some providers do
                return PlainTextResponse(f"Incorrect API key provided: {request.headers.get('authorization')}",
                                         status_code=401)
            question = body["messages"][-1]["content"]
            answer = f"{tenant} answers ({model}): {question[::-1]}"
            if not body.get("stream"):
                return JSONResponse({
                    "id": f"cmpl-{tenant}", "object": "chat.completion", "created": 1, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
                })
            words = answer.split(" ")
            gated = "GATED" in question

            async def gen():
                for i, w in enumerate(words):
                    if gated and i == len(words) - 1:  # hold the last chunk until the client saw the first
                        for _ in range(500):
                            if self.gate.is_set():
                                break
                            await asyncio.sleep(0.01)
                        self.gate_seen.append(self.gate.is_set())
                    piece = w if i == 0 else " " + w
                    chunk = {"id": f"cmpl-{tenant}", "object": "chat.completion.chunk", "model": model,
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    data = f"data: {json.dumps(chunk)}\n\n".encode()
                    self.sent_chunks.append(data)
                    yield data
                    await asyncio.sleep(0.005)
                self.sent_chunks.append(b"data: [DONE]\n\n")
                yield b"data: [DONE]\n\n"

            return StreamingResponse(gen(), media_type="text/event-stream")

        self.app = app


def ServerThread(app: Any) -> _ServerThread:
    """The gmtrouter app at log level info: the tests read its logs for leaked keys."""
    return _ServerThread(app, log_level="info")


def make_endpoints(upstream_url: str) -> dict[str, Endpoint]:
    return load_endpoints({
        "alpha": {"base_url": f"{upstream_url}/alpha/v1", "model": "alpha-up-v1", "api_key_env": "GMT_TEST_ALPHA_KEY"},
        "beta": {"base_url": f"{upstream_url}/beta/v1/", "model": "beta-up-v2", "api_key_env": "GMT_TEST_BETA_KEY",
                 "timeout": 20},
        # gamma: a candidate without an endpoint
        "delta": {"base_url": f"{upstream_url}/delta/v1", "api_key_env": "GMT_TEST_UNSET_KEY_VAR"},
        "broken": {"base_url": f"{upstream_url}/broken/v1", "api_key_env": "GMT_TEST_BROKEN_KEY"},
    })


# ---------------------------------------------------------------------------
# fixtures (module scope: one upstream, one gmtrouter server)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env():
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ENV.items():
            mp.setenv(k, v)
        mp.delenv("GMT_TEST_UNSET_KEY_VAR", raising=False)
        yield


@pytest.fixture(scope="module")
def upstream():
    up = Upstream()
    with ServerThread(up.app) as srv:
        up.url = srv.url
        yield up


@pytest.fixture(scope="module")
def stack(env, upstream, tmp_path_factory):
    router = FakeRouter()
    log = FeedbackLog(tmp_path_factory.mktemp("fb") / "feedback.sqlite")
    app = create_app(router, endpoints=make_endpoints(upstream.url), auth_token=TOKEN, feedback_log=log,
                     max_body_bytes=20_000)
    with ServerThread(app) as srv:
        client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        yield {"router": router, "log": log, "url": srv.url, "client": client, "upstream": upstream}
        client.close()


def chat(client: httpx.Client, messages: list[dict], **kw: Any) -> httpx.Response:
    body = {"model": "router", "messages": messages, **kw}
    return client.post("/v1/chat/completions", json=body)


def err(resp: httpx.Response) -> dict:
    data = resp.json()
    assert set(data) == {"error"}, data
    return data["error"]


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0


# ---------------------------------------------------------------------------
# endpoints module
# ---------------------------------------------------------------------------
def test_load_endpoints_and_errors(env, monkeypatch):
    eps = load_endpoints({
        "gpt-4": {"base_url": "https://api.example.invalid/v1/", "api_key_env": "GMT_TEST_ALPHA_KEY"},
        "local": {"base_url": "http://127.0.0.1:9/v1", "model": "llama", "timeout": 5,
                  "extra_headers": {"X-Org": "org-secret-value"}},
    })
    assert eps["gpt-4"].model == "gpt-4" and eps["gpt-4"].url == "https://api.example.invalid/v1/chat/completions"
    assert eps["local"].model == "llama" and eps["local"].timeout == 5.0 and eps["local"].api_key() is None
    assert eps["gpt-4"].api_key() == ALPHA_KEY
    assert eps["gpt-4"].headers()["Authorization"] == f"Bearer {ALPHA_KEY}"
    assert eps["local"].headers()["X-Org"] == "org-secret-value" and "Authorization" not in eps["local"].headers()
    text = repr(eps) + str(eps["gpt-4"]) + repr(eps["local"])
    assert ALPHA_KEY not in text and "org-secret-value" not in text and "GMT_TEST_ALPHA_KEY" in text
    monkeypatch.delenv("GMT_TEST_ALPHA_KEY")
    with pytest.raises(MissingAPIKeyError, match="GMT_TEST_ALPHA_KEY.*gpt-4"):
        eps["gpt-4"].api_key()
    assert load_endpoints(None) == {}

    bad = [
        ({"m": {"model": "x"}}, r"endpoints\.m: field 'base_url' is required"),
        ({"m": {"base_url": "ftp://x"}}, "'base_url' must be an http"),
        ({"m": {"base_url": "http://x", "modle": "typo"}}, r"unknown field\(s\) \['modle'\]"),
        ({"m": {"base_url": "http://x", "timeout": 0}}, "'timeout' must be a positive"),
        ({"m": {"base_url": "http://x", "model": ""}}, "'model' must be a non-empty"),
        ({"m": {"base_url": "http://x", "api_key_env": 3}}, "'api_key_env'"),
        ({"m": {"base_url": "http://x", "extra_headers": {"Authorization": "x"}}}, "must not set Authorization"),
        ({"m": "http://x"}, r"endpoints\.m: expected a mapping"),
        (["m"], "must be a mapping"),
    ]
    for mapping, pattern in bad:
        with pytest.raises(EndpointConfigError, match=pattern):
            load_endpoints(mapping)  # type: ignore[arg-type]


def test_chat_completion_helper(env, upstream):
    eps = make_endpoints(upstream.url)
    msgs = [{"role": "user", "content": "hello there"}]
    data = chat_completion(eps["alpha"], msgs, temperature=0.2)
    assert data["choices"][0]["message"]["content"] == "alpha answers (alpha-up-v1): ereht olleh"
    sent = upstream.requests[-1]
    assert sent["body"] == {"temperature": 0.2, "model": "alpha-up-v1", "messages": msgs}
    assert sent["headers"]["authorization"] == f"Bearer {ALPHA_KEY}"
    chunks = list(chat_completion(eps["beta"], msgs, stream=True))
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "beta answers (beta-up-v2): ereht olleh"
    with pytest.raises(UpstreamError) as ei:
        chat_completion(eps["broken"], msgs)
    assert ei.value.status_code == 401 and BROKEN_KEY not in str(ei.value) and "***" in str(ei.value)
    with pytest.raises(MissingAPIKeyError):
        chat_completion(eps["delta"], msgs)
    with pytest.raises(ValueError, match="messages"):
        chat_completion(eps["alpha"], [])


# ---------------------------------------------------------------------------
# chat completions
# ---------------------------------------------------------------------------
def test_routed_completion_goes_to_the_routers_choice(stack):
    client, router, up = stack["client"], stack["router"], stack["upstream"]
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "please review my code"}]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "router", "messages": msgs, "user": "u-route", "temperature": 0.1},
        headers={"X-Session-Id": "sess-42"},
    )
    assert r.status_code == 200, r.text
    assert r.headers[ROUTED_MODEL_HEADER] == "beta"
    data = r.json()
    assert data["model"] == "beta"
    assert data["choices"][0]["message"]["content"] == "beta answers (beta-up-v2): edoc ym weiver esaelp"
    routing = data["routing"]
    assert routing["model_name"] == "beta" and routing["routed"] is True
    assert routing["scores"]["beta"] == pytest.approx(0.7) and set(routing["scores"]) == set(CANDIDATES)
    assert routing["confidence"] == pytest.approx(0.7) and routing["reasoning"] == "fake rule for u-route"
    assert routing["session_id"] == "sess-42" and routing["turn"] == 1
    # the router saw the query the server built
    assert router.route_calls[-1] == {"query_text": "please review my code", "user_id": "u-route", "turn": 1,
                                      "conversation_history": [], "session_id": "sess-42"}
    # the upstream got the messages, its own model name and its own key; nothing of ours
    sent = up.requests[-1]
    assert sent["tenant"] == "beta"
    assert sent["body"] == {"model": "beta-up-v2", "messages": msgs, "user": "u-route", "temperature": 0.1}
    assert sent["headers"]["authorization"] == f"Bearer {BETA_KEY}"
    assert TOKEN not in json.dumps(sent["headers"])


def test_multi_turn_gives_turn_and_history(stack):
    client, router, up = stack["client"], stack["router"], stack["upstream"]
    msgs = [
        {"role": "user", "content": "What is machine learning?"},
        {"role": "assistant", "content": "A way to learn from data."},
        {"role": "user", "content": [{"type": "text", "text": "How does it differ"},
                                      {"type": "text", "text": "from deep learning?"}]},
    ]
    r = chat(client, msgs, user="u-multi", session_id="s-multi")
    assert r.status_code == 200, r.text
    q = router.route_calls[-1]
    assert q["turn"] == 2 and q["conversation_history"] == ["What is machine learning?"]
    assert q["query_text"] == "How does it differ\nfrom deep learning?" and q["session_id"] == "s-multi"
    assert "session_id" not in up.requests[-1]["body"]  # our extension field is not forwarded
    assert up.requests[-1]["body"]["messages"] == msgs
    assert r.json()["routing"]["turn"] == 2


def test_concrete_model_bypasses_routing(stack):
    client, router, up = stack["client"], stack["router"], stack["upstream"]
    n = len(router.route_calls)
    r = client.post("/v1/chat/completions",
                    json={"model": "alpha", "messages": [{"role": "user", "content": "write code"}]})
    assert r.status_code == 200, r.text
    assert len(router.route_calls) == n  # not routed, no user needed
    assert r.headers[ROUTED_MODEL_HEADER] == "alpha" and r.json()["model"] == "alpha"
    assert r.json()["routing"] == {"model_name": "alpha", "routed": False, "session_id": None}
    assert up.requests[-1]["tenant"] == "alpha" and up.requests[-1]["body"]["model"] == "alpha-up-v1"
    assert up.requests[-1]["headers"]["authorization"] == f"Bearer {ALPHA_KEY}"


def test_streaming_relays_chunks_in_order_with_the_routed_model(stack):
    up = stack["upstream"]
    up.gate.clear()
    question = "GATED stream me something"
    body = {"model": "router", "user": "u-stream", "stream": True,
            "messages": [{"role": "user", "content": question}]}
    received: list[str] = []
    with httpx.Client(base_url=stack["url"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            assert r.headers[ROUTED_MODEL_HEADER] == "alpha"
            assert r.headers["content-type"].startswith("text/event-stream")
            raw = b""
            for chunk in r.iter_bytes():
                raw += chunk
                if b"data: " in raw and not up.gate.is_set():
                    up.gate.set()  # the first chunk arrived before the upstream finished
            received = [line for line in raw.decode().split("\n") if line]
    # the upstream held its last chunk until we had seen the first: real streaming, no buffering
    assert up.gate_seen[-1] is True
    sent = [json.loads(c[len(b"data: "):]) for c in up.sent_chunks[-len(received):-1]]
    assert received[-1] == "data: [DONE]"
    got = [json.loads(line[len("data: "):]) for line in received[:-1]]
    pieces = [c["choices"][0]["delta"]["content"] for c in got]
    assert "".join(pieces) == f"alpha answers (alpha-up-v1): {question[::-1]}"
    assert len(pieces) == len(question.split(" ")) + 3
    # each chunk carries the routed model's name, as the non-streamed answer does; nothing else changes
    assert {c["model"] for c in sent} == {"alpha-up-v1"} and {c["model"] for c in got} == {"alpha"}
    assert [{**c, "model": "alpha"} for c in sent] == got


def test_missing_endpoint_key_and_upstream_errors(stack):
    client = stack["client"]
    r = chat(client, [{"role": "user", "content": "ask gamma please"}], user="u-err")
    # a configuration problem, not worth a retry: a 4xx (OpenAI clients retry 408/409/429/5xx)
    assert r.status_code == 404 and r.headers["x-should-retry"] == "false"
    e = err(r)
    assert e["code"] == "endpoint_not_configured" and "'gamma'" in e["message"] and e["param"] == "model"
    r = client.post("/v1/chat/completions", json={"model": "delta", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 503 and err(r)["code"] == "api_key_missing" and r.headers["x-should-retry"] == "false"
    assert "GMT_TEST_UNSET_KEY_VAR" in err(r)["message"]
    for stream in (False, True):
        r = client.post("/v1/chat/completions",
                        json={"model": "broken", "stream": stream, "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 502
        e = err(r)
        assert e["upstream_status"] == 401 and e["type"] == "upstream_error"
        assert "Incorrect API key provided" in e["message"] and BROKEN_KEY not in r.text


def test_unreachable_upstream_is_502(env):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()  # nothing listens there now
    eps = load_endpoints({"alpha": {"base_url": f"http://127.0.0.1:{dead}/v1", "api_key_env": "GMT_TEST_ALPHA_KEY"}})
    with TestClient(create_app(FakeRouter(["alpha", "beta"]), endpoints=eps)) as c:
        r = c.post("/v1/chat/completions", json={"model": "router", "user": "u",
                                                 "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 502
        e = err(r)
        assert e["code"] == "upstream_unreachable" and e["upstream_status"] is None
        assert ALPHA_KEY not in r.text


def test_bad_requests(stack):
    client, router = stack["client"], stack["router"]
    n = len(router.route_calls)
    r = chat(client, [], user="u")
    assert r.status_code == 400 and "messages" in err(r)["message"] and err(r)["param"] == "messages"
    r = chat(client, [{"role": "user", "content": "hi"}])
    assert r.status_code == 400 and err(r)["param"] == "user" and "'user'" in err(r)["message"]
    r = chat(client, [{"role": "system", "content": "only system"}], user="u")
    assert r.status_code == 400 and "role 'user'" in err(r)["message"]
    r = chat(client, [{"role": "user", "content": "   "}], user="u")
    assert r.status_code == 400 and "no text" in err(r)["message"]
    r = client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and err(r)["code"] == "model_not_found" and "'gpt-9'" in err(r)["message"]
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and err(r)["code"] == "invalid_json"
    r = client.post("/v1/chat/completions", json=[1, 2])
    assert r.status_code == 400 and "JSON object" in err(r)["message"]
    r = client.post("/v1/chat/completions", content=b"")
    assert r.status_code == 400 and "empty" in err(r)["message"]
    r = client.post("/v1/chat/completions", json={"model": "router", "user": 5, "messages": [{"role": "user"}]})
    assert r.status_code == 400 and "user" in err(r)["message"] and err(r)["param"] == "user"
    r = chat(client, [{"role": "user", "content": "hi"}], user="u", stream="yes")  # a JSON boolean only
    assert r.status_code == 400 and err(r)["param"] == "stream"
    r = chat(client, [{"role": "user", "content": "hi"}], user="u", stream=1)
    assert r.status_code == 400 and err(r)["param"] == "stream"
    r = chat(client, [{"role": "user", "content": "hi"}, {"role": ""}], user="u")
    assert r.status_code == 400 and err(r)["param"] == "messages[1].role"
    big = {"model": "router", "user": "u", "messages": [{"role": "user", "content": "x" * 30_000}]}
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and err(r)["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "router", "user": "u", "messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"}]}'

    r = client.post("/v1/chat/completions", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and err(r)["code"] == "request_too_large"
    assert len(router.route_calls) == n  # none of these reached the router


# ---------------------------------------------------------------------------
# route, feedback, models, health, metrics, auth
# ---------------------------------------------------------------------------
def test_route_single_and_batch(stack):
    client, router = stack["client"], stack["router"]
    q = {"query_text": "fix my code", "user_id": "u-r", "session_id": "s", "turn": 2}
    r = client.post("/v1/route", json=q)
    assert r.status_code == 200
    assert r.json() == router.route_single(dict(q))
    assert router.route_calls[-2] == q
    batch = [{"query_text": "a poem", "user_id": "u1"}, {"query_text": "code", "user_id": "u2",
                                                        "candidates": ["alpha", "beta"]}]
    r = client.post("/v1/route", json={"queries": batch})
    assert r.status_code == 200
    assert [x["model_name"] for x in r.json()["results"]] == ["alpha", "beta"]
    assert set(r.json()["results"][1]["scores"]) == {"alpha", "beta"}
    r = client.post("/v1/route", json={"query_text": "x", "user_id": "u", "candidates": ["nope"]})
    assert r.status_code == 400 and err(r)["code"] == "routing_error" and "nope" in err(r)["message"]
    r = client.post("/v1/route", json={"query_text": "x", "user_id": "u", "colour": "red"})
    assert r.status_code == 400 and "colour" in err(r)["message"] and err(r)["param"] == "colour"
    r = client.post("/v1/route", json={"query_text": "x"})
    assert r.status_code == 400 and "user_id" in err(r)["message"] and err(r)["param"] == "user_id"
    r = client.post("/v1/route", json={"queries": []})
    assert r.status_code == 400 and "queries" in err(r)["message"] and err(r)["param"] == "queries"
    r = client.post("/v1/route", json={"queries": [{"query_text": "x", "user_id": "u", "turn": "2"}]})
    assert r.status_code == 400 and err(r)["param"] == "queries[0].turn"


def test_feedback_reaches_router_and_changes_routing(stack):
    client, router, log = stack["client"], stack["router"], stack["log"]
    user = "u-feedback"
    first = client.post("/v1/route", json={"query_text": "tell me a story", "user_id": user}).json()
    assert first["model_name"] == "alpha" and first["cold_start"] is True
    before = log.count()
    fb = {"user_id": user, "query": "tell me a story", "model": "beta", "rating": 5, "session_id": "s-fb", "turn": 1}
    r = client.post("/v1/feedback", json=fb)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["result"]["model"] == "beta"
    assert router.feedback_calls[-1] == {"user_id": user, "query": "tell me a story", "model": "beta",
                                         "rating": 5.0, "session_id": "s-fb"}
    # the router has no log of its own here, so the server wrote exactly one record
    assert log.count() == before + 1 and body["feedback_id"] == log.max_id()
    rec = log.read(since_id=log.max_id() - 1)[0]
    assert (rec.user_id, rec.query, rec.model, rec.rating, rec.session_id, rec.turn) == (
        user, "tell me a story", "beta", 5.0, "s-fb", 1)
    after = client.post("/v1/route", json={"query_text": "tell me a story", "user_id": user}).json()
    assert after["model_name"] == "beta" and after["cold_start"] is False

    n_calls, n_log = len(router.feedback_calls), log.count()
    bad = [
        ({**fb, "model": "nope"}, "unknown model", "model"),
        ({**fb, "rating": 9}, "outside", "rating"),
        ({**fb, "rating": "5"}, "rating", "rating"),
        ({k: v for k, v in fb.items() if k != "query"}, "query", "query"),
        ({**fb, "user_id": ""}, "user_id", "user_id"),
        ({**fb, "extra": 1}, "extra", "extra"),
    ]
    for payload, needle, param in bad:
        r = client.post("/v1/feedback", json=payload)
        assert r.status_code == 400, (payload, r.text)
        assert needle in err(r)["message"] and err(r)["param"] == param, r.text
    assert len(router.feedback_calls) == n_calls and log.count() == n_log


def test_feedback_not_double_written_when_router_has_a_log(env, upstream, tmp_path):
    log = FeedbackLog(tmp_path / "fb.sqlite")
    router = FakeRouter(feedback_log=log)
    with TestClient(create_app(router, endpoints=make_endpoints(upstream.url), feedback_log=log)) as c:
        r = c.post("/v1/feedback", json={"user_id": "u", "query": "q", "model": "alpha", "rating": 3.5})
        assert r.status_code == 200 and r.json()["feedback_id"] == 1  # the router's own row
        # and the in-process (ASGI) path forwards too
        r = c.post("/v1/chat/completions", json={"model": "router", "user": "u",
                                                 "messages": [{"role": "user", "content": "hello"}]})
        assert r.status_code == 200 and r.json()["model"] == "alpha"
    assert log.count() == 1 and log.read()[0].rating == 3.5


class TurnAwareRouter(FakeRouter):
    """Like GMTRouter: update_user_feedback also takes the turn."""

    def update_user_feedback(self, user_id: str, query: str, model: str, rating: float,
                             session_id: str | None = None, turn: int | None = None) -> dict[str, Any]:
        out = super().update_user_feedback(user_id, query, model, rating, session_id)
        self.feedback_calls[-1]["turn"] = turn
        return out


def test_feedback_passes_turn_to_routers_that_take_it(tmp_path):
    router = TurnAwareRouter()
    with TestClient(create_app(router, feedback_log=FeedbackLog(tmp_path / "fb.sqlite"))) as c:
        fb = {"user_id": "u", "query": "q", "model": "beta", "rating": 4.0, "session_id": "s"}
        assert c.post("/v1/feedback", json={**fb, "turn": 3}).status_code == 200
        assert c.post("/v1/feedback", json=fb).status_code == 200
        assert c.post("/v1/feedback", json={**fb, "turn": 0}).status_code == 400
    assert [call["turn"] for call in router.feedback_calls] == [3, None]


def test_models_and_health(stack):
    client = stack["client"]
    r = client.get("/v1/models")
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["router", *CANDIDATES]
    assert all(m["object"] == "model" for m in data["data"])
    configured = {m["id"]: m["endpoint_configured"] for m in data["data"][1:]}
    assert configured == {"alpha": True, "beta": True, "gamma": False, "delta": True, "broken": True}
    assert data["rating_scale"] == [1.0, 5.0]
    h = httpx.get(stack["url"] + "/health")  # no token needed; public: the status only
    assert h.status_code == 200 and h.json() == {"status": "ok"}


def test_auth(stack):
    url = stack["url"]
    protected = [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/route"), ("POST", "/v1/feedback"),
                 ("POST", "/v1/chat/completions")]
    body = {"model": "router", "user": "u", "messages": [{"role": "user", "content": "hi"}]}
    n_routes = len(stack["router"].route_calls)
    with httpx.Client(base_url=url, timeout=30) as anon:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"}):
            for method, path in protected:
                r = anon.request(method, path, headers=headers, json=body if method == "POST" else None)
                assert r.status_code == 401, (headers, path)
                assert err(r)["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
        for path in ("/health", "/", "/chat", "/static/chat.js", "/static/chat.css"):
            assert anon.get(path).status_code == 200, path
        assert anon.get("/v1/models", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert len(stack["router"].route_calls) == n_routes


def test_chat_page_is_served(stack):
    r = httpx.get(stack["url"] + "/chat")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert '<script src="/static/chat.js"' in r.text and 'id="user-id"' in r.text
    assert httpx.get(stack["url"] + "/").text == r.text
    js = httpx.get(stack["url"] + "/static/chat.js").text
    assert "/v1/chat/completions" in js and "/v1/feedback" in js and "localStorage" in js
    assert "http://" not in js and "https://" not in js  # no network outside this server
    assert httpx.get(stack["url"] + "/static/nope.js").status_code == 404


def test_metrics_count_requests_routing_and_feedback(stack):
    client = stack["client"]
    m0 = client.get("/metrics").text
    r200 = metric(m0, "gmtrouter_requests_total", method="POST", path="/v1/route", status="200")
    r400 = metric(m0, "gmtrouter_requests_total", method="POST", path="/v1/route", status="400")
    lat = metric(m0, "gmtrouter_routing_latency_seconds_count", kind="single")
    inf = metric(m0, "gmtrouter_routing_latency_seconds_bucket", kind="single", le="+Inf")
    fbn = metric(m0, "gmtrouter_feedback_total")
    routed_b = metric(m0, "gmtrouter_routed_total", model="beta")
    unauth = metric(m0, "gmtrouter_requests_total", method="GET", path="/v1/models", status="401")
    assert client.post("/v1/route", json={"query_text": "q", "user_id": "u-m"}).status_code == 200
    assert client.post("/v1/route", json={"query_text": "q", "user_id": "u-m"}).status_code == 200
    assert client.post("/v1/route", json={"query_text": "q"}).status_code == 400
    assert client.post("/v1/feedback", json={"user_id": "u-m", "query": "q", "model": "alpha",
                                             "rating": 2}).status_code == 200
    assert chat(client, [{"role": "user", "content": "code"}], user="u-m2").status_code == 200
    assert httpx.get(stack["url"] + "/v1/models").status_code == 401
    m1 = client.get("/metrics")
    assert m1.headers["content-type"].startswith("text/plain")
    t = m1.text
    assert metric(t, "gmtrouter_requests_total", method="POST", path="/v1/route", status="200") == r200 + 2
    assert metric(t, "gmtrouter_requests_total", method="POST", path="/v1/route", status="400") == r400 + 1
    assert metric(t, "gmtrouter_requests_total", method="GET", path="/v1/models", status="401") == unauth + 1
    assert metric(t, "gmtrouter_routing_latency_seconds_count", kind="single") == lat + 3
    assert metric(t, "gmtrouter_routing_latency_seconds_bucket", kind="single", le="+Inf") == inf + 3
    assert metric(t, "gmtrouter_feedback_total") == fbn + 1
    assert metric(t, "gmtrouter_routed_total", model="beta") == routed_b + 1
    assert "# TYPE gmtrouter_routing_latency_seconds histogram" in t


def test_keys_never_in_responses_or_logs(stack, caplog):
    client = stack["client"]
    caplog.set_level(logging.DEBUG)
    texts = []
    texts.append(chat(client, [{"role": "user", "content": "code please"}], user="u-k").text)
    texts.append(client.post("/v1/chat/completions",
                             json={"model": "broken", "messages": [{"role": "user", "content": "x"}]}).text)
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": "alpha", "stream": True, "messages": [{"role": "user", "content": "s"}]}) as r:
        texts.append(r.read().decode() + json.dumps(dict(r.headers)))
    texts.append(client.get("/v1/models").text + client.get("/metrics").text + client.get("/health").text)
    assert caplog.records, "expected the server to log something"
    everything = "\n".join(texts) + "\n" + caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for key in KEYS:
        assert key not in everything


def test_create_app_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(FakeRouter(), max_body_bytes=0)
    with pytest.raises(ValueError, match="auth_token"):
        create_app(FakeRouter(), auth_token="  ")
    with pytest.raises(TypeError, match="endpoints"):
        create_app(FakeRouter(), endpoints={"alpha": {"base_url": "http://x"}})  # type: ignore[dict-item]


def test_sse_rewriter_sets_the_model_in_every_event_whatever_the_chunking():
    from gmt_model.serving.server import _SSEModelRewriter

    events = [
        b'data: {"id": "1", "model": "up-name", "choices": [{"delta": {"content": "h\xc3\xa9"}}]}\n\n',
        b': a comment\r\n\r\n',
        b'event: ping\ndata: {"model": "up-name", "x": 1}\r\n\r\n',
        b'data: {"no_model": true}\n\n',
        b'data: not json\n\n',
        b'data: [DONE]\n\n',
    ]
    raw = b"".join(events)
    for size in (1, 7, len(raw)):
        rw = _SSEModelRewriter("routed")
        out = b"".join(rw.feed(raw[i:i + size]) for i in range(0, len(raw), size)) + rw.flush()
        parts = out.split(b"\n\n")
        assert json.loads(out.split(b"\n\n")[0][len(b"data: "):]) == {
            "id": "1", "model": "routed", "choices": [{"delta": {"content": "hé"}}]}
        assert b': a comment\r\n\r\n' in out and b'event: ping\ndata: {"model": "routed", "x": 1}\r\n\r\n' in out
        assert out.endswith(b'data: {"no_model": true}\n\ndata: not json\n\ndata: [DONE]\n\n'), parts
    rw = _SSEModelRewriter("routed")  # an unterminated last event is still passed on (rewritten)
    assert rw.feed(b'data: {"model": "x"}') == b"" and rw.flush() == b'data: {"model": "routed"}'
