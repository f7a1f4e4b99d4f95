"""Evaluation metrics for pairwise LLM preference prediction (numpy only).

Metrics (see ``shared/design/gmtrouter.md`` section 5):

* :func:`pairwise_accuracy` -- fraction of non-tied pairs ordered correctly
  (a tie in the *scores* counts one half);
* :func:`pairwise_auc` -- ROC-AUC of ``s_a - s_b`` against ``[label == 1]``
  over non-tied pairs (Mann-Whitney U with average ranks for tied scores);
* :func:`top1_accuracy` and :func:`ovr_auc` -- for comparison groups of K
  candidates, over flat per-candidate arrays (see :class:`GroupScores`);
* :func:`bootstrap_ci` -- percentile bootstrap intervals, resampling rows or
  whole clusters (users); vectorised for the four metrics above.

Result containers: :class:`MethodResult` (one method on one split, with
per-user and per-LLM breakdowns) and :class:`EvalReport` (several methods,
optional cold-start results, JSON and Markdown output).

Everything here is deterministic for a given ``seed``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from gmt_model.atomic import write_text_atomic

__all__ = [
    "PairSet",
    "GroupScores",
    "pairwise_accuracy",
    "pairwise_auc",
    "top1_accuracy",
    "ovr_auc",
    "bootstrap_ci",
    "MethodResult",
    "evaluate_pair_scores",
    "EvalReport",
]

#: label values allowed in pair sets: b preferred, tie, a preferred
_LABEL_VALUES = (0.0, 0.5, 1.0)
#: resamples evaluated per vectorised block (bounds memory to block x rows)
_BLOCK = 64


# --------------------------------------------------------------------------
# input checking helpers
# --------------------------------------------------------------------------
def _as_index(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"field {name!r}: expected a 1-D integer array, got shape {arr.shape}")
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"field {name!r}: expected integer dtype, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _as_float(name: str, value: Any, ndim: int = 1) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"field {name!r}: expected a {ndim}-D numeric array, got shape {arr.shape}")
    if arr.size and not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"field {name!r}: expected numeric dtype, got {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.size and not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr.reshape(arr.shape[0], -1)).any(axis=1))[0])
        raise ValueError(f"field {name!r}: non-finite value at row {bad}")
    return arr


def _check_labels(name: str, label: Any) -> np.ndarray:
    y = _as_float(name, label)
    ok = (y == 0.0) | (y == 0.5) | (y == 1.0)
    if not np.all(ok):
        bad = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"field {name!r}: row {bad} has value {y[bad]!r}; expected one of {_LABEL_VALUES} "
            "(1 = a preferred, 0 = b preferred, 0.5 = tie)"
        )
    return y


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays differ in length: {lengths}")
    return next(iter(lengths.values())) if lengths else 0


def _pair_inputs(score_a: Any, score_b: Any, label: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sa = _as_float("score_a", score_a)
    sb = _as_float("score_b", score_b)
    y = _check_labels("label", label)
    _same_length(score_a=sa, score_b=sb, label=y)
    return sa, sb, y


def _group_inputs(group: Any, score: Any, rating: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = _as_index("group", group)
    s = _as_float("score", score)
    r = _as_float("rating", rating)
    _same_length(group=g, score=s, rating=r)
    return g, s, r


# --------------------------------------------------------------------------
# data containers
# --------------------------------------------------------------------------
@dataclass
class PairSet:
    """The comparison pairs of one split (one row per pair).

    ``label`` is 1.0 when ``llm_a`` is preferred, 0.0 when ``llm_b`` is,
    0.5 for a tie.  ``query`` indexes rows of ``query_emb`` (the query both
    answers respond to); ``group`` identifies the comparison group (same
    user, query and step; K >= 2 candidates).  ``query_emb`` is shared and
    may hold rows of other splits too.
    """

    user: np.ndarray
    llm_a: np.ndarray
    llm_b: np.ndarray
    label: np.ndarray
    query: np.ndarray
    group: np.ndarray
    query_emb: np.ndarray

    def __post_init__(self) -> None:
        self.user = _as_index("user", self.user)
        self.llm_a = _as_index("llm_a", self.llm_a)
        self.llm_b = _as_index("llm_b", self.llm_b)
        self.label = _check_labels("label", self.label).astype(np.float32)
        self.query = _as_index("query", self.query)
        self.group = _as_index("group", self.group)
        emb = np.asarray(self.query_emb)
        self.query_emb = emb if emb.dtype == np.float32 and emb.ndim == 2 else _as_float(
            "query_emb", emb, ndim=2).astype(np.float32)
        if not np.all(np.isfinite(self.query_emb)):
            raise ValueError("field 'query_emb': contains non-finite values")
        n = _same_length(
            user=self.user, llm_a=self.llm_a, llm_b=self.llm_b, label=self.label, query=self.query, group=self.group
        )
        for name in ("user", "llm_a", "llm_b", "query", "group"):
            arr = getattr(self, name)
            if n and arr.min() < 0:
                raise ValueError(f"field {name!r}: negative index at row {int(np.argmin(arr))}")
        if n and self.query.max() >= self.query_emb.shape[0]:
            bad = int(np.argmax(self.query))
            raise ValueError(
                f"field 'query': row {bad} refers to query {int(self.query[bad])} but query_emb has "
                f"{self.query_emb.shape[0]} rows"
            )

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def subset(self, mask: np.ndarray) -> "PairSet":
        """Pairs selected by a boolean mask (length n) or an index array; ``query_emb`` is kept whole."""
        sel = np.asarray(mask)
        if sel.dtype == np.bool_ and sel.shape != (len(self),):
            raise ValueError(f"boolean mask has shape {sel.shape}, expected ({len(self)},)")
        # the fields were checked when this set was built: no second validation
        out = object.__new__(PairSet)
        for name in ("user", "llm_a", "llm_b", "label", "query", "group"):
            setattr(out, name, getattr(self, name)[sel])
        out.query_emb = self.query_emb
        return out


@dataclass
class GroupScores:
    """Flat per-candidate scores of comparison groups (one row per candidate).

    Rows with the same ``group`` are the K candidates scored for one (user,
    query, step); ``rating`` is the observed (normalised) rating and
    ``score`` the method's score of that candidate.
    """

    group: np.ndarray
    llm: np.ndarray
    score: np.ndarray
    rating: np.ndarray

    def __post_init__(self) -> None:
        self.group = _as_index("group", self.group)
        self.llm = _as_index("llm", self.llm)
        self.score = _as_float("score", self.score)
        self.rating = _as_float("rating", self.rating)
        _same_length(group=self.group, llm=self.llm, score=self.score, rating=self.rating)

    def __len__(self) -> int:
        return int(self.group.shape[0])

    def group_sizes(self) -> np.ndarray:
        """Per-row size K of the row's group."""
        _, inv, counts = np.unique(self.group, return_inverse=True, return_counts=True)
        return counts[inv]

    def subset(self, mask: np.ndarray) -> "GroupScores":
        """Rows selected by a boolean mask or an index array."""
        sel = np.asarray(mask)
        return GroupScores(self.group[sel], self.llm[sel], self.score[sel], self.rating[sel])

    def with_min_size(self, k: int) -> "GroupScores":
        """Only the groups with at least ``k`` candidates."""
        return self.subset(self.group_sizes() >= k)


# --------------------------------------------------------------------------
# weighted kernels: each turns a (r, n) matrix of row weights (bootstrap
# multiplicities; all ones for the point estimate) into r metric values
# --------------------------------------------------------------------------
_Kernel = Callable[[np.ndarray], np.ndarray]


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def _auc_kernel(x: np.ndarray, pos: np.ndarray, rows: np.ndarray) -> _Kernel:
    """Weighted Mann-Whitney AUC of values ``x[rows]`` against ``pos[rows]``.

    With integer weights this equals the AUC of the data set in which row i
    appears ``w_i`` times (ties in x count one half).
    """
    xs = x[rows]
    posf = pos[rows].astype(np.float64)
    if xs.size == 0:
        return lambda w: np.full(w.shape[0], np.nan)
    _, inv = np.unique(xs, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    inv_sorted = inv[order]
    starts = np.flatnonzero(np.r_[True, inv_sorted[1:] != inv_sorted[:-1]])
    pos_sorted = posf[order]
    neg_sorted = 1.0 - pos_sorted
    cols = rows[order]

    def run(w: np.ndarray) -> np.ndarray:
        ws = w[:, cols]
        p = np.add.reduceat(ws * pos_sorted, starts, axis=1)
        q = np.add.reduceat(ws * neg_sorted, starts, axis=1)
        less = np.cumsum(q, axis=1) - q
        num = np.sum(p * (less + 0.5 * q), axis=1)
        return _safe_ratio(num, p.sum(axis=1) * q.sum(axis=1))

    return run


def _accuracy_kernel(score_a: Any, score_b: Any, label: Any) -> _Kernel:
    sa, sb, y = _pair_inputs(score_a, score_b, label)
    valid = (y != 0.5).astype(np.float64)
    correct = np.where(sa == sb, 0.5, ((sa > sb) == (y == 1.0)).astype(np.float64)) * valid

    def run(w: np.ndarray) -> np.ndarray:
        return _safe_ratio(w @ correct, w @ valid)

    return run


def _pair_auc_kernel(score_a: Any, score_b: Any, label: Any) -> _Kernel:
    sa, sb, y = _pair_inputs(score_a, score_b, label)
    rows = np.flatnonzero(y != 0.5)
    return _auc_kernel(sa - sb, y == 1.0, rows)


def _group_structure(g: np.ndarray, s: np.ndarray, r: np.ndarray) -> dict[str, np.ndarray]:
    """Per-group facts for top-1 and one-vs-rest metrics."""
    order = np.argsort(g, kind="stable")
    gs, ss, rs = g[order], s[order], r[order]
    starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]]) if gs.size else np.zeros(0, np.int64)
    gid = np.cumsum(np.r_[False, gs[1:] != gs[:-1]]) if gs.size else np.zeros(0, np.int64)
    if gs.size == 0:
        empty_f = np.zeros(0)
        return {"first": np.zeros(0, np.int64), "valid": np.zeros(0, bool), "outcome": empty_f,
                "is_best": np.zeros(0, bool), "row_valid": np.zeros(0, bool)}
    max_r = np.maximum.reduceat(rs, starts)
    max_s = np.maximum.reduceat(ss, starts)
    is_best_s = rs == max_r[gid]
    is_top_s = ss == max_s[gid]
    size = np.add.reduceat(np.ones_like(rs), starts)
    n_best = np.add.reduceat(is_best_s.astype(np.float64), starts)
    n_top = np.add.reduceat(is_top_s.astype(np.float64), starts)
    best_top = np.add.reduceat((is_best_s & is_top_s).astype(np.float64), starts)
    valid = (n_best == 1) & (size >= 2)
    outcome = np.where(valid, best_top / n_top, 0.0)
    is_best = np.zeros(g.shape[0], bool)
    is_best[order] = is_best_s
    row_valid = np.zeros(g.shape[0], bool)
    row_valid[order] = valid[gid]
    return {"first": order[starts], "valid": valid, "outcome": outcome, "is_best": is_best, "row_valid": row_valid}


def _top1_kernel(group: Any, score: Any, rating: Any) -> _Kernel:
    g, s, r = _group_inputs(group, score, rating)
    st = _group_structure(g, s, r)
    first, validf, outcome = st["first"], st["valid"].astype(np.float64), st["outcome"]

    def run(w: np.ndarray) -> np.ndarray:
        wg = w[:, first]
        return _safe_ratio(wg @ outcome, wg @ validf)

    return run


def _ovr_kernel(group: Any, score: Any, rating: Any) -> _Kernel:
    g, s, r = _group_inputs(group, score, rating)
    st = _group_structure(g, s, r)
    return _auc_kernel(s, st["is_best"], np.flatnonzero(st["row_valid"]))


def _point(kernel: _Kernel, n: int) -> float:
    return float(kernel(np.ones((1, n)))[0])


# --------------------------------------------------------------------------
# public metrics
# --------------------------------------------------------------------------
def pairwise_accuracy(score_a: Any, score_b: Any, label: Any) -> float:
    """Fraction of non-tied pairs ordered correctly by the scores.

    Pairs with ``label == 0.5`` are skipped; a pair whose two scores are equal
    counts 0.5.  Returns nan when no pair is left.
    """
    kernel = _accuracy_kernel(score_a, score_b, label)
    return _point(kernel, len(np.asarray(label)))


def pairwise_auc(score_a: Any, score_b: Any, label: Any) -> float:
    """ROC-AUC of ``score_a - score_b`` against ``[label == 1]`` over non-tied pairs.

    Rank based (Mann-Whitney U, average ranks for tied differences).  Returns
    nan when the non-tied pairs contain only one class.
    """
    kernel = _pair_auc_kernel(score_a, score_b, label)
    return _point(kernel, len(np.asarray(label)))


def top1_accuracy(group: Any, score: Any, rating: Any) -> float:
    """Fraction of groups whose highest-scored candidate is the group's unique best.

    Inputs are flat per-candidate arrays (see :class:`GroupScores`).  Groups
    without a unique best rating (or with one candidate) are skipped; when m
    candidates share the top score and the best is among them it counts 1/m.
    Returns nan when no group is left.
    """
    kernel = _top1_kernel(group, score, rating)
    return _point(kernel, len(np.asarray(group)))


def ovr_auc(group: Any, score: Any, rating: Any) -> float:
    """One-vs-rest AUC: candidates' scores against "is its group's unique best".

    Pooled over the candidates of all groups that have a unique best rating;
    ties in score count one half.  Returns nan when only one class is left.
    """
    kernel = _ovr_kernel(group, score, rating)
    return _point(kernel, len(np.asarray(group)))


#: metric -> (weighted kernel factory, resamples whole groups)
_KERNELS: dict[Callable[..., float], tuple[Callable[..., _Kernel], bool]] = {
    pairwise_accuracy: (_accuracy_kernel, False),
    pairwise_auc: (_pair_auc_kernel, False),
    top1_accuracy: (_top1_kernel, True),
    ovr_auc: (_ovr_kernel, True),
}


# --------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------
def _weight_blocks(
    n: int, n_resamples: int, seed: int, cluster_inv: np.ndarray | None, n_clusters: int
):
    """Yield (r, n) float matrices of row multiplicities, ``n_resamples`` rows in total."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        r = min(_BLOCK, n_resamples - done)
        if cluster_inv is None:
            draws = rng.integers(0, n, size=(r, n))
            counts = np.bincount((draws + (np.arange(r) * n)[:, None]).ravel(), minlength=r * n)
            yield counts.reshape(r, n).astype(np.float64)
        else:
            draws = rng.integers(0, n_clusters, size=(r, n_clusters))
            counts = np.bincount(
                (draws + (np.arange(r) * n_clusters)[:, None]).ravel(), minlength=r * n_clusters
            ).reshape(r, n_clusters)
            yield counts[:, cluster_inv].astype(np.float64)
        done += r


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    n_resamples: int = 1000,
    seed: int = 0,
    cluster: Any = None,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric_fn(*arrays)``.

    Rows (the first axis of every array) are resampled with replacement; when
    ``cluster`` (one id per row, e.g. the user) is given, whole clusters are
    resampled instead, which is the honest interval when rows of a cluster
    are correlated.  For :func:`pairwise_accuracy`, :func:`pairwise_auc`,
    :func:`top1_accuracy` and :func:`ovr_auc` the resamples are evaluated
    vectorised as weighted metrics; for the two group metrics (first array =
    group id) whole groups are always resampled (``cluster`` defaults to the
    group and must be constant within each group).  Any other callable is
    evaluated once per resample on the resampled rows.

    Resamples whose metric is undefined (nan) are dropped; returns
    ``(nan, nan)`` when all are.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one data array")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    arrs = [np.asarray(a) for a in arrays]
    n = _same_length(**{f"arrays[{i}]": a for i, a in enumerate(arrs)})
    if n == 0:
        return (math.nan, math.nan)

    entry = _KERNELS.get(metric_fn)
    cluster_arr = None if cluster is None else np.asarray(cluster)
    if cluster_arr is not None and cluster_arr.shape != (n,):
        raise ValueError(f"cluster has shape {cluster_arr.shape}, expected ({n},)")
    if entry is not None and entry[1]:
        group = _as_index("group", arrs[0])
        if cluster_arr is None:
            cluster_arr = group
        else:
            _, ginv = np.unique(group, return_inverse=True)
            _, cinv = np.unique(cluster_arr, return_inverse=True)
            first_c = np.full(ginv.max() + 1, -1, np.int64)
            first_c[ginv[::-1]] = cinv[::-1]
            bad = np.flatnonzero(first_c[ginv] != cinv)
            if bad.size:
                raise ValueError(
                    f"cluster must be constant within each group; group {int(group[bad[0]])} spans several clusters"
                )
    if cluster_arr is None:
        cinv, n_clusters = None, 0
    else:
        uniq, cinv = np.unique(cluster_arr, return_inverse=True)
        n_clusters = int(uniq.shape[0])

    values: list[np.ndarray] = []
    blocks = _weight_blocks(n, n_resamples, seed, cinv, n_clusters)
    if entry is not None:
        kernel = entry[0](*arrs)
        for w in blocks:
            values.append(kernel(w))
    else:
        base = np.arange(n)
        for w in blocks:
            for row in w.astype(np.int64):
                idx = np.repeat(base, row)
                values.append(np.array([float(metric_fn(*(a[idx] for a in arrs)))]))
    vals = np.concatenate(values)
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(vals, [alpha, 1.0 - alpha])
    return (float(low), float(high))


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------
def _num(x: float | None) -> float | None:
    """JSON-friendly float: nan -> None."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _ci(ci: tuple[float, float] | None) -> list[float | None] | None:
    return None if ci is None else [_num(ci[0]), _num(ci[1])]


def _unnum(x: Any) -> float | None:
    return math.nan if x is None else float(x)


def _unci(ci: Any) -> tuple[float, float] | None:
    return None if ci is None else (_unnum(ci[0]), _unnum(ci[1]))  # type: ignore[return-value]


@dataclass
class MethodResult:
    """Metrics of one method on one split.

    ``n_pairs`` counts the non-tied pairs the pairwise metrics use
    (``n_ties`` the skipped tied ones).  ``top1``/``ovr_auc`` cover groups
    with K > 2 candidates and a unique best (``n_groups`` of them); they and
    their intervals are None when every group has K == 2.  ``per_user`` and
    ``per_llm`` map names to ``{"n_pairs", "accuracy", "auc"}``; an LLM's
    entry covers the pairs involving it, oriented so that the LLM is side a.
    Intervals are ``ci_level`` percentile bootstrap intervals resampling users.
    """

    name: str
    n_pairs: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    auc: float
    auc_ci: tuple[float, float]
    n_ties: int = 0
    n_groups: int = 0
    top1: float | None = None
    top1_ci: tuple[float, float] | None = None
    ovr_auc: float | None = None
    ovr_auc_ci: tuple[float, float] | None = None
    ci_level: float = 0.95
    per_user: dict[str, dict] = field(default_factory=dict)
    per_llm: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nan becomes None)."""

        def breakdown(d: dict[str, dict]) -> dict[str, dict]:
            return {
                k: {"n_pairs": int(v["n_pairs"]), "accuracy": _num(v["accuracy"]), "auc": _num(v["auc"])}
                for k, v in d.items()
            }

        return {
            "name": self.name,
            "n_pairs": int(self.n_pairs),
            "n_ties": int(self.n_ties),
            "accuracy": _num(self.accuracy),
            "accuracy_ci": _ci(self.accuracy_ci),
            "auc": _num(self.auc),
            "auc_ci": _ci(self.auc_ci),
            "n_groups": int(self.n_groups),
            "top1": _num(self.top1),
            "top1_ci": _ci(self.top1_ci),
            "ovr_auc": _num(self.ovr_auc),
            "ovr_auc_ci": _ci(self.ovr_auc_ci),
            "ci_level": float(self.ci_level),
            "per_user": breakdown(self.per_user),
            "per_llm": breakdown(self.per_llm),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MethodResult":
        """Inverse of :meth:`to_dict` (None back to nan for the pairwise metrics)."""

        def breakdown(b: dict[str, dict]) -> dict[str, dict]:
            return {
                k: {"n_pairs": int(v["n_pairs"]), "accuracy": _unnum(v["accuracy"]), "auc": _unnum(v["auc"])}
                for k, v in b.items()
            }

        return cls(
            name=str(d["name"]),
            n_pairs=int(d["n_pairs"]),
            accuracy=_unnum(d["accuracy"]),  # type: ignore[arg-type]
            accuracy_ci=_unci(d["accuracy_ci"]),  # type: ignore[arg-type]
            auc=_unnum(d["auc"]),  # type: ignore[arg-type]
            auc_ci=_unci(d["auc_ci"]),  # type: ignore[arg-type]
            n_ties=int(d.get("n_ties", 0)),
            n_groups=int(d.get("n_groups", 0)),
            top1=None if d.get("top1_ci") is None and d.get("top1") is None else _unnum(d.get("top1")),
            top1_ci=_unci(d.get("top1_ci")),
            ovr_auc=None if d.get("ovr_auc_ci") is None and d.get("ovr_auc") is None else _unnum(d.get("ovr_auc")),
            ovr_auc_ci=_unci(d.get("ovr_auc_ci")),
            ci_level=float(d.get("ci_level", 0.95)),
            per_user=breakdown(d.get("per_user", {})),
            per_llm=breakdown(d.get("per_llm", {})),
        )

    def flat_metrics(self, prefix: str = "") -> dict[str, float]:
        """Scalar metrics for experiment tracking (``{prefix}accuracy`` etc.; nan/None left out)."""
        out: dict[str, float] = {f"{prefix}n_pairs": float(self.n_pairs)}
        items: list[tuple[str, float | None]] = [("accuracy", self.accuracy), ("auc", self.auc)]
        items += [("accuracy_ci_low", self.accuracy_ci[0]), ("accuracy_ci_high", self.accuracy_ci[1])]
        items += [("auc_ci_low", self.auc_ci[0]), ("auc_ci_high", self.auc_ci[1])]
        items += [("top1", self.top1), ("ovr_auc", self.ovr_auc)]
        for key, val in items:
            v = _num(val)
            if v is not None:
                out[f"{prefix}{key}"] = v
        return out


def _name(names: Sequence[str], idx: int, kind: str) -> str:
    if not 0 <= idx < len(names):
        raise ValueError(f"{kind} index {idx} has no name ({len(names)} {kind} names given)")
    return str(names[idx])


def _split_by(keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """[(key, row indices)] for each distinct key, keys ascending."""
    if keys.size == 0:
        return []
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    return [(int(ks[s]), rows) for s, rows in zip(starts, np.split(order, starts[1:]))]


def evaluate_pair_scores(
    name: str,
    pairs: PairSet,
    score_a: Any,
    score_b: Any,
    user_names: Sequence[str],
    llm_names: Sequence[str],
    group_scores: GroupScores | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> MethodResult:
    """All metrics of one method's scores on one split.

    ``score_a[i]``/``score_b[i]`` are the method's scores of ``pairs.llm_a[i]``
    and ``pairs.llm_b[i]``.  Intervals resample users (cluster bootstrap).
    ``group_scores`` (optional) gives per-candidate scores and ratings for the
    comparison groups (ids as in ``pairs.group``); top-1 and one-vs-rest AUC
    use its groups with K > 2 and are None when there are none.
    """
    sa, sb, y = _pair_inputs(score_a, score_b, pairs.label)
    if len(sa) != len(pairs):
        raise ValueError(f"score_a has {len(sa)} rows but the pair set has {len(pairs)}")
    user, llm_a, llm_b = pairs.user, pairs.llm_a, pairs.llm_b

    nontied = y != 0.5
    acc = pairwise_accuracy(sa, sb, y)
    auc = pairwise_auc(sa, sb, y)
    acc_ci = bootstrap_ci(pairwise_accuracy, sa, sb, y, n_resamples=n_resamples, seed=seed, cluster=user, level=level)
    auc_ci = bootstrap_ci(pairwise_auc, sa, sb, y, n_resamples=n_resamples, seed=seed, cluster=user, level=level)

    per_user: dict[str, dict] = {}
    for u, rows in _split_by(user):
        per_user[_name(user_names, u, "user")] = {
            "n_pairs": int(nontied[rows].sum()),
            "accuracy": pairwise_accuracy(sa[rows], sb[rows], y[rows]),
            "auc": pairwise_auc(sa[rows], sb[rows], y[rows]),
        }

    # per LLM: every pair appears twice, oriented so the LLM is side a
    llm_side = np.concatenate([llm_a, llm_b])
    s_self = np.concatenate([sa, sb])
    s_other = np.concatenate([sb, sa])
    y_self = np.concatenate([y, 1.0 - y])
    not_self = np.concatenate([llm_a != llm_b, llm_a != llm_b])
    per_llm: dict[str, dict] = {}
    for m, rows in _split_by(llm_side[not_self]):
        rows = np.flatnonzero(not_self)[rows]
        per_llm[_name(llm_names, m, "llm")] = {
            "n_pairs": int((y_self[rows] != 0.5).sum()),
            "accuracy": pairwise_accuracy(s_self[rows], s_other[rows], y_self[rows]),
            "auc": pairwise_auc(s_self[rows], s_other[rows], y_self[rows]),
        }

    result = MethodResult(
        name=name,
        n_pairs=int(nontied.sum()),
        n_ties=int((~nontied).sum()),
        accuracy=acc,
        accuracy_ci=acc_ci,
        auc=auc,
        auc_ci=auc_ci,
        ci_level=level,
        per_user=per_user,
        per_llm=per_llm,
    )

    if group_scores is not None:
        gs = group_scores.with_min_size(3)
        if len(gs):
            # the user of each group, for the user-level cluster bootstrap
            gkeys, first = np.unique(pairs.group, return_index=True)
            pos = np.searchsorted(gkeys, gs.group)
            pos_c = np.minimum(pos, max(len(gkeys) - 1, 0))
            known = (pos < len(gkeys)) & (gkeys[pos_c] == gs.group) if len(gkeys) else np.zeros(len(gs), bool)
            if not np.all(known):
                bad = int(gs.group[np.flatnonzero(~known)[0]])
                raise ValueError(f"group_scores: group {bad} does not occur in pairs.group")
            g_user = user[first[pos_c]]
            st = _group_structure(gs.group, gs.score, gs.rating)
            result.n_groups = int(st["valid"].sum())
            result.top1 = top1_accuracy(gs.group, gs.score, gs.rating)
            result.ovr_auc = ovr_auc(gs.group, gs.score, gs.rating)
            result.top1_ci = bootstrap_ci(
                top1_accuracy, gs.group, gs.score, gs.rating,
                n_resamples=n_resamples, seed=seed, cluster=g_user, level=level,
            )
            result.ovr_auc_ci = bootstrap_ci(
                ovr_auc, gs.group, gs.score, gs.rating,
                n_resamples=n_resamples, seed=seed, cluster=g_user, level=level,
            )
    return result


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _fmt_ci(x: float | None, ci: tuple[float, float] | None) -> str:
    if x is None:
        return "–"
    if ci is None:
        return _fmt(x)
    return f"{_fmt(x)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


@dataclass
class EvalReport:
    """Results of several methods on one split (plus optional cold-start results)."""

    split: str
    methods: dict[str, MethodResult]
    cold_start: dict[str, MethodResult] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "split": self.split,
            "methods": {k: v.to_dict() for k, v in self.methods.items()},
            "cold_start": {k: v.to_dict() for k, v in self.cold_start.items()},
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalReport":
        """Inverse of :meth:`to_dict`."""
        return cls(
            split=str(d["split"]),
            methods={k: MethodResult.from_dict(v) for k, v in d["methods"].items()},
            cold_start={k: MethodResult.from_dict(v) for k, v in d.get("cold_start", {}).items()},
            metadata=dict(d.get("metadata", {})),
        )

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON atomically (temp file in the same folder, then rename)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False)
        return write_text_atomic(path, text + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "EvalReport":
        """Read a report written by :meth:`to_json`."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    @staticmethod
    def _table(results: dict[str, MethodResult]) -> list[str]:
        level = next(iter(results.values())).ci_level if results else 0.95
        pct = f"{100 * level:g}%"
        lines = [
            f"| method | pairs | accuracy [{pct} CI] | AUC [{pct} CI] | top-1 | OvR AUC |",
            "|---|---:|---|---|---|---|",
        ]
        for key, r in results.items():
            lines.append(
                f"| {key} | {r.n_pairs} | {_fmt_ci(r.accuracy, r.accuracy_ci)} | {_fmt_ci(r.auc, r.auc_ci)} "
                f"| {_fmt_ci(r.top1, r.top1_ci)} | {_fmt_ci(r.ovr_auc, r.ovr_auc_ci)} |"
            )
        return lines

    def to_markdown(self) -> str:
        """Compact Markdown: a table of all methods and, if present, a cold-start table."""
        lines = [f"### Evaluation on split `{self.split}`", ""]
        lines += self._table(self.methods)
        if self.cold_start:
            lines += ["", "#### Cold-start users (history hidden)", ""]
            lines += self._table(self.cold_start)
        return "\n".join(lines) + "\n"

    def headline(self, method: str) -> str:
        """One line summarising ``method`` on this split."""
        if method not in self.methods:
            raise KeyError(f"method {method!r} not in report; have {sorted(self.methods)}")
        r = self.methods[method]
        text = (
            f"{method} on {self.split}: accuracy {_fmt_ci(r.accuracy, r.accuracy_ci)}, "
            f"AUC {_fmt_ci(r.auc, r.auc_ci)} over {r.n_pairs} pairs"
        )
        if r.top1 is not None:
            text += f"; top-1 {_fmt_ci(r.top1, r.top1_ci)} over {r.n_groups} groups"
        return text
