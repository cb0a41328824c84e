#!/usr/bin/env bash
# bench/anchors-ours.sh start|stop|pause|resume A_CONN B_CONN
#
# The OURS_* commands for ../shared/anchors/systems/ours.sh: branchsync as
# "hub + two agents" replicating public.items A -> B (and B -> A; the harness
# only writes on A). Schema "bench" is never synced: agents track
# TRACKED_TABLES=public.items only.
#
#   cd /work/shared/anchors && OURS_START='/work/main/bench/anchors-ours.sh start' \
#     OURS_STOP='/work/main/bench/anchors-ours.sh stop' OURS_PAUSE='/work/main/bench/anchors-ours.sh pause' \
#     OURS_RESUME='/work/main/bench/anchors-ours.sh resume' ./run.sh ours w1,w1drain,w2
#
# Uses A_URL/B_URL, PORT_A and WORKDIR exported by run.sh (A_CONN/B_CONN are
# accepted but the agents take URLs). State (pids, ports, keys, logs) lives in
# /tmp/bsbench-anchors-<basename of WORKDIR>/ (BS_STATE_DIR overrides), outside
# WORKDIR so that the hub/agent logs survive run.sh's cleanup.
#   start  : hub (own database bsbench_hub, see below) on ephemeral ports,
#            tenant "anchors" with branches a and b (admin CLI), one agent per side;
#            returns once both agents have installed capture (run.sh then waits
#            for a barrier row, so readiness of the stream itself is checked there).
#   pause  : SIGTERM B's agent and wait until it exited (changes pile up in the hub).
#   resume : start B's agent again and return at once (the timed part is its catch-up).
#   stop   : stop agents and hub (SIGTERM, wait; SIGKILL after 30 s), drop bsbench_hub.
#
# Where the hub's database lives: on cluster A (port $PORT_A), not on 15/main.
# That cluster is configured exactly like the anchors' (shared_buffers, max_wal_size,
# checkpoint_timeout=30min) and is CHECKPOINTed by run.sh before every measurement,
# so no checkpoint of the hub's writes lands inside a measured phase; it is dropped
# with the cluster even if stop fails; and 15/main is shared with other users' test
# runs, whose load would add noise. The price: the hub's WAL flushes share A's
# WAL device and CPU, which makes A's writer a bit slower, i.e. errs against us.
#
# Extra knobs: any agent/hub env var passes through (e.g. BATCH_MAX_CHANGES,
# BATCH_LINGER_MS, PG_POOL_SIZE); BS_CPU_PROF_DIR=dir writes V8 CPU profiles of
# hub and agents there (on stop); BS_HUB_PG_PORT=$PORT_B puts the hub's database
# on cluster B instead (session 12, two alternated pairs of REPS=3 W1 runs:
# inserts 33.0k/31.8k on A vs 30.0k/30.8k on B, updates 19.1k/21.9k vs 24.1k/26.7k,
# so the default stays A).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLI=$REPO/bin/branchsync.mjs
cmd=${1:?usage: anchors-ours.sh start|stop|pause|resume A_CONN B_CONN}
: "${A_URL:?A_URL not set (run me from anchors/run.sh)}" "${B_URL:?}" "${PORT_A:?}" "${WORKDIR:?}"
STATE=${BS_STATE_DIR:-/tmp/bsbench-anchors-$(basename "$WORKDIR")}
TENANT=anchors
HUB_DB=bsbench_hub
HUB_PG_PORT=${BS_HUB_PG_PORT:-$PORT_A}
HUB_DB_URL=postgresql://postgres@127.0.0.1:$HUB_PG_PORT/$HUB_DB

log() { printf '[%s] anchors-ours: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# spawn NAME ENV... : runs `node bin/branchsync.mjs` in the background with a raised fd limit;
# the pid (bash exec's into node) goes to $STATE/NAME.pid, output to $STATE/NAME.log.
spawn() {
  local name=$1; shift
  local prof=()
  [[ -n ${BS_CPU_PROF_DIR:-} ]] && { mkdir -p "$BS_CPU_PROF_DIR/$name"; prof=(--cpu-prof "--cpu-prof-dir=$BS_CPU_PROF_DIR/$name"); }
  env "$@" bash -c 'echo $$ >"$0"; ulimit -n 65536 2>/dev/null || true; exec node "$@"' \
    "$STATE/$name.pid" "${prof[@]}" "$CLI" "${name%%_*}" </dev/null >>"$STATE/$name.log" 2>&1 &
  local i; for i in $(seq 1 50); do [[ -s $STATE/$name.pid ]] && return 0; sleep 0.02; done
  die "$name did not start"
}

# wait_line NAME REGEX TIMEOUT_S
wait_line() {
  local i
  for i in $(seq 1 $(($3 * 20))); do
    grep -Eq "$2" "$STATE/$1.log" 2>/dev/null && return 0
    kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null || { tail -n 20 "$STATE/$1.log" >&2; die "$1 exited"; }
    sleep 0.05
  done
  tail -n 20 "$STATE/$1.log" >&2; die "$1: no '$2' within $3 s"
}

# stop_proc NAME : SIGTERM by pid, wait for exit, SIGKILL after 30 s.
stop_proc() {
  local f=$STATE/$1.pid pid i
  [[ -s $f ]] || return 0
  pid=$(cat "$f")
  if kill -TERM "$pid" 2>/dev/null; then
    for i in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$pid" 2>/dev/null && { log "$1 ($pid) ignored SIGTERM for 30 s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$f"
}

start_agent() { # start_agent a|b URL
  # shellcheck disable=SC1091
  source "$STATE/env"
  local key_var=KEY_${1^^}
  : >"$STATE/agent_$1.pid"
  spawn "agent_$1" HUB_URL="http://127.0.0.1:$GRPC_PORT" HUB_AUTH_URL="http://127.0.0.1:$HTTP_PORT" \
    TENANT_ID=$TENANT BRANCH_ID="$1" API_KEY="${!key_var}" LOCAL_DATABASE_URL="$2" \
    TRACKED_TABLES=public.items LOG_LEVEL="${LOG_LEVEL:-warn}"
}

admin() {
  # shellcheck disable=SC1091
  source "$STATE/env"
  HUB_ADMIN_URL="http://127.0.0.1:$HTTP_PORT" ADMIN_TOKEN=$ADMIN_TOKEN node "$CLI" admin "$@"
}

case $cmd in
  start)
    mkdir -p "$STATE"
    # The processes run the bundle (bin/branchsync.mjs falls back to tsx when it is stale).
    node "$REPO/scripts/build.mjs"
    [[ -s $STATE/hub.pid ]] && kill -0 "$(cat "$STATE/hub.pid")" 2>/dev/null && die "already running (state in $STATE)"
    ADMIN_TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
    : >"$STATE/hub.pid"; : >"$STATE/hub.log"
    spawn hub DATABASE_URL="$HUB_DB_URL" HOST=127.0.0.1 GRPC_PORT=0 HTTP_PORT=0 ADMIN_TOKEN="$ADMIN_TOKEN" \
      LOG_LEVEL="${LOG_LEVEL:-warn}" DRAIN_SECONDS=2
    wait_line hub 'branchsync hub ready' 60
    read -r GRPC_PORT HTTP_PORT < <(sed -nE 's/.*SyncStream grpc:\/\/[^:]+:([0-9]+) +control http:\/\/[^:]+:([0-9]+).*/\1 \2/p' "$STATE/hub.log" | head -n1)
    [[ -n ${GRPC_PORT:-} && -n ${HTTP_PORT:-} ]] || die "cannot read the hub's ports from $STATE/hub.log"
    umask 077
    printf 'ADMIN_TOKEN=%q\nGRPC_PORT=%q\nHTTP_PORT=%q\n' "$ADMIN_TOKEN" "$GRPC_PORT" "$HTTP_PORT" >"$STATE/env"
    admin tenant create "$TENANT" >/dev/null
    for b in a b; do
      key=$(admin branch create "$TENANT" "$b" | sed -n 's/^API_KEY=//p')
      [[ -n $key ]] || die "no API key for branch $b"
      printf 'KEY_%s=%q\n' "${b^^}" "$key" >>"$STATE/env"
    done
    start_agent a "$A_URL"
    start_agent b "$B_URL"
    wait_line agent_a 'branchsync agent running' 60
    wait_line agent_b 'branchsync agent running' 60
    log "hub grpc :$GRPC_PORT control :$HTTP_PORT (db $HUB_DB on port $HUB_PG_PORT), agents a, b up; logs in $STATE"
    ;;
  pause)
    stop_proc agent_b
    ;;
  resume)
    start_agent b "$B_URL"
    ;;
  stop)
    stop_proc agent_b
    stop_proc agent_a
    stop_proc hub
    psql -X -q -h 127.0.0.1 -p "$HUB_PG_PORT" -U postgres -d postgres -c "DROP DATABASE IF EXISTS $HUB_DB WITH (FORCE)" || true
    log "stopped; logs in $STATE"
    ;;
  *) die "unknown command $cmd (start|stop|pause|resume)" ;;
esac
