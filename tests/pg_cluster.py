"""A throwaway PostgreSQL cluster for tests: Debian's binaries (/usr/lib/postgresql/<version>/bin, or
$GMTROUTER_PG_BINDIR), initdb in a temporary folder, 127.0.0.1 on a free port, trust authentication.

``pg_bin()`` is None where PostgreSQL is not installed (tests skip then; CI installs it: scripts/setup.sh).
As root the cluster runs as the ``postgres`` user (initdb refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def pg_bin() -> Path | None:
    cands = [os.environ["GMTROUTER_PG_BINDIR"]] if os.environ.get("GMTROUTER_PG_BINDIR") else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in p.split("/")[-2].split(".")
                                                               if x.isdigit()])[::-1]
    for c in cands:
        if os.access(Path(c) / "initdb", os.X_OK) and os.access(Path(c) / "pg_ctl", os.X_OK):
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """``with PgCluster() as pg: pg.url(db)`` (``pg.create_db(name)`` first)."""

    def __init__(self) -> None:
        b = pg_bin()
        if b is None:
            raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")
        self.bin = b
        self.root = Path(tempfile.mkdtemp(prefix="gmtrouter-pg-"))
        os.chmod(self.root, 0o755)
        self.data = self.root / "data"
        self.port = _free_port()
        self.root_user = os.geteuid() == 0

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self.root_user else list(args)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=120, check=True)

    def __enter__(self) -> "PgCluster":
        if self.root_user:
            shutil.chown(self.root, "postgres", "postgres")
        self.run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-locale",
                 "--auth=trust", "-N")
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                 "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=on "
                       "-c max_connections=200", "start")
        return self

    def create_db(self, name: str) -> str:
        self.run(str(self.bin / "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                 "-d", "postgres", "-c", f"CREATE DATABASE {name}")
        return self.url(name)

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"),
                       capture_output=True, timeout=120)

    def start(self) -> None:
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                 "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200",
                 "start")

    def __exit__(self, *exc: object) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
