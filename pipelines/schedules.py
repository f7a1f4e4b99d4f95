"""Weekly retraining schedules, one per dataset, STOPPED by default (turn on in the UI)."""

from __future__ import annotations

from collections.abc import Mapping

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:  # the type define_asset_job returns
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

__all__ = ["schedule_name", "build_schedules"]


def schedule_name(dataset: str) -> str:
    """``weekly_retrain_<dataset>``."""
    return f"weekly_retrain_{dataset}"


def build_schedules(jobs: Mapping[str, "UnresolvedAssetJobDefinition"]) -> list[dg.ScheduleDefinition]:
    """Sundays, one hour apart per dataset (02:00 UTC onwards), default status STOPPED."""
    return [
        dg.ScheduleDefinition(
            name=schedule_name(ds),
            job=job,
            cron_schedule=f"0 {(2 + i) % 24} * * 0",
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.STOPPED,
            description=f"Retrain {ds} weekly (off by default).",
            tags={"gmtrouter/trigger": "schedule"},
        )
        for i, (ds, job) in enumerate(jobs.items())
    ]
