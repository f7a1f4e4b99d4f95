"""The embedding store: keys, atomic writes and appends, vectorised lookups, float16, merging shards."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from gmt_model.data import embeddings as E
from gmt_model.data.embeddings import (EmbeddingStore, EmbeddingStoreError, MissingEmbeddingError, append_to_store,
                                  merge_stores, shard_of, text_hash, text_hashes, write_store)


def _vecs(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_text_hash_is_sha256_prefix():
    assert text_hash("héllo") == hashlib.sha256("héllo".encode()).digest()[:16]
    h = text_hashes(["a", "héllo", ""])
    assert h.dtype == np.dtype("S16") and h[1] == text_hash("héllo") and h[2] == text_hash("")


def test_write_and_lookup_round_trip(tmp_path):
    texts = [f"text {i}" for i in range(1000)]
    v = _vecs(1000)
    s = write_store(tmp_path / "e.parquet", text_hashes(texts), v, encoder="enc-a")
    assert (len(s), s.dim, s.encoder, s.dtype) == (1000, 8, "enc-a", "float32")
    order = np.random.default_rng(1).permutation(1000)
    got = s.lookup(text_hashes([texts[i] for i in order]))
    np.testing.assert_array_equal(got, v[order])  # float32: exact
    # the file is what the docs say
    pf = pq.ParquetFile(tmp_path / "e.parquet")
    assert str(pf.schema_arrow.field("text_hash").type) == "fixed_size_binary[16]"
    t = pf.schema_arrow.field("embedding").type
    assert t.list_size == 8 and str(t.value_type) == "float"
    assert pf.schema_arrow.metadata[b"gmtrouter.encoder"] == b"enc-a"


def test_missing_hashes_raise_one_line(tmp_path):
    s = write_store(tmp_path / "e.parquet", text_hashes(["a", "b"]), _vecs(2), encoder=None)
    assert s.contains(text_hashes(["a", "zz", "b"])).tolist() == [True, False, True]
    with pytest.raises(MissingEmbeddingError) as ei:
        s.lookup(text_hashes(["a", "zz"]))
    msg = str(ei.value)
    assert "\n" not in msg and "1 of 2 hashes" in msg and text_hash("zz").hex() in msg and "e.parquet" in msg


def test_lookup_is_vectorised_no_python_loop_per_row(tmp_path, monkeypatch):
    """1M lookups against 50k stored texts: hashing is done up front; the lookup itself never calls
    per-row Python (hash_array is the only conversion and it gets an S16 array)."""
    n = 50_000
    h = np.frombuffer(np.random.default_rng(0).bytes(16 * n), dtype="S16").copy()
    s = write_store(tmp_path / "e.parquet", h, np.random.default_rng(1).normal(size=(n, 4)), encoder="x")
    queries = h[np.random.default_rng(2).integers(0, n, 1_000_000)]

    def no_iteration(*a, **k):
        raise AssertionError("per-row iteration over hashes")

    monkeypatch.setattr(E, "_unique_first", no_iteration)
    original = E.hash_array

    def strict(hashes):
        assert isinstance(hashes, np.ndarray), "lookup converted hashes row by row"
        return original(hashes)

    monkeypatch.setattr(E, "hash_array", strict)
    rows = s.rows(queries)
    assert rows.shape == (1_000_000,)
    assert (s.hashes[rows] == queries).all()


def test_append_is_atomic_and_keeps_existing(tmp_path, monkeypatch):
    p = tmp_path / "e.parquet"
    v = _vecs(10)
    append_to_store(p, text_hashes([f"t{i}" for i in range(5)]), v[:5], encoder="e")
    s = append_to_store(p, text_hashes([f"t{i}" for i in range(3, 10)]), np.concatenate([v[3:5] * 0 + 1, v[5:]]),
                        encoder="e")
    assert len(s) == 10
    np.testing.assert_array_equal(s.lookup_texts(["t3", "t4", "t9"]), v[[3, 4, 9]])  # the first vector stays
    before = p.read_bytes()

    # a crash while writing the new file leaves the old file as it was and no temporary file
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(E, "_write_rows", boom)
    with pytest.raises(RuntimeError):
        append_to_store(p, text_hashes(["new"]), _vecs(1), encoder="e")
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["e.parquet", "e.parquet.lock"]


def test_append_refuses_other_encoder_or_width(tmp_path):
    p = tmp_path / "e.parquet"
    append_to_store(p, text_hashes(["a"]), _vecs(1), encoder="e")
    with pytest.raises(EmbeddingStoreError, match="encoder 'e'"):
        append_to_store(p, text_hashes(["b"]), _vecs(1), encoder="other")
    with pytest.raises(EmbeddingStoreError, match="width 8"):
        append_to_store(p, text_hashes(["b"]), _vecs(1, d=4), encoder="e")
    with pytest.raises(EmbeddingStoreError, match="non-finite"):
        append_to_store(p, text_hashes(["b"]), np.full((1, 8), np.nan), encoder="e")


def _append_worker(args):
    path, k = args
    texts = [f"proc{k} text {i}" for i in range(50)]
    for i in range(0, 50, 10):
        append_to_store(path, text_hashes(texts[i:i + 10]), _vecs(10, seed=k * 100 + i), encoder="e")


def test_concurrent_appends_from_processes_lose_nothing(tmp_path):
    p = str(tmp_path / "e.parquet")
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_append_worker, [(p, k) for k in range(4)])
    s = EmbeddingStore.open(p)
    assert len(s) == 200
    assert s.contains(text_hashes([f"proc{k} text {i}" for k in range(4) for i in range(50)])).all()


def test_float16_store_is_half_size_and_close(tmp_path):
    texts = [f"t{i}" for i in range(2000)]
    v = _vecs(2000, d=64)
    s32 = write_store(tmp_path / "a.parquet", text_hashes(texts), v, encoder="e")
    s16 = write_store(tmp_path / "b.parquet", text_hashes(texts), v, encoder="e", dtype="float16")
    assert s16.dtype == "float16" and s16.matrix.dtype == np.float16
    got = s16.lookup_texts(texts)
    assert got.dtype == np.float32
    err = np.abs(got - v).max()
    assert 0 < err < 1e-3  # float16 keeps ~3 decimal digits of a unit vector's components
    assert s16.matrix.nbytes * 2 == s32.matrix.nbytes


def test_open_refuses_other_files(tmp_path):
    p = tmp_path / "x.parquet"
    import pyarrow as pa

    pq.write_table(pa.table({"a": [1]}), p)
    with pytest.raises(EmbeddingStoreError, match="not an embedding store"):
        EmbeddingStore.open(p)
    (tmp_path / "y.parquet").write_bytes(b"garbage")
    with pytest.raises(EmbeddingStoreError, match="y.parquet"):
        EmbeddingStore.open(tmp_path / "y.parquet")


def test_shards_partition_the_keys_and_merge_back(tmp_path):
    texts = [f"t{i}" for i in range(500)]
    h, v = text_hashes(texts), _vecs(500)
    sh = shard_of(h, 4)
    assert set(sh.tolist()) == {0, 1, 2, 3}
    parts = []
    for k in range(4):
        m = sh == k
        parts.append(write_store(tmp_path / f"s{k}.parquet", h[m], v[m], encoder="e").path)
    merged = merge_stores(tmp_path / "all.parquet", parts)
    assert len(merged) == 500
    np.testing.assert_array_equal(merged.lookup(h), v)


def test_sixteen_shards_are_the_first_hex_digit():
    h = text_hashes([f"x{i}" for i in range(300)])
    assert [format(k, "x") for k in shard_of(h, 16)] == [x.hex()[0] for x in h]
    assert (shard_of(h, 1) == 0).all()
