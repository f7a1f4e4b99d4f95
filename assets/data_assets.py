"""The data assets of a dataset: raw data -> interactions -> (embedding shards) -> text embeddings -> graph.

Thin Dagster wrappers over :mod:`assets.data_steps`: each reads its run config and resources, calls one
plain function with the dataset's :class:`~assets.storage.DataStore`, and turns the returned manifest into
``MaterializeResult`` metadata.  Data passes between assets through the store's committed folders (never an
IO manager), so nothing is pickled.
"""

# no `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime
import time
from typing import Any

import dagster as dg

from . import data_steps
from .configs import EmbeddingConfig, GraphConfig, InteractionsConfig, RawDataConfig
from .keys import SHARD_PARTITIONS, asset_keys, shard_asset_key
from .metadata import json_md, thin_users_md
from .resources import EncoderResource, MLflowResource, PathsResource
from .storage import DataStore

__all__ = ["RUN_CONFIG_TAG", "build_data_assets"]

#: run tag naming the run config file(s) of a run (set by ``python -m pipelines.run_job``), named in hints
RUN_CONFIG_TAG = "gmtrouter/run_config"


def _url_setting(context: dg.AssetExecutionContext, dataset: str) -> str:
    files = context.run.tags.get(RUN_CONFIG_TAG)
    return f"ops.{dataset}__raw_data.config.url in the run config" + (f" {files}" if files else "")


def build_data_assets(dataset: str) -> list[dg.AssetsDefinition]:
    """``raw_data``, ``interactions``, ``text_embeddings``, ``graph_parquet`` and ``embedding_shards``."""
    k = asset_keys(dataset)
    shard_key = shard_asset_key(dataset)
    common = {"group_name": dataset}

    @dg.asset(key=k["raw_data"], kinds={"python"}, description=(
        f"Raw data of {dataset}: downloaded (resume, retries, sha256) and safely extracted, generated "
        f"(demo) or read in place (local folder), as configs/datasets.yaml and the run config say."), **common)
    def raw_data(context: dg.AssetExecutionContext, config: RawDataConfig, paths: PathsResource,
                 mlflow: MLflowResource) -> dg.MaterializeResult:
        store = DataStore(dataset, paths.root())
        # the run's MLflow run opens here, at the first step: a tracking server that is down fails the
        # run now (MLflowResource checks it before the step), not after embedding and graph building
        with mlflow.run(context, dataset) as run:
            m = data_steps.materialize_raw(store, overrides=config.overrides(),
                                           sources_file=config.sources_path() or str(paths.configs() / "datasets.yaml"),
                                           run_id=context.run.run_id, url_setting=_url_setting(context, dataset))
            mlflow.log_params(run, {"kind": m["kind"], "source": m["source"], "sha256": m["sha256"]}, prefix="raw.")
        return dg.MaterializeResult(metadata={
            "kind": m["kind"], "source": str(m["source"]),
            "path": dg.MetadataValue.path(str(store.resolve("raw", m["path"]))),
            "read_in_place": m["read_in_place"], "sha256": str(m["sha256"]),
            "bytes": int(m["files"]["bytes"]), "files": int(m["files"]["files"]),
            "source_config": json_md(m["source_config"]),
        })

    @dg.asset(key=k["interactions"], deps=[k["raw_data"]], kinds={"parquet"}, description=(
        f"{dataset} as the columnar interactions table (one row per conversation step; texts by hash): "
        f"judges -> users, winners -> ratings, both judged turns of a pair linked, split per user (history "
        f"kept in training), comparisons from the feedback log merged into training; JSONL split sources "
        f"are imported (parsed and validated once). Manifest: counts and sha256 of every file."), **common)
    def interactions(context: dg.AssetExecutionContext, config: InteractionsConfig, paths: PathsResource,
                     encoder: EncoderResource) -> dg.MaterializeResult:
        store = DataStore(dataset, paths.root())
        enc = encoder.get(config.encoder)
        fb_path = (config.feedback_log_path() or str(paths.feedback_log(dataset))) if config.merge_feedback else None
        if len(config.split_fractions) != 3:
            raise ValueError(f"split_fractions: expected 3 numbers (training, valid, test), "
                             f"got {config.split_fractions}")
        context.log.info(f"{dataset}: converting and splitting the raw data"
                         + (f"; merging feedback from {fb_path}" if fb_path else ""))
        t0 = time.perf_counter()
        m = data_steps.materialize_interactions(store, enc, split_seed=config.split_seed,
                                                split_fractions=tuple(config.split_fractions),
                                                min_user_groups=config.min_user_groups, feedback_log=fb_path,
                                                run_id=context.run.run_id)
        fb = m["feedback"]
        context.log.info(f"{dataset}: {m['n_users']} users, {m['n_llms']} LLMs, {m['n_texts']} distinct texts, "
                         + ", ".join(f"{s} {c['n_groups']} groups" for s, c in m["splits"].items())
                         + ("; no feedback log" if m.get("feedback_through_id") is None else
                            f"; feedback log rows 1..{m['feedback_through_id']} read, {fb['rows_merged']} merged")
                         + f"; {time.perf_counter() - t0:.1f} s")
        conv = m["conversion"] or {}
        meta: dict[str, Any] = {
            "encoder": m["encoder"], "embedding_dim": m["dim"], "mode": m["mode"],
            "users": m["n_users"], "llms": m["n_llms"], "llm_names": json_md({"llms": m["llms"]}),
            "texts": m["n_texts"],
            "path": dg.MetadataValue.path(str(store.area("interactions"))),
            "files": json_md(m["files"]),
            "thin_users_count": len(m["thin_users"]),
            "thin_users": dg.MetadataValue.md(thin_users_md(m["thin_users"])),
            "feedback_rows_merged": fb["rows_merged"], "feedback_rows_history_only": fb["rows_history_only"],
            "feedback_groups_added": fb["groups_added"], "feedback": json_md(fb),
            "feedback_through_id": "none" if m.get("feedback_through_id") is None else int(m["feedback_through_id"]),
        }
        for s, c in m["splits"].items():
            for key, v in c.items():
                meta[f"{s}_{key.removeprefix('n_')}"] = int(v)
        if conv:
            meta.update({"judges": conv["n_judges"], "questions": conv["n_questions"],
                         "multi_turn_groups": conv["n_multi_turn_groups"], "conversion": json_md(conv)})
        return dg.MaterializeResult(metadata=meta)

    @dg.asset(key=shard_key, deps=[k["interactions"]], partitions_def=SHARD_PARTITIONS, kinds={"parquet"},
              description=(f"One shard of {dataset}'s text embeddings: the distinct texts whose sha256 starts with "
                           f"the partition's hex digit. Materialize all 16 partitions (a backfill of "
                           f"embed_{dataset}) to embed in parallel processes; text_embeddings merges them."),
              **common)
    def embedding_shards(context: dg.AssetExecutionContext, paths: PathsResource,
                         encoder: EncoderResource) -> dg.MaterializeResult:
        store = DataStore(dataset, paths.root())
        enc = encoder.get(store.read_manifest("interactions").get("encoder"))
        m = data_steps.materialize_embedding_shard(store, enc, context.partition_key, run_id=context.run.run_id)
        context.log.info(f"{dataset}: shard {m['shard']}: {m['n_texts']} texts embedded with {enc.name}")
        return dg.MaterializeResult(metadata={"shard": m["shard"], "texts": m["n_texts"], "encoder": m["encoder"],
                                              "sha256": m["sha256"]})

    @dg.asset(key=k["text_embeddings"], deps=[k["interactions"], shard_key], kinds={"parquet"}, description=(
        f"The embedding store of {dataset}: one vector per distinct text (Parquet keyed by the text's sha256). "
        f"Merges the embedding shards cut from the current interactions with the same encoder, reuses "
        f"imported and previously stored vectors, embeds the rest."), **common)
    def text_embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, paths: PathsResource,
                        encoder: EncoderResource) -> dg.MaterializeResult:
        store = DataStore(dataset, paths.root())
        enc = encoder.get(store.read_manifest("interactions").get("encoder"))
        t0 = time.perf_counter()
        m = data_steps.materialize_text_embeddings(store, enc, dtype=config.dtype, run_id=context.run.run_id)
        src = m["sources"]
        context.log.info(f"{dataset}: {m['n_texts']} texts ({enc.name}, {m['dtype']}): "
                         + ", ".join(f"{k_} {v}" for k_, v in src.items())
                         + f"; {m['n_shards_used']} shards merged; {time.perf_counter() - t0:.1f} s")
        return dg.MaterializeResult(metadata={
            "path": dg.MetadataValue.path(str(store.area("embeddings"))),
            "encoder": m["encoder"], "embedding_dim": m["dim"], "dtype": m["dtype"], "texts": m["n_texts"],
            "shards_merged": m["n_shards_used"], **{k_: int(v) for k_, v in src.items()},
            "sha256": m["files"][data_steps.STORE_FILE]["sha256"],
        })

    @dg.asset(key=k["graph_parquet"], deps=[k["text_embeddings"]], kinds={"parquet"}, description=(
        f"The heterogeneous graph of {dataset} as Parquet tables (users, llms, texts, interactions, pairs), "
        f"built from the verified interactions table and embedding store."), **common)
    def graph_parquet(context: dg.AssetExecutionContext, config: GraphConfig,
                      paths: PathsResource) -> dg.MaterializeResult:
        store = DataStore(dataset, paths.root())
        m = data_steps.materialize_graph(store, relations=config.relations, run_id=context.run.run_id)
        counts = m["counts"]
        nodes = {t: counts[t] for t in ("user", "llm", "session", "query", "response") if t in counts}
        edges = {r: v for r, v in counts.items() if r.count("__") == 2}
        table = ["| type | count |", "|---|---:|"] + [f"| {t} | {v} |" for t, v in {**nodes, **edges}.items()]
        return dg.MaterializeResult(metadata={
            "path": dg.MetadataValue.path(str(store.area("graph"))),
            "relations": m["relations"], "users": m["n_users"], "llms": m["n_llms"],
            "interactions": m["n_interactions"], "groups": m["n_groups"], "pairs": m["n_pairs"],
            "max_steps": m["max_steps"], "multi_turn_interactions": m["n_multi_turn_interactions"],
            "node_counts": json_md(nodes), "edge_counts": json_md(edges),
            "pairs_per_split": json_md({key: v for key, v in counts.items() if key.startswith("pairs_")}),
            "counts": dg.MetadataValue.md("\n".join(table)),
        })

    return [raw_data, interactions, text_embeddings, graph_parquet, embedding_shards]
