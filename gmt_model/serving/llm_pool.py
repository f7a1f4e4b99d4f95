"""The open LLM pool: which LLMs the router may route to, their descriptions and prices.

Every LLM the router ever knew keeps its index (the model's arrays, the
history's ``llm`` column): the checkpoint's trained LLMs first, then the
added ones in the order they were added.  Removing an LLM only takes it out
of the pool (it is never routed to again); its rated history stays.

An added LLM's node features are the embedding of its description, exactly
as for the trained LLMs, so the GNN scores it inductively.  On top of that,
:class:`CrowdEstimate` keeps a shared, crowd-level strength of each added
LLM (logit units, on top of the base scores), learned from everybody's
feedback on it: a Gaussian posterior (Laplace, Newton) whose prior is wide,
so Thompson sampling tries a new LLM fairly and the first votes of any user
move it for every user.  The trained LLMs' strengths are already in the
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

__all__ = ["LLMInfo", "LLMPool", "LLMList", "CrowdEstimate", "CROWD_QUERY_DIMS", "CROWD_QUERY_SD"]


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


#: the crowd term's query features: this many principal components of the checkpoint's queries (more than
#: the per-user residual's: the crowd's votes on an added LLM are many more than one user's)
CROWD_QUERY_DIMS = 16
#: prior std of the crowd term's query weights, relative to its bias's (``prior_sd``)
CROWD_QUERY_SD = 0.25


class CrowdEstimate:
    """Shared, query-dependent strengths of the added LLMs (logit units, on top of the base scores).

    ``c_m(q) = theta_m . [1, z(q)]``: a bias (the LLM's strength on the average query) plus a term linear
    in the query's features ``z`` (the first principal components of the checkpoint's queries, unit
    variance: :class:`~gmt_model.method.personal.QueryBasis`), so the crowd's votes teach which kinds of
    query the new LLM is good at, not only how good it is on average.

    Observations: ``P(a beats b | q) = sigmoid(offset + c_a(q) - c_b(q))`` with the user-blind base
    scores' difference as the offset, weight ``w`` and a (soft) label; ``b = -1`` is the average LLM of the
    query.  Prior ``theta_m ~ N(0, diag(prior_sd^2, (prior_sd * query_sd)^2, ...))`` for each added LLM
    (0: the average trained LLM on top of what the GNN reads in its description); trained LLMs are fixed
    at 0.  Gaussian posterior by Laplace (Newton); ``query_sd = 0`` (or no features) is the per-LLM
    constant strength alone.
    """

    def __init__(self, prior_sd: float = 1.0, query_sd: float = CROWD_QUERY_SD) -> None:
        self.prior_sd = float(prior_sd)
        self.query_sd = float(query_sd)
        self.theta = np.zeros((0, 1))  # (n_llms, 1 + dims) posterior mean
        self.cov = np.zeros((0, 1, 1))  # (n_llms, 1 + dims, 1 + dims) posterior covariance (per LLM block)
        self.version = 0

    # the bias alone (the strength on the average query): what ``crowd_strength`` reports
    mean = property(lambda self: self.theta[:, 0])
    sd = property(lambda self: np.sqrt(np.clip(self.cov[:, 0, 0], 0.0, None)))

    @property
    def query_dependent(self) -> bool:
        """Whether any added LLM has a query term (routing then needs the query's features)."""
        return self.theta.shape[1] > 1 and bool(np.any(self.theta[:, 1:]))

    def fit(self, n_llms: int, added: np.ndarray, a: np.ndarray, b: np.ndarray, offset: np.ndarray,
            label: np.ndarray, w: np.ndarray, z: np.ndarray | None = None, iters: int = 30) -> None:
        """``z``: (n, 1 + dims) ``[1, z(q)]`` of each observation's query (None: the bias alone)."""
        if z is None or self.query_sd <= 0 or a.size == 0:
            z = np.ones((a.size, 1))
        z = np.asarray(z, np.float64)
        z = z[:, None] if z.ndim == 1 else z
        d = z.shape[1]
        theta, cov = np.zeros((n_llms, d)), np.zeros((n_llms, d, d))
        if added.size:
            k = added.size
            col = np.full(n_llms + 1, -1, np.int64)
            col[added] = np.arange(added.size)
            ca, cb = col[a], col[np.where(b >= 0, b, n_llms)]
            x = np.zeros((a.size, k, d))
            rows = np.arange(a.size)
            x[rows[ca >= 0], ca[ca >= 0]] += z[ca >= 0]
            x[rows[cb >= 0], cb[cb >= 0]] -= z[cb >= 0]
            x = x.reshape(a.size, k * d)
            prec1 = np.r_[1.0 / self.prior_sd ** 2, np.full(d - 1, 1.0 / (self.prior_sd * self.query_sd) ** 2)
                          if d > 1 else np.zeros(0)]
            prec = np.tile(prec1, k)
            r = np.zeros(k * d)
            for _ in range(iters):
                t = offset + x @ r
                p = 0.5 * (1.0 + np.tanh(0.5 * t))
                g = x.T @ (w * (p - label)) + prec * r
                h = (x.T * (w * p * (1.0 - p))) @ x + np.diag(prec)
                step = np.linalg.solve(h, g)
                r = r - step
                if np.abs(step).max() < 1e-8:
                    break
            t = offset + x @ r
            p = 0.5 * (1.0 + np.tanh(0.5 * t))
            h = (x.T * (w * p * (1.0 - p))) @ x + np.diag(prec)
            full = np.linalg.inv(h)
            theta[added] = r.reshape(k, d)
            for j, m in enumerate(added):
                cov[m] = full[j * d:(j + 1) * d, j * d:(j + 1) * d]
        if theta.shape != self.theta.shape or not np.allclose(theta, self.theta, atol=1e-6):
            self.version += 1
        self.theta, self.cov = theta, cov

    def _z(self, z: np.ndarray | None) -> np.ndarray:
        """``[1, z]`` cut to the fitted dims (a bias-only fit reads only the 1)."""
        d = self.theta.shape[1]
        if z is None:
            return np.eye(1, d)[0]
        return np.asarray(z, np.float64)[..., :d]

    def __call__(self, idx: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
        """The crowd terms of LLMs ``idx``: for one query's ``z`` (1 + dims,), shape of ``idx``; for
        ``z`` of n queries (n, 1 + dims), (n, len(idx)); no ``z``: the average query's."""
        idx = np.asarray(idx)
        if not self.theta.size:
            return np.zeros(idx.shape) if z is None or np.ndim(z) == 1 else np.zeros((len(z),) + idx.shape)
        return self._z(z) @ self.theta[idx].T

    def sample(self, idx: np.ndarray, rng: np.random.Generator, scale: float, optimistic: bool,
               z: np.ndarray | None = None) -> np.ndarray:
        """A Thompson draw of the crowd terms of LLMs ``idx`` for one query (each LLM's marginal)."""
        zz = self._z(z)
        m = self(idx, z)
        s = np.sqrt(np.clip(np.einsum("i,kij,j->k", zz, self.cov[np.asarray(idx)], zz), 0.0, None))
        draw = m + scale * s * rng.standard_normal(m.size)
        return np.maximum(draw, m) if optimistic else draw


def finite_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
