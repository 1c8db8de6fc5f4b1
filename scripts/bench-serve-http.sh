#!/usr/bin/env bash
# volley serve's HTTP API under a real load generator, and its queue time at a steady rate;
# loopback only. wrk (pinned to core 0, CONNECTIONS=64 connections, an application's pool) POSTs JSON messages to
# /api/v1/messages, 1 and then 100 recipients a request; serve and its `volley sink` run on
# core 1. serve answers 202 only once every recipient's message is fsync'd in its spool.
#
#   scripts/bench-serve-http.sh            # DURATION=10s a case, RATE=1000 msg/s for latency
#   SERVE_FLAGS="--status-retention 0" scripts/bench-serve-http.sh   # serve with more flags
#
# Prints, per case: recipients/s accepted (wrk's 202s), recipients/s delivered (from wrk's start
# until the log holds every one as delivered), wrk's request latency, and the CPU serve and its
# sink spent a recipient (steadier than the rates on a machine whose speed drifts). Then, with `volley
# bench --rate RATE` submitting over SMTP, the queue time from acceptance (durable, 250 sent)
# to the sink's 250, p50 and p99, from the delivery log's `queue_ms`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
RATE="${RATE:-1000}"
PORT="${PORT:-2720}"
SMTP_PORT=$PORT
HTTP_PORT=$((PORT + 1))
SINK_PORT=$((PORT + 2))

ensure_wrk
cargo build --release --quiet
VOLLEY="$PWD/target/release/volley"
work=$(mktemp -d /tmp/volley-bench-serve-http.XXXXXX)
pids=()
trap kill_pids_and_remove_work EXIT

API_KEY=$(new_api_key bench "$work/keys")

echo "== HTTP intake: wrk -t1 -c$CONNECTIONS for $DURATION a case; wrk on core 0, serve and sink on core 1"
echo "   $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

# Starts a sink and serve on a fresh spool and log ($1: a name for them).
start() {
    taskset -c 1 "$VOLLEY" sink --listen "127.0.0.1:$SINK_PORT" --threads 1 >/dev/null 2>&1 &
    sink_pid=$!
    pids+=("$sink_pid")
    wait_port "$SINK_PORT"
    taskset -c 1 "$VOLLEY" serve --spool "$work/spool-$1" --log "$work/$1.jsonl" \
        --smtp-listen "127.0.0.1:$SMTP_PORT" --trusted-networks 127.0.0.1 \
        --http-listen "127.0.0.1:$HTTP_PORT" --api-keys "$work/keys" \
        --relay "127.0.0.1:$SINK_PORT" --threads 1 --quiet ${SERVE_FLAGS:-} 2>"$work/serve-$1.err" &
    serve_pid=$!
    pids+=("$serve_pid")
    wait_port "$HTTP_PORT"
}

stop() {
    kill -TERM "$serve_pid"
    wait "$serve_pid" || { echo "serve failed:" >&2; cat "$work/serve-$1.err" >&2; exit 1; }
    kill "$sink_pid"
    wait "$sink_pid" 2>/dev/null || true
}

# Waits (up to 120 s) until log $1 holds $2 delivered records; prints when, as epoch seconds.
delivered_by() {
    for _ in $(seq 2400); do
        if [[ $(grep -c '"status":"delivered"' "$1" || true) -ge $2 ]]; then
            date +%s.%N
            return
        fi
        sleep 0.05
    done
    echo "only $(grep -c '"status":"delivered"' "$1" || true) of $2 delivered" >&2
    exit 1
}

for rcpts in 1 100; do
    start "http-$rcpts"
    serve_cpu=$(cpu_of "$serve_pid")
    sink_cpu=$(cpu_of "$sink_pid")
    began=$(date +%s.%N)
    summary=$(RCPTS=$rcpts API_KEY=$API_KEY taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d "$DURATION" \
        -s scripts/peers/wrk-messages.lua "http://127.0.0.1:$HTTP_PORT" | grep '^{')
    accepted=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); assert s["status_errors"]==0 and s["socket_errors"]==0, s; print(s["requests"]*int(sys.argv[2]))' "$summary" "$rcpts")
    finished=$(delivered_by "$work/http-$rcpts.jsonl" "$accepted")
    serve_cpu=$(awk -v a="$serve_cpu" -v b="$(cpu_of "$serve_pid")" 'BEGIN { print b - a }')
    sink_cpu=$(awk -v a="$sink_cpu" -v b="$(cpu_of "$sink_pid")" 'BEGIN { print b - a }')
    python3 -c '
import json, sys
s = json.loads(sys.argv[1]); rcpts = int(sys.argv[2]); accepted = int(sys.argv[3])
e2e = accepted / (float(sys.argv[5]) - float(sys.argv[4]))
secs = s["duration_us"] / 1e6
reqs, p50, p99 = s["requests"] / secs, s["p50_us"] / 1000, s["p99_us"] / 1000
print(f"{rcpts:>3} recipients/request: {reqs:,.0f} requests/s, {accepted / secs:,.0f} recipients/s accepted, "
      f"{e2e:,.0f} recipients/s delivered ({accepted:,} in all); request latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
serve_us, sink_us = float(sys.argv[6]) * 1e6 / accepted, float(sys.argv[7]) * 1e6 / accepted
print(f"    CPU a recipient: serve {serve_us:.1f} us, its sink {sink_us:.1f} us (core 1 for 20,000/s: 50 us)")
' "$summary" "$rcpts" "$accepted" "$began" "$finished" "$serve_cpu" "$sink_cpu"
    stop "http-$rcpts"
done

echo "== queue time at a steady $RATE msg/s over SMTP for $DURATION (volley bench --rate on core 0)"
start latency
report=$(taskset -c 0 "$VOLLEY" bench --target "127.0.0.1:$SMTP_PORT" --rate "$RATE" --duration "$DURATION" \
    --connections 16 --threads 1 --quiet --json)
sent=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["delivered"])' "$report")
delivered_by "$work/latency.jsonl" "$sent" >/dev/null
python3 -c '
import json, sys
q = sorted(json.loads(l)["queue_ms"] for l in open(sys.argv[1]) if "\"status\":\"delivered\"" in l)
pct = lambda p: q[min(len(q) - 1, int(len(q) * p / 100))]
print(f"acceptance to the sink'"'"'s 250, {len(q):,} messages: p50 {pct(50)} ms, p99 {pct(99)} ms, p99.9 {pct(99.9)} ms, max {q[-1]} ms")
' "$work/latency.jsonl"
stop latency
