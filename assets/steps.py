"""The work behind each asset and asset check, as plain functions.

Each ``materialize_*`` function reads its upstream manifest from the data
store, builds its output in a staging folder, commits it atomically and
returns its manifest (a JSON-able dict).  The Dagster assets in
``assets.factory`` are thin wrappers that turn these dicts into
``MaterializeResult`` metadata.  MLflow logging goes through a *tracker*
(``assets.resources.MLflowResource``: ``log_params``, ``log_metrics``,
``log_metric_rows``, ``log_artifact(s)``, ``set_tags``, ``client``,
``fluent``).

No Dagster import here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata as importlib_metadata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gmt_model.atomic import copy_file_atomic
from gmt_model.method.checkpoint import CheckpointError, file_sha256, load_checkpoint, read_config
from gmt_model.data.datasets import load_source_config, prepare_raw
from gmt_model.method.schema import SPLIT_TEST, SPLITS

from .data_steps import (check_embedding_width, check_interactions_valid, materialize_embedding_shard,
                         materialize_graph, materialize_interactions, materialize_text_embeddings)
from .plots import plot_training_curves
from .storage import REPO_ROOT, DataStore, copy_tree, write_json_atomic

__all__ = [
    "GMTROUTER",
    "USER_BLIND",
    "GLOBAL_BT",
    "CHALLENGER",
    "CHAMPION",
    "default_train_config",
    "materialize_raw",
    "materialize_interactions",
    "materialize_embedding_shard",
    "materialize_text_embeddings",
    "materialize_graph",
    "materialize_model",
    "materialize_evaluation",
    "publish_router",
    "check_interactions_valid",
    "check_embedding_width",
    "check_graph_integrity",
    "check_finite_weights",
    "environment_info",
    "feedback_checkpoint_meta",
    "scores_table",
]

log = logging.getLogger(__name__)

GMTROUTER = "gmtrouter"
USER_BLIND = "user_blind"
GLOBAL_BT = "global_bt"
CHALLENGER = "challenger"
CHAMPION = "champion"
_METRIC_EVERY = 25  # epochs between MLflow flushes of buffered per-epoch metrics


def environment_info() -> dict[str, Any]:
    """Python, platform, CPU/GPU and package versions, the git commit if known."""
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_available": bool(torch.cuda.is_available()),
        "torch_num_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    for dist in ("gmtrouter", "dagster", "mlflow", "torch-geometric", "numpy", "pandas", "pyarrow",
                 "sentence-transformers", "transformers"):
        try:
            info[f"pkg.{dist}"] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            info[f"pkg.{dist}"] = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5,
                             check=False)
        info["git_commit"] = out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        info["git_commit"] = None
    return info


# --------------------------------------------------------------------------
# raw data
# --------------------------------------------------------------------------
def materialize_raw(dataset: str, store: DataStore, *, overrides: Mapping[str, Any] | None = None,
                    sources_file: str | os.PathLike[str] | None = None, run_id: str = "") -> dict[str, Any]:
    """Fetch / generate ``dataset``'s raw data; commit ``raw/<dataset>``.

    Downloads land in the persistent ``downloads/<dataset>`` folder (unless
    the source sets ``download_dir``), so a partial download resumes and a
    verified one is reused (with ``sha256`` set); archives are
    extracted into the staging folder, single downloaded files are copied
    into it, local folders are read in place.  Any error (missing source,
    checksum mismatch, truncated or unsafe archive) leaves the previous
    ``raw/<dataset>`` untouched.
    """
    cfg_file = Path(sources_file) if sources_file else REPO_ROOT / "configs" / "datasets.yaml"
    source = load_source_config(dataset, cfg_file, dict(overrides or {}))
    if source.kind != "demo" and not source.download_dir:
        source = dataclasses.replace(source, download_dir=str(store.downloads(dataset)))
    dl_dir = Path(source.download_dir) if source.download_dir else None
    before = _file_states(dl_dir)
    try:
        return _materialize_raw(dataset, store, source, run_id)
    except BaseException:
        _remove_refused_downloads(dl_dir, before)
        raise


def _file_states(folder: Path | None) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime) of the files directly in ``folder``."""
    if folder is None or not folder.is_dir():
        return {}
    out = {}
    for p in folder.iterdir():
        if p.is_file():
            st = p.stat()
            out[p.name] = (st.st_size, st.st_mtime_ns)
    return out


def _remove_refused_downloads(folder: Path | None, before: Mapping[str, tuple[int, int]]) -> None:
    """After a failed fetch/extract, delete the files this attempt added or rewrote in the download folder
    (a refused archive must not be reused, nor pile up), keeping partial transfers (``.part``) to resume."""
    for name, state in _file_states(folder).items():
        if before.get(name) == state or name.endswith((".part", ".part.json")):
            continue
        try:
            (folder / name).unlink()  # type: ignore[operator]
            log.info("removed the refused download %s", folder / name)  # type: ignore[operator]
        except OSError:
            pass


def _materialize_raw(dataset: str, store: DataStore, source: Any, run_id: str) -> dict[str, Any]:
    with store.staging("raw", dataset) as tmp:
        res = prepare_raw(dataset, source, tmp)
        path = Path(res.path)
        if path.is_file() and not _is_inside(path, tmp):  # a downloaded single file: keep this run's copy
            files = tmp / "files"
            files.mkdir()
            copied = files / path.name
            copy_file_atomic(path, copied)
            path = copied
        manifest = {
            "kind": res.kind,
            "path": store.relative(tmp, path),
            "read_in_place": not _is_inside(path, tmp),
            "source": res.source,
            "downloaded": None if res.downloaded is None else str(res.downloaded),
            "sha256": res.sha256,
            "n_bytes": res.n_bytes,
            "info": res.info,
            "source_config": source.to_dict(),
            "dagster_run_id": run_id,
            "files": _count_files(path),
        }
        store.commit(tmp, "raw", dataset, manifest)
    return manifest


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _count_files(path: Path) -> dict[str, int]:
    if path.is_file():
        return {"files": 1, "bytes": path.stat().st_size}
    n = size = 0
    for p in path.rglob("*"):
        if p.is_file():
            n += 1
            size += p.stat().st_size
    return {"files": n, "bytes": size}


# --------------------------------------------------------------------------
# interactions, text embeddings, graph: assets.data_steps (re-exported here)
# --------------------------------------------------------------------------
def check_graph_integrity(dataset: str, store: DataStore) -> tuple[bool, dict[str, Any]]:
    """Read the committed graph back and check it (indices in range, message receivers, pairs per split)."""
    from gmt_model.method import schema as S
    from gmt_model.method.graph import GraphIntegrityError, read_graph

    folder = store.area("graph", dataset)
    problems: list[str] = []
    meta: dict[str, Any] = {}
    try:
        g = read_graph(folder)  # runs GraphTables.check() on the stored relations
    except (GraphIntegrityError, FileNotFoundError, OSError, KeyError, ValueError) as exc:
        return False, {"problems": [f"{folder}: {exc}"]}
    for name, rels in S.RELATION_SETS.items():  # both relation sets a model may train on
        g.relations = rels
        problems += [f"relations {name!r}: {p}" for p in g.check()]
    for s in SPLITS:
        n = int(g.pair_mask(s).sum())
        meta[f"pairs_{s}"] = n
        if n == 0:
            problems.append(f"split {s!r} has no comparison pairs")
    meta["problems"] = problems
    return not problems, meta


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------
def default_train_config(dataset: str, configs_dir: Path | None = None) -> Path:
    """``configs/model_config_train/<dataset>.yaml`` when present, else ``gmtrouter.yaml``."""
    base = (configs_dir or REPO_ROOT / "configs") / "model_config_train"
    own = base / f"{dataset}.yaml"
    return own if own.is_file() else base / "gmtrouter.yaml"


class _MetricBuffer:
    """Per-epoch metrics, flushed to MLflow every few epochs (step = epoch).

    Rows are kept by reference and read when flushed: training may complete an epoch's row (validation
    metrics) after it handed it over, so the newest row stays pending until the next flush or the end.
    """

    def __init__(self, tracker: Any, mlflow_run_id: str | None, prefix: str,
                 on_epoch: Callable[[int, Mapping[str, float]], None] | None) -> None:
        self.tracker, self.run_id, self.prefix, self.on_epoch = tracker, mlflow_run_id, prefix, on_epoch
        self.pending: list[tuple[int, Mapping[str, float]]] = []

    def __call__(self, epoch: int, row: Mapping[str, float]) -> None:
        self.pending.append((int(epoch), row))
        if self.on_epoch is not None:
            self.on_epoch(epoch, row)
        if epoch % _METRIC_EVERY == 0:
            self.flush(keep_last=True)

    def flush(self, keep_last: bool = False) -> None:
        done, self.pending = (self.pending[:-1], self.pending[-1:]) if keep_last else (self.pending, [])
        rows = [(f"{self.prefix}{k}", float(v), epoch) for epoch, row in done for k, v in row.items()
                if k != "epoch" and v is not None and not (isinstance(v, float) and math.isnan(v))]
        if self.tracker is not None and self.run_id and rows:
            self.tracker.log_metric_rows(self.run_id, rows)


def materialize_model(dataset: str, store: DataStore, *, config_path: str | os.PathLike[str] | None = None,
                      overrides: Mapping[str, Any] | None = None, train_user_blind: bool = True,
                      blind_epochs: int | None = None, resume: bool = True, run_key: str = "run",
                      tracker: Any = None, mlflow_run_id: str | None = None, log_checkpoints: bool = True,
                      on_epoch: Callable[[str, int, Mapping[str, float]], None] | None = None,
                      run_id: str = "") -> dict[str, Any]:
    """Train GMTRouter (and the user-blind ablation) on the committed graph; commit ``models/<dataset>``.

    The work folder ``training/<dataset>/<run_key>`` holds the periodic,
    resumable checkpoints; a re-execution of the same run resumes from it.
    It is removed once the result is committed.
    """
    from gmt_model.method.config import load_train_config
    from gmt_model.method.graph import read_graph
    from gmt_model.method.training import train

    cfg_path = Path(config_path) if config_path else default_train_config(dataset)
    ov = {"dataset_name": dataset, **dict(overrides or {})}
    tc = load_train_config(cfg_path, ov, relative_to=REPO_ROOT)
    g = read_graph(store.area("graph", dataset))
    ckpt_meta = feedback_checkpoint_meta(store.read_manifest("graph", dataset, asset="graph_parquet"))
    work = store.training_dir(dataset, run_key)
    env = environment_info()
    if tracker is not None and mlflow_run_id:
        tracker.log_params(mlflow_run_id, {k: v for k, v in tc.to_dict().items()
                                           if k not in ("training_set", "valid_set", "test_set", "save_model_path",
                                                        "load_model_path", "dataset_path", "checkpoint_root")},
                           prefix="train.")
        tracker.log_params(mlflow_run_id, {"config_file": str(cfg_path), "users": g.num_users, "llms": g.num_llms,
                                           "interactions": g.num_interactions, "pairs": int(g.pair_a.size),
                                           "encoder": g.encoder, "dim": g.dim}, prefix="data.")
        tracker.log_params(mlflow_run_id, env, prefix="env.")
        tracker.log_params(mlflow_run_id, _data_params(dataset, store), prefix="data.")

    def cb(name: str) -> Callable[[int, Mapping[str, float]], None] | None:
        return None if on_epoch is None else (lambda e, r: on_epoch(name, e, r))

    buf = _MetricBuffer(tracker, mlflow_run_id, "", cb(GMTROUTER))
    res = train(g, tc, work / GMTROUTER, resume=resume, callback=buf, meta=ckpt_meta)
    buf.flush()
    blind_res = None
    blind_tc = None
    if train_user_blind:
        bov = dict(ov, personalization=False)
        if blind_epochs is not None:
            bov["epochs"] = blind_epochs
        blind_tc = load_train_config(cfg_path, bov, relative_to=REPO_ROOT)
        bbuf = _MetricBuffer(tracker, mlflow_run_id, f"{USER_BLIND}.", cb(USER_BLIND))
        blind_res = train(g, blind_tc, work / USER_BLIND, resume=resume, callback=bbuf, meta=ckpt_meta)
        bbuf.flush()
    with store.staging("models", dataset) as tmp:
        copy_tree(res.best_dir, tmp / GMTROUTER)
        if blind_res is not None:
            copy_tree(blind_res.best_dir, tmp / USER_BLIND)
        histories = {GMTROUTER: res.history}
        if blind_res is not None:
            histories[USER_BLIND] = blind_res.history
        write_json_atomic(tmp / "history.json", histories)
        plot_training_curves(histories, tmp / "training_curves.png", title=f"GMTRouter on {dataset}")
        write_json_atomic(tmp / "environment.json", env)
        manifest = {
            "checkpoint": GMTROUTER,
            "blind_checkpoint": USER_BLIND if blind_res is not None else None,
            "curves": "training_curves.png",
            "history": "history.json",
            "config_file": str(cfg_path),
            "train_config": tc.to_dict(),
            "model_config": res.model_config,
            "objective": res.objective,
            "best_epoch": res.best_epoch,
            "best_metric": res.best_metric,
            "epochs_run": res.epochs_run,
            "resumed_from": res.resumed_from,
            "device": res.device,
            "wall_time_s": res.wall_time_s,
            "warnings": res.warnings,
            "feedback_through_id": ckpt_meta.get("feedback_through_id"),
            "checkpoint_sha256": file_sha256(res.best_dir / "config.json"),
            "blind": None if blind_res is None else {
                "best_epoch": blind_res.best_epoch, "best_metric": blind_res.best_metric,
                "epochs_run": blind_res.epochs_run, "wall_time_s": blind_res.wall_time_s,
                "epochs": blind_tc.epochs if blind_tc is not None else None},
            "mlflow_run_id": mlflow_run_id,
            "dagster_run_id": run_id,
        }
        if tracker is not None and mlflow_run_id:
            tracker.log_metrics(mlflow_run_id, {
                f"best_val_{res.objective}": _finite_or_none(res.best_metric),
                "best_epoch": res.best_epoch, "train_wall_time_s": res.wall_time_s, "epochs_run": res.epochs_run,
                **({} if blind_res is None else {
                    f"{USER_BLIND}.best_val_{blind_res.objective}": _finite_or_none(blind_res.best_metric),
                    f"{USER_BLIND}.train_wall_time_s": blind_res.wall_time_s})})
            tracker.set_tags(mlflow_run_id, {"device": res.device})
            tracker.log_artifact(mlflow_run_id, tmp / "training_curves.png", "plots")
            tracker.log_artifact(mlflow_run_id, tmp / "history.json", "training")
            tracker.log_artifact(mlflow_run_id, tmp / "environment.json", "environment")
            if log_checkpoints:
                tracker.log_artifacts(mlflow_run_id, tmp / GMTROUTER, f"checkpoints/{GMTROUTER}")
                if blind_res is not None:
                    tracker.log_artifacts(mlflow_run_id, tmp / USER_BLIND, f"checkpoints/{USER_BLIND}")
        store.commit(tmp, "models", dataset, manifest)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def feedback_checkpoint_meta(graph_manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint ``meta`` that tells the router which feedback-log rows the training data holds.

    ``feedback_through_id``: every log row with an id up to it was read when the training data was cut
    (the router replays only newer rows); ``feedback_unmerged_ids``: the rows up to it that are not in
    the training data (no comparison formed, unknown LLM, rating out of scale).  Empty when no feedback
    log was merged (the router then replays every row).
    """
    through = graph_manifest.get("feedback_through_id")
    if through is None:
        return {}
    return {"feedback_through_id": int(through),
            "feedback_unmerged_ids": [int(i) for i in graph_manifest.get("feedback_unmerged_ids") or []]}


def _data_params(dataset: str, store: DataStore) -> dict[str, Any]:
    """Where the training data came from (raw source, split settings, feedback merged)."""
    out: dict[str, Any] = {}
    raw_p, inter_p = store.manifest_path("raw", dataset), store.manifest_path("interactions", dataset)
    if raw_p.is_file():
        raw = store.read_manifest("raw", dataset)
        out.update({"source_kind": raw.get("kind"), "source": raw.get("source"), "source_sha256": raw.get("sha256")})
    if inter_p.is_file():
        j = store.read_manifest("interactions", dataset)
        out.update({"split_seed": j.get("split_seed"), "split_fractions": j.get("split_fractions"),
                    "thin_users": len(j.get("thin_users") or {}),
                    "feedback_rows_merged": (j.get("feedback") or {}).get("rows_merged"),
                    "feedback_through_id": j.get("feedback_through_id"),
                    **{f"{s}_groups": c.get("n_groups") for s, c in (j.get("splits") or {}).items()}})
    return out


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def check_finite_weights(dataset: str, store: DataStore) -> tuple[bool, dict[str, Any]]:
    """Every stored weight tensor of both checkpoints is finite and the checkpoints load (sha256 verified)."""
    import torch
    from safetensors.torch import load_file

    m = store.read_manifest("models", dataset, asset="trained_model")
    meta: dict[str, Any] = {}
    problems: list[str] = []
    for key in ("checkpoint", "blind_checkpoint"):
        if not m.get(key):
            continue
        d = store.resolve("models", dataset, m[key])
        try:
            load_checkpoint(d)  # verifies sizes, sha256, names and shapes; refuses non-finite weights
            tensors = load_file(str(d / "model.safetensors"))
        except (CheckpointError, OSError) as exc:
            problems.append(f"{d}: {exc}")
            continue
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        meta[f"{m[key]}_tensors"] = len(tensors)
        meta[f"{m[key]}_parameters"] = int(sum(v.numel() for v in tensors.values()))
        problems += [f"{d}: tensor {k} has non-finite values" for k in bad]
    meta["problems"] = problems
    return not problems, meta


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------
def _method_summary(r: Any) -> dict[str, Any]:
    return {"auc": r.auc, "auc_ci": list(r.auc_ci), "accuracy": r.accuracy, "accuracy_ci": list(r.accuracy_ci),
            "n_pairs": r.n_pairs, "top1": r.top1, "ovr_auc": r.ovr_auc}


def materialize_evaluation(dataset: str, store: DataStore, *, n_resamples: int = 1000, seed: int = 0,
                           cold_start: bool = True, knn_k: int = 20, device: str | None = None,
                           tracker: Any = None, mlflow_run_id: str | None = None,
                           run_id: str = "") -> dict[str, Any]:
    """Evaluate the trained model, the user-blind model and the baselines on the test split."""
    from gmt_model.evaluation.report import evaluate
    from gmt_model.method.graph import read_graph

    mm = store.read_manifest("models", dataset, asset="trained_model")
    g = read_graph(store.area("graph", dataset))
    ck = load_checkpoint(store.resolve("models", dataset, mm["checkpoint"]))
    blind = None
    if mm.get("blind_checkpoint"):
        blind = load_checkpoint(store.resolve("models", dataset, mm["blind_checkpoint"]))
    rep = evaluate(ck.model, g, SPLIT_TEST, blind_model=None if blind is None else blind.model, baselines=True,
                   cold_start=cold_start, n_resamples=n_resamples, seed=seed, device=device, knn_k=knn_k)
    markdown = rep.to_markdown()
    methods = {k: _method_summary(v) for k, v in rep.methods.items()}
    cold = {k: _method_summary(v) for k, v in rep.cold_start.items()}
    with store.staging("evaluation", dataset) as tmp:
        rep.to_json(tmp / "report.json")
        (tmp / "report.md").write_text(markdown, encoding="utf-8")
        manifest = {
            "report": "report.json",
            "markdown": "report.md",
            "split": SPLIT_TEST,
            "methods": methods,
            "cold_start": cold,
            "n_resamples": n_resamples,
            "checkpoint_sha256": mm.get("checkpoint_sha256"),
            "mlflow_run_id": mlflow_run_id,
            "dagster_run_id": run_id,
        }
        if tracker is not None and mlflow_run_id:
            rows: dict[str, float | None] = {}
            for prefix, table in (("test", methods), ("test_cold_start", cold)):
                for name, s in table.items():
                    for key in ("auc", "accuracy", "top1", "ovr_auc"):
                        rows[f"{prefix}.{name}.{key}"] = _finite_or_none(s[key])
                    rows[f"{prefix}.{name}.auc_ci_low"] = _finite_or_none(s["auc_ci"][0])
                    rows[f"{prefix}.{name}.auc_ci_high"] = _finite_or_none(s["auc_ci"][1])
                    rows[f"{prefix}.{name}.accuracy_ci_low"] = _finite_or_none(s["accuracy_ci"][0])
                    rows[f"{prefix}.{name}.accuracy_ci_high"] = _finite_or_none(s["accuracy_ci"][1])
                    rows[f"{prefix}.{name}.n_pairs"] = float(s["n_pairs"])
            tracker.log_metrics(mlflow_run_id, rows)
            tracker.log_artifact(mlflow_run_id, tmp / "report.json", "evaluation")
            tracker.log_artifact(mlflow_run_id, tmp / "report.md", "evaluation")
        store.commit(tmp, "evaluation", dataset, manifest)
    manifest["markdown_text"] = markdown
    return manifest


# --------------------------------------------------------------------------
# publishing
# --------------------------------------------------------------------------
def _champion_score(dataset: str, store: DataStore, tracker: Any, name: str, version: str, metric: str,
                    n_resamples: int) -> tuple[float, str]:
    """The current champion's score on this test split (re-evaluated), else its registry tag."""
    from gmt_model.evaluation.report import evaluate
    from gmt_model.method.graph import read_graph
    from gmt_model.serving.registry import RegistryError, download_checkpoint

    with tempfile.TemporaryDirectory(prefix=".champion-", dir=store.root) as tmp:
        try:
            ckdir = download_checkpoint(f"models:/{name}/{version}", tracker.resolved_tracking_uri(),
                                        registry_uri=tracker.resolved_registry_uri(), dst_path=Path(tmp) / "model")
            ck = load_checkpoint(ckdir)
            g = read_graph(store.area("graph", dataset))
            if ck.model.cfg.embed_dim != g.dim:
                raise CheckpointError(f"champion embeds width {ck.model.cfg.embed_dim}, the data {g.dim}")
            rep = evaluate(ck.model, g, SPLIT_TEST, baselines=False, cold_start=False, n_resamples=n_resamples)
            return float(getattr(rep.methods[GMTROUTER], metric)), "re-evaluated on this test split"
        except (CheckpointError, RegistryError) as exc:
            log.warning("champion v%s cannot be re-evaluated (%s); using its registry tag", version, exc)
    mv = tracker.client().get_model_version(name, version)
    tag = (mv.tags or {}).get(f"test_{metric}")
    if tag is None:
        raise RuntimeError(f"champion {name} v{version}: cannot be re-evaluated and has no test_{metric} tag")
    return float(tag), "registry tag (its own test split)"


def publish_router(dataset: str, store: DataStore, tracker: Any, mlflow_run_id: str, *, metric: str = "auc",
                   min_gain_over_baseline: float = 0.0, min_gain_over_champion: float = 0.0,
                   champion_eval_resamples: int = 200, run_id: str = "") -> dict[str, Any]:
    """Register the checkpoint as ``gmtrouter-<dataset>``, alias ``challenger``; promote when the gate passes.

    Gate: the challenger's test ``metric`` beats global_bt's by more than
    ``min_gain_over_baseline`` and reaches the current champion's (re-scored
    on the same test split) plus ``min_gain_over_champion``; the first model
    only has to beat the baseline.  On promotion the ``champion`` alias moves
    and the checkpoint is copied atomically to ``routers/<dataset>/current``.
    Returns the manifest with ``gate`` = {passed, ...}.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from gmt_model.serving.registry import log_router_model, registered_model_name

    if metric not in ("auc", "accuracy"):
        raise ValueError(f"gate metric: expected 'auc' or 'accuracy', got {metric!r}")
    em = store.read_manifest("evaluation", dataset, asset="test_evaluation")
    mm = store.read_manifest("models", dataset, asset="trained_model")
    ckpt = store.resolve("models", dataset, mm["checkpoint"])
    if em.get("checkpoint_sha256") != file_sha256(ckpt / "config.json"):
        raise RuntimeError(f"{dataset}: the evaluation report is of another checkpoint than {ckpt}; "
                           f"materialize {dataset}/test_evaluation again")
    methods = em["methods"]
    new = float(methods[GMTROUTER][metric])
    base = float(methods[GLOBAL_BT][metric]) if GLOBAL_BT in methods else float("nan")
    name = registered_model_name(dataset)
    cfg = read_config(ckpt)
    with tracker.fluent():
        if mlflow.active_run() is not None:
            mlflow.end_run()
        with mlflow.start_run(run_id=mlflow_run_id):
            info = log_router_model(ckpt, registered_model_name=name, metadata={
                "dataset": dataset, "encoder": cfg["encoder"], "llms": cfg["llms"], "dagster_run_id": run_id})
    version = str(info.registered_model_version)
    client = tracker.client()
    client.set_registered_model_alias(name, CHALLENGER, version)
    for k, v in {"dataset": dataset, "dagster_run_id": run_id, "mlflow_run_id": mlflow_run_id,
                 f"test_{metric}": new, f"global_bt_{metric}": base, "encoder": cfg["encoder"].get("name"),
                 "checkpoint_sha256": mm.get("checkpoint_sha256"),
                 "feedback_through_id": mm.get("feedback_through_id"),
                 **{f"test_{mm_}": methods[GMTROUTER][mm_] for mm_ in ("auc", "accuracy") if mm_ != metric}}.items():
        client.set_model_version_tag(name, version, k, str(v))
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    champ_version = None if champ is None else str(champ.version)
    champ_score, champ_source = None, None
    if champ_version is not None and champ_version != version:
        champ_score, champ_source = _champion_score(dataset, store, tracker, name, champ_version, metric,
                                                    champion_eval_resamples)
    beats_base = math.isfinite(new) and math.isfinite(base) and new > base + min_gain_over_baseline
    beats_champ = champ_score is None or (math.isfinite(new) and new >= champ_score + min_gain_over_champion)
    passed = bool(beats_base and beats_champ)
    reasons = []
    if not beats_base:
        reasons.append(f"{metric} {new:.4f} does not beat global_bt {base:.4f} (+{min_gain_over_baseline})")
    if not beats_champ:
        reasons.append(f"{metric} {new:.4f} is below champion v{champ_version} {champ_score:.4f} "
                       f"(+{min_gain_over_champion})")
    gate = {"passed": passed, "metric": metric, "challenger_version": version, "challenger_score": new,
            "baseline": GLOBAL_BT, "baseline_score": base, "champion_version": champ_version,
            "champion_score": champ_score, "champion_score_source": champ_source,
            "min_gain_over_baseline": min_gain_over_baseline, "min_gain_over_champion": min_gain_over_champion,
            "reasons": reasons}
    local = None
    if passed:
        client.set_registered_model_alias(name, CHAMPION, version)
        with store.staging("routers", dataset) as tmp:
            shutil.rmtree(tmp)
            copy_tree(ckpt, tmp)
            local = store.commit(tmp, "routers", dataset, {
                "registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}",
                "alias": CHAMPION, f"test_{metric}": new, "dagster_run_id": run_id,
                "checkpoint_sha256": mm.get("checkpoint_sha256")})
    client.set_model_version_tag(name, version, "promoted", str(passed).lower())
    tracker.log_metrics(mlflow_run_id, {"gate.passed": float(passed), "gate.challenger_score": new,
                                        "gate.baseline_score": _finite_or_none(base),
                                        "gate.champion_score": champ_score})
    tracker.set_tags(mlflow_run_id, {"registered_model": name, "registered_model_version": version,
                                     "promoted": str(passed).lower()})
    final_champion = version if passed else champ_version
    return {
        "registered_model": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "challenger_uri": f"models:/{name}@{CHALLENGER}",
        "champion_uri": f"models:/{name}@{CHAMPION}" if final_champion else None,
        "champion_version": final_champion,
        "local_router": None if local is None else str(local),
        "gate": gate,
    }


def scores_table(methods: Mapping[str, Mapping[str, Any]]) -> str:
    """A compact Markdown table of test AUC / accuracy with CIs per method."""
    def fmt(x: Any, ci: Any) -> str:
        if x is None or (isinstance(x, float) and not math.isfinite(x)):
            return "–"
        return f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    lines = ["| method | pairs | AUC [95% CI] | accuracy [95% CI] |", "|---|---:|---|---|"]
    for k, s in methods.items():
        auc, acc = fmt(s["auc"], s["auc_ci"]), fmt(s["accuracy"], s["accuracy_ci"])
        lines.append(f"| {k} | {s['n_pairs']} | {auc} | {acc} |")
    return "\n".join(lines)

