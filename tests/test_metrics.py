"""Tests of gmt_model.evaluation.metrics: planted data with known answers."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from gmt_model.evaluation.metrics import (
    EvalReport,
    GroupScores,
    MethodResult,
    PairSet,
    bootstrap_ci,
    evaluate_pair_scores,
    ovr_auc,
    pairwise_accuracy,
    pairwise_auc,
    top1_accuracy,
)


# --------------------------------------------------------------------------
# brute-force references
# --------------------------------------------------------------------------
def brute_auc(x: np.ndarray, pos: np.ndarray) -> float:
    p, n = x[pos], x[~pos]
    if p.size == 0 or n.size == 0:
        return math.nan
    total = 0.0
    for a in p:
        for b in n:
            total += 1.0 if a > b else (0.5 if a == b else 0.0)
    return total / (p.size * n.size)


def brute_pair_auc(sa, sb, y) -> float:
    keep = y != 0.5
    return brute_auc((sa - sb)[keep], (y == 1.0)[keep])


def brute_accuracy(sa, sb, y) -> float:
    total, count = 0.0, 0
    for a, b, l in zip(sa, sb, y):
        if l == 0.5:
            continue
        count += 1
        if a == b:
            total += 0.5
        elif (a > b) == (l == 1.0):
            total += 1.0
    return total / count if count else math.nan


def random_pairs(rng, n, signal=1.0, tie_frac=0.1, round_to=1):
    """Scores with exact ties (rounded), labels correlated with the score difference."""
    sa = np.round(rng.normal(size=n), round_to)
    sb = np.round(rng.normal(size=n), round_to)
    p = 1.0 / (1.0 + np.exp(-signal * (sa - sb)))
    y = (rng.random(n) < p).astype(np.float64)
    y[rng.random(n) < tie_frac] = 0.5
    return sa, sb, y


# --------------------------------------------------------------------------
# pairwise metrics
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auc_matches_brute_force_with_score_ties(seed):
    rng = np.random.default_rng(seed)
    sa, sb, y = random_pairs(rng, 300, round_to=0 if seed % 2 else 1)
    d = sa - sb
    assert np.unique(d).size < d.size  # the data really has tied differences
    assert pairwise_auc(sa, sb, y) == pytest.approx(brute_pair_auc(sa, sb, y), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    sa, sb, y = random_pairs(rng, 500, round_to=0)
    assert np.any(sa == sb)
    assert pairwise_accuracy(sa, sb, y) == pytest.approx(brute_accuracy(sa, sb, y), abs=1e-12)


def test_perfect_and_reversed_scores():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=200).astype(float)
    sa = np.where(y == 1.0, 2.0, 0.0) + rng.random(200)
    sb = np.ones(200) + rng.random(200) * 0.5
    assert pairwise_auc(sa, sb, y) == 1.0
    assert pairwise_accuracy(sa, sb, y) == 1.0
    assert pairwise_auc(sb, sa, y) == 0.0
    assert pairwise_accuracy(sb, sa, y) == 0.0


def test_accuracy_ties_in_labels_and_scores():
    sa = np.array([2.0, 0.0, 5.0, 1.0, 3.0])
    sb = np.array([1.0, 1.0, 0.0, 1.0, 4.0])
    y = np.array([1.0, 0.0, 0.5, 1.0, 1.0])
    # pair 0 right, pair 1 right, pair 2 skipped (tie label), pair 3 score tie, pair 4 wrong
    assert pairwise_accuracy(sa, sb, y) == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert math.isnan(pairwise_accuracy(sa, sb, np.full(5, 0.5)))


def test_auc_nan_with_one_class():
    assert math.isnan(pairwise_auc([1.0, 2.0], [0.0, 0.0], [1.0, 1.0]))
    assert math.isnan(pairwise_auc([1.0, 2.0], [0.0, 0.0], [1.0, 0.5]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="label"):
        pairwise_accuracy([1.0], [0.0], [0.7])
    with pytest.raises(ValueError, match="differ in length"):
        pairwise_auc([1.0, 2.0], [0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="score_a"):
        pairwise_auc([np.nan], [0.0], [1.0])


# --------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------
def test_bootstrap_contains_point_and_shrinks_with_more_data():
    rng = np.random.default_rng(11)
    widths = {}
    for n in (200, 5000):
        sa, sb, y = random_pairs(rng, n)
        for fn in (pairwise_accuracy, pairwise_auc):
            lo, hi = bootstrap_ci(fn, sa, sb, y, n_resamples=400, seed=1)
            point = fn(sa, sb, y)
            assert lo <= point <= hi
            widths[(fn.__name__, n)] = hi - lo
    for name in ("pairwise_accuracy", "pairwise_auc"):
        assert widths[(name, 5000)] < 0.5 * widths[(name, 200)]


def test_bootstrap_deterministic_and_seed_dependent():
    rng = np.random.default_rng(3)
    sa, sb, y = random_pairs(rng, 400)
    a = bootstrap_ci(pairwise_auc, sa, sb, y, n_resamples=200, seed=7)
    b = bootstrap_ci(pairwise_auc, sa, sb, y, n_resamples=200, seed=7)
    c = bootstrap_ci(pairwise_auc, sa, sb, y, n_resamples=200, seed=8)
    assert a == b
    assert a != c


@pytest.mark.parametrize("clustered", [False, True])
@pytest.mark.parametrize("fn", [pairwise_accuracy, pairwise_auc])
def test_vectorised_bootstrap_equals_generic_loop(fn, clustered):
    """The weighted fast path equals evaluating the metric on each resample's rows."""
    rng = np.random.default_rng(4)
    sa, sb, y = random_pairs(rng, 150)
    cluster = rng.integers(0, 12, size=150) if clustered else None

    def generic(a, b, l):  # not registered: evaluated per resample
        return fn(a, b, l)

    fast = bootstrap_ci(fn, sa, sb, y, n_resamples=150, seed=2, cluster=cluster)
    slow = bootstrap_ci(generic, sa, sb, y, n_resamples=150, seed=2, cluster=cluster)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_cluster_bootstrap_wider_for_correlated_clusters():
    rng = np.random.default_rng(21)
    n_users, per_user = 40, 100
    user = np.repeat(np.arange(n_users), per_user)
    # each user has its own accuracy level: rows within a user are correlated
    user_acc = rng.uniform(0.3, 1.0, size=n_users)
    correct = rng.random(user.size) < user_acc[user]
    y = np.ones(user.size)
    sa = np.where(correct, 1.0, -1.0) + rng.normal(scale=0.1, size=user.size)
    sb = np.zeros(user.size)
    row = bootstrap_ci(pairwise_accuracy, sa, sb, y, n_resamples=500, seed=0)
    clu = bootstrap_ci(pairwise_accuracy, sa, sb, y, n_resamples=500, seed=0, cluster=user)
    point = pairwise_accuracy(sa, sb, y)
    assert row[0] <= point <= row[1] and clu[0] <= point <= clu[1]
    assert (clu[1] - clu[0]) > 2.0 * (row[1] - row[0])


def test_bootstrap_speed_10k_pairs():
    rng = np.random.default_rng(0)
    sa, sb, y = random_pairs(rng, 10_000, round_to=2)
    user = rng.integers(0, 300, size=10_000)
    t0 = time.perf_counter()
    bootstrap_ci(pairwise_accuracy, sa, sb, y, n_resamples=1000, seed=0)
    bootstrap_ci(pairwise_accuracy, sa, sb, y, n_resamples=1000, seed=0, cluster=user)
    t_acc = (time.perf_counter() - t0) / 2
    t0 = time.perf_counter()
    bootstrap_ci(pairwise_auc, sa, sb, y, n_resamples=1000, seed=0, cluster=user)
    t_auc = time.perf_counter() - t0
    # generous bounds (shared CI machines); typical: well under 1 s and 2 s
    assert t_acc < 2.0, t_acc
    assert t_auc < 6.0, t_auc


def test_bootstrap_argument_errors():
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(pairwise_accuracy, [1.0], [0.0], [1.0], n_resamples=0)
    with pytest.raises(ValueError, match="cluster"):
        bootstrap_ci(pairwise_accuracy, [1.0, 2.0], [0.0, 0.0], [1.0, 1.0], cluster=[0])


# --------------------------------------------------------------------------
# group metrics
# --------------------------------------------------------------------------
def handcrafted_groups() -> GroupScores:
    return GroupScores(
        group=np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]),
        llm=np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]),
        # g0: best (llm1) scored highest; g1: best (llm0) scored lowest;
        # g2: no unique best; g3: best (llm2) shares the top score with llm0
        score=np.array([1.0, 3.0, 2.0, 0.0, 1.0, 5.0, 9.0, 1.0, 1.0, 4.0, 2.0, 4.0]),
        rating=np.array([0.2, 0.9, 0.5, 0.9, 0.1, 0.3, 0.5, 0.5, 0.1, 0.4, 0.1, 0.8]),
    )


def test_top1_handcrafted():
    gs = handcrafted_groups()
    assert top1_accuracy(gs.group, gs.score, gs.rating) == pytest.approx((1 + 0 + 0.5) / 3)
    # shuffling the rows changes nothing
    perm = np.random.default_rng(0).permutation(len(gs))
    assert top1_accuracy(gs.group[perm], gs.score[perm], gs.rating[perm]) == pytest.approx(0.5)


def test_ovr_auc_handcrafted():
    gs = handcrafted_groups()
    # positives (unique bests of g0, g1, g3): 3, 0, 4 ; negatives: 1, 2, 1, 5, 4, 2
    expected = brute_auc(np.array([3.0, 0.0, 4.0, 1.0, 2.0, 1.0, 5.0, 4.0, 2.0]),
                         np.array([True, True, True, False, False, False, False, False, False]))
    assert expected == pytest.approx((4 + 0 + 4.5) / 18)
    assert ovr_auc(gs.group, gs.score, gs.rating) == pytest.approx(expected)


def test_group_metrics_perfect_and_nan():
    g = np.repeat(np.arange(4), 3)
    r = np.tile([0.1, 0.5, 0.9], 4)
    assert top1_accuracy(g, r * 10, r) == 1.0
    assert ovr_auc(g, r * 10, r) == 1.0
    flat = np.full(12, 0.5)
    assert math.isnan(top1_accuracy(g, r, flat))
    assert math.isnan(ovr_auc(g, r, flat))


def test_group_bootstrap_resamples_whole_groups():
    rng = np.random.default_rng(8)
    n_groups, k = 300, 4
    g = np.repeat(np.arange(n_groups), k)
    r = rng.random(g.size)
    s = r + rng.normal(scale=0.3, size=g.size)
    point = top1_accuracy(g, s, r)
    lo, hi = bootstrap_ci(top1_accuracy, g, s, r, n_resamples=300, seed=0)
    assert lo <= point <= hi and hi - lo > 0
    lo2, hi2 = bootstrap_ci(ovr_auc, g, s, r, n_resamples=300, seed=0)
    assert lo2 <= ovr_auc(g, s, r) <= hi2

    # clusters constant within groups are accepted; a group split over clusters is refused
    user = g // 10
    assert bootstrap_ci(top1_accuracy, g, s, r, n_resamples=50, seed=0, cluster=user)[0] <= point
    bad = user.copy()
    bad[1] = 999
    with pytest.raises(ValueError, match="constant within each group"):
        bootstrap_ci(top1_accuracy, g, s, r, n_resamples=10, seed=0, cluster=bad)


# --------------------------------------------------------------------------
# PairSet, evaluate_pair_scores, EvalReport
# --------------------------------------------------------------------------
def planted_pairset(rng, n_users=6, n_llms=4, groups_per_user=30, k=3):
    """Groups of K candidates; ratings from a per-LLM quality plus noise; all 2-combinations."""
    quality = np.linspace(0.2, 0.8, n_llms)
    user, a, b, label, query, group = [], [], [], [], [], []
    g_group, g_llm, g_rating = [], [], []
    gid = 0
    for u in range(n_users):
        for _ in range(groups_per_user):
            cands = rng.choice(n_llms, size=k, replace=False)
            rating = np.round(quality[cands] + rng.normal(scale=0.3, size=k), 1)
            for i in range(k):
                g_group.append(gid)
                g_llm.append(cands[i])
                g_rating.append(rating[i])
                for j in range(i + 1, k):
                    user.append(u)
                    a.append(cands[i])
                    b.append(cands[j])
                    label.append(1.0 if rating[i] > rating[j] else (0.0 if rating[i] < rating[j] else 0.5))
                    query.append(gid)
                    group.append(gid)
            gid += 1
    pairs = PairSet(
        user=np.array(user), llm_a=np.array(a), llm_b=np.array(b), label=np.array(label),
        query=np.array(query), group=np.array(group), query_emb=rng.normal(size=(gid, 8)),
    )
    groups = GroupScores(np.array(g_group), np.array(g_llm), np.zeros(len(g_group)), np.array(g_rating))
    return pairs, groups, quality


def test_pairset_validation_and_subset():
    rng = np.random.default_rng(0)
    pairs, _, _ = planted_pairset(rng, n_users=2, groups_per_user=3)
    assert pairs.label.dtype == np.float32 and pairs.user.dtype == np.int64
    sub = pairs.subset(pairs.user == 1)
    assert len(sub) == int((pairs.user == 1).sum()) and np.all(sub.user == 1)
    assert sub.query_emb is pairs.query_emb
    with pytest.raises(ValueError, match="'label'"):
        PairSet(user=[0], llm_a=[0], llm_b=[1], label=[0.3], query=[0], group=[0], query_emb=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="'query'"):
        PairSet(user=[0], llm_a=[0], llm_b=[1], label=[1.0], query=[3], group=[0], query_emb=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="'user'"):
        PairSet(user=[0.5], llm_a=[0], llm_b=[1], label=[1.0], query=[0], group=[0], query_emb=np.zeros((1, 2)))


def quality_scores(pairs, groups, quality):
    sa, sb = quality[pairs.llm_a], quality[pairs.llm_b]
    gs = GroupScores(groups.group, groups.llm, quality[groups.llm], groups.rating)
    return sa, sb, gs


def test_evaluate_pair_scores_breakdowns():
    rng = np.random.default_rng(1)
    pairs, groups, quality = planted_pairset(rng)
    sa, sb, gs = quality_scores(pairs, groups, quality)
    users = [f"judge{u}" for u in range(6)]
    llms = [f"model{m}" for m in range(4)]
    res = evaluate_pair_scores("oracle_quality", pairs, sa, sb, users, llms, group_scores=gs, n_resamples=200)
    nontied = pairs.label != 0.5
    assert res.n_pairs == int(nontied.sum()) and res.n_ties == int((~nontied).sum())
    assert res.accuracy == pytest.approx(pairwise_accuracy(sa, sb, pairs.label))
    assert res.auc == pytest.approx(pairwise_auc(sa, sb, pairs.label))
    assert res.accuracy > 0.6  # scores carry the planted signal
    assert res.accuracy_ci[0] <= res.accuracy <= res.accuracy_ci[1]
    assert set(res.per_user) == set(users)
    assert sum(v["n_pairs"] for v in res.per_user.values()) == res.n_pairs
    # every non-tied pair involves two LLMs
    assert sum(v["n_pairs"] for v in res.per_llm.values()) == 2 * res.n_pairs
    m0 = (pairs.llm_a == 0) | (pairs.llm_b == 0)
    assert res.per_llm["model0"]["n_pairs"] == int((m0 & nontied).sum())
    u3 = pairs.user == 3
    assert res.per_user["judge3"]["accuracy"] == pytest.approx(pairwise_accuracy(sa[u3], sb[u3], pairs.label[u3]))
    assert res.top1 == pytest.approx(top1_accuracy(gs.group, gs.score, gs.rating))
    assert res.ovr_auc == pytest.approx(ovr_auc(gs.group, gs.score, gs.rating))
    assert res.top1_ci is not None and res.top1_ci[0] <= res.top1 <= res.top1_ci[1]
    assert res.n_groups > 0


def test_evaluate_pair_scores_k2_has_no_group_metrics():
    rng = np.random.default_rng(2)
    pairs, groups, quality = planted_pairset(rng, k=2)
    sa, sb, gs = quality_scores(pairs, groups, quality)
    res = evaluate_pair_scores("q", pairs, sa, sb, [str(i) for i in range(6)], list("abcd"),
                               group_scores=gs, n_resamples=50)
    assert res.top1 is None and res.ovr_auc is None and res.top1_ci is None
    with pytest.raises(ValueError, match="user index"):
        evaluate_pair_scores("q", pairs, sa, sb, ["only-one"], list("abcd"), n_resamples=10)


def test_report_markdown_json_headline(tmp_path):
    rng = np.random.default_rng(3)
    pairs, groups, quality = planted_pairset(rng)
    sa, sb, gs = quality_scores(pairs, groups, quality)
    users, llms = [f"u{i}" for i in range(6)], [f"m{i}" for i in range(4)]
    good = evaluate_pair_scores("gmtrouter", pairs, sa, sb, users, llms, group_scores=gs, n_resamples=100)
    rand = rng.normal(size=len(pairs))
    bad = evaluate_pair_scores("random", pairs, rand, -rand, users, llms, n_resamples=100)
    cold = evaluate_pair_scores("gmtrouter", pairs.subset(pairs.user == 0), sa[pairs.user == 0],
                                sb[pairs.user == 0], users, llms, n_resamples=100)
    report = EvalReport(split="test", methods={"gmtrouter": good, "random": bad},
                        cold_start={"gmtrouter": cold}, metadata={"seed": 0})
    md = report.to_markdown()
    row = next(line for line in md.splitlines() if line.startswith("| gmtrouter |"))
    assert f"{good.accuracy:.3f} [{good.accuracy_ci[0]:.3f}, {good.accuracy_ci[1]:.3f}]" in row
    assert f"{good.auc:.3f} [{good.auc_ci[0]:.3f}, {good.auc_ci[1]:.3f}]" in row
    assert f"{good.top1:.3f}" in row and str(good.n_pairs) in row
    rrow = next(line for line in md.splitlines() if line.startswith("| random |"))
    assert rrow.rstrip().endswith("| – | – |")
    assert "Cold-start" in md and md.count("| gmtrouter |") == 2
    assert "95% CI" in md

    path = tmp_path / "out" / "report.json"
    report.to_json(path)
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left
    data = json.loads(path.read_text())
    assert data["methods"]["gmtrouter"]["accuracy"] == pytest.approx(good.accuracy)
    assert data["methods"]["random"]["top1"] is None
    back = EvalReport.from_json(path)
    assert back.methods["gmtrouter"].auc_ci == pytest.approx(good.auc_ci)
    assert back.to_markdown() == md

    line = report.headline("gmtrouter")
    assert f"{good.accuracy:.3f}" in line and "test" in line
    with pytest.raises(KeyError):
        report.headline("nope")


def test_method_result_nan_serialises_as_null():
    r = MethodResult(name="x", n_pairs=0, accuracy=math.nan, accuracy_ci=(math.nan, math.nan),
                     auc=math.nan, auc_ci=(math.nan, math.nan),
                     per_user={"u": {"n_pairs": 0, "accuracy": math.nan, "auc": math.nan}})
    text = json.dumps(r.to_dict(), allow_nan=False)
    assert json.loads(text)["per_user"]["u"]["auc"] is None
    assert "accuracy" not in r.flat_metrics()
