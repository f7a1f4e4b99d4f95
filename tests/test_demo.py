"""Tests for gmt_model.data.splits and gmt_model.data.demo (the planted-preference demo dataset)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gmt_model.data import demo
from gmt_model.data.demo import (
    LLM_DESCRIPTIONS,
    LLMS,
    RAW_FILE,
    TOPICS,
    TRUTH_FILE,
    DemoSpec,
    DemoTruth,
    embed_records,
    generate_conversations,
    write_demo_dataset,
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
    F_TURN,
    SPLIT_FILES,
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VALID,
    SPLITS,
)
from gmt_model.data.splits import split_groups, split_summary, thin_users, user_rng

try:  # the reader is another contributor's module
    from gmt_model.data import jsonl as gmt_data
except ImportError:  # pragma: no cover - only while data.py does not exist
    gmt_data = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
class FakeEncoder:
    """Deterministic hash-based unit vectors; counts how often each text is encoded."""

    name = "fake-hash-encoder"

    def __init__(self, dim: int = 8, fail: bool = False) -> None:
        self.dim = dim
        self.fail = fail
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.fail:
            raise RuntimeError("encoder failure (test)")
        self.calls.append(list(texts))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


def groups_of(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs of consecutive records sharing (question_id, turn, judge)."""
    out: list[list[dict[str, Any]]] = []
    for rec in records:
        key = (rec[F_QUESTION_ID], rec[F_TURN], rec[F_JUDGE])
        if out and (out[-1][0][F_QUESTION_ID], out[-1][0][F_TURN], out[-1][0][F_JUDGE]) == key:
            out[-1].append(rec)
        else:
            out.append([rec])
    return out


def pair_outcomes(groups: list[list[dict[str, Any]]], truth: DemoTruth):
    """Yield (taste, topic, model_a, model_b, score_a) for every pair at every step."""
    for g in groups:
        taste = truth.user_taste[g[0][F_JUDGE]]
        topic = g[0]["topic"]
        for a, b in itertools.combinations(g, 2):
            for ta, tb in zip(a[F_CONVERSATION], b[F_CONVERSATION]):
                ra, rb = ta[F_RATING], tb[F_RATING]
                yield taste, topic, a[F_MODEL], b[F_MODEL], 1.0 if ra > rb else 0.0 if ra < rb else 0.5


@pytest.fixture(scope="module")
def small() -> tuple[list[dict[str, Any]], DemoTruth]:
    return generate_conversations(DemoSpec.preset("small"))


@pytest.fixture(scope="module")
def tiny() -> tuple[list[dict[str, Any]], DemoTruth]:
    return generate_conversations("tiny")


# --------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------
def _users_with_counts(counts: dict[str, int], seed: int = 7) -> list[str]:
    users = [u for u, n in counts.items() for _ in range(n)]
    order = np.random.default_rng(seed).permutation(len(users))
    return [users[i] for i in order]


def test_split_groups_deterministic_and_seed_dependent() -> None:
    users = _users_with_counts({f"u{i}": 3 + i % 17 for i in range(60)})
    a = split_groups(users, seed=3)
    b = split_groups(users, seed=3)
    c = split_groups(users, seed=4)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    assert set(a.tolist()) <= set(SPLITS)


def test_split_per_user_constraints() -> None:
    counts = {f"user{n:02d}": n for n in range(1, 31)}
    users = _users_with_counts(counts)
    splits = split_groups(users, fractions=(0.7, 0.1, 0.2), seed=0)
    per_user: dict[str, Counter[str]] = defaultdict(Counter)
    for u, s in zip(users, splits):
        per_user[u][s] += 1
    for u, n in counts.items():
        c = per_user[u]
        assert sum(c.values()) == n
        if n == 1:
            assert c == Counter({SPLIT_TRAIN: 1})
        elif n == 2:
            assert c == Counter({SPLIT_TRAIN: 1, SPLIT_TEST: 1})
        else:
            assert c[SPLIT_TRAIN] >= 1
            assert c[SPLIT_VALID] in (math.floor(0.1 * n), math.ceil(0.1 * n)), (u, c)
            assert c[SPLIT_TEST] in (math.floor(0.2 * n), math.ceil(0.2 * n)), (u, c)


def test_split_fractions_hold_overall_even_for_small_users() -> None:
    users = _users_with_counts({f"u{i}": 3 + i % 5 for i in range(3000)})
    splits = split_groups(users, seed=1)
    frac = {s: float(np.mean(splits == s)) for s in SPLITS}
    assert abs(frac[SPLIT_TRAIN] - 0.7) < 0.02
    assert abs(frac[SPLIT_VALID] - 0.1) < 0.02
    assert abs(frac[SPLIT_TEST] - 0.2) < 0.02


def test_split_of_a_user_ignores_other_users() -> None:
    base = _users_with_counts({"alice": 12, "bob": 9})
    more = base + ["carol"] * 7 + ["dave"] * 4
    a = split_groups(base, seed=5)
    b = split_groups(more, seed=5)
    assert a.tolist() == b[: len(base)].tolist()


def test_split_does_not_depend_on_python_hash_seed() -> None:
    users = _users_with_counts({f"user-{i}": 2 + i % 9 for i in range(40)})
    code = (
        "import json,sys; from gmt_model.data.splits import split_groups; "
        "u=json.load(sys.stdin); print(json.dumps(split_groups(u, seed=11).tolist()))"
    )
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        res = subprocess.run(
            [sys.executable, "-c", code], input=json.dumps(users), capture_output=True, text=True,
            cwd=REPO, env=env, check=True,
        )
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1] == split_groups(users, seed=11).tolist()


def test_user_rng_stable() -> None:
    assert user_rng(0, "u").random() == user_rng(0, "u").random()
    assert user_rng(0, "u").random() != user_rng(1, "u").random()


def test_split_fraction_validation() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        split_groups(["a"], fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="training fraction"):
        split_groups(["a"], fractions=(0.0, 0.5, 0.5))
    with pytest.raises(ValueError, match="training, valid, test"):
        split_groups(["a"], fractions=(0.9, 0.1))
    with pytest.raises(TypeError, match=r"group_users\[1\]"):
        split_groups(["a", 3])  # type: ignore[list-item]


def test_two_group_user_without_test_fraction_goes_to_valid() -> None:
    splits = split_groups(["a", "a"], fractions=(0.8, 0.2, 0.0))
    assert sorted(splits.tolist()) == [SPLIT_TRAIN, SPLIT_VALID]


def test_thin_users_and_summary() -> None:
    users = ["a"] * 1 + ["b"] * 2 + ["c"] * 20
    splits = split_groups(users, seed=0)
    thin = thin_users(users, splits, min_training_groups=3)
    assert thin == {"a": 1, "b": 1}
    assert thin_users(users, splits, min_training_groups=1) == {}
    summary = split_summary(users, splits)
    assert sum(v["groups"] for v in summary.values()) == len(users)
    assert summary[SPLIT_TRAIN]["users"] == 3
    with pytest.raises(ValueError, match="unknown split"):
        thin_users(["a"], ["train"])


# --------------------------------------------------------------------------
# demo: raw generation
# --------------------------------------------------------------------------
def test_generation_is_deterministic_and_seeded(tiny) -> None:
    again, truth2 = generate_conversations("tiny")
    assert again == tiny[0]
    assert truth2.to_json() == tiny[1].to_json()
    other, _ = generate_conversations(DemoSpec.preset("tiny", seed=1))
    assert other != tiny[0]


def test_tiny_size_and_record_shape(tiny) -> None:
    records, truth = tiny
    interactions = sum(len(r[F_CONVERSATION]) for r in records)
    assert 4000 <= interactions <= 6500
    for rec in records:
        assert rec[F_MODEL] in LLMS and rec["topic"] in TOPICS
        assert rec[F_TURN] == len(rec[F_CONVERSATION]) and 1 <= rec[F_TURN] <= 3
        for t in rec[F_CONVERSATION]:
            assert 1.0 <= t[F_RATING] <= 5.0 and (2 * t[F_RATING]).is_integer()
            assert t[F_QUERY] and t["response"]
    assert set(truth.user_taste.values()) == set(range(4))
    assert {r[F_TURN] for r in records} == {1, 2, 3}


def test_group_keys_consecutive_unique_and_consistent(tiny) -> None:
    records, _ = tiny
    groups = groups_of(records)
    keys = [(g[0][F_QUESTION_ID], g[0][F_TURN], g[0][F_JUDGE]) for g in groups]
    assert len(keys) == len(set(keys))  # no key reappears later: groups are consecutive
    qids = [k[0] for k in keys]
    assert len(qids) == len(set(qids))  # question ids unique per group
    sizes = Counter(len(g) for g in groups)
    assert set(sizes) == {2, 3} and sizes[2] > sizes[3]
    for g in groups:
        assert len({r[F_MODEL] for r in g}) == len(g)
        assert len({r["topic"] for r in g}) == 1
        queries = [[t[F_QUERY] for t in r[F_CONVERSATION]] for r in g]
        assert all(q == queries[0] for q in queries)
        # responses differ by model
        assert len({r[F_CONVERSATION][0]["response"] for r in g}) == len(g)


def test_users_with_little_history_exist(tiny, small) -> None:
    for records, truth in (tiny, small):
        per_user = Counter(g[0][F_JUDGE] for g in groups_of(records))
        assert set(per_user) == set(truth.user_taste)
        light = [u for u, n in per_user.items() if 2 <= n <= 5]
        assert len(light) >= 0.1 * len(per_user)
        assert max(per_user.values()) > 10


def test_planted_preferences_visible_per_taste_but_cancel_when_pooled(small) -> None:
    records, truth = small
    outcomes = list(pair_outcomes(groups_of(records), truth))
    own_w = own_n = pool_w = pool_n = 0.0
    for taste, topic, ma, mb, sa in outcomes:
        for tg in range(len(set(truth.user_taste.values()))):
            fav = truth.preferred_llm(tg, topic)
            for m, s in ((ma, sa), (mb, 1.0 - sa)):
                if m == fav:
                    pool_w += s
                    pool_n += 1
                    if tg == taste:
                        own_w += s
                        own_n += 1
    assert own_n > 500
    assert own_w / own_n > 0.8  # a taste group's favourite wins within that group
    assert abs(pool_w / pool_n - 0.5) < 0.08  # pooled over groups it is a coin flip
    # the matrix itself cancels over taste groups
    np.testing.assert_allclose(truth.pref.sum(axis=0), 0.0, atol=1e-9)


def test_user_blind_predictor_does_poorly_held_out(small) -> None:
    """Majority per (topic, LLM pair) vs per (taste, topic, LLM pair), fitted on half the groups."""
    records, truth = small
    groups = groups_of(records)

    def canon(o: tuple) -> tuple:  # order each pair's models by name
        taste, topic, a, b, s = o
        return o if a < b else (taste, topic, b, a, 1.0 - s)

    fit = [canon(o) for o in pair_outcomes(groups[0::2], truth)]
    held = [canon(o) for o in pair_outcomes(groups[1::2], truth) if o[4] != 0.5]

    def accuracy(key) -> float:
        votes: dict[Any, float] = defaultdict(float)
        for o in fit:
            votes[key(o)] += o[4] - 0.5
        return float(np.mean([(votes[key(o)] >= 0) == (o[4] == 1.0) for o in held]))

    blind = accuracy(lambda o: (o[1], o[2], o[3]))
    personal = accuracy(lambda o: (o[0], o[1], o[2], o[3]))
    assert personal > 0.72
    assert blind < 0.62
    assert personal - blind > 0.15


def test_tie_fraction_is_realistic(small) -> None:
    outcomes = [o[4] for o in pair_outcomes(groups_of(small[0]), small[1])]
    ties = np.mean(np.asarray(outcomes) == 0.5)
    assert 0.07 < ties < 0.18


def test_truth_round_trip(tiny) -> None:
    truth = tiny[1]
    back = DemoTruth.from_dict(json.loads(truth.to_json()))
    assert back.to_json() == truth.to_json()
    assert back.pref.shape == (4, len(TOPICS), len(LLMS))


def test_presets_and_spec_validation() -> None:
    sizes = {name: DemoSpec.preset(name) for name in ("tiny", "small", "medium", "large")}
    means = [s.n_users * s.n_groups_per_user for s in sizes.values()]
    assert means == sorted(means)
    with pytest.raises(ValueError, match="unknown demo size"):
        DemoSpec.preset("huge")
    with pytest.raises(ValueError, match="n_taste_groups"):
        DemoSpec(n_users=3, n_groups_per_user=5, n_taste_groups=1)
    with pytest.raises(ValueError, match="turn_probs"):
        DemoSpec(n_users=3, n_groups_per_user=5, turn_probs=(0.5, 0.5, 0.5))


def test_unique_query_count_is_bounded() -> None:
    counts = demo.unique_query_count("tiny")
    assert 0 < counts["unique_queries"] <= counts["template_space"] < 10_000


# --------------------------------------------------------------------------
# demo: embedding and writing
# --------------------------------------------------------------------------
def test_embed_records_encodes_each_text_once(tiny) -> None:
    records = tiny[0][:60]
    fake = FakeEncoder()
    out = embed_records(records, fake)
    encoded = [t for call in fake.calls for t in call]
    assert len(encoded) == len(set(encoded))  # every distinct text once
    distinct = {t[F_QUERY] for r in records for t in r[F_CONVERSATION]}
    assert distinct <= set(encoded)
    assert {LLM_DESCRIPTIONS[r[F_MODEL]] for r in records} <= set(encoded)
    assert records[0].get(F_MODEL_EMB) is None  # input not modified
    for rec, raw in zip(out, records):
        assert rec[F_ENCODER] == fake.name and len(rec[F_MODEL_EMB]) == fake.dim
        assert rec["topic"] == raw["topic"]
        for t, rt in zip(rec[F_CONVERSATION], raw[F_CONVERSATION]):
            expected = fake.encode([rt[F_QUERY]])[0]
            assert np.array_equal(np.asarray(t[F_QUERY_EMB], dtype=np.float32), expected)
    with pytest.raises(ValueError, match="no description for model"):
        embed_records([{**records[0], F_MODEL: "unknown-llm"}], fake)


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from gmt_model.data.encoder import Encoder

    cache = tmp_path_factory.mktemp("emb-cache")
    first = tmp_path_factory.mktemp("demo-a")
    second = tmp_path_factory.mktemp("demo-b")
    write_demo_dataset(first, "tiny", encoder=Encoder(cache_dir=cache))  # computes, fills the cache
    write_demo_dataset(second, "tiny", encoder=Encoder(cache_dir=cache))  # reads the cache
    return first, second, cache


def test_write_is_byte_identical(real_dataset) -> None:
    first, second, _ = real_dataset
    a, b = _file_bytes(first), _file_bytes(second)
    assert set(a) == {*SPLIT_FILES.values(), RAW_FILE, TRUTH_FILE}
    assert a == b


def test_written_splits_read_back(real_dataset, tiny) -> None:
    if gmt_data is None:  # pragma: no cover
        pytest.skip("gmt_model.data.jsonl is not available")
    folder = real_dataset[0]
    records, truth = tiny
    stats = json.loads((folder / TRUTH_FILE).read_text())["stats"]
    raw = [json.loads(line) for line in (folder / RAW_FILE).read_text().splitlines()]
    raw_split = {(r[F_QUESTION_ID], r[F_TURN], r[F_JUDGE]): r["split"] for r in raw}

    seen_keys: dict[tuple, str] = {}
    users_by_split: dict[str, set[str]] = {}
    n_records = 0
    for split, name in SPLIT_FILES.items():
        groups = gmt_data.read_groups(folder / name, check_query_emb=True, rating_scale=(1, 5))
        users_by_split[split] = {g.judge for g in groups}
        for g in groups:
            assert g.key not in seen_keys  # a group never straddles splits
            seen_keys[g.key] = split
            assert raw_split[g.key] == split
            for rec in g.records:
                n_records += 1
                assert rec.encoder == "sentence-transformers/all-MiniLM-L6-v2"
                assert rec.dim == 384
                np.testing.assert_allclose(np.linalg.norm(rec.model_emb), 1.0, atol=1e-5)
    assert n_records == len(records) == stats["records"]
    assert len(seen_keys) == stats["groups"] == len(raw_split)
    # every user keeps history in training; most users also appear in test
    assert users_by_split[SPLIT_TRAIN] == set(truth.user_taste)
    assert len(users_by_split[SPLIT_TEST]) >= 0.9 * len(truth.user_taste)
    assert 0.05 < stats["tie_fraction"] < 0.2
    assert stats["unique_queries"] == len({t[F_QUERY] for r in records for t in r[F_CONVERSATION]})


def test_raw_file_matches_generate_conversations(real_dataset, tiny) -> None:
    raw = [json.loads(line) for line in (real_dataset[0] / RAW_FILE).read_text().splitlines()]
    stripped = [{k: v for k, v in r.items() if k != "split"} for r in raw]
    assert stripped == tiny[0]
    truth = json.loads((real_dataset[0] / TRUTH_FILE).read_text())
    assert truth["user_taste"] == tiny[1].user_taste
    assert truth["spec"]["n_users"] == DemoSpec.preset("tiny").n_users


def test_failed_write_leaves_previous_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = replace(DemoSpec.preset("tiny"), n_users=8, n_groups_per_user=6)
    write_demo_dataset(tmp_path, spec, encoder=FakeEncoder())
    before = _file_bytes(tmp_path)
    with pytest.raises(RuntimeError, match="encoder failure"):
        write_demo_dataset(tmp_path, replace(spec, seed=9), encoder=FakeEncoder(fail=True))
    assert _file_bytes(tmp_path) == before  # untouched, no temporary files left

    # fail late: the three splits are already written (to temporary names) when the raw file breaks
    calls = []

    def broken_dumps(obj: Any) -> str:
        calls.append(1)
        if len(calls) > 5:
            raise OSError("disk full (test)")
        return json.dumps(obj)

    monkeypatch.setattr(demo, "_dumps", broken_dumps)
    with pytest.raises(OSError, match="disk full"):
        write_demo_dataset(tmp_path, replace(spec, seed=9), encoder=FakeEncoder())
    assert calls
    assert _file_bytes(tmp_path) == before
    monkeypatch.undo()

    class BadWidth(FakeEncoder):
        def encode(self, texts: list[str]) -> np.ndarray:
            return super().encode(texts)[:, : 4 if len(texts) < 6 else 8]

    with pytest.raises(ValueError, match="several widths"):
        write_demo_dataset(tmp_path, replace(spec, seed=9), encoder=BadWidth())
    assert _file_bytes(tmp_path) == before


def test_seed_argument_changes_data(tmp_path: Path) -> None:
    spec = replace(DemoSpec.preset("tiny"), n_users=8, n_groups_per_user=6)
    a = write_demo_dataset(tmp_path / "a", spec, encoder=FakeEncoder())
    b = write_demo_dataset(tmp_path / "b", spec, encoder=FakeEncoder(), seed=1)
    assert a["training"].read_bytes() != b["training"].read_bytes()
    assert json.loads(b["truth"].read_text())["spec"]["seed"] == 1


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], real_dataset) -> None:
    assert demo.main(["--size", "tiny", "--out", str(tmp_path / "x"), "--count-only"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["size"] == "tiny" and counts["unique_queries"] > 0
    out = tmp_path / "cli"
    # the module fixture's cache holds every tiny text, so this run embeds nothing new
    assert demo.main(["--size", "tiny", "--out", str(out), "--cache-dir", str(real_dataset[2])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stats"]["groups"] > 0
    assert _file_bytes(out) == _file_bytes(real_dataset[0])
