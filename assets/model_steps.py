"""The model role of the pipeline as plain functions: training on the committed graph, the test
evaluation, and the check of the trained weights.

Reads the data role's output (``graph/<dataset>``) through the dataset's :class:`~assets.storage.DataStore`
and commits ``models/<dataset>`` and ``evaluation/<dataset>``.  MLflow logging goes through a *tracker*
(``assets.resources.MLflowResource``: ``log_params``, ``log_metrics``, ``log_metric_rows``,
``log_artifact(s)``, ``set_tags``): the per-epoch curves are metrics (step = epoch), the test scores are
metrics, and one-off values (best epoch, wall time, sizes) are parameters or tags.

No Dagster import here.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from gmt_model.atomic import copy_tree, file_sha256
from gmt_model.method.checkpoint import CheckpointError, load_checkpoint
from gmt_model.method.schema import SPLIT_TEST

from .plots import plot_training_curves
from .storage import REPO_ROOT, DataStore, write_json_atomic

__all__ = [
    "GMTROUTER",
    "USER_BLIND",
    "GLOBAL_BT",
    "default_train_config",
    "environment_info",
    "materialize_model",
    "check_finite_weights",
    "materialize_evaluation",
    "method_summary",
    "feedback_checkpoint_meta",
    "scores_table",
    "finite_or_none",
]

log = logging.getLogger(__name__)

GMTROUTER = "gmtrouter"
USER_BLIND = "user_blind"
GLOBAL_BT = "global_bt"
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


def materialize_model(store: DataStore, *, config_path: str | os.PathLike[str] | None = None,
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

    dataset = store.dataset
    cfg_path = Path(config_path) if config_path else default_train_config(dataset)
    ov = {"dataset_name": dataset, **dict(overrides or {})}
    tc = load_train_config(cfg_path, ov, relative_to=REPO_ROOT)
    g = read_graph(store.area("graph"))
    ckpt_meta = feedback_checkpoint_meta(store.read_manifest("graph"))
    work = store.training_dir(run_key)
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
        tracker.log_params(mlflow_run_id, _data_params(store), prefix="data.")

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
    with store.staging("models") as tmp:
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
            # one-off outcomes are tags (the run's metrics are its per-epoch curves and its test scores)
            tracker.set_tags(mlflow_run_id, {
                "device": res.device, f"best_val_{res.objective}": finite_or_none(res.best_metric),
                "best_epoch": res.best_epoch, "train_wall_time_s": round(float(res.wall_time_s), 2),
                "epochs_run": res.epochs_run,
                **({} if blind_res is None else {
                    f"{USER_BLIND}.best_val_{blind_res.objective}": finite_or_none(blind_res.best_metric),
                    f"{USER_BLIND}.best_epoch": blind_res.best_epoch,
                    f"{USER_BLIND}.train_wall_time_s": round(float(blind_res.wall_time_s), 2)})})
            tracker.log_artifact(mlflow_run_id, tmp / "training_curves.png", "plots")
            tracker.log_artifact(mlflow_run_id, tmp / "history.json", "training")
            tracker.log_artifact(mlflow_run_id, tmp / "environment.json", "environment")
            if log_checkpoints:
                tracker.log_artifacts(mlflow_run_id, tmp / GMTROUTER, f"checkpoints/{GMTROUTER}")
                if blind_res is not None:
                    tracker.log_artifacts(mlflow_run_id, tmp / USER_BLIND, f"checkpoints/{USER_BLIND}")
        store.commit(tmp, "models", manifest)
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


def _data_params(store: DataStore) -> dict[str, Any]:
    """Where the training data came from (raw source, split settings, feedback merged)."""
    out: dict[str, Any] = {}
    raw_p, inter_p = store.manifest_path("raw"), store.manifest_path("interactions")
    if raw_p.is_file():
        raw = store.read_manifest("raw")
        out.update({"source_kind": raw.get("kind"), "source": raw.get("source"), "source_sha256": raw.get("sha256")})
    if inter_p.is_file():
        j = store.read_manifest("interactions")
        out.update({"split_seed": j.get("split_seed"), "split_fractions": j.get("split_fractions"),
                    "thin_users": len(j.get("thin_users") or {}),
                    "feedback_rows_merged": (j.get("feedback") or {}).get("rows_merged"),
                    "feedback_through_id": j.get("feedback_through_id"),
                    **{f"{s}_groups": c.get("n_groups") for s, c in (j.get("splits") or {}).items()}})
    return out


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def check_finite_weights(store: DataStore) -> tuple[bool, dict[str, Any]]:
    """Every stored weight tensor of both checkpoints is finite and the checkpoints load (sha256 verified)."""
    import torch
    from safetensors.torch import load_file

    m = store.read_manifest("models")
    meta: dict[str, Any] = {}
    problems: list[str] = []
    for key in ("checkpoint", "blind_checkpoint"):
        if not m.get(key):
            continue
        d = store.resolve("models", m[key])
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
def method_summary(r: Any) -> dict[str, Any]:
    return {"auc": r.auc, "auc_ci": list(r.auc_ci), "accuracy": r.accuracy, "accuracy_ci": list(r.accuracy_ci),
            "n_pairs": r.n_pairs, "top1": r.top1, "ovr_auc": r.ovr_auc}


def materialize_evaluation(store: DataStore, *, n_resamples: int = 1000, seed: int = 0,
                           cold_start: bool = True, knn_k: int = 20, device: str | None = None,
                           tracker: Any = None, mlflow_run_id: str | None = None,
                           run_id: str = "") -> dict[str, Any]:
    """Evaluate the trained model, the user-blind model and the baselines on the test split."""
    from gmt_model.evaluation.report import evaluate
    from gmt_model.method.graph import read_graph

    mm = store.read_manifest("models")
    g = read_graph(store.area("graph"))
    ck = load_checkpoint(store.resolve("models", mm["checkpoint"]))
    blind = None
    if mm.get("blind_checkpoint"):
        blind = load_checkpoint(store.resolve("models", mm["blind_checkpoint"]))
    rep = evaluate(ck.model, g, SPLIT_TEST, blind_model=None if blind is None else blind.model, baselines=True,
                   cold_start=cold_start, n_resamples=n_resamples, seed=seed, device=device, knn_k=knn_k)
    markdown = rep.to_markdown()
    methods = {k: method_summary(v) for k, v in rep.methods.items()}
    cold = {k: method_summary(v) for k, v in rep.cold_start.items()}
    with store.staging("evaluation") as tmp:
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
            # test scores are metrics (comparable across runs); their intervals, pair counts and the
            # cold-start table are tags (one value each, never a chart)
            rows: dict[str, float | None] = {}
            tags: dict[str, Any] = {}
            for prefix, table in (("test", methods), ("test_cold_start", cold)):
                for name, s in table.items():
                    for key in ("auc", "accuracy"):
                        if prefix == "test":
                            rows[f"{prefix}.{name}.{key}"] = finite_or_none(s[key])
                        else:
                            tags[f"{prefix}.{name}.{key}"] = _fmt(s[key])
                        tags[f"{prefix}.{name}.{key}_ci"] = f"[{_fmt(s[f'{key}_ci'][0])}, {_fmt(s[f'{key}_ci'][1])}]"
                    for key in ("top1", "ovr_auc"):
                        tags[f"{prefix}.{name}.{key}"] = _fmt(s[key])
                    tags[f"{prefix}.{name}.n_pairs"] = int(s["n_pairs"])
            tracker.log_metrics(mlflow_run_id, rows)
            tracker.set_tags(mlflow_run_id, tags)
            tracker.log_artifact(mlflow_run_id, tmp / "report.json", "evaluation")
            tracker.log_artifact(mlflow_run_id, tmp / "report.md", "evaluation")
        store.commit(tmp, "evaluation", manifest)
    manifest["markdown_text"] = markdown
    return manifest


def _fmt(x: Any) -> str:
    v = finite_or_none(x)
    return "nan" if v is None else f"{v:.4f}"


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

