"""Weekly retraining schedules, one per dataset, STOPPED by default (turn on in the UI).

The cron of a dataset's schedule is ``$GMTROUTER_<DATASET>_RETRAIN_CRON``, else
``$GMTROUTER_RETRAIN_CRON``, else Sundays from 02:00 UTC, one hour apart per
dataset; the runs take their run config from ``$GMTROUTER_TRIGGERED_RUN_CONFIG``
(``pipelines.triggers``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:  # the type define_asset_job returns
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from .triggers import triggered_run_config

__all__ = ["ENV_RETRAIN_CRON", "schedule_name", "schedule_cron", "build_schedules"]

ENV_RETRAIN_CRON = "GMTROUTER_RETRAIN_CRON"


def schedule_name(dataset: str) -> str:
    """``weekly_retrain_<dataset>``."""
    return f"weekly_retrain_{dataset}"


def schedule_cron(dataset: str, index: int) -> str:
    """The cron of ``dataset``'s schedule (environment overrides, else weekly; see the module docs)."""
    for key in (f"GMTROUTER_{dataset.upper()}_RETRAIN_CRON", ENV_RETRAIN_CRON):
        value = os.environ.get(key, "").strip()
        if value:
            try:
                from dagster._utils.schedules import is_valid_cron_string
            except ImportError:  # private helper moved: ScheduleDefinition still validates it
                return value
            if not is_valid_cron_string(value):
                raise ValueError(f"{key}={value!r}: not a valid cron schedule (5 fields, e.g. '0 2 * * 0')")
            return value
    return f"0 {(2 + index) % 24} * * 0"


def _run_config(context: dg.ScheduleEvaluationContext) -> dict:
    return triggered_run_config()


def build_schedules(jobs: Mapping[str, "UnresolvedAssetJobDefinition"]) -> list[dg.ScheduleDefinition]:
    """Sundays, one hour apart per dataset (02:00 UTC onwards) unless overridden, default status STOPPED."""
    return [
        dg.ScheduleDefinition(
            name=schedule_name(ds),
            job=job,
            cron_schedule=schedule_cron(ds, i),
            run_config_fn=_run_config,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.STOPPED,
            description=f"Retrain {ds} weekly (off by default).",
            tags={"gmtrouter/trigger": "schedule"},
        )
        for i, (ds, job) in enumerate(jobs.items())
    ]
