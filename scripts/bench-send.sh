#!/usr/bin/env bash
# volley send next to volley bench against the same sink, one run, loopback only: client pinned
# to core 0, sink to core 1 (one thread each).
#
#   scripts/bench-send.sh              # N=1000000 recipients over DOMAINS=1000 domains
#
# The recipients' domains all have MX mx.bench.test (127.0.0.2), served by a local DNS stub
# (examples/dns_stub.rs), so MX rollup puts them on one destination, as a large provider's
# domains would be. The message is a template with three variables. Prints msg/s, CPU per
# message (user + system, from /usr/bin/time) and peak RSS for both, and send/bench.
#
# Also prints bench's CPU per message over send's: the same as the rate ratio while both are
# CPU-bound on core 0, but when bench waits on the sink (its elapsed time well above its CPU
# time) the rate ratio flatters send and the CPU ratio does not.
#
# ROUNDS=3 (default) runs bench and send alternately that many times and reports each round
# and the medians: on a shared VM one run of either varies by ±20%, and alternating keeps a
# slow spell of the machine from landing on one side only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

N="${N:-1000000}"
DOMAINS="${DOMAINS:-1000}"
CONNECTIONS="${CONNECTIONS:-16}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-2650}"
DNS_PORT="${DNS_PORT:-5350}"

cargo build --release --quiet
cargo build --release --quiet --example dns_stub
VOLLEY="${VOLLEY:-target/release/volley}"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

{
    echo "mx.bench.test A 127.0.0.2"
    for d in $(seq 0 $((DOMAINS - 1))); do echo "d$d.bench.test MX 10 mx.bench.test"; done
} >"$work/zone"
target/release/examples/dns_stub "$work/zone" "127.0.0.1:$DNS_PORT" 2>/dev/null &
pids+=($!)
awk -v n="$N" -v d="$DOMAINS" 'BEGIN { print "email,first,city,code"; for (i = 0; i < n; i++) printf "user%d@d%d.bench.test,Name%d,City%d,%x\n", i, i % d, i, i % 97, i * 7919 }' >"$work/list.csv"
printf 'From: Bench <news@example.com>\nSubject: Hello {{ first }} from {{ city }}\n\nDear {{ first }},\nyour code is {{ code }}.\n%s\n' \
    "$(head -c 700 /dev/zero | tr '\0' 'x')" >"$work/msg.txt"

taskset -c 1 "$VOLLEY" sink --listen "127.0.0.2:$PORT" --threads 1 >/dev/null 2>&1 &
pids+=($!)
wait_port "$PORT" 127.0.0.2

# Runs a command under /usr/bin/time on core 0; prints "elapsed_s cpu_s max_rss_kb".
measure() {
    /usr/bin/time -f "%e %U %S %M" -o "$work/time" taskset -c 0 "$@" >"$work/out" 2>"$work/err" || {
        cat "$work/err" >&2
        return 1
    }
    awk '{ printf "%s %.2f %s\n", $1, $2 + $3, $4 }' "$work/time"
}

run_bench() {
    measure "$VOLLEY" bench --target "127.0.0.2:$PORT" --threads 1 \
        --connections "$CONNECTIONS" --messages "$N" --size 1000 --quiet
}
run_send() {
    rm -f "$work/send.jsonl"
    measure "$VOLLEY" send --recipients "$work/list.csv" --message "$work/msg.txt" \
        --dns-server "127.0.0.1:$DNS_PORT" --smtp-port "$PORT" --threads 1 --connections "$CONNECTIONS" \
        --pipeline-depth 32 --messages-per-connection 1000000 --log "$work/send.jsonl" --quiet
}

printf "%-8s %10s %12s %12s\n" "" "msg/s" "CPU us/msg" "peak RSS MiB"
for round in $(seq "$ROUNDS"); do
    # Alternate which goes first, so neither always follows the other.
    if ((round % 2)); then
        read -r b_elapsed b_cpu b_rss < <(run_bench)
        read -r s_elapsed s_cpu s_rss < <(run_send)
    else
        read -r s_elapsed s_cpu s_rss < <(run_send)
        read -r b_elapsed b_cpu b_rss < <(run_bench)
    fi
    delivered=$(grep -c '"status":"delivered"' "$work/send.jsonl")
    awk -v n="$N" -v d="$delivered" -v be="$b_elapsed" -v bc="$b_cpu" -v br="$b_rss" \
        -v se="$s_elapsed" -v sc="$s_cpu" -v sr="$s_rss" -v r="$round" 'BEGIN {
        printf "%-8s %10.0f %12.2f %12.1f\n", "bench " r, n / be, bc * 1e6 / n, br / 1024
        printf "%-8s %10.0f %12.2f %12.1f   (%d of %d delivered, log written)\n", "send " r, d / se, sc * 1e6 / d, sr / 1024, d, n
        printf "ratio %d %.3f   (CPU per message, bench/send: %.3f)\n", r, (d / se) / (n / be), (bc / n) / (sc / d)
    }' | tee -a "$work/rounds"
done
awk '/^ratio/ { r[++k] = $3; c[k] = substr($NF, 1, length($NF) - 1) } /^bench/ { b[++i] = $3 } /^send/ { s[++j] = $3 }
    function median(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    END {
        printf "median of %d rounds: bench %.0f msg/s, send %.0f msg/s, send/bench rate %.2f\n", k, median(b, i), median(s, j), median(r, k)
        printf "CPU per message, bench/send: median %.2f (the rate ratio when both are CPU-bound; when bench waits on the sink, the rate ratio is the higher)\n", median(c, k)
    }' "$work/rounds"
