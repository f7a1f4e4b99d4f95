"""The live router at scale: start-up time, memory and latency with many users (a command, not a test).

    .venv/bin/python scripts/benchmark_router_scale.py                          # 100k users, 5M history rows
    .venv/bin/python scripts/benchmark_router_scale.py --users 10000 --rows 200000 --json

Builds a synthetic checkpoint (an untrained model of the seed config's
shape: the weights do not change the cost; ``--texts`` distinct query texts,
users with a skewed number of rated interactions, two LLMs rated per query),
then, in a fresh process, measures what a serving process pays:

- start-up: ``GMTRouter.from_checkpoint`` (load, integrity check, per-user
  row index, crowd calibration) and the resident memory after it;
- the first route of a user (its GNN representation over at most
  ``history_window`` rows, its residual posterior), a repeated route, and
  feedback + the next route, p50 / p99 over random users;
- the resident memory after routing ``--touch`` distinct users, with the LRU
  bounding cached users at ``cache_users``.

Embeddings are random unit vectors (no encoder is loaded: the router gets a
table encoder).  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def texts_table(n_texts: int, dim: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_texts, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return [f"synthetic query {i}" for i in range(n_texts)], emb


def build(out: Path, users: int, rows: int, n_texts: int, llms: int, dim: int, seed: int) -> dict:
    """A checkpoint with ``rows`` rated interactions of ``users`` users (pairs of LLMs per query)."""
    import torch

    from gmt_model.method.checkpoint import History, save_checkpoint
    from gmt_model.method.model import GMTModel, ModelConfig

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    pairs = rows // 2
    # skewed activity: a few heavy users, many light ones (every user has at least one pair)
    weight = rng.pareto(1.2, size=users) + 1.0
    per_user = 1 + rng.multinomial(max(0, pairs - users), weight / weight.sum())
    pair_user = np.repeat(np.arange(users), per_user)
    n_pairs = pair_user.size
    a = rng.integers(llms, size=n_pairs)
    b = (a + 1 + rng.integers(llms - 1, size=n_pairs)) % llms
    user = np.repeat(pair_user, 2)
    llm = np.stack([a, b], axis=1).reshape(-1)
    rating = np.stack([np.ones(n_pairs), np.zeros(n_pairs)], axis=1).reshape(-1).astype(np.float32)
    swap = rng.random(n_pairs) < 0.5
    rating.reshape(-1, 2)[swap] = rating.reshape(-1, 2)[swap][:, ::-1]
    group = np.repeat(np.arange(n_pairs), 2)
    query_row = np.repeat(rng.integers(n_texts, size=n_pairs), 2)
    prev = np.full(user.size, -1, dtype=np.int64)
    _, text_emb = texts_table(n_texts, dim)
    llm_emb = np.random.default_rng(seed + 1).normal(size=(llms, dim)).astype(np.float32)
    hist = History(user=user.astype(np.int64), llm=llm.astype(np.int64), rating=rating, prev=prev,
                   llm_emb=llm_emb, group=group.astype(np.int64), text_emb=text_emb,
                   query_row=query_row.astype(np.int64))
    model = GMTModel(ModelConfig(embed_dim=dim))
    save_checkpoint(out, model, users=[f"user_{i:07d}" for i in range(users)],
                    llms=[f"llm_{i}" for i in range(llms)], history=hist, encoder="synthetic-table",
                    rating_scale=(0.0, 1.0))
    return {"rows": int(user.size), "users": users, "texts": n_texts, "max_rows_per_user": int(per_user.max()),
            "build_s": time.perf_counter() - t0}


class TableEncoder:
    def __init__(self, texts: list[str], emb: np.ndarray) -> None:
        self.index = {t: i for i, t in enumerate(texts)}
        self.emb = emb
        self.dim = emb.shape[1]
        self.name = "synthetic-table"

    def encode(self, texts, **_):
        return self.emb[[self.index[t] for t in texts]]


def measure(ckpt: Path, n_texts: int, dim: int, touch: int, samples: int, cache_users: int, seed: int) -> dict:
    import torch

    from gmt_model.serving.router import GMTRouter

    torch.set_num_threads(1)
    texts, emb = texts_table(n_texts, dim)
    enc = TableEncoder(texts, emb)
    base = rss_mb()
    t0 = time.perf_counter()
    router = GMTRouter.from_checkpoint(ckpt, encoder=enc, threads=1, cache_users=cache_users)
    startup = time.perf_counter() - t0
    after_start = rss_mb()
    rng = np.random.default_rng(seed)
    users = router.users
    heavy = max(range(len(users)), key=lambda i: router.history_size(users[i]))

    def q():
        return texts[int(rng.integers(n_texts))]

    first, again, fb = [], [], []
    pick = rng.choice(len(users), size=min(samples, len(users)), replace=False)
    for i in pick:
        u = users[int(i)]
        t = time.perf_counter()
        router.route_single({"query_text": q(), "user_id": u})
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        router.route_single({"query_text": q(), "user_id": u})
        again.append(time.perf_counter() - t)
        t = time.perf_counter()
        router.update_user_preference(u, q(), router.llms[0], router.llms[1])
        router.route_single({"query_text": q(), "user_id": u})
        fb.append(time.perf_counter() - t)
    t = time.perf_counter()
    router.route_single({"query_text": q(), "user_id": users[heavy]})
    heavy_first = time.perf_counter() - t
    for i in rng.choice(len(users), size=min(touch, len(users)), replace=False):
        router.route_single({"query_text": q(), "user_id": users[int(i)]})
    pct = lambda x, p: float(np.percentile(np.array(x) * 1000, p))  # noqa: E731
    return {"startup_s": startup, "rss_before_mb": base, "rss_after_start_mb": after_start,
            "rss_after_touch_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(), "touched_users": int(min(touch, len(users))),
            "cached_users": len(router._user_rep), "cache_users": cache_users,
            "first_route_p50_ms": pct(first, 50), "first_route_p99_ms": pct(first, 99),
            "route_p50_ms": pct(again, 50), "route_p99_ms": pct(again, 99),
            "feedback_route_p50_ms": pct(fb, 50), "feedback_route_p99_ms": pct(fb, 99),
            "heaviest_user_rows": router.history_size(users[heavy]), "heaviest_first_route_ms": heavy_first * 1000}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--texts", type=int, default=50_000)
    ap.add_argument("--llms", type=int, default=6)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--touch", type=int, default=30_000, help="distinct users routed once after the timings")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--cache-users", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--_measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args._measure is not None:
        print(json.dumps(measure(args._measure, args.texts, args.dim, args.touch, args.samples, args.cache_users,
                                 args.seed)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        ckpt = Path(tmp) / "ck"
        info = build(ckpt, args.users, args.rows, args.texts, args.llms, args.dim, args.seed)
        size = sum(p.stat().st_size for p in ckpt.iterdir())
        if not args.json:
            print(f"checkpoint: {info['rows']} rows, {info['users']} users, {size / 2**20:.0f} MiB, "
                  f"built in {info['build_s']:.0f} s; measuring in a fresh process", flush=True)
        cmd = [sys.executable, __file__, "--_measure", str(ckpt), "--texts", str(args.texts), "--dim", str(args.dim),
               "--touch", str(args.touch), "--samples", str(args.samples), "--cache-users", str(args.cache_users),
               "--seed", str(args.seed)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    res.update({"users": info["users"], "rows": info["rows"], "texts": args.texts, "checkpoint_mib": size / 2**20,
                "max_rows_per_user": info["max_rows_per_user"]})
    if not args.json:
        for k, v in res.items():
            print(f"  {k}: {v:.2f}" if isinstance(v, float) else f"  {k}: {v}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
