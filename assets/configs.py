"""Typed run configuration of each asset (``dg.Config``).

In a run config file the op of an asset is ``<dataset>__<asset>``::

    ops:
      mt_bench__raw_data:
        config: {kind: mt_bench_split, url: "file:///data/mt_bench_human"}
      mt_bench__trained_model:
        config: {epochs: 50, seed: 1}

Every field is optional; ``None`` keeps the value from ``configs/``.  Relative paths (``url``,
``sources_file``, ``download_dir``, ``feedback_log``, ``config_path``) are read from the repository root,
whatever the working directory (``assets.storage.repo_path``).
"""

from __future__ import annotations

from typing import Any, List, Optional

import dagster as dg

from .storage import repo_path

__all__ = [
    "RawDataConfig",
    "InteractionsConfig",
    "EmbeddingConfig",
    "GraphConfig",
    "TrainModelConfig",
    "EvaluationConfig",
    "PublishConfig",
]


class RawDataConfig(dg.Config):
    """Source overrides for ``configs/datasets.yaml`` (strongest of all; see its comments)."""

    sources_file: Optional[str] = None
    """Dataset source config; None: <configs>/datasets.yaml."""
    kind: Optional[str] = None
    """demo, gmtrouter_release, jsonl_splits, mt_bench_split, mt_bench_hf or chatbot_arena."""
    url: Optional[str] = None
    """http(s):// or file:// URL, or a local path (a local folder is read in place)."""
    sha256: Optional[str] = None
    path_in_archive: Optional[str] = None
    filename: Optional[str] = None
    size: Optional[str] = None
    """demo preset: tiny, small, medium or large."""
    seed: Optional[int] = None
    """demo generation seed."""
    download_dir: Optional[str] = None
    """None: <data root>/downloads/<dataset> (partial downloads resume from there)."""
    retries: Optional[int] = None
    timeout: Optional[float] = None

    def overrides(self) -> dict[str, Any]:
        """The source overrides that are set (relative local paths made absolute from the repository root)."""
        keys = ("kind", "url", "sha256", "path_in_archive", "filename", "size", "seed", "download_dir",
                "retries", "timeout")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        for k in ("url", "download_dir"):
            if k in out:
                out[k] = repo_path(out[k])
        return out

    def sources_path(self) -> str | None:
        """``sources_file``, a relative one read from the repository root."""
        return repo_path(self.sources_file)


class InteractionsConfig(dg.Config):
    """Conversion (or JSONL import), splitting and the feedback merge; the encoder the data is embedded with."""

    encoder: Optional[str] = None
    """Encoder name or folder; None: the encoder resource's (all-MiniLM-L6-v2 by default). Recorded in the
    manifest: text_embeddings and embedding_shards embed with it."""
    split_seed: int = 0
    """Seed of the deterministic per-user split."""
    split_fractions: List[float] = [0.7, 0.1, 0.2]
    """(training, valid, test) share of each user's groups (every user keeps training history)."""
    min_user_groups: int = 3
    """Users with fewer training groups are reported as thin."""
    merge_feedback: bool = True
    """Merge comparisons from the dataset's feedback log into the training split."""
    feedback_log: Optional[str] = None
    """None: $GMTROUTER_<DATASET>_FEEDBACK_LOG, $GMTROUTER_FEEDBACK_DIR/<dataset>.sqlite or
    <data root>/feedback/<dataset>.sqlite."""


    def feedback_log_path(self) -> str | None:
        """``feedback_log``, a relative one read from the repository root."""
        return repo_path(self.feedback_log)


class EmbeddingConfig(dg.Config):
    """How the embedding store is written."""

    dtype: str = "float32"
    """'float32' or 'float16' (half the size; loss measured in docs/benchmarks.md)."""


class GraphConfig(dg.Config):
    """Which relations the Parquet graph materialises (edge tables)."""

    relations: str = "full"
    """'full' (all 22 relations) or 'reference' (the reference's five)."""


class TrainModelConfig(dg.Config):
    """Training: a seed-style YAML plus overrides of its fields."""

    config_path: Optional[str] = None
    """None: configs/model_config_train/<dataset>.yaml when present, else gmtrouter.yaml."""
    epochs: Optional[int] = None
    lr: Optional[float] = None
    seed: Optional[int] = None
    eval_every: Optional[int] = None
    save_every: Optional[int] = None
    prediction_count: Optional[int] = None
    record_per_user: Optional[int] = None
    hidden_dim: Optional[int] = None
    num_gnn_layers: Optional[int] = None
    dropout: Optional[float] = None
    objective: Optional[str] = None
    relations: Optional[str] = None
    device: Optional[str] = None
    """None: CUDA when available, else CPU."""
    train_user_blind: bool = True
    """Also train the user-blind ablation (personalization off) for the evaluation."""
    blind_epochs: Optional[int] = None
    """Epochs of the user-blind model; None: the same as the personalized model."""
    resume: bool = True
    """Resume from the last periodic checkpoint of this run (re-execution after a kill)."""
    log_checkpoints: bool = True
    """Upload both checkpoints to MLflow as run artifacts."""

    def overrides(self) -> dict[str, Any]:
        """Flat TrainConfig overrides that are set."""
        keys = ("epochs", "lr", "seed", "eval_every", "save_every", "prediction_count", "record_per_user",
                "hidden_dim", "num_gnn_layers", "dropout", "objective", "relations", "device")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


    def config_file(self) -> str | None:
        """``config_path``, a relative one read from the repository root."""
        return repo_path(self.config_path)


class EvaluationConfig(dg.Config):
    """Test evaluation."""

    n_resamples: int = 1000
    """Bootstrap resamples (over users) of the 95% confidence intervals."""
    seed: int = 0
    cold_start: bool = True
    knn_k: int = 20
    device: Optional[str] = None


class PublishConfig(dg.Config):
    """The promotion gate and the local copy."""

    metric: str = "auc"
    """Gate metric on the test split: 'auc' or 'accuracy'."""
    min_gain_over_baseline: float = 0.0
    """The challenger must beat global_bt by more than this."""
    min_gain_over_champion: float = 0.0
    """The challenger must reach the current champion's score plus this (ties go to the newer model)."""
    champion_eval_resamples: int = 200
    """Bootstrap resamples when re-evaluating the current champion on this test split."""
