#!/usr/bin/env bash
# A campaign through Redis (`send --queue`, one node) next to plain `send` on the same sink, one
# run, loopback only: volley pinned to core 0, the sink and redis-server to core 1.
#
#   scripts/bench-cluster.sh           # N=200000 recipients, ROUNDS=3
#
# Both send the same list through --relay to volley's sink. For the queue run, the node loads
# the list itself (--recipients) and consumes it: the load is part of its time. Prints each
# round's rates and the median ratio queue/plain (the issue's goal: at least 0.7), and for the
# queue runs what Redis did: calls the node made per recipient (a script call counts one, as
# the node's report counts them), commands Redis executed per recipient (INFO commandstats,
# the scripts' inner commands included), and Redis's CPU per 100,000 recipients. Then volley's
# own CPU (user + system) in each run and their ratio: this machine's speed drifts within a
# round, the CPU a run takes much less than its rate. Last, two nodes on one campaign, both on
# core 0: their summed rate and each one's share.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

N="${N:-200000}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-2660}"
REDIS_PORT="${REDIS_PORT:-6395}"
CONNECTIONS="${CONNECTIONS:-16}"

command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
cargo build --release --quiet
VOLLEY="${VOLLEY:-target/release/volley}"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

awk -v n="$N" 'BEGIN { print "email,first,code"; for (i = 0; i < n; i++) printf "user%d@d%d.bench.test,Name%d,%x\n", i, i % 100, i, i * 7919 }' >"$work/list.csv"
printf 'From: Bench <news@example.com>\nSubject: Hello {{ first }}\n\nDear {{ first }},\nyour code is {{ code }}.\n%s\n' \
    "$(head -c 700 /dev/zero | tr '\0' 'x')" >"$work/msg.txt"

taskset -c 1 "$VOLLEY" sink --listen "127.0.0.1:$PORT" --threads 1 >/dev/null 2>&1 &
pids+=($!)
taskset -c 1 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null 2>&1 &
pids+=($!)
wait_port "$PORT"
wait_port "$REDIS_PORT"
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# Redis's CPU seconds (user + system) and commands executed so far.
redis_cpu() { rcli info cpu | awk -F: '/used_cpu_(user|sys):/ { s += $2 } END { printf "%.3f\n", s }'; }
redis_calls() { rcli info commandstats | awk -F'[=,]' '/^cmdstat_/ { s += $2 } END { print s + 0 }'; }

run() {
    local mode=$1 round=$2
    rm -f "$work/log.jsonl"
    local args=(send --message "$work/msg.txt" --recipients "$work/list.csv" --relay "127.0.0.1:$PORT"
        --threads 1 --connections "$CONNECTIONS" --pipeline-depth 32 --messages-per-connection 1000000
        --log "$work/log.jsonl" --quiet --json)
    if [[ $mode == queue ]]; then args+=(--queue "redis://127.0.0.1:$REDIS_PORT/bench$round" --node n1); fi
    local start end TIMEFORMAT='%U %S'
    start=$(date +%s.%N)
    { time taskset -c 0 "$VOLLEY" "${args[@]}" >"$work/out-$mode.json" 2>"$work/err"; } 2>"$work/cpu-$mode" ||
        { cat "$work/err" >&2; return 1; }
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" -v n="$N" 'BEGIN { printf "%.0f\n", n / (e - s) }'
}

# One run of each, not counted, first: the first run after the sink starts was the slowest of
# a session again and again (plain `send` at 139,000-164,000 msg/s against ~250,000 after, its
# CPU twice as much), and round 1 runs plain first.
rcli flushall >/dev/null
run plain 0 >/dev/null
run queue 0 >/dev/null
printf "%-6s %12s %12s %8s %14s %14s %16s %10s %10s %10s\n" round "plain msg/s" "queue msg/s" ratio "calls/rcpt" "cmds/rcpt" "redis CPU/100k" \
    "plain CPU" "queue CPU" "CPU ratio"
ratios=()
for round in $(seq "$ROUNDS"); do
    rcli flushall >/dev/null
    rcli config resetstat >/dev/null
    cpu0=$(redis_cpu)
    if ((round % 2)); then
        plain=$(run plain "$round")
        queue=$(run queue "$round")
    else
        queue=$(run queue "$round")
        plain=$(run plain "$round")
    fi
    node_calls=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["shared"]["redis_calls"])' "$work/out-queue.json" 2>/dev/null || echo 0)
    cpu1=$(redis_cpu)
    calls=$(redis_calls)
    ratio=$(awk -v q="$queue" -v p="$plain" 'BEGIN { printf "%.2f", q / p }')
    ratios+=("$ratio")
    plain_cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$work/cpu-plain")
    queue_cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$work/cpu-queue")
    printf "%-6s %12s %12s %8s %14s %14s %16s %10s %10s %10s\n" "$round" "$plain" "$queue" "$ratio" \
        "$(awk -v c="$node_calls" -v n="$N" 'BEGIN { printf "%.4f", c / n }')" \
        "$(awk -v c="$calls" -v n="$N" 'BEGIN { printf "%.3f", c / n }')" \
        "$(awk -v a="$cpu0" -v b="$cpu1" -v n="$N" 'BEGIN { printf "%.2fs", (b - a) * 100000 / n }')" \
        "${plain_cpu}s" "${queue_cpu}s" "$(awk -v p="$plain_cpu" -v q="$queue_cpu" 'BEGIN { printf "%.2f", p / q }')"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "median queue/plain: %s\n", a[int((NR + 1) / 2)] }'

# Two nodes on one campaign, both on core 0 (the core this machine has for volley), n1 loading
# the list and both consuming it: their summed rate, and each one's share. They share the
# core, so this shows what a second node costs here, not what a second machine adds.
rcli flushall >/dev/null
two=(--message "$work/msg.txt" --relay "127.0.0.1:$PORT" --threads 1 --connections "$CONNECTIONS"
    --pipeline-depth 32 --messages-per-connection 1000000 --quiet --json --queue "redis://127.0.0.1:$REDIS_PORT/two")
rm -f "$work/log-n1.jsonl" "$work/log-n2.jsonl"
start=$(date +%s.%N)
taskset -c 0 "$VOLLEY" send "${two[@]}" --recipients "$work/list.csv" --node n1 --log "$work/log-n1.jsonl" \
    >/dev/null 2>"$work/err-n1" &
n1=$!
taskset -c 0 "$VOLLEY" send "${two[@]}" --node n2 --log "$work/log-n2.jsonl" >/dev/null 2>"$work/err-n2" &
n2=$!
wait "$n1" || { cat "$work/err-n1" >&2; exit 1; }
wait "$n2" || { cat "$work/err-n2" >&2; exit 1; }
end=$(date +%s.%N)
d1=$(grep -c '"status":"delivered"' "$work/log-n1.jsonl" || true)
d2=$(grep -c '"status":"delivered"' "$work/log-n2.jsonl" || true)
awk -v s="$start" -v e="$end" -v n="$N" -v a="$d1" -v b="$d2" -v q="$queue" 'BEGIN {
    r = n / (e - s); printf "two nodes on core 0: %.0f msg/s in all (%.2f of the last round'"'"'s one node), delivered n1 %d + n2 %d = %d\n", r, r / q, a, b, a + b }'
