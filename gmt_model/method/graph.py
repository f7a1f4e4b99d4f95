"""The graph store: one interactions table -> Parquet -> tensors.

All splits of a dataset live in one :class:`GraphTables` (a ``split`` column
tells them apart) so users and LLMs share one index space.  It is *the*
table of rated interactions: every interaction (one step of one record's
conversation) owns one session, one query and one response node that share
its index.  Query texts are stored once: ``text_emb`` is a deduplicated
(T, d) matrix and ``query_row`` maps every interaction to its row, so a
million interactions over a few thousand distinct texts cost N int64s, not
N x d floats.  ``text_emb`` may be float16 (a real query stream has nearly one
distinct text per query: 10M interactions hold millions of texts), kept
float16 in memory and on disk; readers gather rows and convert those to
float32 (:meth:`GraphTables.query_vecs`, :meth:`GraphTables.text_vecs`).
Edges are derived from the interaction columns by :func:`relation_edges`
with vectorised numpy, for any visible subset of interactions (training,
evaluation and the router); they are never stored.

Ratings are normalised by :func:`normalise_ratings` and pair labels come
from :func:`pair_labels`, the one place each is computed.

Parquet layout (``gmtrouter-graph/2``): ``users``, ``llms`` (with the LLM
embeddings), ``texts`` (the deduplicated query texts and their embeddings),
``interactions`` (one row per interaction, ``query_row`` into ``texts``) and
``pairs``: exactly the tables :func:`read_graph` reads.  Each table is
written as one row group, uncompressed, so :func:`read_graph` memory-maps
the file and hands Arrow's buffers to numpy (and from there to torch)
without a per-record Python loop or a copy of its own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gmt_model.method import schema as S
from gmt_model.atomic import replace_dir

__all__ = [
    "GraphTables",
    "GraphIntegrityError",
    "relation_edges",
    "IndexMap",
    "read_graph",
    "normalise_ratings",
    "pair_labels",
    "comparison_pairs",
    "as_tensor",
    "GRAPH_FORMAT",
    "GRAPH_TABLES",
]

_SPLIT_CODE = {name: i for i, name in enumerate(S.SPLITS)}
GRAPH_FORMAT = "gmtrouter-graph/2"
T_TEXTS = "texts"
C_QUERY_ROW = "query_row"
C_TEXT = "text"
#: the tables a graph folder holds (all of them read back by :func:`read_graph`)
GRAPH_TABLES = (S.T_USERS, S.T_LLMS, T_TEXTS, S.T_INTERACTIONS, S.T_PAIRS)


class GraphIntegrityError(ValueError):
    """A graph table is inconsistent (index out of range, bad width, ...)."""


def normalise_ratings(raw: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    """Raw ratings -> [0, 1] on the scale ``(lo, hi)``; the one normalisation
    used by the graph, training, evaluation and (see notes/columnar.md) the router.

    A scale of zero span (every rating equal) maps to 0.5: "neither good nor
    bad", and it keeps the same value whether the span is 0 or numerically tiny.
    Values outside the scale are clipped to it.
    """
    raw = np.asarray(raw, dtype=np.float32)
    span = float(hi) - float(lo)
    if not span > 0:
        return np.full(raw.shape, 0.5, dtype=np.float32)
    return np.clip((raw - np.float32(lo)) / np.float32(span), 0.0, 1.0).astype(np.float32)


def pair_labels(rating_a: np.ndarray, rating_b: np.ndarray) -> np.ndarray:
    """Pair labels (float32): 1.0 when ``a`` is rated higher, 0.0 when ``b`` is, 0.5 for a tie."""
    ra, rb = np.asarray(rating_a), np.asarray(rating_b)
    return np.where(ra > rb, 1.0, np.where(ra < rb, 0.0, 0.5)).astype(np.float32)


def comparison_pairs(group: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every 2-combination of the interactions that share (group, step), as
    (a, b) index arrays with a < b, ordered by group, step, then position:
    vectorised, no loop over groups."""
    n = group.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    steps = int(step.max()) + 1
    key = group.astype(np.int64) * steps + step.astype(np.int64)
    order = np.lexsort((np.arange(n), key))
    k_sorted = key[order]
    starts = np.flatnonzero(np.r_[True, k_sorted[1:] != k_sorted[:-1]])
    sizes = np.diff(np.r_[starts, n])
    width = int(sizes.max())
    rows = np.repeat(np.arange(starts.size), sizes)
    cols = np.arange(n) - np.repeat(starts, sizes)
    table = np.full((starts.size, width), -1, dtype=np.int64)
    table[rows, cols] = order
    ia, ib = np.triu_indices(width, 1)
    a, b = table[:, ia], table[:, ib]  # (B, npairs), row-major = group, step, then pair position
    keep = (a >= 0) & (b >= 0)
    return a[keep], b[keep]


def as_tensor(a: np.ndarray):
    """``torch.from_numpy`` that accepts the read-only (zero-copy, memory-mapped)
    arrays of :func:`read_graph` without copying them.  The tensor must be
    treated as read-only."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(np.ascontiguousarray(a))


@dataclass
class GraphTables:
    """Columnar graph of all splits of one dataset: the interactions table.

    Interaction arrays have one row per interaction; pair arrays one row per
    comparison pair (two interactions of one group at one step).  Arrays read
    back by :func:`read_graph` are read-only views of the memory-mapped files.
    """

    user_ids: list[str]
    llm_names: list[str]
    llm_emb: np.ndarray  # (L, d) float32
    # interactions
    user: np.ndarray  # int64 (N,)
    llm: np.ndarray  # int64 (N,)
    group: np.ndarray  # int64 (N,)
    record: np.ndarray  # int64 (N,)
    step: np.ndarray  # int16 (N,)
    turn: np.ndarray  # int16 (N,)
    split: np.ndarray  # int8 (N,) index into schema.SPLITS
    rating: np.ndarray  # float32 (N,) normalised to [0, 1]
    raw_rating: np.ndarray  # float32 (N,)
    prev: np.ndarray  # int64 (N,) previous step of the same record, -1 if none
    line: np.ndarray  # int32 (N,) JSONL line of the record (0 when not from a file)
    text_emb: np.ndarray  # (T, d) float32 or float16 (storage only: read as float32): one row per distinct query text
    query_row: np.ndarray  # int64 (N,) row of text_emb holding the interaction's query
    texts: list[str] | None  # (T,) the distinct query texts (None: not kept)
    question_id: Sequence[str] | None
    response_text: Sequence[str | None] | None
    # pairs
    pair_a: np.ndarray  # int64 (P,)
    pair_b: np.ndarray  # int64 (P,)
    pair_label: np.ndarray  # float32 (P,) 1 a preferred, 0 b preferred, 0.5 tie
    # metadata
    relations: tuple[S.EdgeType, ...] = S.REFERENCE_RELATIONS
    encoder: str | None = None
    rating_min: float = 0.0
    rating_max: float = 1.0
    sources: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes
    @property
    def dim(self) -> int:
        return int(self.llm_emb.shape[1])

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_llms(self) -> int:
        return len(self.llm_names)

    @property
    def num_interactions(self) -> int:
        return int(self.user.shape[0])

    @property
    def num_texts(self) -> int:
        return int(self.text_emb.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.group.max()) + 1 if self.group.size else 0

    @property
    def pair_split(self) -> np.ndarray:
        return self.split[self.pair_a]

    @property
    def pair_user(self) -> np.ndarray:
        return self.user[self.pair_a]

    def split_mask(self, name: str) -> np.ndarray:
        return self.split == _SPLIT_CODE[name]

    def pair_mask(self, name: str) -> np.ndarray:
        return self.pair_split == _SPLIT_CODE[name]

    # ------------------------------------------------------------ query texts
    def query_vecs(self, idx: np.ndarray) -> np.ndarray:
        """float32 query embeddings (len(idx), d) of the given interactions."""
        return np.asarray(self.text_emb[self.query_row[np.asarray(idx, dtype=np.int64)]], dtype=np.float32)

    def text_vecs(self, rows: np.ndarray) -> np.ndarray:
        """float32 embeddings of the given rows of ``text_emb`` (whatever its storage type)."""
        return np.asarray(self.text_emb[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    @property
    def query_emb(self) -> np.ndarray:
        """(N, d) query embedding of every interaction, materialised on each
        access (N x d float32): for small graphs and old callers only; use
        :meth:`query_vecs` or ``text_emb[query_row[...]]``."""
        return self.query_vecs(np.arange(self.num_interactions))

    @property
    def query_text(self) -> list[str] | None:
        if self.texts is None:
            return None
        return [self.texts[i] for i in self.query_row.tolist()]

    def counts(self) -> dict[str, int]:
        """Node counts per type, edge counts per materialised relation, pair counts."""
        out: dict[str, int] = {
            S.USER: self.num_users,
            S.LLM: self.num_llms,
            S.SESSION: self.num_interactions,
            S.QUERY: self.num_interactions,
            S.RESPONSE: self.num_interactions,
            "distinct_query_texts": self.num_texts,
        }
        all_idx = np.arange(self.num_interactions)
        for rel in self.relations:
            out[S.relation_key(rel)] = int(relation_edges(self, rel, all_idx)[0].shape[0])
        for name in S.SPLITS:
            out[f"pairs_{name}"] = int(self.pair_mask(name).sum())
            out[f"interactions_{name}"] = int(self.split_mask(name).sum())
        return out

    # ------------------------------------------------------------ conversions
    def normalise(self, raw: np.ndarray) -> np.ndarray:
        return normalise_ratings(raw, self.rating_min, self.rating_max)

    def to_heterodata(self, visible: np.ndarray | None = None):
        """A PyG ``HeteroData`` of the whole graph (or of ``visible`` interactions).

        Response features of interactions that are not visible are zero, so a
        rating that is being predicted never enters the graph.
        """
        import torch
        from torch_geometric.data import HeteroData

        n = self.num_interactions
        vis = np.ones(n, dtype=bool) if visible is None else np.asarray(visible, dtype=bool)
        data = HeteroData()
        data[S.USER].num_nodes = self.num_users
        data[S.USER].x = torch.zeros(self.num_users, self.dim)
        data[S.LLM].x = as_tensor(self.llm_emb)
        data[S.QUERY].x = as_tensor(self.query_emb)
        data[S.SESSION].x = torch.zeros(n, self.dim)
        resp = np.where(vis, self.rating, 0.0).astype(np.float32)
        data[S.RESPONSE].x = torch.from_numpy(resp)[:, None].expand(n, self.dim).contiguous()
        data[S.RESPONSE].rating = torch.from_numpy(resp)
        idx = np.flatnonzero(vis)
        for rel in self.relations:
            src, dst = relation_edges(self, rel, idx)
            data[rel].edge_index = torch.from_numpy(np.stack([src, dst]))
        return data

    # ---------------------------------------------------------------- Parquet
    def write_parquet(self, directory: str | Path) -> Path:
        """Write all tables atomically: a temporary sibling folder, then rename."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self._write_tables(tmp)
            replace_dir(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def _write_tables(self, d: Path) -> None:
        dim = self.dim

        def emb_col(a: np.ndarray) -> pa.Array:
            # float16 tables stay float16 on disk (half the file; read back memory-mapped as float16)
            dtype = np.float16 if a.dtype == np.float16 else np.float32
            flat = pa.array(np.ascontiguousarray(a, dtype=dtype).reshape(-1))
            return pa.FixedSizeListArray.from_arrays(flat, dim)

        def write(name: str, cols: dict) -> None:
            tbl = pa.table(cols)
            # one row group, no compression and no dictionary: read back memory-mapped, one chunk per column
            pq.write_table(tbl, d / f"{name}.parquet", row_group_size=max(1, tbl.num_rows),
                           compression="NONE", use_dictionary=False)

        write(S.T_USERS, {S.C_USER_ID: pa.array(self.user_ids, pa.string())})
        write(S.T_LLMS, {S.C_LLM_NAME: pa.array(self.llm_names, pa.string()), S.C_EMBEDDING: emb_col(self.llm_emb)})
        texts = {C_TEXT: pa.array(self.texts, pa.string())} if self.texts is not None else {}
        write(T_TEXTS, {**texts, S.C_EMBEDDING: emb_col(self.text_emb)})
        inter = {S.C_USER_IDX: self.user, S.C_LLM_IDX: self.llm, S.C_GROUP_IDX: self.group,
                 S.C_RECORD_IDX: self.record, S.C_STEP: self.step, S.C_TURN: self.turn, S.C_SPLIT: self.split,
                 S.C_RATING: self.rating, S.C_RAW_RATING: self.raw_rating, S.C_PREV_INTERACTION: self.prev,
                 S.C_LINE: self.line, C_QUERY_ROW: self.query_row}
        if self.question_id is not None:
            inter[S.C_QUESTION_ID] = pa.array(list(self.question_id), pa.string())
        if self.response_text is not None:
            inter[S.C_RESPONSE_TEXT] = pa.array(list(self.response_text), pa.string())
        write(S.T_INTERACTIONS, inter)
        write(S.T_PAIRS, {S.C_A: self.pair_a, S.C_B: self.pair_b, S.C_LABEL: self.pair_label})
        meta = {
            "format": GRAPH_FORMAT,
            "tables": list(GRAPH_TABLES),
            "relations": [S.relation_key(r) for r in self.relations],
            "encoder": self.encoder,
            "dim": dim,
            "rating_min": self.rating_min,
            "rating_max": self.rating_max,
            "sources": self.sources,
            "counts": self.counts(),
        }
        (d / S.META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    # -------------------------------------------------------------- integrity
    def check(self) -> list[str]:
        """Integrity problems (empty list when the graph is sound)."""
        problems: list[str] = []
        n, u, l = self.num_interactions, self.num_users, self.num_llms
        if self.llm_emb.shape != (l, self.dim):
            problems.append(f"llm embedding shape {self.llm_emb.shape} != ({l}, {self.dim})")
        if self.text_emb.ndim != 2 or self.text_emb.shape[1] != self.dim:
            problems.append(f"query text embedding shape {self.text_emb.shape} != (T, {self.dim})")
        if self.query_row.shape != (n,):
            problems.append(f"query_row shape {self.query_row.shape} != ({n},)")
        elif n and (self.query_row.min() < 0 or self.query_row.max() >= self.text_emb.shape[0]):
            problems.append(f"query_row out of range [0, {self.text_emb.shape[0]})")
        if self.texts is not None and len(self.texts) != self.text_emb.shape[0]:
            problems.append(f"{len(self.texts)} query texts for {self.text_emb.shape[0]} text embeddings")
        for name, arr, hi in (("user", self.user, u), ("llm", self.llm, l)):
            if arr.size and (arr.min() < 0 or arr.max() >= hi):
                problems.append(f"{name} index out of range [0, {hi})")
        if self.prev.size and (self.prev.min() < -1 or self.prev.max() >= n):
            problems.append("prev_interaction_idx out of range")
        for name, arr in (("pair a", self.pair_a), ("pair b", self.pair_b)):
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                problems.append(f"{name} index out of range [0, {n})")
        if self.pair_a.size and np.any(self.group[self.pair_a] != self.group[self.pair_b]):
            problems.append("a pair joins interactions of different groups")
        if not _all_finite(self.text_emb) or not _all_finite(self.llm_emb):
            problems.append("non-finite embedding values")
        if not np.all(np.isfinite(self.rating)) or (self.rating.size and (self.rating.min() < 0 or self.rating.max() > 1)):
            problems.append("normalised ratings outside [0, 1]")
        all_idx = np.arange(n)
        receivers = {rel[2] for rel in self.relations}
        for must in (S.USER, S.SESSION):
            if must not in receivers:
                problems.append(f"node type {must!r} receives no messages under the configured relations")
        for rel in self.relations:
            src, dst = relation_edges(self, rel, all_idx)
            for end, arr in ((rel[0], src), (rel[2], dst)):
                hi = {S.USER: u, S.LLM: l}.get(end, n)
                if arr.size and (arr.min() < 0 or arr.max() >= hi):
                    problems.append(f"edge {S.relation_key(rel)}: {end} index out of range")
        return problems


def _text_table(a: np.ndarray) -> np.ndarray:
    """The text embedding table as stored: float16 stays float16 (half the memory; every reader converts
    the rows it gathers to float32), anything else becomes float32."""
    a = np.asarray(a)
    return a if a.dtype == np.float16 else np.asarray(a, dtype=np.float32)


def _all_finite(a: np.ndarray, chunk: int = 1 << 16) -> bool:
    """``np.isfinite(a).all()`` in row chunks (no boolean array the size of a large table)."""
    return all(bool(np.isfinite(a[i:i + chunk]).all()) for i in range(0, a.shape[0], chunk))


def from_columns(*, user_ids: Sequence[str], llm_names: Sequence[str], llm_emb: np.ndarray, user: np.ndarray,
                 llm: np.ndarray, group: np.ndarray, record: np.ndarray, step: np.ndarray, turn: np.ndarray,
                 split: np.ndarray, raw_rating: np.ndarray, text_emb: np.ndarray, query_row: np.ndarray,
                 texts: list[str] | None = None, question_id: Sequence[str] | None = None,
                 response_text: Sequence[str | None] | None = None, line: np.ndarray | None = None,
                 rating_scale: tuple[float, float] | None = None, relations: str | Sequence = "reference",
                 encoder: str | None = None, sources: dict[str, str] | None = None) -> GraphTables:
    """A :class:`GraphTables` from interaction columns, vectorised.

    Rows must be in record order with each record's steps consecutive
    (``step`` 0, 1, ...); ``prev``, the normalised ratings, the comparison
    pairs and their labels are derived here (the same way for every source).
    """
    n = int(np.asarray(user).shape[0])
    if n == 0:
        raise ValueError("no interactions")
    step = np.asarray(step, dtype=np.int16)
    raw = np.asarray(raw_rating, dtype=np.float32)
    lo, hi = rating_scale if rating_scale is not None else (float(raw.min()), float(raw.max()))
    group = np.asarray(group, dtype=np.int64)
    prev = np.where(step > 0, np.arange(n, dtype=np.int64) - 1, -1)
    pair_a, pair_b = comparison_pairs(group, step)
    return GraphTables(
        user_ids=list(user_ids), llm_names=list(llm_names), llm_emb=np.asarray(llm_emb, dtype=np.float32),
        user=np.asarray(user, dtype=np.int64), llm=np.asarray(llm, dtype=np.int64), group=group,
        record=np.asarray(record, dtype=np.int64), step=step, turn=np.asarray(turn, dtype=np.int16),
        split=np.asarray(split, dtype=np.int8), rating=normalise_ratings(raw, lo, hi), raw_rating=raw, prev=prev,
        line=np.zeros(n, np.int32) if line is None else np.asarray(line, dtype=np.int32),
        text_emb=_text_table(text_emb), query_row=np.asarray(query_row, dtype=np.int64),
        texts=texts, question_id=question_id, response_text=response_text,
        pair_a=pair_a, pair_b=pair_b, pair_label=pair_labels(raw[pair_a], raw[pair_b]),
        relations=S.resolve_relations(relations), encoder=encoder, rating_min=float(lo), rating_max=float(hi),
        sources=dict(sources or {}))


class IndexMap:
    """Global interaction index -> position in ``keys`` (distinct indices), -1 when absent.

    What ``local = np.full(n, -1); local[keys] = arange`` gives, without an array the size
    of the table: a subgraph of a few thousand rows of a 10M-row table costs a binary search
    per lookup instead of filling 80 MB per call."""

    def __init__(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        self.size = keys.size
        if keys.size > 1 and not np.all(keys[1:] > keys[:-1]):
            self._order = np.argsort(keys, kind="stable")
            self._sorted = keys[self._order]
        else:
            self._order, self._sorted = None, keys

    def __getitem__(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=np.int64)
        if self.size == 0:
            return np.full(q.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self._sorted, q)
        safe = np.minimum(pos, self.size - 1)
        found = self._sorted[safe] == q
        if self._order is not None:
            safe = self._order[safe]
        return np.where(found, safe, -1)


def relation_edges(g: GraphTables, rel: S.EdgeType, idx: np.ndarray,
                   local: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Edges of relation ``rel`` among the interactions ``idx``.

    ``idx`` are global interaction indices (the visible ones).  Interaction
    owned endpoints are reported through ``local`` (a global -> local index
    map: an array or an :class:`IndexMap`; identity when None); user and LLM
    endpoints are global indices.
    A multi-turn edge exists only when both turns are in ``idx``.
    """
    idx = np.asarray(idx, dtype=np.int64)
    src_t, _, dst_t = rel
    if rel in (S.SESSION_NEXT_SESSION, S.SESSION_PREV_SESSION, S.QUERY_NEXT_QUERY, S.QUERY_PREV_QUERY):
        prev = g.prev[idx]
        keep = prev >= 0
        if local is None:
            present = np.zeros(g.num_interactions, dtype=bool)
            present[idx] = True
            keep[keep] = present[prev[keep]]
        else:
            keep[keep] = local[prev[keep]] >= 0
        later, earlier = idx[keep], prev[keep]
        if local is not None:
            later, earlier = local[later], local[earlier]
        if rel[1] == "next":
            return earlier, later
        return later, earlier

    def endpoint(node_type: str) -> np.ndarray:
        if node_type == S.USER:
            return g.user[idx]
        if node_type == S.LLM:
            return g.llm[idx]
        return idx if local is None else local[idx]

    return endpoint(src_t), endpoint(dst_t)


def read_graph(directory: str | Path, *, relations: str | Sequence | None = None) -> GraphTables:
    """Load a graph written by :meth:`GraphTables.write_parquet`.

    The files are memory-mapped; numeric columns become read-only numpy views
    of Arrow's buffers (no per-record Python loop, no extra copy), which
    :func:`as_tensor` turns into torch tensors without copying.
    """
    d = Path(directory)
    meta_path = d / S.META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{d}: not a graph folder (no {S.META_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != GRAPH_FORMAT:
        raise GraphIntegrityError(f"{meta_path}: field 'format': expected {GRAPH_FORMAT!r}, got "
                                  f"{meta.get('format')!r} (rebuild the graph with this version)")

    def load(name: str) -> pa.Table:
        p = d / f"{name}.parquet"
        if not p.exists():
            raise GraphIntegrityError(f"{d}: missing table {p.name}")
        return pq.read_table(p, memory_map=True)

    def arr(tbl: pa.Table, name: str, dtype) -> np.ndarray:
        col = tbl.column(name)
        chunk = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        out = chunk.to_numpy(zero_copy_only=False)
        return out if out.dtype == dtype else out.astype(dtype)

    def emb(tbl: pa.Table) -> np.ndarray:
        col = tbl.column(S.C_EMBEDDING)
        chunk = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        width = chunk.type.list_size
        dtype = np.float16 if pa.types.is_float16(chunk.type.value_type) else np.float32
        return arr(pa.table({"v": chunk.flatten()}), "v", dtype).reshape(-1, width)

    def strings(tbl: pa.Table, name: str) -> list | None:
        return tbl.column(name).to_pylist() if name in tbl.column_names else None

    users = load(S.T_USERS)
    llms = load(S.T_LLMS)
    texts = load(T_TEXTS)
    inter = load(S.T_INTERACTIONS)
    pairs = load(S.T_PAIRS)
    rels = S.resolve_relations(relations if relations is not None else meta["relations"])
    g = GraphTables(
        user_ids=users.column(S.C_USER_ID).to_pylist(),
        llm_names=llms.column(S.C_LLM_NAME).to_pylist(),
        llm_emb=emb(llms),
        user=arr(inter, S.C_USER_IDX, np.int64),
        llm=arr(inter, S.C_LLM_IDX, np.int64),
        group=arr(inter, S.C_GROUP_IDX, np.int64),
        record=arr(inter, S.C_RECORD_IDX, np.int64),
        step=arr(inter, S.C_STEP, np.int16),
        turn=arr(inter, S.C_TURN, np.int16),
        split=arr(inter, S.C_SPLIT, np.int8),
        rating=arr(inter, S.C_RATING, np.float32),
        raw_rating=arr(inter, S.C_RAW_RATING, np.float32),
        prev=arr(inter, S.C_PREV_INTERACTION, np.int64),
        line=arr(inter, S.C_LINE, np.int32),
        text_emb=emb(texts),
        query_row=arr(inter, C_QUERY_ROW, np.int64),
        texts=strings(texts, C_TEXT),
        question_id=strings(inter, S.C_QUESTION_ID),
        response_text=strings(inter, S.C_RESPONSE_TEXT),
        pair_a=arr(pairs, S.C_A, np.int64),
        pair_b=arr(pairs, S.C_B, np.int64),
        pair_label=arr(pairs, S.C_LABEL, np.float32),
        relations=rels,
        encoder=meta.get("encoder"),
        rating_min=float(meta["rating_min"]),
        rating_max=float(meta["rating_max"]),
        sources=dict(meta.get("sources", {})),
    )
    problems = g.check()
    if problems:
        raise GraphIntegrityError(f"{d}: " + "; ".join(problems))
    return g
