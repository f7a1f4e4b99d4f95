"""The embedding store: one vector per distinct text, in a Parquet table keyed by a hash of the text.

File layout (one Parquet file)::

    text_hash  fixed_size_binary(16)   first 16 bytes of sha256(UTF-8 text); unique
    embedding  fixed_size_list<float32>[d]   (or float16, ``dtype="float16"``)

plus key-value metadata ``gmtrouter.encoder``, ``gmtrouter.dim``, ``gmtrouter.dtype`` and
``gmtrouter.format``.  Rows are in insertion order (appends add row groups at the end); the
reader sorts the hash column once (``argsort`` of T 16-byte keys) and answers a lookup of n
hashes with one ``searchsorted``: no per-row Python loop, whatever n is.

Writes are atomic: a temporary file in the same folder, fsync, ``os.replace``.  Appends copy
the existing row groups one at a time into the temporary file (memory bounded by a row group,
not by the store) and hold an exclusive lock file (``<file>.lock``) so that concurrent appenders
from several processes do not lose each other's rows.

float16 halves the file and the matrix; its loss on L2-normalised vectors is measured in
docs/benchmarks.md (``scripts/benchmark_embedding_store.py``).  Lookups always return float32.

This module is a pure library (numpy + pyarrow); it never imports Dagster.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gmt_model.atomic import atomic_path

__all__ = [
    "HASH_BYTES",
    "C_TEXT_HASH",
    "C_EMBEDDING",
    "C_TEXT",
    "STORE_FORMAT",
    "DTYPES",
    "EmbeddingStoreError",
    "MissingEmbeddingError",
    "EmbeddingStore",
    "text_hash",
    "text_hashes",
    "hash_array",
    "hashes_from_arrow",
    "write_store",
    "append_to_store",
    "merge_stores",
    "shard_of",
    "StoreWriter",
    "atomic_parquet_writer",
]

#: bytes of the text key (a prefix of sha256)
HASH_BYTES = 16
C_TEXT_HASH = "text_hash"
C_EMBEDDING = "embedding"
C_TEXT = "text"
STORE_FORMAT = "gmtrouter-embeddings/1"
DTYPES = ("float32", "float16")
_META_ENCODER = b"gmtrouter.encoder"
_META_DIM = b"gmtrouter.dim"
_META_DTYPE = b"gmtrouter.dtype"
_META_FORMAT = b"gmtrouter.format"
#: rows per Parquet row group (and per batch when a store is copied)
ROW_GROUP = 65_536
HASH_TYPE = pa.binary(HASH_BYTES)


class EmbeddingStoreError(ValueError):
    """A store file is unreadable or inconsistent, or vectors do not fit it (one line, naming the file)."""


class MissingEmbeddingError(EmbeddingStoreError, KeyError):
    """Some looked-up hashes are not in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------
def text_hash(text: str) -> bytes:
    """The 16-byte key of ``text``: the first 16 bytes of sha256 of its UTF-8 encoding."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:HASH_BYTES]


def text_hashes(texts: Iterable[str]) -> np.ndarray:
    """Keys of many texts as a numpy ``'S16'`` array (one sha256 per text)."""
    sha = hashlib.sha256
    return np.frombuffer(b"".join(sha(t.encode("utf-8")).digest()[:HASH_BYTES] for t in texts),
                         dtype=f"S{HASH_BYTES}").copy()


def hash_array(hashes: Any) -> np.ndarray:
    """``hashes`` (an ``'S16'`` array, a list of 16-byte ``bytes`` or an Arrow binary(16) column) as ``'S16'``."""
    if isinstance(hashes, (pa.Array, pa.ChunkedArray)):
        return hashes_from_arrow(hashes)
    if isinstance(hashes, np.ndarray) and hashes.dtype == np.dtype(f"S{HASH_BYTES}"):
        return hashes
    items = list(hashes)
    for i, h in enumerate(items):
        if not isinstance(h, (bytes, np.bytes_)) or len(h) != HASH_BYTES:
            raise TypeError(f"hash {i}: expected {HASH_BYTES} bytes, got {type(h).__name__} of length "
                            f"{len(h) if hasattr(h, '__len__') else '?'}")
    return np.frombuffer(b"".join(items), dtype=f"S{HASH_BYTES}").copy() if items else np.zeros(0, f"S{HASH_BYTES}")


def hashes_from_arrow(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow ``fixed_size_binary(16)`` column -> ``'S16'`` numpy array (no per-row Python)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if col.type != HASH_TYPE:
        raise EmbeddingStoreError(f"expected a fixed_size_binary({HASH_BYTES}) hash column, got {col.type}")
    if col.null_count:
        raise EmbeddingStoreError(f"hash column has {col.null_count} null values")
    if len(col) == 0:
        return np.zeros(0, f"S{HASH_BYTES}")
    buf = col.buffers()[1]
    start = col.offset * HASH_BYTES
    return np.frombuffer(buf, dtype=np.uint8, count=len(col) * HASH_BYTES, offset=start).view(f"S{HASH_BYTES}")


def _arrow_hashes(hashes: np.ndarray) -> pa.Array:
    h = np.ascontiguousarray(hashes, dtype=f"S{HASH_BYTES}")
    return pa.Array.from_buffers(HASH_TYPE, len(h), [None, pa.py_buffer(h.tobytes())])


def shard_of(hashes: Any, n_shards: int) -> np.ndarray:
    """Shard (0..n_shards-1) of each hash, a range of its first byte: ``first_byte * n_shards // 256``.

    With 16 shards the shard is the first hex digit of the hash (the partition key ``"0"``..``"f"``).
    Vectorised; ``n_shards`` must be in 1..256.
    """
    if not 1 <= n_shards <= 256:
        raise ValueError(f"n_shards must be in 1..256, got {n_shards}")
    h = hash_array(hashes)
    if len(h) == 0:
        return np.zeros(0, np.int64)
    first = np.frombuffer(h.tobytes(), dtype=np.uint8)[::HASH_BYTES].astype(np.int64)
    return first * n_shards // 256


# --------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------
def _emb_array(vectors: np.ndarray, dtype: str) -> pa.Array:
    np_dtype = np.float16 if dtype == "float16" else np.float32
    v = np.ascontiguousarray(vectors, dtype=np_dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), int(v.shape[1]))


def _schema(dim: int, dtype: str, encoder: str | None) -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    meta = {_META_FORMAT: STORE_FORMAT.encode(), _META_DIM: str(dim).encode(), _META_DTYPE: dtype.encode(),
            _META_ENCODER: (encoder or "").encode("utf-8")}
    return pa.schema([pa.field(C_TEXT_HASH, HASH_TYPE, nullable=False),
                      pa.field(C_EMBEDDING, pa.list_(value, dim), nullable=False)], metadata=meta)


def _check_vectors(path: Path, hashes: np.ndarray, vectors: np.ndarray, dim: int | None) -> np.ndarray:
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[0] != len(hashes):
        raise EmbeddingStoreError(f"{path}: expected vectors of shape ({len(hashes)}, d), got {v.shape}")
    if dim is not None and v.shape[1] != dim:
        raise EmbeddingStoreError(f"{path}: expected vectors of width {dim} (the store's), got width {v.shape[1]}")
    if v.shape[1] < 1:
        raise EmbeddingStoreError(f"{path}: expected vectors of width >= 1")
    with np.errstate(over="ignore", invalid="ignore"):
        v32 = v.astype(np.float32, copy=False)
    finite = np.isfinite(v32).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise EmbeddingStoreError(f"{path}: vector {bad} (hash {hashes[bad].hex()}) has non-finite values")
    return v32


def _unique_first(hashes: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct hash, in input order."""
    _, first = np.unique(hashes, return_index=True)
    return np.sort(first)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_parquet_writer(path: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A ``ParquetWriter`` on a temporary sibling of ``path`` (zstd), renamed over ``path`` when the block
    succeeds (``gmt_model.atomic.atomic_path``: fsync, rename; removed on error)."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        yield writer


_atomic_parquet = atomic_parquet_writer


def _write_rows(writer: pq.ParquetWriter, schema: pa.Schema, hashes: np.ndarray, vectors: np.ndarray,
                dtype: str) -> None:
    for start in range(0, len(hashes), ROW_GROUP):
        sl = slice(start, start + ROW_GROUP)
        writer.write_table(pa.Table.from_arrays([_arrow_hashes(hashes[sl]), _emb_array(vectors[sl], dtype)],
                                                schema=schema))


def write_store(path: str | os.PathLike[str], hashes: Any, vectors: np.ndarray, *, encoder: str | None,
                dtype: str = "float32") -> "EmbeddingStore":
    """Write a new store (replacing ``path`` atomically); duplicate hashes keep their first vector."""
    p = Path(path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    h = hash_array(hashes)
    v = _check_vectors(p, h, vectors, None)
    keep = _unique_first(h)
    h, v = h[keep], v[keep]
    schema = _schema(int(v.shape[1]), dtype, encoder)
    with _locked(p), _atomic_parquet(p, schema) as writer:
        _write_rows(writer, schema, h, v, dtype)
    return EmbeddingStore.open(p)


def append_to_store(path: str | os.PathLike[str], hashes: Any, vectors: np.ndarray, *,
                    encoder: str | None, dtype: str | None = None, dim: int | None = None) -> "EmbeddingStore":
    """Add the vectors of hashes not yet in the store at ``path`` (created when missing); atomic.

    Hashes already stored keep their stored vector.  The store's encoder, width and dtype must match
    (``dtype=None``: the store's, float32 for a new store).  Holds ``<path>.lock`` while it copies the old
    row groups and the new rows into a temporary file and renames it over ``path``.
    """
    p = Path(path)
    h = hash_array(hashes)
    with _locked(p):
        old = EmbeddingStore.open(p) if p.exists() else None
        if old is not None:
            if (old.encoder or None) != (encoder or None):
                raise EmbeddingStoreError(f"{p}: the store holds encoder {old.encoder!r}, cannot append vectors "
                                          f"of encoder {encoder!r}")
            if dtype is not None and dtype != old.dtype:
                raise EmbeddingStoreError(f"{p}: the store is {old.dtype}, cannot append as {dtype}")
            dtype = old.dtype
        dtype = dtype or "float32"
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
        v = np.zeros((0, dim or (old.dim if old is not None else 1)), np.float32) if len(h) == 0 else \
            _check_vectors(p, h, vectors, old.dim if old is not None else dim)
        keep = _unique_first(h)
        h, v = h[keep], v[keep]
        if old is not None:
            new = ~old.contains(h)
            h, v = h[new], v[new]
            if len(h) == 0:
                return old
        if old is None and len(h) == 0 and dim is None:
            raise EmbeddingStoreError(f"{p}: cannot create an empty store without its width (dim)")
        width = old.dim if old is not None else int(v.shape[1])
        schema = _schema(width, dtype, encoder)
        with _atomic_parquet(p, schema) as writer:
            if old is not None:
                pf = pq.ParquetFile(p)
                for i in range(pf.num_row_groups):
                    writer.write_table(pf.read_row_group(i).cast(schema))
            _write_rows(writer, schema, h, v, dtype)
    return EmbeddingStore.open(p)


def merge_stores(out: str | os.PathLike[str], parts: Sequence[str | os.PathLike[str]], *,
                 encoder: str | None = None, dtype: str | None = None) -> "EmbeddingStore":
    """One store at ``out`` from the part stores ``parts`` (e.g. embedding shards), atomically.

    Parts are copied row group by row group; a hash found in several parts keeps its first vector.
    Every part must hold the same encoder and width.
    """
    o = Path(out)
    stores = [EmbeddingStore.open(p) for p in parts]
    if not stores:
        raise EmbeddingStoreError(f"{o}: nothing to merge")
    enc = stores[0].encoder if encoder is None else encoder
    dim = stores[0].dim
    dt = dtype or stores[0].dtype
    for s in stores:
        if (s.encoder or None) != (enc or None) or s.dim != dim:
            raise EmbeddingStoreError(f"{s.path}: encoder {s.encoder!r} width {s.dim}, expected {enc!r} width {dim} "
                                      f"(as {stores[0].path})")
    schema = _schema(dim, dt, enc)
    seen = np.zeros(0, f"S{HASH_BYTES}")
    with _locked(o), _atomic_parquet(o, schema) as writer:
        for s in stores:
            h, m = s.hashes, s.matrix
            fresh = ~np.isin(h, seen) if len(seen) else np.ones(len(h), bool)
            _write_rows(writer, schema, h[fresh], m[fresh], dt)
            seen = np.union1d(seen, h)
    return EmbeddingStore.open(o)


class StoreWriter:
    """Streaming writer of a new store: ``add`` batches of (distinct, new) hashes and vectors, ``close``.

    Rows go to a temporary file in row groups (memory bounded by a batch); ``close`` renames it over
    ``path``; an exception inside ``with StoreWriter(...)`` removes it and leaves ``path`` untouched.
    The caller keeps hashes distinct (e.g. with a set of seen keys); a repeated hash raises at close.
    """

    def __init__(self, path: str | os.PathLike[str], dim: int, *, encoder: str | None,
                 dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
        self.path, self.dim, self.dtype, self.encoder = Path(path), int(dim), dtype, encoder
        self.schema = _schema(self.dim, dtype, encoder)
        self._cm = _atomic_parquet(self.path, self.schema)
        self._writer = self._cm.__enter__()
        self.n_rows = 0

    def add(self, hashes: Any, vectors: np.ndarray) -> None:
        h = hash_array(hashes)
        if len(h) == 0:
            return
        v = _check_vectors(self.path, h, vectors, self.dim)
        _write_rows(self._writer, self.schema, h, v, self.dtype)
        self.n_rows += len(h)

    def close(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            with contextlib.suppress(BaseException):
                cm.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if ev is None:
            self.close()
        else:
            self.abort(ev)


@dataclass
class EmbeddingStore:
    """A store read into memory: ``hashes`` (T,) ``'S16'``, ``matrix`` (T, d) float32 or float16."""

    path: Path
    hashes: np.ndarray
    matrix: np.ndarray
    encoder: str | None
    dtype: str
    _order: np.ndarray | None = None
    _sorted: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "EmbeddingStore":
        """Read a store file (memory-mapped); refuses a file that is not one, naming it."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: embedding store does not exist")
        try:
            table = pq.read_table(p, memory_map=True)
        except (OSError, pa.ArrowException) as exc:
            raise EmbeddingStoreError(f"{p}: not a readable Parquet file ({exc})") from exc
        meta = table.schema.metadata or {}
        if meta.get(_META_FORMAT) != STORE_FORMAT.encode():
            raise EmbeddingStoreError(f"{p}: not an embedding store (metadata gmtrouter.format is "
                                      f"{meta.get(_META_FORMAT)!r}, expected {STORE_FORMAT!r})")
        dtype = meta.get(_META_DTYPE, b"float32").decode()
        dim = int(meta.get(_META_DIM, b"0"))
        col = table.column(C_EMBEDDING)
        if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != dim:
            raise EmbeddingStoreError(f"{p}: embedding column is {col.type}, expected a fixed-size list of {dim}")
        hashes = hashes_from_arrow(table.column(C_TEXT_HASH))
        flat = (col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)).flatten() if len(col) else None
        np_dtype = np.float16 if dtype == "float16" else np.float32
        matrix = (np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np_dtype).reshape(-1, dim)
                  if flat is not None else np.zeros((0, dim), np_dtype))
        enc = meta.get(_META_ENCODER, b"").decode("utf-8") or None
        return cls(path=p, hashes=hashes, matrix=matrix, encoder=enc, dtype=dtype)

    # ---------------------------------------------------------------- sizes
    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    # -------------------------------------------------------------- lookups
    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._order is None:
            self._order = np.argsort(self.hashes, kind="stable")
            self._sorted = self.hashes[self._order]
        assert self._sorted is not None
        return self._order, self._sorted

    def _find(self, hashes: Any) -> tuple[np.ndarray, np.ndarray]:
        h = hash_array(hashes)
        order, srt = self._index()
        if len(srt) == 0:
            return np.zeros(len(h), np.int64), np.zeros(len(h), bool)
        pos = np.searchsorted(srt, h)
        pos_c = np.minimum(pos, len(srt) - 1)
        found = srt[pos_c] == h
        return order[pos_c].astype(np.int64), found

    def contains(self, hashes: Any) -> np.ndarray:
        """Boolean mask: which of ``hashes`` are stored."""
        return self._find(hashes)[1]

    def rows(self, hashes: Any) -> np.ndarray:
        """Row indices (into :attr:`matrix`) of ``hashes``; :class:`MissingEmbeddingError` if any is missing."""
        rows, found = self._find(hashes)
        if not found.all():
            miss = np.flatnonzero(~found)
            h = hash_array(hashes)
            raise MissingEmbeddingError(f"{self.path}: {len(miss)} of {len(found)} hashes have no embedding "
                                        f"(first: {h[miss[0]].hex()} at position {int(miss[0])})")
        return rows

    def lookup(self, hashes: Any) -> np.ndarray:
        """float32 ``(n, d)`` embeddings of ``hashes`` (one vectorised search; missing ones raise)."""
        return np.asarray(self.matrix[self.rows(hashes)], dtype=np.float32)

    def lookup_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 embeddings of ``texts`` (hashed here)."""
        return self.lookup(text_hashes(texts))
