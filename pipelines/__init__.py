"""Dagster wiring of the GMTRouter pipeline.

``pipelines.definitions`` holds the one ``Definitions`` object (jobs
``train_<dataset>``, weekly schedules, feedback sensors, resources);
``python -m pipelines.run_job JOB``
runs a job with a project-local ``DAGSTER_HOME``.  The assets and their resources
(``assets.resources``) are in the top-level ``assets`` package, which never
imports this one.  Importing this package imports nothing
else (no Dagster definitions are built until ``pipelines.definitions`` is
imported).
"""

__all__: list[str] = []
