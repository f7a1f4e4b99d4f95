"""Personalization that keeps up (issue 16): tastes that depend on the kind of query,
tastes that switch, crowd-like users who stay safe, and a vote within a live
conversation that counts at the next turn."""

from __future__ import annotations

import numpy as np
import pytest

from gmt_model.evaluation.metrics import pairwise_auc
from gmt_model.method import schema as S
from gmt_model.method.personal import (PersonalConfig, QueryBasis, build_evidence, change_candidates, detect_change,
                                       fit_posterior)

from test_personalization import auc_on, crowd_reversed_rank, make_router, reveal, taste_votes


# ------------------------------------------------------------------ a taste per kind of query (demo queries)
@pytest.fixture(scope="module")
def demo_queries(encoder_cache):
    """The tiny demo dataset's query texts, their topic, and their embeddings (the real encoder)."""
    from gmt_model.data.demo import _resolve_encoder, generate_conversations

    records, truth = generate_conversations("tiny")
    topic = {}
    for r in records:
        for turn in r["conversation"][:1]:  # first turns: the topic's own question
            topic.setdefault(turn["query"], r["topic"])
    texts = sorted(topic)
    emb = np.asarray(_resolve_encoder(None).encode(texts), dtype=np.float64)
    return texts, np.array([truth.topics.index(topic[t]) for t in texts]), emb


def _topic_user_auc(demo_queries, cfg: PersonalConfig, k: int = 100, users: int = 6, seed: int = 0) -> float:
    """Planted users with a random LLM ranking per topic: k pairwise votes on random demo
    queries, AUC on 200 other votes, through the residual alone (a GNN that says nothing)."""
    texts, topic, emb = demo_queries
    n_llms, n_topics = 5, int(topic.max()) + 1
    rng = np.random.default_rng(seed)
    half = rng.permutation(len(texts))
    fit_q, test_q = half[: len(texts) // 2], half[len(texts) // 2:]
    basis = QueryBasis(emb[fit_q], cfg.query_dims)  # the "training queries"
    ps, ys = [], []
    for _ in range(users):
        rank = np.array([rng.permutation(n_llms) for _ in range(n_topics)])  # rank[topic, llm], 0 = favourite

        def votes(pool, n):
            q = pool[rng.integers(pool.size, size=n)]
            ab = np.array([rng.choice(n_llms, 2, replace=False) for _ in range(n)])
            return q, ab, (rank[topic[q], ab[:, 0]] < rank[topic[q], ab[:, 1]]).astype(float)

        q, ab, y = votes(fit_q, k)
        z = basis(emb[np.repeat(q, 2)])
        ev = build_evidence(np.repeat(np.arange(k), 2), ab.reshape(-1), np.stack([y, 1 - y], 1).reshape(-1), z,
                            np.zeros((2 * k, n_llms)), cfg)
        r = fit_posterior(ev, cfg, n_llms, basis.dims).residual.reshape(n_llms, -1)
        q, ab, y = votes(test_q, 200)
        zt = basis(emb[q])
        ps.append(np.sum((r[ab[:, 0]] - r[ab[:, 1]]) * zt, axis=1))
        ys.append(y)
    p = 1.0 / (1.0 + np.exp(-np.concatenate(ps)))
    return float(pairwise_auc(p, 1.0 - p, np.concatenate(ys)))


def test_a_taste_per_kind_of_query_is_learned_on_demo_queries(demo_queries):
    """The query terms learn "this user prefers A for queries like this one" on queries it has not seen."""
    auc = _topic_user_auc(demo_queries, PersonalConfig())
    assert auc >= 0.85, auc


# ------------------------------------------------------------------------------ a taste that switches
def test_change_detection_finds_a_switch_and_nothing_in_a_steady_taste():
    rng = np.random.default_rng(0)
    n_llms, cfg = 5, PersonalConfig()
    basis = QueryBasis(rng.normal(size=(200, 8)), cfg.query_dims)

    def evidence(ranks):
        n = len(ranks)
        ab = np.array([rng.choice(n_llms, 2, replace=False) for _ in range(n)])
        y = np.array([float(rk[a] < rk[b]) for rk, (a, b) in zip(ranks, ab)])
        z = basis(np.repeat(rng.normal(size=(n, 8)), 2, axis=0))
        return build_evidence(np.repeat(np.arange(n), 2), ab.reshape(-1), np.stack([y, 1 - y], 1).reshape(-1), z,
                              np.zeros((2 * n, n_llms)), cfg)

    old, new = rng.permutation(n_llms), rng.permutation(n_llms)[::-1].copy()
    first = detect_change(evidence([old] * 120 + [new] * 20), cfg, n_llms, basis.dims)
    # rows: two per vote; the candidates are 1.3x apart, so the cut is near, not at, the switch
    assert first is not None and 2 * 120 - 16 <= first <= 2 * 120 + 8, first
    assert detect_change(evidence([old] * 140), cfg, n_llms, basis.dims) is None
    assert change_candidates(2 * 140, cfg)[0] == 2 * 140 - cfg.change_min
    with pytest.raises(ValueError, match="change_prior"):
        PersonalConfig.from_dict({"change_prior": 1.5})


def test_a_switched_user_is_followed(planted_models, planted_graph):
    """100 votes of one taste, then 20 of the opposite one: the router follows the new taste."""
    g = planted_graph
    router = make_router(planted_models, g)
    new = crowd_reversed_rank(router)
    old = {m: len(new) - 1 - r for m, r in new.items()}
    reveal(router, "switcher", taste_votes(g, old, 100, seed=5, split=S.SPLIT_TRAIN))
    test_votes = taste_votes(g, new, 150, seed=6)
    assert auc_on(router, "switcher", test_votes) < 0.2  # it learned the first taste
    reveal(router, "switcher", taste_votes(g, new, 20, seed=7, split=S.SPLIT_TRAIN))
    assert auc_on(router, "switcher", test_votes) >= 0.8
    assert router.posterior("switcher").recent_rows is not None


def test_change_detection_follows_a_schedule_of_the_rows_and_routers_agree(planted_models, planted_graph,
                                                                          monkeypatch):
    """A live router reruns change detection once per ``change_every`` rows (or when the user's
    representation is refreshed), not at every vote; each run looks at the rows up to its schedule point
    only, so a router that routed after every vote and one that took all the votes at once find the same
    change and the same posterior."""
    import gmt_model.serving.user_state as us

    calls = []
    real = us.detect_change
    monkeypatch.setattr(us, "detect_change", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = planted_graph
    live, later = make_router(planted_models, g), make_router(planted_models, g)
    new = crowd_reversed_rank(live)
    old = {m: len(new) - 1 - r for m, r in new.items()}
    votes = taste_votes(g, old, 100, seed=5, split=S.SPLIT_TRAIN) + taste_votes(g, new, 30, seed=7,
                                                                                split=S.SPLIT_TRAIN)
    fits = 0
    for v in votes:  # a route after every vote: the posterior is refitted each time
        reveal(live, "switcher", [v])
        live.posterior("switcher")
        fits += 1
    assert len(calls) <= 0.6 * fits, (len(calls), fits)
    reveal(later, "switcher", votes)
    a, b = live.posterior("switcher"), later.posterior("switcher")
    assert a.change_at is not None and a.change_at == b.change_at, (a.change_at, b.change_at)
    assert a.recent_rows == b.recent_rows
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-4)


# ----------------------------------------------------------------------------- a crowd-like user stays safe
#: the online residual pinned at zero (the GNN and the calibrated blend as routed, nothing learned online)
PINNED = {"p_wide": 0.0, "tight": 1e-4, "gnn_weight_sd": 0.0, "change_prior": 0.0}


def test_a_crowd_like_user_does_not_chase_the_noise_of_five_votes(planted_models, planted_graph):
    """A user who votes as the crowd model predicts (each vote sampled from the router's
    own probabilities for this user, the residual pinned at zero) gives 5 votes: the
    online residual does not move routing away from what the GNN alone would choose."""
    g = planted_graph
    router, pinned = make_router(planted_models, g), make_router(planted_models, g, personalization=PINNED)
    texts = sorted({g.query_text[i] for i in np.flatnonzero(g.split_mask(S.SPLIT_TEST))})[:60]
    rng = np.random.default_rng(8)
    agree = []
    for u in range(10):
        user = f"crowdlike{u}"
        for _ in range(5):
            q = texts[int(rng.integers(len(texts)))]
            a, b = rng.choice(router.llms, 2, replace=False).tolist()
            sc = pinned.route_single({"query_text": q, "user_id": user, "candidates": [a, b]})["scores"]
            p_a = 1.0 / (1.0 + np.exp(-(sc[a] - sc[b])))
            win, lose = (a, b) if rng.random() < p_a else (b, a)
            for r in (router, pinned):
                r.update_user_preference(user, q, win, lose)
        batch = [{"query_text": t, "user_id": user} for t in texts]
        agree.append(np.mean([x["model_name"] == y["model_name"]
                              for x, y in zip(router.route_batch(batch), pinned.route_batch(batch))]))
    assert np.mean(agree) >= 0.75, str([round(float(a), 2) for a in agree]) + str([round(router.posterior(f"crowdlike{u}").p_wide, 3) for u in range(10)])


# ------------------------------------------------------------------------- a vote within a conversation
def test_a_vote_on_turn_one_counts_when_routing_turn_two(planted_models, planted_graph):
    """Within a live conversation, turn 2 is routed with turn 1's rating already counted."""
    g = planted_graph
    router = make_router(planted_models, g)
    texts = sorted({g.query_text[i] for i in np.flatnonzero(g.split_mask(S.SPLIT_TEST))})
    user, sid = "talker", "conv-1"
    reveal(router, user, taste_votes(g, crowd_reversed_rank(router), 10, seed=9, split=S.SPLIT_TRAIN))
    first = router.route_single({"query_text": texts[0], "user_id": user, "session_id": sid, "turn": 1})
    chosen = first["model_name"]
    n_before = router.posterior(user).n
    before = router.route_single({"query_text": texts[1], "user_id": user, "candidates": router.llms})["scores"]
    lo, _ = router.rating_scale
    router.update_user_feedback(user, texts[0], chosen, lo, session_id=sid, turn=1)  # turn 1's answer: poor
    second = router.route_single({"query_text": texts[1], "user_id": user, "session_id": sid, "turn": 2})
    assert second["history_size"] == first["history_size"] + 1
    assert router.posterior(user).n > n_before  # the residual routing turn 2 holds the vote
    others = [m for m in router.llms if m != chosen]
    gap_before = before[chosen] - max(before[m] for m in others)
    gap_after = second["scores"][chosen] - max(second["scores"][m] for m in others)
    assert gap_after < gap_before, (gap_before, gap_after)
