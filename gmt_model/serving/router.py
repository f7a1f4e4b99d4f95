"""GMTRouter: personalised routing with a live user graph.

The router holds the trained model, the LLM table and the rated history of
every user (from the checkpoint, then grown by feedback).  A user's
representation is the HeteroGNN output over that user's history; it is
cached and recomputed only when the user's history changes, so feedback
shapes the very next route without retraining.

Under the reference relation set a user's representation depends only on
that user's own sessions, and query / LLM nodes receive no messages, so
routing needs one small GNN call per changed user and one predictor call
per batch.  Under other relation sets (``full``) LLM and query nodes receive
messages from everybody's history; the router then recomputes the whole
history graph after feedback (exact, slower).

On top of the GNN, each user has an online residual (``gmt_model.method.personal``):
a Bayesian logistic model over LLM indicators and LLM x query features whose
mixture prior lets a user be crowd-like or idiosyncratic; it converges to
what the user told us, whatever the GNN says.  Unknown users get the
crowd-calibrated cold-start scores.  The routing policy is greedy, Thompson
sampling from the user's posterior, or epsilon-greedy.

Consistency model of the feedback log: every process applies its own
feedback at once (read-your-writes), appends it to the shared SQLite log,
and applies rows that other processes appended within
``feedback_sync_interval`` seconds (on its next call after that).  A router
that starts replays the log rows newer than its checkpoint's training data
(``meta.feedback_through_id``) in id order, so a restarted router routes as
the one before it; processes that have applied the same rows agree (the
routing depends on the set of rows, up to float rounding, not on the order
in which different users' rows arrived).
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from gmt_model.method import schema as S
from gmt_model.method.checkpoint import Checkpoint, History, load_checkpoint
from gmt_model.method.config import RouterConfig, load_router_config
from gmt_model.errors import RoutingError
from gmt_model.method.engine import build_subgraph
from gmt_model.method.graph import normalise_ratings
from gmt_model.method.model import GMTModel
from gmt_model.method.personal import (
    POLICIES,
    CrowdCalibration,
    PersonalConfig,
    Posterior,
    QueryBasis,
    build_evidence,
    fit_bias,
    fit_posterior,
    group_pairs,
    window_lookback,
    window_rows,
)

__all__ = ["GMTRouter", "RoutingError"]

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[\w.@:+\-/#]{1,256}$")
MAX_QUERY_CHARS = 100_000


@dataclass
class _Session:
    last_row: int = -1  # history row of the last rated turn
    turns: int = 0
    models: list[str] = field(default_factory=list)


class GMTRouter:
    """Route queries to the LLM each user is predicted to prefer.

    ``GMTRouter(yaml_path)`` reads a seed-style test config;
    ``GMTRouter.from_checkpoint(dir)``; a registered model:
    ``gmt_model.load_router(uri)`` (:mod:`gmt_model.serving.registry`, which imports this module, not the reverse).
    """

    def __init__(self, yaml_path: str | Path | None = None, *, config: RouterConfig | None = None,
                 checkpoint: Checkpoint | None = None, encoder: Any = None) -> None:
        if config is None:
            if yaml_path is None:
                raise RoutingError("GMTRouter needs a yaml_path or a RouterConfig")
            config = load_router_config(yaml_path)
        self.config = config
        if config.threads:
            torch.set_num_threads(int(config.threads))
        self.device = torch.device(config.device or "cpu")
        ck = checkpoint if checkpoint is not None else load_checkpoint(config.checkpoint, device=self.device)
        self.checkpoint = ck
        self.model = ck.model.to(self.device).eval()
        self.llms: list[str] = list(ck.llms)
        self._llm_index = {m: i for i, m in enumerate(self.llms)}
        cands = config.candidates or self.llms
        unknown = [c for c in cands if c not in self._llm_index]
        if unknown:
            raise RoutingError(f"candidates {unknown} are not LLMs of the checkpoint {self.llms}")
        self.candidates: list[str] = list(cands)
        self.rating_scale: tuple[float, float] = ck.rating_scale
        self.encoder_name = config.encoder or ck.encoder
        self._encoder = encoder
        self._emb_cache: dict[str, np.ndarray] = {}
        self._lock = threading.RLock()
        self.users: list[str] = list(ck.users)
        self._user_index = {u: i for i, u in enumerate(self.users)}
        h = ck.history
        self._hist = _GrowingHistory(h, self.model.cfg.edge_types, len(ck.users))
        self._rows_of = _UserRows(h.user, len(self.users))
        self._text_row: dict[str, int] = {}  # feedback query text -> its row in the history's text table
        self._rep_rows: dict[int, int] = {}
        self._unlogged = 0
        self._inserted: dict[int, int] = {}  # rows the representation is computed on (deterministic schedule)
        self._sessions: dict[tuple[str, str], _Session] = {}
        cache = max(1, int(config.cache_users))
        self._user_rep: _LRU = _LRU(cache)  # u -> (rows, representation)
        self._per_user_exact = set(self.model.cfg.edge_types) <= set(S.REFERENCE_RELATIONS)
        self._global_reps: dict[str, Tensor] | None = None
        self.feedback_log = None
        if config.feedback_log:
            from gmt_model.serving.feedback import open_feedback_store

            self.feedback_log = open_feedback_store(config.feedback_log)
        with torch.inference_mode():
            llm_x = self.model.gnn.project_llm(torch.from_numpy(h.llm_emb).to(self.device))
            self._llm_static = self.model.gnn.isolated(S.LLM, llm_x)
            cold_x = self.model.gnn.user_start[None, :]
            self._cold_rep = self.model.gnn.isolated(S.USER, cold_x)[0]
        # online personalization
        try:
            self.personal = PersonalConfig.from_dict(config.personalization, "router.personalization")
        except (TypeError, ValueError) as e:
            raise RoutingError(str(e)) from None
        if config.policy not in POLICIES:
            raise RoutingError(f"router.policy: expected one of {POLICIES}, got {config.policy!r}")
        self.policy = config.policy
        self.epsilon = float(config.epsilon)
        self._rng = np.random.default_rng(config.seed)
        self._basis = QueryBasis.from_rows(self._hist.text, self._hist.query_row, self.personal.query_dims)
        # the residual's query features of every text of the history, computed once per text
        self._ztext = np.concatenate([self._basis(self._hist.text[i:i + 65536])
                                      for i in range(0, self._hist.n_text, 65536)] or
                                     [np.zeros((0, self._basis.dims + 1))])
        self._ztext_n = self._hist.n_text
        self._post: _LRU = _LRU(cache)  # u -> Posterior
        self._offsets: _LRU = _LRU(cache)  # u -> (rep rows, history rows, GNN logits of those rows)
        self._prior = fit_posterior(build_evidence(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                                                   np.zeros((0, self._basis.dims + 1)),
                                                   np.zeros((0, len(self.llms))), self.personal),
                                    self.personal, len(self.llms), self._basis.dims)
        self._group_key: dict[tuple[str, str], int] = {}
        self._next_group = int(h.group.max()) + 1 if h.group is not None and h.group.size else 0
        self.calibration = self._fit_calibration()
        # durable feedback: replay what is newer than the training data, then follow other processes
        self.feedback_through_id = int(ck.meta.get("feedback_through_id", 0) or 0)
        self._synced_id = self.feedback_through_id
        self._own_ids: set[int] = set()
        self._last_sync = 0.0
        self.replayed = 0
        # a store with per-user reads (PostgreSQL): no replay at start; a user's rows are read on first use
        # (_ensure_loaded) and the sync follows only the users loaded so far
        self._unmerged = {int(i) for i in (ck.meta.get("feedback_unmerged_ids") or [])
                          if int(i) <= self.feedback_through_id}
        self._loaded: set[str] | None = None
        self._store_retry_at = 0.0
        if (self.feedback_log is not None and config.replay_feedback
                and getattr(self.feedback_log, "lazy_users", False)):
            self._loaded = set()
            self._synced_id = max(self._synced_id, self.feedback_log.max_id())
        elif self.feedback_log is not None and config.replay_feedback:
            # rows the training data read but could not use (a single rating compares nothing) are history only:
            # replay them too
            unmerged = sorted(int(i) for i in (ck.meta.get("feedback_unmerged_ids") or []) if int(i) <= self._synced_id)
            if unmerged:
                rows = [r for r in self.feedback_log.read(since_id=unmerged[0] - 1, limit=None)
                        if r.id in set(unmerged)]
                self.replayed += self._apply_rows(rows)
            self.replayed += self.sync_feedback(force=True)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_checkpoint(cls, directory: str | Path, *, device: str | None = None, encoder: Any = None,
                        feedback_log: str | Path | None = None, candidates: Sequence[str] | None = None,
                        threads: int | None = None, **options: Any) -> "GMTRouter":
        """``options``: the other ``RouterConfig`` fields (``policy``, ``epsilon``, ``seed``,
        ``personalization``, ``replay_feedback``, ``feedback_sync_interval``, ``history_turns``)."""
        cfg = RouterConfig(checkpoint=str(directory), device=device, threads=threads,
                           feedback_log=str(feedback_log) if feedback_log else None,
                           candidates=list(candidates) if candidates else None,
                           encoder=encoder if isinstance(encoder, str) else None, **options)
        return cls(config=cfg, encoder=None if isinstance(encoder, str) else encoder)

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

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Query embeddings (one encoder call for all texts not seen before)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._emb_cache))
        if missing:
            vecs = np.asarray(self.encoder.encode(missing), dtype=np.float32)
            for t, v in zip(missing, vecs):
                self._emb_cache[t] = v
            if len(self._emb_cache) > 100_000:
                for k in list(self._emb_cache)[: len(self._emb_cache) // 2]:
                    del self._emb_cache[k]
        return np.stack([self._emb_cache[t] for t in texts]) if texts else np.zeros((0, self.model.cfg.embed_dim), np.float32)

    # ------------------------------------------------------- user histories
    def history_size(self, user_id: str) -> int:
        self._ensure_loaded([user_id])
        u = self._user_index.get(user_id)
        return 0 if u is None else self._rows_of.count(u)

    def _subgraph_reps(self, rows: np.ndarray, users: np.ndarray, extra: dict[str, np.ndarray] | None = None
                       ) -> dict[str, Tensor]:
        """GNN over the history rows, with user nodes ``users`` only (the engine's
        subgraph builder, as in training and evaluation), plus optional extra
        context interactions (``extra``: user, llm, rating, prev (within the
        extra rows), emb) that are not stored.  The rows are gathered into a
        table of their own first: the cost follows the rows, not the history."""
        h = self._hist
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        prev_g = h.prev[rows]
        at = np.minimum(np.searchsorted(rows, prev_g), max(rows.size - 1, 0))
        prev = np.where((prev_g >= 0) & (rows.size > 0) & (rows[at] == prev_g), at, -1) if rows.size else prev_g
        cols = {"user": h.user[rows], "llm": h.llm[rows], "rating": h.rating[rows], "prev": prev,
                "emb": h.vecs(rows)}
        if extra is not None and extra["user"].size:
            off = rows.size
            cols = {"user": np.concatenate([cols["user"], extra["user"]]),
                    "llm": np.concatenate([cols["llm"], extra["llm"]]),
                    "rating": np.concatenate([cols["rating"], extra["rating"]]),
                    "prev": np.concatenate([cols["prev"], np.where(extra["prev"] >= 0, extra["prev"] + off, -1)]),
                    "emb": np.concatenate([cols["emb"], extra["emb"]])}
        m = cols["user"].size
        table = _GrowingHistory(History(
            user=cols["user"].astype(np.int64), llm=cols["llm"].astype(np.int64),
            rating=cols["rating"].astype(np.float32), prev=cols["prev"].astype(np.int64), llm_emb=h.llm_emb,
            group=np.zeros(m, np.int64), text_emb=np.asarray(cols["emb"], np.float32),
            query_row=np.arange(m, dtype=np.int64)), h.relations, h.num_users, headroom=0)
        sub = build_subgraph(table, np.arange(m), np.zeros(0, np.int64), self.device, users=users)
        return sub.embed(self.model)

    def _rep_size(self, u: int) -> int:
        """How many of the user's rows the GNN representation is computed on: a
        schedule that depends only on the rows the checkpoint held and the rows
        since, so routers that applied the same feedback agree (restart replay,
        several processes).  It follows every feedback while the history is
        small and then each ``refresh_growth`` fraction of growth; the online
        residual takes every feedback at once either way."""
        n = self._rows_of.count(u)
        growth = float(self.config.refresh_growth)
        if growth <= 0 or not self._per_user_exact:
            return n
        # the schedule starts at the rows the checkpoint holds
        r = self._rep_rows.get(u, self._rows_of.base_count(u))
        while True:
            step = max(1, math.ceil(growth * r))
            if r + step > n:
                break
            r += step
        self._rep_rows[u] = r
        return r

    def _rep_window(self, u: int, size: int) -> np.ndarray:
        return self._rows_of.rows(u, max(0, size - int(self.config.history_window)), size)

    def _rep_key(self, u: int) -> tuple[int, int]:
        return self._rep_size(u), self._inserted.get(u, 0)

    def _ensure_user_reps(self, uidx: Sequence[int]) -> None:
        want = {u: self._rep_key(u) for u in dict.fromkeys(uidx)}
        need = [u for u, key in want.items() if (self._user_rep.get(u) or (None,))[0] != key]
        if not need:
            return
        if not self._per_user_exact:
            self._refresh_global()
            return
        rows = np.sort(np.concatenate([self._rep_window(u, want[u][0]) for u in need]))
        users = np.array(need, dtype=np.int64)
        reps = self._subgraph_reps(rows, users)
        for i, u in enumerate(need):
            self._user_rep[u] = (want[u], reps[S.USER][i] if want[u][0] else self._cold_rep)

    def _rep(self, u: int) -> Tensor:
        """The user's current GNN representation (computed if stale or evicted)."""
        self._ensure_user_reps([u])
        return self._user_rep[u][1]

    def _refresh_global(self) -> None:
        rows = np.arange(self._hist.n)
        users = np.arange(len(self.users))
        reps = self._subgraph_reps(rows, users)
        self._global_reps = reps
        for u in range(len(self.users)):
            n = self._rows_of.count(u)
            self._user_rep[u] = ((n, self._inserted.get(u, 0)), reps[S.USER][u] if n else self._cold_rep)

    def _llm_reps(self) -> Tensor:
        if self._per_user_exact:
            return self._llm_static
        if self._global_reps is None:
            self._refresh_global()
        assert self._global_reps is not None
        return self._global_reps[S.LLM]

    # -------------------------------------------------------------- validate
    def _check_id(self, value: Any, field_name: str, required: bool = True) -> str | None:
        if value is None and not required:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not _ID_RE.match(value):
            raise RoutingError(f"field {field_name!r}: expected an id of 1-256 letters, digits or ._@:+-/#, got {value!r}")
        return value

    def _check_query(self, q: Any, field_name: str = "query_text") -> str:
        if not isinstance(q, str) or not q.strip():
            raise RoutingError(f"field {field_name!r}: expected a non-empty string")
        if len(q) > MAX_QUERY_CHARS:
            raise RoutingError(f"field {field_name!r}: longer than {MAX_QUERY_CHARS} characters")
        return q

    def _check_candidates(self, cands: Any) -> list[str]:
        if cands is None:
            return self.candidates
        if not isinstance(cands, (list, tuple)) or not cands:
            raise RoutingError("field 'candidates': expected a non-empty list of LLM names")
        bad = [c for c in cands if c not in self._llm_index]
        if bad:
            raise RoutingError(f"field 'candidates': unknown LLM(s) {bad}; known: {self.llms}")
        return list(dict.fromkeys(cands))

    def _check_rating(self, rating: Any) -> float:
        lo, hi = self.rating_scale
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(float(rating)):
            raise RoutingError(f"field 'rating': expected a finite number in [{lo}, {hi}], got {rating!r}")
        if not lo <= float(rating) <= hi:
            raise RoutingError(f"field 'rating': {rating} is outside the rating scale [{lo}, {hi}]")
        return float(rating)

    # ---------------------------------------------------------------- routing
    def route_single(self, query: dict[str, Any]) -> dict[str, Any]:
        """Route one query; see :meth:`route_batch` for the fields."""
        return self.route_batch([query])[0]

    def route_batch(self, queries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Route many queries: one encoder call, one GNN call for users whose
        representation is stale, one predictor call.

        Each query: ``{"query_text", "user_id", "session_id"?, "turn"?,
        "conversation_history"?, "candidates"?}``.  Returns per query
        ``{"model_name", "confidence", "user_preference", "scores", "reasoning",
        "cold_start", "history_size"}``.
        """
        if not isinstance(queries, (list, tuple)):
            raise RoutingError("route_batch expects a list of query dicts")
        parsed = []
        for i, q in enumerate(queries):
            if not isinstance(q, dict):
                raise RoutingError(f"query {i}: expected a dict with query_text and user_id")
            text = self._check_query(q.get("query_text"))
            user = self._check_id(q.get("user_id"), "user_id")
            session = self._check_id(q.get("session_id"), "session_id", required=False)
            cands = self._check_candidates(q.get("candidates"))
            turn = q.get("turn")
            if turn is not None and (isinstance(turn, bool) or not isinstance(turn, int) or turn < 1):
                raise RoutingError(f"field 'turn': expected an integer >= 1, got {turn!r}")
            ctx = self._parse_history(q.get("conversation_history"))
            parsed.append((text, user, session, cands, turn, ctx))
        if not parsed:
            return []
        with self._lock, torch.inference_mode():
            self._refresh_for_routing([p[1] for p in parsed])
            emb = self.embed([p[0] for p in parsed])
            uidx = [self._user_index.get(p[1], -1) for p in parsed]
            known = [u for u in uidx if u >= 0]
            self._ensure_user_reps(known)
            user_vecs = []
            for (text, user, session, cands, turn, ctx), u in zip(parsed, uidx):
                if ctx:
                    user_vecs.append(self._context_rep(u, ctx))
                elif u >= 0:
                    user_vecs.append(self._rep(u))
                else:
                    user_vecs.append(self._cold_rep)
            uv = torch.stack(user_vecs)
            qx = self.model.gnn.project_query(torch.from_numpy(emb).to(self.device))
            qv = self.model.gnn.isolated(S.QUERY, qx)
            m = max(len(p[3]) for p in parsed)
            cand_idx = np.zeros((len(parsed), m), dtype=np.int64)
            mask = np.zeros((len(parsed), m), dtype=bool)
            for i, p in enumerate(parsed):
                ids = [self._llm_index[c] for c in p[3]]
                cand_idx[i, : len(ids)] = ids
                mask[i, : len(ids)] = True
            llm_vecs = self._llm_reps()[torch.from_numpy(cand_idx).to(self.device)]
            scores = self.model.score(uv, qv, llm_vecs).float().cpu().numpy().astype(np.float64)
            cold_scores = (self.model.score(self._cold_rep.expand(len(parsed), -1), qv, llm_vecs)
                           .float().cpu().numpy().astype(np.float64)
                           if self.personal.enabled and self.calibration.cold > 0 else np.zeros_like(scores))
            z = self._basis(emb)
            results = []
            for i, ((text, user, session, cands, turn, ctx), u) in enumerate(zip(parsed, uidx)):
                c_idx = cand_idx[i, : len(cands)]
                s = scores[i, : len(cands)]
                hist = self._rows_of.count(u) if u >= 0 else 0
                post = None
                if self.personal.enabled:
                    if hist == 0 and not ctx:
                        s = self.calibration.apply(s, c_idx)
                        post = self._prior
                    else:
                        post = self._posterior(u) if hist > 0 else self._prior
                        s = self.calibration.blend(s, cold_scores[i, : len(cands)], c_idx)
                        s = s * post.gnn_weight + self._residual(post.residual, c_idx, z[i])
                choice = self._choose(s, post, c_idx, z[i])
                results.append(self._result(user, session, turn, cands, s, u, bool(ctx), choice, post))
            return results

    def _residual(self, r: np.ndarray, c_idx: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Residual logits of the candidates ``c_idx`` for query features ``z``."""
        return r.reshape(len(self.llms), -1)[c_idx] @ z

    def _choose(self, s: np.ndarray, post: Posterior | None, c_idx: np.ndarray, z: np.ndarray) -> int:
        """The policy's choice among the candidates (``s``: the posterior-mean scores)."""
        if self.policy == "thompson" and post is not None:
            # sample the per-LLM terms of the residual; the topic terms stay at their mean (sampling them too
            # explores on every query's noise and measured more regret)
            mean = post.residual.reshape(len(self.llms), -1)
            scale = self.personal.thompson_scale
            if self.personal.thompson_decay > 0:
                scale *= math.sqrt(self.personal.thompson_decay / (self.personal.thompson_decay + post.n))
            draw = post.split(post.sample(self._rng, scale))[0].reshape(len(self.llms), -1)
            draw[:, 1:] = mean[:, 1:]
            if self.personal.optimistic:
                draw[:, 0] = np.maximum(draw[:, 0], mean[:, 0])
            sampled = s - self._residual(mean, c_idx, z) + self._residual(draw, c_idx, z)
            return int(np.argmax(sampled))
        if self.policy == "epsilon" and s.size > 1 and self._rng.random() < self.epsilon:
            return int(self._rng.integers(s.size))
        return int(np.argmax(s))

    def _result(self, user: str, session: str | None, turn: int | None, cands: list[str], s: np.ndarray,
                u: int, used_ctx: bool, choice: int | None = None, post: Posterior | None = None) -> dict[str, Any]:
        p = np.exp(s - s.max())
        p = p / p.sum()
        greedy = int(np.argmax(s))
        best = greedy if choice is None else int(choice)
        explore = best != greedy
        others = np.delete(s, best)
        pref = float(np.mean(1.0 / (1.0 + np.exp(-(s[best] - others))))) if others.size else 1.0
        hist = self._rows_of.count(u) if u >= 0 else 0
        cold = hist == 0 and not used_ctx
        sess_note = ""
        if session is not None:
            st = self._sessions.setdefault((user, session), _Session())
            st.turns += 1
            st.models.append(cands[best])
            sess_note = f" in session {session} (turn {turn or st.turns})"
        if cold:
            reasoning = (f"Cold start: no rated history for user {user}; {cands[greedy]} is the best "
                         f"non-personalized choice for this query (crowd-calibrated){sess_note}.")
        else:
            extra = " and the conversation's earlier turns" if used_ctx else ""
            own = ""
            if post is not None and post.n:
                own = (f"; the user's own votes ({post.n}) weigh in, "
                       f"{'a taste unlike the crowd' if post.p_wide > 0.5 else 'close to the crowd'} "
                       f"(p={post.p_wide:.2f})")
            reasoning = (f"Selected based on user {user}'s learned preferences ({hist} rated interactions){extra}"
                         f"{own} and the query{sess_note}: {cands[greedy]} has the highest predicted preference "
                         f"(p={p[greedy]:.2f} among {len(cands)} candidates).")
        if explore:
            reasoning += (f" Exploratory choice ({self.policy}): routed to {cands[best]} instead of {cands[greedy]} "
                          f"so the user can rate an alternative.")
        return {
            "model_name": cands[best],
            "confidence": float(p[best]),
            "user_preference": pref,
            "scores": {c: float(x) for c, x in zip(cands, p)},
            "reasoning": reasoning,
            "cold_start": cold,
            "history_size": hist,
            "exploration": explore,
            "policy": self.policy,
        }

    # ------------------------------------------------------ online residual
    def _history_scores(self, u: int, rows: np.ndarray) -> np.ndarray:
        """GNN logits (n, L) of every LLM for the queries of the user's history rows
        (each distinct query scored once: both sides of a comparison share it),
        with the user's current representation; rows already scored with it are
        taken from the cache."""
        if rows.size == 0:
            return np.zeros((0, len(self.llms)))
        size = self._rep_key(u)
        cached = self._offsets.get(u)
        if cached is not None and cached[0] == size and self._per_user_exact:
            c_rows, c_scores = cached[1], cached[2]
            missing = rows[~np.isin(rows, c_rows)]
            if missing.size:
                c_rows = np.concatenate([c_rows, missing])
                c_scores = np.concatenate([c_scores, self._score_history(u, missing)])
            srt = np.argsort(c_rows, kind="stable")
            scores = c_scores[srt[np.searchsorted(c_rows[srt], rows)]]
        else:
            scores = self._score_history(u, rows)
        self._offsets[u] = (size, rows, scores)
        return scores

    def _score_history(self, u: int, rows: np.ndarray) -> np.ndarray:
        if rows.size == 0:
            return np.zeros((0, len(self.llms)))
        grp = self._hist.group[rows]
        _, first, inv = np.unique(grp, return_index=True, return_inverse=True)
        emb = torch.from_numpy(np.ascontiguousarray(self._hist.vecs(rows[first]))).to(self.device)
        qv = self.model.gnn.isolated(S.QUERY, self.model.gnn.project_query(emb))
        llm = self._llm_reps()
        n = first.size
        s = self.model.score(self._rep(u).expand(n, -1), qv, llm.expand(n, -1, -1)).float().cpu().numpy()
        c = (self.model.score(self._cold_rep.expand(n, -1), qv, llm.expand(n, -1, -1)).float().cpu().numpy()
             if self.calibration.cold > 0 else s)
        s = self.calibration.blend(s, c, np.arange(len(self.llms))[None, :])
        return np.asarray(s, dtype=np.float64)[inv.reshape(-1)]

    def _posterior(self, u: int) -> Posterior:
        post = self._post.get(u)
        if post is None:
            h = self._hist
            # the residual's window only looks back this far (its per-LLM part at most L x window_per_llm rows)
            rows = self._rows_of.rows(u, -window_lookback(self.personal))
            rows = rows[window_rows(h.llm[rows], self.personal)]
            ev = build_evidence(h.group[rows], h.llm[rows], h.rating[rows], self._zrows(rows),
                                self._history_scores(u, rows), self.personal)
            post = fit_posterior(ev, self.personal, len(self.llms), self._basis.dims)
            self._post[u] = post
        return post

    def _zrows(self, rows: np.ndarray) -> np.ndarray:
        """The residual's query features of history rows (texts added since are featurised on demand)."""
        h = self._hist
        done = self._ztext_n
        if done < h.n_text:
            if self._ztext.shape[0] < h.n_text:  # amortised growth
                grown = np.zeros((h.n_text + max(256, h.n_text // 4), self._ztext.shape[1]))
                grown[:done] = self._ztext[:done]
                self._ztext = grown
            self._ztext[done:h.n_text] = self._basis(h.text[done:])
            self._ztext_n = h.n_text
        return self._ztext[h.query_row[rows]]

    def posterior(self, user_id: str) -> Posterior | None:
        """The user's residual posterior (None for a user without rated history)."""
        self._ensure_loaded([user_id])
        u = self._user_index.get(user_id)
        if u is None or not self._rows_of.count(u):
            return None
        with self._lock, torch.inference_mode():
            return self._posterior(u)

    def _fit_calibration(self) -> CrowdCalibration:
        """Cold-start calibration: the one training stored in the checkpoint, else
        the crowd's Bradley-Terry on the checkpoint history's comparison pairs."""
        stored = self.checkpoint.meta.get("cold_calibration")
        if isinstance(stored, dict) and len(stored.get("bias", [])) == len(self.llms):
            return CrowdCalibration.from_dict(stored)
        h = self._hist
        a, b, label = group_pairs(h.group, h.rating)
        return CrowdCalibration(alpha=0.0, bias=fit_bias(h.llm[a], h.llm[b], label, len(self.llms)))

    # ------------------------------------------------------ multi-turn context
    def _parse_history(self, hist: Any) -> list[tuple[str, str, float]]:
        """``conversation_history`` entries that carry a model and a rating are
        multi-turn context (rated earlier turns); others are ignored."""
        if hist is None:
            return []
        if not isinstance(hist, list):
            raise RoutingError("field 'conversation_history': expected a list")
        out = []
        for i, h in enumerate(hist):
            if isinstance(h, str):
                continue
            if not isinstance(h, dict):
                raise RoutingError(f"field 'conversation_history[{i}]': expected a string or an object")
            if h.get("model") is None or h.get("rating") is None:
                continue
            q = self._check_query(h.get("query"), f"conversation_history[{i}].query")
            if h["model"] not in self._llm_index:
                raise RoutingError(f"field 'conversation_history[{i}].model': unknown LLM {h['model']!r}")
            out.append((q, h["model"], self._check_rating(h["rating"])))
        return out[-self.config.history_turns:]

    def _context_rep(self, u: int, ctx: list[tuple[str, str, float]]) -> Tensor:
        """User representation with the conversation's rated earlier turns added
        as a prev-linked chain of sessions (not stored)."""
        emb = self.embed([c[0] for c in ctx])
        n = len(ctx)
        lo, hi = self.rating_scale
        user_local = u if u >= 0 else len(self.users)
        rows = self._rows_of.rows(u, -int(self.config.history_window)) if u >= 0 else np.zeros(0, np.int64)
        extra = {"user": np.full(n, user_local, dtype=np.int64),
                 "llm": np.array([self._llm_index[c[1]] for c in ctx], dtype=np.int64),
                 "rating": normalise_ratings(np.array([c[2] for c in ctx]), lo, hi),
                 "prev": np.arange(n, dtype=np.int64) - 1, "emb": emb}
        if not self._per_user_exact:
            rows = np.arange(self._hist.n)
            users = np.arange(len(self.users) + (1 if u < 0 else 0))
        else:
            users = np.array([user_local], dtype=np.int64)
        reps = self._subgraph_reps(rows, users, extra)
        return reps[S.USER][int(np.flatnonzero(users == user_local)[0])]

    # --------------------------------------------------------------- feedback
    def _check_turn(self, turn: Any) -> int | None:
        if turn is not None and (isinstance(turn, bool) or not isinstance(turn, int) or turn < 1):
            raise RoutingError(f"field 'turn': expected an integer >= 1, got {turn!r}")
        return turn

    def _check_model(self, model: Any, field_name: str = "model") -> str:
        if not isinstance(model, str) or model not in self._llm_index:
            raise RoutingError(f"field {field_name!r}: unknown LLM {model!r}; known: {self.llms}")
        return model

    def update_user_feedback(self, user_id: str, query: str, model: str, rating: float,
                             session_id: str | None = None, turn: int | None = None) -> dict[str, Any]:
        """Add a rated interaction to the user's history (live graph) and the
        durable feedback log; the next route for this user reflects it.

        Two ratings of different LLMs for the same query text are a comparison."""
        t0 = time.perf_counter()
        user_id = self._check_id(user_id, "user_id")  # type: ignore[assignment]
        query = self._check_query(query, "query")
        session_id = self._check_id(session_id, "session_id", required=False)
        model = self._check_model(model)
        raw = self._check_rating(rating)
        turn = self._check_turn(turn)
        emb = self.embed([query])[0]
        with self._lock:
            self._ensure_loaded([user_id])
            self._maybe_sync()
            ids = None
            if self.feedback_log is not None:
                ids = [self.feedback_log.append(user_id, query, model, raw, session_id=session_id, turn=turn)]
                self._own_ids.update(ids)
            u = self._apply(user_id, query, model, raw, session_id, None, emb, order=ids[0] if ids else None)
        return {"user_id": user_id, "model": model, "rating": raw, "history_size": self._rows_of.count(u),
                "feedback_id": ids[0] if ids else None, "applied_ms": (time.perf_counter() - t0) * 1000.0}

    def update_user_preference(self, user_id: str, query: str, preferred: str, rejected: str,
                               session_id: str | None = None, turn: int | None = None) -> dict[str, Any]:
        """Pairwise feedback: for this query the user preferred ``preferred`` over
        ``rejected``.  Stored as two log rows in one transaction (top and bottom
        of the rating scale, one comparison key) and applied at once."""
        t0 = time.perf_counter()
        user_id = self._check_id(user_id, "user_id")  # type: ignore[assignment]
        query = self._check_query(query, "query")
        session_id = self._check_id(session_id, "session_id", required=False)
        preferred = self._check_model(preferred, "preferred")
        rejected = self._check_model(rejected, "rejected")
        if preferred == rejected:
            raise RoutingError("field 'rejected': must differ from 'preferred'")
        turn = self._check_turn(turn)
        lo, hi = self.rating_scale
        key = f"pref:{uuid.uuid4().hex}"
        emb = self.embed([query])[0]
        rows = [dict(user_id=user_id, query=query, model=preferred, rating=hi, session_id=session_id, turn=turn,
                     query_id=key),
                dict(user_id=user_id, query=query, model=rejected, rating=lo, session_id=session_id, turn=turn,
                     query_id=key)]
        with self._lock:
            self._ensure_loaded([user_id])
            self._maybe_sync()
            ids = None
            if self.feedback_log is not None:
                ids = self.feedback_log.append_many(rows)
                self._own_ids.update(ids)
            for i, r in enumerate(rows):
                u = self._apply(user_id, query, r["model"], r["rating"], session_id, key, emb,
                                order=ids[i] if ids else None)
        return {"user_id": user_id, "preferred": preferred, "rejected": rejected, "feedback_ids": ids,
                "history_size": self._rows_of.count(u), "applied_ms": (time.perf_counter() - t0) * 1000.0}

    def _apply(self, user_id: str, query: str, model: str, raw: float, session_id: str | None,
               query_id: str | None, emb: np.ndarray, link_session: bool = True, order: int | None = None) -> int:
        """Append one rated interaction to the live history (caller holds the lock).

        ``order``: the row's feedback-log id.  A user's rows are kept in the
        order of these ids (the checkpoint's rows first; rows without a log in
        the order they came), so whatever depends on the order (the refresh
        schedule's rows, the residual's window) depends only on the set of
        rows applied, not on the order in which they arrived."""
        u = self._user_index.get(user_id)
        if u is None:
            u = self._user_index[user_id] = len(self.users)
            self.users.append(user_id)
        lo, hi = self.rating_scale
        norm = float(normalise_ratings(raw, lo, hi))
        gkey = (user_id, query_id if query_id else "text:" + query)
        group = self._group_key.get(gkey)
        if group is None:
            group = self._group_key[gkey] = self._next_group
            self._next_group += 1
        prev = -1
        st = None
        if session_id is not None:
            st = self._sessions.setdefault((user_id, session_id), _Session())
            prev = st.last_row
            if query_id is not None and st.last_row >= 0 and self._hist.group[st.last_row] == group:
                prev = int(self._hist.prev[st.last_row])  # both sides of one comparison follow the same turn
        if order is None:
            self._unlogged += 1
            order = _UNLOGGED + self._unlogged
        text_row = self._text_row.get(query)
        if text_row is None:
            text_row = self._text_row[query] = self._hist.add_text(emb)
        row = self._hist.append(u, self._llm_index[model], norm, prev, text_row, group, order)
        if self._rows_of.add(u, row, self._hist.order):
            self._inserted[u] = self._inserted.get(u, 0) + 1  # earlier rows changed: cached results are stale
        if st is not None and (query_id is None or st.last_row < 0 or self._hist.group[st.last_row] != group):
            st.last_row = row
        if self._per_user_exact:
            self._post.pop(u, None)  # the representation follows its schedule (_rep_size)
        else:
            self._user_rep.clear()
            self._post.clear()
            self._offsets.clear()
            self._global_reps = None
        return u

    def _ensure_loaded(self, user_ids: Sequence[str]) -> None:
        """Read the stored rows of users this router has not loaded yet (lazy stores only): the rows newer
        than the checkpoint's training data (and those it read but could not use) up to the sync point;
        newer rows come with the sync.  The same set of rows as a replay at start, so routing agrees."""
        if self._loaded is None:
            return
        new = [u for u in dict.fromkeys(user_ids) if u not in self._loaded]
        if not new:
            return
        with self._lock:
            since = min([self.feedback_through_id] + [i - 1 for i in self._unmerged])
            for user in new:
                if user in self._loaded:
                    continue
                rows = [r for r in self.feedback_log.read_user(user, since_id=since, through_id=self._synced_id)
                        if r.id > self.feedback_through_id or r.id in self._unmerged]
                self.replayed += self._apply_rows(rows)
                self._loaded.add(user)

    def _refresh_for_routing(self, user_ids: Sequence[str]) -> None:
        """Load new users and sync before routing; when the store cannot be reached (a PostgreSQL server
        down), route with what this router holds, log it, and try again after ``feedback_sync_interval``
        (a user that could not be loaded is loaded on a later call).  Feedback still fails then."""
        if self.feedback_log is None or time.monotonic() < self._store_retry_at:
            return
        try:
            self._ensure_loaded(user_ids)
            self._maybe_sync()
        except OSError as exc:  # FeedbackStoreError
            self._last_sync = time.monotonic()
            self._store_retry_at = self._last_sync + max(1.0, float(self.config.feedback_sync_interval))
            log.warning("routing without the feedback store for now: %s", exc)

    def _maybe_sync(self) -> None:
        iv = self.config.feedback_sync_interval
        if self.feedback_log is None or iv < 0:
            return
        if time.monotonic() - self._last_sync >= iv:
            self.sync_feedback()

    def sync_feedback(self, force: bool = False) -> int:
        """Apply the log rows appended (by any process) since the last sync, in id
        order, skipping this router's own; returns how many were applied."""
        if self.feedback_log is None:
            return 0
        with self._lock:
            rows = self.feedback_log.read(since_id=self._synced_id)
            self._last_sync = time.monotonic()
            applied = self._apply_rows([r for r in rows if r.id not in self._own_ids
                                        and (self._loaded is None or r.user_id in self._loaded)])
            if rows:
                self._synced_id = rows[-1].id
                self._own_ids = {i for i in self._own_ids if i > self._synced_id}
            return applied

    def _apply_rows(self, rows: list) -> int:
        """Apply feedback-log rows (in the given order); rows naming an LLM or a user id this
        router cannot take are skipped.  Returns how many were applied."""
        valid = [r for r in rows if r.model in self._llm_index and isinstance(r.user_id, str)
                 and _ID_RE.match(r.user_id)]
        if not valid:
            return 0
        texts = list(dict.fromkeys(r.query for r in valid))
        emb = self.embed(texts)
        by_text = {t: i for i, t in enumerate(texts)}
        lo, hi = self.rating_scale
        with self._lock:
            for r in valid:
                raw = min(max(float(r.rating), lo), hi)
                self._apply(r.user_id, r.query, r.model, raw, r.session_id, r.query_id, emb[by_text[r.query]],
                            order=r.id)
        return len(valid)

    def history(self) -> History:
        """The current rated history (checkpoint + feedback)."""
        with self._lock:
            hist = self._hist
            return History(user=hist.user.copy(), llm=hist.llm.copy(), rating=hist.rating.copy(),
                           prev=hist.prev.copy(), llm_emb=self.checkpoint.history.llm_emb, group=hist.group.copy(),
                           text_emb=hist.text.copy(), query_row=hist.query_row.copy())


#: order keys of rows applied without a feedback log come after every log id
_UNLOGGED = 1 << 52


class _LRU(OrderedDict):
    """A dict that keeps its ``capacity`` most recently used entries."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
            return super().__getitem__(key)
        return default

    def __getitem__(self, key):
        self.move_to_end(key)
        return super().__getitem__(key)

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class _GrowingHistory:
    """Rated interactions as numpy columns with amortised O(1) appends; query
    embeddings deduplicated (a growing text table and each row's index in it)."""

    _COLS = ("_user", "_llm", "_rating", "_prev", "_query_row", "_group", "_order")

    def __init__(self, h: History, relations: Sequence[S.EdgeType], num_users: int, headroom: int = 1024) -> None:
        self.relations = tuple(relations)
        self.llm_emb = np.asarray(h.llm_emb, np.float32)
        self.num_users = int(num_users)  # grows with the users feedback adds
        self.n = int(h.user.size)
        cap = self.n + max(headroom, self.n // 4 if headroom else 0)
        self._user = np.zeros(cap, np.int64)
        self._llm = np.zeros(cap, np.int64)
        self._rating = np.zeros(cap, np.float32)
        self._prev = np.full(cap, -1, np.int64)
        self._query_row = np.zeros(cap, np.int64)
        self._group = np.zeros(cap, np.int64)
        self._order = np.arange(cap, dtype=np.int64) - self.n - _UNLOGGED  # checkpoint rows first
        if h.deduplicated:
            text, qrow = np.asarray(h.text_emb, np.float32), np.asarray(h.query_row, np.int64)
        else:
            text, qrow = np.asarray(h.query_emb, np.float32), np.arange(self.n, dtype=np.int64)
        self.n_text = int(text.shape[0])
        self._text = np.zeros((self.n_text + (max(256, self.n_text // 4) if headroom else 0), text.shape[1]), np.float32)
        self._text[: self.n_text] = text
        for name, src in (("_user", h.user), ("_llm", h.llm), ("_rating", h.rating), ("_prev", h.prev),
                          ("_query_row", qrow), ("_group", h.group)):
            getattr(self, name)[: self.n] = src

    def add_text(self, emb: np.ndarray) -> int:
        if self.n_text == self._text.shape[0]:
            new = np.zeros((self._text.shape[0] + max(256, self._text.shape[0] // 4),) + self._text.shape[1:],
                           np.float32)
            new[: self.n_text] = self._text[: self.n_text]
            self._text = new
        self._text[self.n_text] = emb
        self.n_text += 1
        return self.n_text - 1

    def append(self, user: int, llm: int, rating: float, prev: int, text_row: int, group: int, order: int) -> int:
        if self.n == self._user.shape[0]:
            grow = max(1024, self.n // 4)
            for name in self._COLS:
                old = getattr(self, name)
                new = np.zeros((old.shape[0] + grow,) + old.shape[1:], old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        row = self.n
        self.num_users = max(self.num_users, int(user) + 1)
        self._user[row], self._llm[row], self._rating[row], self._prev[row] = user, llm, rating, prev
        self._query_row[row], self._group[row], self._order[row] = text_row, group, order
        self.n += 1
        return row

    def vecs(self, rows: np.ndarray) -> np.ndarray:
        """float32 (len(rows), d) query embeddings of the given rows."""
        return self._text[self._query_row[np.asarray(rows, dtype=np.int64)]]

    user = property(lambda self: self._user[: self.n])
    llm = property(lambda self: self._llm[: self.n])
    rating = property(lambda self: self._rating[: self.n])
    prev = property(lambda self: self._prev[: self.n])
    query_row = property(lambda self: self._query_row[: self.n])
    text = property(lambda self: self._text[: self.n_text])
    text_emb = text  # the interactions-table names the engine's subgraph builder reads
    num_interactions = property(lambda self: self.n)
    group = property(lambda self: self._group[: self.n])
    order = property(lambda self: self._order[: self.n])


class _UserRows:
    """Each user's rows in order: the checkpoint's rows as one sorted index
    (no per-row Python objects), then the rows added since, per user."""

    def __init__(self, user: np.ndarray, num_users: int) -> None:
        user = np.asarray(user, np.int64)
        self._order = np.argsort(user, kind="stable")
        self._starts = np.searchsorted(user[self._order], np.arange(num_users + 1))
        self._base_users = num_users
        self._extra: dict[int, list[int]] = {}

    def base_count(self, u: int) -> int:
        return int(self._starts[u + 1] - self._starts[u]) if 0 <= u < self._base_users else 0

    def count(self, u: int) -> int:
        return self.base_count(u) + len(self._extra.get(u, ()))

    def rows(self, u: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Positions ``start:stop`` of the user's rows (negative ``start`` counts from the end)."""
        n = self.count(u)
        lo, hi, _ = slice(start, stop).indices(n)
        nb = self.base_count(u)
        parts = []
        if lo < nb:
            b0 = int(self._starts[u]) if u < self._base_users else 0
            parts.append(self._order[b0 + lo: b0 + min(hi, nb)])
        if hi > nb:
            parts.append(np.asarray(self._extra.get(u, [])[max(lo, nb) - nb: hi - nb], dtype=np.int64))
        return np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else np.zeros(0, np.int64))

    def add(self, u: int, row: int, order: np.ndarray) -> bool:
        """Add a new row in ``order`` (log ids); True when it went before the user's last row."""
        extra = self._extra.setdefault(u, [])
        if extra and order[extra[-1]] > order[row]:
            bisect.insort(extra, row, key=order.__getitem__)
            return True
        extra.append(row)
        return False
