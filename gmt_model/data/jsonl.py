"""GMTRouter JSONL: streaming reader, validator and atomic writer.

The format (``../shared/design/gmtrouter.md`` section 1) is one JSON object
per line, a *record*: one model's conversation for one
``(question_id, turn, judge)``.  Consecutive records sharing that key form a
*group* of K >= 2 records (the models that answered the same question for the
same user).  As in the reference reader, only consecutiveness makes a group:
a key that comes back later in the file, after other keys, starts a new,
separate group (one judge comparing several model pairs on the same
question, as in the MT-Bench human votes); :class:`FileSummary` counts such
groups as ``n_repeated_keys``.  Every rule the reader checks raises :class:`FormatError`, which
names the file, the 1-based line, the field and what was expected.

Field names come from :mod:`gmt_model.method.schema`.  In error messages a turn of a
conversation is addressed by its 0-based list index, JSON-path style:
``conversation[1].rating`` is the rating of the second turn.

Reading is streaming: :func:`iter_records` holds one record and
:func:`iter_groups` one group at a time (plus the set of group keys already
seen, to count the keys that reappear).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gmt_model.atomic import atomic_file
from gmt_model.method.schema import (
    F_CONVERSATION,
    F_ENCODER,
    F_JUDGE,
    F_MODEL,
    F_MODEL_EMB,
    F_QUERY,
    F_QUERY_EMB,
    F_QUESTION_ID,
    F_RATING,
    F_RESPONSE,
    F_TURN,
)

__all__ = [
    "GROUP_KEY_FIELD",
    "FormatError",
    "Turn",
    "Record",
    "Group",
    "FileSummary",
    "iter_records",
    "iter_groups",
    "read_groups",
    "validate_file",
    "record_to_dict",
    "write_jsonl",
]

#: The "field" named by errors about group structure (size).
GROUP_KEY_FIELD = f"({F_QUESTION_ID}, {F_TURN}, {F_JUDGE})"

_MISSING: Any = object()
_JSON_NUMBER_TYPES = frozenset({int, float})


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------
class FormatError(ValueError):
    """A GMTRouter JSONL file (or a record to write) breaks the format.

    Attributes: ``path`` (str), ``line`` (1-based, or None for whole-file
    problems), ``field`` (e.g. ``conversation[0].rating``, or None) and
    ``expected`` (what was expected and what was found).
    """

    def __init__(self, path: str | os.PathLike[str], line: int | None, field: str | None, expected: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.expected = expected
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.field is None:
            return f"{where}: {self.expected}"
        return f"{where}: field '{self.field}': {self.expected}"

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.line, self.field, self.expected))


# --------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------
def _arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


@dataclass(frozen=True, slots=True, eq=False)
class Turn:
    """One step of a conversation.

    ``query_emb`` is a float32 vector of the file's width; ``rating`` is the
    raw rating as written in the file (not normalised).
    """

    query: str
    query_emb: np.ndarray
    response: str | None
    rating: float

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Turn):
            return NotImplemented
        return (
            self.query == other.query
            and self.response == other.response
            and self.rating == other.rating
            and _arrays_equal(self.query_emb, other.query_emb)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True, eq=False)
class Record:
    """One JSONL line: one model's conversation for one (question, turn, judge).

    ``line`` is the 1-based line of the record in its file; it is provenance
    and not part of equality (two records are equal when their content is).
    """

    line: int
    judge: str
    model: str
    question_id: str
    turn: int
    conversation: tuple[Turn, ...]
    model_emb: np.ndarray
    encoder: str | None = None

    @property
    def key(self) -> tuple[str, int, str]:
        """The group key ``(question_id, turn, judge)``."""
        return (self.question_id, self.turn, self.judge)

    @property
    def dim(self) -> int:
        """Embedding width of this record."""
        return int(self.model_emb.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (
            self.judge == other.judge
            and self.model == other.model
            and self.question_id == other.question_id
            and self.turn == other.turn
            and self.encoder == other.encoder
            and self.conversation == other.conversation
            and _arrays_equal(self.model_emb, other.model_emb)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(slots=True)
class Group:
    """K >= ``min_group_size`` consecutive records sharing (question_id, turn, judge).

    ``repeat`` counts the earlier groups of the same file with the same key
    (0 for the first): a key that comes back after other keys is a separate
    comparison, never merged with the earlier group.
    """

    question_id: str
    turn: int
    judge: str
    records: list[Record]
    repeat: int = 0

    @property
    def first_line(self) -> int:
        """1-based line of the group's first record."""
        return self.records[0].line

    @property
    def key(self) -> tuple[str, int, str]:
        """The group key ``(question_id, turn, judge)``."""
        return (self.question_id, self.turn, self.judge)

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class FileSummary:
    """What :func:`validate_file` counted in a valid file."""

    path: str
    n_records: int
    n_groups: int
    n_interactions: int  # sum of conversation lengths
    dim: int
    encoder: str | None
    rating_min: float
    rating_max: float
    judges: list[str]
    models: list[str]
    max_conversation_len: int
    n_pairs: int = 0  # comparison pairs: per group and step, K choose 2 (ties included)
    n_repeated_keys: int = 0  # groups whose (question_id, turn, judge) already formed an earlier group

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON-able dict of the summary."""
        return asdict(self)


# --------------------------------------------------------------------------
# Per-record validation
# --------------------------------------------------------------------------
class _FileState:
    """What one file must keep consistent: embedding width and encoder."""

    __slots__ = ("path", "dim", "dim_line", "dim_field", "encoder", "encoder_line")

    def __init__(self, path: str) -> None:
        self.path = path
        self.dim: int | None = None
        self.dim_line = 0
        self.dim_field = ""
        self.encoder: str | None = None
        self.encoder_line = 0

    def check_width(self, width: int, line: int, field: str) -> None:
        if self.dim is None:
            self.dim, self.dim_line, self.dim_field = width, line, field
        elif width != self.dim:
            raise FormatError(
                self.path, line, field,
                f"expected embedding width {self.dim} (the file's width, set at line {self.dim_line} "
                f"by '{self.dim_field}'), got width {width}",
            )

    def check_encoder(self, encoder: str | None, line: int) -> None:
        if encoder is None:
            return
        if self.encoder is None:
            self.encoder, self.encoder_line = encoder, line
        elif encoder != self.encoder:
            raise FormatError(
                self.path, line, F_ENCODER,
                f"expected one encoder per file: {self.encoder!r} (line {self.encoder_line}), got {encoder!r}",
            )


def _short(text: str, limit: int = 40) -> str:
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def _describe(value: Any) -> str:
    """JSON-flavoured description of a value for error messages."""
    if value is _MISSING:
        return "nothing (the field is missing)"
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return f"boolean {str(bool(value)).lower()}"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"array of length {len(value)}"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _overflows_float(value: Any) -> bool:
    try:
        float(value)
    except OverflowError:
        return True
    return False


def _id_value(value: Any, path: str, line: int, field: str) -> str:
    """judge / question_id: a non-empty string or an integer, stored as str."""
    if isinstance(value, str):
        if value:
            return value
    elif _is_int(value):
        return str(int(value))
    raise FormatError(path, line, field, f"expected a non-empty string or an integer, got {_describe(value)}")


def _str_value(value: Any, path: str, line: int, field: str, *, nonempty: bool) -> str:
    if isinstance(value, str) and (value or not nonempty):
        return value
    kind = "a non-empty string" if nonempty else "a string"
    raise FormatError(path, line, field, f"expected {kind}, got {_describe(value)}")


def _turn_value(value: Any, path: str, line: int) -> int:
    if _is_int(value) and value >= 1:
        return int(value)
    raise FormatError(path, line, F_TURN, f"expected an integer >= 1, got {_describe(value)}")


def _rating_value(
    value: Any, path: str, line: int, field: str, scale: tuple[float, float] | None
) -> float:
    if not _is_number(value):
        raise FormatError(path, line, field, f"expected a finite number, got {_describe(value)}")
    try:
        rating = float(value)
    except OverflowError:
        rating = math.inf
    if not math.isfinite(rating):
        raise FormatError(path, line, field, f"expected a finite number, got {rating!r}")
    if scale is not None and not (scale[0] <= rating <= scale[1]):
        raise FormatError(
            path, line, field, f"expected a rating inside the scale [{scale[0]}, {scale[1]}], got {rating!r}"
        )
    return rating


def _embedding(value: Any, path: str, line: int, field: str, state: _FileState, *, readonly: bool) -> np.ndarray:
    """A non-empty 1-D vector of finite numbers -> float32 array of the file's width.

    Accepts a JSON list (reader) or an array/list (writer).  The caller runs
    this under ``np.errstate(over="ignore")``: a number beyond float32's
    range becomes inf and is reported as not finite.
    """
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.size == 0 or value.dtype.kind not in "fiu":
            raise FormatError(path, line, field, f"expected a non-empty 1-D array of numbers, got {_describe(value)}")
        arr = value.astype(np.float32, copy=False)
        original: Any = value
    else:
        if not isinstance(value, (list, tuple)) or not value:
            raise FormatError(path, line, field, f"expected a non-empty list of numbers, got {_describe(value)}")
        if not set(map(type, value)) <= _JSON_NUMBER_TYPES:
            bad = next(i for i, v in enumerate(value) if type(v) not in _JSON_NUMBER_TYPES)
            if not _is_number(value[bad]):
                raise FormatError(
                    path, line, field, f"expected a list of numbers, element {bad} is {_describe(value[bad])}"
                )
        try:
            arr = np.asarray(value, dtype=np.float32)
        except OverflowError:  # an integer beyond float64's range
            bad = next(i for i, v in enumerate(value) if _overflows_float(v))
            raise FormatError(
                path, line, field, f"expected finite numbers, element {bad} is too large for float32"
            ) from None
        if arr.ndim != 1:
            raise FormatError(path, line, field, f"expected a flat list of numbers, got shape {arr.shape}")
        if readonly:
            arr.flags.writeable = False
        original = value
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise FormatError(
            path, line, field,
            f"expected finite numbers, element {bad} is {original[bad]!r}"
            + ("" if not math.isfinite(float(original[bad])) else " (beyond float32's range)"),
        )
    state.check_width(int(arr.shape[0]), line, field)
    return arr


def _parse_turn(
    obj: Any, index: int, path: str, line: int, state: _FileState, scale: tuple[float, float] | None
) -> Turn:
    prefix = f"{F_CONVERSATION}[{index}]"
    if not isinstance(obj, dict):
        raise FormatError(path, line, prefix, f"expected an object, got {_describe(obj)}")
    query = _str_value(obj.get(F_QUERY, _MISSING), path, line, f"{prefix}.{F_QUERY}", nonempty=False)
    emb = _embedding(obj.get(F_QUERY_EMB, _MISSING), path, line, f"{prefix}.{F_QUERY_EMB}", state, readonly=True)
    response = obj.get(F_RESPONSE)
    if response is not None and not isinstance(response, str):
        raise FormatError(path, line, f"{prefix}.{F_RESPONSE}", f"expected a string or null, got {_describe(response)}")
    rating = _rating_value(obj.get(F_RATING, _MISSING), path, line, f"{prefix}.{F_RATING}", scale)
    return Turn(query=query, query_emb=emb, response=response, rating=rating)


def _parse_record(
    obj: Any, path: str, line: int, state: _FileState, scale: tuple[float, float] | None
) -> Record:
    """One decoded JSON line -> Record (all per-record and per-file rules)."""
    if not isinstance(obj, dict):
        raise FormatError(path, line, None, f"expected a JSON object per line, got {_describe(obj)}")
    judge = _id_value(obj.get(F_JUDGE, _MISSING), path, line, F_JUDGE)
    model = _str_value(obj.get(F_MODEL, _MISSING), path, line, F_MODEL, nonempty=True)
    question_id = _id_value(obj.get(F_QUESTION_ID, _MISSING), path, line, F_QUESTION_ID)
    turn = _turn_value(obj.get(F_TURN, _MISSING), path, line)
    conv = obj.get(F_CONVERSATION, _MISSING)
    if not isinstance(conv, list) or not conv:
        raise FormatError(path, line, F_CONVERSATION, f"expected a non-empty list of turns, got {_describe(conv)}")
    turns = tuple(_parse_turn(t, i, path, line, state, scale) for i, t in enumerate(conv))
    model_emb = _embedding(obj.get(F_MODEL_EMB, _MISSING), path, line, F_MODEL_EMB, state, readonly=True)
    encoder = obj.get(F_ENCODER)
    if encoder is not None:
        encoder = _str_value(encoder, path, line, F_ENCODER, nonempty=True)
        state.check_encoder(encoder, line)
    return Record(
        line=line, judge=judge, model=model, question_id=question_id, turn=turn,
        conversation=turns, model_emb=model_emb, encoder=encoder,
    )


def _check_record_instance(rec: Record, path: str, line: int, state: _FileState) -> Record:
    """Validate a Record given to the writer; return it with float32 arrays."""
    _str_value(rec.judge, path, line, F_JUDGE, nonempty=True)
    _str_value(rec.model, path, line, F_MODEL, nonempty=True)
    _str_value(rec.question_id, path, line, F_QUESTION_ID, nonempty=True)
    turn = _turn_value(rec.turn, path, line)
    conv = rec.conversation
    if not isinstance(conv, (tuple, list)) or not conv:
        raise FormatError(path, line, F_CONVERSATION, f"expected a non-empty sequence of Turn, got {_describe(conv)}")
    turns = []
    for i, t in enumerate(conv):
        prefix = f"{F_CONVERSATION}[{i}]"
        if not isinstance(t, Turn):
            raise FormatError(path, line, prefix, f"expected a Turn, got {_describe(t)}")
        _str_value(t.query, path, line, f"{prefix}.{F_QUERY}", nonempty=False)
        emb = _embedding(t.query_emb, path, line, f"{prefix}.{F_QUERY_EMB}", state, readonly=False)
        if t.response is not None and not isinstance(t.response, str):
            raise FormatError(
                path, line, f"{prefix}.{F_RESPONSE}", f"expected a string or None, got {_describe(t.response)}"
            )
        rating = _rating_value(t.rating, path, line, f"{prefix}.{F_RATING}", None)
        turns.append(t if (emb is t.query_emb and rating == t.rating and type(t.rating) is float)
                     else Turn(t.query, emb, t.response, rating))
    model_emb = _embedding(rec.model_emb, path, line, F_MODEL_EMB, state, readonly=False)
    if rec.encoder is not None:
        _str_value(rec.encoder, path, line, F_ENCODER, nonempty=True)
        state.check_encoder(rec.encoder, line)
    return Record(rec.line, rec.judge, rec.model, rec.question_id, turn, tuple(turns), model_emb, rec.encoder)


def _check_scale(rating_scale: tuple[float, float] | None) -> tuple[float, float] | None:
    if rating_scale is None:
        return None
    lo, hi = (float(v) for v in rating_scale)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"rating_scale must be two finite numbers (low, high) with low < high, got {rating_scale!r}")
    return (lo, hi)


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------
def _truncation_hint(raw: bytes) -> str:
    if raw.endswith(b"\n"):
        return ""
    return "; the file looks truncated (its last line has no trailing newline)"


def iter_records(
    path: str | os.PathLike[str], *, rating_scale: tuple[float, float] | None = None
) -> Iterator[Record]:
    """Stream the records of a GMTRouter JSONL file, one at a time.

    Checks every per-record rule (fields, types, finite numbers, one
    embedding width and one encoder per file, ratings inside
    ``rating_scale`` when given) but not the group rules; use
    :func:`iter_groups` for those.  Blank lines are skipped.  Raises
    :class:`FormatError` at the first problem, and for a file without records.
    """
    scale = _check_scale(rating_scale)
    path_s = os.fspath(path)
    state = _FileState(path_s)
    count = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FormatError(
                    path_s, lineno, None,
                    f"expected UTF-8 text, byte {exc.start} is not ({exc.reason}){_truncation_hint(raw)}",
                ) from exc
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FormatError(
                    path_s, lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno}){_truncation_hint(raw)}"
                ) from exc
            with np.errstate(over="ignore", invalid="ignore"):
                record = _parse_record(obj, path_s, lineno, state, scale)
            count += 1
            yield record
    if count == 0:
        raise FormatError(path_s, None, None, "no records (the file is empty or holds only blank lines)")


def _key_text(key: tuple[str, int, str]) -> str:
    return f"{F_QUESTION_ID}={key[0]!r}, {F_TURN}={key[1]}, {F_JUDGE}={key[2]!r}"


def _check_member(group: Group, rec: Record, models: set[str], path: str, check_query_emb: bool) -> None:
    first = group.records[0]
    if rec.model in models:
        raise FormatError(
            path, rec.line, F_MODEL,
            f"expected distinct models in a group; model {rec.model!r} already appears in the group "
            f"starting at line {first.line} ({_key_text(group.key)})",
        )
    if len(rec.conversation) != len(first.conversation):
        raise FormatError(
            path, rec.line, F_CONVERSATION,
            f"expected a conversation of {len(first.conversation)} turns like the first record of its group "
            f"(line {first.line}), got {len(rec.conversation)} turns",
        )
    for t, (mine, ref) in enumerate(zip(rec.conversation, first.conversation)):
        if mine.query != ref.query:
            raise FormatError(
                path, rec.line, f"{F_CONVERSATION}[{t}].{F_QUERY}",
                f"expected the same query text as the first record of its group (line {first.line}): "
                f"{_short(ref.query)}, got {_short(mine.query)}",
            )
        if check_query_emb and not np.array_equal(mine.query_emb, ref.query_emb):
            raise FormatError(
                path, rec.line, f"{F_CONVERSATION}[{t}].{F_QUERY_EMB}",
                f"expected the same query embedding as the first record of its group (line {first.line})",
            )


def _check_size(group: Group, min_group_size: int, path: str) -> None:
    if len(group.records) < min_group_size:
        raise FormatError(
            path, group.first_line, GROUP_KEY_FIELD,
            f"expected a group of at least {min_group_size} consecutive records sharing "
            f"({_key_text(group.key)}), got {len(group.records)}",
        )


def iter_groups(
    path: str | os.PathLike[str],
    *,
    rating_scale: tuple[float, float] | None = None,
    min_group_size: int = 2,
    check_query_emb: bool = False,
) -> Iterator[Group]:
    """Stream the groups of a GMTRouter JSONL file, one at a time.

    A group is a run of consecutive records with the same
    ``(question_id, turn, judge)``.  Besides the per-record rules of
    :func:`iter_records`, checks that each group has at least
    ``min_group_size`` records, distinct models, equal conversation lengths
    and the same query text at every turn (and the same query embedding when
    ``check_query_emb``).  A key may come back later in the file, after
    other keys: as in the reference reader, that run is a separate group
    (its ``repeat`` says how many groups with that key came before).  A
    group is yielded once it is complete and valid; an error further on
    raises :class:`FormatError` when iteration reaches it.
    """
    if not _is_int(min_group_size) or min_group_size < 1:
        raise ValueError(f"min_group_size must be an integer >= 1, got {min_group_size!r}")
    path_s = os.fspath(path)
    seen: dict[tuple[str, int, str], int] = {}  # key -> groups with that key so far
    group: Group | None = None
    models: set[str] = set()
    for rec in iter_records(path, rating_scale=rating_scale):
        key = rec.key
        if group is not None:
            if key == group.key:
                _check_member(group, rec, models, path_s, check_query_emb)
                group.records.append(rec)
                models.add(rec.model)
                continue
            _check_size(group, min_group_size, path_s)
            done, group = group, None
            yield done
        repeat = seen.get(key, 0)
        seen[key] = repeat + 1
        group = Group(question_id=rec.question_id, turn=rec.turn, judge=rec.judge, records=[rec], repeat=repeat)
        models = {rec.model}
    if group is not None:
        _check_size(group, min_group_size, path_s)
        yield group


def read_groups(path: str | os.PathLike[str], **kw: Any) -> list[Group]:
    """All groups of a file as a list (see :func:`iter_groups` for the keywords)."""
    return list(iter_groups(path, **kw))


def validate_file(
    path: str | os.PathLike[str],
    *,
    rating_scale: tuple[float, float] | None = None,
    min_group_size: int = 2,
    check_query_emb: bool = False,
) -> FileSummary:
    """Check a whole file (every rule of :func:`iter_groups`) and summarise it.

    Streams; keeps only counters, the sets of judges and models and the set
    of group keys.  ``n_repeated_keys`` counts the groups whose key already
    formed an earlier group (accepted: a separate comparison).
    """
    n_records = n_groups = n_interactions = n_pairs = max_len = n_repeated = 0
    dim = 0
    encoder: str | None = None
    rmin, rmax = math.inf, -math.inf
    judges: set[str] = set()
    models: set[str] = set()
    for group in iter_groups(
        path, rating_scale=rating_scale, min_group_size=min_group_size, check_query_emb=check_query_emb
    ):
        n_groups += 1
        n_repeated += group.repeat > 0
        k = len(group.records)
        steps = len(group.records[0].conversation)
        n_pairs += steps * k * (k - 1) // 2
        judges.add(group.judge)
        for rec in group.records:
            n_records += 1
            n_interactions += len(rec.conversation)
            max_len = max(max_len, len(rec.conversation))
            models.add(rec.model)
            dim = rec.dim
            if encoder is None:
                encoder = rec.encoder
            for t in rec.conversation:
                rmin = min(rmin, t.rating)
                rmax = max(rmax, t.rating)
    return FileSummary(
        path=os.fspath(path), n_records=n_records, n_groups=n_groups, n_interactions=n_interactions,
        dim=dim, encoder=encoder, rating_min=rmin, rating_max=rmax, judges=sorted(judges),
        models=sorted(models), max_conversation_len=max_len, n_pairs=n_pairs, n_repeated_keys=n_repeated,
    )


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------
def _compact_floats(arr: np.ndarray) -> list[float]:
    """float32 vector -> Python floats whose repr is the shortest that round-trips."""
    return [float(s) for s in map(str, arr.astype(np.float32, copy=False))]


def record_to_dict(rec: Record) -> dict[str, Any]:
    """A Record as a JSON-able dict in the GMTRouter format.

    Embedding values are Python floats holding the shortest decimal that
    reads back as the same float32; ``encoder`` is left out when None.
    """
    with np.printoptions(legacy=False):
        out: dict[str, Any] = {
            F_JUDGE: rec.judge,
            F_MODEL: rec.model,
            F_QUESTION_ID: rec.question_id,
            F_TURN: int(rec.turn),
            F_CONVERSATION: [
                {
                    F_QUERY: t.query,
                    F_QUERY_EMB: _compact_floats(t.query_emb),
                    F_RESPONSE: t.response,
                    F_RATING: float(t.rating),
                }
                for t in rec.conversation
            ],
            F_MODEL_EMB: _compact_floats(rec.model_emb),
        }
    if rec.encoder is not None:
        out[F_ENCODER] = rec.encoder
    return out


def _k(name: str) -> str:
    return json.dumps(name) + ":"


_KJ, _KM, _KQID, _KT, _KC = _k(F_JUDGE), _k(F_MODEL), _k(F_QUESTION_ID), _k(F_TURN), _k(F_CONVERSATION)
_KQ, _KQE, _KR, _KRA = _k(F_QUERY), _k(F_QUERY_EMB), _k(F_RESPONSE), _k(F_RATING)
_KME, _KENC = _k(F_MODEL_EMB), _k(F_ENCODER)


def _emb_json(arr: np.ndarray) -> str:
    # str(np.float32) is the shortest decimal that reads back as the same float32
    return "[" + ",".join(map(str, arr)) + "]"


def _record_json(rec: Record) -> str:
    """One validated Record -> one compact JSON line (no newline)."""
    dumps = json.dumps
    turns = ",".join(
        "{" + _KQ + dumps(t.query) + "," + _KQE + _emb_json(t.query_emb) + ","
        + _KR + dumps(t.response) + "," + _KRA + repr(float(t.rating)) + "}"
        for t in rec.conversation
    )
    parts = [
        "{", _KJ, dumps(rec.judge), ",", _KM, dumps(rec.model), ",", _KQID, dumps(rec.question_id), ",",
        _KT, str(int(rec.turn)), ",", _KC, "[", turns, "],", _KME, _emb_json(rec.model_emb),
    ]
    if rec.encoder is not None:
        parts += [",", _KENC, dumps(rec.encoder)]
    parts.append("}")
    return "".join(parts)


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Record | dict[str, Any]]) -> int:
    """Write records (Record objects or format dicts) as GMTRouter JSONL, atomically.

    Every record is validated as it is written (field types, finite numbers,
    one embedding width and one encoder across the file); a bad record
    raises :class:`FormatError` naming ``path`` and the line it would have
    had.  Group rules are not checked here (run :func:`validate_file` on the
    result for that).  The file is written to a temporary file in the same
    directory and moved into place with ``os.replace``: on any error the
    previous file, if any, is untouched and no temporary file remains.
    Parent directories are created.  Returns the number of lines written.
    """
    path_s = os.fspath(path)
    state = _FileState(path_s)
    count = 0
    with atomic_file(path, "w", newline="\n") as fh, np.printoptions(legacy=False):
        for item in records:
            line = count + 1
            with np.errstate(over="ignore", invalid="ignore"):
                if isinstance(item, Record):
                    rec = _check_record_instance(item, path_s, line, state)
                else:
                    rec = _parse_record(item, path_s, line, state, None)
            fh.write(_record_json(rec))
            fh.write("\n")
            count = line
    return count
