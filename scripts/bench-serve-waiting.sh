#!/usr/bin/env bash
# volley serve's memory with a great many messages waiting in its spool: MESSAGES messages
# (1,000,000 by default; 100 recipients a request over the HTTP API, one spooled message per
# recipient) for a destination that is down (a relay on a port nothing listens on), so every
# one is tried once, deferred and kept for its retry an hour later. Loopback only.
#
#   scripts/bench-serve-waiting.sh             # MESSAGES=1000000
#
# Prints serve's resident memory (VmRSS, and its peak VmHWM) once every message has been tried
# and deferred, then again after a restart that schedules them all from the spool, with the
# spool's size on disk and how long the restart took to answer.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

MESSAGES="${MESSAGES:-1000000}"
PORT="${PORT:-2740}"
HTTP_PORT=$PORT
DEAD_PORT=$((PORT + 1))

ensure_wrk
cargo build --release --quiet
VOLLEY="$PWD/target/release/volley"
work=$(mktemp -d /tmp/volley-bench-serve-waiting.XXXXXX)
pids=()
trap kill_pids_and_remove_work EXIT

API_KEY=$(new_api_key bench "$work/keys")

serve() {
    "$VOLLEY" serve --spool "$work/spool" --log "$work/log.jsonl" --smtp-listen 127.0.0.1:0 \
        --http-listen "127.0.0.1:$HTTP_PORT" --api-keys "$work/keys" --relay "127.0.0.1:$DEAD_PORT" \
        --retry-after 1h --retry-max 4h --max-age 2d --quiet 2>>"$work/serve.err" &
    serve_pid=$!
    pids+=("$serve_pid")
}

memory() {
    awk '/^VmRSS|^VmHWM/ { printf "%s %.0f MiB  ", $1, $2 / 1024 }' "/proc/$serve_pid/status"
}

# Waits until the log holds $1 records with status $2.
wait_for() {
    for _ in $(seq 6000); do
        [[ $(grep -c "\"status\":\"$2\"" "$work/log.jsonl" || true) -ge $1 ]] && return
        sleep 0.1
    done
    echo "only $(grep -c "\"status\":\"$2\"" "$work/log.jsonl" || true) of $1 $2" >&2
    exit 1
}

echo "== $MESSAGES messages waiting for a destination that is down"
serve
wait_port "$HTTP_PORT" || { cat "$work/serve.err" >&2; exit 1; }
echo "serve started:                 $(memory)"
# wrk's one thread stops once its REQUESTS are answered, and wrk ends at its duration (ample).
summary=$(RCPTS=100 REQUESTS=$(((MESSAGES + 99) / 100)) API_KEY=$API_KEY wrk -t1 -c16 -d "$((MESSAGES / 10000 + 10))s" \
    -s scripts/peers/wrk-messages.lua "http://127.0.0.1:$HTTP_PORT" | grep '^{')
accepted=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); assert s["status_errors"]==0 and s["requests"]*100>=int(sys.argv[2]), s; print(s["requests"]*100)' "$summary" "$MESSAGES")
wait_for "$accepted" deferred
echo "$accepted accepted, each tried and deferred: $(memory)"
kill -TERM "$serve_pid"
wait "$serve_pid"
echo "spool on disk: $(du -sh "$work/spool" | cut -f1)"

started=$(date +%s.%N)
serve
wait_port "$HTTP_PORT"
ready=$(date +%s.%N)
sleep 2
echo "restarted with them waiting:   $(memory) (answering after $(python3 -c "print(f'{$ready - $started:.1f}')") s)"
kill -TERM "$serve_pid"
wait "$serve_pid"
