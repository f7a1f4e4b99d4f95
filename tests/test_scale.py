"""The columnar data path at scale: the demo straight into the interactions table, the
deduplicated text table, one rating normalisation, the Parquet graph, History, and the
scale benchmark's output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gmt_model.method import schema as S
from gmt_model.method.checkpoint import History, load_checkpoint, save_checkpoint
from gmt_model.data.demo import DemoSpec, HashedEncoder, demo_columns, demo_graph, write_demo_dataset
from gmt_model.method.graph import GRAPH_TABLES, from_columns, normalise_ratings, pair_labels, read_graph
from gmt_model.data.graph_files import build_graph
from gmt_model.method.model import GMTModel, ModelConfig

REPO = Path(__file__).resolve().parents[1]


def test_normalise_ratings_zero_span_and_range():
    np.testing.assert_array_equal(normalise_ratings(np.array([1.0, 3.0, 5.0]), 1.0, 5.0), [0.0, 0.5, 1.0])
    # a scale of zero span (every rating equal): 0.5, "neither good nor bad", for every value
    np.testing.assert_array_equal(normalise_ratings(np.array([4.0, 4.0]), 4.0, 4.0), [0.5, 0.5])
    assert normalise_ratings(np.array([7.0]), 4.0, 4.0).dtype == np.float32
    np.testing.assert_array_equal(normalise_ratings(np.array([0.0, 9.0]), 1.0, 5.0), [0.0, 1.0])  # clipped
    np.testing.assert_array_equal(pair_labels(np.array([2, 1, 3]), np.array([1, 2, 3])), [1.0, 0.0, 0.5])


def test_graph_with_one_rating_value_is_all_ties():
    cols, _ = demo_columns(DemoSpec(n_users=6, n_groups_per_user=4.0), HashedEncoder(16))
    cols["raw_rating"] = np.full_like(cols["raw_rating"], 3.0)
    g = from_columns(**cols)
    assert (g.rating_min, g.rating_max) == (3.0, 3.0)
    assert (g.rating == 0.5).all() and (g.pair_label == 0.5).all() and not g.check()
    assert g.normalise(np.array([3.0]))[0] == 0.5


def test_demo_graph_equals_the_graph_built_from_its_jsonl(tmp_path):
    enc = HashedEncoder(16)
    g, _ = demo_graph("tiny", enc, with_text=True)
    paths = write_demo_dataset(tmp_path / "demo", "tiny", encoder=enc)
    h = build_graph({k: paths[k] for k in S.SPLITS})
    for name in ("user", "llm", "group", "record", "step", "turn", "split", "rating", "raw_rating", "prev", "line",
                 "query_row", "text_emb", "llm_emb", "pair_a", "pair_b", "pair_label"):
        np.testing.assert_array_equal(getattr(g, name), getattr(h, name), err_msg=name)
    assert (g.user_ids, g.llm_names, g.texts, g.question_id) == (h.user_ids, h.llm_names, h.texts, h.question_id)
    assert g.response_text == h.response_text and g.encoder == h.encoder == enc.name
    # the query texts are stored once: far fewer rows than interactions
    assert g.num_texts < g.num_interactions / 4
    np.testing.assert_array_equal(g.query_emb, g.text_emb[g.query_row])


def test_columnar_graph_round_trips_through_parquet_memory_mapped(tmp_path):
    g, _ = demo_graph(DemoSpec(n_users=12, n_groups_per_user=6.0), HashedEncoder(8))
    out = g.write_parquet(tmp_path / "graph")
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{t}.parquet" for t in GRAPH_TABLES] + [S.META_FILE])
    h = read_graph(out)
    for name in ("user", "llm", "group", "step", "split", "rating", "prev", "query_row", "text_emb", "pair_a",
                 "pair_label"):
        np.testing.assert_array_equal(getattr(h, name), getattr(g, name), err_msg=name)
    assert h.question_id is None and h.response_text is None and h.texts == g.texts
    assert not h.query_row.flags.writeable  # a view of the mapped file, not a copy
    meta = json.loads((out / S.META_FILE).read_text())
    assert meta["counts"]["distinct_query_texts"] == g.num_texts


def test_history_stores_texts_once_and_loads_old_checkpoints(tmp_path):
    g, _ = demo_graph(DemoSpec(n_users=10, n_groups_per_user=6.0), HashedEncoder(8))
    mask = g.split_mask(S.SPLIT_TRAIN)
    h = History.from_graph(g, mask)
    assert h.deduplicated and h.text_emb.shape[0] < mask.sum()
    np.testing.assert_array_equal(h.query_emb, g.query_emb[mask])
    model = GMTModel(ModelConfig(embed_dim=8, hidden_dim=16, predictor_dim=16))
    kw = dict(users=g.user_ids, llms=g.llm_names, encoder="x", rating_scale=(1.0, 5.0))
    save_checkpoint(tmp_path / "new", model, history=h, **kw)
    back = load_checkpoint(tmp_path / "new").history
    assert back.deduplicated
    np.testing.assert_array_equal(back.query_emb, h.query_emb)
    np.testing.assert_array_equal(back.group, h.group)
    # a checkpoint written with per-row query embeddings (the earlier format) still loads
    old = History(user=h.user, llm=h.llm, rating=h.rating, prev=h.prev, query_emb=h.query_emb.copy(),
                  llm_emb=h.llm_emb, group=h.group)
    assert set(old.to_tensors()) == {"user", "llm", "rating", "prev", "query_emb", "llm_emb", "group"}
    save_checkpoint(tmp_path / "old", model, history=old, **kw)
    back = load_checkpoint(tmp_path / "old").history
    assert not back.deduplicated
    np.testing.assert_array_equal(back.query_emb, h.query_emb)


def test_benchmark_scale_prints_one_json_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark_scale.py"), "--interactions", "2000",
                           "--epochs", "2", "--batch-users", "4", "--dim", "32", "--json", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("interactions", "users", "build_s", "epoch_ms_median", "peak_rss_mb", "test_auc"):
        assert key in res, key
    assert 1500 <= res["interactions"] <= 2500 and res["users"] == 10
    assert res["steps_per_epoch"] == 3 and len(res["epoch_ms_all"]) == 2
    assert 0.0 <= res["test_auc"] <= 1.0 and res["peak_rss_mb"] > 0
    assert list(tmp_path.iterdir()) == []  # the temporary graph and checkpoints are gone
    # real-looking text by default (issue 17): 0.7 of the queries new; `distinct_texts` stays the count
    assert res["distinct_texts_share"] == 0.7 and abs(res["distinct_texts_share_realised"] - 0.7) < 0.06
    assert res["text_dtype"] == "float16" and res["distinct_embeddings"] == res["distinct_texts"]
    assert res["queries"] * 0.6 < res["distinct_texts"] < res["queries"] * 0.8
