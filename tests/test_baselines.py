"""Tests of gmt_model.evaluation.baselines on synthetic data with planted preferences."""

from __future__ import annotations

import numpy as np
import pytest

from gmt_model.evaluation.baselines import (
    BASELINES,
    GlobalBradleyTerry,
    KNNQuery,
    PerUserBradleyTerry,
    PerUserMajority,
    fit_bradley_terry,
)
from gmt_model.evaluation.metrics import PairSet, pairwise_accuracy


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    return float(np.corrcoef(rx, ry)[0, 1])


def bt_pairs(rng, strength_of, n, n_users, n_llms, query=None, query_emb=None, tie_frac=0.05):
    """Pairs sampled from a Bradley-Terry model; strength_of(user, query) -> (n, n_llms)."""
    user = rng.integers(0, n_users, size=n)
    a = rng.integers(0, n_llms, size=n)
    b = (a + rng.integers(1, n_llms, size=n)) % n_llms  # b != a
    if query is None:
        query = np.zeros(n, dtype=np.int64)
        query_emb = np.ones((1, 4))
    s = strength_of(user, query)
    idx = np.arange(n)
    p = 1.0 / (1.0 + np.exp(-(s[idx, a] - s[idx, b])))
    label = (rng.random(n) < p).astype(np.float64)
    label[rng.random(n) < tie_frac] = 0.5
    return PairSet(user=user, llm_a=a, llm_b=b, label=label, query=query, group=idx, query_emb=query_emb)


def held_out_accuracy(model, pairs: PairSet) -> float:
    sa, sb = model.score_pairs(pairs)
    return pairwise_accuracy(sa, sb, pairs.label)


# --------------------------------------------------------------------------
# Bradley-Terry
# --------------------------------------------------------------------------
def test_global_bt_recovers_strength_order():
    rng = np.random.default_rng(0)
    n_llms = 8
    true = rng.normal(scale=1.0, size=n_llms)
    pairs = bt_pairs(rng, lambda u, q: np.tile(true, (u.size, 1)), 6000, 5, n_llms)
    model = GlobalBradleyTerry().fit(pairs, 5, n_llms)
    assert spearman(model.strength, true) > 0.95
    # the score ignores user and query
    cand = np.tile(np.arange(n_llms), (3, 1))
    s = model.score(np.array([0, 4, -1]), rng.normal(size=(3, 4)), cand)
    assert np.allclose(s, s[0]) and np.allclose(s[0], model.strength)
    assert int(np.argmax(s[0])) == int(np.argmax(true))


def test_bt_ties_count_half_and_optimum_is_stationary():
    # llm0 vs llm1 only ties; llm2 beats both 3 of 4 times
    a = np.array([0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2])
    b = np.array([1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1])
    y = np.array([0.5, 0.5, 0.5, 1, 1, 1, 0, 1, 1, 1, 0], dtype=float)
    pairs = PairSet(user=np.zeros(11, int), llm_a=a, llm_b=b, label=y, query=np.zeros(11, int),
                    group=np.arange(11), query_emb=np.ones((1, 2)))
    m = GlobalBradleyTerry(l2=1e-6).fit(pairs, 1, 3)
    t = m.strength
    assert t[0] == pytest.approx(t[1], abs=1e-6)
    # with a tiny prior: P(2 beats 0) = 3/4 at the MLE
    assert 1 / (1 + np.exp(-(t[2] - t[0]))) == pytest.approx(0.75, abs=1e-4)


def test_bt_solver_handles_unbeaten_and_unseen_llms():
    wins = np.array([[0.0, 5.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    t = fit_bradley_terry(wins, wins + wins.T, prior_precision=1e-3)
    assert np.all(np.isfinite(t))
    assert t[0] > t[1] and t[2] == pytest.approx(0.0, abs=1e-9)


def two_camp_strengths(n_llms=6):
    base = np.linspace(-1.5, 1.5, n_llms)

    def strength_of(user, query):
        # even users like high-index LLMs, odd users the opposite
        sign = np.where(user % 2 == 0, 1.0, -1.0)
        return sign[:, None] * base[None, :]

    return strength_of


def test_per_user_bt_beats_global_with_opposite_camps():
    rng = np.random.default_rng(1)
    n_users, n_llms = 20, 6
    strength_of = two_camp_strengths(n_llms)
    train = bt_pairs(rng, strength_of, 4000, n_users, n_llms)
    test = bt_pairs(rng, strength_of, 2000, n_users, n_llms)
    glob = GlobalBradleyTerry().fit(train, n_users, n_llms)
    per = PerUserBradleyTerry(shrinkage=2.0).fit(train, n_users, n_llms)
    acc_g, acc_p = held_out_accuracy(glob, test), held_out_accuracy(per, test)
    assert acc_p > 0.7
    assert acc_p > acc_g + 0.15
    # per-user strengths follow the user's camp
    assert spearman(per.strength[0], np.arange(n_llms)) > 0.9
    assert spearman(per.strength[1], np.arange(n_llms)) < -0.9


def test_per_user_bt_unknown_users_get_global_and_shrinkage_works():
    rng = np.random.default_rng(2)
    n_users, n_llms = 10, 5
    strength_of = two_camp_strengths(n_llms)
    train = bt_pairs(rng, strength_of, 1500, n_users - 1, n_llms)  # user 9 has no pairs
    per = PerUserBradleyTerry(shrinkage=2.0).fit(train, n_users, n_llms)
    glob = per.global_model.strength
    cand = np.tile(np.arange(n_llms), (4, 1))
    s = per.score(np.array([-1, 10, 9, 0]), np.zeros((4, 3)), cand)
    assert np.allclose(s[0], glob) and np.allclose(s[1], glob) and np.allclose(s[2], glob)
    assert not np.allclose(s[3], glob)
    # a very strong prior pins users to the global strengths
    stiff = PerUserBradleyTerry(shrinkage=1e6).fit(train, n_users, n_llms)
    assert np.max(np.abs(stiff.strength - stiff.global_model.strength)) < 1e-2


# --------------------------------------------------------------------------
# per-user majority
# --------------------------------------------------------------------------
def test_per_user_majority_rates_and_fallback():
    # user 0: llm0 beats llm1 twice and ties once; user 1: llm1 beats llm2 once
    a = np.array([0, 0, 0, 1])
    b = np.array([1, 1, 1, 2])
    y = np.array([1.0, 1.0, 0.5, 1.0])
    pairs = PairSet(user=np.array([0, 0, 0, 1]), llm_a=a, llm_b=b, label=y, query=np.zeros(4, int),
                    group=np.arange(4), query_emb=np.ones((1, 2)))
    m = PerUserMajority(prior=0.0).fit(pairs, 3, 4)
    s = m.score(np.array([0, 1, 2, -1]), np.zeros((4, 2)), np.tile(np.arange(4), (4, 1)))
    glob = np.array([2.5 / 3, (0.5 + 1.0) / 4, 0.0, 0.5])  # llm3 never compared -> 0.5
    assert np.allclose(m.global_rate, glob)
    assert np.allclose(s[0], [2.5 / 3, 0.5 / 3, glob[2], glob[3]])
    assert np.allclose(s[1], [glob[0], 1.0, 0.0, glob[3]])
    assert np.allclose(s[2], glob) and np.allclose(s[3], glob)
    # with a prior the rates move towards the global ones
    mp = PerUserMajority(prior=1.0).fit(pairs, 3, 4)
    sp = mp.score(np.array([1]), np.zeros((1, 2)), np.array([[1]]))
    assert sp[0, 0] == pytest.approx((1.0 + glob[1]) / 2.0)


def test_per_user_majority_beats_global_with_opposite_camps():
    rng = np.random.default_rng(3)
    strength_of = two_camp_strengths(5)
    train = bt_pairs(rng, strength_of, 3000, 12, 5)
    test = bt_pairs(rng, strength_of, 1500, 12, 5)
    maj = PerUserMajority().fit(train, 12, 5)
    glob = GlobalBradleyTerry().fit(train, 12, 5)
    assert held_out_accuracy(maj, test) > held_out_accuracy(glob, test) + 0.15


# --------------------------------------------------------------------------
# KNN over query embeddings
# --------------------------------------------------------------------------
def clustered_queries(rng, n_queries, n_clusters, dim=16):
    centres = rng.normal(size=(n_clusters, dim)) * 3.0
    cluster = rng.integers(0, n_clusters, size=n_queries)
    emb = centres[cluster] + rng.normal(size=(n_queries, dim))
    return emb, cluster, centres


def test_knn_picks_the_cluster_winner():
    rng = np.random.default_rng(4)
    n_clusters, n_llms = 3, 4
    emb, cluster, centres = clustered_queries(rng, 300, n_clusters)

    def strength_of(user, query):
        s = np.zeros((query.size, n_llms))
        s[np.arange(query.size), cluster[query]] = 3.0  # cluster c prefers llm c; llm3 never best
        return s

    n = 4000
    q = rng.integers(0, 300, size=n)
    train = bt_pairs(rng, strength_of, n, 5, n_llms, query=q, query_emb=emb)
    knn = KNNQuery(k=20).fit(train, 5, n_llms)
    glob = GlobalBradleyTerry().fit(train, 5, n_llms)
    # new queries from each cluster
    test_c = np.repeat(np.arange(n_clusters), 10)
    test_emb = centres[test_c] + rng.normal(size=(test_c.size, 16))
    cand = np.tile(np.arange(n_llms), (test_c.size, 1))
    s = knn.score(np.zeros(test_c.size, int), test_emb, cand)
    assert np.mean(np.argmax(s, axis=1) == test_c) >= 0.95
    g = glob.score(np.zeros(test_c.size, int), test_emb, cand)
    assert np.mean(np.argmax(g, axis=1) == test_c) < 0.5
    # deterministic, and chunking does not change the result
    s2 = KNNQuery(k=20, chunk_size=7).fit(train, 5, n_llms).score(np.zeros(test_c.size, int), test_emb, cand)
    assert np.allclose(s, s2)
    # candidates in any order / subset get the same per-LLM scores
    sub = knn.score(np.zeros(test_c.size, int), test_emb, cand[:, ::-1][:, :2])
    assert np.allclose(sub, s[:, ::-1][:, :2])


def test_knn_only_uses_training_queries_and_falls_back_to_global_rate():
    # query_emb holds a row (1) no training pair refers to; it must never be a neighbour
    emb = np.array([[1.0, 0.0], [0.0, 1.0]])
    pairs = PairSet(user=np.zeros(3, int), llm_a=np.array([0, 0, 1]), llm_b=np.array([1, 1, 2]),
                    label=np.array([1.0, 1.0, 1.0]), query=np.zeros(3, int), group=np.arange(3), query_emb=emb)
    knn = KNNQuery(k=5, prior=0.0).fit(pairs, 1, 4)
    assert knn.keys.shape == (1, 2)
    s = knn.score(np.array([0]), np.array([[0.0, 1.0]]), np.array([[0, 1, 2, 3]]))
    # neighbour = query 0: llm0 2/2, llm1 1/3 (lost twice, beat llm2 once), llm2 0/1, llm3 unseen -> 0.5
    assert np.allclose(s[0], [1.0, 1.0 / 3.0, 0.0, 0.5])


# --------------------------------------------------------------------------
# interface
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_interface_checks(name):
    rng = np.random.default_rng(5)
    train = bt_pairs(rng, lambda u, q: np.zeros((u.size, 3)), 50, 2, 3)
    model = BASELINES[name]()
    with pytest.raises(RuntimeError, match="before fit"):
        model.score(np.array([0]), np.ones((1, 4)), np.array([[0, 1]]))
    assert model.fit(train, 2, 3) is model
    with pytest.raises(ValueError, match="candidates"):
        model.score(np.array([0]), np.ones((1, 4)), np.array([[0, 3]]))
    with pytest.raises(ValueError, match="batch sizes"):
        model.score(np.array([0, 1]), np.ones((1, 4)), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="n_llms"):
        BASELINES[name]().fit(train, 2, 2)
    out = model.score(np.array([0, 1, -1]), np.ones((3, 4)), np.array([[0, 1], [2, 0], [1, 2]]))
    assert out.shape == (3, 2) and np.all(np.isfinite(out))
    again = BASELINES[name]().fit(train, 2, 3).score(np.array([0, 1, -1]), np.ones((3, 4)),
                                                     np.array([[0, 1], [2, 0], [1, 2]]))
    assert np.array_equal(out, again)
