"""Mini-batch training over users: it learns the demo's planted preferences, agrees
with full-batch training, and its batched scoring equals full-graph scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmt_model.method import schema as S
from gmt_model.evaluation.baselines import GlobalBradleyTerry
from gmt_model.method.checkpoint import load_checkpoint
from gmt_model.method.config import ConfigError, TrainConfig, load_train_config
from gmt_model.data.demo import HashedEncoder, demo_graph
from gmt_model.evaluation.report import training_pairs
from gmt_model.evaluation.metrics import pairwise_auc
from gmt_model.method.training import UserBatchSampler, pair_scores, predict_groups, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    g, _ = demo_graph("tiny", HashedEncoder(64))
    return g


def _cfg(**kw):
    base = dict(epochs=100, lr=2e-3, eval_every=10, save_every=1000, seed=3, hidden_dim=64, predictor_dim=64,
                num_gnn_layers=2)
    base.update(kw)
    return TrainConfig(**base)


def _test_auc(g, model, batch_users=None):
    gs, scores, _ = predict_groups(model, g, S.SPLIT_TEST, CPU, batch_users=batch_users)
    *_, sa, sb, label = pair_scores(gs, scores)
    return float(pairwise_auc(sa, sb, label))


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("minibatch")
    with pytest.warns(UserWarning, match="fewer than record_per_user"):
        full = train(tiny, _cfg(epochs=200), out / "full", resume=False)
    minis = []
    for seed in MINI_SEEDS:
        with pytest.warns(UserWarning, match="fewer than record_per_user"):
            minis.append(train(tiny, _cfg(batch_users=40, epochs=120, seed=seed), out / f"mini{seed}", resume=False))
    return full, *minis


#: mini-batch runs of 2 steps per epoch land in one of two modes on this data (test AUC about 0.78 or
#: 0.88 after 120 epochs, decided by the seed: 5 of 16 runs over seeds 1-8 in the lower one), so the
#: learning claim is about the mean over seeds, not one run
MINI_SEEDS = (1, 2, 3)


def test_minibatch_finds_the_planted_preferences_and_agrees_with_full_batch(tiny, runs):
    full, *minis = runs
    auc_full = _test_auc(tiny, load_checkpoint(full.best_dir).model)
    auc_mini = [_test_auc(tiny, load_checkpoint(m.best_dir).model) for m in minis]
    # the planted preferences cancel over users: the crowd's Bradley-Terry is near chance on them
    gs, _, _ = predict_groups(load_checkpoint(minis[0].best_dir).model, tiny, S.SPLIT_TEST, CPU)
    crowd = GlobalBradleyTerry().fit(training_pairs(tiny), tiny.num_users, tiny.num_llms)
    cs = np.asarray(crowd.score(gs.user, tiny.query_vecs(gs.inter[:, 0]), np.where(gs.mask, gs.llm, 0)), float)
    *_, sa, sb, label = pair_scores(gs, cs)
    auc_crowd = float(pairwise_auc(sa, sb, label))
    mean = float(np.mean(auc_mini))
    print(f"test AUC full {auc_full:.3f}, mini-batch {[round(a, 3) for a in auc_mini]} (mean {mean:.3f}), "
          f"crowd {auc_crowd:.3f}")
    # 120 mini-batch epochs of 2 steps each reach what 200 full-batch epochs (one step each) reach
    assert mean >= 0.82 and min(auc_mini) >= auc_crowd + 0.15
    assert abs(mean - auc_full) <= 0.06
    assert all(m.history and all(np.isfinite(r["train_loss"]) for r in m.history) for m in minis)


def test_batched_scoring_equals_full_graph_scoring(tiny, runs):
    """Under the reference relations a user's representation depends on that user's interactions only,
    so scoring users in batches gives the full-graph scores."""
    model = load_checkpoint(runs[1].best_dir).model
    gs_full, s_full, _ = predict_groups(model, tiny, S.SPLIT_TEST, CPU)
    gs_b, s_b, _ = predict_groups(model, tiny, S.SPLIT_TEST, CPU, batch_users=7)
    key_full = {tuple(r[m]): s[m] for r, s, m in zip(gs_full.inter, s_full, gs_full.mask)}
    assert len(key_full) == gs_b.size == gs_full.size
    for r, s, m in zip(gs_b.inter, s_b, gs_b.mask):
        np.testing.assert_allclose(s[m], key_full[tuple(r[m])], rtol=1e-4, atol=1e-5)


def test_user_batch_sampler_bounds_each_step_by_its_users(tiny):
    sampler = UserBatchSampler(tiny, record_per_user=3, prediction_count=50, batch_users=16)
    rng = np.random.default_rng(0)
    train_mask = tiny.split_mask(S.SPLIT_TRAIN)
    users = rng.permutation(sampler.users)
    for i in range(0, users.size, 16):
        chunk = set(users[i:i + 16].tolist())
        visible, pred = sampler.sample(rng, users[i:i + 16])
        assert set(tiny.user[visible].tolist()) <= chunk and train_mask[visible].all()
        # at most record_per_user visible pairs per user: at most 2 x 3 interactions each
        assert np.bincount(tiny.user[visible]).max() <= 6
        # predicted: pairs of the batch's users, training split, not tied, neither side visible
        assert 0 < pred.size <= 50 and set(tiny.user[tiny.pair_a[pred]].tolist()) <= chunk
        assert tiny.pair_mask(S.SPLIT_TRAIN)[pred].all() and (tiny.pair_label[pred] != 0.5).all()
        assert not np.isin(tiny.pair_a[pred], visible).any() and not np.isin(tiny.pair_b[pred], visible).any()
    assert not sampler._vis.any()  # the scratch mask is left clean
    # one epoch: every training user in exactly one step
    steps = list(sampler.epoch(rng))
    assert len(steps) == sampler.steps_per_epoch == -(-sampler.users.size // 16)
    per_step = [np.unique(tiny.user[v]) for v, _ in steps]
    allu = np.concatenate(per_step)
    assert allu.size == np.unique(allu).size and set(allu.tolist()) == set(sampler.users.tolist())


def test_batch_users_config_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  batch_users: 64\n  amp: true\n")
    cfg = load_train_config(p)
    assert cfg.batch_users == 64 and cfg.amp is True
    p.write_text("train:\n  batch_users: null\n")
    assert load_train_config(p).batch_users is None
    with pytest.raises(ConfigError, match="batch_users"):
        TrainConfig(batch_users=0)


@pytest.mark.parametrize("relations", ["reference", "full"])
def test_subgraph_embed_equals_the_full_forward_on_scored_node_types(relations):
    """Subgraph.embed skips the last layer's relations into session and response nodes; the user, LLM
    and query representations it returns are the model's full forward (to float rounding: it computes
    each distinct input row once, so other kernels run)."""
    from gmt_model.data.demo import DemoSpec
    from gmt_model.method.engine import PRED_QUERY, build_subgraph
    from gmt_model.method.model import GMTModel
    from gmt_model.method.training import model_config_for

    g, _ = demo_graph(DemoSpec(n_users=20, n_groups_per_user=8.0), HashedEncoder(16), relations=relations)
    for layers in (1, 2, 3):
        torch.manual_seed(layers)
        model = GMTModel(model_config_for(TrainConfig(num_gnn_layers=layers, relations=relations, hidden_dim=32,
                                                      predictor_dim=32), g)).eval()
        sub = build_subgraph(g, np.flatnonzero(g.split_mask(S.SPLIT_TRAIN)),
                             np.flatnonzero(g.split_mask(S.SPLIT_TEST)), CPU)
        with torch.no_grad():
            full = model.embed(sub.num_users, sub.query_emb, sub.llm_emb, sub.rating, sub.edges)
            fast = sub.embed(model)
        assert set(fast) == {S.USER, S.LLM, S.QUERY, PRED_QUERY}
        for t in (S.USER, S.LLM, S.QUERY):
            torch.testing.assert_close(fast[t], full[t], rtol=1e-5, atol=1e-5)  # one row per distinct input: other kernels


@pytest.mark.parametrize("relations", ["reference", "full"])
def test_lean_hgt_layer_equals_pyg_hgtconv(relations):
    """FastHGTConv computes keys/values only for source types and queries only for destination
    types; its outputs equal PyG's HGTConv's, also with a relation missing from the call, and
    ``outputs`` only drops node types."""
    from torch_geometric.nn import HGTConv

    from gmt_model.method.model import FastHGTConv

    rels = list(S.resolve_relations(relations))
    meta = (list(S.NODE_TYPES), rels)
    torch.manual_seed(0)
    ref, lean = HGTConv(16, 16, meta, heads=4), FastHGTConv(16, 16, meta, heads=4)
    lean.load_state_dict(ref.state_dict())
    n = {t: 5 + 3 * i for i, t in enumerate(S.NODE_TYPES)}
    x = {t: torch.randn(n[t], 16, requires_grad=True) for t in S.NODE_TYPES}
    edges = {et: torch.stack([torch.randint(0, n[et[0]], (30,)), torch.randint(0, n[et[2]], (30,))]) for et in rels}
    for call in (edges, dict(list(edges.items())[1:])):
        want = {t: v for t, v in ref(x, call).items() if v is not None}
        got = lean(x, call)
        assert set(got) == set(want)
        for t in want:
            torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-6)
        some = {sorted(want)[0]}
        assert set(lean(x, call, outputs=some)) == some
    # nodes given as shared rows (rows[t]: the row of each node) give the outputs of the expanded inputs
    base = {t: torch.randn(2 + i, 16) for i, t in enumerate(S.NODE_TYPES)}
    rows = {t: torch.randint(0, base[t].shape[0], (n[t],)) for t in S.NODE_TYPES[:3]}
    expanded = {t: base[t][rows[t]] if t in rows else torch.randn(n[t], 16) for t in S.NODE_TYPES}
    shared = {t: base[t] if t in rows else expanded[t] for t in S.NODE_TYPES}
    want = {t: v for t, v in ref(expanded, edges).items() if v is not None}
    got = lean(shared, edges, rows=rows)
    assert set(got) == set(want)
    for t in want:
        torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-6)
    # gradients flow to the same inputs
    ga = torch.autograd.grad(sum(v.sum() for v in ref(x, edges).values() if v is not None), list(x.values()),
                             allow_unused=True)
    gb = torch.autograd.grad(sum(v.sum() for v in lean(x, edges).values()), list(x.values()), allow_unused=True)
    for a, b in zip(ga, gb):
        if a is None or b is None:
            assert (a is None or not a.abs().sum()) and (b is None or not b.abs().sum())
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_callback_hears_every_epoch_in_order_with_its_validation_metrics(tiny, tmp_path):
    rows = []
    with pytest.warns(UserWarning, match="fewer than record_per_user"):
        train(tiny, _cfg(epochs=6, eval_every=3, batch_users=40), tmp_path / "run", resume=False,
              callback=lambda e, r: rows.append((e, dict(r))))
    assert [e for e, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["train_loss"]) for _, r in rows)
    assert ["val_auc" in r for _, r in rows] == [False, False, True, False, False, True]


def test_batched_evaluation_report_equals_the_full_one(tiny, runs):
    """evaluate(batch_users=...) (GNN, online part, calibration in user batches) gives the full report's AUCs."""
    from gmt_model.evaluation.report import evaluate

    model = load_checkpoint(runs[1].best_dir).model
    full = evaluate(model, tiny, "test", baselines=False, n_resamples=50)
    batched = evaluate(model, tiny, "test", baselines=False, n_resamples=50, batch_users=9)
    for name in ("gmtrouter", "gmtrouter_gnn"):
        assert batched.methods[name].auc == pytest.approx(full.methods[name].auc, abs=1e-4), name
        assert batched.cold_start[name].auc == pytest.approx(full.cold_start[name].auc, abs=1e-4), name  # float rounding
