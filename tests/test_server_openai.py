"""The API as OpenAI clients expect it (issue 9 item 8), checked with the official ``openai`` client.

The gmtrouter app (a real ``GMTRouter`` on a tiny random checkpoint, the
shared bearer token as the client's API key) and the shared fake upstream
run on 127.0.0.1.  ``alpha`` and ``beta`` have endpoints, ``gamma`` has none.
"""

from __future__ import annotations

import httpx
import pytest

openai = pytest.importorskip("openai", reason="the openai client is in the test extras: pip install -e .[test]")

from gmt_model.serving.endpoints import load_endpoints  # noqa: E402
from gmt_model.serving.server import ROUTED_MODEL_HEADER, create_app  # noqa: E402
from servers import ServerThread, TenantUpstream  # noqa: E402
from test_server_reload import tiny_checkpoint, tiny_router  # noqa: E402

TOKEN = "openai-client-token-42"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    router = tiny_router(tiny_checkpoint(root / "ckpt", seed=21), root / "feedback.sqlite")
    up = TenantUpstream()
    with ServerThread(up.app) as up_srv:
        endpoints = load_endpoints({m: {"base_url": f"{up_srv.url}/{m}/v1", "model": f"{m}-upstream-name"}
                                    for m in ("alpha", "beta")})
        app = create_app(router, endpoints=endpoints, auth_token=TOKEN, model_info={"uri": str(root / "ckpt"),
                                                                                   "version": "v-test"})
        with ServerThread(app) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key=TOKEN, max_retries=2, timeout=30)
            yield {"client": client, "url": srv.url, "router": router, "upstream": up}
            client.close()


def requests_seen(url: str, path: str, status: int) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    needle = f'gmtrouter_requests_total{{method="POST",path="{path}",status="{status}"}} '
    return next((float(line.split(" ")[-1]) for line in text.splitlines() if line.startswith(needle)), 0.0)


def test_completion_names_the_routed_model(stack):
    client, router = stack["client"], stack["router"]
    for i in range(100):  # a query this random checkpoint routes to a model with an endpoint
        q = f"What is the capital of France? ({i})"
        expected = router.route_single({"query_text": q, "user_id": "u1"})["model_name"]
        if expected in ("alpha", "beta"):
            break
    resp = client.chat.completions.with_raw_response.create(
        model="router", user="u1", messages=[{"role": "user", "content": q}])
    completion = resp.parse()
    assert completion.model == resp.headers[ROUTED_MODEL_HEADER]
    assert completion.model == expected and completion.choices[0].message.content == f"{expected} answers: {q}"


def test_streamed_chunks_carry_the_routed_model(stack):
    client, up = stack["client"], stack["upstream"]
    stream = client.chat.completions.create(model="beta", stream=True,
                                            messages=[{"role": "user", "content": "count to five please"}])
    chunks = list(stream)
    assert len(chunks) >= 4
    assert {c.model for c in chunks} == {"beta"}  # the upstream's chunks said "beta-upstream-name"
    assert up.requests[-1]["body"]["model"] == "beta-upstream-name" and up.requests[-1]["body"]["stream"] is True
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "beta answers: count to five please"


def test_models_list_and_retrieve(stack):
    client = stack["client"]
    ids = [m.id for m in client.models.list()]
    assert ids == ["router", "alpha", "beta", "gamma"]
    assert client.models.retrieve("beta").id == "beta"
    router_model = client.models.retrieve("router")
    assert router_model.id == "router" and router_model.model_extra["model_version"] == "v-test"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("gpt-99")
    assert exc.value.code == "model_not_found"


def test_validation_errors_are_400_with_the_clients_field(stack):
    client, url = stack["client"], stack["url"]
    with pytest.raises(openai.BadRequestError) as exc:  # the router refuses the id; the error names 'user'
        client.chat.completions.create(model="router", user="not a valid id!", messages=[{"role": "user",
                                                                                        "content": "hi"}])
    assert exc.value.status_code == 400 and exc.value.param == "user" and "user_id" not in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="router", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.param == "user"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="router", user="u1", messages=[])
    assert exc.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as exc:  # "stream": "yes" is not a boolean
        client.chat.completions.create(model="router", user="u1", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"stream": "yes"})
    assert exc.value.param == "stream"
    assert requests_seen(url, "/v1/chat/completions", 422) == 0


def test_a_missing_endpoint_is_not_retried(stack):
    client, url = stack["client"], stack["url"]
    before = requests_seen(url, "/v1/chat/completions", 404)
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gamma", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "endpoint_not_configured" and "gamma" in exc.value.message
    assert requests_seen(url, "/v1/chat/completions", 404) == before + 1  # one request: no retries
