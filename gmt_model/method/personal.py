"""Online personalization on top of the GNN: a per-user Bayesian logistic residual.

The GNN is the prior.  For each user with rated interactions, the final score
of LLM ``m`` for a query ``q`` is::

    s(u, q, m) = s_gnn(u, q, m) + r_u . phi(q, m)

``phi(q, m)`` is the one-hot of ``m`` times ``[1, z(q)]``, where ``z(q)`` is
the query embedding projected on the first ``query_dims`` principal
components of the training queries (unit variance): a per-LLM bias plus a
per-LLM, topic-dependent term.

``r_u`` has a two-component Gaussian-mixture prior: a tight component (the
user is like the crowd the GNN learned from: the residual stays near 0 and
the noise of a few votes cannot move routing much) and a wide one (the user
has a taste no training user had: the residual can grow as large as the
evidence demands).  Each component's posterior is a Laplace approximation
found by Newton's method; the components are re-weighted by their
approximate marginal likelihoods, so the evidence decides which prior
applies.  As votes accumulate the wide component's posterior concentrates
on the user's own stated preferences, whatever the GNN says.

Tasks: rows whose caller named the kind of work (``task``: "coding", "writing") add
per-(LLM, task) terms to ``phi`` (a one-hot of the LLM in the task's block; only the
tasks of the user's window, at most ``max_tasks``): the user's taste for a task is the
user's overall taste plus a deviation shrunk to 0, the overall taste being shrunk to
the crowd.  With task terms the wide component splits in two, a taste the same for
every task (deviations held at ``task_sd * tight / wide``) and one per task (prior sd
``task_sd``), so a user whose taste does not depend on the task pays nothing for the
extra terms.  Without tasks the model is exactly the two-component one.

Evidence, from the user's rated interactions:

* pairs: two LLMs rated differently for the same query (same comparison
  group): ``P(a beats b) = sigmoid(s_a - s_b + r.(phi_a - phi_b))``;
* single ratings (a query with one rated LLM): the rating, centred on the
  user's mean rating, is a soft label for "this LLM beats the average
  candidate", with weight ``point_weight``; and, since one user's ratings
  are comparable, each single rating against the ``rating_pairs`` single
  ratings before it (a higher rating is a preference), with the same weight.

Cold start (an empty history) uses :class:`CrowdCalibration`:
``alpha * s_cold + beta * c_m``: ``c`` is the crowd's Bradley-Terry fitted
on the training pairs; ``alpha, beta >= 0`` weigh the GNN's cold-start scores
and the crowd by how well they predict held-out (validation) pairs.  The
crowd's Bradley-Terry alone (``alpha = 0``) is one of the fits considered, so
an unknown user does not get less than the crowd (on held-out data).

numpy only; no torch here.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

__all__ = ["PersonalConfig", "QueryBasis", "Evidence", "Posterior", "fit_posterior", "CrowdCalibration",
           "fit_calibration", "fit_blend", "detect_change", "change_candidates", "fit_nonneg_logistic", "fit_bias", "centre_ratings", "build_evidence", "task_columns", "group_pairs", "POLICIES"]

POLICIES = ("greedy", "thompson", "epsilon")


@dataclass
class PersonalConfig:
    """Settings of the online part (``router.personalization`` in the test config)."""

    enabled: bool = True
    tight: float = 0.15  # prior std (logit units) of the crowd-like component
    wide: float = 3.0  # prior std of the idiosyncratic component
    p_wide: float = 0.1  # prior weight of the idiosyncratic component
    query_dims: int = 4  # principal components of the query embedding in phi
    query_scale: float = 0.25  # prior std of the query terms relative to the LLM terms
    point_weight: float = 0.5  # weight of a single rating relative to a pair
    rating_pairs: int = 8  # each single rating is also compared with this many earlier single ratings
    window: int = 400  # most recent rated interactions of a user the residual is fitted on
    #: ... plus the most recent ones of each LLM, so what the user said of an LLM the router no longer picks
    #: is not forgotten as the window slides (a greedy router would otherwise try it again)
    window_per_llm: int = 25
    newton_iters: int = 30
    #: Thompson sampling draws with the posterior's standard deviation times this (Chapelle & Li 2011: < 1
    #: explores less and measured lower regret)
    thompson_scale: float = 0.5
    #: optimistic Thompson sampling: an LLM's draw is never below its posterior mean, so the router explores
    #: LLMs that may be better, not the current favourite's downside (measured less regret)
    optimistic: bool = True
    #: the draw's spread shrinks as sqrt(d / (d + n)) with the user's n observations (annealed Thompson
    #: sampling: the windowed Laplace posterior stays too wide for a consistent user); 0 = no annealing
    thompson_decay: float = 30.0
    #: prior std of a per-user change of the GNN's weight (the user's scores are ``(1 + g) * gnn + residual``)
    #: in the idiosyncratic component (the crowd-like one scales it by tight / wide): a user unlike the
    #: crowd may learn to discount the GNN's query-by-query preferences; 0 = the GNN's weight stays 1
    gnn_weight_sd: float = 1.0
    #: change detection (a taste that switched): the prior probability that the user's taste changed at some
    #: point of the window.  Each candidate change point (``change_min`` rows ago, then 1.25x further apart)
    #: is weighed against "no change" by the approximate marginal likelihood of the evidence before and after
    #: it (per-LLM terms and the GNN weight); when a change wins, only the evidence after it is fitted.
    #: 0 = off (the residual only forgets by count, through ``window``)
    change_prior: float = 0.1
    #: the most recent rows a change point leaves after it (and before it) at least
    change_min: int = 12
    #: detection looks at the latest this many rows (bounded cost; a change further back than that has left
    #: only the new taste in view)
    change_lookback: int = 240
    #: a live router reruns detection when this many rows have arrived since its last run, or when the
    #: user's representation was refreshed (until then the change point found stays, and every new vote
    #: is fitted at once); each run looks only at the rows up to its schedule point, so routers that
    #: applied the same rows find the same change point.  1 = every vote
    change_every: int = 8
    #: per-(LLM, task) terms for rows whose caller named a ``task`` (the kind of work: "coding", "writing"):
    #: their prior std (logit units) in the per-task component (below); the other components hold them at
    #: ``task_sd * tight / wide``.  A user's taste for one task is the user's overall taste (the per-LLM
    #: terms, shrunk to the crowd) plus these deviations, shrunk to 0.  0 = the task is ignored
    task_sd: float = 3.0
    #: with task terms the idiosyncratic component (``p_wide``) is split: a taste that depends on the task
    #: (prior weight ``p_wide * p_task``) or not (``p_wide * (1 - p_task)``); the evidence decides
    p_task: float = 0.5
    #: at most this many tasks get terms per user: those with the most rows in the user's window (cost bounded)
    max_tasks: int = 8

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, where: str = "personalization") -> "PersonalConfig":
        raw = dict(raw or {})
        names = {f.name for f in fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(names)}")
        cfg = cls(**raw)
        for k in ("tight", "wide", "query_scale"):
            v = getattr(cfg, k)
            if not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"{where}.{k}: expected a positive number, got {v!r}")
        for k in ("p_wide", "p_task"):
            v = getattr(cfg, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{where}.{k}: expected a number in [0, 1], got {v!r}")
        if cfg.point_weight < 0:
            raise ValueError(f"{where}.point_weight: expected >= 0, got {cfg.point_weight!r}")
        if not 0.0 <= cfg.change_prior < 1.0 or isinstance(cfg.change_prior, bool):
            raise ValueError(f"{where}.change_prior: expected a number in [0, 1), got {cfg.change_prior!r}")
        for k in ("change_min", "change_lookback"):
            v = getattr(cfg, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ValueError(f"{where}.{k}: expected an integer >= 2, got {v!r}")
        if isinstance(cfg.change_every, bool) or not isinstance(cfg.change_every, int) or cfg.change_every < 1:
            raise ValueError(f"{where}.change_every: expected an integer >= 1, got {cfg.change_every!r}")
        for k in ("gnn_weight_sd", "thompson_scale", "thompson_decay", "window_per_llm", "task_sd"):
            v = getattr(cfg, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v):
                raise ValueError(f"{where}.{k}: expected a number >= 0, got {v!r}")
        if isinstance(cfg.max_tasks, bool) or not isinstance(cfg.max_tasks, int) or cfg.max_tasks < 1:
            raise ValueError(f"{where}.max_tasks: expected an integer >= 1, got {cfg.max_tasks!r}")
        if int(cfg.query_dims) < 0 or int(cfg.window) < 1:
            raise ValueError(f"{where}: query_dims >= 0 and window >= 1 required")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class QueryBasis:
    """``z(q)``: the query embedding on the first principal components of the
    training queries, scaled to unit variance (deterministic)."""

    def __init__(self, query_emb: np.ndarray, dims: int, max_rows: int = 20_000, *, mean: np.ndarray | None = None,
                 n_rows: int | None = None) -> None:
        q = np.asarray(query_emb, dtype=np.float64)
        n = q.shape[0] if n_rows is None else int(n_rows)
        self.dims = int(min(dims, q.shape[1], max(n - 1, 0)))
        if mean is not None:
            self.mean = np.asarray(mean, dtype=np.float64)
        else:
            self.mean = q.mean(axis=0) if q.shape[0] else np.zeros(q.shape[1])
        if self.dims == 0:
            self.comp = np.zeros((0, q.shape[1]))
            self.scale = np.ones(0)
            return
        if q.shape[0] > max_rows:
            q = q[np.linspace(0, q.shape[0] - 1, max_rows).astype(np.int64)]
        c = q - self.mean
        # eigenvectors of the (d x d) covariance: much cheaper than an SVD of the rows
        val, vec = np.linalg.eigh(c.T @ c / max(q.shape[0] - 1, 1))
        top = np.argsort(val)[::-1][: self.dims]
        self.comp = vec[:, top].T
        sd = np.sqrt(np.maximum(val[top], 0.0))
        self.scale = np.where(sd > 1e-9, sd, 1.0)
        # a fixed sign per component (the decomposition's sign is arbitrary)
        flip = np.sign(self.comp[np.arange(self.dims), np.abs(self.comp).argmax(axis=1)])
        self.comp = self.comp * flip[:, None]

    @classmethod
    def from_rows(cls, text_emb: np.ndarray, query_row: np.ndarray, dims: int, max_rows: int = 20_000
                  ) -> "QueryBasis":
        """The basis of the rows ``text_emb[query_row]`` without materialising them
        (equal to ``QueryBasis(text_emb[query_row], dims)``)."""
        query_row = np.asarray(query_row, dtype=np.int64)
        n = query_row.size
        if n <= max_rows:
            return cls(np.asarray(text_emb, dtype=np.float32)[query_row], dims, max_rows)
        counts = np.bincount(query_row, minlength=text_emb.shape[0]).astype(np.float64)
        mean = np.zeros(text_emb.shape[1], np.float64)  # over every row, as the constructor's, in row chunks:
        for lo in range(0, text_emb.shape[0], 65_536):   # no float64 copy of the whole (float16) text table
            mean += counts[lo:lo + 65_536] @ np.asarray(text_emb[lo:lo + 65_536], dtype=np.float64)
        mean /= n
        sample = np.asarray(text_emb[query_row[np.linspace(0, n - 1, max_rows).astype(np.int64)]], dtype=np.float32)
        return cls(sample, dims, max_rows, mean=mean, n_rows=n)

    def __call__(self, emb: np.ndarray) -> np.ndarray:
        """(n, d) embeddings -> (n, 1 + dims): ``[1, z]``."""
        e = np.asarray(emb, dtype=np.float64).reshape(-1, self.mean.shape[0])
        z = (e - self.mean) @ self.comp.T / self.scale if self.dims else np.zeros((e.shape[0], 0))
        return np.concatenate([np.ones((e.shape[0], 1)), z], axis=1)


@dataclass
class Evidence:
    """Observations of one user, as rows of a logistic model ``sigmoid(offset + x . r)``.

    ``x``: (n, L * (1 + dims) + L * n_tasks) feature differences: the per-LLM
    blocks ``[1, z]``, then (when rows named tasks) one block of L per-LLM
    task terms per task; ``offset``: the GNN's logit; ``y``: (soft) labels
    in [0, 1]; ``w``: weights.
    """

    x: np.ndarray
    offset: np.ndarray
    y: np.ndarray
    w: np.ndarray
    #: when each observation became known: the position (oldest first) of the later of its input rows;
    #: ``n_rows``: how many input rows there were (None: no time order, no change detection)
    t: np.ndarray | None = None
    n_rows: int = 0
    #: task blocks after the per-LLM blocks (0: no row named a task, or task terms off)
    n_tasks: int = 0

    @property
    def n(self) -> int:
        return int(self.y.size)

    def since(self, first_row: int) -> "Evidence":
        """The observations that became known at input row ``first_row`` or later."""
        if self.t is None:
            return self
        keep = self.t >= first_row
        return Evidence(x=self.x[keep], offset=self.offset[keep], y=self.y[keep], w=self.w[keep], t=self.t[keep],
                        n_rows=self.n_rows, n_tasks=self.n_tasks)

    def until(self, n_rows: int) -> "Evidence":
        """The observations known when there were ``n_rows`` input rows (the first ``n_rows`` of them)."""
        if self.t is None:
            return self
        keep = self.t < n_rows
        return Evidence(x=self.x[keep], offset=self.offset[keep], y=self.y[keep], w=self.w[keep], t=self.t[keep],
                        n_rows=int(n_rows), n_tasks=self.n_tasks)


@dataclass
class Posterior:
    """Mixture posterior of one user's residual (flattened ``(L, 1 + dims)``)."""

    means: list[np.ndarray]  # per component
    covs_chol: list[np.ndarray]  # lower Cholesky factor of each component's posterior covariance
    weights: np.ndarray  # posterior component weights
    n: int  # observations used
    #: the residual's coefficients are the first ``n_coef`` entries; a last extra one is the GNN weight change
    n_coef: int = -1
    #: a detected change of taste: the posterior is fitted on the latest ``recent_rows`` input rows only
    #: (None: no change detected, or detection off)
    recent_rows: int | None = None
    #: a live router's change detection (``UserState``): what its last run depended on, and the change
    #: point it found (an absolute row count of the user's history, or None)
    change_key: tuple | None = None
    change_at: int | None = None
    #: per-(LLM, task) coefficients after the residual's (before the GNN weight): ``n_tasks`` blocks of L
    n_tasks: int = 0
    n_llms: int = 0  # L (set with n_tasks)
    #: the tasks of those blocks, in order (set by the caller that knows the names; empty: no task terms)
    tasks: tuple[str, ...] = ()

    @property
    def mean(self) -> np.ndarray:
        return sum(w * m for w, m in zip(self.weights, self.means))

    def split(self, vec: np.ndarray) -> tuple[np.ndarray, float]:
        """(residual coefficients, GNN weight) of a mean or a sample (the task terms: :meth:`task_terms`)."""
        if self.n_coef < 0 or vec.size == self.n_coef:
            return vec, 1.0
        at = self.n_coef + self.n_tasks * self.n_llms
        if vec.size <= at:
            return vec[: self.n_coef], 1.0
        return vec[: self.n_coef], 1.0 + float(vec[at])

    def task_terms(self, task: str | None) -> np.ndarray | None:
        """(L,) the posterior mean of the user's per-LLM deviations for ``task`` (None: no terms for it:
        no task, or one the user's window never named)."""
        if task is None or task not in self.tasks:
            return None
        i = self.tasks.index(task)
        lo = self.n_coef + i * self.n_llms
        return self.mean[lo: lo + self.n_llms]

    @property
    def residual(self) -> np.ndarray:
        return self.split(self.mean)[0]

    @property
    def gnn_weight(self) -> float:
        return self.split(self.mean)[1]

    def sample(self, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
        """A draw from the posterior; ``scale`` multiplies the standard deviation."""
        c = int(rng.choice(len(self.means), p=self.weights))
        return self.means[c] + scale * (self.covs_chol[c] @ rng.standard_normal(self.means[c].size))

    @property
    def p_wide(self) -> float:
        """The posterior probability that the user is unlike the crowd (every component but the tight one)."""
        if len(self.weights) <= 2:
            return float(self.weights[-1])
        return float(self.weights[1:].sum())


def _prior_precision(cfg: PersonalConfig, n_llms: int, dims: int, std: float, n_tasks: int = 0,
                     per_task: bool = False) -> np.ndarray:
    """Prior precisions of one component (LLM terms of prior std ``std``): the per-LLM blocks, the
    per-(LLM, task) blocks (``task_sd`` in the per-task component, ``task_sd * tight / wide`` in the
    others: their user's tasks stay near its overall taste), then the GNN weight."""
    per = np.r_[1.0, np.full(dims, cfg.query_scale)] * std
    prec = np.tile(1.0 / per ** 2, n_llms)
    if n_tasks:
        sd = cfg.task_sd if per_task else cfg.task_sd * min(1.0, cfg.tight / cfg.wide)
        prec = np.r_[prec, np.full(n_tasks * n_llms, 1.0 / sd ** 2)]
    if cfg.gnn_weight_sd > 0:
        sd = cfg.gnn_weight_sd * min(1.0, std / cfg.wide)
        prec = np.r_[prec, 1.0 / sd ** 2]
    return prec


def _newton(ev: Evidence, prec: np.ndarray, iters: int, r0: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, float]:
    """MAP of the logistic model with prior N(0, diag(1/prec)); returns (r, H, f(r)).  ``r0``: a start (the
    user's previous MAP: one more vote moves it little, so few steps are left), used when it is better than 0."""
    r = np.zeros(prec.size)
    x, o, y, w = ev.x, ev.offset, ev.y, ev.w

    def objective(rv: np.ndarray) -> float:
        t = o + x @ rv
        # -[y log s(t) + (1-y) log s(-t)] = softplus(t) - y t
        return float(np.sum(w * (np.logaddexp(0.0, t) - y * t)) + 0.5 * np.sum(prec * rv * rv))

    f = objective(r)
    if r0 is not None and r0.shape == r.shape and np.all(np.isfinite(r0)):
        f0 = objective(r0)
        if f0 < f:
            r, f = r0.copy(), f0
    h = np.diag(prec)
    for _ in range(iters):
        t = o + x @ r
        p = 0.5 * (1.0 + np.tanh(0.5 * t))
        g = x.T @ (w * (p - y)) + prec * r
        h = (x.T * (w * p * (1.0 - p))) @ x + np.diag(prec)
        step = np.linalg.solve(h, g)
        lr = 1.0
        while True:  # backtracking: the objective is convex, Newton may overshoot on separable data
            cand = r - lr * step
            fc = objective(cand)
            if fc <= f + 1e-12 or lr < 1e-4:
                break
            lr *= 0.5
        done = abs(f - fc) < 1e-9 * max(1.0, abs(f))
        r, f = cand, fc
        if done:
            break
    t = o + x @ r
    p = 0.5 * (1.0 + np.tanh(0.5 * t))
    h = (x.T * (w * p * (1.0 - p))) @ x + np.diag(prec)
    return r, h, f


DETECT = "detect"


def fit_posterior(ev: Evidence, cfg: PersonalConfig, n_llms: int, dims: int,
                  init: "Posterior | None" = None, first: "int | None | str" = DETECT) -> Posterior:
    """The mixture posterior of one user's residual given the evidence (after the
    latest change of taste :func:`detect_change` finds, when it finds one).  ``init``: the user's previous
    posterior, whose modes start the fits (the same optimum, reached in fewer steps).  ``first``: the
    first input row after the change, when the caller knows it (None: no change), instead of detecting it."""
    if first == DETECT:
        first = detect_change(ev, cfg, n_llms, dims)
    if first is not None and first <= 0:
        first = None
    if first is None:
        return _fit_mixture(ev, cfg, n_llms, dims, init)
    post = _fit_mixture(ev.since(first), cfg, n_llms, dims, init)
    post.recent_rows = ev.n_rows - first
    return post


def change_candidates(n_rows: int, cfg: PersonalConfig) -> np.ndarray:
    """First input rows of the candidate segments "after a change": ``change_min`` rows
    ago, then each 1.3x (at least one row) further back, leaving ``change_min`` rows of the
    ``change_lookback`` latest before."""
    out, s = [], int(cfg.change_min)
    while min(n_rows, cfg.change_lookback) - s >= cfg.change_min:
        out.append(n_rows - s)
        s = max(s + 1, int(math.ceil(s * 1.3)))
    return np.asarray(out, dtype=np.int64)


def _batched_log_evidence(x: np.ndarray, o: np.ndarray, y: np.ndarray, w: np.ndarray, masks: np.ndarray,
                          precs: np.ndarray, iters: int = 20) -> np.ndarray:
    """Laplace log marginal likelihood of ``sigmoid(o + x . r)``, ``r ~ N(0, 1/prec)``, for
    many problems at once: problem ``b`` uses the rows ``masks[:, b]`` and precisions ``precs[b]``.
    Damped Newton (each coordinate's step at most 1) from 0."""
    n, d = x.shape
    nb = precs.shape[0]
    xx = (x[:, :, None] * x[:, None, :]).reshape(n, d * d)
    wm = masks * w[:, None]  # (n, B)
    r = np.zeros((nb, d))
    eye = np.eye(d)
    for _ in range(iters):
        t = o[:, None] + x @ r.T  # (n, B)
        p = 0.5 * (1.0 + np.tanh(0.5 * t))
        g = (wm * (p - y[:, None])).T @ x + precs * r  # (B, d)
        h = ((wm * p * (1.0 - p)).T @ xx).reshape(nb, d, d) + precs[:, :, None] * eye
        step = np.linalg.solve(h, g[:, :, None])[:, :, 0]
        step = np.clip(step, -1.0, 1.0)
        r = r - step
        if np.abs(step).max() < 1e-4:
            break
    t = o[:, None] + x @ r.T
    p = 0.5 * (1.0 + np.tanh(0.5 * t))
    f = (wm * (np.logaddexp(0.0, t) - y[:, None] * t)).sum(axis=0) + 0.5 * (precs * r * r).sum(axis=1)
    h = ((wm * p * (1.0 - p)).T @ xx).reshape(nb, d, d) + precs[:, :, None] * eye
    logdet = np.linalg.slogdet(h)[1]
    return -f - 0.5 * logdet + 0.5 * np.log(precs).sum(axis=1)


def detect_change(ev: Evidence, cfg: PersonalConfig, n_llms: int, dims: int) -> int | None:
    """The first input row after the user's latest change of taste, or None (no change).

    A Bayesian comparison of "one taste throughout" with "a change at c" for each
    candidate c (:func:`change_candidates`; prior ``change_prior`` spread evenly over
    them): each segment's marginal likelihood under the residual's two-component prior,
    restricted to the per-LLM terms and the GNN weight (cheap: all fits at once).  A
    crowd-like user's noise is explained as well by one taste as by two, and the
    extra taste costs its Occam factor, so it does not trigger a change."""
    if cfg.change_prior <= 0 or ev.t is None or ev.n < 2 * cfg.change_min:
        return None
    cand = change_candidates(ev.n_rows, cfg)
    if cand.size == 0:
        return None
    ev = ev.since(ev.n_rows - int(cfg.change_lookback))
    k = dims + 1
    x = ev.x[:, ::k][:, :n_llms]
    comps = [(1.0 - cfg.p_wide, cfg.tight), (cfg.p_wide, cfg.wide)]
    precs = []
    for _, std in comps:
        pr = 1.0 / np.full(n_llms, std) ** 2
        if cfg.gnn_weight_sd > 0:
            pr = np.r_[pr, 1.0 / (cfg.gnn_weight_sd * min(1.0, std / cfg.wide)) ** 2]
        precs.append(pr)
    if cfg.gnn_weight_sd > 0:
        x = np.concatenate([x, ev.offset[:, None]], axis=1)
    after = ev.t[:, None] >= cand[None, :]  # (n, C)
    segs = np.concatenate([np.ones((ev.n, 1), bool), ~after, after], axis=1)  # all, before c, after c
    # a segment without observations has log evidence 0 (no problem to fit)
    nseg = segs.shape[1]
    masks = np.repeat(segs, len(comps), axis=1).astype(np.float64)
    pr = np.tile(np.stack(precs), (nseg, 1))
    le = _batched_log_evidence(x, ev.offset, ev.y, ev.w, masks, pr).reshape(nseg, len(comps))
    logw = np.log([max(w, 1e-300) for w, _ in comps])
    seg = np.logaddexp.reduce(le + logw[None, :], axis=1)  # per segment: the two-component mixture
    c = cand.size
    none = math.log1p(-cfg.change_prior) + seg[0]
    change = math.log(cfg.change_prior / c) + seg[1:1 + c] + seg[1 + c:]
    best = int(np.argmax(change))
    if change[best] <= none:
        return None
    return int(cand[best])


_BLAS: Any = None


def _one_blas_thread() -> Any:
    """A context in which numpy's BLAS runs on one thread: a user's fit is a few small matrices, and BLAS
    threads only contend (measured: a fit with 8 tasks' terms, 79 columns, took 15x longer with OpenBLAS's
    two threads on a loaded 2-core machine).  Uses threadpoolctl (scikit-learn's dependency); without it,
    nothing changes."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except Exception:  # noqa: BLE001 - optional
            _BLAS = False
    return _BLAS.limit(limits=1, user_api="blas") if _BLAS else contextlib.nullcontext()


def _fit_mixture(ev: Evidence, cfg: PersonalConfig, n_llms: int, dims: int,
                 init: "Posterior | None" = None) -> Posterior:
    if ev.n_tasks:  # the task terms widen the problem past OpenBLAS's threading threshold
        with _one_blas_thread():
            return _fit_components(ev, cfg, n_llms, dims, init)
    return _fit_components(ev, cfg, n_llms, dims, init)


def _fit_components(ev: Evidence, cfg: PersonalConfig, n_llms: int, dims: int,
                    init: "Posterior | None" = None) -> Posterior:
    """The mixture posterior of one user's residual given the evidence.  With task terms (rows that named
    a task) the idiosyncratic component is split in two: one whose user's taste is the same for every
    task (task terms as tight as the crowd-like component's) and one with per-task tastes (``task_sd``),
    prior weights ``p_wide * (1 - p_task)`` and ``p_wide * p_task``: the evidence decides whether this
    user's taste depends on the task, so a user whose taste does not is not charged for the task terms."""
    comps = [(1.0 - cfg.p_wide, cfg.tight, False), (cfg.p_wide, cfg.wide, False)]
    if ev.n_tasks:
        comps = [comps[0], (cfg.p_wide * (1.0 - cfg.p_task), cfg.wide, False), (cfg.p_wide * cfg.p_task, cfg.wide, True)]
    means, chols, logz = [], [], []
    starts = list(init.means) if init is not None and len(init.means) == len(comps) else [None] * len(comps)
    for (prior_w, std, per_task), r0 in zip(comps, starts):
        prec = _prior_precision(cfg, n_llms, dims, std, ev.n_tasks, per_task)
        if prec.size > ev.x.shape[1]:  # the GNN weight's column: the GNN logit itself
            ev = Evidence(x=np.concatenate([ev.x, ev.offset[:, None]], axis=1), offset=ev.offset, y=ev.y, w=ev.w,
                          t=ev.t, n_rows=ev.n_rows, n_tasks=ev.n_tasks)
        if ev.n:
            r, h, f = _newton(ev, prec, cfg.newton_iters, r0)
        else:
            r, h, f = np.zeros(prec.size), np.diag(prec), 0.0
        lh = np.linalg.cholesky(h)
        # Laplace: log p(D) ~ -f(r) - 1/2 log|H| + 1/2 log|P|
        lz = -f - np.sum(np.log(np.diag(lh))) + 0.5 * np.sum(np.log(prec))
        logz.append(math.log(prior_w) + lz if prior_w > 0 else -math.inf)
        means.append(r)
        # covariance H^-1 = L^-T L^-1: its Cholesky-like factor for sampling is L^-T
        chols.append(np.linalg.solve(lh.T, np.eye(h.shape[0])))
    lz = np.array(logz)
    wts = np.exp(lz - lz.max())
    wts /= wts.sum()
    return Posterior(means=means, covs_chol=chols, weights=wts, n=ev.n, n_coef=n_llms * (dims + 1),
                     n_tasks=ev.n_tasks, n_llms=n_llms)


def window_lookback(cfg: PersonalConfig) -> int:
    """How many of a user's latest rows :func:`window_rows` looks at."""
    return max(4 * int(cfg.window), 20_000)


def window_rows(llm: np.ndarray, cfg: PersonalConfig) -> np.ndarray:
    """Positions (ascending) of a user's rows (oldest first) the residual is fitted on:
    the last ``window`` rows and the last ``window_per_llm`` rows of each LLM."""
    llm = np.asarray(llm, np.int64)
    n = llm.size
    keep = np.zeros(n, dtype=bool)
    keep[max(0, n - int(cfg.window)):] = True
    if cfg.window_per_llm > 0 and n > cfg.window:
        first = max(0, n - window_lookback(cfg))  # older rows are not looked at (bounded cost)
        order = first + np.lexsort((-np.arange(n - first), llm[first:]))  # by LLM, newest first
        n = n - first
        sl = llm[order]
        starts = np.flatnonzero(np.r_[True, sl[1:] != sl[:-1]])
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        keep[order[rank < int(cfg.window_per_llm)]] = True
    return np.flatnonzero(keep)


def task_columns(tasks: "np.ndarray | list[str | None]", cfg: PersonalConfig) -> tuple[np.ndarray, tuple[str, ...]]:
    """Which tasks of a user's rows get per-(LLM, task) terms, and each row's block.

    ``tasks``: each row's task (None: the caller named none).  At most ``max_tasks`` tasks, those with the
    most rows (ties: by name), in name order (so the fit depends on the set of rows only).  Returns
    (per row: the task's block, -1 for none, a task left out or ``task_sd = 0``; the tasks in block order)."""
    names = list(tasks)
    codes = np.full(len(names), -1, np.int64)
    if cfg.task_sd <= 0 or not names:
        return codes, ()
    counts: dict[str, int] = {}
    for t in names:
        if t is not None:
            counts[t] = counts.get(t, 0) + 1
    if not counts:
        return codes, ()
    kept = sorted(sorted(counts, key=lambda t: (-counts[t], t))[: int(cfg.max_tasks)])
    at = {t: i for i, t in enumerate(kept)}
    codes[:] = [at.get(t, -1) if t is not None else -1 for t in names]
    return codes, tuple(kept)


def build_evidence(group: np.ndarray, llm: np.ndarray, rating: np.ndarray, z: np.ndarray, scores: np.ndarray,
                   cfg: PersonalConfig, task: np.ndarray | None = None, row_weight: np.ndarray | None = None) -> Evidence:
    """Evidence of one user's rated interactions (oldest first).

    ``group``: comparison key of each row (rows of one query rated together);
    ``llm``, ``rating`` (normalised); ``z``: (n, 1 + dims) query features;
    ``scores``: (n, L) the GNN's logits of every LLM for the row's query;
    ``task``: each row's task block (:func:`task_columns`; -1: none), or None (no tasks: the evidence
    is the same as without the argument); ``row_weight``: each row's weight (a comparison weighs its
    weight times the smaller of its two rows'; None: 1).  A later rating of the same LLM in the same group
    replaces an earlier one.
    """
    n, n_llms = scores.shape
    k = z.shape[1]
    row_weight = None if row_weight is None else np.asarray(row_weight, np.float64)
    task = None if task is None or cfg.task_sd <= 0 else np.asarray(task, np.int64)
    n_tasks = int(task.max()) + 1 if task is not None and task.size and task.max() >= 0 else 0
    base = n_llms * k
    d = base + n_llms * n_tasks
    # last rating of each (group, llm)
    key = np.asarray(group, np.int64) * (n_llms + 1) + np.asarray(llm, np.int64)
    _, last_rev = np.unique(key[::-1], return_index=True)
    keep = np.sort(n - 1 - last_rev)
    g, m, r = np.asarray(group)[keep], np.asarray(llm)[keep], np.asarray(rating, np.float64)[keep]
    order = np.argsort(g, kind="stable")
    g, m, r, rows = g[order], m[order], r[order], keep[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, g.size])
    xs, offs, ys, ws, ts = [], [], [], [], []
    cols = np.arange(k)

    def add(row_a, m_a, row_b, m_b, label, weight):
        """Comparisons 'LLM m_a on row_a's query beats LLM m_b on row_b's query'."""
        n_ = row_a.size
        ts.append(np.maximum(row_a, row_b))
        x = np.zeros((n_, d))
        x[np.arange(n_)[:, None], m_a[:, None] * k + cols] += z[row_a]
        x[np.arange(n_)[:, None], m_b[:, None] * k + cols] -= z[row_b]
        if n_tasks:  # the per-(LLM, task) terms of each side that named a task
            for rw, mm, sign in ((row_a, m_a, 1.0), (row_b, m_b, -1.0)):
                tt = task[rw]
                on = np.flatnonzero(tt >= 0)
                x[on, base + tt[on] * n_llms + mm[on]] += sign
        xs.append(x)
        offs.append(scores[row_a, m_a] - scores[row_b, m_b])
        ys.append(label)
        ws.append(np.full(n_, weight) if row_weight is None else weight * np.minimum(row_weight[row_a], row_weight[row_b]))

    # pairs inside groups of size >= 2 (vectorised per group size)
    ia, ib = [], []
    for sz in np.unique(sizes[sizes >= 2]).tolist():
        s0 = starts[sizes == sz]
        a, b = np.triu_indices(sz, 1)
        ia.append((s0[:, None] + a[None, :]).ravel())
        ib.append((s0[:, None] + b[None, :]).ravel())
    if ia:
        a, b = np.concatenate(ia), np.concatenate(ib)
        diff = r[a] != r[b]
        a, b = a[diff], b[diff]
        row = rows[a]
        add(row, m[a], row, m[b], (r[a] > r[b]).astype(np.float64), 1.0)
    # single ratings: this LLM against the average LLM
    single = starts[sizes == 1]
    if single.size and cfg.point_weight > 0:
        row = rows[single]
        x = np.zeros((single.size, d))
        x[:, :base] -= np.tile(z[row], (1, n_llms)) / n_llms
        x[np.arange(single.size)[:, None], m[single][:, None] * k + cols] += z[row]
        if n_tasks:  # this LLM's task term against the task's average LLM
            tt = task[row]
            on = np.flatnonzero(tt >= 0)
            x[on[:, None], base + tt[on][:, None] * n_llms + np.arange(n_llms)] -= 1.0 / n_llms
            x[on, base + tt[on] * n_llms + m[single][on]] += 1.0
        xs.append(x)
        ts.append(row)
        offs.append(scores[row, m[single]] - scores[row].mean(axis=1))
        ys.append(centre_ratings(r[single]))
        ws.append(np.full(single.size, float(cfg.point_weight)) * (1.0 if row_weight is None else row_weight[row]))
    # single ratings against each other: within one user a higher rating is a preference, across queries
    # (each single rating is compared with the ``rating_pairs`` single ratings before it)
    if single.size > 1 and cfg.point_weight > 0 and cfg.rating_pairs > 0:
        srt = np.sort(rows[single])  # time order
        sm, sr = np.asarray(llm)[srt], np.asarray(rating, np.float64)[srt]
        ia, ib = [], []
        for lag in range(1, min(cfg.rating_pairs, srt.size - 1) + 1):
            ia.append(np.arange(lag, srt.size))
            ib.append(np.arange(0, srt.size - lag))
        a, b = np.concatenate(ia), np.concatenate(ib)
        ok = (sm[a] != sm[b]) & (sr[a] != sr[b])
        a, b = a[ok], b[ok]
        if a.size:
            add(srt[a], sm[a], srt[b], sm[b], (sr[a] > sr[b]).astype(np.float64), float(cfg.point_weight))
    if not xs:
        return Evidence(x=np.zeros((0, d)), offset=np.zeros(0), y=np.zeros(0), w=np.zeros(0), t=np.zeros(0, np.int64),
                        n_rows=n, n_tasks=n_tasks)
    return Evidence(x=np.concatenate(xs), offset=np.concatenate(offs), y=np.concatenate(ys), w=np.concatenate(ws),
                    t=np.concatenate(ts).astype(np.int64), n_rows=n, n_tasks=n_tasks)


def group_pairs(group: np.ndarray, rating: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows rated together (same ``group``) with different
    ratings: (row_a, row_b, label), label 1 when a was rated higher."""
    group = np.asarray(group, np.int64)
    order = np.argsort(group, kind="stable")
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if g.size else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, g.size])
    ia, ib = [], []
    for k in np.unique(sizes[sizes >= 2]).tolist():
        s0 = starts[sizes == k]
        a, b = np.triu_indices(k, 1)
        ia.append((s0[:, None] + a[None, :]).ravel())
        ib.append((s0[:, None] + b[None, :]).ravel())
    if not ia:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0)
    a, b = order[np.concatenate(ia)], order[np.concatenate(ib)]
    r = np.asarray(rating, np.float64)
    keep = r[a] != r[b]
    a, b = a[keep], b[keep]
    return a, b, (r[a] > r[b]).astype(np.float64)


def centre_ratings(y: np.ndarray, pseudo: float = 2.0) -> np.ndarray:
    """Single ratings (normalised to [0, 1]) as soft labels centred on the
    user's mean (shrunk to the scale's midpoint by ``pseudo`` observations)."""
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        return y
    mean = (y.sum() + 0.5 * pseudo) / (y.size + pseudo)
    return np.clip(0.5 + (y - mean), 0.0, 1.0)


@dataclass
class CrowdCalibration:
    """Cold-start scores ``alpha * s_cold + bias[m]`` (logit units), and how a user's
    history-conditioned GNN scores are blended with them:
    ``warm * s_gnn(u) + cold * (alpha * s_cold + bias)``; ``history``: the weight of a user's
    training rows (the checkpoint's history) in their residual, chosen on validation pairs
    (:func:`gmt_model.method.training.fit_history_weight`; rows added after training count 1)."""

    alpha: float
    bias: np.ndarray  # (L,)
    warm: float = 1.0
    cold: float = 0.0
    history: float = 1.0

    def apply(self, scores: np.ndarray, llm: np.ndarray) -> np.ndarray:
        return self.alpha * np.asarray(scores, dtype=np.float64) + self.bias[np.asarray(llm)]

    def blend(self, warm_scores: np.ndarray, cold_scores: np.ndarray, llm: np.ndarray) -> np.ndarray:
        """The base scores of a user with history (``cold_scores``: uncalibrated)."""
        out = self.warm * np.asarray(warm_scores, dtype=np.float64)
        if self.cold:
            out = out + self.cold * self.apply(cold_scores, llm)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": float(self.alpha), "bias": [float(b) for b in self.bias], "warm": float(self.warm),
                "cold": float(self.cold), "history": float(self.history)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CrowdCalibration":
        return cls(alpha=float(d["alpha"]), bias=np.asarray(d["bias"], np.float64), warm=float(d.get("warm", 1.0)),
                   cold=float(d.get("cold", 0.0)), history=float(d.get("history", 1.0)))


def fit_nonneg_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2) -> np.ndarray | None:
    """Weights >= 0 of ``sigmoid(x . w)`` on hard labels: the unconstrained fit or the best
    fit with some weights at 0 (exhaustive over subsets; for a handful of columns)."""
    from itertools import combinations

    n, k = x.shape
    best = None
    for size in range(k, 0, -1):
        for cols in combinations(range(k), size):
            ev = Evidence(x=x[:, cols], offset=np.zeros(n), y=y, w=np.ones(n))
            r, _, f = _newton(ev, np.full(len(cols), l2), 50)
            if np.all(r >= 0) and (best is None or f < best[0]):
                w = np.zeros(k)
                w[list(cols)] = r
                best = (f, w)
    return None if best is None else best[1]


def fit_bias(llm_a: np.ndarray, llm_b: np.ndarray, label: np.ndarray, n_llms: int, l2: float = 1e-2) -> np.ndarray:
    """Global Bradley-Terry strengths (centred) from non-tied pairs."""
    keep = np.asarray(label) != 0.5
    a, b, y = np.asarray(llm_a)[keep], np.asarray(llm_b)[keep], np.asarray(label, np.float64)[keep]
    if y.size == 0:
        return np.zeros(n_llms)
    x = np.zeros((y.size, n_llms))
    x[np.arange(y.size), a] += 1.0
    x[np.arange(y.size), b] -= 1.0
    r, _, _ = _newton(Evidence(x=x, offset=np.zeros(y.size), y=y, w=np.ones(y.size)), np.full(n_llms, l2), 50)
    return r - r.mean()


def fit_calibration(bias: np.ndarray, diff: np.ndarray, llm_a: np.ndarray, llm_b: np.ndarray,
                    label: np.ndarray, l2: float = 1e-2) -> CrowdCalibration:
    """``sigmoid(alpha * diff + beta * (bias_a - bias_b))`` with ``alpha, beta >= 0``
    fitted on held-out pairs (``diff``: cold-start score of a minus b;
    ``bias``: the crowd's Bradley-Terry strengths): the cold-start GNN and the
    crowd each count as much as they predict there.  No held-out pairs:
    the crowd's Bradley-Terry alone (``alpha = 0, beta = 1``)."""
    keep = np.asarray(label) != 0.5
    y = np.asarray(label, np.float64)[keep]
    bias = np.asarray(bias, np.float64)
    if y.size == 0:
        return CrowdCalibration(alpha=0.0, bias=bias)
    d = np.asarray(diff, np.float64)[keep]
    bt = bias[np.asarray(llm_a)[keep]] - bias[np.asarray(llm_b)[keep]]
    w = fit_nonneg_logistic(np.stack([d, bt], axis=1), y, l2)
    if w is None:
        return CrowdCalibration(alpha=0.0, bias=bias)
    return CrowdCalibration(alpha=float(w[0]), bias=w[1] * bias)


def fit_blend(calib: CrowdCalibration, warm_diff: np.ndarray, cold_cal_diff: np.ndarray, label: np.ndarray,
              l2: float = 1e-2) -> CrowdCalibration:
    """Weights (>= 0) of a user's history-conditioned GNN scores and of the calibrated
    cold-start scores, fitted on held-out pairs of users with history: where the
    history does not help, the router falls back to the population-level choice."""
    keep = np.asarray(label) != 0.5
    y = np.asarray(label, np.float64)[keep]
    if y.size == 0:
        return calib
    x = np.stack([np.asarray(warm_diff, np.float64)[keep], np.asarray(cold_cal_diff, np.float64)[keep]], axis=1)
    w = fit_nonneg_logistic(x, y, l2)
    if w is None or w.sum() == 0:
        return calib
    return CrowdCalibration(alpha=calib.alpha, bias=calib.bias, warm=float(w[0]), cold=float(w[1]), history=calib.history)
