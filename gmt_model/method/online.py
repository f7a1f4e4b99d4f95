"""What the router scores for a split's group-steps when it holds the training split as history
(the GNN, the crowd calibration and each user's online residual), and the validated weight of that
history in the residual.

``online_scores`` is the evaluation's "as routed" score (:mod:`gmt_model.evaluation.report`);
``training.fit_history_weight`` chooses, on the validation pairs, how much a user's training rows count in their
residual (``CrowdCalibration.history``): the GNN was trained on those rows, so a residual fitted on them
may repeat what the GNN already learned, or fit noise; 1 (every row counts, the router before this
weight) is kept unless a smaller weight predicts the held-out pairs better.  Feedback that arrives after
training always counts in full.
"""

from __future__ import annotations

import numpy as np
import torch

from gmt_model.method import schema as S
from gmt_model.method.checkpoint import comparison_keys
from gmt_model.method.engine import GroupSteps, build_subgraph, score_rows
from gmt_model.method.graph import GraphTables
from gmt_model.method.model import GMTModel
from gmt_model.method.personal import (
    CrowdCalibration,
    PersonalConfig,
    QueryBasis,
    build_evidence,
    fit_posterior,
    window_rows,
)

__all__ = ["online_scores", "HISTORY_WEIGHTS"]

#: the weights of a user's training rows tried on the validation pairs (the first: the default, kept on ties)
HISTORY_WEIGHTS = (1.0, 0.5, 0.25, 0.0)


@torch.inference_mode()
def online_scores(model: GMTModel, g: GraphTables, gs: GroupSteps, scores: np.ndarray, cold: np.ndarray,
                  cfg: PersonalConfig | None = None, device: torch.device | None = None,
                  batch_users: int | None = None, *, calib: CrowdCalibration
                  ) -> tuple[np.ndarray, np.ndarray, CrowdCalibration]:
    """What the router scores for these group-steps when it holds the training
    split as history: the GNN's ``scores`` plus each user's online residual
    fitted on the user's training interactions, and the ``cold`` (empty
    history) scores through ``calib``, the crowd calibration the router uses
    (``training.router_calibration``, which training stores in the checkpoint); the training rows count
    in each residual with its ``history`` weight, as in the router.  Returns (warm, cold, calibration).
    ``batch_users``: user representations from subgraphs of that many users at a time."""
    cfg = cfg or PersonalConfig()
    dev = device or torch.device("cpu")
    train = np.flatnonzero(g.split_mask(S.SPLIT_TRAIN))
    # batched: the cold user and the LLMs from a graph without history, each user batch's users from its own
    sub = build_subgraph(g, np.zeros(0, np.int64) if batch_users else train, np.zeros(0, np.int64), dev)
    reps = sub.embed(model)
    keys = comparison_keys(g, train)
    n_llms = g.num_llms
    safe = np.where(gs.mask, gs.llm, 0)
    cold_out = np.where(gs.mask, calib.apply(cold, safe), cold)
    warm = np.array(scores, dtype=np.float64)
    if not cfg.enabled:
        return warm, cold_out, calib
    warm = np.where(gs.mask, calib.blend(warm, cold, safe), warm)
    cold_rep = reps[S.USER][sub.cold_user]
    all_llms = np.arange(n_llms)[None, :]
    basis = QueryBasis.from_rows(g.text_emb, g.query_row[train], cfg.query_dims)
    tu = g.user[train]
    order = np.argsort(tu, kind="stable")
    starts = np.searchsorted(tu[order], np.arange(g.num_users + 1))
    users = np.unique(gs.user)
    chunks = [users[i:i + batch_users] for i in range(0, users.size, batch_users)] if batch_users else [users]
    for chunk in chunks:
        node = {u: u for u in chunk.tolist()}
        if batch_users:  # this batch's users (only their nodes) with their training interactions visible
            bsub = build_subgraph(g, train[np.isin(tu, chunk)], np.zeros(0, np.int64), dev, users=chunk)
            reps = bsub.embed(model)
            node = dict(zip(chunk.tolist(), bsub.user_nodes(chunk).tolist()))
        for u in chunk.tolist():
            pos = order[starts[u]:starts[u + 1]]
            pos = pos[window_rows(g.llm[train[pos]], cfg)]
            sel = np.flatnonzero(gs.user == u)
            if pos.size == 0:
                warm[sel] = cold_out[sel]
                continue
            rows = train[pos]
            q_hist = g.query_vecs(rows)
            s_hist = score_rows(model, reps[S.USER][node[u]], q_hist, reps[S.LLM])
            s_hist = calib.blend(s_hist, score_rows(model, cold_rep, q_hist, reps[S.LLM])
                                 if calib.cold > 0 else s_hist, all_llms)
            ev = build_evidence(keys[pos], g.llm[rows], g.rating[rows], basis(q_hist), s_hist, cfg,
                                row_weight=np.full(rows.size, calib.history))
            post = fit_posterior(ev, cfg, n_llms, basis.dims)
            r = post.residual.reshape(n_llms, -1)
            zq = basis(g.query_vecs(gs.inter[sel, 0]))
            warm[sel] = warm[sel] * np.where(gs.mask[sel], post.gnn_weight, 1.0) \
                + np.einsum("bkj,bj->bk", r[safe[sel]], zq) * gs.mask[sel]
    return warm, cold_out, calib
