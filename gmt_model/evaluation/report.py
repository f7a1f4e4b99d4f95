"""Leak-free evaluation of GMTRouter and the baselines on one split.

For every group-step of the evaluated split, with the whole training split
visible and the evaluated ratings hidden, every candidate is scored once;
pairwise accuracy / AUC (and top-1 / one-vs-rest AUC for K > 2) follow, per
user, per LLM, with bootstrap CIs over users.  Cold start: the same with
every user's history hidden.  The baselines are fitted on the training
pairs and scored on exactly the same candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from gmt_model.method import schema as S
from gmt_model.evaluation.baselines import GlobalBradleyTerry, KNNQuery, PerUserBradleyTerry
from gmt_model.method.checkpoint import comparison_keys
from gmt_model.method.engine import GroupSteps, build_subgraph, cold_calibration, score_rows
from gmt_model.method.graph import GraphTables
from gmt_model.evaluation.metrics import EvalReport, GroupScores, MethodResult, PairSet, evaluate_pair_scores
from gmt_model.method.model import GMTModel
from gmt_model.method.personal import (
    CrowdCalibration,
    PersonalConfig,
    QueryBasis,
    build_evidence,
    fit_posterior,
    window_rows,
)
from gmt_model.method.training import pair_scores, predict_groups, resolve_device

__all__ = ["evaluate", "training_pairs", "online_scores", "GMTROUTER", "GMTROUTER_GNN", "USER_BLIND",
           "BASELINE_NAMES"]

GMTROUTER = "gmtrouter"
GMTROUTER_GNN = "gmtrouter_gnn"
USER_BLIND = "user_blind"
BASELINE_NAMES = {"global_bt": "global best (Bradley-Terry)", "per_user_bt": "per-user Bradley-Terry (shrunk)",
                  "knn_query": "KNN over query embeddings",
                  GMTROUTER_GNN: "GMTRouter's GNN alone (without the online residual)"}


@torch.inference_mode()
def online_scores(model: GMTModel, g: GraphTables, gs: GroupSteps, scores: np.ndarray, cold: np.ndarray,
                  cfg: PersonalConfig | None = None, device: torch.device | None = None,
                  batch_users: int | None = None) -> tuple[np.ndarray, np.ndarray, CrowdCalibration]:
    """What the router scores for these group-steps when it holds the training
    split as history: the GNN's ``scores`` plus each user's online residual
    fitted on the user's training interactions, and the ``cold`` (empty
    history) scores through the crowd calibration (``engine.cold_calibration``,
    which training stores in the checkpoint).  Returns (warm, cold, calibration).
    ``batch_users``: user representations from subgraphs of that many users at a time."""
    cfg = cfg or PersonalConfig()
    dev = device or torch.device("cpu")
    train = np.flatnonzero(g.split_mask(S.SPLIT_TRAIN))
    # batched: the cold user and the LLMs from a graph without history, each user batch's users from its own
    sub = build_subgraph(g, np.zeros(0, np.int64) if batch_users else train, np.zeros(0, np.int64), dev)
    reps = sub.embed(model)
    keys = comparison_keys(g, train)
    n_llms = g.num_llms
    calib = cold_calibration(model, g, dev, batch_users=batch_users)
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
            ev = build_evidence(keys[pos], g.llm[rows], g.rating[rows], basis(q_hist), s_hist, cfg)
            post = fit_posterior(ev, cfg, n_llms, basis.dims)
            r = post.residual.reshape(n_llms, -1)
            zq = basis(g.query_vecs(gs.inter[sel, 0]))
            warm[sel] = warm[sel] * np.where(gs.mask[sel], post.gnn_weight, 1.0) \
                + np.einsum("bkj,bj->bk", r[safe[sel]], zq) * gs.mask[sel]
    return warm, cold_out, calib


def training_pairs(g: GraphTables) -> PairSet:
    m = g.pair_mask(S.SPLIT_TRAIN)
    a, b = g.pair_a[m], g.pair_b[m]
    rows, query = np.unique(a, return_inverse=True)  # one query key per interaction, as before deduplication
    return PairSet(user=g.user[a], llm_a=g.llm[a], llm_b=g.llm[b], label=g.pair_label[m], query=query.reshape(-1),
                   group=g.group[a] * (int(g.step.max()) + 1) + g.step[a], query_emb=g.query_vecs(rows))


@dataclass
class _Scored:
    pairs: PairSet
    rows: np.ndarray
    sa: np.ndarray
    sb: np.ndarray
    groups: GroupScores | None


def _pairs_of(g: GraphTables, gs: GroupSteps, scores: np.ndarray) -> _Scored:
    rows, ca, cb, sa, sb, label = pair_scores(gs, scores)
    qrows, query = np.unique(gs.inter[rows, 0], return_inverse=True)
    pairs = PairSet(user=gs.user[rows], llm_a=gs.llm[rows, ca], llm_b=gs.llm[rows, cb], label=label,
                    query=query.reshape(-1), group=rows.astype(np.int64), query_emb=g.query_vecs(qrows))
    groups = None
    if gs.inter.shape[1] > 2:
        rr, cc = np.nonzero(gs.mask)
        groups = GroupScores(group=rr.astype(np.int64), llm=gs.llm[rr, cc], score=scores[rr, cc],
                             rating=gs.rating[rr, cc])
    return _Scored(pairs, rows, sa, sb, groups)


def _result(name: str, g: GraphTables, s: _Scored, n_resamples: int, seed: int) -> MethodResult:
    return evaluate_pair_scores(name, s.pairs, s.sa, s.sb, g.user_ids, g.llm_names, group_scores=s.groups,
                                n_resamples=n_resamples, seed=seed)


def evaluate(model: GMTModel, g: GraphTables, split: str = S.SPLIT_TEST, *, blind_model: GMTModel | None = None,
             baselines: bool = True, cold_start: bool = True, n_resamples: int = 1000, seed: int = 0,
             device: str | None = None, knn_k: int = 20, personalization: PersonalConfig | None = None,
             batch_users: int | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> EvalReport:
    """The evaluation report of ``model`` (and the baselines) on ``split``.

    ``batch_users``: the GNN runs over subgraphs of that many users at a time (memory bounded by the
    batch); under the reference relations the scores equal the full-graph ones.
    ``progress(step, done, total)`` is called before the first step (done = 0) and after each one
    (scoring, the online residual, each method's bootstrap)."""
    if not g.split_mask(split).any():
        raise ValueError(f"split {split!r} has no interactions")
    total = 5 + (2 if cold_start else 0) + (1 if blind_model is not None else 0) \
        + ((4 + (1 if cold_start else 0)) if baselines else 0)
    done = 0

    def tick(step: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(step, done, total)

    if progress is not None:
        progress("scoring", 0, total)
    dev = resolve_device(device)
    model = model.to(dev)
    gs, scores, sub = predict_groups(model, g, split, dev, batch_users=batch_users)
    tick("scores")
    _, cs, _ = predict_groups(model, g, split, dev, cold=True, sub=sub, batch_users=batch_users)
    tick("cold-start scores")
    warm, cold_cal, calib = online_scores(model, g, gs, scores, cs, personalization, dev, batch_users)
    tick("online personalization")
    methods: dict[str, MethodResult] = {GMTROUTER: _result(GMTROUTER, g, _pairs_of(g, gs, warm), n_resamples, seed)}
    tick(GMTROUTER)
    methods[GMTROUTER_GNN] = _result(GMTROUTER_GNN, g, _pairs_of(g, gs, scores), n_resamples, seed)
    tick(GMTROUTER_GNN)
    cold: dict[str, MethodResult] = {}
    if cold_start:
        cold[GMTROUTER] = _result(GMTROUTER, g, _pairs_of(g, gs, cold_cal), n_resamples, seed)
        tick(f"{GMTROUTER} cold start")
        cold[GMTROUTER_GNN] = _result(GMTROUTER_GNN, g, _pairs_of(g, gs, cs), n_resamples, seed)
        tick(f"{GMTROUTER_GNN} cold start")
    if blind_model is not None:
        _, bs, _ = predict_groups(blind_model.to(dev), g, split, dev, sub=sub, batch_users=batch_users)
        methods[USER_BLIND] = _result(USER_BLIND, g, _pairs_of(g, gs, bs), n_resamples, seed)
        tick(USER_BLIND)
    if baselines:
        train = training_pairs(g)
        fitted = {
            "global_bt": GlobalBradleyTerry().fit(train, g.num_users, g.num_llms),
            "per_user_bt": PerUserBradleyTerry().fit(train, g.num_users, g.num_llms),
            "knn_query": KNNQuery(k=knn_k).fit(train, g.num_users, g.num_llms),
        }
        tick("baselines fitted")
        qemb = g.query_vecs(gs.inter[:, 0])
        cand = np.where(gs.mask, gs.llm, 0)
        for name, bl in fitted.items():
            bscore = np.asarray(bl.score(gs.user, qemb, cand), dtype=np.float64)
            methods[name] = _result(name, g, _pairs_of(g, gs, bscore), n_resamples, seed)
            tick(name)
            if cold_start and name == "global_bt":
                cold[name] = methods[name]
            if cold_start and name == "per_user_bt":
                unknown = np.full_like(gs.user, -1)
                cscore = np.asarray(bl.score(unknown, qemb, cand), dtype=np.float64)
                cold[name] = _result(name, g, _pairs_of(g, gs, cscore), n_resamples, seed)
                tick(f"{name} cold start")
    meta: dict[str, Any] = {
        "split": split,
        "users": g.num_users,
        "llms": g.num_llms,
        "group_steps": int(gs.size),
        "visible_history": S.SPLIT_TRAIN,
        "baseline_descriptions": BASELINE_NAMES,
        "cold_start_calibration": calib.to_dict(),
    }
    return EvalReport(split=split, methods=methods, cold_start=cold, metadata=meta)

