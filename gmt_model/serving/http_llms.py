"""HTTP side of the open LLM pool and of cost-aware routing.

* ``GET /admin/llms``: the pool (``?all=true``: removed LLMs too);
* ``POST /admin/llms`` ``{name, description, cost?, endpoint?}``: add an LLM (201);
* ``PATCH /admin/llms/{name}`` ``{description?, cost?, endpoint?}``: change one;
* ``DELETE /admin/llms/{name}``: remove one (never routed to again; its history stays).

The ``/admin/`` prefix is behind the server's admin token.  Bad input is a
400 with the field named, and nothing is stored.  ``/v1/models`` lists the
routable pool (the router's candidates).  An LLM with an ``endpoint`` (a
base URL) becomes an upstream of ``/v1/chat/completions`` as soon as the
server sees it (whichever process added it).

Cost: ``cost_weight`` and ``max_cost`` are extension fields of the OpenAI
chat body (and of ``/v1/route``), or the headers ``X-Cost-Weight`` /
``X-Max-Cost``; :func:`cost_options` reads them.  :func:`pool_metrics` is the
Prometheus text of routes and cost per LLM.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gmt_model.errors import RoutingError

__all__ = ["register_llm_routes", "cost_options", "pool_metrics", "COST_WEIGHT_HEADER", "MAX_COST_HEADER"]

COST_WEIGHT_HEADER = "X-Cost-Weight"
MAX_COST_HEADER = "X-Max-Cost"
COST_FIELDS = ("cost_weight", "max_cost")


def _err(status: int, message: str, param: str | None = None, code: str = "invalid_value") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": code}}, status_code=status)


def cost_options(body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """``cost_weight`` / ``max_cost`` of a request: the body's extension fields, else the headers.
    Raises ``RoutingError`` (a 400) naming the field."""
    out: dict[str, Any] = {}
    for key, header in zip(COST_FIELDS, (COST_WEIGHT_HEADER, MAX_COST_HEADER)):
        value = body.get(key)
        if value is None and headers.get(header) is not None:
            try:
                value = float(headers[header])
            except ValueError:
                raise RoutingError(f"field {key!r}: header {header} is not a number: {headers[header]!r}") from None
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise RoutingError(f"field {key!r}: expected a finite number >= 0, got {value!r}")
            out[key] = float(value)
    return out


def pool_metrics(router: Any) -> str:
    """Prometheus text: routes and summed price per LLM, and each LLM's price."""
    counts = dict(getattr(router, "route_counts", {}) or {})
    cost = dict(getattr(router, "route_cost", {}) or {})
    out = ["# HELP gmtrouter_routes_total Routing decisions per chosen LLM (route and chat calls).",
           "# TYPE gmtrouter_routes_total counter"]
    out += [f'gmtrouter_routes_total{{model="{_esc(m)}"}} {n}' for m, n in sorted(counts.items())]
    out += ["# HELP gmtrouter_routed_price_usd_per_mtok_total Sum of the chosen LLMs' prices (USD per 1M tokens) "
            "over routing decisions: times the mean tokens per call / 1e6 it is the spend.",
            "# TYPE gmtrouter_routed_price_usd_per_mtok_total counter"]
    out += [f'gmtrouter_routed_price_usd_per_mtok_total{{model="{_esc(m)}"}} {c:.6f}' for m, c in sorted(cost.items())]
    pool = router.llms() if callable(getattr(router, "llms", None)) else []
    out += ["# HELP gmtrouter_llm_price_usd_per_mtok The price of each LLM of the pool (USD per 1M tokens).",
            "# TYPE gmtrouter_llm_price_usd_per_mtok gauge"]
    out += [f'gmtrouter_llm_price_usd_per_mtok{{model="{_esc(d["name"])}"}} {d["cost"]}' for d in pool
            if d.get("cost") is not None]
    return "\n".join(out) + "\n"


def _esc(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def sync_endpoints(router: Any, endpoints: dict[str, Any]) -> None:
    """Pool LLMs with an endpoint become upstreams (the config's ``endpoints`` entries win)."""
    if not callable(getattr(router, "llms", None)):
        return
    new = {d["name"]: {"base_url": d["endpoint"]} for d in router.llms()
           if d.get("endpoint") and d["name"] not in endpoints}
    if new:
        from gmt_model.serving.endpoints import load_endpoints

        endpoints.update(load_endpoints(new))


def register_llm_routes(app: FastAPI, endpoints: dict[str, Any] | None = None) -> None:
    """Add the ``/admin/llms`` handlers to ``app`` (a ``create_app`` app: ``app.state.holder``)."""

    async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        served = app.state.holder.current

        def run() -> Any:
            with served.lock:
                return fn(served.router, *args, **kwargs)

        return await anyio.to_thread.run_sync(run)

    def pool_op(name: str):
        def op(router: Any, *args: Any, **kwargs: Any) -> Any:
            fn = getattr(router, name, None)
            if fn is None:
                raise RoutingError("this router has no open LLM pool")
            out = fn(*args, **kwargs)
            if endpoints is not None:
                sync_endpoints(router, endpoints)
            return out
        return op

    async def body(request: Request, allowed: set[str]) -> dict[str, Any] | JSONResponse:
        try:
            raw = await request.json()
        except Exception:
            return _err(400, "request body is not valid JSON; expected an object", code="invalid_json")
        if not isinstance(raw, dict):
            return _err(400, "request body must be a JSON object")
        unknown = sorted(set(raw) - allowed)
        if unknown:
            return _err(400, f"unknown field(s) {unknown}; known: {sorted(allowed)}", param=unknown[0])
        return raw

    async def answer(fn: Any, status: int = 200, **kwargs: Any) -> JSONResponse:
        try:
            out = await call(fn, **kwargs)
        except RoutingError as exc:
            return _err(409 if "already in the pool" in str(exc) else 404 if "not in the pool" in str(exc) else 400,
                        str(exc), param=exc.field)
        return JSONResponse(out, status_code=status)

    @app.get("/admin/llms")
    async def list_llms(request: Request) -> JSONResponse:
        include = request.query_params.get("all", "").lower() in ("1", "true", "yes")
        return JSONResponse({"object": "list", "data": await call(lambda r: r.llms(include_removed=include))})

    @app.post("/admin/llms")
    async def add_llm(request: Request) -> JSONResponse:
        raw = await body(request, {"name", "description", "cost", "endpoint"})
        if isinstance(raw, JSONResponse):
            return raw
        return await answer(pool_op("add_llm"), 201, name=raw.get("name"), description=raw.get("description"),
                            cost=raw.get("cost"), endpoint=raw.get("endpoint"))

    @app.patch("/admin/llms/{name:path}")
    async def update_llm(name: str, request: Request) -> JSONResponse:
        raw = await body(request, {"description", "cost", "endpoint"})
        if isinstance(raw, JSONResponse):
            return raw
        return await answer(pool_op("update_llm"), name=name, **raw)

    @app.delete("/admin/llms/{name:path}")
    async def remove_llm(name: str) -> JSONResponse:
        return await answer(pool_op("remove_llm"), name=name)

    if endpoints is not None:
        class _PoolEndpoints:
            """Before a chat completion, the endpoints follow the pool (a plain ASGI wrapper: Starlette's
            ``@app.middleware("http")`` costs every request a task group and memory streams)."""

            def __init__(self, inner: Any) -> None:
                self.inner = inner

            async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
                if scope["type"] == "http" and scope.get("path") == "/v1/chat/completions":
                    sync_endpoints(app.state.holder.current.router, endpoints)
                await self.inner(scope, receive, send)

        app.add_middleware(_PoolEndpoints)
