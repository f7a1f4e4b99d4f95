"""Dagster assets of the GMTRouter pipeline (thin wrappers over ``gmt_model``), by role.

Per dataset (``demo``, ``mt_bench``, ``chatbot_arena``, ``gsm8k``, ``mmlu``; key prefix and group name =
the dataset), one way from raw data to champion::

    data:    raw_data -> interactions -> text_embeddings -> graph_parquet
                         interactions -> embedding_shards (16 partitions) -> text_embeddings
    model:   graph_parquet -> trained_model -> test_evaluation
    deploy:  test_evaluation -> published_router (the promotion gate; the champion alias)

Modules: Dagster definitions in ``data_assets``, ``model_assets``, ``deploy_assets`` and ``checks`` (the
standalone data checks); the work itself, as plain functions testable without Dagster, in ``data_steps``,
``model_steps`` and ``champion``; the dataset's folders in ``storage`` (``DataStore``); names in ``keys``;
run config classes in ``configs``; resources (paths, encoder, MLflow) in ``resources``.
"""

from __future__ import annotations

import dagster as dg

from .checks import build_checks
from .data_assets import build_data_assets
from .deploy_assets import build_deploy_assets
from .keys import ASSET_NAMES, CHECK_NAMES, SHARD_ASSET, SHARD_PARTITIONS, asset_key, shard_asset_key
from .model_assets import build_model_assets
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


def build_dataset_assets(dataset: str) -> list[dg.AssetsDefinition]:
    """The chain of ``dataset`` (ASSET_NAMES, in order) followed by its partitioned ``embedding_shards``."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    *chain, shards = build_data_assets(dataset)
    return [*chain, *build_model_assets(dataset), *build_deploy_assets(dataset), shards]


def build_dataset_checks(dataset: str) -> list[dg.AssetChecksDefinition]:
    """The blocking data checks of ``dataset`` (the promotion gate lives in ``published_router``)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    return build_checks(dataset)


def all_assets() -> list[dg.AssetsDefinition]:
    """The assets of every dataset."""
    return [a for ds in DATASETS for a in build_dataset_assets(ds)]


def all_checks() -> list[dg.AssetChecksDefinition]:
    """The data checks of every dataset."""
    return [c for ds in DATASETS for c in build_dataset_checks(ds)]
