"""A router replica on a big PostgreSQL feedback store (a command, not a test).

    .venv/bin/python scripts/benchmark_fleet.py --users 100000 --rows 2000000          # a throwaway cluster
    .venv/bin/python scripts/benchmark_fleet.py --users 1000000 --rows 20000000 --pg-url postgresql://...

Fills the store's ``feedback`` table with ``--rows`` rated rows of ``--users`` users (pairs of LLMs per query,
``COPY``), next to a small synthetic checkpoint (``--ckpt-users``, ``--ckpt-rows``: the training data), then,
in a fresh process, measures what a replica pays:

- start-up: ``GMTRouter(feedback_log=<url>)`` (it reads nothing of the store but its largest id) and the
  resident memory after it;
- an uncached user's first route (its rows read with ``read_user``, its representation and posterior), a
  cached route of the same user and text (no encoding), and feedback + the next route, p50 / p99.

Without ``--pg-url`` a PostgreSQL cluster of its own is started with Debian's binaries
(``/usr/lib/postgresql/<version>/bin``) in a temporary folder (as the ``postgres`` user when run as root) and
removed at the end.  Embeddings are random unit vectors (a table encoder).  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from benchmark_router_scale import HashVecEncoder, build, peak_rss_mb, rss_mb  # noqa: E402


class Cluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust authentication)."""

    def __init__(self, work: Path | None) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise SystemExit("error: PostgreSQL is not installed (apt-get install postgresql), or give --pg-url")
        self.bin = Path(bins[-1])
        self.root = Path(tempfile.mkdtemp(prefix="gmtrouter-fleet-pg-", dir=work))
        os.chmod(self.root, 0o755)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root_user = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self.root_user else list(args)
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)

    def __enter__(self) -> str:
        if self.root_user:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.root / "data"), "-U", "postgres", "--auth=trust", "-N",
                  "-E", "UTF8", "--no-locale")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-w",
                  "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c shared_buffers=256MB",
                  "start")
        self._run(str(self.bin / "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "-d", "postgres", "-c", "CREATE DATABASE fleet")
        return f"postgresql://postgres@127.0.0.1:{self.port}/fleet"

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def fill(url: str, users: int, rows: int, n_texts: int, llms: int, seed: int) -> dict:
    """``rows`` feedback rows (pairs: one query, two LLMs, top and bottom rating, one query_id) of ``users``
    users, appended with COPY after whatever the store holds."""
    import psycopg2

    from gmt_model.serving.feedback import PostgresFeedbackStore

    PostgresFeedbackStore(url).close()  # the tables
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    pairs = rows // 2
    batch = 500_000
    conn = psycopg2.connect(url)
    done = 0
    with conn, conn.cursor() as cur:
        while done < pairs:
            n = min(batch, pairs - done)
            u = rng.integers(users, size=n)
            u[: max(0, min(n, users - done))] = np.arange(done, done + max(0, min(n, users - done)))  # all users
            a = rng.integers(llms, size=n)
            b = (a + 1 + rng.integers(llms - 1, size=n)) % llms
            q = rng.integers(n_texts, size=n)
            buf = io.StringIO()
            for i in range(n):
                user = f"fleet_{u[i]:07d}"
                key = f"pref:{done + i}"
                buf.write(f"1\t{user}\tsynthetic query {q[i]}\tllm_{a[i]}\t1\t{key}\n")
                buf.write(f"1\t{user}\tsynthetic query {q[i]}\tllm_{b[i]}\t0\t{key}\n")
            buf.seek(0)
            cur.copy_from(buf, "feedback", columns=("ts", "user_id", "query", "model", "rating", "query_id"))
            done += n
        cur.execute("ANALYZE feedback")
        cur.execute("SELECT pg_size_pretty(pg_total_relation_size('feedback'))")
        size = cur.fetchone()[0]
    conn.close()
    return {"store_rows": 2 * pairs, "store_users": users, "fill_s": time.perf_counter() - t0, "store_size": size}


def existing(url: str, users: int, rows: int) -> dict | None:
    """The store's figures when it already holds ``rows`` rows or more (``--reuse``), else None."""
    import psycopg2

    from gmt_model.serving.feedback import PostgresFeedbackStore

    PostgresFeedbackStore(url).close()
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT COALESCE(MAX(id), 0), pg_size_pretty(pg_total_relation_size('feedback')) FROM feedback")
        n, size = cur.fetchone()
    conn.close()
    if n < rows:
        return None
    return {"store_rows": int(n), "store_users": users, "fill_s": 0.0, "store_size": size, "reused": True}


def measure(ckpt: Path, url: str, users: int, n_texts: int, dim: int, samples: int, seed: int) -> dict:
    import torch

    from gmt_model.serving.router import GMTRouter

    torch.set_num_threads(1)
    texts = [f"synthetic query {i}" for i in range(n_texts)]  # the checkpoint's and the store's texts
    enc = HashVecEncoder(dim)
    base = rss_mb()
    t0 = time.perf_counter()
    router = GMTRouter.from_checkpoint(ckpt, encoder=enc, threads=1, feedback_log=url, feedback_sync_interval=1.0)
    startup = time.perf_counter() - t0
    after_start = rss_mb()
    rng = np.random.default_rng(seed)
    first, again, fb, sizes = [], [], [], []
    for i in rng.choice(users, size=min(samples, users), replace=False):
        u = f"fleet_{int(i):07d}"
        text = texts[int(rng.integers(n_texts))]
        t = time.perf_counter()
        r = router.route_single({"query_text": text, "user_id": u})
        first.append(time.perf_counter() - t)
        sizes.append(r["history_size"])
        t = time.perf_counter()
        router.route_single({"query_text": text, "user_id": u})
        again.append(time.perf_counter() - t)
        t = time.perf_counter()
        router.update_user_preference(u, text, router.llms[0], router.llms[1])
        router.route_single({"query_text": text, "user_id": u})
        fb.append(time.perf_counter() - t)
    pct = lambda x, p: float(np.percentile(np.array(x) * 1000, p))  # noqa: E731
    return {"startup_s": startup, "rss_before_mb": base, "rss_after_start_mb": after_start,
            "rss_after_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(), "samples": len(first),
            "loaded_rows_mean": float(np.mean(sizes)) if sizes else 0.0,
            "uncached_first_route_p50_ms": pct(first, 50), "uncached_first_route_p99_ms": pct(first, 99),
            "cached_route_p50_ms": pct(again, 50), "cached_route_p99_ms": pct(again, 99),
            "feedback_route_p50_ms": pct(fb, 50), "feedback_route_p99_ms": pct(fb, 99)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000, help="users in the feedback store")
    ap.add_argument("--rows", type=int, default=2_000_000, help="rated rows in the feedback store")
    ap.add_argument("--ckpt-users", type=int, default=1_000)
    ap.add_argument("--ckpt-rows", type=int, default=20_000)
    ap.add_argument("--texts", type=int, default=50_000)
    ap.add_argument("--llms", type=int, default=6)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pg-url", default=None, help="an empty PostgreSQL database (default: a throwaway cluster)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --pg-url: do not fill when the store already holds --rows rows or more (a store "
                         "filled by an earlier run; COPY of 20M rows takes minutes)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--_measure", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args._measure is not None:
        print(json.dumps(measure(Path(args._measure[0]), args._measure[1], args.users, args.texts, args.dim,
                                 args.samples, args.seed)))
        return 0
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        cluster = Cluster(args.work) if args.pg_url is None else None
        url = cluster.__enter__() if cluster is not None else args.pg_url
        try:
            ckpt = Path(tmp) / "ck"
            info = build(ckpt, args.ckpt_users, args.ckpt_rows, args.texts, args.llms, args.dim, args.seed,
                         share=None, text_dtype="float32", n_routed=0)
            say(f"checkpoint: {info['rows']} rows, {info['users']} users; filling the store")
            st = existing(url, args.users, args.rows) if args.reuse and args.pg_url else None
            if st is None:
                st = fill(url, args.users, args.rows, args.texts, args.llms, args.seed)
            say(f"store: {st['store_rows']} rows of {st['store_users']} users in {st['fill_s']:.0f} s "
                f"({st['store_size']}); measuring in a fresh process")
            cmd = [sys.executable, __file__, "--_measure", str(ckpt), url, "--users", str(args.users),
                   "--texts", str(args.texts), "--dim", str(args.dim), "--samples", str(args.samples),
                   "--seed", str(args.seed)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
        finally:
            if cluster is not None:
                cluster.__exit__(None, None, None)
    res.update(st)
    res.update({"ckpt_rows": info["rows"], "ckpt_users": info["users"], "texts": args.texts})
    if not args.json:
        for k, v in res.items():
            print(f"  {k}: {v:.2f}" if isinstance(v, float) else f"  {k}: {v}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
