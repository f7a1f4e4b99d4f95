"""Small endpoints: the chat page, ``/health``, ``/metrics``, ``/v1/models`` and ``POST /admin/reload``."""

from __future__ import annotations

import re
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from gmt_model.serving.api_openai import ROUTER_MODEL
from gmt_model.serving.app_state import AppState, state_of
from gmt_model.serving.http_bodies import _jsonable
from gmt_model.serving.http_errors import ApiError
from gmt_model.serving.http_llms import pool_metrics
from gmt_model.serving.reloader import ServedModel

_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)


async def chat_page(request: Request) -> HTMLResponse:
    """``GET /`` and ``GET /chat``."""
    return HTMLResponse(state_of(request).page_html,
                        headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"})


_ABS_PATH = re.compile(r"(?<![\w.:/])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\:]+[/\\])*([^\s'\"/\\:]+)")


def _scrub(x: Any) -> Any:
    """Absolute paths in health details shortened to their last part (``/srv/models/demo`` -> ``demo``)."""
    if isinstance(x, str):
        return _ABS_PATH.sub(lambda m: m.group(1), x)
    if isinstance(x, dict):
        return {k: _scrub(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_scrub(v) for v in x]
    return x


def health_checks(st: AppState) -> tuple[str, dict[str, Any]]:
    """(``ok`` | ``degraded`` | ``down``, the checks behind it)."""
    served = st.holder.current
    router = served.router
    checks: dict[str, Any] = {}
    if getattr(router, "feedback_log", None) is None and st.feedback_log is None:
        checks["feedback"] = {"status": "disabled", "detail": "no feedback log: feedback is refused (409)"}
    elif st.feedback_degraded:
        checks["feedback"] = {"status": "degraded",
                              "detail": f"the feedback log is {st.feedback_degraded}: feedback is refused"}
    else:
        checks["feedback"] = {"status": "ok"}
    enc = getattr(router, "_encoder", None)  # only once loaded (a health check never loads the encoder)
    why = getattr(enc, "degraded", None)
    checks["embedding_cache"] = {"status": "degraded", "detail": f"{why}: routing goes on without caching"} \
        if why else {"status": "ok"}
    if st.reloader is not None:
        last = st.reloader.last
        bad = last.get("status") in ("refused", "unavailable")
        checks["reload"] = {"status": "degraded" if bad else "ok", "last": last.get("status"),
                            "error": last.get("error")}
    if st.failures >= 5:
        checks["router"] = {"status": "down", "detail": f"the last {st.failures} router calls failed"}
    else:
        checks["router"] = {"status": "ok"}
    states = {c["status"] for c in checks.values()}
    status = "down" if "down" in states else "degraded" if "degraded" in states else "ok"
    return status, checks


async def health(request: Request) -> JSONResponse:
    """Public: ``{"status": "ok" | "degraded" | "down"}`` only.  With the admin token (``Authorization:
    Bearer <admin token>``): the checks, the candidates, endpoints and model (absolute paths shortened)."""
    st = state_of(request)
    status, checks = health_checks(st)
    code = 503 if status == "down" else 200
    if not st.is_admin(request):
        return JSONResponse({"status": status}, status_code=code)
    served = st.holder.current
    body = {"status": status, "checks": checks, "candidates": len(list(served.router.candidates)),
            "endpoints": len(st.endpoints), "inflight": st.inflight, "model": st.serving_info(served)}
    return JSONResponse(_scrub(_jsonable(body)), status_code=code)


async def metrics(request: Request) -> Response:
    st = state_of(request)
    text = st.metrics.render(reloads=st.reloader.counts if st.reloader is not None else None,
                             serving=st.holder.current.info)
    text += pool_metrics(st.holder.current.router)  # routes and cost per LLM (http_llms)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def _model_objects(request: Request, served: ServedModel) -> list[dict[str, Any]]:
    st = state_of(request)
    info = served.info
    data = [{"id": ROUTER_MODEL, "object": "model", "created": 0, "owned_by": st.title,
             "model_uri": info.get("uri"), "model_version": info.get("version")}]
    pool = getattr(served.router, "llms", None)
    about = {d["name"]: d for d in pool()} if callable(pool) else {}  # the pool: description, cost, trained
    data += [
        {"id": c, "object": "model", "created": 0, "owned_by": st.title, "endpoint_configured": c in st.endpoints,
         **({"description": about[c]["description"], "cost": about[c]["cost"], "cost_unit": "USD per 1M tokens",
             "trained": about[c]["trained"]} if c in about else {})}
        for c in served.router.candidates
    ]
    return data


async def list_models(request: Request) -> dict[str, Any]:
    st = state_of(request)
    served = st.holder.current
    return {"object": "list", "data": _model_objects(request, served), "rating_scale": st.rating_scale(served),
            "serving": st.serving_info(served)}


async def get_model(request: Request, model_id: str) -> dict[str, Any]:
    for obj in _model_objects(request, state_of(request).holder.current):
        if obj["id"] == model_id:
            return obj
    raise ApiError(404, f"The model {model_id!r} does not exist; use {ROUTER_MODEL!r} or a candidate LLM",
                   param="model", code="model_not_found")


async def admin_reload(request: Request) -> JSONResponse:
    reloader = state_of(request).reloader
    if reloader is None:
        raise ApiError(409, "this server serves a fixed model; start it with a model source to reload",
                       code="reload_not_configured")
    out = await anyio.to_thread.run_sync(reloader.reload)
    status = {"reloaded": 200, "unchanged": 200, "refused": 409, "unavailable": 503}[out["status"]]
    return JSONResponse(_jsonable(out), status_code=status)
