"""The live rated history's tables: numpy columns with amortised appends, each user's rows in order, and
a small LRU dict (the user state's caches; :mod:`gmt_model.serving.user_state`)."""

from __future__ import annotations

import bisect
from collections import OrderedDict
from typing import Sequence

import numpy as np

from gmt_model.method import schema as S
from gmt_model.method.checkpoint import History

__all__ = ["GrowingHistory", "LRU", "UNLOGGED", "UserRows"]

#: order keys of rows applied without a feedback log come after every log id
UNLOGGED = 1 << 52


class LRU(OrderedDict):
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


class GrowingHistory:
    """Rated interactions as numpy columns with amortised O(1) appends; query
    embeddings deduplicated (a growing text table and each row's index in it)."""

    _COLS = ("_user", "_llm", "_rating", "_prev", "_query_row", "_group", "_order", "_task")

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
        self._order = np.arange(cap, dtype=np.int64) - self.n - UNLOGGED  # checkpoint rows first
        self._task = np.full(cap, -1, np.int64)  # the task its caller named (UserState.task_names), -1: none
        if h.deduplicated:
            text, qrow = h.text_emb, np.asarray(h.query_row, np.int64)
        else:
            text, qrow = h.query_emb, np.arange(self.n, dtype=np.int64)
        self.n_text = int(text.shape[0])
        # a float16 table (a float16 embedding store) stays float16: half the memory; rows are widened when gathered
        dtype = np.float16 if np.asarray(text[:0]).dtype == np.float16 else np.float32
        self._text = np.zeros((self.n_text + (max(256, self.n_text // 4) if headroom else 0), text.shape[1]), dtype)
        self._text[: self.n_text] = text
        for name, src in (("_user", h.user), ("_llm", h.llm), ("_rating", h.rating), ("_prev", h.prev),
                          ("_query_row", qrow), ("_group", h.group)):
            getattr(self, name)[: self.n] = src

    def add_text(self, emb: np.ndarray) -> int:
        if self.n_text == self._text.shape[0]:
            new = np.zeros((self._text.shape[0] + max(256, self._text.shape[0] // 4),) + self._text.shape[1:],
                           self._text.dtype)
            new[: self.n_text] = self._text[: self.n_text]
            self._text = new
        self._text[self.n_text] = emb
        self.n_text += 1
        return self.n_text - 1

    def append(self, user: int, llm: int, rating: float, prev: int, text_row: int, group: int, order: int,
               task: int = -1) -> int:
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
        self._task[row] = task
        self.n += 1
        return row

    def shrink(self) -> None:
        """Give back capacity after rows or texts were removed (kept: a quarter of headroom)."""
        if self._user.shape[0] > 2 * max(self.n, 1024):
            cap = self.n + max(1024, self.n // 4)
            for name in self._COLS:
                setattr(self, name, getattr(self, name)[:cap].copy())
        if self._text.shape[0] > 2 * max(self.n_text, 256):
            self._text = self._text[: self.n_text + max(256, self.n_text // 4)].copy()

    def vecs(self, rows: np.ndarray) -> np.ndarray:
        """float32 (len(rows), d) query embeddings of the given rows."""
        return self._text[self._query_row[np.asarray(rows, dtype=np.int64)]].astype(np.float32, copy=False)

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
    task = property(lambda self: self._task[: self.n])


class UserRows:
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

    def drop(self, u: int) -> list[int]:
        """Forget the rows added for user ``u`` (the checkpoint's stay); return them."""
        return self._extra.pop(u, [])

    def renumber(self, new_of: np.ndarray) -> None:
        """The added rows renumbered after a compaction (``new_of``: old row -> new row; order kept)."""
        self._extra = {u: new_of[np.asarray(rows, np.int64)].tolist() for u, rows in self._extra.items()}

    def add(self, u: int, row: int, order: np.ndarray) -> bool:
        """Add a new row in ``order`` (log ids); True when it went before the user's last row."""
        extra = self._extra.setdefault(u, [])
        if extra and order[extra[-1]] > order[row]:
            bisect.insort(extra, row, key=order.__getitem__)
            return True
        extra.append(row)
        return False
