"""The one Dagster ``Definitions`` of the project (workspace.yaml and pyproject point here).

Assets and checks of every dataset, jobs ``train_<dataset>``, weekly
schedules (stopped by default), feedback sensors and the resources
``paths``, ``encoder`` and ``mlflow`` (defaults: project-local data root,
bundled MiniLM encoder, MLflow on SQLite; see ``assets.resources``).
"""

from __future__ import annotations

import dagster as dg

from assets import all_assets, all_checks
from assets.resources import EncoderResource, MLflowResource, PathsResource

from .jobs import build_embed_jobs, build_jobs
from .schedules import build_schedules
from .sensors import build_sensors

__all__ = ["defs", "JOBS", "EMBED_JOBS"]

JOBS = build_jobs()
EMBED_JOBS = build_embed_jobs()

defs = dg.Definitions(
    assets=all_assets(),
    asset_checks=all_checks(),
    jobs=[*JOBS.values(), *EMBED_JOBS.values()],
    schedules=build_schedules(JOBS),
    sensors=build_sensors(JOBS),
    resources={
        "paths": PathsResource(),
        "encoder": EncoderResource(),
        "mlflow": MLflowResource(),
    },
)
