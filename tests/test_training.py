"""Training protocol: sampling, leak-freedom, determinism, resume, loss variants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gmt_model.method import schema as S
from gmt_model.method.engine import build_subgraph
from gmt_model.method.training import EpochSampler, train

from conftest import quick_config


def test_sampler_visible_and_predicted_are_disjoint(planted_graph):
    g = planted_graph
    s = EpochSampler(g, record_per_user=5, prediction_count=64)
    rng = np.random.default_rng(0)
    for _ in range(5):
        visible, pred = s.sample(rng)
        assert pred.size == 64
        vis = set(visible.tolist())
        assert not vis & set(g.pair_a[pred].tolist()) and not vis & set(g.pair_b[pred].tolist())
        assert np.all(g.pair_label[pred] != 0.5)  # ties are never predicted
        assert np.all(g.split[visible] == 0) and np.all(g.pair_split[pred] == 0)
        # every training user gets history (5 pairs -> >= 5 interactions each)
        users_with_history = np.unique(g.user[visible])
        assert users_with_history.size == s.num_train_users
    # the visible budget is record_per_user x users (pairs), filled from the rest
    v2, _ = s.sample(np.random.default_rng(1))
    assert v2.size >= 5 * s.num_train_users


def test_predicted_ratings_never_enter_the_subgraph(planted_graph):
    g = planted_graph
    s = EpochSampler(g, record_per_user=5, prediction_count=64)
    visible, pred = s.sample(np.random.default_rng(0))
    target = np.concatenate([g.pair_a[pred], g.pair_b[pred]])
    sub = build_subgraph(g, visible, target, torch.device("cpu"))
    # predicted interactions are not graph nodes: no session/response node, no rating, no edge
    assert np.all(sub.local[target] == -1) and np.all(sub.pred_local[target] >= 0)
    assert sub.rating.shape[0] == visible.size
    np.testing.assert_array_equal(sub.rating.numpy(), g.rating[visible])
    for rel, ei in sub.edges.items():
        for end, row in ((rel[0], ei[0]), (rel[2], ei[1])):
            if end in S.INTERACTION_NODE_TYPES and ei.numel():
                assert row.max() < visible.size, f"{rel} reaches a non-visible interaction"


def test_isolated_path_equals_unconnected_nodes(planted_graph):
    """The predicted queries' shortcut equals running them through the GNN unconnected."""
    from gmt_model.method.engine import PRED_QUERY
    from gmt_model.method.model import GMTModel, ModelConfig

    g = planted_graph
    g.relations = S.FULL_RELATIONS  # query nodes receive messages under the full schema
    try:
        torch.manual_seed(0)
        model = GMTModel(ModelConfig(embed_dim=g.dim, hidden_dim=32, predictor_dim=32, relations="full")).eval()
        visible = np.flatnonzero(g.split_mask(S.SPLIT_TRAIN))
        target = np.flatnonzero(g.split_mask(S.SPLIT_TEST))
        sub = build_subgraph(g, visible, target, torch.device("cpu"))
        with torch.no_grad():
            reps = sub.embed(model)
            both = np.concatenate([visible, target])
            rating = torch.from_numpy(np.where(np.isin(both, target), 0.0, g.rating[both]).astype(np.float32))
            from gmt_model.method.graph import relation_edges

            local = np.full(g.num_interactions, -1)
            local[both] = np.arange(both.size)
            edges = {r: torch.from_numpy(np.stack(relation_edges(g, r, visible, local))) for r in S.FULL_RELATIONS}
            full = model.embed(g.num_users + 1, torch.from_numpy(g.query_emb[both]), torch.from_numpy(g.llm_emb),
                               rating, edges)
        torch.testing.assert_close(reps[PRED_QUERY], full[S.QUERY][visible.size:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reps[S.USER], full[S.USER], atol=1e-5, rtol=1e-5)
    finally:
        g.relations = S.REFERENCE_RELATIONS


def test_thin_users_warned_not_crashed(planted_graph, tmp_path):
    with pytest.warns(UserWarning, match="fewer than record_per_user=20"):
        res = train(planted_graph, quick_config(epochs=2, record_per_user=20, eval_every=1), tmp_path, resume=False)
    assert any("record_per_user" in w for w in res.warnings)


def test_deterministic_for_a_seed_on_cpu(planted_graph, tmp_path):
    cfg = quick_config(epochs=6, eval_every=3, save_every=100)
    a = train(planted_graph, cfg, tmp_path / "a", resume=False)
    b = train(planted_graph, cfg, tmp_path / "b", resume=False)
    wa, wb = load_file(str(a.last_dir / "model.safetensors")), load_file(str(b.last_dir / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert a.history == b.history
    c = train(planted_graph, quick_config(epochs=6, eval_every=3, save_every=100, seed=99), tmp_path / "c", resume=False)
    wc = load_file(str(c.last_dir / "model.safetensors"))
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_after_kill_matches_uninterrupted_run(planted_graph, tmp_path):
    full = train(planted_graph, quick_config(epochs=8, eval_every=2, save_every=4), tmp_path / "full", resume=False)

    class Killed(Exception):
        pass

    def kill_at_6(epoch, row):
        if epoch == 6:
            raise Killed

    starts: list[int] = []
    with pytest.raises(Killed):
        train(planted_graph, quick_config(epochs=8, eval_every=2, save_every=4), tmp_path / "run", callback=kill_at_6,
              on_start=starts.append)
    epochs: list[int] = []
    resumed = train(planted_graph, quick_config(epochs=8, eval_every=2, save_every=4), tmp_path / "run",
                    on_start=starts.append, callback=lambda e, r: epochs.append(e))
    assert starts == [0, 4]  # a fresh start, then "resuming from epoch 4"
    assert epochs == [5, 6, 7, 8]
    assert resumed.resumed_from == 4 and resumed.epochs_run == 4 and not resumed.already_trained
    wf = load_file(str(full.last_dir / "model.safetensors"))
    wr = load_file(str(resumed.last_dir / "model.safetensors"))
    for k in wf:
        assert torch.allclose(wf[k], wr[k], atol=1e-6), k
    assert [r["epoch"] for r in resumed.history] == [2.0, 4.0, 6.0, 8.0]
    np.testing.assert_allclose([r["val_auc"] for r in resumed.history], [r["val_auc"] for r in full.history], atol=1e-6)
    # a different configuration refuses to resume from that folder, and says what changed
    from gmt_model.method.checkpoint import CheckpointError
    from gmt_model.method.training import ResumeMismatchError

    with pytest.raises(CheckpointError, match="different configuration") as ei:
        train(planted_graph, quick_config(epochs=10, eval_every=2, save_every=4, lr=1e-2), tmp_path / "run")
    assert isinstance(ei.value, ResumeMismatchError)
    assert ei.value.changes == ["train.lr: 0.002 -> 0.01"] and ei.value.folder == tmp_path / "run" / "last"


def _snapshot(folder):
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_rerun_of_a_finished_run_trains_nothing_and_writes_nothing(planted_graph, tmp_path):
    cfg = quick_config(epochs=4, eval_every=2, save_every=2)
    first = train(planted_graph, cfg, tmp_path, resume=False)
    assert first.epochs_run == 4 and not first.already_trained
    before = _snapshot(tmp_path)
    calls: list = []
    again = train(planted_graph, cfg, tmp_path, callback=lambda e, r: calls.append(e), on_start=calls.append)
    assert again.already_trained and again.epochs_run == 0 and again.resumed_from == 4 and calls == []
    assert (again.best_epoch, again.best_metric, again.history) == (first.best_epoch, first.best_metric,
                                                                     first.history)
    assert again.best_dir == first.best_dir
    assert _snapshot(tmp_path) == before  # not a byte, not a timestamp changed
    # more epochs than were run: resumes where the finished run ended
    more = train(planted_graph, quick_config(epochs=6, eval_every=2, save_every=2), tmp_path, on_start=calls.append)
    assert calls == [4] and more.epochs_run == 2 and not more.already_trained


def test_fresh_start_leaves_no_older_run_to_resume(planted_graph, tmp_path):
    """resume=False removes an older `last` first: a kill then cannot look like a finished run."""
    cfg = quick_config(epochs=4, eval_every=2, save_every=100)
    train(planted_graph, cfg, tmp_path, resume=False)

    class Killed(Exception):
        pass

    def kill(epoch, row):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(planted_graph, cfg, tmp_path, resume=False, callback=kill)
    assert not (tmp_path / "last").exists()
    starts: list[int] = []
    res = train(planted_graph, cfg, tmp_path, on_start=starts.append)
    assert starts == [0] and res.epochs_run == 4 and not res.already_trained


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_group_losses_train_on_k3_groups(demo_paths, tmp_path, loss):
    from gmt_model.data.graph_files import build_graph

    g = build_graph({k: v for k, v in demo_paths.items() if k in S.SPLITS})
    assert (np.bincount(g.group) > 4).any()  # the demo has K=3 groups with multi-turn records
    res = train(g, quick_config(epochs=4, eval_every=2, loss=loss), tmp_path, resume=False)
    assert np.isfinite([r["train_loss"] for r in res.history]).all()


def test_full_relation_schema_trains_and_learns(planted_graph, tmp_path):
    from gmt_model.method.checkpoint import load_checkpoint
    from gmt_model.evaluation.report import evaluate

    res = train(planted_graph, quick_config(relations="full", epochs=60, eval_every=10), tmp_path, resume=False)
    ck = load_checkpoint(res.best_dir)
    assert len(ck.config.edge_types) == 22
    report = evaluate(ck.model, planted_graph, baselines=False, cold_start=False, n_resamples=50)
    assert report.methods["gmtrouter"].auc > 0.8
