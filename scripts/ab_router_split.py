#!/usr/bin/env python
"""A/B: route_single p50 (no encoding, one torch thread) of the router before issue 15's split
(commit 2cef49b) and after, on the same checkpoint, interleaved in one process.

    git show 2cef49b:gmt_model/serving/router.py > /tmp/h4_old_router.py
    .venv/bin/python scripts/ab_router_split.py --epochs 350

The split folder (``--split-dir``) holds MT-Bench split 0 as written by scripts/benchmark_mt_bench_seeds.py
(``.cache/mt_bench_seeds/split0``).  Prints one JSON line: median ms of each, their ratio, and whether the
two routers chose the same LLM on every query.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=350)
    ap.add_argument("--old-router", default="/tmp/h4_old_router.py", help="the older router.py (git show ...)")
    ap.add_argument("--split-dir", default=str(REPO / ".cache" / "mt_bench_seeds" / "split0"))
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    import benchmark_llm_pool as B
    from gmt_model.serving.router import GMTRouter as New

    spec = importlib.util.spec_from_file_location("old_router", args.old_router)
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_router"] = old
    spec.loader.exec_module(old)
    splits = B.read_split(Path(args.split_dir))
    enc = B.Encoder(splits, "sentence-transformers/all-MiniLM-L6-v2")
    with tempfile.TemporaryDirectory() as d:
        B.train_router(B.write_split(Path(d) / "data", splits), args.epochs, 136, enc, Path(d) / "run")
        best = Path(d) / "run" / "best"
        routers = {"old": old.GMTRouter.from_checkpoint(best, encoder=enc, threads=1),
                   "new": New.from_checkpoint(best, encoder=enc, threads=1)}
    qs = [{"query_text": p["query"], "user_id": p["user"]} for p in B.pairs_of(splits["test"])[: args.queries]]
    for rt in routers.values():  # warm: every text embedded, every user's representation computed
        rt.embed([q["query_text"] for q in qs])
        for q in qs[:50]:
            rt.route_single(q)
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {k: [] for k in routers}
    for _ in range(3):  # interleaved rounds
        for k, rt in routers.items():
            for q in qs:
                t0 = time.perf_counter()
                rt.route_single(q)
                times[k].append((time.perf_counter() - t0) * 1000)
    same = all(routers["old"].route_single(q)["model_name"] == routers["new"].route_single(q)["model_name"]
               for q in qs)
    out: dict = {k: float(np.median(v)) for k, v in times.items()}
    out.update(ratio_new_over_old=out["new"] / out["old"], same_choices=same,
               loadavg=open("/proc/loadavg").read().split()[:3])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
