"""How a router stays in step with the shared feedback store.

The store (:mod:`gmt_model.serving.feedback`: SQLite embedded, PostgreSQL for a fleet) holds what must
outlive a process: feedback rows and pool events.  :class:`StoreLink` is the router's one link to it:

* **writing**: feedback rows in shared transactions (group commit, one fsync for many callers), each
  caller's rows in one transaction; pool events (``add`` / ``update`` / ``remove``);
* **at start**: the rows newer than the checkpoint's training data are replayed (SQLite), or, with a
  store read per user (PostgreSQL), nothing is replayed and a user's rows are read on first use;
* **while running**: the rows and pool events other processes append are applied in id order
  (``feedback_sync_interval``), this router's own rows skipped; past ``max_loaded_users`` the least
  recently used users are dropped and read again on their next use; when the store cannot be reached
  the router goes on with what it holds.

Every row is applied exactly once: a row this router logged is "own" (a sync skips it) and "pending"
until :meth:`StoreLink.applied` (a user load skips it, ``apply_logged`` applies it).  ``log_lock``
guards an append together with the marking of its ids against a sync's read.  The caller passes the
router's lock; the methods that change the live history take it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

from gmt_model.serving.feedback import GroupCommit
from gmt_model.serving.user_state import UserState

__all__ = ["StoreLink"]

log = logging.getLogger(__name__)


class StoreLink:
    """The router's link to its feedback store (``store`` None: no store, every method a no-op).

    ``apply_pool_event(event) -> int``: applies one pool event of another process to the router's pool
    (how many LLMs changed); ``pool_changed()``: called once after events changed the pool."""

    def __init__(self, store: Any, state: UserState, lock: Any, embed: Callable[[Sequence[str]], np.ndarray],
                 *, config: Any, meta: dict[str, Any], apply_pool_event: Callable[[dict[str, Any]], int], pool_changed: Callable[[], None]) -> None:
        self.store = store
        self.state = state
        self.lock = lock
        self.embed = embed
        self.config = config  # feedback_sync_interval, max_loaded_users (RouterConfig)
        self._apply_pool_event = apply_pool_event
        self._pool_changed = pool_changed
        #: rows up to this id are in the checkpoint's training data
        self.through_id = int(meta.get("feedback_through_id", 0) or 0)
        #: rows the training data read but could not use (a single rating compares nothing): history only
        self.unmerged = {int(i) for i in (meta.get("feedback_unmerged_ids") or []) if int(i) <= self.through_id}
        self.state.synced_id = self.through_id
        self.log_lock = threading.Lock()
        self.pending: set[int] = set()
        self._group_commit = GroupCommit(self._write_rows)
        self.event_id = 0
        self._own_events: set[int] = set()
        self._logged_names: set[str] = set()
        #: the users whose rows this router holds, least recently used first (lazy stores only)
        self.loaded: OrderedDict[str, None] | None = None
        self.replayed = 0
        self.evicted = 0
        self.retry_at = 0.0  # while the store cannot be reached: the next try (time.monotonic)

    # ------------------------------------------------------------------ start
    def replay(self) -> None:
        """The feedback rows newer than the training data, applied at start (a lazy store: none now, each
        user's on first use).  The caller has synced the pool first (:meth:`sync_pool`)."""
        if self.store is None:
            return
        if getattr(self.store, "lazy_users", False):
            self.loaded = OrderedDict()
            self.state.synced_id = max(self.state.synced_id, self.store.max_id())
            return
        unmerged = sorted(self.unmerged)  # (all at or below the sync point: the training data read them)
        if unmerged:
            keep = set(unmerged)
            rows = [r for r in self.store.read(since_id=unmerged[0] - 1, limit=None) if r.id in keep]
            self.replayed += self.state.apply_rows(rows, self.embed)
        self.replayed += self.sync(force=True)

    # ---------------------------------------------------------------- writing
    def append(self, rows: list[dict[str, Any]]) -> list[int] | None:
        """Store the rows in one transaction, shared with the rows other threads store at the same time (group
        commit: one fsync for all); their ids are own (a sync skips them) and pending (a user load skips
        them) from the moment they exist.  None: no store."""
        if self.store is None:
            return None
        return self._group_commit.submit(rows)

    def _write_rows(self, rows: list[dict[str, Any]]) -> list[int]:
        with self.log_lock:
            ids = self.store.append_many(rows)
            self.state.own_ids.update(ids)
            self.pending.update(ids)
        return ids

    def applied(self, ids: Sequence[int]) -> None:
        """Own rows applied to the live history: a later sync skips them (an eviction in between may have
        handed them back to the sync)."""
        with self.log_lock:
            self.state.own_ids.update(i for i in ids if i > self.state.synced_id)

    def not_applied(self, ids: Sequence[int]) -> None:
        """Own rows whose apply failed: the next sync applies them from the store."""
        with self.log_lock:
            self.state.own_ids.difference_update(ids)

    def settled(self, ids: Sequence[int]) -> None:
        """Rows no longer pending (applied here, or left to the sync)."""
        self.pending.difference_update(ids)

    def log_pool_event(self, op: str, name: str, description: str | None = None, cost: float | None = None,
                       endpoint: str | None = None) -> None:
        """Store a pool change (this router has applied it: its own sync skips it)."""
        if self.store is not None:
            self._own_events.add(self.store.append_llm_event(op, name, description, cost, endpoint))
            self._logged_names.add(name)

    def logged(self, name: str) -> bool:
        """Whether the store has seen a pool event of this LLM."""
        return name in self._logged_names

    # ---------------------------------------------------------------- reading
    def sync_pool(self) -> int:
        """Apply the pool events stored since the last sync (by any process), in order."""
        if self.store is None:
            return 0
        changed = 0
        for ev in self.store.read_llm_events(since_id=self.event_id):
            self._logged_names.add(ev["name"])
            if ev["id"] not in self._own_events:
                changed += self._apply_pool_event(ev)
            self.event_id = ev["id"]
        self._own_events = {i for i in self._own_events if i > self.event_id}
        if changed:
            self._pool_changed()
        return changed

    def sync(self, force: bool = False) -> int:
        """Apply the pool events and then the rows appended (by any process) since the last sync, in id
        order, skipping this router's own; returns how many rows were applied."""
        if self.store is None:
            return 0
        with self.lock:
            self.sync_pool()
            return self.state.sync(self.store, self.embed, self.loaded, guard=self.log_lock)

    def maybe_sync(self) -> None:
        """:meth:`sync` when ``feedback_sync_interval`` has passed since the last (< 0: never)."""
        iv = self.config.feedback_sync_interval
        if self.store is None or iv < 0:
            return
        if time.monotonic() - self.state.last_sync >= iv:
            self.sync()

    def ensure_loaded(self, user_ids: Sequence[str]) -> None:
        """Read the stored rows of users this router has not loaded yet (lazy stores only): the rows newer
        than the checkpoint's training data (and those it read but could not use), all of them (those past
        the sync point are then skipped by the sync, as own rows are).  The same set of rows as a replay at
        start, so routing agrees.  Marks the users most recently used; past ``max_loaded_users`` the least
        recently used are evicted and read again on their next use."""
        if self.loaded is None:
            return
        users = list(dict.fromkeys(user_ids))
        with self.lock:
            since = min([self.through_id] + [i - 1 for i in self.unmerged])
            for user in users:
                if user in self.loaded:
                    self.loaded.move_to_end(user)
                    continue
                with self.log_lock:  # rows logged here but not applied yet (pending) are left to apply_logged
                    got = self.store.read_user(user, since_id=since)
                    pending = set(self.pending)
                rows = [r for r in got if (r.id > self.through_id or r.id in self.unmerged) and r.id not in pending]
                self.replayed += self.state.apply_rows(rows, self.embed)
                # rows past the sync point are applied now: the sync skips them as it skips this router's own
                self.state.own_ids.update(r.id for r in rows if r.id > self.state.synced_id)
                self.loaded[user] = None
            self._evict(users)

    def _evict(self, keep: Sequence[str]) -> None:
        """Past ``max_loaded_users`` loaded users, drop the least recently used (not those of the current
        call) down to 90% of it, in one batch (one compaction of the history per batch); they are read from
        the store again on their next use (``UserState.evict``)."""
        cap = int(self.config.max_loaded_users)
        assert self.loaded is not None
        if len(self.loaded) <= cap:
            return
        target = cap - cap // 10
        busy = set(keep)
        out = []
        for user in self.loaded:  # least recently used first
            if len(self.loaded) - len(out) <= target:
                break
            if user not in busy:
                out.append(user)
        for user in out:
            del self.loaded[user]
        self.evicted += self.state.evict(out)

    def refresh_for_routing(self, user_ids: Sequence[str]) -> None:
        """Load new users and sync before routing; when the store cannot be reached (a PostgreSQL server
        down), route with what this router holds, log it, and try again after ``feedback_sync_interval``
        (a user that could not be loaded is loaded on a later call).  Feedback still fails then."""
        if self.store is None or time.monotonic() < self.retry_at:
            return
        try:
            self.ensure_loaded(user_ids)
            self.maybe_sync()
        except OSError as exc:  # FeedbackStoreError
            self.state.last_sync = time.monotonic()
            self.retry_at = self.state.last_sync + max(1.0, float(self.config.feedback_sync_interval))
            log.warning("routing without the feedback store for now: %s", exc)
