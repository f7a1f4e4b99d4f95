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
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
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

from gmt_model.serving.endpoints import Endpoint, MissingAPIKeyError, redact
from gmt_model.errors import RoutingError
from gmt_model.serving.http_llms import COST_FIELDS, cost_options, pool_metrics, register_llm_routes
from gmt_model.serving.feedback import FeedbackLog

__all__ = [
    "create_app",
    "run_server",
    "ApiError",
    "ApiKeys",
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

#: The pseudo model name that asks the server to route.
ROUTER_MODEL = "router"
ROUTED_MODEL_HEADER = "X-Routed-Model"
SESSION_HEADER = "X-Session-Id"
STATIC_DIR = Path(__file__).resolve().parent / "static"
_MAX_BATCH = 1000
_KNOWN_PATHS = frozenset(
    {"/", "/chat", "/health", "/metrics", "/v1/models", "/v1/route", "/v1/feedback", "/v1/chat/completions",
     "/admin/reload"}
)
_OPEN_PATHS = frozenset({"/health", "/", "/chat"})
_ADMIN_PREFIX = "/admin/"
_IDENTITY_SCOPE_KEY = "gmtrouter.identity"
_MIN_KEY_CHARS = 16
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: OpenAI clients obey this (non-standard) header: a configuration problem is not worth a retry
_NO_RETRY = {"x-should-retry": "false"}


class ServerConfigError(ValueError):
    """A server setting (API keys file, identity header) is malformed."""


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
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.extra = extra or {}
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        err: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        err.update(self.extra)
        return JSONResponse({"error": err}, status_code=self.status, headers=self.headers or None)


def _error_json(status: int, message: str, type: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": None, "code": code}}).encode()


def _routing_api_error(exc: RoutingError, names: Mapping[str, str] | None = None) -> ApiError:
    """A 400 for a RoutingError; its field is renamed to what the client sent (``user_id`` -> ``user``)."""
    names = names or {}
    field = getattr(exc, "field", None)
    message = str(exc)
    param = None
    if field:
        param = names.get(field, field)
        if param != field:
            message = message.replace(f"field '{field}'", f"field '{param}'")
    return ApiError(400, f"routing error: {message}", param=param, code="routing_error")


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
    stream: bool = Field(default=False, strict=True)
    session_id: str | None = None


class _RouteQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query_text: str = Field(min_length=1)
    user_id: str | None = Field(default=None, min_length=1)
    session_id: str | None = None
    turn: int | None = Field(default=None, ge=1, strict=True)
    conversation_history: list[Any] | None = None
    candidates: list[str] | None = None
    cost_weight: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # issue 15: cost-aware routing
    max_cost: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    def to_query(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class _RouteBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[_RouteQuery] = Field(min_length=1, max_length=_MAX_BATCH)


class _FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(default=None, min_length=1)
    user_id: str | None = Field(default=None, min_length=1)
    query: str = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1)
    rating: float | None = Field(default=None, strict=True, allow_inf_nan=False)
    preferred: str | None = Field(default=None, min_length=1)
    rejected: str | None = Field(default=None, min_length=1)
    session_id: str | None = Field(default=None, min_length=1)
    turn: int | None = Field(default=None, ge=1, strict=True)
    query_id: str | None = Field(default=None, min_length=1)


def _param_of(loc: tuple[Any, ...]) -> str | None:
    """A pydantic location as the client wrote it: ``messages[0].role``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _validate(cls: type[BaseModel], raw: Any) -> Any:
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        errs = exc.errors()
        parts = [f"{_param_of(tuple(e['loc'])) or 'body'}: {e['msg']}" for e in errs[:5]]
        param = _param_of(tuple(errs[0]["loc"])) if errs else None
        raise ApiError(400, "invalid request: " + "; ".join(parts), param=param, code="invalid_value") from None


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
# SSE: set each chunk's model to the routed LLM name
# ---------------------------------------------------------------------------
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class _SSEModelRewriter:
    """Feeds upstream SSE bytes, returns complete events with ``"model"`` rewritten.

    Events are passed on as soon as they are complete (no buffering beyond
    one event); a ``data:`` line that is not a JSON object with a ``model``
    key (``[DONE]``, comments, other fields) passes unchanged.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.buf = b""

    def _event(self, raw: bytes) -> bytes:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
        lines = text.splitlines(keepends=True)
        data_lines = [i for i, line in enumerate(lines) if line.startswith("data:")]
        if len(data_lines) != 1:
            return raw
        i = data_lines[0]
        line = lines[i]
        body = line[len("data:"):]
        ending = body[len(body.rstrip("\r\n")):]
        payload = body.strip()
        if not payload.startswith("{"):
            return raw
        try:
            obj = json.loads(payload)
        except json.JSONDecodeError:
            return raw
        if not isinstance(obj, dict) or "model" not in obj:
            return raw
        obj["model"] = self.model
        lines[i] = "data: " + json.dumps(obj, ensure_ascii=False) + ending
        return "".join(lines).encode("utf-8")

    def feed(self, chunk: bytes) -> bytes:
        self.buf += chunk
        out = []
        while True:
            m = _EVENT_END.search(self.buf)
            if m is None:
                break
            event, sep, self.buf = self.buf[: m.start()], m.group(0), self.buf[m.end():]
            out.append(self._event(event) + sep)
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self.buf = self.buf, b""
        return self._event(rest) if rest.strip() else rest


# ---------------------------------------------------------------------------
# identity: per-user API keys and a trusted identity header
# ---------------------------------------------------------------------------
def _key_digest(key: str | bytes) -> str:
    return hashlib.sha256(key.encode("utf-8") if isinstance(key, str) else key).hexdigest()


class ApiKeys:
    """Per-user API keys: bearer key -> user id.

    Only SHA-256 digests of the keys are kept.  A mapping key may be the
    plain API key or ``sha256:<64 hex digits>`` (the digest of the key), so a
    keys file need not hold the keys themselves.  ``repr`` shows the number
    of keys only.
    """

    def __init__(self, mapping: Mapping[str, str], *, source: str = "api keys") -> None:
        if not isinstance(mapping, Mapping):
            raise ServerConfigError(f"{source}: expected a mapping of API key -> user id, got {type(mapping).__name__}")
        self._users: dict[str, str] = {}
        for n, (key, user) in enumerate(mapping.items(), 1):
            if not isinstance(user, str) or not re.fullmatch(r"[\w.@:+\-/#]{1,256}", user):
                raise ServerConfigError(
                    f"{source}: entry {n}: the user id must be 1-256 letters, digits or ._@:+-/#, got {user!r}")
            if not isinstance(key, str):
                raise ServerConfigError(f"{source}: entry {n} (user {user!r}): the API key must be a string")
            if key.startswith("sha256:"):
                digest = key[len("sha256:"):].lower()
                if not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise ServerConfigError(
                        f"{source}: entry {n} (user {user!r}): 'sha256:' must be followed by 64 hex digits")
            else:
                if len(key) < _MIN_KEY_CHARS or key != key.strip() or any(c.isspace() for c in key):
                    raise ServerConfigError(
                        f"{source}: entry {n} (user {user!r}): an API key must be at least {_MIN_KEY_CHARS} "
                        "characters without spaces")
                digest = _key_digest(key)
            if digest in self._users and self._users[digest] != user:
                raise ServerConfigError(f"{source}: entry {n} (user {user!r}): the same key is given to two users")
            self._users[digest] = user
        if not self._users:
            raise ServerConfigError(f"{source}: no API keys")

    def lookup(self, key: str | bytes) -> str | None:
        """The user id of ``key``, or None (looked up by digest: the time taken says nothing about the keys)."""
        return self._users.get(_key_digest(key))

    def __len__(self) -> int:
        return len(self._users)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._users)} keys)"

    __str__ = __repr__


def load_api_keys(path: str | os.PathLike[str]) -> ApiKeys:
    """Read a JSON or YAML file ``{api_key: user_id}`` (keys may be ``sha256:<hex>``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ServerConfigError(f"{p}: API keys file not found") from None
    except OSError as exc:
        raise ServerConfigError(f"{p}: cannot read the API keys file ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
            raise ServerConfigError(f"{where}: neither JSON nor YAML ({getattr(exc, 'problem', None) or 'invalid'})") from None
    return ApiKeys(data if data is not None else {}, source=str(p))


def _check_header_name(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
        raise ServerConfigError(f"identity header: {name!r} is not a valid HTTP header name")
    if name.lower() in ("authorization", "cookie", "host", "content-length", "content-type"):
        raise ServerConfigError(f"identity header: {name!r} cannot carry the user id")
    return name.lower()


# ---------------------------------------------------------------------------
# the serving model: holder, sources, reloader
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """What a model source names now: ``uri`` as configured (``models:/x@champion`` or a
    checkpoint folder), its current ``version``, and the ``location`` to load it from."""

    uri: str
    version: str
    location: str


class ReloadRefused(ValueError):
    """A new model was built but does not fit this server (the current one keeps serving)."""


class ServedModel:
    """One router with its metadata (``uri``, ``version``, ``loaded_at``) and its call lock."""

    __slots__ = ("router", "info", "lock")

    def __init__(self, router: Any, info: Mapping[str, Any]) -> None:
        self.router = router
        self.info = dict(info)
        self.lock = threading.Lock()


class RouterHolder:
    """The reference to the serving router; :meth:`swap` replaces it in one assignment.

    A request reads :attr:`current` once and finishes on that router, so a
    swap never disturbs a request in flight.
    """

    def __init__(self, router: Any, info: Mapping[str, Any] | None = None) -> None:
        base = {"uri": None, "version": None}
        base.update(info or {})
        base["loaded_at"] = time.time()
        self._current = ServedModel(router, base)

    @property
    def current(self) -> ServedModel:
        return self._current

    @property
    def router(self) -> Any:
        return self._current.router

    def swap(self, router: Any, info: Mapping[str, Any]) -> ServedModel:
        """Serve ``router`` from now on; returns the previous :class:`ServedModel`."""
        new = ServedModel(router, {**info, "loaded_at": time.time()})
        old = self._current
        self._current = new
        return old


def checkpoint_source(path: str | os.PathLike[str]) -> Callable[[], ModelRef]:
    """A model source for a checkpoint folder: the version is the digest of its ``config.json``
    (which holds the sha256 of every other file), so replacing the folder is a new version."""
    folder = Path(path)

    def resolve() -> ModelRef:
        try:
            data = (folder / "config.json").read_bytes()
        except OSError as exc:
            raise OSError(f"{folder / 'config.json'}: {exc.strerror or exc}") from None
        return ModelRef(uri=str(folder), version="sha256:" + hashlib.sha256(data).hexdigest()[:16],
                        location=str(folder))

    return resolve


def registry_source(uri: str, tracking_uri: str | None = None, *,
                    registry_uri: str | None = None) -> Callable[[], ModelRef]:
    """A model source for ``models:/<name>@<alias>`` (or ``models:/<name>/<version>``) in the
    MLflow registry: each call asks the registry which version the alias names now."""
    from gmt_model.serving import registry  # mlflow itself is imported lazily inside registry's functions

    name, _, _ = registry.parse_model_uri(uri)

    def resolve() -> ModelRef:
        version = registry.resolve_model_version(uri, tracking_uri, registry_uri=registry_uri)
        return ModelRef(uri=uri, version=str(version), location=f"models:/{name}/{version}")

    return resolve


def check_compatible(old: Any, new: Any) -> None:
    """Refuse (``ReloadRefused``) a new router that would change the serving API under the
    clients' feet: LLMs the current router routes to are missing, or the query encoder's width
    differs from the model's (loads the encoder, so the first request after the swap is fast)."""
    have = set(getattr(new, "candidates", None) or [])
    missing = [c for c in (getattr(old, "candidates", None) or []) if c not in have]
    if missing:
        raise ReloadRefused(f"the new model lacks LLM(s) {missing} that this server routes to "
                            "(restart the server to change the set of LLMs)")
    want = getattr(getattr(getattr(new, "model", None), "cfg", None), "embed_dim", None)
    if want is None:
        return
    enc = getattr(new, "encoder", None)  # GMTRouter: loads it, RoutingError on a width mismatch
    dim = getattr(enc, "dim", None)
    if dim is not None and int(dim) != int(want):
        raise ReloadRefused(f"the query encoder gives width {dim}, the new model expects {want}")


def _sync_feedback(router: Any) -> None:
    sync = getattr(router, "sync_feedback", None)
    if callable(sync) and getattr(router, "feedback_log", None) is not None:
        sync()


class ModelReloader:
    """Polls a model source and swaps in a new router when it names a new version.

    ``resolve()`` returns the :class:`ModelRef` the source names now (it may
    raise when the registry is unreachable: the current model keeps serving
    and the next poll retries).  ``build(ref, current_router)`` builds the new
    router (``GMTRouter``'s constructor replays the feedback log rows newer
    than the new model's training data); ``check(old, new)`` may refuse it.
    A build that fails with a ``ValueError`` (``CheckpointError``,
    ``RoutingError``, ``ReloadRefused``...) refuses that version: it is logged,
    the current model keeps serving and polling does not rebuild it (an
    explicit :meth:`reload` does).  Other failures (network, registry) are
    retried at the next poll.  After the swap the new router syncs feedback
    that reached the log while it was being built.
    """

    def __init__(self, holder: RouterHolder, resolve: Callable[[], ModelRef],
                 build: Callable[[ModelRef, Any], Any], *, interval: float = 0.0,
                 check: Callable[[Any, Any], None] | None = check_compatible) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval) \
                or interval < 0:
            raise ServerConfigError(f"reload interval: expected a number of seconds >= 0, got {interval!r}")
        self.holder = holder
        self.resolve = resolve
        self.build = build
        self.interval = float(interval)
        self.check = check
        self._lock = threading.Lock()
        self._refused: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {"reloaded": 0, "unchanged": 0, "refused": 0, "unavailable": 0}
        self.last: dict[str, Any] = {"status": None, "at": None, "version": None, "error": None}

    # ---------------------------------------------------------------- one check
    def reload(self, *, retry_refused: bool = True) -> dict[str, Any]:
        """Check the source now; build, check and swap when it names a new version.

        Returns ``{"status": "reloaded" | "unchanged" | "refused" | "unavailable",
        "version", "uri", "previous"?, "candidate"?, "error"?}`` (``version``: the
        version serving after the call).  Never raises for a bad model or an
        unreachable source.
        """
        with self._lock:
            out = self._reload(retry_refused)
            self.counts[out["status"]] = self.counts.get(out["status"], 0) + 1
            self.last = {"status": out["status"], "at": time.time(),
                         "version": out.get("candidate", out["version"]), "error": out.get("error")}
        return out

    def _result(self, status: str, **extra: Any) -> dict[str, Any]:
        info = self.holder.current.info
        out = {"status": status, "version": info.get("version"), "uri": info.get("uri")}
        out.update({k: v for k, v in extra.items() if v is not None})
        return out

    def _reload(self, retry_refused: bool) -> dict[str, Any]:
        from gmt_model.errors import one_line

        current = self.holder.current
        serving = current.info.get("version")
        try:
            ref = self.resolve()
        except Exception as exc:  # registry or tracking server down, folder being replaced
            msg = f"cannot resolve the model source: {one_line(exc)}"
            log.warning("model reload: %s; version %s keeps serving, retrying at the next check", msg, serving)
            return self._result("unavailable", error=msg)
        if ref.version == serving:
            return self._result("unchanged")
        if not retry_refused and ref.version in self._refused:
            return self._result("refused", candidate=ref.version, error=self._refused[ref.version])
        log.info("model reload: %s names version %s (serving %s); building the new router in the background",
                 ref.uri, ref.version, serving)
        t0 = time.perf_counter()
        try:
            new = self.build(ref, current.router)
            if self.check is not None:
                self.check(current.router, new)
        except Exception as exc:
            msg = f"{ref.uri} version {ref.version}: {one_line(exc)}"
            if isinstance(exc, ValueError):
                self._refused[ref.version] = msg
                log.error("model reload refused: %s; version %s keeps serving", msg, serving)
                return self._result("refused", candidate=ref.version, error=msg)
            log.warning("model reload failed: %s; version %s keeps serving, retrying at the next check", msg,
                        serving, exc_info=log.isEnabledFor(logging.DEBUG))
            return self._result("unavailable", candidate=ref.version, error=msg)
        _sync_feedback(new)
        old = self.holder.swap(new, {"uri": ref.uri, "version": ref.version, "location": ref.location})
        served = self.holder.current
        try:  # feedback stored by requests that were still running on the old router
            with served.lock:
                _sync_feedback(new)
        except Exception as exc:  # the new router serves anyway; its own periodic sync catches up
            log.warning("model reload: feedback sync after the swap failed: %s", one_line(exc))
        self._refused.pop(ref.version, None)
        log.warning("model reload: now serving %s version %s (was %s; built in %.1f s)", ref.uri, ref.version,
                    old.info.get("version"), time.perf_counter() - t0)
        return self._result("reloaded", previous=old.info.get("version"))

    # ---------------------------------------------------------------- polling
    def start(self) -> None:
        """Poll every ``interval`` seconds in a daemon thread (no-op when the interval is 0)."""
        if self.interval <= 0 or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="gmtrouter-model-reload", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reload(retry_refused=False)
            except Exception:  # never let the poller die
                log.exception("model reload: unexpected failure; polling goes on")

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def status(self) -> dict[str, Any]:
        return {"interval_s": self.interval, "polling": self._thread is not None and self._thread.is_alive(),
                "last_check": dict(self.last)}


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

    def render(self, reloads: Mapping[str, int] | None = None, serving: Mapping[str, Any] | None = None) -> str:
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
            if reloads is not None:
                out += [
                    "# HELP gmtrouter_model_reloads_total Model reload checks by outcome.",
                    "# TYPE gmtrouter_model_reloads_total counter",
                ]
                for outcome, n in sorted(reloads.items()):
                    out.append(f'gmtrouter_model_reloads_total{{outcome="{_esc(outcome)}"}} {n}')
            if serving is not None:
                out += [
                    "# HELP gmtrouter_model_info The model being served (value 1).",
                    "# TYPE gmtrouter_model_info gauge",
                    f'gmtrouter_model_info{{uri="{_esc(str(serving.get("uri")))}",'
                    f'version="{_esc(str(serving.get("version")))}"}} 1',
                ]
            return "\n".join(out) + "\n"


def _path_label(path: str) -> str:
    if path in _KNOWN_PATHS:
        return path
    if path.startswith("/static/"):
        return "/static"
    return "other"


# ---------------------------------------------------------------------------
# middleware: metrics, then access (bearer token, API keys, admin token, identity), then body size limit
# ---------------------------------------------------------------------------
class _GuardMiddleware:
    def __init__(self, app: Any, *, metrics: _Metrics, auth_token: str | None, max_body_bytes: int,
                 admin_token: str | None = None, api_keys: ApiKeys | None = None,
                 identity_header: str | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.token = auth_token.encode() if auth_token else None
        self.admin_token = admin_token.encode() if admin_token else None
        self.api_keys = api_keys
        self.identity_header = identity_header.lower().encode("latin-1") if identity_header else None
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

    @staticmethod
    def _header(scope: dict, name: bytes) -> bytes | None:
        for key, value in scope.get("headers", []):
            if key == name:
                return value
        return None

    def _bearer(self, scope: dict) -> bytes | None:
        value = self._header(scope, b"authorization")
        if value is None:
            return None
        scheme, _, given = value.partition(b" ")
        given = given.strip()
        return given if scheme.lower() == b"bearer" and given else None

    def _access(self, scope: dict) -> tuple[int, str, str] | None:
        """None when the request may go on (identity put into the scope), else (status, message, code)."""
        path = scope.get("path", "")
        if path.startswith(_ADMIN_PREFIX):
            if self.admin_token is None:
                return 403, "the admin API is disabled (set GMTROUTER_ADMIN_TOKEN when starting the server)", \
                    "admin_disabled"
            given = self._bearer(scope)
            if given is None or not hmac.compare_digest(given, self.admin_token):
                return 401, "missing or invalid admin token (send 'Authorization: Bearer <admin token>')", \
                    "invalid_token"
            return None
        if path in _OPEN_PATHS or path.startswith("/static/"):
            return None
        given = self._bearer(scope)
        identity = None
        authenticated = self.token is None and self.api_keys is None
        if given is not None and self.api_keys is not None:
            identity = self.api_keys.lookup(given)
            authenticated = identity is not None
        if not authenticated and given is not None and self.token is not None:
            authenticated = hmac.compare_digest(given, self.token)
        if not authenticated:
            what = "API key" if self.api_keys is not None else "bearer token"
            return 401, f"missing or invalid {what} (send 'Authorization: Bearer <{what.split()[-1]}>')", \
                "invalid_token"
        if self.identity_header is not None:
            raw = self._header(scope, self.identity_header)
            if raw is not None and raw.strip():
                proxied = raw.decode("utf-8", "replace").strip()
                if identity is not None and proxied != identity:
                    return 403, "the identity header and the API key name different users", "identity_conflict"
                identity = proxied
        scope[_IDENTITY_SCOPE_KEY] = identity
        return None

    async def _guarded(self, scope: dict, receive: Callable, send: Callable) -> None:
        denied = self._access(scope)
        if denied is not None:
            status, message, code = denied
            kind = "authentication_error" if status == 401 else "permission_error"
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            await self._reply(send, status, _error_json(status, message, kind, code), extra)
            return
        declared = None
        value = self._header(scope, b"content-length")
        if value is not None:
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


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


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
) -> FastAPI:
    """Build the FastAPI app around ``router`` (a ``GMTRouter`` or anything with its interface).

    ``model_info``: ``{"uri", "version"}`` of the served model (shown by
    ``/health`` and ``/v1/models``).  ``reloader``: a :class:`ModelReloader`
    whose holder supplies the router (pass it instead of ``router``); it polls
    while the app runs.  ``admin_token`` enables ``POST /admin/reload``.
    ``api_keys`` and/or ``identity_header`` enforce identity: the user of a
    request is the key's user or the header's value (the header is trusted:
    only configure it behind a proxy that sets it and strips it from clients).
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
    page_html = (STATIC_DIR / "chat.html").read_text(encoding="utf-8")
    metrics = _Metrics()
    identity_hint = " or ".join(
        x for x in ("a per-user API key" if api_keys is not None else "",
                    f"the {identity_header} header" if identity_header else "") if x)

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
            client, app.state.http_client = app.state.http_client, None
            await client.aclose()

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.http_client = None
    app.state.metrics = metrics
    app.state.holder = holder
    app.state.reloader = reloader
    app.add_middleware(_GuardMiddleware, metrics=metrics, auth_token=auth_token, max_body_bytes=max_body_bytes,
                       admin_token=admin_token, api_keys=api_keys, identity_header=identity_header)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    # ---------------------------------------------------------------- helpers
    async def call_router(served: ServedModel, kind: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            with served.lock:
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if kind:
                        metrics.routing(kind, time.perf_counter() - t0)

        return await anyio.to_thread.run_sync(run)

    def rating_scale(served: ServedModel) -> list[float] | None:
        scale = getattr(served.router, "rating_scale", None)
        return [float(scale[0]), float(scale[1])] if scale is not None else None

    def serving_info(served: ServedModel) -> dict[str, Any]:
        info = {k: served.info.get(k) for k in ("uri", "version", "loaded_at")}
        if reloader is not None:
            info["reload"] = reloader.status()
        return _jsonable(info)

    def effective_user(request: Request, named: str | None, param: str) -> str:
        """The user a request acts for: the authenticated one when identity is enforced."""
        if not enforce_identity:
            if named is None or not named.strip():
                raise ApiError(400, f"field '{param}' (the user id) is required", param=param)
            return named
        identity = request.scope.get(_IDENTITY_SCOPE_KEY)
        if not identity:
            raise ApiError(401, f"this server needs the user's identity ({identity_hint})",
                           type="authentication_error", code="identity_required")
        if named is not None and named != identity:
            log.warning("refused a request naming another user than the authenticated one (field %s)", param)
            raise ApiError(403, f"field '{param}' names another user than the authenticated one",
                           type="permission_error", param=param, code="user_mismatch")
        return identity

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
        return _routing_api_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return ApiError(400, "request body is not valid JSON", code="invalid_json").response()
        parts = [f"{_param_of(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errs[:5]]
        param = _param_of(tuple(errs[0].get("loc", ()))) if errs else None
        return ApiError(400, "invalid request: " + "; ".join(parts), param=param, code="invalid_value").response()

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
        served = holder.current
        return {"status": "ok", "candidates": len(list(served.router.candidates)), "endpoints": len(endpoints),
                "model": serving_info(served)}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        text = metrics.render(reloads=reloader.counts if reloader is not None else None,
                              serving=holder.current.info)
        text += pool_metrics(holder.current.router)  # routes and cost per LLM (http_llms)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_objects(served: ServedModel) -> list[dict[str, Any]]:
        info = served.info
        data = [{"id": ROUTER_MODEL, "object": "model", "created": 0, "owned_by": title,
                 "model_uri": info.get("uri"), "model_version": info.get("version")}]
        data += [
            {"id": c, "object": "model", "created": 0, "owned_by": title, "endpoint_configured": c in endpoints}
            for c in served.router.candidates
        ]
        return data

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        served = holder.current
        return {"object": "list", "data": model_objects(served), "rating_scale": rating_scale(served),
                "serving": serving_info(served)}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        for obj in model_objects(holder.current):
            if obj["id"] == model_id:
                return obj
        raise ApiError(404, f"The model {model_id!r} does not exist; use {ROUTER_MODEL!r} or a candidate LLM",
                       param="model", code="model_not_found")

    @app.post("/admin/reload")
    async def admin_reload() -> JSONResponse:
        if reloader is None:
            raise ApiError(409, "this server serves a fixed model; start it with a model source to reload",
                           code="reload_not_configured")
        out = await anyio.to_thread.run_sync(reloader.reload)
        status = {"reloaded": 200, "unchanged": 200, "refused": 409, "unavailable": 503}[out["status"]]
        return JSONResponse(_jsonable(out), status_code=status)

    register_llm_routes(app, endpoints)  # /admin/llms: the open LLM pool (http_llms)

    # ---------------------------------------------------------------- route
    @app.post("/v1/route")
    async def route(request: Request) -> JSONResponse:
        raw = await _read_json(request)
        served = holder.current
        try:
            if "queries" in raw:
                batch = _validate(_RouteBatch, raw)
                queries = []
                for i, q in enumerate(batch.queries):
                    query = q.to_query()
                    query["user_id"] = effective_user(request, q.user_id, f"queries[{i}].user_id")
                    queries.append(query)
                results = await call_router(served, "batch", served.router.route_batch, queries)
                return JSONResponse({"results": _jsonable(results)})
            q = _validate(_RouteQuery, raw)
            query = q.to_query()
            query["user_id"] = effective_user(request, q.user_id, "user_id")
            result = await call_router(served, "single", served.router.route_single, query)
        except RoutingError as exc:
            raise _routing_api_error(exc) from None
        return JSONResponse(_jsonable(result))

    # ---------------------------------------------------------------- feedback
    @app.post("/v1/feedback")
    async def feedback(request: Request) -> JSONResponse:
        fb = _validate(_FeedbackBody, await _read_json(request))
        user_param = "user_id" if fb.user is None and fb.user_id is not None else "user"
        if fb.user is not None and fb.user_id is not None and fb.user != fb.user_id:
            raise ApiError(400, "fields 'user' and 'user_id' differ; send one of them", param="user_id")
        named = fb.user if fb.user is not None else fb.user_id
        rating_fields = [f for f in ("model", "rating") if getattr(fb, f) is not None]
        pair_fields = [f for f in ("preferred", "rejected") if getattr(fb, f) is not None]
        if rating_fields and pair_fields:
            raise ApiError(400, f"give either model and rating, or preferred and rejected, not both "
                                f"(got {rating_fields + pair_fields})", param=pair_fields[0])
        if not rating_fields and not pair_fields:
            raise ApiError(400, "feedback needs model and rating (a rating), or preferred and rejected "
                                "(a pairwise preference)", param="rating")
        pairwise = bool(pair_fields)
        needed = ("preferred", "rejected") if pairwise else ("model", "rating")
        for f in needed:
            if getattr(fb, f) is None:
                raise ApiError(400, f"field '{f}' is required with '{needed[0] if f == needed[1] else needed[1]}'",
                               param=f)
        if pairwise and fb.preferred == fb.rejected:
            raise ApiError(400, "fields 'preferred' and 'rejected' name the same model", param="rejected")
        if pairwise and fb.query_id is not None:
            raise ApiError(400, "field 'query_id' is not used with a pairwise preference (the router keys the pair)",
                           param="query_id")
        user = effective_user(request, named, user_param)
        served = holder.current
        router = served.router
        names = {"user_id": user_param}
        common: dict[str, Any] = {"user_id": user, "query": fb.query, "session_id": fb.session_id}
        if pairwise:
            fn = getattr(router, "update_user_preference", None)
            if fn is None:
                raise ApiError(400, "this router does not take pairwise preferences; send model and rating",
                               param="preferred", code="pairwise_unsupported")
            kwargs = dict(common, preferred=fb.preferred, rejected=fb.rejected, turn=fb.turn)
        else:
            fn = router.update_user_feedback
            kwargs = dict(common, model=fb.model, rating=fb.rating)
            if fb.turn is not None and _accepts(fn, "turn"):
                kwargs["turn"] = fb.turn
        try:
            result = await call_router(served, "", fn, **kwargs)
        except RoutingError as exc:
            raise _routing_api_error(exc, names) from None
        result = _jsonable(result)
        body: dict[str, Any] = {"status": "ok", "result": result}
        if pairwise:
            body["feedback_ids"] = result.get("feedback_ids") if isinstance(result, dict) else None
        else:
            logged_id = result.get("feedback_id") if isinstance(result, dict) else None
            if feedback_log is not None and getattr(router, "feedback_log", None) is None:
                logged_id = await anyio.to_thread.run_sync(
                    lambda: feedback_log.append(
                        user, fb.query, fb.model, fb.rating,
                        session_id=fb.session_id, turn=fb.turn, query_id=fb.query_id,
                    )
                )
            body["feedback_id"] = logged_id
        now = holder.current
        if now is not served:  # a reload swapped routers while this ran: the new one reads the row now
            try:
                await call_router(now, "", _sync_feedback, now.router)
            except Exception as exc:  # it syncs again by itself later
                log.warning("feedback sync on the new router failed: %s", type(exc).__name__)
        metrics.add_feedback()
        log.info("feedback accepted (%s)", "pairwise" if pairwise else f"model={fb.model} rating={fb.rating}")
        return JSONResponse(body)

    # ---------------------------------------------------------------- chat completions
    chat_names = {"user_id": "user", "query_text": "messages", "turn": "messages",
                  "conversation_history": "messages", "candidates": "model"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await _read_json(request)
        req = _validate(_ChatRequest, raw)
        session_id = req.session_id or request.headers.get(SESSION_HEADER) or None
        served = holder.current
        router = served.router
        if req.model == ROUTER_MODEL:
            user = effective_user(request, req.user, "user")
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
                result = _jsonable(await call_router(served, "single", router.route_single, query))
            except RoutingError as exc:
                raise _routing_api_error(exc, chat_names) from None
            chosen = result.get("model_name") if isinstance(result, dict) else None
            if not isinstance(chosen, str) or not chosen:
                raise TypeError(f"router.route_single returned no model_name: {result!r}")
            routing = dict(result)
            routing.update({"routed": True, "session_id": session_id, "turn": turn,
                            "latency_ms": round((time.perf_counter() - t0) * 1000, 3)})
            log.info("routed turn=%d to %s (confidence %s)", turn, chosen, result.get("confidence"))
        elif req.model in list(router.candidates):
            if req.user is not None and enforce_identity:
                effective_user(request, req.user, "user")
            chosen = req.model
            routing = {"model_name": chosen, "routed": False, "session_id": session_id}
        else:
            raise ApiError(
                404,
                f"The model {req.model!r} does not exist; use {ROUTER_MODEL!r} or one of {list(router.candidates)}",
                param="model",
                code="model_not_found",
            )
        endpoint = endpoints.get(chosen)
        if endpoint is None:
            raise ApiError(
                404,
                f"no endpoint is configured for model {chosen!r}, so it cannot answer "
                f"(configured: {sorted(endpoints)}); use /v1/route to route only",
                param="model",
                code="endpoint_not_configured",
                extra={"routing": routing},
                headers=_NO_RETRY,
            )
        try:
            headers = endpoint.headers()
            key = endpoint.api_key()
        except MissingAPIKeyError as exc:
            raise ApiError(503, str(exc), type="service_unavailable", code="api_key_missing",
                           headers=_NO_RETRY) from None
        payload = dict(raw)
        payload.pop("session_id", None)
        for key in COST_FIELDS:
            payload.pop(key, None)
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
