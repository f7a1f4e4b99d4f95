"""A (question_id, turn, judge) key that comes back later in a file is a separate comparison.

Real MT-Bench votes have this shape: one judge compares several model pairs on
the same question, with other judges' votes in between.  The reference reader
groups *consecutive* records only, so each run is its own group; these tests
check that the reader, the graph, evaluation grouping and the dataset builder
all keep such groups apart (built from the real votes in
../shared/data/mt_bench_human/).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gmt_model.method import schema as S
from gmt_model.data.jsonl import read_groups, validate_file
from gmt_model.data.datasets import RawResult, _separate_equal_keys, build_jsonl
from gmt_model.method.engine import group_steps
from gmt_model.data.graph_files import build_graph

MT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mt_bench_human"
DIM = 8
SCORE = {"model_a": (1.0, 0.0), "model_b": (0.0, 1.0), "tie": (0.5, 0.5)}


class HashEncoder:
    """Deterministic stand-in encoder (sha256 of the text -> unit vector)."""

    name, dim = "test/hash-encoder", DIM

    def encode(self, texts):
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=DIM)
            out[i] = v / np.linalg.norm(v)
        return out


def _emb(text: str) -> list[float]:
    return [float(x) for x in HashEncoder().encode([text])[0]]


def _key(v: dict) -> tuple[str, int, str]:
    return (str(v["question_id"]), int(v["turn"]), v["judge"])


def real_votes(questions: range) -> list[dict]:
    """Real MT-Bench votes on ``questions`` in file order, leaving out votes that directly
    follow a vote with the same key (two such runs read back as one group, in the
    reference too), so every vote is one group."""
    path = MT / "human_judgments.jsonl"
    if not path.is_file():
        pytest.skip("real MT-Bench data not found at ../shared/data/mt_bench_human")
    votes = [v for v in map(json.loads, path.read_text().splitlines()) if v["question_id"] in questions]
    out: list[dict] = []
    for v in votes:
        if not out or _key(out[-1]) != _key(v):
            out.append(v)
    return out


def release_records(votes: list[dict], embed: bool = True) -> list[dict[str, Any]]:
    """Two records per vote, question id and turn unchanged (the shape of the authors' release)."""
    recs = []
    for v in votes:
        query = f"question {v['question_id']} turn {v['turn']}"
        for model, rating in zip((v["model_a"], v["model_b"]), SCORE[v["winner"]]):
            turn: dict[str, Any] = {S.F_QUERY: query, S.F_RESPONSE: f"{model} on {query}", S.F_RATING: rating}
            rec: dict[str, Any] = {S.F_JUDGE: v["judge"], S.F_MODEL: model, S.F_QUESTION_ID: v["question_id"],
                                   S.F_TURN: v["turn"], S.F_CONVERSATION: [turn]}
            if embed:
                turn[S.F_QUERY_EMB] = _emb(query)
                rec[S.F_MODEL_EMB] = _emb(model)
            recs.append(rec)
    return recs


def write(path: Path, recs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def repeated(votes: list[dict]) -> int:
    seen: set = set()
    n = 0
    for v in votes:
        n += _key(v) in seen
        seen.add(_key(v))
    return n


@pytest.fixture(scope="module")
def release_splits(tmp_path_factory) -> tuple[dict[str, Path], dict[str, list[dict]]]:
    d = tmp_path_factory.mktemp("release")
    votes = {S.SPLIT_TRAIN: real_votes(range(81, 101)), S.SPLIT_VALID: real_votes(range(101, 106)),
             S.SPLIT_TEST: real_votes(range(106, 111))}
    paths = {s: write(d / S.SPLIT_FILES[s], release_records(v)) for s, v in votes.items()}
    return paths, votes


def test_reader_one_group_per_vote_and_counts_repeats(release_splits):
    paths, votes = release_splits
    for s, p in paths.items():
        groups = read_groups(p)
        assert [(g.key, tuple(r.model for r in g.records)) for g in groups] == \
               [(_key(v), (v["model_a"], v["model_b"])) for v in votes[s]]
        summary = validate_file(p)
        assert summary.n_groups == len(votes[s]) and summary.n_pairs == len(votes[s])
        assert summary.n_repeated_keys == repeated(votes[s])
    assert repeated(votes[S.SPLIT_TRAIN]) > 20  # the real data has this shape a lot


def test_graph_and_evaluation_keep_repeated_keys_apart(release_splits):
    paths, votes = release_splits
    g = build_graph(paths)
    all_votes = [v for s in S.SPLITS for v in votes[s]]
    assert g.num_groups == len(all_votes)
    assert np.array_equal(np.bincount(g.group), np.full(len(all_votes), 2))  # two interactions per group
    assert g.pair_a.size == len(all_votes)  # one comparison per vote: no pairs across votes
    pairs = [(g.user_ids[g.user[a]], g.llm_names[g.llm[a]], g.llm_names[g.llm[b]]) for a, b in zip(g.pair_a, g.pair_b)]
    assert pairs == [(v["judge"], v["model_a"], v["model_b"]) for v in all_votes]
    # evaluation scores one row per (group, step): one per test vote, two candidates each
    gs = group_steps(g, np.flatnonzero(g.split_mask(S.SPLIT_TEST)))
    assert gs.size == len(votes[S.SPLIT_TEST]) and gs.mask.sum(axis=1).tolist() == [2] * gs.size


def test_release_splits_copied_and_reembedded(release_splits, tmp_path):
    paths, votes = release_splits
    src = paths[S.SPLIT_TRAIN].parent
    raw = RawResult(dataset="mt_bench", kind="jsonl_splits", path=src)
    res = build_jsonl("mt_bench", raw, tmp_path / "re", HashEncoder(), llm_descriptions={})
    assert res.mode == "reembedded"  # the fixture has no `encoder` field
    for s in S.SPLITS:
        assert res.n_groups[s] == len(votes[s])
        assert res.summaries[s]["n_repeated_keys"] == repeated(votes[s])
        assert [g.key for g in read_groups(res.paths[s])] == [_key(v) for v in votes[s]]


def test_build_jsonl_never_writes_twin_groups_next_to_each_other(tmp_path):
    """Converted records with repeated keys: after the per-user split, twins must not touch."""
    votes = real_votes(range(81, 121))
    raw = write(tmp_path / "raw.jsonl", release_records(votes, embed=False))
    res = build_jsonl("demo", RawResult(dataset="demo", kind="demo", path=raw), tmp_path / "out", HashEncoder(),
                      llm_descriptions={}, seed=3)
    written: Counter = Counter()
    for s in S.SPLITS:
        groups = read_groups(res.paths[s])
        written.update((g.key, tuple(r.model for r in g.records)) for g in groups)
        assert validate_file(res.paths[s]).n_groups == res.n_groups[s]
    assert written == Counter((_key(v), (v["model_a"], v["model_b"])) for v in votes)


@pytest.mark.parametrize("keys", [
    "ab", "aab", "aabb", "abcabc", "aaabbbccc", "abbbc", "aabbb", "bbbaa", "aabbbcc", "abcc", "ccba", "aaaabbbbcc",
])
def test_separate_equal_keys(keys):
    order = list(range(len(keys)))
    out = _separate_equal_keys(order, [(c, 1, "u1") for c in keys], "training")
    assert sorted(out) == order
    assert all(keys[a] != keys[b] for a, b in zip(out, out[1:])), [keys[i] for i in out]
    if all(keys[a] != keys[b] for a, b in zip(order, order[1:])):
        assert out == order  # already apart: order kept


@pytest.mark.parametrize("keys", ["aa", "aaab", "abaa", "baaaa"])
def test_separate_equal_keys_impossible(keys):
    with pytest.raises(ValueError, match="read back as one group"):
        _separate_equal_keys(list(range(len(keys))), [(c, 1, "u1") for c in keys], "valid")
