"""The pipeline's project-local data root: layout, manifests and atomic commits.

Everything the pipeline writes lives under one folder, ``$GMTROUTER_HOME``
(default ``<repo>/.gmtrouter``)::

    downloads/<dataset>/        fetched source files (kept: resumed and reused)
    raw/<dataset>/              raw data ready for conversion + manifest.json
    interactions/<dataset>/     interactions.parquet, texts.parquet, llms.parquet (+ embeddings.parquet of a
                                JSONL import) + manifest.json (counts, size and sha256 of every file)
    embedding_shards/<dataset>/ shard-<k>.parquet + shard-<k>.json, one per embedding partition (hex digit k)
    embeddings/<dataset>/       embeddings.parquet (one vector per distinct text) + manifest.json
    graph/<dataset>/            Parquet graph tables + manifest.json
    training/<dataset>/<run>/   work folder of a training run (resumable; removed on success)
    models/<dataset>/           gmtrouter/ and user_blind/ checkpoints, curves + manifest.json
    evaluation/<dataset>/       report.json, report.md + manifest.json
    routers/<dataset>/current/  the champion checkpoint the router loads by default
    mlflow/mlflow.db            MLflow tracking + registry (SQLite), unless MLFLOW_TRACKING_URI is set
    mlflow/artifacts/           MLflow artifact store
    feedback/<dataset>.sqlite   default feedback log read by the retraining sensor
    cache/encoder/              embedding cache (unless GMTROUTER_CACHE_DIR is set)

Every asset builds its output in a hidden staging folder next to its target
and swaps it into place with one rename (``commit``), manifest included, so
a failing step leaves the previous materialization exactly as it was.

No Dagster or MLflow here: plain paths and JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gmt_model.atomic import replace_dir, write_text_atomic
from gmt_model.paths import ENV_HOME, HOME_DIRNAME

__all__ = [
    "DATASETS",
    "ENV_HOME",
    "MANIFEST",
    "REPO_ROOT",
    "ManifestMissingError",
    "DataStore",
    "data_root",
    "repo_root",
    "write_json_atomic",
    "read_json",
    "copy_tree",
]

#: datasets the pipeline knows (one asset group and one job each)
DATASETS: tuple[str, ...] = ("demo", "mt_bench", "chatbot_arena", "gsm8k", "mmlu")
MANIFEST = "manifest.json"


def repo_root() -> Path:
    """The project folder (holding ``pyproject.toml``), else the current folder.

    ``assets`` and ``pipelines`` are folders of the repository (the Dagster code
    location), never installed, so this is the one place that locates the
    repository; the library (``gmt_model``) never does."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


REPO_ROOT = repo_root()


def data_root(home: str | os.PathLike[str] | None = None) -> Path:
    """``home``, else ``$GMTROUTER_HOME``, else ``<repo>/.gmtrouter`` (absolute)."""
    if home:
        return Path(home).expanduser().resolve()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT / HOME_DIRNAME).resolve()


class ManifestMissingError(FileNotFoundError):
    """An upstream step has not been materialized (no manifest)."""


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as JSON: temp file in the same folder, fsync, ``os.replace``."""
    target = Path(path)
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=True)
    return write_text_atomic(target, text + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file, naming the file on error."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


def copy_tree(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy folder ``src`` to ``dst`` (which must not exist), files fsynced."""
    src_p, dst_p = Path(src), Path(dst)
    if not src_p.is_dir():
        raise FileNotFoundError(f"{src_p}: folder to copy does not exist")
    shutil.copytree(src_p, dst_p, symlinks=False)
    for dirpath, _dirs, files in os.walk(dst_p):
        for name in files:
            with open(Path(dirpath) / name, "rb+") as fh:
                os.fsync(fh.fileno())
    return dst_p


class DataStore:
    """Paths and atomic commits under one data root."""

    AREAS = ("downloads", "raw", "interactions", "embeddings", "graph", "training", "models", "evaluation",
             "routers")

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = data_root(root)

    def __repr__(self) -> str:
        return f"DataStore({str(self.root)!r})"

    # ------------------------------------------------------------------ paths
    def area(self, area: str, dataset: str) -> Path:
        """The committed folder of ``area`` for ``dataset`` (may not exist yet)."""
        if area not in self.AREAS:
            raise ValueError(f"unknown area {area!r}; expected one of {self.AREAS}")
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
        return self.root / area / dataset

    def downloads(self, dataset: str) -> Path:
        """Persistent download folder of ``dataset`` (partial downloads resume from here)."""
        p = self.area("downloads", dataset)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def training_dir(self, dataset: str, run_key: str) -> Path:
        """Work folder of one training run (resumed when the same run key trains again)."""
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in run_key) or "run"
        return self.area("training", dataset) / safe

    def router_dir(self, dataset: str) -> Path:
        """The stable local path of the published (champion) router checkpoint."""
        return self.area("routers", dataset) / "current"

    @property
    def cache_dir(self) -> Path:
        """Default embedding cache folder."""
        return self.root / "cache" / "encoder"

    # -------------------------------------------------------------- manifests
    def manifest_path(self, area: str, dataset: str) -> Path:
        """Where the manifest of ``area`` / ``dataset`` lives."""
        if area == "routers":
            return self.router_dir(dataset) / MANIFEST
        return self.area(area, dataset) / MANIFEST

    def read_manifest(self, area: str, dataset: str, *, asset: str | None = None) -> dict[str, Any]:
        """The committed manifest; ``ManifestMissingError`` says which asset to materialize first."""
        p = self.manifest_path(area, dataset)
        if not p.is_file():
            what = asset or area
            raise ManifestMissingError(
                f"{p} does not exist: materialize {dataset}/{what} first "
                f"(e.g. `dagster job execute -j train_{dataset}`), or check {ENV_HOME}={self.root}")
        doc = read_json(p)
        if not isinstance(doc, dict):
            raise ValueError(f"{p}: expected a JSON object")
        return doc

    def resolve(self, area: str, dataset: str, rel_or_abs: str) -> Path:
        """A path stored in a manifest: relative ones are inside the committed folder."""
        p = Path(rel_or_abs)
        if p.is_absolute():
            return p
        base = self.router_dir(dataset) if area == "routers" else self.area(area, dataset)
        return base / p

    # ----------------------------------------------------------------- commit
    @contextmanager
    def staging(self, area: str, dataset: str) -> Iterator[Path]:
        """A fresh hidden folder next to the target; removed unless committed.

        Use with :meth:`commit`::

            with store.staging("interactions", ds) as tmp:
                ... write into tmp ...
                store.commit(tmp, "interactions", ds, manifest)
        """
        target = self.router_dir(dataset) if area == "routers" else self.area(area, dataset)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.staging-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, staged: Path, area: str, dataset: str, manifest: Mapping[str, Any]) -> Path:
        """Write ``manifest`` into ``staged``, then swap ``staged`` into place atomically."""
        target = self.router_dir(dataset) if area == "routers" else self.area(area, dataset)
        doc = dict(manifest)
        doc.setdefault("dataset", dataset)
        doc.setdefault("area", area)
        doc.setdefault("committed_at", time.time())
        write_json_atomic(staged / MANIFEST, doc)
        os.chmod(staged, 0o755)
        replace_dir(staged, target)
        return target

    def relative(self, staged: Path, path: str | os.PathLike[str]) -> str:
        """``path`` relative to ``staged`` when inside it (it moves with the commit), else absolute."""
        p = Path(path).resolve()
        try:
            return str(p.relative_to(staged.resolve()))
        except ValueError:
            return str(p)
