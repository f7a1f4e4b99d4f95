"""Run a pipeline job with a project-local Dagster instance, then say where to look.

    python -m pipelines.run_job train_demo
    python -m pipelines.run_job train_mt_bench -c configs/pipeline/mt_bench_local.yaml

``DAGSTER_HOME`` defaults to ``<repo>/.dagster_home`` (created with an empty
``dagster.yaml``), so the run shows up in ``dagster-webserver -w
workspace.yaml`` / ``dagster dev`` started with the same ``DAGSTER_HOME``.
Equivalent to ``DAGSTER_HOME=$PWD/.dagster_home dagster job execute -m
pipelines.definitions -j JOB [-c FILE]`` but with the in-process executor,
a summary at the end and exit status 1 when the run fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["REPO", "ensure_dagster_home", "load_run_config", "main"]

REPO = Path(__file__).resolve().parents[1]


def ensure_dagster_home() -> Path:
    """``$DAGSTER_HOME`` (default ``<repo>/.dagster_home``) with a ``dagster.yaml`` (empty if new)."""
    home = Path(os.environ.get("DAGSTER_HOME") or REPO / ".dagster_home").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text("", encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def load_run_config(paths: list[str]) -> dict[str, Any]:
    """Merge YAML run config files (earlier files win, as with ``dagster job execute -c``)."""
    import yaml

    merged: dict[str, Any] = {}
    for p in reversed(paths):
        doc = yaml.safe_load(Path(p).read_text(encoding="utf-8")) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"{p}: a run config must be a mapping")
        merged = _deep_merge(merged, doc)
    return merged


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.run_job", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="train_demo, train_mt_bench, train_chatbot_arena, train_gsm8k or train_mmlu")
    parser.add_argument("-c", "--config", action="append", default=[], help="run config YAML (repeatable)")
    args = parser.parse_args(argv)
    home = ensure_dagster_home()

    import dagster as dg

    from pipelines.definitions import JOBS, defs

    names = sorted(j.name for j in JOBS.values())
    if args.job not in names:
        parser.error(f"unknown job {args.job!r}; expected one of {names}")
    run_config = load_run_config(args.config)
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(args.job).execute_in_process(run_config=run_config, instance=instance,
                                                                   raise_on_error=False)
        _summary(result, home)
    return 0 if result.success else 1


def _summary(result: Any, dagster_home: Path) -> None:
    from pipelines.resources import MLflowResource, PathsResource

    print(f"\nrun {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    for ev in result.get_asset_materialization_events():
        mat = ev.materialization
        key = mat.asset_key.to_user_string()
        md = mat.metadata
        if key.endswith("test_evaluation") and "summary" in md:
            print(f"\n{key}:\n{md['summary'].value}")
        if key.endswith("published_router"):
            print(f"\n{key}: {md['registered_model'].value} v{md['version'].value}, promoted={md['promoted'].value}, "
                  f"champion={md['champion_uri'].value}, local copy={md['local_router'].value}")
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE":
            print(f"\nFAILED {ev.step_key}: {ev.message}", file=sys.stderr)
            err = getattr(ev.event_specific_data, "error", None)
            if err is not None:
                print(err.message.strip(), file=sys.stderr)
    print("\nwhere to look:")
    print(f"  data:    {PathsResource().root()}")
    print(f"  Dagster: DAGSTER_HOME={dagster_home} dagster-webserver -w workspace.yaml -h 127.0.0.1 -p 3000")
    print(f"  MLflow:  mlflow ui --backend-store-uri {MLflowResource().resolved_tracking_uri()} -p 5000")


if __name__ == "__main__":
    sys.exit(main())
