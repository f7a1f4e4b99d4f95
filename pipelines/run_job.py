"""Run a pipeline job with a project-local Dagster instance, then say where to look.

    python -m pipelines.run_job train_demo
    python -m pipelines.run_job train_mt_bench -c configs/pipeline/mt_bench_local.yaml
    python -m pipelines.run_job embed_mt_bench --processes 4   # the 16 embedding shards, 4 processes at a time
    python -m pipelines.run_job train_demo --select demo/trained_model   # one step, on what is upstream already

``DAGSTER_HOME`` defaults to ``<repo>/.dagster_home`` (created with
``deploy/dagster.local.yaml`` as its ``dagster.yaml``), so the run shows up in
``dagster-webserver -w workspace.yaml`` / ``dagster dev`` started with the same
``DAGSTER_HOME``.  Equivalent to ``dagster job execute -j JOB [-c FILE]`` in the
activated venv, plus a summary at the end (the test table, the published
version, the underlying error of each failed step) and exit status 1 when the
run fails, 2 when it cannot start (e.g. Dagster's storage is unreachable).
The console shows INFO and above; ``--log-level DEBUG`` shows every event.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from gmt_model.atomic import write_text_atomic

__all__ = ["REPO", "LOCAL_INSTANCE_YAML", "ensure_dagster_home", "load_run_config", "error_chain", "main"]

#: the repository (pipelines/ is a folder of it, never installed; importing assets here would import Dagster
#: before DAGSTER_HOME is set)
REPO = Path(__file__).resolve().parents[1]
#: dagster.yaml of a new local instance (telemetry off, INFO console)
LOCAL_INSTANCE_YAML = REPO / "deploy" / "dagster.local.yaml"
_FALLBACK_INSTANCE_YAML = "telemetry:\n  enabled: false\npython_logs:\n  python_log_level: INFO\n"


def ensure_dagster_home() -> Path:
    """``$DAGSTER_HOME`` (default ``<repo>/.dagster_home``) with a ``dagster.yaml`` (the local template if new)."""
    home = Path(os.environ.get("DAGSTER_HOME") or REPO / ".dagster_home").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists() or cfg.stat().st_size == 0:
        text = (LOCAL_INSTANCE_YAML.read_text(encoding="utf-8") if LOCAL_INSTANCE_YAML.is_file()
                else _FALLBACK_INSTANCE_YAML)
        write_text_atomic(cfg, text)
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
    parser.add_argument("job", help="train_<dataset> or embed_<dataset> (dataset: demo, mt_bench, chatbot_arena, "
                                    "gsm8k, mmlu)")
    parser.add_argument("--processes", type=int, default=None,
                        help="embed_<dataset>: partitions run at once, each its own process and Dagster run "
                             "(default: min(16, CPU count))")
    parser.add_argument("--partitions", default=None,
                        help="embed_<dataset>: comma-separated shard keys (default: all 16, 0..f)")
    parser.add_argument("--select", default=None, metavar="KEYS",
                        help="train_<dataset>: run only these assets of the job (and their checks), comma-separated "
                             "asset keys as the UI writes them, e.g. demo/trained_model; what they read must be "
                             "materialized already (default: the whole job)")
    parser.add_argument("-c", "--config", action="append", default=[], help="run config YAML (repeatable)")
    parser.add_argument("--log-level", default=os.environ.get("GMTROUTER_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console threshold (default INFO, or $GMTROUTER_LOG_LEVEL); the run's event log "
                             "keeps every event either way")
    args = parser.parse_args(argv)
    home = ensure_dagster_home()

    import dagster as dg

    from pipelines.definitions import EMBED_JOBS, JOBS

    names = sorted(j.name for j in [*JOBS.values(), *EMBED_JOBS.values()])
    if args.job not in names:
        parser.error(f"unknown job {args.job!r}; expected one of {names}")
    try:
        run_config = load_run_config(args.config)
    except (OSError, ValueError) as exc:  # yaml.YAMLError is a ValueError
        print(f"error: run config: {exc}", file=sys.stderr)
        return 2
    run_config.setdefault("loggers", {"console": {"config": {"log_level": args.log_level}}})
    try:
        instance = dg.DagsterInstance.get()
    except Exception as exc:  # noqa: BLE001 - e.g. dagster-postgres storage that is down: one line, no traceback
        print(f"error: cannot open the Dagster instance (DAGSTER_HOME={home}): {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.select is not None and args.job.startswith("embed_"):
        instance.dispose()
        parser.error("--select is for train_<dataset> jobs (embed_<dataset> selects with --partitions)")
    try:
        selection = _selection(args.job, args.select)
    except ValueError as exc:
        instance.dispose()
        print(f"error: --select: {exc}", file=sys.stderr)
        return 2
    if args.job.startswith("embed_"):
        instance.dispose()
        return _run_partitions(args.job, run_config, args.partitions, args.processes, home)
    with instance:
        try:
            result = _execute(args.job, run_config, instance, tags=_tags(args.config), asset_selection=selection)
        except Exception as exc:  # noqa: BLE001 - storage lost during the run, invalid run config, ...
            print(f"error: {args.job} could not run: {_one_line(exc)}", file=sys.stderr)
            return 2
        _summary(result, home)
    return 0 if result.success else 1


def _tags(config_files: list[str]) -> dict[str, str]:
    """Run tags naming the run config files (errors about a setting name the file that set it)."""
    from assets.data_assets import RUN_CONFIG_TAG

    return {RUN_CONFIG_TAG: ", ".join(str(Path(p).resolve()) for p in config_files)} if config_files else {}


def _selection(job: str, select: str | None) -> list[Any] | None:
    """The asset keys ``--select`` names (``a/b,c/d``), each one of ``job``'s; None: the whole job."""
    if select is None:
        return None
    import dagster as dg

    from pipelines.definitions import defs

    in_job = {k.to_user_string(): k for k in defs.resolve_job_def(job).asset_layer.executable_asset_keys}
    names = [n.strip() for n in select.split(",") if n.strip()]
    if not names:
        raise ValueError("no asset key given")
    bad = [n for n in names if n not in in_job]
    if bad:
        raise ValueError(f"{job} has no asset {', '.join(bad)}; its assets: {', '.join(sorted(in_job))}")
    return [dg.AssetKey.from_user_string(n) for n in names]


def job_by_name(name: str) -> Any:
    """The job ``name`` of the project's definitions (the reconstructor of :func:`_execute`)."""
    from pipelines.definitions import defs

    return defs.resolve_job_def(name)


def _execute(job: str, run_config: dict[str, Any], instance: Any, partition_key: str | None = None,
             tags: dict[str, str] | None = None, asset_selection: list[Any] | None = None) -> Any:
    """Run ``job`` (only ``asset_selection`` of it, when given): in this process, or, when ``$GMTROUTER_EXECUTOR`` names another executor (celery,
    multiprocess, k8s), through that executor (a reconstructable job: its steps load the definitions
    themselves, e.g. on the Celery workers)."""
    import dagster as dg

    from pipelines.jobs import ENV_EXECUTOR

    if (os.environ.get(ENV_EXECUTOR, "").strip() or "in_process") == "in_process":
        return job_by_name(job).execute_in_process(run_config=run_config, instance=instance,
                                                   partition_key=partition_key, raise_on_error=False,
                                                   tags=tags or None, asset_selection=asset_selection)
    recon = dg.build_reconstructable_job("pipelines.run_job", "job_by_name", reconstructable_args=(job,))
    tags = {**(tags or {}), **({"dagster/partition": partition_key} if partition_key is not None else {})}
    return dg.execute_job(recon, instance=instance, run_config=run_config, tags=tags or None, raise_on_error=False,
                          asset_selection=asset_selection)


def _run_partition(job: str, run_config: dict[str, Any], key: str) -> tuple[str, str, bool, list[str]]:
    """One partition of a partitioned job, in this (worker) process: (key, run id, success, errors)."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        result = _execute(job, run_config, instance, key)
    errors = []
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE" and _error_of(ev) is not None:
            errors.append("; ".join(error_chain(_error_of(ev))[:2]))
    return key, result.run_id, result.success, errors


def _run_partitions(job: str, run_config: dict[str, Any], partitions: str | None, processes: int | None,
                    home: Path) -> int:
    """Every partition of ``job`` as its own Dagster run, up to ``processes`` worker processes at once."""
    import concurrent.futures
    import multiprocessing

    from pipelines.definitions import defs

    keys_all = defs.resolve_job_def(job).partitions_def.get_partition_keys()
    keys = keys_all if not partitions else [k.strip() for k in partitions.split(",") if k.strip()]
    bad = [k for k in keys if k not in keys_all]
    if bad:
        print(f"error: {job}: unknown partition(s) {bad}; expected some of {keys_all}", file=sys.stderr)
        return 2
    workers = max(1, min(len(keys), processes or min(16, os.cpu_count() or 1)))
    print(f"{job}: {len(keys)} partition(s), {workers} process(es) at a time (DAGSTER_HOME={home})")
    failed = 0
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked Dagster/torch state
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_run_partition, job, run_config, k) for k in keys]
        for fut in concurrent.futures.as_completed(futures):
            key, run_id, ok, errors = fut.result()
            print(f"  partition {key}: run {run_id} {'SUCCESS' if ok else 'FAILURE'}")
            for e in errors:
                print(f"FAILED {job}[{key}]: {e}", file=sys.stderr)
            failed += not ok
    print(f"{job}: {len(keys) - failed} of {len(keys)} partition(s) succeeded")
    return 0 if failed == 0 else 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:600]}"


def error_chain(err: Any) -> list[str]:
    """``Class: message`` of a step's error and of each error it was raised from, Dagster's wrappers left out.

    ``err`` is Dagster's ``SerializableErrorInfo`` (``cls_name``, ``message``, ``cause``, ``context``).
    """
    out: list[str] = []
    seen = 0
    while err is not None and seen < 10:
        seen += 1
        cls = getattr(err, "cls_name", None) or "Error"
        msg = " ".join(str(getattr(err, "message", "") or "").split())
        msg = re.sub(rf"^[\w.]*\b{re.escape(cls)}: ", "", msg)  # "mlflow.exceptions.MlflowException: ..."
        if not cls.startswith("Dagster"):
            out.append(f"{cls}: {msg}"[:1000])
        err = getattr(err, "cause", None) or getattr(err, "context", None)
    return out


def _error_of(ev: Any) -> Any:
    data = ev.event_specific_data
    return getattr(data, "error", None) or getattr(getattr(data, "engine_event_data", None), "error", None)


def _print_failure(what: str, ev: Any) -> None:
    err = _error_of(ev)
    chain = error_chain(err) if err is not None else []
    print(f"\nFAILED {what}: {chain[0] if chain else ev.message}", file=sys.stderr)
    for line in chain[1:]:
        print(f"  caused by {line}", file=sys.stderr)
    if not chain and err is not None:
        print(err.message.strip(), file=sys.stderr)


def _summary(result: Any, dagster_home: Path) -> None:
    from assets.resources import MLflowResource, PathsResource

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
            if "result" in md:  # the gate's decision: "promoted: ..." or "not promoted: <reason>; ..."
                print(f"  {md['result'].value}")
    step_failed = False
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE":
            step_failed = True
            _print_failure(ev.step_key, ev)
    if not result.success and not step_failed:
        # a failure before any step ran (resources are set up for the whole run in-process: e.g. the
        # MLflow server is down), reported on the run's failure event or an engine event
        for ev in result.all_events:
            if ev.event_type_value in ("RUN_FAILURE", "PIPELINE_FAILURE", "ENGINE_EVENT") and _error_of(ev):
                _print_failure(result.job_def.name, ev)
                break
    print("\nwhere to look:")
    print(f"  data:    {PathsResource().root()}")
    print(f"  Dagster: DAGSTER_HOME={dagster_home} {_venv_command('dagster-webserver')} -w workspace.yaml "
          "-h 127.0.0.1 -p 3000")
    print(f"  MLflow:  {_venv_command('mlflow')} ui --backend-store-uri {MLflowResource().resolved_tracking_uri()} "
          "-p 5000")


def _venv_command(name: str) -> str:
    """``name`` as a fresh shell can run it: the venv's copy (``.venv/bin/name`` from the repository
    root), else the bare name."""
    exe = Path(sys.prefix) / "bin" / name
    if not exe.exists():
        return name
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


if __name__ == "__main__":
    sys.exit(main())
