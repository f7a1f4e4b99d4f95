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

from gmt_model.method import schema as S
from gmt_model.evaluation.baselines import GlobalBradleyTerry, KNNQuery, PerUserBradleyTerry
from gmt_model.method.engine import GroupSteps
from gmt_model.method.graph import GraphTables
from gmt_model.evaluation.metrics import EvalReport, GroupScores, MethodResult, PairSet, evaluate_pair_scores
from gmt_model.method.model import GMTModel
from gmt_model.method.online import online_scores
from gmt_model.method.personal import PersonalConfig
from gmt_model.method.training import pair_scores, predict_groups, resolve_device, router_calibration

__all__ = ["evaluate", "training_pairs", "online_scores", "GMTROUTER", "GMTROUTER_GNN", "USER_BLIND",
           "BASELINE_NAMES"]

GMTROUTER = "gmtrouter"
GMTROUTER_GNN = "gmtrouter_gnn"
USER_BLIND = "user_blind"
BASELINE_NAMES = {"global_bt": "global best (Bradley-Terry)", "per_user_bt": "per-user Bradley-Terry (shrunk)",
                  "knn_query": "KNN over query embeddings",
                  GMTROUTER_GNN: "GMTRouter's GNN alone (without the online residual)"}


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
    warm, cold_cal, calib = online_scores(model, g, gs, scores, cs, personalization, dev, batch_users,
                                          calib=router_calibration(model, g, dev, batch_users))
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

