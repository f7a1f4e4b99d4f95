"""The routing API: ``POST /v1/route`` (route only) and ``POST /v1/feedback`` (ratings and pairwise preferences)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse

from gmt_model.errors import RoutingError
from gmt_model.serving.app_state import accepts, state_of
from gmt_model.serving.http_bodies import _FeedbackBody, _jsonable, _read_json, _RouteBatch, _RouteQuery, _validate
from gmt_model.serving.http_errors import ApiError, routing_api_error
from gmt_model.serving.reloader import _sync_feedback

log = logging.getLogger("gmt_model.serving.server")


async def route(request: Request) -> JSONResponse:
    st = state_of(request)
    raw = await _read_json(request)
    served = st.holder.current
    try:
        if "queries" in raw:
            batch = _validate(_RouteBatch, raw)
            queries = []
            for i, q in enumerate(batch.queries):
                query = q.to_query()
                query["user_id"] = st.effective_user(request, q.user_id, f"queries[{i}].user_id")
                queries.append(query)
            results = await st.call_router(served, "batch", served.router.route_batch, queries)
            return JSONResponse({"results": _jsonable(results)})
        q = _validate(_RouteQuery, raw)
        query = q.to_query()
        query["user_id"] = st.effective_user(request, q.user_id, "user_id")
        result = await st.call_router(served, "single", served.router.route_single, query)
    except RoutingError as exc:
        raise routing_api_error(exc) from None
    return JSONResponse(_jsonable(result))


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
    served = st.holder.current
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
        if fb.turn is not None and accepts(fn, "turn"):
            kwargs["turn"] = fb.turn
    try:
        result = await st.call_router(served, "", fn, **kwargs)
    except RoutingError as exc:
        raise routing_api_error(exc, names) from None
    result = _jsonable(result)
    body: dict[str, Any] = {"status": "ok", "result": result}
    feedback_log = st.feedback_log
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
    now = st.holder.current
    if now is not served:  # a reload swapped routers while this ran: the new one reads the row now
        try:
            await st.call_router(now, "", _sync_feedback, now.router)
        except Exception as exc:  # it syncs again by itself later
            log.warning("feedback sync on the new router failed: %s", type(exc).__name__)
    st.metrics.add_feedback()
    log.info("feedback accepted (%s)", "pairwise" if pairwise else f"model={fb.model} rating={fb.rating}")
    return JSONResponse(body)
