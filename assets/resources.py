"""Dagster resources: data paths, the sentence encoder and MLflow tracking.

All three work with no configuration and no server: data under
``$GMTROUTER_HOME`` (default ``<repo>/.gmtrouter``), the bundled MiniLM
encoder, MLflow on SQLite with a local artifact folder.  Environment
variables override the defaults (``GMTROUTER_HOME``, ``GMTROUTER_ENCODER``,
``GMTROUTER_CACHE_DIR``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI``,
``GMTROUTER_MLFLOW_ARTIFACTS``), and so does resource config in a run's
config (``resources: {mlflow: {config: {tracking_uri: ...}}}``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import dagster as dg

from gmt_model.serving.feedback import is_store_url
from gmt_model.serving.registry import ensure_sqlite_folder

from .storage import REPO_ROOT, data_root

__all__ = [
    "DAGSTER_RUN_TAG",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "ENV_ENCODER",
    "ENV_FEEDBACK_DIR",
    "ENV_MLFLOW_ARTIFACTS",
    "PathsResource",
    "EncoderResource",
    "MLflowResource",
    "MLflowUnavailableError",
    "feedback_log_path",
]

#: MLflow run tag holding the Dagster run id (one MLflow run per Dagster run and dataset)
DAGSTER_RUN_TAG = "dagster_run_id"
#: MLflow 3's experiment kind tag: the UI opens a ``custom_model_development`` experiment on its runs and
#: model-training charts, not on the GenAI view (traces, latency)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
ENV_ENCODER = "GMTROUTER_ENCODER"
ENV_FEEDBACK_DIR = "GMTROUTER_FEEDBACK_DIR"
ENV_MLFLOW_ARTIFACTS = "GMTROUTER_MLFLOW_ARTIFACTS"
_PARAM_MAX = 5000


def _home(home: str | None) -> Path:
    return data_root(home)


def feedback_log_path(dataset: str, home: str | None = None) -> Path | str:
    """The feedback store of ``dataset`` that the sensor and the JSONL step read.

    ``$GMTROUTER_<DATASET>_FEEDBACK_LOG`` (a file, or a ``postgresql://`` URL: returned as a string), else
    ``$GMTROUTER_FEEDBACK_DIR/<dataset>.sqlite``, else
    ``<data root>/feedback/<dataset>.sqlite``.
    """
    env = os.environ.get(f"GMTROUTER_{dataset.upper()}_FEEDBACK_LOG")
    if env:
        if is_store_url(env):
            return env.strip()
        return Path(env).expanduser().resolve()
    folder = os.environ.get(ENV_FEEDBACK_DIR)
    base = Path(folder).expanduser().resolve() if folder else _home(home) / "feedback"
    return base / f"{dataset}.sqlite"


class PathsResource(dg.ConfigurableResource):
    """Where the pipeline reads its configs and writes its data."""

    home: Optional[str] = None
    """Data root; None: $GMTROUTER_HOME, else <repo>/.gmtrouter."""
    configs_dir: Optional[str] = None
    """Folder of datasets.yaml and model_config_train/; None: <repo>/configs."""

    def root(self) -> Path:
        """The absolute data root."""
        return _home(self.home)

    def configs(self) -> Path:
        """The absolute configs folder."""
        return Path(self.configs_dir).expanduser().resolve() if self.configs_dir else REPO_ROOT / "configs"

    def feedback_log(self, dataset: str) -> Path | str:
        """See :func:`feedback_log_path`."""
        return feedback_log_path(dataset, self.home)


class EncoderResource(dg.ConfigurableResource):
    """The sentence encoder that embeds queries and LLM descriptions."""

    name: Optional[str] = None
    """Encoder name or local folder; None: $GMTROUTER_ENCODER, else the bundled all-MiniLM-L6-v2."""
    device: Optional[str] = None
    """torch device for the encoder; None: CUDA when present (torch backend), else the CPU (ONNX backend)."""
    cache_dir: Optional[str] = None
    """Embedding cache; None: $GMTROUTER_CACHE_DIR, else <data root>/cache/encoder."""
    home: Optional[str] = None

    def resolved_name(self, override: str | None = None) -> str | None:
        """The encoder name to use (None means the bundled default)."""
        return override or self.name or os.environ.get(ENV_ENCODER) or None

    def get(self, override: str | None = None) -> Any:
        """A shared ``gmt_model.data.encoder.Encoder`` (``override`` replaces the configured name)."""
        from gmt_model.data.encoder import ENV_CACHE_DIR, get_encoder

        if self.cache_dir:
            cache: str = self.cache_dir
        elif os.environ.get(ENV_CACHE_DIR):
            cache = os.environ[ENV_CACHE_DIR]
        else:
            cache = str(_home(self.home) / "cache" / "encoder")
        return get_encoder(self.resolved_name(override), device=self.device or _cuda_if_present(), cache_dir=cache)


def _cuda_if_present() -> str | None:
    """Batch embedding runs on the GPU when the machine has one (the router keeps its own device setting)."""
    import torch

    return "cuda" if torch.cuda.is_available() else None


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry: one MLflow run per Dagster run and dataset.

    The run is found again by its ``dagster_run_id`` tag (``search_runs``),
    so every asset of a Dagster run logs into the same MLflow run, in any
    process.  Experiments are named ``<experiment_prefix>-<dataset>``.
    """

    tracking_uri: Optional[str] = None
    """None: $MLFLOW_TRACKING_URI, else sqlite:///<data root>/mlflow/mlflow.db."""
    registry_uri: Optional[str] = None
    """None: $MLFLOW_REGISTRY_URI, else the tracking URI."""
    artifact_location: Optional[str] = None
    """Artifact root of new experiments; None: $GMTROUTER_MLFLOW_ARTIFACTS, else
    <data root>/mlflow/artifacts for a local store (the server's default for a remote one)."""
    experiment_prefix: str = "gmtrouter"
    home: Optional[str] = None

    # ----------------------------------------------------------------- URIs
    def resolved_tracking_uri(self) -> str:
        """The tracking URI in use."""
        if self.tracking_uri:
            return ensure_sqlite_folder(self.tracking_uri)
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return ensure_sqlite_folder(os.environ["MLFLOW_TRACKING_URI"])
        folder = _home(self.home) / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}"

    def resolved_registry_uri(self) -> str:
        """The registry URI in use."""
        return self.registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or self.resolved_tracking_uri()

    def resolved_artifact_location(self) -> str | None:
        """Artifact root for new experiments (None: let a remote server decide)."""
        if self.artifact_location:
            return self.artifact_location
        if os.environ.get(ENV_MLFLOW_ARTIFACTS):
            return os.environ[ENV_MLFLOW_ARTIFACTS]
        if self.resolved_tracking_uri().startswith(("http://", "https://", "databricks")):
            return None
        folder = _home(self.home) / "mlflow" / "artifacts"
        folder.mkdir(parents=True, exist_ok=True)
        return folder.as_uri()

    def check_available(self, timeout: float = 10.0) -> None:
        """Fail fast, with one clear line, when a tracking *server* cannot serve this run.

        MLflow's own client retries a dead server for minutes; this asks the server for an experiment
        once (a request that reads its backend store) and raises :class:`MLflowUnavailableError`
        naming the URI and the cause. File and SQLite stores are not checked.
        """
        for uri in dict.fromkeys((self.resolved_tracking_uri(), self.resolved_registry_uri())):
            if uri.startswith(("http://", "https://")):
                _check_server(uri, timeout)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Dagster calls this before each step that uses MLflow: check the server first."""
        self.check_available()

    def client(self) -> Any:
        """An ``mlflow.MlflowClient`` on these URIs."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.resolved_tracking_uri(), registry_uri=self.resolved_registry_uri())

    @contextmanager
    def fluent(self) -> Iterator[None]:
        """Point MLflow's fluent API (``mlflow.start_run``, ``log_model``) at these URIs, then restore.

        ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also export
        ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` to the process
        environment (for subprocesses); both the module state and the
        environment are put back afterwards, so one run's store never leaks
        into later runs or child processes.
        """
        import mlflow
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking, registry = self.resolved_tracking_uri(), self.resolved_registry_uri()
        saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        saved = (getattr(tracking_utils, "_tracking_uri", None), getattr(registry_utils, "_registry_uri", None))
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)
        try:
            yield
        finally:
            if mlflow.active_run() is not None:
                mlflow.end_run()
            tracking_utils._tracking_uri, registry_utils._registry_uri = saved
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # ------------------------------------------------------------------ runs
    def experiment_name(self, dataset: str) -> str:
        """``<prefix>-<dataset>``."""
        return f"{self.experiment_prefix}-{dataset}"

    def experiment_id(self, dataset: str) -> str:
        """The dataset's experiment, created with the local artifact root when missing."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        name = self.experiment_name(dataset)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            if (exp.tags or {}).get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made before the tag existed
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=self.resolved_artifact_location(),
                                            tags={"dataset": dataset, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:
            exp = client.get_experiment_by_name(name)  # created concurrently by another step
            if exp is None:
                raise
            return exp.experiment_id

    def run_for(self, dagster_run_id: str, dataset: str, *, job_name: str | None = None,
                tags: Mapping[str, str] | None = None) -> str:
        """The MLflow run of this Dagster run and dataset (created on first use; status RUNNING)."""
        client = self.client()
        exp_id = self.experiment_id(dataset)
        found = client.search_runs([exp_id], filter_string=f"tags.{DAGSTER_RUN_TAG} = '{dagster_run_id}'",
                                   max_results=1)
        if found:
            run = found[0]
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        all_tags = {DAGSTER_RUN_TAG: dagster_run_id, "dataset": dataset, "dagster_job": job_name or ""}
        all_tags.update(tags or {})
        run = client.create_run(exp_id, tags=all_tags, run_name=f"{job_name or dataset}-{dagster_run_id[:8]}")
        return run.info.run_id

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark the MLflow run FINISHED (or FAILED)."""
        self.client().set_terminated(run_id, status=status)

    @contextmanager
    def run(self, context: Any, dataset: str) -> Iterator[str]:
        """The MLflow run of this Dagster run (``context.run``) and dataset, open for the block: yields its
        id; FINISHED when the block ends, FAILED (and the error re-raised) when it raises."""
        run_id = self.run_for(context.run.run_id, dataset, job_name=context.run.job_name)
        try:
            yield run_id
        except BaseException:
            self.finish(run_id, "FAILED")
            raise
        self.finish(run_id)

    # --------------------------------------------------------------- logging
    def log_params(self, run_id: str, params: Mapping[str, Any], prefix: str = "") -> None:
        """Log parameters (values as text, None as 'None', long values truncated)."""
        from mlflow.entities import Param

        items = [Param(f"{prefix}{k}", _param_text(v)) for k, v in params.items()]
        client = self.client()
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None], step: int = 0) -> None:
        """Log numeric metrics at ``step`` (None values skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None]
        client = self.client()
        for i in range(0, len(items), 500):
            client.log_batch(run_id, metrics=items[i:i + 500])

    def log_metric_rows(self, run_id: str, rows: list[tuple[str, float, int]]) -> None:
        """Log many (key, value, step) metrics in batches."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(s)) for k, v, s in rows]
        client = self.client()
        for i in range(0, len(items), 500):
            client.log_batch(run_id, metrics=items[i:i + 500])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set run tags."""
        from mlflow.entities import RunTag

        self.client().log_batch(run_id, tags=[RunTag(k, _param_text(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload one file."""
        self.client().log_artifact(run_id, os.fspath(path), artifact_path)

    def log_artifacts(self, run_id: str, folder: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a folder."""
        self.client().log_artifacts(run_id, os.fspath(folder), artifact_path)

    def run_url_hint(self, run_id: str) -> str:
        """Where to look at the run (a URL for a server, else the `mlflow ui` command)."""
        uri = self.resolved_tracking_uri()
        if uri.startswith(("http://", "https://")):
            exp = self.client().get_run(run_id).info.experiment_id
            return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
        return f"mlflow ui --backend-store-uri {uri}  (run {run_id})"


class MLflowUnavailableError(RuntimeError):
    """The MLflow tracking server is down, unreachable, or its backend store fails."""


def _check_server(uri: str, timeout: float) -> None:
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request

    url = (f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?"
           + urllib.parse.urlencode({"experiment_name": "Default"}))
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    elif user and password:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    hint = "start it (bash scripts/services.sh up) or point MLFLOW_TRACKING_URI at a running server"
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the configured server
            resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # the store answered: no experiment of that name
            return
        body = exc.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
        raise MLflowUnavailableError(f"MLflow tracking server {uri} answers HTTP {exc.code} (its backend store "
                                     f"may be down): {body[:200]}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MLflowUnavailableError(f"MLflow tracking server {uri} is not reachable ({reason}); {hint}") from None


def _param_text(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
    return text if len(text) <= _PARAM_MAX else text[: _PARAM_MAX - 3] + "..."
