"""The method's validation metrics (gmt_model.method.pairwise) equal the evaluation layer's (gmt_model.evaluation.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gmt_model.evaluation.metrics import pairwise_accuracy, pairwise_auc
from gmt_model.method.pairwise import pair_accuracy, pair_auc


@pytest.mark.parametrize("seed", range(6))
def test_same_numbers_as_the_evaluation_metrics(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    # coarse scores: many tied differences and equal pairs
    sa = rng.integers(0, 4, n).astype(float) if seed % 2 else rng.normal(size=n)
    sb = rng.integers(0, 4, n).astype(float) if seed % 2 else rng.normal(size=n)
    y = rng.choice([0.0, 0.5, 1.0], n)
    for mine, ref in ((pair_auc, pairwise_auc), (pair_accuracy, pairwise_accuracy)):
        a, b = mine(sa, sb, y), ref(sa, sb, y)
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12), (mine.__name__, a, b)


def test_edge_cases():
    assert pair_auc([1, 2], [0, 0], [1, 1]) != pair_auc([1, 2], [0, 0], [1, 1])  # nan: one class
    assert math.isnan(pair_accuracy([1.0], [0.0], [0.5]))
    assert pair_auc([2, 0], [0, 2], [1, 0]) == 1.0 and pair_accuracy([2, 0], [0, 2], [1, 0]) == 1.0
    assert pair_auc([0, 2], [2, 0], [1, 0]) == 0.0
    assert pair_accuracy([1.0, 1.0], [1.0, 1.0], [1, 0]) == 0.5
