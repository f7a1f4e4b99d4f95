"""Building the graph from files: GMTRouter JSONL splits -> ``gmt_model.method.graph.GraphTables``.

The method takes tables; reading files is the data layer's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from gmt_model.data.jsonl import iter_groups
from gmt_model.method import schema as S
from gmt_model.method.graph import GraphTables, _SPLIT_CODE, from_columns

__all__ = ["build_graph"]


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
    Query texts are deduplicated (same text and same embedding: one row of
    ``text_emb``).
    """
    unknown = set(splits) - set(S.SPLITS)
    if unknown:
        raise ValueError(f"unknown split names {sorted(unknown)}; expected {list(S.SPLITS)}")
    users: dict[str, int] = {u: i for i, u in enumerate(user_ids or [])}
    llms: dict[str, int] = {m: i for i, m in enumerate(llm_names or [])}
    llm_vecs: dict[int, np.ndarray] = {}
    cols: dict[str, list] = {k: [] for k in (
        "user", "llm", "group", "record", "step", "turn", "split", "raw", "line", "qid", "rtext", "qrow")}
    text_rows: dict[tuple[str, bytes], int] = {}
    texts: list[str] = []
    embs: list[np.ndarray] = []
    encoder: str | None = None
    encoder_file: str | None = None
    dim: int | None = None
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
                for t, turn in enumerate(rec.conversation):
                    key = (turn.query, np.ascontiguousarray(turn.query_emb, dtype=np.float32).tobytes())
                    row = text_rows.get(key)
                    if row is None:
                        row = text_rows[key] = len(texts)
                        texts.append(turn.query)
                        embs.append(turn.query_emb)
                    cols["user"].append(uid)
                    cols["llm"].append(lid)
                    cols["group"].append(g_idx)
                    cols["record"].append(r_idx)
                    cols["step"].append(t)
                    cols["turn"].append(rec.turn)
                    cols["split"].append(code)
                    cols["raw"].append(turn.rating)
                    cols["line"].append(rec.line)
                    cols["qid"].append(rec.question_id)
                    cols["rtext"].append(turn.response)
                    cols["qrow"].append(row)
                r_idx += 1
            g_idx += 1
    if not cols["user"]:
        raise ValueError(f"no interactions in {dict(splits)}")
    llm_emb = np.zeros((len(llms), dim), dtype=np.float32)
    for lid, vec in llm_vecs.items():
        llm_emb[lid] = vec
    return from_columns(
        user_ids=list(users), llm_names=list(llms), llm_emb=llm_emb, user=np.asarray(cols["user"]),
        llm=np.asarray(cols["llm"]), group=np.asarray(cols["group"]), record=np.asarray(cols["record"]),
        step=np.asarray(cols["step"]), turn=np.asarray(cols["turn"]), split=np.asarray(cols["split"]),
        raw_rating=np.asarray(cols["raw"], dtype=np.float32), line=np.asarray(cols["line"]),
        text_emb=np.stack(embs).astype(np.float32, copy=False), query_row=np.asarray(cols["qrow"]), texts=texts,
        question_id=cols["qid"], response_text=cols["rtext"], rating_scale=rating_scale, relations=relations,
        encoder=encoder, sources={k: str(v) for k, v in splits.items()})
