"""The data role of the pipeline as plain functions: raw data -> interactions -> text embeddings -> graph,
and the checks of each (``check_*``: ``(passed, metadata)``).

Every internal asset is columnar (Parquet) and committed with a manifest that lists each file's size
and sha256.  Each split is parsed and validated once per run, by :func:`materialize_interactions`
(for JSONL sources: ``gmt_model.data.columnar.import_jsonl``; raw judgments and the demo are converted, never
written as JSONL); every later step verifies the files it reads against their manifest
(:func:`verify_area`: a changed file is refused with one line naming it) and trusts the counts
recorded there.

Embedding is sharded by the first hex digit of the text hash (:data:`SHARD_KEYS`):
:func:`materialize_embedding_shard` embeds one shard into ``embedding_shards/<dataset>/shard-<k>.parquet``
(a Dagster partition each, so shards run in parallel processes); :func:`materialize_text_embeddings`
merges the shards that match the current interactions and the encoder, and embeds whatever is left
(all of it when no shard ran), so the training job works with or without the shard runs.

No Dagster import here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from gmt_model.data import columnar as C
from gmt_model.data import embeddings as E
from gmt_model.atomic import copy_file_atomic, file_sha256
from gmt_model.data.datasets import (SPLIT_KINDS, RawResult, llm_description_map, load_llm_descriptions,
                                     load_source_config, prepare_raw, split_raw)
from gmt_model.method.schema import SPLIT_FILES, SPLITS

from .feedback_merge import FeedbackMergeStats, feedback_groups, pool_descriptions
from .storage import REPO_ROOT, DataStore, read_json, write_json_atomic

__all__ = [
    "SHARD_KEYS",
    "N_SHARDS",
    "STORE_FILE",
    "materialize_raw",
    "materialize_interactions",
    "check_interactions_valid",
    "materialize_embedding_shard",
    "materialize_text_embeddings",
    "check_embedding_width",
    "materialize_graph",
    "check_graph_integrity",
    "export_jsonl",
]

log = logging.getLogger(__name__)

#: partition keys of the embedding shards: the first hex digit of the text hash
SHARD_KEYS: tuple[str, ...] = tuple("0123456789abcdef")
N_SHARDS = len(SHARD_KEYS)
STORE_FILE = "embeddings.parquet"
#: texts per encoder call (the encoder batches inside; this bounds the memory of one call)
EMBED_BATCH = 4096
_LLM_PREFIX = C.llm_text_for_embedding("")


# --------------------------------------------------------------------------
# raw data
# --------------------------------------------------------------------------
def materialize_raw(store: DataStore, *, overrides: Mapping[str, Any] | None = None,
                    sources_file: str | os.PathLike[str] | None = None, run_id: str = "",
                    url_setting: str | None = None) -> dict[str, Any]:
    """Fetch / generate ``dataset``'s raw data; commit ``raw/<dataset>``.

    Downloads land in the persistent ``downloads/<dataset>`` folder (unless
    the source sets ``download_dir``), so a partial download resumes and a
    verified one is reused (with ``sha256`` set); archives are
    extracted into the staging folder, single downloaded files are copied
    into it, local folders are read in place.  Any error (missing source,
    checksum mismatch, truncated or unsafe archive) leaves the previous
    ``raw/<dataset>`` untouched.  ``url_setting`` names where an overriding ``url`` was set (a run
    config), for the hint of a missing or unreachable source.
    """
    cfg_file = Path(sources_file) if sources_file else REPO_ROOT / "configs" / "datasets.yaml"
    source = load_source_config(store.dataset, cfg_file, dict(overrides or {}))
    if url_setting and (overrides or {}).get("url"):  # errors name the setting that gave the URL
        source = dataclasses.replace(source, config_key=url_setting)
    if source.kind != "demo" and not source.download_dir:
        source = dataclasses.replace(source, download_dir=str(store.downloads()))
    dl_dir = Path(source.download_dir) if source.download_dir else None
    before = _file_states(dl_dir)
    try:
        return _materialize_raw(store, source, run_id)
    except BaseException:
        _remove_refused_downloads(dl_dir, before)
        raise


def _file_states(folder: Path | None) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime) of the files directly in ``folder``."""
    if folder is None or not folder.is_dir():
        return {}
    out = {}
    for p in folder.iterdir():
        if p.is_file():
            st = p.stat()
            out[p.name] = (st.st_size, st.st_mtime_ns)
    return out


def _remove_refused_downloads(folder: Path | None, before: Mapping[str, tuple[int, int]]) -> None:
    """After a failed fetch/extract, delete the files this attempt added or rewrote in the download folder
    (a refused archive must not be reused, nor pile up), keeping partial transfers (``.part``) to resume."""
    for name, state in _file_states(folder).items():
        if before.get(name) == state or name.endswith((".part", ".part.json")):
            continue
        try:
            (folder / name).unlink()  # type: ignore[operator]
            log.info("removed the refused download %s", folder / name)  # type: ignore[operator]
        except OSError:
            pass


def _materialize_raw(store: DataStore, source: Any, run_id: str) -> dict[str, Any]:
    with store.staging("raw") as tmp:
        res = prepare_raw(store.dataset, source, tmp)
        path = Path(res.path)
        if path.is_file() and not _is_inside(path, tmp):  # a downloaded single file: keep this run's copy
            files = tmp / "files"
            files.mkdir()
            copied = files / path.name
            copy_file_atomic(path, copied)
            path = copied
        manifest = {
            "kind": res.kind,
            "path": store.relative(tmp, path),
            "read_in_place": not _is_inside(path, tmp),
            "source": res.source,
            "downloaded": None if res.downloaded is None else str(res.downloaded),
            "sha256": res.sha256,
            "n_bytes": res.n_bytes,
            "info": res.info,
            "source_config": source.to_dict(),
            "dagster_run_id": run_id,
            "files": _count_files(path),
        }
        store.commit(tmp, "raw", manifest)
    return manifest


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _count_files(path: Path) -> dict[str, int]:
    if path.is_file():
        return {"files": 1, "bytes": path.stat().st_size}
    n = size = 0
    for p in path.rglob("*"):
        if p.is_file():
            n += 1
            size += p.stat().st_size
    return {"files": n, "bytes": size}


# --------------------------------------------------------------------------
# interactions
# --------------------------------------------------------------------------
def _training_groups_of(groups: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[list[str], tuple[float, float]]:
    models = sorted({r["model"] for g in groups for r in g})
    ratings = [float(t["rating"]) for g in groups for r in g for t in r["conversation"]]
    return models, (min(ratings), max(ratings))


def _feedback(feedback_log: str | os.PathLike[str] | None, models: Sequence[str],
              rating_range: tuple[float, float], known_users: set[str],
              added: dict[str, str] | None = None) -> tuple[list, FeedbackMergeStats]:
    """``added`` (filled in): the LLMs the router's pool added or re-described, name -> description;
    their feedback merges too.  ``feedback_log``: a SQLite path or a ``postgresql://`` URL (one store)."""
    from gmt_model.serving.feedback import open_feedback_store, redact_url, store_exists

    st = FeedbackMergeStats(log_path=None if feedback_log is None else redact_url(os.fspath(feedback_log)))
    if feedback_log is None or not store_exists(feedback_log):
        return [], st
    st.log_exists = True
    with open_feedback_store(feedback_log) as fb:
        rows = fb.read(0)
        pool = pool_descriptions(fb.read_llm_events(0))
    if added is not None:
        added.update(pool)
    st.max_id = max((int(r.id) for r in rows), default=0)
    groups = feedback_groups(rows, models=sorted(set(models) | set(pool)), rating_range=rating_range, stats=st)
    st.users_added = sorted({g[0]["judge"] for g in groups} - known_users)
    return groups, st


def _thin_users(folder: Path, min_user_groups: int) -> dict[str, int]:
    t = pq.read_table(folder / C.INTERACTIONS_FILE, columns=["split", "group_idx", "user_id"])
    t = t.filter(t.column("split").to_numpy() == SPLITS.index("training"))
    per_user = t.group_by(["user_id", "group_idx"]).aggregate([]).group_by("user_id").aggregate([("group_idx", "count")])
    all_users = set(pq.read_table(folder / C.INTERACTIONS_FILE, columns=["user_id"]).column("user_id")
                    .unique().to_pylist())
    counts = dict(zip(per_user.column("user_id").to_pylist(), per_user.column("group_idx_count").to_pylist()))
    return {u: int(counts.get(u, 0)) for u in sorted(all_users) if counts.get(u, 0) < min_user_groups}


def materialize_interactions(store: DataStore, encoder: Any, *, split_seed: int = 0,
                             split_fractions: Sequence[float] = (0.7, 0.1, 0.2), min_user_groups: int = 3,
                             feedback_log: str | os.PathLike[str] | None = None,
                             run_id: str = "") -> dict[str, Any]:
    """Raw data (+ feedback comparisons) -> ``interactions/<dataset>``: the columnar tables and their manifest.

    JSONL split sources (the GMTRouter release, local splits) are imported, parsing each file once; their
    inline embeddings are kept as ``embeddings.parquet`` (used when their encoder is the configured one).
    Raw judgments and the demo are converted and split per user.  Feedback comparisons are appended to the
    training split.  The manifest holds per-split counts and every file's size and sha256.
    """
    raw_m = store.read_manifest("raw")
    kind = raw_m["kind"]
    path = store.resolve("raw", raw_m["path"])
    descriptions = load_llm_descriptions()
    added: dict[str, str] = {}  # LLMs of the router's pool (feedback log events): their descriptions win
    fb_stats = FeedbackMergeStats()
    conversion = None
    with store.staging("interactions") as tmp:
        if kind in SPLIT_KINDS:
            files = {s: path / SPLIT_FILES[s] for s in SPLITS}

            def extra(split: str, summ: C.SplitSummary) -> list:
                nonlocal fb_stats
                if split != SPLITS[0]:
                    return []
                groups, fb_stats = _feedback(feedback_log, sorted(summ.models), (summ.rating_min, summ.rating_max),
                                             set(summ.judges), added)
                return groups

            summ = C.import_jsonl(files, tmp, extra_groups=extra)
            imported = {"encoder": summ.encoder, "dim": summ.dim}
            mode = "imported" if summ.encoder == encoder.name else "reembedded"
        else:
            plan = split_raw(store.dataset, RawResult(dataset=store.dataset, kind=kind, path=path), seed=split_seed,
                             fractions=split_fractions)
            splits, conversion = plan.groups, plan.conversion
            models, rating_range = _training_groups_of(splits[SPLITS[0]])
            known = {r["judge"] for s in SPLITS for g in splits[s] for r in g}
            fb_groups, fb_stats = _feedback(feedback_log, models, rating_range, known, added)
            splits[SPLITS[0]] = splits[SPLITS[0]] + fb_groups
            all_models = sorted({r["model"] for s in SPLITS for g in splits[s] for r in g})
            summ = C.write_columnar(splits, tmp, llm_description_map(all_models, {**descriptions, **added}))
            imported = None
            mode = "converted"
        split_docs = {s: summ.splits[s].to_dict() for s in SPLITS if s in summ.splits}
        for s in SPLITS:
            if s not in split_docs or split_docs[s]["n_groups"] == 0:
                raise ValueError(f"dataset {store.dataset!r}: the {s} split has no groups")
        judges = sorted({j for d in split_docs.values() for j in d["judges"]})
        models = sorted({m for d in split_docs.values() for m in d["models"]})
        manifest = {
            "files": C.file_entries(tmp, summ.files),
            "encoder": encoder.name,
            "dim": int(encoder.dim),
            "imported": imported,
            "mode": mode,
            "n_users": len(judges),
            "n_llms": len(models),
            "llms": models,
            "n_texts": summ.n_texts,
            "rating_scale": [summ.rating_min, summ.rating_max],
            "splits": {s: {k: d[k] for k in ("n_groups", "n_records", "n_interactions", "n_pairs", "n_users")}
                       for s, d in split_docs.items()},
            "summaries": {s: {k: v for k, v in d.items() if k != "judges"} for s, d in split_docs.items()},
            "thin_users": _thin_users(tmp, min_user_groups),
            "min_user_groups": min_user_groups,
            "conversion": _conversion_summary(conversion) if conversion else None,
            "feedback": fb_stats.to_dict(),
            "llm_descriptions_added": dict(sorted(added.items())),
            "feedback_through_id": fb_stats.max_id if fb_stats.log_exists else None,
            "feedback_unmerged_ids": list(fb_stats.unmerged_ids) if fb_stats.log_exists else [],
            "split_seed": split_seed,
            "split_fractions": list(split_fractions),
            "raw_kind": kind,
            "dagster_run_id": run_id,
        }
        store.commit(tmp, "interactions", manifest)
    return manifest


def _conversion_summary(conv: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("source", "n_rows", "n_judgments", "n_duplicates_dropped", "n_contradictions",
            "n_contradictions_dropped", "n_groups", "n_records", "n_multi_turn_groups", "n_renamed_groups",
            "n_empty_responses", "turns", "winners")
    out = {k: conv.get(k) for k in keep}
    out["n_judges"] = len(conv.get("judges") or [])
    out["n_models"] = len(conv.get("models") or [])
    out["n_questions"] = len(conv.get("questions") or [])
    out["models"] = list(conv.get("models") or [])
    return out


def check_interactions_valid(store: DataStore) -> tuple[bool, dict[str, Any]]:
    """The committed tables match their manifest (sha256) and every split has groups (from the manifest)."""
    problems: list[str] = []
    meta: dict[str, Any] = {}
    try:
        m = store.verify("interactions")
    except (C.ManifestError, OSError, ValueError) as exc:
        return False, {"problems": [str(exc)]}
    for s in SPLITS:
        n = int((m.get("splits") or {}).get(s, {}).get("n_groups", 0))
        meta[f"{s}_groups"] = n
        if n == 0:
            problems.append(f"split {s!r} has no groups")
    meta["problems"] = problems
    return not problems, meta


# --------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------
def _texts(store: DataStore) -> tuple[dict[str, Any], np.ndarray, list[str]]:
    """(verified interactions manifest, text hashes in table order, texts)."""
    m = store.verify("interactions")
    t = pq.read_table(store.area("interactions") / C.TEXTS_FILE)
    return m, E.hashes_from_arrow(t.column(E.C_TEXT_HASH)).copy(), t.column(E.C_TEXT).to_pylist()


def _descriptions(manifest: Mapping[str, Any]) -> dict[str, str]:
    """LLM descriptions: the config's, and those of the LLMs the router's pool added (interactions manifest)."""
    return {**load_llm_descriptions(), **(manifest.get("llm_descriptions_added") or {})}


def _embed(encoder: Any, texts: Sequence[str], descriptions: Mapping[str, str]) -> np.ndarray:
    """Embed texts in bounded calls; an imported LLM's key text is embedded as that LLM's description."""
    out = np.zeros((len(texts), int(encoder.dim)), np.float32)
    todo = [t[len(_LLM_PREFIX):] if t.startswith(_LLM_PREFIX) else t for t in texts]
    llm_map = {t: d for t, d in llm_description_map(
        [t[len(_LLM_PREFIX):] for t in texts if t.startswith(_LLM_PREFIX)], descriptions).items()}
    todo = [llm_map.get(x, x) if texts[i].startswith(_LLM_PREFIX) else x for i, x in enumerate(todo)]
    for start in range(0, len(todo), EMBED_BATCH):
        part = todo[start:start + EMBED_BATCH]
        out[start:start + len(part)] = np.asarray(encoder.encode(part), dtype=np.float32)
    return out


def _shard_dir(store: DataStore) -> Path:
    return store.area("embedding_shards")


def materialize_embedding_shard(store: DataStore, encoder: Any, shard: str, *,
                                run_id: str = "") -> dict[str, Any]:
    """Embed the texts whose hash starts with hex digit ``shard`` into ``embedding_shards/<dataset>/shard-<k>``.

    Writes ``shard-<k>.parquet`` (an embedding store) and ``shard-<k>.json`` (its manifest: the texts table's
    sha256 it was cut from, encoder, counts, the store's sha256), each atomically; shards of one dataset
    run in parallel without touching each other's files.
    """
    if shard not in SHARD_KEYS:
        raise ValueError(f"shard: expected one of {''.join(SHARD_KEYS)}, got {shard!r}")
    m, hashes, texts = _texts(store)
    k = SHARD_KEYS.index(shard)
    sel = np.flatnonzero(E.shard_of(hashes, N_SHARDS) == k)
    vecs = _embed(encoder, [texts[i] for i in sel], _descriptions(m))
    folder = _shard_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"shard-{shard}.parquet"
    with E.StoreWriter(path, int(encoder.dim), encoder=encoder.name) as w:
        w.add(hashes[sel], vecs)
    doc = {"dataset": store.dataset, "shard": shard, "n_shards": N_SHARDS, "encoder": encoder.name,
           "dim": int(encoder.dim), "n_texts": int(sel.size),
           "texts_sha256": m["files"][C.TEXTS_FILE]["sha256"],
           "file": path.name, "sha256": file_sha256(path), "dagster_run_id": run_id}
    write_json_atomic(folder / f"shard-{shard}.json", doc)
    return doc


def _fresh_shards(store: DataStore, texts_sha: str, encoder: Any) -> list[Path]:
    """Shard stores cut from this texts table with this encoder, whose file matches its manifest."""
    out = []
    folder = _shard_dir(store)
    for key in SHARD_KEYS:
        mp = folder / f"shard-{key}.json"
        if not mp.is_file():
            continue
        doc = read_json(mp)
        p = folder / f"shard-{key}.parquet"
        if doc.get("texts_sha256") != texts_sha or doc.get("encoder") != encoder.name or not p.is_file():
            continue
        C.verify_files(folder, {p.name: {"sha256": doc["sha256"]}}, manifest=mp)
        out.append(p)
    return out


def materialize_text_embeddings(store: DataStore, encoder: Any, *, dtype: str = "float32",
                                run_id: str = "") -> dict[str, Any]:
    """``embeddings/<dataset>/embeddings.parquet``: one embedding per distinct text of the interactions.

    Vectors come from, in order: the fresh embedding shards (same texts table, same encoder), the
    imported embeddings (a JSONL source written with the configured encoder), the previous committed store
    (same encoder); the rest are embedded here, in bounded batches.
    """
    m, hashes, texts = _texts(store)
    dim = int(encoder.dim)
    n = len(hashes)
    vecs = np.zeros((n, dim), np.float32)
    have = np.zeros(n, bool)
    counts: dict[str, int] = {}
    is_llm_key = np.array([t.startswith(_LLM_PREFIX) for t in texts], bool) if n else np.zeros(0, bool)

    def take(name: str, path: Path, *, llm_keys: bool) -> None:
        st = E.EmbeddingStore.open(path)
        if st.encoder != encoder.name or st.dim != dim or (st.dtype == "float16" and dtype != "float16"):
            return  # another encoder, or half-precision vectors where full precision is asked for
        want = ~have if llm_keys else (~have & ~is_llm_key)
        idx = np.flatnonzero(want)
        found = st.contains(hashes[idx])
        idx = idx[found]
        if idx.size:
            vecs[idx] = st.lookup(hashes[idx])
            have[idx] = True
        counts[name] = counts.get(name, 0) + int(idx.size)

    shards = _fresh_shards(store, m["files"][C.TEXTS_FILE]["sha256"], encoder)
    for p in shards:
        take("from_shards", p, llm_keys=True)
    imp = m.get("imported") or {}
    folder = store.area("interactions")
    if imp.get("encoder") == encoder.name and (folder / C.IMPORTED_EMBEDDINGS_FILE).is_file():
        take("from_import", folder / C.IMPORTED_EMBEDDINGS_FILE, llm_keys=True)
    prev = store.area("embeddings") / STORE_FILE
    if prev.is_file():
        try:
            take("from_previous", prev, llm_keys=False)
        except E.EmbeddingStoreError as exc:
            log.warning("ignoring the previous embedding store: %s", exc)
    missing = np.flatnonzero(~have)
    if missing.size:
        vecs[missing] = _embed(encoder, [texts[i] for i in missing], _descriptions(m))
    counts["embedded_now"] = int(missing.size)
    with store.staging("embeddings") as tmp:
        with E.StoreWriter(tmp / STORE_FILE, dim, encoder=encoder.name, dtype=dtype) as w:
            w.add(hashes, vecs)
        manifest = {
            "files": C.file_entries(tmp, [STORE_FILE]),
            "encoder": encoder.name, "dim": dim, "dtype": dtype, "n_texts": n,
            "sources": {k: counts.get(k, 0) for k in ("from_shards", "from_import", "from_previous", "embedded_now")},
            "n_shards_used": len(shards),
            "interactions_texts_sha256": m["files"][C.TEXTS_FILE]["sha256"],
            "dagster_run_id": run_id,
        }
        store.commit(tmp, "embeddings", manifest)
    return manifest


def check_embedding_width(store: DataStore, encoder: Any) -> tuple[bool, dict[str, Any]]:
    """The store matches its manifest, holds the configured encoder's width and name, and every text."""
    problems: list[str] = []
    try:
        em = store.verify("embeddings")
        _m, hashes, _ = _texts(store)
        st = E.EmbeddingStore.open(store.area("embeddings") / STORE_FILE)
    except (C.ManifestError, E.EmbeddingStoreError, OSError, ValueError) as exc:
        return False, {"problems": [str(exc)]}
    if st.dim != int(encoder.dim):
        problems.append(f"{st.path}: embedding width {st.dim}, the encoder {encoder.name!r} gives {encoder.dim}")
    if st.encoder != encoder.name:
        problems.append(f"{st.path}: written with encoder {st.encoder!r}, configured is {encoder.name!r}")
    missing = int((~st.contains(hashes)).sum())
    if missing:
        problems.append(f"{st.path}: {missing} of {len(hashes)} texts have no embedding")
    return not problems, {"encoder": encoder.name, "encoder_dim": int(encoder.dim), "store_dim": st.dim,
                          "store_encoder": st.encoder, "n_texts": len(st), "sources": em.get("sources"),
                          "problems": problems}


# --------------------------------------------------------------------------
# graph
# --------------------------------------------------------------------------
def materialize_graph(store: DataStore, *, relations: str = "full", run_id: str = "") -> dict[str, Any]:
    """The graph tables from the verified interactions and embedding store; commit ``graph/<dataset>``."""
    from gmt_model.method.graph import GraphIntegrityError

    im = store.verify("interactions")
    store.verify("embeddings")
    g = C.graph_from_columnar(store.area("interactions"), store.area("embeddings") / STORE_FILE,
                              relations=relations)
    problems = g.check()
    if problems:
        raise GraphIntegrityError(f"graph of {store.dataset}: " + "; ".join(problems))
    counts = g.counts()
    with store.staging("graph") as tmp:
        g.write_parquet(tmp)
        manifest = {
            "relations": relations,
            "n_relations": len(g.relations),
            "counts": counts,
            "n_users": g.num_users,
            "n_llms": g.num_llms,
            "llms": list(g.llm_names),
            "n_interactions": g.num_interactions,
            "n_groups": g.num_groups,
            "n_pairs": int(g.pair_a.size),
            "max_steps": int(g.step.max()) + 1 if g.step.size else 0,
            "n_multi_turn_interactions": int((g.step > 0).sum()),
            "encoder": g.encoder,
            "dim": g.dim,
            "rating_scale": [g.rating_min, g.rating_max],
            "tables": sorted(p.name for p in tmp.glob("*.parquet")),
            "feedback_through_id": im.get("feedback_through_id"),
            "feedback_unmerged_ids": list(im.get("feedback_unmerged_ids") or []),
            "dagster_run_id": run_id,
        }
        store.commit(tmp, "graph", manifest)
    return manifest


def check_graph_integrity(store: DataStore) -> tuple[bool, dict[str, Any]]:
    """Read the committed graph back and check it (indices in range, message receivers, pairs per split)."""
    from gmt_model.method import schema as S
    from gmt_model.method.graph import GraphIntegrityError, read_graph

    folder = store.area("graph")
    problems: list[str] = []
    meta: dict[str, Any] = {}
    try:
        g = read_graph(folder)  # runs GraphTables.check() on the stored relations
    except (GraphIntegrityError, FileNotFoundError, OSError, KeyError, ValueError) as exc:
        return False, {"problems": [f"{folder}: {exc}"]}
    for name, rels in S.RELATION_SETS.items():  # both relation sets a model may train on
        g.relations = rels
        problems += [f"relations {name!r}: {p}" for p in g.check()]
    for s in SPLITS:
        n = int(g.pair_mask(s).sum())
        meta[f"pairs_{s}"] = n
        if n == 0:
            problems.append(f"split {s!r} has no comparison pairs")
    meta["problems"] = problems
    return not problems, meta


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------
def export_jsonl(store: DataStore, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The committed interactions + embedding store of ``dataset`` as GMTRouter JSONL splits in ``out_dir``
    (the seed's interchange format; files verified against their manifests first)."""
    store.verify("interactions")
    em = store.verify("embeddings")
    return C.export_jsonl(store.area("interactions"), out_dir,
                          store.area("embeddings") / STORE_FILE, encoder=em.get("encoder"))
