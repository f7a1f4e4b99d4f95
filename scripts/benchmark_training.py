"""Training benchmark: per-epoch time and peak memory (a command, not a test).

    .venv/bin/python scripts/benchmark_training.py                      # all datasets
    .venv/bin/python scripts/benchmark_training.py --datasets mt_bench --epochs 350

Each dataset runs in its own subprocess so peak RSS is its own.  For every
dataset it reports: interactions, pairs, per-epoch training time (median and
mean over the measured epochs), validation time, total wall time for the
epochs run, peak RSS, and the speed-up of the batched training step over a
reference-style step (two predictor calls per pair in a Python loop) timed in
the same process on the same sampled batches.

Training uses the seed config ``configs/model_config_train/gmtrouter.yaml`` (the reference
protocol) with the given number of epochs.

Datasets: ``demo_small`` (~10k interactions), ``demo_medium`` (~100k),
``mt_bench`` (the real MT-Bench human judgments converted from
``../shared/data/mt_bench_human`` or ``--mt-bench DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MT_BENCH = REPO.parent / "shared" / "data" / "mt_bench_human"
SEED_CONFIG = REPO / "configs" / "model_config_train" / "gmtrouter.yaml"


def prepare(name: str, work: Path, mt_bench: Path) -> dict[str, Path]:
    from gmt_model.method import schema as S

    out = work / name
    if all((out / f).exists() for f in S.SPLIT_FILES.values()):
        return {s: out / f for s, f in S.SPLIT_FILES.items()}
    if name.startswith("demo_"):
        from gmt_model.data.demo import write_demo_dataset

        paths = write_demo_dataset(out, name.split("_", 1)[1])
        return {s: paths[s] for s in S.SPLITS}
    if name == "mt_bench":
        from gmt_model.data.datasets import build_jsonl

        res = build_jsonl("mt_bench", mt_bench, out)
        return {s: Path(p) for s, p in res.paths.items()}
    raise SystemExit(f"unknown dataset {name}")


def run_one(name: str, work: Path, epochs: int, mt_bench: Path, device: str | None, compare: int) -> dict:
    import numpy as np
    import torch

    from gmt_model.method import schema as S
    from gmt_model.method.config import load_train_config
    from gmt_model.method.engine import PRED_QUERY, build_subgraph, score_groups
    from gmt_model.data.graph_files import build_graph
    from gmt_model.method.training import EpochSampler, pairs_as_groups, resolve_device, train

    t0 = time.perf_counter()
    paths = prepare(name, work, mt_bench)
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = build_graph(paths)
    t_graph = time.perf_counter() - t0
    # the seed's training config (the reference protocol: 2 HGT layers, hidden 128, lr 5e-4,
    # 256 predicted pairs, validation every 5 epochs), with this run's epochs
    cfg = load_train_config(SEED_CONFIG, {"epochs": epochs, "save_every": 10**9, "device": device})
    stamps: list[float] = []
    evals: list[float] = []

    def cb(epoch: int, row: dict) -> None:
        stamps.append(time.perf_counter())
        if "val_auc" in row:
            evals.append(row["val_auc"])

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = train(g, cfg, d, resume=False, callback=cb)
        wall = time.perf_counter() - t0
    gaps = np.diff([t0] + stamps)
    eval_epochs = [e for e in range(1, epochs + 1) if e % cfg.eval_every == 0 or e == epochs]
    plain = [gaps[e - 1] for e in range(1, epochs + 1) if e not in eval_epochs]
    with_eval = [gaps[e - 1] for e in eval_epochs]
    out = {
        "dataset": name,
        "interactions": g.num_interactions,
        "users": g.num_users,
        "llms": g.num_llms,
        "training_pairs": int(g.pair_mask(S.SPLIT_TRAIN).sum()),
        "epochs": epochs,
        "gnn_layers": res.model_config["num_gnn_layers"],
        "hidden_dim": res.model_config["hidden_dim"],
        "device": res.device,
        "prepare_s": round(t_prep, 2),
        "graph_build_s": round(t_graph, 2),
        "epoch_ms_median": round(1000 * statistics.median(plain), 1) if plain else None,
        "epoch_ms_mean": round(1000 * statistics.fmean(plain), 1) if plain else None,
        "epoch_with_validation_ms_median": round(1000 * statistics.median(with_eval), 1) if with_eval else None,
        "train_wall_s": round(wall, 2),
        "best_val_auc": round(res.best_metric, 4),
    }
    # batched step vs a reference-style step (two predictor calls per pair, Python loop), same batches
    if compare:
        dev = resolve_device(device)
        from gmt_model.method.model import GMTModel
        from gmt_model.method.training import model_config_for

        model = GMTModel(model_config_for(cfg, g)).to(dev)
        sampler = EpochSampler(g, cfg.record_per_user, cfg.prediction_count)
        rng = np.random.default_rng(0)
        batches = [sampler.sample(rng) for _ in range(compare)]

        def step(batched: bool) -> float:
            t = time.perf_counter()
            for visible, pred in batches:
                gs = pairs_as_groups(g, pred)
                sub = build_subgraph(g, visible, gs.inter.reshape(-1), dev)
                reps = sub.embed(model)
                if batched:
                    s = score_groups(model, reps, sub, gs)
                    diff = s[:, 0] - s[:, 1]
                else:
                    diffs = []
                    for i in range(gs.size):
                        u = reps[S.USER][int(gs.user[i])][None]
                        q = reps[PRED_QUERY][int(sub.pred_local[gs.inter[i, 0]])][None]
                        sa = model.score(u, q, reps[S.LLM][int(gs.llm[i, 0])][None, None])
                        sb = model.score(u, q, reps[S.LLM][int(gs.llm[i, 1])][None, None])
                        diffs.append(sa - sb)
                    diff = torch.cat(diffs).reshape(-1)
                y = torch.from_numpy(np.where(gs.rating[:, 0] > gs.rating[:, 1], 1.0, -1.0).astype(np.float32)).to(dev)
                loss = torch.nn.functional.softplus(-y * diff).mean()
                model.zero_grad()
                loss.backward()
            return (time.perf_counter() - t) / len(batches)

        step(True)
        batched = step(True)
        reference = step(False)
        out["step_ms_batched"] = round(1000 * batched, 1)
        out["step_ms_reference_style"] = round(1000 * reference, 1)
        out["speedup_vs_reference_style"] = round(reference / batched, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["mt_bench", "demo_small", "demo_medium"])
    ap.add_argument("--epochs", type=int, default=None, help="default: 350 for mt_bench, 50 for demo_*")
    ap.add_argument("--work", default=str(REPO / ".cache" / "bench"))
    ap.add_argument("--mt-bench", default=str(DEFAULT_MT_BENCH))
    ap.add_argument("--device", default=None)
    ap.add_argument("--compare-steps", type=int, default=5, help="batches for the reference-style comparison (0: skip)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.one:
        epochs = args.epochs or (350 if args.one == "mt_bench" else 50)
        print(json.dumps(run_one(args.one, work, epochs, Path(args.mt_bench), args.device, args.compare_steps)))
        return
    import torch

    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}", flush=True)
    rows = []
    for name in args.datasets:
        cmd = [sys.executable, __file__, "--one", name, "--work", str(work), "--mt-bench", args.mt_bench,
               "--compare-steps", str(args.compare_steps)]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        if args.device:
            cmd += ["--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"benchmark of {name} failed")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = ["dataset", "interactions", "training_pairs", "epochs", "gnn_layers", "device", "epoch_ms_median",
            "epoch_with_validation_ms_median", "train_wall_s", "peak_rss_mb", "speedup_vs_reference_style",
            "best_val_auc"]
    print("\n| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k)) for k in keys) + " |")


if __name__ == "__main__":
    main()
