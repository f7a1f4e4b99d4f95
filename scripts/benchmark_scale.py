"""Scale benchmark: generate N demo interactions, build the graph, train mini-batch epochs, evaluate.

    .venv/bin/python scripts/benchmark_scale.py --interactions 100000 --epochs 5 --json
    .venv/bin/python scripts/benchmark_scale.py --interactions 1000000 --epochs 5 --device cpu --json
    .venv/bin/python scripts/benchmark_scale.py --interactions 1000000 --distinct-texts templates --json  # the old stream
    .venv/bin/python scripts/benchmark_scale.py --interactions 2000 --epochs 2 --json      # smoke
    .venv/bin/python scripts/benchmark_scale.py --mt-bench-compare --epochs 350           # MT-Bench: full vs mini-batch

Steps (each timed):

1. generation: the demo generator's plan (users, groups, ratings) straight into
   columns (``gmt_model.data.demo.demo_columns``; no JSONL), and every distinct query
   text embedded once with the hashed test encoder ``gmt_model.data.demo.HashedEncoder``
   (a deterministic hashed bag of words and word pairs, ``--dim`` wide), stored as
   ``--text-dtype`` (float16 by default).  Not MiniLM: encoding millions of texts
   would take hours of what is meant to measure the graph and training.
   ``--distinct-texts F`` (default 0.7): the share of queries whose text is new,
   never seen before in the stream, as in a real query log (a query is one turn of
   one comparison group; the K LLMs compared answer it, so K interactions share
   it); the rest repeat earlier queries of the same topic, popular ones most
   (``demo.distinct_query_rows``).  ``--distinct-texts templates``: the demo's
   template texts (3,341 distinct texts at 1M interactions: the stream the
   figures before issue 17 rest on);
2. build (``build_s``): the interactions table (``graph.from_columns``: pairs, labels,
   normalised ratings), written to Parquet and read back memory-mapped
   (``read_graph``, which also runs the integrity checks);
3. training: ``--epochs`` mini-batch epochs (``batch_users`` users per step; the
   seed config otherwise), validation once at the end (in user batches), the cold-start
   calibration (in user batches), checkpoints written as in a real run;
4. evaluation: the best checkpoint's GNN scores every test pair in user batches
   (each batch's users with their training history visible); pairwise AUC.

The demo spec scales the ``large`` preset (5,000 users x 52 groups, ~1M interactions):
users = N / (52 x 3.85).  The last line printed is one JSON object with ``interactions``,
``users``, ``build_s``, ``epoch_ms_median``, ``peak_rss_mb``, ``test_auc`` and more.
The text keys: ``distinct_texts`` is the number of distinct query texts (its meaning
since before ``--distinct-texts``, kept so old and new JSON compare key by key);
``distinct_texts_share`` the share asked for (null: templates);
``distinct_texts_share_realised`` new queries / queries; ``queries``;
``distinct_embeddings`` distinct embedding rows (a check that distinct texts are
distinct vectors; counted by two random projections); ``text_dtype``;
``text_table_mb`` the text embedding table's size.
``peak_rss_mb`` is the process's peak resident memory over all steps (generation included).
On CUDA the training loop never syncs per step, so the epoch time is the mean over the
epochs (the losses are read once at the end), not a median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED_CONFIG = REPO / "configs" / "model_config_train" / "gmtrouter.yaml"
INTERACTIONS_PER_GROUP = 3.85  # the demo's mean (k 2.2 records x 1.75 turns)
GROUPS_PER_USER = 52.0  # the large preset's


def progress(stage: str, figures: dict) -> None:
    """The figures so far on stderr (a run stopped by a time limit still leaves what it measured)."""
    print(f"# {stage}: {json.dumps(figures)}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def fixed_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """glibc only: allocations of ``nbytes`` and more always get their own mapping, returned to the
    system when freed (``mallopt(M_MMAP_THRESHOLD)``, the same as ``MALLOC_MMAP_THRESHOLD_=1048576``).
    glibc's default raises that threshold after the first large free, after which the per-step
    temporaries of the size of the table (8-16 MB at 1M interactions) stay in the heap: measured at 1M,
    resident memory crept from 0.6 to 1.7 GB over two epochs and a validation, and 0.6 GB with this.
    The price: every large tensor then gets fresh pages (page faults, zeroing); at 1M an epoch cost
    9.2 CPU-seconds instead of 4.8 (peak 3.2 GB instead of 4.3 GB).  Off by default."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(nbytes)))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False


def text_stats(cols: dict) -> dict:
    """Queries (distinct (group, step)), the share of them whose text is new in stream order, distinct
    embedding rows (two random projections per row, in chunks), the table's size."""
    import numpy as np

    key = cols["group"].astype(np.int64) * 8 + cols["step"]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])  # rows are in (group, record, step) order
    first = first[np.argsort(key[first], kind="stable")]
    _, one = np.unique(key[first], return_index=True)  # one interaction per query, in stream order
    rows = cols["query_row"][np.sort(first[one])]
    # text rows are numbered in order of first appearance: a query is new when its row passes the maximum so far
    new = int(np.count_nonzero(rows == np.maximum.accumulate(np.r_[-1, rows[:-1]]) + 1)) if rows.size else 0
    emb = cols["text_emb"]
    proj = np.random.default_rng(0).normal(size=(emb.shape[1], 2))
    sig = np.concatenate([np.asarray(emb[i:i + 65536], dtype=np.float64) @ proj for i in range(0, emb.shape[0], 65536)])
    return {"queries": int(rows.size), "distinct_texts_share_realised": round(new / max(rows.size, 1), 4),
            "distinct_embeddings": int(np.unique(sig, axis=0).shape[0]),
            "text_table_mb": round(emb.nbytes / 2**20, 1)}


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from gmt_model.method import schema as S
    from gmt_model.method.checkpoint import load_checkpoint
    from gmt_model.method.config import load_train_config
    from gmt_model.data.demo import DemoSpec, HashedEncoder, demo_columns
    from gmt_model.method.graph import from_columns, read_graph
    from gmt_model.evaluation.metrics import pairwise_auc
    from gmt_model.method.training import pair_scores, predict_groups, resolve_device, train

    dev = resolve_device(args.device)
    tuned = fixed_mmap_threshold() if args.fixed_mmap_threshold else False
    n_users = max(4, int(round(args.interactions / (GROUPS_PER_USER * INTERACTIONS_PER_GROUP))))
    spec = DemoSpec(n_users=n_users, n_groups_per_user=GROUPS_PER_USER, seed=args.seed, name="scale")
    share = None if args.distinct_texts == "templates" else float(args.distinct_texts)
    out: dict = {"requested_interactions": args.interactions, "device": str(dev), "batch_users": args.batch_users,
                 "distinct_texts_share": share, "text_dtype": args.text_dtype,
                 "dim": args.dim, "epochs": args.epochs, "torch_threads": torch.get_num_threads(),
                 "malloc_mmap_threshold_fixed": tuned,
                 "train_seed": args.train_seed, "load_avg_1m_start": round(os.getloadavg()[0], 2)}

    t0, c0 = time.perf_counter(), cpu_seconds()
    cols, _ = demo_columns(spec, HashedEncoder(args.dim), distinct_texts=share, text_dtype=args.text_dtype)
    out["generation_s"] = round(time.perf_counter() - t0, 2)
    out["generation_cpu_s"] = round(cpu_seconds() - c0, 2)
    out.update(text_stats(cols))
    out["rss_after_generation_mb"] = peak_rss_mb()
    progress("generation", out)

    with tempfile.TemporaryDirectory(dir=args.work) as work:
        work = Path(work)
        t0, c0 = time.perf_counter(), cpu_seconds()
        g = from_columns(**cols)
        t_tables = time.perf_counter() - t0
        del cols
        g.write_parquet(work / "graph")
        t_write = time.perf_counter() - t0 - t_tables
        del g
        t1 = time.perf_counter()
        g = read_graph(work / "graph")
        t_read = time.perf_counter() - t1
        out["build_s"] = round(time.perf_counter() - t0, 2)
        out["build_cpu_s"] = round(cpu_seconds() - c0, 2)  # what the build costs whatever else runs
        out["build_parts_s"] = {"tables": round(t_tables, 2), "write_parquet": round(t_write, 2),
                                "read_graph_mmap": round(t_read, 2)}
        out["graph_mb_on_disk"] = round(sum(p.stat().st_size for p in (work / "graph").iterdir()) / 2**20, 1)
        out.update(interactions=g.num_interactions, users=g.num_users, llms=g.num_llms,
                   distinct_texts=g.num_texts, training_pairs=int(g.pair_mask(S.SPLIT_TRAIN).sum()),
                   test_pairs=int(g.pair_mask(S.SPLIT_TEST).sum()))
        out["rss_after_build_mb"] = peak_rss_mb()
        progress("build", out)

        cfg = load_train_config(SEED_CONFIG, {
            "epochs": args.epochs, "batch_users": args.batch_users, "eval_every": args.epochs,
            "save_every": 10**9, "device": str(dev), "amp": args.amp, "num_gnn_layers": args.layers,
            **({"seed": args.train_seed} if args.train_seed is not None else {})})
        stamps: list[float] = []
        start: list[float] = []
        cpu: list[float] = []

        def cpu_s() -> float:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            return ru.ru_utime + ru.ru_stime

        def on_epoch(epoch: int, row: dict) -> None:
            stamps.append(time.perf_counter())
            cpu.append(cpu_s())
            progress(f"epoch {epoch}", {"wall_s": round(stamps[-1] - (stamps[-2] if len(stamps) > 1 else start[0]), 2),
                                        "cpu_s": round(cpu[-1] - cpu[-2], 2), "peak_rss_mb": peak_rss_mb(),
                                        "load_avg_1m": round(os.getloadavg()[0], 2)})

        def on_start(done: int) -> None:
            start.append(time.perf_counter())
            cpu.append(cpu_s())

        t0 = time.perf_counter()
        res = train(g, cfg, work / "run", resume=False, callback=on_epoch, on_start=on_start)
        out["train_wall_s"] = round(time.perf_counter() - t0, 2)
        gaps = np.diff(start[:1] + stamps)
        if dev.type == "cuda" or len(set(stamps)) < len(stamps):
            out["epoch_ms_median"] = round(1000 * (stamps[-1] - start[0]) / len(stamps), 1)
            out["epoch_timing"] = "mean (losses read in bulk)"
        else:
            # the last epoch's callback comes after the validation: leave it out when there are others
            plain = gaps[:-1] if len(gaps) > 2 else gaps
            out["epoch_ms_median"] = round(1000 * statistics.median(plain), 1)
            out["epoch_timing"] = "median" + (" (last epoch, with validation, left out)" if len(gaps) > 2 else "")
        out["epoch_ms_all"] = [round(1000 * x, 1) for x in gaps]
        # process CPU seconds per epoch (all threads): what an epoch costs independent of other load;
        # on a quiet machine the wall time is about this divided by the threads that run in parallel
        cpu_gaps = np.diff(cpu)
        cpu_gaps = cpu_gaps[:-1] if cpu_gaps.size > 2 else cpu_gaps
        out["epoch_cpu_s_median"] = round(statistics.median(cpu_gaps), 2) if cpu_gaps.size else None
        out["steps_per_epoch"] = -(-int(np.count_nonzero(np.bincount(
            g.user[g.pair_a[g.pair_mask(S.SPLIT_TRAIN)]], minlength=g.num_users))) // args.batch_users)
        out["best_val_auc"] = round(res.best_metric, 4)
        out["rss_after_training_mb"] = peak_rss_mb()
        progress("training", out)

        t0 = time.perf_counter()
        model = load_checkpoint(res.best_dir, device=dev).model
        with torch.inference_mode():
            gs, scores, _ = predict_groups(model, g, S.SPLIT_TEST, dev, batch_users=args.batch_users, amp=args.amp)
        *_, sa, sb, label = pair_scores(gs, scores)
        out["test_auc"] = round(float(pairwise_auc(sa, sb, label)), 4)
        out["eval_s"] = round(time.perf_counter() - t0, 2)
    out["peak_rss_mb"] = peak_rss_mb()
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    return out


def run_mt_bench(args: argparse.Namespace) -> dict:
    """MT-Bench, full batch vs mini-batch: the seed config for ``--epochs`` epochs on the three per-judge
    splits (``build_jsonl(..., seed=0/1/2)``), test AUC of the evaluation report (GMTRouter as routed, and its
    GNN alone), full-graph evaluation for both so only training differs."""
    import torch

    from gmt_model.method import schema as S
    from gmt_model.method.checkpoint import load_checkpoint
    from gmt_model.method.config import load_train_config
    from gmt_model.data.datasets import build_jsonl
    from gmt_model.evaluation.report import evaluate
    from gmt_model.data.graph_files import build_graph
    from gmt_model.method.training import train

    work = Path(args.work or REPO / ".cache" / "bench_scale")
    rows = []
    for seed in args.mt_bench_seeds:
        folder = Path(args.mt_bench_splits) / f"mt_bench_split{seed}" if args.mt_bench_splits else \
            work / f"mt_bench_split{seed}"
        if not all((folder / f).exists() for f in S.SPLIT_FILES.values()):
            build_jsonl("mt_bench", Path(args.mt_bench), folder, seed=seed)
        g = build_graph({sp: folder / f for sp, f in S.SPLIT_FILES.items()})
        for mode, bu in (("full", None), ("minibatch", args.mt_bench_batch_users)):
            if args.mt_bench_modes and mode not in args.mt_bench_modes:
                continue
            cfg = load_train_config(SEED_CONFIG, {"epochs": args.epochs, "save_every": 10**9, "batch_users": bu,
                                                  "device": args.device, "amp": args.amp})
            with tempfile.TemporaryDirectory(dir=args.work) as d:
                t0 = time.perf_counter()
                res = train(g, cfg, Path(d) / "run", resume=False)
                wall = time.perf_counter() - t0
                rep = evaluate(load_checkpoint(res.best_dir).model, g, "test", baselines=False, cold_start=False,
                               n_resamples=200, device=args.device)
            row = {"split_seed": seed, "mode": mode, "batch_users": bu, "users": g.num_users,
                   "epochs": args.epochs, "train_wall_s": round(wall, 1), "best_epoch": res.best_epoch,
                   "best_val_auc": round(res.best_metric, 4), "test_auc": round(rep.methods["gmtrouter"].auc, 4),
                   "test_auc_ci": [round(float(x), 4) for x in rep.methods["gmtrouter"].auc_ci],
                   "test_auc_gnn": round(rep.methods["gmtrouter_gnn"].auc, 4), "device": res.device}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    out: dict = {"mt_bench": rows, "torch": torch.__version__, "load_avg_1m_end": round(os.getloadavg()[0], 2)}
    for mode in ("full", "minibatch"):
        sel = [r for r in rows if r["mode"] == mode]
        if sel:
            out[f"{mode}_mean_test_auc"] = round(statistics.fmean(r["test_auc"] for r in sel), 4)
            out[f"{mode}_mean_test_auc_gnn"] = round(statistics.fmean(r["test_auc_gnn"] for r in sel), 4)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _share(value: str) -> str:
    if value == "templates":
        return value
    try:
        f = float(value)
    except ValueError:
        f = -1.0
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1] or 'templates', got {value!r}")
    return str(f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", type=int, default=None, help="about this many interactions")
    ap.add_argument("--mt-bench-compare", action="store_true",
                    help="instead: MT-Bench full batch vs mini-batch on the three per-judge splits")
    ap.add_argument("--mt-bench", default=str(REPO.parent / "shared" / "data" / "mt_bench_human"),
                    help="raw MT-Bench human judgments folder")
    ap.add_argument("--mt-bench-splits", default=None,
                    help="folder holding mt_bench_split{0,1,2}/ JSONL splits already built (else built under --work)")
    ap.add_argument("--mt-bench-batch-users", type=int, default=16, help="users per step in the mini-batch run")
    ap.add_argument("--mt-bench-seeds", type=int, nargs="+", default=[0, 1, 2], help="per-judge split seeds")
    ap.add_argument("--mt-bench-modes", nargs="*", default=None, help="full and/or minibatch (default both)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--device", default=None, help="cpu, cuda, or auto (default)")
    ap.add_argument("--batch-users", type=int, default=512, help="users per optimiser step (default 512)")
    ap.add_argument("--dim", type=int, default=384, help="width of the hashed test embeddings (default 384)")
    ap.add_argument("--distinct-texts", default="0.7", type=_share, metavar="F",
                    help="share of queries whose text is new in the stream (default 0.7); 'templates': the "
                         "demo's template texts (3,341 at 1M interactions, the stream before issue 17)")
    ap.add_argument("--text-dtype", choices=("float16", "float32"), default="float16",
                    help="storage of the text embeddings in the graph (default float16)")
    ap.add_argument("--layers", type=int, default=2, help="HGT layers (default 2, the seed config's)")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    ap.add_argument("--seed", type=int, default=0, help="demo seed")
    ap.add_argument("--train-seed", type=int, default=None, help="training seed (default: the seed config's)")
    ap.add_argument("--work", default=None, help="folder for the temporary graph and checkpoints")
    ap.add_argument("--fixed-mmap-threshold", action="store_true",
                    help="fix glibc's mmap threshold at 1 MB: lower peak memory, more CPU (see fixed_mmap_threshold)")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args(argv)
    if args.mt_bench_compare:
        res = run_mt_bench(args)
        print(json.dumps(res))
        return 0
    if args.interactions is None or args.interactions < 500:
        ap.error("--interactions: required, at least 500")
    res = run(args)
    if not args.json:
        for k, v in res.items():
            if k != "epoch_ms_all":
                print(f"{k}: {v}", file=sys.stderr)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
