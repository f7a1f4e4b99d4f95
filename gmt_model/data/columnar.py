"""The columnar form of a dataset: the interactions table, its texts, its LLMs (and an embedding store).

A dataset folder holds (all Parquet, written atomically; ``manifest.json`` beside them is the caller's)::

    interactions.parquet   one row per interaction (one step of one record), in the order
                           split (training, valid, test) -> records of the split in file order -> step:
                           split int8 (index into schema.SPLITS), group_idx int64, record_idx int64 (both global,
                           consecutive), step int16, turn int16, user_id, llm_name, question_id (strings),
                           raw_rating float32 (as given, not normalised), line int32 (1-based JSONL line of the
                           record in its split file; 0 when it never was a JSONL line), query_hash
                           fixed_size_binary(16), response_text string (nullable)
    texts.parquet          text_hash fixed_size_binary(16), text string: every distinct query text and LLM
                           description once
    llms.parquet           llm_name string, text_hash fixed_size_binary(16): the text whose embedding is the
                           LLM's (its description; for imported JSONL the synthetic text
                           ``gmtrouter:model_emb:<name>`` keyed to the file's ``model_emb``)
    embeddings.parquet     (imports only) the embeddings the JSONL carried, as a ``gmt_model.data.embeddings`` store

Texts are referenced by hash (``gmt_model.data.embeddings.text_hash``); embeddings live once per distinct text in
an embedding store.  GMTRouter JSONL with inline embeddings is the import/export format: :func:`import_jsonl`
and :func:`export_jsonl` stream it in bounded batches (memory: one batch of rows plus the set of distinct
text keys), and import reports format errors exactly as ``gmt_model.data.jsonl`` does (one line: file, line,
field).  Each split file is parsed once; the returned :class:`ColumnarSummary` carries what
``gmt_model.data.jsonl.validate_file`` would have counted, so nothing downstream parses it again.

:func:`write_columnar` writes the same tables from un-embedded record dicts (the converters' output).
:func:`file_sha256` / :func:`verify_files` are the manifest's integrity check.

Pure library: numpy + pyarrow, never Dagster.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gmt_model.atomic import file_sha256
from gmt_model.method import schema as S
from gmt_model.data.jsonl import FormatError, Record, Turn, iter_groups, write_jsonl
from gmt_model.data.embeddings import (
    C_TEXT,
    C_TEXT_HASH,
    HASH_BYTES,
    HASH_TYPE,
    EmbeddingStore,
    StoreWriter,
    atomic_parquet_writer,
    hashes_from_arrow,
    text_hash,
    text_hashes,
)

__all__ = [
    "INTERACTIONS_FILE",
    "TEXTS_FILE",
    "LLMS_FILE",
    "IMPORTED_EMBEDDINGS_FILE",
    "C_QUERY_HASH",
    "INTERACTIONS_SCHEMA",
    "ManifestError",
    "SplitSummary",
    "ColumnarSummary",
    "ColumnarWriter",
    "import_jsonl",
    "export_jsonl",
    "write_columnar",
    "read_texts",
    "llm_text_for_embedding",
    "file_sha256",
    "file_entries",
    "verify_files",
    "graph_from_columnar",
]

INTERACTIONS_FILE = "interactions.parquet"
TEXTS_FILE = "texts.parquet"
LLMS_FILE = "llms.parquet"
IMPORTED_EMBEDDINGS_FILE = "embeddings.parquet"
C_QUERY_HASH = "query_hash"
#: rows per Parquet row group / per streamed batch of the import
BATCH_ROWS = 65_536
#: rows per batch of the export (each row becomes Python objects while its record is written)
EXPORT_BATCH_ROWS = 16_384
_MODEL_EMB_PREFIX = "gmtrouter:model_emb:"
_SPLIT_CODE = {name: i for i, name in enumerate(S.SPLITS)}

INTERACTIONS_SCHEMA = pa.schema([
    pa.field(S.C_SPLIT, pa.int8(), nullable=False),
    pa.field(S.C_GROUP_IDX, pa.int64(), nullable=False),
    pa.field(S.C_RECORD_IDX, pa.int64(), nullable=False),
    pa.field(S.C_STEP, pa.int16(), nullable=False),
    pa.field(S.C_TURN, pa.int16(), nullable=False),
    pa.field(S.C_USER_ID, pa.string(), nullable=False),
    pa.field(S.C_LLM_NAME, pa.string(), nullable=False),
    pa.field(S.C_QUESTION_ID, pa.string(), nullable=False),
    pa.field(S.C_RAW_RATING, pa.float32(), nullable=False),
    pa.field(S.C_LINE, pa.int32(), nullable=False),
    pa.field(C_QUERY_HASH, HASH_TYPE, nullable=False),
    pa.field(S.C_RESPONSE_TEXT, pa.string(), nullable=True),
])
TEXTS_SCHEMA = pa.schema([pa.field(C_TEXT_HASH, HASH_TYPE, nullable=False), pa.field(C_TEXT, pa.string())])
LLMS_SCHEMA = pa.schema([pa.field(S.C_LLM_NAME, pa.string(), nullable=False),
                         pa.field(C_TEXT_HASH, HASH_TYPE, nullable=False)])


class ManifestError(ValueError):
    """A file does not match its manifest (missing, other size or sha256): one line naming the file."""


def llm_text_for_embedding(name: str) -> str:
    """The synthetic text an imported LLM embedding (``model_emb``) is keyed to."""
    return _MODEL_EMB_PREFIX + name


# --------------------------------------------------------------------------
# manifest integrity
# --------------------------------------------------------------------------
def file_entries(folder: str | os.PathLike[str], names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes", "sha256"}}`` of files in ``folder`` (the manifest's ``files`` section)."""
    d = Path(folder)
    return {n: {"bytes": (d / n).stat().st_size, "sha256": file_sha256(d / n)} for n in names}


def verify_files(folder: str | os.PathLike[str], entries: Mapping[str, Mapping[str, Any]], *,
                 manifest: str | os.PathLike[str] | None = None) -> None:
    """Check each file against its manifest entry; :class:`ManifestError` (one line) at the first mismatch."""
    d = Path(folder)
    where = f" (manifest {manifest})" if manifest is not None else ""
    for name, e in entries.items():
        p = d / name
        if not p.is_file():
            raise ManifestError(f"{p}: missing; the manifest lists it{where}")
        size = p.stat().st_size
        if "bytes" in e and size != int(e["bytes"]):
            raise ManifestError(f"{p}: {size} bytes, the manifest says {e['bytes']}{where}; "
                                f"the file changed after it was written: materialize its asset again")
        digest = file_sha256(p)
        if digest != e["sha256"]:
            raise ManifestError(f"{p}: sha256 {digest[:16]}... does not match the manifest's {str(e['sha256'])[:16]}..."
                                f"{where}; the file changed after it was written: materialize its asset again")


# --------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------
@dataclass
class SplitSummary:
    """What one split holds (the counts ``gmt_model.data.jsonl.FileSummary`` has, computed while writing)."""

    n_records: int = 0
    n_groups: int = 0
    n_interactions: int = 0
    n_pairs: int = 0
    n_repeated_keys: int = 0
    max_conversation_len: int = 0
    rating_min: float = math.inf
    rating_max: float = -math.inf
    judges: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["judges"] = sorted(self.judges)
        d["models"] = sorted(self.models)
        d["n_users"] = len(self.judges)
        return d


@dataclass
class ColumnarSummary:
    """What a columnar folder holds; ``files`` are the names written."""

    splits: dict[str, SplitSummary]
    encoder: str | None
    dim: int | None  # width of imported embeddings (None: nothing embedded yet)
    n_texts: int
    llms: list[str]
    files: list[str]
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def rating_min(self) -> float:
        return min(s.rating_min for s in self.splits.values())

    @property
    def rating_max(self) -> float:
        return max(s.rating_max for s in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        return {"splits": {k: v.to_dict() for k, v in self.splits.items()}, "encoder": self.encoder,
                "dim": self.dim, "n_texts": self.n_texts, "llms": list(self.llms), "files": list(self.files),
                "sources": dict(self.sources),
                "rating_min": self.rating_min, "rating_max": self.rating_max}


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------
_atomic_writer = atomic_parquet_writer


def _hash_col(hashes: list[bytes]) -> pa.Array:
    return pa.Array.from_buffers(HASH_TYPE, len(hashes), [None, pa.py_buffer(b"".join(hashes))])


class ColumnarWriter:
    """Streams records into ``interactions.parquet`` / ``texts.parquet`` / ``llms.parquet`` of ``out_dir``.

    Rows are buffered up to ``batch_rows`` and written as one row group; the only state that grows with the
    data is the set of distinct text keys (16 bytes each), the set of LLM names and the per-split counters.
    Use as a context manager: the files appear (each renamed into place) only when the block succeeds.
    """

    def __init__(self, out_dir: str | os.PathLike[str], *, batch_rows: int = BATCH_ROWS,
                 encoder: str | None = None) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.batch_rows = int(batch_rows)
        self.encoder = encoder
        self.splits: dict[str, SplitSummary] = {}
        self.text_keys: set[bytes] = set()
        self.llm_keys: dict[str, bytes] = {}
        self.n_group = 0
        self.n_record = 0
        self._rows: dict[str, list] = {f.name: [] for f in INTERACTIONS_SCHEMA}
        self._texts: list[tuple[bytes, str]] = []
        self._stack = contextlib.ExitStack()
        self._inter = self._stack.enter_context(_atomic_writer(self.out / INTERACTIONS_FILE, INTERACTIONS_SCHEMA))
        self._textw = self._stack.enter_context(_atomic_writer(self.out / TEXTS_FILE, TEXTS_SCHEMA))
        self.flushes = 0

    # -- context -----------------------------------------------------------
    def __enter__(self) -> "ColumnarWriter":
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        if ev is None:
            try:
                self._flush()
                self._flush_texts()
                with _atomic_writer(self.out / LLMS_FILE, LLMS_SCHEMA) as w:
                    names = sorted(self.llm_keys)
                    w.write_table(pa.Table.from_arrays(
                        [pa.array(names, pa.string()), _hash_col([self.llm_keys[n] for n in names])],
                        schema=LLMS_SCHEMA))
            except BaseException as exc:
                self._stack.__exit__(type(exc), exc, exc.__traceback__)
                raise
        return bool(self._stack.__exit__(et, ev, tb))

    # -- rows --------------------------------------------------------------
    def add_text(self, text: str, key: bytes | None = None) -> bytes:
        """Register a text (once); returns its key."""
        key = text_hash(text) if key is None else key
        if key not in self.text_keys:
            self.text_keys.add(key)
            self._texts.append((key, text))
            if len(self._texts) >= self.batch_rows:
                self._flush_texts()
        return key

    def add_llm(self, name: str, text: str) -> bytes:
        """Register an LLM whose embedding is that of ``text`` (first registration wins)."""
        if name not in self.llm_keys:
            self.llm_keys[name] = self.add_text(text)
        return self.llm_keys[name]

    def add_group(self, split: str, records: Sequence[tuple[str, str, str, int, int, Sequence[tuple[str, bytes, str | None, float]]]],
                  *, repeat: int = 0) -> None:
        """One comparison group: records ``(judge, model, question_id, turn, line, steps)`` with
        ``steps = [(query, query_key, response, raw_rating), ...]``."""
        st = self.splits.setdefault(split, SplitSummary())
        code = _SPLIT_CODE[split]
        g = self.n_group
        self.n_group += 1
        st.n_groups += 1
        st.n_repeated_keys += repeat > 0
        k = len(records)
        n_steps = len(records[0][5]) if records else 0
        st.n_pairs += n_steps * k * (k - 1) // 2
        rows = self._rows
        for judge, model, qid, turn, line, steps in records:
            r = self.n_record
            self.n_record += 1
            st.n_records += 1
            st.judges.add(judge)
            st.models.add(model)
            st.max_conversation_len = max(st.max_conversation_len, len(steps))
            for t, (_query, key, response, rating) in enumerate(steps):
                rows[S.C_SPLIT].append(code)
                rows[S.C_GROUP_IDX].append(g)
                rows[S.C_RECORD_IDX].append(r)
                rows[S.C_STEP].append(t)
                rows[S.C_TURN].append(turn)
                rows[S.C_USER_ID].append(judge)
                rows[S.C_LLM_NAME].append(model)
                rows[S.C_QUESTION_ID].append(qid)
                rows[S.C_RAW_RATING].append(rating)
                rows[S.C_LINE].append(line)
                rows[C_QUERY_HASH].append(key)
                rows[S.C_RESPONSE_TEXT].append(response)
                st.n_interactions += 1
                if rating < st.rating_min:
                    st.rating_min = rating
                if rating > st.rating_max:
                    st.rating_max = rating
        if len(rows[S.C_SPLIT]) >= self.batch_rows:
            self._flush()

    def add_record_dicts(self, split: str, group: Sequence[Mapping[str, Any]],
                         llm_text: Callable[[str], str]) -> None:
        """One group of un-embedded record dicts (``judge, model, question_id, turn, conversation=[{query,
        response, rating}]``, optional ``_line``); ``llm_text(model)`` names the text of a new LLM's embedding."""
        recs = []
        for rec in group:
            model = str(rec[S.F_MODEL])
            if model not in self.llm_keys:
                self.add_llm(model, llm_text(model))
            steps = [(t[S.F_QUERY], self.add_text(t[S.F_QUERY]), t.get(S.F_RESPONSE), float(t[S.F_RATING]))
                     for t in rec[S.F_CONVERSATION]]
            recs.append((str(rec[S.F_JUDGE]), model, str(rec[S.F_QUESTION_ID]), int(rec[S.F_TURN]),
                         int(rec.get("_line", 0)), steps))
        self.add_group(split, recs)

    def _flush(self) -> None:
        rows = self._rows
        if not rows[S.C_SPLIT]:
            return
        arrays = []
        for f in INTERACTIONS_SCHEMA:
            if f.name == C_QUERY_HASH:
                arrays.append(_hash_col(rows[f.name]))
            else:
                arrays.append(pa.array(rows[f.name], f.type))
        self._inter.write_table(pa.Table.from_arrays(arrays, schema=INTERACTIONS_SCHEMA))
        self._rows = {f.name: [] for f in INTERACTIONS_SCHEMA}
        self.flushes += 1

    def _flush_texts(self) -> None:
        if not self._texts:
            return
        keys, texts = zip(*self._texts)
        self._textw.write_table(pa.Table.from_arrays([_hash_col(list(keys)), pa.array(texts, pa.string())],
                                                     schema=TEXTS_SCHEMA))
        self._texts = []

    def summary(self, *, dim: int | None, sources: Mapping[str, str] | None = None,
                extra_files: Sequence[str] = ()) -> ColumnarSummary:
        return ColumnarSummary(splits=self.splits, encoder=self.encoder, dim=dim, n_texts=len(self.text_keys),
                               llms=sorted(self.llm_keys),
                               files=[INTERACTIONS_FILE, TEXTS_FILE, LLMS_FILE, *extra_files],
                               sources=dict(sources or {}))


# --------------------------------------------------------------------------
# JSONL import
# --------------------------------------------------------------------------
def import_jsonl(splits: Mapping[str, str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                 rating_scale: tuple[float, float] | None = None, min_group_size: int = 2,
                 keep_embeddings: bool = True, batch_rows: int = BATCH_ROWS,
                 embedding_dtype: str = "float32",
                 extra_groups: Callable[[str, SplitSummary], Iterable[Sequence[Mapping[str, Any]]]] | None = None,
                 ) -> ColumnarSummary:
    """GMTRouter JSONL splits -> the columnar tables (+ ``embeddings.parquet`` with the files' embeddings).

    Each file is parsed and validated once, streaming (``gmt_model.data.jsonl.iter_groups``: every format rule;
    a :class:`~gmt_model.data.jsonl.FormatError` names file, line and field).  The files must agree on the
    embedding width and the encoder.  A text's embedding is the first one met; the LLM embedding is the
    first ``model_emb`` of that LLM.  ``keep_embeddings=False`` drops the inline embeddings (to re-embed).
    ``extra_groups(split, summary so far)`` may return un-embedded groups (record dicts) to append to a
    split once its file is read (the feedback merge); their new texts have no embedding in the import.
    """
    unknown = set(splits) - set(S.SPLITS)
    if unknown:
        raise ValueError(f"unknown split names {sorted(unknown)}; expected {list(S.SPLITS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dim: int | None = None
    dim_src = ""
    encoder: str | None = None
    enc_src = ""
    store: StoreWriter | None = None
    pend_keys: list[bytes] = []
    pend_vecs: list[np.ndarray] = []

    def flush_vectors() -> None:
        if store is not None and pend_keys:
            store.add(np.frombuffer(b"".join(pend_keys), dtype=f"S{HASH_BYTES}"), np.stack(pend_vecs))
        pend_keys.clear()
        pend_vecs.clear()

    try:
        with ColumnarWriter(out, batch_rows=batch_rows) as w:
            for split in S.SPLITS:
                if split not in splits:
                    continue
                path = Path(splits[split])
                path_s = os.fspath(splits[split])
                for grp in iter_groups(path, rating_scale=rating_scale, min_group_size=min_group_size):
                    recs = []
                    for rec in grp.records:
                        if dim is None:
                            dim, dim_src = rec.dim, f"{path_s}:{rec.line}"
                            if keep_embeddings:
                                store = StoreWriter(out / IMPORTED_EMBEDDINGS_FILE, dim, encoder=None,
                                                    dtype=embedding_dtype)
                        elif rec.dim != dim:
                            raise FormatError(path_s, rec.line, S.F_MODEL_EMB,
                                              f"expected embedding width {dim} (as at {dim_src}), got width {rec.dim}")
                        if rec.encoder is not None:
                            if encoder is None:
                                encoder, enc_src = rec.encoder, f"{path_s}:{rec.line}"
                            elif rec.encoder != encoder:
                                raise FormatError(path_s, rec.line, S.F_ENCODER,
                                                  f"expected one encoder for all splits: {encoder!r} (at {enc_src}), "
                                                  f"got {rec.encoder!r}")
                        if rec.model not in w.llm_keys:
                            key = w.add_llm(rec.model, llm_text_for_embedding(rec.model))
                            pend_keys.append(key)
                            pend_vecs.append(rec.model_emb)
                        steps = []
                        for t in rec.conversation:
                            key = text_hash(t.query)
                            if key not in w.text_keys:
                                w.add_text(t.query, key)
                                pend_keys.append(key)
                                pend_vecs.append(t.query_emb)
                            steps.append((t.query, key, t.response, t.rating))
                        recs.append((rec.judge, rec.model, rec.question_id, rec.turn, rec.line, steps))
                    w.add_group(split, recs, repeat=grp.repeat)
                    if len(pend_keys) >= batch_rows:
                        flush_vectors()
                if extra_groups is not None and split in w.splits:
                    for group in extra_groups(split, w.splits[split]):
                        w.add_record_dicts(split, group, llm_text_for_embedding)
            w.encoder = encoder
            flush_vectors()
            if store is not None:
                store.encoder = encoder
                from gmt_model.data.embeddings import _schema  # the encoder is known only at the end

                # the schema's metadata carries the encoder: rewrite it on close through a fresh writer
                store.close()
                if encoder is not None:
                    _set_store_encoder(out / IMPORTED_EMBEDDINGS_FILE, encoder, _schema)
                store = None
    except BaseException as exc:
        if store is not None:
            store.abort(exc)
        raise
    if not w.splits:
        raise FormatError(", ".join(os.fspath(p) for p in splits.values()), None, None, "no records")
    return w.summary(dim=dim, sources={k: os.fspath(v) for k, v in splits.items()},
                     extra_files=[IMPORTED_EMBEDDINGS_FILE] if keep_embeddings and dim is not None else [])


def _set_store_encoder(path: Path, encoder: str, schema_fn: Any) -> None:
    pf = pq.ParquetFile(path)
    md = pf.schema_arrow.metadata
    dim, dtype = int(md[b"gmtrouter.dim"]), md[b"gmtrouter.dtype"].decode()
    schema = schema_fn(dim, dtype, encoder)
    with _atomic_writer(path, schema) as w:
        for i in range(pf.num_row_groups):
            w.write_table(pf.read_row_group(i).cast(schema))


# --------------------------------------------------------------------------
# records (converter output) -> columnar
# --------------------------------------------------------------------------
def write_columnar(splits: Mapping[str, Iterable[Sequence[Mapping[str, Any]]]], out_dir: str | os.PathLike[str],
                   llm_texts: Mapping[str, str], *, batch_rows: int = BATCH_ROWS,
                   encoder: str | None = None) -> ColumnarSummary:
    """Un-embedded record dicts, as groups per split, -> the columnar tables (no embeddings).

    ``splits`` maps split names to iterables of groups (lists of record dicts with ``judge, model,
    question_id, turn, conversation=[{query, response, rating}]``); ``llm_texts`` gives each LLM's
    description (the text its embedding is made from).  Every distinct query text and description lands
    in ``texts.parquet`` once; the embedding step embeds them.
    """
    out = Path(out_dir)

    def llm_text(model: str) -> str:
        if model not in llm_texts:
            raise ValueError(f"LLM {model!r} has no description text")
        return llm_texts[model]

    with ColumnarWriter(out, batch_rows=batch_rows, encoder=encoder) as w:
        for split in S.SPLITS:
            for group in splits.get(split, ()):
                w.add_record_dicts(split, group, llm_text)
    return w.summary(dim=None)


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------
def read_texts(path: str | os.PathLike[str]) -> tuple[np.ndarray, pa.Array]:
    """``(hashes 'S16' sorted, texts)`` of a texts table, sorted by hash for ``searchsorted``."""
    t = pq.read_table(path, memory_map=True)
    h = hashes_from_arrow(t.column(C_TEXT_HASH))
    order = np.argsort(h, kind="stable")
    texts = t.column(C_TEXT).combine_chunks().take(pa.array(order))
    return h[order], texts


def _text_lookup(sorted_h: np.ndarray, texts: pa.Array, keys: np.ndarray, where: str) -> list[str]:
    pos = np.minimum(np.searchsorted(sorted_h, keys), max(len(sorted_h) - 1, 0))
    if len(sorted_h) == 0 or not (sorted_h[pos] == keys).all():
        raise ValueError(f"{where}: a query hash has no text in {TEXTS_FILE}")
    return texts.take(pa.array(pos)).to_pylist()


# --------------------------------------------------------------------------
# JSONL export
# --------------------------------------------------------------------------
def export_jsonl(folder: str | os.PathLike[str], out_dir: str | os.PathLike[str], store: EmbeddingStore | str | os.PathLike[str],
                 *, encoder: str | None = None, batch_rows: int = EXPORT_BATCH_ROWS) -> dict[str, Path]:
    """The columnar ``folder`` (+ the embedding ``store``) -> GMTRouter JSONL splits in ``out_dir``.

    Streams ``interactions.parquet`` in batches of ``batch_rows`` rows (a record that straddles two batches
    is carried over); each split file is written atomically (``gmt_model.data.jsonl.write_jsonl``, which
    validates every record).  ``encoder`` is written into every record (default: the store's).
    """
    src = Path(folder)
    out = Path(out_dir)
    st = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)
    enc = encoder if encoder is not None else st.encoder
    th, tt = read_texts(src / TEXTS_FILE)
    llms = pq.read_table(src / LLMS_FILE)
    llm_vec = dict(zip(llms.column(S.C_LLM_NAME).to_pylist(), st.lookup(llms.column(C_TEXT_HASH))))
    pf = pq.ParquetFile(src / INTERACTIONS_FILE)

    def records_of(split_code: int) -> Iterator[Record]:
        carry: list[tuple] = []
        for batch in pf.iter_batches(batch_size=batch_rows):
            sp = batch.column(S.C_SPLIT).to_numpy()
            sel = np.flatnonzero(sp == split_code)
            if sel.size == 0:
                continue
            b = batch.take(pa.array(sel))
            keys = hashes_from_arrow(b.column(C_QUERY_HASH))
            vecs = st.lookup(keys)
            queries = _text_lookup(th, tt, keys, os.fspath(src / INTERACTIONS_FILE))
            cols = [b.column(c).to_pylist() for c in (S.C_RECORD_IDX, S.C_STEP, S.C_TURN, S.C_USER_ID,
                                                       S.C_LLM_NAME, S.C_QUESTION_ID, S.C_RAW_RATING,
                                                       S.C_LINE, S.C_RESPONSE_TEXT)]
            for i, row in enumerate(zip(*cols)):
                if carry and carry[0][0] != row[0]:
                    yield _record(carry, llm_vec, enc)
                    carry = []
                carry.append((*row, queries[i], vecs[i]))
        if carry:
            yield _record(carry, llm_vec, enc)

    paths = {}
    for split in S.SPLITS:
        p = out / S.SPLIT_FILES[split]
        write_jsonl(p, records_of(_SPLIT_CODE[split]))
        paths[split] = p
    return paths


def _record(rows: list[tuple], llm_vec: Mapping[str, np.ndarray], encoder: str | None) -> Record:
    _r, _s, turn, judge, model, qid, _rating, line, _resp, _q, _v = rows[0]
    conv = tuple(Turn(query=q, query_emb=v, response=resp, rating=float(rt))
                 for (_r2, _s2, _t, _j, _m, _qid, rt, _l, resp, q, v) in rows)
    return Record(line=int(line), judge=judge, model=model, question_id=qid, turn=int(turn), conversation=conv,
                  model_emb=llm_vec[model], encoder=encoder)


# --------------------------------------------------------------------------
# columnar -> GraphTables
# --------------------------------------------------------------------------
def _codes(col: pa.ChunkedArray, fixed: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """(distinct values in order of first appearance, int64 code per row), vectorised by Arrow."""
    enc = col.combine_chunks().dictionary_encode()
    values = enc.dictionary.to_pylist()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    if not fixed:
        return values, codes
    order = {v: i for i, v in enumerate(fixed)}
    names = list(fixed)
    remap = np.empty(len(values), np.int64)
    for i, v in enumerate(values):  # one entry per distinct value, not per row
        if v not in order:
            order[v] = len(names)
            names.append(v)
        remap[i] = order[v]
    return names, remap[codes]


def graph_from_columnar(folder: str | os.PathLike[str], store: EmbeddingStore | str | os.PathLike[str], *,
                        relations: str | Sequence = "reference", rating_scale: tuple[float, float] | None = None,
                        user_ids: Sequence[str] | None = None, llm_names: Sequence[str] | None = None,
                        keep_texts: bool = True) -> Any:
    """The interactions table of ``folder`` + the embedding ``store`` -> ``gmt_model.method.graph.GraphTables``.

    Vectorised: users and LLMs are dictionary-encoded by Arrow, query texts become rows of a deduplicated
    ``text_emb`` matrix (one ``searchsorted`` lookup in the store), and ``gmt_model.method.graph.from_columns``
    derives previous steps, normalised ratings and comparison pairs.
    """
    from gmt_model.method.graph import from_columns

    src = Path(folder)
    st = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)
    t = pq.read_table(src / INTERACTIONS_FILE, memory_map=True)
    if t.num_rows == 0:
        raise ValueError(f"{src / INTERACTIONS_FILE}: no interactions")
    users, user = _codes(t.column(S.C_USER_ID), user_ids)
    llm_list, llm = _codes(t.column(S.C_LLM_NAME), llm_names)
    qh = hashes_from_arrow(t.column(C_QUERY_HASH))
    uniq, query_row = np.unique(qh, return_inverse=True)
    text_emb = st.lookup(uniq)
    texts = None
    if keep_texts:
        th, tt = read_texts(src / TEXTS_FILE)
        texts = _text_lookup(th, tt, uniq, os.fspath(src / TEXTS_FILE))
    llms = pq.read_table(src / LLMS_FILE)
    llm_key = dict(zip(llms.column(S.C_LLM_NAME).to_pylist(), hashes_from_arrow(llms.column(C_TEXT_HASH))))
    missing = [m for m in llm_list if m not in llm_key]
    if missing:
        raise ValueError(f"{src / LLMS_FILE}: no entry for LLM(s) {missing[:5]}")
    llm_emb = st.lookup(np.array([llm_key[m] for m in llm_list], dtype=f"S{HASH_BYTES}"))

    def np_col(name: str, dtype: Any) -> np.ndarray:
        return t.column(name).to_numpy().astype(dtype, copy=False)

    return from_columns(
        user_ids=users, llm_names=llm_list, llm_emb=llm_emb, user=user, llm=llm,
        group=np_col(S.C_GROUP_IDX, np.int64), record=np_col(S.C_RECORD_IDX, np.int64),
        step=np_col(S.C_STEP, np.int16), turn=np_col(S.C_TURN, np.int16), split=np_col(S.C_SPLIT, np.int8),
        raw_rating=np_col(S.C_RAW_RATING, np.float32), text_emb=text_emb, query_row=query_row.reshape(-1),
        texts=texts, question_id=t.column(S.C_QUESTION_ID).to_pylist(),
        response_text=t.column(S.C_RESPONSE_TEXT).to_pylist(), line=np_col(S.C_LINE, np.int32),
        rating_scale=rating_scale, relations=relations, encoder=st.encoder,
        sources={"interactions": os.fspath(src / INTERACTIONS_FILE), "embeddings": os.fspath(st.path)})
