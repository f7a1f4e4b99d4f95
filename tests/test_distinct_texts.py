"""Scale with real-looking text (issue 17, item 4): the demo's distinct-text stream and float16 text tables.

The generator's ``distinct_texts`` share is what was asked, texts are genuinely distinct (strings and
hashed embeddings), repeats stay within a topic; float16 text tables stay float16 through Parquet and the
checkpoint and score as the float32 table does, within float16's rounding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gmt_model.data.demo import DemoSpec, HashedEncoder, demo_columns, demo_graph
from gmt_model.method import schema as S
from gmt_model.method import training
from gmt_model.method.checkpoint import History, load_checkpoint
from gmt_model.method.config import load_train_config
from gmt_model.method.graph import from_columns, read_graph
from gmt_model.method.model import GMTModel
from gmt_model.evaluation.metrics import pairwise_auc
from gmt_model.paths import package_config

SPEC = DemoSpec(n_users=60, n_groups_per_user=30.0, seed=3)


def _queries(cols: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text row, group, step) of every query (one per (group, step)), in stream order."""
    key = cols["group"].astype(np.int64) * 8 + cols["step"]
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)
    return cols["query_row"][first], cols["group"][first], cols["step"][first]


def _new_share(rows: np.ndarray) -> float:
    seen: set[int] = set()
    new = 0
    for r in rows.tolist():
        new += r not in seen
        seen.add(r)
    return new / rows.size


@pytest.mark.parametrize("share", [0.0, 0.3, 0.7, 1.0])
def test_distinct_share_is_what_was_asked_and_texts_are_distinct(share):
    cols, _ = demo_columns(SPEC, HashedEncoder(64), distinct_texts=share)
    rows, _, _ = _queries(cols)
    assert rows.size > 2000
    got = _new_share(rows)
    # each query is new with probability `share`; the first of each topic and kind (12) always
    assert abs(got - share) < 0.03 + 12 / rows.size, (share, got)
    texts = cols["texts"]
    assert len(set(texts)) == len(texts) == cols["text_emb"].shape[0]  # distinct strings
    emb = np.ascontiguousarray(cols["text_emb"])
    assert np.unique(emb.view(np.uint8).reshape(emb.shape[0], -1), axis=0).shape[0] == len(texts)  # distinct vectors
    # text rows are numbered in order of first appearance
    firsts = np.unique(rows, return_index=True)[1]
    assert np.all(np.diff(rows[np.sort(firsts)]) == 1)


def test_repeats_stay_within_topic_and_kind_and_templates_are_unchanged():
    spec = DemoSpec(n_users=40, n_groups_per_user=20.0, seed=5)
    templ, _ = demo_columns(spec, HashedEncoder(32))
    cols, truth = demo_columns(spec, HashedEncoder(32), distinct_texts=0.5)
    # everything but the texts is the template stream's
    for k in ("user", "llm", "group", "step", "split", "raw_rating"):
        np.testing.assert_array_equal(cols[k], templ[k], err_msg=k)
    rows, group, step = _queries(cols)
    t_rows, _, _ = _queries(templ)
    # a new query is its own template text, worded; a text row is only ever a first turn or only a follow-up
    kind_of: dict[int, bool] = {}
    repeats = 0
    for r, tr, s in zip(rows.tolist(), t_rows.tolist(), step.tolist()):
        if r in kind_of:
            repeats += 1
        else:
            assert templ["texts"][tr][1:] in cols["texts"][r], (templ["texts"][tr], cols["texts"][r])
        assert kind_of.setdefault(r, s > 0) == (s > 0)
    assert 0.4 < repeats / rows.size < 0.6
    worded = sum(t not in set(templ["texts"]) for t in cols["texts"])
    assert worded > 0.99 * len(cols["texts"])  # new queries carry their own wording
    again, _ = demo_columns(spec, HashedEncoder(32), distinct_texts=0.5)
    assert again["texts"] == cols["texts"]  # deterministic
    np.testing.assert_array_equal(again["query_row"], cols["query_row"])
    assert cols["sources"]["demo_distinct_texts"] == "0.5" and "demo_distinct_texts" not in templ["sources"]


def test_repeat_topics_match():
    """Every text row is asked only within one topic (the planted preferences are per topic)."""
    from gmt_model.data import demo

    spec = DemoSpec(n_users=40, n_groups_per_user=20.0, seed=6)
    plan = demo._build_plan(spec)
    cols, _ = demo_columns(spec, HashedEncoder(32), distinct_texts=0.4)
    # the group column is the position in stream order; map it back to the plan's group to read its topic
    names = demo.split_groups([plan.user_ids[int(o)] for o in plan.owner], spec.split_fractions, seed=spec.seed)
    order = np.concatenate([np.flatnonzero(names == s) for s in S.SPLITS])
    topic = plan.topic[order][cols["group"]]
    per_row = {}
    for r, t in zip(cols["query_row"].tolist(), topic.tolist()):
        assert per_row.setdefault(r, t) == t


def test_bad_share_is_refused():
    with pytest.raises(ValueError, match="distinct_texts"):
        demo_columns(DemoSpec(n_users=4, n_groups_per_user=4.0), HashedEncoder(8), distinct_texts=1.5)


def test_float16_text_table_round_trips_through_parquet(tmp_path):
    g32, _ = demo_graph(SPEC, HashedEncoder(32), distinct_texts=0.7)
    g16, _ = demo_graph(SPEC, HashedEncoder(32), distinct_texts=0.7, text_dtype="float16")
    assert g16.text_emb.dtype == np.float16 and g32.text_emb.dtype == np.float32
    np.testing.assert_array_equal(g16.text_emb, g32.text_emb.astype(np.float16))
    assert g16.query_vecs(np.arange(5)).dtype == np.float32 and not g16.check()
    h16 = read_graph(g16.write_parquet(tmp_path / "g16"))
    h32 = read_graph(g32.write_parquet(tmp_path / "g32"))
    assert h16.text_emb.dtype == np.float16  # not widened on the way back
    np.testing.assert_array_equal(h16.text_emb, g16.text_emb)
    import pyarrow.parquet as pq

    value = lambda d: pq.read_schema(d / "texts.parquet").field(S.C_EMBEDDING).type.value_type  # noqa: E731
    assert (str(value(tmp_path / "g16")), str(value(tmp_path / "g32"))) == ("halffloat", "float")
    np.testing.assert_array_equal(h32.text_emb, g32.text_emb)


def _cfg(tmp_path, **over):
    return load_train_config(package_config("model_config_train/gmtrouter.yaml"),
                             {"epochs": 2, "save_every": 10**9, "device": "cpu", "hidden_dim": 32,
                              "predictor_dim": 32, "batch_users": 30, **over})


def test_float16_storage_scores_as_float32_within_rounding(tmp_path):
    g32, _ = demo_graph(SPEC, HashedEncoder(64), distinct_texts=0.7)
    g16 = dataclasses.replace(g32, text_emb=g32.text_emb.astype(np.float16))
    res = training.train(g32, _cfg(tmp_path), tmp_path / "run", resume=False)
    model = load_checkpoint(res.best_dir).model
    out = {}
    with torch.inference_mode():
        for name, g in (("32", g32), ("16", g16)):
            gs, scores, _ = training.predict_groups(model, g, S.SPLIT_TEST, torch.device("cpu"), batch_users=30)
            *_, sa, sb, label = training.pair_scores(gs, scores)
            out[name] = (scores, pairwise_auc(sa, sb, label))
    diff = np.nanmax(np.abs(out["32"][0] - out["16"][0]))
    assert 0 < diff < 0.02, diff  # float16 rounding moves scores a little, never much
    assert abs(out["32"][1] - out["16"][1]) < 0.005


def test_training_on_float16_keeps_the_checkpoint_history_float16(tmp_path):
    g16, _ = demo_graph(SPEC, HashedEncoder(32), distinct_texts=0.7, text_dtype="float16")
    res = training.train(g16, _cfg(tmp_path, epochs=1), tmp_path / "run", resume=False)
    hist = load_checkpoint(res.best_dir).history
    assert hist.text_emb.dtype == np.float16
    mask = g16.split_mask(S.SPLIT_TRAIN)
    np.testing.assert_array_equal(hist.query_emb, g16.query_vecs(np.flatnonzero(mask)))
    assert hist.query_emb.dtype == np.float32
    np.testing.assert_array_equal(History.from_graph(g16, mask).text_emb.dtype, np.float16)
    # a step's subgraph holds its distinct texts as float32, from the float16 table on the device or the graph
    from gmt_model.method.engine import build_subgraph
    from gmt_model.method.graph import as_tensor

    idx = np.flatnonzero(mask)[:200]
    for table in (as_tensor(g16.text_emb), None):
        sub = build_subgraph(g16, idx, np.zeros(0, np.int64), torch.device("cpu"), table)
        assert sub.text_emb.dtype == torch.float32
        np.testing.assert_array_equal(sub.query_emb.numpy(), g16.query_vecs(idx))


def test_input_stats_without_the_rows_equal_the_exact_ones(monkeypatch):
    g, _ = demo_graph(SPEC, HashedEncoder(32), distinct_texts=0.7)
    cfg = training.model_config_for(_cfg(None), g)
    exact, chunked = GMTModel(cfg), GMTModel(cfg)
    training._set_input_stats(exact, g)
    monkeypatch.setattr(training, "_EXACT_STATS_CELLS", 0)
    training._set_input_stats(chunked, g)
    for name in ("query_mean", "query_scale", "llm_mean", "llm_scale"):
        a, b = getattr(exact.gnn, name), getattr(chunked.gnn, name)
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name
    assert float(exact.gnn.query_scale) != 1.0


def test_router_benchmark_stream_has_the_share_and_continues_into_the_routed_queries():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_router_scale.py"
    spec = importlib.util.spec_from_file_location("benchmark_router_scale", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    texts, rows = mod.query_stream(6000, 0.7, 0)
    assert abs(_new_share(rows) - 0.7) < 0.03 and len(set(texts)) == len(texts) == rows.max() + 1
    assert _new_share(rows[5000:]) < 1.0  # the routed tail repeats earlier queries too
    v = mod.HashVecEncoder(16).encode([texts[0], texts[0], texts[1]])
    assert np.array_equal(v[0], v[1]) and not np.array_equal(v[0], v[2]) and abs(np.linalg.norm(v[0]) - 1) < 1e-6
    old_texts, old_rows = mod.query_stream(100, None, 40)
    assert len(old_texts) == 40 and old_rows.max() < 40
