"""The graph store: GMTRouter JSONL splits -> columnar tables -> Parquet -> tensors.

All splits of a dataset live in one :class:`GraphTables` (a ``split`` column
tells them apart) so users and LLMs share one index space.  Every
interaction (one step of one record's conversation) owns one session, one
query and one response node that share its index.  Edges are derived from
the interaction columns by :func:`relation_edges` with vectorised numpy, for
the whole graph (the Parquet edge tables, :meth:`GraphTables.to_heterodata`)
or for any visible subset of interactions (training and evaluation).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema as S
from .data import iter_groups

__all__ = [
    "GraphTables",
    "GraphIntegrityError",
    "build_graph",
    "relation_edges",
    "read_graph",
]

_SPLIT_CODE = {name: i for i, name in enumerate(S.SPLITS)}


class GraphIntegrityError(ValueError):
    """A graph table is inconsistent (index out of range, bad width, ...)."""


@dataclass
class GraphTables:
    """Columnar graph of all splits of one dataset.

    Interaction arrays have one row per interaction; pair arrays one row per
    comparison pair (two interactions of one group at one step).
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
    line: np.ndarray  # int32 (N,) JSONL line of the record
    query_emb: np.ndarray  # (N, d) float32
    question_id: list[str]
    query_text: list[str]
    response_text: list[str | None]
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

    def counts(self) -> dict[str, int]:
        """Node counts per type, edge counts per materialised relation, pair counts."""
        out: dict[str, int] = {
            S.USER: self.num_users,
            S.LLM: self.num_llms,
            S.SESSION: self.num_interactions,
            S.QUERY: self.num_interactions,
            S.RESPONSE: self.num_interactions,
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
        span = self.rating_max - self.rating_min
        if span <= 0:
            return np.full_like(raw, 0.5, dtype=np.float32)
        return ((raw - self.rating_min) / span).astype(np.float32)

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
        data[S.LLM].x = torch.from_numpy(self.llm_emb)
        data[S.QUERY].x = torch.from_numpy(self.query_emb)
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
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
                os.replace(directory, old)
                os.replace(tmp, directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def _write_tables(self, d: Path) -> None:
        dim = self.dim
        n = self.num_interactions

        def emb_col(a: np.ndarray) -> pa.Array:
            flat = pa.array(np.ascontiguousarray(a, dtype=np.float32).reshape(-1))
            return pa.FixedSizeListArray.from_arrays(flat, dim)

        idx = np.arange(n, dtype=np.int64)
        pq.write_table(pa.table({S.C_USER_IDX: np.arange(self.num_users, dtype=np.int64),
                                 S.C_USER_ID: pa.array(self.user_ids, pa.string())}), d / f"{S.T_USERS}.parquet")
        pq.write_table(pa.table({S.C_LLM_IDX: np.arange(self.num_llms, dtype=np.int64),
                                 S.C_LLM_NAME: pa.array(self.llm_names, pa.string()),
                                 S.C_EMBEDDING: emb_col(self.llm_emb)}), d / f"{S.T_LLMS}.parquet")
        pq.write_table(pa.table({S.C_QUERY_IDX: idx,
                                 S.C_QUESTION_ID: pa.array(self.question_id, pa.string()),
                                 S.C_STEP: self.step, S.C_QUERY_TEXT: pa.array(self.query_text, pa.string()),
                                 S.C_EMBEDDING: emb_col(self.query_emb)}), d / f"{S.T_QUERIES}.parquet")
        pq.write_table(pa.table({S.C_SESSION_IDX: idx, S.C_USER_IDX: self.user, S.C_LLM_IDX: self.llm,
                                 S.C_RECORD_IDX: self.record, S.C_STEP: self.step,
                                 S.C_PREV_INTERACTION: self.prev}), d / f"{S.T_SESSIONS}.parquet")
        pq.write_table(pa.table({S.C_RESPONSE_IDX: idx, S.C_RATING: self.rating, S.C_RAW_RATING: self.raw_rating,
                                 S.C_RESPONSE_TEXT: pa.array(self.response_text, pa.string())}),
                       d / f"{S.T_RESPONSES}.parquet")
        pq.write_table(pa.table({S.C_INTERACTION_IDX: idx, S.C_USER_IDX: self.user, S.C_SESSION_IDX: idx,
                                 S.C_QUERY_IDX: idx, S.C_LLM_IDX: self.llm, S.C_RESPONSE_IDX: idx,
                                 S.C_GROUP_IDX: self.group, S.C_RECORD_IDX: self.record, S.C_STEP: self.step,
                                 S.C_TURN: self.turn, S.C_SPLIT: self.split, S.C_RATING: self.rating,
                                 S.C_RAW_RATING: self.raw_rating, S.C_PREV_INTERACTION: self.prev,
                                 S.C_LINE: self.line}), d / f"{S.T_INTERACTIONS}.parquet")
        pq.write_table(pa.table({S.C_PAIR_IDX: np.arange(self.pair_a.shape[0], dtype=np.int64),
                                 S.C_A: self.pair_a, S.C_B: self.pair_b, S.C_LABEL: self.pair_label,
                                 S.C_GROUP_IDX: self.group[self.pair_a], S.C_STEP: self.step[self.pair_a],
                                 S.C_USER_IDX: self.user[self.pair_a], S.C_SPLIT: self.split[self.pair_a]}),
                       d / f"{S.T_PAIRS}.parquet")
        (d / S.EDGE_DIR).mkdir()
        all_idx = np.arange(n)
        for rel in self.relations:
            src, dst = relation_edges(self, rel, all_idx)
            pq.write_table(pa.table({S.C_SRC: src, S.C_DST: dst}), d / S.EDGE_DIR / f"{S.relation_key(rel)}.parquet")
        meta = {
            "format": "gmtrouter-graph/1",
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
        if self.query_emb.shape != (n, self.dim):
            problems.append(f"query embedding shape {self.query_emb.shape} != ({n}, {self.dim})")
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
        if not np.all(np.isfinite(self.query_emb)) or not np.all(np.isfinite(self.llm_emb)):
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


def relation_edges(g: GraphTables, rel: S.EdgeType, idx: np.ndarray,
                   local: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Edges of relation ``rel`` among the interactions ``idx``.

    ``idx`` are global interaction indices (the visible ones).  Interaction
    owned endpoints are reported through ``local`` (a global -> local index
    map, identity when None); user and LLM endpoints are global indices.
    A multi-turn edge exists only when both turns are in ``idx``.
    """
    idx = np.asarray(idx, dtype=np.int64)
    src_t, _, dst_t = rel
    if rel in (S.SESSION_NEXT_SESSION, S.SESSION_PREV_SESSION, S.QUERY_NEXT_QUERY, S.QUERY_PREV_QUERY):
        prev = g.prev[idx]
        if local is None:
            present = np.zeros(g.num_interactions, dtype=bool)
            present[idx] = True
        else:
            present = local >= 0
        keep = prev >= 0
        keep[keep] = present[prev[keep]]
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


# ---------------------------------------------------------------------------
# Building from JSONL
# ---------------------------------------------------------------------------
def build_graph(
    splits: Mapping[str, str | Path],
    *,
    relations: str | Sequence = "reference",
    rating_scale: tuple[float, float] | None = None,
    user_ids: Sequence[str] | None = None,
    llm_names: Sequence[str] | None = None,
) -> GraphTables:
    """Read GMTRouter JSONL splits into one :class:`GraphTables`.

    ``splits`` maps split names (``training``, ``valid``, ``test``) to
    JSONL paths.  Ratings are min-max normalised over all splits together
    (or over ``rating_scale`` when given).  ``user_ids``/``llm_names`` fix
    the id order (for rebuilding a graph compatible with a checkpoint).
    """
    unknown = set(splits) - set(S.SPLITS)
    if unknown:
        raise ValueError(f"unknown split names {sorted(unknown)}; expected {list(S.SPLITS)}")
    rels = S.resolve_relations(relations)
    users: dict[str, int] = {u: i for i, u in enumerate(user_ids or [])}
    llms: dict[str, int] = {m: i for i, m in enumerate(llm_names or [])}
    llm_vecs: dict[int, np.ndarray] = {}
    cols: dict[str, list] = {k: [] for k in (
        "user", "llm", "group", "record", "step", "turn", "split", "raw", "prev", "line",
        "qid", "qtext", "rtext")}
    embs: list[np.ndarray] = []
    pa_, pb_, pl_ = [], [], []
    encoder: str | None = None
    encoder_file: str | None = None
    dim: int | None = None
    n = 0
    g_idx = 0
    r_idx = 0
    for split_name in S.SPLITS:
        if split_name not in splits:
            continue
        path = Path(splits[split_name])
        code = _SPLIT_CODE[split_name]
        for grp in iter_groups(path, rating_scale=rating_scale):
            first = grp.records[0]
            if dim is None:
                dim = int(first.model_emb.shape[0])
            elif first.model_emb.shape[0] != dim:
                raise ValueError(
                    f"{path}:{first.line}: field 'model_emb': expected width {dim} "
                    f"(as in {encoder_file or 'the first split'}), got {first.model_emb.shape[0]}")
            steps = len(first.conversation)
            starts = []
            for rec in grp.records:
                if rec.encoder is not None:
                    if encoder is None:
                        encoder, encoder_file = rec.encoder, str(path)
                    elif rec.encoder != encoder:
                        raise ValueError(
                            f"{path}:{rec.line}: field 'encoder': expected {encoder!r} "
                            f"(as in {encoder_file}), got {rec.encoder!r}")
                uid = users.setdefault(rec.judge, len(users))
                lid = llms.get(rec.model)
                if lid is None:
                    lid = llms[rec.model] = len(llms)
                if lid not in llm_vecs:
                    llm_vecs[lid] = rec.model_emb
                starts.append(n)
                for t, turn in enumerate(rec.conversation):
                    cols["user"].append(uid)
                    cols["llm"].append(lid)
                    cols["group"].append(g_idx)
                    cols["record"].append(r_idx)
                    cols["step"].append(t)
                    cols["turn"].append(rec.turn)
                    cols["split"].append(code)
                    cols["raw"].append(turn.rating)
                    cols["prev"].append(n - 1 if t > 0 else -1)
                    cols["line"].append(rec.line)
                    cols["qid"].append(rec.question_id)
                    cols["qtext"].append(turn.query)
                    cols["rtext"].append(turn.response)
                    embs.append(turn.query_emb)
                    n += 1
                r_idx += 1
            # comparison pairs: every 2-combination of the K records, at every step
            k = len(starts)
            ia, ib = np.triu_indices(k, 1)
            base = np.asarray(starts, dtype=np.int64)
            for t in range(steps):
                pa_.append(base[ia] + t)
                pb_.append(base[ib] + t)
            g_idx += 1
    if n == 0:
        raise ValueError(f"no interactions in {dict(splits)}")
    raw = np.asarray(cols["raw"], dtype=np.float32)
    lo, hi = rating_scale if rating_scale is not None else (float(raw.min()), float(raw.max()))
    llm_emb = np.zeros((len(llms), dim), dtype=np.float32)
    for lid, vec in llm_vecs.items():
        llm_emb[lid] = vec
    pair_a = np.concatenate(pa_) if pa_ else np.zeros(0, np.int64)
    pair_b = np.concatenate(pb_) if pb_ else np.zeros(0, np.int64)
    g = GraphTables(
        user_ids=list(users),
        llm_names=list(llms),
        llm_emb=llm_emb,
        user=np.asarray(cols["user"], dtype=np.int64),
        llm=np.asarray(cols["llm"], dtype=np.int64),
        group=np.asarray(cols["group"], dtype=np.int64),
        record=np.asarray(cols["record"], dtype=np.int64),
        step=np.asarray(cols["step"], dtype=np.int16),
        turn=np.asarray(cols["turn"], dtype=np.int16),
        split=np.asarray(cols["split"], dtype=np.int8),
        rating=np.zeros(n, np.float32),
        raw_rating=raw,
        prev=np.asarray(cols["prev"], dtype=np.int64),
        line=np.asarray(cols["line"], dtype=np.int32),
        query_emb=np.stack(embs).astype(np.float32, copy=False),
        question_id=cols["qid"],
        query_text=cols["qtext"],
        response_text=cols["rtext"],
        pair_a=pair_a,
        pair_b=pair_b,
        pair_label=np.zeros(pair_a.shape[0], np.float32),
        relations=rels,
        encoder=encoder,
        rating_min=float(lo),
        rating_max=float(hi),
        sources={k: str(v) for k, v in splits.items()},
    )
    g.rating = g.normalise(raw)
    ra, rb = raw[pair_a], raw[pair_b]
    g.pair_label = np.where(ra > rb, 1.0, np.where(ra < rb, 0.0, 0.5)).astype(np.float32)
    return g


def _writable(a: np.ndarray) -> np.ndarray:
    """``a`` itself when writable, else a copy: Arrow's zero-copy arrays are read-only, and torch.from_numpy
    warns about (and must not write to) those."""
    return a if a.flags.writeable else a.copy()


def read_graph(directory: str | Path, *, relations: str | Sequence | None = None) -> GraphTables:
    """Load a graph written by :meth:`GraphTables.write_parquet`."""
    d = Path(directory)
    meta_path = d / S.META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{d}: not a graph folder (no {S.META_FILE})")
    meta = json.loads(meta_path.read_text())

    def load(name: str) -> pa.Table:
        p = d / f"{name}.parquet"
        if not p.exists():
            raise GraphIntegrityError(f"{d}: missing table {p.name}")
        return pq.read_table(p)

    def emb(tbl: pa.Table) -> np.ndarray:
        col = tbl.column(S.C_EMBEDDING).combine_chunks()
        width = col.type.list_size
        return _writable(np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
                         .reshape(-1, width))

    users = load(S.T_USERS)
    llms = load(S.T_LLMS)
    queries = load(S.T_QUERIES)
    responses = load(S.T_RESPONSES)
    inter = load(S.T_INTERACTIONS)
    pairs = load(S.T_PAIRS)

    def col(tbl: pa.Table, name: str, dtype) -> np.ndarray:
        return _writable(np.asarray(tbl.column(name).to_numpy(), dtype=dtype))

    rels = S.resolve_relations(relations if relations is not None else meta["relations"])
    g = GraphTables(
        user_ids=users.column(S.C_USER_ID).to_pylist(),
        llm_names=llms.column(S.C_LLM_NAME).to_pylist(),
        llm_emb=emb(llms),
        user=col(inter, S.C_USER_IDX, np.int64),
        llm=col(inter, S.C_LLM_IDX, np.int64),
        group=col(inter, S.C_GROUP_IDX, np.int64),
        record=col(inter, S.C_RECORD_IDX, np.int64),
        step=col(inter, S.C_STEP, np.int16),
        turn=col(inter, S.C_TURN, np.int16),
        split=col(inter, S.C_SPLIT, np.int8),
        rating=col(inter, S.C_RATING, np.float32),
        raw_rating=col(inter, S.C_RAW_RATING, np.float32),
        prev=col(inter, S.C_PREV_INTERACTION, np.int64),
        line=col(inter, S.C_LINE, np.int32),
        query_emb=emb(queries),
        question_id=queries.column(S.C_QUESTION_ID).to_pylist(),
        query_text=queries.column(S.C_QUERY_TEXT).to_pylist(),
        response_text=responses.column(S.C_RESPONSE_TEXT).to_pylist(),
        pair_a=col(pairs, S.C_A, np.int64),
        pair_b=col(pairs, S.C_B, np.int64),
        pair_label=col(pairs, S.C_LABEL, np.float32),
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

