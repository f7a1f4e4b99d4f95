"""Feedback sensors: retrain a dataset when enough new feedback has arrived.

The router appends every rating to the dataset's feedback log
(``gmt_model.serving.feedback``: a SQLite file or a PostgreSQL URL; ``assets.resources.feedback_log_path``).
Each evaluation counts the records after the sensor's cursor; at
``min_new_records`` or more (``$GMTROUTER_RETRAIN_MIN_FEEDBACK``, default 50)
it requests one ``train_<dataset>`` run and moves the cursor to the log's
largest id.  The JSONL step of that run merges the log's comparisons into
the training data.  Evaluations run every ``$GMTROUTER_SENSOR_INTERVAL``
seconds (default 60) under the daemon; the requested runs take their run
config from ``$GMTROUTER_TRIGGERED_RUN_CONFIG`` (``pipelines.triggers``).
"""


import os
from collections.abc import Mapping

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:  # the type define_asset_job returns
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.resources import PathsResource
from gmt_model.serving.feedback import open_feedback_store, redact_url, store_exists

from .triggers import triggered_run_config

__all__ = ["ENV_MIN_FEEDBACK", "ENV_SENSOR_INTERVAL", "DEFAULT_MIN_FEEDBACK", "DEFAULT_SENSOR_INTERVAL",
           "sensor_name", "sensor_interval", "build_feedback_sensor", "build_sensors"]

ENV_MIN_FEEDBACK = "GMTROUTER_RETRAIN_MIN_FEEDBACK"
ENV_SENSOR_INTERVAL = "GMTROUTER_SENSOR_INTERVAL"
DEFAULT_MIN_FEEDBACK = 50
DEFAULT_SENSOR_INTERVAL = 60


def sensor_interval() -> int:
    """Seconds between sensor evaluations: ``$GMTROUTER_SENSOR_INTERVAL`` (default 60, at least 1)."""
    raw = os.environ.get(ENV_SENSOR_INTERVAL, "").strip() or str(DEFAULT_SENSOR_INTERVAL)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_SENSOR_INTERVAL}={raw!r}: expected a whole number of seconds") from None
    if value < 1:
        raise ValueError(f"{ENV_SENSOR_INTERVAL}={value}: expected at least 1 second")
    return value


def sensor_name(dataset: str) -> str:
    """``feedback_retrain_<dataset>``."""
    return f"feedback_retrain_{dataset}"


def _threshold(explicit: int | None) -> int:
    if explicit is not None:
        value = explicit
    else:
        raw = os.environ.get(ENV_MIN_FEEDBACK, str(DEFAULT_MIN_FEEDBACK))
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{ENV_MIN_FEEDBACK}={raw!r}: expected a positive integer") from None
    if value < 1:
        raise ValueError(f"min_new_records must be >= 1, got {value}")
    return value


def _cursor(text: str | None) -> int:
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"feedback sensor cursor {text!r} is not a feedback id; reset the sensor's cursor") from None
    if value < 0:
        raise ValueError(f"feedback sensor cursor {value} is negative; reset the sensor's cursor")
    return value


def build_feedback_sensor(dataset: str, job: "UnresolvedAssetJobDefinition", *, min_new_records: int | None = None,
                          minimum_interval_seconds: int | None = None,
                          default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
                          ) -> dg.SensorDefinition:
    """The feedback sensor of ``dataset`` targeting ``job``."""

    interval = sensor_interval() if minimum_interval_seconds is None else minimum_interval_seconds

    @dg.sensor(name=sensor_name(dataset), job=job, minimum_interval_seconds=interval,
               default_status=default_status,
               description=f"Requests {job.name} when the {dataset} feedback log has enough new records.")
    def _feedback_sensor(context: dg.SensorEvaluationContext, paths: PathsResource):
        path = paths.feedback_log(dataset)
        threshold = _threshold(min_new_records)
        since = _cursor(context.cursor)
        if not store_exists(path):
            return dg.SkipReason(f"no feedback log at {path} yet")
        path = redact_url(str(path))  # for the messages
        with open_feedback_store(paths.feedback_log(dataset)) as log:
            new = log.count(since)
            max_id = log.max_id()
        if new < threshold:
            return dg.SkipReason(f"{new} new feedback record(s) after id {since} in {path}; "
                                 f"retraining needs {threshold}")
        context.log.info(f"{dataset}: {new} new feedback records (ids {since + 1}..{max_id}); requesting {job.name}")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"{dataset}-feedback-{max_id}", run_config=triggered_run_config(),
                                        tags={"gmtrouter/trigger": "feedback",
                                              "gmtrouter/feedback_since_id": str(since),
                                              "gmtrouter/feedback_max_id": str(max_id),
                                              "gmtrouter/feedback_new_records": str(new)})],
            cursor=str(max_id),
        )

    return _feedback_sensor


def build_sensors(jobs: Mapping[str, "UnresolvedAssetJobDefinition"]) -> list[dg.SensorDefinition]:
    """One feedback sensor per dataset."""
    return [build_feedback_sensor(ds, job) for ds, job in jobs.items()]
