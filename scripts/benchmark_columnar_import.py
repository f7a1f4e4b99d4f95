"""JSONL import into the columnar form: bounded memory, against reading the JSONL straight into a graph.

    .venv/bin/python scripts/benchmark_columnar_import.py --groups 20000 --dim 384

Writes synthetic GMTRouter JSONL splits (``--groups`` comparison groups of two records, one or two steps,
``--texts`` distinct query texts, ``--dim``-wide embeddings), then, each in a fresh process (peak RSS is
per process): ``gmt_model.data.columnar.import_jsonl`` (streaming, batches of 65,536 rows), the columnar
tables + store -> ``GraphTables`` (``graph_from_columnar``), and ``gmt_model.data.jsonl.graph_files.build_graph`` straight
from the JSONL, for comparison; then ``export_jsonl`` back, checked byte-identical.  Prints one JSON object
as the last line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _write(folder: Path, groups: int, texts: int, dim: int, seed: int = 0) -> dict[str, Path]:
    from gmt_model.data.jsonl import Record, Turn, write_jsonl
    from gmt_model.method.schema import SPLIT_FILES, SPLITS

    rng = np.random.default_rng(seed)
    qvec = rng.normal(size=(texts, dim)).astype(np.float32)
    qvec /= np.linalg.norm(qvec, axis=1, keepdims=True)
    llm = rng.normal(size=(8, dim)).astype(np.float32)
    split_of = rng.choice(3, size=groups, p=[0.7, 0.1, 0.2])
    paths = {}
    for code, split in enumerate(SPLITS):

        def records(code=code):
            line = 0
            for gi in np.flatnonzero(split_of == code):
                steps = 1 + int(gi % 2)
                q = rng.integers(0, texts, steps)
                pair = rng.choice(8, 2, replace=False)
                for m in pair:
                    line += 1
                    conv = tuple(Turn(f"question {int(t)}", qvec[t], f"answer {gi} {m} {s}",
                                      float(rng.integers(1, 6))) for s, t in enumerate(q))
                    yield Record(line, f"user{int(gi) % 997}", f"llm{int(m)}", f"q{int(gi)}", steps, conv, llm[m],
                                 "synthetic")

        paths[split] = folder / SPLIT_FILES[split]
        write_jsonl(paths[split], records())
    return paths


def _child(kind: str, folder: str) -> None:
    from gmt_model.data import columnar as C
    from gmt_model.method.schema import SPLIT_FILES, SPLITS

    src = {s: Path(folder) / "jsonl" / SPLIT_FILES[s] for s in SPLITS}
    t0 = time.perf_counter()
    extra: dict = {}
    if kind == "import":
        summ = C.import_jsonl(src, Path(folder) / "columnar")
        extra = {"interactions": sum(s.n_interactions for s in summ.splits.values()), "texts": summ.n_texts}
    elif kind == "graph_from_columnar":
        g = C.graph_from_columnar(Path(folder) / "columnar", Path(folder) / "columnar" / C.IMPORTED_EMBEDDINGS_FILE,
                                  relations="full")
        extra = {"interactions": g.num_interactions}
    elif kind == "build_graph_from_jsonl":
        from gmt_model.data.graph_files import build_graph

        g = build_graph(src, relations="full")
        extra = {"interactions": g.num_interactions}
    elif kind == "export":
        out = C.export_jsonl(Path(folder) / "columnar", Path(folder) / "exported",
                             Path(folder) / "columnar" / C.IMPORTED_EMBEDDINGS_FILE)
        extra = {"identical": all(C.file_sha256(out[s]) == C.file_sha256(src[s]) for s in SPLITS)}
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": round(wall, 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **extra}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=20_000)
    ap.add_argument("--texts", type=int, default=5_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    out: dict = {"groups": args.groups, "texts": args.texts, "dim": args.dim}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = _write(Path(tmp) / "jsonl", args.groups, args.texts, args.dim)
        out["write_jsonl_s"] = round(time.perf_counter() - t0, 1)
        out["jsonl_mb"] = round(sum(p.stat().st_size for p in paths.values()) / 2**20, 1)
        for kind in ("import", "graph_from_columnar", "build_graph_from_jsonl", "export"):
            proc = subprocess.run([sys.executable, __file__, "--child", kind, tmp], capture_output=True, text=True,
                                  check=True)
            out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        out["columnar_mb"] = round(sum(p.stat().st_size for p in (Path(tmp) / "columnar").iterdir()) / 2**20, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
