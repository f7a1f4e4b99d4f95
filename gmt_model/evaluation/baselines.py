"""Non-graph baselines reported beside GMTRouter (numpy only, deterministic).

Every baseline has

* ``fit(train: PairSet, n_users: int, n_llms: int) -> self`` -- learn from the
  training pairs only;
* ``score(user (B,), query_emb (B, d), candidates (B, M)) -> (B, M)`` -- a
  score per candidate, higher = more preferred; users outside
  ``[0, n_users)`` (e.g. -1) are unknown and get the non-personalised score;
* ``score_pairs(pairs) -> (score_a, score_b)`` -- convenience for metrics.

Baselines (``shared/design/gmtrouter.md`` section 5):

* :class:`GlobalBradleyTerry` -- "always the globally best model";
* :class:`PerUserBradleyTerry` -- per-user strengths shrunk to the global ones;
* :class:`PerUserMajority` -- per-user win rate ("per-user majority winner");
* :class:`KNNQuery` -- outcomes of the LLM on the nearest training queries.

Ties (label 0.5) count one half to each side everywhere.  Pairs comparing an
LLM with itself carry no information and are ignored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from gmt_model.evaluation.metrics import PairSet

__all__ = [
    "Baseline",
    "GlobalBradleyTerry",
    "PerUserBradleyTerry",
    "PerUserMajority",
    "KNNQuery",
    "BASELINES",
    "fit_bradley_terry",
]


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------
def _informative(train: PairSet) -> PairSet:
    return train.subset(train.llm_a != train.llm_b)


def _check_fit_args(train: PairSet, n_users: int, n_llms: int) -> None:
    if not isinstance(train, PairSet):
        raise TypeError(f"train must be a PairSet, got {type(train).__name__}")
    if n_users < 0 or n_llms < 1:
        raise ValueError(f"need n_users >= 0 and n_llms >= 1, got n_users={n_users}, n_llms={n_llms}")
    if len(train):
        if train.user.max() >= n_users:
            bad = int(np.argmax(train.user))
            raise ValueError(f"training pair {bad}: field 'user' = {int(train.user[bad])} >= n_users={n_users}")
        for name in ("llm_a", "llm_b"):
            arr = getattr(train, name)
            if arr.max() >= n_llms:
                bad = int(np.argmax(arr))
                raise ValueError(f"training pair {bad}: field {name!r} = {int(arr[bad])} >= n_llms={n_llms}")


def _win_counts(llm_a: np.ndarray, llm_b: np.ndarray, label: np.ndarray, n_llms: int) -> tuple[np.ndarray, np.ndarray]:
    """(wins, games): wins[i, j] = credit of i over j (ties 0.5), games symmetric counts."""
    y = label.astype(np.float64)
    size = n_llms * n_llms
    wins = np.bincount(llm_a * n_llms + llm_b, weights=y, minlength=size)
    wins += np.bincount(llm_b * n_llms + llm_a, weights=1.0 - y, minlength=size)
    games = np.bincount(llm_a * n_llms + llm_b, minlength=size).astype(np.float64)
    games = games + np.bincount(llm_b * n_llms + llm_a, minlength=size)
    return wins.reshape(n_llms, n_llms), games.reshape(n_llms, n_llms)


def _outcome_rows(pairs: PairSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pair as two (row, llm, outcome) entries: row = pair index, outcome 1/0.5/0."""
    n = len(pairs)
    rows = np.concatenate([np.arange(n), np.arange(n)])
    llm = np.concatenate([pairs.llm_a, pairs.llm_b])
    y = pairs.label.astype(np.float64)
    return rows, llm, np.concatenate([y, 1.0 - y])


def _global_rate(train: PairSet, n_llms: int) -> np.ndarray:
    """Global win rate per LLM (wins + 0.5 ties over comparisons); 0.5 when never compared."""
    _, llm, out = _outcome_rows(train)
    wins = np.bincount(llm, weights=out, minlength=n_llms)
    games = np.bincount(llm, minlength=n_llms).astype(np.float64)
    rate = np.full(n_llms, 0.5)
    seen = games > 0
    rate[seen] = wins[seen] / games[seen]
    return rate


def _objective(theta: np.ndarray, wins: np.ndarray, mu: np.ndarray, prec: float) -> float:
    diff = theta[:, None] - theta[None, :]
    # log sigmoid(x) = -log(1 + exp(-x))
    return float(-np.sum(wins * np.logaddexp(0.0, -diff)) - 0.5 * prec * np.sum((theta - mu) ** 2))


def fit_bradley_terry(
    wins: np.ndarray,
    games: np.ndarray,
    prior_mean: np.ndarray | None = None,
    prior_precision: float = 1e-3,
    max_iter: int = 100,
    tol: float = 1e-8,
) -> np.ndarray:
    """MAP Bradley-Terry strengths by damped Newton iterations.

    Maximises ``sum_ij wins[i,j] log sigmoid(t_i - t_j) - prior_precision/2 *
    ||t - prior_mean||^2`` (``games = wins + wins.T``), which is strictly
    concave for ``prior_precision > 0``, so the optimum is unique even for
    LLMs that always win or were never compared (they stay at the prior mean).
    """
    m = wins.shape[0]
    if wins.shape != (m, m) or games.shape != (m, m):
        raise ValueError(f"wins and games must be square and equal in shape, got {wins.shape} and {games.shape}")
    if prior_precision <= 0:
        raise ValueError(f"prior_precision must be > 0, got {prior_precision}")
    mu = np.zeros(m) if prior_mean is None else np.asarray(prior_mean, dtype=np.float64)
    theta = mu.copy()
    obj = _objective(theta, wins, mu, prior_precision)
    eye = np.eye(m)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
        grad = np.sum(wins - games * p, axis=1) - prior_precision * (theta - mu)
        if np.max(np.abs(grad)) < tol:
            break
        c = games * p * (1.0 - p)
        neg_hess = np.diag(c.sum(axis=1)) - c + prior_precision * eye
        step = np.linalg.solve(neg_hess, grad)
        t = 1.0
        while True:
            cand = theta + t * step
            cand_obj = _objective(cand, wins, mu, prior_precision)
            if cand_obj >= obj or t < 1e-10:
                break
            t *= 0.5
        if cand_obj < obj:
            break  # no ascent possible in floating point: at the optimum
        theta, obj = cand, cand_obj
    return theta


class Baseline(ABC):
    """Common interface and input checks of the baselines."""

    name: str = "baseline"

    def __init__(self) -> None:
        self.n_users: int | None = None
        self.n_llms: int | None = None

    @abstractmethod
    def fit(self, train: PairSet, n_users: int, n_llms: int) -> "Baseline":
        """Learn from the training pairs; returns self."""

    @abstractmethod
    def _score(self, user: np.ndarray, known: np.ndarray, query_emb: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Scores for checked inputs (``known``: user lies in ``[0, n_users)``)."""

    def score(self, user: Any, query_emb: Any, candidates: Any) -> np.ndarray:
        """Score ``candidates[b, j]`` for ``user[b]`` and ``query_emb[b]``; returns (B, M) float64."""
        if self.n_llms is None or self.n_users is None:
            raise RuntimeError(f"{type(self).__name__}.score called before fit")
        u = np.asarray(user)
        c = np.asarray(candidates)
        q = np.asarray(query_emb)
        if u.ndim != 1 or not np.issubdtype(u.dtype, np.integer):
            raise ValueError(f"field 'user': expected a 1-D integer array, got shape {u.shape} dtype {u.dtype}")
        if c.ndim != 2 or not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"field 'candidates': expected a 2-D integer array, got shape {c.shape} dtype {c.dtype}")
        if q.ndim != 2:
            raise ValueError(f"field 'query_emb': expected a 2-D array, got shape {q.shape}")
        if not (u.shape[0] == c.shape[0] == q.shape[0]):
            raise ValueError(
                f"batch sizes differ: user {u.shape[0]}, query_emb {q.shape[0]}, candidates {c.shape[0]}"
            )
        if c.size and (c.min() < 0 or c.max() >= self.n_llms):
            bad = np.argwhere((c < 0) | (c >= self.n_llms))[0]
            raise ValueError(
                f"field 'candidates': entry {tuple(int(i) for i in bad)} = {int(c[tuple(bad)])} "
                f"is not an LLM index in [0, {self.n_llms})"
            )
        u = u.astype(np.int64)
        known = (u >= 0) & (u < self.n_users)
        return self._score(u, known, q.astype(np.float64), c.astype(np.int64))

    def score_pairs(self, pairs: PairSet) -> tuple[np.ndarray, np.ndarray]:
        """(score of llm_a, score of llm_b) for every pair."""
        cand = np.stack([pairs.llm_a, pairs.llm_b], axis=1)
        s = self.score(pairs.user, pairs.query_emb[pairs.query], cand)
        return s[:, 0], s[:, 1]


# --------------------------------------------------------------------------
# the baselines
# --------------------------------------------------------------------------
class GlobalBradleyTerry(Baseline):
    """One Bradley-Terry strength per LLM from all training pairs ("always the globally best model").

    ``l2`` is the precision of a zero-mean Gaussian prior that keeps the
    strengths finite.  The score ignores user and query.
    """

    name = "global_bt"

    def __init__(self, l2: float = 1e-3, max_iter: int = 100) -> None:
        super().__init__()
        if l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        self.l2 = float(l2)
        self.max_iter = int(max_iter)
        self.strength: np.ndarray | None = None

    def fit(self, train: PairSet, n_users: int, n_llms: int) -> "GlobalBradleyTerry":
        _check_fit_args(train, n_users, n_llms)
        tr = _informative(train)
        wins, games = _win_counts(tr.llm_a, tr.llm_b, tr.label, n_llms)
        self.strength = fit_bradley_terry(wins, games, prior_precision=self.l2, max_iter=self.max_iter)
        self.n_users, self.n_llms = int(n_users), int(n_llms)
        return self

    def _score(self, user, known, query_emb, candidates):  # noqa: D102
        assert self.strength is not None
        return self.strength[candidates]


class PerUserBradleyTerry(Baseline):
    """Per-user Bradley-Terry strengths shrunk towards the global ones.

    Each user's strengths are the MAP estimate under a Gaussian prior centred
    on the global strengths with precision ``shrinkage`` (larger = closer to
    global).  LLMs a user never compared, users without training pairs and
    unknown users get the global strengths.
    """

    name = "per_user_bt"

    def __init__(self, shrinkage: float = 2.0, l2: float = 1e-3, max_iter: int = 100) -> None:
        super().__init__()
        if shrinkage <= 0:
            raise ValueError(f"shrinkage must be > 0, got {shrinkage}")
        self.shrinkage = float(shrinkage)
        self.global_model = GlobalBradleyTerry(l2=l2, max_iter=max_iter)
        self.max_iter = int(max_iter)
        self.strength: np.ndarray | None = None  # (n_users, n_llms)

    def fit(self, train: PairSet, n_users: int, n_llms: int) -> "PerUserBradleyTerry":
        _check_fit_args(train, n_users, n_llms)
        self.global_model.fit(train, n_users, n_llms)
        glob = self.global_model.strength
        assert glob is not None
        strength = np.tile(glob, (n_users, 1))
        tr = _informative(train)
        if len(tr):
            order = np.argsort(tr.user, kind="stable")
            us = tr.user[order]
            starts = np.flatnonzero(np.r_[True, us[1:] != us[:-1]])
            for rows in np.split(order, starts[1:]):
                u = int(tr.user[rows[0]])
                involved, local = np.unique(np.concatenate([tr.llm_a[rows], tr.llm_b[rows]]), return_inverse=True)
                k = rows.shape[0]
                wins, games = _win_counts(local[:k], local[k:], tr.label[rows], involved.shape[0])
                strength[u, involved] = fit_bradley_terry(
                    wins, games, prior_mean=glob[involved], prior_precision=self.shrinkage, max_iter=self.max_iter
                )
        self.strength = strength
        self.n_users, self.n_llms = int(n_users), int(n_llms)
        return self

    def _score(self, user, known, query_emb, candidates):  # noqa: D102
        assert self.strength is not None and self.global_model.strength is not None
        out = self.global_model.strength[candidates]
        idx = np.flatnonzero(known)
        out[idx] = self.strength[user[idx][:, None], candidates[idx]]
        return out


class PerUserMajority(Baseline):
    """Per-user win rate of each LLM (wins + 0.5 ties over comparisons).

    ``prior`` pseudo-comparisons at the LLM's global win rate are added to a
    user's counts (``prior=0``: the plain per-user win rate); an LLM the user
    never compared, and any unknown user, gets the global win rate.
    """

    name = "per_user_majority"

    def __init__(self, prior: float = 1.0) -> None:
        super().__init__()
        if prior < 0:
            raise ValueError(f"prior must be >= 0, got {prior}")
        self.prior = float(prior)
        self.global_rate: np.ndarray | None = None
        self.rate: np.ndarray | None = None  # (n_users, n_llms)

    def fit(self, train: PairSet, n_users: int, n_llms: int) -> "PerUserMajority":
        _check_fit_args(train, n_users, n_llms)
        tr = _informative(train)
        g = _global_rate(tr, n_llms)
        rows, llm, out = _outcome_rows(tr)
        key = tr.user[rows] * n_llms + llm
        wins = np.bincount(key, weights=out, minlength=n_users * n_llms).reshape(n_users, n_llms)
        games = np.bincount(key, minlength=n_users * n_llms).reshape(n_users, n_llms).astype(np.float64)
        den = games + self.prior
        rate = np.tile(g, (n_users, 1))
        ok = den > 0
        rate[ok] = ((wins + self.prior * g) / np.where(ok, den, 1.0))[ok]
        self.global_rate, self.rate = g, rate
        self.n_users, self.n_llms = int(n_users), int(n_llms)
        return self

    def _score(self, user, known, query_emb, candidates):  # noqa: D102
        assert self.rate is not None and self.global_rate is not None
        out = self.global_rate[candidates]
        idx = np.flatnonzero(known)
        out[idx] = self.rate[user[idx][:, None], candidates[idx]]
        return out


class KNNQuery(Baseline):
    """Cosine k-nearest training queries; score = the LLM's mean outcome there.

    The neighbours are the ``k`` training queries (rows of ``query_emb``
    referenced by training pairs) most similar to the query; an LLM's score is
    ``(sum of its outcomes in the neighbours' comparisons + prior * global
    win rate) / (its comparisons there + prior)`` with win = 1, tie = 0.5,
    loss = 0.  User-blind.  Queries are scored in chunks of ``chunk_size``
    to bound memory (chunk x n_train_queries similarities).
    """

    name = "knn_query"

    def __init__(self, k: int = 20, prior: float = 1.0, chunk_size: int = 1024) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if prior < 0:
            raise ValueError(f"prior must be >= 0, got {prior}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.k, self.prior, self.chunk_size = int(k), float(prior), int(chunk_size)
        self.keys: np.ndarray | None = None  # (Qt, d) unit-norm training query embeddings (float32)
        self.wins: np.ndarray | None = None  # (Qt, n_llms)
        self.games: np.ndarray | None = None  # (Qt, n_llms)
        self.global_rate: np.ndarray | None = None

    @staticmethod
    def _normalise(x: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(norm, 1e-12)

    def fit(self, train: PairSet, n_users: int, n_llms: int) -> "KNNQuery":
        _check_fit_args(train, n_users, n_llms)
        tr = _informative(train)
        self.global_rate = _global_rate(tr, n_llms)
        qids, qinv = np.unique(tr.query, return_inverse=True)
        rows, llm, out = _outcome_rows(tr)
        key = qinv[rows] * n_llms + llm
        nq = qids.shape[0]
        self.wins = np.bincount(key, weights=out, minlength=nq * n_llms).reshape(nq, n_llms)
        self.games = np.bincount(key, minlength=nq * n_llms).reshape(nq, n_llms).astype(np.float64)
        self.keys = self._normalise(tr.query_emb[qids].astype(np.float64)).astype(np.float32)
        self.n_users, self.n_llms = int(n_users), int(n_llms)
        return self

    def _score(self, user, known, query_emb, candidates):  # noqa: D102
        assert self.keys is not None and self.wins is not None and self.games is not None
        assert self.global_rate is not None
        b = query_emb.shape[0]
        out = np.empty(candidates.shape, dtype=np.float64)
        if b == 0:
            return out
        if self.keys.shape[0] == 0:
            return self.global_rate[candidates]
        if query_emb.shape[1] != self.keys.shape[1]:
            raise ValueError(
                f"field 'query_emb': dimension {query_emb.shape[1]} differs from the training queries' "
                f"{self.keys.shape[1]}"
            )
        k = min(self.k, self.keys.shape[0])
        g = self.global_rate
        for start in range(0, b, self.chunk_size):
            stop = min(start + self.chunk_size, b)
            sim = self._normalise(query_emb[start:stop]).astype(np.float32) @ self.keys.T  # (c, Qt)
            if k < sim.shape[1]:
                nb = np.argpartition(sim, -k, axis=1)[:, -k:]
            else:
                nb = np.broadcast_to(np.arange(sim.shape[1]), sim.shape)
            cand = candidates[start:stop]  # (c, M)
            # gather only the candidates' columns: (c, k, M)
            w = self.wins[nb[:, :, None], cand[:, None, :]].sum(axis=1)
            n = self.games[nb[:, :, None], cand[:, None, :]].sum(axis=1)
            den = n + self.prior
            gc = g[cand]
            out[start:stop] = np.where(den > 0, (w + self.prior * gc) / np.where(den > 0, den, 1.0), gc)
        return out


#: baseline name -> class (names as used in configs and reports)
BASELINES: dict[str, type[Baseline]] = {
    GlobalBradleyTerry.name: GlobalBradleyTerry,
    PerUserBradleyTerry.name: PerUserBradleyTerry,
    PerUserMajority.name: PerUserMajority,
    KNNQuery.name: KNNQuery,
}
