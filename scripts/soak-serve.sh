#!/usr/bin/env bash
# volley serve for a long run: wrk POSTs one-recipient messages to the HTTP API for DURATION
# (default 300 s) with distinct recipients at 2,000 domains (rolled up onto one sink by
# --relay), and serve's resident memory is printed every INTERVAL (30 s) with how many
# messages it has delivered: it should level off, not grow with what was ever seen.
#
#   scripts/soak-serve.sh                      # DURATION=300 INTERVAL=30
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

DURATION="${DURATION:-300}"
INTERVAL="${INTERVAL:-30}"
PORT="${PORT:-2780}"
HTTP_PORT=$PORT
SINK_PORT=$((PORT + 1))

ensure_wrk
cargo build --release --quiet
VOLLEY="$PWD/target/release/volley"
work=$(mktemp -d /tmp/volley-soak-serve.XXXXXX)
pids=()
trap kill_pids_and_remove_work EXIT

API_KEY=$(new_api_key soak "$work/keys")
taskset -c 1 "$VOLLEY" sink --listen "127.0.0.1:$SINK_PORT" --threads 1 >/dev/null 2>&1 &
pids+=($!)
wait_port "$SINK_PORT"
taskset -c 1 "$VOLLEY" serve --spool "$work/spool" --log "$work/log.jsonl" --smtp-listen 127.0.0.1:0 \
    --http-listen "127.0.0.1:$HTTP_PORT" --api-keys "$work/keys" --relay "127.0.0.1:$SINK_PORT" \
    --threads 1 --quiet 2>"$work/serve.err" &
serve_pid=$!
pids+=("$serve_pid")
wait_port "$HTTP_PORT"
RCPTS=1 DOMAINS=2000 API_KEY=$API_KEY taskset -c 0 wrk -t1 -c64 -d "${DURATION}s" \
    -s scripts/peers/wrk-messages.lua "http://127.0.0.1:$HTTP_PORT" >"$work/wrk.out" &
pids+=($!)
echo "== volley serve soaked for ${DURATION}s over HTTP, one recipient a request"
for ((t = INTERVAL; t <= DURATION; t += INTERVAL)); do
    sleep "$INTERVAL"
    delivered=$(grep -c '"status":"delivered"' "$work/log.jsonl" || true)
    rss=$(awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$serve_pid/status")
    echo "${t}s: ${delivered} delivered, RSS ${rss} MiB"
done
