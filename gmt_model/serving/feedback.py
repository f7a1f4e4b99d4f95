"""Durable, append-only feedback store: one interface, two back ends.

Every rating a user gives (``user_id``, ``query``, ``model``, ``rating`` plus
optional ``session_id``, ``turn``, ``query_id`` and ``task``) is appended to one table.
The store is the hand-off between the live routers and the next retraining
run: readers page through it with ``read(since_id=...)`` and remember
``max_id()``; a router that loads users on first use reads one user's rows
with ``read_user``.  LLM-pool changes (``append_llm_event`` /
``read_llm_events``) live next to the ratings.

Back ends (:func:`open_feedback_store` picks one from the target):

* :class:`FeedbackLog` -- one SQLite file (WAL mode, many writer processes on
  one machine).  The embedded default: ``router.feedback_log: ./feedback.sqlite``.
* :class:`PostgresFeedbackStore` -- a PostgreSQL database, for several
  machines or a fleet of router replicas: the target is a ``postgresql://``
  (or ``postgres://``) URL.  Replicas never share a file.

Guarantees (both back ends):

* one transaction per ``append`` / ``append_many``: a record is either stored
  completely or not at all, and it is durable when the call returns;
* validation before anything is written: a bad record raises ``ValueError``
  naming the field and nothing is stored;
* ids are strictly increasing in commit order, so a reader that has seen id
  ``n`` never later finds a new row with an id ``<= n`` (SQLite: one writer at
  a time; PostgreSQL: appends take one transaction-level advisory lock before
  they draw their ids, so ids are drawn and committed in the same order).
  Ids may have gaps (a rolled-back append's id is not reused).

Schema changes are made in place when a store is opened: a log written before
the ``task`` column existed gets it (``ALTER TABLE ... ADD COLUMN``, NULL for
the old rows); a SQLite log that cannot be changed (read-only) is read with
``task`` NULL.
"""

from __future__ import annotations

import math
import numbers
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gmt_model.atomic import atomic_path
from gmt_model.method.schema import C_USER_ID, F_MODEL, F_QUERY, F_RATING, F_TURN
from gmt_model.serving.requests import MAX_TASK_CHARS  # a row holds what a request may name

__all__ = [
    "GroupCommit",
    "FeedbackRecord",
    "FeedbackStore",
    "FeedbackLog",
    "FeedbackLogUnavailable",
    "PostgresFeedbackStore",
    "FeedbackStoreError",
    "open_feedback_store",
    "is_store_url",
    "redact_url",
    "LLM_EVENT_COLUMNS",
    "FEEDBACK_TABLE",
    "COL_ID",
    "COL_TS",
    "COL_SESSION_ID",
    "COL_QUERY_ID",
    "COL_TASK",
    "FEEDBACK_COLUMNS",
    "LLM_EVENTS_TABLE",
    "LLM_EVENT_OPS",
]

#: SQLite table holding the log.
FEEDBACK_TABLE = "feedback"
#: Column names local to the feedback log (the others come from ``schema``).
COL_ID = "id"
COL_TS = "ts"
COL_SESSION_ID = "session_id"
COL_QUERY_ID = "query_id"
#: the kind of work the caller named ("coding", "writing"; NULL: none); added after the others (a log
#: written before it existed gets it when opened)
COL_TASK = "task"
#: Column order of the table, of ``FeedbackRecord`` and of the Parquet export.
FEEDBACK_COLUMNS: tuple[str, ...] = (
    COL_ID,
    COL_TS,
    C_USER_ID,
    COL_SESSION_ID,
    F_TURN,
    COL_QUERY_ID,
    F_QUERY,
    F_MODEL,
    F_RATING,
    COL_TASK,
)

#: Columns of the LLM-pool change events (``read_llm_events`` returns dicts with these keys).
LLM_EVENT_COLUMNS: tuple[str, ...] = ("id", "ts", "op", "name", "description", "cost", "endpoint")
LLM_EVENTS_TABLE = "llm_events"

_BUSY_TIMEOUT_MS = 30_000

_CREATE_SQL = f"""
CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (
    {COL_ID} INTEGER PRIMARY KEY AUTOINCREMENT,
    {COL_TS} REAL NOT NULL,
    {C_USER_ID} TEXT NOT NULL CHECK (length({C_USER_ID}) > 0),
    {COL_SESSION_ID} TEXT,
    {F_TURN} INTEGER,
    {COL_QUERY_ID} TEXT,
    {F_QUERY} TEXT NOT NULL CHECK (length({F_QUERY}) > 0),
    {F_MODEL} TEXT NOT NULL CHECK (length({F_MODEL}) > 0),
    {F_RATING} REAL NOT NULL,
    {COL_TASK} TEXT
)
"""
#: the in-place migration of a log written before the task column existed
_ADD_TASK_SQL = f"ALTER TABLE {FEEDBACK_TABLE} ADD COLUMN {COL_TASK} TEXT"

#: SQLite table of LLM pool changes (``FeedbackLog.append_llm_event``)
LLM_EVENT_OPS = ("add", "update", "remove")
_CREATE_LLM_EVENTS_SQL = f"""
CREATE TABLE IF NOT EXISTS {LLM_EVENTS_TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('add', 'update', 'remove')),
    name TEXT NOT NULL CHECK (length(name) > 0),
    description TEXT,
    cost REAL CHECK (cost IS NULL OR cost >= 0),
    endpoint TEXT
)
"""

_SELECT_COLS = ", ".join(FEEDBACK_COLUMNS)
#: the columns read from a SQLite log that could not be migrated (read-only): no task
_SELECT_COLS_NO_TASK = ", ".join(FEEDBACK_COLUMNS[:-1]) + f", NULL AS {COL_TASK}"
_INSERT_SQL = (
    f"INSERT INTO {FEEDBACK_TABLE} ({', '.join(FEEDBACK_COLUMNS[1:])}) "
    f"VALUES ({', '.join('?' for _ in FEEDBACK_COLUMNS[1:])})"
)


@dataclass(frozen=True)
class FeedbackRecord:
    """One stored feedback event (field order == ``FEEDBACK_COLUMNS``)."""

    id: int
    ts: float
    user_id: str
    session_id: str | None
    turn: int | None
    query_id: str | None
    query: str
    model: str
    rating: float
    task: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the column names as keys."""
        return asdict(self)


class FeedbackLogUnavailable(OSError):
    """The log cannot store a record now: ``reason`` is ``"read-only"``, ``"full"`` (the disk or the database
    is full) or ``"unavailable"`` (locked past the busy timeout, I/O error).  Nothing was stored."""

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        super().__init__(f"feedback log {path.name}: {reason} ({detail}); the record was not stored")
        self.path = path
        self.reason = reason


def _classify(path: Path, exc: sqlite3.Error) -> FeedbackLogUnavailable:
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text or "read only" in text:
        reason = "read-only"
    elif "full" in text:
        reason = "full"
    else:
        reason = "unavailable"
    return FeedbackLogUnavailable(path, reason, str(exc))


def _req_str(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"feedback field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"feedback field {field!r} must be a non-empty string")
    return value


def _opt_str(field: str, value: Any) -> str | None:
    if value is None:
        return None
    return _req_str(field, value)


def _finite(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"feedback field {field!r} must be a number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"feedback field {field!r} must be finite, got {out!r}")
    return out


def _opt_task(value: Any) -> str | None:
    out = _opt_str(COL_TASK, value)
    if out is not None and len(out) > MAX_TASK_CHARS:
        raise ValueError(f"feedback field {COL_TASK!r} must have at most {MAX_TASK_CHARS} characters, got {len(out)}")
    return out


def _opt_turn(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"feedback field {F_TURN!r} must be an integer >= 1, got {type(value).__name__}")
    if int(value) < 1:
        raise ValueError(f"feedback field {F_TURN!r} must be an integer >= 1, got {int(value)}")
    return int(value)


class FeedbackStoreError(OSError):
    """The store cannot be reached or opened (the message names it, password redacted)."""


def _record_values(row: dict[str, Any], ts_now: float) -> tuple[Any, ...]:
    """Validated column values (``FEEDBACK_COLUMNS[1:]``) of one record given as ``append`` keywords."""
    return (
        ts_now if row.get("ts") is None else _finite(COL_TS, row["ts"]),
        _req_str(C_USER_ID, row.get("user_id")),
        _opt_str(COL_SESSION_ID, row.get("session_id")),
        _opt_turn(row.get("turn")),
        _opt_str(COL_QUERY_ID, row.get("query_id")),
        _req_str(F_QUERY, row.get("query")),
        _req_str(F_MODEL, row.get("model")),
        _finite(F_RATING, row.get("rating")),
        _opt_task(row.get("task")),
    )


def _llm_event_values(op: Any, name: Any, description: Any, cost: Any, endpoint: Any) -> tuple[Any, ...]:
    return (time.time(), _req_str("op", op), _req_str("name", name), _opt_str("description", description),
            None if cost is None else _finite("cost", cost), _opt_str("endpoint", endpoint))


class FeedbackStore:
    """The feedback store interface (see the module docstring); :class:`FeedbackLog` (SQLite) and
    :class:`PostgresFeedbackStore` implement it.  ``open_feedback_store(target)`` opens one."""

    #: a short description for messages (a path, or a URL without its password)
    location: str = ""
    #: whether a router reads each user's rows on first use (``read_user``) instead of replaying the whole
    #: store at start: True where per-user reads are indexed and the store is shared by replicas (PostgreSQL)
    lazy_users: bool = False

    # writing
    def append(self, user_id: str, query: str, model: str, rating: float, session_id: str | None = None,
               turn: int | None = None, query_id: str | None = None, ts: float | None = None,
               task: str | None = None) -> int:
        """Validate and store one record in its own transaction; return its id.

        Raises ``ValueError`` naming the offending field; nothing is stored then."""
        return self.append_many([dict(user_id=user_id, query=query, model=model, rating=rating,
                                      session_id=session_id, turn=turn, query_id=query_id, ts=ts, task=task)])[0]

    def append_many(self, rows: list[dict[str, Any]]) -> list[int]:
        """Store several records in ONE transaction (all or none); return their ids.

        Each row: the keyword arguments of :meth:`append`.  A pairwise
        preference is two rows sharing a ``query_id``."""
        raise NotImplementedError

    def append_llm_event(self, op: str, name: str, description: str | None = None, cost: float | None = None,
                         endpoint: str | None = None) -> int:
        """Store one LLM-pool change (``op``: what happened to LLM ``name``); return its id."""
        raise NotImplementedError

    # reading
    def read(self, since_id: int = 0, limit: int | None = None) -> list[FeedbackRecord]:
        """Records with ``id > since_id`` in id order (at most ``limit`` of them)."""
        raise NotImplementedError

    def read_user(self, user_id: str, since_id: int = 0, through_id: int | None = None) -> list[FeedbackRecord]:
        """One user's records with ``since_id < id <= through_id`` (no upper bound: None), in id order."""
        raise NotImplementedError

    def read_llm_events(self, since_id: int = 0) -> list[dict]:
        """LLM-pool changes with ``id > since_id`` in id order (dicts keyed by ``LLM_EVENT_COLUMNS``)."""
        raise NotImplementedError

    def count(self, since_id: int = 0) -> int:
        """Number of records with ``id > since_id``."""
        raise NotImplementedError

    def max_id(self) -> int:
        """Largest stored id (0 when the store is empty)."""
        raise NotImplementedError

    def to_records(self, since_id: int = 0) -> list[dict[str, Any]]:
        """All records (``id > since_id``) as plain dicts, in id order."""
        return [r.to_dict() for r in self.read(since_id)]

    def export_parquet(self, path: str | os.PathLike[str], since_id: int = 0) -> int:
        """Write the log (``id > since_id``) to a Parquet file atomically; return the row count."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = self.read(since_id)
        schema = pa.schema(
            [
                pa.field(COL_ID, pa.int64(), nullable=False),
                pa.field(COL_TS, pa.float64(), nullable=False),
                pa.field(C_USER_ID, pa.string(), nullable=False),
                pa.field(COL_SESSION_ID, pa.string()),
                pa.field(F_TURN, pa.int64()),
                pa.field(COL_QUERY_ID, pa.string()),
                pa.field(F_QUERY, pa.string(), nullable=False),
                pa.field(F_MODEL, pa.string(), nullable=False),
                pa.field(F_RATING, pa.float64(), nullable=False),
                pa.field(COL_TASK, pa.string()),
            ]
        )
        columns = {name: [getattr(r, name) for r in records] for name in FEEDBACK_COLUMNS}
        table = pa.table(columns, schema=schema)
        with atomic_path(path, fsync=False) as tmp:
            pq.write_table(table, tmp)
        return table.num_rows

    # lifecycle
    def close(self) -> None:
        """Close this process's connection (it is reopened on next use)."""

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check_since(since_id: int, name: str = "since_id") -> int:
        if isinstance(since_id, bool) or not isinstance(since_id, int) or since_id < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {since_id!r}")
        return since_id

    @staticmethod
    def _check_limit(limit: int | None) -> int | None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
        return limit


class FeedbackLog(FeedbackStore):
    """Append-only feedback log in one SQLite file.

    Safe to share between threads of one process (one connection behind a
    lock) and between processes (each opens its own ``FeedbackLog`` on the
    same path).  After ``fork`` the connection is reopened automatically.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        if str(path) == ":memory:" or not str(path):
            raise ValueError("FeedbackLog needs a file path (an in-memory database cannot be shared)")
        if p.exists() and p.is_dir():
            raise ValueError(f"feedback log path {str(p)!r} is a directory")
        p.parent.mkdir(parents=True, exist_ok=True)
        self.path = p
        self.location = str(p)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._has_task = True  # False: an old log that could not be migrated (read-only)
        with self._lock:
            self._initialise()

    def _initialise(self) -> None:
        """Switch to WAL and create the table, tolerating other processes doing the same.

        SQLite does not always call the busy handler while several connections
        change the journal mode of a fresh file at once ("database is locked"
        at once), so this retries with a short backoff up to the busy timeout.
        """
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000.0
        delay = 0.005
        while True:
            try:
                conn = self._connection()
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise RuntimeError(f"could not put feedback log {str(self.path)!r} in WAL mode (got {mode!r})")
                conn.execute(_CREATE_SQL)
                self._has_task = self._migrate(conn)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise _classify(self.path, exc) from exc
                if time.monotonic() > deadline:
                    raise _classify(self.path, exc) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _migrate(self, conn: sqlite3.Connection) -> bool:
        """Add the columns a log written by an older version lacks (in one write transaction, so processes
        opening the same old log at once add it once); whether the log now has them.  A log that cannot be
        written (read-only) keeps its columns and is read with NULL for the new ones."""
        def has_task() -> bool:
            return any(r[1] == COL_TASK for r in conn.execute(f"PRAGMA table_info({FEEDBACK_TABLE})").fetchall())

        if has_task():
            return True
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise
            return False  # read-only
        try:
            if not has_task():
                conn.execute(_ADD_TASK_SQL)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            conn.execute("ROLLBACK")
            if "locked" in str(exc) or "busy" in str(exc):
                raise
            return False
        return True

    def _cols(self) -> str:
        return _SELECT_COLS if self._has_task else _SELECT_COLS_NO_TASK

    # ------------------------------------------------------------------ internals
    def _connection(self) -> sqlite3.Connection:
        """The connection for this process (caller holds ``self._lock``)."""
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(
                str(self.path),
                timeout=_BUSY_TIMEOUT_MS / 1000.0,
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=FULL")  # each committed append survives power loss
            self._conn = conn
            self._pid = os.getpid()
        return self._conn

    @staticmethod
    def _row(row: tuple[Any, ...]) -> FeedbackRecord:
        return FeedbackRecord(*row)

    # ------------------------------------------------------------------ writing
    def append(
        self,
        user_id: str,
        query: str,
        model: str,
        rating: float,
        session_id: str | None = None,
        turn: int | None = None,
        query_id: str | None = None,
        ts: float | None = None,
        task: str | None = None,
    ) -> int:
        """Validate and store one record in its own transaction; return its id.

        Raises ``ValueError`` naming the offending field; nothing is stored then.
        """
        values = (
            time.time() if ts is None else _finite(COL_TS, ts),
            _req_str(C_USER_ID, user_id),
            _opt_str(COL_SESSION_ID, session_id),
            _opt_turn(turn),
            _opt_str(COL_QUERY_ID, query_id),
            _req_str(F_QUERY, query),
            _req_str(F_MODEL, model),
            _finite(F_RATING, rating),
            _opt_task(task),
        )
        return self._write([values])[0]

    def _write(self, values: list[tuple[Any, ...]]) -> list[int]:
        """Insert the rows in one transaction; a storage failure is a :class:`FeedbackLogUnavailable`."""
        with self._lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _classify(self.path, exc) from exc
            try:
                ids = [int(conn.execute(_INSERT_SQL, v).lastrowid) for v in values]
                conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.OperationalError):
                    raise _classify(self.path, exc) from exc
                raise
        return ids

    def append_many(self, rows: list[dict[str, Any]]) -> list[int]:
        """Store several records in ONE transaction (all or none); return their ids.

        Each row: the keyword arguments of :meth:`append`.  A pairwise
        preference is two rows sharing a ``query_id``.
        """
        ts_now = time.time()
        return self._write([_record_values(row, ts_now) for row in rows])

    # ------------------------------------------------------------------ reading
    def read(self, since_id: int = 0, limit: int | None = None) -> list[FeedbackRecord]:
        """Records with ``id > since_id`` in id order (at most ``limit`` of them)."""
        since = self._check_since(since_id)
        sql = f"SELECT {self._cols()} FROM {FEEDBACK_TABLE} WHERE {COL_ID} > ? ORDER BY {COL_ID}"
        params: tuple[int, ...] = (since,)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
            sql += " LIMIT ?"
            params = (since, limit)
        with self._lock:
            rows = self._connection().execute(sql, params).fetchall()
        return [self._row(r) for r in rows]

    def read_user(self, user_id: str, since_id: int = 0, through_id: int | None = None) -> list[FeedbackRecord]:
        """One user's records with ``since_id < id <= through_id`` (None: no upper bound), in id order."""
        since = self._check_since(since_id)
        sql = f"SELECT {self._cols()} FROM {FEEDBACK_TABLE} WHERE {C_USER_ID} = ? AND {COL_ID} > ?"
        params: tuple[Any, ...] = (user_id, since)
        if through_id is not None:
            sql += f" AND {COL_ID} <= ?"
            params += (self._check_since(through_id, "through_id"),)
        with self._lock:
            rows = self._connection().execute(sql + f" ORDER BY {COL_ID}", params).fetchall()
        return [self._row(r) for r in rows]

    def count(self, since_id: int = 0) -> int:
        """Number of records with ``id > since_id``."""
        since = self._check_since(since_id)
        with self._lock:
            (n,) = self._connection().execute(
                f"SELECT COUNT(*) FROM {FEEDBACK_TABLE} WHERE {COL_ID} > ?", (since,)
            ).fetchone()
        return int(n)

    def max_id(self) -> int:
        """Largest stored id (0 when the log is empty)."""
        with self._lock:
            (m,) = self._connection().execute(f"SELECT MAX({COL_ID}) FROM {FEEDBACK_TABLE}").fetchone()
        return int(m) if m is not None else 0


    # ------------------------------------------------------------------ LLM pool events
    # Changes of the router's LLM pool (gmt_model.serving.llm_pool), stored next to the feedback so that a
    # restarted router, or another process sharing the log, sees the same pool.  Ids come from the table's own
    # AUTOINCREMENT (strictly increasing in commit order, never reused); they are not comparable with feedback
    # ids.  Order between the two tables does not matter for replay: a feedback row can only name an LLM whose
    # "add" event was committed before it.
    def _ensure_llm_events(self, conn: sqlite3.Connection) -> None:
        if not getattr(self, "_llm_events_ready", False):
            conn.execute(_CREATE_LLM_EVENTS_SQL)
            self._llm_events_ready = True

    def append_llm_event(self, op: str, name: str, description: str | None = None, cost: float | None = None,
                         endpoint: str | None = None) -> int:
        """Store one pool change (``op``: add, update or remove) in its own transaction; return its id.

        Raises ``ValueError`` naming the field; nothing is stored then (an ``add`` needs a description;
        ``cost``: a finite number >= 0, USD per 1M tokens)."""
        if op not in LLM_EVENT_OPS:
            raise ValueError(f"llm event field 'op' must be one of {LLM_EVENT_OPS}, got {op!r}")
        _req_str("name", name)
        if op == "add":
            _req_str("description", description)
        else:
            _opt_str("description", description)
        if cost is not None and (_finite("cost", cost) < 0):
            raise ValueError(f"llm event field 'cost' must be >= 0, got {cost!r}")
        _opt_str("endpoint", endpoint)
        values = (time.time(), op, name, description, None if cost is None else float(cost), endpoint)
        with self._lock:
            conn = self._connection()
            self._ensure_llm_events(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                new_id = int(conn.execute(
                    f"INSERT INTO {LLM_EVENTS_TABLE} (ts, op, name, description, cost, endpoint) "
                    "VALUES (?, ?, ?, ?, ?, ?)", values).lastrowid)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return new_id

    def read_llm_events(self, since_id: int = 0) -> list[dict[str, Any]]:
        """Pool events with ``id > since_id`` in id order, as dicts
        (id, ts, op, name, description, cost, endpoint)."""
        since = self._check_since(since_id)
        with self._lock:
            conn = self._connection()
            if not getattr(self, "_llm_events_ready", False) and conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LLM_EVENTS_TABLE,)
            ).fetchone() is None:
                return []  # no pool change stored yet: reading never writes (a read-only log stays readable)
            rows = conn.execute(
                f"SELECT id, ts, op, name, description, cost, endpoint FROM {LLM_EVENTS_TABLE} "
                "WHERE id > ? ORDER BY id", (since,)).fetchall()
        keys = ("id", "ts", "op", "name", "description", "cost", "endpoint")
        return [dict(zip(keys, r)) for r in rows]

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close this process's connection (it is reopened on next use)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> "FeedbackLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeedbackLog({str(self.path)!r})"



# ---------------------------------------------------------------------- PostgreSQL
_PG_SCHEMES = ("postgresql://", "postgres://")
#: the advisory-lock keys of the store (one for appends, one for creating the tables)
_PG_APPEND_LOCK = 0x676D_7466_6200  # "gmtfb"
_PG_DDL_LOCK = 0x676D_7466_6201


class GroupCommit:
    """Appends from many threads written in shared transactions (group commit): a thread that finds no
    write in progress writes every batch of rows waiting (its own and those that queued meanwhile) in ONE
    transaction, so one fsync serves them all; the others wait for it.  Each caller's rows stay together
    (a pairwise preference is in one transaction, as with ``append_many``).  When a shared transaction
    fails, each batch is written alone, so one bad batch fails only its own caller.

    ``write(rows) -> ids`` stores the rows in one transaction (the caller adds what must happen with the
    commit, e.g. marking the ids, under a lock of its own)."""

    def __init__(self, write: Any) -> None:
        self._write = write
        self._cv = threading.Condition()
        self._queue: list[dict[str, Any]] = []
        self._writing = False

    def submit(self, rows: list[dict[str, Any]]) -> list[int]:
        slot: dict[str, Any] = {"rows": rows, "done": False, "ids": None, "error": None}
        with self._cv:
            self._queue.append(slot)
            while not slot["done"]:
                if self._writing:
                    self._cv.wait()
                    continue
                batch, self._queue = self._queue, []
                self._writing = True
                self._cv.release()
                try:
                    self._flush(batch)
                finally:
                    self._cv.acquire()
                    self._writing = False
                    self._cv.notify_all()
        if slot["error"] is not None:
            raise slot["error"]
        return slot["ids"]

    def _flush(self, batch: list[dict[str, Any]]) -> None:
        try:
            if len(batch) > 1:
                ids = self._write([r for s in batch for r in s["rows"]])
                at = 0
                for s in batch:
                    s["ids"], at = ids[at:at + len(s["rows"])], at + len(s["rows"])
                    s["done"] = True
                return
        except Exception:  # noqa: BLE001 - each batch alone below: only the bad one fails
            pass
        for s in batch:
            try:
                s["ids"] = self._write(s["rows"])
            except BaseException as exc:  # handed to that caller
                s["error"] = exc
            s["done"] = True


def is_store_url(target: Any) -> bool:
    """True when ``target`` names a PostgreSQL store (a ``postgresql://`` or ``postgres://`` URL)."""
    return isinstance(target, str) and target.strip().lower().startswith(_PG_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def open_feedback_store(target: "str | os.PathLike[str] | FeedbackStore") -> FeedbackStore:
    """The store ``target`` names: a ``postgresql://`` URL opens :class:`PostgresFeedbackStore`,
    anything else is a SQLite file path (:class:`FeedbackLog`); a store is returned as it is."""
    if isinstance(target, FeedbackStore):
        return target
    if is_store_url(target):
        return PostgresFeedbackStore(str(target))
    return FeedbackLog(target)


def store_exists(target: "str | os.PathLike[str]") -> bool:
    """Whether there is anything to read at ``target``: a SQLite file that exists, or any PostgreSQL URL
    (the database itself is checked when the store is opened)."""
    return is_store_url(target) or Path(target).is_file()


_PG_CREATE = [
    f"""CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (
    {COL_ID} BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    {COL_TS} DOUBLE PRECISION NOT NULL,
    {C_USER_ID} TEXT NOT NULL CHECK (length({C_USER_ID}) > 0),
    {COL_SESSION_ID} TEXT,
    {F_TURN} INTEGER,
    {COL_QUERY_ID} TEXT,
    {F_QUERY} TEXT NOT NULL CHECK (length({F_QUERY}) > 0),
    {F_MODEL} TEXT NOT NULL CHECK (length({F_MODEL}) > 0),
    {F_RATING} DOUBLE PRECISION NOT NULL,
    {COL_TASK} TEXT
)""",
    # a store created before the task column existed gets it (in place; NULL for the old rows)
    f"ALTER TABLE {FEEDBACK_TABLE} ADD COLUMN IF NOT EXISTS {COL_TASK} TEXT",
    f"CREATE INDEX IF NOT EXISTS {FEEDBACK_TABLE}_{C_USER_ID}_{COL_ID} ON {FEEDBACK_TABLE} ({C_USER_ID}, {COL_ID})",
    f"""CREATE TABLE IF NOT EXISTS {LLM_EVENTS_TABLE} (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    op TEXT NOT NULL CHECK (length(op) > 0),
    name TEXT NOT NULL CHECK (length(name) > 0),
    description TEXT,
    cost DOUBLE PRECISION,
    endpoint TEXT
)""",
]
_PG_INSERT_MANY = f"INSERT INTO {FEEDBACK_TABLE} ({', '.join(FEEDBACK_COLUMNS[1:])}) VALUES "
_PG_ROW = f"({', '.join('%s' for _ in FEEDBACK_COLUMNS[1:])})"
_PG_INSERT_EVENT = (f"INSERT INTO {LLM_EVENTS_TABLE} ({', '.join(LLM_EVENT_COLUMNS[1:])}) "
                    f"VALUES ({', '.join('%s' for _ in LLM_EVENT_COLUMNS[1:])}) RETURNING id")


class PostgresFeedbackStore(FeedbackStore):
    """The feedback store in a PostgreSQL database (tables ``feedback`` and ``llm_events``, created on
    first use), for routers on several machines or a fleet of replicas; ``url`` is a libpq URL,
    ``postgresql://user:password@host:port/database``.

    Each process (after ``fork`` too) and each store opens its own connection, shared by the threads of
    that process behind a lock; a broken connection (a restarted server) is reopened on the next call.
    The connection is in autocommit mode and each call sends one statement string, one round trip: a read
    is a single statement; an append is the advisory lock and one multi-row ``INSERT ... RETURNING id``,
    which PostgreSQL runs as one transaction (several statements in one simple query).
    Appends commit synchronously (PostgreSQL's default ``synchronous_commit``), so an acknowledged
    record survives the crash of any router.  Reads use an index on ``(user_id, id)`` for
    :meth:`read_user`.  Uses psycopg2 (``psycopg2-binary``, a pinned dependency), imported on first use."""

    lazy_users = True

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        if not is_store_url(url):
            raise ValueError(f"not a PostgreSQL URL: {redact_url(str(url))!r} (expected postgresql://...)")
        self.url = url.strip()
        self.location = redact_url(self.url)
        self._connect_timeout = max(1, int(connect_timeout))
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = -1
        with self._lock:
            self._run(self._create_tables, retry=True)

    # ------------------------------------------------------------------ internals
    def _connection(self) -> Any:
        """The connection for this process (caller holds ``self._lock``)."""
        if self._conn is None or self._pid != os.getpid() or self._conn.closed:
            import psycopg2

            if self._conn is not None and self._pid == os.getpid():
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - already broken
                    pass
            try:
                conn = psycopg2.connect(self.url, connect_timeout=self._connect_timeout,
                                        application_name="gmtrouter-feedback")
            except psycopg2.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise FeedbackStoreError(f"feedback store {self.location}: cannot connect: {first}") from None
            # autocommit: a call is ONE statement string, one round trip (psycopg2 would send BEGIN and COMMIT
            # as round trips of their own); a string of several statements runs as one transaction (the simple
            # query protocol's implicit transaction), which appends and the table creation use
            conn.autocommit = True
            self._conn = conn
            self._pid = os.getpid()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
        self._conn = None

    def _run(self, fn: Any, *, retry: bool) -> Any:
        """``fn(cursor)`` (caller holds the lock); ``fn`` sends one statement string (autocommit: it commits
        when it succeeds and rolls back when it fails).  ``retry``: a read may run again once on a fresh
        connection when the old one broke (a restarted server); an append never does (it may have
        committed)."""
        import psycopg2

        for attempt in (0, 1):
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    return fn(cur)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self._drop_connection()
                if not retry or attempt:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise FeedbackStoreError(f"feedback store {self.location}: {first}") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _create_tables(cur: Any) -> None:
        # several processes may create the tables at once: CREATE ... IF NOT EXISTS alone can race; one
        # statement string = one transaction, which holds the lock to its end
        cur.execute("; ".join(["SELECT pg_advisory_xact_lock(%s)" % _PG_DDL_LOCK, *_PG_CREATE]))

    @staticmethod
    def _rows(rows: list[tuple[Any, ...]]) -> list[FeedbackRecord]:
        return [FeedbackRecord(int(r[0]), float(r[1]), r[2], r[3], None if r[4] is None else int(r[4]), r[5], r[6],
                               r[7], float(r[8]), r[9]) for r in rows]

    # ------------------------------------------------------------------ writing
    def append_many(self, rows: list[dict[str, Any]]) -> list[int]:
        ts_now = time.time()
        values = [_record_values(row, ts_now) for row in rows]
        if not values:
            return []

        def insert(cur: Any) -> list[int]:
            # ids drawn and committed in one order: every append holds this lock until its commit.  One
            # statement string (the lock, then one multi-row INSERT: ids in row order): one transaction, one
            # round trip
            cur.execute(f"SELECT pg_advisory_xact_lock({_PG_APPEND_LOCK}); " + _PG_INSERT_MANY
                        + ", ".join([_PG_ROW] * len(values)) + f" RETURNING {COL_ID}",
                        [x for v in values for x in v])
            # (a multi-row VALUES list is inserted in its order, and RETURNING gives the rows in that order)
            return [int(r[0]) for r in cur.fetchall()]

        with self._lock:
            return self._run(insert, retry=False)

    def append_llm_event(self, op: str, name: str, description: str | None = None, cost: float | None = None,
                         endpoint: str | None = None) -> int:
        values = _llm_event_values(op, name, description, cost, endpoint)

        def insert(cur: Any) -> int:
            cur.execute(f"SELECT pg_advisory_xact_lock({_PG_APPEND_LOCK + 1}); " + _PG_INSERT_EVENT, values)
            return int(cur.fetchone()[0])

        with self._lock:
            return self._run(insert, retry=False)

    # ------------------------------------------------------------------ reading
    def _select(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def q(cur: Any) -> list[tuple[Any, ...]]:
            cur.execute(sql, params)
            return cur.fetchall()

        with self._lock:
            return self._run(q, retry=True)

    def read(self, since_id: int = 0, limit: int | None = None) -> list[FeedbackRecord]:
        since = self._check_since(since_id)
        lim = self._check_limit(limit)
        sql = f"SELECT {_SELECT_COLS} FROM {FEEDBACK_TABLE} WHERE {COL_ID} > %s ORDER BY {COL_ID}"
        params: tuple[Any, ...] = (since,)
        if lim is not None:
            sql += " LIMIT %s"
            params += (lim,)
        return self._rows(self._select(sql, params))

    def read_user(self, user_id: str, since_id: int = 0, through_id: int | None = None) -> list[FeedbackRecord]:
        since = self._check_since(since_id)
        sql = f"SELECT {_SELECT_COLS} FROM {FEEDBACK_TABLE} WHERE {C_USER_ID} = %s AND {COL_ID} > %s"
        params: tuple[Any, ...] = (user_id, since)
        if through_id is not None:
            sql += f" AND {COL_ID} <= %s"
            params += (self._check_since(through_id, "through_id"),)
        return self._rows(self._select(sql + f" ORDER BY {COL_ID}", params))

    def read_llm_events(self, since_id: int = 0) -> list[dict]:
        since = self._check_since(since_id)
        rows = self._select(f"SELECT {', '.join(LLM_EVENT_COLUMNS)} FROM {LLM_EVENTS_TABLE} WHERE id > %s "
                            "ORDER BY id", (since,))
        return [dict(zip(LLM_EVENT_COLUMNS, (int(r[0]), float(r[1]), *r[2:]))) for r in rows]

    def count(self, since_id: int = 0) -> int:
        since = self._check_since(since_id)
        return int(self._select(f"SELECT COUNT(*) FROM {FEEDBACK_TABLE} WHERE {COL_ID} > %s", (since,))[0][0])

    def max_id(self) -> int:
        (m,) = self._select(f"SELECT MAX({COL_ID}) FROM {FEEDBACK_TABLE}", ())[0]
        return int(m) if m is not None else 0

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def __repr__(self) -> str:
        return f"PostgresFeedbackStore({self.location!r})"
