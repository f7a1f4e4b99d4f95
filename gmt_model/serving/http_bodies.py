"""Request bodies of the HTTP API (pydantic models), strict JSON reading and validation."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gmt_model.serving.http_errors import ApiError

#: most queries in one ``/v1/route`` batch (the default of ``create_app(max_batch=...)``)
MAX_BATCH = 1000
_MAX_BATCH = MAX_BATCH

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
