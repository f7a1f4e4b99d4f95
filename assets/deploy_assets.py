"""The deploy asset of a dataset: test_evaluation -> published_router (the champion decision).

A thin Dagster wrapper over :func:`assets.champion.publish_router`.  The promotion gate is reported as the
``promotion_gate`` check of ``published_router``; a refusal is an expected outcome: the asset
materializes (the challenger is registered, ``promoted: false``), the check fails with severity WARN and
the reason ("not promoted: auc 0.8921 is below champion v3 0.9011; ..."), and the run succeeds.
"""

# no `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime
import dagster as dg

from . import champion
from .configs import PublishConfig
from .keys import asset_keys
from .metadata import json_md
from .resources import MLflowResource, PathsResource
from .storage import DataStore

__all__ = ["build_deploy_assets"]


def build_deploy_assets(dataset: str) -> list[dg.AssetsDefinition]:
    """``published_router``."""
    k = asset_keys(dataset)

    @dg.asset(key=k["published_router"], deps=[k["test_evaluation"]], kinds={"mlflow"}, group_name=dataset,
              check_specs=[dg.AssetCheckSpec("promotion_gate", asset=k["published_router"], blocking=False,
                                             description="The challenger beats the current champion (re-scored "
                                                         "on this test split) and global_bt; only then does "
                                                         "the champion alias move. A refusal warns; the run "
                                                         "succeeds.")],
              description=(f"Registers the {dataset} checkpoint as MLflow pyfunc model gmtrouter-{dataset} "
                           f"(alias challenger), promotes it to champion when the gate passes and copies it to "
                           f"routers/{dataset}/current."))
    def published_router(context: dg.AssetExecutionContext, config: PublishConfig, paths: PathsResource,
                         mlflow: MLflowResource) -> dg.MaterializeResult:
        store = DataStore(dataset, paths.root())
        with mlflow.run(context, dataset) as run:
            m = champion.publish_router(store, mlflow, run, metric=config.metric,
                                        min_gain_over_baseline=config.min_gain_over_baseline,
                                        min_gain_over_champion=config.min_gain_over_champion,
                                        champion_eval_resamples=config.champion_eval_resamples,
                                        run_id=context.run.run_id)
        gate = m["gate"]
        (context.log.info if gate["passed"] else context.log.warning)(f"{dataset}: {m['summary']}")
        gate_meta = {key: (v if v is not None else "none") for key, v in gate.items() if key != "reasons"}
        gate_meta["reasons"] = "; ".join(gate["reasons"]) or "passed"
        return dg.MaterializeResult(
            metadata={
                "result": m["summary"],
                "registered_model": m["registered_model"], "version": m["version"], "model_uri": m["model_uri"],
                "challenger_uri": m["challenger_uri"], "champion_uri": str(m["champion_uri"]),
                "champion_version": str(m["champion_version"]), "promoted": gate["passed"],
                "local_router": str(m["local_router"]), "gate": json_md(gate), "mlflow_run_id": run,
            },
            check_results=[dg.AssetCheckResult(
                check_name="promotion_gate", asset_key=k["published_router"], passed=bool(gate["passed"]),
                severity=dg.AssetCheckSeverity.WARN, metadata={key: str(v) for key, v in gate_meta.items()},
                description=m["summary"])],
        )

    return [published_router]
