"""The live router at scale: start-up time, memory and latency with many users (a command, not a test).

    .venv/bin/python scripts/benchmark_router_scale.py                          # 100k users, 5M history rows
    .venv/bin/python scripts/benchmark_router_scale.py --users 10000 --rows 200000 --json
    .venv/bin/python scripts/benchmark_router_scale.py --distinct-texts none --texts 50000   # the old stream

Builds a synthetic checkpoint (an untrained model of the seed config's
shape: the weights do not change the cost; users with a skewed number of
rated interactions, two LLMs rated per query), then, in a fresh process,
measures what a serving process pays.  The query stream: ``--distinct-texts F``
(default 0.7) of the queries are new texts, never seen before in the stream,
the rest repeat earlier ones (popular ones most), as in a real query log;
the texts are the demo's templates worded like real queries
(``gmt_model.data.demo.distinct_query_rows``).  The history holds the stream's
first queries and the routed queries continue it, so they are new with the same
share.  ``--distinct-texts none``: ``--texts`` synthetic texts drawn uniformly
(the stream before issue 17).  The checkpoint stores the text table as
``--text-dtype`` (float16 by default, as training on a float16 graph writes it).

- start-up: ``GMTRouter.from_checkpoint`` (load, integrity check, per-user
  row index, crowd calibration) and the resident memory after it;
- the first route of a user (its GNN representation over at most
  ``history_window`` rows, its residual posterior), a repeated route, and
  feedback + the next route, p50 / p99 over random users;
- the resident memory after routing ``--touch`` distinct users, with the LRU
  bounding cached users at ``cache_users``.

Embeddings are random unit vectors seeded by the text's hash (no encoder
model is loaded, and no table of them: the router gets an encoder that
computes a text's vector from the text in microseconds).  The last line is one
JSON object: the keys as before, plus ``distinct_texts`` (the share asked for;
null with ``none``), ``distinct_texts_share_realised`` (new queries / queries
of the history), ``text_dtype``; ``texts`` is the number of distinct texts of
the history.
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


def text_vec(text: str, dim: int) -> np.ndarray:
    """A random unit vector seeded by the text (the same text, the same vector; float32)."""
    import hashlib

    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(dim, dtype=np.float32)
    return v / np.linalg.norm(v)


def query_stream(n_queries: int, share: float | None, n_texts: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``(texts, row of each query)``: texts in order of first appearance.  ``share`` None: ``n_texts``
    synthetic texts drawn uniformly (the old stream)."""
    if share is None:
        rng = np.random.default_rng(seed)
        return [f"synthetic query {i}" for i in range(n_texts)], rng.integers(n_texts, size=n_queries)
    from gmt_model.data.demo import DemoSpec, HashedEncoder, demo_columns, distinct_query_rows

    # the demo's template texts (first turns and follow-ups) as the pool the queries are worded from
    templ = demo_columns(DemoSpec(n_users=200, n_groups_per_user=26.0, seed=seed), HashedEncoder(2))[0]["texts"]
    rng = np.random.default_rng(seed + 1)
    base = rng.integers(len(templ), size=(n_queries, 1))
    table, texts = distinct_query_rows(base, np.ones(n_queries, np.int64), rng.integers(6, size=n_queries), templ,
                                       share, seed)
    return texts, table[:, 0]


def build(out: Path, users: int, rows: int, n_texts: int, llms: int, dim: int, seed: int, share: float | None,
          text_dtype: str, n_routed: int) -> dict:
    """A checkpoint with ``rows`` rated interactions of ``users`` users (pairs of LLMs per query), and the
    queries to route after it (``routed.json`` beside it: the stream continued)."""
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
    # the history's queries in random order of users (a stream interleaves users)
    texts, q_rows = query_stream(n_pairs + n_routed, share, n_texts, seed)
    hist_q = q_rows[:n_pairs]
    order = rng.permutation(n_pairs)  # stream position of each pair
    n_hist_texts = int(hist_q.max()) + 1 if share is not None else n_texts
    query_row = np.repeat(hist_q[order], 2)
    np_dtype = np.float16 if text_dtype == "float16" else np.float32
    text_emb = np.empty((n_hist_texts, dim), np_dtype)
    for i in range(n_hist_texts):
        text_emb[i] = text_vec(texts[i], dim)
    new = np.r_[True, hist_q[1:] > np.maximum.accumulate(hist_q)[:-1]] if share is not None else None
    routed = [texts[int(r)] for r in q_rows[n_pairs:]]
    (out.parent / "routed.json").write_text(json.dumps(routed))
    llm_emb = np.random.default_rng(seed + 1).normal(size=(llms, dim)).astype(np.float32)
    hist = History(user=user.astype(np.int64), llm=llm.astype(np.int64), rating=rating, prev=np.full(user.size, -1, np.int64),
                   llm_emb=llm_emb, group=group.astype(np.int64), text_emb=text_emb,
                   query_row=query_row.astype(np.int64))
    model = GMTModel(ModelConfig(embed_dim=dim))
    save_checkpoint(out, model, users=[f"user_{i:07d}" for i in range(users)],
                    llms=[f"llm_{i}" for i in range(llms)], history=hist, encoder="synthetic-hash",
                    rating_scale=(0.0, 1.0))
    return {"rows": int(user.size), "users": users, "texts": n_hist_texts, "max_rows_per_user": int(per_user.max()),
            "build_s": time.perf_counter() - t0,
            "distinct_texts_share_realised": None if new is None else round(float(new.mean()), 4)}


class HashVecEncoder:
    """The encoder of the synthetic checkpoint: ``text_vec`` of each text (no model, no table)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.name = "synthetic-hash"

    def encode(self, texts, **_):
        return np.stack([text_vec(t, self.dim) for t in texts]) if len(texts) else np.zeros((0, self.dim), np.float32)


def measure(ckpt: Path, dim: int, touch: int, samples: int, cache_users: int, seed: int) -> dict:
    import torch

    from gmt_model.serving.router import GMTRouter

    torch.set_num_threads(1)
    routed = iter(json.loads((ckpt.parent / "routed.json").read_text()))
    enc = HashVecEncoder(dim)
    base = rss_mb()
    t0 = time.perf_counter()
    router = GMTRouter.from_checkpoint(ckpt, encoder=enc, threads=1, cache_users=cache_users)
    startup = time.perf_counter() - t0
    after_start = rss_mb()
    rng = np.random.default_rng(seed)
    users = router.users
    heavy = max(range(len(users)), key=lambda i: router.history_size(users[i]))

    def q():  # the query stream, continued after the history's
        return next(routed)

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
    ap.add_argument("--texts", type=int, default=50_000, help="with --distinct-texts none: distinct texts")
    ap.add_argument("--distinct-texts", default="0.7", metavar="F",
                    help="share of queries whose text is new in the stream (default 0.7); 'none': --texts "
                         "synthetic texts drawn uniformly (the stream before issue 17)")
    ap.add_argument("--text-dtype", choices=("float16", "float32"), default="float16",
                    help="the checkpoint's text table (default float16)")
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
        print(json.dumps(measure(args._measure, args.dim, args.touch, args.samples, args.cache_users, args.seed)))
        return 0
    share = None
    if args.distinct_texts != "none":
        try:
            share = float(args.distinct_texts)
        except ValueError:
            share = -1.0
        if not 0.0 <= share <= 1.0:
            ap.error(f"--distinct-texts: expected a share in [0, 1] or 'none', got {args.distinct_texts!r}")
    n_routed = 4 * args.samples + 1 + args.touch  # per sample: 3 routes and 1 feedback
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        ckpt = Path(tmp) / "ck"
        info = build(ckpt, args.users, args.rows, args.texts, args.llms, args.dim, args.seed, share, args.text_dtype,
                     n_routed)
        size = sum(p.stat().st_size for p in ckpt.iterdir())
        if not args.json:
            print(f"checkpoint: {info['rows']} rows, {info['users']} users, {size / 2**20:.0f} MiB, "
                  f"built in {info['build_s']:.0f} s; measuring in a fresh process", flush=True)
        cmd = [sys.executable, __file__, "--_measure", str(ckpt), "--dim", str(args.dim),
               "--touch", str(args.touch), "--samples", str(args.samples), "--cache-users", str(args.cache_users),
               "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"the measuring process failed (exit {proc.returncode})")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update({"users": info["users"], "rows": info["rows"], "texts": info["texts"], "checkpoint_mib": size / 2**20,
                "max_rows_per_user": info["max_rows_per_user"], "distinct_texts": share,
                "distinct_texts_share_realised": info["distinct_texts_share_realised"], "text_dtype": args.text_dtype,
                "build_s": info["build_s"], "load_avg_1m_end": round(os.getloadavg()[0], 2)})
    if not args.json:
        for k, v in res.items():
            print(f"  {k}: {v:.2f}" if isinstance(v, float) else f"  {k}: {v}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
