"""FastAPI app: OpenAI-compatible routing proxy, route/feedback/models/health/metrics, chat page.

Endpoints (all JSON errors use the OpenAI shape ``{"error": {"message", "type",
"param", "code"}}``; invalid fields are 400s whose ``param`` names the field as
the client sent it):

* ``POST /v1/chat/completions``: OpenAI chat completions.  ``model: "router"``
  routes the last user message for the ``user`` field's user id through
  ``router.route_single``; a candidate model name bypasses routing.  The
  request goes to the chosen model's endpoint (its own model name, its own
  key).  ``stream: true`` (a JSON boolean) relays the upstream's SSE events
  as they come, each chunk's ``model`` set to the routed LLM name (also in
  the ``X-Routed-Model`` header); non-stream answers get ``model`` set to the
  routed LLM name and a ``routing`` object.  A routed model without an
  endpoint is a 404 (``endpoint_not_configured``), which OpenAI clients do
  not retry.
* ``POST /v1/route``: route only (one query dict, or ``{"queries": [...]}``).
* ``POST /v1/feedback``: a rating ``{user, query, model, rating, session_id?,
  turn?}`` (``router.update_user_feedback``) or a pairwise preference
  ``{user, query, preferred, rejected, session_id?, turn?}``
  (``router.update_user_preference``); answers the stored feedback-log row
  id(s).  ``user_id`` is accepted for ``user``.  The router writes its own
  feedback log when it has one (attribute ``feedback_log``); the server
  appends ratings to ``feedback_log`` only when the router has none.
* ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` (with the
  serving model's uri and version), ``GET /metrics`` (Prometheus text).
* ``POST /admin/reload``: check the model source now and swap in a new
  version (bearer ``admin_token``; 403 when none is configured).
* ``GET /`` and ``GET /chat``: the chat page; ``/static/*``: its assets.

Access: an optional shared bearer token guards everything except ``/health``,
``/admin/*`` (own token) and the chat page with its assets.  Identity: with
per-user API keys (:class:`ApiKeys`, bearer key -> user id) and/or a trusted
identity header set by an authenticating proxy, the user of route,
completion and feedback requests is the authenticated one; a request naming
another user is refused (403) and stores nothing.

Serving model: the app serves the router held by a :class:`RouterHolder`.
Each request takes the current router once and finishes on it; a
:class:`ModelReloader` builds a new router (in its own thread) when the
model source names a new version, checks it, and swaps the reference.
Router calls run in worker threads, one at a time per router (the router's
live user graph is not assumed thread-safe).

Layout: this module wires the app; the handlers are module-level functions
grouped by concern, each reading the shared :class:`AppState` from
``request.app.state.gmt``:

* :mod:`~gmt_model.serving.api_openai`: the OpenAI chat proxy;
* :mod:`~gmt_model.serving.api_routing`: ``/v1/route`` and ``/v1/feedback``;
* :mod:`~gmt_model.serving.api_admin`: page, health, metrics, models, admin;
* :mod:`~gmt_model.serving.guard`: the access/body-limit middleware;
* :mod:`~gmt_model.serving.reloader`: holder, model sources and reloader;
* :mod:`~gmt_model.serving.http_bodies`, :mod:`~gmt_model.serving.http_errors`,
  :mod:`~gmt_model.serving.identity`, :mod:`~gmt_model.serving.metrics`,
  :mod:`~gmt_model.serving.sse`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from gmt_model.errors import RoutingError
from gmt_model.serving import api_admin, api_openai, api_routing
from gmt_model.serving.api_openai import ROUTED_MODEL_HEADER, ROUTER_MODEL, SESSION_HEADER
from gmt_model.serving.app_state import AppState, Limits, _accepts  # noqa: F401  (re-exported)
from gmt_model.serving.endpoints import Endpoint
from gmt_model.serving.feedback import FeedbackLog
from gmt_model.serving.http_llms import register_llm_routes
from gmt_model.serving.guard import _GuardMiddleware
from gmt_model.serving.http_bodies import _jsonable, _param_of, _read_json, _validate  # noqa: F401
from gmt_model.serving.http_errors import ApiError, ServerConfigError, routing_api_error
from gmt_model.serving.identity import ApiKeys, _check_header_name, load_api_keys
from gmt_model.serving.metrics import _Metrics
from gmt_model.serving.reloader import (
    ModelRef,
    ModelReloader,
    ReloadRefused,
    RouterHolder,
    ServedModel,
    check_compatible,
    checkpoint_source,
    registry_source,
)
from gmt_model.serving.sse import _SSEModelRewriter  # noqa: F401  (re-exported)

__all__ = [
    "create_app",
    "run_server",
    "ApiError",
    "ApiKeys",
    "AppState",
    "Limits",
    "load_api_keys",
    "ServerConfigError",
    "RoutingError",
    "ModelRef",
    "ServedModel",
    "RouterHolder",
    "ModelReloader",
    "ReloadRefused",
    "checkpoint_source",
    "registry_source",
    "check_compatible",
    "ROUTER_MODEL",
    "STATIC_DIR",
    "ROUTED_MODEL_HEADER",
    "SESSION_HEADER",
]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


# ---------------------------------------------------------------------------
# error handlers
# ---------------------------------------------------------------------------
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def _routing_error(request: Request, exc: RoutingError) -> JSONResponse:
    return routing_api_error(exc).response()


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return ApiError(400, "request body is not valid JSON", code="invalid_json").response()
    parts = [f"{_param_of(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errs[:5]]
    param = _param_of(tuple(errs[0].get("loc", ()))) if errs else None
    return ApiError(400, "invalid request: " + "; ".join(parts), param=param, code="invalid_value").response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = "request_too_large" if exc.status_code == 413 else None
    return ApiError(exc.status_code, str(exc.detail), type=kind, code=code).response()


# ---------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------
def create_app(
    router: Any = None,
    *,
    endpoints: dict[str, Endpoint] | None = None,
    auth_token: str | None = None,
    feedback_log: FeedbackLog | None = None,
    max_body_bytes: int = 1_000_000,
    title: str = "gmtrouter",
    model_info: Mapping[str, Any] | None = None,
    reloader: ModelReloader | None = None,
    admin_token: str | None = None,
    api_keys: ApiKeys | None = None,
    identity_header: str | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """Build the FastAPI app around ``router`` (a ``GMTRouter`` or anything with its interface).

    ``model_info``: ``{"uri", "version"}`` of the served model (shown by
    ``/health`` and ``/v1/models``).  ``reloader``: a :class:`ModelReloader`
    whose holder supplies the router (pass it instead of ``router``); it polls
    while the app runs.  ``admin_token`` enables ``POST /admin/reload``.
    ``api_keys`` and/or ``identity_header`` enforce identity: the user of a
    request is the key's user or the header's value (the header is trusted:
    only configure it behind a proxy that sets it and strips it from clients).
    ``limits``: :class:`~gmt_model.serving.app_state.Limits` (batch size, time budget, admission).
    """
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    if auth_token is not None and (not isinstance(auth_token, str) or not auth_token.strip()):
        raise ValueError("auth_token must be a non-empty string or None")
    if admin_token is not None and (not isinstance(admin_token, str) or len(admin_token.strip()) < 8):
        raise ValueError("admin_token must be a string of at least 8 characters or None")
    if api_keys is not None and not isinstance(api_keys, ApiKeys):
        raise TypeError(f"api_keys must be an ApiKeys (see load_api_keys), got {type(api_keys).__name__}")
    identity_header = _check_header_name(identity_header)
    enforce_identity = api_keys is not None or identity_header is not None
    endpoints = dict(endpoints or {})
    for name, ep in endpoints.items():
        if not isinstance(ep, Endpoint):
            raise TypeError(f"endpoints[{name!r}] must be an Endpoint, got {type(ep).__name__}")
    if reloader is not None:
        if router is not None and router is not reloader.holder.router:
            raise ValueError("pass either router or reloader (whose holder holds the router), not both")
        holder = reloader.holder
    elif isinstance(router, RouterHolder):
        holder = router
    elif router is not None:
        holder = RouterHolder(router, model_info)
    else:
        raise ValueError("create_app needs a router (or a reloader)")
    metrics = _Metrics()
    identity_hint = " or ".join(
        x for x in ("a per-user API key" if api_keys is not None else "",
                    f"the {identity_header} header" if identity_header else "") if x)
    state = AppState(holder=holder, reloader=reloader, metrics=metrics, endpoints=endpoints, title=title,
                     feedback_log=feedback_log, enforce_identity=enforce_identity, identity_hint=identity_hint,
                     page_html=(STATIC_DIR / "chat.html").read_text(encoding="utf-8"),
                     limits=limits if limits is not None else Limits(), extra={"admin_token": admin_token})
    router_log = getattr(holder.router, "feedback_log", None)
    if router_log is None and feedback_log is None:
        log.warning("no feedback log: POST /v1/feedback is refused (409) so that no feedback is acknowledged "
                    "and then lost; set router.feedback_log in the router YAML to keep feedback")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.http_client = httpx.AsyncClient()
        if reloader is not None:
            reloader.start()
        try:
            yield
        finally:
            if reloader is not None:
                await anyio.to_thread.run_sync(reloader.stop)
            state.close()
            client, app.state.http_client = app.state.http_client, None
            await client.aclose()

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.http_client = None
    app.state.gmt = state
    app.state.metrics = metrics
    app.state.holder = holder
    app.state.reloader = reloader
    app.add_middleware(_GuardMiddleware, metrics=metrics, auth_token=auth_token, max_body_bytes=max_body_bytes,
                       admin_token=admin_token, api_keys=api_keys, identity_header=identity_header)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RoutingError, _routing_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    app.add_api_route("/", api_admin.chat_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/chat", api_admin.chat_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", api_admin.health, methods=["GET"])
    app.add_api_route("/metrics", api_admin.metrics, methods=["GET"])
    app.add_api_route("/v1/models", api_admin.list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", api_admin.get_model, methods=["GET"])
    app.add_api_route("/admin/reload", api_admin.admin_reload, methods=["POST"])
    app.add_api_route("/v1/route", api_routing.route, methods=["POST"])
    app.add_api_route("/v1/feedback", api_routing.feedback, methods=["POST"])
    app.add_api_route("/v1/chat/completions", api_openai.chat_completions, methods=["POST"])
    register_llm_routes(app, state.endpoints)  # /admin/llms: the open LLM pool (http_llms)
    return app


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
               access_log: bool | None = None) -> None:
    """Serve ``app`` with uvicorn until interrupted.  ``access_log`` (one line per request): by default
    only when the root logger shows INFO (``gmtrouter --log-level INFO serve ...``); a line per request
    costs measurably at hundreds of requests per second."""
    import uvicorn

    if access_log is None:
        access_log = logging.getLogger().isEnabledFor(logging.INFO)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
