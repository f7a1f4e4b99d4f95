"""Load benchmark of ``gmtrouter serve`` (a command, not a test): mixed routes and feedback, then the same
load while one client sends a big ``/v1/route`` batch of new texts.

    .venv/bin/python scripts/benchmark_server.py                          # train the demo router once, measure
    .venv/bin/python scripts/benchmark_server.py --duration 20 --clients 16,64
    .venv/bin/python scripts/benchmark_server.py --checkpoint DIR         # reuse a trained checkpoint folder
    .venv/bin/python scripts/benchmark_server.py --gmtrouter /work/main/.venv/bin/gmtrouter   # another checkout

What it does:

* the router: ``--checkpoint DIR``, else the offline demo dataset (``--size``, default small: 100 users) is
  written and a demo router trained once (``--epochs``, default 30) into ``--work``
  (default ``.cache/benchmark_server``) and reused on later runs;
* the server: ``gmtrouter serve --config <router yaml> --port <free port>`` as its own process, with a fresh
  feedback log in the work folder (``--gmtrouter`` picks the executable: compare two checkouts);
* the load: ``--clients`` concurrent clients (default 16 and 64), each sending one request after the other
  over one keep-alive connection (a small asyncio HTTP/1.1 client, so the client costs little CPU on the
  shared machine): ``--route-share`` (0.8) ``POST /v1/route``, the rest ``POST /v1/feedback`` (a rating of a
  random candidate).  Users: ``--users`` (200), half of them users of the training data, half new (cold
  start until they rate).  Texts: the training data's questions (cached after the warm-up), and a
  ``--new-text-share`` (0.05) of never-seen texts that must be encoded;
* per client count, two phases of ``--duration`` seconds (default 60): ``steady`` and ``big_batch``: in the
  second, after 2 s, one more client sends ``{"queries": [...]}`` with ``--big-batch`` (1000) new texts of
  ``--big-words`` (12) words; the other clients' latencies while that batch is in flight are reported as
  ``during_batch``.
* At the end the feedback log is read back: every feedback id the server acknowledged must be in it
  (``lost_acknowledged_feedback``).

Prints one JSON object (also written to ``--json``): per client count and phase, req/s, p50/p90/p99 (ms),
status counts; the big batch's own status and seconds; the load average before and after.  Run it under
``flock /tmp/gmt_bench.lock`` on a shared machine; the client shares the cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / ".cache" / "benchmark_server"
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu river stone cloud maple ember "
         "harbor lantern meadow orbit prism quartz saddle timber velvet willow").split()


# ---------------------------------------------------------------------------
# the router: train the demo once
# ---------------------------------------------------------------------------
def _run(cmd: list[str], **kw: Any) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr, **kw)  # stdout: the result JSON only


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """(router checkpoint folder, training_set.jsonl)."""
    work = args.work
    data = work / "data"
    train_file = data / "demo" / "training_set.jsonl"
    gmt = str(Path(sys.executable).with_name("gmtrouter"))
    if not train_file.exists():
        _run([gmt, "demo", "--out", str(data / "demo"), "--size", args.size])
    if args.checkpoint is not None:
        return Path(args.checkpoint), train_file
    ckpt = work / "saved" / "gmtrouter"
    if not (ckpt / "config.json").exists():
        cfg = {
            "dataset": {"name": "demo", "path": str(data)},
            "train": {"epochs": args.epochs, "lr": 1e-3, "prediction_count": 256, "objective": "auc",
                      "binary": True, "eval_every": 5, "seed": 136},
            "gmt_config": {"num_gnn_layers": 3, "hidden_dim": 128, "dropout": 0.1, "personalization": True},
            "checkpoint": {"root": str(work / "runs"), "save_every": 25},
            "data_path": {f"{s}_set": str(data / "demo" / f"{s}_set.jsonl") for s in ("training", "valid", "test")},
            "model_path": {"save_model_path": str(work / "saved" / "gmtrouter.pt"),
                           "load_model_path": str(work / "saved" / "gmtrouter.pt")},
        }
        yaml_path = work / "train.yaml"
        yaml_path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        _run([gmt, "train", "--config", str(yaml_path), "--skip-test", "--quiet"])
    return ckpt, train_file


def load_pool(train_file: Path, n_users: int, seed: int) -> tuple[list[str], list[str]]:
    users: dict[str, None] = {}
    texts: dict[str, None] = {}
    with open(train_file) as f:
        for line in f:
            r = json.loads(line)
            users.setdefault(str(r["judge"]), None)
            for turn in r.get("conversation", [])[:1]:
                texts.setdefault(str(turn["query"]), None)
    rng = random.Random(seed)
    known = list(users)
    rng.shuffle(known)
    known = known[: n_users // 2]
    new = [f"bench_new_{i:04d}" for i in range(n_users - len(known))]
    pool = list(texts)
    rng.shuffle(pool)
    return known + new, pool[:300]


async def timed_post(conn: "Conn", kind: str, path: str, body: Any, timeout: float, samples: list,
                     acked: list) -> None:
    """One POST: its sample (start, seconds, status, kind); an acknowledged feedback's id goes to ``acked``."""
    t = time.monotonic()
    try:
        status, _, resp = await conn.request("POST", path, body, timeout=timeout)
    except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError):
        status, resp = 599, b""
    samples.append((t, time.monotonic() - t, status, kind))
    if kind == "feedback" and status == 200:
        fid = json.loads(resp).get("feedback_id")
        if isinstance(fid, int):
            acked.append(fid)


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, ckpt: Path, log_path: Path, port: int) -> subprocess.Popen:
    cfg = {"model_path": {"load_model_path": str(ckpt)},
           "router": {"device": "cpu", "threads": 1, "feedback_log": str(log_path)}, "endpoints": {}}
    yaml_path = args.work / "router.yaml"
    yaml_path.write_text(json.dumps(cfg, indent=2))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    for var in ("GMTROUTER_AUTH_TOKEN", "GMTROUTER_ADMIN_TOKEN", "GMTROUTER_API_KEYS_FILE",
                "GMTROUTER_IDENTITY_HEADER"):
        env.pop(var, None)
    cmd = [args.gmtrouter, "--log-level", "WARNING", "serve", "--config", str(yaml_path), "--port", str(port)]
    cmd += args.server_arg
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(args.work / "server.log", "w"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with {proc.returncode}; see {args.work / 'server.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("error: the server did not start within 180 s")


# ---------------------------------------------------------------------------
# a small HTTP/1.1 keep-alive client (asyncio streams)
# ---------------------------------------------------------------------------
class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any = None, timeout: float = 120.0
                      ) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            data = b"" if body is None else json.dumps(body).encode()
            head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n").encode()
            try:
                self.writer.write(head + data)
                await self.writer.drain()
                return await asyncio.wait_for(self._response(), timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
            except asyncio.TimeoutError:
                self.close()
                raise
        raise RuntimeError("unreachable")

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await self.reader.read()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# ---------------------------------------------------------------------------
# the load
# ---------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 1)


def summary(samples: list[tuple[float, float, int, str]], t0: float, t1: float) -> dict[str, Any]:
    """samples: (start, latency s, status, kind) that ended within [t0, t1]."""
    sel = [s for s in samples if t0 <= s[0] + s[1] <= t1]
    lat = [s[1] for s in sel]
    statuses: dict[str, int] = {}
    for s in sel:
        statuses[str(s[2])] = statuses.get(str(s[2]), 0) + 1
    out = {"seconds": round(t1 - t0, 2), "requests": len(sel), "req_per_s": round(len(sel) / max(t1 - t0, 1e-9), 1),
           "p50_ms": pct(lat, 0.50), "p90_ms": pct(lat, 0.90), "p99_ms": pct(lat, 0.99),
           "max_ms": pct(lat, 1.0), "status": statuses}
    for kind in ("route", "feedback"):
        k = [s[1] for s in sel if s[3] == kind]
        out[f"{kind}_p99_ms"] = pct(k, 0.99)
    return out


async def phase(port: int, clients: int, duration: float, users: list[str], pool: list[str], cands: list[str],
                scale: tuple[float, float], args: argparse.Namespace, big: bool, acked: list[int],
                seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    samples: list[tuple[float, float, int, str]] = []
    stop = time.monotonic() + duration
    counter = [0]

    def new_text(words: int) -> str:
        counter[0] += 1
        return " ".join(rng.choice(WORDS) for _ in range(words)) + f" #{seed}-{counter[0]}"

    async def client(i: int) -> None:
        conn = Conn(port)
        crng = random.Random(seed * 1000 + i)
        try:
            while time.monotonic() < stop:
                user = crng.choice(users)
                text = crng.choice(pool) if crng.random() >= args.new_text_share else new_text(8)
                if crng.random() < args.route_share:
                    kind, path, body = "route", "/v1/route", {"query_text": text, "user_id": user}
                else:
                    kind, path = "feedback", "/v1/feedback"
                    body = {"user": user, "query": text, "model": crng.choice(cands),
                            "rating": float(crng.randint(int(scale[0]), int(scale[1])))}
                await timed_post(conn, kind, path, body, args.request_timeout, samples, acked)
        finally:
            conn.close()

    batch_info: dict[str, Any] = {}

    async def big_batch() -> None:
        await asyncio.sleep(2.0)
        conn = Conn(port)
        queries = [{"query_text": new_text(args.big_words), "user_id": rng.choice(users)}
                   for _ in range(args.big_batch)]
        t = time.monotonic()
        batch_info["start"] = t
        try:
            status, headers, _ = await conn.request("POST", "/v1/route", {"queries": queries}, timeout=600)
        except (asyncio.TimeoutError, OSError) as exc:
            status, headers = 599, {"error": type(exc).__name__}
        batch_info.update(end=time.monotonic(), status=status, retry_after=headers.get("retry-after"))
        conn.close()

    t0 = time.monotonic()
    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    if big:
        tasks.append(asyncio.create_task(big_batch()))
    await asyncio.gather(*tasks)
    t1 = time.monotonic()
    out: dict[str, Any] = {"all": summary(samples, t0, t1)}
    if big and "end" in batch_info:
        out["big_batch"] = {"queries": args.big_batch, "status": batch_info["status"],
                            "seconds": round(batch_info["end"] - batch_info["start"], 2),
                            "retry_after": batch_info.get("retry_after")}
        out["during_batch"] = summary(samples, batch_info["start"], min(batch_info["end"], t1))
    return out


async def run_load(port: int, users: list[str], pool: list[str], args: argparse.Namespace
                   ) -> tuple[dict[str, Any], list[int]]:
    conn = Conn(port)
    status, _, body = await conn.request("GET", "/v1/models")
    info = json.loads(body)
    cands = [m["id"] for m in info["data"] if m["id"] != "router"]
    scale = tuple(info.get("rating_scale") or (1.0, 5.0))
    # warm-up: every pool text once (encoded and cached), every known user once
    for i in range(0, len(pool), 100):
        await conn.request("POST", "/v1/route",
                           {"queries": [{"query_text": t, "user_id": users[(i + j) % len(users)]}
                                        for j, t in enumerate(pool[i:i + 100])]}, timeout=600)
    conn.close()
    acked: list[int] = []
    results: dict[str, Any] = {}
    for n, clients in enumerate(args.clients):
        await phase(port, clients, min(3.0, args.duration), users, pool, cands, scale, args, False, acked, 90 + n)
        steady = await phase(port, clients, args.duration, users, pool, cands, scale, args, False, acked, 10 + n)
        withb = await phase(port, clients, args.duration, users, pool, cands, scale, args, True, acked, 50 + n)
        results[str(clients)] = {"steady": steady["all"], "big_batch_phase": withb["all"],
                                 "big_batch": withb.get("big_batch"), "during_batch": withb.get("during_batch")}
        print(json.dumps({str(clients): results[str(clients)]}), file=sys.stderr, flush=True)
    return results, acked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--checkpoint", default=None, help="a trained checkpoint folder (default: train the demo)")
    p.add_argument("--size", default="small", choices=["tiny", "small", "medium", "large"])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--gmtrouter", default=str(Path(sys.executable).with_name("gmtrouter")),
                   help="the gmtrouter executable that serves (default: this venv's)")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for gmtrouter serve")
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--route-share", type=float, default=0.8)
    p.add_argument("--new-text-share", type=float, default=0.05)
    p.add_argument("--big-batch", type=int, default=1000)
    p.add_argument("--big-words", type=int, default=12)
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt, train_file = prepare(args)
    users, pool = load_pool(train_file, args.users, args.seed)
    log_path = args.work / f"feedback-{os.getpid()}.sqlite"
    port = free_port()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    proc = start_server(args, ckpt, log_path, port)
    try:
        results, acked = asyncio.run(run_load(port, users, pool, args))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    stored: set[int] = set()
    if log_path.exists():
        with sqlite3.connect(str(log_path)) as db:
            stored = {int(r[0]) for r in db.execute("SELECT id FROM feedback")}
    out = {
        "server": args.gmtrouter, "checkpoint": str(ckpt), "clients": args.clients, "duration_s": args.duration,
        "users": args.users, "route_share": args.route_share, "new_text_share": args.new_text_share,
        "big_batch": args.big_batch, "cores": os.cpu_count(), "loadavg_before": load_before,
        "loadavg_after": load_after, "results": results,
        "acknowledged_feedback": len(acked), "lost_acknowledged_feedback": len(set(acked) - stored),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
