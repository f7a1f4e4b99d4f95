"""Raw preference data -> GMTRouter records (un-embedded dicts).

A *record* here is one model's conversation for one comparison, as a dict
with the schema's fields ``judge``, ``model``, ``question_id``, ``turn`` and
``conversation = [{query, response, rating}, ...]``; embeddings are added
later (``gmt_model.data.demo.embed_records``).  Every comparison becomes one
*group* of two consecutive records, one per compared model.

Sources:

* MT-Bench, split form (``convert_mt_bench_split`` / ``convert_mt_bench_dir``):
  a judgments file (``human_judgments.jsonl``: ``judge, model_a, model_b,
  question_id, turn, winner``), ``question.jsonl`` and ``model_answer/*.jsonl``.
* MT-Bench, Hugging Face form (``convert_mt_bench_hf``): rows holding the
  same fields plus ``conversation_a`` / ``conversation_b`` (user / assistant
  messages of both turns); ``.jsonl``, ``.json`` or ``.parquet``.
* Chatbot Arena conversations (``convert_chatbot_arena``): rows with
  ``judge, model_a, model_b, winner, conversation_a, conversation_b, turn,
  question_id``; one vote covers the whole conversation.

Mapping (ratings on a 0-1 scale): the judge is the user; the winner gets
1.0, the loser 0.0, a tie (also ``tie (bothbad)``) 0.5 for both.

MT-Bench multi-turn link: when a judge judged the same (question, model
pair) on consecutive turns (turn 1 and turn 2), those judgments become ONE
group whose ``turn`` is the last judged turn and whose records hold one
conversation step per judged turn (query, that model's answer, that turn's
rating).  Any other judgment is a single-step group (``turn`` = its turn,
query = that turn's question).  Chatbot Arena: one group per battle with one
step per conversation turn, every step carrying the battle's rating.

Comparisons are never merged when no human compared them: several
comparisons sharing ``(judge, question_id, turn)`` (e.g. different model
pairs) get distinct question ids (``"81"``, ``"81#2"``, ``"81#3"``, ...), so
grouping consecutive records by ``(question_id, turn, judge)`` cannot join
them (the output is sorted, so such comparisons are written next to each
other; the reader accepts a key that comes back after other keys as a
separate group, but two neighbouring runs of one key are one group).  Identical repeated judgments (also with the sides swapped) are
dropped; contradicting ones are reported in :class:`ConversionStats`, and
handled as ``on_conflict`` says.  Output order is deterministic: question,
turn, judge, model pair.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from gmt_model.method.schema import F_CONVERSATION, F_JUDGE, F_MODEL, F_QUERY, F_QUESTION_ID, F_RATING, F_RESPONSE, F_TURN

__all__ = [
    "RATING_WIN",
    "RATING_LOSS",
    "RATING_TIE",
    "WINNERS",
    "QID_SEPARATOR",
    "JUDGMENT_FILE_NAMES",
    "RAW_CONVERTERS",
    "ConversionError",
    "ConversionStats",
    "Converted",
    "convert_mt_bench_split",
    "convert_mt_bench_dir",
    "find_mt_bench_files",
    "convert_mt_bench_hf",
    "convert_chatbot_arena",
    "convert_raw",
    "iter_rows",
]

RATING_WIN = 1.0
RATING_LOSS = 0.0
RATING_TIE = 0.5
#: accepted ``winner`` values
WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
#: separator of the suffix that makes question ids of distinct comparisons distinct
QID_SEPARATOR = "#"
#: file names tried (in this order) for the MT-Bench judgments file
JUDGMENT_FILE_NAMES = ("human_judgments.jsonl", "human.jsonl", "human_judgments.json")

OnConflict = Literal["first", "drop", "error"]


class ConversionError(ValueError):
    """Raw input is malformed or inconsistent; names file, line and field."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, field: str | None, message: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}" if field is None else f"{where}: field '{field}': {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.line, self.field, self.message))


@dataclass
class ConversionStats:
    """What a conversion read, dropped and produced."""

    source: str = ""
    n_rows: int = 0  # judgments read
    n_judgments: int = 0  # judgments used (after duplicates and conflicts)
    n_duplicates_dropped: int = 0
    n_contradictions: int = 0
    n_contradictions_dropped: int = 0  # judgments dropped because they contradict another
    n_groups: int = 0
    n_records: int = 0
    n_multi_turn_groups: int = 0  # groups whose conversation has more than one step
    n_renamed_groups: int = 0  # groups whose question_id got a "#k" suffix
    n_empty_responses: int = 0  # conversation steps with an empty response
    judges: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)  # original question ids
    turns: dict[int, int] = field(default_factory=dict)  # judgments used per turn
    winners: dict[str, int] = field(default_factory=dict)  # judgments used per winner value
    judgments_per_judge: dict[str, int] = field(default_factory=dict)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    contradictions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = asdict(self)
        d["turns"] = {str(k): v for k, v in self.turns.items()}
        return d


class Converted(NamedTuple):
    """Records (consecutive groups of two) and the conversion statistics."""

    records: list[dict[str, Any]]
    stats: ConversionStats


# --------------------------------------------------------------------------
# reading rows
# --------------------------------------------------------------------------
def iter_rows(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row)`` for a ``.jsonl``, ``.json`` (array or lines) or ``.parquet`` file.

    ``line`` is 1-based (the line of a JSONL file, the row of a Parquet file
    or the element of a JSON array).  Blank lines are skipped.
    """
    p = Path(path)
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq  # only needed for this form

        try:
            table = pq.read_table(p)
        except (OSError, ValueError) as exc:
            raise ConversionError(p, None, None, f"cannot read Parquet file: {exc}") from exc
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
        return
    with open(p, encoding="utf-8") as fh:
        head = fh.read(4096).lstrip("\ufeff \t\r\n")
        fh.seek(0)
        if p.suffix == ".json" and head.startswith("["):
            try:
                items = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ConversionError(p, exc.lineno, None, f"invalid JSON ({exc.msg})") from exc
            for i, row in enumerate(items, start=1):
                if not isinstance(row, dict):
                    raise ConversionError(p, i, None, f"expected an object per array element, got {type(row).__name__}")
                yield i, row
            return
        for lineno, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConversionError(p, lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(row, dict):
                raise ConversionError(p, lineno, None, f"expected a JSON object per line, got {type(row).__name__}")
            yield lineno, row


def _get(row: dict[str, Any], key: str, path: str, line: int, kind: type | tuple[type, ...],
         what: str) -> Any:
    if key not in row or row[key] is None:
        raise ConversionError(path, line, key, f"missing (expected {what})")
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConversionError(path, line, key, f"expected {what}, got {type(value).__name__} {value!r:.60}")
    if isinstance(value, str) and not value:
        raise ConversionError(path, line, key, f"expected {what}, got an empty string")
    return value


# --------------------------------------------------------------------------
# judgments
# --------------------------------------------------------------------------
@dataclass
class _Judgment:
    judge: str
    question_id: str
    turn: int
    model_a: str
    model_b: str
    winner: str
    path: str
    line: int
    # per turn index (0-based) -> (query, response_a, response_b); HF form only
    texts: dict[int, tuple[str, str, str]] | None = None

    def score_of(self, model: str) -> float:
        if self.winner.startswith("tie"):
            return RATING_TIE
        won = self.model_a if self.winner == "model_a" else self.model_b
        return RATING_WIN if model == won else RATING_LOSS

    @property
    def pair(self) -> frozenset[str]:
        return frozenset((self.model_a, self.model_b))

    @property
    def outcome(self) -> tuple[str, float]:
        """Side-independent outcome: (tie kind or '', score of the smaller model name)."""
        first = min(self.model_a, self.model_b)
        return (self.winner if self.winner.startswith("tie") else "", self.score_of(first))


def _parse_judgment(row: dict[str, Any], path: str, line: int) -> _Judgment:
    judge = _get(row, "judge", path, line, str, "a non-empty string")
    qid = _get(row, "question_id", path, line, (int, str), "an integer or a non-empty string")
    turn = _get(row, "turn", path, line, int, "an integer >= 1")
    if turn < 1:
        raise ConversionError(path, line, "turn", f"expected an integer >= 1, got {turn}")
    a = _get(row, "model_a", path, line, str, "a model name")
    b = _get(row, "model_b", path, line, str, "a model name")
    if a == b:
        raise ConversionError(path, line, "model_b", f"expected a model other than model_a, got {b!r} twice")
    winner = _get(row, "winner", path, line, str, f"one of {WINNERS}")
    if winner not in WINNERS:
        raise ConversionError(path, line, "winner", f"expected one of {WINNERS}, got {winner!r}")
    if QID_SEPARATOR in str(qid):
        raise ConversionError(path, line, "question_id",
                              f"must not contain {QID_SEPARATOR!r} (reserved for distinct comparisons), got {qid!r}")
    return _Judgment(judge, str(qid), int(turn), a, b, winner, path, line)


def _dedupe(judgments: list[_Judgment], stats: ConversionStats, on_conflict: OnConflict) -> list[_Judgment]:
    """Drop repeated comparisons; handle contradicting ones per ``on_conflict``."""
    by_key: dict[tuple[str, str, int, frozenset[str]], list[_Judgment]] = {}
    for j in judgments:
        by_key.setdefault((j.judge, j.question_id, j.turn, j.pair), []).append(j)
    keep: list[_Judgment] = []
    dropped: set[int] = set()
    for (judge, qid, turn, pair), js in by_key.items():
        if len(js) == 1:
            continue
        first = js[0]
        same = [j for j in js[1:] if j.outcome == first.outcome]
        if len(same) == len(js) - 1:
            for j in same:
                dropped.add(id(j))
                stats.duplicates.append({"judge": judge, "question_id": qid, "turn": turn,
                                         "models": sorted(pair), "kept_line": first.line, "dropped_line": j.line})
            stats.n_duplicates_dropped += len(same)
            continue
        entry = {"judge": judge, "question_id": qid, "turn": turn, "models": sorted(pair),
                 "judgments": [{"line": j.line, "model_a": j.model_a, "model_b": j.model_b,
                                "winner": j.winner} for j in js]}
        stats.contradictions.append(entry)
        stats.n_contradictions += 1
        if on_conflict == "error":
            raise ConversionError(
                first.path, js[1].line, "winner",
                f"contradicts the judgment at line {first.line} of the same comparison "
                f"(judge {judge!r}, question {qid}, turn {turn}, models {sorted(pair)})")
        if on_conflict == "drop":
            for j in js:
                dropped.add(id(j))
            stats.n_contradictions_dropped += len(js)
        else:  # "first": keep the first judgment, drop the rest
            for j in js[1:]:
                dropped.add(id(j))
            stats.n_contradictions_dropped += len(js) - 1
    for j in judgments:
        if id(j) not in dropped:
            keep.append(j)
    return keep


# --------------------------------------------------------------------------
# comparisons -> records
# --------------------------------------------------------------------------
@dataclass
class _Comparison:
    judge: str
    question_id: str
    turn: int
    model_a: str
    model_b: str
    steps: list[tuple[str, str, str, float, float]]  # query, response_a, response_b, rating_a, rating_b
    first_line: int


def _qid_sort_key(qid: str) -> tuple[int, int, str]:
    return (0, int(qid), "") if re.fullmatch(r"-?\d+", qid) else (1, 0, qid)


def _emit(comparisons: list[_Comparison], stats: ConversionStats) -> list[dict[str, Any]]:
    """Sort comparisons, give colliding keys distinct question ids, build records."""
    comparisons.sort(key=lambda c: (_qid_sort_key(c.question_id), c.turn, c.judge,
                                    c.model_a, c.model_b, c.first_line))
    seen: Counter[tuple[str, int, str]] = Counter()
    records: list[dict[str, Any]] = []
    used: set[tuple[str, int, str]] = set()
    for c in comparisons:
        base = (c.question_id, c.turn, c.judge)
        seen[base] += 1
        qid = c.question_id if seen[base] == 1 else f"{c.question_id}{QID_SEPARATOR}{seen[base]}"
        if seen[base] > 1:
            stats.n_renamed_groups += 1
        key = (qid, c.turn, c.judge)
        if key in used:  # cannot happen: '#' is refused in input ids
            raise AssertionError(f"duplicate group key {key}")
        used.add(key)
        for side in (0, 1):
            model = c.model_a if side == 0 else c.model_b
            conv = [{F_QUERY: q, F_RESPONSE: (ra if side == 0 else rb), F_RATING: (sa if side == 0 else sb)}
                    for q, ra, rb, sa, sb in c.steps]
            stats.n_empty_responses += sum(1 for s in conv if s[F_RESPONSE] == "")
            records.append({F_JUDGE: c.judge, F_MODEL: model, F_QUESTION_ID: qid, F_TURN: c.turn,
                            F_CONVERSATION: conv})
        if len(c.steps) > 1:
            stats.n_multi_turn_groups += 1
    stats.n_groups = len(comparisons)
    stats.n_records = len(records)
    return records


TextLookup = Callable[[_Judgment, int], tuple[str, str, str]]


def _chain(judgments: list[_Judgment], texts: TextLookup) -> list[_Comparison]:
    """Join judgments of the same (judge, question, pair) on consecutive turns."""
    by_pair: dict[tuple[str, str, frozenset[str]], list[_Judgment]] = {}
    for j in judgments:
        by_pair.setdefault((j.judge, j.question_id, j.pair), []).append(j)
    out: list[_Comparison] = []
    for js in by_pair.values():
        js.sort(key=lambda j: (j.turn, j.line))
        runs: list[list[_Judgment]] = []
        for j in js:
            if runs and runs[-1][-1].turn == j.turn - 1:
                runs[-1].append(j)
            else:
                runs.append([j])
        for run in runs:
            last = run[-1]
            steps = []
            for j in run:
                query, ra, rb = texts(j, j.turn)
                if j.model_a != last.model_a:  # sides swapped relative to the group
                    ra, rb = rb, ra
                steps.append((query, ra, rb, j.score_of(last.model_a), j.score_of(last.model_b)))
            out.append(_Comparison(last.judge, last.question_id, last.turn, last.model_a, last.model_b,
                                   steps, min(j.line for j in run)))
    return out


def _finish_stats(stats: ConversionStats, judgments: list[_Judgment]) -> None:
    stats.n_judgments = len(judgments)
    stats.judges = sorted({j.judge for j in judgments})
    stats.models = sorted({m for j in judgments for m in (j.model_a, j.model_b)})
    stats.questions = sorted({j.question_id for j in judgments}, key=_qid_sort_key)
    stats.turns = dict(sorted(Counter(j.turn for j in judgments).items()))
    stats.winners = dict(sorted(Counter(j.winner for j in judgments).items()))
    stats.judgments_per_judge = dict(sorted(Counter(j.judge for j in judgments).items()))


def _read_judgments(paths: Sequence[Path], stats: ConversionStats,
                    extra: Callable[[_Judgment, dict[str, Any]], None] | None = None) -> list[_Judgment]:
    out: list[_Judgment] = []
    for p in paths:
        ps = os.fspath(p)
        for line, row in iter_rows(p):
            j = _parse_judgment(row, ps, line)
            if extra is not None:
                extra(j, row)
            out.append(j)
    stats.n_rows = len(out)
    if not out:
        raise ConversionError(", ".join(map(os.fspath, paths)), None, None, "no judgments (empty input)")
    return out


def _convert_judgments(judgments: list[_Judgment], texts: TextLookup, stats: ConversionStats,
                       on_conflict: OnConflict) -> Converted:
    _check_on_conflict(on_conflict)
    judgments = _dedupe(judgments, stats, on_conflict)
    _finish_stats(stats, judgments)
    records = _emit(_chain(judgments, texts), stats)
    return Converted(records, stats)


def _check_on_conflict(on_conflict: str) -> None:
    if on_conflict not in ("first", "drop", "error"):
        raise ValueError(f"on_conflict must be 'first', 'drop' or 'error', got {on_conflict!r}")


# --------------------------------------------------------------------------
# MT-Bench, split form
# --------------------------------------------------------------------------
def _load_questions(path: Path) -> dict[str, list[str]]:
    ps = os.fspath(path)
    out: dict[str, list[str]] = {}
    for line, row in iter_rows(path):
        qid = _get(row, "question_id", ps, line, (int, str), "an integer or a non-empty string")
        turns = _get(row, "turns", ps, line, list, "a list of question texts")
        for i, t in enumerate(turns):
            if not isinstance(t, str):
                raise ConversionError(ps, line, f"turns[{i}]", f"expected a string, got {type(t).__name__}")
        if str(qid) in out:
            raise ConversionError(ps, line, "question_id", f"question {qid} appears twice")
        out[str(qid)] = turns
    return out


def _load_answers(answers_dir: Path) -> dict[str, dict[str, tuple[list[str], str, int]]]:
    """model -> question id -> (answer turns, file, line)."""
    if not answers_dir.is_dir():
        raise ConversionError(answers_dir, None, None, "answers folder (model_answer/) does not exist")
    out: dict[str, dict[str, tuple[list[str], str, int]]] = {}
    for f in sorted(answers_dir.glob("*.jsonl")):
        fs = os.fspath(f)
        for line, row in iter_rows(f):
            model = row.get("model_id") or f.stem
            if not isinstance(model, str):
                raise ConversionError(fs, line, "model_id", f"expected a string, got {type(model).__name__}")
            qid = _get(row, "question_id", fs, line, (int, str), "an integer or a non-empty string")
            choices = _get(row, "choices", fs, line, list, "a non-empty list of choices")
            if not choices or not isinstance(choices[0], dict):
                raise ConversionError(fs, line, "choices[0]", "expected an object with 'turns'")
            turns = choices[0].get("turns")
            if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
                raise ConversionError(fs, line, "choices[0].turns", "expected a list of answer strings")
            per_model = out.setdefault(model, {})
            if str(qid) in per_model:
                raise ConversionError(fs, line, "question_id",
                                      f"model {model!r} answers question {qid} twice "
                                      f"(first at {per_model[str(qid)][1]}:{per_model[str(qid)][2]})")
            per_model[str(qid)] = (turns, fs, line)
    return out


def convert_mt_bench_split(
    judgments: str | os.PathLike[str],
    questions: str | os.PathLike[str],
    answers_dir: str | os.PathLike[str],
    *,
    on_conflict: OnConflict = "first",
) -> Converted:
    """Convert MT-Bench in its split form (judgments + questions + model answers).

    ``judgments`` is a JSONL/JSON/Parquet file of ``{judge, model_a, model_b,
    question_id, turn, winner}``; ``questions`` is ``question.jsonl``;
    ``answers_dir`` holds one ``<model>.jsonl`` per model.  A judgment whose
    question, model answer or answer turn is missing raises
    :class:`ConversionError` naming the judgments file, line and field.
    """
    jpath, qpath, adir = Path(judgments), Path(questions), Path(answers_dir)
    stats = ConversionStats(source=os.fspath(jpath))
    js = _read_judgments([jpath], stats)
    qs = _load_questions(qpath)
    answers = _load_answers(adir)

    def texts(j: _Judgment, turn: int) -> tuple[str, str, str]:
        q = qs.get(j.question_id)
        if q is None:
            raise ConversionError(j.path, j.line, "question_id",
                                  f"question {j.question_id} is not in {qpath}")
        if len(q) < turn:
            raise ConversionError(j.path, j.line, "turn",
                                  f"question {j.question_id} has {len(q)} turn(s) in {qpath}, judged turn {turn}")
        resp = []
        for side, model in (("model_a", j.model_a), ("model_b", j.model_b)):
            per_model = answers.get(model)
            if per_model is None:
                raise ConversionError(j.path, j.line, side,
                                      f"no answers of model {model!r} in {adir} (expected {adir / (model + '.jsonl')})")
            ans = per_model.get(j.question_id)
            if ans is None:
                raise ConversionError(j.path, j.line, side,
                                      f"model {model!r} has no answer to question {j.question_id} in {adir}")
            turns, afile, aline = ans
            if len(turns) < turn:
                raise ConversionError(afile, aline, "choices[0].turns",
                                      f"expected at least {turn} answer turn(s) (judged at {j.path}:{j.line}), "
                                      f"got {len(turns)}")
            resp.append(turns[turn - 1])
        return q[turn - 1], resp[0], resp[1]

    return _convert_judgments(js, texts, stats, on_conflict)


def find_mt_bench_files(root: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """Locate (judgments file, question.jsonl, model_answer/) under ``root``.

    Looks in ``root`` first, then anywhere below it (FastChat's layout puts
    them in ``data/mt_bench/``); raises :class:`ConversionError` naming what
    is missing.
    """
    root = Path(root)

    def find(names: Sequence[str], is_dir: bool = False) -> Path:
        for name in names:
            direct = root / name
            if direct.is_dir() if is_dir else direct.is_file():
                return direct
        for name in names:
            hits = sorted(p for p in root.rglob(name) if (p.is_dir() if is_dir else p.is_file()))
            if hits:
                return hits[0]
        raise ConversionError(root, None, None, f"MT-Bench split form: none of {list(names)} found")

    return find(JUDGMENT_FILE_NAMES), find(("question.jsonl",)), find(("model_answer",), is_dir=True)


def convert_mt_bench_dir(root: str | os.PathLike[str], *, on_conflict: OnConflict = "first") -> Converted:
    """Convert an MT-Bench split-form folder (see :func:`find_mt_bench_files`)."""
    return convert_mt_bench_split(*find_mt_bench_files(root), on_conflict=on_conflict)


# --------------------------------------------------------------------------
# forms with conversations inside the rows (MT-Bench HF, Chatbot Arena)
# --------------------------------------------------------------------------
def _conversation_pairs(row: dict[str, Any], key: str, path: str, line: int) -> list[tuple[str, str]]:
    """user/assistant messages -> [(query, response), ...]."""
    conv = row.get(key)
    if not isinstance(conv, (list, tuple)) or not conv:
        raise ConversionError(path, line, key, "expected a non-empty list of {role, content} messages")
    if len(conv) % 2:
        raise ConversionError(path, line, key, f"expected user/assistant message pairs, got {len(conv)} messages")
    out = []
    for i in range(0, len(conv), 2):
        pair = []
        for k, role in ((i, "user"), (i + 1, "assistant")):
            msg = conv[k]
            if not isinstance(msg, dict):
                raise ConversionError(path, line, f"{key}[{k}]", "expected a {role, content} object")
            if msg.get("role") != role:
                raise ConversionError(path, line, f"{key}[{k}].role", f"expected {role!r}, got {msg.get('role')!r}")
            content = msg.get("content")
            if not isinstance(content, str):
                raise ConversionError(path, line, f"{key}[{k}].content",
                                      f"expected a string, got {type(content).__name__}")
            pair.append(content)
        out.append((pair[0], pair[1]))
    return out


def _row_texts(row: dict[str, Any], path: str, line: int) -> dict[int, tuple[str, str, str]]:
    a = _conversation_pairs(row, "conversation_a", path, line)
    b = _conversation_pairs(row, "conversation_b", path, line)
    if len(a) != len(b):
        raise ConversionError(path, line, "conversation_b",
                              f"expected {len(a)} turns like conversation_a, got {len(b)}")
    out = {}
    for t, ((qa, ra), (qb, rb)) in enumerate(zip(a, b)):
        if qa != qb:
            raise ConversionError(path, line, f"conversation_b[{2 * t}].content",
                                  f"expected the same user message as conversation_a[{2 * t}] "
                                  f"(turn {t + 1}), got a different text")
        out[t] = (qa, ra, rb)
    return out


def _paths(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".jsonl", ".json", ".parquet"))
            if not files:
                raise ConversionError(p, None, None, "no .jsonl, .json or .parquet files in this folder")
            return files
        return [p]
    return [Path(s) for s in source]


def convert_mt_bench_hf(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    on_conflict: OnConflict = "first",
) -> Converted:
    """Convert MT-Bench human judgments in the Hugging Face dataset's schema.

    Each row has the judgment fields and ``conversation_a`` /
    ``conversation_b`` (user/assistant messages; all turns).  The texts of
    turn t are taken from the turn-t judgment's own row.  ``source`` is a
    file, a list of files or a folder of ``.jsonl``/``.json``/``.parquet``.
    """
    paths = _paths(source)
    stats = ConversionStats(source=", ".join(map(os.fspath, paths)))

    def attach(j: _Judgment, row: dict[str, Any]) -> None:
        j.texts = _row_texts(row, j.path, j.line)
        if len(j.texts) < j.turn:
            raise ConversionError(j.path, j.line, "conversation_a",
                                  f"expected at least {j.turn} turn(s) for a turn-{j.turn} judgment, "
                                  f"got {len(j.texts)}")

    js = _read_judgments(paths, stats, attach)

    def texts(j: _Judgment, turn: int) -> tuple[str, str, str]:
        assert j.texts is not None
        return j.texts[turn - 1]

    return _convert_judgments(js, texts, stats, on_conflict)


def convert_chatbot_arena(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    on_conflict: OnConflict = "first",
) -> Converted:
    """Convert Chatbot Arena conversations (one vote per battle).

    Each row: ``judge, model_a, model_b, winner, conversation_a,
    conversation_b, turn, question_id``.  A battle becomes one group with
    ``turn`` = the row's turn and one step per conversation turn; every step
    carries the battle's rating (the vote is given once, for the whole
    conversation).  The number of user/assistant pairs must equal ``turn``.
    """
    paths = _paths(source)
    stats = ConversionStats(source=", ".join(map(os.fspath, paths)))

    def attach(j: _Judgment, row: dict[str, Any]) -> None:
        j.texts = _row_texts(row, j.path, j.line)
        if len(j.texts) != j.turn:
            raise ConversionError(j.path, j.line, "turn",
                                  f"expected the number of user/assistant pairs in the conversations "
                                  f"({len(j.texts)}), got {j.turn}")

    js = _read_judgments(paths, stats, attach)
    _check_on_conflict(on_conflict)
    js = _dedupe(js, stats, on_conflict)
    _finish_stats(stats, js)
    comps = []
    for j in js:
        assert j.texts is not None
        sa, sb = j.score_of(j.model_a), j.score_of(j.model_b)
        steps = [(q, ra, rb, sa, sb) for _, (q, ra, rb) in sorted(j.texts.items())]
        comps.append(_Comparison(j.judge, j.question_id, j.turn, j.model_a, j.model_b, steps, j.line))
    return Converted(_emit(comps, stats), stats)


#: raw kinds understood by :func:`convert_raw`
RAW_CONVERTERS: dict[str, Callable[..., Converted]] = {
    "mt_bench_split": convert_mt_bench_dir,
    "mt_bench_hf": convert_mt_bench_hf,
    "chatbot_arena": convert_chatbot_arena,
}


def convert_raw(kind: str, source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                *, on_conflict: OnConflict = "first") -> Converted:
    """Dispatch on ``kind`` (``mt_bench_split``, ``mt_bench_hf`` or ``chatbot_arena``)."""
    try:
        fn = RAW_CONVERTERS[kind]
    except KeyError:
        raise ValueError(f"unknown raw kind {kind!r}; expected one of {sorted(RAW_CONVERTERS)}") from None
    if not isinstance(source, (str, os.PathLike)):
        source = list(source)
    return fn(source, on_conflict=on_conflict)
