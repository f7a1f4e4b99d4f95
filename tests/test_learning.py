"""The learning test: on planted-preference demo data the personalised model
finds each user's taste; the user-blind ablation cannot (known answer)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gmt_model import schema as S
from gmt_model.checkpoint import load_checkpoint
from gmt_model.config import TrainConfig
from gmt_model.evaluation import evaluate
from gmt_model.graph import build_graph
from gmt_model.training import train


@pytest.fixture(scope="module")
def demo_report(demo_paths, tmp_path_factory):
    g = build_graph({k: v for k, v in demo_paths.items() if k in S.SPLITS})
    out = tmp_path_factory.mktemp("learning")
    cfg = dict(epochs=150, lr=1e-3, eval_every=10, save_every=1000, seed=136)
    pers = train(g, TrainConfig(**cfg), out / "pers", resume=False)
    blind = train(g, TrainConfig(personalization=False, **cfg), out / "blind", resume=False)
    report = evaluate(load_checkpoint(pers.best_dir).model, g, "test",
                      blind_model=load_checkpoint(blind.best_dir).model, n_resamples=300)
    return g, report


def test_personalized_model_finds_planted_preferences(demo_report):
    g, report = demo_report
    m = report.methods
    print(report.to_markdown())
    assert m["gmtrouter"].auc >= 0.85, report.to_markdown()
    assert m["gmtrouter"].auc - m["user_blind"].auc >= 0.15, report.to_markdown()
    # the preferences cancel over users: the global baseline is near chance, GMTRouter far above it
    assert m["gmtrouter"].auc > m["global_bt"].auc + 0.2
    lo, hi = m["gmtrouter"].auc_ci
    assert lo <= m["gmtrouter"].auc <= hi and hi - lo < 0.2


def test_cold_start_falls_back_to_population_level(demo_report):
    _, report = demo_report
    cold = report.cold_start["gmtrouter"].auc
    assert cold < report.methods["gmtrouter"].auc - 0.15  # history is what personalises
    assert cold > 0.4


def test_per_user_metrics_reported(demo_report):
    g, report = demo_report
    per_user = report.methods["gmtrouter"].per_user
    assert set(per_user) <= set(g.user_ids) and len(per_user) > 0.8 * g.num_users
    aucs = [v["auc"] for v in per_user.values() if v.get("auc") is not None and not np.isnan(v["auc"])]
    assert np.median(aucs) > 0.8
    assert set(report.methods["gmtrouter"].per_llm) == set(g.llm_names)
    json.dumps(report.to_dict())
