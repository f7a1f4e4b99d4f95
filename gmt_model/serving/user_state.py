"""The router's user state: the live rated history, the users' GNN
representations (cache and refresh schedule), their online residual
posteriors, and how feedback is applied and followed across processes.

A user's representation is the HeteroGNN output over that user's history; it
is cached and recomputed only when the user's history changes (on the
schedule of :meth:`UserState.rep_size`), so feedback shapes the very next
route without retraining.  Under the reference relation set a user's
representation depends only on that user's own sessions and LLM / query
nodes receive no messages, so routing needs one small GNN call per changed
user.  Under other relation sets (``full``) LLM and query nodes receive
messages from everybody's history; the state then recomputes the whole
history graph after feedback (exact, slower).

Consistency model of the feedback log: every process applies its own
feedback at once (read-your-writes), appends it to the shared log, and
applies rows that other processes appended on its next sync
(:meth:`UserState.sync`).  Processes that have applied the same rows agree
(routing depends on the set of rows, not on the order in which different
users' rows arrived): a user's rows are kept in log-id order.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from gmt_model.method import schema as S
from gmt_model.method.checkpoint import History
from gmt_model.method.config import RouterConfig
from gmt_model.method.engine import build_subgraph
from gmt_model.method.graph import normalise_ratings
from gmt_model.method.model import GMTModel
from gmt_model.method.personal import (
    CrowdCalibration,
    PersonalConfig,
    Posterior,
    QueryBasis,
    Evidence,
    build_evidence,
    detect_change,
    fit_posterior,
    task_columns,
    window_lookback,
    window_rows,
)
from gmt_model.serving.live_history import LRU, UNLOGGED, GrowingHistory, UserRows
from gmt_model.serving.llm_pool import CROWD_WINDOW, crowd_schedule, crowd_votes, CrowdEstimate, LLMPool, unit_rows
from gmt_model.errors import RoutingError
from gmt_model.serving.requests import ID_RE, check_task
from gmt_model.serving.scorer import Scorer
from gmt_model.serving.user_gnn import UserGNN

__all__ = ["UserState"]


@dataclass
class _Session:
    last_row: int = -1  # history row of the last rated turn
    turns: int = 0
    models: list[str] = field(default_factory=list)


class UserState:
    """History, representations and posteriors of the router's users (see the module doc).

    The caller (the router) holds ``lock`` around every call."""

    def __init__(self, model: GMTModel, device: torch.device, config: RouterConfig, personal: PersonalConfig,
                 history: History, users: Sequence[str], pool: LLMPool, rating_scale: tuple[float, float]) -> None:
        self.model, self.device, self.config, self.personal = model, device, config, personal
        self.pool = pool
        self.rating_scale = rating_scale
        self.users: list[str] = list(users)
        self.user_index = {u: i for i, u in enumerate(self.users)}
        self.n_base_users = len(self.users)  # the checkpoint's users (never evicted: their rows are its history)
        self._free_users: list[int] = []  # indices of evicted users that feedback added, for new users
        self.hist = GrowingHistory(history, model.cfg.edge_types, len(self.users))
        self.base_rows, self.base_texts = self.hist.n, self.hist.n_text
        self.rows_of = UserRows(history.user, len(self.users))
        self.text_row: dict[str, int] = {}  # feedback query text -> its row in the history's text table
        self.rep_rows: dict[int, int] = {}
        self.unlogged = 0
        self.inserted: dict[int, int] = {}  # users whose earlier rows changed (deterministic schedule)
        self.sessions: dict[tuple[str, str], _Session] = {}
        cache = max(1, int(config.cache_users))
        self.user_rep: LRU = LRU(cache)  # u -> (rows, representation)
        self.post: LRU = LRU(cache)  # u -> (crowd version, Posterior)
        self.offsets: LRU = LRU(cache)  # u -> (rep rows, history rows, GNN logits of those rows)
        self.per_user_exact = set(model.cfg.edge_types) <= set(S.REFERENCE_RELATIONS)
        self.global_reps: dict[str, Tensor] | None = None
        self.group_key: dict[tuple[str, str], int] = {}
        h = history
        self.next_group = int(h.group.max()) + 1 if h.group is not None and h.group.size else 0
        self.group_rows: dict[int, list[int]] = {}  # feedback groups that rated an added LLM -> their rows
        # the tasks callers named (a row's task is an index into task_names; -1: none)
        self.task_names: list[str] = []
        self.task_id: dict[str, int] = {}
        with torch.inference_mode():
            self.cold_rep = model.gnn.isolated(S.USER, model.gnn.user_start[None, :])[0]
        #: users' representations computed from their rows directly (reference relations: per_user_exact)
        self.user_gnn: UserGNN | None = None
        self.scorer = Scorer(model.predictor)  # model.score's values, the LLMs' share once per LLM
        self.refresh_llms()
        self.basis = QueryBasis.from_rows(self.hist.text, self.hist.query_row, personal.query_dims)
        # the residual's query features of every text of the history, computed once per text
        self._ztext = np.concatenate([self.basis(self.hist.text[i:i + 65536])
                                      for i in range(0, self.hist.n_text, 65536)] or
                                     [np.zeros((0, self.basis.dims + 1))])
        self._ztext_n = self.hist.n_text
        self.calibration: CrowdCalibration | None = None  # set by the router
        self.crowd = CrowdEstimate(featurize=self.crowd_scores)
        self.crowd_dirty = False
        self.crowd_window = CROWD_WINDOW
        self._crowd_key: tuple | None = None  # (rows fitted, pool version, generation) of the last fit
        self._crowd_gen = 0  # bumped when rows of added LLMs leave (eviction)
        self._cold_cache: dict[int, np.ndarray] = {}  # text row -> calibrated cold scores (this pool version)
        self._cold_cache_version = -1
        # durable feedback: rows up to synced_id are applied
        self.synced_id = 0
        self.own_ids: set[int] = set()
        self.last_sync = 0.0
        self.prior = self._fit_prior()

    # ------------------------------------------------------------------ the LLMs
    def refresh_llms(self) -> None:
        """After a pool change: the LLM nodes' features and everything computed from them."""
        self.hist.llm_emb = self.pool.emb
        with torch.inference_mode():
            llm_x = self.model.gnn.project_llm(torch.from_numpy(self.pool.emb).to(self.device))
            self.llm_static = self.model.gnn.isolated(S.LLM, llm_x)
        if self.per_user_exact:
            if self.user_gnn is None:
                self.user_gnn = UserGNN(self.model.gnn, llm_x)
            else:
                self.user_gnn.set_llms(llm_x)
        self.user_rep.clear()
        self.post.clear()
        self.offsets.clear()
        self.global_reps = None
        self.crowd_dirty = True
        if hasattr(self, "basis"):
            self.prior = self._fit_prior()

    def _fit_prior(self) -> Posterior:
        n = len(self.pool)
        return fit_posterior(build_evidence(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                                            np.zeros((0, self.basis.dims + 1)), np.zeros((0, n)), self.personal),
                             self.personal, n, self.basis.dims)

    def extend_calibration(self) -> None:
        """Added LLMs get the average crowd strength (0: the biases are centred) in the cold-start calibration;
        their own strength is the crowd estimate's."""
        c = self.calibration
        n = len(self.pool)
        if c is not None and c.bias.size < n:
            c.bias = np.concatenate([c.bias, np.zeros(n - c.bias.size)])

    # ------------------------------------------------------------------ histories
    def history_size(self, user_id: str) -> int:
        u = self.user_index.get(user_id)
        return 0 if u is None else self.rows_of.count(u)

    def subgraph_reps(self, rows: np.ndarray, users: np.ndarray, extra: dict[str, np.ndarray] | None = None
                      ) -> dict[str, Tensor]:
        """GNN over the history rows, with user nodes ``users`` only (the engine's
        subgraph builder, as in training and evaluation), plus optional extra
        context interactions (``extra``: user, llm, rating, prev (within the
        extra rows), emb) that are not stored.  The rows are gathered into a
        table of their own first: the cost follows the rows, not the history."""
        h = self.hist
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
        table = GrowingHistory(History(
            user=cols["user"].astype(np.int64), llm=cols["llm"].astype(np.int64),
            rating=cols["rating"].astype(np.float32), prev=cols["prev"].astype(np.int64), llm_emb=h.llm_emb,
            group=np.zeros(m, np.int64), text_emb=np.asarray(cols["emb"], np.float32),
            query_row=np.arange(m, dtype=np.int64)), h.relations, h.num_users, headroom=0)
        sub = build_subgraph(table, np.arange(m), np.zeros(0, np.int64), self.device, users=users)
        return sub.embed(self.model)

    def rep_size(self, u: int) -> int:
        """How many of the user's rows the GNN representation is computed on: a
        schedule that depends only on the rows the checkpoint held and the rows
        since, so routers that applied the same feedback agree (restart replay,
        several processes).  It follows every feedback while the history is
        small and then each ``refresh_growth`` fraction of growth; the online
        residual takes every feedback at once either way."""
        n = self.rows_of.count(u)
        growth = float(self.config.refresh_growth)
        if growth <= 0 or not self.per_user_exact:
            return n
        # the schedule starts at the rows the checkpoint holds
        r = self.rep_rows.get(u, self.rows_of.base_count(u))
        while True:
            step = max(1, math.ceil(growth * r))
            if r + step > n:
                break
            r += step
        self.rep_rows[u] = r
        return r

    def rep_window(self, u: int, size: int) -> np.ndarray:
        return self.rows_of.rows(u, max(0, size - int(self.config.history_window)), size)

    def rep_key(self, u: int) -> tuple[int, int]:
        return self.rep_size(u), self.inserted.get(u, 0)

    def ensure_user_reps(self, uidx: Sequence[int]) -> None:
        want = {u: self.rep_key(u) for u in dict.fromkeys(uidx)}
        need = [u for u, key in want.items() if (self.user_rep.get(u) or (None,))[0] != key]
        if not need:
            return
        if not self.per_user_exact:
            self.refresh_global()
            return
        rows = np.sort(np.concatenate([self.rep_window(u, want[u][0]) for u in need]))
        users = np.array(need, dtype=np.int64)
        reps = self.user_reps(rows, users)
        for i, u in enumerate(need):
            self.user_rep[u] = (want[u], reps[i] if want[u][0] else self.cold_rep)

    def user_reps(self, rows: np.ndarray, users: np.ndarray) -> Tensor:
        """(len(users), h) GNN representations of ``users`` over the history ``rows`` (sorted; each of
        them owned by one of the users): what ``subgraph_reps(rows, users)[USER]`` gives, computed directly
        from the rows (:class:`~gmt_model.serving.user_gnn.UserGNN`) under the reference relations."""
        if self.user_gnn is None:
            return self.subgraph_reps(rows, users)[S.USER]
        h = self.hist
        rows = np.asarray(rows, dtype=np.int64)
        prev_g = h.prev[rows]
        at = np.minimum(np.searchsorted(rows, prev_g), max(rows.size - 1, 0))
        prev = np.where((prev_g >= 0) & (rows[at] == prev_g), at, -1) if rows.size else prev_g
        texts, text_of = np.unique(h.query_row[rows], return_inverse=True)
        order = np.argsort(users, kind="stable")
        pos = order[np.searchsorted(users[order], h.user[rows])]
        with torch.inference_mode():
            return self.user_gnn.reps(pos, h.llm[rows], h.rating[rows], prev, text_of.reshape(-1),
                                      h.text[texts], int(users.size))

    def rep(self, u: int) -> Tensor:
        """The user's current GNN representation (computed if stale or evicted)."""
        self.ensure_user_reps([u])
        return self.user_rep[u][1]

    def refresh_global(self) -> None:
        rows = np.arange(self.hist.n)
        users = np.arange(len(self.users))
        reps = self.subgraph_reps(rows, users)
        self.global_reps = reps
        for u in range(len(self.users)):
            n = self.rows_of.count(u)
            self.user_rep[u] = ((n, self.inserted.get(u, 0)), reps[S.USER][u] if n else self.cold_rep)

    def llm_reps(self) -> Tensor:
        if self.per_user_exact:
            return self.llm_static
        if self.global_reps is None:
            self.refresh_global()
        assert self.global_reps is not None
        return self.global_reps[S.LLM]

    def context_rep(self, u: int, ctx: Sequence[tuple[str, str, float]], emb: np.ndarray) -> Tensor:
        """User representation with the conversation's rated earlier turns added
        as a prev-linked chain of sessions (not stored); ``emb``: their query embeddings."""
        n = len(ctx)
        lo, hi = self.rating_scale
        user_local = u if u >= 0 else len(self.users)
        rows = self.rows_of.rows(u, -int(self.config.history_window)) if u >= 0 else np.zeros(0, np.int64)
        extra = {"user": np.full(n, user_local, dtype=np.int64),
                 "llm": np.array([self.pool.index[c[1]] for c in ctx], dtype=np.int64),
                 "rating": normalise_ratings(np.array([c[2] for c in ctx]), lo, hi),
                 "prev": np.arange(n, dtype=np.int64) - 1, "emb": emb}
        if not self.per_user_exact:
            rows = np.arange(self.hist.n)
            users = np.arange(len(self.users) + (1 if u < 0 else 0))
        else:
            users = np.array([user_local], dtype=np.int64)
        reps = self.subgraph_reps(rows, users, extra)
        return reps[S.USER][int(np.flatnonzero(users == user_local)[0])]

    # ------------------------------------------------------------------ online residual
    def history_scores(self, u: int, rows: np.ndarray) -> np.ndarray:
        """GNN logits (n, L) of every LLM for the queries of the user's history rows
        (each distinct query scored once: both sides of a comparison share it),
        with the user's current representation; rows already scored with it are
        taken from the cache."""
        if rows.size == 0:
            return np.zeros((0, len(self.pool)))
        size = self.rep_key(u)
        cached = self.offsets.get(u)
        if cached is not None and cached[0] == size and self.per_user_exact:
            c_rows, c_scores = cached[1], cached[2]
            missing = rows[~np.isin(rows, c_rows)]
            if missing.size:
                c_rows = np.concatenate([c_rows, missing])
                c_scores = np.concatenate([c_scores, self._score_history(u, missing)])
            srt = np.argsort(c_rows, kind="stable")
            scores = c_scores[srt[np.searchsorted(c_rows[srt], rows)]]
        else:
            scores = self._score_history(u, rows)
        self.offsets[u] = (size, rows, scores)
        return scores

    def _score_history(self, u: int, rows: np.ndarray) -> np.ndarray:
        return self._score_rows(np.full(rows.size, u, dtype=np.int64), rows)

    def _score_rows(self, owner: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Base scores (n, L) of history rows, each with its owner's current representation; one GNN call
        (each (owner, query) scored once: both sides of a comparison share it)."""
        if rows.size == 0:
            return np.zeros((0, len(self.pool)))
        assert self.calibration is not None
        key = owner.astype(np.int64) * (int(self.next_group) + 1) + self.hist.group[rows]
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        emb = torch.from_numpy(np.ascontiguousarray(self.hist.vecs(rows[first]))).to(self.device)
        qv = self.model.gnn.isolated(S.QUERY, self.model.gnn.project_query(emb))
        llm = self.llm_reps()
        n = first.size
        owners = owner[first]
        if np.all(owners == owners[0]):
            uv = self.rep(int(owners[0])).expand(n, -1)
        else:
            uniq, pos = np.unique(owners, return_inverse=True)
            uv = torch.stack([self.rep(int(x)) for x in uniq])[torch.from_numpy(pos.reshape(-1)).to(self.device)]
        cal = self.calibration
        if cal.cold > 0 and self.per_user_exact:  # the user-blind part depends on the text only: cached per text
            texts = self.hist.query_row[rows[first]]
            missing = self._cold_missing(texts)
            if missing:  # the cold-start user's scores of texts not cached yet in the same call
                listed = texts.tolist()
                at = {t: i for i, t in enumerate(listed)}
                sel = torch.tensor([at[t] for t in missing], device=qv.device)
                both = self.scorer(torch.cat([uv, self.cold_rep.expand(len(missing), -1)]), torch.cat([qv, qv[sel]]),
                                   llm).float().cpu().numpy()
                s = both[:n]
                self._cold_store(missing, both[n:])
            else:
                s = self.scorer(uv, qv, llm).float().cpu().numpy()
            s = cal.warm * np.asarray(s, dtype=np.float64) + cal.cold * self._cold_scores(texts)
        else:
            s = self.scorer(uv, qv, llm).float().cpu().numpy()
            c = (self.scorer(self.cold_rep.expand(n, -1), qv, llm).float().cpu().numpy()
                 if cal.cold > 0 else s)
            s = cal.blend(s, c, np.arange(len(self.pool))[None, :])
        return np.asarray(s, dtype=np.float64)[inv.reshape(-1)]

    def residual_rows(self, u: int) -> np.ndarray:
        """The user's history rows the residual is fitted on (its window; the per-LLM part looks back at
        most ``window_lookback`` rows)."""
        rows = self.rows_of.rows(u, -window_lookback(self.personal))
        return rows[window_rows(self.hist.llm[rows], self.personal)]

    def prefetch_posteriors(self, uidx: Sequence[int]) -> None:
        """Before a batch is routed: the history rows not scored yet of every user whose residual must be
        refitted, scored in ONE GNN call (the refits then find them cached: :meth:`history_scores`)."""
        if not (self.personal.enabled and self.per_user_exact):
            return
        jobs = []
        for u in dict.fromkeys(x for x in uidx if x >= 0):
            cached = self.post.get(u)
            if (cached is not None and cached[0] == self.crowd.version) or self.rows_of.count(u) == 0:
                continue
            rows, size = self.residual_rows(u), self.rep_key(u)
            off = self.offsets.get(u)
            off = off if off is not None and off[0] == size else None
            missing = rows if off is None else rows[~np.isin(rows, off[1])]
            if missing.size:
                jobs.append((u, size, missing, off))
        if len(jobs) < 2:
            return
        owner = np.concatenate([np.full(j[2].size, j[0], dtype=np.int64) for j in jobs])
        scores = self._score_rows(owner, np.concatenate([j[2] for j in jobs]))
        at = 0
        for u, size, missing, off in jobs:
            part = scores[at:at + missing.size]
            at += missing.size
            self.offsets[u] = (size, missing, part) if off is None else \
                (size, np.concatenate([off[1], missing]), np.concatenate([off[2], part]))

    def posterior(self, u: int) -> Posterior:
        """The user's residual posterior, on top of the GNN and the crowd estimate of added LLMs."""
        cached = self.post.get(u)
        if cached is not None and cached[0] == self.crowd.version:
            return cached[1]
        init = cached[1] if cached is not None else None  # stale: its modes start the new fit
        h = self.hist
        rows = self.residual_rows(u)
        scores = self.history_scores(u, rows)
        if self.pool.n_trained < len(self.pool):
            texts, at = np.unique(h.query_row[rows], return_inverse=True)  # both sides of a pair share a text
            scores = scores + self.crowd(np.arange(len(self.pool)), self.crowd_z(texts))[at.reshape(-1)]
        codes, tasks = self.task_codes(rows)
        hw = self.calibration.history if self.calibration is not None else 1.0
        ev = build_evidence(h.group[rows], h.llm[rows], h.rating[rows], self.zrows(rows), scores, self.personal,
                            task=codes if tasks else None,
                            row_weight=None if hw == 1.0 else np.where(rows < self.base_rows, hw, 1.0))
        key, at = self._change_point(u, ev, init)
        first = None if at is None else ev.n_rows - (self.rows_of.count(u) - at)
        post = fit_posterior(ev, self.personal, len(self.pool), self.basis.dims, init, first)
        post.change_key, post.change_at = key, at
        post.tasks = tasks
        self.post[u] = (self.crowd.version, post)
        return post

    def _change_point(self, u: int, ev: Evidence, init: Posterior | None) -> tuple[tuple | None, int | None]:
        """(what it depends on, the user's latest change of taste as an absolute row count, or None).

        Detection (:func:`detect_change`) runs on the rows up to a schedule point: the latest multiple of
        ``change_every`` rows, or the rows of the user's representation if refreshed since.  Between two
        points the change found stays (each new vote is still fitted at once, after it), so its cost is
        paid once per ``change_every`` rows; and since the point depends only on the rows applied, routers
        that applied the same rows find the same change.  ``ev``: the residual window's evidence, whose
        last ``ev.n_rows`` rows are the user's latest (the window's tail is contiguous)."""
        cfg = self.personal
        if cfg.change_prior <= 0 or ev.t is None:
            return None, None
        total = self.rows_of.count(u)
        step = int(cfg.change_every)
        cut = max(total - total % step, min(self.rep_size(u), total))
        key = (cut, self.rep_key(u), self.crowd.version)
        if init is not None and init.change_key == key:
            return key, init.change_at
        upto = ev.n_rows - (total - cut)
        first = detect_change(ev.until(upto), cfg, len(self.pool), self.basis.dims) if upto > 0 else None
        return key, (None if first is None else total - (ev.n_rows - first))

    def task_codes(self, rows: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
        """The task blocks of history rows (:func:`task_columns`) and the tasks they stand for."""
        t = self.hist.task[rows]
        if self.personal.task_sd <= 0 or not (t >= 0).any():
            return np.full(rows.size, -1, np.int64), ()
        return task_columns([self.task_names[i] if i >= 0 else None for i in t.tolist()], self.personal)

    def zrows(self, rows: np.ndarray) -> np.ndarray:
        """The residual's query features of history rows (texts added since are featurised on demand)."""
        h = self.hist
        done = self._ztext_n
        if done < h.n_text:
            if self._ztext.shape[0] < h.n_text:  # amortised growth
                grown = np.zeros((h.n_text + max(256, h.n_text // 4), self._ztext.shape[1]))
                grown[:done] = self._ztext[:done]
                self._ztext = grown
            self._ztext[done:h.n_text] = self.basis(h.text[done:])
            self._ztext_n = h.n_text
        return self._ztext[h.query_row[rows]]

    # ------------------------------------------------------------------ crowd estimate of added LLMs
    def crowd_scores(self, emb: np.ndarray) -> np.ndarray:
        """(n, k) the crowd score kernel's features of queries (unit embeddings): the user-blind GNN scores of
        the k trained LLMs, centred per query and scaled by 1/sqrt(k).  Cached per text (a route asks up to
        three times: mean, variance, draw), while the LLMs' representations stay the same."""
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        key = (self.pool.version, id(self.global_reps))
        cache = getattr(self, "_crowd_feat", None)
        if cache is None or cache[0] != key or len(cache[1]) > 8192:
            cache = self._crowd_feat = (key, {})
        rows = [r.tobytes() for r in emb]
        first: dict[bytes, int] = {}
        for i, r in enumerate(rows):
            if r not in cache[1]:
                first.setdefault(r, i)
        todo = list(first.values())  # one GNN call for the texts not seen yet
        if todo:
            with torch.inference_mode():
                e = torch.from_numpy(emb[todo]).to(self.device)
                qv = self.model.gnn.isolated(S.QUERY, self.model.gnn.project_query(e))
                k = self.pool.n_trained
                s = self.scorer(self.cold_rep.expand(len(e), -1), qv, self.llm_reps())[:, :k].float().cpu().numpy()
            s = s.astype(np.float64)
            for i, v in zip(todo, (s - s.mean(axis=1, keepdims=True)) / math.sqrt(k)):
                cache[1][rows[i]] = v
        return np.stack([cache[1][r] for r in rows]) if rows else np.zeros((0, self.pool.n_trained))

    def crowd_z(self, text_rows: np.ndarray) -> np.ndarray:
        """(n, d) the crowd term's query features of history texts: their unit embeddings."""
        return unit_rows(self.hist.text[np.asarray(text_rows, np.int64)])

    def _cold_missing(self, text_rows: np.ndarray) -> list[int]:
        """The distinct history texts among ``text_rows`` whose cold scores are not cached (for this pool)."""
        if self._cold_cache_version != self.pool.version:
            self._cold_cache, self._cold_cache_version = {}, self.pool.version
        return [t for t in dict.fromkeys(text_rows.tolist()) if t not in self._cold_cache]

    def _cold_store(self, text_rows: list[int], raw: np.ndarray) -> None:
        """Cache the calibrated cold scores of texts from the predictor's raw scores (n, L) of the cold user."""
        assert self.calibration is not None
        for t, v in zip(text_rows, self.calibration.apply(raw, np.arange(len(self.pool))[None, :])):
            self._cold_cache[t] = v

    def _cold_scores(self, text_rows: np.ndarray) -> np.ndarray:
        """Calibrated user-blind scores (n, L) of every LLM for history texts (cached per pool version)."""
        missing = self._cold_missing(text_rows)
        if missing:
            with torch.inference_mode():
                emb = torch.from_numpy(np.ascontiguousarray(self.hist.text[missing], dtype=np.float32)).to(self.device)
                qv = self.model.gnn.isolated(S.QUERY, self.model.gnn.project_query(emb))
                s = self.scorer(self.cold_rep.expand(len(missing), -1), qv, self.llm_reps()).float().cpu().numpy()
            self._cold_store(missing, s)
        return np.stack([self._cold_cache[int(t)] for t in text_rows]) if len(text_rows) else \
            np.zeros((0, len(self.pool)))

    def ensure_crowd(self) -> None:
        """Refit the crowd estimate of the added LLMs if feedback on them arrived (everybody's votes:
        pairs rated together, and single ratings against the query's average LLM)."""
        if not self.crowd_dirty:
            return
        self.crowd_dirty = False
        added = self.pool.added()
        n_llms = len(self.pool)
        h = self.hist
        # the schedule (crowd_schedule): the first `upto` rows in log order; nothing to do while it stays
        n_rows = sum(map(len, self.group_rows.values())) if added.size else 0
        upto = crowd_schedule(n_rows)
        key = (upto, self.pool.version, self._crowd_gen)
        if key == self._crowd_key:
            return
        self._crowd_key = key
        a, b, y, w, rows = crowd_votes(h, self.group_rows if added.size else {}, len(self.users), upto,
                                       self.personal.point_weight, int(self.crowd_window))
        if not a.size:
            self.crowd.fit(n_llms, added, *(np.zeros(0, np.int64),) * 2, *(np.zeros(0),) * 3)
            return
        text_rows = h.query_row[rows]
        cold = self._cold_scores(text_rows)
        act = np.array([self.pool.index[m] for m in self.pool.active()], np.int64)
        sa = cold[np.arange(a.size), a]
        sb = np.where(b >= 0, cold[np.arange(a.size), np.maximum(b, 0)], cold[:, act].mean(axis=1))
        self.crowd.fit(n_llms, added, a, b, sa - sb, y, w, self.crowd_z(text_rows))

    # ------------------------------------------------------------------ feedback
    def apply(self, user_id: str, query: str, model: str, raw: float, session_id: str | None,
              query_id: str | None, emb: np.ndarray, order: int | None = None, task: str | None = None) -> int:
        """Append one rated interaction to the live history (``task``: the kind of work its caller named).

        ``order``: the row's feedback-log id.  A user's rows are kept in the
        order of these ids (the checkpoint's rows first; rows without a log in
        the order they came), so whatever depends on the order (the refresh
        schedule's rows, the residual's window) depends only on the set of
        rows applied, not on the order in which they arrived."""
        u = self.user_index.get(user_id)
        if u is None:
            u = self._new_user(user_id)
        lo, hi = self.rating_scale
        norm = float(normalise_ratings(raw, lo, hi))
        gkey = (user_id, query_id if query_id else "text:" + query)
        group = self.group_key.get(gkey)
        if group is None:
            group = self.group_key[gkey] = self.next_group
            self.next_group += 1
        prev = -1
        st = None
        if session_id is not None:
            st = self.sessions.setdefault((user_id, session_id), _Session())
            prev = st.last_row
            if query_id is not None and st.last_row >= 0 and self.hist.group[st.last_row] == group:
                prev = int(self.hist.prev[st.last_row])  # both sides of one comparison follow the same turn
        if order is None:
            self.unlogged += 1
            order = UNLOGGED + self.unlogged
        text_row = self.text_row.get(query)
        if text_row is None:
            text_row = self.text_row[query] = self.hist.add_text(emb)
        llm = self.pool.index[model]
        tid = -1
        if task is not None:
            tid = self.task_id.get(task, -1)
            if tid < 0:
                tid = self.task_id[task] = len(self.task_names)
                self.task_names.append(task)
        row = self.hist.append(u, llm, norm, prev, text_row, group, order, tid)
        if self.rows_of.add(u, row, self.hist.order):
            self.inserted[u] = self.inserted.get(u, 0) + 1  # earlier rows changed: cached results are stale
        if st is not None and (query_id is None or st.last_row < 0 or self.hist.group[st.last_row] != group):
            st.last_row = row
        rows = self.group_rows.get(group)
        if rows is not None or llm >= self.pool.n_trained:
            if rows is None:  # the group's earlier rows (the other side of a comparison)
                rows = self.group_rows[group] = [r for r in self.rows_of.rows(u, -8).tolist()
                                                 if self.hist.group[r] == group and r != row]
            rows.append(row)
            self.crowd_dirty = True
        if self.per_user_exact:
            stale = self.post.get(u)  # refitted on the next route, from its modes (the representation
            if stale is not None:     # follows its schedule, rep_size)
                self.post[u] = (None, stale[1])
        else:
            self.user_rep.clear()
            self.post.clear()
            self.offsets.clear()
            self.global_reps = None
        return u

    def apply_rows(self, rows: list, embed: Callable[[list[str]], np.ndarray]) -> int:
        """Apply feedback-log rows (in the given order); rows naming an LLM or a user id this
        router cannot take are skipped.  Returns how many were applied."""
        valid = [r for r in rows if r.model in self.pool.index and isinstance(r.user_id, str)
                 and ID_RE.match(r.user_id)]
        if not valid:
            return 0
        texts = list(dict.fromkeys(r.query for r in valid))
        emb = embed(texts)
        by_text = {t: i for i, t in enumerate(texts)}
        lo, hi = self.rating_scale
        for r in valid:
            raw = min(max(float(r.rating), lo), hi)
            self.apply(r.user_id, r.query, r.model, raw, r.session_id, r.query_id, emb[by_text[r.query]], order=r.id,
                       task=_task_of(r))
        return len(valid)

    def sync(self, log: Any, embed: Callable[[list[str]], np.ndarray], loaded: set[str] | None = None,
             guard: Any = None) -> int:
        """Apply the log rows appended (by any process) since the last sync, in id
        order, skipping this router's own; returns how many were applied.  ``loaded``: with a store read per
        user (PostgreSQL), only the rows of the users loaded so far (the others are read on first use).
        ``guard``: a lock held while the log is read and the own ids are taken (appends mark theirs under it)."""
        guard = guard if guard is not None else contextlib.nullcontext()
        with guard:
            rows = log.read(since_id=self.synced_id)
            own = set(self.own_ids)
        self.last_sync = time.monotonic()
        applied = self.apply_rows([r for r in rows if r.id not in own
                                   and (loaded is None or r.user_id in loaded)], embed)
        if rows:
            with guard:
                self.synced_id = rows[-1].id
                self.own_ids = {i for i in self.own_ids if i > self.synced_id}
        return applied

    def _new_user(self, user_id: str) -> int:
        """An index for a user the history does not hold yet (an evicted user's index is reused)."""
        if self._free_users:
            u = self._free_users.pop()
            self.users[u] = user_id
        else:
            u = len(self.users)
            self.users.append(user_id)
        self.user_index[user_id] = u
        return u

    # ------------------------------------------------------------------ eviction (stores read per user)
    def evict(self, user_ids: Sequence[str]) -> int:
        """Forget the rows the router added for these users (the checkpoint's rows stay), their texts,
        sessions and cached results, so that memory follows the users held, not every user ever served.
        A router whose store is read per user (PostgreSQL) evicts its least recently used users and reads
        them again from the store on their next use: the same rows, applied in id order, so the user then
        routes as before.  Own rows newer than ``synced_id`` are handed back to the sync (not skipped as
        own any more): the next sync applies them if the user is loaded again by then, and a later load
        reads them otherwise.  Returns how many users were evicted."""
        gone: dict[str, int] = {}
        for user in dict.fromkeys(user_ids):
            u = self.user_index.get(user)
            if u is not None:
                gone[user] = u
        if not gone:
            return 0
        dead: list[int] = []
        for user, u in gone.items():
            dead.extend(self.rows_of.drop(u))
            for cache in (self.user_rep, self.post, self.offsets):
                cache.pop(u, None)
            self.rep_rows.pop(u, None)
            self.inserted.pop(u, None)
            if u >= self.n_base_users:  # a user feedback added: its index goes back to the free list
                del self.user_index[user]
                self.users[u] = ""
                self._free_users.append(u)
        ids = self.hist.order[np.asarray(dead, np.int64)]
        self.own_ids.difference_update(int(i) for i in ids[(ids > self.synced_id) & (ids < UNLOGGED)])
        self.sessions = {k: v for k, v in self.sessions.items() if k[0] not in gone}
        self.group_key = {k: v for k, v in self.group_key.items() if k[0] not in gone}
        if dead:
            self._compact(np.asarray(dead, np.int64))
        return len(gone)

    def _compact(self, dead: np.ndarray) -> None:
        """Remove history rows (never the checkpoint's) and the feedback texts no row uses any more, and
        renumber what refers to rows and texts.  Order-preserving: each user's rows keep their order."""
        h = self.hist
        n = h.n
        keep = np.ones(n, bool)
        keep[dead] = False
        new_of = np.cumsum(keep) - 1
        m = int(keep.sum())
        for name in h._COLS:
            arr = getattr(h, name)
            arr[:m] = arr[:n][keep]
        prev = h._prev[:m]
        linked = prev >= 0
        prev[linked] = np.where(keep[prev[linked]], new_of[prev[linked]], -1)
        h.n = m
        # texts: the checkpoint's stay; a feedback text stays while a row uses it
        nt = h.n_text
        tkeep = np.zeros(nt, bool)
        tkeep[: self.base_texts] = True
        tkeep[h._query_row[:m]] = True
        tnew = np.cumsum(tkeep) - 1
        tm = int(tkeep.sum())
        h._text[:tm] = h._text[:nt][tkeep]
        h._query_row[:m] = tnew[h._query_row[:m]]
        h.n_text = tm
        zn = self._ztext_n
        self._ztext[: int(tkeep[:zn].sum())] = self._ztext[:zn][tkeep[:zn]]
        self._ztext_n = int(tkeep[:zn].sum())
        self.text_row = {t: int(tnew[r]) for t, r in self.text_row.items() if tkeep[r]}
        self._cold_cache = {int(tnew[t]): v for t, v in self._cold_cache.items() if t < nt and tkeep[t]}
        h.shrink()
        if self._ztext.shape[0] > 2 * max(self._ztext_n, 256):
            self._ztext = self._ztext[: self._ztext_n + max(256, self._ztext_n // 4)].copy()
        # what refers to rows
        self.rows_of.renumber(new_of)
        for st in self.sessions.values():
            if st.last_row >= 0:
                st.last_row = int(new_of[st.last_row]) if keep[st.last_row] else -1
        groups = {}
        for g, rows in self.group_rows.items():
            live = [int(new_of[r]) for r in rows if keep[r]]
            if live:
                groups[g] = live
        if len(groups) != len(self.group_rows) or any(len(v) != len(self.group_rows[g]) for g, v in groups.items()):
            self.crowd_dirty = True  # evicted rows rated an added LLM: the crowd is everybody's loaded votes
            self._crowd_gen += 1
        self.group_rows = groups
        self.offsets.clear()  # holds row numbers
        if not self.per_user_exact:
            self.user_rep.clear()
            self.post.clear()
            self.global_reps = None

    def session_turn(self, user: str, session: str, model: str) -> int:
        st = self.sessions.setdefault((user, session), _Session())
        st.turns += 1
        st.models.append(model)
        return st.turns

    def history(self) -> History:
        """The current rated history (checkpoint + feedback)."""
        hist = self.hist
        return History(user=hist.user.copy(), llm=hist.llm.copy(), rating=hist.rating.copy(),
                       prev=hist.prev.copy(), llm_emb=self.pool.emb.copy(), group=hist.group.copy(),
                       text_emb=hist.text.copy(), query_row=hist.query_row.copy())


def _task_of(record: Any) -> str | None:
    """A stored row's task, checked as a request's is (a row a client wrote with a bad task: none)."""
    try:
        return check_task(getattr(record, "task", None))
    except RoutingError:
        return None
