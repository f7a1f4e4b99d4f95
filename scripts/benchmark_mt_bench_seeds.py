#!/usr/bin/env python
"""MT-Bench test AUC over per-judge splits x training seeds, for this code or an older commit.

    .venv/bin/python scripts/benchmark_mt_bench_seeds.py --out /tmp/new.jsonl
    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old .venv/bin/python scripts/benchmark_mt_bench_seeds.py --out /tmp/old.jsonl
    .venv/bin/python scripts/benchmark_mt_bench_seeds.py --compare /tmp/new.jsonl /tmp/old.jsonl

Each run trains the seed config (``configs/model_config_train/gmtrouter.yaml``, full batch, 350
epochs) on one split with one training seed and evaluates the best checkpoint on the test split
(``gmtrouter``: as routed, with the online part; ``gmtrouter_gnn``: the GNN alone).  The splits are
written once with this checkout's ``build_jsonl(..., seed=0/1/2)`` into ``--splits`` and read by
whichever code runs, so two versions are compared on the same files.  It imports the library by its
current module names or the flat names it had before the relayout, so it runs on older commits too.
``--batch-users N`` trains in mini-batches of N users (``--compare`` then sets it against a full-batch
file).  ``--compare`` prints the paired differences (new - old) over the (split, seed) runs both files
hold, with a bootstrap 95% CI, and the mean training time of each.  One line of JSON per run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _library():
    try:
        from gmt_model.data.graph_files import build_graph
        from gmt_model.evaluation.report import evaluate
        from gmt_model.method import schema as S
        from gmt_model.method.checkpoint import load_checkpoint
        from gmt_model.method.config import load_train_config
        from gmt_model.method.training import train
    except ImportError:  # the flat layout before the relayout
        from gmt_model import schema as S
        from gmt_model.checkpoint import load_checkpoint
        from gmt_model.config import load_train_config
        from gmt_model.evaluation import evaluate
        from gmt_model.graph import build_graph
        from gmt_model.training import train
    return build_graph, evaluate, S, load_checkpoint, load_train_config, train


def run(args: argparse.Namespace) -> None:
    import gmt_model

    build_graph, evaluate, S, load_checkpoint, load_train_config, train = _library()
    splits = Path(args.splits)
    for sp in args.split_seeds:
        folder = splits / f"split{sp}"
        if not all((folder / f).exists() for f in S.SPLIT_FILES.values()):
            from gmt_model.data.datasets import build_jsonl
            build_jsonl("mt_bench", Path(args.mt_bench), folder, seed=sp)
    for ts in args.train_seeds:
        for sp in args.split_seeds:
            folder = splits / f"split{sp}"
            g = build_graph({k: folder / f for k, f in S.SPLIT_FILES.items()})
            cfg = load_train_config(str(REPO / "configs" / "model_config_train" / "gmtrouter.yaml"),
                                    {"epochs": args.epochs, "save_every": 10**9, "seed": ts, "device": args.device,
                                     **({"batch_users": args.batch_users} if args.batch_users else {})})
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                res = train(g, cfg, Path(d) / "run", resume=False)
                wall = time.perf_counter() - t0
                rep = evaluate(load_checkpoint(res.best_dir).model, g, "test", baselines=False, cold_start=False,
                               n_resamples=200, device=args.device)
            row = {"code": str(Path(gmt_model.__file__).parent.parent), "train_seed": ts, "split": sp,
                   "batch_users": args.batch_users,
                   "test_auc": round(rep.methods["gmtrouter"].auc, 4),
                   "test_auc_gnn": round(rep.methods["gmtrouter_gnn"].auc, 4),
                   "best_epoch": res.best_epoch, "train_wall_s": round(wall, 1)}
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


def compare(new_path: str, old_path: str) -> dict:
    def load(p):
        rows = [json.loads(line) for line in Path(p).read_text().splitlines() if line.strip()]
        return {(r["train_seed"], r["split"]): {**r, "train_wall_s": r.get("train_wall_s", r.get("wall"))} for r in rows}

    new, old = load(new_path), load(old_path)
    keys = sorted(set(new) & set(old))
    out: dict = {"runs": len(keys)}
    rng = random.Random(0)
    for k in ("test_auc", "test_auc_gnn", "train_wall_s"):
        d = [new[x][k] - old[x][k] for x in keys]
        boot = sorted(statistics.fmean(rng.choices(d, k=len(d))) for _ in range(5000))
        out[k] = {"new": round(statistics.fmean(new[x][k] for x in keys), 4),
                  "old": round(statistics.fmean(old[x][k] for x in keys), 4),
                  "diff": round(statistics.fmean(d), 4), "ci95": [round(boot[124], 4), round(boot[4874], 4)]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="append one JSON line per run here")
    ap.add_argument("--splits", default=str(REPO / ".cache" / "mt_bench_seeds"), help="folder of split0..2")
    ap.add_argument("--mt-bench", default=str(REPO.parent / "shared" / "data" / "mt_bench_human"))
    ap.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[136, 1, 2], help="136: the seed config's")
    ap.add_argument("--epochs", type=int, default=350)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-users", type=int, default=None, help="mini-batch training, N users per step "
                    "(default: full batch)")
    ap.add_argument("--compare", nargs=2, metavar=("NEW", "OLD"), help="paired comparison of two --out files")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.compare:
        print(json.dumps(compare(*args.compare)))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
