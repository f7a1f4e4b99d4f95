"""What the HTTP handlers share: the serving router, the reloader, metrics, endpoints and settings.

:func:`gmt_model.serving.server.create_app` builds one :class:`AppState` and puts it at
``app.state.gmt``; every handler reads it from ``request.app.state.gmt`` (:func:`state_of`), so the
handlers are plain module-level functions that can be read and tested on their own.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
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

__all__ = ["AppState", "Limits", "state_of", "accepts", "overloaded"]

log = logging.getLogger("gmt_model.serving.server")


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a parameter ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


_accepts = accepts


@dataclass(frozen=True)
class Limits:
    """Bounds on the work one request may cause and on the work in flight (``create_app(limits=...)``).

    * ``max_batch``: most queries in one ``/v1/route`` batch (more: 413);
    * ``request_timeout``: seconds a request may take before the router works on it or between its
      chunks (waiting for a lock, encoding); past it: 503 with ``Retry-After``;
    * ``max_inflight``: router-bound requests (route, feedback, routed chat completions) admitted at once;
      more are answered 503 with ``Retry-After`` at once (load shedding, not timeouts);
    * ``max_batch_texts``: query texts of ``/v1/route`` batches in flight together (more: 503);
    * ``encode_chunk``: texts per encoder call (a big batch is encoded chunk by chunk, outside every lock);
    * ``route_chunk``: queries per router call (a big batch takes the router's lock once per chunk);
    * ``router_threads``: worker threads for router calls; ``encode_threads``: for encoding the new texts of
      single routes and feedback; ``batch_encode_threads``: for encoding ``/v1/route`` batches (their own
      threads: a big batch keeps the other cores for everybody else's routing and encoding);
    * ``coalesce``: most single routes (``/v1/route``, chat completions) served by one ``route_batch`` call:
      concurrent single routes are coalesced into one router call.
    """

    max_batch: int = 1000
    request_timeout: float = 30.0
    max_inflight: int = 512
    max_batch_texts: int = 4000
    encode_chunk: int = 32
    route_chunk: int = 64
    router_threads: int = 2
    encode_threads: int = 2
    batch_encode_threads: int = 1
    coalesce: int = 64

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_inflight", "max_batch_texts", "encode_chunk", "route_chunk",
                     "router_threads", "encode_threads", "batch_encode_threads", "coalesce"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"limits.{name}: expected an integer >= 1, got {v!r}")
        v = self.request_timeout
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"limits.request_timeout: expected a number of seconds > 0, got {v!r}")


def _lower_priority() -> None:
    """A batch encoder thread runs at nice +10 (Linux: per thread), so the CPU goes to the router queue and
    the event loop first, and a big batch takes what they leave; where that is not allowed, as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def overloaded(message: str, retry_after: float = 1.0, code: str = "overloaded") -> ApiError:
    """A 503 with ``Retry-After`` (whole seconds, at least 1)."""
    return ApiError(503, message, type="service_unavailable", code=code,
                    headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class _BudgetExceeded(Exception):
    pass


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
    limits: Limits = field(default_factory=Limits)
    extra: dict[str, Any] = field(default_factory=dict)
    #: why feedback cannot be stored now ("read-only", "full", ...), None while it can
    feedback_degraded: str | None = None
    inflight: int = 0
    batch_texts: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self._router_limiter: anyio.CapacityLimiter | None = None
        self._encode_limiter: anyio.CapacityLimiter | None = None
        self._drain_limiter: anyio.CapacityLimiter | None = None
        self._batch_pool: ThreadPoolExecutor | None = None
        self._log_limiter: anyio.CapacityLimiter | None = None
        self._pending: list[tuple[str, ServedModel, Any, asyncio.Future, float]] = []
        self._draining = False

    # ---------------------------------------------------------------- admission
    def deadline(self) -> float:
        return time.monotonic() + self.limits.request_timeout

    def admit(self) -> "_Admission":
        """``async with state.admit():`` a router-bound request, or 503 at once when too many are in flight."""
        if self.inflight >= self.limits.max_inflight:
            self.metrics.bump(self.metrics.shed, "inflight")
            raise overloaded(f"the server is at its limit of {self.limits.max_inflight} requests in flight; "
                             "retry shortly")
        return _Admission(self)

    # ---------------------------------------------------------------- router calls
    def _limiter(self, encode: bool | str) -> anyio.CapacityLimiter:
        if encode == "coalesced":  # the one coalescing loop has a thread of its own: feedback never starves it
            if self._drain_limiter is None:
                self._drain_limiter = anyio.CapacityLimiter(1)
            return self._drain_limiter
        if encode == "log":  # storing feedback: threads of its own, never behind a batch's router calls
            if self._log_limiter is None:
                self._log_limiter = anyio.CapacityLimiter(self.limits.router_threads)
            return self._log_limiter
        if encode:
            if self._encode_limiter is None:
                self._encode_limiter = anyio.CapacityLimiter(self.limits.encode_threads)
            return self._encode_limiter
        if self._router_limiter is None:
            self._router_limiter = anyio.CapacityLimiter(self.limits.router_threads)
        return self._router_limiter

    async def call_router(self, served: ServedModel, kind: str, fn: Callable[..., Any], *args: Any,
                          deadline: float | None = None, encode: bool | str = False, **kwargs: Any) -> Any:
        """Run ``fn`` in a worker thread (timed as ``kind`` when given).

        A router that does not declare ``thread_safe = True`` runs under the served model's call lock
        (one call at a time).  With a ``deadline`` (``time.monotonic()``), a call that could not start
        before it (waiting for a thread or the lock) is not run: 503 with ``Retry-After``."""
        metrics = self.metrics
        lock = None if getattr(served.router, "thread_safe", False) else served.lock

        def run() -> Any:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or (lock is not None and not lock.acquire(timeout=left)):
                    raise _BudgetExceeded
            elif lock is not None:
                lock.acquire()
            try:
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if kind:
                        metrics.routing(kind, time.perf_counter() - t0)
            finally:
                if lock is not None:
                    lock.release()

        try:
            if encode == "batch":  # the batch encoder's own threads, at a lower CPU priority
                out = await asyncio.get_running_loop().run_in_executor(self._batch_executor(), run)
            else:
                out = await anyio.to_thread.run_sync(run, limiter=self._limiter(encode))
        except _BudgetExceeded:
            metrics.bump(metrics.shed, "timeout")
            raise overloaded(f"the request could not be served within its time budget of "
                             f"{self.limits.request_timeout:g} s; retry shortly", code="timeout") from None
        except ApiError:
            raise
        except Exception as exc:
            from gmt_model.errors import RoutingError

            if not isinstance(exc, (RoutingError, OSError)):
                self.failures += 1
            raise
        self.failures = 0
        return out

    def _batch_executor(self) -> ThreadPoolExecutor:
        if self._batch_pool is None:
            self._batch_pool = ThreadPoolExecutor(self.limits.batch_encode_threads, "gmt-batch-encode",
                                                  initializer=_lower_priority)
        return self._batch_pool

    def close(self) -> None:
        """At shutdown: the batch encoder's threads end after their current call."""
        if self._batch_pool is not None:
            self._batch_pool.shutdown(wait=False, cancel_futures=True)
            self._batch_pool = None

    async def encode(self, served: ServedModel, texts: Sequence[str], deadline: float, batch: bool = False) -> None:
        """Encode the texts the router has not seen, chunk by chunk in the encoder threads, outside every
        lock (the router's ``route_batch`` then finds them cached); checks the deadline between chunks."""
        embed = getattr(served.router, "embed", None)
        if embed is None or not texts:
            return
        cache = getattr(served.router, "_emb_cache", None)
        todo = list(dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip() and len(t) <= 100_000
                                  and (cache is None or t not in cache)))
        step = self.limits.encode_chunk
        for i in range(0, len(todo), step):
            try:
                await self.call_router(served, "", embed, todo[i:i + step], deadline=deadline,
                                       encode="batch" if batch else True)
            except ApiError:
                raise
            except Exception:  # the router's own call reports it (with its checks first)
                log.debug("pre-encoding failed; the router call will encode", exc_info=True)
                return

    async def route_many(self, served: ServedModel, queries: list[dict[str, Any]], deadline: float
                         ) -> list[dict[str, Any]]:
        """Route a batch: encode its new texts (chunks, no lock), then route ``route_chunk`` queries per
        router call, so a big batch never holds the router for long."""
        await self.encode(served, [q["query_text"] for q in queries], deadline, batch=True)
        step = self.limits.route_chunk
        out: list[dict[str, Any]] = []
        for i in range(0, len(queries), step):
            out += await self.call_router(served, "batch", served.router.route_batch, queries[i:i + step],
                                          deadline=deadline)
        return out

    async def route_one(self, served: ServedModel, query: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Route one query: its text is encoded first if new (outside the router's lock); then it joins the
        router queue, where concurrent single routes are coalesced into one ``route_batch`` call."""
        await self.encode(served, [query["query_text"]], deadline)
        if self.limits.coalesce <= 1 or getattr(served.router, "route_batch", None) is None:
            return await self.call_router(served, "single", served.router.route_single, query, deadline=deadline)
        return await self._enqueue("route", served, query, deadline)

    async def call_queued(self, served: ServedModel, fn: Callable[..., Any], deadline: float,
                          **kwargs: Any) -> Any:
        """Run ``fn(**kwargs)`` (feedback) through the router queue, in turn with the coalesced routes."""
        return await self._enqueue("call", served, (fn, kwargs), deadline)

    async def apply_queued(self, served: ServedModel, fn: Callable[..., Any], logged: Any) -> Any:
        """Apply feedback already stored in the log (``fn(logged)``) through the router queue.  It is never
        dropped: not past a deadline, not when the client is gone (it is stored: it must be applied)."""
        return await asyncio.shield(self._enqueue("apply", served, (fn, {"logged": logged}), math.inf))

    async def _enqueue(self, kind: str, served: ServedModel, payload: Any, deadline: float) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((kind, served, payload, fut, deadline))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    def _expired(self, entry: tuple, now: float) -> bool:
        fut, deadline = entry[3], entry[4]
        if fut.cancelled():
            return True
        if deadline <= now:
            self.metrics.bump(self.metrics.shed, "timeout")
            fut.set_exception(overloaded(f"the request could not be served within its time budget of "
                                         f"{self.limits.request_timeout:g} s; retry shortly", code="timeout"))
            return True
        return False

    async def _drain(self) -> None:
        """The router queue: ONE worker thread calls the router, in cycles.  Each cycle runs the feedback calls
        that were waiting (at most ``coalesce``, in arrival order; applying stored feedback is cheap), then
        routes the waiting single routes in one ``route_batch`` call (at most ``coalesce``).  One thread means no contention for the
        router's lock (an unfair lock starved feedback behind back-to-back route batches), and each request
        waits at most about one cycle."""
        try:
            while self._pending:
                served = self._pending[0][1]
                now = time.monotonic()
                routes, calls, rest = [], [], []
                for e in self._pending:
                    if e[1] is not served:
                        rest.append(e)
                    elif e[0] == "route" and len(routes) < self.limits.coalesce:
                        routes.append(e)
                    elif e[0] in ("call", "apply") and len(calls) < self.limits.coalesce:
                        calls.append(e)
                    else:
                        rest.append(e)
                self._pending = rest
                routes = [e for e in routes if not self._expired(e, now)]
                calls = [e for e in calls if e[0] == "apply" or not self._expired(e, now)]
                if calls:  # feedback first: cheap (stored already), and each route then sees every vote before it
                    await self._run_calls(served, calls)
                if routes:
                    await self._run_routes(served, routes)
        finally:
            self._draining = False

    async def _run_routes(self, served: ServedModel, routes: list[tuple]) -> None:
        try:
            results = await self.call_router(served, "single", served.router.route_batch, [e[2] for e in routes],
                                             encode="coalesced")
        except Exception:  # one bad query fails the batch: route them one by one for their own answers
            for e in routes:
                try:
                    r = await self.call_router(served, "single", served.router.route_single, e[2],
                                               encode="coalesced")
                except Exception as exc:
                    if not e[3].done():
                        e[3].set_exception(exc)
                else:
                    if not e[3].done():
                        e[3].set_result(r)
            return
        for e, r in zip(routes, results):
            if not e[3].done():
                e[3].set_result(r)

    async def _run_calls(self, served: ServedModel, calls: list[tuple]) -> None:
        def run_all() -> list[tuple[bool, Any]]:
            out = []
            for e in calls:
                fn, kwargs = e[2]
                try:
                    out.append((True, fn(**kwargs)))
                except Exception as exc:  # handed to that request
                    out.append((False, exc))
            return out

        try:
            outcomes = await self.call_router(served, "", run_all, encode="coalesced")
        except Exception as exc:
            for e in calls:
                if not e[3].done():
                    e[3].set_exception(exc)
            return
        for e, (ok, value) in zip(calls, outcomes):
            if e[3].done():
                continue
            if ok:
                e[3].set_result(value)
            else:
                e[3].set_exception(value)


    def is_admin(self, request: Request) -> bool:
        """Whether the request carries the admin token (``Authorization: Bearer <admin token>``)."""
        token = self.extra.get("admin_token")
        if not token:
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

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


class _Admission:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def __aenter__(self) -> None:
        self.state.inflight += 1

    async def __aexit__(self, *exc: object) -> None:
        self.state.inflight -= 1


def state_of(request: Request) -> AppState:
    """The :class:`AppState` of the app serving ``request``."""
    return request.app.state.gmt
