"""Tests for gmt_model.data.jsonl: the GMTRouter JSONL reader, validator and writer."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gmt_model.data import jsonl as data
from gmt_model.data.jsonl import (
    GROUP_KEY_FIELD,
    FormatError,
    Group,
    Record,
    Turn,
    iter_groups,
    iter_records,
    read_groups,
    record_to_dict,
    validate_file,
    write_jsonl,
)
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

DIM = 4


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def emb(seed: int, dim: int = DIM) -> list[float]:
    """A deterministic embedding whose values are exact float32 numbers."""
    rng = np.random.default_rng(seed)
    return [float(v) for v in rng.standard_normal(dim).astype(np.float32)]


def make_rec(
    qid: Any = 1,
    turn: int = 1,
    judge: Any = "u1",
    model: str = "m1",
    n_turns: int = 1,
    ratings: list[float] | None = None,
    dim: int = DIM,
    encoder: str | None = None,
) -> dict[str, Any]:
    """A valid GMTRouter record dict; queries depend only on (qid, step)."""
    ratings = ratings if ratings is not None else [3.0 + i for i in range(n_turns)]
    conv = [
        {
            F_QUERY: f"q{qid}-step{i}",
            F_QUERY_EMB: emb(sum(map(ord, str(qid))) * 10 + i, dim),
            F_RESPONSE: f"{model} answers q{qid}-step{i}",
            F_RATING: ratings[i],
        }
        for i in range(n_turns)
    ]
    rec = {
        F_JUDGE: judge,
        F_MODEL: model,
        F_QUESTION_ID: qid,
        F_TURN: turn,
        F_CONVERSATION: conv,
        F_MODEL_EMB: emb(sum(map(ord, model)), dim),
    }
    if encoder is not None:
        rec[F_ENCODER] = encoder
    return rec


def group(qid: Any = 1, turn: int = 1, judge: Any = "u1", models: tuple[str, ...] = ("m1", "m2"),
          n_turns: int = 1, **kw: Any) -> list[dict[str, Any]]:
    return [make_rec(qid, turn, judge, m, n_turns, **kw) for m in models]


def write_lines(path: Path, objs: list[Any], *, trailing_newline: bool = True) -> Path:
    """Write each item as one line: dicts as JSON (NaN/Infinity allowed), str verbatim."""
    lines = [o if isinstance(o, str) else json.dumps(o) for o in objs]
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    path.write_text(text, encoding="utf-8")
    return path


def expect_error(path: Path, line: int | None, field: str | None, **kw: Any) -> FormatError:
    """Read the whole file, require a FormatError at (path, line, field), return it."""
    with pytest.raises(FormatError) as info:
        read_groups(path, **kw)
    err = info.value
    assert err.path == os.fspath(path)
    assert err.line == line, str(err)
    assert err.field == field, str(err)
    msg = str(err)
    assert msg.startswith(os.fspath(path) + (f":{line}:" if line is not None else ":")), msg
    if field is not None:
        assert f"field '{field}'" in msg
    return err


# --------------------------------------------------------------------------
# bad input, one kind per test
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "drop",
    [F_JUDGE, F_MODEL, F_QUESTION_ID, F_TURN, F_CONVERSATION, F_MODEL_EMB,
     f"{F_CONVERSATION}[0].{F_QUERY}", f"{F_CONVERSATION}[0].{F_QUERY_EMB}", f"{F_CONVERSATION}[0].{F_RATING}"],
)
def test_missing_field(tmp_path: Path, drop: str) -> None:
    recs = group(1) + group(2)
    bad = recs[2]
    if drop.startswith(F_CONVERSATION + "["):
        del bad[F_CONVERSATION][0][drop.rsplit(".", 1)[1]]
    else:
        del bad[drop]
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 3, drop)
    assert "missing" in err.expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (F_TURN, "1"),
        (F_TURN, True),
        (F_TURN, 0),
        (F_TURN, 1.0),
        (F_JUDGE, ""),
        (F_JUDGE, 1.5),
        (F_JUDGE, True),
        (F_MODEL, 5),
        (F_MODEL, ""),
        (F_QUESTION_ID, None),
        (F_QUESTION_ID, [1]),
        (F_CONVERSATION, []),
        (F_CONVERSATION, "hello"),
        (F_MODEL_EMB, []),
        (F_MODEL_EMB, "0.1 0.2"),
        (F_ENCODER, 3),
        (f"{F_CONVERSATION}[0]", "not an object"),
        (f"{F_CONVERSATION}[0].{F_QUERY}", 7),
        (f"{F_CONVERSATION}[0].{F_QUERY_EMB}", ["0.1", "0.2", "0.3", "0.4"]),
        (f"{F_CONVERSATION}[0].{F_QUERY_EMB}", [0.1, True, 0.3, 0.4]),
        (f"{F_CONVERSATION}[0].{F_QUERY_EMB}", [[0.1, 0.2], [0.3, 0.4]]),
        (f"{F_CONVERSATION}[0].{F_RESPONSE}", 5),
        (f"{F_CONVERSATION}[0].{F_RATING}", "5"),
        (f"{F_CONVERSATION}[0].{F_RATING}", True),
        (f"{F_CONVERSATION}[0].{F_RATING}", None),
    ],
)
def test_wrong_type(tmp_path: Path, field: str, value: Any) -> None:
    recs = group(1) + group(2)
    bad = recs[3]
    if field == f"{F_CONVERSATION}[0]":
        bad[F_CONVERSATION][0] = value
    elif field.startswith(F_CONVERSATION + "[0]."):
        bad[F_CONVERSATION][0][field.rsplit(".", 1)[1]] = value
    else:
        bad[field] = value
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 4, field)
    assert "expected" in err.expected


def test_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", group(1) + ["[1, 2, 3]"])
    err = expect_error(path, 3, None)
    assert "JSON object" in err.expected


def test_ragged_query_emb_width(tmp_path: Path) -> None:
    recs = group(1, n_turns=2) + group(2, n_turns=2)
    recs[2][F_CONVERSATION][1][F_QUERY_EMB] = emb(7, DIM + 1)
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 3, f"{F_CONVERSATION}[1].{F_QUERY_EMB}")
    assert f"width {DIM}" in err.expected and f"got width {DIM + 1}" in err.expected
    assert "line 1" in err.expected  # where the file's width was set


def test_ragged_model_emb_width(tmp_path: Path) -> None:
    recs = group(1) + group(2)
    recs[1][F_MODEL_EMB] = emb(9, DIM - 1)
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 2, F_MODEL_EMB)
    assert f"width {DIM}" in err.expected and f"got width {DIM - 1}" in err.expected


def test_width_set_by_first_embedding_even_within_one_record(tmp_path: Path) -> None:
    recs = group(1)
    recs[0][F_MODEL_EMB] = emb(9, DIM + 2)
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 1, F_MODEL_EMB)
    assert f"got width {DIM + 2}" in err.expected


def test_nan_rating(tmp_path: Path) -> None:
    recs = group(1) + group(2)
    recs[2][F_CONVERSATION][0][F_RATING] = float("nan")
    path = write_lines(tmp_path / "d.jsonl", recs)
    assert "NaN" in path.read_text().splitlines()[2]  # Python's json wrote a bare NaN token
    err = expect_error(path, 3, f"{F_CONVERSATION}[0].{F_RATING}")
    assert "finite" in err.expected


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e39])
def test_non_finite_in_query_embedding(tmp_path: Path, value: float) -> None:
    recs = group(1) + group(2)
    recs[1][F_CONVERSATION][0][F_QUERY_EMB][2] = value  # 1e39 is finite JSON but overflows float32
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 2, f"{F_CONVERSATION}[0].{F_QUERY_EMB}")
    assert "finite" in err.expected and "element 2" in err.expected


def test_inf_in_model_embedding(tmp_path: Path) -> None:
    recs = group(1) + group(2)
    recs[3][F_MODEL_EMB][0] = float("inf")
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 4, F_MODEL_EMB)
    assert "element 0" in err.expected


def test_group_of_size_one(tmp_path: Path) -> None:
    recs = group(1) + [make_rec(2, model="m1")] + group(3)
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 3, GROUP_KEY_FIELD)
    assert "at least 2" in err.expected and "got 1" in err.expected


def test_group_of_size_one_at_end_of_file(tmp_path: Path) -> None:
    recs = group(1) + group(2) + [make_rec(3, model="m1")]
    expect_error(write_lines(tmp_path / "d.jsonl", recs), 5, GROUP_KEY_FIELD)


def test_min_group_size_is_configurable(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", group(1) + [make_rec(2)] + group(3, models=("a", "b", "c")))
    assert [len(g) for g in read_groups(path, min_group_size=1)] == [2, 1, 3]
    err = expect_error(path, 1, GROUP_KEY_FIELD, min_group_size=3)
    assert "at least 3" in err.expected
    with pytest.raises(ValueError):
        read_groups(path, min_group_size=0)


def test_mismatched_conversation_lengths(tmp_path: Path) -> None:
    recs = group(1, models=("m1", "m2", "m3"), n_turns=2)
    recs[2] = make_rec(1, model="m3", n_turns=1)
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 3, F_CONVERSATION)
    assert "2 turns" in err.expected and "got 1" in err.expected


def test_different_query_text_within_group(tmp_path: Path) -> None:
    recs = group(5, n_turns=3) + group(6, n_turns=3)
    recs[1][F_CONVERSATION][1][F_QUERY] = "something else"
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 2, f"{F_CONVERSATION}[1].{F_QUERY}")
    assert "line 1" in err.expected


def test_different_query_embedding_only_checked_on_request(tmp_path: Path) -> None:
    recs = group(5, n_turns=2)
    recs[1][F_CONVERSATION][1][F_QUERY_EMB] = emb(12345)
    path = write_lines(tmp_path / "d.jsonl", recs)
    assert len(read_groups(path)) == 1
    expect_error(path, 2, f"{F_CONVERSATION}[1].{F_QUERY_EMB}", check_query_emb=True)


def test_repeated_key_later_in_the_file_is_a_separate_group(tmp_path: Path) -> None:
    """As in the reference reader, only consecutiveness makes a group: a key that
    comes back after other keys starts a new group, never merged with the first."""
    recs = (group(1) + group(2) + group(1, models=("m3", "m4")) + group(2, models=("m1", "m3"))
            + group(1, models=("m1", "m3")))
    path = write_lines(tmp_path / "d.jsonl", recs)
    groups = read_groups(path)
    assert [(g.question_id, g.first_line, g.repeat) for g in groups] == [
        ("1", 1, 0), ("2", 3, 0), ("1", 5, 1), ("2", 7, 1), ("1", 9, 2)]
    assert [[r.model for r in g.records] for g in groups] == [
        ["m1", "m2"], ["m1", "m2"], ["m3", "m4"], ["m1", "m3"], ["m1", "m3"]]
    s = validate_file(path)
    assert (s.n_groups, s.n_records, s.n_pairs, s.n_repeated_keys) == (5, 10, 5, 3)
    assert validate_file(write_lines(tmp_path / "plain.jsonl", group(1) + group(2))).n_repeated_keys == 0


def test_int_and_str_ids_are_the_same_key(tmp_path: Path) -> None:
    recs = group(7) + group(8) + group("7", models=("m3", "m4"))
    groups = read_groups(write_lines(tmp_path / "d.jsonl", recs))
    assert [(g.question_id, g.repeat) for g in groups] == [("7", 0), ("8", 0), ("7", 1)]


#: The 14 human votes on MT-Bench question 81, turn 1, in the order of
#: ../shared/data/mt_bench_human/human_judgments.jsonl: expert_24 and expert_0
#: each compare two model pairs on the same question, with other judges between.
MT_BENCH_81_TURN_1 = [
    ("author_2", "alpaca-13b", "gpt-3.5-turbo", "model_b"),
    ("expert_17", "alpaca-13b", "gpt-3.5-turbo", "model_b"),
    ("expert_0", "alpaca-13b", "vicuna-13b-v1.2", "model_b"),
    ("expert_37", "claude-v1", "alpaca-13b", "model_a"),
    ("expert_27", "claude-v1", "llama-13b", "model_a"),
    ("expert_24", "gpt-3.5-turbo", "alpaca-13b", "model_a"),
    ("expert_45", "gpt-3.5-turbo", "alpaca-13b", "tie"),
    ("expert_11", "gpt-3.5-turbo", "claude-v1", "model_b"),
    ("expert_24", "gpt-3.5-turbo", "vicuna-13b-v1.2", "model_b"),
    ("author_3", "gpt-4", "llama-13b", "model_a"),
    ("expert_43", "gpt-4", "llama-13b", "model_a"),
    ("expert_3", "gpt-4", "vicuna-13b-v1.2", "tie"),
    ("expert_0", "vicuna-13b-v1.2", "llama-13b", "model_a"),
    ("expert_10", "vicuna-13b-v1.2", "llama-13b", "model_a"),
]


def mt_bench_shaped_records(votes: list[tuple[str, str, str, str]] = MT_BENCH_81_TURN_1) -> list[dict[str, Any]]:
    """One group of two records per vote, question id and turn unchanged (the release's shape)."""
    score = {"model_a": (1.0, 0.0), "model_b": (0.0, 1.0), "tie": (0.5, 0.5)}
    out = []
    for judge, a, b, winner in votes:
        for model, rating in zip((a, b), score[winner]):
            out.append(make_rec(81, 1, judge, model, ratings=[rating]))
    return out


def test_real_mt_bench_shape_one_judge_several_pairs(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "mt.jsonl", mt_bench_shaped_records())
    groups = read_groups(path)
    assert len(groups) == len(MT_BENCH_81_TURN_1)
    assert [(g.judge, *(r.model for r in g.records)) for g in groups] == [v[:3] for v in MT_BENCH_81_TURN_1]
    assert [g.repeat for g in groups if g.judge in ("expert_0", "expert_24")] == [0, 0, 1, 1]
    s = validate_file(path)
    assert (s.n_groups, s.n_pairs, s.n_repeated_keys) == (14, 14, 2)
    assert len(s.judges) == 12


def test_duplicate_model_within_group(tmp_path: Path) -> None:
    recs = group(1, models=("m1", "m2", "m1"))
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 3, F_MODEL)
    assert "'m1'" in err.expected and "line 1" in err.expected


def test_rating_outside_given_scale(tmp_path: Path) -> None:
    recs = group(1, n_turns=2) + group(2, n_turns=2)
    recs[3][F_CONVERSATION][1][F_RATING] = 5.5
    path = write_lines(tmp_path / "d.jsonl", recs)
    assert len(read_groups(path)) == 2  # no scale given: any finite rating
    assert len(read_groups(path, rating_scale=(0, 6))) == 2
    err = expect_error(path, 4, f"{F_CONVERSATION}[1].{F_RATING}", rating_scale=(0, 5))
    assert "[0.0, 5.0]" in err.expected and "5.5" in err.expected
    with pytest.raises(ValueError):
        read_groups(path, rating_scale=(5, 0))


def test_truncated_last_line(tmp_path: Path) -> None:
    recs = group(1) + group(2)
    lines = [json.dumps(r) for r in recs]
    lines[-1] = lines[-1][: len(lines[-1]) // 2]
    path = write_lines(tmp_path / "d.jsonl", lines, trailing_newline=False)
    err = expect_error(path, 4, None)
    assert "invalid JSON" in err.expected and "truncated" in err.expected


def test_invalid_json_in_the_middle(tmp_path: Path) -> None:
    recs: list[Any] = group(1) + group(2)
    recs[1] = '{"judge": "u1", "model": '
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 2, None)
    assert "invalid JSON" in err.expected and "truncated" not in err.expected


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r).encode() for r in group(1) + group(2)]
    lines[2] = lines[2].replace(b"u1", b"u\xff")
    path.write_bytes(b"\n".join(lines) + b"\n")
    err = expect_error(path, 3, None)
    assert "UTF-8" in err.expected


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    err = expect_error(path, None, None)
    assert "no records" in err.expected
    assert str(err) == f"{path}: {err.expected}"


def test_blank_lines_only_and_blank_lines_skipped(tmp_path: Path) -> None:
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\t\n")
    assert "no records" in expect_error(blank, None, None).expected
    # blank lines between records are skipped; line numbers stay physical
    path = write_lines(tmp_path / "d.jsonl", group(1)[:1] + [""] + group(1)[1:] + [""])
    (g,) = read_groups(path)
    assert [r.line for r in g.records] == [1, 3]
    bad = write_lines(tmp_path / "bad.jsonl", group(1)[:1] + [""] + group(1)[1:] + ["", "[]"])
    assert "JSON object" in expect_error(bad, 5, None).expected


def test_one_encoder_per_file(tmp_path: Path) -> None:
    recs = group(1, encoder="enc-a") + group(2, encoder="enc-b")
    err = expect_error(write_lines(tmp_path / "d.jsonl", recs), 3, F_ENCODER)
    assert "enc-a" in err.expected and "enc-b" in err.expected


def test_format_error_message_shape() -> None:
    assert str(FormatError("f.jsonl", 3, "turn", "expected x")) == "f.jsonl:3: field 'turn': expected x"
    assert str(FormatError("f.jsonl", 3, None, "bad")) == "f.jsonl:3: bad"
    assert str(FormatError("f.jsonl", None, None, "no records")) == "f.jsonl: no records"
    assert str(FormatError(Path("a/b.jsonl"), None, "judge", "e")) == f"{Path('a/b.jsonl')}: field 'judge': e"
    assert isinstance(FormatError("p", 1, "f", "e"), ValueError)


# --------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------
def test_groups_stream_before_a_later_error(tmp_path: Path) -> None:
    recs: list[Any] = group(1) + group(2) + ["{oops"]
    path = write_lines(tmp_path / "d.jsonl", recs)
    it = iter_groups(path)
    first = next(it)
    assert (first.question_id, first.first_line, len(first)) == ("1", 1, 2)
    with pytest.raises(FormatError) as info:
        list(it)
    assert info.value.line == 5


def test_iter_records_skips_group_rules(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [make_rec(1), make_rec(2), make_rec(1)])
    assert [r.line for r in iter_records(path)] == [1, 2, 3]


# --------------------------------------------------------------------------
# valid files
# --------------------------------------------------------------------------
def multi_turn_records() -> list[Record]:
    """Valid records with 2-turn conversations, None responses, int ratings and random float32."""
    rng = np.random.default_rng(0)
    dim = 8
    model_embs = {m: rng.standard_normal(dim).astype(np.float32) for m in ("alpha", "beta", "gamma")}
    out: list[Record] = []
    for qid, judge, models in [("101", "u1", ("alpha", "beta")), ("102", "u1", ("alpha", "beta", "gamma")),
                               ("101", "u2", ("gamma", "beta"))]:
        for turn in (1, 2):
            queries = [(f"question {qid} turn {t}", rng.standard_normal(dim).astype(np.float32) * 1e-3)
                       for t in range(turn)]
            for m in models:
                conv = tuple(
                    Turn(q, e, None if (m == "beta" and t == 0) else f"{m}: é ✓ {qid}/{t}",
                         float(rng.integers(0, 11)) / 2)
                    for t, (q, e) in enumerate(queries)
                )
                out.append(Record(0, judge, m, qid, turn, conv, model_embs[m], "enc-x"))
    return out


def test_round_trip_write_then_read(tmp_path: Path) -> None:
    recs = multi_turn_records()
    path = tmp_path / "sub" / "dir" / "training_set.jsonl"  # parents are created
    assert write_jsonl(path, recs) == len(recs)
    groups = read_groups(path)
    assert [len(g) for g in groups] == [2, 2, 3, 3, 2, 2]
    back = [r for g in groups for r in g.records]
    assert [r.line for r in back] == list(range(1, len(recs) + 1))
    assert len(back) == len(recs)
    for orig, got in zip(recs, back):
        assert (got.judge, got.model, got.question_id, got.turn, got.encoder) == (
            orig.judge, orig.model, orig.question_id, orig.turn, orig.encoder)
        assert got.model_emb.dtype == np.float32 and np.array_equal(got.model_emb, orig.model_emb)
        assert len(got.conversation) == len(orig.conversation)
        for a, b in zip(orig.conversation, got.conversation):
            assert (b.query, b.response, b.rating) == (a.query, a.response, a.rating)
            assert b.query_emb.dtype == np.float32 and np.array_equal(b.query_emb, a.query_emb)
        assert got == orig
    # arrays read from a file are read-only (records are frozen)
    with pytest.raises(ValueError):
        back[0].model_emb[0] = 1.0
    # writing what was read gives the same bytes (dicts and Records serialise alike)
    again = tmp_path / "again.jsonl"
    write_jsonl(again, back)
    assert again.read_bytes() == path.read_bytes()
    as_dicts = tmp_path / "dicts.jsonl"
    write_jsonl(as_dicts, (record_to_dict(r) for r in back))
    assert as_dicts.read_bytes() == path.read_bytes()


def test_written_floats_are_compact(tmp_path: Path) -> None:
    vec = np.array([0.1, -2.5, 1e-5, 3.0], dtype=np.float32)
    recs = [Record(0, "u", m, "q", 1, (Turn("hi", vec, "r", 4),), vec, None) for m in ("a", "b")]
    path = tmp_path / "c.jsonl"
    write_jsonl(path, recs)
    line = path.read_text().splitlines()[0]
    obj = json.loads(line)
    assert obj[F_MODEL_EMB] == [0.1, -2.5, 1e-05, 3.0]
    assert "0.10000000149" not in line
    assert obj[F_CONVERSATION][0][F_RATING] == 4.0
    assert F_ENCODER not in obj


def test_int_ids_are_read_as_strings(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", group(81, judge=7))
    (g,) = read_groups(path)
    assert (g.question_id, g.judge, g.turn) == ("81", "7", 1)
    assert g.records[0].question_id == "81" and g.records[1].judge == "7"


def test_validate_file_summary(tmp_path: Path) -> None:
    recs = (group(1, judge="u1", models=("m1", "m2", "m3"), n_turns=2, ratings=[1.0, 5.0])
            + group(1, judge="u2", models=("m2", "m4"), ratings=[0.5])
            + group(2, turn=2, judge="u1", models=("m1", "m4"), n_turns=3, ratings=[2.0, 2.0, 4.5]))
    path = write_lines(tmp_path / "d.jsonl", recs)
    s = validate_file(path)
    assert s.path == os.fspath(path)
    assert s.n_records == 7
    assert s.n_groups == 3
    assert s.n_interactions == 3 * 2 + 2 * 1 + 2 * 3
    assert s.n_pairs == 2 * 3 + 1 * 1 + 3 * 1
    assert s.dim == DIM
    assert s.encoder is None
    assert (s.rating_min, s.rating_max) == (0.5, 5.0)
    assert s.judges == ["u1", "u2"]
    assert s.models == ["m1", "m2", "m3", "m4"]
    assert s.max_conversation_len == 3
    assert json.loads(json.dumps(s.to_dict()))["n_records"] == 7
    enc = write_lines(tmp_path / "e.jsonl", group(1, encoder="all-MiniLM-L6-v2"))
    assert validate_file(enc).encoder == "all-MiniLM-L6-v2"
    # validate_file applies the same rules and keywords as the reader
    with pytest.raises(FormatError):
        validate_file(path, rating_scale=(1, 5))


def test_record_equality_compares_arrays() -> None:
    a = Record(1, "u", "m", "q", 1, (Turn("x", np.ones(3, np.float32), None, 1.0),), np.zeros(3, np.float32))
    b = Record(9, "u", "m", "q", 1, (Turn("x", np.ones(3, np.float32), None, 1.0),), np.zeros(3, np.float32))
    c = Record(1, "u", "m", "q", 1, (Turn("x", np.ones(3, np.float32), None, 2.0),), np.zeros(3, np.float32))
    assert a == b  # the line is provenance, not content
    assert a != c
    assert Group("q", 1, "u", [a, b]).first_line == 1


# --------------------------------------------------------------------------
# writer: validation and atomicity
# --------------------------------------------------------------------------
def dir_listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_write_rejects_ragged_width_and_leaves_target_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("previous content\n")
    recs = group(1) + group(2)
    recs[2] = copy.deepcopy(recs[2])
    recs[2][F_CONVERSATION][0][F_QUERY_EMB] = emb(3, DIM + 3)
    with pytest.raises(FormatError) as info:
        write_jsonl(target, recs)
    err = info.value
    assert (err.path, err.line, err.field) == (os.fspath(target), 3, f"{F_CONVERSATION}[0].{F_QUERY_EMB}")
    assert target.read_text() == "previous content\n"
    assert dir_listing(tmp_path) == ["out.jsonl"]


def test_write_rejects_bad_record_objects(tmp_path: Path) -> None:
    good = Record(0, "u", "m", "q", 1, (Turn("x", np.ones(3, np.float32), None, 1.0),), np.zeros(3, np.float32))
    nan_rating = Record(0, "u", "n", "q", 1, (Turn("x", np.ones(3, np.float32), None, math.nan),),
                        np.zeros(3, np.float32))
    with pytest.raises(FormatError) as info:
        write_jsonl(tmp_path / "o.jsonl", [good, nan_rating])
    assert (info.value.line, info.value.field) == (2, f"{F_CONVERSATION}[0].{F_RATING}")
    ragged = Record(0, "u", "n", "q", 1, (Turn("x", np.ones(3, np.float32), None, 1.0),), np.zeros(2))
    with pytest.raises(FormatError) as info:
        write_jsonl(tmp_path / "o.jsonl", [ragged])
    assert (info.value.line, info.value.field) == (1, F_MODEL_EMB)
    assert dir_listing(tmp_path) == []


def test_write_is_atomic_when_the_iterator_raises(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    assert write_jsonl(target, group(1)) == 2
    before = target.read_bytes()

    def records() -> Any:
        yield from group(2)
        raise RuntimeError("upstream failed")

    with pytest.raises(RuntimeError, match="upstream failed"):
        write_jsonl(target, records())
    assert target.read_bytes() == before
    assert dir_listing(tmp_path) == ["out.jsonl"]
    assert len(read_groups(target)) == 1


def test_write_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    assert write_jsonl(target, group(3) + group(4)) == 4
    assert [g.question_id for g in read_groups(target)] == ["3", "4"]
    assert dir_listing(tmp_path) == ["out.jsonl"]


def test_module_exports() -> None:
    for name in ("FormatError", "Turn", "Record", "Group", "FileSummary", "iter_groups", "read_groups",
                 "validate_file", "record_to_dict", "write_jsonl"):
        assert name in data.__all__
