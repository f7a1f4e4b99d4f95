"""Routing benchmark: route_single latency, route_batch throughput, feedback time (a command, not a test).

    .venv/bin/python scripts/benchmark_router.py                       # train (350 epochs) and measure
    .venv/bin/python scripts/benchmark_router.py --epochs 50           # shorter training
    .venv/bin/python scripts/benchmark_router.py --checkpoint DIR      # reuse a trained checkpoint
    .venv/bin/python scripts/benchmark_router.py --checkpoint DIR --threads 1 --only-encoders   # backends only

The router is trained on the real MT-Bench human judgments
(``../shared/data/mt_bench_human``, converted with
``gmt_model.data.datasets.build_jsonl`` into ``.cache/benchmark_router/``) with
the seed training config (``configs/model_config_train/gmtrouter.yaml``),
then measured on CPU with ``time.perf_counter`` after warm-up:

* ``route_single`` latency p50/p99 excluding query encoding (the router's
  embedding cache is pre-warmed with the query texts) and including the
  MiniLM encoding (a fresh, never-seen text each call: the MT-Bench
  questions with a suffix " (<two random words> <call number>)", ~4 tokens) with the router's default encoder backend (ONNX
  fp32 when onnxruntime is installed, see ``gmt_model.data.encoder``);
* the same ``route_single`` including encoding for each encoder backend, in
  the same process, in interleaved rounds (so a change of machine load hits
  all alike), as wall time and as process CPU time (all threads; less
  sensitive to other jobs on a shared machine): torch (sentence-transformers), ONNX fp32 with 1 and 2
  onnxruntime threads (2 also with spinning worker threads), ONNX int8; with each backend's cosine to the torch
  embeddings on the MT-Bench questions (int8 is a different encoder: a router
  must be trained on data embedded by it to use it);
* ``route_batch`` throughput in queries/s (batch sizes 64, 256, 1024;
  excluding encoding);
* ``update_user_feedback`` time p50/p99, alone and together with the next
  ``route_single`` for the same user (the user's representation is
  recomputed there, so that is when the feedback takes effect).  The
  durable feedback log (SQLite) is written in both.

Prints a Markdown report: the targets of the serving issue with PASS/FAIL,
machine information (cores, torch threads) and the load average, which
matters when the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MT_BENCH = REPO.parent / "shared" / "data" / "mt_bench_human"
DEFAULT_WORK = REPO / ".cache" / "benchmark_router"
SEED_TRAIN_CONFIG = REPO / "configs" / "model_config_train" / "gmtrouter.yaml"

#: (row label, measured key, comparison, target, unit) -- the targets of the serving issue (2 CPU cores)
TARGETS: list[tuple[str, str, str, float, str]] = [
    ("route_single p50, excluding encoding", "single_cached_p50_ms", "<", 2.0, "ms"),
    ("route_single p50, including MiniLM encoding (router default backend)", "single_encoded_p50_ms", "<", 10.0, "ms"),
    ("route_batch throughput (batch 1024), excluding encoding", "batch_1024_qps", ">", 5000.0, "queries/s"),
    ("feedback applied (update_user_feedback + next route), p50", "feedback_then_route_p50_ms", "<", 10.0, "ms"),
]

__all__ = ["main", "prepare_data", "train_router", "measure", "compare_encoder_backends", "render_markdown",
           "render_backends", "TARGETS", "BACKEND_SPECS"]

#: (label, encoder name, backend, onnx threads, onnx spinning) compared by compare_encoder_backends
BACKEND_SPECS: list[tuple[str, str, str, int | None, bool]] = [
    ("torch (sentence-transformers)", "all-MiniLM-L6-v2", "torch", None, False),
    ("onnx fp32, 1 thread", "all-MiniLM-L6-v2", "onnx", 1, False),
    ("onnx fp32, 2 threads (default)", "all-MiniLM-L6-v2", "onnx", 2, False),
    ("onnx fp32, 2 spinning threads", "all-MiniLM-L6-v2", "onnx", 2, True),
    ("onnx int8, 1 thread", "all-MiniLM-L6-v2-onnx-int8", "onnx", 1, False),
]


def _log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def prepare_data(work: Path, mt_bench: Path) -> dict[str, Path]:
    """Convert MT-Bench into GMTRouter JSONL splits under ``work/data`` (skipped when present)."""
    from gmt_model.method import schema as S
    from gmt_model.data.datasets import build_jsonl

    out = work / "data" / "mt_bench"
    paths = {s: out / S.SPLIT_FILES[s] for s in S.SPLITS}
    if all(p.exists() for p in paths.values()):
        return paths
    if not mt_bench.is_dir():
        raise SystemExit(f"error: MT-Bench data not found at {mt_bench} (pass --mt-bench DIR)")
    _log(f"converting {mt_bench} -> {out}")
    res = build_jsonl("mt_bench", mt_bench, out)
    return {s: Path(res.paths[s]) for s in S.SPLITS}


def train_router(work: Path, paths: dict[str, Path], epochs: int, seed_config: Path) -> tuple[Path, dict[str, Any]]:
    """Train with the seed config's keys (``epochs`` overridden) on CPU; returns the best checkpoint folder."""
    from gmt_model.method.config import load_train_config
    from gmt_model.data.graph_files import build_graph
    from gmt_model.method.training import train

    overrides = {"epochs": epochs, "device": "cpu", "training_set": str(paths["training"]),
                 "valid_set": str(paths["valid"]), "test_set": str(paths["test"]),
                 "checkpoint_root": str(work / "models")}
    cfg = load_train_config(seed_config, overrides, relative_to=REPO)
    g = build_graph({k: str(v) for k, v in paths.items()}, relations=cfg.relations)
    run_dir = work / "models" / f"mt_bench_e{epochs}"
    _log(f"training {epochs} epochs on {g.counts()} -> {run_dir}")
    t0 = time.perf_counter()
    res = train(g, cfg, run_dir, resume=True)
    info = {"epochs": epochs, "best_epoch": res.best_epoch, f"best_val_{cfg.objective}": round(res.best_metric, 4),
            "train_wall_s": round(time.perf_counter() - t0, 1), "counts": g.counts()}
    return res.best_dir, info


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _time_calls(fn: Callable[[int], Any], n: int, warmup: int) -> list[float]:
    """Milliseconds of ``fn(i)`` for ``n`` calls after ``warmup`` unmeasured ones."""
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(warmup + i)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _question_texts(mt_bench: Path, graph_texts: list[str]) -> list[str]:
    """The MT-Bench question turns (from question.jsonl when present, else the data's query texts)."""
    qfile = mt_bench / "question.jsonl"
    texts: list[str] = []
    if qfile.exists():
        for line in qfile.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.extend(t for t in json.loads(line).get("turns", []) if isinstance(t, str) and t.strip())
    return list(dict.fromkeys(texts or graph_texts))


def _run_tag(texts: list[str]) -> str:
    """Two random words from the questions' vocabulary: makes each run's texts new (no cache hit) while
    adding only ~4 tokens per query (a hex nonce adds 12-19 word pieces, inflating the encoding cost)."""
    import random

    vocab = sorted({w for t in texts for w in t.lower().split() if w.isalpha() and 3 <= len(w) <= 8})
    rnd = random.SystemRandom()
    return " ".join(rnd.choice(vocab) for _ in range(2))


def measure(checkpoint: Path, work: Path, mt_bench: Path, *, iters: int, encoded_iters: int, batch_sizes: list[int],
            batch_reps: int, feedback_iters: int, seed: int = 0) -> dict[str, Any]:
    """Run all measurements on a router loaded from ``checkpoint``; returns the numbers (ms, queries/s)."""
    import numpy as np
    import torch

    from gmt_model.serving.router import GMTRouter

    rng = np.random.default_rng(seed)
    fb_path = work / "feedback_benchmark.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(fb_path) + suffix).unlink(missing_ok=True)
    router = GMTRouter.from_checkpoint(checkpoint, device="cpu", feedback_log=fb_path)
    users = list(router.users)
    texts = _question_texts(mt_bench, [])
    res: dict[str, Any] = {"users": len(users), "llms": len(router.llms), "candidates": len(router.candidates),
                           "query_texts": len(texts), "history_rows": router.history().user.size,
                           "encoder": router.encoder_name}
    res["encoder_backend"] = getattr(router.encoder, "backend", "?")
    res["encoder_onnx_threads"] = getattr(router.encoder, "onnx_threads", None)

    # encoder load and embedding-cache warm-up (not measured)
    t0 = time.perf_counter()
    router.embed(texts)
    res["encoder_load_and_warm_s"] = round(time.perf_counter() - t0, 2)
    # every known user's representation once (the steady state of a running server)
    router.route_batch([{"query_text": texts[i % len(texts)], "user_id": u} for i, u in enumerate(users)])

    def pick(i: int) -> dict[str, Any]:
        return {"query_text": texts[int(rng.integers(len(texts)))], "user_id": users[int(rng.integers(len(users)))]}

    _log(f"route_single, cached embeddings: {iters} calls")
    single = _time_calls(lambda i: router.route_single(pick(i)), iters, warmup=min(200, iters))
    res["single_cached_p50_ms"], res["single_cached_p99_ms"] = _pct(single, 50), _pct(single, 99)
    res["single_cached_mean_ms"] = statistics.fmean(single)

    _log(f"route_single, fresh texts through MiniLM: {encoded_iters} calls")
    enc_before = dict(getattr(router.encoder, "stats", {}))

    nonce = _run_tag(texts)  # never-seen texts: neither the router's nor the encoder's disk cache has them

    def fresh(i: int) -> dict[str, Any]:
        q = pick(i)
        q["query_text"] = f"{texts[i % len(texts)]} ({nonce} {i})"
        return q

    warm = min(20, encoded_iters)
    encoded = _time_calls(lambda i: router.route_single(fresh(i)), encoded_iters, warmup=warm)
    res["single_encoded_p50_ms"], res["single_encoded_p99_ms"] = _pct(encoded, 50), _pct(encoded, 99)
    res["single_encoded_mean_ms"] = statistics.fmean(encoded)
    stats = getattr(router.encoder, "stats", None)
    if stats is not None:  # proves the texts really went through the model
        res["encoder_texts_encoded"] = stats["encoded"] - enc_before.get("encoded", 0)
        if res["encoder_texts_encoded"] != encoded_iters + warm:
            raise RuntimeError(f"expected {encoded_iters + warm} texts through MiniLM, the encoder ran "
                               f"{res['encoder_texts_encoded']}: the encoded measurement hit a cache")

    for b in batch_sizes:
        _log(f"route_batch, batch {b}: {batch_reps} calls")
        batch = [pick(i) for i in range(b)]
        times = _time_calls(lambda i: router.route_batch(batch), batch_reps, warmup=3)
        med = statistics.median(times)
        res[f"batch_{b}_median_ms"] = med
        res[f"batch_{b}_qps"] = b / (med / 1000.0)

    _log(f"update_user_feedback (+ next route): {feedback_iters} calls each")
    fb_users = [f"bench-user-{k}" for k in range(20)] + users[: min(20, len(users))]
    llms = router.candidates
    lo, hi = router.rating_scale

    def fb_args(i: int) -> tuple[str, str, str, float]:
        return (fb_users[i % len(fb_users)], texts[int(rng.integers(len(texts)))], llms[int(rng.integers(len(llms)))],
                float(rng.uniform(lo, hi)))

    alone = _time_calls(lambda i: router.update_user_feedback(*fb_args(i)), feedback_iters, warmup=10)
    res["feedback_alone_p50_ms"], res["feedback_alone_p99_ms"] = _pct(alone, 50), _pct(alone, 99)

    def feedback_then_route(i: int) -> None:
        user, text, model, rating = fb_args(i)
        router.update_user_feedback(user, text, model, rating)
        r = router.route_single({"query_text": texts[i % len(texts)], "user_id": user})
        if r["cold_start"]:
            raise RuntimeError(f"user {user} has feedback but was routed cold")

    both = _time_calls(feedback_then_route, feedback_iters, warmup=10)
    res["feedback_then_route_p50_ms"], res["feedback_then_route_p99_ms"] = _pct(both, 50), _pct(both, 99)
    res["feedback_log_records"] = router.feedback_log.count() if router.feedback_log is not None else 0
    res["max_user_history"] = max(router.history_size(u) for u in fb_users)
    res["torch_threads"] = torch.get_num_threads()
    return res


def compare_encoder_backends(checkpoint: Path, mt_bench: Path, *, iters: int, rounds: int = 5,
                             specs: list[tuple[str, str, str, int | None, bool]] | None = None,
                             seed: int = 0) -> list[dict[str, Any]]:
    """route_single including encoding (and the encoder alone) for each backend, interleaved, in this process.

    Each backend gets its own router (``GMTRouter.from_checkpoint(..., encoder=...)``, no feedback log)
    and encoder without disk cache; every call routes a never-seen text.  ``rounds`` rounds of
    ``iters // rounds`` calls per backend, the backend order rotating, so load changes hit all alike.
    """
    import numpy as np

    from gmt_model.data.encoder import Encoder
    from gmt_model.serving.router import GMTRouter

    rng = np.random.default_rng(seed)
    texts = _question_texts(mt_bench, [])
    runs: list[dict[str, Any]] = []
    for label, name, backend, threads, spin in specs or BACKEND_SPECS:
        t0 = time.perf_counter()
        enc = Encoder(name, backend=backend, onnx_threads=threads, onnx_spin=spin, cache_dir=False)
        enc.encode(["load the model"])
        load_s = time.perf_counter() - t0
        router = GMTRouter.from_checkpoint(checkpoint, device="cpu", encoder=enc)
        users = list(router.users)
        router.route_batch([{"query_text": texts[i % len(texts)], "user_id": u} for i, u in enumerate(users)])
        runs.append({"label": label, "encoder": enc.name, "backend": enc.backend, "onnx_threads": threads,
                     "same_encoder_as_checkpoint": enc.name == router.checkpoint.encoder,
                     "load_s": round(load_s, 2), "enc": enc, "router": router, "users": users,
                     "route_ms": [], "route_cpu_ms": [], "encode_ms": []})
    # identity: cosine to the torch embeddings on the questions (the checkpoint's data were embedded by one)
    ref = next((r["enc"] for r in runs if r["backend"] == "torch"), None)
    if ref is not None:
        base = ref.encode(texts)
        for r in runs:
            got = r["enc"].encode(texts)
            cos = np.sum(base * got, axis=1) / (np.linalg.norm(base, axis=1) * np.linalg.norm(got, axis=1))
            r["min_cosine_vs_torch"], r["mean_cosine_vs_torch"] = float(cos.min()), float(cos.mean())
    nonce = _run_tag(texts)
    per = max(1, iters // rounds)
    counter = 0
    for rnd in range(rounds):
        order = runs[rnd % len(runs):] + runs[: rnd % len(runs)]
        for r in order:
            router, users = r["router"], r["users"]
            for i in range(per + (3 if rnd == 0 else 0)):  # 3 unmeasured warm-up calls in the first round
                counter += 1
                q = {"query_text": f"{texts[counter % len(texts)]} ({nonce} {counter})",
                     "user_id": users[int(rng.integers(len(users)))]}
                c0, t0 = time.process_time(), time.perf_counter()
                router.route_single(q)
                ms = (time.perf_counter() - t0) * 1000.0
                cpu_ms = (time.process_time() - c0) * 1000.0
                counter += 1
                t1 = time.perf_counter()
                r["enc"].encode([f"{texts[counter % len(texts)]} ({nonce} {counter})"])
                ems = (time.perf_counter() - t1) * 1000.0
                if rnd > 0 or i >= 3:
                    r["route_ms"].append(ms)
                    r["route_cpu_ms"].append(cpu_ms)
                    r["encode_ms"].append(ems)
    out = []
    for r in runs:
        enc_stats = r["enc"].stats
        out.append({k: r[k] for k in ("label", "encoder", "backend", "onnx_threads", "same_encoder_as_checkpoint",
                                      "load_s", "min_cosine_vs_torch", "mean_cosine_vs_torch") if k in r}
                   | {"calls": len(r["route_ms"]), "texts_encoded": enc_stats["encoded"],
                      "route_p50_ms": _pct(r["route_ms"], 50), "route_p99_ms": _pct(r["route_ms"], 99),
                      "route_cpu_p50_ms": _pct(r["route_cpu_ms"], 50),
                      "encode_p50_ms": _pct(r["encode_ms"], 50), "encode_p99_ms": _pct(r["encode_ms"], 99)})
    return out


def render_backends(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`compare_encoder_backends`."""
    lines = ["| encoder backend | route_single incl. encoding p50 | p99 | process CPU time p50 | encoder alone p50 "
             "| p99 | cosine to torch (min / mean) | same encoder as the checkpoint |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cos = (f"{r['min_cosine_vs_torch']:.5f} / {r['mean_cosine_vs_torch']:.5f}"
               if "min_cosine_vs_torch" in r else "n/a")
        same = "yes" if r["same_encoder_as_checkpoint"] else f"no ({r['encoder']})"
        lines.append(f"| {r['label']} | {r['route_p50_ms']:.2f} ms | {r['route_p99_ms']:.2f} ms | "
                     f"{r['route_cpu_p50_ms']:.2f} ms | "
                     f"{r['encode_p50_ms']:.2f} ms | {r['encode_p99_ms']:.2f} ms | {cos} | {same} |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, torch version and threads, load average."""
    import torch

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cpu_count": os.cpu_count(), "usable_cores": affinity, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform()}


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} / {b:.2f} / {c:.2f}"


def render_markdown(res: dict[str, Any], machine: dict[str, Any], train_info: dict[str, Any] | None,
                    load_before: str, load_after: str, checkpoint: Path) -> str:
    """The report: targets with PASS/FAIL, all measured numbers, machine and load."""
    lines = ["| measure | target | measured | result |", "|---|---|---|---|"]
    for label, key, op, target, unit in TARGETS:
        v = res[key]
        ok = v < target if op == "<" else v > target
        shown = f"{v:,.0f} {unit}" if unit == "queries/s" else f"{v:.2f} {unit}"
        lines.append(f"| {label} | {op} {target:,.0f} {unit} | {shown} | {'PASS' if ok else 'FAIL'} |")
    lines += ["", "| detail | p50 | p99 |", "|---|---|---|"]
    for label, key in (("route_single, excluding encoding", "single_cached"),
                       ("route_single, including MiniLM encoding (router default backend)", "single_encoded"),
                       ("update_user_feedback alone (incl. durable SQLite append)", "feedback_alone"),
                       ("update_user_feedback + next route_single for that user", "feedback_then_route")):
        lines.append(f"| {label} | {res[key + '_p50_ms']:.2f} ms | {res[key + '_p99_ms']:.2f} ms |")
    lines += ["", "| route_batch (excluding encoding) | median time per call | throughput |", "|---|---|---|"]
    for k in sorted(k for k in res if k.startswith("batch_") and k.endswith("_qps")):
        b = k.split("_")[1]
        lines.append(f"| batch {b} | {res[f'batch_{b}_median_ms']:.1f} ms | {res[k]:,.0f} queries/s |")
    lines += ["", f"- checkpoint: `{checkpoint}`"]
    if train_info:
        lines.append(f"- training: {json.dumps(train_info)}")
    lines.append(f"- router: {res['users']} users, {res['llms']} LLMs ({res['candidates']} candidates), "
                 f"{res['history_rows']} history rows, encoder {res['encoder']} (backend "
                 f"{res.get('encoder_backend', '?')}, onnx threads {res.get('encoder_onnx_threads')}), "
                 f"{res['query_texts']} MT-Bench "
                 f"question texts; MiniLM encoded {res.get('encoder_texts_encoded', '?')} fresh texts in the "
                 f"encoded run; {res['feedback_log_records']} feedback records written")
    lines.append(f"- machine: {machine['cpu']}; {machine['cpu_count']} CPUs ({machine['usable_cores']} usable); "
                 f"torch {machine['torch']} with {machine['torch_threads']} threads; Python {machine['python']}; "
                 f"{machine['platform']}")
    lines.append(f"- load average (1/5/15 min): {load_before} before, {load_after} after")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder (converted data, runs)")
    p.add_argument("--mt-bench", type=Path, default=DEFAULT_MT_BENCH)
    p.add_argument("--checkpoint", type=Path, default=None, help="reuse this checkpoint folder instead of training")
    p.add_argument("--epochs", type=int, default=350)
    p.add_argument("--config", type=Path, default=SEED_TRAIN_CONFIG, help="seed-style training config")
    p.add_argument("--iters", type=int, default=3000, help="route_single calls, cached embeddings")
    p.add_argument("--encoded-iters", type=int, default=300, help="route_single calls with MiniLM encoding")
    p.add_argument("--batch-sizes", default="64,256,1024")
    p.add_argument("--batch-reps", type=int, default=30)
    p.add_argument("--feedback-iters", type=int, default=300)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--backend-iters", type=int, default=300,
                   help="route_single calls with encoding per encoder backend (0: skip the backend comparison)")
    p.add_argument("--backend-rounds", type=int, default=5, help="interleaved rounds of the backend comparison")
    p.add_argument("--only-encoders", action="store_true",
                   help="only the encoder backend comparison (skip the routing, batch and feedback measures)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = p.parse_args(argv)
    if args.only_encoders and args.backend_iters < 1:
        raise SystemExit("error: --only-encoders needs --backend-iters >= 1")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GMTROUTER_CACHE_DIR", str(args.work / "embedding_cache"))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = _load()
    train_info = None
    if args.checkpoint is not None:
        if not (args.checkpoint / "config.json").exists():
            raise SystemExit(f"error: {args.checkpoint} is not a checkpoint folder (no config.json)")
        checkpoint = args.checkpoint
    else:
        paths = prepare_data(args.work, args.mt_bench)
        checkpoint, train_info = train_router(args.work, paths, args.epochs, args.config)
    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    if 1024 not in sizes:
        raise SystemExit("error: --batch-sizes must include 1024 (the throughput target is measured there)")
    load_measure = _load()
    res: dict[str, Any] = {}
    if not args.only_encoders:
        res = measure(checkpoint, args.work, args.mt_bench, iters=args.iters, encoded_iters=args.encoded_iters,
                      batch_sizes=sizes, batch_reps=args.batch_reps, feedback_iters=args.feedback_iters)
    load_mid = _load()
    backends: list[dict[str, Any]] = []
    if args.backend_iters > 0:
        _log(f"encoder backends: {args.backend_iters} route_single calls each, {args.backend_rounds} rounds")
        backends = compare_encoder_backends(checkpoint, args.mt_bench, iters=args.backend_iters,
                                            rounds=args.backend_rounds)
    load_after = _load()
    if train_info is not None:
        train_info["load_before_training"] = load_before
    machine = machine_info()
    if res:
        print(render_markdown(res, machine, train_info, load_measure, load_mid, checkpoint))
    if backends:
        print("\n#### route_single including encoding, by encoder backend (same process, interleaved rounds)\n")
        print(render_backends(backends))
        print(f"\n- load average (1/5/15 min): {load_mid} before, {load_after} after; torch threads "
              f"{machine['torch_threads']}; checkpoint `{checkpoint}`")
    if args.json:
        args.json.write_text(json.dumps({"results": res, "backends": backends, "machine": machine,
                                         "train": train_info, "load": [load_measure, load_mid, load_after]},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
