"""What the HTTP handlers share: the serving router, the reloader, metrics, endpoints and settings.

:func:`gmt_model.serving.server.create_app` builds one :class:`AppState` and puts it at
``app.state.gmt``; every handler reads it from ``request.app.state.gmt`` (:func:`state_of`), so the
handlers are plain module-level functions that can be read and tested on their own.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Request

from gmt_model.serving.endpoints import Endpoint, redact
from gmt_model.serving.feedback import FeedbackLog
from gmt_model.serving.guard import IDENTITY_SCOPE_KEY
from gmt_model.serving.http_bodies import _jsonable
from gmt_model.serving.http_errors import ApiError
from gmt_model.serving.metrics import _Metrics
from gmt_model.serving.reloader import ModelReloader, RouterHolder, ServedModel

__all__ = ["AppState", "state_of", "accepts"]

log = logging.getLogger("gmt_model.serving.server")


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a parameter ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


_accepts = accepts


@dataclass
class AppState:
    """The state of one app (see the module docstring)."""

    holder: RouterHolder
    reloader: ModelReloader | None
    metrics: _Metrics
    endpoints: dict[str, Endpoint]
    title: str = "gmtrouter"
    feedback_log: FeedbackLog | None = None
    enforce_identity: bool = False
    identity_hint: str = ""
    page_html: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- router calls
    async def call_router(self, served: ServedModel, kind: str, fn: Callable[..., Any], *args: Any,
                          **kwargs: Any) -> Any:
        """Run ``fn`` in a worker thread under the served router's call lock (timed as ``kind`` when given)."""
        metrics = self.metrics

        def run() -> Any:
            with served.lock:
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if kind:
                        metrics.routing(kind, time.perf_counter() - t0)

        return await anyio.to_thread.run_sync(run)

    # ---------------------------------------------------------------- descriptions
    @staticmethod
    def rating_scale(served: ServedModel) -> list[float] | None:
        scale = getattr(served.router, "rating_scale", None)
        return [float(scale[0]), float(scale[1])] if scale is not None else None

    def serving_info(self, served: ServedModel) -> dict[str, Any]:
        info = {k: served.info.get(k) for k in ("uri", "version", "loaded_at")}
        if self.reloader is not None:
            info["reload"] = self.reloader.status()
        return _jsonable(info)

    # ---------------------------------------------------------------- identity
    def effective_user(self, request: Request, named: str | None, param: str) -> str:
        """The user a request acts for: the authenticated one when identity is enforced."""
        if not self.enforce_identity:
            if named is None or not named.strip():
                raise ApiError(400, f"field '{param}' (the user id) is required", param=param)
            return named
        identity = request.scope.get(IDENTITY_SCOPE_KEY)
        if not identity:
            raise ApiError(401, f"this server needs the user's identity ({self.identity_hint})",
                           type="authentication_error", code="identity_required")
        if named is not None and named != identity:
            log.warning("refused a request naming another user than the authenticated one (field %s)", param)
            raise ApiError(403, f"field '{param}' names another user than the authenticated one",
                           type="permission_error", param=param, code="user_mismatch")
        return identity

    # ---------------------------------------------------------------- upstream
    def upstream_failure(self, model: str, status: int | None, text: str, key: str | None, code: str) -> ApiError:
        """A 502 whose message quotes the upstream, with the key and extra header values redacted."""
        self.metrics.bump(self.metrics.upstream_errors, model)
        ep = self.endpoints.get(model)
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


def state_of(request: Request) -> AppState:
    """The :class:`AppState` of the app serving ``request``."""
    return request.app.state.gmt
