"""The durable feedback log: validation, reading, export and many writer processes."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import sqlite3

import pyarrow.parquet as pq
import pytest

from gmt_model.serving.feedback import FEEDBACK_COLUMNS, FeedbackLog, FeedbackRecord

N_PROCS = 4
N_PER_PROC = 200


def _writer(path: str, worker: int, n: int, barrier) -> None:
    """Child process body (module level so 'spawn' can import it)."""
    log = FeedbackLog(path)
    barrier.wait(timeout=60)  # start all writers at the same moment
    for i in range(n):
        log.append(
            f"user-{worker}",
            f"query {worker}-{i}: " + "x" * (i % 7),
            f"model-{i % 3}",
            float(i % 5) + 0.5,
            session_id=f"s-{worker}",
            turn=i + 1,
            query_id=f"q-{worker}-{i}",
        )
    log.close()


def test_append_read_roundtrip(tmp_path):
    log = FeedbackLog(tmp_path / "sub" / "fb.sqlite")
    assert log.max_id() == 0 and log.count() == 0 and log.read() == []
    a = log.append("alice", "What is AI?", "gpt-4", 4.5, session_id="s1", turn=1, query_id="q1", ts=100.0)
    b = log.append("bob", "Write a poem", "claude-2", 2)
    assert b > a
    recs = log.read()
    assert [r.id for r in recs] == [a, b]
    assert recs[0] == FeedbackRecord(a, 100.0, "alice", "s1", 1, "q1", "What is AI?", "gpt-4", 4.5)
    assert recs[1].session_id is None and recs[1].turn is None and recs[1].rating == 2.0
    assert isinstance(recs[1].rating, float) and recs[1].ts > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        recs[0].rating = 1.0  # type: ignore[misc]
    assert log.read(since_id=a) == [recs[1]]
    assert log.read(limit=1) == [recs[0]]
    assert log.count() == 2 and log.count(since_id=a) == 1 and log.count(since_id=b) == 0
    assert log.max_id() == b
    dicts = log.to_records()
    assert [list(d) for d in dicts] == [list(FEEDBACK_COLUMNS)] * 2
    assert dicts[0]["user_id"] == "alice" and dicts[1]["model"] == "claude-2"
    # a second handle on the same file sees the same data (durable, not cached)
    log.close()
    again = FeedbackLog(tmp_path / "sub" / "fb.sqlite")
    assert again.read() == recs
    mode = sqlite3.connect(tmp_path / "sub" / "fb.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"user_id": ""}, "user_id"),
        ({"user_id": "   "}, "user_id"),
        ({"user_id": 7}, "user_id"),
        ({"query": ""}, "query"),
        ({"query": None}, "query"),
        ({"model": ""}, "model"),
        ({"rating": float("nan")}, "rating"),
        ({"rating": math.inf}, "rating"),
        ({"rating": "4"}, "rating"),
        ({"rating": True}, "rating"),
        ({"session_id": ""}, "session_id"),
        ({"turn": 0}, "turn"),
        ({"turn": 1.5}, "turn"),
        ({"query_id": 3}, "query_id"),
        ({"ts": float("nan")}, "ts"),
    ],
)
def test_bad_records_are_rejected_and_not_stored(tmp_path, kwargs, field):
    log = FeedbackLog(tmp_path / "fb.sqlite")
    log.append("alice", "ok", "m", 3.0)
    args = {"user_id": "alice", "query": "q", "model": "m", "rating": 3.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=repr(field)):
        log.append(**args)
    assert log.count() == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="file path"):
        FeedbackLog(":memory:")
    with pytest.raises(ValueError, match="directory"):
        FeedbackLog(tmp_path)
    log = FeedbackLog(tmp_path / "fb.sqlite")
    with pytest.raises(ValueError, match="since_id"):
        log.read(since_id=-1)
    with pytest.raises(ValueError, match="limit"):
        log.read(limit=-2)


def test_threads_share_one_log(tmp_path):
    import threading

    log = FeedbackLog(tmp_path / "fb.sqlite")

    def work(k: int) -> None:
        for i in range(50):
            log.append(f"t{k}", f"q{i}", "m", 1.0)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = log.read()
    assert len(recs) == 200 and len({r.id for r in recs}) == 200
    assert sorted((r.user_id, r.query) for r in recs) == sorted((f"t{k}", f"q{i}") for k in range(4) for i in range(50))


def test_many_writer_processes(tmp_path):
    path = str(tmp_path / "fb.sqlite")
    # the file does not exist yet: the writers also race to create it
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(N_PROCS)
    procs = [ctx.Process(target=_writer, args=(path, k, N_PER_PROC, barrier)) for k in range(N_PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * N_PROCS

    log = FeedbackLog(path)
    recs = log.read()
    assert len(recs) == N_PROCS * N_PER_PROC == log.count()
    ids = [r.id for r in recs]
    assert len(set(ids)) == len(ids) and ids == sorted(ids) and log.max_id() == max(ids)
    seen = set()
    for r in recs:
        worker = int(r.user_id.split("-")[1])
        i = int(r.query_id.split("-")[2])
        assert r.query == f"query {worker}-{i}: " + "x" * (i % 7)
        assert r.model == f"model-{i % 3}" and r.rating == float(i % 5) + 0.5
        assert r.session_id == f"s-{worker}" and r.turn == i + 1
        seen.add((worker, i))
    assert seen == {(k, i) for k in range(N_PROCS) for i in range(N_PER_PROC)}
    # each writer's own records were committed in its own order
    for k in range(N_PROCS):
        mine = [r.turn for r in recs if r.user_id == f"user-{k}"]
        assert mine == list(range(1, N_PER_PROC + 1))
    # the writers really contended: ts is taken before the write lock, so
    # overlapping [first ts, last ts] spans mean two processes were appending
    # at the same time (SQLite may still serialise, even starve, them)
    spans = [(min(r.ts for r in recs if r.user_id == f"user-{k}"), max(r.ts for r in recs if r.user_id == f"user-{k}"))
             for k in range(N_PROCS)]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:]), spans


def test_export_parquet_atomic(tmp_path):
    log = FeedbackLog(tmp_path / "fb.sqlite")
    ids = [log.append(f"u{i}", f"q{i}", "m", i / 2, turn=(i + 1) if i % 2 else None) for i in range(5)]
    out = tmp_path / "exports" / "feedback.parquet"
    assert log.export_parquet(out) == 5
    table = pq.read_table(out)
    assert table.column_names == list(FEEDBACK_COLUMNS)
    assert table.column("id").to_pylist() == ids
    assert table.column("rating").to_pylist() == [i / 2 for i in range(5)]
    assert table.column("turn").to_pylist() == [None, 2, None, 4, None]
    # since_id exports the tail; the file is replaced, no temp files are left behind
    assert log.export_parquet(out, since_id=ids[2]) == 2
    assert pq.read_table(out).column("user_id").to_pylist() == ["u3", "u4"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["feedback.parquet"]
    # an empty log exports an empty table with the full schema
    empty = FeedbackLog(tmp_path / "empty.sqlite")
    assert empty.export_parquet(tmp_path / "empty.parquet") == 0
    assert pq.read_table(tmp_path / "empty.parquet").column_names == list(FEEDBACK_COLUMNS)
