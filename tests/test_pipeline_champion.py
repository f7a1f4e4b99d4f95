"""pipelines.champion: an operator's view of the champion alias, rollback and set (SQLite store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from pipelines import champion  # noqa: E402

NAME = "gmtrouter-demo"


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Versions 1..4 of gmtrouter-demo: 1, 2 and 4 passed their gate, 3 did not; champion v4."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("GMTROUTER_HOME", str(tmp_path / "home"))
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    for v, promoted in ((1, "true"), (2, "true"), (3, "false"), (4, "true")):
        mv = client.create_model_version(NAME, source=f"file:///nowhere/{v}")
        assert str(mv.version) == str(v)
        client.set_model_version_tag(NAME, mv.version, "promoted", promoted)
        client.set_model_version_tag(NAME, mv.version, "test_auc", str(0.7 + v / 100))
    client.set_registered_model_alias(NAME, "champion", "4")
    return uri


def champ(uri: str) -> str:
    return str(mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(NAME, "champion")
               .version)


def test_rollback_skips_versions_that_failed_their_gate(store: str, capsys: pytest.CaptureFixture) -> None:
    assert champion.main(["rollback", "demo"]) == 0
    assert champ(store) == "2"  # v3 was never promoted
    assert "gmtrouter-demo: champion v4 -> v2" in capsys.readouterr().out
    assert champion.main(["rollback", "demo"]) == 0 and champ(store) == "1"
    assert champion.main(["rollback", "demo"]) == 1 and champ(store) == "1"
    assert "no promoted version older than the champion v1" in capsys.readouterr().err
    tags = mlflow.MlflowClient(tracking_uri=store).get_model_version(NAME, "1").tags
    assert tags["champion_set_by"] == "rollback" and tags["champion_set_at"].endswith("Z")


def test_set_and_show(store: str, capsys: pytest.CaptureFixture) -> None:
    assert champion.main(["set", "demo", "3"]) == 0 and champ(store) == "3"
    assert champion.main(["set", "demo", "9"]) == 1 and champ(store) == "3"
    assert "gmtrouter-demo has no version 9" in capsys.readouterr().err
    assert champion.main(["show", "demo"]) == 0
    out = capsys.readouterr().out
    assert "v3" in out and "champion" in out.split("v3", 1)[1].splitlines()[0]
    assert champion.main(["show", "nothing"]) == 1


def test_rollback_can_refresh_the_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_registry import isolate_mlflow, make_checkpoint, register

    isolate_mlflow(monkeypatch)
    users = ["user_0001", "user_0002"]
    uri, v1 = register(tmp_path, make_checkpoint(tmp_path / "c1", users, seed=1), NAME)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_model_version_tag(NAME, v1, "promoted", "true")
    with mlflow.start_run(experiment_id=client.get_experiment_by_name("registry-test").experiment_id):
        from gmt_model.serving.registry import log_router_model

        v2 = str(log_router_model(make_checkpoint(tmp_path / "c2", users, seed=2),
                                  registered_model_name=NAME).registered_model_version)
    client.set_registered_model_alias(NAME, "champion", v2)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("GMTROUTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GMTROUTER_CACHE_DIR", str(tmp_path / "cache"))
    assert champion.main(["rollback", "demo", "--update-local"]) == 0
    assert champ(uri) == v1
    local = tmp_path / "home" / "routers" / "demo" / "current"
    assert json.loads((local / "manifest.json").read_text())["version"] == v1
    assert (local / "config.json").read_bytes() == (tmp_path / "c1" / "config.json").read_bytes()
