"""Routers sharing a PostgreSQL feedback store (replicas): a replica starts without replaying the store,
loads a user's rows on first use, follows the other replicas' rows by id, and routes like the replica that
took the feedback.  Skipped only where PostgreSQL is not installed (CI installs it)."""

from __future__ import annotations

import shutil
import uuid

import numpy as np
import pytest

from gmt_model.method.checkpoint import update_meta
from gmt_model.serving.router import GMTRouter
from test_personalization import DictEncoder, _feedback_script, _routes, make_router


@pytest.fixture
def url(pg):
    return pg.create_db("rt_" + uuid.uuid4().hex[:10])


def _same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x["history_size"] == y["history_size"] and x["model_name"] == y["model_name"]
        np.testing.assert_allclose(list(x["scores"].values()), list(y["scores"].values()), atol=1e-5)


def test_an_uncached_user_is_loaded_from_the_store(planted_models, planted_graph, url, tmp_path):
    g = planted_graph
    a = make_router(planted_models, g, url)
    texts = _feedback_script(a, g)
    users = [g.user_ids[1], "fresh", g.user_ids[2], "never-seen"]
    before = _routes(a, texts, users)
    b = make_router(planted_models, g, url)  # starts after the feedback
    assert b.replayed == 0  # nothing read at start
    _same(_routes(b, texts, users), before)  # ... but each user's rows on first use
    assert b.replayed == 18 and b.history_size("fresh") == 16
    # the same rows as a replay of a SQLite log would apply: training cut-off and unmerged ids respected
    pers, _ = planted_models
    ck = tmp_path / "ck"
    shutil.copytree(pers.best_dir, ck)
    update_meta(ck, {"feedback_through_id": 4})
    partial = GMTRouter.from_checkpoint(ck, encoder=DictEncoder(g), feedback_log=url)
    assert partial.history_size("fresh") == 14 and partial.replayed == 14
    update_meta(ck, {"feedback_unmerged_ids": [1, 2]})
    unmerged = GMTRouter.from_checkpoint(ck, encoder=DictEncoder(g), feedback_log=url)
    assert unmerged.history_size(g.user_ids[1]) == partial.history_size(g.user_ids[1]) + 2


def test_replicas_converge_through_the_store(planted_models, planted_graph, url):
    g = planted_graph
    a = make_router(planted_models, g, url, feedback_sync_interval=0)
    b = make_router(planted_models, g, url, feedback_sync_interval=0)
    users = [g.user_ids[1], "fresh", g.user_ids[2]]
    texts = sorted(set(g.query_text))[:40]
    _routes(b, texts, users)  # b has loaded these users (nothing stored yet): from now on it follows them by id
    _feedback_script(a, g)
    b.update_user_preference("fresh", texts[30], a.llms[1], a.llms[2])  # b's own, interleaved
    _same(_routes(b, texts, users), _routes(a, texts, users))
    assert b.history_size("fresh") == a.history_size("fresh") == 18
    # a third replica that never saw these users agrees too (it loads them on first use)
    c = make_router(planted_models, g, url, feedback_sync_interval=0)
    _same(_routes(c, texts, users), _routes(a, texts, users))


def test_routing_goes_on_while_the_store_is_down(planted_models, planted_graph, url, pg):
    g = planted_graph
    a = make_router(planted_models, g, url, feedback_sync_interval=0)
    texts = _feedback_script(a, g)
    b = make_router(planted_models, g, url, feedback_sync_interval=0)
    b.route_single({"query_text": texts[0], "user_id": "fresh"})  # loaded
    pg.stop()
    try:
        for user in ("fresh", g.user_ids[1], "someone-new"):  # loaded, not loaded, unknown: all answered
            assert b.route_single({"query_text": texts[0], "user_id": user})["model_name"] in b.llms
        assert b.history_size("fresh") == 16
        with pytest.raises(OSError, match="feedback store"):  # feedback cannot be stored: refused, not lost
            b.update_user_feedback("fresh", texts[1], b.llms[0], 1.0)
    finally:
        pg.start()
    b.link.retry_at = 0.0  # (instead of waiting for the retry interval)
    _same(_routes(b, texts, [g.user_ids[1], "fresh"]), _routes(a, texts, [g.user_ids[1], "fresh"]))


def test_loaded_users_are_bounded_and_an_evicted_user_is_reloaded_identically(planted_models, planted_graph, url):
    """router.max_loaded_users: past it the least recently used users are dropped (rows, texts, caches) and
    read again from the store on their next use, routing as before."""
    g = planted_graph
    texts = sorted(set(g.query_text))[:40]
    full = make_router(planted_models, g, url, feedback_sync_interval=0)  # holds every user it serves
    _feedback_script(full, g)
    users = [f"new-{i}" for i in range(8)] + [g.user_ids[3], g.user_ids[4]]
    for i, user in enumerate(users):
        for j in range(3):
            full.update_user_preference(user, texts[(7 * i + j) % 40], full.llms[(i + j) % len(full.llms)],
                                        full.llms[(i + j + 1) % len(full.llms)], session_id=f"s{i}", turn=j + 1)
    everyone = users + [g.user_ids[1], "fresh"]
    expected = {u: _routes(full, texts, [u]) for u in everyone}
    small = make_router(planted_models, g, url, feedback_sync_interval=3600, max_loaded_users=3)
    base_rows = small.state.hist.n
    for _ in range(2):  # the second round reloads every user the first one evicted
        prev = None
        for u in everyone:
            _same(_routes(small, texts, [u]), expected[u])
            if prev is not None:  # still loaded: its rows renumbered by the compaction, its routing the same
                assert prev in small._loaded
                _same(_routes(small, texts, [prev]), expected[prev])
            prev = u
            assert len(small._loaded) <= 3
            # memory follows the users held: their rows (each user here has at most 16) and texts only
            assert small.state.hist.n - base_rows <= 3 * 16 and len(small.state.text_row) <= 3 * 16
            assert len(small.state.users) <= len(small.checkpoint.users) + 4  # + the one loaded before an eviction
    assert small.evicted >= len(everyone)
    # own feedback not yet synced survives the eviction of its user (read again, not skipped as own)
    small.update_user_feedback("fresh", texts[20], small.llms[3], 4.0)
    full.sync_feedback(force=True)
    for u in users[:4]:
        small.route_single({"query_text": texts[0], "user_id": u})
    assert "fresh" not in small._loaded
    _same(_routes(small, texts, ["fresh"]), _routes(full, texts, ["fresh"]))
    small.sync_feedback(force=True)
    assert small.history_size("fresh") == full.history_size("fresh") == 17
