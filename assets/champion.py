"""The champion of a dataset's registered router (``gmtrouter-<dataset>``): the one module that decides it.

- :func:`publish_router` (the deploy step of the pipeline): register the evaluated checkpoint as the
  ``challenger``, run the promotion gate, and on a pass move the ``champion`` alias and copy the
  checkpoint to ``routers/<dataset>/current``.  A refusal is an expected outcome, not an error: the
  result says ``promoted: False`` and why (:func:`gate_summary`).
- :func:`current_champion`, :func:`previous_champion`, :func:`set_champion`, :func:`update_local_router`:
  read, roll back or set the champion by hand (``python -m pipelines.champion``).

The library's side (``gmt_model.serving.registry``) only *reads* a champion (``load_router("models:/
gmtrouter-<dataset>@champion")``); nothing else moves the alias.  MLflow is imported inside functions.
No Dagster import here.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gmt_model.atomic import file_sha256
from gmt_model.method.checkpoint import CheckpointError, load_checkpoint, read_config
from gmt_model.method.schema import SPLIT_TEST

from .model_steps import GLOBAL_BT, GMTROUTER, finite_or_none
from .storage import DataStore

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "publish_router",
    "gate_summary",
    "current_champion",
    "versions",
    "previous_champion",
    "set_champion",
    "update_local_router",
]

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"


# --------------------------------------------------------------------------
# reading and moving the alias
# --------------------------------------------------------------------------
def current_champion(client: Any, name: str) -> str | None:
    """The version the ``champion`` alias points at (None: no champion yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def versions(client: Any, name: str) -> list[Any]:
    """Every version of the registered model ``name``, oldest first."""
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def previous_champion(client: Any, name: str) -> str:
    """The newest version below the current champion that passed its gate (tag ``promoted=true``)."""
    current = current_champion(client, name)
    if current is None:
        raise ValueError(f"{name} has no champion to roll back")
    older = [v for v in versions(client, name)
             if int(v.version) < int(current) and (v.tags or {}).get("promoted") == "true"]
    if not older:
        raise ValueError(f"{name}: no promoted version older than the champion v{current} to roll back to")
    return str(older[-1].version)


def set_champion(client: Any, name: str, version: str, *, reason: str) -> str | None:
    """Point ``champion`` at ``version`` (tagged ``champion_set_by`` / ``champion_set_at``); returns the
    previous champion version."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise ValueError(f"{name} has no version {version}") from None
    before = current_champion(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "champion_set_by", reason)
    client.set_model_version_tag(name, version, "champion_set_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return before


def update_local_router(store: DataStore, checkpoint: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Copy ``checkpoint`` to ``routers/<dataset>/current`` atomically, with ``manifest``."""
    return store.commit_copy(checkpoint, "routers", manifest)


# --------------------------------------------------------------------------
# the promotion gate
# --------------------------------------------------------------------------
def _champion_score(store: DataStore, tracker: Any, name: str, version: str, metric: str,
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
            g = read_graph(store.area("graph"))
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


def _gate(metric: str, new: float, base: float, champ_version: str | None, champ_score: float | None,
          min_gain_over_baseline: float, min_gain_over_champion: float) -> tuple[bool, list[str]]:
    beats_base = math.isfinite(new) and math.isfinite(base) and new > base + min_gain_over_baseline
    beats_champ = champ_score is None or (math.isfinite(new) and new >= champ_score + min_gain_over_champion)
    reasons = []
    if not beats_base:
        reasons.append(f"{metric} {new:.4f} does not beat global_bt {base:.4f}"
                       + (f" (+{min_gain_over_baseline})" if min_gain_over_baseline else ""))
    if not beats_champ:
        reasons.append(f"{metric} {new:.4f} is below champion v{champ_version} {champ_score:.4f}"
                       + (f" (+{min_gain_over_champion})" if min_gain_over_champion else ""))
    return bool(beats_base and beats_champ), reasons


def gate_summary(result: Mapping[str, Any]) -> str:
    """One line: ``promoted: gmtrouter-demo v2 is the new champion`` or ``not promoted: <reasons>; champion
    stays v1`` (``result``: what :func:`publish_router` returns)."""
    gate = result["gate"]
    who = f"{result['registered_model']} v{result['version']}"
    if gate["passed"]:
        return f"promoted: {who} is the new champion"
    stays = result.get("champion_version")
    return (f"not promoted: {'; '.join(gate['reasons'])}; {who} stays challenger"
            + (f", champion stays v{stays}" if stays else ", no champion yet"))


def publish_router(store: DataStore, tracker: Any, mlflow_run_id: str, *, metric: str = "auc",
                   min_gain_over_baseline: float = 0.0, min_gain_over_champion: float = 0.0,
                   champion_eval_resamples: int = 200, run_id: str = "") -> dict[str, Any]:
    """Register the checkpoint as ``gmtrouter-<dataset>``, alias ``challenger``; promote when the gate passes.

    Gate: the challenger's test ``metric`` beats global_bt's by more than
    ``min_gain_over_baseline`` and reaches the current champion's (re-scored
    on the same test split) plus ``min_gain_over_champion``; the first model
    only has to beat the baseline.  On promotion the ``champion`` alias moves
    and the checkpoint is copied atomically to ``routers/<dataset>/current``.
    Returns the manifest with ``gate`` = {passed, reasons, ...} and ``summary`` (:func:`gate_summary`).
    """
    import mlflow

    from gmt_model.serving.registry import log_router_model, registered_model_name

    dataset = store.dataset
    if metric not in ("auc", "accuracy"):
        raise ValueError(f"gate metric: expected 'auc' or 'accuracy', got {metric!r}")
    em = store.read_manifest("evaluation")
    mm = store.read_manifest("models")
    ckpt = store.resolve("models", mm["checkpoint"])
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
    champ_version = current_champion(client, name)
    champ_score, champ_source = None, None
    if champ_version is not None and champ_version != version:
        champ_score, champ_source = _champion_score(store, tracker, name, champ_version, metric,
                                                    champion_eval_resamples)
    passed, reasons = _gate(metric, new, base, champ_version, champ_score, min_gain_over_baseline,
                            min_gain_over_champion)
    gate = {"passed": passed, "metric": metric, "challenger_version": version, "challenger_score": new,
            "baseline": GLOBAL_BT, "baseline_score": base, "champion_version": champ_version,
            "champion_score": champ_score, "champion_score_source": champ_source,
            "min_gain_over_baseline": min_gain_over_baseline, "min_gain_over_champion": min_gain_over_champion,
            "reasons": reasons}
    local = None
    if passed:
        client.set_registered_model_alias(name, CHAMPION, version)
        local = update_local_router(store, ckpt, {
            "registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}",
            "alias": CHAMPION, f"test_{metric}": new, "dagster_run_id": run_id,
            "checkpoint_sha256": mm.get("checkpoint_sha256")})
    client.set_model_version_tag(name, version, "promoted", str(passed).lower())
    final_champion = version if passed else champ_version
    out = {
        "registered_model": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "challenger_uri": f"models:/{name}@{CHALLENGER}",
        "champion_uri": f"models:/{name}@{CHAMPION}" if final_champion else None,
        "champion_version": final_champion,
        "local_router": None if local is None else str(local),
        "gate": gate,
    }
    out["summary"] = gate_summary(out)
    # one-off outcomes are tags of the run (the run's metrics are its curves and test scores)
    tracker.set_tags(mlflow_run_id, {
        "registered_model": name, "registered_model_version": version, "promoted": str(passed).lower(),
        "gate.challenger_score": new, "gate.baseline_score": finite_or_none(base),
        "gate.champion_version": champ_version, "gate.champion_score": champ_score,
        "gate.result": out["summary"]})
    return out
