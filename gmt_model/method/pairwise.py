"""The method's own pairwise validation metrics (numpy only).

Training validates with these, so the method never imports the evaluation
layer; ``gmt_model.evaluation.metrics`` has the full set (bootstrap intervals, per-user
breakdowns) and tests check that both give the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["pair_accuracy", "pair_auc"]


def _inputs(score_a: Any, score_b: Any, label: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sa, sb, y = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (score_a, score_b, label))
    if not sa.shape == sb.shape == y.shape:
        raise ValueError(f"score_a, score_b and label differ in length: {sa.size}, {sb.size}, {y.size}")
    return sa, sb, y


def pair_accuracy(score_a: Any, score_b: Any, label: Any) -> float:
    """Fraction of non-tied pairs (``label`` 1 or 0) whose scores order them right; equal scores count
    one half; nan when no pair is left."""
    sa, sb, y = _inputs(score_a, score_b, label)
    keep = y != 0.5
    if not keep.any():
        return float("nan")
    sa, sb, y = sa[keep], sb[keep], y[keep]
    correct = np.where(sa == sb, 0.5, ((sa > sb) == (y == 1.0)).astype(np.float64))
    return float(correct.mean())


def pair_auc(score_a: Any, score_b: Any, label: Any) -> float:
    """ROC-AUC of ``score_a - score_b`` against ``label == 1`` over non-tied pairs (Mann-Whitney,
    tied differences count one half); nan when one class is missing."""
    sa, sb, y = _inputs(score_a, score_b, label)
    keep = y != 0.5
    x, pos = (sa - sb)[keep], y[keep] == 1.0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first row
    avg_rank = first + (counts + 1) / 2.0  # 1-based average rank of the tied block
    rank_sum = float(avg_rank[inv.reshape(-1)][pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
