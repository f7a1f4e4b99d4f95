"""Identity you can trust (issue 9 item 11), over HTTP on 127.0.0.1.

Per-user API keys (a keys file: key -> user id) and a trusted identity header
set by an authenticating proxy.  When identity is enforced the user of a
route, chat completion or feedback is the authenticated one: a request that
names another user gets a 403 and stores nothing; one that names nobody acts
for the authenticated user.  A real ``GMTRouter`` (tiny random checkpoint) with
a durable feedback log, and the shared fake upstream.
"""

from __future__ import annotations

import hashlib
import json
import logging

import httpx
import pytest

from gmt_model.serving.endpoints import load_endpoints
from gmt_model.serving.feedback import FeedbackLog
from gmt_model.serving.server import ApiKeys, ServerConfigError, create_app, load_api_keys
from servers import ServerThread, TenantUpstream
from test_server_reload import LLMS, tiny_checkpoint, tiny_router

ALICE_KEY = "gk-alice-7d1e0c5b9a2f44e1"
BOB_KEY = "gk-bob-0f3c8e2d6b1a9c77"
CAROL_KEY = "gk-carol-5e9b1d3f7a2c8e40"  # stored only as its sha256 in the keys file
SHARED = "shared-token-abc-123"
HEADER = "X-Authenticated-User"
KEYS = (ALICE_KEY, BOB_KEY, CAROL_KEY)


@pytest.fixture(scope="module")
def upstream():
    up = TenantUpstream()
    with ServerThread(up.app) as srv:
        up.url = srv.url
        yield up


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("keys") / "api_keys.yaml"
    digest = hashlib.sha256(CAROL_KEY.encode()).hexdigest()
    p.write_text(f"{ALICE_KEY}: alice\n{BOB_KEY}: bob\n'sha256:{digest}': carol\n")
    return p


@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstream, keys_file):
    root = tmp_path_factory.mktemp("identity")
    log_path = root / "feedback.sqlite"
    router = tiny_router(tiny_checkpoint(root / "ckpt", seed=11), log_path)
    endpoints = load_endpoints({m: {"base_url": f"{upstream.url}/{m}/v1"} for m in LLMS})
    app = create_app(router, endpoints=endpoints, auth_token=SHARED, api_keys=load_api_keys(keys_file),
                     identity_header=HEADER)
    with ServerThread(app, log_level="info") as srv:
        yield {"url": srv.url, "log": FeedbackLog(log_path), "router": router, "upstream": upstream}


def as_user(key: str | None, headers: dict[str, str] | None = None) -> dict[str, str]:
    out = dict(headers or {})
    if key is not None:
        out["Authorization"] = f"Bearer {key}"
    return out


def err(r: httpx.Response) -> dict:
    return r.json()["error"]


def test_keys_identify_the_user(stack):
    url = stack["url"]
    r = httpx.post(url + "/v1/route", json={"query_text": "Tell me a joke."}, headers=as_user(ALICE_KEY))
    assert r.status_code == 200, r.text
    assert "alice" in r.json()["reasoning"]  # routed as the key's user
    r = httpx.post(url + "/v1/route", json={"query_text": "Tell me a joke.", "user_id": "alice"},
                   headers=as_user(ALICE_KEY))
    assert r.status_code == 200  # naming yourself is fine
    r = httpx.post(url + "/v1/route", json={"query_text": "q", "user_id": "carol"}, headers=as_user(CAROL_KEY))
    assert r.status_code == 200  # a key stored as its sha256 works
    for headers in ({}, as_user("gk-unknown-key-000000000"), as_user(ALICE_KEY + "x"), {"Authorization": ALICE_KEY}):
        r = httpx.post(url + "/v1/route", json={"query_text": "q"}, headers=headers)
        assert r.status_code == 401 and err(r)["type"] == "authentication_error", headers


def test_naming_another_user_is_refused_and_stores_nothing(stack):
    url, log = stack["url"], stack["log"]
    n = log.count()
    r = httpx.post(url + "/v1/route", json={"query_text": "q", "user_id": "bob"}, headers=as_user(ALICE_KEY))
    assert r.status_code == 403 and err(r)["param"] == "user_id" and err(r)["code"] == "user_mismatch"
    r = httpx.post(url + "/v1/route", json={"queries": [{"query_text": "a"}, {"query_text": "b", "user_id": "bob"}]},
                   headers=as_user(ALICE_KEY))
    assert r.status_code == 403 and err(r)["param"] == "queries[1].user_id"
    for body, param in (({"user": "bob"}, "user"), ({"user_id": "bob"}, "user_id")):
        fb = {"query": "poison bob", "model": "alpha", "rating": 1.0, **body}
        r = httpx.post(url + "/v1/feedback", json=fb, headers=as_user(ALICE_KEY))
        assert r.status_code == 403 and err(r)["param"] == param, r.text
    r = httpx.post(url + "/v1/feedback", json={"user": "bob", "query": "poison bob", "preferred": "alpha",
                                               "rejected": "beta"}, headers=as_user(ALICE_KEY))
    assert r.status_code == 403
    msgs = [{"role": "user", "content": "hello"}]
    for model in ("router", "alpha"):
        r = httpx.post(url + "/v1/chat/completions", json={"model": model, "user": "bob", "messages": msgs},
                       headers=as_user(ALICE_KEY))
        assert r.status_code == 403 and err(r)["param"] == "user", r.text
    assert log.count() == n  # nothing stored
    assert stack["router"].history_size("bob") == 0


def test_feedback_without_a_user_is_the_authenticated_users(stack):
    url, log = stack["url"], stack["log"]
    r = httpx.post(url + "/v1/feedback", json={"query": "Plan my week.", "model": "beta", "rating": 5.0},
                   headers=as_user(BOB_KEY))
    assert r.status_code == 200, r.text
    rec = log.read(since_id=r.json()["feedback_id"] - 1)[0]
    assert rec.id == r.json()["feedback_id"] and rec.user_id == "bob" and rec.model == "beta"
    r = httpx.post(url + "/v1/chat/completions", json={"model": "router", "messages": [
        {"role": "user", "content": "Plan my week."}]}, headers=as_user(BOB_KEY))
    assert r.status_code == 200 and r.json()["routing"]["history_size"] >= 1  # routed for bob


def test_trusted_header_names_the_user(stack):
    url = stack["url"]
    hdr = as_user(SHARED, {HEADER: "dave"})  # the proxy authenticates with the shared token and names the user
    r = httpx.post(url + "/v1/route", json={"query_text": "q"}, headers=hdr)
    assert r.status_code == 200 and "dave" in r.json()["reasoning"]
    r = httpx.post(url + "/v1/route", json={"query_text": "q", "user_id": "erin"}, headers=hdr)
    assert r.status_code == 403
    # the shared token alone names nobody: user requests need an identity
    r = httpx.post(url + "/v1/route", json={"query_text": "q", "user_id": "erin"}, headers=as_user(SHARED))
    assert r.status_code == 401 and err(r)["code"] == "identity_required"
    assert httpx.get(url + "/v1/models", headers=as_user(SHARED)).status_code == 200
    # a key and a header naming different users conflict
    r = httpx.post(url + "/v1/route", json={"query_text": "q"}, headers=as_user(ALICE_KEY, {HEADER: "bob"}))
    assert r.status_code == 403 and err(r)["code"] == "identity_conflict"


def test_header_is_ignored_unless_configured(tmp_path):
    router = tiny_router(tiny_checkpoint(tmp_path / "ckpt", seed=12))
    with ServerThread(create_app(router)) as srv:
        r = httpx.post(srv.url + "/v1/route", json={"query_text": "q", "user_id": "erin"}, headers={HEADER: "dave"})
        assert r.status_code == 200 and "erin" in r.json()["reasoning"]
    with ServerThread(create_app(router, identity_header=HEADER)) as srv:
        r = httpx.post(srv.url + "/v1/route", json={"query_text": "q", "user_id": "erin"})
        assert r.status_code == 401 and err(r)["code"] == "identity_required"


def test_keys_never_in_responses_or_logs(stack, caplog):
    url = stack["url"]
    caplog.set_level(logging.DEBUG)
    texts = [
        httpx.post(url + "/v1/route", json={"query_text": "q", "user_id": "bob"}, headers=as_user(ALICE_KEY)).text,
        httpx.post(url + "/v1/route", json={"query_text": "q"}, headers=as_user(CAROL_KEY + "0")).text,
        httpx.post(url + "/v1/feedback", json={"query": "q", "model": "alpha", "rating": 9.0},
                   headers=as_user(BOB_KEY)).text,
        httpx.get(url + "/v1/models", headers=as_user(ALICE_KEY)).text,
        httpx.get(url + "/metrics", headers=as_user(ALICE_KEY)).text,
        httpx.get(url + "/health").text,
    ]
    assert caplog.records
    everything = "\n".join(texts) + caplog.text + "".join(str(r.args) for r in caplog.records)
    for key in KEYS:
        assert key not in everything
    keys = ApiKeys({k: "u" for k in KEYS})
    assert repr(keys) == "ApiKeys(3 keys)" and not any(k in repr(keys) + str(vars(keys)) for k in KEYS)


@pytest.mark.parametrize("text, fragment", [
    ("{not: [json", "neither JSON nor YAML"),
    ("[1, 2]", "expected a mapping"),
    (json.dumps({"short": "alice"}), "at least 16 characters"),
    (json.dumps({"sha256:abc": "alice"}), "64 hex digits"),
    (json.dumps({ALICE_KEY: "bad user id"}), "entry 1"),
    (json.dumps({}), "no API keys"),
])
def test_bad_keys_file_names_the_file_and_entry_not_the_key(tmp_path, text, fragment):
    p = tmp_path / "keys.json"
    p.write_text(text)
    with pytest.raises(ServerConfigError) as exc:
        load_api_keys(p)
    assert str(p) in str(exc.value) and fragment in str(exc.value)
    assert ALICE_KEY not in str(exc.value) and "'short'" not in str(exc.value)
    with pytest.raises(ServerConfigError, match="not found"):
        load_api_keys(tmp_path / "missing.json")
