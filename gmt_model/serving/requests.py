"""Typed router requests, validated once.

Every way into the router (Python calls, the CLI, HTTP) builds one of these
dataclasses with its ``parse`` classmethod; the router then works on typed,
checked values only.  A bad field raises :class:`~gmt_model.errors.RoutingError`
with the message ``field 'x': ...`` and nothing is stored.

What a check needs to know about the router (the LLM pool, the rating
scale) comes in a :class:`Checks` object, so the module itself stays free of
torch and of the router.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from gmt_model.errors import RoutingError

__all__ = ["Checks", "RouteRequest", "RatingRequest", "PreferenceRequest", "LLMSpec", "check_id", "check_query",
           "check_cost", "check_cost_weight", "check_task", "ID_RE", "MAX_QUERY_CHARS", "MAX_DESCRIPTION_CHARS",
           "MAX_TASK_CHARS"]

ID_RE = re.compile(r"^[\w.@:+\-/#]{1,256}$")
MAX_QUERY_CHARS = 100_000
MAX_DESCRIPTION_CHARS = 10_000
#: longest ``task`` label (the kind of work a caller names: "coding", "writing")
MAX_TASK_CHARS = 64


# ---------------------------------------------------------------- field checks
def check_id(value: Any, field_name: str, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not ID_RE.match(value):
        raise RoutingError(f"field {field_name!r}: expected an id of 1-256 letters, digits or ._@:+-/#, got {value!r}")
    return value


def check_query(q: Any, field_name: str = "query_text") -> str:
    if not isinstance(q, str) or not q.strip():
        raise RoutingError(f"field {field_name!r}: expected a non-empty string")
    if len(q) > MAX_QUERY_CHARS:
        raise RoutingError(f"field {field_name!r}: longer than {MAX_QUERY_CHARS} characters")
    return q


def check_task(value: Any, field_name: str = "task") -> str | None:
    """The kind of work a caller names for a query (``"coding"``, ``"writing"``): a short label, compared
    exactly after surrounding spaces are stripped; None when not given."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RoutingError(f"field {field_name!r}: expected a non-empty string naming the kind of task "
                           f"(e.g. 'coding'), got {value!r}", field=field_name)
    v = value.strip()
    if len(v) > MAX_TASK_CHARS or not v.isprintable():
        raise RoutingError(f"field {field_name!r}: expected at most {MAX_TASK_CHARS} printable characters, "
                           f"got {value[:80]!r}", field=field_name)
    return v


def check_turn(turn: Any) -> int | None:
    if turn is not None and (isinstance(turn, bool) or not isinstance(turn, int) or turn < 1):
        raise RoutingError(f"field 'turn': expected an integer >= 1, got {turn!r}")
    return turn


def _nonneg(value: Any, field_name: str, unit: str = "") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)) \
            or float(value) < 0:
        raise RoutingError(f"field {field_name!r}: expected a finite number >= 0{unit}, got {value!r}")
    return float(value)


def check_cost(value: Any, field_name: str = "cost") -> float | None:
    """An LLM's price in USD per 1M tokens (None: unknown)."""
    return _nonneg(value, field_name, " (USD per 1M tokens)")


def check_cost_weight(value: Any, field_name: str = "cost_weight") -> float | None:
    return _nonneg(value, field_name)


@dataclass(frozen=True)
class Checks:
    """What validation needs to know about the router: the LLMs one may name
    (``known``: routable now; ``indexed``: also removed ones, for feedback on
    past answers), the default candidates and the rating scale."""

    known: Callable[[str], bool]
    indexed: Callable[[str], bool]
    default_candidates: Callable[[], list[str]]
    describe: Callable[[], list[str]]
    rating_scale: tuple[float, float]
    history_turns: int = 8

    def rating(self, rating: Any) -> float:
        lo, hi = self.rating_scale
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(float(rating)):
            raise RoutingError(f"field 'rating': expected a finite number in [{lo}, {hi}], got {rating!r}")
        if not lo <= float(rating) <= hi:
            raise RoutingError(f"field 'rating': {rating} is outside the rating scale [{lo}, {hi}]")
        return float(rating)

    def model(self, model: Any, field_name: str = "model") -> str:
        if not isinstance(model, str) or not self.indexed(model):
            raise RoutingError(f"field {field_name!r}: unknown LLM {model!r}; known: {self.describe()}")
        return model

    def candidates(self, cands: Any) -> tuple[str, ...]:
        if cands is None:
            return tuple(self.default_candidates())
        if not isinstance(cands, (list, tuple)) or not cands:
            raise RoutingError("field 'candidates': expected a non-empty list of LLM names")
        bad = [c for c in cands if not isinstance(c, str) or not self.known(c)]
        if bad:
            raise RoutingError(f"field 'candidates': unknown LLM(s) {bad}; known: {self.describe()}")
        return tuple(dict.fromkeys(cands))


# ---------------------------------------------------------------- requests
@dataclass(frozen=True)
class RouteRequest:
    """One query to route."""

    query_text: str
    user_id: str
    candidates: tuple[str, ...]
    session_id: str | None = None
    turn: int | None = None
    #: rated earlier turns of the conversation: (query, model, raw rating)
    context: tuple[tuple[str, str, float], ...] = ()
    cost_weight: float | None = None  # None: the router's default
    max_cost: float | None = None  # None: no hard limit
    task: str | None = None  # the kind of work the caller names (None: not named)

    @classmethod
    def parse(cls, raw: Any, checks: Checks, index: int | None = None) -> "RouteRequest":
        if isinstance(raw, RouteRequest):
            return raw
        if not isinstance(raw, dict):
            where = f"query {index}: " if index is not None else ""
            raise RoutingError(f"{where}expected a dict with query_text and user_id")
        return cls(query_text=check_query(raw.get("query_text")),
                   user_id=check_id(raw.get("user_id"), "user_id"),  # type: ignore[arg-type]
                   session_id=check_id(raw.get("session_id"), "session_id", required=False),
                   candidates=checks.candidates(raw.get("candidates")),
                   turn=check_turn(raw.get("turn")),
                   context=_parse_history(raw.get("conversation_history"), checks),
                   cost_weight=check_cost_weight(raw.get("cost_weight")),
                   max_cost=check_cost(raw.get("max_cost"), "max_cost"),
                   task=check_task(raw.get("task")))


def _parse_history(hist: Any, checks: Checks) -> tuple[tuple[str, str, float], ...]:
    """``conversation_history`` entries that carry a model and a rating are
    multi-turn context (rated earlier turns); others are ignored."""
    if hist is None:
        return ()
    if not isinstance(hist, list):
        raise RoutingError("field 'conversation_history': expected a list")
    out = []
    for i, h in enumerate(hist):
        if isinstance(h, str):
            continue
        if not isinstance(h, dict):
            raise RoutingError(f"field 'conversation_history[{i}]': expected a string or an object")
        if h.get("model") is None or h.get("rating") is None:
            continue
        q = check_query(h.get("query"), f"conversation_history[{i}].query")
        if not isinstance(h["model"], str) or not checks.indexed(h["model"]):
            raise RoutingError(f"field 'conversation_history[{i}].model': unknown LLM {h['model']!r}")
        out.append((q, h["model"], checks.rating(h["rating"])))
    return tuple(out[-checks.history_turns:])


@dataclass(frozen=True)
class RatingRequest:
    """One rating of one LLM's answer."""

    user_id: str
    query: str
    model: str
    rating: float
    session_id: str | None = None
    turn: int | None = None
    task: str | None = None

    @classmethod
    def parse(cls, checks: Checks, user_id: Any, query: Any, model: Any, rating: Any, session_id: Any = None,
              turn: Any = None, task: Any = None) -> "RatingRequest":
        return cls(user_id=check_id(user_id, "user_id"), query=check_query(query, "query"),  # type: ignore[arg-type]
                   session_id=check_id(session_id, "session_id", required=False), model=checks.model(model),
                   rating=checks.rating(rating), turn=check_turn(turn), task=check_task(task))


@dataclass(frozen=True)
class PreferenceRequest:
    """For this query the user preferred ``preferred`` over ``rejected``."""

    user_id: str
    query: str
    preferred: str
    rejected: str
    session_id: str | None = None
    turn: int | None = None
    task: str | None = None

    @classmethod
    def parse(cls, checks: Checks, user_id: Any, query: Any, preferred: Any, rejected: Any, session_id: Any = None,
              turn: Any = None, task: Any = None) -> "PreferenceRequest":
        out = cls(user_id=check_id(user_id, "user_id"), query=check_query(query, "query"),  # type: ignore[arg-type]
                  session_id=check_id(session_id, "session_id", required=False),
                  preferred=checks.model(preferred, "preferred"), rejected=checks.model(rejected, "rejected"),
                  turn=check_turn(turn), task=check_task(task))
        if out.preferred == out.rejected:
            raise RoutingError("field 'rejected': must differ from 'preferred'")
        return out


@dataclass(frozen=True)
class LLMSpec:
    """One LLM of the pool as a user gives it (``add_llm``, ``router.llms`` in the config)."""

    name: str
    description: str | None = None
    cost: float | None = None  # USD per 1M tokens
    endpoint: str | None = None

    @classmethod
    def parse(cls, name: Any, description: Any = None, cost: Any = None, endpoint: Any = None, *,
              need_description: bool = True, where: str = "") -> "LLMSpec":
        p = f"{where}." if where else ""
        if not isinstance(name, str) or not ID_RE.match(name):
            raise RoutingError(f"field '{p}name': expected an LLM name of 1-256 letters, digits or ._@:+-/#, "
                               f"got {name!r}", field="name")
        if description is not None or need_description:
            if not isinstance(description, str) or not description.strip():
                raise RoutingError(f"field '{p}description': LLM {name!r} needs a non-empty description (its "
                                   f"node features are the description's embedding)", field="description")
            if len(description) > MAX_DESCRIPTION_CHARS:
                raise RoutingError(f"field '{p}description': longer than {MAX_DESCRIPTION_CHARS} characters",
                                   field="description")
            description = description.strip()
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.strip()):
            raise RoutingError(f"field '{p}endpoint': expected a non-empty string (a base URL), got {endpoint!r}",
                               field="endpoint")
        return cls(name=name, description=description, cost=check_cost(cost, f"{p}cost"), endpoint=endpoint)


def names(items: Sequence[Any]) -> list[str]:
    return [getattr(i, "name", i) for i in items]
