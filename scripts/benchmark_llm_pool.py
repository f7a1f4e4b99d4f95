#!/usr/bin/env python
"""The open LLM pool and cost-aware routing on MT-Bench (issue 15).

    flock /tmp/gmt_bench.lock .venv/bin/python scripts/benchmark_llm_pool.py --keep-models .cache/pool_models \
        --retrain-votes 200 --out /tmp/pool.jsonl
    .venv/bin/python scripts/benchmark_llm_pool.py --splits 0 --llms gpt-4 llama-13b --epochs 100   # a quick look
    .venv/bin/python scripts/benchmark_llm_pool.py --report /tmp/pool.jsonl                          # tables

(a) Leave one LLM out, per per-judge split (``build_jsonl("mt_bench", seed=s)``) and LLM X:

* train without any judgment involving X (training and validation), on the seed config;
* add X to the router by its description (``configs/llm_descriptions.yaml``) with ``add_llm``;
* AUC of ``P(X wins)`` on the test judgments that involve X (ties left out), with no feedback on X,
  then after n = 50 / 200 / 1000 of X's withheld training judgments revealed through
  ``update_user_preference`` (cumulative, in a fixed random order; fewer when fewer exist);
* baselines on the same pairs: the router trained with X (the full split), crowd Bradley-Terry fitted on
  the training pairs without X plus the same n votes, and X as the average LLM (BT strength 0);
* with ``--retrain-votes N``: the next training run, on the data without X plus X's first N withheld
  judgments, scored on the same pairs;
* ``--keep-models DIR`` keeps the trained checkpoints and reuses them (a second run only scores);
  ``--crowd-query-sd`` / ``--crowd-text-sd`` / ``--crowd-score-sd`` set the prior of the added LLM's crowd
  term (default: the library's);
* ``--validate``: the same procedure scored on judgments of X that are neither revealed nor tested (X's
  judgments in the validation file and the rest of X's withheld training judgments), for each of
  ``--crowd-specs``: how the crowd term's prior is chosen without reading the test judgments.

(b) Cost against quality, RouteLLM's way, on the test judgments that pair gpt-4 with another LLM, pooled
over the splits, for the router trained on the full split: the margin ``P(gpt-4 preferred)`` sends a
judgment to gpt-4 above a threshold; quality = the routed answer's win (1) / tie (0.5) / loss (0).
PGR = (quality - always-weak) / (always-gpt-4 - always-weak) along the share of gpt-4 calls; APGR = the
area under that curve; CPT(x) = the least share of gpt-4 calls reaching PGR x.  For: personalized (the
judge's history), user-blind (the same router for an unknown user: the crowd-calibrated cold start),
crowd BT (one margin per LLM pair) and random.  Bootstrap 95% CI over judgments.  And the six-LLM pool
with the list prices of ``configs/llm_prices.yaml``: ``cost_weight`` swept, each test judgment routed
among its two LLMs; mean price of the chosen LLM and quality.

One JSON line per result in ``--out``; ``--report`` prints the markdown tables.  Timings are not measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MT_LLMS = ["gpt-4", "gpt-3.5-turbo", "claude-v1", "vicuna-13b-v1.2", "alpaca-13b", "llama-13b"]
N_VOTES = (50, 200, 1000)


# ---------------------------------------------------------------- data
def read_split(folder: Path) -> dict[str, list[dict]]:
    from gmt_model.method import schema as S

    out = {}
    for split, name in S.SPLIT_FILES.items():
        with open(folder / name) as f:
            out[split] = [json.loads(line) for line in f if line.strip()]
    return out


def pairs_of(records: list[dict]) -> list[dict]:
    """Judgments: two records of one (judge, question, turn) -> {user, query, a, b, label (1: a won, .5 tie)}."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["judge"], r["question_id"], r.get("turn"))].append(r)
    out = []
    for (judge, _, _t), rs in groups.items():
        if len(rs) != 2:
            continue
        a, b = sorted(rs, key=lambda r: r["model"])
        ra, rb = a["conversation"][-1]["rating"], b["conversation"][-1]["rating"]
        out.append({"user": judge, "query": a["conversation"][-1]["query"], "a": a["model"], "b": b["model"],
                    "label": 1.0 if ra > rb else 0.0 if ra < rb else 0.5, "key": (judge, _, a.get("turn"))})
    return out


def without(records: list[dict], llm: str) -> list[dict]:
    """Records of the groups that do not involve ``llm``."""
    bad = {(r["judge"], r["question_id"], r.get("turn")) for r in records if r["model"] == llm}
    return [r for r in records if (r["judge"], r["question_id"], r.get("turn")) not in bad]


def write_split(folder: Path, splits: dict[str, list[dict]]) -> dict[str, Path]:
    from gmt_model.method import schema as S

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in splits.items():
        p = folder / S.SPLIT_FILES[split]
        with open(p, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        paths[split] = p
    return paths


# ---------------------------------------------------------------- models
class Encoder:
    """Known texts from the split files' inline embeddings; anything else (a description) with the real encoder."""

    def __init__(self, splits: dict[str, list[dict]], name: str) -> None:
        self.table: dict[str, np.ndarray] = {}
        for rows in splits.values():
            for r in rows:
                for step in r["conversation"]:
                    if "query_emb" in step:
                        self.table[step["query"]] = np.asarray(step["query_emb"], np.float32)
        self.name = name
        self._real = None
        self.dim = len(next(iter(self.table.values())))

    def encode(self, texts):
        missing = [t for t in texts if t not in self.table]
        if missing:
            if self._real is None:
                from gmt_model.data.encoder import get_encoder

                self._real = get_encoder(self.name)
            for t, v in zip(missing, np.asarray(self._real.encode(missing), np.float32)):
                self.table[t] = v
        return np.stack([self.table[t] for t in texts])


def train_router(paths: dict[str, Path], epochs: int, seed: int, encoder: Encoder, workdir: Path,
                 keep: Path | None = None):
    """Train on ``paths`` (or, with ``keep``, reuse the checkpoint a run with the same settings left there)."""
    from gmt_model.data.graph_files import build_graph
    from gmt_model.method.config import load_train_config
    import torch

    from gmt_model.method.checkpoint import load_checkpoint, read_config, update_meta
    from gmt_model.method.training import router_calibration
    from gmt_model.method.training import train
    from gmt_model.serving.router import GMTRouter

    if keep is not None:
        if (keep / "best").is_dir() and (keep / "done").exists():
            if "history" not in (read_config(keep / "best").get("meta", {}).get("cold_calibration") or {}):
                # kept by an older checkout: its calibration stored again by this one's (training is
                # deterministic, so this is the checkpoint a new training run would store)
                ck = load_checkpoint(keep / "best")
                update_meta(keep / "best", {"cold_calibration": router_calibration(
                    ck.model, build_graph(paths), torch.device("cpu")).to_dict()})
            return GMTRouter.from_checkpoint(keep / "best", encoder=encoder, feedback_sync_interval=-1.0)
        workdir = keep
    g = build_graph(paths)
    cfg = load_train_config(str(REPO / "configs" / "model_config_train" / "gmtrouter.yaml"),
                            {"epochs": epochs, "save_every": 10**9, "seed": seed, "device": "cpu"})
    res = train(g, cfg, workdir, resume=False)
    if keep is not None:
        import shutil

        if res.best_dir != keep / "best":
            shutil.rmtree(keep / "best", ignore_errors=True)
            shutil.copytree(res.best_dir, keep / "best")
        (keep / "done").write_text("")
    return GMTRouter.from_checkpoint(res.best_dir, encoder=encoder, feedback_sync_interval=-1.0)


def p_first(router, pairs: list[dict], user_blind: bool = False) -> np.ndarray:
    """P(a preferred over b) per judgment, as the router reports it."""
    out = router.route_batch([{"query_text": p["query"], "user_id": "__blind__" if user_blind else p["user"],
                               "candidates": [p["a"], p["b"]]} for p in pairs])
    return np.array([r["scores"][p["a"]] for r, p in zip(out, pairs)])


def auc(score: np.ndarray, label: np.ndarray) -> float:
    keep = label != 0.5
    s, y = score[keep], label[keep]
    pos, neg = s[y == 1], s[y == 0]
    if not pos.size or not neg.size:
        return float("nan")
    order = np.argsort(np.r_[pos, neg], kind="mergesort")
    ranks = np.empty(order.size)
    allv = np.r_[pos, neg][order]
    # average ranks for ties
    i = 0
    while i < allv.size:
        j = i
        while j + 1 < allv.size and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def bt_strengths(pairs: list[dict], llms: list[str]) -> dict[str, float]:
    from gmt_model.method.personal import fit_bias

    idx = {m: i for i, m in enumerate(llms)}
    ps = [p for p in pairs if p["label"] != 0.5 and p["a"] in idx and p["b"] in idx]
    if not ps:
        return {m: 0.0 for m in llms}
    b = fit_bias(np.array([idx[p["a"]] for p in ps]), np.array([idx[p["b"]] for p in ps]),
                 np.array([p["label"] for p in ps]), len(llms))
    return {m: float(b[idx[m]]) for m in llms}


def x_oriented(pairs: list[dict], p_a: np.ndarray, x: str) -> tuple[np.ndarray, np.ndarray]:
    """(P(X wins), X won) of judgments involving X."""
    s = np.array([pa if p["a"] == x else 1 - pa for p, pa in zip(pairs, p_a)])
    y = np.array([p["label"] if p["a"] == x else 1 - p["label"] for p in pairs])
    return s, y


def kept(args, sp: int, what: str) -> Path | None:
    """Where ``--keep-models`` keeps the checkpoint of one training run (None: not kept)."""
    if not args.keep_models:
        return None
    p = Path(args.keep_models) / f"split{sp}_e{args.epochs}_seed{args.seed}" / what
    p.mkdir(parents=True, exist_ok=True)
    return p


def configure_crowd(router, args) -> None:
    """The crowd term's prior (``--crowd-query-sd``, ``--crowd-text-sd``; defaults: the library's)."""
    from gmt_model.serving.llm_pool import CrowdEstimate

    c = router.state.crowd
    router.state.crowd = CrowdEstimate(
        query_sd=c.query_sd if args.crowd_query_sd is None else args.crowd_query_sd,
        text_sd=c.text_sd if args.crowd_text_sd is None else args.crowd_text_sd,
        score_sd=c.score_sd if args.crowd_score_sd is None else args.crowd_score_sd,
        featurize=c.featurize)  # the router's features of the score kernel


# ---------------------------------------------------------------- (a) leave one LLM out
def withheld_orders(train_pairs: list[dict], sp: int) -> dict[str, list[dict]]:
    """Each LLM's training judgments that are not ties, in the fixed random order they are revealed in: one
    generator per split, shuffling the six LLMs' lists in ``MT_LLMS`` order, so an LLM's order does not
    depend on which LLMs a run leaves out (``--llms``)."""
    rng = np.random.default_rng(sp)
    order = {}
    for x in MT_LLMS:
        order[x] = [p for p in train_pairs if x in (p["a"], p["b"]) and p["label"] != 0.5]
        rng.shuffle(order[x])
    return order


def leave_one_out(args, sp: int, splits: dict[str, list[dict]], full_router, descriptions: dict[str, str],
                  emit) -> None:
    from gmt_model.method.personal import fit_bias  # noqa: F401  (import check)

    test = pairs_of(splits["test"])
    train_pairs = pairs_of(splits["training"])
    order = withheld_orders(train_pairs, sp)
    for x in args.llms:
        t0 = time.perf_counter()
        tx = [p for p in test if x in (p["a"], p["b"])]
        withheld = order[x]
        reduced = {s: without(rows, x) for s, rows in splits.items() if s != "test"}
        reduced["test"] = without(splits["test"], x)
        with tempfile.TemporaryDirectory() as d:
            paths = write_split(Path(d) / "data", reduced)
            router = train_router(paths, args.epochs, args.seed, Encoder(splits, args.encoder), Path(d) / "run",
                                  keep=kept(args, sp, "without_" + x))
        configure_crowd(router, args)
        router.add_llm(x, descriptions[x])
        y = x_oriented(tx, np.zeros(len(tx)), x)[1]
        s_full = x_oriented(tx, p_first(full_router, tx), x)[0]
        full = auc(s_full, y)
        others = [m for m in MT_LLMS if m != x]
        bt0 = bt_strengths([p for p in train_pairs if x not in (p["a"], p["b"])], others)
        avg = auc(np.array([-bt0[p["b"] if p["a"] == x else p["a"]] for p in tx]), y)
        row = {"bench": "loo", "split": sp, "llm": x, "epochs": args.epochs, "crowd_query_sd": router.state.crowd.query_sd,
               "crowd_text_sd": router.state.crowd.text_sd, "crowd_score_sd": router.state.crowd.score_sd,
               "n_test_pairs": int((y != 0.5).sum()),
               "n_withheld": len(withheld), "auc_trained_with_x": full, "auc_average_llm": avg}
        given = 0
        for n in (0,) + tuple(args.votes):
            k = min(n, len(withheld))
            for p in withheld[given:k]:
                win, lose = (p["a"], p["b"]) if p["label"] == 1 else (p["b"], p["a"])
                router.update_user_preference(p["user"], p["query"], win, lose)
            given = k
            s_router = x_oriented(tx, p_first(router, tx), x)[0]
            bt = bt_strengths([p for p in train_pairs if x not in (p["a"], p["b"])] + withheld[:k], MT_LLMS)
            s_bt = np.array([bt[x] - bt[p["b"] if p["a"] == x else p["a"]] for p in tx])
            row[f"auc_added_n{n}"] = auc(s_router, y)
            row[f"scores_added_n{n}"] = [round(float(v), 5) for v in s_router]  # for the gap's bootstrap
            row[f"auc_crowd_bt_n{n}"] = auc(s_bt, y)
            row[f"votes_n{n}"] = k
        row["labels"] = [float(v) for v in y]
        row["scores_trained_with_x"] = [round(float(v), 5) for v in s_full]
        if args.retrain_votes:
            # the next training run: the training data without X plus the first n of X's withheld judgments
            k = min(args.retrain_votes, len(withheld))
            keys = {p["key"] for p in withheld[:k]}
            back = dict(reduced, training=reduced["training"] + [r for r in splits["training"] if
                                                                 (r["judge"], r["question_id"], r.get("turn")) in keys])
            with tempfile.TemporaryDirectory() as d:
                rt = train_router(write_split(Path(d) / "data", back), args.epochs, args.seed,
                                  Encoder(splits, args.encoder), Path(d) / "run",
                                  keep=kept(args, sp, f"without_{x}_plus{args.retrain_votes}"))
            row[f"auc_retrained_n{args.retrain_votes}"] = auc(x_oriented(tx, p_first(rt, tx), x)[0], y)
            row["retrain_votes"] = k
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        emit(row)


def crowd_of(router, spec: str):
    """A crowd term from a spec like ``q0.5,t1,s0.5,p1`` (query / text / score / prior sd; unset: the library's)."""
    from gmt_model.serving.llm_pool import CrowdEstimate

    keys = {"p": "prior_sd", "q": "query_sd", "t": "text_sd", "s": "score_sd"}
    kw = {keys[part[0]]: float(part[1:]) for part in spec.split(",") if part}
    return CrowdEstimate(featurize=router.state.crowd_scores, **kw)


def refit_crowd(router, crowd) -> None:
    """Put ``crowd`` in the router and refit it on the votes it holds (user posteriors refitted on it)."""
    st = router.state
    st.crowd, st.crowd_dirty, st._crowd_key = crowd, True, None
    st.post.clear()
    st.ensure_crowd()


def validate_crowd(args, sp: int, splits: dict[str, list[dict]], descriptions: dict[str, str], emit) -> None:
    """Choosing the crowd term on training data only: per LLM X, the router trained without X, X added and
    the first n of X's withheld training judgments revealed (as in (a)); scored on judgments of X the
    benchmark never reveals nor tests: X's judgments in the validation file and the rest of X's withheld
    training judgments.  One row per crowd spec (``--crowd-specs``), with the fit's Laplace log evidence."""
    train_pairs = pairs_of(splits["training"])
    val_pairs = pairs_of(splits["valid"])
    order = withheld_orders(train_pairs, sp)  # the same order as leave_one_out's
    for x in args.llms:
        withheld = order[x]
        reduced = {s: without(rows, x) for s, rows in splits.items()}
        with tempfile.TemporaryDirectory() as d:
            router = train_router(write_split(Path(d) / "data", reduced), args.epochs, args.seed,
                                  Encoder(splits, args.encoder), Path(d) / "run", keep=kept(args, sp, "without_" + x))
        router.add_llm(x, descriptions[x])
        given = 0
        for n in args.votes:
            k = min(n, len(withheld))
            for p in withheld[given:k]:
                win, lose = (p["a"], p["b"]) if p["label"] == 1 else (p["b"], p["a"])
                router.update_user_preference(p["user"], p["query"], win, lose)
            given = k
            held = [p for p in val_pairs if x in (p["a"], p["b"])] + withheld[k:]
            y = x_oriented(held, np.zeros(len(held)), x)[1]
            for spec in args.crowd_specs:
                refit_crowd(router, crowd_of(router, spec))
                emit({"bench": "validate", "split": sp, "llm": x, "votes": k, "spec": spec, "n_pairs": int((y != .5).sum()),
                      "auc": auc(x_oriented(held, p_first(router, held), x)[0], y),
                      "auc_user_blind": auc(x_oriented(held, p_first(router, held, user_blind=True), x)[0], y),
                      "log_evidence": router.state.crowd.log_evidence})


# ---------------------------------------------------------------- (b) cost against quality
def pgr_curve(margin: np.ndarray, win_strong: np.ndarray, rng: np.random.Generator | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(share of strong calls, PGR) as the threshold sweeps the margins (ties broken at random when rng)."""
    n = margin.size
    key = margin + (rng.random(n) * 1e-9 if rng is not None else 0)
    order = np.argsort(-key, kind="mergesort")
    q_weak = np.mean(1 - win_strong)
    q_strong = np.mean(win_strong)
    gap = q_strong - q_weak
    gain = np.r_[0.0, np.cumsum((win_strong - (1 - win_strong))[order])] / n
    share = np.arange(n + 1) / n
    return share, gain / gap if gap else np.zeros(n + 1)


def apgr(share, pgr) -> float:
    return float(np.trapezoid(pgr, share))


def cpt(share, pgr, level: float) -> float:
    hit = np.flatnonzero(pgr >= level)
    return float(share[hit[0]]) if hit.size else float("nan")


def cost_quality(rows: list[dict], prices: dict[str, float], emit, seed: int = 0, n_boot: int = 1000) -> None:
    """rows: per test judgment pairing gpt-4 with a weaker LLM: margins of each router and gpt-4's outcome."""
    rng = np.random.default_rng(seed)
    g4 = [r for r in rows if "gpt-4" in (r["a"], r["b"])]
    win = np.array([r["label"] if r["a"] == "gpt-4" else 1 - r["label"] for r in g4])
    out = {}
    for name in ("personalized", "user_blind", "crowd_bt", "random"):
        m = np.array([(r[name] if r["a"] == "gpt-4" else 1 - r[name]) for r in g4]) if name != "random" \
            else rng.random(len(g4))
        share, pgr = pgr_curve(m, win, rng)
        boots = []
        for _ in range(200):
            i = rng.integers(0, len(g4), len(g4))
            boots.append(apgr(*pgr_curve(m[i], win[i], rng)))
        out[name] = {"apgr": apgr(share, pgr), "apgr_ci": [float(np.percentile(boots, 2.5)),
                                                           float(np.percentile(boots, 97.5))],
                     "cpt50": cpt(share, pgr, 0.5), "cpt80": cpt(share, pgr, 0.8)}
    # personalized - user-blind, paired: the same resampled judgments for both
    mp, mb = (np.array([(r[k] if r["a"] == "gpt-4" else 1 - r[k]) for r in g4]) for k in ("personalized", "user_blind"))
    diffs = []
    for _ in range(n_boot):
        i = rng.integers(0, len(g4), len(g4))
        diffs.append(apgr(*pgr_curve(mp[i], win[i], rng)) - apgr(*pgr_curve(mb[i], win[i], rng)))
    # the same over judges (a judge's judgments resampled together: they are not independent)
    judges = sorted({r["user"] for r in g4})
    of_judge = defaultdict(list)
    for k, r in enumerate(g4):
        of_judge[r["user"]].append(k)
    cdiffs = []
    for _ in range(n_boot):
        i = np.concatenate([of_judge[judges[j]] for j in rng.integers(0, len(judges), len(judges))])
        cdiffs.append(apgr(*pgr_curve(mp[i], win[i], rng)) - apgr(*pgr_curve(mb[i], win[i], rng)))
    per_split = {}
    of_split = {sp: np.array([k for k, r in enumerate(g4) if r["split"] == sp]) for sp in sorted({r["split"] for r in g4})}
    for sp, i in of_split.items():
        per_split[str(sp)] = {"n": int(i.size), "personalized": apgr(*pgr_curve(mp[i], win[i])),
                              "user_blind": apgr(*pgr_curve(mb[i], win[i]))}
    # each split is its own router with its own threshold sweep: the mean over splits of the paired difference
    # (pooling the judgments also ranks one router's margins against another's), judgments resampled per split
    split_mean = float(np.mean([v["personalized"] - v["user_blind"] for v in per_split.values()]))
    sdiffs = []
    for _ in range(n_boot):
        ds = []
        for i in of_split.values():
            j = i[rng.integers(0, i.size, i.size)]
            ds.append(apgr(*pgr_curve(mp[j], win[j], rng)) - apgr(*pgr_curve(mb[j], win[j], rng)))
        sdiffs.append(np.mean(ds))
    out["personalized_minus_user_blind"] = {"apgr": out["personalized"]["apgr"] - out["user_blind"]["apgr"],
                                            "ci": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
                                            "p_below": float(np.mean(np.array(diffs) < 0)), "n_boot": n_boot,
                                            "ci_by_judge": [float(np.percentile(cdiffs, 2.5)),
                                                            float(np.percentile(cdiffs, 97.5))],
                                            "n_judges": len(judges), "per_split": per_split,
                                            "mean_over_splits": split_mean,
                                            "mean_over_splits_ci": [float(np.percentile(sdiffs, 2.5)),
                                                                    float(np.percentile(sdiffs, 97.5))],
                                            "mean_over_splits_p_below": float(np.mean(np.array(sdiffs) < 0))}
    emit({"bench": "cost_gpt4", "n_judgments": len(g4), "gpt4_win_rate": float(win.mean()), **out})
    # the six-LLM pool with list prices: each judgment routed among its two LLMs, cost_weight swept
    for name in ("personalized", "user_blind", "crowd_bt"):
        for cw in (0.0, 0.25, 0.5, 1.0, 2.0, 5.0):
            cost, qual = [], []
            for r in rows:
                pa = r[name]
                ca, cb = prices[r["a"]], prices[r["b"]]
                top = max(ca, cb)
                ua, ub = pa - cw * ca / top, (1 - pa) - cw * cb / top
                pick_a = ua >= ub
                cost.append(ca if pick_a else cb)
                qual.append(r["label"] if pick_a else 1 - r["label"])
            emit({"bench": "cost_pool", "router": name, "cost_weight": cw, "mean_price": float(np.mean(cost)),
                  "quality": float(np.mean(qual)), "n_judgments": len(rows)})
    for pick in ("cheaper", "dearer"):
        cost, qual = [], []
        for r in rows:
            a_cheap = prices[r["a"]] <= prices[r["b"]]
            pick_a = a_cheap if pick == "cheaper" else not a_cheap
            cost.append(prices[r["a"]] if pick_a else prices[r["b"]])
            qual.append(r["label"] if pick_a else 1 - r["label"])
        emit({"bench": "cost_pool", "router": f"always_{pick}", "cost_weight": None,
              "mean_price": float(np.mean(cost)), "quality": float(np.mean(qual)), "n_judgments": len(rows)})


def overhead(router, test: list[dict], descriptions: dict[str, str]) -> dict[str, Any]:
    """add_llm's time (description encoded with the real encoder, first call warmed on another text) and
    route_single's p50 without encoding (texts cached), before and after adding two LLMs with costs."""

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # routing is many tiny ops: the serving configs use threads: 1
    queries = [{"query_text": p["query"], "user_id": p["user"]} for p in test[:300]]
    router.embed([q["query_text"] for q in queries])  # cached: no encoding below
    router.encoder.encode(["warm-up text"])

    def p50(qs, extra=None) -> float:
        ts = []
        for q in qs:
            q = dict(q, **(extra or {}))
            t0 = time.perf_counter()
            router.route_single(q)
            ts.append((time.perf_counter() - t0) * 1000)
        return float(np.median(ts))

    p50(queries[:50])
    before = p50(queries)
    adds = []
    for i in range(5):
        t0 = time.perf_counter()
        router.add_llm(f"added-{i}", f"{descriptions['gpt-4']} Variant {i}.", cost=1.0 + i)
        adds.append((time.perf_counter() - t0) * 1000)
    after = p50(queries)
    costly = p50(queries, {"cost_weight": 0.5})
    # the crowd term of an added LLM with many votes: its refit (at the next route after a vote), and routing
    # with it (the query-dependent term is evaluated per route)
    rng = np.random.default_rng(0)
    refit = {}
    for k in range(1000):
        p = test[k % len(test)]
        other = p["a"] if rng.random() < 0.5 else p["b"]
        pair = ("added-0", other) if rng.random() < 0.5 else (other, "added-0")
        router.update_user_preference(f"voter{k % 50}", p["query"], *pair)
        if k + 1 in (300, 1000):
            ts = []
            for _ in range(3):
                router.state.crowd_dirty, router.state._crowd_key = True, None  # a full refit (past the schedule)
                t0 = time.perf_counter()
                router.state.ensure_crowd()
                ts.append((time.perf_counter() - t0) * 1000)
            refit[k + 1] = float(np.median(ts))
    with_votes = p50(queries)
    for i in range(5):
        router.remove_llm(f"added-{i}")
    torch.set_num_threads(threads)
    return {"bench": "overhead", "route_single_p50_ms": before, "route_single_p50_ms_pool_plus5": after,
            "route_single_p50_ms_cost_weight": costly, "crowd_refit_ms_300_votes": refit.get(300),
            "crowd_refit_ms_1000_votes": refit.get(1000), "route_single_p50_ms_1000_crowd_votes": with_votes,
            "add_llm_ms": adds, "add_llm_ms_median": float(np.median(adds)),
            "loadavg": open("/proc/loadavg").read().split()[:3], "torch_threads": 1}


# ---------------------------------------------------------------- driver
def run(args) -> None:
    import yaml

    from gmt_model.data.datasets import build_jsonl, load_llm_descriptions

    warnings.filterwarnings("ignore")
    descriptions = load_llm_descriptions()
    prices = {m: float(v["cost"]) for m, v in yaml.safe_load(
        (REPO / "configs" / "llm_prices.yaml").read_text())["llms"].items()}
    out = open(args.out, "a") if args.out else None

    def emit(row: dict[str, Any]) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    cost_rows: list[dict] = []
    for sp in args.splits:
        folder = Path(args.cache) / f"split{sp}"
        if not (folder / "test_set.jsonl").exists():
            build_jsonl("mt_bench", Path(args.mt_bench), folder, seed=sp)
        splits = read_split(folder)
        enc = Encoder(splits, args.encoder)
        if args.validate:
            validate_crowd(args, sp, splits, descriptions, emit)
            continue
        with tempfile.TemporaryDirectory() as d:
            full = train_router(write_split(Path(d) / "data", splits), args.epochs, args.seed, enc, Path(d) / "run",
                                keep=kept(args, sp, "full"))
        test = pairs_of(splits["test"])
        if sp == args.splits[0] and not args.skip_cost:
            emit(overhead(full, test, descriptions))
        if not args.skip_cost:
            pers, blind = p_first(full, test), p_first(full, test, user_blind=True)
            bt = bt_strengths(pairs_of(splits["training"]), MT_LLMS)
            for p, a, b in zip(test, pers, blind):
                cost_rows.append(dict(p, split=sp, personalized=float(a), user_blind=float(b),
                                      crowd_bt=1 / (1 + math.exp(-(bt[p["a"]] - bt[p["b"]])))))
        if args.llms:
            leave_one_out(args, sp, splits, full, descriptions, emit)
    if cost_rows:
        cost_quality(cost_rows, prices, emit, n_boot=args.boot)


def report(path: str) -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    loo = [r for r in rows if r["bench"] == "loo"]
    lines = []
    if loo:
        ns = sorted({int(k[len("auc_added_n"):]) for r in loo for k in r if k.startswith("auc_added_n")})
        rt_ns = sorted({int(k[len("auc_retrained_n"):]) for r in loo for k in r if k.startswith("auc_retrained_n")})
        lines += ["| LLM X | splits | trained with X | X as average | added, no feedback | " +
                  " | ".join(f"added +{n} (BT +{n})" for n in ns if n) +
                  "".join(f" | retrained with +{n}" for n in rt_ns) + " |",
                  "|---|---|---|---|---|" + "---|" * (len([n for n in ns if n]) + len(rt_ns))]
        by = defaultdict(list)
        for r in loo:
            by[r["llm"]].append(r)
        means = defaultdict(list)
        for x, rs in list(by.items()) + [("**mean**", loo)]:
            f = lambda k: np.nanmean([r[k] for r in rs if k in r])  # noqa: E731
            cells = [f"{f('auc_trained_with_x'):.3f}", f"{f('auc_average_llm'):.3f}", f"{f('auc_added_n0'):.3f}"]
            cells += [f"{f(f'auc_added_n{n}'):.3f} ({f(f'auc_crowd_bt_n{n}'):.3f})" for n in ns if n]
            cells += [f"{f(f'auc_retrained_n{n}'):.3f}" for n in rt_ns]
            lines.append(f"| {x} | {sorted({r['split'] for r in rs})} | " + " | ".join(cells) + " |")
            means[x] = cells
    if loo and all("labels" in r for r in loo):
        # the gap to the router trained with X, mean over (split, LLM), bootstrap over each one's test pairs
        rng = np.random.default_rng(0)
        for n in [n for n in ns]:
            key = f"scores_added_n{n}"
            if not all(key in r for r in loo):
                continue
            point = np.mean([r["auc_trained_with_x"] - r[f"auc_added_n{n}"] for r in loo])
            boots = []
            for _ in range(1000):
                gaps = []
                for r in loo:
                    y = np.array(r["labels"])
                    i = rng.integers(0, y.size, y.size)
                    gaps.append(auc(np.array(r["scores_trained_with_x"])[i], y[i]) - auc(np.array(r[key])[i], y[i]))
                boots.append(np.nanmean(gaps))
            lines.append(f"gap trained with X - added +{n}: {point:.3f} [95% CI {np.percentile(boots, 2.5):.3f}, "
                         f"{np.percentile(boots, 97.5):.3f}] (bootstrap over each (split, LLM)'s test pairs, 1000)")
    for r in rows:
        if r["bench"] == "overhead":
            lines += ["", f"overhead: route_single p50 {r['route_single_p50_ms']:.2f} ms (no encoding), "
                          f"{r['route_single_p50_ms_pool_plus5']:.2f} ms with 5 added LLMs, "
                          f"{r['route_single_p50_ms_cost_weight']:.2f} ms with cost_weight, "
                          f"{r.get('route_single_p50_ms_1000_crowd_votes') or float('nan'):.2f} ms with 1000 crowd votes "
                          f"on an added LLM (refit {r.get('crowd_refit_ms_300_votes') or float('nan'):.1f} ms at 300 "
                          f"votes, {r.get('crowd_refit_ms_1000_votes') or float('nan'):.1f} ms at 1000); add_llm median "
                          f"{r['add_llm_ms_median']:.1f} ms (load {' '.join(r['loadavg'])})"]
        if r["bench"] == "cost_gpt4":
            lines += ["", f"gpt-4 against another LLM: {r['n_judgments']} test judgments, gpt-4 wins "
                          f"{r['gpt4_win_rate']:.3f}", "",
                      "| router | APGR [95% CI] | CPT(50%) | CPT(80%) |", "|---|---|---|---|"]
            for name in ("personalized", "user_blind", "crowd_bt", "random"):
                v = r[name]
                lines.append(f"| {name} | {v['apgr']:.3f} [{v['apgr_ci'][0]:.3f}, {v['apgr_ci'][1]:.3f}] | "
                             f"{v['cpt50']:.3f} | {v['cpt80']:.3f} |")
            d = r.get("personalized_minus_user_blind")
            if d:
                lines.append(f"| personalized - user-blind (paired) | {d['apgr']:+.3f} [{d['ci'][0]:+.3f}, "
                             f"{d['ci'][1]:+.3f}] | share of resamples below 0: {d['p_below']:.2f} | |")
                if "ci_by_judge" in d:
                    lines.append(f"| ... resampling judges ({d['n_judges']}) | [{d['ci_by_judge'][0]:+.3f}, "
                                 f"{d['ci_by_judge'][1]:+.3f}] | | |")
                    for sp, v in d["per_split"].items():
                        lines.append(f"| ... split {sp} ({v['n']} judgments) | {v['personalized']:.3f} vs "
                                     f"{v['user_blind']:.3f} | | |")
                if "mean_over_splits" in d:
                    lines.append(f"| ... mean over the {len(d['per_split'])} splits of each split's difference | "
                                 f"{d['mean_over_splits']:+.4f} [{d['mean_over_splits_ci'][0]:+.4f}, "
                                 f"{d['mean_over_splits_ci'][1]:+.4f}] | share of resamples below 0: "
                                 f"{d['mean_over_splits_p_below']:.2f} | |")
    pool = [r for r in rows if r["bench"] == "cost_pool"]
    if pool:
        lines += ["", "| router | cost_weight | mean price (USD / 1M tok) | quality (win=1, tie=.5) |",
                  "|---|---|---|---|"]
        for r in pool:
            lines.append(f"| {r['router']} | {r['cost_weight']} | {r['mean_price']:.2f} | {r['quality']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="append one JSON line per result here")
    ap.add_argument("--report", metavar="JSONL", help="print the markdown tables of an --out file")
    default_data = next((p for p in (REPO.parent / "shared", REPO.parent.parent / "shared")
                         if (p / "data" / "mt_bench_human").is_dir()), REPO.parent / "shared")
    ap.add_argument("--mt-bench", default=str(default_data / "data" / "mt_bench_human"))
    ap.add_argument("--cache", default=str(REPO / ".cache" / "mt_bench_seeds"), help="folder of split0..2")
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--llms", nargs="*", default=MT_LLMS, help="LLMs to leave out (none: only the cost part)")
    ap.add_argument("--votes", type=int, nargs="+", default=list(N_VOTES))
    ap.add_argument("--epochs", type=int, default=350)
    ap.add_argument("--seed", type=int, default=136)
    ap.add_argument("--encoder", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--retrain-votes", type=int, metavar="N",
                    help="also train on the data without X plus N of X's withheld judgments (the next training run) "
                         "and score it on the same pairs")
    ap.add_argument("--crowd-query-sd", type=float,
                    help="prior std of the topic part of an added LLM's crowd term (library default if not given)")
    ap.add_argument("--crowd-text-sd", type=float,
                    help="prior std of its per-query-text part (both 0: a constant strength per added LLM)")
    ap.add_argument("--crowd-score-sd", type=float,
                    help="prior std of its part that follows the trained LLMs' scores of the query (0: off)")
    ap.add_argument("--keep-models", metavar="DIR",
                    help="keep each trained checkpoint here and reuse it on the next run with the same split, "
                         "epochs and seed (the routers' online state is not kept: each run starts from the checkpoint)")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the paired APGR difference in (b)")
    ap.add_argument("--validate", action="store_true",
                    help="choose the crowd term on training data only (no test judgment read): for each --crowd-specs, "
                         "AUC on X's validation-file judgments and its unrevealed withheld training judgments after "
                         "--votes of them")
    ap.add_argument("--crowd-specs", nargs="+", default=[""],
                    help="crowd terms for --validate: comma lists of p/q/t/s + sd (prior, query, text, score), "
                         "e.g. q0.5,t1,s0.5; empty: the library's defaults")
    args = ap.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
