"""GMTRouter: personalised routing with a live user graph and an open LLM pool.

The router is a facade over five parts:

* :mod:`~gmt_model.serving.requests`: typed requests, validated once;
* :mod:`~gmt_model.serving.user_state`: the live rated history, the users'
  GNN representations (cache, refresh schedule), their online residual
  posteriors, feedback apply and sync across processes;
* :mod:`~gmt_model.serving.policy`: the choice (greedy, Thompson sampling,
  epsilon-greedy), cost-aware routing and the reasoning text;
* :mod:`~gmt_model.serving.llm_pool`: the LLMs one may route to (trained and
  added ones, their descriptions, prices and endpoints) and the crowd
  estimate of added LLMs.
* :mod:`~gmt_model.serving.store_link`: the link to the shared feedback
  store (feedback rows and pool events written, replayed at start, synced
  while running, users loaded and evicted on demand).

Scores: for a user with history, ``s = (blend(gnn, cold) + crowd) * g + residual``
(``g``: the user's GNN weight, ``residual``: :mod:`gmt_model.method.personal`, plus the user's terms for
the request's ``task`` when the caller names one the user's feedback named);
for an unknown user, the crowd-calibrated cold-start scores ``+ crowd``.
``crowd`` is 0 for trained LLMs; for an added LLM it is the shared, query-dependent
strength everybody's feedback on it taught (:class:`~gmt_model.serving.llm_pool.CrowdEstimate`).

Durability: feedback rows and pool changes go to the shared feedback log;
a router that starts replays pool events and then the feedback rows newer
than its checkpoint's training data (``meta.feedback_through_id``), and
follows both while it runs (``feedback_sync_interval``), so a restarted
router, or another process sharing the log, routes as this one.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from gmt_model.errors import RoutingError
from gmt_model.method import schema as S
from gmt_model.method.checkpoint import Checkpoint, History, load_checkpoint
from gmt_model.method.config import RouterConfig, load_router_config
from gmt_model.method.personal import CrowdCalibration, PersonalConfig, Posterior, fit_bias, group_pairs
from gmt_model.method.training import resolve_device
from gmt_model.serving.llm_pool import LLMPool
from gmt_model.serving.policy import Policy
from gmt_model.serving.requests import (
    Checks,
    LLMSpec,
    PreferenceRequest,
    RatingRequest,
    RouteRequest,
    check_cost_weight,
)
from gmt_model.serving.store_link import StoreLink
from gmt_model.serving.user_state import UserState

__all__ = ["GMTRouter", "RoutingError"]

log = logging.getLogger(__name__)

#: texts embedded per encoder call before the lock is taken
EMBED_CHUNK = 64


@dataclass
class LoggedFeedback:
    """Feedback stored in the log, not yet applied (:meth:`GMTRouter.log_feedback`, :meth:`GMTRouter.apply_logged`)."""

    key: str | None  # the comparison key of a pairwise preference; None for a rating
    user_id: str
    session_id: str | None
    rows: list[dict[str, Any]]
    emb: np.ndarray
    ids: list[int] | None  # their feedback-log ids (None: no log)
    t0: float


class GMTRouter:
    """Route queries to the LLM each user is predicted to prefer.

    ``GMTRouter(yaml_path)`` reads a seed-style test config;
    ``GMTRouter.from_checkpoint(dir)``; a registered model:
    ``gmt_model.load_router(uri)`` (:mod:`gmt_model.serving.registry`, which imports this module, not the reverse).

    ``router.llms`` is the list of every LLM name in index order (removed
    ones included); ``router.llms()`` lists the pool (see :meth:`add_llm`).
    """

    #: the router takes its own lock (the server runs calls in parallel threads without one of its own)
    thread_safe = True

    def __init__(self, yaml_path: str | Path | None = None, *, config: RouterConfig | None = None,
                 checkpoint: Checkpoint | None = None, encoder: Any = None) -> None:
        if config is None:
            if yaml_path is None:
                raise RoutingError("GMTRouter needs a yaml_path or a RouterConfig")
            config = load_router_config(yaml_path)
        self.config = config
        if config.threads:
            torch.set_num_threads(int(config.threads))
        self.device = resolve_device(config.device or "cpu")
        ck = checkpoint if checkpoint is not None else load_checkpoint(config.checkpoint, device=self.device)
        self.checkpoint = ck
        self.model = ck.model.to(self.device).eval()
        self.pool = LLMPool(ck.llms, ck.history.llm_emb)
        self.llms = self.pool.names
        unknown = [c for c in (config.candidates or []) if not self.pool.indexed(c)
                   and c not in (config.llms or {})]
        if unknown:
            raise RoutingError(f"candidates {unknown} are not LLMs of the checkpoint {list(self.llms)}")
        self.rating_scale: tuple[float, float] = ck.rating_scale
        self.encoder_name = config.encoder or ck.encoder
        self._encoder = encoder
        self._emb_cache: dict[str, np.ndarray] = {}
        self._lock = threading.RLock()
        try:
            self.personal = PersonalConfig.from_dict(config.personalization, "router.personalization")
        except (TypeError, ValueError) as e:
            raise RoutingError(str(e)) from None
        self._policy = Policy(config.policy, config.epsilon, self.personal, config.seed)
        self.policy, self.epsilon = config.policy, float(config.epsilon)
        self.cost_weight = float(check_cost_weight(config.cost_weight, "router.cost_weight") or 0.0)
        self.state = UserState(self.model, self.device, config, self.personal, ck.history, ck.users, self.pool,
                               self.rating_scale)
        self.calibration = self.state.calibration = self._fit_calibration()
        self.checks = Checks(known=self.pool.known, indexed=self.pool.indexed,
                             default_candidates=lambda: self.candidates, describe=self.pool.describe,
                             rating_scale=self.rating_scale, history_turns=int(config.history_turns))
        self._apply_config_pool()
        self._stats_lock = threading.Lock()
        self.route_counts: dict[str, int] = {}
        self.route_cost: dict[str, float] = {}  # sum of the chosen LLMs' prices (USD per 1M tokens)
        # durable feedback and pool events (store_link): every pool change, whatever the checkpoint (its LLMs'
        # descriptions may have changed), then the rows newer than the training data; then follow others
        store = None
        if config.feedback_log:
            from gmt_model.serving.feedback import open_feedback_store

            store = open_feedback_store(config.feedback_log)  # a SQLite path or a postgresql:// URL
        self.link = StoreLink(store, self.state, self._lock, self.embed, config=config, meta=ck.meta,
                              apply_pool_event=lambda ev: self.pool.apply_event(ev, self._embed_description),
                              pool_changed=self._pool_changed)
        if store is not None:
            self.link.sync_pool()
            self._record_config_pool()
            if config.replay_feedback:
                self.link.replay()

    # the store link's figures and store, as attributes of the router
    feedback_log = property(lambda self: self.link.store)
    feedback_through_id = property(lambda self: self.link.through_id)
    replayed = property(lambda self: self.link.replayed)
    evicted = property(lambda self: self.link.evicted)
    _loaded = property(lambda self: self.link.loaded)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_checkpoint(cls, directory: str | Path, *, device: str | None = None, encoder: Any = None,
                        feedback_log: str | Path | None = None, candidates: Sequence[str] | None = None,
                        threads: int | None = None, **options: Any) -> "GMTRouter":
        """``options``: the other ``RouterConfig`` fields (``policy``, ``epsilon``, ``seed``,
        ``personalization``, ``replay_feedback``, ``feedback_sync_interval``, ``history_turns``,
        ``llms``, ``cost_weight``)."""
        cfg = RouterConfig(checkpoint=str(directory), device=device, threads=threads,
                           feedback_log=str(feedback_log) if feedback_log else None,
                           candidates=list(candidates) if candidates else None,
                           encoder=encoder if isinstance(encoder, str) else None, **options)
        return cls(config=cfg, encoder=None if isinstance(encoder, str) else encoder)

    @property
    def candidates(self) -> list[str]:
        """The default candidates: the config's (those still in the pool) and every LLM added since, or the pool."""
        if not self.config.candidates:
            return self.pool.active()
        listed = [c for c in self.config.candidates if self.pool.known(c)]
        return listed + [m for m in self.pool.active() if m not in listed and not self.pool.info[
            self.pool.index[m]].trained and m not in (self.config.llms or {})]

    # --------------------------------------------------------------- encoding
    @property
    def encoder(self):
        if self._encoder is None:
            from gmt_model.data.encoder import get_encoder

            self._encoder = get_encoder(self.encoder_name, device=str(self.device) if self.device.type == "cuda" else None)
            if self._encoder.dim != self.model.cfg.embed_dim:
                raise RoutingError(f"encoder {self.encoder_name!r} gives width {self._encoder.dim}, "
                                   f"the checkpoint expects {self.model.cfg.embed_dim}")
        return self._encoder

    def _encode_missing(self, texts: Sequence[str]) -> None:
        """Encode the texts not cached yet, in bounded chunks (called without the lock: routing and
        feedback of other threads go on while the encoder runs)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._emb_cache))
        for i in range(0, len(missing), EMBED_CHUNK):
            part = missing[i:i + EMBED_CHUNK]
            vecs = np.asarray(self.encoder.encode(part), dtype=np.float32)
            with self._lock:
                for t, v in zip(part, vecs):
                    self._emb_cache[t] = v

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Query embeddings (one encoder call for all texts not seen before)."""
        if texts:  # all cached (the common case): no lock, so feedback never waits for a routing batch
            try:
                return np.stack([self._emb_cache[t] for t in texts])
            except (KeyError, RuntimeError):
                pass
        missing = list(dict.fromkeys(t for t in texts if t not in self._emb_cache))
        if missing:
            vecs = np.asarray(self.encoder.encode(missing), dtype=np.float32)
            with self._lock:
                for t, v in zip(missing, vecs):
                    self._emb_cache[t] = v
        with self._lock:
            out = np.stack([self._emb_cache[t] for t in texts]) if texts else \
                np.zeros((0, self.model.cfg.embed_dim), np.float32)
            if len(self._emb_cache) > 100_000:
                for k in list(self._emb_cache)[: len(self._emb_cache) // 2]:
                    del self._emb_cache[k]
        return out

    # ---------------------------------------------------------------- routing
    def route_single(self, query: dict[str, Any] | RouteRequest) -> dict[str, Any]:
        """Route one query; see :meth:`route_batch` for the fields."""
        return self.route_batch([query])[0]

    def route_batch(self, queries: Sequence[dict[str, Any] | RouteRequest]) -> list[dict[str, Any]]:
        """Route many queries: one encoder call, one GNN call for users whose
        representation is stale, one predictor call.

        Each query: ``{"query_text", "user_id", "session_id"?, "turn"?,
        "conversation_history"?, "candidates"?, "cost_weight"?, "max_cost"?, "task"?}``
        (``task``: the kind of work the caller names, e.g. ``"coding"``: the user's votes given with the
        same task weigh in as that task's own taste).
        Returns per query ``{"model_name", "confidence", "user_preference",
        "scores", "reasoning", "cold_start", "history_size", "cost", ...}`` (and ``"task"`` when the query
        named one, to send back with the feedback).
        """
        if not isinstance(queries, (list, tuple)):
            raise RoutingError("route_batch expects a list of query dicts")
        reqs = [RouteRequest.parse(q, self.checks, i) for i, q in enumerate(queries)]
        if not reqs:
            return []
        texts = [r.query_text for r in reqs]
        self._encode_missing(texts + [c[0] for r in reqs for c in r.context])
        with self._lock, torch.inference_mode():
            self.link.refresh_for_routing([r.user_id for r in reqs])
            self.state.ensure_crowd()
            emb = self.embed(texts)
            uidx = [self.state.user_index.get(r.user_id, -1) for r in reqs]
            user_vecs = self._user_vectors(reqs, uidx)
            query_vecs = self.model.gnn.isolated(S.QUERY, self.model.gnn.project_query(
                torch.from_numpy(emb).to(self.device)))
            cand_idx = self._candidate_index(reqs)
            scores, cold = self._gnn_scores(user_vecs, query_vecs, cand_idx)
            self.state.prefetch_posteriors([u for r, u in zip(reqs, uidx) if not r.context])
            z = self.state.basis(emb)
            zc = emb if self.state.crowd.query_dependent else [None] * len(reqs)  # the crowd term's query features
            results = [self._route_one(r, u, cand_idx[i, : len(r.candidates)], scores[i, : len(r.candidates)],
                                       cold[i, : len(r.candidates)], z[i], zc[i])
                       for i, (r, u) in enumerate(zip(reqs, uidx))]
        self._count(results)
        return results

    def _user_vectors(self, reqs: list[RouteRequest], uidx: list[int]) -> Tensor:
        """The GNN representation of each query's user: with the conversation's rated turns, the
        user's own (recomputed when stale), or the cold-start one."""
        self.state.ensure_user_reps([u for u in uidx if u >= 0])
        vecs = []
        for r, u in zip(reqs, uidx):
            if r.context:
                vecs.append(self.state.context_rep(u, r.context, self.embed([c[0] for c in r.context])))
            elif u >= 0:
                vecs.append(self.state.rep(u))
            else:
                vecs.append(self.state.cold_rep)
        return torch.stack(vecs)

    def _candidate_index(self, reqs: list[RouteRequest]) -> np.ndarray:
        """(B, max candidates) LLM indices of each query's candidates (padded with 0)."""
        idx = np.zeros((len(reqs), max(len(r.candidates) for r in reqs)), dtype=np.int64)
        for i, r in enumerate(reqs):
            idx[i, : len(r.candidates)] = [self.pool.index[c] for c in r.candidates]
        return idx

    def _gnn_scores(self, user_vecs: Tensor, query_vecs: Tensor, cand_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The predictor's logits of each candidate for each (user, query), and the cold-start user's."""
        idx = torch.from_numpy(cand_idx).to(self.device)
        llm = self.state.llm_reps()
        b = len(cand_idx)
        if self.personal.enabled and self.calibration.cold > 0:  # the cold-start user's in the same call
            both = self.state.scorer(torch.cat([user_vecs, self.state.cold_rep.expand(b, -1)]),
                                     torch.cat([query_vecs, query_vecs]), llm, torch.cat([idx, idx]))
            both = both.float().cpu().numpy().astype(np.float64)
            return both[:b], both[b:]
        scores = self.state.scorer(user_vecs, query_vecs, llm, idx).float().cpu().numpy().astype(np.float64)
        return scores, np.zeros_like(scores)

    def _route_one(self, req: RouteRequest, u: int, c_idx: np.ndarray, s: np.ndarray, cold: np.ndarray,
                   z: np.ndarray, zc: np.ndarray | None = None) -> dict[str, Any]:
        """Scores -> personalised scores -> the policy's choice (exploration, cost) -> the result.
        ``z``: the residual's query features; ``zc``: the crowd term's (None: it has no query term)."""
        hist = self.state.rows_of.count(u) if u >= 0 else 0
        post = None
        crowd = self.state.crowd(c_idx, zc)
        if self.personal.enabled:
            if hist == 0 and not req.context:
                s = self.calibration.apply(s, c_idx) + crowd
                post = self.state.prior
            else:
                post = self.state.posterior(u) if hist > 0 else self.state.prior
                s = (self.calibration.blend(s, cold, c_idx) + crowd) * post.gnn_weight + \
                    self._policy.residual(post.residual, len(self.pool), c_idx, z)
                per_task = post.task_terms(req.task)  # the user's deviations for this task (None: none seen)
                if per_task is not None:
                    s = s + per_task[c_idx]
        else:
            s = s + crowd
        sampled = self._policy.sample(s, post, self.state.crowd, len(self.pool), c_idx, z, zc)
        cost_weight = self.cost_weight if req.cost_weight is None else req.cost_weight
        choice = self._policy.choose(s, sampled, self.pool.costs(c_idx), cost_weight, req.max_cost)
        note = ""
        if req.session_id is not None:
            turns = self.state.session_turn(req.user_id, req.session_id, req.candidates[choice.best])
            note = f" in session {req.session_id} (turn {req.turn or turns})"
        out = self._policy.result(req.user_id, note, req.candidates, s, hist, bool(req.context), choice, post)
        if req.task is not None:
            out["task"] = req.task
        return out

    def _count(self, results: list[dict[str, Any]]) -> None:
        with self._stats_lock:
            for r in results:
                m = r["model_name"]
                self.route_counts[m] = self.route_counts.get(m, 0) + 1
                if r.get("cost") is not None:
                    self.route_cost[m] = self.route_cost.get(m, 0.0) + float(r["cost"])

    # ------------------------------------------------------------- the pool
    def llms_info(self, include_removed: bool = False) -> list[dict[str, Any]]:
        """The pool: one dict per LLM (name, index, description, cost, endpoint, trained, active)."""
        return self.llms(include_removed)

    def _describe(self, name: str) -> dict[str, Any]:
        return self.pool.info[self.pool.index[name]].to_dict()

    def _embed_description(self, description: str) -> np.ndarray:
        """An LLM node's features: its description's embedding (as the training data's)."""
        vec = np.asarray(self.encoder.encode([description]), dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.pool.emb.shape[1]:
            raise RoutingError(f"field 'description': the encoder gives width {vec.shape[0]}, the checkpoint's LLM "
                               f"features have width {self.pool.emb.shape[1]}")
        return vec

    def add_llm(self, name: str, description: str, cost: float | None = None, endpoint: str | None = None
                ) -> dict[str, Any]:
        """Add an LLM to the pool: routable at once (scored by the GNN from its description's
        embedding, plus a crowd strength learned from everybody's feedback on it).  Stored in the
        feedback log's event table first (durable, ordered).  A duplicate name, an empty description
        or a bad cost raises ``RoutingError`` and nothing is stored."""
        spec = LLMSpec.parse(name, description, cost, endpoint)
        self.pool.check_add(spec)
        emb = self._embed_description(spec.description)  # type: ignore[arg-type]
        with self._lock:
            self.link.sync_pool()
            self.pool.check_add(spec)  # another process may have added it meanwhile
            self.link.log_pool_event("add", spec.name, spec.description, spec.cost, spec.endpoint)
            self.pool.add(spec, emb)
            self._pool_changed()
            return self._describe(spec.name)

    def update_llm(self, name: str, *, description: str | None = None, cost: float | None = None,
                   endpoint: str | None = None) -> dict[str, Any]:
        """Change an LLM of the pool (a new description changes its node features)."""
        spec = LLMSpec.parse(name, description, cost, endpoint, need_description=False)
        self.pool.check_update(name)
        if spec.description is None and spec.cost is None and spec.endpoint is None:
            raise RoutingError("field 'description': give a description, a cost or an endpoint to change")
        emb = self._embed_description(spec.description) if spec.description is not None else None
        with self._lock:
            self.link.sync_pool()
            self.pool.check_update(name)
            self.link.log_pool_event("update", name, spec.description, spec.cost, spec.endpoint)
            self.pool.update(name, spec.description, spec.cost, spec.endpoint, emb)
            if emb is not None:
                self._pool_changed()
            return self._describe(name)

    def remove_llm(self, name: str) -> dict[str, Any]:
        """Take an LLM out of the pool: never routed to again; its rated history stays."""
        with self._lock:
            self.link.sync_pool()
            self.pool.check_remove(name)
            self.link.log_pool_event("remove", name)
            self.pool.remove(name)
            self.state.crowd_dirty = True
            return self._describe(name)

    def _pool_changed(self) -> None:
        self.state.refresh_llms()
        self.state.extend_calibration()

    def _apply_config_pool(self) -> None:
        """``router.llms``: the team's pool (name -> description, cost, endpoint).  Trained LLMs it lists keep
        their trained features; the others are added by description; trained LLMs it leaves out are not routed to."""
        llms = self.config.llms
        if not llms:
            return
        changed = False
        for name, spec in llms.items():
            if self.pool.indexed(name):
                self.pool.update(name, None, spec.get("cost"), spec.get("endpoint"), None)
                self.pool.info[self.pool.index[name]].description = spec.get("description")
            else:
                s = LLMSpec.parse(name, spec.get("description"), spec.get("cost"), spec.get("endpoint"),
                                  where=f"router.llms.{name}")
                self.pool.add(s, self._embed_description(s.description))  # type: ignore[arg-type]
                changed = True
        self.pool.restrict(list(llms))
        if changed:
            self._pool_changed()

    def _record_config_pool(self) -> None:
        """LLMs the config adds that the log never saw are recorded there once (an ``add`` event), so the
        next training run knows their descriptions; a later ``remove`` in the log then stays removed."""
        for name, spec in (self.config.llms or {}).items():
            info = self.pool.info[self.pool.index[name]]
            if not info.trained and not self.link.logged(name):
                self.link.log_pool_event("add", name, info.description, info.cost, info.endpoint)

    # --------------------------------------------------------------- feedback
    def update_user_feedback(self, user_id: str, query: str, model: str, rating: float,
                             session_id: str | None = None, turn: int | None = None,
                             task: str | None = None) -> dict[str, Any]:
        """Add a rated interaction to the user's history (live graph) and the
        durable feedback log; the next route for this user reflects it.

        Two ratings of different LLMs for the same query text are a comparison.
        ``task``: the kind of work (as named when routing; stored with the row).
        The same as :meth:`apply_logged` of :meth:`log_feedback`."""
        return self.apply_logged(self.log_feedback(user_id, query, model, rating, session_id, turn, task))

    def update_user_preference(self, user_id: str, query: str, preferred: str, rejected: str,
                               session_id: str | None = None, turn: int | None = None,
                               task: str | None = None) -> dict[str, Any]:
        """Pairwise feedback: for this query the user preferred ``preferred`` over
        ``rejected``.  Stored as two log rows in one transaction (top and bottom
        of the rating scale, one comparison key) and applied at once."""
        return self.apply_logged(self.log_preference(user_id, query, preferred, rejected, session_id, turn, task))

    # Feedback in two steps: ``log_*`` checks, embeds and makes the rows durable (the log's own transaction and
    # fsync, outside the router's lock: routing goes on meanwhile); ``apply_logged`` then applies them to the
    # live history under the lock.  Until applied, the rows are "pending": a sync or a user load that reads
    # them from the log skips them, so each row is applied exactly once (the server runs the second step in
    # its router queue; a logged row that is never applied, e.g. after a crash, is replayed at the next start).
    def log_feedback(self, user_id: str, query: str, model: str, rating: float,
                     session_id: str | None = None, turn: int | None = None,
                     task: str | None = None) -> "LoggedFeedback":
        """Step 1 of :meth:`update_user_feedback`: the checked row, stored in the log (when there is one)."""
        t0 = time.perf_counter()
        req = RatingRequest.parse(self.checks, user_id, query, model, rating, session_id, turn, task)
        emb = self.embed([req.query])[0]
        row = dict(user_id=req.user_id, query=req.query, model=req.model, rating=req.rating,
                   session_id=req.session_id, turn=req.turn, task=req.task)
        return LoggedFeedback(None, req.user_id, req.session_id, [row], emb, self.link.append([row]), t0)

    def log_preference(self, user_id: str, query: str, preferred: str, rejected: str,
                       session_id: str | None = None, turn: int | None = None,
                       task: str | None = None) -> "LoggedFeedback":
        """Step 1 of :meth:`update_user_preference`: both rows in one transaction."""
        t0 = time.perf_counter()
        req = PreferenceRequest.parse(self.checks, user_id, query, preferred, rejected, session_id, turn, task)
        lo, hi = self.rating_scale
        key = f"pref:{uuid.uuid4().hex}"
        emb = self.embed([req.query])[0]
        rows = [dict(user_id=req.user_id, query=req.query, model=m, rating=r, session_id=req.session_id,
                     turn=req.turn, query_id=key, task=req.task) for m, r in ((req.preferred, hi), (req.rejected, lo))]
        return LoggedFeedback(key, req.user_id, req.session_id, rows, emb, self.link.append(rows), t0)

    def apply_logged(self, logged: "LoggedFeedback") -> dict[str, Any]:
        """Step 2: apply logged feedback to the live history; the next route for the user reflects it."""
        try:
            with self._lock:
                self.link.ensure_loaded([logged.user_id])
                self.link.maybe_sync()
                ids = logged.ids
                for i, r in enumerate(logged.rows):
                    u = self.state.apply(logged.user_id, r["query"], r["model"], r["rating"], logged.session_id,
                                         logged.key, logged.emb, order=ids[i] if ids else None, task=r.get("task"))
                size = self.state.rows_of.count(u)
                if ids:  # applied: a later sync skips them
                    self.link.applied(ids)
        except BaseException:
            if logged.ids:  # not applied here: the next sync applies them from the log
                self.link.not_applied(logged.ids)
            raise
        finally:
            if logged.ids:
                self.link.settled(logged.ids)
        ms = (time.perf_counter() - logged.t0) * 1000.0
        task = logged.rows[0].get("task")
        if logged.key is None:
            r = logged.rows[0]
            out = {"user_id": logged.user_id, "model": r["model"], "rating": r["rating"], "history_size": size,
                   "feedback_id": ids[0] if ids else None, "applied_ms": ms}
        else:
            out = {"user_id": logged.user_id, "preferred": logged.rows[0]["model"],
                   "rejected": logged.rows[1]["model"], "feedback_ids": ids, "history_size": size, "applied_ms": ms}
        if task is not None:
            out["task"] = task
        return out

    def sync_feedback(self, force: bool = False) -> int:
        """Apply the pool events and then the log rows appended (by any process) since the last
        sync, in id order, skipping this router's own; returns how many rows were applied."""
        return self.link.sync(force)

    # ------------------------------------------------------------ inspection
    def history_size(self, user_id: str) -> int:
        self.link.ensure_loaded([user_id])
        return self.state.history_size(user_id)

    def history(self) -> History:
        """The current rated history (checkpoint + feedback)."""
        with self._lock:
            return self.state.history()

    def posterior(self, user_id: str) -> Posterior | None:
        """The user's residual posterior (None for a user without rated history)."""
        self.link.ensure_loaded([user_id])
        u = self.state.user_index.get(user_id)
        if u is None or not self.state.rows_of.count(u):
            return None
        with self._lock, torch.inference_mode():
            self.state.ensure_crowd()
            return self.state.posterior(u)

    def crowd_strength(self, name: str) -> tuple[float, float]:
        """(mean, sd) of the crowd estimate of an LLM on the average query (0, 0 for a trained one)."""
        with self._lock, torch.inference_mode():
            self.state.ensure_crowd()
            i = self.pool.index[name]
            c = self.state.crowd
            return (float(c.mean[i]), float(c.sd[i])) if i < c.mean.size else (0.0, 0.0)

    def _fit_calibration(self) -> CrowdCalibration:
        """Cold-start calibration: the one training stored in the checkpoint, else
        the crowd's Bradley-Terry on the checkpoint history's comparison pairs."""
        stored = self.checkpoint.meta.get("cold_calibration")
        if isinstance(stored, dict) and len(stored.get("bias", [])) == len(self.checkpoint.llms):
            return CrowdCalibration.from_dict(stored)
        h = self.state.hist
        a, b, label = group_pairs(h.group, h.rating)
        return CrowdCalibration(alpha=0.0, bias=fit_bias(h.llm[a], h.llm[b], label, len(self.checkpoint.llms)))

    # internals some tests and scripts read
    users = property(lambda self: self.state.users)
    _user_index = property(lambda self: self.state.user_index)
    _user_rep = property(lambda self: self.state.user_rep)
    _post = property(lambda self: self.state.post)
    _offsets = property(lambda self: self.state.offsets)
    _rep = property(lambda self: self.state.rep)
    _rep_size = property(lambda self: self.state.rep_size)
