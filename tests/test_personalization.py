"""Online personalization through the public router API: known users converge to
what they tell us, unknown users get the crowd-calibrated cold start, restarts
replay the durable log, processes sharing a log converge, exploration policies."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from gmt_model.method import schema as S
from gmt_model.method.checkpoint import update_meta
from gmt_model.errors import RoutingError
from gmt_model.evaluation.report import online_scores
from gmt_model.evaluation.metrics import pairwise_auc
from gmt_model.method.personal import PersonalConfig, QueryBasis, build_evidence, fit_posterior
from gmt_model.serving.router import GMTRouter
from gmt_model.method.training import predict_groups


class DictEncoder:
    name = "planted"

    def __init__(self, g):
        self.table = {t: g.query_emb[i] for i, t in enumerate(g.query_text)}
        self.dim = g.dim

    def encode(self, texts):
        return np.stack([self.table[t] for t in texts])


def make_router(models, g, log=None, **opts):
    pers, _ = models
    return GMTRouter.from_checkpoint(pers.best_dir, encoder=DictEncoder(g), feedback_log=log, **opts)


def taste_votes(g, rank: dict[str, int], n: int, seed: int, split: str = S.SPLIT_TEST):
    """Votes of a user with a fixed LLM ranking (0 = favourite) on the dataset's queries."""
    rng = np.random.default_rng(seed)
    texts = sorted({g.query_text[i] for i in np.flatnonzero(g.split_mask(split))})
    out = []
    for _ in range(n):
        q = texts[int(rng.integers(len(texts)))]
        a, b = rng.choice(sorted(rank), size=2, replace=False).tolist()
        out.append((q, a, b, float(rank[a] < rank[b])))
    return out


def auc_on(router, user, votes) -> float:
    res = router.route_batch([{"query_text": q, "user_id": user, "candidates": [a, b]} for q, a, b, _ in votes])
    p = np.array([r["scores"][a] for r, (q, a, b, _) in zip(res, votes)])
    y = np.array([v[3] for v in votes])
    return float(pairwise_auc(p, 1 - p, y))


def reveal(router, user, votes):
    for q, a, b, y in votes:
        win, lose = (a, b) if y == 1.0 else (b, a)
        router.update_user_preference(user, q, win, lose)


def crowd_reversed_rank(router) -> dict[str, int]:
    """The ranking opposite to the crowd's calibrated cold-start strengths."""
    order = np.argsort(router.calibration.bias)  # weakest first
    return {router.llms[i]: r for r, i in enumerate(order)}


# ----------------------------------------------------------------------------- unit
def test_posterior_converges_to_stated_preferences_against_a_confident_prior():
    rng = np.random.default_rng(0)
    L, cfg = 5, PersonalConfig()
    basis = QueryBasis(rng.normal(size=(200, 8)), 2)
    gnn = np.arange(L, dtype=float) * 1.5  # the GNN is confident the other way round
    votes = []
    for i in range(60):
        a, b = rng.choice(L, 2, replace=False)
        votes.append((i, a, b) if a < b else (i, b, a))  # the user prefers lower indices
    grp = np.repeat([v[0] for v in votes], 2)
    llm = np.array([m for v in votes for m in v[1:]])
    rating = np.tile([1.0, 0.0], len(votes))
    emb = np.repeat(rng.normal(size=(len(votes), 8)), 2, axis=0)
    post = fit_posterior(build_evidence(grp, llm, rating, basis(emb), np.tile(gnn, (llm.size, 1)), cfg),
                         cfg, L, basis.dims)
    final = gnn * post.gnn_weight + post.residual.reshape(L, -1)[:, 0]
    assert list(np.argsort(-final)) == list(range(L))  # exactly the user's order
    assert post.p_wide > 0.99
    assert post.gnn_weight < 0.5  # this user learned to discount the GNN
    # a crowd-like user (votes agree with the GNN) keeps the tight component: little residual
    rating_c = np.tile([0.0, 1.0], len(votes))
    post_c = fit_posterior(build_evidence(grp, llm, rating_c, basis(emb), np.tile(gnn, (llm.size, 1)), cfg),
                           cfg, L, basis.dims)
    assert post_c.p_wide < 0.5 and np.abs(post_c.residual).max() < 0.5
    assert post_c.gnn_weight > 0.9  # ... and keeps trusting it


# ------------------------------------------------------------------ through the router
def test_known_user_feedback_changes_then_converges(planted_models, planted_graph, tmp_path):
    g = planted_graph
    router = make_router(planted_models, g, tmp_path / "fb.sqlite")
    user = g.user_ids[0]
    # a taste opposite to what this training user's history says: rank LLMs by the router's current scores, reversed
    q0 = g.query_text[int(np.flatnonzero(g.split_mask(S.SPLIT_TEST) & (g.user == 0))[0])]
    cur = router.route_single({"query_text": q0, "user_id": user})["scores"]
    rank = {m: r for r, m in enumerate(sorted(cur, key=cur.get))}  # current least liked = new favourite
    test_votes = taste_votes(g, rank, 120, seed=1)
    before = auc_on(router, user, test_votes)
    assert before < 0.5
    aucs = []
    train_votes = taste_votes(g, rank, 80, seed=2, split=S.SPLIT_TRAIN)
    for chunk in range(4):
        reveal(router, user, train_votes[chunk * 20:(chunk + 1) * 20])
        aucs.append(auc_on(router, user, test_votes))
    assert aucs[0] > before + 0.2  # changed after 20 votes
    assert aucs[-1] >= 0.9  # and converged to what the user said
    assert router.route_single({"query_text": q0, "user_id": user})["model_name"] == min(rank, key=rank.get)
    # the same votes with the online part off: the GNN's own refresh of the user's representation still moves
    # routing toward the new taste (the live graph reads the new history)
    gnn = make_router(planted_models, g, personalization={"enabled": False})
    gnn_before = auc_on(gnn, user, test_votes)
    reveal(gnn, user, train_votes)
    assert auc_on(gnn, user, test_votes) > gnn_before + 0.1


def test_new_user_with_a_taste_unlike_the_crowd_is_learned(planted_models, planted_graph):
    g = planted_graph
    router = make_router(planted_models, g)
    rank = crowd_reversed_rank(router)
    test_votes = taste_votes(g, rank, 150, seed=3)
    assert auc_on(router, "newcomer", test_votes) < 0.5  # the crowd's choice is this user's worst
    reveal(router, "newcomer", taste_votes(g, rank, 30, seed=4, split=S.SPLIT_TRAIN))
    assert auc_on(router, "newcomer", test_votes) >= 0.9
    assert router.posterior("newcomer").p_wide > 0.9


def test_unknown_user_gets_the_cold_start_choice(planted_models, planted_graph, tmp_path):
    """An unknown user's scores are exactly the evaluation's calibrated cold-start scores,
    never another user's."""
    g = planted_graph
    router = make_router(planted_models, g)
    gs, gnn, sub = predict_groups(router.model, g, S.SPLIT_TEST, torch.device("cpu"))
    _, cold, _ = predict_groups(router.model, g, S.SPLIT_TEST, torch.device("cpu"), cold=True, sub=sub)
    _, expected, _ = online_scores(router.model, g, gs, gnn, cold, calib=router.calibration)
    rows = range(min(gs.size, 60))

    def assert_strangers_scored_as(r_, table):
        out = r_.route_batch([{"query_text": g.query_text[gs.inter[i, 0]], "user_id": f"stranger{i}",
                               "candidates": [g.llm_names[m] for m in gs.llm[i][gs.mask[i]]]} for i in rows])
        for i, r in zip(rows, out):
            s = table[i][gs.mask[i]]
            p = np.exp(s - s.max())
            np.testing.assert_allclose(list(r["scores"].values()), p / p.sum(), atol=1e-5)
            assert r["cold_start"] and r["history_size"] == 0
        return out

    res = assert_strangers_scored_as(router, expected)
    # with a calibration that uses the cold-start GNN in full (alpha 1, no crowd term) the scores are exactly
    # the empty-history user's, not any known user's
    pers, _ = planted_models
    ck = tmp_path / "ck"
    shutil.copytree(pers.best_dir, ck)
    update_meta(ck, {"cold_calibration": {"alpha": 1.0, "bias": [0.0] * len(router.llms), "warm": 1.0, "cold": 0.0}})
    assert_strangers_scored_as(GMTRouter.from_checkpoint(ck, encoder=DictEncoder(g)), cold)
    # and not some user's: the known users' scores for the same queries differ
    known = router.route_batch([{"query_text": g.query_text[gs.inter[i, 0]], "user_id": g.user_ids[gs.user[i]],
                                 "candidates": [g.llm_names[m] for m in gs.llm[i][gs.mask[i]]]} for i in rows])
    assert any(abs(a["confidence"] - b["confidence"]) > 0.05 for a, b in zip(res, known))


def _feedback_script(router, g):
    texts = sorted(set(g.query_text))[:40]
    llms = router.llms
    router.update_user_feedback(g.user_ids[1], texts[0], llms[0], 5.0, session_id="s1", turn=1)
    router.update_user_feedback(g.user_ids[1], texts[1], llms[1], 0.0, session_id="s1", turn=2)
    router.update_user_preference("fresh", texts[2], llms[2], llms[0])
    router.update_user_preference("fresh", texts[3], llms[2], llms[1], session_id="x", turn=1)
    for i in range(12):
        router.update_user_feedback("fresh", texts[4 + i], llms[i % len(llms)], float(i % 6))
    return texts


def _routes(router, texts, users):
    return router.route_batch([{"query_text": t, "user_id": u} for u in users for t in texts[:15]])


def test_restart_replays_the_log_and_routes_identically(planted_models, planted_graph, tmp_path):
    g = planted_graph
    log = tmp_path / "fb.sqlite"
    first = make_router(planted_models, g, log)
    texts = _feedback_script(first, g)
    users = [g.user_ids[1], "fresh", g.user_ids[2], "never-seen"]
    before = _routes(first, texts, users)
    restarted = make_router(planted_models, g, log)
    assert restarted.replayed == 18
    after = _routes(restarted, texts, users)
    for a, b in zip(before, after):
        assert a["model_name"] == b["model_name"] and a["history_size"] == b["history_size"]
        assert a["cold_start"] == b["cold_start"]
        np.testing.assert_allclose(list(a["scores"].values()), list(b["scores"].values()), atol=1e-6)
    assert restarted.history_size("fresh") == 16
    # without the log the feedback is gone: the replay is what carried it
    bare = make_router(planted_models, g)
    assert bare.history_size("fresh") == 0
    # rows up to the checkpoint's feedback_through_id were trained on: not replayed
    pers, _ = planted_models
    ck = tmp_path / "ck"
    shutil.copytree(pers.best_dir, ck)
    update_meta(ck, {"feedback_through_id": 4})
    partial = GMTRouter.from_checkpoint(ck, encoder=DictEncoder(g), feedback_log=log)
    assert partial.replayed == 14 and partial.history_size("fresh") == 14
    # ... except the ones the training data could not use (single ratings): history only, replayed
    update_meta(ck, {"feedback_unmerged_ids": [1, 2]})
    unmerged = GMTRouter.from_checkpoint(ck, encoder=DictEncoder(g), feedback_log=log)
    assert unmerged.replayed == 16
    assert unmerged.history_size(g.user_ids[1]) == partial.history_size(g.user_ids[1]) + 2


def test_processes_sharing_a_log_converge(planted_models, planted_graph, tmp_path):
    g = planted_graph
    log = tmp_path / "fb.sqlite"
    a = make_router(planted_models, g, log, feedback_sync_interval=-1)
    b = make_router(planted_models, g, log, feedback_sync_interval=-1)
    texts = _feedback_script(a, g)
    b.update_user_preference("fresh", texts[30], a.llms[1], a.llms[2])  # b's own feedback, interleaved
    assert b.history_size("fresh") == 2
    assert b.sync_feedback() == 18 and a.sync_feedback() == 2
    users = ["fresh", g.user_ids[1]]
    for x, y in zip(_routes(a, texts, users), _routes(b, texts, users)):
        assert x["model_name"] == y["model_name"] and x["history_size"] == y["history_size"]
        np.testing.assert_allclose(list(x["scores"].values()), list(y["scores"].values()), atol=1e-5)
    # automatic sync: with interval 0 a router picks up other processes' rows on its next call
    c = make_router(planted_models, g, log, feedback_sync_interval=0)
    a.update_user_feedback("late", texts[5], a.llms[0], 3.0)
    assert c.route_single({"query_text": texts[0], "user_id": "late"})["history_size"] == 1


def test_bad_pairwise_feedback_is_refused_and_stores_nothing(planted_models, planted_graph, tmp_path):
    g = planted_graph
    router = make_router(planted_models, g, tmp_path / "fb.sqlite")
    q = g.query_text[0]
    for args in [("u", q, router.llms[0], router.llms[0]), ("u", q, "nope", router.llms[0]),
                 ("u", q, router.llms[0], "nope"), ("u", "  ", router.llms[0], router.llms[1]),
                 ("bad user id!", q, router.llms[0], router.llms[1])]:
        with pytest.raises(RoutingError):
            router.update_user_preference(*args)
    assert router.feedback_log.count() == 0 and router.history_size("u") == 0
    out = router.update_user_preference("u", q, router.llms[0], router.llms[1], session_id="s", turn=2)
    assert out["feedback_ids"] == [1, 2] and out["history_size"] == 2
    rows = router.feedback_log.read()
    assert [r.model for r in rows] == [router.llms[0], router.llms[1]]
    assert rows[0].query_id == rows[1].query_id and rows[0].rating > rows[1].rating


def test_thompson_explores_a_new_user_then_settles(planted_models, planted_graph):
    g = planted_graph
    q = sorted(set(g.query_text))[0]

    def choices(seed, user="nobody", n=300):
        r = make_router(planted_models, g, policy="thompson", seed=seed)
        return r, [r.route_single({"query_text": q, "user_id": user}) for _ in range(n)]

    r1, c1 = choices(7)
    _, c2 = choices(7)
    assert [x["model_name"] for x in c1] == [x["model_name"] for x in c2]  # fixed seed: same sequence
    rate = np.mean([x["exploration"] for x in c1])
    # a new user gets to see alternatives (the crowd's preferences cancel in this data, so often), but the
    # choice is not uniform either
    assert 0.05 < rate < 0.9, rate
    explored = [x for x in c1 if x["exploration"]]
    assert all("Exploratory choice (thompson)" in x["reasoning"] for x in explored)
    assert all(x["model_name"] != max(x["scores"], key=x["scores"].get) for x in explored)
    # a user who said clearly and often what they want is no longer explored on
    rank = crowd_reversed_rank(r1)
    reveal(r1, "decided", taste_votes(g, rank, 60, seed=5, split=S.SPLIT_TRAIN))
    late = [r1.route_single({"query_text": q, "user_id": "decided"}) for _ in range(200)]
    assert np.mean([x["exploration"] for x in late]) < rate / 2


def test_epsilon_policy_rate(planted_models, planted_graph):
    g = planted_graph
    r = make_router(planted_models, g, policy="epsilon", epsilon=0.3, seed=1)
    q = sorted(set(g.query_text))[0]
    out = [r.route_single({"query_text": q, "user_id": g.user_ids[0]}) for _ in range(400)]
    rate = np.mean([x["exploration"] for x in out])
    m = len(r.candidates)
    assert abs(rate - 0.3 * (m - 1) / m) < 0.07
    assert all(x["policy"] == "epsilon" for x in out)
    greedy = make_router(planted_models, g)
    assert not any(greedy.route_single({"query_text": q, "user_id": "x"})["exploration"] for _ in range(50))


def test_logged_feedback_is_applied_exactly_once_whatever_runs_between(planted_models, planted_graph, tmp_path):
    """Feedback in two steps (stored outside the router's lock, then applied): a sync, or another router's
    rows, read between the two steps must not apply the row a second time, and the row is applied once."""
    g = planted_graph
    log = tmp_path / "fb.sqlite"
    a = make_router(planted_models, g, log, feedback_sync_interval=0)  # syncs before every apply
    b = make_router(planted_models, g, log, feedback_sync_interval=-1)
    texts = sorted(set(g.query_text))[:6]
    pending = a.log_feedback("fresh", texts[0], a.llms[0], 5.0)
    b.update_user_feedback("fresh", texts[1], b.llms[1], 1.0)  # another process's row, after a's
    assert a.sync_feedback() == 1  # b's row; a's own pending row is not applied by the sync
    assert a.history_size("fresh") == 1
    out = a.apply_logged(pending)
    assert out["feedback_id"] == pending.ids[0] and out["history_size"] == 2
    assert a.sync_feedback() == 0 and a.history_size("fresh") == 2
    # a pairwise preference logged, then a user load reading the log: the pair is applied once
    p2 = a.log_preference("other", texts[2], a.llms[0], a.llms[1])
    a.sync_feedback()
    assert a.apply_logged(p2)["history_size"] == 2 and a.history_size("other") == 2
    # a restarted router replays every row once
    c = make_router(planted_models, g, log, feedback_sync_interval=-1)
    assert c.history_size("fresh") == 2 and c.history_size("other") == 2


def test_logged_feedback_that_fails_to_apply_is_taken_by_the_next_sync(planted_models, planted_graph, tmp_path,
                                                                       monkeypatch):
    g = planted_graph
    a = make_router(planted_models, g, tmp_path / "fb.sqlite", feedback_sync_interval=-1)
    texts = sorted(set(g.query_text))[:2]
    pending = a.log_feedback("fresh", texts[0], a.llms[0], 5.0)
    real = a.state.apply

    def boom(*args, **kw):
        raise RuntimeError("apply failed")

    monkeypatch.setattr(a.state, "apply", boom)
    with pytest.raises(RuntimeError):
        a.apply_logged(pending)
    monkeypatch.setattr(a.state, "apply", real)
    assert a.history_size("fresh") == 0
    assert a.sync_feedback() == 1 and a.history_size("fresh") == 1  # stored, so applied by the sync
