"""The validated weight of a user's training rows in their residual (``CrowdCalibration.history``).

The GNN was trained on a user's training rows, so a residual fitted on the same rows can repeat what
the GNN learned or fit noise.  Training chooses on the validation pairs how much those rows count
(``fit_history_weight``); the router and the evaluation use that weight, and feedback that arrives
after training always counts in full.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import planted_records, quick_config, write_records
from gmt_model.method.online import HISTORY_WEIGHTS
from gmt_model.method.training import fit_history_weight, router_calibration
from gmt_model.method.personal import PersonalConfig, build_evidence, fit_posterior
from gmt_model.serving.router import GMTRouter


def test_a_row_of_weight_zero_counts_as_a_row_left_out():
    rng = np.random.default_rng(0)
    n_llms, dims, n = 3, 2, 40
    group = np.repeat(np.arange(n // 2), 2)
    llm = np.stack([rng.choice(n_llms, 2, replace=False) for _ in range(n // 2)]).reshape(-1)
    rating = rng.integers(0, 5, n).astype(float) / 4
    z = np.c_[np.ones(n), rng.normal(size=(n, dims))]
    scores = rng.normal(size=(n, n_llms))
    cfg = PersonalConfig()
    w = np.where(np.arange(n) < n // 2, 0.0, 1.0)
    weighted = fit_posterior(build_evidence(group, llm, rating, z, scores, cfg, row_weight=w), cfg, n_llms, dims)
    keep = slice(n // 2, n)
    left_out = fit_posterior(build_evidence(group[keep], llm[keep], rating[keep], z[keep], scores[keep], cfg),
                             cfg, n_llms, dims)
    assert np.abs(left_out.mean).max() > 1e-3  # the rows kept move the residual
    np.testing.assert_allclose(weighted.mean, left_out.mean, atol=1e-6)
    # weight 1 everywhere is the unweighted evidence
    full = build_evidence(group, llm, rating, z, scores, cfg)
    ones = build_evidence(group, llm, rating, z, scores, cfg, row_weight=np.ones(n))
    np.testing.assert_array_equal(full.w, ones.w)


def test_a_history_that_misleads_on_validation_gets_weight_zero(tmp_path):
    """Known answer: every user's validation votes are the opposite of their training votes, so the
    residual fitted on the training rows points the wrong way on the validation pairs."""
    from gmt_model.data.graph_files import build_graph
    from gmt_model.method.checkpoint import load_checkpoint
    from gmt_model.method.training import train

    recs = planted_records(n_users=30, seed=5)
    for r in recs["valid"]:
        for step in r["conversation"]:
            step["rating"] = 5.0 - step["rating"]
    g = build_graph(write_records(tmp_path / "data", recs))
    res = train(g, quick_config(epochs=60, eval_every=20), tmp_path / "run", resume=False)
    ck = load_checkpoint(res.best_dir, device=torch.device("cpu"))
    calib = router_calibration(ck.model, g, torch.device("cpu"))
    assert calib.history == 0.0
    # the same data with the validation votes as they were: the training rows are not made worthless
    g_ok = build_graph(write_records(tmp_path / "ok", planted_records(n_users=30, seed=5)))
    assert fit_history_weight(ck.model, g_ok, torch.device("cpu"), calib) > 0.0
    # training stores the weight in the checkpoint, and the router reads it
    stored = ck.meta["cold_calibration"]
    assert stored["history"] in HISTORY_WEIGHTS


@pytest.fixture
def planted_router(planted_models, planted_graph, tmp_path):
    from test_router import DictEncoder

    pers, _ = planted_models
    return GMTRouter.from_checkpoint(pers.best_dir, encoder=DictEncoder(planted_graph),
                                     feedback_log=tmp_path / "feedback.sqlite")


def test_the_router_weighs_training_rows_by_the_weight_and_feedback_in_full(planted_router, planted_graph):
    r = planted_router
    g = planted_graph
    user = g.user_ids[0]
    u = r.state.user_index[user]
    assert r.state.rows_of.base_count(u) > 5
    post = lambda: torch.inference_mode()(r.state.posterior)(u)  # noqa: E731  (as the router calls it)
    r.calibration.history = 1.0
    assert np.abs(post().residual).max() > 1e-3  # the training rows move the residual
    r.calibration.history = 0.0
    r.state.post.clear()
    assert np.abs(post().residual).max() < 1e-9  # ... and with weight 0 they do not
    # feedback after training counts in full
    q = g.query_text[0]
    for _ in range(6):
        r.update_user_preference(user, q, g.llm_names[0], g.llm_names[1])
    res = post().residual.reshape(len(g.llm_names), -1)
    assert res[0, 0] - res[1, 0] > 0.05
