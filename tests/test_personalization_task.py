"""The caller-named ``task`` (issue 16): a user's taste per kind of work, learned from feedback that names it,
through the public router API; validation; the feedback log carries it across restarts and processes; and
without a task anywhere routing is exactly what it was."""

from __future__ import annotations

import numpy as np
import pytest

from gmt_model.errors import RoutingError
from gmt_model.evaluation.metrics import pairwise_auc
from gmt_model.method.personal import PersonalConfig, build_evidence, fit_posterior, task_columns
from gmt_model.serving.router import GMTRouter

from test_personalization import DictEncoder, make_router
from test_personalization_adaptive import demo_queries  # noqa: F401  (a fixture)


class ProjectedEncoder(DictEncoder):
    """The planted checkpoint's encoder, plus the demo queries: their embeddings through a fixed random
    projection to the checkpoint's width (scaled as its own queries).  The checkpoint's query features then
    carry little of the demo topic, as MiniLM's carry little of MT-Bench's category: the task named does."""

    def __init__(self, g, texts, emb):
        super().__init__(g)
        rng = np.random.default_rng(0)
        proj = rng.normal(size=(emb.shape[1], g.dim))
        x = (emb - emb.mean(axis=0)) @ proj
        own = np.asarray(g.query_emb, np.float64)
        x = x / x.std() * own.std() + own.mean(axis=0)
        self.table.update({t: v.astype(np.float32) for t, v in zip(texts, x)})


@pytest.fixture(scope="module")
def demo_setup(planted_models, planted_graph, demo_queries):  # noqa: F811
    texts, topic, emb = demo_queries
    return ProjectedEncoder(planted_graph, texts, emb), texts, topic


def _router(planted_models, encoder, **opts) -> GMTRouter:
    pers, _ = planted_models
    return GMTRouter.from_checkpoint(pers.best_dir, encoder=encoder, **opts)


def _task_user_auc(planted_models, demo_setup, k: int = 100, users: int = 4, seed: int = 0, name_task: bool = True,
                   **opts) -> float:
    """Planted users with a random LLM ranking per demo topic: k pairwise votes on half of the demo queries
    (``update_user_preference`` with ``task`` = the topic), AUC on 200 votes on the other half, routed with
    the task named (``route_batch``)."""
    encoder, texts, topic = demo_setup
    router = _router(planted_models, encoder, **opts)
    llms, names = list(router.llms), [f"topic-{t}" for t in range(int(topic.max()) + 1)]
    rng = np.random.default_rng(seed)
    half = rng.permutation(len(texts))
    fit_q, test_q = half[: len(texts) // 2], half[len(texts) // 2:]
    ps, ys = [], []
    for u in range(users):
        user = f"tasker{u}"
        rank = np.array([rng.permutation(len(llms)) for _ in names])  # rank[topic, llm], 0 = favourite

        def votes(pool, n):
            out = []
            for _ in range(n):
                q = int(pool[rng.integers(pool.size)])
                a, b = rng.choice(len(llms), 2, replace=False)
                out.append((q, a, b, float(rank[topic[q], a] < rank[topic[q], b])))
            return out

        for q, a, b, y in votes(fit_q, k):
            win, lose = (a, b) if y == 1.0 else (b, a)
            router.update_user_preference(user, texts[q], llms[win], llms[lose],
                                          task=names[topic[q]] if name_task else None)
        test = votes(test_q, 200)
        res = router.route_batch([{"query_text": texts[q], "user_id": user, "candidates": [llms[a], llms[b]],
                                   **({"task": names[topic[q]]} if name_task else {})} for q, a, b, _ in test])
        ps.append([r["scores"][llms[a]] for r, (q, a, b, _) in zip(res, test)])
        ys.append([y for *_, y in test])
    p, y = np.concatenate(ps), np.concatenate(ys)
    return float(pairwise_auc(p, 1.0 - p, y))


def test_a_taste_per_task_is_learned_through_the_api_when_the_caller_names_the_task(planted_models, demo_setup):
    """Break: the task terms off (``task_sd: 0``) -> the same votes and routes give < 0.85."""
    auc = _task_user_auc(planted_models, demo_setup)
    assert auc >= 0.85, auc


def test_tasks_get_terms_only_as_far_as_named_and_bounded():
    cfg = PersonalConfig(max_tasks=2)
    codes, names = task_columns(["b", None, "a", "c", "b", "a", "b"], cfg)
    assert names == ("a", "b") and codes.tolist() == [1, -1, 0, -1, 1, 0, 1]  # the two most named, by name
    assert task_columns(["a"], PersonalConfig(task_sd=0.0))[1] == ()
    with pytest.raises(ValueError, match="max_tasks"):
        PersonalConfig.from_dict({"max_tasks": 0})
    with pytest.raises(ValueError, match="task_sd"):
        PersonalConfig.from_dict({"task_sd": -1})
    # rows without a task: the evidence (and so the fit) is exactly the task-free one
    rng = np.random.default_rng(0)
    n, n_llms = 40, 4
    grp, llm = np.repeat(np.arange(n // 2), 2), rng.integers(n_llms, size=n)
    rating, z, s = rng.random(n), np.c_[np.ones(n), rng.normal(size=(n, 2))], rng.normal(size=(n, n_llms))
    cfg = PersonalConfig()
    plain = build_evidence(grp, llm, rating, z, s, cfg)
    none = build_evidence(grp, llm, rating, z, s, cfg, task=np.full(n, -1))
    assert none.n_tasks == 0 and np.array_equal(plain.x, none.x)
    with_task = build_evidence(grp, llm, rating, z, s, cfg, task=np.where(np.arange(n) < 20, 0, -1))
    assert with_task.n_tasks == 1 and with_task.x.shape[1] == plain.x.shape[1] + n_llms
    assert np.array_equal(with_task.x[:, : plain.x.shape[1]], plain.x)  # per-LLM blocks first, unchanged
    post = fit_posterior(with_task, cfg, n_llms, 2)
    assert post.residual.size == n_llms * 3 and post.n_tasks == 1


def test_without_a_task_routing_is_exactly_as_before(planted_models, planted_graph):
    """No task anywhere: the same scores as with the task terms off (the code path of the router before
    tasks); a task the user never named: the same scores as no task."""
    g = planted_graph
    routers = [make_router(planted_models, g), make_router(planted_models, g, personalization={"task_sd": 0.0})]
    texts = sorted(set(g.query_text))[:40]
    rng = np.random.default_rng(3)
    for i in range(30):
        q = texts[int(rng.integers(len(texts)))]
        a, b = rng.choice(routers[0].llms, 2, replace=False).tolist()
        for r in routers:
            r.update_user_preference("plain", q, a, b)
    batch = [{"query_text": t, "user_id": "plain"} for t in texts]
    got = [[x["scores"] for x in r.route_batch(batch)] for r in routers]
    assert got[0] == got[1]
    named = routers[0].route_batch([dict(q, task="never-named") for q in batch])
    assert [x["scores"] for x in named] == got[0] and all(x["task"] == "never-named" for x in named)
    assert "task" not in routers[0].route_batch(batch)[0]


def test_task_validation_names_the_field_and_stores_nothing(planted_models, planted_graph, tmp_path):
    g = planted_graph
    router = make_router(planted_models, g, tmp_path / "fb.sqlite")
    q = g.query_text[0]
    a, b = router.llms[:2]
    for bad in ("", "   ", 5, "x" * 65, "line\nbreak"):
        with pytest.raises(RoutingError, match="field 'task'") as err:
            router.route_single({"query_text": q, "user_id": "v", "task": bad})
        assert err.value.field == "task"
        with pytest.raises(RoutingError, match="field 'task'"):
            router.update_user_preference("v", q, a, b, task=bad)
        with pytest.raises(RoutingError, match="field 'task'"):
            router.update_user_feedback("v", q, a, 4.0, task=bad)
    assert router.feedback_log.count() == 0
    res = router.update_user_feedback("v", q, a, 4.0, task="  coding ")  # surrounding spaces stripped
    assert res["task"] == "coding" and router.feedback_log.read()[0].task == "coding"


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_the_task_travels_with_the_log_restart_and_a_second_process_agree(planted_models, demo_setup, tmp_path,
                                                                         store, request):
    """Feedback with tasks, stored in the log: a restarted router (replay; PostgreSQL: the user loaded on
    first use) and another router following the same log (sync) route task-named queries exactly as the
    router that took the feedback.  Break: the replay / load drops the rows' task -> the scores differ."""
    import uuid

    encoder, texts, topic = demo_setup
    log = tmp_path / "fb.sqlite" if store == "sqlite" else \
        request.getfixturevalue("pg").create_db("task_" + uuid.uuid4().hex[:10])
    first = _router(planted_models, encoder, feedback_log=log)
    follower = _router(planted_models, encoder, feedback_log=log, feedback_sync_interval=-1.0)
    llms = list(first.llms)
    rng = np.random.default_rng(4)
    for i in range(60):
        q = int(rng.integers(len(texts)))
        a, b = rng.choice(len(llms), 2, replace=False)
        t = int(topic[q])
        win, lose = (a, b) if (a + t) % 2 else (b, a)  # a taste that flips with the topic
        first.update_user_preference("mover", texts[q], llms[win], llms[lose], task=f"topic-{t}")
    assert {r.task for r in first.feedback_log.read()} == {f"topic-{t}" for t in set(topic.tolist())}
    batch = [{"query_text": texts[i], "user_id": "mover", "task": f"topic-{int(topic[i])}"} for i in range(0, 30, 3)]
    want = [r["scores"] for r in first.route_batch(batch)]
    untasked = [r["scores"] for r in first.route_batch([{k: v for k, v in q.items() if k != "task"} for q in batch])]
    assert want != untasked  # the task terms matter for this user
    restarted = _router(planted_models, encoder, feedback_log=log)
    assert [r["scores"] for r in restarted.route_batch(batch)] == want
    if store == "sqlite":
        assert follower.sync_feedback() == 120
    assert [r["scores"] for r in follower.route_batch(batch)] == want


def test_the_task_over_http_and_the_cli(planted_models, planted_graph, tmp_path, monkeypatch, capsys):
    """/v1/route and the chat body (field or X-Task header) take and echo it; /v1/feedback stores it; a bad
    task is a 400 naming it and nothing is stored.  The CLI: ``infer --task``, ``feedback --task``."""
    import json

    from fastapi.testclient import TestClient

    import gmt_model.data.encoder
    from gmt_model.serving.cli import main
    from gmt_model.serving.feedback import FeedbackLog
    from gmt_model.serving.server import create_app

    g = planted_graph
    log = tmp_path / "fb.sqlite"
    router = make_router(planted_models, g, log)
    q = g.query_text[0]
    a, b = router.llms[:2]
    with TestClient(create_app(router)) as c:
        r = c.post("/v1/route", json={"query_text": q, "user_id": "h", "task": "coding"})
        assert r.status_code == 200 and r.json()["task"] == "coding"
        r = c.post("/v1/route", json={"queries": [{"query_text": q, "user_id": "h", "task": "math"}]})
        assert r.json()["results"][0]["task"] == "math"
        chat = {"model": "router", "messages": [{"role": "user", "content": q}], "user": "h"}
        r = c.post("/v1/chat/completions", json=dict(chat, task="coding"))  # no upstream: 404 with the routing
        assert r.json()["error"]["routing"]["task"] == "coding"
        r = c.post("/v1/chat/completions", json=chat, headers={"X-Task": "writing"})
        assert r.json()["error"]["routing"]["task"] == "writing"
        r = c.post("/v1/feedback", json={"user": "h", "query": q, "preferred": a, "rejected": b, "task": "coding"})
        assert r.status_code == 200, r.json()
        r = c.post("/v1/feedback", json={"user": "h", "query": q, "model": a, "rating": 4.0, "task": "math"})
        assert r.status_code == 200, r.json()
        n = router.feedback_log.count()
        for path, body in (("/v1/route", {"query_text": q, "user_id": "h", "task": ""}),
                           ("/v1/chat/completions", dict(chat, task=7)),
                           ("/v1/feedback", {"user": "h", "query": q, "model": a, "rating": 4.0, "task": " "})):
            r = c.post(path, json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == "task", (path, r.json())
        assert router.feedback_log.count() == n
    assert [x.task for x in FeedbackLog(log).read()] == ["coding", "coding", "math"]
    # the CLI
    monkeypatch.setattr(gmt_model.data.encoder, "get_encoder", lambda name=None, **kw: DictEncoder(g))
    cfg = tmp_path / "router.yaml"
    cfg.write_text(f"model_path: {{load_model_path: {planted_models[0].best_dir}}}\nrouter: {{feedback_log: {log}}}\n")
    capsys.readouterr()
    assert main(["infer", "--config", str(cfg), "--query", q, "--route-only", "--task", "coding"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "coding"
    assert main(["feedback", "--config", str(cfg), "--user-id", "h", "--query", q, "--preferred", a,
                 "--rejected", b, "--task", "writing"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "writing"
    assert main(["feedback", "--config", str(cfg), "--user-id", "h", "--query", q, "--model", a, "--rating", "3",
                 "--task", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "task" in err and err.count("\n") == 1
    assert [x.task for x in FeedbackLog(log).read()][-2:] == ["writing", "writing"]


def test_a_crowd_like_user_naming_tasks_does_not_chase_the_noise_of_five_votes(planted_models, planted_graph):
    """As ``test_a_crowd_like_user_does_not_chase_the_noise_of_five_votes`` (issue 16), with every vote and
    route naming one of three tasks: the task terms do not let 5 votes move a crowd-like user's routing.
    Break: the wide component alone (``p_wide: 1``) -> 0.735 < 0.75 (the task terms as free in every
    component as in the per-task one only moves 0.87 to 0.83: not caught here)."""
    from test_personalization_adaptive import PINNED

    g = planted_graph
    router = make_router(planted_models, g)
    pinned = make_router(planted_models, g, personalization=dict(PINNED, task_sd=0.0))
    texts = sorted({g.query_text[i] for i in np.flatnonzero(g.split_mask("test"))})[:60]
    tasks = ["coding", "writing", "math"]
    rng = np.random.default_rng(8)
    agree = []
    for u in range(10):
        user = f"crowdtask{u}"
        for _ in range(5):
            q, task = texts[int(rng.integers(len(texts)))], tasks[int(rng.integers(3))]
            a, b = rng.choice(router.llms, 2, replace=False).tolist()
            sc = pinned.route_single({"query_text": q, "user_id": user, "candidates": [a, b]})["scores"]
            p_a = 1.0 / (1.0 + np.exp(-(sc[a] - sc[b])))
            win, lose = (a, b) if rng.random() < p_a else (b, a)
            for r in (router, pinned):
                r.update_user_preference(user, q, win, lose, task=task)
        batch = [{"query_text": t, "user_id": user, "task": tasks[i % 3]} for i, t in enumerate(texts)]
        agree.append(np.mean([x["model_name"] == y["model_name"]
                              for x, y in zip(router.route_batch(batch), pinned.route_batch(batch))]))
    assert np.mean(agree) >= 0.75, [round(float(a), 2) for a in agree]


def test_a_switched_user_naming_a_task_is_followed(planted_models, planted_graph):
    """As ``test_a_switched_user_is_followed`` (issue 16), every vote and route naming the same task: change
    detection still fires and the router follows the new taste."""
    from test_personalization import crowd_reversed_rank, taste_votes

    g = planted_graph
    router = make_router(planted_models, g)
    new = crowd_reversed_rank(router)
    old = {m: len(new) - 1 - r for m, r in new.items()}

    def reveal(votes):
        for q, a, b, y in votes:
            win, lose = (a, b) if y == 1.0 else (b, a)
            router.update_user_preference("switcher", q, win, lose, task="chat")

    def auc(votes):
        res = router.route_batch([{"query_text": q, "user_id": "switcher", "candidates": [a, b], "task": "chat"}
                                  for q, a, b, _ in votes])
        p = np.array([r["scores"][a] for r, (q, a, b, _) in zip(res, votes)])
        return float(pairwise_auc(p, 1 - p, np.array([v[3] for v in votes])))

    reveal(taste_votes(g, old, 100, seed=5, split="training"))
    test_votes = taste_votes(g, new, 150, seed=6)
    assert auc(test_votes) < 0.2
    reveal(taste_votes(g, new, 20, seed=7, split="training"))
    assert auc(test_votes) >= 0.8
    assert router.posterior("switcher").recent_rows is not None and router.posterior("switcher").tasks == ("chat",)
