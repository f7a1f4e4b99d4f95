"""Dagster assets of the GMTRouter pipeline (thin wrappers over ``gmt_model``).

Per dataset (``demo``, ``mt_bench``, ``chatbot_arena``, ``gsm8k``, ``mmlu``;
key prefix and group name = the dataset)::

    raw_data -> interactions -> text_embeddings -> graph_parquet -> trained_model -> test_evaluation
             -> published_router
    interactions -> embedding_shards (16 static partitions: first hex digit of the text hash) -> text_embeddings

``build_dataset_assets(dataset)`` / ``build_dataset_checks(dataset)`` make
them; ``all_assets()`` / ``all_checks()`` cover every dataset.  The work
itself is in ``assets.steps`` (no Dagster there), the storage layout in
``assets.storage``, the run config classes in ``assets.configs``.
"""

from __future__ import annotations

import dagster as dg

from .factory import (ASSET_NAMES, CHECK_NAMES, SHARD_ASSET, SHARD_PARTITIONS, asset_key, build_dataset_assets,
                      build_dataset_checks, shard_asset_key)
from .storage import DATASETS, DataStore, data_root

__all__ = [
    "ASSET_NAMES",
    "SHARD_ASSET",
    "SHARD_PARTITIONS",
    "shard_asset_key",
    "CHECK_NAMES",
    "DATASETS",
    "DataStore",
    "all_assets",
    "all_checks",
    "asset_key",
    "build_dataset_assets",
    "build_dataset_checks",
    "data_root",
]


def all_assets() -> list[dg.AssetsDefinition]:
    """The assets of every dataset."""
    return [a for ds in DATASETS for a in build_dataset_assets(ds)]


def all_checks() -> list[dg.AssetChecksDefinition]:
    """The data checks of every dataset."""
    return [c for ds in DATASETS for c in build_dataset_checks(ds)]
