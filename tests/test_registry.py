"""gmt_model.serving.registry: the router as a pickle-free MLflow pyfunc model, and load_router."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gmt_model.serving import registry as R
from gmt_model.method.checkpoint import History, save_checkpoint
from gmt_model.data.encoder import DEFAULT_ENCODER_NAME
from gmt_model.method.model import GMTModel, ModelConfig

mlflow = pytest.importorskip("mlflow")

LLMS = ["model-a", "model-b", "model-c"]


def make_checkpoint(path: Path, users: list[str], seed: int) -> Path:
    """A small random GMTRouter checkpoint (MiniLM width, so routing can embed real queries)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = ModelConfig(embed_dim=384, hidden_dim=16, num_gnn_layers=1, heads=4, predictor_dim=16, predictor_heads=4)
    model = GMTModel(cfg)
    n = 2 * len(users)
    q = rng.normal(size=(n, 384)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    llm_emb = rng.normal(size=(len(LLMS), 384)).astype(np.float32)
    hist = History(user=np.repeat(np.arange(len(users)), 2).astype(np.int64),
                   llm=np.tile(np.arange(2), len(users)).astype(np.int64),
                   rating=rng.random(n).astype(np.float32), prev=np.full(n, -1, dtype=np.int64),
                   query_emb=q, llm_emb=llm_emb)
    return save_checkpoint(path, model, users=users, llms=LLMS, history=hist, encoder=DEFAULT_ENCODER_NAME,
                           rating_scale=(0.0, 1.0))


def register(tmp: Path, ckpt: Path, name: str) -> tuple[str, str]:
    """Log ``ckpt`` as pyfunc model ``name`` in a fresh SQLite store under ``tmp``; alias champion."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("registry-test", artifact_location=(tmp / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow.start_run(experiment_id=exp):
        info = R.log_router_model(ckpt, registered_model_name=name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, "champion", version)
    return uri, version


def isolate_mlflow(mp: pytest.MonkeyPatch) -> None:
    """Undo, after the test, what mlflow.set_tracking_uri / set_registry_uri leave behind
    (module state and the exported MLFLOW_* environment variables)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        mp.setenv(k, "")  # records the original value (or its absence) for undo
        mp.delenv(k)
    mp.setattr(tracking_utils, "_tracking_uri", None)
    mp.setattr(registry_utils, "_registry_uri", None)


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GMTROUTER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GMTROUTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    isolate_mlflow(monkeypatch)
    return tmp_path


def test_parse_model_uri() -> None:
    assert R.parse_model_uri("models:/gmtrouter-demo@champion") == ("gmtrouter-demo", "champion", None)
    assert R.parse_model_uri("models:/gmtrouter-mt_bench/3") == ("gmtrouter-mt_bench", None, "3")
    for bad in ("gmtrouter-demo@champion", "models:/a/b/c", "models:/x@", "runs:/abc/router", ""):
        with pytest.raises(R.RegistryError, match="expected 'models:/<name>@<alias>'"):
            R.parse_model_uri(bad)
    assert R.registered_model_name("mt_bench") == "gmtrouter-mt_bench"
    with pytest.raises(ValueError):
        R.registered_model_name("a/b")


def test_default_tracking_uri_follows_environment(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert R.default_tracking_uri() == f"sqlite:///{(env / 'home').resolve()}/mlflow/mlflow.db"
    assert (env / "home" / "mlflow").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert R.default_tracking_uri() == "http://127.0.0.1:5999"
    assert R.default_tracking_uri(env / "other").endswith("/other/mlflow/mlflow.db")


def test_model_code_and_requirements(tmp_path: Path) -> None:
    code = R.write_model_code(tmp_path / "m.py").read_text()
    assert "set_model(GMTRouterPyfunc())" in code and "pickle" not in code
    reqs = R.pip_requirements()
    names = {r.split("==")[0] for r in reqs}
    assert {"mlflow", "torch", "torch-geometric", "safetensors", "sentence-transformers"} <= names
    assert all("==" in r for r in reqs)
    cls = R.get_pyfunc_class()
    assert issubclass(cls, mlflow.pyfunc.PythonModel) and R.GMTRouterPyfunc is cls
    # registered models import the class from the package root (layout-independent)
    import gmt_model

    assert "from gmt_model import GMTRouterPyfunc" in code and gmt_model.GMTRouterPyfunc is cls


def test_pyfunc_model_is_pickle_free_and_routes(env: Path) -> None:
    ckpt = make_checkpoint(env / "ckpt", ["alice", "bob"], seed=1)
    uri, version = register(env / "store", ckpt, "gmtrouter-regtest")
    model_uri = "models:/gmtrouter-regtest@champion"

    # the registered model folder holds code + checkpoint, no pickled Python object
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/gmtrouter-regtest/{version}",
                                                     dst_path=str(env / "dl"), tracking_uri=uri, registry_uri=uri))
    files = [p.name for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert {"config.json", "model.safetensors", "history.safetensors", "MLmodel"} <= set(files)
    mlmodel = (local / "MLmodel").read_text()
    assert "model_code_path" in mlmodel  # models from code: MLflow stores no python_model.pkl

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyf = mlflow.pyfunc.load_model(model_uri)
    rows = pd.DataFrame([{"user_id": "alice", "query_text": "Write a haiku about autumn"},
                         {"user_id": "stranger", "query_text": "Prove that sqrt(2) is irrational"}])
    out = pyf.predict(rows)
    assert list(out.columns) == list(R.OUTPUT_COLUMNS)
    assert out["user_id"].tolist() == ["alice", "stranger"]
    assert out["cold_start"].tolist() == [False, True]
    for _, r in out.iterrows():
        scores = json.loads(r["scores"])
        assert set(scores) == set(LLMS)
        assert abs(sum(scores.values()) - 1.0) < 1e-5
        assert r["model_name"] == max(scores, key=scores.get)
        assert r["confidence"] == pytest.approx(scores[r["model_name"]])

    router = R.load_router(model_uri, tracking_uri=uri)
    direct = router.route_batch(rows.to_dict(orient="records"))
    assert [d["model_name"] for d in direct] == out["model_name"].tolist()
    assert [d["confidence"] for d in direct] == pytest.approx(out["confidence"].tolist(), abs=1e-6)
    assert router.users == ["alice", "bob"]


def test_pyfunc_requires_user_and_query(env: Path) -> None:
    ckpt = make_checkpoint(env / "ckpt", ["alice"], seed=2)
    uri, _ = register(env / "store", ckpt, "gmtrouter-regtest")
    model = R.get_pyfunc_class()()

    class Ctx:
        artifacts = {R.CHECKPOINT_ARTIFACT: str(ckpt)}
        model_config = {"device": "cpu"}

    model.load_context(Ctx())
    with pytest.raises(ValueError, match="column 'query_text' is required"):
        model.predict(None, pd.DataFrame([{"user_id": "alice"}]))
    with pytest.raises(TypeError, match="expected a DataFrame"):
        model.predict(None, "just text")
    out = model.predict(None, [{"user_id": "alice", "query_text": "hello", "session_id": "s1", "turn": 1}])
    assert out.loc[0, "model_name"] in LLMS


def test_load_router_cache_is_per_store(env: Path) -> None:
    """Two stores both hold gmtrouter-x v1; each load gets its own checkpoint, not a stale cached one."""
    first = make_checkpoint(env / "c1", ["u1", "u2"], seed=3)
    second = make_checkpoint(env / "c2", ["v1", "v2", "v3"], seed=4)
    uri1, v1 = register(env / "s1", first, "gmtrouter-x")
    uri2, v2 = register(env / "s2", second, "gmtrouter-x")
    assert v1 == v2 == "1"
    r1 = R.load_router("models:/gmtrouter-x@champion", tracking_uri=uri1)
    r2 = R.load_router("models:/gmtrouter-x@champion", tracking_uri=uri2)
    assert r1.users == ["u1", "u2"]
    assert r2.users == ["v1", "v2", "v3"]
    again = R.download_checkpoint("models:/gmtrouter-x/1", uri1)
    assert (again / "config.json").read_text() == (first / "config.json").read_text()


def test_unknown_model_is_a_clear_error(env: Path) -> None:
    ckpt = make_checkpoint(env / "ckpt", ["alice"], seed=5)
    uri, _ = register(env / "store", ckpt, "gmtrouter-regtest")
    with pytest.raises(R.RegistryError, match="gmtrouter-nothing@champion: not found"):
        R.load_router("models:/gmtrouter-nothing@champion", tracking_uri=uri)
    with pytest.raises(R.RegistryError, match="not found"):
        R.load_router("models:/gmtrouter-regtest@staging", tracking_uri=uri)
