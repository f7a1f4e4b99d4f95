"""A team's first day without data (issue 15), end to end on the demo pipeline:

base router (trained on the demo's five LLMs) -> the team lists its own two LLMs in ``router.llms``
(name, description, cost) -> routing starts from the description prior and the crowd, with exploration,
and never goes to the base's LLMs -> feedback flows into the log -> the feedback sensor asks for a run ->
the retrained model knows the team's LLMs (their feedback is training data, their node features the
descriptions' embeddings), passes the promotion gate and becomes the champion -> a router on the champion
still serves the team's pool and prefers what the users preferred.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

dg = pytest.importorskip("dagster")
pytest.importorskip("mlflow")

from assets import build_dataset_assets  # noqa: E402
from assets.resources import EncoderResource, MLflowResource, PathsResource, feedback_log_path  # noqa: E402
from gmt_model.data.demo import LLMS  # noqa: E402
from gmt_model.method.config import load_router_config  # noqa: E402
from gmt_model.serving.router import GMTRouter  # noqa: E402

TEAM = {"acme-large": ("Acme Large: our in-house 70B assistant, careful at reasoning, maths and code.", 8.0),
        "acme-mini": ("Acme Mini: our small, fast in-house model for short everyday answers.", 0.3)}
QUESTIONS = [f"Team question {i}: how do I configure service number {i} of our platform?" for i in range(24)]


def _train(data: Path, tmp: Path, cache: Path, feedback_log: Path | None, min_gain_over_champion: float = 0.0
           ) -> dict:
    """The demo pipeline from raw data to the champion: train, evaluate, publish (the promotion gate)."""
    assets = {a.key.path[-1]: a for a in build_dataset_assets("demo")}
    res = dg.materialize(
        [assets["raw_data"], assets["interactions"], assets["text_embeddings"], assets["graph_parquet"],
         assets["trained_model"], assets["test_evaluation"], assets["published_router"]],
        instance=dg.DagsterInstance.ephemeral(),
        resources={"paths": PathsResource(home=str(data)), "encoder": EncoderResource(cache_dir=str(cache)),
                   "mlflow": MLflowResource(home=str(data), tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")},
        run_config={"ops": {"demo__raw_data": {"config": {"size": "tiny"}},
                            "demo__interactions": {"config": {"feedback_log": str(feedback_log)}
                                                   if feedback_log else {"config": {}}["config"]},
                            "demo__trained_model": {"config": {"epochs": 3, "eval_every": 1, "save_every": 1000,
                                                               "train_user_blind": False,
                                                               "log_checkpoints": False}},
                            "demo__test_evaluation": {"config": {"n_resamples": 20}},
                            "demo__published_router": {"config": {
                                "champion_eval_resamples": 20, "min_gain_over_baseline": -1.0,
                                "min_gain_over_champion": min_gain_over_champion}}}})
    assert res.success
    return json.loads((data / "interactions" / "demo" / "manifest.json").read_text())


def _champion(tmp: Path) -> str | None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", registry_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    try:
        return str(client.get_model_version_by_alias("gmtrouter-demo", "champion").version)
    except Exception:
        return None


@pytest.mark.slow
def test_a_team_serves_its_own_llms_from_a_base_router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    data = tmp_path / "data"
    monkeypatch.setenv("GMTROUTER_CACHE_DIR", str(cache))
    _train(data, tmp_path, cache, None)  # the base: the demo's five LLMs
    assert _champion(tmp_path) == "1"
    ckpt = data / "routers" / "demo" / "current"  # the champion's copy
    log = feedback_log_path("demo", str(data))
    cfg = tmp_path / "team.yaml"
    cfg.write_text(json.dumps({"model_path": {"load_model_path": str(ckpt)}, "router": {
        "feedback_log": str(log), "policy": "thompson", "seed": 0,
        "llms": {n: {"description": d, "cost": c} for n, (d, c) in TEAM.items()}}}))
    router = GMTRouter(cfg)
    assert router.candidates == list(TEAM)
    pool = {d["name"]: d for d in router.llms()}
    assert set(pool) == set(TEAM) and not any(d["trained"] for d in pool.values())
    # the base's knowledge of its own LLMs is not the team's: every team LLM starts wide, at the average
    for name in TEAM:
        assert router.crowd_strength(name) == (0.0, pytest.approx(1.0))
    first = router.route_batch([{"query_text": q, "user_id": f"dev{i % 4}"} for i, q in enumerate(QUESTIONS)])
    chosen = {r["model_name"] for r in first}
    assert chosen == set(TEAM)  # exploration: both get a trial; the base's LLMs never
    assert not chosen & set(LLMS)
    # day one: the team's users prefer acme-large
    for i, q in enumerate(QUESTIONS):
        router.update_user_preference(f"dev{i % 4}", q, "acme-large", "acme-mini")
    assert router.crowd_strength("acme-large")[0] > 0.5
    later = GMTRouter(cfg)  # a restart, as the server would
    fresh = later.route_batch([{"query_text": q, "user_id": "newcomer"} for q in QUESTIONS[:8]])
    assert sum(r["model_name"] == "acme-large" for r in fresh) >= 6
    # the feedback sensor asks for a run once enough arrived
    from pipelines.definitions import defs

    monkeypatch.setenv("GMTROUTER_RETRAIN_MIN_FEEDBACK", str(2 * len(QUESTIONS)))
    sensor = defs.get_sensor_def("feedback_retrain_demo")
    with dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), cursor=None,
                                 resources={"paths": PathsResource(home=str(data))}, definitions=defs) as ctx:
        tick = sensor.evaluate_tick(ctx)
    assert len(tick.run_requests) == 1
    # the retrained model: the team's LLMs and their feedback are training data.  The gate re-scores the
    # champion on the test split (the demo's judgments: the team's LLMs are not in it), so the team's model
    # is promoted when it is not much worse there (a pool change is worth a small tolerance)
    manifest = _train(data, tmp_path, cache, log, min_gain_over_champion=-0.05)
    assert set(TEAM) <= set(manifest["llms"]), (manifest["feedback"], manifest.get("llm_descriptions_added"))
    assert manifest["feedback"]["rows_merged"] == 2 * len(QUESTIONS)
    assert set(manifest["llm_descriptions_added"]) == set(TEAM)
    assert _champion(tmp_path) == "2"  # the champion moved; the router's checkpoint path is the champion's copy
    retrained = GMTRouter(config=load_router_config(cfg))
    pool = {d["name"]: d for d in retrained.llms()}
    assert set(pool) == set(TEAM) and all(d["trained"] for d in pool.values())
    out = retrained.route_batch([{"query_text": q, "user_id": "dev1"} for q in QUESTIONS[:8]])
    assert {r["model_name"] for r in out} <= set(TEAM)
