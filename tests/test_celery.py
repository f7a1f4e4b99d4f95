"""Pipeline steps on Celery workers (scripts/services.sh with GMTROUTER_EXECUTOR=celery): Redis from Debian's
package as the broker and result backend, two `celery -A dagster_celery.app worker` processes, the Dagster
instance in PostgreSQL.

- embed_demo partitions run through the workers and give the same shards as an in-process run;
- train_demo's training step (demo/trained_model, `run_job --select`) runs on a worker and gives the same
  weights as in-process, bit for bit;
- a worker process killed (-9) mid-step fails the run with a clear error (WorkerLostError) and leaves no
  half-written shard.

The tiny demo dataset; its interactions table is made in-process first.  Needs PostgreSQL and Redis
(services.sh installs both as root; CI runs as root): skipped only where they cannot be had.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dagster_celery", reason="dagster-celery is not installed")
pa_parquet = pytest.importorskip("pyarrow.parquet")

from test_services import EXIT_NO_POSTGRES, _down_and_clean, _read_env_file, _services  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = ["0", "1"]


@pytest.fixture(scope="module")
def workers():
    root = Path(tempfile.mkdtemp(prefix="gmtrouter-celery-"))
    os.chmod(root, 0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DAGSTER_", "GMTROUTER_")) and k != "VIRTUAL_ENV"}
    env.update({"GMTROUTER_HOME": str(root / "home"), "GMTROUTER_EXECUTOR": "celery", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"})
    try:
        up = _services(env, "up", "postgres", "redis", "celery-worker", timeout=600)
        if up.returncode == EXIT_NO_POSTGRES:
            pytest.skip("PostgreSQL or Redis is not available here: " + " ".join(up.stderr.split())[:300])
        assert up.returncode == 0, up.stdout + up.stderr
        d = type("Workers", (), {})()
        d.root, d.env, d.dir = root, env, root / "home" / "services"
        d.client_env = {**env, **_read_env_file(d.dir / "env")}
        yield d
    finally:
        _down_and_clean(env, root)


def _interactions(env: dict[str, str]) -> None:
    """raw_data and interactions of the tiny demo, in-process (the embedding shards cut from them)."""
    code = """
import dagster as dg
from assets import all_assets
from assets.resources import EncoderResource, MLflowResource, PathsResource
keys = [dg.AssetKey(["demo", "raw_data"]), dg.AssetKey(["demo", "interactions"])]
res = dg.materialize(all_assets(), selection=dg.AssetSelection.assets(*keys),
                     resources={"paths": PathsResource(), "encoder": EncoderResource(), "mlflow": MLflowResource()},
                     run_config={"ops": {"demo__raw_data": {"config": {"size": "tiny"}}}})
assert res.success
"""
    local = {**env, "GMTROUTER_EXECUTOR": "in_process",
             "MLFLOW_TRACKING_URI": f"sqlite:///{env['GMTROUTER_HOME']}/mlflow/mlflow.db"}
    local.pop("DAGSTER_HOME", None)  # an ephemeral instance for this preparation
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=local,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def _run_job(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.run_job", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _shards(home: Path) -> dict[str, dict[bytes, np.ndarray]]:
    out = {}
    for p in sorted(glob.glob(str(home / "**" / "shard-*.parquet"), recursive=True)):
        t = pa_parquet.read_table(p).to_pydict()
        hkey, ekey = list(t)[0], list(t)[1]
        out[Path(p).stem] = {bytes(h): np.asarray(e, dtype=np.float32) for h, e in zip(t[hkey], t[ekey])}
    return out


def _shard_dir(home: Path) -> Path:
    found = glob.glob(str(home / "**" / "shard-*.json"), recursive=True)
    assert found, f"no shards under {home}"
    return Path(found[0]).parent


def _worker_lines(d, needle: str) -> int:
    return sum(p.read_text(errors="replace").count(needle) for p in (d.dir / "logs").glob("celery-worker-*.log"))


@pytest.mark.services
@pytest.mark.slow
def test_embedding_partitions_on_celery_workers_equal_the_in_process_run(workers) -> None:
    d = workers
    home = Path(d.client_env["GMTROUTER_HOME"])
    st = _services(d.env, "status", "postgres", "redis", "celery-worker")
    assert st.returncode == 0, st.stdout
    assert "celery-worker-1: pid" in st.stdout and "celery-worker-2: pid" in st.stdout
    _interactions(d.client_env)
    done_before = _worker_lines(d, "succeeded in")
    t = time.monotonic()
    run = _run_job(d.client_env, "embed_demo", "--partitions", ",".join(PARTITIONS), "--processes", "2")
    celery_s = time.monotonic() - t
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert _worker_lines(d, "succeeded in") - done_before >= len(PARTITIONS)  # the steps ran on the workers
    on_workers = _shards(home)
    assert sorted(on_workers) == [f"shard-{k}" for k in PARTITIONS] and all(on_workers.values())
    shutil.rmtree(_shard_dir(home))
    t = time.monotonic()
    local = _run_job({**d.client_env, "GMTROUTER_EXECUTOR": "in_process"}, "embed_demo", "--partitions",
                     ",".join(PARTITIONS), "--processes", "2")
    local_s = time.monotonic() - t
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    in_process = _shards(home)
    assert sorted(in_process) == sorted(on_workers)
    for k in on_workers:
        assert sorted(on_workers[k]) == sorted(in_process[k])
        for h, v in on_workers[k].items():
            np.testing.assert_allclose(v, in_process[k][h], atol=1e-5)
    print(f"\n[celery figures] embed_demo {len(PARTITIONS)} partitions: celery {celery_s:.1f} s, "
          f"in-process {local_s:.1f} s")


def _pool_children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
    return out


@pytest.mark.services
@pytest.mark.slow
def test_a_worker_killed_mid_step_fails_the_run_and_writes_nothing(workers) -> None:
    d = workers
    home = Path(d.client_env["GMTROUTER_HOME"])
    if not glob.glob(str(home / "**" / "interactions" / "**"), recursive=True):
        _interactions(d.client_env)
    folder = home  # the shard folder may not exist yet
    target = "f"
    for p in glob.glob(str(folder / "**" / f"shard-{target}.*"), recursive=True):
        os.remove(p)
    received_before = _worker_lines(d, "] received")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.run_job", "embed_demo", "--partitions", target,
                             "--processes", "1"], cwd=REPO, env=d.client_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while _worker_lines(d, "] received") == received_before:
            assert time.monotonic() < deadline and proc.poll() is None, "no worker received the step"
            time.sleep(0.05)
        # the worker that logged the task: kill its pool process (the one running the step)
        killed = None
        for i in (1, 2):
            log = (d.dir / "logs" / f"celery-worker-{i}.log").read_text(errors="replace")
            if log.count("] received") > 0:
                main = int((d.dir / "pids" / f"celery-worker-{i}.pid").read_text().split()[0])
                for child in _pool_children(main):
                    os.kill(child, signal.SIGKILL)
                    killed = child
        assert killed is not None
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    assert "FAILURE" in out and "WorkerLostError" in out + err, out[-3000:] + err[-3000:]
    assert not glob.glob(str(folder / "**" / f"shard-{target}.*"), recursive=True)  # nothing half-written
    # the workers go on: the pool process is replaced and the next run succeeds
    again = _run_job(d.client_env, "embed_demo", "--partitions", target, "--processes", "1")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert glob.glob(str(folder / "**" / f"shard-{target}.parquet"), recursive=True)


def _train_config(path: Path, home: Path) -> Path:
    """The tiny demo, 2 epochs, no user-blind model; MLflow in a SQLite file under the data root (the
    fixture starts no MLflow server; the run config reaches the workers with the run)."""
    path.write_text(
        "ops:\n"
        "  demo__raw_data: {config: {size: tiny}}\n"
        "  demo__trained_model:\n"
        "    config: {epochs: 2, eval_every: 1, save_every: 1000, train_user_blind: false, log_checkpoints: false}\n"
        "resources:\n"
        f"  mlflow: {{config: {{tracking_uri: 'sqlite:///{home}/mlflow/mlflow.db'}}}}\n", encoding="utf-8")
    return path


def _model(home: Path) -> tuple[dict[str, np.ndarray], str]:
    """The trained router's tensors (model.safetensors) and its training curves (history.json)."""
    from safetensors.numpy import load_file

    found = glob.glob(str(home / "**" / "models" / "demo" / "**" / "model.safetensors"), recursive=True)
    assert len(found) == 1, found
    folder = Path(found[0]).parent
    return load_file(found[0]), (folder.parent / "history.json").read_text(encoding="utf-8")


@pytest.mark.services
@pytest.mark.slow
def test_training_on_a_celery_worker_equals_the_in_process_training(workers, tmp_path) -> None:
    """train_demo's training step (demo/trained_model, `run_job --select`) on a worker, then in this
    machine's process on the same graph: the same weights, bit for bit (seeded, deterministic on CPU)."""
    d = workers
    home = Path(d.client_env["GMTROUTER_HOME"])
    cfg = str(_train_config(tmp_path / "train.yaml", home))
    local_env = {**d.client_env, "GMTROUTER_EXECUTOR": "in_process"}
    if not glob.glob(str(home / "**" / "interactions" / "**"), recursive=True):
        _interactions(d.client_env)
    t = time.monotonic()
    up = _run_job(local_env, "train_demo", "--select", "demo/text_embeddings,demo/graph_parquet", "-c", cfg)
    prep_s = time.monotonic() - t
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    done_before = _worker_lines(d, "succeeded in")
    t = time.monotonic()
    run = _run_job(d.client_env, "train_demo", "--select", "demo/trained_model", "-c", cfg)
    celery_s = time.monotonic() - t
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert _worker_lines(d, "succeeded in") - done_before >= 1  # the step ran on a worker
    logs = "".join(p.read_text(errors="replace") for p in (d.dir / "logs").glob("celery-worker-*.log"))
    assert "trained_model" in logs, logs[-3000:]
    on_worker, curves_worker = _model(home)
    t = time.monotonic()
    local = _run_job(local_env, "train_demo", "--select", "demo/trained_model", "-c", cfg)
    local_s = time.monotonic() - t
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    in_process, curves_local = _model(home)
    assert len(on_worker) > 10 and sorted(on_worker) == sorted(in_process)
    for name, w in on_worker.items():
        assert w.dtype == in_process[name].dtype and np.array_equal(w, in_process[name]), f"{name} differs"
    assert curves_worker == curves_local
    print(f"\n[celery figures] demo/trained_model (2 epochs): celery {celery_s:.1f} s, in-process {local_s:.1f} s "
          f"(upstream in-process {prep_s:.1f} s)")
