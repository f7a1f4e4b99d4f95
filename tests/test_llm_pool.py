"""The open LLM pool and cost-aware routing (issue 15): added LLMs are routable and learn from
everybody's feedback; removed ones are never chosen; the pool is durable and shared; cost_weight."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from gmt_model.errors import RoutingError
from gmt_model.serving.router import GMTRouter

NEW_DESC = "NewLM 7B: an open chat model for everyday questions, writing and simple coding."


class PlantedEncoder:
    """The planted dataset's stored query embeddings; any other text (an LLM description) by hash."""

    name = "planted"

    def __init__(self, g):
        self.table = {t: g.query_emb[i] for i, t in enumerate(g.query_text)}
        self.dim = g.dim

    def encode(self, texts):
        return np.stack([self.table[t] if t in self.table else _hash_vec(t, self.dim) for t in texts])


def _hash_vec(text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def make(planted_models, g, log=None, **kw) -> GMTRouter:
    pers, _ = planted_models
    return GMTRouter.from_checkpoint(pers.best_dir, encoder=PlantedEncoder(g), feedback_log=log, **kw)


def _pool(r: GMTRouter) -> list[dict]:
    return [{k: v for k, v in d.items() if k != "index"} for d in r.llms()]


def test_added_llm_is_routable_and_learns_from_everybodys_feedback(planted_models, planted_graph, tmp_path):
    g = planted_graph
    r = make(planted_models, g, tmp_path / "fb.sqlite")
    info = r.add_llm("newlm", NEW_DESC, cost=0.2)
    assert info["name"] == "newlm" and not info["trained"] and "newlm" in r.candidates
    texts = list(dict.fromkeys(g.query_text))[:60]
    probe, teach = texts[:30], texts[30:]
    out = r.route_single({"query_text": probe[0], "user_id": "x", "candidates": ["m0", "newlm"]})
    assert out["model_name"] in ("m0", "newlm") and set(out["scores"]) == {"m0", "newlm"}
    prior_mean, prior_sd = r.crowd_strength("newlm")
    assert prior_mean == 0.0 and prior_sd == pytest.approx(1.0)  # a wide prior: a fair trial

    def share(user: str) -> float:
        res = r.route_batch([{"query_text": t, "user_id": user} for t in probe])
        return np.mean([x["model_name"] == "newlm" for x in res])

    before = share("fresh-before")
    # ten users each say newlm beat one trained LLM on a few queries: the crowd learns it for everybody
    for k in range(40):
        r.update_user_preference(f"voter{k % 10}", teach[k % len(teach)], "newlm", f"m{k % 4}")
    mean, sd = r.crowd_strength("newlm")
    assert mean > 1.0 and sd < prior_sd
    after = share("fresh-after")  # a user who never voted
    assert after >= 0.9 and after > before
    # a voter's own residual sits on top: the voter routes to it too
    assert r.route_single({"query_text": probe[1], "user_id": "voter3"})["model_name"] == "newlm"


def test_crowd_learns_which_queries_an_added_llm_is_good_at(planted_models, planted_graph):
    """Known answer: the crowd says newlm beats the trained LLMs on topic-0 queries and loses to them on
    topic-1 queries.  The crowd term of the added LLM is query-dependent, so a user who never voted gets
    newlm for new topic-0 queries and not for new topic-1 ones (a constant strength cannot do both)."""
    g = planted_graph
    r = make(planted_models, g)
    r.add_llm("newlm", NEW_DESC)
    by_topic = {k: [t for t in dict.fromkeys(g.query_text) if t.startswith(f"topic {k} ")] for k in (0, 1)}
    teach = {k: ts[:30] for k, ts in by_topic.items()}
    probe = {k: ts[30:60] for k, ts in by_topic.items()}

    def p_new(k: int) -> np.ndarray:  # P(newlm preferred) against each trained LLM, for a user who never voted
        res = r.route_batch([{"query_text": t, "user_id": "fresh", "candidates": [m, "newlm"]}
                             for t in probe[k] for m in ("m0", "m1", "m2", "m3")])
        return np.array([x["scores"]["newlm"] for x in res])

    gap_before = p_new(0).mean() - p_new(1).mean()
    for i in range(40):  # ten voters; as many wins as losses: newlm's average strength stays about the same
        m = f"m{i % 4}"
        r.update_user_preference(f"voter{i % 10}", teach[0][i % 30], "newlm", m)
        r.update_user_preference(f"voter{(i + 5) % 10}", teach[1][i % 30], m, "newlm")
    p0, p1 = p_new(0), p_new(1)
    assert p0.mean() - p1.mean() > gap_before + 0.4
    assert (p0 > 0.5).mean() >= 0.9 and (p1 < 0.5).mean() >= 0.9
    routed = r.route_batch([{"query_text": t, "user_id": "fresh2"} for k in (0, 1) for t in probe[k]])
    share = [np.mean([x["model_name"] == "newlm" for x in routed[k * 30:(k + 1) * 30]]) for k in (0, 1)]
    assert share[0] >= 0.8 and share[1] <= 0.1


def test_removed_llm_is_never_chosen_and_its_history_stays(planted_models, planted_graph, tmp_path):
    g = planted_graph
    r = make(planted_models, g, tmp_path / "fb.sqlite", policy="epsilon", epsilon=0.5, seed=1)
    texts = list(dict.fromkeys(g.query_text))[:40]
    for t in texts[:10]:  # a user who loves m0
        r.update_user_preference("fan", t, "m0", "m1")
    n_hist = r.history_size("fan")
    r.remove_llm("m0")
    assert "m0" not in r.candidates and "m0" not in [d["name"] for d in r.llms()]
    res = r.route_batch([{"query_text": t, "user_id": u} for t in texts for u in ("fan", g.user_ids[0], "new")])
    assert "m0" not in {x["model_name"] for x in res} and {x["model_name"] for x in res} >= {"m1", "m2"}
    with pytest.raises(RoutingError, match="candidates"):
        r.route_single({"query_text": texts[0], "user_id": "fan", "candidates": ["m0", "m1"]})
    assert r.history_size("fan") == n_hist  # the history is kept
    assert int((r.history().llm == r.pool.index["m0"]).sum()) > 0
    r2 = make(planted_models, g, tmp_path / "fb.sqlite", policy="thompson", seed=2)  # after a restart, too
    res = r2.route_batch([{"query_text": t, "user_id": "fan"} for t in texts])
    assert "m0" not in {x["model_name"] for x in res}


_CHILD = """
import json, sys, hashlib
import numpy as np
sys.path.insert(0, {tests!r})
from test_llm_pool import PlantedEncoder
from gmt_model.serving.router import GMTRouter

class Enc(PlantedEncoder):
    def __init__(self):
        self.table, self.dim = {{}}, {dim}

r = GMTRouter.from_checkpoint({ckpt!r}, encoder=Enc(), feedback_log={log!r})
print(json.dumps([{{k: v for k, v in d.items() if k != "index"}} for d in r.llms()]))
"""


def test_pool_is_the_same_after_a_restart_and_in_a_second_process(planted_models, planted_graph, tmp_path):
    g = planted_graph
    log = tmp_path / "fb.sqlite"
    a = make(planted_models, g, log)
    other = make(planted_models, g, log, feedback_sync_interval=0)  # a second router already running
    a.add_llm("newlm", NEW_DESC, cost=0.2)
    a.add_llm("other", "OtherLM: a small fast model.", cost=0.05, endpoint="http://127.0.0.1:9/v1")
    a.update_llm("newlm", cost=0.3)
    a.update_llm("m2", cost=12.0)
    a.remove_llm("m1")
    texts = list(dict.fromkeys(g.query_text))[:20]
    for k, t in enumerate(texts):
        a.update_user_preference(f"v{k % 3}", t, "newlm", "m0")
    want = _pool(a)
    assert sorted(d["name"] for d in want) == ["m0", "m2", "m3", "newlm", "other"]
    restarted = make(planted_models, g, log)
    assert _pool(restarted) == want
    other.sync_feedback()
    assert _pool(other) == want
    # the same pool and feedback: the same routing
    probe = [{"query_text": t, "user_id": u} for t in texts for u in ("v0", "fresh")]
    for x, y, z in zip(a.route_batch(probe), restarted.route_batch(probe), other.route_batch(probe)):
        assert x["model_name"] == y["model_name"] == z["model_name"]
        assert x["scores"] == pytest.approx(y["scores"], abs=1e-6) and x["scores"] == pytest.approx(z["scores"], abs=1e-6)
    code = _CHILD.format(tests=str(__import__("pathlib").Path(__file__).parent), dim=g.dim,
                         ckpt=str(planted_models[0].best_dir), log=str(log))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == want


def test_cost_weight_zero_equals_todays_routing(planted_models, planted_graph, tmp_path):
    g = planted_graph
    texts = list(dict.fromkeys(g.query_text))[:50]
    queries = [{"query_text": t, "user_id": u} for t in texts for u in (g.user_ids[0], g.user_ids[3], "cold")]
    for policy in ("greedy", "thompson"):
        plain = make(planted_models, g, policy=policy, seed=7)
        priced = make(planted_models, g, policy=policy, seed=7, cost_weight=0.0)
        for m, c in zip(["m0", "m1", "m2", "m3"], [30.0, 10.0, 1.0, 0.5]):
            priced.update_llm(m, cost=c)
        a = plain.route_batch(queries)
        b = priced.route_batch([dict(q, cost_weight=0) for q in queries])
        assert [x["model_name"] for x in a] == [x["model_name"] for x in b]
        assert [x["scores"] for x in a] == [x["scores"] for x in b]
        assert all("cheaper" not in x["reasoning"] for x in b)
    # a cost weight changes some choices (so the comparison above means something)
    c = priced.route_batch([dict(q, cost_weight=0.5) for q in queries])
    assert [x["model_name"] for x in c] != [x["model_name"] for x in b]


def test_high_cost_weight_picks_the_cheapest_candidate(planted_models, planted_graph):
    g = planted_graph
    r = make(planted_models, g, cost_weight=0.0)
    costs = {"m0": 30.0, "m1": 10.0, "m2": 1.0, "m3": 0.5}
    for m, c in costs.items():
        r.update_llm(m, cost=c)
    texts = list(dict.fromkeys(g.query_text))[:40]
    queries = [{"query_text": t, "user_id": u} for t in texts for u in (g.user_ids[0], g.user_ids[1], "cold")]
    base = r.route_batch(queries)
    cheap = r.route_batch([dict(q, cost_weight=1000.0) for q in queries])
    assert {x["model_name"] for x in cheap} == {"m3"}
    assert all(x["cost"] == 0.5 for x in cheap)
    moved = [x for x, y in zip(cheap, base) if y["model_name"] != "m3"]
    assert moved and all("cheaper m3" in x["reasoning"] for x in moved)
    # a subset of candidates: the cheapest of them
    two = r.route_single({"query_text": texts[0], "user_id": "cold", "candidates": ["m0", "m1"], "cost_weight": 1000})
    assert two["model_name"] == "m1" and two["cost"] == 10.0
    # the router's default comes from the config; max_cost is a hard limit
    r.cost_weight = 1000.0
    assert r.route_single(queries[0])["model_name"] == "m3"
    capped = r.route_batch([dict(q, cost_weight=0, max_cost=5.0) for q in queries])
    assert {x["model_name"] for x in capped} <= {"m2", "m3"}
    with pytest.raises(RoutingError, match="max_cost"):
        r.route_single(dict(queries[0], max_cost=0.1))
    with pytest.raises(RoutingError, match="cost_weight"):
        r.route_single(dict(queries[0], cost_weight=-1))


def test_bad_pool_input_stores_nothing(planted_models, planted_graph, tmp_path):
    g = planted_graph
    log = tmp_path / "fb.sqlite"
    r = make(planted_models, g, log)
    r.add_llm("newlm", NEW_DESC, cost=1.0)
    pool, events = _pool(r), r.feedback_log.read_llm_events()
    bad = [
        (lambda: r.add_llm("newlm", "another description"), "already in the pool"),
        (lambda: r.add_llm("m0", "a trained one"), "already in the pool"),
        (lambda: r.add_llm("x", ""), "description"),
        (lambda: r.add_llm("x", "   "), "description"),
        (lambda: r.add_llm("x", None), "description"),
        (lambda: r.add_llm("bad name!", "desc"), "name"),
        (lambda: r.add_llm("x", "desc", cost=-1.0), "cost"),
        (lambda: r.add_llm("x", "desc", cost=float("nan")), "cost"),
        (lambda: r.add_llm("x", "desc", cost="cheap"), "cost"),
        (lambda: r.update_llm("newlm", cost=float("inf")), "cost"),
        (lambda: r.update_llm("nope", cost=1.0), "not in the pool"),
        (lambda: r.update_llm("newlm", description=""), "description"),
        (lambda: r.update_llm("newlm"), "give a description"),
        (lambda: r.remove_llm("nope"), "not in the pool"),
    ]
    for call, msg in bad:
        with pytest.raises(RoutingError, match=msg):
            call()
        assert _pool(r) == pool and r.feedback_log.read_llm_events() == events
    for m in ["m0", "m1", "m2", "m3"]:
        r.remove_llm(m)
    events = r.feedback_log.read_llm_events()
    with pytest.raises(RoutingError, match="last LLM"):
        r.remove_llm("newlm")
    assert [d["name"] for d in r.llms()] == ["newlm"] and r.feedback_log.read_llm_events() == events
    assert [d["name"] for d in _pool(make(planted_models, g, log))] == ["newlm"]


def test_config_pool_lists_the_teams_llms(planted_models, planted_graph, tmp_path):
    from gmt_model.method.config import ConfigError, load_router_config

    pers, _ = planted_models
    cfg = tmp_path / "router.yaml"
    cfg.write_text(f"""
model_path: {{load_model_path: {pers.best_dir}}}
router:
  cost_weight: 0.2
  llms:
    m2: {{cost: 3.0}}
    team-a: {{description: "Team A: our fine-tuned support model.", cost: 0.4, endpoint: "http://127.0.0.1:9/v1"}}
    team-b: "Team B: a general assistant."
""")
    rc = load_router_config(cfg)
    assert rc.endpoints["team-a"] == {"base_url": "http://127.0.0.1:9/v1"} and rc.cost_weight == 0.2
    r = GMTRouter(config=rc, encoder=PlantedEncoder(planted_graph))
    assert r.candidates == ["m2", "team-a", "team-b"] and r.cost_weight == 0.2
    assert {d["name"]: d["cost"] for d in r.llms()} == {"m2": 3.0, "team-a": 0.4, "team-b": None}
    out = r.route_single({"query_text": planted_graph.query_text[0], "user_id": "u"})
    assert out["model_name"] in r.candidates
    for bad, msg in [("cost: -1", "cost"), ("description: ''", "description"), ("colour: red", "unknown keys")]:
        cfg.write_text(f"model_path: {{load_model_path: {pers.best_dir}}}\nrouter: {{llms: {{x: {{{bad}}}}}}}\n")
        with pytest.raises(ConfigError, match=msg):
            load_router_config(cfg)


def test_crowd_refits_follow_a_schedule_of_the_rows_and_routers_agree(planted_models, planted_graph, tmp_path,
                                                                      monkeypatch):
    """The crowd estimate of an added LLM is refitted on a schedule of its rated rows (every row at first,
    then each 5% of growth), not at every route after a vote: bounded work on a busy router.  The schedule
    depends on the rows only, so a router that routed after every vote and one that synced them all at
    once hold the same estimate."""
    from gmt_model.serving.llm_pool import CROWD_EVERY, crowd_schedule

    assert [crowd_schedule(n) for n in (0, 1, CROWD_EVERY, CROWD_EVERY + 2, CROWD_EVERY + 3)] == \
        [0, 1, CROWD_EVERY, CROWD_EVERY, CROWD_EVERY + 3]
    g = planted_graph
    log = tmp_path / "fb.sqlite"
    a = make(planted_models, g, log, feedback_sync_interval=-1)
    a.add_llm("newlm", NEW_DESC, cost=0.2)
    texts = list(dict.fromkeys(g.query_text))[:60]
    fits = []
    real_fit = a.state.crowd.fit
    monkeypatch.setattr(a.state.crowd, "fit", lambda *x, **k: (fits.append(1), real_fit(*x, **k))[1])
    votes = 45  # 90 rows: every row up to 50, then 50 -> 53 -> 56 -> ... (steps of 5%)
    for k in range(votes):
        a.update_user_preference(f"voter{k % 10}", texts[k % len(texts)], "newlm", f"m{k % 4}")
        a.route_single({"query_text": texts[0], "user_id": "probe"})
    n_points = len({crowd_schedule(n) for n in range(2, 2 * votes + 1, 2)})
    assert len(fits) == n_points < votes
    b = make(planted_models, g, log, feedback_sync_interval=-1)  # replays all the rows at start
    b.route_single({"query_text": texts[0], "user_id": "probe"})
    for t in texts[:5]:
        np.testing.assert_allclose(a.route_single({"query_text": t, "user_id": "probe2"})["scores"]["newlm"],
                                   b.route_single({"query_text": t, "user_id": "probe2"})["scores"]["newlm"],
                                   atol=1e-6)
    assert a.crowd_strength("newlm") == pytest.approx(b.crowd_strength("newlm"), abs=1e-6)


def test_crowd_scores_an_added_llm_like_the_trained_llm_it_is_voted_like():
    """Known answer: an added LLM (index 3) wins where trained LLM 0 is the model's favourite and loses
    elsewhere; the queries are unrelated texts (random embeddings), so only the score kernel (the trained
    LLMs' scores of the query) can carry this to new queries.  Break: the score kernel off (score_sd 0, or
    no features) -> the new queries all get the same strength."""
    from gmt_model.serving.llm_pool import CrowdEstimate

    rng = np.random.default_rng(0)
    d, n = 32, 120
    emb = rng.normal(size=(2 * n, d))
    # the "trained LLMs' scores" of each query: a function of the embedding (as the GNN's are)
    proj = rng.normal(size=(d, 3)) / np.sqrt(d)

    def featurize(e):
        s = e @ proj
        return (s - s.mean(axis=1, keepdims=True)) / np.sqrt(3)

    good = (emb @ proj).argmax(axis=1) == 0  # LLM 0 is the favourite of these queries
    teach, probe = slice(0, n), slice(n, 2 * n)
    a = np.full(n, 3)
    b = rng.integers(0, 3, n)
    y = good[teach].astype(float)
    off = np.zeros(n)
    for score_sd, expect in ((1.0, True), (0.0, False)):
        c = CrowdEstimate(query_sd=0.5, text_sd=1.0, score_sd=score_sd, featurize=featurize)
        c.fit(4, np.array([3]), a, b, off, y, np.ones(n), emb[teach])
        s = c(np.array([3]), emb[probe])[:, 0]
        gap = s[good[probe]].mean() - s[~good[probe]].mean()
        assert bool(gap > 0.4) is expect, (score_sd, gap)
        assert np.isfinite(c.log_evidence)
    # the evidence prefers the kernel that explains the votes
    with_s = CrowdEstimate(score_sd=1.0, featurize=featurize)
    with_s.fit(4, np.array([3]), a, b, off, y, np.ones(n), emb[teach])
    without_s = CrowdEstimate(score_sd=0.0, featurize=featurize)
    without_s.fit(4, np.array([3]), a, b, off, y, np.ones(n), emb[teach])
    assert with_s.log_evidence > without_s.log_evidence + 5


def test_router_scores_an_added_llm_like_the_trained_llm_it_is_voted_like(planted_models, planted_graph):
    """Through the router: voters prefer newlm exactly where the GNN scores m0 high (relative to the other
    trained LLMs).  On new texts unrelated to the voted ones (hashed embeddings: the topic and same-text
    kernels know nothing there), newlm's score follows m0's for a user who never voted.  Break: the router's
    crowd term without the trained LLMs' scores (``CrowdEstimate()`` in UserState) -> red."""
    g = planted_graph
    from gmt_model.serving.llm_pool import CROWD_SCORE_SD, CrowdEstimate

    r = make(planted_models, g)
    r.add_llm("newlm", NEW_DESC)
    assert CROWD_SCORE_SD > 0 and r.state.crowd.score_sd == CROWD_SCORE_SD
    # only the score kernel, with the router's features (the topic kernel, linear in the embedding, could
    # learn a planted GNN's near-linear scores too)
    r.state.crowd = CrowdEstimate(query_sd=0.0, text_sd=0.0, featurize=r.state.crowd.featurize)
    texts = list(dict.fromkeys(g.query_text))[:80]
    z = r.state.crowd_scores(r.embed(texts))[:, 0]
    probe = [f"an unrelated question number {i}" for i in range(120)]
    zp = r.state.crowd_scores(r.embed(probe))[:, 0]

    def p_new():
        res = r.route_batch([{"query_text": t, "user_id": "fresh", "candidates": ["m1", "newlm"]} for t in probe])
        return np.array([x["scores"]["newlm"] for x in res])

    before = p_new()
    for i, t in enumerate(texts):
        m = f"m{1 + i % 3}"
        win, lose = ("newlm", m) if z[i] > np.median(z) else (m, "newlm")
        r.update_user_preference(f"voter{i % 10}", t, win, lose)
    moved = p_new() - before  # what the votes changed
    assert np.corrcoef(moved, zp)[0, 1] > 0.5


def test_crowd_votes_from_the_live_history():
    """The crowd term's observations, known answer: a pair rated together is one vote (the higher rating wins,
    equal ratings none), a single rating is a vote against the average LLM at ``point_weight`` with label
    0.5 + rating - the user's mean; ``upto`` keeps the first rows in log order, ``window`` the latest votes."""
    from types import SimpleNamespace

    from gmt_model.serving.llm_pool import crowd_votes

    # rows: 0-1 group 10 (user 0: LLM 2 rated 1.0 over LLM 0 at 0.0); 2 group 11 (user 1 rates LLM 2 alone,
    # 1.0; user 1's only row); 3-4 group 12 (a tie); 5-6 group 13 (LLM 0 over LLM 2), logged last
    h = SimpleNamespace(user=np.array([0, 0, 1, 0, 0, 0, 0]), llm=np.array([2, 0, 2, 2, 1, 0, 2]),
                        rating=np.array([1.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.0]),
                        order=np.array([1, 2, 3, 4, 5, 6, 7]))
    groups = {10: [0, 1], 11: [2], 12: [3, 4], 13: [5, 6]}
    a, b, y, w, rows = crowd_votes(h, groups, n_users=2, upto=7, point_weight=0.3, window=500)
    assert a.tolist() == [2, 2, 0] and b.tolist() == [0, -1, 2] and rows.tolist() == [0, 2, 5]
    # user 1's mean rating, with one pseudo-vote each way: (1 + 1) / (1 + 2) = 2/3 -> 0.5 + 1 - 2/3
    assert y == pytest.approx([1.0, 0.5 + 1.0 - 2 / 3, 1.0]) and w.tolist() == [1.0, 0.3, 1.0]
    a, b, *_ = crowd_votes(h, groups, n_users=2, upto=5, point_weight=0.3, window=500)  # rows 5-6 not yet
    assert a.tolist() == [2, 2] and b.tolist() == [0, -1]
    a, b, y, w, rows = crowd_votes(h, groups, n_users=2, upto=7, point_weight=0.3, window=2)  # the latest two
    assert rows.tolist() == [2, 5]
    assert [v.size for v in crowd_votes(h, {}, n_users=2, upto=0, point_weight=0.3, window=500)] == [0] * 5
