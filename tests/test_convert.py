"""Tests for gmt_model.data.convert and gmt_model.data.datasets.

The converter runs on the real MT-Bench human judgments in
../shared/data/mt_bench_human/ (read in place, also through file:// URLs);
expectations are counted from the raw files independently of the converter.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from gmt_model.method import schema as S
from gmt_model.data.convert import (
    QID_SEPARATOR,
    ConversionError,
    convert_chatbot_arena,
    convert_mt_bench_dir,
    convert_mt_bench_hf,
    convert_mt_bench_split,
    convert_raw,
)
from gmt_model.data.jsonl import read_groups, validate_file
from gmt_model.data.datasets import (
    SourceConfig,
    build_jsonl,
    load_llm_descriptions,
    load_source_config,
    prepare_raw,
)
from gmt_model.data.sources import SourceError
from gmt_model.data.splits import split_groups

MT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mt_bench_human"
pytestmark = pytest.mark.skipif(not (MT / "human_judgments.jsonl").is_file(),
                                reason="real MT-Bench data not found at ../shared/data/mt_bench_human")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _groups(records: list[dict]) -> list[list[dict]]:
    """Consecutive runs sharing (question_id, turn, judge), as a reader would group them."""
    out: list[list[dict]] = []
    for r in records:
        key = (r[S.F_QUESTION_ID], r[S.F_TURN], r[S.F_JUDGE])
        if out and (out[-1][0][S.F_QUESTION_ID], out[-1][0][S.F_TURN], out[-1][0][S.F_JUDGE]) == key:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def _score(j: dict, model: str) -> float:
    if j["winner"].startswith("tie"):
        return 0.5
    return 1.0 if j[j["winner"]] == model else 0.0


class HashEncoder:
    """A tiny deterministic stand-in encoder (sha256 of the text -> unit vector)."""

    def __init__(self, name: str = "test/hash-encoder", dim: int = 8) -> None:
        self.name, self.dim = name, dim
        self.calls: list[int] = []

    def encode(self, texts):
        self.calls.append(len(texts))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


@pytest.fixture(scope="module")
def raw_judgments() -> list[dict]:
    return _jsonl(MT / "human_judgments.jsonl")


@pytest.fixture(scope="module")
def converted():
    return convert_mt_bench_dir(MT)


@pytest.fixture(scope="module")
def texts():
    questions = {q["question_id"]: q["turns"] for q in _jsonl(MT / "question.jsonl")}
    answers = {}
    for f in (MT / "model_answer").glob("*.jsonl"):
        for a in _jsonl(f):
            answers[(a["model_id"], a["question_id"])] = a["choices"][0]["turns"]
    return questions, answers


# --------------------------------------------------------------------------
# MT-Bench, split form, real data
# --------------------------------------------------------------------------
def test_real_data_counts(converted, raw_judgments):
    records, stats = converted
    assert stats.n_rows == len(raw_judgments) == 3355
    assert stats.judges == sorted({j["judge"] for j in raw_judgments}) and len(stats.judges) == 65
    assert set(stats.models) == {"gpt-4", "gpt-3.5-turbo", "claude-v1", "vicuna-13b-v1.2", "alpaca-13b",
                                 "llama-13b"}
    assert [int(q) for q in stats.questions] == list(range(81, 161))
    raw_turns = Counter(j["turn"] for j in raw_judgments)
    assert raw_turns == {1: 1689, 2: 1666}
    # one turn-1 judgment is a duplicate (sides swapped) and is dropped
    assert stats.turns == {1: raw_turns[1] - 1, 2: raw_turns[2]}
    assert stats.n_judgments == len(raw_judgments) - 1 and stats.n_duplicates_dropped == 1
    assert stats.contradictions == []
    assert {r[S.F_JUDGE] for r in records} == set(stats.judges)
    assert {r[S.F_QUESTION_ID].split(QID_SEPARATOR)[0] for r in records} == {str(q) for q in range(81, 161)}
    assert {r[S.F_TURN] for r in records} == {1, 2}


def test_every_group_is_one_judged_pair(converted, raw_judgments):
    records, stats = converted
    judged = defaultdict(list)
    for j in raw_judgments:
        judged[(j["judge"], str(j["question_id"]), j["turn"], frozenset((j["model_a"], j["model_b"])))].append(j)
    groups = _groups(records)
    assert len(groups) == stats.n_groups
    keys = [(g[0][S.F_QUESTION_ID], g[0][S.F_TURN], g[0][S.F_JUDGE]) for g in groups]
    assert len(set(keys)) == len(keys), "a group key reappears: grouping could merge comparisons"
    used = Counter()
    for g in groups:
        assert len(g) == 2, "MT-Bench groups hold exactly the two compared models"
        a, b = g
        assert a[S.F_MODEL] != b[S.F_MODEL]
        pair = frozenset((a[S.F_MODEL], b[S.F_MODEL]))
        n = len(a[S.F_CONVERSATION])
        assert n == len(b[S.F_CONVERSATION])
        qid = a[S.F_QUESTION_ID].split(QID_SEPARATOR)[0]
        for step in range(n):
            turn = a[S.F_TURN] - n + 1 + step
            key = (a[S.F_JUDGE], qid, turn, pair)
            assert key in judged, f"group {a[S.F_QUESTION_ID]}/{a[S.F_JUDGE]} pairs models no human compared"
            used[key] += 1
            assert a[S.F_CONVERSATION][step][S.F_QUERY] == b[S.F_CONVERSATION][step][S.F_QUERY]
    # every distinct judged comparison appears exactly once
    assert set(used) == set(judged) and set(used.values()) == {1}


def test_multi_turn_groups_and_step_ratings(converted, raw_judgments, texts):
    records, stats = converted
    questions, answers = texts
    by_key = {}
    for j in raw_judgments:
        by_key.setdefault((j["judge"], str(j["question_id"]), j["turn"],
                           frozenset((j["model_a"], j["model_b"]))), j)
    both_turns = {(j, q, p) for (j, q, t, p) in by_key if t == 2 and (j, q, 1, p) in by_key}
    assert len(both_turns) == 1666
    multi = [g for g in _groups(records) if len(g[0][S.F_CONVERSATION]) == 2]
    assert len(multi) == stats.n_multi_turn_groups == len(both_turns)
    for g in _groups(records):
        qid = int(g[0][S.F_QUESTION_ID].split(QID_SEPARATOR)[0])
        pair = frozenset(r[S.F_MODEL] for r in g)
        n = len(g[0][S.F_CONVERSATION])
        assert g[0][S.F_TURN] == (2 if n == 2 else g[0][S.F_TURN])
        for r in g:
            for step, turn in enumerate(range(r[S.F_TURN] - n + 1, r[S.F_TURN] + 1)):
                j = by_key[(r[S.F_JUDGE], str(qid), turn, pair)]
                c = r[S.F_CONVERSATION][step]
                assert c[S.F_RATING] == _score(j, r[S.F_MODEL])
                assert c[S.F_QUERY] == questions[qid][turn - 1]
                assert c[S.F_RESPONSE] == answers[(r[S.F_MODEL], qid)][turn - 1]
    # ratings of the two models of a step are complementary (1/0) or a tie (0.5/0.5)
    for g in _groups(records):
        for s in range(len(g[0][S.F_CONVERSATION])):
            assert g[0][S.F_CONVERSATION][s][S.F_RATING] + g[1][S.F_CONVERSATION][s][S.F_RATING] == 1.0


def test_colliding_keys_get_distinct_question_ids(converted, raw_judgments):
    records, stats = converted
    per_key = Counter((j["judge"], j["question_id"], j["turn"]) for j in raw_judgments)
    assert sum(1 for v in per_key.values() if v > 1) == 539
    renamed = {r[S.F_QUESTION_ID] for r in records if QID_SEPARATOR in r[S.F_QUESTION_ID]}
    assert len(renamed) > 0 and stats.n_renamed_groups > 0
    # per (judge, question, turn): ids are "<qid>", "<qid>#2", "<qid>#3", ... without gaps
    ids = defaultdict(set)
    for g in _groups(records):
        r = g[0]
        base, _, k = r[S.F_QUESTION_ID].partition(QID_SEPARATOR)
        ids[(r[S.F_JUDGE], base, r[S.F_TURN])].add(int(k) if k else 1)
    assert all(v == set(range(1, len(v) + 1)) for v in ids.values())
    assert stats.n_renamed_groups == sum(len(v) - 1 for v in ids.values())


def test_side_swapped_duplicate_and_empty_answer(converted):
    records, stats = converted
    assert len(stats.duplicates) == 1
    d = stats.duplicates[0]
    assert (d["judge"], d["question_id"], d["turn"], d["models"]) == (
        "author_0", "128", 1, ["claude-v1", "gpt-3.5-turbo"])
    hits = [g for g in _groups(records) if g[0][S.F_JUDGE] == "author_0"
            and g[0][S.F_QUESTION_ID].split(QID_SEPARATOR)[0] == "128"
            and {r[S.F_MODEL] for r in g} == {"claude-v1", "gpt-3.5-turbo"}]
    assert len(hits) == 1 and len(hits[0][0][S.F_CONVERSATION]) == 2
    empty = [r for r in records if r[S.F_MODEL] == "llama-13b" and r[S.F_QUESTION_ID].startswith("127")]
    assert empty and all(r[S.F_CONVERSATION][0][S.F_RESPONSE] == "" for r in empty)
    assert stats.n_empty_responses == len(empty)


def test_output_is_deterministic(converted):
    again = convert_mt_bench_dir(MT)
    assert again.records == converted.records


def test_hf_form_matches_split_form(tmp_path):
    sample = _jsonl(MT / "hf_schema_sample.jsonl")
    head = (MT / "human_judgments.jsonl").read_text(encoding="utf-8").splitlines()[: len(sample)]
    (tmp_path / "judgments.jsonl").write_text("\n".join(head) + "\n", encoding="utf-8")
    split = convert_mt_bench_split(tmp_path / "judgments.jsonl", MT / "question.jsonl", MT / "model_answer")
    hf = convert_mt_bench_hf(MT / "hf_schema_sample.jsonl")
    assert hf.stats.n_rows == split.stats.n_rows == 120
    assert hf.stats.n_multi_turn_groups == split.stats.n_multi_turn_groups > 0
    assert hf.records == split.records

    # the same rows as Parquet (the public dataset's format), fetched through a file:// URL
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(sample), tmp_path / "human.parquet")
    src = SourceConfig(dataset="mt_bench", kind="mt_bench_hf", url=(tmp_path / "human.parquet").as_uri())
    raw = prepare_raw("mt_bench", src, tmp_path / "raw")
    assert raw.path == tmp_path / "raw" / "download" / "human.parquet"
    assert convert_raw("mt_bench_hf", raw.path).records == split.records


def test_hf_form_rejects_different_user_messages(tmp_path):
    row = _jsonl(MT / "hf_schema_sample.jsonl")[0]
    row["conversation_b"][0]["content"] = "something else"
    (tmp_path / "x.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ConversionError) as ei:
        convert_mt_bench_hf(tmp_path / "x.jsonl")
    assert ei.value.line == 1 and ei.value.field == "conversation_b[0].content"


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------
def _write_judgments(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_missing_answers_name_file_line_and_field(tmp_path, raw_judgments):
    answers = tmp_path / "model_answer"
    answers.mkdir()
    for f in (MT / "model_answer").glob("*.jsonl"):
        if f.stem != "llama-13b":
            shutil.copy(f, answers / f.name)
    rows = raw_judgments[:3] + [{"judge": "x", "model_a": "gpt-4", "model_b": "llama-13b",
                                 "question_id": 81, "turn": 1, "winner": "tie"}]
    jf = _write_judgments(tmp_path / "j.jsonl", rows)
    with pytest.raises(ConversionError) as ei:
        convert_mt_bench_split(jf, MT / "question.jsonl", answers)
    assert (ei.value.path, ei.value.line, ei.value.field) == (str(jf), 4, "model_b")
    assert "llama-13b" in str(ei.value)

    # an answer file without that question
    gpt4 = [a for a in _jsonl(MT / "model_answer" / "gpt-4.jsonl") if a["question_id"] != 90]
    _write_judgments(answers / "gpt-4.jsonl", gpt4)
    jf = _write_judgments(tmp_path / "j2.jsonl", [{"judge": "x", "model_a": "gpt-4", "model_b": "claude-v1",
                                                   "question_id": 90, "turn": 1, "winner": "model_a"}])
    with pytest.raises(ConversionError) as ei:
        convert_mt_bench_split(jf, MT / "question.jsonl", answers)
    assert (ei.value.line, ei.value.field) == (1, "model_a") and "question 90" in str(ei.value)

    # an answer with too few turns: the answer file's line is named
    gpt4[0]["choices"][0]["turns"] = gpt4[0]["choices"][0]["turns"][:1]
    _write_judgments(answers / "gpt-4.jsonl", gpt4)
    jf = _write_judgments(tmp_path / "j3.jsonl", [{"judge": "x", "model_a": "claude-v1", "model_b": "gpt-4",
                                                   "question_id": gpt4[0]["question_id"], "turn": 2,
                                                   "winner": "model_a"}])
    with pytest.raises(ConversionError) as ei:
        convert_mt_bench_split(jf, MT / "question.jsonl", answers)
    assert (ei.value.path, ei.value.line, ei.value.field) == (str(answers / "gpt-4.jsonl"), 1,
                                                              "choices[0].turns")


@pytest.mark.parametrize("change, field", [
    ({"winner": "model_c"}, "winner"),
    ({"judge": None}, "judge"),
    ({"turn": 0}, "turn"),
    ({"model_b": "gpt-4", "model_a": "gpt-4"}, "model_b"),
    ({"question_id": "81#2"}, "question_id"),
])
def test_malformed_judgment(tmp_path, raw_judgments, change, field):
    rows = [dict(r) for r in raw_judgments[:5]]
    rows[2].update(change)
    if change.get("judge", "") is None:
        del rows[2]["judge"]
    jf = _write_judgments(tmp_path / "j.jsonl", rows)
    with pytest.raises(ConversionError) as ei:
        convert_mt_bench_split(jf, MT / "question.jsonl", MT / "model_answer")
    assert (ei.value.path, ei.value.line, ei.value.field) == (str(jf), 3, field)


def test_contradicting_judgments(tmp_path):
    base = {"judge": "u1", "model_a": "gpt-4", "model_b": "claude-v1", "question_id": 81}
    rows = [{**base, "turn": 1, "winner": "model_a"},
            {**base, "turn": 2, "winner": "tie"},
            {**base, "model_a": "claude-v1", "model_b": "gpt-4", "turn": 1, "winner": "model_a"}]
    jf = _write_judgments(tmp_path / "j.jsonl", rows)
    args = (jf, MT / "question.jsonl", MT / "model_answer")
    first = convert_mt_bench_split(*args)
    assert first.stats.n_contradictions == 1 and len(first.stats.contradictions[0]["judgments"]) == 2
    assert [c[S.F_RATING] for c in first.records[0][S.F_CONVERSATION]] == [1.0, 0.5]  # gpt-4 kept winning turn 1
    dropped = convert_mt_bench_split(*args, on_conflict="drop")
    assert dropped.stats.n_contradictions_dropped == 2 and dropped.stats.n_groups == 1
    assert len(dropped.records[0][S.F_CONVERSATION]) == 1 and dropped.records[0][S.F_TURN] == 2
    with pytest.raises(ConversionError) as ei:
        convert_mt_bench_split(*args, on_conflict="error")
    assert ei.value.line == 3 and ei.value.field == "winner"


# --------------------------------------------------------------------------
# Chatbot Arena
# --------------------------------------------------------------------------
def _conv(*pairs):
    out = []
    for q, a in pairs:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


def test_chatbot_arena(tmp_path):
    rows = [
        {"question_id": "abc", "judge": "arena_user_1", "model_a": "vicuna-13b", "model_b": "koala-13b",
         "winner": "model_b", "turn": 2,
         "conversation_a": _conv(("hi", "hello A"), ("more", "more A")),
         "conversation_b": _conv(("hi", "hello B"), ("more", "more B"))},
        {"question_id": "abc", "judge": "arena_user_1", "model_a": "gpt-4", "model_b": "palm-2",
         "winner": "tie (bothbad)", "turn": 1,
         "conversation_a": _conv(("q", "a1")), "conversation_b": _conv(("q", "b1"))},
        {"question_id": "abc", "judge": "arena_user_1", "model_a": "gpt-4", "model_b": "claude-v1",
         "winner": "model_a", "turn": 1,
         "conversation_a": _conv(("q2", "a2")), "conversation_b": _conv(("q2", "b2"))},
    ]
    f = tmp_path / "arena.jsonl"
    _write_judgments(f, rows)
    records, stats = convert_chatbot_arena(f)
    assert stats.n_groups == 3 and stats.n_multi_turn_groups == 1
    by_model = {(r[S.F_QUESTION_ID], r[S.F_MODEL]): r for r in records}
    assert [c[S.F_RATING] for c in by_model[("abc", "koala-13b")][S.F_CONVERSATION]] == [1.0, 1.0]
    assert [c[S.F_RATING] for c in by_model[("abc", "vicuna-13b")][S.F_CONVERSATION]] == [0.0, 0.0]
    assert by_model[("abc", "koala-13b")][S.F_TURN] == 2
    # the two turn-1 battles share (judge, question, turn): distinct ids, never one group
    turn1 = sorted(r[S.F_QUESTION_ID] for r in records if r[S.F_TURN] == 1)
    assert turn1 == ["abc", "abc", "abc#2", "abc#2"]
    assert {c[S.F_RATING] for r in records if r[S.F_MODEL] == "palm-2" for c in r[S.F_CONVERSATION]} == {0.5}
    rows[0]["turn"] = 3
    _write_judgments(f, rows)
    with pytest.raises(ConversionError) as ei:
        convert_chatbot_arena(f)
    assert (ei.value.line, ei.value.field) == (1, "turn")


# --------------------------------------------------------------------------
# datasets: configuration, prepare_raw, build_jsonl
# --------------------------------------------------------------------------
def test_source_config_defaults_env_and_overrides(tmp_path):
    mt = load_source_config("mt_bench", env={})
    assert mt.kind == "mt_bench_hf" and mt.url.startswith("https://huggingface.co/datasets/lmsys/")
    g = load_source_config("gsm8k", env={})
    # the authors' release archive on Google Drive (link from the GMTRouter README) is the default
    assert g.kind == "gmtrouter_release" and g.path_in_archive == "data/gsm8k"
    assert g.url == "https://drive.google.com/uc?export=download&id=1l-sAXV7i08S9sjJw1_UyvD0mP56QSIKt"
    assert g.filename == "GMTRouter_dataset.tar.gz"
    # without a URL, the error says which key or variable to set
    cfg = tmp_path / "datasets.yaml"
    cfg.write_text("datasets:\n  gsm8k: {kind: gmtrouter_release, path_in_archive: data/gsm8k}\n")
    g = load_source_config("gsm8k", cfg, env={})
    assert g.url is None
    with pytest.raises(SourceError) as ei:
        prepare_raw("gsm8k", g, tmp_path / "raw")
    msg = str(ei.value)
    assert "datasets.gsm8k.url" in msg and "GMTROUTER_GSM8K_URL" in msg and "GMTROUTER_RELEASE_URL" in msg
    env = {"GMTROUTER_RELEASE_URL": "file:///r.tar.gz", "GMTROUTER_MMLU_URL": "file:///m.tar.gz"}
    assert load_source_config("gsm8k", env=env).url == "file:///r.tar.gz"
    assert load_source_config("mmlu", env=env).url == "file:///m.tar.gz"
    assert load_source_config("mmlu", env=env, overrides={"url": "/x.tar.gz", "sha256": None}).url == "/x.tar.gz"
    with pytest.raises(ValueError, match="unknown key 'ulr'"):
        load_source_config("mmlu", overrides={"ulr": "x"})
    with pytest.raises(ValueError, match="unknown dataset"):
        load_source_config("nope")
    desc = load_llm_descriptions()
    assert {"gpt-4", "claude-v1", "llama-13b"} <= set(desc)


def test_missing_local_source_names_the_key(tmp_path):
    src = load_source_config("mt_bench", env={}, overrides={"url": (tmp_path / "nope.parquet").as_uri()})
    with pytest.raises(SourceError, match=r"datasets\.mt_bench\.url.*GMTROUTER_MT_BENCH_URL"):
        prepare_raw("mt_bench", src, tmp_path / "raw")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """mt_bench from the real split-form folder (file:// URL), with a stand-in encoder."""
    tmp = tmp_path_factory.mktemp("mt")
    src = load_source_config("mt_bench", env={}, overrides={"kind": "mt_bench_split", "url": MT.as_uri()})
    raw = prepare_raw("mt_bench", src, tmp / "raw")
    assert raw.path == MT and raw.downloaded is None  # read in place
    enc = HashEncoder()
    return build_jsonl("mt_bench", raw, tmp / "out", enc, seed=0), enc


def test_build_jsonl_splits_per_user(built, converted):
    res, enc = built
    assert res.mode == "converted" and res.encoder_name == enc.name and res.encoder_dim == enc.dim
    doc = json.loads(json.dumps(res.to_dict()))  # plain JSON for asset metadata
    assert doc["conversion"]["n_groups"] == converted.stats.n_groups
    groups = {s: read_groups(p) for s, p in res.paths.items()}
    assert sum(len(g) for g in groups.values()) == converted.stats.n_groups
    train_users = Counter(g.judge for g in groups[S.SPLIT_TRAIN])
    all_users = {g.judge for gs in groups.values() for g in gs}
    assert all_users == set(converted.stats.judges) and set(train_users) == all_users
    assert res.thin_users == {u: n for u, n in sorted(train_users.items()) if n < res.min_user_groups}
    assert "expert_52" in res.thin_users  # 4 judgments -> 2 groups: little history
    for s, gs in groups.items():
        assert res.n_groups[s] == len(gs) and all(len(g) == 2 for g in gs)
        assert res.summaries[s]["dim"] == enc.dim
    # the same split the library function gives for the converter's group order
    users = [g[0][S.F_JUDGE] for g in _groups(converted.records)]
    expected = Counter(split_groups(users, seed=0))
    assert {s: len(gs) for s, gs in groups.items()} == dict(expected)
    # the query embedding is the encoder's embedding of the query text
    rec = groups[S.SPLIT_TEST][0].records[0]
    np.testing.assert_allclose(rec.conversation[0].query_emb, enc.encode([rec.conversation[0].query])[0])


def test_release_archive_copy_and_reembed(built, tmp_path):
    res, enc = built
    archive = tmp_path / "GMTRouter_dataset.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for s, p in res.paths.items():
            tf.add(p, arcname=f"data/mt_bench/{S.SPLIT_FILES[s]}")
    url = archive.as_uri()
    src = load_source_config("mt_bench", env={}, overrides={"kind": "gmtrouter_release", "url": url,
                                                             "path_in_archive": "data/mt_bench"})
    raw = prepare_raw("mt_bench", src, tmp_path / "raw")
    assert raw.path == tmp_path / "raw" / "extracted" / "data" / "mt_bench"
    assert json.loads(json.dumps(raw.to_dict()))["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()

    same = build_jsonl("mt_bench", raw, tmp_path / "copied", HashEncoder())
    assert same.mode == "copied"
    for s in S.SPLITS:
        assert same.paths[s].read_bytes() == res.paths[s].read_bytes()
    assert same.thin_users == res.thin_users

    other = HashEncoder(name="test/other-encoder", dim=16)
    re = build_jsonl("mt_bench", raw, tmp_path / "re", other)
    assert re.mode == "reembedded" and re.encoder_dim == 16
    for s in S.SPLITS:
        a, b = read_groups(res.paths[s]), read_groups(re.paths[s])
        assert [g.key for g in a] == [g.key for g in b]
        ra, rb = a[0].records[0], b[0].records[0]
        assert [(t.query, t.response, t.rating) for t in ra.conversation] == \
               [(t.query, t.response, t.rating) for t in rb.conversation]
        assert rb.encoder == other.name and rb.model_emb.shape == (16,)

    bad = load_source_config("mt_bench", env={}, overrides={"kind": "gmtrouter_release", "url": url,
                                                             "sha256": "0" * 64})
    with pytest.raises(SourceError, match="sha256 mismatch"):
        prepare_raw("mt_bench", bad, tmp_path / "raw2")


def test_demo_raw_and_build(tmp_path):
    src = load_source_config("demo", env={}, overrides={"size": "tiny"})
    raw = prepare_raw("demo", src, tmp_path / "raw")
    assert raw.path.is_file() and (tmp_path / "raw" / "truth.json").is_file()
    res = build_jsonl("demo", raw, tmp_path / "out", HashEncoder())
    for s, p in res.paths.items():
        summary = validate_file(p)
        assert summary.dim == 8 and summary.n_groups == res.n_groups[s] > 0
    assert res.splits[S.SPLIT_TRAIN]["users"] == res.n_users


@pytest.mark.slow
def test_end_to_end_mt_bench_with_default_encoder(tmp_path):
    from gmt_model.data.encoder import get_encoder

    enc = get_encoder(None, cache_dir=tmp_path / "cache")
    src = load_source_config("mt_bench", env={}, overrides={"kind": "mt_bench_split", "url": MT.as_uri()})
    raw = prepare_raw("mt_bench", src, tmp_path / "raw")
    res = build_jsonl("mt_bench", raw, tmp_path / "out", enc)
    assert res.encoder_dim == 384
    for s in S.SPLITS:
        summary = validate_file(res.paths[s], check_query_emb=True)
        assert summary.dim == 384 and summary.encoder == enc.name
        assert summary.n_groups == res.n_groups[s] > 0
    assert sum(res.n_groups.values()) == res.conversion["n_groups"]
