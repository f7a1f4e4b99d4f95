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

A :class:`DataStore` is bound to one dataset: ``DataStore("demo").area("graph")`` is
``<root>/graph/demo``.  Every asset builds its output in a hidden staging folder next to its target
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

from gmt_model.atomic import copy_tree, replace_dir, write_text_atomic
from gmt_model.data import columnar as C
from gmt_model.paths import ENV_HOME
from gmt_model.paths import data_root as _library_data_root

__all__ = [
    "AREAS",
    "DATASETS",
    "ENV_HOME",
    "MANIFEST",
    "REPO_ROOT",
    "ManifestMissingError",
    "DataStore",
    "data_root",
    "repo_root",
    "repo_path",
    "write_json_atomic",
    "read_json",
    "copy_tree",
]

#: datasets the pipeline knows (one asset group and one job each)
DATASETS: tuple[str, ...] = ("demo", "mt_bench", "chatbot_arena", "gsm8k", "mmlu")
MANIFEST = "manifest.json"
#: area -> the asset that commits it (named in "materialize ... first" errors)
AREAS: dict[str, str] = {"downloads": "raw_data", "raw": "raw_data", "interactions": "interactions",
                         "embedding_shards": "embedding_shards", "embeddings": "text_embeddings",
                         "graph": "graph_parquet", "training": "trained_model", "models": "trained_model",
                         "evaluation": "test_evaluation", "routers": "published_router"}


def repo_root() -> Path:
    """The project folder (holding ``pyproject.toml``), else the current folder.

    ``assets`` and ``pipelines`` are folders of the repository (the Dagster code
    location), never installed, so this is the one place that locates the
    repository; the library (``gmt_model``) never does."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


REPO_ROOT = repo_root()


def data_root(home: str | os.PathLike[str] | None = None) -> Path:
    """The pipeline's data root: ``gmt_model.paths.data_root`` with the repository as its base
    (``home``, else ``$GMTROUTER_HOME``, else ``<repo>/.gmtrouter``)."""
    return _library_data_root(home, base=REPO_ROOT)


def repo_path(value: str | os.PathLike[str] | None) -> str | None:
    """A path from a run config or a pipeline setting: a relative one is read from the repository root
    (not the working directory), so a run config works from any folder; absolute paths, ``~`` paths and
    URLs (``scheme://...``) are kept as they are."""
    if value is None or value == "":
        return None if value is None else ""
    text = os.fspath(value)
    if "://" in text:
        return text
    p = Path(text).expanduser()
    return str(p if p.is_absolute() else (REPO_ROOT / p).resolve())


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


class DataStore:
    """One dataset's folders under the data root: paths, manifests and atomic commits.

    ``DataStore("demo")`` uses the default root (:func:`data_root`); ``DataStore("demo", home)`` another.
    """

    def __init__(self, dataset: str, home: str | os.PathLike[str] | None = None) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
        self.dataset = dataset
        self.root = data_root(home)

    def __repr__(self) -> str:
        return f"DataStore({self.dataset!r}, {str(self.root)!r})"

    # ------------------------------------------------------------------ paths
    def area(self, area: str) -> Path:
        """The committed folder of ``area`` (may not exist yet); ``routers`` is ``routers/<dataset>/current``."""
        if area not in AREAS:
            raise ValueError(f"unknown area {area!r}; expected one of {tuple(AREAS)}")
        if area == "routers":
            return self.root / area / self.dataset / "current"
        return self.root / area / self.dataset

    def downloads(self) -> Path:
        """Persistent download folder (partial downloads resume from here); created."""
        p = self.area("downloads")
        p.mkdir(parents=True, exist_ok=True)
        return p

    def training_dir(self, run_key: str) -> Path:
        """Work folder of one training run (resumed when the same run key trains again)."""
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in run_key) or "run"
        return self.area("training") / safe

    def router_dir(self) -> Path:
        """The stable local path of the published (champion) router checkpoint."""
        return self.area("routers")

    # -------------------------------------------------------------- manifests
    def manifest_path(self, area: str) -> Path:
        """Where the manifest of ``area`` lives."""
        return self.area(area) / MANIFEST

    def has(self, area: str) -> bool:
        """Whether ``area`` has been committed (its manifest exists)."""
        return self.manifest_path(area).is_file()

    def read_manifest(self, area: str) -> dict[str, Any]:
        """The committed manifest; ``ManifestMissingError`` says which asset to materialize first."""
        p = self.manifest_path(area)
        if not p.is_file():
            raise ManifestMissingError(
                f"{p} does not exist: materialize {self.dataset}/{AREAS[area]} first "
                f"(e.g. `dagster job execute -j train_{self.dataset}`), or check {ENV_HOME}={self.root}")
        doc = read_json(p)
        if not isinstance(doc, dict):
            raise ValueError(f"{p}: expected a JSON object")
        return doc

    def verify(self, area: str) -> dict[str, Any]:
        """The committed manifest of ``area``, after checking every file it lists (size and sha256)."""
        m = self.read_manifest(area)
        C.verify_files(self.area(area), m.get("files") or {}, manifest=self.manifest_path(area))
        return m

    def resolve(self, area: str, rel_or_abs: str) -> Path:
        """A path stored in a manifest: relative ones are inside the committed folder."""
        p = Path(rel_or_abs)
        return p if p.is_absolute() else self.area(area) / p

    # ----------------------------------------------------------------- commit
    @contextmanager
    def staging(self, area: str) -> Iterator[Path]:
        """A fresh hidden folder next to the target; removed unless committed.

        Use with :meth:`commit`::

            with store.staging("interactions") as tmp:
                ... write into tmp ...
                store.commit(tmp, "interactions", manifest)
        """
        target = self.area(area)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.staging-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, staged: Path, area: str, manifest: Mapping[str, Any]) -> Path:
        """Write ``manifest`` into ``staged``, then swap ``staged`` into place atomically."""
        target = self.area(area)
        write_json_atomic(staged / MANIFEST, self._stamp(area, manifest))
        os.chmod(staged, 0o755)
        replace_dir(staged, target)
        return target

    def commit_copy(self, src: str | os.PathLike[str], area: str, manifest: Mapping[str, Any]) -> Path:
        """Copy folder ``src`` into ``area`` with ``manifest``, atomically (``gmt_model.atomic.copy_dir_atomic``)."""
        from gmt_model.atomic import copy_dir_atomic

        doc = self._stamp(area, manifest)
        return copy_dir_atomic(src, self.area(area), prepare=lambda tmp: write_json_atomic(tmp / MANIFEST, doc))

    def _stamp(self, area: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        doc = dict(manifest)
        doc.setdefault("dataset", self.dataset)
        doc.setdefault("area", area)
        doc.setdefault("committed_at", time.time())
        return doc

    def relative(self, staged: Path, path: str | os.PathLike[str]) -> str:
        """``path`` relative to ``staged`` when inside it (it moves with the commit), else absolute."""
        p = Path(path).resolve()
        try:
            return str(p.relative_to(staged.resolve()))
        except ValueError:
            return str(p)
