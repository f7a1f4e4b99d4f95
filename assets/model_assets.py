"""The model assets of a dataset: graph -> trained_model -> test_evaluation.

Thin Dagster wrappers over :mod:`assets.model_steps`; each opens the Dagster run's MLflow run for its
block (``MLflowResource.run``).  The training curves show inline on the asset page (a table of
sparklines, :func:`assets.metadata.curves_md`), the full plot one click away.
"""

# no `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime
import warnings
from typing import Any

import dagster as dg

from . import model_steps
from .configs import EvaluationConfig, TrainModelConfig
from .keys import asset_keys
from .metadata import TrainingProgress, curves_md, json_md, png_md
from .resources import MLflowResource, PathsResource
from .storage import DataStore, read_json

__all__ = ["build_model_assets"]


def build_model_assets(dataset: str) -> list[dg.AssetsDefinition]:
    """``trained_model`` and ``test_evaluation``."""
    k = asset_keys(dataset)
    common = {"group_name": dataset}

    @dg.asset(key=k["trained_model"], deps=[k["graph_parquet"]], kinds={"pytorch"}, description=(
        f"GMTRouter trained on {dataset} (and the user-blind ablation), CUDA when present; parameters, "
        f"per-epoch validation metrics, curves, environment and checkpoints logged to MLflow."), **common)
    def trained_model(context: dg.AssetExecutionContext, config: TrainModelConfig, paths: PathsResource,
                      mlflow: MLflowResource) -> dg.MaterializeResult:
        store = DataStore(dataset, paths.root())
        cfg_path = config.config_file() or str(model_steps.default_train_config(dataset, paths.configs()))
        context.log.info(f"{dataset}: training GMTRouter" + (" and the user-blind ablation"
                                                             if config.train_user_blind else "")
                         + f" ({cfg_path}, overrides {config.overrides() or 'none'})")
        with mlflow.run(context, dataset) as run, warnings.catch_warnings(record=True) as caught:
            try:
                m = model_steps.materialize_model(
                    store, config_path=cfg_path, overrides=config.overrides(),
                    train_user_blind=config.train_user_blind, blind_epochs=config.blind_epochs,
                    resume=config.resume, run_key=context.run.root_run_id or context.run.run_id, tracker=mlflow,
                    mlflow_run_id=run, log_checkpoints=config.log_checkpoints,
                    on_epoch=TrainingProgress(context, dataset), run_id=context.run.run_id)
            finally:
                # warnings (e.g. thin users, once per model) go to the run log once each, not to stderr
                for text in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
                    context.log.warning(text)
        folder = store.area("models")
        blind = m["blind"] or {}
        context.log.info(f"{dataset}: best validation {m['objective']} {float(m['best_metric']):.4f} at epoch "
                         f"{m['best_epoch']} ({m['device']}, {float(m['wall_time_s']):.1f} s)")
        return dg.MaterializeResult(metadata={
            "training_curves": dg.MetadataValue.md(curves_md(read_json(folder / m["history"]))),
            "training_curves_plot": png_md(folder / m["curves"], "training curves"),
            "checkpoint": dg.MetadataValue.path(str(folder / m["checkpoint"])),
            "curves": dg.MetadataValue.path(str(folder / m["curves"])),
            "feedback_through_id": ("none" if m.get("feedback_through_id") is None
                                    else int(m["feedback_through_id"])),
            "device": m["device"], "epochs": int(m["train_config"]["epochs"]), "epochs_run": m["epochs_run"],
            "best_epoch": m["best_epoch"], f"best_val_{m['objective']}": float(m["best_metric"]),
            "wall_time_s": float(m["wall_time_s"]),
            "user_blind_best_val": float(blind.get("best_metric", float("nan"))),
            "config_file": m["config_file"], "model_config": json_md(m["model_config"]),
            "warnings": json_md({"warnings": m["warnings"]}),
            "mlflow_run_id": run, "mlflow": mlflow.run_url_hint(run),
        })

    @dg.asset(key=k["test_evaluation"], deps=[k["trained_model"]], kinds={"python"}, description=(
        f"Test-split evaluation of the {dataset} model beside the user-blind model, global and per-user "
        f"Bradley-Terry and KNN baselines, with bootstrap 95% CIs; logged to MLflow."), **common)
    def test_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, paths: PathsResource,
                        mlflow: MLflowResource) -> dg.MaterializeResult:
        store = DataStore(dataset, paths.root())
        context.log.info(f"{dataset}: evaluating on the test split beside the baselines "
                         f"({config.n_resamples} bootstrap resamples)")
        with mlflow.run(context, dataset) as run:
            m = model_steps.materialize_evaluation(store, n_resamples=config.n_resamples, seed=config.seed,
                                                   cold_start=config.cold_start, knn_k=config.knn_k,
                                                   device=config.device, tracker=mlflow, mlflow_run_id=run,
                                                   run_id=context.run.run_id)
        methods = m["methods"]
        meta: dict[str, Any] = {
            "summary": dg.MetadataValue.md(model_steps.scores_table(methods)),
            "report": dg.MetadataValue.md(m["markdown_text"]),
            "path": dg.MetadataValue.path(str(store.area("evaluation") / m["report"])),
            "methods": json_md(methods), "mlflow_run_id": run,
        }
        for name, s in methods.items():
            meta[f"{name}_auc"] = float(s["auc"])
            meta[f"{name}_accuracy"] = float(s["accuracy"])
        return dg.MaterializeResult(metadata=meta)

    return [trained_model, test_evaluation]
