"""GMTRouter: consistency with evaluation, live feedback, cold start, sessions, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmt_model.method import schema as S
from gmt_model.errors import RoutingError
from gmt_model.serving.router import GMTRouter
from gmt_model.evaluation.report import online_scores
from gmt_model.method.training import predict_groups


class DictEncoder:
    """Maps the planted dataset's query texts to their stored embeddings."""

    name = "planted"

    def __init__(self, g):
        self.table = {t: g.query_emb[i] for i, t in enumerate(g.query_text)}
        self.dim = g.dim
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return np.stack([self.table[t] for t in texts])


@pytest.fixture
def router(planted_models, planted_graph, tmp_path):
    pers, _ = planted_models
    return GMTRouter.from_checkpoint(pers.best_dir, encoder=DictEncoder(planted_graph),
                                     feedback_log=tmp_path / "feedback.sqlite")


def test_router_scores_equal_evaluation_scores(router, planted_models, planted_graph):
    """The router (GNN + online residual from the training history) scores exactly
    what the leak-free evaluation reports as 'gmtrouter'."""
    g = planted_graph
    gs, gnn, sub = predict_groups(router.model, g, S.SPLIT_TEST, torch.device("cpu"))
    _, cold, _ = predict_groups(router.model, g, S.SPLIT_TEST, torch.device("cpu"), cold=True, sub=sub)
    scores, _, _ = online_scores(router.model, g, gs, gnn, cold, calib=router.calibration)
    assert np.abs(scores - gnn)[gs.mask].max() > 1e-3  # the residual is part of what is compared
    queries = [{"query_text": g.query_text[gs.inter[i, 0]], "user_id": g.user_ids[gs.user[i]],
                "candidates": [g.llm_names[m] for m in gs.llm[i][gs.mask[i]]]} for i in range(gs.size)]
    results = router.route_batch(queries)
    for i, r in enumerate(results):
        s = scores[i][gs.mask[i]]
        p = np.exp(s - s.max())
        p /= p.sum()
        np.testing.assert_allclose([r["scores"][c] for c in queries[i]["candidates"]], p, atol=1e-5)
        assert r["model_name"] == queries[i]["candidates"][int(np.argmax(s))]
    # one-by-one gives the same answers as the batch
    for q, r in list(zip(queries, results))[:10]:
        single = router.route_single(q)
        assert single["model_name"] == r["model_name"]
        assert single["confidence"] == pytest.approx(r["confidence"], abs=1e-6)


def test_result_fields(router, planted_graph):
    r = router.route_single({"query_text": planted_graph.query_text[0], "user_id": planted_graph.user_ids[0]})
    assert set(r) >= {"model_name", "confidence", "user_preference", "scores", "reasoning"}
    assert r["model_name"] in router.candidates and 0 < r["confidence"] <= 1
    assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert r["cold_start"] is False and planted_graph.user_ids[0] in r["reasoning"]
    cold = router.route_single({"query_text": planted_graph.query_text[0], "user_id": "never-seen"})
    assert cold["cold_start"] is True and "Cold start" in cold["reasoning"]


def _favourites(g, taste: int, topic_texts: set[str]) -> str:
    """Empirical best LLM of a taste group on the given queries (training data)."""
    users = {i for i, u in enumerate(g.user_ids) if int(u[4:]) % 2 == taste}
    score: dict[int, list[float]] = {}
    for i in np.flatnonzero(g.split_mask(S.SPLIT_TRAIN)):
        if g.user[i] in users and g.query_text[i] in topic_texts:
            score.setdefault(int(g.llm[i]), []).append(float(g.rating[i]))
    return g.llm_names[max(score, key=lambda k: np.mean(score[k]))]


def test_feedback_changes_routing_without_retraining(router, planted_graph):
    g = planted_graph
    by_topic: dict[str, set[str]] = {}
    for t in g.query_text:
        by_topic.setdefault(t.split(" question")[0], set()).add(t)
    topic, texts = next((k, v) for k, v in sorted(by_topic.items())
                        if _favourites(g, 0, v) != _favourites(g, 1, v))
    fav = {taste: _favourites(g, taste, texts) for taste in (0, 1)}
    probe = sorted(texts)[0]
    before = router.route_single({"query_text": probe, "user_id": "newcomer-0"})
    assert before["cold_start"]
    for taste in (0, 1):
        # a new user rates like taste group `taste`: high for its favourite, low for the rest
        donor = g.user_ids[taste]  # user0 / user1
        rows = [i for i in np.flatnonzero(g.split_mask(S.SPLIT_TRAIN)) if g.user_ids[g.user[i]] == donor][:8]
        for i in rows:
            router.update_user_feedback(f"newcomer-{taste}", g.query_text[i], g.llm_names[g.llm[i]],
                                        float(g.raw_rating[i]))
        after = router.route_single({"query_text": probe, "user_id": f"newcomer-{taste}",
                                     "candidates": sorted(set(fav.values()))})
        assert not after["cold_start"] and after["history_size"] == len(rows)
        assert after["model_name"] == fav[taste], (topic, taste, after)
    assert router.feedback_log.count() == 16


def test_bad_input_raises_and_stores_nothing(router, planted_graph):
    q = planted_graph.query_text[0]
    n_log = router.feedback_log.count()
    bad_routes = [
        ({"query_text": "", "user_id": "u"}, "query_text"),
        ({"query_text": q}, "user_id"),
        ({"query_text": q, "user_id": "bad id with spaces"}, "user_id"),
        ({"query_text": q, "user_id": "u", "candidates": ["gpt-99"]}, "candidates"),
        ({"query_text": q, "user_id": "u", "turn": 0}, "turn"),
    ]
    for query, field in bad_routes:
        with pytest.raises(RoutingError, match=field):
            router.route_single(query)
    bad_feedback = [
        (("u", q, "gpt-99", 3.0), "model"),
        (("u", q, "m0", 6.0), "outside the rating scale"),
        (("u", q, "m0", float("nan")), "rating"),
        (("u", "  ", "m0", 3.0), "query"),
        (("", q, "m0", 3.0), "user_id"),
    ]
    for args, msg in bad_feedback:
        with pytest.raises(RoutingError, match=msg):
            router.update_user_feedback(*args)
    assert router.feedback_log.count() == n_log
    assert router.history_size("u") == 0


def test_sessions_link_turns_and_history_context(router, planted_graph):
    g = planted_graph
    texts = g.query_text[:3]
    r1 = router.route_single({"query_text": texts[0], "user_id": "sess-user", "session_id": "s1", "turn": 1})
    router.update_user_feedback("sess-user", texts[0], r1["model_name"], 5.0, session_id="s1")
    router.update_user_feedback("sess-user", texts[1], "m1", 1.0, session_id="s1")
    h = router.history()
    assert h.prev[-1] == h.prev.size - 2  # the second turn links to the first
    r2 = router.route_single({"query_text": texts[2], "user_id": "sess-user", "session_id": "s1", "turn": 3})
    assert "session s1" in r2["reasoning"]
    # rated earlier turns passed inline act as multi-turn context for a user with no stored history
    plain = router.route_single({"query_text": texts[2], "user_id": "ctx-user"})
    ctx = router.route_single({"query_text": texts[2], "user_id": "ctx-user", "conversation_history": [
        {"query": texts[0], "model": "m0", "rating": 5.0}, {"query": texts[1], "model": "m1", "rating": 0.0}]})
    assert plain["cold_start"] and not ctx["cold_start"]
    assert ctx["scores"] != plain["scores"]
    assert router.history_size("ctx-user") == 0  # inline context is not stored


def test_route_batch_encodes_once(router, planted_graph):
    enc = router._encoder
    before = enc.calls
    texts = planted_graph.query_text[100:140]
    router.route_batch([{"query_text": t, "user_id": planted_graph.user_ids[i % 5]} for i, t in enumerate(texts)])
    assert enc.calls == before + 1
