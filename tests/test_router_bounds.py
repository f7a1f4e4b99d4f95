"""The live router's bounds: an LRU of cached users that never changes a route, a
history window for the GNN representation, the deterministic refresh schedule,
and the residual's window that keeps what the user said of every LLM."""

from __future__ import annotations

import numpy as np
import torch

from gmt_model.method import schema as S
from gmt_model.method.personal import PersonalConfig, window_rows

from test_personalization import DictEncoder, make_router, reveal, taste_votes  # noqa: F401 (fixtures via conftest)


def _queries(g, n=12, seed=0):
    rng = np.random.default_rng(seed)
    texts = sorted({g.query_text[i] for i in np.flatnonzero(g.split_mask(S.SPLIT_TEST))})
    return [texts[int(i)] for i in rng.integers(len(texts), size=n)]


def _scores(router, users, texts):
    out = router.route_batch([{"query_text": t, "user_id": u} for u in users for t in texts])
    return np.array([[r["scores"][m] for m in router.llms] for r in out])


def test_lru_bounds_cached_users_without_changing_routes(planted_models, planted_graph):
    g = planted_graph
    users = g.user_ids[:6] + ["fresh"]
    texts = _queries(g)
    big = make_router(planted_models, g)
    small = make_router(planted_models, g, cache_users=2)
    rank = {m: i for i, m in enumerate(big.llms)}
    for r in (big, small):
        reveal(r, "fresh", taste_votes(g, rank, 6, seed=5, split=S.SPLIT_TRAIN))
        reveal(r, g.user_ids[1], taste_votes(g, rank, 4, seed=6, split=S.SPLIT_TRAIN))
    for _ in range(2):  # the second pass recomputes what the LRU dropped
        a, b = _scores(big, users, texts), _scores(small, users, texts)
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(small._user_rep) <= 2 and len(small._post) <= 2 and len(small._offsets) <= 2
    assert len(big._user_rep) >= len(users) - 1


def test_representation_reads_only_the_history_window(planted_models, planted_graph):
    """With history_window=w the user's GNN representation is the one of the user's latest w rows:
    rows before them change nothing."""
    g = planted_graph
    texts = _queries(g, 20, seed=1)
    llms = None

    def rep_after(prefix_votes, w):
        r = make_router(planted_models, g, history_window=w, refresh_growth=0)
        nonlocal llms
        llms = r.llms
        for q, m, y in prefix_votes + late:
            r.update_user_feedback("windowed", q, m, y)
        return r._rep(r._user_index["windowed"])

    rng = np.random.default_rng(2)
    late = [(texts[i], g.llm_names[int(rng.integers(g.num_llms))], float(rng.random())) for i in range(8)]
    early_a = [(texts[10 + i], g.llm_names[0], 1.0) for i in range(6)]
    early_b = [(texts[10 + i], g.llm_names[1], 0.0) for i in range(6)]
    torch.testing.assert_close(rep_after(early_a, 8), rep_after(early_b, 8))
    assert not torch.allclose(rep_after(early_a, 14), rep_after(early_b, 14))


def test_refresh_schedule_follows_growth_and_is_deterministic(planted_models, planted_graph):
    g = planted_graph
    r = make_router(planted_models, g, refresh_growth=0.5)
    u_name = g.user_ids[3]
    u = r._user_index[u_name]
    n0 = r.history_size(u_name)
    sizes = []
    texts = _queries(g, 40, seed=3)
    for i, q in enumerate(texts):
        r.update_user_feedback(u_name, q, r.llms[i % len(r.llms)], float(i % 2))
        sizes.append(r._rep_size(u))
    # the representation is computed on n0 rows until the history grew by half, then on 1.5 x n0, ...
    expect, s = [], n0
    for i in range(len(texts)):
        n = n0 + i + 1
        while s + max(1, int(np.ceil(0.5 * s))) <= n:
            s += max(1, int(np.ceil(0.5 * s)))
        expect.append(s)
    assert sizes == expect and sizes[0] == n0 and sizes[-1] > n0
    # ... and a refresh actually recomputes it (a router that never refreshes would keep the first one)
    first = r._rep(u)
    r2 = make_router(planted_models, g, refresh_growth=0.5)
    for i, q in enumerate(texts[:2]):
        r2.update_user_feedback(u_name, q, r2.llms[i % len(r2.llms)], float(i % 2))
    torch.testing.assert_close(r2._rep(r2._user_index[u_name]), make_router(planted_models, g)._rep(u))
    assert not torch.allclose(first, r2._rep(r2._user_index[u_name]))


def test_residual_window_keeps_every_llms_latest_rows():
    cfg = PersonalConfig(window=5, window_per_llm=2)
    llm = np.array([0, 1, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0])  # LLMs 1 and 2 were last rated long ago
    keep = window_rows(llm, cfg)
    assert keep.tolist() == [1, 2, 4, 7, 8, 9, 10, 11]  # last 5 rows + the latest 2 of LLM 1 and of LLM 2
    assert window_rows(llm[:4], cfg).tolist() == [0, 1, 2, 3]
    assert window_rows(llm, PersonalConfig(window=5, window_per_llm=0)).tolist() == [7, 8, 9, 10, 11]


def test_bad_bound_settings_name_the_file_and_key(tmp_path):
    import pytest

    from gmt_model.method.config import ConfigError, load_router_config

    p = tmp_path / "r.yaml"
    for key, value in (("history_window", 0), ("cache_users", "many"), ("refresh_growth", -1),
                       ("max_loaded_users", 0)):
        p.write_text(f"model_path:\n  load_model_path: m/x.pt\nrouter:\n  {key}: {value}\n")
        with pytest.raises(ConfigError, match=f"{p}: router.{key}: expected"):
            load_router_config(p)
    p.write_text("model_path:\n  load_model_path: m/x.pt\nrouter:\n  history_window: 50\n  refresh_growth: 0\n"
                 "  max_loaded_users: 7\n")
    cfg = load_router_config(p)
    assert cfg.history_window == 50 and cfg.refresh_growth == 0.0 and cfg.cache_users == 20000
    assert cfg.max_loaded_users == 7


def test_subgraph_with_only_some_users_scores_as_with_all(planted_models, planted_graph):
    """build_subgraph(users=...) (what the router uses) holds only those users' nodes and scores the same."""
    from gmt_model.method.checkpoint import load_checkpoint
    from gmt_model.method.engine import build_subgraph, group_steps, score_groups

    g = planted_graph
    model = load_checkpoint(planted_models[0].best_dir).model.eval()
    users = np.array([2, 5, 7])
    vis = np.flatnonzero(g.split_mask(S.SPLIT_TRAIN) & np.isin(g.user, users))
    gs = group_steps(g, np.flatnonzero(g.split_mask(S.SPLIT_TEST) & np.isin(g.user, users)))
    cpu = torch.device("cpu")
    with torch.inference_mode():
        whole = build_subgraph(g, vis, gs.inter[gs.mask], cpu)
        part = build_subgraph(g, vis, gs.inter[gs.mask], cpu, users=users)
        a = score_groups(model, whole.embed(model), whole, gs)
        b = score_groups(model, part.embed(model), part, gs)
    assert part.num_users == users.size + 1 < whole.num_users
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
