"""The OpenAI-compatible proxy: ``POST /v1/chat/completions`` routes (``model: "router"``) or passes a named
candidate through, then forwards to the chosen LLM's endpoint (plain JSON or a relayed SSE stream)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gmt_model.errors import RoutingError
from gmt_model.serving.app_state import AppState, state_of
from gmt_model.serving.endpoints import Endpoint, MissingAPIKeyError
from gmt_model.serving.http_bodies import _ChatMessage, _ChatRequest, _jsonable, _read_json, _validate, check_id
from gmt_model.serving.http_errors import NO_RETRY, ApiError, routing_api_error
from gmt_model.serving.http_llms import COST_FIELDS, cost_options
from gmt_model.serving.sse import _SSEModelRewriter

log = logging.getLogger("gmt_model.serving.server")

ROUTER_MODEL = "router"
ROUTED_MODEL_HEADER = "X-Routed-Model"
SESSION_HEADER = "X-Session-Id"
#: the kind of work (``task``) as a header, for clients that cannot add a body field
TASK_HEADER = "X-Task"
#: router field -> the chat completion field it came from (for error messages)
_CHAT_NAMES = {"user_id": "user", "query_text": "messages", "turn": "messages",
               "conversation_history": "messages", "candidates": "model"}


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(
        str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
    )


def _conversation(messages: list[_ChatMessage]) -> tuple[str, int, list[str]]:
    """(query text, turn number, earlier user messages) from an OpenAI message list."""
    user_texts = [_text_of(m.content) for m in messages if m.role == "user"]
    if not user_texts:
        raise ApiError(400, "messages contain no message with role 'user'", param="messages")
    query = user_texts[-1]
    if not query.strip():
        raise ApiError(400, "the last user message has no text content", param="messages")
    return query, len(user_texts), user_texts[:-1]


async def chat_completions(request: Request) -> Response:
    st = state_of(request)
    raw = await _read_json(request)
    req = _validate(_ChatRequest, raw)
    session_id = req.session_id or request.headers.get(SESSION_HEADER) or None
    if session_id is not None and not req.session_id:
        try:
            check_id(session_id, "a session id")
        except ValueError as exc:
            raise ApiError(400, f"header {SESSION_HEADER}: {exc}", param=SESSION_HEADER) from None
    deadline = st.deadline()
    served = st.holder.current
    router = served.router
    if req.model == ROUTER_MODEL:
        user = st.effective_user(request, req.user, "user")
        query_text, turn, history = _conversation(req.messages)
        query: dict[str, Any] = {
            "query_text": query_text,
            "user_id": user,
            "turn": turn,
            "conversation_history": history,
        }
        if session_id:
            query["session_id"] = session_id
        t0 = time.perf_counter()
        try:
            query.update(cost_options(raw, request.headers))  # cost_weight / max_cost (http_llms)
            task = raw.get("task") if raw.get("task") is not None else request.headers.get(TASK_HEADER)
            if task is not None:  # an extension field (or the header): checked by the router, echoed in routing
                query["task"] = task
            async with st.admit():
                result = _jsonable(await st.route_one(served, query, deadline))
        except RoutingError as exc:
            raise routing_api_error(exc, _CHAT_NAMES) from None
        chosen = result.get("model_name") if isinstance(result, dict) else None
        if not isinstance(chosen, str) or not chosen:
            raise TypeError(f"router.route_single returned no model_name: {result!r}")
        routing = dict(result)
        routing.update({"routed": True, "session_id": session_id, "turn": turn,
                        "latency_ms": round((time.perf_counter() - t0) * 1000, 3)})
        log.info("routed turn=%d to %s (confidence %s)", turn, chosen, result.get("confidence"))
    elif req.model in list(router.candidates):
        if req.user is not None and st.enforce_identity:
            st.effective_user(request, req.user, "user")
        chosen = req.model
        routing = {"model_name": chosen, "routed": False, "session_id": session_id}
    else:
        raise ApiError(
            404,
            f"The model {req.model!r} does not exist; use {ROUTER_MODEL!r} or one of {list(router.candidates)}",
            param="model",
            code="model_not_found",
        )
    endpoint = st.endpoints.get(chosen)
    if endpoint is None:
        raise ApiError(
            404,
            f"no endpoint is configured for model {chosen!r}, so it cannot answer "
            f"(configured: {sorted(st.endpoints)}); use /v1/route to route only",
            param="model",
            code="endpoint_not_configured",
            extra={"routing": routing},
            headers=NO_RETRY,
        )
    try:
        headers = endpoint.headers()
        key = endpoint.api_key()
    except MissingAPIKeyError as exc:
        raise ApiError(503, str(exc), type="service_unavailable", code="api_key_missing",
                       headers=NO_RETRY) from None
    payload = dict(raw)
    payload.pop("session_id", None)
    for field in (*COST_FIELDS, "task"):  # routing options, not forwarded upstream
        payload.pop(field, None)
    payload["model"] = endpoint.model
    st.metrics.bump(st.metrics.routed, chosen)
    if req.stream:
        return await forward_stream(request, endpoint, payload, headers, key, chosen)
    return await forward(request, endpoint, payload, headers, key, chosen, routing)


def _client_for(request: Request) -> tuple[httpx.AsyncClient, bool]:
    client = request.app.state.http_client
    if client is not None:
        return client, False
    return httpx.AsyncClient(), True  # no lifespan ran (e.g. a bare ASGI transport)


async def forward(request: Request, endpoint: Endpoint, payload: dict, headers: dict, key: str | None, chosen: str,
                  routing: dict) -> JSONResponse:
    """Send a non-streamed completion to ``endpoint``; the answer names the routed LLM and carries ``routing``."""
    st: AppState = state_of(request)
    client, owned = _client_for(request)
    try:
        resp = await client.post(endpoint.url, json=payload, headers=headers, timeout=endpoint.timeout)
    except httpx.TimeoutException as exc:
        raise st.upstream_failure(chosen, None, f"timed out ({type(exc).__name__})", key, "upstream_timeout") from None
    except httpx.RequestError as exc:
        raise st.upstream_failure(chosen, None, f"{type(exc).__name__}: {exc}", key, "upstream_unreachable") from None
    finally:
        if owned:
            await client.aclose()
    if resp.status_code // 100 != 2:
        raise st.upstream_failure(chosen, resp.status_code, resp.text, key, "upstream_error")
    try:
        data = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise st.upstream_failure(chosen, resp.status_code, "response is not JSON", key,
                                  "upstream_bad_response") from None
    if not isinstance(data, dict):
        raise st.upstream_failure(chosen, resp.status_code, "response is not a JSON object", key,
                                  "upstream_bad_response")
    data["model"] = chosen
    data["routing"] = routing
    return JSONResponse(data, headers={ROUTED_MODEL_HEADER: chosen})


async def forward_stream(request: Request, endpoint: Endpoint, payload: dict, headers: dict, key: str | None,
                         chosen: str) -> StreamingResponse:
    """Relay the upstream's SSE events as they come, each chunk's ``model`` set to the routed LLM."""
    st: AppState = state_of(request)
    client, owned = _client_for(request)
    up_headers = dict(headers, Accept="text/event-stream")
    up_headers["Accept-Encoding"] = "identity"
    upstream_req = client.build_request("POST", endpoint.url, json=payload, headers=up_headers,
                                        timeout=endpoint.timeout)
    try:
        resp = await client.send(upstream_req, stream=True)
    except httpx.RequestError as exc:
        if owned:
            await client.aclose()
        code = "upstream_timeout" if isinstance(exc, httpx.TimeoutException) else "upstream_unreachable"
        raise st.upstream_failure(chosen, None, f"{type(exc).__name__}: {exc}", key, code) from None
    if resp.status_code // 100 != 2:
        body = await resp.aread()
        await resp.aclose()
        if owned:
            await client.aclose()
        raise st.upstream_failure(chosen, resp.status_code, body.decode("utf-8", "replace"), key, "upstream_error")

    async def relay() -> AsyncIterator[bytes]:
        rewriter = _SSEModelRewriter(chosen)
        try:
            async for chunk in resp.aiter_bytes():
                out = rewriter.feed(chunk)
                if out:
                    yield out
            rest = rewriter.flush()
            if rest:
                yield rest
        except httpx.HTTPError as exc:
            st.metrics.bump(st.metrics.upstream_errors, chosen)
            log.warning("upstream stream for model %s broke: %s", chosen, type(exc).__name__)
            err = {"error": {"message": f"upstream stream for model {chosen!r} broke: {type(exc).__name__}",
                             "type": "upstream_error", "param": None, "code": "upstream_stream_error"}}
            yield f"data: {json.dumps(err)}\n\n".encode()
        finally:
            await resp.aclose()
            if owned:
                await client.aclose()

    return StreamingResponse(
        relay(),
        status_code=200,
        media_type=resp.headers.get("content-type", "text/event-stream"),
        headers={ROUTED_MODEL_HEADER: chosen, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
