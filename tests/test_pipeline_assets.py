"""The pipeline's asset modules without training: run-config paths read from the repository root whatever
the working directory, a source error naming the run config that set the URL, the MLflow-run context
manager, the experiment kind tag, and the inline training curves."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

dg = pytest.importorskip("dagster")
mlflow = pytest.importorskip("mlflow")

from assets import build_dataset_assets  # noqa: E402
from assets.metadata import CURVES_INLINE_MAX, curves_md  # noqa: E402
from assets.resources import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MLflowResource, PathsResource  # noqa: E402
from assets.storage import REPO_ROOT  # noqa: E402
from gmt_model.data.jsonl import write_jsonl  # noqa: E402
from gmt_model.method.schema import SPLIT_FILES  # noqa: E402

from conftest import planted_records  # noqa: E402


class NoMLflow(dg.ConfigurableResource):
    @contextlib.contextmanager
    def run(self, *a, **k):
        yield "run"

    def log_params(self, *a, **k):
        pass


def _raw(tmp_path: Path, url: str, tags: dict | None = None):
    raw = build_dataset_assets("demo")[0]
    return dg.materialize([raw], instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, tags=tags,
                          resources={"paths": PathsResource(home=str(tmp_path / "data")), "mlflow": NoMLflow()},
                          run_config={"ops": {"demo__raw_data": {"config": {"kind": "jsonl_splits", "url": url}}}})


def _failure(result) -> str:
    return "\n".join(ev.event_specific_data.error.to_string() for ev in result.all_events
                     if ev.event_type_value == "STEP_FAILURE")


def test_run_config_paths_are_read_from_the_repository_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "splits"
    for s, rows in planted_records(n_users=3, groups_per_user=(3, 4), dim=8).items():
        write_jsonl(folder / SPLIT_FILES[s], rows)
    rel = os.path.relpath(folder, REPO_ROOT)  # as a run config in the repository would write it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # e.g. the Dagster daemon, or a shell in another folder
    result = _raw(tmp_path, rel)
    assert result.success, _failure(result)
    mat = next(ev.materialization for ev in result.get_asset_materialization_events())
    assert mat.metadata["path"].value == str(folder.resolve())
    # a missing source names the run config's setting (and the file, when run_job passed it), not datasets.yaml
    result = _raw(tmp_path, "no/such/folder", tags={"gmtrouter/run_config": "/cfg/run.yaml"})
    assert not result.success
    text = _failure(result)
    assert str(REPO_ROOT / "no" / "such" / "folder") in text
    assert "set ops.demo__raw_data.config.url in the run config /cfg/run.yaml" in text, text
    assert "datasets.demo.url" not in text


def test_mlflow_run_context_and_experiment_kind(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    old = client.create_experiment("gmtrouter-mt_bench")  # made before the kind tag existed
    res = MLflowResource(home=str(tmp_path), tracking_uri=uri)

    class Run:
        run_id, job_name = "dagster-run-1", "train_demo"

    ctx = type("Ctx", (), {"run": Run})()
    with res.run(ctx, "demo") as run_id:
        pass
    assert client.get_run(run_id).info.status == "FINISHED"
    exp = client.get_experiment_by_name("gmtrouter-demo")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    with pytest.raises(KeyError):
        with res.run(ctx, "demo") as again:
            raise KeyError("boom")
    assert again == run_id and client.get_run(run_id).info.status == "FAILED"  # the same run, marked FAILED
    res.experiment_id("mt_bench")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_training_curves_render_inline_for_long_runs() -> None:
    def hist(n: int, up: bool) -> list[dict]:
        return [{"epoch": float(e), "train_loss": 1.0 / e, **({"val_auc": 0.5 + 0.4 * e / n,
                                                               "val_accuracy": 0.5 + 0.3 * e / n} if e % 5 == 0 else {})}
                for e in range(1, n + 1)]

    for n in (10, 150, 5000):
        md = curves_md({"gmtrouter": hist(n, True), "user_blind": hist(n, True)})
        assert len(md) <= CURVES_INLINE_MAX < 1000, (n, len(md))
        assert md.count("\n") == 1 + 6  # header, rule, 3 series x 2 models
    md = curves_md({"gmtrouter": hist(150, True)})
    row = next(line for line in md.splitlines() if "| val_auc |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "5–150" and cells[3][0] == "▁" and cells[3][-1] == "█"
    assert cells[5] == "0.900 (150)"  # best value and its epoch
