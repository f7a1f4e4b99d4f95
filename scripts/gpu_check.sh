#!/usr/bin/env bash
# One short GPU check (issue 8): under 8 minutes on one recent NVIDIA GPU.
#
#   scripts/gpu_check.sh                                   # on the GPU machine, from the repository root
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 scripts/gpu_check.sh   # CPU smoke test of this script (~2 min)
#
# Runs, on $GPU_CHECK_DEVICE (default cuda):
#   1. MT-Bench, seed config, 350 epochs, per-judge split seed 0: full batch and mini-batch
#      (16 users per step), test AUC of the evaluation report;
#   2. 1M demo interactions (hashed test encoder), 3 mini-batch epochs of 512 users per step,
#      float32 and bfloat16 autocast (--amp), test AUC, build time, epoch time, peak host RSS;
# then prints one table.  Each run's JSON line is kept in $GPU_CHECK_OUT (default .cache/gpu_check).
#
# MT-Bench data: $GPU_CHECK_SPLITS (a folder with mt_bench_split0/{training,valid,test}_set.jsonl built by
# gmt_model.data.datasets.build_jsonl), else the raw judgments in $GPU_CHECK_MT_BENCH (default
# ../shared/data/mt_bench_human; converting them needs the sentence encoder); when neither exists the
# MT-Bench rows are skipped and say so.
# GPU_CHECK_SMALL=1: MT-Bench 10 epochs and 5k interactions x 2 epochs instead (a smoke test of the script).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the scripts import gmt_model from the checkout (no install needed)
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SMALL=${GPU_CHECK_SMALL:-0}
OUT=${GPU_CHECK_OUT:-.cache/gpu_check}
MT_RAW=${GPU_CHECK_MT_BENCH:-../shared/data/mt_bench_human}
SPLITS=${GPU_CHECK_SPLITS:-}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} PYTHONWARNINGS=ignore
mkdir -p "$OUT"
rm -f "$OUT"/*.json
if [ "$SMALL" = 1 ]; then MT_EPOCHS=10; N=5000; EPOCHS=2; else MT_EPOCHS=350; N=1000000; EPOCHS=3; fi
START=$(date +%s)
"$PY" - "$DEVICE" <<'EOF'
import sys, torch
dev = sys.argv[1]
if dev.startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"gpu_check: device {dev!r} requested but torch {torch.__version__} sees no CUDA device "
             "(GPU_CHECK_DEVICE=cpu for the CPU smoke test)")
name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu"
print(f"# gpu_check on {name}, torch {torch.__version__}", flush=True)
EOF

run() {  # name, then benchmark_scale.py arguments
  local name=$1; shift
  local t0=$(date +%s)
  if "$PY" scripts/benchmark_scale.py --device "$DEVICE" --json "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"; then
    tail -n 1 "$OUT/$name.out" > "$OUT/$name.json"
    echo "# $name: $(( $(date +%s) - t0 )) s" >&2
  else
    echo "# $name FAILED (see $OUT/$name.err):" >&2
    tail -n 5 "$OUT/$name.err" >&2
  fi
}

MT_ARGS=()
if [ -n "$SPLITS" ]; then MT_ARGS=(--mt-bench-splits "$SPLITS"); fi
if [ -n "$SPLITS" ] || [ -d "$MT_RAW" ]; then
  run mt_bench --mt-bench-compare --epochs "$MT_EPOCHS" --mt-bench "$MT_RAW" --mt-bench-seeds 0 "${MT_ARGS[@]}"
else
  echo "# MT-Bench skipped: no GPU_CHECK_SPLITS and no raw judgments at $MT_RAW" >&2
fi
run scale_fp32 --interactions "$N" --epochs "$EPOCHS" --batch-users 512
run scale_amp --interactions "$N" --epochs "$EPOCHS" --batch-users 512 --amp

"$PY" - "$OUT" "$(( $(date +%s) - START ))" <<'EOF'
import json, sys
from pathlib import Path
out, wall = Path(sys.argv[1]), sys.argv[2]
rows = []
mt = out / "mt_bench.json"
if mt.exists():
    for r in json.loads(mt.read_text())["mt_bench"]:
        rows.append((f"MT-Bench split {r['split_seed']} {r['mode']}", r["device"], f"{r['epochs']} epochs",
                     f"{r['train_wall_s']} s train", "-", f"{r['test_auc']:.4f}", "-"))
for name in ("scale_fp32", "scale_amp"):
    p = out / f"{name}.json"
    if p.exists():
        r = json.loads(p.read_text())
        rows.append((f"{r['interactions']:,} interactions {'bf16' if name.endswith('amp') else 'fp32'}", r["device"],
                     f"{r['epochs']} epochs x {r['steps_per_epoch']} steps", f"{r['epoch_ms_median']} ms/epoch",
                     f"{r['build_s']} s", f"{r['test_auc']:.4f}", f"{r['peak_rss_mb']:.0f}"))
head = ("run", "device", "work", "time", "build", "test AUC", "peak RSS MB")
w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
line = lambda r: "| " + " | ".join(str(x).ljust(n) for x, n in zip(r, w)) + " |"
print(line(head)); print("|" + "|".join("-" * (n + 2) for n in w) + "|")
for r in rows:
    print(line(r))
print(f"# total {wall} s")
EOF
