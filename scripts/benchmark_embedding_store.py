"""The embedding store: float16 loss against float32, and the cost of a vectorised lookup.

    .venv/bin/python scripts/benchmark_embedding_store.py --mt-bench ../shared/data/mt_bench_human [--epochs 100]

1. MT-Bench (split form) through the pipeline's data steps (interactions -> text embeddings, bundled
   MiniLM encoder) into a float32 store and a float16 copy; reports max |fp16 - fp32| per component, the
   worst change of a cosine similarity between two stored texts, and the file sizes.
2. A GMTRouter model trained on the float32 graph (``--epochs``, seed config otherwise) is evaluated on the
   test split of the float32 graph and of the float16 graph: the change of test AUC is the loss that matters.
3. Lookup: ``--lookups`` random hashes against a store of ``--store-rows`` random vectors (wall time of
   ``EmbeddingStore.rows``; the store is argsorted once, on first use, timed separately).

Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _lookup_bench(rows: int, lookups: int, dim: int) -> dict:
    from gmt_model.data.embeddings import EmbeddingStore, write_store

    rng = np.random.default_rng(0)
    h = np.frombuffer(rng.bytes(16 * rows), dtype="S16").copy()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_store(Path(tmp) / "s.parquet", h, rng.normal(size=(rows, dim)).astype(np.float32), encoder="bench")
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        st = EmbeddingStore.open(Path(tmp) / "s.parquet")
        t_open = time.perf_counter() - t0
        q = h[rng.integers(0, rows, lookups)]
        t0 = time.perf_counter()
        st.rows(q[:1])
        t_index = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = st.rows(q)
        t_rows = time.perf_counter() - t0
        t0 = time.perf_counter()
        st.matrix[r]
        t_gather = time.perf_counter() - t0
    return {"store_rows": rows, "dim": dim, "lookups": lookups, "write_s": round(t_write, 3),
            "open_s": round(t_open, 3), "index_s": round(t_index, 3), "lookup_rows_s": round(t_rows, 3),
            "gather_s": round(t_gather, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mt-bench", type=Path, default=REPO.parent / "shared" / "data" / "mt_bench_human")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--store-rows", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=1_000_000)
    ap.add_argument("--skip-model", action="store_true")
    args = ap.parse_args(argv)

    from assets import data_steps
    from assets.storage import DataStore
    from gmt_model.data.columnar import graph_from_columnar
    from gmt_model.data.embeddings import EmbeddingStore, write_store
    from gmt_model.data.encoder import get_encoder

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = DataStore("mt_bench", Path(tmp) / "data")
        enc = get_encoder(None)
        data_steps.materialize_raw(store, overrides={"kind": "mt_bench_split", "url": str(args.mt_bench)})
        data_steps.materialize_interactions(store, enc)
        data_steps.materialize_text_embeddings(store, enc)
        p32 = store.area("embeddings") / data_steps.STORE_FILE
        s32 = EmbeddingStore.open(p32)
        p16 = Path(tmp) / "fp16.parquet"
        s16 = write_store(p16, s32.hashes, s32.matrix, encoder=s32.encoder, dtype="float16")
        a, b = s32.lookup(s32.hashes), s16.lookup(s32.hashes)
        cos32, cos16 = a @ a.T, b @ b.T
        out["fp16"] = {"texts": len(s32), "dim": s32.dim, "max_abs_error": float(np.abs(a - b).max()),
                       "max_cosine_change": float(np.abs(cos32 - cos16).max()),
                       "min_self_cosine": float(((a * b).sum(1) / np.linalg.norm(b, axis=1)).min()),
                       "bytes_fp32": p32.stat().st_size, "bytes_fp16": p16.stat().st_size}
        if not args.skip_model:
            from gmt_model.method.checkpoint import load_checkpoint
            from gmt_model.method.config import load_train_config
            from gmt_model.evaluation.report import evaluate
            from gmt_model.method.training import train

            folder = store.area("interactions")
            g32 = graph_from_columnar(folder, s32, relations="full")
            g16 = graph_from_columnar(folder, s16, relations="full")
            tc = load_train_config(REPO / "configs" / "model_config_train" / "gmtrouter.yaml",
                                   {"dataset_name": "mt_bench", "epochs": args.epochs}, relative_to=REPO)
            t0 = time.perf_counter()
            res = train(g32, tc, Path(tmp) / "train", resume=False)
            ck = load_checkpoint(res.best_dir)
            auc = {}
            for name, g in (("fp32", g32), ("fp16", g16)):
                rep = evaluate(ck.model, g, "test", baselines=False, cold_start=False, n_resamples=10)
                auc[name] = float(rep.methods["gmtrouter"].auc)
            out["model"] = {"epochs": args.epochs, "train_s": round(time.perf_counter() - t0, 1),
                            "test_auc_fp32": auc["fp32"], "test_auc_fp16": auc["fp16"],
                            "test_auc_change": auc["fp16"] - auc["fp32"]}
    out["lookup"] = _lookup_bench(args.store_rows, args.lookups, 384)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
