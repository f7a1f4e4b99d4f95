"""The routing API: ``POST /v1/route`` (route only) and ``POST /v1/feedback`` (ratings and pairwise preferences)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse

from gmt_model.errors import RoutingError
from gmt_model.serving.app_state import AppState, accepts, overloaded, state_of
from gmt_model.serving.feedback import FeedbackLogUnavailable
from gmt_model.serving.http_bodies import _FeedbackBody, _jsonable, _read_json, _RouteBatch, _RouteQuery, _validate
from gmt_model.serving.http_errors import NO_RETRY, ApiError, routing_api_error
from gmt_model.serving.reloader import _sync_feedback
from gmt_model.serving.requests import check_task

log = logging.getLogger("gmt_model.serving.server")


async def route(request: Request) -> JSONResponse:
    st = state_of(request)
    deadline = st.deadline()
    raw = await _read_json(request)
    served = st.holder.current
    try:
        if "queries" in raw:
            given = raw["queries"]
            if isinstance(given, list) and len(given) > st.limits.max_batch:
                raise ApiError(413, f"field 'queries': {len(given)} queries; at most {st.limits.max_batch} per "
                                    "request (split the batch)", param="queries", code="batch_too_large")
            batch = _validate(_RouteBatch, raw)
            queries = []
            for i, q in enumerate(batch.queries):
                query = q.to_query()
                query["user_id"] = st.effective_user(request, q.user_id, f"queries[{i}].user_id")
                queries.append(query)
            n = len(queries)
            if st.batch_texts and st.batch_texts + n > st.limits.max_batch_texts:
                st.metrics.bump(st.metrics.shed, "batch_texts")
                raise overloaded(f"{st.batch_texts} batch queries are in flight (limit "
                                 f"{st.limits.max_batch_texts}); retry shortly", retry_after=2.0)
            st.batch_texts += n
            try:
                async with st.admit():
                    results = await st.route_many(served, queries, deadline)
            finally:
                st.batch_texts -= n
            return JSONResponse({"results": _jsonable(results)})
        q = _validate(_RouteQuery, raw)
        query = q.to_query()
        query["user_id"] = st.effective_user(request, q.user_id, "user_id")
        async with st.admit():
            result = await st.route_one(served, query, deadline)
    except RoutingError as exc:
        raise routing_api_error(exc) from None
    return JSONResponse(_jsonable(result))


def _not_stored(exc: FeedbackLogUnavailable, st: AppState) -> ApiError:
    """503 (507 for a full disk) for feedback that could not be stored; the server reports degraded."""
    reason = getattr(exc, "reason", "unavailable")
    st.feedback_degraded = reason
    log.error("feedback refused: the feedback log is %s; routing goes on", reason)
    if reason == "full":
        return ApiError(507, "the feedback log is full (no space left); the feedback was not stored",
                        type="service_unavailable", code="feedback_log_full", headers={"Retry-After": "60"})
    return ApiError(503, f"the feedback log is {reason}; the feedback was not stored, retry later",
                    type="service_unavailable", code="feedback_log_unavailable", headers={"Retry-After": "30"})


async def feedback(request: Request) -> JSONResponse:
    st = state_of(request)
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
    user = st.effective_user(request, named, user_param)
    deadline = st.deadline()
    served = st.holder.current
    router = served.router
    feedback_log = st.feedback_log
    router_log = getattr(router, "feedback_log", None)
    if router_log is None and feedback_log is None:
        raise ApiError(409, "this server keeps no feedback log, so feedback would be lost on restart or reload: "
                            "it is refused. Start the server with a router YAML that sets router.feedback_log "
                            "(gmtrouter serve --config ...)", type="invalid_request_error",
                       code="feedback_log_not_configured", headers=NO_RETRY)
    names = {"user_id": user_param}
    common: dict[str, Any] = {"user_id": user, "query": fb.query, "session_id": fb.session_id}
    try:
        task = check_task(fb.task)  # a bad task: a 400 naming it, before anything is stored
    except RoutingError as exc:
        raise routing_api_error(exc) from None
    if task is not None:
        common["task"] = task
    if pairwise:
        fn = getattr(router, "update_user_preference", None)
        if fn is None:
            raise ApiError(400, "this router does not take pairwise preferences; send model and rating",
                           param="preferred", code="pairwise_unsupported")
        kwargs = dict(common, preferred=fb.preferred, rejected=fb.rejected, turn=fb.turn)
    else:
        fn = router.update_user_feedback
        kwargs = dict(common, model=fb.model, rating=fb.rating)
        if fb.turn is not None and accepts(fn, "turn"):
            kwargs["turn"] = fb.turn
        if fb.query_id is not None and router_log is not None:
            if not accepts(fn, "query_id"):
                raise ApiError(400, "field 'query_id': this router does not store a query id with a rating; "
                                    "leave it out", param="query_id", code="unsupported_field")
            kwargs["query_id"] = fb.query_id
    if task is not None and not accepts(fn, "task"):
        raise ApiError(400, "field 'task': this router does not take a task with feedback; leave it out",
                       param="task", code="unsupported_field")
    try:
        async with st.admit():
            log_fn = getattr(router, "log_preference" if pairwise else "log_feedback", None)
            if log_fn is not None and getattr(router, "apply_logged", None) is not None and "query_id" not in kwargs:
                # stored first, in a worker thread of its own (the log's fsync never holds the router queue);
                # then applied through the queue, which runs it even if this request gives up
                logged = await st.call_router(served, "", log_fn, deadline=deadline, encode="log", **kwargs)
                result = await st.apply_queued(served, router.apply_logged, logged)
            else:
                result = await st.call_queued(served, fn, deadline, **kwargs)
            result = _jsonable(result)
            if router_log is None:  # the server keeps the log for a router without one
                rows = _rows(router, user, fb, pairwise, task)
                ids = await anyio.to_thread.run_sync(feedback_log.append_many, rows)
                result = dict(result) if isinstance(result, dict) else {}
                result["feedback_ids" if pairwise else "feedback_id"] = ids if pairwise else ids[0]
    except RoutingError as exc:
        raise routing_api_error(exc, names) from None
    except FeedbackLogUnavailable as exc:
        raise _not_stored(exc, st) from None
    st.feedback_degraded = None
    body: dict[str, Any] = {"status": "ok", "result": result}
    got = result.get("feedback_ids" if pairwise else "feedback_id") if isinstance(result, dict) else None
    if got is None or (pairwise and (not isinstance(got, list) or not got)):
        log.error("the router answered feedback without a feedback-log id; not acknowledged")
        raise ApiError(503, "the feedback was not stored in the feedback log (the router gave no id)",
                       type="service_unavailable", code="feedback_not_stored", headers={"Retry-After": "30"})
    body["feedback_ids" if pairwise else "feedback_id"] = got
    now = st.holder.current
    if now is not served:  # a reload swapped routers while this ran: the new one reads the row now
        try:
            await st.call_router(now, "", _sync_feedback, now.router)
        except Exception as exc:  # it syncs again by itself later
            log.warning("feedback sync on the new router failed: %s", type(exc).__name__)
    st.metrics.add_feedback()
    log.info("feedback accepted (%s)", "pairwise" if pairwise else f"model={fb.model} rating={fb.rating}")
    return JSONResponse(body)


def _rows(router: Any, user: str, fb: _FeedbackBody, pairwise: bool, task: str | None = None
          ) -> list[dict[str, Any]]:
    """The feedback-log rows of one feedback (a pair: top and bottom of the rating scale, one query id)."""
    common = {"user_id": user, "query": fb.query, "session_id": fb.session_id, "turn": fb.turn, "task": task}
    if not pairwise:
        return [dict(common, model=fb.model, rating=fb.rating, query_id=fb.query_id)]
    import uuid

    lo, hi = getattr(router, "rating_scale", (1.0, 5.0))
    key = f"pref:{uuid.uuid4().hex}"
    return [dict(common, model=fb.preferred, rating=float(hi), query_id=key),
            dict(common, model=fb.rejected, rating=float(lo), query_id=key)]
