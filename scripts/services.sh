#!/usr/bin/env bash
# A production-like deployment of gmtrouter on one machine, every service on 127.0.0.1:
#
#   postgres           PostgreSQL (Debian package; installed with apt-get when missing and running as root),
#                      databases `dagster` (run, event-log and schedule storage), `mlflow` (tracking + registry)
#                      and `feedback_<dataset>` (the routers' shared feedback store)
#   redis              (GMTROUTER_EXECUTOR=celery only) Redis from Debian's redis-server: the Celery broker and
#                      result backend
#   celery-worker      (GMTROUTER_EXECUTOR=celery only) 2 workers, `celery -A dagster_celery.app worker
#                      --concurrency 1`: the steps of every run go to them
#   mlflow             `mlflow server` on PostgreSQL, serving artifacts from a local folder (--serve-artifacts)
#   dagster-daemon     schedules, the feedback sensors and the run queue (dagster-postgres storage)
#   dagster-webserver  the Dagster UI on the same storage
#   router             `gmtrouter serve --model models:/gmtrouter-<dataset>@champion --reload-interval N`:
#                      pulls the champion from the tracking server and follows the alias (waits for a first
#                      champion before it starts).  GMTROUTER_ROUTER_REPLICAS=N (default 1) starts N of them
#                      (router, router-2 ... router-N), each with its own home (<dir>/routers/<name>) and port;
#                      they share only PostgreSQL (the feedback store, database feedback_<dataset>) and the
#                      MLflow registry
#
# Usage:
#   bash scripts/services.sh up     [SERVICE...]   start what is not running (idempotent; concurrent calls wait)
#   bash scripts/services.sh status [SERVICE...]   exit 0 only when every service answers
#   bash scripts/services.sh down   [SERVICE...]   stop what `up` started (nothing else)
#   bash scripts/services.sh env                   print the client environment (also in <dir>/env)
#
# Everything lives under one folder, $GMTROUTER_SERVICES_DIR (default $GMTROUTER_HOME/services, i.e.
# .gmtrouter/services): env (client environment, mode 600), state (ports, database password), logs/, pids/,
# pg/ (the PostgreSQL cluster), mlflow/artifacts/, dagster_home/dagster.yaml, routers/<name>/ (each router's
# home and router.yaml), redis/, celery/ (the workers' settings), lock.
# Clients: `source .gmtrouter/services/env`, then `dagster job execute -j train_demo`,
# mlflow.pyfunc.load_model("models:/gmtrouter-demo@champion"), the UIs at $GMTROUTER_DAGSTER_URL and
# $MLFLOW_TRACKING_URI.  Settings (environment, first `up` only for ports): GMTROUTER_HOME,
# GMTROUTER_SERVICES_DIR, GMTROUTER_{PG,MLFLOW,DAGSTER,ROUTER}_PORT (default: free ports), GMTROUTER_PG_BINDIR,
# GMTROUTER_ROUTER_REPLICAS (1), GMTROUTER_FEEDBACK_SYNC_INTERVAL (1 s: how soon a replica applies the others' feedback),
# GMTROUTER_MAX_LOADED_USERS (50000: users whose rows a replica holds, LRU),
# GMTROUTER_EXECUTOR (celery: also start redis and the workers), GMTROUTER_REDIS_PORT,
# GMTROUTER_SERVE_DATASET (demo), GMTROUTER_RELOAD_INTERVAL (30 s), GMTROUTER_RETRAIN_MIN_FEEDBACK,
# GMTROUTER_SENSOR_INTERVAL, GMTROUTER_TRIGGERED_RUN_CONFIG, GMTROUTER_ADMIN_TOKEN.  See docs/deploy.md.
#
# Exit status: 0 ok; 1 failure; 3 PostgreSQL (or Redis, with celery) is not installed and cannot be installed here.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
VENV=${GMTROUTER_VENV:-$REPO/.venv}
ALL_SERVICES=(postgres redis mlflow dagster-daemon dagster-webserver celery-worker router)
CELERY_SERVICES=" redis celery-worker "  # only with GMTROUTER_EXECUTOR=celery
EXIT_NO_POSTGRES=3

die() { echo "services: error: $*" >&2; exit 1; }
say() { echo "services: $*"; }

home=${GMTROUTER_HOME:-$REPO/.gmtrouter}
dir=${GMTROUTER_SERVICES_DIR:-$home/services}
if [ "${1:-status}" != "up" ] && [ ! -d "$dir" ]; then  # only `up` creates anything
  case ${1:-status} in
    down) echo "services: nothing to stop in $dir"; exit 0 ;;
    status) echo "no services in $dir (bash scripts/services.sh up)"; exit 1 ;;
    env) die "no $dir/env yet (bash scripts/services.sh up)" ;;
  esac
fi
mkdir -p "$home" "$dir"
GMTROUTER_HOME=$(cd "$home" && pwd -P)
DIR=$(cd "$dir" && pwd -P)
LOGS=$DIR/logs
PIDS=$DIR/pids
STATE=$DIR/state
ENVFILE=$DIR/env
mkdir -p "$LOGS" "$PIDS"

[ -x "$VENV/bin/python" ] || die "no virtual environment at $VENV: run bash scripts/setup.sh first"
PY=$VENV/bin/python

# ------------------------------------------------------------------ processes
proc_start_time() {  # PID -> the kernel's start time of that process (field 22 of /proc/PID/stat)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }  # the command name may hold spaces; fields after it are plain
  # shellcheck disable=SC2086
  set -- $stat
  [ "$1" != Z ] || return 1  # a zombie (killed, not yet reaped: e.g. no init reaping in a container) is gone
  echo "${20}"
}

pid_of() {  # SERVICE -> its PID when the process that `up` started is still alive (same PID and start time)
  local f=$PIDS/$1.pid pid start now
  [ -f "$f" ] || return 1
  read -r pid start < "$f" || return 1
  [ -n "${pid:-}" ] && [ -n "${start:-}" ] || return 1
  now=$(proc_start_time "$pid") || return 1
  [ "$now" = "$start" ] || return 1
  echo "$pid"
}

record_pid() {  # SERVICE PID
  local start
  start=$(proc_start_time "$2") || die "$1: process $2 exited at once; see $LOGS/$1.log"
  echo "$2 $start" > "$PIDS/$1.pid.tmp"
  mv -f "$PIDS/$1.pid.tmp" "$PIDS/$1.pid"
}

launch() {  # SERVICE CMD...: run CMD in its own session (process group), output to the service's log
  local svc=$1
  shift
  echo "=== $(date -u +%FT%TZ) starting $svc" >> "$LOGS/$svc.log"
  setsid "$@" >> "$LOGS/$svc.log" 2>&1 < /dev/null 9>&- &  # 9: the lock, not for the service
  record_pid "$svc" "$!"
}

stop_group() {  # SERVICE: SIGTERM to its process group, SIGKILL after 20 s
  local svc=$1 pid i
  pid=$(pid_of "$svc") || { rm -f "$PIDS/$svc.pid"; return 0; }
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$svc (pid $pid) did not stop on SIGTERM within 20 s; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  # children that left the group die with their session leader's group above; wait for stragglers
  for i in $(seq 1 50); do
    kill -0 -- "-$pid" 2>/dev/null || break  # any process left in the group?
    sleep 0.2
  done
  rm -f "$PIDS/$svc.pid"
  say "$svc stopped (pid $pid)"
}

wait_until() {  # SECONDS SERVICE CMD...: poll CMD every second while SERVICE's process lives
  local limit=$1 svc=$2 i
  shift 2
  for i in $(seq 1 "$limit"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    pid_of "$svc" >/dev/null || { echo "services: $svc exited; last lines of $LOGS/$svc.log:" >&2;
                                 tail -n 15 "$LOGS/$svc.log" >&2; return 1; }
    sleep 1
  done
  return 1
}

free_ports() {  # N -> N distinct free TCP ports on 127.0.0.1
  "$PY" - "$1" <<'PYEOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PYEOF
}

http() {  # URL [JSON-BODY]: GET (POST with a body); print the response; status 0 on 2xx (no curl needed)
  "$PY" -c '
import sys, urllib.request
data = sys.argv[2].encode() if len(sys.argv) > 2 else None
import os
headers = {"Content-Type": "application/json"}
if os.environ.get("HTTP_BEARER"):  # the router admin token (its /health details)
    headers["Authorization"] = "Bearer " + os.environ["HTTP_BEARER"]
req = urllib.request.Request(sys.argv[1], data=data, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=20) as resp:
        sys.stdout.write(resp.read().decode("utf-8", "replace"))
except Exception as exc:
    sys.stderr.write(f"{sys.argv[1]}: {exc}\n")
    sys.exit(1)
' "$@"
}

# ------------------------------------------------------------------ state (ports, password)
load_state() {
  REPLICAS=${GMTROUTER_ROUTER_REPLICAS:-1}
  case $REPLICAS in ''|*[!0-9]*|0) die "GMTROUTER_ROUTER_REPLICAS=$REPLICAS: expected a positive integer";; esac
  if [ ! -f "$STATE" ]; then
    local ports pw
    read -r -a ports <<< "$(free_ports 4)"
    pw=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')
    umask 077
    cat > "$STATE.tmp" <<EOF
PG_PORT=${GMTROUTER_PG_PORT:-${ports[0]}}
MLFLOW_PORT=${GMTROUTER_MLFLOW_PORT:-${ports[1]}}
DAGSTER_PORT=${GMTROUTER_DAGSTER_PORT:-${ports[2]}}
ROUTER_PORT=${GMTROUTER_ROUTER_PORT:-${ports[3]}}
PG_USER=gmtrouter
PG_PASSWORD=$pw
EOF
    mv -f "$STATE.tmp" "$STATE"
    umask 022
  fi
  # shellcheck disable=SC1090
  . "$STATE"
  local i
  for ((i = 2; i <= REPLICAS; i++)); do  # a port per extra replica, kept in the state once drawn
    if ! grep -q "^ROUTER_PORT_$i=" "$STATE"; then
      echo "ROUTER_PORT_$i=$(free_ports 1)" >> "$STATE"
    fi
  done
  if ! grep -q "^ADMIN_TOKEN=" "$STATE"; then  # the routers' admin token: /health details, /admin/*
    (umask 077; echo "ADMIN_TOKEN=${GMTROUTER_ADMIN_TOKEN:-$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')}" >> "$STATE")
  fi
  if ! grep -q "^REDIS_PORT=" "$STATE"; then
    echo "REDIS_PORT=${GMTROUTER_REDIS_PORT:-$(free_ports 1)}" >> "$STATE"
  fi
  # shellcheck disable=SC1090
  . "$STATE"
  CELERY_BROKER="redis://:$PG_PASSWORD@127.0.0.1:$REDIS_PORT/0"
  DATASET=${GMTROUTER_SERVE_DATASET:-demo}
  case $DATASET in ''|*[!a-z0-9_]*) die "GMTROUTER_SERVE_DATASET=$DATASET: expected lower-case letters, digits, _";; esac
  FEEDBACK_DB=feedback_$DATASET
  FEEDBACK_URL="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$FEEDBACK_DB"
  ROUTERS=()
  ROUTER_URLS=""
  for ((i = 1; i <= REPLICAS; i++)); do
    ROUTERS+=("$(router_name "$i")")
    ROUTER_URLS="$ROUTER_URLS${ROUTER_URLS:+ }http://127.0.0.1:$(router_port "$i")"
  done
  RELOAD=${GMTROUTER_RELOAD_INTERVAL:-30}
  MLFLOW_URL=http://127.0.0.1:$MLFLOW_PORT
  DAGSTER_URL=http://127.0.0.1:$DAGSTER_PORT
  ROUTER_URL=http://127.0.0.1:$ROUTER_PORT
  MODEL_URI=models:/gmtrouter-$DATASET@champion
}

router_name() { if [ "$1" = 1 ]; then echo router; else echo "router-$1"; fi; }
router_port() { if [ "$1" = 1 ]; then echo "$ROUTER_PORT"; else eval "echo \${ROUTER_PORT_$1}"; fi; }
router_index() { case $1 in router) echo 1 ;; router-*) echo "${1#router-}" ;; esac; }

write_env() {  # the client environment (and the services' own)
  umask 077
  cat > "$ENVFILE.tmp" <<EOF
# gmtrouter services ($DIR), written by scripts/services.sh: \`source $ENVFILE\`
export GMTROUTER_HOME='$GMTROUTER_HOME'
export GMTROUTER_SERVICES_DIR='$DIR'
export DAGSTER_HOME='$DIR/dagster_home'
export DAGSTER_CLI_JOB_EXECUTE_MODULE_NAME=pipelines.definitions
export MLFLOW_TRACKING_URI='$MLFLOW_URL'
export GMTROUTER_PG_HOST=127.0.0.1
export GMTROUTER_PG_PORT=$PG_PORT
export GMTROUTER_PG_USER=$PG_USER
export GMTROUTER_PG_PASSWORD='$PG_PASSWORD'
export GMTROUTER_PG_DAGSTER_DB=dagster
export GMTROUTER_PG_MLFLOW_DB=mlflow
export GMTROUTER_DAGSTER_URL='$DAGSTER_URL'
export GMTROUTER_ROUTER_URL='$ROUTER_URL'
export GMTROUTER_ROUTER_URLS='$ROUTER_URLS'
export GMTROUTER_${DATASET^^}_FEEDBACK_LOG='$FEEDBACK_URL'
export GMTROUTER_EXECUTOR=${GMTROUTER_EXECUTOR:-in_process}
export GMTROUTER_CELERY_BROKER='$CELERY_BROKER'
export GMTROUTER_SERVE_MODEL='$MODEL_URI'
export GMTROUTER_ADMIN_TOKEN='$ADMIN_TOKEN'
case ":\$PATH:" in *":$VENV/bin:"*) ;; *) export PATH='$VENV/bin':"\$PATH" ;; esac  # dagster, mlflow, gmtrouter
EOF
  mv -f "$ENVFILE.tmp" "$ENVFILE"
  umask 022
}

service_env() {  # the environment every service process starts with
  # shellcheck disable=SC1090
  . "$ENVFILE"
  export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
  export TOKENIZERS_PARALLELISM=false OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
  export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
  export PATH="$VENV/bin:$PATH"
}

# ------------------------------------------------------------------ PostgreSQL
PG_BIN=""
find_pg_bin() {  # $GMTROUTER_PG_BINDIR, else the newest Debian /usr/lib/postgresql/<version>/bin
  local d
  if [ -n "${GMTROUTER_PG_BINDIR:-}" ]; then
    d=$GMTROUTER_PG_BINDIR
  else
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  fi
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then PG_BIN=$d; return 0; fi
  return 1
}

install_postgres() {
  find_pg_bin && return 0
  if [ -n "${GMTROUTER_PG_BINDIR:-}" ]; then
    echo "services: GMTROUTER_PG_BINDIR=$GMTROUTER_PG_BINDIR has no initdb and pg_ctl" >&2
    exit $EXIT_NO_POSTGRES
  fi
  if [ "$(id -u)" != "0" ]; then
    echo "services: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb) and this is not root:" \
         "install the Debian package postgresql (apt-get install postgresql) and run again" >&2
    exit $EXIT_NO_POSTGRES
  fi
  command -v apt-get >/dev/null 2>&1 || {
    echo "services: PostgreSQL is not installed and there is no apt-get to install it with" >&2
    exit $EXIT_NO_POSTGRES
  }
  say "installing PostgreSQL (Debian package postgresql) with apt-get"
  # no default cluster on port 5432: this deployment runs its own cluster under $DIR
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
  fi
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
          -o Dpkg::Options::=--force-confold postgresql; } >> "$LOGS/apt.log" 2>&1; then
    echo "services: PostgreSQL is not installed and apt-get could not install it (see $LOGS/apt.log)" >&2
    exit $EXIT_NO_POSTGRES
  fi
  find_pg_bin || { echo "services: apt-get installed postgresql but no initdb was found" >&2; exit $EXIT_NO_POSTGRES; }
}

as_pg() {  # CMD...: as the postgres user when root (initdb refuses root), else as ourselves
  if [ "$(id -u)" = "0" ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_ready() { as_pg "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres -U postgres; }

pg_psql() {  # SQL: as the superuser over the cluster's own socket
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR/pg/socket" -p "$PG_PORT" -U postgres -d postgres -c "$1"
}

up_postgres() {
  install_postgres
  local data=$DIR/pg/data
  if [ -f "$data/postmaster.pid" ] && pg_ready; then
    [ -f "$PIDS/postgres.pid" ] && pid_of postgres >/dev/null || record_pid postgres "$(head -n 1 "$data/postmaster.pid")"
    say "postgres already running on 127.0.0.1:$PG_PORT"
    return 0
  fi
  mkdir -p "$DIR/pg/socket"
  touch "$LOGS/postgres.log"
  if [ "$(id -u)" = "0" ]; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' user (it comes with the Debian package postgresql)"
    chown -R postgres:postgres "$DIR/pg" "$LOGS/postgres.log"
    runuser -u postgres -- test -x "$DIR/pg" -a -w "$DIR/pg" || die "the postgres user cannot reach $DIR/pg (a" \
      "parent folder is not searchable by other users); set GMTROUTER_SERVICES_DIR to a folder it can reach"
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    say "initdb $data"
    rm -rf "$data"
    as_pg "$PG_BIN/initdb" -D "$data" -U postgres -E UTF8 --no-locale --auth-local=trust \
      --auth-host=scram-sha-256 >> "$LOGS/postgres.log" 2>&1 || die "initdb failed; see $LOGS/postgres.log"
  fi
  as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$LOGS/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $DIR/pg/socket" start > /dev/null 9>&- \
    || die "PostgreSQL did not start; see $LOGS/postgres.log"
  record_pid postgres "$(head -n 1 "$data/postmaster.pid")"
  if [ ! -f "$DIR/pg/.provisioned" ]; then
    pg_psql "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
               CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD'; END IF; END \$\$;"
    for db in dagster mlflow; do
      if [ -z "$(as_pg "$PG_BIN/psql" -X -tA -h "$DIR/pg/socket" -p "$PG_PORT" -U postgres -d postgres \
                 -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
        pg_psql "CREATE DATABASE $db OWNER $PG_USER"
      fi
    done
    touch "$DIR/pg/.provisioned"
  fi
  # the routers' shared feedback store (each `up`: a deployment made before it existed gets it too)
  if [ -z "$(as_pg "$PG_BIN/psql" -X -tA -h "$DIR/pg/socket" -p "$PG_PORT" -U postgres -d postgres \
             -c "SELECT 1 FROM pg_database WHERE datname = '$FEEDBACK_DB'")" ]; then
    pg_psql "CREATE DATABASE $FEEDBACK_DB OWNER $PG_USER"
  fi
  say "postgres on 127.0.0.1:$PG_PORT (databases dagster, mlflow, $FEEDBACK_DB; logs $LOGS/postgres.log)"
}

down_postgres() {
  find_pg_bin || return 0
  local data=$DIR/pg/data
  if pid_of postgres >/dev/null; then
    as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop > /dev/null || stop_group postgres
    rm -f "$PIDS/postgres.pid"
    say "postgres stopped"
  else
    rm -f "$PIDS/postgres.pid"
  fi
}

# ------------------------------------------------------------------ MLflow, Dagster, router
up_mlflow() {
  if pid_of mlflow >/dev/null; then say "mlflow already running at $MLFLOW_URL"; return 0; fi
  mkdir -p "$DIR/mlflow/artifacts"
  (
    service_env
    # the password stays out of the command line (ps): mlflow reads the store URI from the environment
    export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/mlflow"
    cd "$DIR/mlflow"
    launch mlflow "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
      --serve-artifacts --artifacts-destination "$DIR/mlflow/artifacts"
  )
  wait_until 180 "mlflow" http "$MLFLOW_URL/health" \
    || die "mlflow server did not answer at $MLFLOW_URL/health within 180 s; see $LOGS/mlflow.log"
  say "mlflow at $MLFLOW_URL (store postgresql://127.0.0.1:$PG_PORT/mlflow, artifacts $DIR/mlflow/artifacts)"
}

write_dagster_home() {
  mkdir -p "$DIR/dagster_home"
  cp "$REPO/deploy/dagster.postgres.yaml" "$DIR/dagster_home/dagster.yaml.tmp"
  mv -f "$DIR/dagster_home/dagster.yaml.tmp" "$DIR/dagster_home/dagster.yaml"
}

up_dagster_daemon() {
  if pid_of dagster-daemon >/dev/null; then say "dagster-daemon already running"; return 0; fi
  write_dagster_home
  ( service_env; cd "$REPO"; launch dagster-daemon "$VENV/bin/dagster-daemon" run -w "$REPO/workspace.yaml" )
  say "dagster-daemon started (logs $LOGS/dagster-daemon.log)"
}

up_dagster_webserver() {
  if pid_of dagster-webserver >/dev/null; then say "dagster-webserver already running at $DAGSTER_URL"; return 0; fi
  write_dagster_home
  ( service_env; cd "$REPO"; launch dagster-webserver "$VENV/bin/dagster-webserver" -w "$REPO/workspace.yaml" \
      -h 127.0.0.1 -p "$DAGSTER_PORT" )
  wait_until 180 "dagster-webserver" http "$DAGSTER_URL/server_info" \
    || die "dagster-webserver did not answer at $DAGSTER_URL within 180 s; see $LOGS/dagster-webserver.log"
  say "dagster-webserver at $DAGSTER_URL"
}

champion_exists() {
  http "$MLFLOW_URL/api/2.0/mlflow/registered-models/alias?name=gmtrouter-$DATASET&alias=champion" \
    > /dev/null 2>&1
}

write_router_config() {  # NAME: the replica's router YAML (mode 600: the store URL holds the password)
  local name=$1 home=$DIR/routers/$1
  mkdir -p "$home"
  umask 077
  cat > "$home/router.yaml.tmp" <<EOF
# Router settings of the service deployment (scripts/services.sh), replica $name. The model served is
# --model $MODEL_URI (from the tracking server); checkpoint (the pipeline's local copy of the
# champion) is what \`gmtrouter serve --config\` alone would load.  Feedback goes to the PostgreSQL store
# that every replica, the feedback sensor and the training merge share.
router:
  checkpoint: $GMTROUTER_HOME/routers/$DATASET/current
  device: cpu
  threads: 1
  feedback_log: $FEEDBACK_URL
  feedback_sync_interval: ${GMTROUTER_FEEDBACK_SYNC_INTERVAL:-1}
  max_loaded_users: ${GMTROUTER_MAX_LOADED_USERS:-50000}
endpoints: {}
EOF
  mv -f "$home/router.yaml.tmp" "$home/router.yaml"
  umask 022
}

up_router() {  # every replica that is not running: all started first, then each waited for
  local i name url started=()
  for ((i = 1; i <= REPLICAS; i++)); do
    name=$(router_name "$i")
    if pid_of "$name" >/dev/null; then
      say "$name already running at http://127.0.0.1:$(router_port "$i")"
    else
      launch_router "$i"
      started+=("$i")
    fi
  done
  for i in "${started[@]}"; do
    name=$(router_name "$i")
    url=http://127.0.0.1:$(router_port "$i")
    if champion_exists; then
      wait_until 180 "$name" http "$url/health" \
        || die "$name did not answer at $url/health within 180 s; see $LOGS/$name.log"
      say "$name at $url serving $MODEL_URI (checks for a new champion every $RELOAD s)"
    else
      say "$name waits for a first $MODEL_URI (run the train_$DATASET job); it will listen on $url"
    fi
  done
}

launch_router() {  # I: start replica I (router, router-2, ...) with its own home and port
  local name port home
  name=$(router_name "$1")
  port=$(router_port "$1")
  home=$DIR/routers/$name
  write_router_config "$name"
  (
    service_env
    export GMTROUTER_HOME=$home  # its own home: nothing but PostgreSQL and the registry is shared
    export GMTROUTER_ADMIN_TOKEN=$ADMIN_TOKEN
    cd "$home"
    # waits (in the background) for a first champion, then becomes the server; --reload-interval follows
    # the alias from then on, re-applying the feedback logged since the new model's training data was cut
    launch "$name" bash -c '
      py=$1 name=$2 alias=$3; shift 3
      until "$py" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=20)" \
              "$MLFLOW_TRACKING_URI/api/2.0/mlflow/registered-models/alias?name=$name&alias=$alias" \
              >/dev/null 2>&1; do
        echo "waiting for models:/$name@$alias in $MLFLOW_TRACKING_URI"; sleep 3
      done
      exec "$@"' router-wait "$PY" "gmtrouter-$DATASET" champion \
      "$VENV/bin/gmtrouter" serve --config "$home/router.yaml" --model "$MODEL_URI" \
      --reload-interval "$RELOAD" --host 127.0.0.1 --port "$port"
  )
}

down_routers() {  # every replica that is running, also those beyond the current GMTROUTER_ROUTER_REPLICAS
  local f name
  for f in "$PIDS"/router.pid "$PIDS"/router-*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    stop_group "$name"
  done
}

down_service() {  # SERVICE
  case $1 in
    postgres) down_postgres ;;
    router) down_routers ;;
    celery-worker) down_celery_workers ;;
    *) stop_group "$1" ;;
  esac
}

# ------------------------------------------------------------------ Redis and the Celery workers (GMTROUTER_EXECUTOR=celery)
CELERY_WORKERS=2
REDIS_BIN=""
install_redis() {  # Debian's redis-server (installed with apt-get when missing and running as root)
  REDIS_BIN=$(command -v redis-server 2>/dev/null || true)
  [ -n "$REDIS_BIN" ] && return 0
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "services: Redis is not installed (no redis-server): install the Debian package redis-server" >&2
    exit $EXIT_NO_POSTGRES
  fi
  say "installing Redis (Debian package redis-server) with apt-get"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } \
        >> "$LOGS/apt.log" 2>&1; then
    echo "services: Redis is not installed and apt-get could not install it (see $LOGS/apt.log)" >&2
    exit $EXIT_NO_POSTGRES
  fi
  REDIS_BIN=$(command -v redis-server) || { echo "services: no redis-server after apt-get" >&2; exit $EXIT_NO_POSTGRES; }
}

redis_ping() {
  "$PY" -c 'import sys, redis; sys.exit(0 if redis.Redis.from_url(sys.argv[1], socket_timeout=5).ping() else 1)' \
    "$CELERY_BROKER"
}

up_redis() {
  if pid_of redis >/dev/null; then say "redis already running on 127.0.0.1:$REDIS_PORT"; return 0; fi
  install_redis
  mkdir -p "$DIR/redis"
  umask 077
  # the password stays out of the command line: a config file of mode 600
  cat > "$DIR/redis/redis.conf.tmp" <<EOF
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
requirepass $PG_PASSWORD
dir $DIR/redis
save ""
appendonly no
daemonize no
EOF
  mv -f "$DIR/redis/redis.conf.tmp" "$DIR/redis/redis.conf"
  umask 022
  launch redis "$REDIS_BIN" "$DIR/redis/redis.conf"
  wait_until 60 redis redis_ping || die "redis did not answer on 127.0.0.1:$REDIS_PORT; see $LOGS/redis.log"
  say "redis on 127.0.0.1:$REDIS_PORT (the Celery broker and result backend)"
}

write_celery_config() {  # the module dagster_celery.app reads (broker and backend), mode 600
  mkdir -p "$DIR/celery"
  umask 077
  cat > "$DIR/celery/dagster_celery_config.py.tmp" <<EOF
# written by scripts/services.sh: the Celery settings of the deployment's workers (dagster_celery.app)
broker_url = '$CELERY_BROKER'
result_backend = '$CELERY_BROKER'
worker_prefetch_multiplier = 1
task_acks_late = False
broker_connection_retry_on_startup = True
EOF
  mv -f "$DIR/celery/dagster_celery_config.py.tmp" "$DIR/celery/dagster_celery_config.py"
  umask 022
}

up_celery_worker() {  # CELERY_WORKERS workers, one step at a time each
  local i name
  write_celery_config
  for ((i = 1; i <= CELERY_WORKERS; i++)); do
    name=celery-worker-$i
    if pid_of "$name" >/dev/null; then say "$name already running"; continue; fi
    (
      service_env
      export PYTHONPATH="$DIR/celery:$REPO${PYTHONPATH:+:$PYTHONPATH}"
      cd "$REPO"
      launch "$name" "$VENV/bin/celery" -A dagster_celery.app worker --concurrency 1 --prefetch-multiplier 1 \
        -Q dagster -n "$name@%h" --loglevel INFO
    )
  done
  for ((i = 1; i <= CELERY_WORKERS; i++)); do
    wait_until 120 "celery-worker-$i" worker_ping "celery-worker-$i" \
      || die "celery-worker-$i did not answer within 120 s; see $LOGS/celery-worker-$i.log"
  done
  say "$CELERY_WORKERS Celery workers on $(redact "$CELERY_BROKER") (queue dagster)"
}

worker_ping() {  # NAME: the worker answers a Celery ping
  ( export PYTHONPATH="$DIR/celery:$REPO"; cd "$REPO"
    "$VENV/bin/celery" -A dagster_celery.app inspect ping -t 5 -d "$1@$(hostname)" >/dev/null 2>&1 )
}

redact() { echo "${1/:$PG_PASSWORD@/:***@}"; }

down_celery_workers() {
  local f
  for f in "$PIDS"/celery-worker-*.pid; do
    [ -e "$f" ] || continue
    stop_group "$(basename "$f" .pid)"
  done
}

# ------------------------------------------------------------------ status
check() {  # SERVICE -> 0 when it answers; prints one line
  local svc=$1 pid
  if ! pid=$(pid_of "$svc"); then
    echo "$svc: not running"
    return 1
  fi
  case $svc in
    postgres)
      find_pg_bin && pg_ready || { echo "$svc: pid $pid, not accepting connections on 127.0.0.1:$PG_PORT"; return 1; } ;;
    mlflow)
      http "$MLFLOW_URL/health" >/dev/null 2>&1 \
        || { echo "$svc: pid $pid, no answer at $MLFLOW_URL/health"; return 1; }
      # the backend store answers too (Default experiment lookup goes to PostgreSQL)
      http "$MLFLOW_URL/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default" >/dev/null 2>&1 \
        || { echo "$svc: pid $pid, $MLFLOW_URL answers but its backend store does not"; return 1; } ;;
    redis)
      redis_ping || { echo "$svc: pid $pid, no answer on 127.0.0.1:$REDIS_PORT"; return 1; } ;;
    celery-worker-*)
      worker_ping "$svc" || { echo "$svc: pid $pid, no answer to a Celery ping"; return 1; } ;;
    dagster-webserver)
      http "$DAGSTER_URL/server_info" >/dev/null 2>&1 \
        || { echo "$svc: pid $pid, no answer at $DAGSTER_URL"; return 1; } ;;
    dagster-daemon)
      local out
      out=$(http "$DAGSTER_URL/graphql" \
            '{"query":"{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"}' \
            2>/dev/null) || { echo "$svc: pid $pid, health unknown (the webserver does not answer)"; return 1; }
      "$PY" -c '
import json, sys
st = json.loads(sys.argv[1])["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]
bad = [s["daemonType"] for s in st if s["required"] and not s["healthy"]]
sys.exit(1 if bad or not st else 0)' "$out" \
        || { echo "$svc: pid $pid, heartbeats missing: $out"; return 1; } ;;
    router|router-*)
      local h url
      url=http://127.0.0.1:$(router_port "$(router_index "$svc")")
      h=$(HTTP_BEARER=$ADMIN_TOKEN http "$url/health" 2>/dev/null) \
        || { if champion_exists; then echo "$svc: pid $pid, no answer at $url/health";
             else echo "$svc: pid $pid, waiting for a first $MODEL_URI"; fi; return 1; }
      echo "$svc: pid $pid, $url $h"
      return 0 ;;
  esac
  echo "$svc: pid $pid, ok"
}

# ------------------------------------------------------------------ main
cmd=${1:-status}
shift || true
if [ $# -gt 0 ]; then
  for s in "$@"; do
    case " ${ALL_SERVICES[*]} " in *" $s "*) ;; *) die "unknown service '$s'; expected one of: ${ALL_SERVICES[*]}";; esac
  done
  services=()
  for s in "${ALL_SERVICES[@]}"; do  # dependency order, whatever the order given
    case " $* " in *" $s "*) services+=("$s") ;; esac
  done
else
  services=()
  for s in "${ALL_SERVICES[@]}"; do
    case $CELERY_SERVICES in *" $s "*) [ "$cmd" = down ] || [ "${GMTROUTER_EXECUTOR:-}" = celery ] || continue ;; esac
    services+=("$s")
  done
fi

case $cmd in
  up)
    exec 9> "$DIR/lock"
    flock -w 900 9 || die "another services.sh holds $DIR/lock for more than 900 s"
    load_state
    write_env
    for s in "${services[@]}"; do
      case $s in
        postgres) up_postgres ;;
        mlflow) up_mlflow ;;
        dagster-daemon) up_dagster_daemon ;;
        dagster-webserver) up_dagster_webserver ;;
        router) up_router ;;
        redis) up_redis ;;
        celery-worker) up_celery_worker ;;
      esac
    done
    say "client environment: source $ENVFILE"
    ;;
  down)
    exec 9> "$DIR/lock"
    flock -w 900 9 || die "another services.sh holds $DIR/lock for more than 900 s"
    [ -f "$STATE" ] || { say "nothing to stop in $DIR"; exit 0; }
    load_state
    # dependants first
    for ((i = ${#ALL_SERVICES[@]} - 1; i >= 0; i--)); do
      s=${ALL_SERVICES[$i]}
      case " ${services[*]} " in *" $s "*) down_service "$s" ;; esac
    done
    ;;
  status)
    [ -f "$STATE" ] || { echo "no services in $DIR (bash scripts/services.sh up)"; exit 1; }
    load_state
    rc=0
    for s in "${services[@]}"; do
      if [ "$s" = router ]; then
        for r in "${ROUTERS[@]}"; do check "$r" || rc=1; done
      elif [ "$s" = celery-worker ]; then
        for ((i = 1; i <= CELERY_WORKERS; i++)); do check "celery-worker-$i" || rc=1; done
      else
        check "$s" || rc=1
      fi
    done
    exit $rc
    ;;
  env)
    [ -f "$ENVFILE" ] || die "no $ENVFILE yet (bash scripts/services.sh up)"
    cat "$ENVFILE"
    ;;
  *)
    die "usage: bash scripts/services.sh up|status|down [SERVICE...] | env"
    ;;
esac
