"""Jobs ``train_<dataset>``: one dataset's whole chain, raw data to published router.

The executor is chosen by ``GMTROUTER_EXECUTOR`` when the definitions load:
``in_process`` (default: the chain is sequential, and one process avoids
re-importing torch for every step), ``multiprocess`` (one process per step),
``celery`` (``dagster-celery``) or ``k8s`` (``dagster-k8s``: one Kubernetes job
per step).  The last two need their packages installed; see docs/pipeline.md.
"""

from __future__ import annotations

import os

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:  # the type define_asset_job returns
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.storage import DATASETS

__all__ = ["ENV_EXECUTOR", "EXECUTORS", "job_name", "executor_from_env", "build_jobs"]

ENV_EXECUTOR = "GMTROUTER_EXECUTOR"
EXECUTORS = ("in_process", "multiprocess", "celery", "k8s")


def job_name(dataset: str) -> str:
    """``train_<dataset>``."""
    return f"train_{dataset}"


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
        return celery_executor
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImportError(f"{ENV_EXECUTOR}=k8s needs the dagster-k8s package") from exc
        return k8s_job_executor
    raise ValueError(f"{ENV_EXECUTOR}={name!r}: expected one of {EXECUTORS}")


def build_jobs() -> dict[str, "UnresolvedAssetJobDefinition"]:
    """One asset job per dataset, selecting that dataset's group (assets and their checks)."""
    executor = executor_from_env()
    return {
        ds: dg.define_asset_job(
            name=job_name(ds),
            selection=dg.AssetSelection.groups(ds),
            description=f"{ds}: raw data -> GMTRouter JSONL -> Parquet graph -> training -> test evaluation "
                        f"-> published router (MLflow gmtrouter-{ds}).",
            tags={"gmtrouter/dataset": ds},
            executor_def=executor,
        )
        for ds in DATASETS
    }
