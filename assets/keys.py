"""Asset keys, check names and the embedding partitions: the names users' run configs, jobs and tests use."""

from __future__ import annotations

import dagster as dg

from .data_steps import SHARD_KEYS

__all__ = ["ASSET_NAMES", "CHECK_NAMES", "SHARD_ASSET", "SHARD_KEYS", "SHARD_PARTITIONS", "asset_key",
           "shard_asset_key", "asset_keys"]

#: the chain of the train_<dataset> jobs (raw data to champion)
ASSET_NAMES = ("raw_data", "interactions", "text_embeddings", "graph_parquet", "trained_model", "test_evaluation",
               "published_router")
#: the partitioned embedding asset (job embed_<dataset>; text_embeddings merges its shards)
SHARD_ASSET = "embedding_shards"
#: one partition per first hex digit of the text hash
SHARD_PARTITIONS = dg.StaticPartitionsDefinition(list(SHARD_KEYS))
CHECK_NAMES = ("interactions_valid", "embedding_width", "graph_integrity", "finite_weights", "promotion_gate")


def asset_key(dataset: str, name: str) -> dg.AssetKey:
    """``AssetKey([dataset, name])``."""
    if name not in ASSET_NAMES:
        raise ValueError(f"unknown asset {name!r}; expected one of {ASSET_NAMES}")
    return dg.AssetKey([dataset, name])


def asset_keys(dataset: str) -> dict[str, dg.AssetKey]:
    """Every chain asset's key of ``dataset``, by name."""
    return {n: asset_key(dataset, n) for n in ASSET_NAMES}


def shard_asset_key(dataset: str) -> dg.AssetKey:
    """``AssetKey([dataset, "embedding_shards"])``."""
    return dg.AssetKey([dataset, SHARD_ASSET])
