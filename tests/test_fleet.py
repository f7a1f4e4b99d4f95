"""A router fleet on one machine (scripts/services.sh with GMTROUTER_ROUTER_REPLICAS=3): three `gmtrouter serve`
processes, each with its own home and port, sharing only PostgreSQL (the feedback store) and the MLflow
registry.  On real PostgreSQL:

- feedback posted to one replica changes that user's routing on another within the sync interval;
- all replicas route a user identically once synced (also a replica that never saw the user: it loads the
  user's rows from the store on first use);
- a replica killed with -9 loses nothing that was acknowledged (and routes like the others when back);
- a champion change reaches every replica.

Only PostgreSQL, MLflow and the routers are started (no Dagster): the champions are registered from here.
Needs PostgreSQL (Debian's package; services.sh installs it as root): skipped only where it cannot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
mlflow = pytest.importorskip("mlflow")

from test_registry import LLMS, make_checkpoint  # noqa: E402
from test_services import EXIT_NO_POSTGRES, _down_and_clean, _read_env_file, _services, _wait  # noqa: E402

REPLICAS = 3
SYNC_S = 0.5
RELOAD_S = 2
NAME = "gmtrouter-demo"
USERS = ["fleet-user-1", "fleet-user-2"]
QUERIES = ["Write a haiku about PostgreSQL replication", "Explain the CAP theorem in two sentences",
           "Translate 'good morning' into Portuguese"]


@pytest.fixture(scope="module")
def fleet():
    root = Path(tempfile.mkdtemp(prefix="gmtrouter-fleet-"))
    os.chmod(root, 0o755)  # PostgreSQL runs as the postgres user
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DAGSTER_", "GMTROUTER_")) and k != "VIRTUAL_ENV"}
    env.update({"GMTROUTER_HOME": str(root / "home"), "GMTROUTER_ROUTER_REPLICAS": str(REPLICAS),
                "GMTROUTER_RELOAD_INTERVAL": str(RELOAD_S), "GMTROUTER_FEEDBACK_SYNC_INTERVAL": str(SYNC_S),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    try:
        up = _services(env, "up", "postgres", "mlflow", timeout=600)
        if up.returncode == EXIT_NO_POSTGRES:
            pytest.skip("PostgreSQL is not available here: " + " ".join(up.stderr.split())[:300])
        assert up.returncode == 0, up.stdout + up.stderr
        d = _Fleet(root=root, env=env, dir=root / "home" / "services")
        d.client_env = {**env, **_read_env_file(d.dir / "env")}
        yield d
    finally:
        _down_and_clean(env, root)


class _Fleet:
    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)

    @property
    def urls(self) -> list[str]:
        return self.client_env["GMTROUTER_ROUTER_URLS"].split()

    def register(self, seed: int) -> str:
        """Register a new random checkpoint as the champion through the tracking server; its version."""
        tracking = self.client_env["MLFLOW_TRACKING_URI"]
        client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        ckpt = make_checkpoint(self.root / f"ck{seed}", USERS, seed)
        old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        try:
            mlflow.set_tracking_uri(tracking)
            mlflow.set_registry_uri(tracking)
            with mlflow.start_run():
                from gmt_model.serving.registry import log_router_model

                info = log_router_model(ckpt, registered_model_name=NAME)
        finally:  # undo all that set_tracking_uri / set_registry_uri leave behind (module state and env)
            from mlflow.tracking._model_registry import utils as registry_utils
            from mlflow.tracking._tracking_service import utils as tracking_utils

            tracking_utils._tracking_uri = None
            registry_utils._registry_uri = None
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        version = str(info.registered_model_version)
        client.set_registered_model_alias(NAME, "champion", version)
        return version

    def pid(self, name: str) -> int:
        return int((self.dir / "pids" / f"{name}.pid").read_text().split()[0])


def _route(url: str, user: str, query: str) -> dict:
    r = httpx.post(f"{url}/v1/route", json={"user_id": user, "query_text": query}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _prefer(url: str, user: str, query: str, preferred: str, rejected: str) -> list[int]:
    r = httpx.post(f"{url}/v1/feedback", timeout=60,
                   json={"user": user, "query": query, "preferred": preferred, "rejected": rejected})
    assert r.status_code == 200, r.text
    return r.json()["feedback_ids"]


def _view(url: str, user: str) -> list[tuple[str, list[float]]]:
    out = []
    for q in QUERIES:
        r = _route(url, user, q)
        out.append((r["model_name"], [r["scores"][m] for m in sorted(r["scores"])]))
    return out


def _agree(views: list[list[tuple[str, list[float]]]]) -> bool:
    first = views[0]
    return all([m for m, _ in v] == [m for m, _ in first]
               and np.allclose([s for _, s in v], [s for _, s in first], atol=1e-5) for v in views[1:])


@pytest.mark.services
@pytest.mark.slow
def test_a_fleet_shares_feedback_survives_kill_9_and_follows_the_champion(fleet) -> None:
    d = fleet
    figures: dict[str, object] = {}
    v1 = d.register(seed=1)
    t = time.monotonic()
    up = _services(d.env, "up", "router", timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    figures["replicas_up_s"] = round(time.monotonic() - t, 1)
    d.client_env = {**d.env, **_read_env_file(d.dir / "env")}

    # each replica: its own port and home; status lists each; env exports the URLs
    urls = d.urls
    assert len(urls) == len(set(urls)) == REPLICAS
    names = ["router"] + [f"router-{i}" for i in range(2, REPLICAS + 1)]
    st = _services(d.env, "status", "postgres", "mlflow", "router")  # (no Dagster in this deployment)
    assert st.returncode == 0, st.stdout + st.stderr
    for name, url in zip(names, urls):
        line = next(x for x in st.stdout.splitlines() if x.startswith(f"{name}: "))
        assert url in line and '"version":"' + v1 + '"' in line.replace(" ", ""), line
        home = d.dir / "routers" / name
        assert (home / "router.yaml").is_file() and (home / "router.yaml").stat().st_mode & 0o077 == 0
        proc_env = Path(f"/proc/{d.pid(name)}/environ").read_bytes().split(b"\0")
        assert f"GMTROUTER_HOME={home}".encode() in proc_env
    env_out = _services(d.env, "env").stdout
    assert f"export GMTROUTER_ROUTER_URLS='{' '.join(urls)}'" in env_out
    assert "export GMTROUTER_DEMO_FEEDBACK_LOG='postgresql://" in env_out

    # feedback to replica 1 changes the user's routing on replica 2 within the sync interval
    user = USERS[0]
    before = [_view(u, user) for u in urls]
    assert _agree(before)
    base = {u: _route(urls[0], u, QUERIES[0])["history_size"] for u in USERS}  # the checkpoint's rows
    favourite = next(m for m in LLMS if m != before[1][0][0])  # not what replica 2 routes the first query to
    ids = []
    t = time.monotonic()
    for q in QUERIES * 2:
        for other in LLMS:
            if other != favourite:
                ids += _prefer(urls[0], user, q, favourite, other)
    time.sleep(SYNC_S)
    changed = _wait("replica 2 to route by replica 1's feedback",
                    lambda: (v := _view(urls[1], user))[0][0] == favourite and v, 10 * SYNC_S + 5, every=0.2)
    figures["feedback_to_other_replica_s"] = round(time.monotonic() - t, 2)
    assert changed != before[1]
    # ... and every replica routes the user identically (replica 3 never saw the feedback being made)
    views = [_view(u, user) for u in urls]
    assert _agree(views), views
    h = _route(urls[2], user, QUERIES[0])
    assert h["history_size"] == base[user] + len(ids)

    # kill -9 right after acknowledged feedback: nothing acknowledged is lost
    victim = names[1]
    acked = []
    for q in QUERIES:
        acked += _prefer(urls[1], USERS[1], q, LLMS[0], LLMS[1])
    os.kill(d.pid(victim), signal.SIGKILL)
    from gmt_model.serving.feedback import open_feedback_store

    with open_feedback_store(d.client_env["GMTROUTER_DEMO_FEEDBACK_LOG"]) as store:
        stored = {r.id for r in store.read_user(USERS[1])}
    assert set(acked) <= stored
    st = _services(d.env, "status", "router")
    assert st.returncode == 1 and f"{victim}: not running" in st.stdout
    up = _services(d.env, "up", "router", timeout=600)
    assert up.returncode == 0 and f"{names[0]} already running" in up.stdout, up.stdout + up.stderr
    urls = d.urls
    time.sleep(SYNC_S)
    views = [_view(u, USERS[1]) for u in urls]
    assert _agree(views), views
    assert _route(urls[1], USERS[1], QUERIES[0])["history_size"] == base[USERS[1]] + len(acked)

    # a champion change reaches every replica (each follows the alias), feedback still applied
    v2 = d.register(seed=2)
    admin = {"Authorization": f"Bearer {d.client_env['GMTROUTER_ADMIN_TOKEN']}"}  # /health details: admin only
    t = time.monotonic()
    for u in urls:
        _wait(f"{u} to serve v{v2}", lambda u=u: httpx.get(f"{u}/health", timeout=10, headers=admin).json()["model"]["version"]
              == v2, 60 + 10 * RELOAD_S, every=0.5)
    figures["champion_to_all_replicas_s"] = round(time.monotonic() - t, 1)
    views = [_view(u, user) for u in urls]
    assert _agree(views) and views != before
    assert all(_route(u, user, QUERIES[0])["history_size"] == base[user] + len(ids) for u in urls)
    print("\n[fleet figures]", json.dumps(figures))


def test_replicas_setting_is_checked(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GMTROUTER_")},
           "GMTROUTER_HOME": str(tmp_path / "home"), "GMTROUTER_ROUTER_REPLICAS": "two"}
    bad = subprocess.run(["bash", str(Path(__file__).resolve().parents[1] / "scripts" / "services.sh"), "up",
                          "router"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "GMTROUTER_ROUTER_REPLICAS=two: expected a positive integer" in bad.stderr
