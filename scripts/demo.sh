#!/usr/bin/env bash
# Set up (or reuse) .venv, then run the main job, train_demo, end to end on the offline demo dataset:
# generate -> embed (bundled all-MiniLM-L6-v2) -> Parquet graph -> train -> evaluate -> publish to MLflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/python -m pipelines.run_job train_demo "$@"
