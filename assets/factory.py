"""The asset factory: the chain of assets, the partitioned embedding shards and the checks per dataset.

For dataset ``d`` (key prefix ``[d]``, group ``d``)::

    raw_data -> interactions -> text_embeddings -> graph_parquet -> trained_model -> test_evaluation
             -> published_router
                interactions -> embedding_shards (16 static partitions) -> text_embeddings

Assets pass data through the project-local data store (``assets.storage``),
never through an IO manager, so nothing is pickled: each asset returns a
``MaterializeResult`` and its downstream asset reads the committed manifest.

Checks (blocking: a failure stops the downstream assets):
``interactions``: ``interactions_valid``; ``text_embeddings``: ``embedding_width``;
``graph_parquet``: ``graph_integrity``; ``trained_model``: ``finite_weights``;
``published_router``: ``promotion_gate`` (computed by the asset itself: the
``champion`` alias moves only when it passes; when it fails the run fails
with the challenger registered but not promoted).
"""


import base64
import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from . import data_steps, steps
from .configs import (EmbeddingConfig, EvaluationConfig, GraphConfig, InteractionsConfig, PublishConfig,
                      RawDataConfig, TrainModelConfig)
from .resources import EncoderResource, MLflowResource, PathsResource
from .storage import DATASETS, DataStore

__all__ = ["ASSET_NAMES", "CHECK_NAMES", "SHARD_ASSET", "SHARD_PARTITIONS", "build_dataset_assets",
           "build_dataset_checks", "asset_key", "shard_asset_key"]

#: the chain of the train_<dataset> jobs
ASSET_NAMES = ("raw_data", "interactions", "text_embeddings", "graph_parquet", "trained_model", "test_evaluation",
               "published_router")
#: the partitioned embedding asset (job embed_<dataset>; text_embeddings merges its shards)
SHARD_ASSET = "embedding_shards"
#: one partition per first hex digit of the text hash
SHARD_PARTITIONS = dg.StaticPartitionsDefinition(list(data_steps.SHARD_KEYS))
CHECK_NAMES = ("interactions_valid", "embedding_width", "graph_integrity", "finite_weights", "promotion_gate")


def asset_key(dataset: str, name: str) -> dg.AssetKey:
    """``AssetKey([dataset, name])``."""
    if name not in ASSET_NAMES:
        raise ValueError(f"unknown asset {name!r}; expected one of {ASSET_NAMES}")
    return dg.AssetKey([dataset, name])


def _md(obj: Mapping[str, Any]) -> dg.MetadataValue:
    return dg.MetadataValue.json(json.loads(json.dumps(obj, default=str)))


def _thin_users_md(thin: Mapping[str, int], limit: int = 50) -> str:
    if not thin:
        return "No thin users."
    rows = ["| user | training groups |", "|---|---:|"]
    rows += [f"| {u} | {n} |" for u, n in sorted(thin.items(), key=lambda kv: (kv[1], kv[0]))[:limit]]
    if len(thin) > limit:
        rows.append(f"| ... {len(thin) - limit} more | |")
    return "\n".join(rows)


#: largest PNG embedded into asset metadata (base64 in the event log); bigger ones are linked only
_PNG_EMBED_MAX_BYTES = 400_000


def _png_md(path: Path, alt: str) -> dg.MetadataValue:
    """A PNG shown inline in the Dagster UI: Markdown with the image as a base64 data URI."""
    data = path.read_bytes()
    if len(data) > _PNG_EMBED_MAX_BYTES:
        return dg.MetadataValue.md(f"{alt}: {path} ({len(data)} bytes, too large to embed)")
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})")


class _TrainingProgress:
    """Per-epoch callback: a progress line per model every 25 epochs or 15 s (at validation epochs)."""

    def __init__(self, context: dg.AssetExecutionContext, dataset: str, every_epochs: int = 25,
                 every_s: float = 15.0) -> None:
        self.context, self.dataset, self.every_epochs, self.every_s = context, dataset, every_epochs, every_s
        self.last: dict[str, tuple[int, float]] = {}
        self.prev: dict[str, tuple[int, Mapping[str, float]]] = {}

    def __call__(self, name: str, epoch: int, row: Mapping[str, float]) -> None:
        # training may add an epoch's validation metrics to its row after this call: look at the row of the
        # previous call too (complete by now)
        prev = self.prev.get(name)
        self.prev[name] = (epoch, row)
        for ep, r in ((prev or (None, None)), (epoch, row)):
            if ep is not None:
                self._maybe_log(name, ep, r)

    def _maybe_log(self, name: str, epoch: int, row: Mapping[str, float]) -> None:
        now = time.monotonic()
        last_epoch, last_t = self.last.setdefault(name, (0, now))
        if "val_auc" not in row or epoch <= last_epoch or (epoch - last_epoch < self.every_epochs
                                                           and now - last_t < self.every_s):
            return
        self.last[name] = (epoch, now)
        self.context.log.info(f"{self.dataset} {name} epoch {epoch}: val_auc={row['val_auc']:.4f} "
                              f"train_loss={row['train_loss']:.4f}")


def _mlflow_run(mlflow: MLflowResource, context: dg.AssetExecutionContext, dataset: str) -> str:
    return mlflow.run_for(context.run.run_id, dataset, job_name=context.run.job_name)


def shard_asset_key(dataset: str) -> dg.AssetKey:
    """``AssetKey([dataset, "embedding_shards"])``."""
    return dg.AssetKey([dataset, SHARD_ASSET])


def build_dataset_assets(dataset: str) -> list[dg.AssetsDefinition]:
    """The chain of ``dataset`` (ASSET_NAMES, in order) followed by its partitioned ``embedding_shards``."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    k = {n: asset_key(dataset, n) for n in ASSET_NAMES}
    shard_key = shard_asset_key(dataset)
    common = {"group_name": dataset}

    @dg.asset(key=k["raw_data"], kinds={"python"}, description=(
        f"Raw data of {dataset}: downloaded (resume, retries, sha256) and safely extracted, generated "
        f"(demo) or read in place (local folder), as configs/datasets.yaml and the run config say."), **common)
    def raw_data(context: dg.AssetExecutionContext, config: RawDataConfig, paths: PathsResource,
                 mlflow: MLflowResource) -> dg.MaterializeResult:
        store = DataStore(paths.root())
        # the run's MLflow run opens here, at the first step: a tracking server that is down fails the
        # run now (MLflowResource checks it before the step), not after embedding and graph building
        run = _mlflow_run(mlflow, context, dataset)
        sources = config.sources_file or str(paths.configs() / "datasets.yaml")
        try:
            m = steps.materialize_raw(dataset, store, overrides=config.overrides(), sources_file=sources,
                                      run_id=context.run.run_id)
            mlflow.log_params(run, {"kind": m["kind"], "source": m["source"], "sha256": m["sha256"]},
                              prefix="raw.")
        except BaseException:
            mlflow.finish(run, "FAILED")
            raise
        mlflow.finish(run)
        path = store.resolve("raw", dataset, m["path"])
        return dg.MaterializeResult(metadata={
            "kind": m["kind"], "source": str(m["source"]), "path": dg.MetadataValue.path(str(path)),
            "read_in_place": m["read_in_place"], "sha256": str(m["sha256"]),
            "bytes": int(m["files"]["bytes"]), "files": int(m["files"]["files"]),
            "source_config": _md(m["source_config"]),
        })

    @dg.asset(key=k["interactions"], deps=[k["raw_data"]], kinds={"parquet"}, description=(
        f"{dataset} as the columnar interactions table (one row per conversation step; texts by hash): "
        f"judges -> users, winners -> ratings, both judged turns of a pair linked, split per user (history "
        f"kept in training), comparisons from the feedback log merged into training; JSONL split sources "
        f"are imported (parsed and validated once). Manifest: counts and sha256 of every file."), **common)
    def interactions(context: dg.AssetExecutionContext, config: InteractionsConfig, paths: PathsResource,
                     encoder: EncoderResource) -> dg.MaterializeResult:
        store = DataStore(paths.root())
        enc = encoder.get(config.encoder)
        fb_path = None
        if config.merge_feedback:
            fb_path = config.feedback_log or str(paths.feedback_log(dataset))
        if len(config.split_fractions) != 3:
            raise ValueError(f"split_fractions: expected 3 numbers (training, valid, test), "
                             f"got {config.split_fractions}")
        context.log.info(f"{dataset}: converting and splitting the raw data"
                         + (f"; merging feedback from {fb_path}" if fb_path else ""))
        t0 = time.perf_counter()
        m = data_steps.materialize_interactions(dataset, store, enc, split_seed=config.split_seed,
                                                split_fractions=tuple(config.split_fractions),
                                                min_user_groups=config.min_user_groups, feedback_log=fb_path,
                                                run_id=context.run.run_id)
        fb = m["feedback"]
        context.log.info(f"{dataset}: {m['n_users']} users, {m['n_llms']} LLMs, {m['n_texts']} distinct texts, "
                         + ", ".join(f"{s} {c['n_groups']} groups" for s, c in m["splits"].items())
                         + ("; no feedback log" if m.get("feedback_through_id") is None else
                            f"; feedback log rows 1..{m['feedback_through_id']} read, {fb['rows_merged']} merged")
                         + f"; {time.perf_counter() - t0:.1f} s")
        conv = m["conversion"] or {}
        meta: dict[str, Any] = {
            "encoder": m["encoder"], "embedding_dim": m["dim"], "mode": m["mode"],
            "users": m["n_users"], "llms": m["n_llms"], "llm_names": _md({"llms": m["llms"]}),
            "texts": m["n_texts"],
            "path": dg.MetadataValue.path(str(store.area("interactions", dataset))),
            "files": _md(m["files"]),
            "thin_users_count": len(m["thin_users"]),
            "thin_users": dg.MetadataValue.md(_thin_users_md(m["thin_users"])),
            "feedback_rows_merged": fb["rows_merged"], "feedback_rows_history_only": fb["rows_history_only"],
            "feedback_groups_added": fb["groups_added"], "feedback": _md(fb),
            "feedback_through_id": "none" if m.get("feedback_through_id") is None else int(m["feedback_through_id"]),
        }
        for s, c in m["splits"].items():
            for key, v in c.items():
                meta[f"{s}_{key.removeprefix('n_')}"] = int(v)
        if conv:
            meta.update({"judges": conv["n_judges"], "questions": conv["n_questions"],
                         "multi_turn_groups": conv["n_multi_turn_groups"], "conversion": _md(conv)})
        return dg.MaterializeResult(metadata=meta)

    @dg.asset(key=shard_key, deps=[k["interactions"]], partitions_def=SHARD_PARTITIONS, kinds={"parquet"},
              description=(f"One shard of {dataset}'s text embeddings: the distinct texts whose sha256 starts with "
                           f"the partition's hex digit. Materialize all 16 partitions (a backfill of "
                           f"embed_{dataset}) to embed in parallel processes; text_embeddings merges them."),
              **common)
    def embedding_shards(context: dg.AssetExecutionContext, paths: PathsResource,
                         encoder: EncoderResource) -> dg.MaterializeResult:
        store = DataStore(paths.root())
        im = store.read_manifest("interactions", dataset, asset="interactions")
        enc = encoder.get(im.get("encoder"))
        m = data_steps.materialize_embedding_shard(dataset, store, enc, context.partition_key,
                                                   run_id=context.run.run_id)
        context.log.info(f"{dataset}: shard {m['shard']}: {m['n_texts']} texts embedded with {enc.name}")
        return dg.MaterializeResult(metadata={"shard": m["shard"], "texts": m["n_texts"], "encoder": m["encoder"],
                                              "sha256": m["sha256"]})

    @dg.asset(key=k["text_embeddings"], deps=[k["interactions"], shard_key], kinds={"parquet"}, description=(
        f"The embedding store of {dataset}: one vector per distinct text (Parquet keyed by the text's sha256). "
        f"Merges the embedding shards cut from the current interactions with the same encoder, reuses "
        f"imported and previously stored vectors, embeds the rest."), **common)
    def text_embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, paths: PathsResource,
                        encoder: EncoderResource) -> dg.MaterializeResult:
        store = DataStore(paths.root())
        im = store.read_manifest("interactions", dataset, asset="interactions")
        enc = encoder.get(im.get("encoder"))
        t0 = time.perf_counter()
        m = data_steps.materialize_text_embeddings(dataset, store, enc, dtype=config.dtype,
                                                   run_id=context.run.run_id)
        src = m["sources"]
        context.log.info(f"{dataset}: {m['n_texts']} texts ({enc.name}, {m['dtype']}): "
                         + ", ".join(f"{k_} {v}" for k_, v in src.items())
                         + f"; {m['n_shards_used']} shards merged; {time.perf_counter() - t0:.1f} s")
        return dg.MaterializeResult(metadata={
            "path": dg.MetadataValue.path(str(store.area("embeddings", dataset))),
            "encoder": m["encoder"], "embedding_dim": m["dim"], "dtype": m["dtype"], "texts": m["n_texts"],
            "shards_merged": m["n_shards_used"], **{k_: int(v) for k_, v in src.items()},
            "sha256": m["files"][data_steps.STORE_FILE]["sha256"],
        })

    @dg.asset(key=k["graph_parquet"], deps=[k["text_embeddings"]], kinds={"parquet"}, description=(
        f"The heterogeneous graph of {dataset} as Parquet tables (users, llms, texts, interactions, pairs), "
        f"built from the verified interactions table and embedding store."), **common)
    def graph_parquet(context: dg.AssetExecutionContext, config: GraphConfig,
                      paths: PathsResource) -> dg.MaterializeResult:
        store = DataStore(paths.root())
        m = data_steps.materialize_graph(dataset, store, relations=config.relations, run_id=context.run.run_id)
        counts = m["counts"]
        nodes = {t: counts[t] for t in ("user", "llm", "session", "query", "response") if t in counts}
        edges = {r: v for r, v in counts.items() if r.count("__") == 2}
        table = ["| type | count |", "|---|---:|"] + [f"| {t} | {v} |" for t, v in {**nodes, **edges}.items()]
        return dg.MaterializeResult(metadata={
            "path": dg.MetadataValue.path(str(store.area("graph", dataset))),
            "relations": m["relations"], "users": m["n_users"], "llms": m["n_llms"],
            "interactions": m["n_interactions"], "groups": m["n_groups"], "pairs": m["n_pairs"],
            "max_steps": m["max_steps"], "multi_turn_interactions": m["n_multi_turn_interactions"],
            "node_counts": _md(nodes), "edge_counts": _md(edges),
            "pairs_per_split": _md({key: v for key, v in counts.items() if key.startswith("pairs_")}),
            "counts": dg.MetadataValue.md("\n".join(table)),
        })

    @dg.asset(key=k["trained_model"], deps=[k["graph_parquet"]], kinds={"pytorch"}, description=(
        f"GMTRouter trained on {dataset} (and the user-blind ablation), CUDA when present; parameters, "
        f"per-epoch validation metrics, curves, environment and checkpoints logged to MLflow."), **common)
    def trained_model(context: dg.AssetExecutionContext, config: TrainModelConfig, paths: PathsResource,
                      mlflow: MLflowResource) -> dg.MaterializeResult:
        store = DataStore(paths.root())
        run = _mlflow_run(mlflow, context, dataset)
        progress = _TrainingProgress(context, dataset)
        cfg_path = config.config_path or str(steps.default_train_config(dataset, paths.configs()))
        context.log.info(f"{dataset}: training GMTRouter" + (" and the user-blind ablation"
                                                             if config.train_user_blind else "")
                         + f" ({cfg_path}, overrides {config.overrides() or 'none'})")
        try:
            with warnings.catch_warnings(record=True) as caught:
                m = steps.materialize_model(
                    dataset, store, config_path=cfg_path, overrides=config.overrides(),
                    train_user_blind=config.train_user_blind, blind_epochs=config.blind_epochs,
                    resume=config.resume, run_key=context.run.root_run_id or context.run.run_id, tracker=mlflow,
                    mlflow_run_id=run, log_checkpoints=config.log_checkpoints, on_epoch=progress,
                    run_id=context.run.run_id)
        except BaseException:
            mlflow.finish(run, "FAILED")
            raise
        finally:
            # warnings (e.g. thin users, once per model) go to the run log once each, not to stderr
            for text in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
                context.log.warning(text)
        mlflow.finish(run)
        folder = store.area("models", dataset)
        blind = m["blind"] or {}
        context.log.info(f"{dataset}: best validation {m['objective']} {float(m['best_metric']):.4f} at epoch "
                         f"{m['best_epoch']} ({m['device']}, {float(m['wall_time_s']):.1f} s)")
        return dg.MaterializeResult(metadata={
            "checkpoint": dg.MetadataValue.path(str(folder / m["checkpoint"])),
            "training_curves": _png_md(folder / m["curves"], "training curves"),
            "curves": dg.MetadataValue.path(str(folder / m["curves"])),
            "feedback_through_id": ("none" if m.get("feedback_through_id") is None
                                    else int(m["feedback_through_id"])),
            "device": m["device"], "epochs": int(m["train_config"]["epochs"]), "epochs_run": m["epochs_run"],
            "best_epoch": m["best_epoch"], f"best_val_{m['objective']}": float(m["best_metric"]),
            "wall_time_s": float(m["wall_time_s"]),
            "user_blind_best_val": float(blind.get("best_metric", float("nan"))),
            "config_file": m["config_file"], "model_config": _md(m["model_config"]),
            "warnings": _md({"warnings": m["warnings"]}),
            "mlflow_run_id": run, "mlflow": mlflow.run_url_hint(run),
        })

    @dg.asset(key=k["test_evaluation"], deps=[k["trained_model"]], kinds={"python"}, description=(
        f"Test-split evaluation of the {dataset} model beside the user-blind model, global and per-user "
        f"Bradley-Terry and KNN baselines, with bootstrap 95% CIs; logged to MLflow."), **common)
    def test_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, paths: PathsResource,
                        mlflow: MLflowResource) -> dg.MaterializeResult:
        store = DataStore(paths.root())
        run = _mlflow_run(mlflow, context, dataset)
        context.log.info(f"{dataset}: evaluating on the test split beside the baselines "
                         f"({config.n_resamples} bootstrap resamples)")
        try:
            m = steps.materialize_evaluation(dataset, store, n_resamples=config.n_resamples, seed=config.seed,
                                             cold_start=config.cold_start, knn_k=config.knn_k, device=config.device,
                                             tracker=mlflow, mlflow_run_id=run, run_id=context.run.run_id)
        except BaseException:
            mlflow.finish(run, "FAILED")
            raise
        mlflow.finish(run)
        methods = m["methods"]
        meta: dict[str, Any] = {
            "report": dg.MetadataValue.md(m["markdown_text"]),
            "summary": dg.MetadataValue.md(steps.scores_table(methods)),
            "path": dg.MetadataValue.path(str(store.area("evaluation", dataset) / m["report"])),
            "methods": _md(methods), "mlflow_run_id": run,
        }
        for name, s in methods.items():
            meta[f"{name}_auc"] = float(s["auc"])
            meta[f"{name}_accuracy"] = float(s["accuracy"])
        return dg.MaterializeResult(metadata=meta)

    @dg.asset(key=k["published_router"], deps=[k["test_evaluation"]], kinds={"mlflow"},
              check_specs=[dg.AssetCheckSpec("promotion_gate", asset=k["published_router"], blocking=True,
                                             description="The challenger beats the current champion (re-scored "
                                                         "on this test split) and global_bt; only then does "
                                                         "the champion alias move.")],
              description=(f"Registers the {dataset} checkpoint as MLflow pyfunc model gmtrouter-{dataset} "
                           f"(alias challenger), promotes it to champion when the gate passes and copies it to "
                           f"routers/{dataset}/current."), **common)
    def published_router(context: dg.AssetExecutionContext, config: PublishConfig, paths: PathsResource,
                         mlflow: MLflowResource) -> dg.MaterializeResult:
        store = DataStore(paths.root())
        run = _mlflow_run(mlflow, context, dataset)
        try:
            m = steps.publish_router(dataset, store, mlflow, run, metric=config.metric,
                                     min_gain_over_baseline=config.min_gain_over_baseline,
                                     min_gain_over_champion=config.min_gain_over_champion,
                                     champion_eval_resamples=config.champion_eval_resamples, run_id=context.run.run_id)
        except BaseException:
            mlflow.finish(run, "FAILED")
            raise
        mlflow.finish(run)
        gate = m["gate"]
        if gate["passed"]:
            context.log.info(f"{m['registered_model']} v{m['version']} is the new champion")
        else:
            context.log.warning(f"{m['registered_model']} v{m['version']} stays challenger: "
                                + "; ".join(gate["reasons"]))
        gate_meta = {key: (v if v is not None else "none") for key, v in gate.items() if key != "reasons"}
        gate_meta["reasons"] = "; ".join(gate["reasons"]) or "passed"
        return dg.MaterializeResult(
            metadata={
                "registered_model": m["registered_model"], "version": m["version"], "model_uri": m["model_uri"],
                "challenger_uri": m["challenger_uri"], "champion_uri": str(m["champion_uri"]),
                "champion_version": str(m["champion_version"]), "promoted": gate["passed"],
                "local_router": str(m["local_router"]), "gate": _md(gate), "mlflow_run_id": run,
            },
            check_results=[dg.AssetCheckResult(
                check_name="promotion_gate", asset_key=k["published_router"], passed=bool(gate["passed"]),
                severity=dg.AssetCheckSeverity.ERROR, metadata={**{key: str(v) for key, v in gate_meta.items()}},
                description=None if gate["passed"] else "; ".join(gate["reasons"]))],
        )

    return [raw_data, interactions, text_embeddings, graph_parquet, trained_model, test_evaluation, published_router,
            embedding_shards]


def build_dataset_checks(dataset: str) -> list[dg.AssetChecksDefinition]:
    """The blocking data checks of ``dataset`` (the promotion gate lives in ``published_router``)."""
    k = {n: asset_key(dataset, n) for n in ASSET_NAMES}

    def result(passed: bool, meta: Mapping[str, Any]) -> dg.AssetCheckResult:
        problems = list(meta.get("problems") or [])
        md = {key: _md({key: v}) if isinstance(v, (dict, list)) else v for key, v in meta.items() if key != "problems"}
        md["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")
        return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.ERROR, metadata=md,
                                   description=None if passed else "; ".join(problems)[:2000])

    @dg.asset_check(asset=k["interactions"], name="interactions_valid", blocking=True,
                    description="Every table matches its manifest (size, sha256) and every split has groups "
                                "(counts from the manifest: the splits are not parsed again).")
    def interactions_valid(paths: PathsResource) -> dg.AssetCheckResult:
        return result(*data_steps.check_interactions_valid(dataset, DataStore(paths.root())))

    @dg.asset_check(asset=k["text_embeddings"], name="embedding_width", blocking=True,
                    description="The store matches its manifest, has the configured encoder's name and width, and "
                                "holds a vector for every text of the interactions.")
    def embedding_width(paths: PathsResource, encoder: EncoderResource) -> dg.AssetCheckResult:
        store = DataStore(paths.root())
        m = store.read_manifest("interactions", dataset, asset="interactions")
        # the encoder the data was cut for (a run-config override is recorded in the manifest)
        return result(*data_steps.check_embedding_width(dataset, store, encoder.get(m.get("encoder"))))

    @dg.asset_check(asset=k["graph_parquet"], name="graph_integrity", blocking=True,
                    description="Indices in range, user and session nodes receive messages under both relation "
                                "sets, every split has comparison pairs.")
    def graph_integrity(paths: PathsResource) -> dg.AssetCheckResult:
        return result(*steps.check_graph_integrity(dataset, DataStore(paths.root())))

    @dg.asset_check(asset=k["trained_model"], name="finite_weights", blocking=True,
                    description="Both checkpoints load (sha256 verified) and every weight is finite.")
    def finite_weights(paths: PathsResource) -> dg.AssetCheckResult:
        return result(*steps.check_finite_weights(dataset, DataStore(paths.root())))

    return [interactions_valid, embedding_width, graph_integrity, finite_weights]
