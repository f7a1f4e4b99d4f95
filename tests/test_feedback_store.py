"""The feedback store interface on both back ends: SQLite (the embedded default) and PostgreSQL (a throwaway
cluster on 127.0.0.1; skipped only where PostgreSQL is not installed -- CI installs it)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import uuid

import pytest

from gmt_model.serving.feedback import (
    LLM_EVENT_COLUMNS,
    FeedbackLog,
    FeedbackStore,
    FeedbackStoreError,
    PostgresFeedbackStore,
    is_store_url,
    open_feedback_store,
    redact_url,
)
from pg_cluster import pg_bin

needs_pg = pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed (CI installs it)")


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "fb.sqlite")
    cluster = request.getfixturevalue("pg")
    return cluster.create_db("fb_" + uuid.uuid4().hex[:10])


def test_url_helpers():
    assert is_store_url("postgresql://u:p@h:5/db") and is_store_url("postgres://h/db")
    assert not is_store_url("./feedback.sqlite") and not is_store_url(None)
    assert redact_url("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_url("postgresql://h/db") == "postgresql://h/db"


def test_interface_roundtrip(store_target):
    store = open_feedback_store(store_target)
    assert isinstance(store, FeedbackStore)
    assert isinstance(store, PostgresFeedbackStore if is_store_url(store_target) else FeedbackLog)
    assert store.max_id() == 0 and store.read() == [] and store.read_user("alice") == []
    a = store.append("alice", "What is AI?", "gpt-4", 4.5, session_id="s1", turn=1, query_id="q1", ts=100.0,
                     task="coding")
    b = store.append("bob", "Write a poem", "claude-2", 2)
    c, d = store.append_many([dict(user_id="alice", query="Q2", model="m1", rating=5, query_id="p"),
                              dict(user_id="alice", query="Q2", model="m2", rating=1, query_id="p")])
    assert a < b < c < d
    recs = store.read()
    assert [r.id for r in recs] == [a, b, c, d]
    assert recs[0].to_dict() == {"id": a, "ts": 100.0, "user_id": "alice", "session_id": "s1", "turn": 1,
                                 "query_id": "q1", "query": "What is AI?", "model": "gpt-4", "rating": 4.5,
                                 "task": "coding"}
    assert isinstance(recs[1].rating, float) and recs[1].turn is None and recs[1].task is None
    assert [r.id for r in store.read_user("alice")] == [a, c, d]
    assert [r.id for r in store.read_user("alice", since_id=a, through_id=c)] == [c]
    assert store.read(since_id=b, limit=1) == [recs[2]]
    assert store.count() == 4 and store.count(since_id=c) == 1 and store.max_id() == d
    # bad records store nothing, naming the field; a bad row in a batch stores none of the batch
    with pytest.raises(ValueError, match="'rating'"):
        store.append("alice", "q", "m", float("nan"))
    with pytest.raises(ValueError, match="'user_id'"):
        store.append_many([dict(user_id="x", query="q", model="m", rating=1), dict(user_id="", query="q",
                                                                                  model="m", rating=1)])
    with pytest.raises(ValueError, match="since_id"):
        store.read(since_id=-1)
    with pytest.raises(ValueError, match="'task'"):
        store.append("alice", "q", "m", 1, task="")
    assert store.count() == 4
    # another handle (another process would do the same) sees the same rows
    store.close()
    with open_feedback_store(store_target) as again:
        assert again.read() == recs


@needs_pg
def test_llm_events(pg):
    store = PostgresFeedbackStore(pg.create_db("ev_" + uuid.uuid4().hex[:10]))
    assert store.read_llm_events() == []
    i = store.append_llm_event("add", "llama-3", description="an open model", cost=0.2,
                               endpoint="http://127.0.0.1:9/v1")
    j = store.append_llm_event("remove", "gpt-4")
    ev = store.read_llm_events()
    assert [e["id"] for e in ev] == [i, j] and list(ev[0]) == list(LLM_EVENT_COLUMNS)
    assert ev[0]["op"] == "add" and ev[0]["cost"] == 0.2 and ev[1]["description"] is None
    assert store.read_llm_events(since_id=i) == ev[1:]
    with pytest.raises(ValueError, match="'name'"):
        store.append_llm_event("add", "")
    assert len(store.read_llm_events()) == 2
    assert store.max_id() == 0  # events are not feedback rows


def _pg_writer(url: str, worker: int, n: int, barrier) -> None:
    store = PostgresFeedbackStore(url)
    barrier.wait(timeout=60)
    for i in range(n):
        store.append(f"user-{worker}", f"q {worker}-{i}", f"m{i % 3}", float(i % 5))
    store.close()


@needs_pg
def test_concurrent_writers_and_a_follower_never_miss_a_row(pg):
    """Ids are committed in id order: a follower that pages by id while 4 processes append sees every row
    exactly once (with plain sequence ids a later id can commit first, and the follower would skip the
    earlier one for good)."""
    url = pg.create_db("cc_" + uuid.uuid4().hex[:10])
    PostgresFeedbackStore(url).close()  # tables made once up front
    n_procs, n_per = 4, 60
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_procs)
    procs = [ctx.Process(target=_pg_writer, args=(url, w, n_per, barrier)) for w in range(n_procs)]
    seen: list[int] = []
    stop = threading.Event()

    def follow() -> None:
        f = PostgresFeedbackStore(url)
        last = 0
        while True:
            done = stop.is_set()
            rows = f.read(since_id=last)
            seen.extend(r.id for r in rows)
            if rows:
                last = rows[-1].id
            if done:
                break

    t = threading.Thread(target=follow)
    t.start()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    stop.set()
    t.join(timeout=60)
    store = PostgresFeedbackStore(url)
    all_ids = [r.id for r in store.read()]
    assert len(all_ids) == n_procs * n_per
    assert seen == all_ids  # every row, once, in order
    for w in range(n_procs):
        assert [r.query for r in store.read_user(f"user-{w}")] == [f"q {w}-{i}" for i in range(n_per)]


@needs_pg
def test_unreachable_server_and_restart(pg):
    url = pg.create_db("rs_" + uuid.uuid4().hex[:10])
    with pytest.raises(FeedbackStoreError, match=r"postgresql://u:\*\*\*@127.0.0.1:1/x: cannot connect"):
        PostgresFeedbackStore("postgresql://u:secret@127.0.0.1:1/x", connect_timeout=2)
    store = PostgresFeedbackStore(url)
    a = store.append("u", "q", "m", 1.0)
    pg.stop()
    try:
        with pytest.raises(FeedbackStoreError, match="feedback store"):
            store.append("u", "q", "m", 2.0)
    finally:
        pg.start()
    assert [r.id for r in store.read()] == [a]  # a read reconnects by itself
    b = store.append("u", "q", "m", 3.0)
    assert b > a and store.count() == 2


@needs_pg
def test_the_sensor_and_the_training_merge_read_a_postgresql_store(pg, tmp_path, monkeypatch):
    dg = pytest.importorskip("dagster")
    from assets.data_steps import _feedback
    from assets.resources import PathsResource, feedback_log_path
    from gmt_model.data.demo import LLMS
    from pipelines import jobs, sensors

    url = pg.create_db("se_" + uuid.uuid4().hex[:10])
    secret_url = url.replace("postgres@", "postgres:not-shown@")  # trust auth ignores the password
    monkeypatch.setenv("GMTROUTER_DEMO_FEEDBACK_LOG", secret_url)
    assert feedback_log_path("demo") == secret_url
    store = open_feedback_store(secret_url)
    sensor = sensors.build_feedback_sensor("demo", jobs.build_jobs()["demo"], min_new_records=2)
    paths = PathsResource(home=str(tmp_path / "data"))

    def tick():
        with dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), resources={"paths": paths}) as ctx:
            return sensor.evaluate_tick(ctx)

    store.append("u1", "q", LLMS[0], 5.0)
    res = tick()
    assert not res.run_requests and "1 new feedback record(s)" in res.skip_message
    assert "not-shown" not in res.skip_message and "***" in res.skip_message
    store.append("u1", "q", LLMS[1], 1.0)
    res = tick()
    assert len(res.run_requests) == 1 and res.run_requests[0].tags["gmtrouter/feedback_max_id"] == "2"
    groups, stats = _feedback(secret_url, list(LLMS), (1.0, 5.0), set())
    assert stats.log_exists and stats.max_id == 2 and stats.rows_merged == 2 and len(groups) == 1
    assert "not-shown" not in stats.log_path


def test_group_commit_shares_transactions_and_fails_only_the_bad_batch(tmp_path):
    """Concurrent appends go through shared transactions (fewer commits than appends), every caller gets
    the ids of its own rows, a pair stays adjacent, and a bad batch fails alone."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from gmt_model.serving.feedback import FeedbackLog, GroupCommit

    log = FeedbackLog(tmp_path / "fb.sqlite")
    commits = []
    gate = threading.Event()

    def write(rows):
        gate.wait(5)  # the first writer waits: the others queue behind it
        commits.append(len(rows))
        return log.append_many(rows)

    gc = GroupCommit(write)

    def one(i):
        if i == 7:
            rows = [dict(user_id="u7", query="q", model="m", rating=float("nan"))]  # invalid: fails alone
        else:
            rows = [dict(user_id=f"u{i}", query=f"q{i}", model=m, rating=r, query_id=f"pair{i}")
                    for m, r in (("a", 5.0), ("b", 1.0))]
        return gc.submit(rows)

    with ThreadPoolExecutor(12) as pool:
        futs = [pool.submit(one, i) for i in range(12)]
        threading.Timer(0.5, gate.set).start()
        results = []
        for i, f in enumerate(futs):
            if i == 7:
                with pytest.raises(ValueError):
                    f.result(timeout=30)
            else:
                results.append((i, f.result(timeout=30)))
    stored = {r.id: r for r in log.read()}
    assert len(stored) == 22
    for i, ids in results:
        assert len(ids) == 2 and ids[1] == ids[0] + 1
        assert [stored[x].user_id for x in ids] == [f"u{i}", f"u{i}"] and stored[ids[0]].model == "a"
    assert sum(1 for n in commits if n > 2) >= 1  # some transaction carried several callers' rows


#: the feedback table as stores wrote it before the task column existed
_OLD_TABLE = """CREATE TABLE feedback (
    id {id} PRIMARY KEY{auto},
    ts {real} NOT NULL,
    user_id TEXT NOT NULL,
    session_id TEXT,
    turn INTEGER,
    query_id TEXT,
    query TEXT NOT NULL,
    model TEXT NOT NULL,
    rating {real} NOT NULL
)"""


def test_a_log_written_before_the_task_column_is_migrated_in_place(store_target):
    """An old log (no task column) opens, keeps its rows (task None), takes rows with a task, and an old
    writer's INSERT (the old column list) still works on the migrated table."""
    old_insert = ("INSERT INTO feedback (ts, user_id, session_id, turn, query_id, query, model, rating) "
                  "VALUES (1.0, 'alice', NULL, NULL, NULL, 'old question', 'm1', 4.0)")
    if is_store_url(store_target):
        import psycopg2

        def run(sql):
            conn = psycopg2.connect(store_target)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
            conn.close()

        run(_OLD_TABLE.format(id="BIGINT GENERATED BY DEFAULT AS IDENTITY", auto="", real="DOUBLE PRECISION"))
    else:
        import sqlite3

        def run(sql):
            conn = sqlite3.connect(store_target)
            conn.execute(sql)
            conn.commit()
            conn.close()

        run(_OLD_TABLE.format(id="INTEGER", auto=" AUTOINCREMENT", real="REAL"))
    run(old_insert)
    store = open_feedback_store(store_target)
    (old,) = store.read()
    assert old.query == "old question" and old.task is None
    new = store.append("alice", "new question", "m2", 2.0, task="writing")
    run(old_insert)  # a process still running the old code
    recs = store.read()
    assert [(r.id, r.task) for r in recs] == [(old.id, None), (new, "writing"), (new + 1, None)]
    assert [r.task for r in store.read_user("alice")] == [None, "writing", None]
    store.close()
    with open_feedback_store(store_target) as again:  # opening a migrated log again changes nothing
        assert again.read() == recs
