#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv with the pinned stack.
# Idempotent: re-running after a change to pyproject.toml updates the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), sys.version' \
  || { echo "gmtrouter needs Python 3.11 or 3.12" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.gmtrouter-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the pinned stack (first run: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, from the CPU build: an open torch requirement would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
# The sentence encoder's ONNX export (gmt_model.encoder; ~10 s once, then only verified): made here so the
# first routed query is fast. Without it the export is made on first use (and torch is used if that fails).
if [ "${GMTROUTER_SKIP_ONNX_EXPORT:-0}" != "1" ]; then
  HF_HUB_OFFLINE=1 .venv/bin/python -m gmt_model.encoder export \
    || echo "[setup] the encoder's ONNX export failed; it is retried on first use" >&2
fi
# Headless Chromium for the chat-page browser test (Debian packages; needs root).
if [ "${GMTROUTER_SKIP_BROWSER:-0}" != "1" ] && ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian chromium + chromium-driver for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "[setup] could not install chromium; the browser test will be skipped" >&2
  else
    echo "[setup] chromium/chromedriver not found; the browser test will be skipped" >&2
  fi
fi
echo "[setup] ready: .venv ($(.venv/bin/python --version))"
