"""The open LLM pool: which LLMs the router may route to, their descriptions and prices.

Every LLM the router ever knew keeps its index (the model's arrays, the
history's ``llm`` column): the checkpoint's trained LLMs first, then the
added ones in the order they were added.  Removing an LLM only takes it out
of the pool (it is never routed to again); its rated history stays.

An added LLM's node features are the embedding of its description, exactly
as for the trained LLMs, so the GNN scores it inductively.  On top of that,
:class:`CrowdEstimate` keeps a shared, crowd-level and query-dependent
strength of each added LLM (logit units, on top of the base scores), learned
from everybody's feedback on it: a Gaussian process over queries (Laplace)
whose prior is wide, so Thompson sampling tries a new LLM fairly, the first
votes of any user move it for every user, and the votes teach which queries
it is good at.  The trained LLMs' strengths are already in the
model and the cold-start calibration; the estimate is 0 for them.

Pool changes are durable and ordered: the router appends them to the
feedback log's LLM-event table (``FeedbackLog.append_llm_event``) and every
router replays that table on start and follows it while it runs, so a
restart, or another process sharing the log, sees the same pool.

numpy only; no torch here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from gmt_model.errors import RoutingError
from gmt_model.serving.requests import LLMSpec

__all__ = ["LLMInfo", "LLMPool", "LLMList", "CrowdEstimate", "CROWD_WINDOW", "crowd_schedule", "crowd_votes",
           "unit_rows"]


@dataclass
class LLMInfo:
    name: str
    index: int
    description: str | None  # None: a trained LLM whose description text the checkpoint does not hold
    cost: float | None  # USD per 1M tokens
    endpoint: str | None
    trained: bool  # an LLM of the checkpoint's training data
    active: bool = True  # in the pool (routable)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LLMList(list):
    """The LLM names in index order (removed ones included: they keep their index).

    A plain list for the arrays' sake; calling it (``router.llms()``) lists the
    pool: a dict per routable LLM (name, description, cost, endpoint, trained)."""

    def __init__(self, pool: "LLMPool") -> None:
        super().__init__()
        self._pool = pool

    def __call__(self, include_removed: bool = False) -> list[dict[str, Any]]:
        return [i.to_dict() for i in self._pool.info if include_removed or i.active]


class LLMPool:
    """Names, node features, descriptions and prices of the LLMs (see the module doc)."""

    def __init__(self, trained: Sequence[str], llm_emb: np.ndarray) -> None:
        self.names = LLMList(self)
        self.index: dict[str, int] = {}
        self.info: list[LLMInfo] = []
        self.emb = np.asarray(llm_emb, np.float32)
        self.n_trained = len(trained)
        self.version = 0  # bumped on every change
        for m in trained:
            self._new(LLMInfo(name=m, index=len(self.names), description=None, cost=None, endpoint=None,
                              trained=True))

    def _new(self, info: LLMInfo) -> None:
        self.names.append(info.name)
        self.index[info.name] = info.index
        self.info.append(info)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.names)

    def known(self, name: str) -> bool:
        """In the pool (routable)."""
        i = self.index.get(name)
        return i is not None and self.info[i].active

    def indexed(self, name: str) -> bool:
        return name in self.index

    def active(self) -> list[str]:
        return [i.name for i in self.info if i.active]

    def added(self) -> np.ndarray:
        """Indices of the LLMs that are not in the training data."""
        return np.arange(self.n_trained, len(self.names), dtype=np.int64)

    def costs(self, idx: np.ndarray) -> np.ndarray:
        """Costs of the LLMs ``idx`` (NaN where unknown)."""
        if getattr(self, "_costs_version", None) != self.version:
            self._costs = np.array([np.nan if i.cost is None else i.cost for i in self.info], np.float64)
            self._costs_version = self.version
        return self._costs[idx]

    def describe(self) -> list[str]:
        return self.active()

    # ------------------------------------------------------------------ checks (nothing changes)
    def check_add(self, spec: LLMSpec) -> None:
        if spec.name in self.index and self.info[self.index[spec.name]].active:
            raise RoutingError(f"field 'name': LLM {spec.name!r} is already in the pool; use update_llm to change it",
                               field="name")

    def check_update(self, name: Any) -> LLMInfo:
        if not isinstance(name, str) or not self.known(name):
            raise RoutingError(f"field 'name': LLM {name!r} is not in the pool {self.active()}", field="name")
        return self.info[self.index[name]]

    def check_remove(self, name: Any) -> LLMInfo:
        info = self.check_update(name)
        if len(self.active()) <= 1:
            raise RoutingError(f"field 'name': {name!r} is the last LLM of the pool; add another one first",
                               field="name")
        return info

    # ------------------------------------------------------------------ changes
    def add(self, spec: LLMSpec, emb: np.ndarray) -> int:
        """Add (or bring back a removed) LLM with node features ``emb``; returns its index."""
        i = self.index.get(spec.name)
        if i is None:
            i = len(self.names)
            self._new(LLMInfo(name=spec.name, index=i, description=spec.description, cost=spec.cost,
                              endpoint=spec.endpoint, trained=False))
            self.emb = np.concatenate([self.emb, np.asarray(emb, np.float32).reshape(1, -1)])
        else:
            info = self.info[i]
            info.active, info.description = True, spec.description
            info.cost = spec.cost if spec.cost is not None else info.cost
            info.endpoint = spec.endpoint if spec.endpoint is not None else info.endpoint
            self.emb[i] = emb
        self.version += 1
        return i

    def update(self, name: str, description: str | None, cost: float | None, endpoint: str | None,
               emb: np.ndarray | None) -> int:
        info = self.info[self.index[name]]
        if description is not None:
            info.description = description
            if emb is not None:
                self.emb[info.index] = emb
        if cost is not None:
            info.cost = cost
        if endpoint is not None:
            info.endpoint = endpoint
        self.version += 1
        return info.index

    def remove(self, name: str) -> int:
        info = self.info[self.index[name]]
        info.active = False
        self.version += 1
        return info.index

    def restrict(self, keep: Sequence[str]) -> None:
        """Keep only ``keep`` of the trained LLMs in the pool (``router.llms`` lists the pool)."""
        keep = set(keep)
        for info in self.info:
            if info.trained and info.name not in keep:
                info.active = False
        self.version += 1

    def apply_event(self, ev: dict[str, Any], embed: Callable[[str], np.ndarray]) -> bool:
        """Replay one stored event (lenient: the event was checked when it was stored; an
        ``add`` of a name in the pool updates it).  Returns whether the pool changed."""
        op, name = ev.get("op"), ev.get("name")
        if not isinstance(name, str):
            return False
        if op == "add" and isinstance(ev.get("description"), str):
            spec = LLMSpec(name=name, description=ev["description"], cost=ev.get("cost"), endpoint=ev.get("endpoint"))
            self.add(spec, embed(spec.description))  # type: ignore[arg-type]
            return True
        if op == "update" and name in self.index:
            d = ev.get("description")
            self.update(name, d, ev.get("cost"), ev.get("endpoint"), embed(d) if isinstance(d, str) else None)
            return True
        if op == "remove" and name in self.index:
            self.remove(name)
            return True
        return False


#: prior std (logit units) of an added LLM's crowd strength on the average query
CROWD_PRIOR_SD = 1.0
#: prior std of the part of it that follows the query's topic (kernel: cosine of the query embeddings)
CROWD_QUERY_SD = 0.5
#: prior std of the part that is the query's own (kernel: the same query text, i.e. the same embedding)
CROWD_TEXT_SD = 1.0
#: prior std of the part that follows the trained LLMs' scores of the query (kernel: the dot product of those
#: scores, centred per query; 0: not used)
CROWD_SCORE_SD = 0.5
#: the crowd term is fitted on the latest this many observations (votes) of added LLMs
CROWD_WINDOW = 500
#: it is refitted after each of the first CROWD_EVERY rated rows of added LLMs, then at each CROWD_GROWTH
#: fraction of growth (bounded work per vote on a busy router; a function of the rows only, so routers that
#: applied the same rows fit the same ones)
CROWD_EVERY = 50
CROWD_GROWTH = 0.05


def crowd_schedule(n: int) -> int:
    """How many of the ``n`` rated rows of added LLMs (the first, in log order) the crowd term is fitted on:
    every row up to ``CROWD_EVERY``, then a point each ``CROWD_GROWTH`` of growth."""
    r = 0
    while True:
        step = 1 if r < CROWD_EVERY else max(1, math.ceil(CROWD_GROWTH * r))
        if r + step > n:
            return r
        r += step


def crowd_votes(h: Any, group_rows: dict[Any, list[int]], n_users: int, upto: int, point_weight: float,
                window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The crowd term's observations from the live history ``h`` (``user``, ``llm``, ``rating``, ``order``
    columns): of the rated rows of ``group_rows`` (comparison group -> its rows), the first ``upto`` in log
    order (:func:`crowd_schedule`); in each group the last rating of each LLM counts.  Two or more LLMs
    rated together: a vote per pair with different ratings (label 1: ``a`` rated higher, weight 1); a
    single rating: ``a`` against the query's average LLM (``b = -1``), label ``0.5 + rating - the user's
    mean rating`` (clipped to [0, 1]), weight ``point_weight``.  The latest ``window`` observations in log
    order are kept, so processes that applied the same rows fit the same ones.
    Returns ``(a, b, label, weight, row)`` (``row``: the history row of ``a``)."""
    n_rows = sum(map(len, group_rows.values()))
    thr = None
    if upto < n_rows:
        orders = h.order[np.fromiter((r for v in group_rows.values() for r in v), np.int64, n_rows)]
        thr = np.partition(orders, upto - 1)[upto - 1] if upto > 0 else -np.inf
    a_l: list[int] = []
    b_l: list[int] = []
    y_l: list[float] = []
    w_l: list[float] = []
    rows_l: list[int] = []
    if group_rows:
        lo_sum = np.bincount(h.user, weights=h.rating, minlength=n_users)
        lo_cnt = np.bincount(h.user, minlength=n_users)
    for rows in group_rows.values():
        last: dict[int, int] = {}
        for r in rows:
            if thr is None or h.order[r] <= thr:
                last[int(h.llm[r])] = r  # the last rating of an LLM in the group counts
        rs = list(last.values())
        if len(rs) == 1:
            r = rs[0]
            u = int(h.user[r])
            mean = (lo_sum[u] + 1.0) / (lo_cnt[u] + 2.0)
            a_l.append(int(h.llm[r])), b_l.append(-1), rows_l.append(r)
            y_l.append(float(np.clip(0.5 + h.rating[r] - mean, 0.0, 1.0)))
            w_l.append(float(point_weight))
            continue
        for i in range(len(rs)):
            for j in range(i + 1, len(rs)):
                ra, rb = rs[i], rs[j]
                if h.rating[ra] == h.rating[rb]:
                    continue
                a_l.append(int(h.llm[ra])), b_l.append(int(h.llm[rb])), rows_l.append(ra)
                y_l.append(float(h.rating[ra] > h.rating[rb])), w_l.append(1.0)
    rows_a = np.array(rows_l, np.int64)
    keep = np.sort(np.argsort(h.order[rows_a], kind="stable")[-int(window):]) if rows_a.size else rows_a
    return (np.array(a_l, np.int64)[keep], np.array(b_l, np.int64)[keep], np.array(y_l, np.float64)[keep],
            np.array(w_l, np.float64)[keep], rows_a[keep])

def unit_rows(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (the crowd kernel's query features)."""
    e = np.asarray(emb, np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


#: two queries whose unit embeddings have at least this cosine count as the same text (float16 tables included)
SAME_TEXT_COS = 1.0 - 1e-3


class CrowdEstimate:
    """Shared, query-dependent strengths of the added LLMs (logit units, on top of the base scores).

    ``c_m(q)``, for each added LLM ``m``, is a Gaussian process over queries: a constant (the LLM's
    strength on the average query), plus a term that varies with the query's topic, plus one of the
    query's own::

        cov(c_m(q), c_m(q')) = prior_sd^2 + query_sd^2 * cos(e_q, e_q') + text_sd^2 * [e_q == e_q']

    (``e``: the query embedding), independent across LLMs; trained LLMs are fixed at 0 (their strengths
    are in the model).  So everybody's votes teach which queries the new LLM is good at, not only how
    good it is on average; a query that was voted on is known best.

    Observations: ``P(a beats b | q) = sigmoid(offset + c_a(q) - c_b(q))`` with the user-blind base
    scores' difference as the offset, weight ``w`` and a (soft) label; ``b = -1`` is the average LLM of
    the query.  Laplace approximation (Newton in the observations' latent space, Rasmussen & Williams
    Alg. 3.1; O(n^3) in the n observations, which the caller caps); the posterior mean of ``c_m(q)`` at
    any query is then O(d) per LLM, its variance (Thompson sampling) O(n^2).  ``query_sd = text_sd = 0`` is
    a constant strength per LLM.  Before any vote, ``c_m ~ N(0, prior_sd^2 + ...)``: wide, so Thompson
    sampling gives a new LLM a fair trial.
    """

    def __init__(self, prior_sd: float = CROWD_PRIOR_SD, query_sd: float = CROWD_QUERY_SD,
                 text_sd: float = CROWD_TEXT_SD, score_sd: float = CROWD_SCORE_SD,
                 featurize: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.prior_sd, self.query_sd, self.text_sd = float(prior_sd), float(query_sd), float(text_sd)
        self.score_sd = float(score_sd)
        #: query embeddings (n, d) -> (n, k) the score kernel's features (the trained LLMs' scores of the query)
        self.featurize = featurize
        self.s = np.zeros((0, 0))  # (n, k) the observations' score features
        self.log_evidence = 0.0  # the Laplace approximation of log p(labels | hyperparameters) of the last fit
        self.n_llms = 0
        self.is_added = np.zeros(0, bool)
        self.e = np.zeros((0, 0))  # (n, d) unit query embeddings of the observations
        self.sign = np.zeros((0, 0))  # (n, n_llms): +1 / -1 where an added LLM is the observation's a / b
        self.grad = np.zeros(0)  # (n,) w * (y - p) at the mode: the posterior means' weights
        self._m: np.ndarray | None = np.zeros((0, 0))  # (n, n) W^1/2 B^-1 W^1/2: the variances' correction
        self._mg: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros((0, 0)))
        self._total = np.zeros(0)  # (n_llms,) sum of the weights per LLM (the constant part of the means)
        self._gl = np.zeros((0, 0))  # (n, n_llms) each observation's weight per LLM
        self.version = 0

    @property
    def query_dependent(self) -> bool:
        """Whether routing needs the query's features (votes on added LLMs and a query term)."""
        return self.grad.size > 0 and (self.query_sd > 0 or self.text_sd > 0 or self.s.shape[1] > 0)

    def features(self, e: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(unit embeddings, score features) of queries ``e`` (n, d) (widths 0 for the kernels not used)."""
        if e is None:
            return np.zeros((0, 0)), np.zeros((0, 0))
        e = np.asarray(e).reshape(-1, np.shape(e)[-1])
        u = unit_rows(e) if (self.query_sd > 0 or self.text_sd > 0) else np.zeros((len(e), 0))
        use_s = self.score_sd > 0 and self.featurize is not None and len(e)
        sf = np.asarray(self.featurize(unit_rows(e)), np.float64) if use_s else np.zeros((len(e), 0))
        return u, sf

    def kernel(self, u1: np.ndarray, s1: np.ndarray, u2: np.ndarray, s2: np.ndarray) -> np.ndarray:
        """Prior covariance (n1, n2) of one added LLM's crowd term between two sets of queries (their
        :meth:`features`; width 0: that part is left out)."""
        k = np.full((max(len(u1), len(s1)), max(len(u2), len(s2))), self.prior_sd ** 2)
        if u1.shape[1] and u2.shape[1]:
            cos = u1 @ u2.T
            k += self.query_sd ** 2 * cos + self.text_sd ** 2 * (cos > SAME_TEXT_COS)
        if s1.shape[1] and s2.shape[1]:
            k += self.score_sd ** 2 * (s1 @ s2.T)
        return k

    def fit(self, n_llms: int, added: np.ndarray, a: np.ndarray, b: np.ndarray, offset: np.ndarray,
            label: np.ndarray, w: np.ndarray, e: np.ndarray | None = None, iters: int = 30) -> None:
        """``e``: (n, d) embeddings of each observation's query (None: a constant per LLM)."""
        n = a.size
        is_added = np.zeros(n_llms, bool)
        is_added[np.asarray(added, np.int64)] = True
        sign = np.zeros((n, n_llms))
        if n and added.size:
            ext = np.r_[is_added, False]  # b = -1: the average LLM
            rows = np.arange(n)
            bb = np.where(b >= 0, b, n_llms)
            ka, kb = ext[a], ext[bb]
            sign[rows[ka], a[ka]] += 1.0
            sign[rows[kb], bb[kb]] -= 1.0
        keep = np.flatnonzero(np.abs(sign).sum(axis=1) > 0)  # observations that involve an added LLM
        sign, offset, label, w = sign[keep], offset[keep], label[keep], w[keep]
        if e is not None and keep.size:
            e, sf = self.features(np.asarray(e)[keep])
        else:
            e, sf = np.zeros((keep.size, 0)), np.zeros((keep.size, 0))
        k = self.kernel(e, sf, e, sf) if keep.size else np.zeros((0, 0))
        g = k * (sign @ sign.T)  # prior covariance of the observations' latent differences
        f = np.zeros(keep.size)
        grad = np.zeros(keep.size)
        eye = np.eye(keep.size)
        for _ in range(iters if keep.size else 0):
            p = 0.5 * (1.0 + np.tanh(0.5 * (offset + f)))
            wh = np.sqrt(w * p * (1.0 - p))
            rhs = wh * wh * f + w * (label - p)
            gr = g @ rhs
            new = gr - g @ (wh * np.linalg.solve(eye + wh[:, None] * g * wh[None, :], wh * gr))
            done = np.abs(new - f).max() < 1e-6
            f = new
            if done:
                break
        wh = np.zeros(keep.size)
        self.log_evidence = 0.0
        if keep.size:
            z = offset + f
            p = 0.5 * (1.0 + np.tanh(0.5 * z))
            wh = np.sqrt(w * p * (1.0 - p))
            grad = w * (label - p)
            # Laplace: log p(y) ~ log p(y | f) - f' G^-1 f / 2 - log|I + W^1/2 G W^1/2| / 2, G^-1 f = grad at the mode
            loglik = float(np.sum(w * (label * -np.logaddexp(0.0, -z) + (1.0 - label) * -np.logaddexp(0.0, z))))
            _, logdet = np.linalg.slogdet(eye + wh[:, None] * g * wh[None, :])
            self.log_evidence = loglik - 0.5 * float(grad @ f) - 0.5 * float(logdet)
        changed = (not np.array_equal(is_added, self.is_added) or grad.shape != self.grad.shape
                   or not np.allclose(grad, self.grad, atol=1e-9) or e.shape != self.e.shape
                   or not np.array_equal(e, self.e) or sf.shape != self.s.shape or not np.array_equal(sf, self.s))
        self.n_llms, self.is_added, self.e, self.s = n_llms, is_added, e, sf
        self.sign, self.grad = sign, grad
        self._m, self._mg = None, (wh, g)  # the variances' matrix, computed on first need (Thompson sampling)
        self._gl = sign * grad[:, None]
        self._total = self._gl.sum(axis=0)
        if changed:
            self.version += 1

    def __call__(self, idx: np.ndarray, e: np.ndarray | None = None) -> np.ndarray:
        """Posterior means of the crowd terms of LLMs ``idx``: for one query's embedding ``e`` (d,), shape of
        ``idx``; for ``e`` of n queries (n, d), (n, len(idx)); no ``e``: the average query's."""
        idx = np.asarray(idx)
        single = e is None or np.ndim(e) == 1
        if not self.grad.size:
            return np.zeros(idx.shape) if single else np.zeros((len(e),) + idx.shape)
        if e is None or not self.query_dependent:
            out = np.broadcast_to(self.prior_sd ** 2 * self._total[idx], (1 if single else len(e),) + idx.shape)
            return out[0] if single else np.array(out)
        u, sf = self.features(e)
        out = self.kernel(u if self.e.shape[1] else u[:, :0], sf if self.s.shape[1] else sf[:, :0],
                          self.e, self.s) @ self._gl[:, idx]
        return out[0] if single else np.asarray(out)

    def variance(self, idx: np.ndarray, e: np.ndarray | None = None) -> np.ndarray:
        """Posterior variances of the crowd terms of LLMs ``idx`` for one query (``e``: (d,) or None)."""
        idx = np.asarray(idx)
        mine = self.involves(idx, each=True)
        use_e = e is not None and mine.any() and (self.e.shape[1] > 0 or self.s.shape[1] > 0)
        if use_e:  # the kernel's parts the fit had
            u, sf = self.features(np.asarray(e).reshape(1, -1))
            u, sf = (u if self.e.shape[1] else u[:, :0]), (sf if self.s.shape[1] else sf[:, :0])
            prior = float(self.kernel(u, sf, u, sf)[0, 0])
        else:
            prior = self.prior_sd ** 2
        var = np.where(mine, prior, 0.0)
        if self.grad.size and mine.any():
            if use_e:
                kq = self.kernel(self.e, self.s, u, sf)[:, 0]
            else:
                kq = np.full(self.grad.size, self.prior_sd ** 2)
            ks = kq[:, None] * self.sign[:, idx[mine]]
            var[mine] = var[mine] - ((self.m @ ks) * ks).sum(axis=0)
        return np.clip(var, 0.0, None)

    @property
    def m(self) -> np.ndarray:
        """``W^1/2 B^-1 W^1/2`` of the fit (the posterior variances' correction), computed once per fit."""
        if self._m is None:
            wh, g = self._mg
            self._m = wh[:, None] * np.linalg.inv(np.eye(wh.size) + wh[:, None] * g * wh[None, :]) * wh[None, :]
        return self._m

    def involves(self, idx: np.ndarray, each: bool = False):
        """Whether any of LLMs ``idx`` is an added one (``each``: per LLM)."""
        idx = np.asarray(idx)
        mask = np.zeros(idx.shape, bool)
        inside = idx < self.is_added.size
        mask[inside] = self.is_added[idx[inside]]
        return mask if each else bool(mask.any())

    @property
    def mean(self) -> np.ndarray:
        """Each LLM's crowd strength on the average query (what ``crowd_strength`` reports)."""
        return self(np.arange(self.n_llms))

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(self.variance(np.arange(self.n_llms)))

    def sample(self, idx: np.ndarray, rng: np.random.Generator, scale: float, optimistic: bool,
               e: np.ndarray | None = None) -> np.ndarray:
        """A Thompson draw of the crowd terms of LLMs ``idx`` for one query (each LLM's marginal)."""
        m = self(idx, e)
        draw = m + scale * np.sqrt(self.variance(idx, e)) * rng.standard_normal(m.size)
        return np.maximum(draw, m) if optimistic else draw


def finite_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
