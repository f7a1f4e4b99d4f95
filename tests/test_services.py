"""The production loop on real services (scripts/services.sh): PostgreSQL, the MLflow server, the Dagster
daemon and webserver, and the router server that follows models:/gmtrouter-demo@champion.

One deployment per module, on 127.0.0.1 with free ports, in a temporary folder; started (two concurrent
`up` calls) and stopped by the tests themselves.  The loop:

1. a schedule tick launches a run through the daemon; it registers v1 and makes it champion, and the
   router (waiting until then) starts serving it;
2. feedback posted to the router reaches the durable log; the feedback sensor fires under the daemon;
3. the run it requests trains on the merged feedback, registers a challenger, the gate passes, the
   champion alias moves;
4. the router reloads without a restart and the next /v1/route is the new model's.

Then faults: MLflow down, PostgreSQL down (a run fails at once with one clear line; the router keeps
serving its champion), and `down` stops only what `up` started.  Figures (run ids, versions, timings) are
printed.  Needs PostgreSQL (Debian's package; services.sh installs it as root): skipped where it cannot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed")

services = pytest.mark.services  # the tests on a live deployment (the script's own checks below run everywhere)

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "scripts" / "services.sh"
EXIT_NO_POSTGRES = 3
LOCATION = {"repositoryLocationName": "gmtrouter", "repositoryName": "__repository__"}
RELOAD_S = 2
MIN_FEEDBACK = 4
FIGURES: dict[str, Any] = {}

#: run config of the scheduled run: a quick first model (the first champion only has to be registered)
FIRST_RUN = {"ops": {
    "demo__raw_data": {"config": {"size": "tiny"}},
    "demo__trained_model": {"config": {"epochs": 2, "eval_every": 1, "save_every": 1000, "train_user_blind": False,
                                       "log_checkpoints": False}},
    "demo__test_evaluation": {"config": {"n_resamples": 30, "cold_start": False}},
    "demo__published_router": {"config": {"min_gain_over_baseline": -1.0}},
}}
#: run config of the feedback-triggered run: a real model, gated for real: it must beat global_bt, and reach
#: the champion re-scored on the same test split less 0.02 AUC (the router's online per-user layer lifts even
#: the 2-epoch first model to within 0.001 AUC of a 30-epoch one on the tiny demo, so a strict tie-break
#: would make this step a coin flip)
RETRAIN_RUN = {"ops": {
    "demo__raw_data": {"config": {"size": "tiny"}},
    "demo__trained_model": {"config": {"epochs": 30, "eval_every": 10, "save_every": 1000, "train_user_blind": False,
                                       "log_checkpoints": False}},
    "demo__test_evaluation": {"config": {"n_resamples": 30, "cold_start": False}},
    "demo__published_router": {"config": {"champion_eval_resamples": 30, "min_gain_over_champion": -0.02}},
}}


def _write_yaml(path: Path, doc: dict) -> None:
    import yaml

    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)


def _services(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SERVICES), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _wait(what: str, fn: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """Poll ``fn`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            got = fn()
            if got:
                return got
        except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
            last_exc = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_exc})"
                                                                                   if last_exc else ""))


def _log_tail(d: SimpleNamespace, svc: str, n: int = 40) -> str:
    p = d.dir / "logs" / f"{svc}.log"
    return "".join(p.read_text(errors="replace").splitlines(keepends=True)[-n:]) if p.is_file() else ""


class Deployment(SimpleNamespace):
    def gql(self, query: str, variables: dict | None = None) -> dict:
        r = httpx.post(f"{self.dagster_url}/graphql", json={"query": query, "variables": variables or {}},
                       timeout=60)
        r.raise_for_status()
        body = r.json()
        assert not body.get("errors"), body
        return body["data"]

    def runs(self, key: str, value: str) -> list[dict]:
        q = """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) {
                 ... on Runs { results { runId status startTime endTime tags { key value } } } } }"""
        return self.gql(q, {"tags": [{"key": key, "value": value}]})["runsOrError"]["results"]

    def finished_run(self, key: str, value: str) -> dict | None:
        for r in self.runs(key, value):
            if r["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                return r
        return None

    def health(self) -> dict:
        token = self.client_env["GMTROUTER_ADMIN_TOKEN"]  # the details (the served model) need the admin token
        r = httpx.get(f"{self.router_url}/health", timeout=10, headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        return r.json()

    def route(self, user: str, query: str) -> dict:
        r = httpx.post(f"{self.router_url}/v1/route", json={"user_id": user, "query_text": query}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def mlflow(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)

    def pid(self, svc: str) -> int:
        return int((self.dir / "pids" / f"{svc}.pid").read_text().split()[0])


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest):
    # not pytest's tmp_path: its folders are private (0700) and PostgreSQL runs as the postgres user
    root = Path(tempfile.mkdtemp(prefix="gmtrouter-services-"))
    os.chmod(root, 0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DAGSTER_", "GMTROUTER_")) and k != "VIRTUAL_ENV"}
    env.update({
        "GMTROUTER_HOME": str(root / "home"),
        "GMTROUTER_RELOAD_INTERVAL": str(RELOAD_S),
        "GMTROUTER_RETRAIN_MIN_FEEDBACK": str(MIN_FEEDBACK),
        "GMTROUTER_SENSOR_INTERVAL": "5",
        "GMTROUTER_DEMO_RETRAIN_CRON": "* * * * *",  # the test turns the demo schedule on, then off
        "GMTROUTER_TRIGGERED_RUN_CONFIG": str(root / "triggered_run.yaml"),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "OMP_WAIT_POLICY": "PASSIVE",
    })
    _write_yaml(root / "triggered_run.yaml", FIRST_RUN)
    t0 = time.monotonic()
    # two concurrent `up` calls: the lock makes the second wait and find everything running
    procs = [subprocess.Popen(["bash", str(SERVICES), "up"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    FIGURES["services_up_s"] = round(time.monotonic() - t0, 1)
    d = Deployment(root=root, dir=root / "home" / "services", env=env, outs=outs, t0=t0)
    try:
        codes = [p.returncode for p in procs]
        if EXIT_NO_POSTGRES in codes:
            pytest.skip("PostgreSQL is not available here: "
                        + " ".join(outs[codes.index(EXIT_NO_POSTGRES)][1].split())[:300])
        assert codes == [0, 0], outs
        state = dict(line.split("=", 1) for line in (d.dir / "state").read_text().splitlines() if "=" in line)
        d.pg_port = int(state["PG_PORT"])
        d.mlflow_url = f"http://127.0.0.1:{state['MLFLOW_PORT']}"
        d.dagster_url = f"http://127.0.0.1:{state['DAGSTER_PORT']}"
        d.router_url = f"http://127.0.0.1:{state['ROUTER_PORT']}"
        d.client_env = {**env, **_read_env_file(d.dir / "env")}
        yield d
    finally:
        down = _services(env, "down", timeout=300)
        FIGURES["down_rc"] = down.returncode
        leftovers = _processes_under(root)
        try:
            assert down.returncode == 0, down.stdout + down.stderr
            assert not leftovers, f"processes left running: {leftovers}"
        finally:
            for pid in leftovers:
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(root, ignore_errors=True)
            _print_figures(request)


def _read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            k, v = line[len("export "):].split("=", 1)
            out[k] = v.strip("'")
    return out


def _down_and_clean(env: dict[str, str], root: Path) -> None:
    """Stop a deployment under ``root`` (services.sh down), kill what it left, remove ``root``; then assert
    that down succeeded and nothing was left running."""
    down = _services(env, "down", timeout=300)
    leftovers = _processes_under(root)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not leftovers, f"processes left running: {leftovers}"


def _processes_under(root: Path) -> list[int]:
    """PIDs whose command line names a path under ``root`` (the deployment's own processes)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (p / "environ").read_bytes()
        except OSError:
            continue
        if str(root) in cmd or f"GMTROUTER_HOME={root}".encode() in environ:
            found.append(int(p.name))
    return found


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def _print_figures(request: pytest.FixtureRequest) -> None:
    """Print the figures past pytest's capture (and to $GMTROUTER_SERVICES_FIGURES when set)."""
    text = json.dumps(FIGURES, indent=2, sort_keys=True)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        sys.stdout.write(f"\n[services figures] {text}\n")
        sys.stdout.flush()
    if os.environ.get("GMTROUTER_SERVICES_FIGURES"):
        Path(os.environ["GMTROUTER_SERVICES_FIGURES"]).write_text(text + "\n")


def _mark(name: str, since: float) -> float:
    now = time.monotonic()
    FIGURES[name] = round(now - since, 1)
    return now


# --------------------------------------------------------------------------
# the script alone (no deployment)
# --------------------------------------------------------------------------
def test_script_without_postgresql_or_services(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GMTROUTER_")},
           "GMTROUTER_HOME": str(tmp_path / "home"), "GMTROUTER_PG_BINDIR": str(tmp_path / "no-postgres")}
    # before any `up`: nothing to report or stop, and nothing is created
    assert _services(env, "status", timeout=60).returncode == 1
    assert _services(env, "down", timeout=60).returncode == 0
    assert not (tmp_path / "home").exists()
    up = _services(env, "up", timeout=120)
    assert up.returncode == EXIT_NO_POSTGRES, up.stdout + up.stderr  # the test fixture skips on this status
    assert f"GMTROUTER_PG_BINDIR={tmp_path / 'no-postgres'} has no initdb" in up.stderr
    st = _services(env, "status", timeout=60)
    assert st.returncode == 1 and "postgres: not running" in st.stdout
    down = _services(env, "down", timeout=60)
    assert down.returncode == 0, down.stderr
    bad = _services(env, "up", "nosuch", timeout=60)
    assert bad.returncode == 1 and "unknown service 'nosuch'" in bad.stderr
    assert not _processes_under(tmp_path)


# --------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------
@services
@pytest.mark.slow
def test_concurrent_up_started_one_set(deployment) -> None:
    d = deployment
    said = [out for out, _ in d.outs]
    started = [s for s in said if "initdb" in s]
    assert len(started) == 1, said  # exactly one call created and started the services
    other = said[1 - said.index(started[0])]
    for svc in ("postgres", "mlflow", "dagster-daemon", "dagster-webserver"):
        assert f"{svc} already running" in other, other
    # one postmaster (a backend that has just been forked still shows its parent's command line)
    cands = {pid for pid in _processes_under(d.root)
             if (args := Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))[0].endswith(b"/postgres")
             and b"-D" in args}
    postmasters = [pid for pid in cands if _ppid(pid) not in cands]
    assert postmasters == [d.pid("postgres")], postmasters
    # the router waits for a first champion; status says so and is not 0
    st = _services(d.env, "status")
    assert st.returncode == 1 and "router" in st.stdout and "waiting for a first" in st.stdout, st.stdout
    for svc in ("postgres", "mlflow", "dagster-daemon", "dagster-webserver"):
        assert f"{svc}: pid" in st.stdout and "ok" in st.stdout.split(f"{svc}: pid", 1)[1].splitlines()[0]


def _last_tick(d: Deployment, sel: dict) -> str | None:
    got = d.gql("""query($s: ScheduleSelector!) { scheduleOrError(scheduleSelector: $s) {
                     ... on Schedule { scheduleState { ticks(limit: 1) { status } } } } }""", {"s": sel})
    ticks = got["scheduleOrError"]["scheduleState"]["ticks"]
    return ticks[0]["status"] if ticks else None


def _stop_schedule(d: Deployment, sel: dict, state_id: str) -> None:
    for _ in range(3):
        stop = d.gql("""mutation($id: String!) { stopRunningSchedule(id: $id) {
                          __typename ... on ScheduleStateResult { scheduleState { status } }
                          ... on PythonError { message } } }""", {"id": state_id})["stopRunningSchedule"]
        assert stop["__typename"] == "ScheduleStateResult", stop
        time.sleep(3)
        now = d.gql("""query($s: ScheduleSelector!) { scheduleOrError(scheduleSelector: $s) {
                         ... on Schedule { scheduleState { status } } } }""", {"s": sel})
        if now["scheduleOrError"]["scheduleState"]["status"] == "STOPPED":
            return
    raise AssertionError("the demo schedule does not stay stopped")


@services
@pytest.mark.slow
def test_schedule_tick_runs_through_the_daemon_and_the_router_serves_the_first_champion(deployment) -> None:
    d = deployment
    sel = {**LOCATION, "scheduleName": "weekly_retrain_demo"}
    t, t_wall = time.monotonic(), time.time()
    got = d.gql("""mutation($s: ScheduleSelector!) { startSchedule(scheduleSelector: $s) {
                     __typename ... on ScheduleStateResult { scheduleState { id status } }
                     ... on PythonError { message } } }""", {"s": sel})["startSchedule"]
    assert got["__typename"] == "ScheduleStateResult" and got["scheduleState"]["status"] == "RUNNING", got
    try:  # one tick is enough: turn the schedule off again once its first tick is complete
        first = _wait("a tick of the demo schedule", lambda: d.runs("dagster/schedule_name",
                                                                     "weekly_retrain_demo"), 150, every=1)[-1]
        # (a stop while the daemon still completes the tick is overwritten by the daemon's own state write)
        _wait("the tick to complete", lambda: _last_tick(d, sel) == "SUCCESS", 60, every=0.5)
    finally:
        _stop_schedule(d, sel, got["scheduleState"]["id"])
    _mark("schedule_on_to_tick_s", t)
    run = _wait("the scheduled run", lambda: next((r for r in d.runs("dagster/schedule_name", "weekly_retrain_demo")
                                                   if r["runId"] == first["runId"]
                                                   and r["status"] in ("SUCCESS", "FAILURE", "CANCELED")), None),
                330, every=3)
    t = _mark("schedule_on_to_run_done_s", t)
    assert run["status"] == "SUCCESS", _log_tail(d, "dagster-daemon")
    FIGURES["schedule_run_id"] = run["runId"]
    FIGURES["schedule_run_s"] = round(run["endTime"] - run["startTime"], 1)
    FIGURES["schedule_on_to_run_start_s"] = round(run["startTime"] - t_wall, 1)
    client = d.mlflow()
    mv = client.get_model_version_by_alias("gmtrouter-demo", "champion")
    assert mv.tags["dagster_run_id"] == run["runId"]
    d.first_version = str(mv.version)
    FIGURES["schedule_run_version"] = d.first_version
    health = _wait("the router to serve the first champion", lambda: d.health(), 240)
    _mark("first_champion_to_router_up_s", t)
    assert health["model"]["version"] == d.first_version
    assert health["model"]["uri"] == "models:/gmtrouter-demo@champion"
    assert len(d.runs("dagster/schedule_name", "weekly_retrain_demo")) == 1  # off again after one tick
    d.router_pid = d.pid("router")
    st = _services(d.env, "status")
    assert st.returncode == 0, st.stdout + st.stderr  # every service answers now


@services
@pytest.mark.slow
def test_feedback_retrains_promotes_and_the_router_reloads(deployment) -> None:
    from gmt_model.data.demo import LLMS
    from gmt_model.serving.feedback import open_feedback_store

    d = deployment
    probe = ("user_0001", "Write a limerick about a database migration")
    before = d.route(*probe)
    _write_yaml(d.root / "triggered_run.yaml", RETRAIN_RUN)  # the next triggered run: a real model, real gate
    t, t_wall = time.monotonic(), time.time()
    ids = []
    for user in ("user_0001", "user_0002"):
        for model, rating in ((LLMS[0], 5.0), (LLMS[1], 1.0)):
            r = httpx.post(f"{d.router_url}/v1/feedback", timeout=60,
                           json={"user": user, "query": probe[1], "model": model, "rating": rating})
            assert r.status_code == 200, r.text
            ids.append(r.json()["feedback_id"])
    assert len(ids) == MIN_FEEDBACK and all(isinstance(i, int) for i in ids)
    # the deployment's feedback store is PostgreSQL (the replicas', the sensor's and the training merge's)
    with open_feedback_store(d.client_env["GMTROUTER_DEMO_FEEDBACK_LOG"]) as log:  # durable: read back here
        rows = log.read(0)
    assert [r.id for r in rows] == ids and {r.user_id for r in rows} == {"user_0001", "user_0002"}
    run = _wait("the feedback sensor's run", lambda: d.finished_run("gmtrouter/trigger", "feedback"), 400, every=3)
    t_done = _mark("feedback_to_retrain_done_s", t)
    assert run["status"] == "SUCCESS", _log_tail(d, "dagster-daemon")
    tags = {x["key"]: x["value"] for x in run["tags"]}
    assert tags["dagster/sensor_name"] == "feedback_retrain_demo" and tags["gmtrouter/feedback_max_id"] == str(ids[-1])
    FIGURES.update({"feedback_ids": ids, "sensor_run_id": run["runId"],
                    "sensor_run_s": round(run["endTime"] - run["startTime"], 1),
                    "feedback_to_sensor_run_start_s": round(run["startTime"] - t_wall, 1)})
    client = d.mlflow()
    champ = client.get_model_version_by_alias("gmtrouter-demo", "champion")
    chall = client.get_model_version_by_alias("gmtrouter-demo", "challenger")
    new = str(champ.version)
    assert new == str(chall.version) == str(int(d.first_version) + 1), (champ.version, chall.version)
    assert champ.tags["promoted"] == "true" and champ.tags["dagster_run_id"] == run["runId"]
    assert champ.tags["feedback_through_id"] == str(ids[-1])
    FIGURES["gate"] = {k: champ.tags.get(k) for k in ("test_auc", "global_bt_auc")}
    assert float(champ.tags["test_auc"]) > float(champ.tags["global_bt_auc"])
    meta = json.loads((Path(d.env["GMTROUTER_HOME"]) / "routers" / "demo" / "current" / "config.json").read_text())
    assert meta["meta"]["feedback_through_id"] == ids[-1]
    # the training data held the feedback comparisons
    jm = json.loads((Path(d.env["GMTROUTER_HOME"]) / "interactions" / "demo" / "manifest.json").read_text())
    assert jm["feedback"]["rows_merged"] == 4 and jm["feedback"]["groups_added"] == 2
    health = _wait("the router to reload the new champion", lambda: (h := d.health())["model"]["version"] == new
                   and h, 240, every=0.5)
    _mark("new_champion_to_router_reloaded_s", t_done)
    FIGURES["feedback_to_serving_new_champion_s"] = round(time.monotonic() - t, 1)
    d.version = new
    assert d.pid("router") == d.router_pid  # no restart
    after = d.route(*probe)
    assert after["scores"] != before["scores"], (before, after)  # the new model answers
    FIGURES["probe_route"] = {"before": before["model_name"], "after": after["model_name"]}
    FIGURES["versions"] = {d.first_version: FIGURES.get("schedule_run_id"), new: run["runId"]}
    assert health["model"]["uri"] == "models:/gmtrouter-demo@champion"


@services
@pytest.mark.slow
def test_rollback_moves_the_serving_router_back(deployment) -> None:
    d = deployment
    t = time.monotonic()
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pipelines.champion", "rollback", "demo"],
                          cwd=REPO, env=d.client_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"gmtrouter-demo: champion v{d.version} -> v{d.first_version}" in proc.stdout
    _wait("the router to serve the rolled-back champion",
          lambda: d.health()["model"]["version"] == d.first_version, 240, every=0.5)
    _mark("rollback_to_router_serving_s", t)
    assert d.pid("router") == d.router_pid
    d.version = d.first_version


# --------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------
def _run_job(d: Deployment, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pipelines.run_job", "train_demo"],
                          cwd=REPO, env=d.client_env, capture_output=True, text=True, timeout=timeout)
    return proc, round(time.monotonic() - t, 1)


def _still_serving(d: Deployment, version: str) -> None:
    assert d.health()["model"]["version"] == version
    assert d.route("user_0003", "Plan a three-day trip to Lisbon")["model_name"]
    assert d.pid("router") == d.router_pid


@services
@pytest.mark.slow
def test_mlflow_down_fails_a_run_at_once_and_the_router_keeps_its_champion(deployment) -> None:
    d = deployment
    assert _services(d.env, "down", "mlflow").returncode == 0
    st = _services(d.env, "status")
    assert st.returncode == 1 and "mlflow: not running" in st.stdout, st.stdout
    proc, secs = _run_job(d)
    out = proc.stdout + proc.stderr
    FIGURES["run_with_mlflow_down_s"] = secs
    assert proc.returncode == 1, out[-3000:]
    # in-process, the run sets its resources up before the first step: it fails there, naming the server
    assert f"FAILED train_demo: MLflowUnavailableError: MLflow tracking server {d.mlflow_url} is not " \
           f"reachable" in out, out[-3000:]
    time.sleep(3 * RELOAD_S)  # a few reload checks against the dead server
    _still_serving(d, d.version)
    assert _services(d.env, "up", "mlflow").returncode == 0
    assert _services(d.env, "status", "mlflow").returncode == 0


@services
@pytest.mark.slow
def test_postgres_down_fails_a_run_with_one_line_and_the_router_keeps_its_champion(deployment) -> None:
    d = deployment
    assert _services(d.env, "down", "postgres").returncode == 0
    proc, secs = _run_job(d)
    out = proc.stdout + proc.stderr
    FIGURES["run_with_postgres_down_s"] = secs
    assert proc.returncode == 2, out[-3000:]
    assert "error: cannot open the Dagster instance" in out and f"port {d.pg_port}" in out, out[-3000:]
    assert "Traceback" not in out
    st = _services(d.env, "status", "postgres", "mlflow")
    assert st.returncode == 1 and "postgres: not running" in st.stdout, st.stdout
    _still_serving(d, d.version)
    assert _services(d.env, "up", "postgres").returncode == 0
    _wait("mlflow to reach PostgreSQL again", lambda: _services(d.env, "status", "postgres", "mlflow").returncode == 0,
          60, every=2)


@services
@pytest.mark.slow
def test_down_stops_only_what_up_started(deployment) -> None:
    d = deployment
    # a stranger whose PID lands in a pid file (a recycled PID): same number, another process
    decoy = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        assert _services(d.env, "down", "router").returncode == 0
        (d.dir / "pids" / "router.pid").write_text(f"{decoy.pid} 1\n")
        st = _services(d.env, "status", "router")
        assert st.returncode == 1 and "router: not running" in st.stdout
        assert _services(d.env, "down", "router").returncode == 0
        assert decoy.poll() is None, "down killed a process it did not start"
        ours = [d.pid(s) for s in ("postgres", "mlflow", "dagster-daemon", "dagster-webserver")]
        down = _services(d.env, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert decoy.poll() is None
        for pid in ours:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
        st = _services(d.env, "status")
        assert st.returncode == 1
        # down again: nothing left to stop, still fine
        assert _services(d.env, "down").returncode == 0
    finally:
        decoy.kill()
        decoy.wait()
