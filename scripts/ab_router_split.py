#!/usr/bin/env python
# usage: git show 2cef49b:gmt_model/serving/router.py > /tmp/h4_old_router.py; .venv/bin/python scripts/ab_router_split.py [epochs]
"""A/B: route_single p50 (no encoding, one torch thread) of the router before issue 15 (commit 2cef49b)
and after, on the same checkpoint, interleaved in one process."""
import importlib.util, sys, time, tempfile, json
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, "/work/wt/h4/scripts"); sys.path.insert(0, "/work/wt/h4")
import benchmark_llm_pool as B
from gmt_model.serving.router import GMTRouter as New
spec = importlib.util.spec_from_file_location("old_router", "/tmp/h4_old_router.py")
old = importlib.util.module_from_spec(spec); sys.modules["old_router"] = old; spec.loader.exec_module(old)
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 350
splits = B.read_split(Path("/work/wt/h4/.cache/mt_bench_seeds/split0"))
enc = B.Encoder(splits, "sentence-transformers/all-MiniLM-L6-v2")
with tempfile.TemporaryDirectory() as d:
    r = B.train_router(B.write_split(Path(d) / "data", splits), epochs, 136, enc, Path(d) / "run")
    ck = r.checkpoint.directory if hasattr(r.checkpoint, "directory") else None
    best = Path(d) / "run" / "best"
    routers = {"old": old.GMTRouter.from_checkpoint(best, encoder=enc, threads=1),
               "new": New.from_checkpoint(best, encoder=enc, threads=1)}
test = B.pairs_of(splits["test"])
qs = [{"query_text": p["query"], "user_id": p["user"]} for p in test[:300]]
for rt in routers.values():
    rt.embed([q["query_text"] for q in qs]); [rt.route_single(q) for q in qs[:50]]
torch.set_num_threads(1)
times = {k: [] for k in routers}
for rnd in range(3):
    for k, rt in routers.items():
        for q in qs:
            t0 = time.perf_counter(); rt.route_single(q); times[k].append((time.perf_counter() - t0) * 1000)
same = all(routers["old"].route_single(q)["model_name"] == routers["new"].route_single(q)["model_name"] for q in qs)
out = {k: float(np.median(v)) for k, v in times.items()}
out["ratio_new_over_old"] = out["new"] / out["old"]; out["same_choices"] = same
out["loadavg"] = open("/proc/loadavg").read().split()[:3]
print(json.dumps(out))
