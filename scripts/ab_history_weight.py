#!/usr/bin/env python
"""MT-Bench test AUC as routed, with the validated weight of users' training rows in their residual
against every training row counting (weight 1, the router before it), on the same trained models.

    .venv/bin/python scripts/ab_history_weight.py --models .cache/pool_models --splits 0 1 2 3 4 5 6 7 8 9

``--models``: the folder ``benchmark_llm_pool.py --keep-models`` fills (``split{s}_e350_seed136/full/best``,
trained on ``build_jsonl("mt_bench", seed=s)``; missing splits are built and trained here).  Per split: the
weight ``training.router_calibration`` chooses on the validation pairs, and the pairwise test AUC of the
evaluation's ``gmtrouter`` scores with it and with weight 1; then the paired mean difference with a
bootstrap 95% CI over the splits.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def main(argv: list[str] | None = None) -> int:
    import torch

    import benchmark_llm_pool as B
    from gmt_model.data.datasets import build_jsonl
    from gmt_model.data.graph_files import build_graph
    from gmt_model.method import schema as S
    from gmt_model.method.checkpoint import load_checkpoint
    from gmt_model.method.online import online_scores
    from gmt_model.method.pairwise import pair_auc
    from gmt_model.method.training import pair_scores, predict_groups, router_calibration

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=str(REPO / ".cache" / "pool_models"))
    ap.add_argument("--cache", default=str(REPO / ".cache" / "mt_bench_seeds"), help="folder of split0..N")
    ap.add_argument("--mt-bench", default=str(REPO.parent / "shared" / "data" / "mt_bench_human"))
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    dev = torch.device("cpu")
    diffs = []
    print("| split | history weight chosen | test AUC, chosen | test AUC, weight 1 | difference |")
    print("|---|---|---|---|---|")
    for sp in args.splits:
        folder = Path(args.cache) / f"split{sp}"
        if not (folder / "test_set.jsonl").exists():
            build_jsonl("mt_bench", Path(args.mt_bench), folder, seed=sp)
        paths = {s: folder / n for s, n in S.SPLIT_FILES.items()}
        keep = Path(args.models) / f"split{sp}_e350_seed136" / "full"
        keep.mkdir(parents=True, exist_ok=True)
        splits = B.read_split(folder)
        with tempfile.TemporaryDirectory() as d:
            B.train_router(paths, 350, 136, B.Encoder(splits, "sentence-transformers/all-MiniLM-L6-v2"), Path(d), keep=keep)
        g = build_graph(paths)
        model = load_checkpoint(keep / "best", device=dev).model
        calib = router_calibration(model, g, dev)
        gs, scores, sub = predict_groups(model, g, S.SPLIT_TEST, dev)
        _, cold, _ = predict_groups(model, g, S.SPLIT_TEST, dev, cold=True, sub=sub)
        auc = {}
        for name, c in (("chosen", calib), ("one", dataclasses.replace(calib, history=1.0))):
            warm, _, _ = online_scores(model, g, gs, scores, cold, None, dev, calib=c)
            *_, sa, sb, label = pair_scores(gs, warm)
            auc[name] = float(pair_auc(sa, sb, label))
        diffs.append(auc["chosen"] - auc["one"])
        print(f"| {sp} | {calib.history:g} | {auc['chosen']:.4f} | {auc['one']:.4f} | {diffs[-1]:+.4f} |", flush=True)
    d = np.array(diffs)
    rng = np.random.default_rng(0)
    boots = [rng.choice(d, d.size).mean() for _ in range(10_000)]
    print(f"\nmean difference over {d.size} splits: {d.mean():+.4f}, bootstrap 95% CI over the splits "
          f"[{np.percentile(boots, 2.5):+.4f}, {np.percentile(boots, 97.5):+.4f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
