"""FastAPI app: OpenAI-compatible routing proxy, route/feedback/models/health/metrics, chat page.

Endpoints (all JSON errors use the OpenAI shape ``{"error": {"message", "type",
"param", "code"}}``):

* ``POST /v1/chat/completions``: OpenAI chat completions.  ``model: "router"``
  routes the last user message for the ``user`` field's user id through
  ``router.route_single``; a candidate model name bypasses routing.  The
  request goes to the chosen model's endpoint (its own model name, its own
  key); ``stream: true`` passes the upstream SSE bytes through unchanged with
  the routed model in the ``X-Routed-Model`` header; non-stream answers get
  ``model`` set to the routed LLM name and a ``routing`` object.
* ``POST /v1/route``: route only (one query dict, or ``{"queries": [...]}``).
* ``POST /v1/feedback``: ``router.update_user_feedback`` (``turn`` is passed
  when the router's method accepts it).  The router writes
  its own feedback log when it has one (attribute ``feedback_log``); the
  server appends to ``feedback_log`` only when the router has none.
* ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).
* ``GET /`` and ``GET /chat``: the chat page; ``/static/*``: its assets.

An optional bearer token guards everything except ``/health`` and the chat
page with its assets.  Router calls run in a worker thread, one at a time
(the router's live user graph is not assumed thread-safe).
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gmt_model.endpoints import Endpoint, MissingAPIKeyError, redact
from gmt_model.feedback import FeedbackLog
from gmt_model.errors import RoutingError

__all__ = [
    "create_app",
    "run_server",
    "ApiError",
    "RoutingError",
    "ROUTER_MODEL",
    "STATIC_DIR",
    "ROUTED_MODEL_HEADER",
    "SESSION_HEADER",
]

log = logging.getLogger(__name__)

#: The pseudo model name that asks the server to route.
ROUTER_MODEL = "router"
ROUTED_MODEL_HEADER = "X-Routed-Model"
SESSION_HEADER = "X-Session-Id"
STATIC_DIR = Path(__file__).resolve().parent / "static"
_MAX_BATCH = 1000
_KNOWN_PATHS = frozenset(
    {"/", "/chat", "/health", "/metrics", "/v1/models", "/v1/route", "/v1/feedback", "/v1/chat/completions"}
)
_OPEN_PATHS = frozenset({"/health", "/", "/chat"})
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
class ApiError(Exception):
    """An error answered as OpenAI-style JSON with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.extra = extra or {}

    def response(self) -> JSONResponse:
        err: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        err.update(self.extra)
        return JSONResponse({"error": err}, status_code=self.status)


def _error_json(status: int, message: str, type: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": None, "code": code}}).encode()


# ---------------------------------------------------------------------------
# request bodies
# ---------------------------------------------------------------------------
class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None


class _ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[_ChatMessage] = Field(min_length=1)
    user: str | None = None
    stream: bool = False
    session_id: str | None = None


class _RouteQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query_text: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    session_id: str | None = None
    turn: int | None = Field(default=None, ge=1)
    conversation_history: list[Any] | None = None
    candidates: list[str] | None = None

    def to_query(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class _RouteBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[_RouteQuery] = Field(min_length=1, max_length=_MAX_BATCH)


class _FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1)
    query: str = Field(min_length=1)
    model: str = Field(min_length=1)
    rating: float = Field(strict=True, allow_inf_nan=False)
    session_id: str | None = None
    turn: int | None = Field(default=None, ge=1)
    query_id: str | None = None


def _validate(cls: type[BaseModel], raw: Any) -> Any:
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        errs = exc.errors()
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errs[:5]]
        param = ".".join(str(p) for p in errs[0]["loc"]) if errs and errs[0]["loc"] else None
        raise ApiError(422, "invalid request: " + "; ".join(parts), param=param) from None


async def _read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    return data


def _jsonable(x: Any) -> Any:
    """Router results may hold numpy/torch scalars; make them plain JSON values."""
    if x is None or isinstance(x, (str, bool, int)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    tolist = getattr(x, "tolist", None)
    if callable(tolist):
        return _jsonable(tolist())
    raise TypeError(f"value of type {type(x).__name__} cannot be sent as JSON")


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


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------
def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Metrics:
    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # kind -> bucket counts (+Inf last)
        self.latency_sum: dict[str, float] = {}
        self.latency_count: dict[str, int] = {}
        self.routed: dict[str, int] = {}
        self.upstream_errors: dict[str, int] = {}
        self.feedback = 0

    def request(self, method: str, path: str, status: int) -> None:
        with self._lock:
            key = (method, path, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def routing(self, kind: str, seconds: float) -> None:
        with self._lock:
            counts = self.latency.setdefault(kind, [0.0] * (len(self.BUCKETS) + 1))
            for i, b in enumerate(self.BUCKETS):
                if seconds <= b:
                    counts[i] += 1
            counts[-1] += 1
            self.latency_sum[kind] = self.latency_sum.get(kind, 0.0) + seconds
            self.latency_count[kind] = self.latency_count.get(kind, 0) + 1

    def bump(self, table: dict[str, int], key: str) -> None:
        with self._lock:
            table[key] = table.get(key, 0) + 1

    def add_feedback(self) -> None:
        with self._lock:
            self.feedback += 1

    def render(self) -> str:
        with self._lock:
            out = [
                "# HELP gmtrouter_requests_total HTTP requests by method, path and status.",
                "# TYPE gmtrouter_requests_total counter",
            ]
            for (m, p, s), n in sorted(self.requests.items()):
                out.append(f'gmtrouter_requests_total{{method="{_esc(m)}",path="{_esc(p)}",status="{s}"}} {n}')
            out += [
                "# HELP gmtrouter_routing_latency_seconds Time spent in the router per call.",
                "# TYPE gmtrouter_routing_latency_seconds histogram",
            ]
            for kind in sorted(self.latency):
                counts = self.latency[kind]
                for b, c in zip(self.BUCKETS, counts):
                    out.append(f'gmtrouter_routing_latency_seconds_bucket{{kind="{kind}",le="{b}"}} {int(c)}')
                out.append(f'gmtrouter_routing_latency_seconds_bucket{{kind="{kind}",le="+Inf"}} {int(counts[-1])}')
                out.append(f'gmtrouter_routing_latency_seconds_sum{{kind="{kind}"}} {self.latency_sum[kind]:.9f}')
                out.append(f'gmtrouter_routing_latency_seconds_count{{kind="{kind}"}} {self.latency_count[kind]}')
            out += [
                "# HELP gmtrouter_routed_total Chat completions sent to each LLM.",
                "# TYPE gmtrouter_routed_total counter",
            ]
            for model, n in sorted(self.routed.items()):
                out.append(f'gmtrouter_routed_total{{model="{_esc(model)}"}} {n}')
            out += [
                "# HELP gmtrouter_upstream_errors_total Failed upstream calls per LLM.",
                "# TYPE gmtrouter_upstream_errors_total counter",
            ]
            for model, n in sorted(self.upstream_errors.items()):
                out.append(f'gmtrouter_upstream_errors_total{{model="{_esc(model)}"}} {n}')
            out += [
                "# HELP gmtrouter_feedback_total Feedback events accepted.",
                "# TYPE gmtrouter_feedback_total counter",
                f"gmtrouter_feedback_total {self.feedback}",
            ]
            return "\n".join(out) + "\n"


def _path_label(path: str) -> str:
    if path in _KNOWN_PATHS:
        return path
    if path.startswith("/static/"):
        return "/static"
    return "other"


# ---------------------------------------------------------------------------
# middleware: metrics, then bearer auth, then body size limit
# ---------------------------------------------------------------------------
class _GuardMiddleware:
    def __init__(self, app: Any, *, metrics: _Metrics, auth_token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.token = auth_token.encode() if auth_token else None
        self.max_body = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, send_wrapper)
        finally:
            self.metrics.request(scope.get("method", "?"), _path_label(scope.get("path", "")), status[0])

    @staticmethod
    async def _reply(send: Callable, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers + list(extra)})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope: dict) -> bool:
        if self.token is None:
            return True
        path = scope.get("path", "")
        if path in _OPEN_PATHS or path.startswith("/static/"):
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return hmac.compare_digest(given.strip(), self.token)
                return False
        return False

    async def _guarded(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not self._authorized(scope):
            await self._reply(
                send,
                401,
                _error_json(401, "missing or invalid bearer token (send 'Authorization: Bearer <token>')",
                            "authentication_error", "invalid_token"),
                [(b"www-authenticate", b"Bearer")],
            )
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reply(send, 400, _error_json(400, "invalid Content-Length header", "invalid_request_error"))
                    return
        too_large = f"request body exceeds the limit of {self.max_body} bytes"
        if declared is not None and declared > self.max_body:
            await self._reply(send, 413, _error_json(413, too_large, "invalid_request_error", "request_too_large"))
            return
        received = [0]
        limit = self.max_body

        async def limited_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise StarletteHTTPException(413, detail=too_large)
            return message

        await self.app(scope, limited_receive, send)


# ---------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------
def create_app(
    router: Any,
    *,
    endpoints: dict[str, Endpoint] | None = None,
    auth_token: str | None = None,
    feedback_log: FeedbackLog | None = None,
    max_body_bytes: int = 1_000_000,
    title: str = "gmtrouter",
) -> FastAPI:
    """Build the FastAPI app around ``router`` (a ``GMTRouter`` or anything with its interface)."""
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    if auth_token is not None and (not isinstance(auth_token, str) or not auth_token.strip()):
        raise ValueError("auth_token must be a non-empty string or None")
    endpoints = dict(endpoints or {})
    for name, ep in endpoints.items():
        if not isinstance(ep, Endpoint):
            raise TypeError(f"endpoints[{name!r}] must be an Endpoint, got {type(ep).__name__}")
    page_html = (STATIC_DIR / "chat.html").read_text(encoding="utf-8")
    # GMTRouter.update_user_feedback takes an optional ``turn``; pass it only to routers that accept it
    feedback_takes_turn = "turn" in inspect.signature(router.update_user_feedback).parameters
    metrics = _Metrics()
    router_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.http_client = httpx.AsyncClient()
        try:
            yield
        finally:
            client, app.state.http_client = app.state.http_client, None
            await client.aclose()

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.http_client = None
    app.state.metrics = metrics
    app.state.router = router
    app.add_middleware(_GuardMiddleware, metrics=metrics, auth_token=auth_token, max_body_bytes=max_body_bytes)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    # ---------------------------------------------------------------- helpers
    async def call_router(kind: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            with router_lock:
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if kind:
                        metrics.routing(kind, time.perf_counter() - t0)

        return await anyio.to_thread.run_sync(run)

    def candidates() -> list[str]:
        return list(router.candidates)

    def rating_scale() -> list[float] | None:
        scale = getattr(router, "rating_scale", None)
        return [float(scale[0]), float(scale[1])] if scale is not None else None

    def upstream_failure(model: str, status: int | None, text: str, key: str | None, code: str) -> ApiError:
        """A 502 whose message quotes the upstream, with the key and extra header values redacted."""
        metrics.bump(metrics.upstream_errors, model)
        ep = endpoints.get(model)
        secrets = [key, *((ep.extra_headers or {}).values() if ep is not None else ())]
        detail = redact(text, secrets)[:500]
        where = f"HTTP {status}" if status is not None else "no response"
        log.warning("upstream for model %s failed: %s", model, where)
        return ApiError(
            502,
            f"upstream for model {model!r} failed ({where}): {detail}",
            type="upstream_error",
            code=code,
            extra={"upstream_status": status},
        )

    # ---------------------------------------------------------------- errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RoutingError)
    async def _routing_error(request: Request, exc: RoutingError) -> JSONResponse:
        return ApiError(400, f"routing error: {exc}", code="routing_error").response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return ApiError(400, "request body is not valid JSON", code="invalid_json").response()
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errs[:5]]
        return ApiError(422, "invalid request: " + "; ".join(parts)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "request_too_large" if exc.status_code == 413 else None
        return ApiError(exc.status_code, str(exc.detail), type=kind, code=code).response()

    # ---------------------------------------------------------------- page
    def page() -> HTMLResponse:
        return HTMLResponse(page_html, headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return page()

    @app.get("/chat", include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return page()

    # ---------------------------------------------------------------- small endpoints
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "candidates": len(candidates()), "endpoints": len(endpoints)}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        created = 0
        data = [{"id": ROUTER_MODEL, "object": "model", "created": created, "owned_by": title}]
        data += [
            {"id": c, "object": "model", "created": created, "owned_by": title, "endpoint_configured": c in endpoints}
            for c in candidates()
        ]
        return {"object": "list", "data": data, "rating_scale": rating_scale()}

    # ---------------------------------------------------------------- route
    @app.post("/v1/route")
    async def route(request: Request) -> JSONResponse:
        raw = await _read_json(request)
        if "queries" in raw:
            batch = _validate(_RouteBatch, raw)
            results = await call_router("batch", router.route_batch, [q.to_query() for q in batch.queries])
            return JSONResponse({"results": _jsonable(results)})
        q = _validate(_RouteQuery, raw)
        result = await call_router("single", router.route_single, q.to_query())
        return JSONResponse(_jsonable(result))

    # ---------------------------------------------------------------- feedback
    @app.post("/v1/feedback")
    async def feedback(request: Request) -> JSONResponse:
        fb = _validate(_FeedbackBody, await _read_json(request))
        kwargs: dict[str, Any] = {"user_id": fb.user_id, "query": fb.query, "model": fb.model,
                                  "rating": fb.rating, "session_id": fb.session_id}
        if fb.turn is not None and feedback_takes_turn:
            kwargs["turn"] = fb.turn
        result = await call_router("", router.update_user_feedback, **kwargs)
        logged_id = None
        if feedback_log is not None and getattr(router, "feedback_log", None) is None:
            logged_id = await anyio.to_thread.run_sync(
                lambda: feedback_log.append(
                    fb.user_id, fb.query, fb.model, fb.rating,
                    session_id=fb.session_id, turn=fb.turn, query_id=fb.query_id,
                )
            )
        metrics.add_feedback()
        log.info("feedback accepted model=%s rating=%s", fb.model, fb.rating)
        return JSONResponse({"status": "ok", "result": _jsonable(result), "feedback_id": logged_id})

    # ---------------------------------------------------------------- chat completions
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await _read_json(request)
        req = _validate(_ChatRequest, raw)
        session_id = req.session_id or request.headers.get(SESSION_HEADER) or None
        if req.model == ROUTER_MODEL:
            if not req.user or not req.user.strip():
                raise ApiError(400, "field 'user' (the user id) is required when model is 'router'", param="user")
            query_text, turn, history = _conversation(req.messages)
            query: dict[str, Any] = {
                "query_text": query_text,
                "user_id": req.user,
                "turn": turn,
                "conversation_history": history,
            }
            if session_id:
                query["session_id"] = session_id
            t0 = time.perf_counter()
            result = _jsonable(await call_router("single", router.route_single, query))
            chosen = result.get("model_name") if isinstance(result, dict) else None
            if not isinstance(chosen, str) or not chosen:
                raise TypeError(f"router.route_single returned no model_name: {result!r}")
            routing = dict(result)
            routing.update({"routed": True, "session_id": session_id, "turn": turn,
                            "latency_ms": round((time.perf_counter() - t0) * 1000, 3)})
            log.info("routed turn=%d to %s (confidence %s)", turn, chosen, result.get("confidence"))
        elif req.model in candidates():
            chosen = req.model
            routing = {"model_name": chosen, "routed": False, "session_id": session_id}
        else:
            raise ApiError(
                404,
                f"model {req.model!r} does not exist; use {ROUTER_MODEL!r} or one of {candidates()}",
                param="model",
                code="model_not_found",
            )
        endpoint = endpoints.get(chosen)
        if endpoint is None:
            raise ApiError(
                503,
                f"no endpoint is configured for model {chosen!r} (configured: {sorted(endpoints)})",
                type="service_unavailable",
                code="endpoint_not_configured",
                extra={"routing": routing},
            )
        try:
            headers = endpoint.headers()
            key = endpoint.api_key()
        except MissingAPIKeyError as exc:
            raise ApiError(503, str(exc), type="service_unavailable", code="api_key_missing") from None
        payload = dict(raw)
        payload.pop("session_id", None)
        payload["model"] = endpoint.model
        metrics.bump(metrics.routed, chosen)
        if req.stream:
            return await forward_stream(endpoint, payload, headers, key, chosen)
        return await forward(endpoint, payload, headers, key, chosen, routing)

    def client_for(request_app: FastAPI) -> tuple[httpx.AsyncClient, bool]:
        client = request_app.state.http_client
        if client is not None:
            return client, False
        return httpx.AsyncClient(), True  # no lifespan ran (e.g. a bare ASGI transport)

    async def forward(
        endpoint: Endpoint, payload: dict, headers: dict, key: str | None, chosen: str, routing: dict
    ) -> JSONResponse:
        client, owned = client_for(app)
        try:
            resp = await client.post(endpoint.url, json=payload, headers=headers, timeout=endpoint.timeout)
        except httpx.TimeoutException as exc:
            raise upstream_failure(chosen, None, f"timed out ({type(exc).__name__})", key, "upstream_timeout") from None
        except httpx.RequestError as exc:
            raise upstream_failure(chosen, None, f"{type(exc).__name__}: {exc}", key, "upstream_unreachable") from None
        finally:
            if owned:
                await client.aclose()
        if resp.status_code // 100 != 2:
            raise upstream_failure(chosen, resp.status_code, resp.text, key, "upstream_error")
        try:
            data = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise upstream_failure(chosen, resp.status_code, "response is not JSON", key, "upstream_bad_response") from None
        if not isinstance(data, dict):
            raise upstream_failure(chosen, resp.status_code, "response is not a JSON object", key, "upstream_bad_response")
        data["model"] = chosen
        data["routing"] = routing
        return JSONResponse(data, headers={ROUTED_MODEL_HEADER: chosen})

    async def forward_stream(
        endpoint: Endpoint, payload: dict, headers: dict, key: str | None, chosen: str
    ) -> StreamingResponse:
        client, owned = client_for(app)
        up_headers = dict(headers, Accept="text/event-stream")
        up_headers["Accept-Encoding"] = "identity"
        upstream_req = client.build_request("POST", endpoint.url, json=payload, headers=up_headers, timeout=endpoint.timeout)
        try:
            resp = await client.send(upstream_req, stream=True)
        except httpx.RequestError as exc:
            if owned:
                await client.aclose()
            code = "upstream_timeout" if isinstance(exc, httpx.TimeoutException) else "upstream_unreachable"
            raise upstream_failure(chosen, None, f"{type(exc).__name__}: {exc}", key, code) from None
        if resp.status_code // 100 != 2:
            body = await resp.aread()
            await resp.aclose()
            if owned:
                await client.aclose()
            raise upstream_failure(chosen, resp.status_code, body.decode("utf-8", "replace"), key, "upstream_error")

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_bytes():
                    yield chunk
            except httpx.HTTPError as exc:
                metrics.bump(metrics.upstream_errors, chosen)
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

    return app


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
