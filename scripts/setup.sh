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
# The sentence encoder's ONNX export (gmt_model.data.encoder; ~10 s once, then only verified): made here so the
# first routed query is fast. Without it the export is made on first use (and torch is used if that fails).
if [ "${GMTROUTER_SKIP_ONNX_EXPORT:-0}" != "1" ]; then
  HF_HUB_OFFLINE=1 .venv/bin/python -m gmt_model.data.encoder export \
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
# PostgreSQL and Redis (Debian packages; need root) for the tests of the feedback store in PostgreSQL, the router
# fleet and the Celery workers (scripts/services.sh installs them too when it starts them). No default cluster:
# services.sh and the tests run clusters of their own.
if [ "${GMTROUTER_SKIP_SERVICES_PACKAGES:-0}" != "1" ] \
   && { ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; }; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian postgresql + redis-server for the services tests"
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
      mkdir -p /etc/postgresql-common
      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confold \
       postgresql redis-server >/dev/null) || echo "[setup] could not install postgresql/redis-server; their tests will be skipped" >&2
  else
    echo "[setup] PostgreSQL or Redis not found; the tests that need them will be skipped" >&2
  fi
fi
# The activated venv carries the project's environment: the literal `dagster job execute -j train_demo`
# (Dagster's CLI reads every option from DAGSTER_CLI_<COMMAND>_<SUBCOMMAND>_<OPTION>), the local Dagster
# instance, and the MLflow store that the docs' `mlflow.pyfunc.load_model("models:/...")` reads.
# The block between the markers is rewritten on every run (idempotent).
repo=$(pwd -P)
if [ ! -s .dagster_home/dagster.yaml ]; then
  mkdir -p .dagster_home
  cp deploy/dagster.local.yaml .dagster_home/dagster.yaml
fi
mkdir -p .gmtrouter/mlflow
activate=.venv/bin/activate
begin='# >>> gmtrouter environment (scripts/setup.sh) >>>'
end='# <<< gmtrouter environment (scripts/setup.sh) <<<'
if grep -qF "$begin" "$activate"; then
  sed -i "\\|^$begin\$|,\\|^$end\$|d" "$activate"
fi
{
  echo "$begin"
  sed "s|@REPO@|$repo|g" <<'BLOCK'
# Exported on activation unless already set in the shell; `deactivate` removes what was set here.
# Data root: $GMTROUTER_HOME (default @REPO@/.gmtrouter). The service deployment's values come from
# `source .gmtrouter/services/env` after `bash scripts/services.sh up` (docs/deploy.md).
for _gmtrouter_v in ${_GMTROUTER_SET_VARS:-}; do unset "$_gmtrouter_v"; done
_GMTROUTER_SET_VARS=""
_gmtrouter_default () {
    eval "_gmtrouter_cur=\${$1:-}"
    if [ -z "$_gmtrouter_cur" ]; then
        export "$1=$2"
        _GMTROUTER_SET_VARS="$_GMTROUTER_SET_VARS $1"
    fi
}
_gmtrouter_default DAGSTER_CLI_JOB_EXECUTE_MODULE_NAME pipelines.definitions
_gmtrouter_default DAGSTER_HOME "@REPO@/.dagster_home"
_gmtrouter_default MLFLOW_TRACKING_URI "sqlite:///${GMTROUTER_HOME:-@REPO@/.gmtrouter}/mlflow/mlflow.db"
unset -f _gmtrouter_default
unset _gmtrouter_v _gmtrouter_cur
if [ -n "${BASH_VERSION:-}${ZSH_VERSION:-}" ]; then  # the venv part of activate just redefined deactivate
    eval "_gmtrouter_venv_$(typeset -f deactivate)"
    deactivate () {
        for _gmtrouter_v in ${_GMTROUTER_SET_VARS:-}; do unset "$_gmtrouter_v"; done
        unset _GMTROUTER_SET_VARS _gmtrouter_v
        _gmtrouter_venv_deactivate "$@"
        if [ ! "${1:-}" = "nondestructive" ]; then unset -f _gmtrouter_venv_deactivate; fi
    }
fi
BLOCK
  echo "$end"
} >> "$activate"
echo "[setup] ready: .venv ($(.venv/bin/python --version)); \`source .venv/bin/activate\` sets the project's environment"
