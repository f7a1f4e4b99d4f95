"""Settings of triggered runs from the environment: the run config of sensor / schedule runs, the sensor
interval and the schedules' cron (what the service deployment and its test turn)."""

from __future__ import annotations

from pathlib import Path

import pytest

dg = pytest.importorskip("dagster")

from gmt_model.data.demo import LLMS  # noqa: E402
from gmt_model.serving.feedback import FeedbackLog  # noqa: E402
from pipelines import jobs, schedules, sensors  # noqa: E402
from assets.resources import PathsResource, feedback_log_path  # noqa: E402
from pipelines.triggers import ENV_TRIGGERED_RUN_CONFIG, triggered_run_config  # noqa: E402

RUN_CONFIG = {"ops": {"demo__trained_model": {"config": {"epochs": 3}}}}


def test_triggered_run_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TRIGGERED_RUN_CONFIG, raising=False)
    assert triggered_run_config() == {}
    p = tmp_path / "run.yaml"
    p.write_text("ops:\n  demo__trained_model:\n    config: {epochs: 3}\n")
    monkeypatch.setenv(ENV_TRIGGERED_RUN_CONFIG, str(p))
    assert triggered_run_config() == RUN_CONFIG
    for text, message in (("ops: [unclosed\n", "invalid YAML"),
                          ("- a list\n", "a run config must be a mapping, got list")):
        p.write_text(text)
        with pytest.raises(ValueError, match=f"{ENV_TRIGGERED_RUN_CONFIG}={p}: {message}"):
            triggered_run_config()
    monkeypatch.setenv(ENV_TRIGGERED_RUN_CONFIG, str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="missing.yaml: cannot read it"):
        triggered_run_config()


def test_feedback_sensor_requests_runs_with_the_triggered_run_config(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("ops:\n  demo__trained_model:\n    config: {epochs: 3}\n")
    monkeypatch.setenv(ENV_TRIGGERED_RUN_CONFIG, str(cfg))
    monkeypatch.setenv(sensors.ENV_SENSOR_INTERVAL, "7")
    for k in ("GMTROUTER_DEMO_FEEDBACK_LOG", "GMTROUTER_FEEDBACK_DIR"):
        monkeypatch.delenv(k, raising=False)
    job = jobs.build_jobs()["demo"]
    sensor = sensors.build_feedback_sensor("demo", job, min_new_records=2)
    assert sensor.minimum_interval_seconds == 7
    paths = PathsResource(home=str(tmp_path / "data"))
    with FeedbackLog(feedback_log_path("demo", str(tmp_path / "data"))) as log:
        log.append("u1", "q", LLMS[0], 5.0)
        log.append("u1", "q", LLMS[1], 1.0)
    with dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), resources={"paths": paths}) as ctx:
        res = sensor.evaluate_tick(ctx)
    assert len(res.run_requests) == 1 and res.run_requests[0].run_config == RUN_CONFIG


def test_sensor_interval_and_cron_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sensors.ENV_SENSOR_INTERVAL, raising=False)
    assert sensors.sensor_interval() == 60
    monkeypatch.setenv(sensors.ENV_SENSOR_INTERVAL, "0")
    with pytest.raises(ValueError, match="GMTROUTER_SENSOR_INTERVAL=0: expected at least 1 second"):
        sensors.sensor_interval()
    monkeypatch.delenv(schedules.ENV_RETRAIN_CRON, raising=False)
    monkeypatch.delenv("GMTROUTER_DEMO_RETRAIN_CRON", raising=False)
    assert schedules.schedule_cron("demo", 0) == "0 2 * * 0"
    monkeypatch.setenv(schedules.ENV_RETRAIN_CRON, "30 4 * * *")
    assert schedules.schedule_cron("demo", 0) == schedules.schedule_cron("gsm8k", 3) == "30 4 * * *"
    monkeypatch.setenv("GMTROUTER_DEMO_RETRAIN_CRON", "* * * * *")  # the dataset's own wins
    assert schedules.schedule_cron("demo", 0) == "* * * * *" and schedules.schedule_cron("gsm8k", 3) == "30 4 * * *"
    monkeypatch.setenv("GMTROUTER_DEMO_RETRAIN_CRON", "every minute")
    with pytest.raises(ValueError, match="GMTROUTER_DEMO_RETRAIN_CRON='every minute': not a valid cron"):
        schedules.schedule_cron("demo", 0)
    monkeypatch.setenv("GMTROUTER_DEMO_RETRAIN_CRON", "* * * * *")
    built = {s.name: s for s in schedules.build_schedules(jobs.build_jobs())}
    assert built["weekly_retrain_demo"].cron_schedule == "* * * * *"
    assert built["weekly_retrain_demo"].default_status == dg.DefaultScheduleStatus.STOPPED
