#!/usr/bin/env bash
# clusters/local.sh up|down|status — a multi-node Ray cluster on one machine, to try cluster behaviour on a laptop.
#
#   clusters/local.sh up        # head (0 CPUs: it only coordinates) + 2 worker nodes with 1 CPU each
#   clusters/local.sh status    # address, nodes, and the exact `ray job submit` command
#   clusters/local.sh down      # stops THIS cluster's processes only (never a global `ray stop`)
#
# Every node is a separate `ray start` with its own CPUs, raylet and object store, so Ray schedules, spills and fails
# over between them as between machines. Run it from the environment that has rayml installed (`source .venv/bin/activate`):
# the nodes, and the `python` of submitted jobs, use that environment; jobs need no pip install.
#
# Settings (environment variables; the defaults avoid Ray's own ports and /tmp/ray, so other clusters are untouched):
#   RAYML_LOCAL_DIR             this script's state, with Ray's --temp-dir in it as ray/ (default /tmp/rayml-local;
#                               keep it short: Unix socket paths under it must fit in 107 bytes). Private: created
#                               0700; refused when found owned by another user or writable by others (its name is
#                               predictable, and its files say which processes `down` kills and which token clients use)
#   RAYML_LOCAL_WORKERS         worker nodes (default 2)
#   RAYML_LOCAL_HEAD_CPUS       CPUs of the head node (default 0: no tasks or training workers run there)
#   RAYML_LOCAL_WORKER_CPUS     CPUs of each worker node (default 1)
#   RAYML_LOCAL_GCS_PORT        head GCS port (default 6390)
#   RAYML_LOCAL_DASHBOARD_PORT  dashboard + job server, bound to 127.0.0.1 (default 8275)
#   RAYML_LOCAL_CLIENT_PORT     Ray Client server (default 10011)
#   RAYML_LOCAL_METRICS_PORT    Prometheus metrics export port of the head; worker i uses this + i (default 8090)
#   RAYML_LOCAL_AGENT_PORT      dashboard agent HTTP port of the head; worker i uses this + i (default 52400)
#   RAYML_LOCAL_AUTH            token (default) | disabled — Ray token authentication; the token is generated once
#                               into $RAYML_LOCAL_DIR/auth_token and clients need RAY_AUTH_MODE=token and
#                               RAY_AUTH_TOKEN_PATH (printed by `status`)
#   RAY                         the ray command (default: ray on PATH)
set -euo pipefail
umask 077  # every file and dir this script (and Ray under it) creates is the user's only

DIR="${RAYML_LOCAL_DIR:-/tmp/rayml-local}"
WORKERS="${RAYML_LOCAL_WORKERS:-2}"
HEAD_CPUS="${RAYML_LOCAL_HEAD_CPUS:-0}"
WORKER_CPUS="${RAYML_LOCAL_WORKER_CPUS:-1}"
GCS_PORT="${RAYML_LOCAL_GCS_PORT:-6390}"
DASHBOARD_PORT="${RAYML_LOCAL_DASHBOARD_PORT:-8275}"
CLIENT_PORT="${RAYML_LOCAL_CLIENT_PORT:-10011}"
METRICS_PORT="${RAYML_LOCAL_METRICS_PORT:-8090}"
AGENT_PORT="${RAYML_LOCAL_AGENT_PORT:-52400}"
AUTH="${RAYML_LOCAL_AUTH:-token}"
RAY="${RAY:-ray}"
NODES="$DIR/nodes"  # one line per node: NAME PGID (each node's processes share one process group)
RAY_TMP="$DIR/ray"  # Ray's --temp-dir: Ray makes it world-writable, so it lives inside the private $DIR
STOP_GRACE_S=5

die() { echo "local.sh: $*" >&2; exit 2; }

# uid and octal permissions of a path (GNU stat, else BSD/macOS stat)
owner_mode() { stat -c '%u %a' -- "$1" 2>/dev/null || stat -f '%u %Lp' -- "$1"; }

# Refuse a path (when it exists) that is a symlink, another user's, or writable by group/others.
check_private() {
  local path="$1" what="$2" uid mode
  [[ -e "$path" || -L "$path" ]] || return 0
  [[ -L "$path" ]] && die "$what $path is a symlink; it is not trusted.
Hint: remove it (rm $path), or set RAYML_LOCAL_DIR to a directory of your own"
  read -r uid mode < <(owner_mode "$path")
  [[ "$uid" == "$(id -u)" ]] || die "$what $path is owned by user id $uid, not by you (user id $(id -u)); it is not trusted.
Hint: if it is yours from another account, remove it; otherwise set RAYML_LOCAL_DIR to a directory of your own"
  ((8#$mode & 8#022)) && die "$what $path is writable by others (mode $mode); it is not trusted.
Hint: chmod go-w $path (after checking its files), or remove it and run this script again"
  return 0
}

# The cluster dir, created 0700 (an existing one of ours is tightened to 0700).
ensure_private_dir() {
  mkdir -p -- "$(dirname -- "$DIR")"
  mkdir -m 700 -- "$DIR" 2>/dev/null || true
  check_private "$DIR" "the cluster dir"
  chmod 700 -- "$DIR"
}

case "$AUTH" in token | disabled) ;; *) die "RAYML_LOCAL_AUTH=$AUTH: use token or disabled" ;; esac
for v in WORKERS HEAD_CPUS WORKER_CPUS GCS_PORT DASHBOARD_PORT CLIENT_PORT METRICS_PORT AGENT_PORT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v=${!v} is not a whole number"
done
command -v "$RAY" >/dev/null || die "'$RAY' not found: activate the rayml environment (source .venv/bin/activate)"
# `python` of the ray CLI: used to start each node in its own session (portable: macOS has no setsid(1))
PY="$(dirname "$(command -v "$RAY")")/python"
[[ -x "$PY" ]] || PY=python3

check_private "$DIR" "the cluster dir"
check_private "$NODES" "the node list"
check_private "$DIR/auth_token" "the auth token"

export RAY_AUTH_MODE="$AUTH"
if [[ "$AUTH" == token ]]; then
  export RAY_AUTH_TOKEN_PATH="$DIR/auth_token"
fi

alive() { kill -0 -- "-$1" 2>/dev/null; }

# Start one `ray start` in a new session; its pid becomes the process group id of everything that node runs.
start_node() {
  local name="$1"
  shift
  local log="$DIR/$name.log"
  "$PY" -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])' "$RAY" start "$@" >"$log" 2>&1 &
  local pgid=$!
  if ! wait "$pgid"; then
    echo "local.sh: $name failed to start; its log ($log):" >&2
    tail -n 30 "$log" >&2
    return 1
  fi
  echo "$name $pgid" >>"$NODES"
}

cmd_up() {
  if [[ -s "$NODES" ]]; then
    while read -r name pgid; do
      alive "$pgid" && die "$name is already running (pgid $pgid); run: $0 down"
    done <"$NODES"
  fi
  ensure_private_dir
  : >"$NODES"
  if [[ "$AUTH" == token && ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
    # written aside, then renamed into place: a reader never sees half a token
    "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$RAY_AUTH_TOKEN_PATH.tmp.$$"
    mv -f -- "$RAY_AUTH_TOKEN_PATH.tmp.$$" "$RAY_AUTH_TOKEN_PATH"
  fi
  # random worker ports (0/0): nodes on one machine must not compete for Ray's default worker port range
  local common=(--temp-dir "$RAY_TMP" --disable-usage-stats --min-worker-port 0 --max-worker-port 0)
  start_node head --head --node-ip-address 127.0.0.1 --port "$GCS_PORT" --num-cpus "$HEAD_CPUS" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" --ray-client-server-port "$CLIENT_PORT" \
    --metrics-export-port "$METRICS_PORT" --dashboard-agent-listen-port "$AGENT_PORT" "${common[@]}" || { cmd_down; exit 1; }
  local i
  for ((i = 1; i <= WORKERS; i++)); do
    start_node "worker-$i" --address "127.0.0.1:$GCS_PORT" --node-ip-address 127.0.0.1 --num-cpus "$WORKER_CPUS" \
      --metrics-export-port "$((METRICS_PORT + i))" --dashboard-agent-listen-port "$((AGENT_PORT + i))" \
      "${common[@]}" || { cmd_down; exit 1; }
  done
  cmd_status
}

kill_strays() {
  # Ray puts each worker process in its own process group; any that outlived its raylet (or a head that failed
  # half-way through `up`, before it was recorded) still names this cluster's session dir on its command line, and
  # nothing else on the machine does. Again until none is left (up to 5 s): a SIGKILLed process takes a moment to go,
  # and a raylet that was stopping may have forked one more worker meanwhile.
  local stray strays tries=0
  while strays=$(pgrep -u "$(id -u)" -f -- "$RAY_TMP/session_" || true); [[ -n "$strays" ]] && ((tries < 25)); do
    while read -r stray; do
      kill -KILL "$stray" 2>/dev/null || true
    done <<<"$strays"
    sleep 0.2
    tries=$((tries + 1))
  done
}

cmd_down() {
  [[ -s "$NODES" ]] || { kill_strays; echo "no local cluster recorded in $DIR"; return 0; }
  local name pgid waited=0
  # workers first, so the head does not see them die and log failures
  while read -r name pgid; do
    alive "$pgid" && kill -TERM -- "-$pgid" 2>/dev/null || true
  done < <(tac "$NODES" 2>/dev/null || tail -r "$NODES")
  while ((waited < STOP_GRACE_S * 2)); do
    local any=0
    while read -r name pgid; do alive "$pgid" && any=1; done <"$NODES"
    ((any)) || break
    sleep 0.5
    waited=$((waited + 1))
  done
  while read -r name pgid; do
    alive "$pgid" && { echo "$name did not stop in ${STOP_GRACE_S}s: SIGKILL"; kill -KILL -- "-$pgid" 2>/dev/null || true; }
  done <"$NODES"
  kill_strays
  : >"$NODES"
  echo "local cluster in $DIR stopped"
}

cmd_status() {
  [[ -s "$NODES" ]] || { echo "no local cluster in $DIR (start one: $0 up)"; return 1; }
  local name pgid down=0
  while read -r name pgid; do
    if alive "$pgid"; then echo "  $name: running (process group $pgid)"; else echo "  $name: DOWN"; down=1; fi
  done <"$NODES"
  cat <<EOF
Ray address (drivers, ray.init):  127.0.0.1:$GCS_PORT
Dashboard + job server:           http://127.0.0.1:$DASHBOARD_PORT
Metrics (Prometheus):             127.0.0.1:$METRICS_PORT (head), +1.. per worker; targets in $RAY_TMP/prom_metrics_service_discovery.json
Submit a job (from the repo root):
EOF
  if [[ "$AUTH" == token ]]; then
    echo "  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
  fi
  echo "  ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --runtime-env jobs/runtime_env.yaml --working-dir . \\"
  echo "      -- python jobs/train.py --config jobs/configs/train_ddp.yaml"
  return "$down"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status (settings: see the top of this file)" >&2; exit 2 ;;
esac
