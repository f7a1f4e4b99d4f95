"""A router replica on a big PostgreSQL feedback store (a command, not a test).

    .venv/bin/python scripts/benchmark_fleet.py --users 100000 --rows 2000000          # a throwaway cluster
    .venv/bin/python scripts/benchmark_fleet.py --users 1000000 --rows 20000000 --pg-url postgresql://...
    .venv/bin/python scripts/benchmark_fleet.py --mixed --replicas 1,3 --clients 64 --duration 60   # replicas

Fills the store's ``feedback`` table with ``--rows`` rated rows of ``--users`` users (pairs of LLMs per query,
``COPY``), next to a small synthetic checkpoint (``--ckpt-users``, ``--ckpt-rows``: the training data), then,
in a fresh process, measures what a replica pays:

- start-up: ``GMTRouter(feedback_log=<url>)`` (it reads nothing of the store but its largest id) and the
  resident memory after it;
- an uncached user's first route (its rows read with ``read_user``, its representation and posterior), a
  cached route of the same user and text (no encoding), and feedback + the next route, p50 / p99 (wall
  clock), and the p50 of the measuring thread's CPU time (``*_cpu_p50_ms``: no waits for the store, and
  less sensitive to other processes on the machine than the wall clock).

``--mixed``: for each of ``--replicas`` (1,3), a fresh database and that many ``gmtrouter serve`` processes on
it (each its own home, port and ``feedback_sync_interval``), the server benchmark's demo router
(``scripts/benchmark_server.py``), ``--clients`` (64) clients for ``--duration`` (60) s, client i sending to
replica i % N one request after the other: ``--route-share`` (0.8) routes, the rest ratings, over 200 users
(half known, half new) and the training questions; then every acknowledged feedback id is looked up in the
store (``lost_acknowledged_feedback``).  Prints a table and one JSON line.

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


def measure(ckpt: Path, url: str, users: int, n_texts: int, dim: int, samples: int, seed: int, touch: int = 0,
            max_loaded: int = 50_000) -> dict:
    import torch

    from gmt_model.serving.router import GMTRouter

    torch.set_num_threads(1)
    texts = [f"synthetic query {i}" for i in range(n_texts)]  # the checkpoint's and the store's texts
    enc = HashVecEncoder(dim)
    base = rss_mb()
    t0 = time.perf_counter()
    router = GMTRouter.from_checkpoint(ckpt, encoder=enc, threads=1, feedback_log=url, feedback_sync_interval=1.0,
                                       max_loaded_users=max_loaded)
    startup = time.perf_counter() - t0
    after_start = rss_mb()
    store = router.feedback_log
    spent: dict[str, list[float]] = {"read_user": [], "append_many": [], "read": []}

    def timed(name):  # the store's share of each call: its methods timed where the router calls them
        fn = getattr(store, name)

        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name].append(time.perf_counter() - t)
        return wrapper

    for name in spent:
        setattr(store, name, timed(name))
    rng = np.random.default_rng(seed)
    first, again, fb, sizes = [], [], [], []
    cpu: dict[str, list[float]] = {"first": [], "again": [], "fb": []}  # this thread's CPU time (no waits)
    for i in rng.choice(users, size=min(samples, users), replace=False):
        u = f"fleet_{int(i):07d}"
        text = texts[int(rng.integers(n_texts))]
        t, c = time.perf_counter(), time.thread_time()
        r = router.route_single({"query_text": text, "user_id": u})
        first.append(time.perf_counter() - t)
        cpu["first"].append(time.thread_time() - c)
        sizes.append(r["history_size"])
        t, c = time.perf_counter(), time.thread_time()
        router.route_single({"query_text": text, "user_id": u})
        again.append(time.perf_counter() - t)
        cpu["again"].append(time.thread_time() - c)
        t, c = time.perf_counter(), time.thread_time()
        router.update_user_preference(u, text, router.llms[0], router.llms[1])
        router.route_single({"query_text": text, "user_id": u})
        fb.append(time.perf_counter() - t)
        cpu["fb"].append(time.thread_time() - c)
    pct = lambda x, p: float(np.percentile(np.array(x) * 1000, p))  # noqa: E731
    touched = {}
    if touch:  # memory after routing `touch` more distinct users (each loaded from the store)
        t = time.perf_counter()
        for i in rng.choice(users, size=min(touch, users), replace=False):
            router.route_single({"query_text": texts[int(rng.integers(n_texts))], "user_id": f"fleet_{int(i):07d}"})
        touched = {"touched_users": int(min(touch, users)), "touch_s": time.perf_counter() - t,
                   "rss_after_touch_mb": rss_mb(), "loaded_users": len(router._loaded or ()),
                   "evicted_users": router.evicted, "history_rows": int(router.state.hist.n),
                   "history_texts": int(router.state.hist.n_text), "max_loaded_users": max_loaded}
    return {**touched,"startup_s": startup, "rss_before_mb": base, "rss_after_start_mb": after_start,
            "rss_after_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(), "samples": len(first),
            "loaded_rows_mean": float(np.mean(sizes)) if sizes else 0.0,
            "uncached_first_route_p50_ms": pct(first, 50), "uncached_first_route_p99_ms": pct(first, 99),
            "cached_route_p50_ms": pct(again, 50), "cached_route_p99_ms": pct(again, 99),
            "feedback_route_p50_ms": pct(fb, 50), "feedback_route_p99_ms": pct(fb, 99),
            "uncached_first_route_cpu_p50_ms": pct(cpu["first"], 50), "cached_route_cpu_p50_ms": pct(cpu["again"], 50),
            "feedback_route_cpu_p50_ms": pct(cpu["fb"], 50),
            **{f"store_{k}_p50_ms": pct(v, 50) for k, v in spent.items() if v},
            **{f"store_{k}_calls": len(v) for k, v in spent.items()}}


# ---------------------------------------------------------------------------------------------------------------
# --mixed: N replicas (``gmtrouter serve`` processes) on one store under the server benchmark's mixed load
# ---------------------------------------------------------------------------------------------------------------
def _new_db(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url``; return its URL."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _start_replicas(n: int, ckpt: Path, url: str, work: Path, sync: float) -> list[tuple[subprocess.Popen, int]]:
    import benchmark_server as bs

    procs = []
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    for var in ("GMTROUTER_AUTH_TOKEN", "GMTROUTER_ADMIN_TOKEN", "GMTROUTER_API_KEYS_FILE", "GMTROUTER_IDENTITY_HEADER"):
        env.pop(var, None)
    for i in range(n):
        home = work / f"replica-{i + 1}"
        home.mkdir(parents=True, exist_ok=True)
        cfg = {"model_path": {"load_model_path": str(ckpt)},
               "router": {"device": "cpu", "threads": 1, "feedback_log": url, "feedback_sync_interval": sync},
               "endpoints": {}}
        (home / "router.yaml").write_text(json.dumps(cfg, indent=2))
        port = bs.free_port()
        cmd = [str(Path(sys.executable).with_name("gmtrouter")), "--log-level", "WARNING", "serve", "--config",
               str(home / "router.yaml"), "--port", str(port)]
        procs.append((subprocess.Popen(cmd, env=dict(env, GMTROUTER_HOME=str(home)), cwd=home,
                                       stdout=subprocess.DEVNULL, stderr=open(home / "server.log", "w")), port))
    deadline = time.monotonic() + 300
    for proc, port in procs:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"error: a replica exited with {proc.returncode}; see {work}/replica-*/server.log")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("error: the replicas did not start within 300 s") from None
                time.sleep(0.3)
    return procs


async def _mixed_load(ports: list[int], clients: int, duration: float, users: list[str], pool: list[str],
                      route_share: float, seed: int) -> tuple[dict, list[int]]:
    """``clients`` clients, client i on replica ``i % len(ports)``, each one request after the other:
    ``route_share`` routes, the rest ratings; returns the summary and the acknowledged feedback ids."""
    import asyncio
    import random

    import benchmark_server as bs

    conn = bs.Conn(ports[0])
    _, _, body = await conn.request("GET", "/v1/models")
    info = json.loads(body)
    conn.close()
    cands = [m["id"] for m in info["data"] if m["id"] != "router"]
    lo, hi = tuple(info.get("rating_scale") or (1.0, 5.0))
    for port in ports:  # warm-up: every text encoded once on each replica
        conn = bs.Conn(port)
        for i in range(0, len(pool), 100):
            await conn.request("POST", "/v1/route", {"queries": [
                {"query_text": t, "user_id": users[(i + j) % len(users)]} for j, t in enumerate(pool[i:i + 100])]},
                timeout=600)
        conn.close()
    samples: list[tuple[float, float, int, str]] = []
    acked: list[int] = []
    stop = time.monotonic() + duration

    async def client(i: int) -> None:
        c = bs.Conn(ports[i % len(ports)])
        rng = random.Random(seed * 1000 + i)
        try:
            while time.monotonic() < stop:
                user, text = rng.choice(users), rng.choice(pool)
                if rng.random() < route_share:
                    kind, path, req = "route", "/v1/route", {"query_text": text, "user_id": user}
                else:
                    kind, path = "feedback", "/v1/feedback"
                    req = {"user": user, "query": text, "model": rng.choice(cands),
                           "rating": float(rng.randint(int(lo), int(hi)))}
                await bs.timed_post(c, kind, path, req, 60.0, samples, acked)
        finally:
            c.close()

    t0 = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    out = bs.summary(samples, t0, time.monotonic())
    out["errors"] = sum(v for k, v in out["status"].items() if k != "200")
    return out, acked


def mixed(args: argparse.Namespace) -> int:
    """``--mixed``: for each replica count, a fresh database, the replicas, the load, then every acknowledged
    feedback id looked up in the store."""
    import asyncio

    import psycopg2

    import benchmark_server as bs

    work = (args.work or REPO / ".cache" / "benchmark_fleet").resolve()
    work.mkdir(parents=True, exist_ok=True)
    sargs = argparse.Namespace(work=(REPO / ".cache" / "benchmark_server").resolve(), checkpoint=args.checkpoint,
                               size="small", epochs=30)
    sargs.work.mkdir(parents=True, exist_ok=True)
    ckpt, train_file = bs.prepare(sargs)
    users, pool = bs.load_pool(train_file, args.mixed_users, args.seed)
    cluster = Cluster(args.work) if args.pg_url is None else None
    base_url = cluster.__enter__() if cluster is not None else args.pg_url
    rows = []
    try:
        for n in args.replicas:
            url = _new_db(base_url, f"mixed_{n}_{os.getpid()}_{int(time.time())}")
            load_before = Path("/proc/loadavg").read_text().split()[:3]
            t = time.perf_counter()
            procs = _start_replicas(n, ckpt, url, work / f"r{n}", args.sync_interval)
            start_s = time.perf_counter() - t
            try:
                res, acked = asyncio.run(_mixed_load([p for _, p in procs], args.clients, args.duration, users, pool,
                                                     args.route_share, args.seed))
            finally:
                for proc, _ in procs:
                    proc.terminate()
                for proc, _ in procs:
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            conn = psycopg2.connect(url)
            with conn, conn.cursor() as cur:
                cur.execute("SELECT id FROM feedback")
                stored = {int(r[0]) for r in cur.fetchall()}
            conn.close()
            row = {"replicas": n, "clients": args.clients, "duration_s": args.duration, "start_s": round(start_s, 1),
                   **{k: res[k] for k in ("requests", "req_per_s", "p50_ms", "p90_ms", "p99_ms", "route_p99_ms",
                                          "feedback_p99_ms", "errors", "status")},
                   "acknowledged_feedback": len(acked), "stored_feedback": len(stored),
                   "lost_acknowledged_feedback": len(set(acked) - stored),
                   "loadavg_before": load_before, "loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        if cluster is not None:
            cluster.__exit__(None, None, None)
    print("| replicas | clients | req/s | p50 ms | p99 ms | route p99 | feedback p99 | errors | acknowledged | lost |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['replicas']} | {r['clients']} | {r['req_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['route_p99_ms']} | {r['feedback_p99_ms']} | {r['errors']} | {r['acknowledged_feedback']} | "
              f"{r['lost_acknowledged_feedback']} |")
    print(json.dumps({"mixed": rows}))
    return 0


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
    ap.add_argument("--touch", type=int, default=0,
                    help="then route this many more distinct users and report memory, loaded and evicted users")
    ap.add_argument("--max-loaded-users", type=int, default=50_000, help="the replica's router.max_loaded_users")
    ap.add_argument("--pg-url", default=None, help="an empty PostgreSQL database (default: a throwaway cluster)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --pg-url: do not fill when the store already holds --rows rows or more (a store "
                         "filled by an earlier run; COPY of 20M rows takes minutes)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    mx = ap.add_argument_group("--mixed: replicas under mixed load (gmtrouter serve processes on one store)")
    mx.add_argument("--mixed", action="store_true", help="measure --replicas servers under mixed load instead")
    mx.add_argument("--replicas", type=lambda v: [int(x) for x in v.split(",")], default=[1, 3],
                    help="replica counts to measure, one after the other, each on a fresh database (1,3)")
    mx.add_argument("--clients", type=int, default=64, help="concurrent clients, client i on replica i %% N")
    mx.add_argument("--duration", type=float, default=60.0, help="seconds of load per replica count")
    mx.add_argument("--route-share", type=float, default=0.8, help="share of routes (the rest: ratings)")
    mx.add_argument("--mixed-users", type=int, default=200, help="users of the load (half known, half new)")
    mx.add_argument("--sync-interval", type=float, default=1.0, help="the replicas' feedback_sync_interval")
    mx.add_argument("--checkpoint", default=None,
                    help="router checkpoint (default: the server benchmark's demo router, trained once)")
    ap.add_argument("--_measure", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.checkpoint:  # the replicas run in homes of their own: a relative path is the caller's
        args.checkpoint = str(Path(args.checkpoint).resolve())
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args._measure is not None:
        print(json.dumps(measure(Path(args._measure[0]), args._measure[1], args.users, args.texts, args.dim,
                                 args.samples, args.seed, args.touch, args.max_loaded_users)))
        return 0
    if args.mixed:
        return mixed(args)
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
                   "--seed", str(args.seed), "--touch", str(args.touch), "--max-loaded-users",
                   str(args.max_loaded_users)]
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
