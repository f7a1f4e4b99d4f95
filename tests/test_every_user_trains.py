"""Training trains every user that has training pairs, user index 0 included (issue 14: nothing
asserted it; a sampler that skipped user 0 went unnoticed).

The samplers' outputs and the pairs each optimiser step predicts are recorded during a real
``train`` run, full batch (``EpochSampler``) and mini-batch (``UserBatchSampler``), and compared
with the users that have training pairs, computed from the graph itself (not from the sampler).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import planted_records, quick_config, write_records
from gmt_model.method import schema as S
from gmt_model.method import training as T


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    from gmt_model.data.graph_files import build_graph

    recs = planted_records(n_users=9, dim=8, groups_per_user=(8, 12), seed=5)
    return build_graph(write_records(tmp_path_factory.mktemp("every_user"), recs))


@pytest.mark.parametrize("batch_users", [None, 4])
def test_every_user_with_pairs_is_trained_each_epoch(graph, tmp_path, monkeypatch, batch_users):
    g = graph
    pairs = np.flatnonzero(g.pair_mask(S.SPLIT_TRAIN))
    with_pairs = set(np.unique(g.user[g.pair_a[pairs]]).tolist())
    nontie = pairs[g.pair_label[pairs] != 0.5]
    assert 0 in with_pairs and len(with_pairs) == g.num_users == 9  # user index 0 has pairs to train on

    visible_log: list[np.ndarray] = []
    predicted_log: list[np.ndarray] = []
    for cls in (T.EpochSampler, T.UserBatchSampler):
        original = cls.sample

        def recording(self, *a, _original=original, **kw):
            visible, pred = _original(self, *a, **kw)
            visible_log.append(visible)
            return visible, pred

        monkeypatch.setattr(cls, "sample", recording)
    real_pairs_as_groups = T.pairs_as_groups

    def record_pairs(graph_, pred):
        predicted_log.append(np.asarray(pred))
        return real_pairs_as_groups(graph_, pred)

    monkeypatch.setattr(T, "pairs_as_groups", record_pairs)
    epochs = 3
    # record_per_user 2: every user keeps pairs to predict; prediction_count above the total: all are predicted
    cfg = quick_config(epochs=epochs, eval_every=epochs, save_every=100, hidden_dim=16, predictor_dim=16,
                       record_per_user=2, prediction_count=10 * pairs.size, batch_users=batch_users,
                       cold_start_rate=0.0)
    T.train(g, cfg, tmp_path / "run", device="cpu")
    steps_per_epoch = 1 if batch_users is None else -(-len(with_pairs) // batch_users)
    assert len(visible_log) == len(predicted_log) == epochs * steps_per_epoch
    for e in range(epochs):
        step = slice(e * steps_per_epoch, (e + 1) * steps_per_epoch)
        seen = set(np.unique(g.user[np.concatenate(visible_log[step])]).tolist())
        assert seen == with_pairs, f"epoch {e + 1}: users without history: {sorted(with_pairs - seen)}"
        pred = np.concatenate(predicted_log[step])
        predicted_users = set(np.unique(g.user[g.pair_a[pred]]).tolist())
        users_with_nontie = set(np.unique(g.user[g.pair_a[nontie]]).tolist())
        assert predicted_users == users_with_nontie and 0 in predicted_users, \
            f"epoch {e + 1}: users never predicted: {sorted(users_with_nontie - predicted_users)}"
