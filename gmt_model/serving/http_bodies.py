"""Request bodies of the HTTP API (pydantic models), strict JSON reading and validation."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from fastapi import Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from gmt_model.serving.http_errors import ApiError

#: most queries in one ``/v1/route`` batch (the default of ``create_app(max_batch=...)``)
MAX_BATCH = 1000
_MAX_BATCH = MAX_BATCH
#: deepest nesting of arrays/objects a JSON body may have
MAX_JSON_DEPTH = 32
#: longest number literal (digits, sign, exponent) a JSON body may hold
MAX_NUMBER_CHARS = 64
#: user and session ids: the router's id alphabet, matched in full (``"alice\n"`` is not ``alice``)
ID_PATTERN = re.compile(r"[\w.@:+\-/#]{1,256}")
JSON_CONTENT_TYPES = ("application/json",)


def check_id(value: str | None, what: str = "an id") -> str | None:
    """``value`` when it is a valid user/session id (full match), else ValueError."""
    if value is not None and not ID_PATTERN.fullmatch(value):
        raise ValueError(f"expected {what} of 1-256 letters, digits or ._@:+-/# (no spaces or line breaks)")
    return value


_Id = Annotated[str, AfterValidator(lambda v: check_id(v))]


class _HistoryTurn(BaseModel):
    """A rated earlier turn of ``conversation_history`` (plain strings are unrated turns)."""

    model_config = ConfigDict(extra="forbid")
    query: str | None = None
    response: str | None = None
    model: str | None = Field(default=None, strict=True)
    rating: float | None = Field(default=None, strict=True, allow_inf_nan=False)

class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None


class _ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[_ChatMessage] = Field(min_length=1)
    user: _Id | None = None
    stream: bool = Field(default=False, strict=True)
    session_id: _Id | None = None


class _RouteQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query_text: str = Field(min_length=1)
    user_id: _Id | None = None
    session_id: _Id | None = None
    turn: int | None = Field(default=None, ge=1, strict=True)
    conversation_history: list[str | _HistoryTurn] | None = None
    candidates: list[str] | None = None
    cost_weight: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # cost-aware routing (issue 15)
    max_cost: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    task: Any = None  # the kind of work the caller names (checked by the router: requests.check_task)

    def to_query(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class _RouteBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[_RouteQuery] = Field(min_length=1)


class _FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: _Id | None = None
    user_id: _Id | None = None
    query: str = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1)
    rating: float | None = Field(default=None, strict=True, allow_inf_nan=False)
    preferred: str | None = Field(default=None, min_length=1)
    rejected: str | None = Field(default=None, min_length=1)
    session_id: _Id | None = None
    turn: int | None = Field(default=None, ge=1, strict=True)
    query_id: str | None = Field(default=None, min_length=1)
    task: Any = None  # the kind of work, as named when routing (checked: requests.check_task)


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
        parts = [f"field '{_param_of(tuple(e['loc']))}': {e['ctx']['error']}"
                 if e.get("type") == "value_error" and e.get("ctx", {}).get("error") is not None
                 else f"{_param_of(tuple(e['loc'])) or 'body'}: {e['msg']}" for e in errs[:5]]
        param = _param_of(tuple(errs[0]["loc"])) if errs else None
        raise ApiError(400, "invalid request: " + "; ".join(parts), param=param, code="invalid_value") from None


class _NumberTooLong(ValueError):
    pass


def _parse_int(s: str) -> int:
    if len(s) > MAX_NUMBER_CHARS:
        raise _NumberTooLong(f"a number literal has {len(s)} characters (at most {MAX_NUMBER_CHARS})")
    return int(s)


def _parse_float(s: str) -> float:
    if len(s) > MAX_NUMBER_CHARS:
        raise _NumberTooLong(f"a number literal has {len(s)} characters (at most {MAX_NUMBER_CHARS})")
    return float(s)


def _depth_exceeds(data: Any, limit: int) -> bool:
    """Whether ``data`` nests arrays/objects deeper than ``limit`` (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict):
            if d > limit:
                return True
            stack.extend((v, d + 1) for v in x.values() if isinstance(v, (dict, list)))
        elif isinstance(x, list):
            if d > limit:
                return True
            stack.extend((v, d + 1) for v in x if isinstance(v, (dict, list)))
    return False


def parse_json_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """A request body as a JSON object, strictly: the content type must be JSON, number literals have at
    most ``MAX_NUMBER_CHARS`` characters, nesting is at most ``MAX_JSON_DEPTH`` deep.  Anything else is an
    :class:`ApiError` (415 for the content type, else 400)."""
    if not body.strip():
        raise ApiError(400, "request body is empty; expected a JSON object")
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype not in JSON_CONTENT_TYPES and not (ctype.startswith("application/") and ctype.endswith("+json")):
        raise ApiError(415, f"the request body must be JSON sent with 'Content-Type: application/json' "
                            f"(got {ctype or 'no content type'!r})", code="unsupported_media_type")
    try:
        data = json.loads(body, parse_int=_parse_int, parse_float=_parse_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except _NumberTooLong as exc:
        raise ApiError(400, f"request body: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise ApiError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    return data


async def _read_json(request: Request) -> dict[str, Any]:
    return parse_json_body(await request.body(), request.headers.get("content-type"))


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
