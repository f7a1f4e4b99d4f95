"""``source .gmtrouter/services/env`` from a fresh shell puts the project's commands on PATH
(docs/deploy.md: ``bash scripts/services.sh up; source .gmtrouter/services/env; dagster job execute
-j train_demo`` answered ``dagster: command not found``, issue 14).

``up`` writes the env file before it starts anything, so this runs without PostgreSQL: a missing
PostgreSQL makes ``up`` stop right after writing it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "scripts" / "services.sh"
VENV_BIN = REPO / ".venv" / "bin"


def test_env_file_puts_the_venv_on_path(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GMTROUTER_")},
           "GMTROUTER_HOME": str(tmp_path / "home"), "GMTROUTER_PG_BINDIR": str(tmp_path / "no-postgres")}
    up = subprocess.run(["bash", str(SERVICES), "up"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120)
    assert up.returncode in (0, 3), up.stdout + up.stderr  # 3: no PostgreSQL here (expected)
    envfile = tmp_path / "home" / "services" / "env"
    assert envfile.is_file(), up.stderr
    # a fresh shell: no venv on PATH, no VIRTUAL_ENV
    script = f"source {envfile} && command -v dagster && command -v gmtrouter && command -v mlflow && echo $PATH"
    fresh = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], env=fresh, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:3] == [str(VENV_BIN / "dagster"), str(VENV_BIN / "gmtrouter"), str(VENV_BIN / "mlflow")]
    # sourcing it twice does not grow PATH
    twice = subprocess.run(["bash", "--noprofile", "--norc", "-c", f"source {envfile}; source {envfile}; echo $PATH"],
                           env=fresh, capture_output=True, text=True, timeout=60)
    assert twice.stdout.strip() == lines[3] == f"{VENV_BIN}:/usr/bin:/bin"
    subprocess.run(["bash", str(SERVICES), "down"], cwd=REPO, env=env, capture_output=True, timeout=120)
