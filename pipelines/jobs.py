"""Jobs ``train_<dataset>``: one dataset's whole chain, raw data to published router.

The executor is chosen by ``GMTROUTER_EXECUTOR`` when the definitions load:
``in_process`` (default: the chain is sequential, and one process avoids
re-importing torch for every step), ``multiprocess`` (one process per step),
``celery`` (``dagster-celery``; broker and result backend from
``$GMTROUTER_CELERY_BROKER``, e.g. ``redis://127.0.0.1:6379/0``, which
``scripts/services.sh`` sets) or ``k8s`` (``dagster-k8s``: one Kubernetes job
per step).  The last two need their packages installed; see docs/pipeline.md.
"""

from __future__ import annotations

import os

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:  # the type define_asset_job returns
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.storage import DATASETS

__all__ = ["ENV_EXECUTOR", "EXECUTORS", "job_name", "embed_job_name", "executor_from_env", "build_jobs",
           "build_embed_jobs"]

ENV_EXECUTOR = "GMTROUTER_EXECUTOR"
ENV_CELERY_BROKER = "GMTROUTER_CELERY_BROKER"
EXECUTORS = ("in_process", "multiprocess", "celery", "k8s")


def job_name(dataset: str) -> str:
    """``train_<dataset>``."""
    return f"train_{dataset}"


def embed_job_name(dataset: str) -> str:
    """``embed_<dataset>``: the partitioned embedding shards of one dataset."""
    return f"embed_{dataset}"


def executor_from_env() -> dg.ExecutorDefinition:
    """The executor named by ``$GMTROUTER_EXECUTOR`` (default in_process)."""
    name = os.environ.get(ENV_EXECUTOR, "in_process").strip() or "in_process"
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "celery":
        try:
            from dagster_celery import celery_executor  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImportError(f"{ENV_EXECUTOR}=celery needs the dagster-celery package "
                              f"(pip install dagster-celery==<your dagster version's>)") from exc
        broker = os.environ.get(ENV_CELERY_BROKER, "").strip()
        if not broker:
            return celery_executor  # broker and backend from the run config (execution.config)
        # one step per worker process at a time; a worker that dies mid-step fails the step (WorkerLostError,
        # the run fails naming it) rather than leaving the task to be redelivered while it may still be
        # writing: outputs are written atomically, so a failed step leaves no half-written asset
        return celery_executor.configured({
            "broker": broker, "backend": broker,
            "config_source": {"worker_prefetch_multiplier": 1, "task_acks_late": False,
                              "broker_connection_retry_on_startup": True},
        }, name="celery")
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImportError(f"{ENV_EXECUTOR}=k8s needs the dagster-k8s package") from exc
        return k8s_job_executor
    raise ValueError(f"{ENV_EXECUTOR}={name!r}: expected one of {EXECUTORS}")


def build_jobs() -> dict[str, "UnresolvedAssetJobDefinition"]:
    """One asset job per dataset: that dataset's chain (its group without the partitioned embedding shards)
    with the checks.  ``text_embeddings`` merges whatever shards are fresh and embeds the rest, so the job
    runs alone; embedding in parallel is the ``embed_<dataset>`` backfill before it."""
    from assets import shard_asset_key

    executor = executor_from_env()
    return {
        ds: dg.define_asset_job(
            name=job_name(ds),
            selection=dg.AssetSelection.groups(ds) - dg.AssetSelection.assets(shard_asset_key(ds)),
            description=f"{ds}: raw data -> interactions (Parquet) -> text embeddings -> Parquet graph -> training "
                        f"-> test evaluation -> published router (MLflow gmtrouter-{ds}).",
            tags={"gmtrouter/dataset": ds},
            executor_def=executor,
        )
        for ds in DATASETS
    }


def build_embed_jobs() -> dict[str, "UnresolvedAssetJobDefinition"]:
    """``embed_<dataset>``: the 16 embedding shards of one dataset, one partition per run.

    Launch all partitions at once (``dagster job backfill -j embed_<dataset> --all ...`` or a backfill in the
    UI): each partition is its own run, so shards embed in parallel processes (the run launcher's, or the
    Celery / Kubernetes executors' workers); then ``train_<dataset>`` merges them."""
    from assets import shard_asset_key

    executor = executor_from_env()
    return {
        ds: dg.define_asset_job(
            name=embed_job_name(ds),
            selection=dg.AssetSelection.assets(shard_asset_key(ds)),
            description=f"{ds}: embed the distinct texts of the interactions table, one shard per partition "
                        f"(first hex digit of the text hash); train_{ds} merges the shards.",
            tags={"gmtrouter/dataset": ds},
            executor_def=executor,
        )
        for ds in DATASETS
    }
