"""The train_mt_bench chain on the real MT-Bench human judgments in ../shared/data/mt_bench_human/,
through file:// sources: the split form (judgments + questions + model answers) and the Hugging Face
schema sample (rows with conversation_a/b).  Few epochs; the assertions are about the data and that
the personalized model's test AUC is reported beside the baselines (model quality is the library's).
The chain stops before published_router: publishing is covered by the demo tests, and a few-epoch
model is not expected to pass the promotion gate against MT-Bench's strong global baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

dg = pytest.importorskip("dagster")
mlflow = pytest.importorskip("mlflow")

from gmt_model.method.schema import SPLIT_FILES, SPLITS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MT_BENCH = (REPO.parent / "shared" / "data" / "mt_bench_human").resolve()
SELECTION = [dg.AssetKey(["mt_bench", n]) for n in
             ("raw_data", "interactions", "text_embeddings", "graph_parquet", "trained_model", "test_evaluation")]
METHODS = ("gmtrouter", "gmtrouter_gnn", "user_blind", "global_bt", "per_user_bt", "knn_query")

pytestmark = pytest.mark.skipif(not (MT_BENCH / "human_judgments.jsonl").is_file(),
                                reason=f"MT-Bench data not found at {MT_BENCH}")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    root = tmp_path_factory.mktemp("mt_bench")
    cache = tmp_path_factory.getbasetemp() / "gmtrouter-encoder-cache"
    cache.mkdir(exist_ok=True)
    (root / "data" / "mlflow").mkdir(parents=True)
    (root / "dagster_home").mkdir()
    (root / "dagster_home" / "dagster.yaml").write_text("")
    mp = pytest.MonkeyPatch()
    mp.setenv("GMTROUTER_HOME", str(root / "data"))
    mp.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'data' / 'mlflow' / 'mlflow.db'}")
    mp.setenv("GMTROUTER_CACHE_DIR", str(cache))
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for k in ("MLFLOW_REGISTRY_URI", "GMTROUTER_MT_BENCH_URL", "GMTROUTER_FEEDBACK_DIR",
              "GMTROUTER_MT_BENCH_FEEDBACK_LOG", "GMTROUTER_ENCODER"):
        mp.setenv(k, "")  # records the original value (or its absence) for undo
        mp.delenv(k)
    mp.setattr(tracking_utils, "_tracking_uri", None)
    mp.setattr(registry_utils, "_registry_uri", None)
    with dg.DagsterInstance.get() as instance:
        yield SimpleNamespace(root=root, data=root / "data", instance=instance)
    mp.undo()


def run_chain(home, raw: dict, *, epochs: int, jsonl: dict | None = None, train: dict | None = None):
    from pipelines.definitions import defs

    cfg = {"ops": {
        "mt_bench__raw_data": {"config": raw},
        "mt_bench__interactions": {"config": jsonl or {}},
        "mt_bench__trained_model": {"config": {"epochs": epochs, "blind_epochs": 5, "eval_every": 5,
                                               "save_every": 1000, **(train or {})}},
        "mt_bench__test_evaluation": {"config": {"n_resamples": 200}},
    }}
    return defs.resolve_job_def("train_mt_bench").execute_in_process(
        run_config=cfg, instance=home.instance, asset_selection=SELECTION, raise_on_error=False)


def materializations(result) -> dict[str, dict]:
    return {ev.materialization.asset_key.path[-1]: {k: v.value for k, v in ev.materialization.metadata.items()}
            for ev in result.get_asset_materialization_events()}


def failure_text(result) -> str:
    return "\n".join(ev.event_specific_data.error.to_string() for ev in result.all_events
                     if ev.event_type_value == "STEP_FAILURE" and ev.event_specific_data.error is not None)


def assert_evaluation_reported(home, result, meta: dict) -> None:
    ev = meta["test_evaluation"]
    for name in METHODS:
        m = ev["methods"][name]
        assert 0.0 <= m["auc"] <= 1.0 and m["n_pairs"] > 0, name
        lo, hi = m["auc_ci"]
        assert lo <= m["auc"] <= hi, name
        assert f"| {name} |" in ev["summary"]
    # the same figures in MLflow, in the run of this Dagster run
    uri = f"sqlite:///{home.data / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("gmtrouter-mt_bench")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.dagster_run_id = '{result.run_id}'")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    for name in METHODS:
        assert metrics[f"test.{name}.auc"] == pytest.approx(ev["methods"][name]["auc"])
    assert "test_cold_start.gmtrouter.auc" in runs[0].data.tags  # the cold-start table: tags (one value each)
    report = json.loads((home.data / "evaluation" / "mt_bench" / "report.json").read_text())
    assert set(report["methods"]) == set(METHODS)


def test_split_form_chain(home) -> None:
    result = run_chain(home, {"kind": "mt_bench_split", "url": MT_BENCH.as_uri()}, epochs=10)
    assert result.success, failure_text(result)
    meta = materializations(result)
    raw, j, g = meta["raw_data"], meta["interactions"], meta["graph_parquet"]
    assert raw["read_in_place"] is True and raw["path"] == str(MT_BENCH)
    assert j["judges"] == 65 and j["users"] == 65
    assert j["llms"] == 6 and j["questions"] == 80
    conv = j["conversion"]
    assert set(conv["turns"]) == {"1", "2"} and conv["turns"]["1"] > 0 and conv["turns"]["2"] > 0
    assert conv["n_multi_turn_groups"] > 0  # both judged turns of a pair became one two-step conversation
    assert set(conv["models"]) == {"gpt-4", "gpt-3.5-turbo", "claude-v1", "vicuna-13b-v1.2", "alpaca-13b",
                                   "llama-13b"}
    assert g["users"] == 65 and g["llms"] == 6 and g["max_steps"] == 2 and g["multi_turn_interactions"] > 0
    assert j["thin_users_count"] >= 1  # MT-Bench has judges with very few votes; reported, not dropped
    checks = {ev.event_specific_data.check_name: ev.event_specific_data.passed for ev in result.all_events
              if ev.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks == {"interactions_valid": True, "embedding_width": True, "graph_integrity": True,
                      "finite_weights": True}
    assert meta["trained_model"]["epochs_run"] == 10
    assert_evaluation_reported(home, result, meta)
    assert math.isfinite(meta["test_evaluation"]["gmtrouter_auc"])


def _hf_expectations(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        "rows": rows,
        "judges": {r["judge"] for r in rows},
        "models": {r["model_a"] for r in rows} | {r["model_b"] for r in rows},
        "questions": {str(r["question_id"]) for r in rows},
        "turns": {str(r["turn"]) for r in rows},
    }


def test_hugging_face_schema_sample_chain(home) -> None:
    sample = MT_BENCH / "hf_schema_sample.jsonl"
    exp = _hf_expectations(sample)
    result = run_chain(home, {"kind": "mt_bench_hf", "url": sample.as_uri()}, epochs=5,
                       jsonl={"split_fractions": [0.6, 0.2, 0.2]},  # 120 votes: give valid a share
                       train={"record_per_user": 1})  # ~2 training pairs per judge: keep some to predict
    assert result.success, failure_text(result)
    meta = materializations(result)
    assert meta["raw_data"]["kind"] == "mt_bench_hf" and meta["raw_data"]["read_in_place"] is False
    conv = meta["interactions"]["conversion"]
    assert conv["n_rows"] == len(exp["rows"])
    assert conv["n_judges"] == len(exp["judges"]) == meta["interactions"]["users"]
    assert set(conv["models"]) == exp["models"] and conv["n_questions"] == len(exp["questions"])
    assert set(conv["turns"]) == exp["turns"] == {"1", "2"}
    # responses come from the rows' own conversation_a / conversation_b, turn by turn
    answers = {}
    for r in exp["rows"]:
        for side in ("a", "b"):
            msgs = [m["content"] for m in r[f"conversation_{side}"] if m["role"] == "assistant"]
            for turn, text in enumerate(msgs, start=1):
                answers[(r["judge"], r[f"model_{side}"], str(r["question_id"]), turn)] = text
    seen = 0
    from gmt_model.data.columnar import export_jsonl

    exported = export_jsonl(home.data / "interactions" / "mt_bench", home.root / "exported",
                            home.data / "embeddings" / "mt_bench" / "embeddings.parquet")
    for s in SPLITS:
        for line in exported[s].read_text().splitlines():
            rec = json.loads(line)
            steps = rec["conversation"]
            first_turn = rec["turn"] - len(steps) + 1  # a two-step record holds turns 1 and 2
            for i, step in enumerate(steps):
                key = (rec["judge"], rec["model"], str(rec["question_id"]).split("#")[0], first_turn + i)
                assert key in answers, key
                assert step["response"] == answers[key]
                seen += 1
    assert seen > 0
    assert meta["graph_parquet"]["users"] == len(exp["judges"])
    assert_evaluation_reported(home, result, meta)
