"""``gmtrouter serve`` wiring: model source (--model), hot reload, admin token and identity from the
command line and the environment (issue 9 items 3 and 11).

``run_server`` is replaced by a function that keeps the app, which the test then drives in-process;
``registry.resolve_model_version`` against a real (SQLite) MLflow registry is checked separately.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from gmt_model.serving import registry, server
from gmt_model.serving.cli import main
from gmt_model.serving.registry import RegistryError
from test_server_reload import HashEncoder, tiny_checkpoint

ADMIN = "cli-admin-token-0001"
KEY = "gk-cli-serve-user-key-42"


@pytest.fixture
def served(monkeypatch):
    """Run ``gmtrouter serve`` up to uvicorn; the app it would serve is ``served["app"]``."""
    out: dict[str, Any] = {}
    monkeypatch.setattr(server, "run_server", lambda app, host, port, **kw: out.update(app=app, host=host, port=port))
    import gmt_model.data.encoder

    monkeypatch.setattr(gmt_model.data.encoder, "get_encoder", lambda name=None, **kw: HashEncoder())
    for var in ("GMTROUTER_AUTH_TOKEN", "GMTROUTER_ADMIN_TOKEN", "GMTROUTER_API_KEYS_FILE",
                "GMTROUTER_IDENTITY_HEADER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")  # serve --model models:/ keeps a setting (and
    # the test leaves the process environment as it was)
    return out


def test_serve_a_checkpoint_folder_with_reload_and_identity(served, tmp_path, monkeypatch, capsys):
    folder = tiny_checkpoint(tmp_path / "current", seed=51)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({KEY: "ida"}))
    monkeypatch.setenv("GMTROUTER_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("GMTROUTER_API_KEYS_FILE", str(keys))
    assert main(["serve", "--model", str(folder), "--port", "8123"]) == 0
    line = capsys.readouterr().out
    assert f"serving {folder} version sha256:" in line and "identity enforced" in line
    assert served["port"] == 8123 and served["host"] == "127.0.0.1"
    with TestClient(served["app"]) as c:
        assert c.get("/health").json() == {"status": "ok"}  # public: the status only
        v1 = c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["serving"]
        assert v1["uri"] == str(folder) and v1["version"].startswith("sha256:")
        assert c.get("/v1/models").status_code == 401  # keys configured: a key is needed
        user = {"Authorization": f"Bearer {KEY}"}
        r = c.post("/v1/route", json={"query_text": "hello"}, headers=user)
        assert r.status_code == 200 and "ida" in r.json()["reasoning"]
        assert c.post("/v1/route", json={"query_text": "hi", "user_id": "joe"}, headers=user).status_code == 403
        tiny_checkpoint(folder, seed=52)  # a retrained model written over the folder
        assert c.post("/admin/reload", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200 and r.json()["status"] == "reloaded" and r.json()["previous"] == v1["version"]
        assert c.get("/v1/models", headers=user).json()["serving"]["version"] not in (None, v1["version"])


def test_serve_a_registry_alias(served, tmp_path, monkeypatch):
    versions = {"1": tiny_checkpoint(tmp_path / "v1", seed=53), "2": tiny_checkpoint(tmp_path / "v2", seed=54)}
    alias = {"champion": "1"}
    seen: list[tuple[str, str | None]] = []

    def resolve(uri: str, tracking_uri: str | None = None, **kw: Any) -> str:
        seen.append((uri, tracking_uri))
        return alias["champion"]

    monkeypatch.setattr(registry, "resolve_model_version", resolve)
    monkeypatch.setattr(registry, "download_checkpoint",
                        lambda uri, tracking_uri=None, **kw: versions[uri.rsplit("/", 1)[1]])
    cfg = tmp_path / "router.yaml"
    cfg.write_text(yaml.safe_dump({"model_path": {"load_model_path": str(tmp_path / "unused")},
                                   "router": {"device": "cpu", "feedback_log": str(tmp_path / "fb.sqlite")}}))
    monkeypatch.setenv("GMTROUTER_ADMIN_TOKEN", ADMIN)
    uri = "models:/gmtrouter-demo@champion"
    assert main(["serve", "--config", str(cfg), "--model", uri, "--tracking-uri", "http://127.0.0.1:5000"]) == 0
    assert seen == [(uri, "http://127.0.0.1:5000")]
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    app = served["app"]
    with TestClient(app) as c:
        assert c.get("/v1/models").json()["serving"] | {"loaded_at": 0, "reload": 0} == {
            "uri": uri, "version": "1", "loaded_at": 0, "reload": 0}
        router = app.state.holder.router
        assert Path(router.config.checkpoint) == versions["1"] and router.feedback_log is not None  # the YAML's log
        r = c.post("/v1/feedback", json={"user": "kim", "query": "q", "model": "alpha", "rating": 5.0})
        assert r.status_code == 200 and r.json()["feedback_id"] == 1
        alias["champion"] = "2"
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.json() == {"status": "reloaded", "version": "2", "uri": uri, "previous": "1"}
        new = app.state.holder.router
        assert Path(new.config.checkpoint) == versions["2"] and new.history_size("kim") == 1  # feedback replayed


@pytest.mark.filterwarnings("ignore:.*noload.*")  # MLflow's own SQLAlchemy usage
def test_resolve_model_version_against_a_sqlite_registry(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("gmtrouter-demo")
    for i in range(2):
        client.create_model_version("gmtrouter-demo", source=str(tmp_path / f"v{i}"))
    client.set_registered_model_alias("gmtrouter-demo", "champion", "1")
    assert registry.resolve_model_version("models:/gmtrouter-demo@champion", uri) == "1"
    client.set_registered_model_alias("gmtrouter-demo", "champion", "2")
    assert registry.resolve_model_version("models:/gmtrouter-demo@champion", uri) == "2"
    assert registry.resolve_model_version("models:/gmtrouter-demo/1", uri) == "1"
    with pytest.raises(RegistryError, match="challenger"):
        registry.resolve_model_version("models:/gmtrouter-demo@challenger", uri)
    ref = server.registry_source("models:/gmtrouter-demo@champion", uri)()
    assert (ref.uri, ref.version, ref.location) == ("models:/gmtrouter-demo@champion", "2", "models:/gmtrouter-demo/2")
    shutil.rmtree(tmp_path / "mlruns", ignore_errors=True)
