"""The standalone data checks of a dataset, each blocking (a failure stops the downstream assets).

Each is a thin wrapper over a plain ``check_*`` function (``(passed, metadata)``) of the step module of
its role; the promotion gate is not here: it is computed by ``published_router`` (``deploy_assets``).
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from . import data_steps, model_steps
from .keys import asset_keys
from .metadata import json_md
from .resources import EncoderResource, PathsResource
from .storage import DataStore

__all__ = ["build_checks"]


def _result(passed: bool, meta: Mapping[str, Any]) -> dg.AssetCheckResult:
    problems = list(meta.get("problems") or [])
    md = {key: json_md({key: v}) if isinstance(v, (dict, list)) else v for key, v in meta.items() if key != "problems"}
    md["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")
    return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.ERROR, metadata=md,
                               description=None if passed else "; ".join(problems)[:2000])


def build_checks(dataset: str) -> list[dg.AssetChecksDefinition]:
    """``interactions_valid``, ``embedding_width``, ``graph_integrity`` and ``finite_weights``."""
    k = asset_keys(dataset)

    @dg.asset_check(asset=k["interactions"], name="interactions_valid", blocking=True,
                    description="Every table matches its manifest (size, sha256) and every split has groups "
                                "(counts from the manifest: the splits are not parsed again).")
    def interactions_valid(paths: PathsResource) -> dg.AssetCheckResult:
        return _result(*data_steps.check_interactions_valid(DataStore(dataset, paths.root())))

    @dg.asset_check(asset=k["text_embeddings"], name="embedding_width", blocking=True,
                    description="The store matches its manifest, has the configured encoder's name and width, and "
                                "holds a vector for every text of the interactions.")
    def embedding_width(paths: PathsResource, encoder: EncoderResource) -> dg.AssetCheckResult:
        store = DataStore(dataset, paths.root())
        # the encoder the data was cut for (a run-config override is recorded in the manifest)
        enc = encoder.get(store.read_manifest("interactions").get("encoder"))
        return _result(*data_steps.check_embedding_width(store, enc))

    @dg.asset_check(asset=k["graph_parquet"], name="graph_integrity", blocking=True,
                    description="Indices in range, user and session nodes receive messages under both relation "
                                "sets, every split has comparison pairs.")
    def graph_integrity(paths: PathsResource) -> dg.AssetCheckResult:
        return _result(*data_steps.check_graph_integrity(DataStore(dataset, paths.root())))

    @dg.asset_check(asset=k["trained_model"], name="finite_weights", blocking=True,
                    description="Both checkpoints load (sha256 verified) and every weight is finite.")
    def finite_weights(paths: PathsResource) -> dg.AssetCheckResult:
        return _result(*model_steps.check_finite_weights(DataStore(dataset, paths.root())))

    return [interactions_valid, embedding_width, graph_integrity, finite_weights]
