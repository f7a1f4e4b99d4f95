"""Graph store: schema, JSONL -> tables, Parquet round trip, edges, visibility, integrity."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gmt_model.method import schema as S
from gmt_model.method.graph import GRAPH_TABLES, GraphIntegrityError, read_graph, relation_edges
from gmt_model.data.graph_files import build_graph

from conftest import write_records


def test_schema_relation_sets():
    assert len(S.FULL_RELATIONS) == 22
    assert len(set(S.FULL_RELATIONS)) == 22
    assert set(S.REFERENCE_RELATIONS) <= set(S.FULL_RELATIONS)
    assert len(S.REFERENCE_RELATIONS) == 5
    # every relation joins known node types
    for src, _, dst in S.FULL_RELATIONS:
        assert src in S.NODE_TYPES and dst in S.NODE_TYPES
    assert S.resolve_relations("full") == S.FULL_RELATIONS
    assert S.resolve_relations(["user__own__session", "session__owned_by__user"]) == (
        S.USER_OWN_SESSION, S.SESSION_OWNED_BY_USER)
    with pytest.raises(ValueError, match="unknown relation"):
        S.resolve_relations(["user__likes__llm"])
    with pytest.raises(ValueError, match="unknown relation set"):
        S.resolve_relations("everything")


def _rec(judge, model, qid, turn, ratings, emb_seed=0, dim=4):
    rng = np.random.default_rng(emb_seed)
    conv = [{"query": f"q{qid}-{t}", "query_emb": rng.normal(size=dim).round(4).tolist(), "response": f"{model} says",
             "rating": r} for t, r in enumerate(ratings)]
    return {"judge": judge, "model": model, "question_id": qid, "turn": turn, "conversation": conv,
            "model_emb": [float(ord(model[-1]))] * dim, "encoder": "test-encoder"}


@pytest.fixture
def small_paths(tmp_path):
    training = [
        # two-turn group, K=2 -> 2 interactions per record, pairs at both steps
        _rec("alice", "ma", "1", 2, [5, 1], emb_seed=1), _rec("alice", "mb", "1", 2, [3, 4], emb_seed=1),
        # K=3 single-turn group -> 3 pairs, one of them a tie
        _rec("bob", "ma", "2", 1, [2], emb_seed=2), _rec("bob", "mb", "2", 1, [2], emb_seed=2),
        _rec("bob", "mc", "2", 1, [0], emb_seed=2),
    ]
    test = [_rec("alice", "mc", "3", 1, [1], emb_seed=3), _rec("alice", "ma", "3", 1, [4], emb_seed=3)]
    return write_records(tmp_path / "data", {"training": training, "test": test})


def test_build_counts_pairs_labels(small_paths):
    g = build_graph(small_paths)
    assert g.user_ids == ["alice", "bob"]
    assert g.llm_names == ["ma", "mb", "mc"]
    assert g.num_interactions == 4 + 3 + 2
    assert g.encoder == "test-encoder"
    assert (g.rating_min, g.rating_max) == (0.0, 5.0)
    np.testing.assert_allclose(g.rating[:4], [1.0, 0.2, 0.6, 0.8])
    # multi-turn link: step 1 of each record points to its step 0
    assert g.prev[:4].tolist() == [-1, 0, -1, 2]
    # pairs: 2 steps x 1 + 3 + 1
    assert g.pair_a.size == 6
    labels = {(g.user_ids[g.user[a]], g.llm_names[g.llm[a]], g.llm_names[g.llm[b]], int(g.step[a])): float(lbl)
              for a, b, lbl in zip(g.pair_a, g.pair_b, g.pair_label)}
    assert labels[("alice", "ma", "mb", 0)] == 1.0
    assert labels[("alice", "ma", "mb", 1)] == 0.0
    assert labels[("bob", "ma", "mb", 0)] == 0.5  # a tie
    assert labels[("bob", "ma", "mc", 0)] == 1.0
    assert labels[("alice", "mc", "ma", 0)] == 0.0
    assert g.counts()["pairs_test"] == 1
    assert g.check() == []


def test_edges_follow_visibility(small_paths):
    g = build_graph(small_paths, relations="full")
    visible = np.array([0, 2])  # step 0 of both alice records
    src, dst = relation_edges(g, S.SESSION_PREV_SESSION, visible)
    assert src.size == 0  # step 1 not visible -> no multi-turn edge
    src, dst = relation_edges(g, S.SESSION_PREV_SESSION, np.array([0, 1]))
    assert (src.tolist(), dst.tolist()) == ([1], [0])
    src, dst = relation_edges(g, S.SESSION_NEXT_SESSION, np.array([0, 1]))
    assert (src.tolist(), dst.tolist()) == ([0], [1])
    src, dst = relation_edges(g, S.SESSION_OWNED_BY_USER, visible)
    assert dst.tolist() == [0, 0] and src.tolist() == [0, 2]
    src, dst = relation_edges(g, S.LLM_RESPONSE_TO_SESSION, visible)
    assert src.tolist() == [0, 1]


def test_heterodata_hides_unseen_ratings(small_paths):
    g = build_graph(small_paths, relations="full")
    vis = g.split_mask(S.SPLIT_TRAIN)
    data = g.to_heterodata(vis)
    assert data[S.RESPONSE].rating[~vis].abs().sum() == 0
    assert data[S.RESPONSE].rating[vis].sum() > 0
    for rel in S.FULL_RELATIONS:
        ei = data[rel].edge_index
        for end, row in ((rel[0], ei[0]), (rel[2], ei[1])):
            if end in S.INTERACTION_NODE_TYPES and ei.numel():
                assert vis[row.numpy()].all(), f"{rel} touches a hidden interaction"
    assert set(data.edge_types) == set(S.FULL_RELATIONS)


def test_parquet_round_trip_and_atomic_rewrite(small_paths, tmp_path, monkeypatch):
    g = build_graph(small_paths, relations="full")
    out = g.write_parquet(tmp_path / "graph")
    # only the tables read_graph reads: no edge tables (derived on read), no sessions/queries/responses tables
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{t}.parquet" for t in GRAPH_TABLES] + [S.META_FILE])
    import pyarrow.parquet as pq

    q = pq.read_table(out / "texts.parquet")
    assert str(q.schema.field(S.C_EMBEDDING).type) == "fixed_size_list<element: float>[4]"
    assert q.num_rows == g.num_texts < g.num_interactions  # query texts stored once
    h = read_graph(out)
    for name in ("user", "llm", "group", "record", "step", "turn", "split", "rating", "raw_rating", "prev", "line",
                 "query_row", "text_emb", "llm_emb", "pair_a", "pair_b", "pair_label"):
        np.testing.assert_array_equal(getattr(h, name), getattr(g, name), err_msg=name)
        assert getattr(h, name).dtype == getattr(g, name).dtype, name
    np.testing.assert_array_equal(h.query_emb, g.query_emb)
    assert h.user_ids == g.user_ids and h.llm_names == g.llm_names and h.query_text == g.query_text
    assert h.question_id == g.question_id and h.response_text == g.response_text
    # zero-copy: the numeric columns are read-only views of Arrow's (memory-mapped) buffers, not copies
    assert not h.user.flags.writeable and not h.text_emb.flags.writeable and not h.pair_a.flags.writeable
    assert h.relations == S.FULL_RELATIONS

    # a failing rewrite leaves the previous graph intact and no temporary folders behind
    before = sorted(os.listdir(out))

    def boom(self, d):
        (d / "partial.parquet").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(type(g), "_write_tables", boom)
    with pytest.raises(OSError, match="disk full"):
        g.write_parquet(out)
    assert sorted(os.listdir(out)) == before
    assert [p.name for p in tmp_path.iterdir()] == ["graph"] or all(
        not p.name.startswith(".graph") for p in tmp_path.iterdir())
    read_graph(out)


def test_integrity_errors_are_reported(small_paths, tmp_path):
    g = build_graph(small_paths)
    g.user[0] = 99
    assert any("user index out of range" in p for p in g.check())
    g = build_graph(small_paths)
    out = g.write_parquet(tmp_path / "graph")
    meta = json.loads((out / S.META_FILE).read_text())
    (out / f"{S.T_PAIRS}.parquet").unlink()
    with pytest.raises(GraphIntegrityError, match="missing table pairs.parquet"):
        read_graph(out)
    assert meta["counts"]["user"] == 2


def test_embedding_width_mismatch_between_splits(small_paths, tmp_path):
    bad = [_rec("carol", "ma", "9", 1, [1], dim=6), _rec("carol", "mb", "9", 1, [2], dim=6)]
    paths = dict(small_paths)
    paths["valid"] = write_records(tmp_path / "v", {"valid": bad})["valid"]
    with pytest.raises(ValueError, match=r"valid_set.jsonl:1: field 'model_emb': expected width 4"):
        build_graph(paths)


def test_no_receiver_is_an_integrity_problem(small_paths):
    g = build_graph(small_paths, relations=["query__included_by__session"])
    assert any("'user' receives no messages" in p for p in g.check())


def test_index_map_equals_a_dense_local_index():
    """IndexMap gives what a table-sized array ``local[keys] = arange`` gives, for sorted,
    unsorted and empty keys, arrays and scalars."""
    from gmt_model.method.graph import IndexMap

    rng = np.random.default_rng(0)
    n = 1000
    for keys in (np.sort(rng.choice(n, 300, replace=False)), rng.choice(n, 300, replace=False),
                 np.zeros(0, np.int64), np.array([7])):
        dense = np.full(n, -1, dtype=np.int64)
        dense[keys] = np.arange(keys.size)
        m = IndexMap(keys)
        q = rng.integers(0, n, 500)
        np.testing.assert_array_equal(m[q], dense[q])
        np.testing.assert_array_equal(m[np.arange(n)], dense)
        assert int(m[int(q[0])]) == dense[q[0]]
