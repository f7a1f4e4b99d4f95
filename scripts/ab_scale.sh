#!/usr/bin/env bash
# Interleaved A/B of the scale benchmark: an older commit against this checkout, on the same data,
# alternating processes (old, new, old, new, ...) so both see the same machine speed.
#
#   scripts/ab_scale.sh da2ade4                  # 1M interactions, 5 epochs, 2 rounds
#   scripts/ab_scale.sh da2ade4 100000 3 3       # COMMIT [INTERACTIONS] [EPOCHS] [ROUNDS]
#
# Prints one line per run: code, round, epoch_ms_median, epoch_cpu_s_median, test_auc, eval_s,
# peak_rss_mb, load_avg_1m_start.  The older commit runs from a temporary git worktree with this
# checkout's .venv; its own scripts/benchmark_scale.py must exist (issue 8 onwards).
# Both sides get the same stream: when the older script has no --distinct-texts (before issue 17) both
# run the template stream with float32 text tables; else both get AB_SCALE_ARGS (default: nothing, i.e.
# each script's defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: scripts/ab_scale.sh COMMIT [INTERACTIONS] [EPOCHS] [ROUNDS]}
N=${2:-1000000}; EPOCHS=${3:-5}; ROUNDS=${4:-2}
PY=$PWD/.venv/bin/python
TREE=$(mktemp -d)
trap 'git worktree remove --force "$TREE" >/dev/null 2>&1 || rm -rf "$TREE"' EXIT
git worktree add --detach -f "$TREE" "$OLD" >/dev/null 2>&1
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
read -r -a EXTRA <<< "${AB_SCALE_ARGS:-}"
if ! grep -q -- "--distinct-texts" "$TREE/scripts/benchmark_scale.py"; then
  NEW_EXTRA=(--distinct-texts templates --text-dtype float32); OLD_EXTRA=()
else
  NEW_EXTRA=("${EXTRA[@]}"); OLD_EXTRA=("${EXTRA[@]}")
fi
for round in $(seq "$ROUNDS"); do
  for code in old new; do
    root=$PWD; args=("${NEW_EXTRA[@]}")
    if [ "$code" = old ]; then root=$TREE; args=("${OLD_EXTRA[@]}"); fi
    PYTHONPATH=$root "$PY" "$root/scripts/benchmark_scale.py" --interactions "$N" --epochs "$EPOCHS" \
      --device cpu --json "${args[@]}" 2>/dev/null | tail -n 1 | "$PY" -c "
import json, sys
d = json.load(sys.stdin)
print('$code', $round, *(d[k] for k in ('epoch_ms_median', 'epoch_cpu_s_median', 'test_auc', 'eval_s',
                                        'peak_rss_mb', 'load_avg_1m_start')), flush=True)"
  done
done
