#!/usr/bin/env bash
# Cost per destination: volley send to N recipients on N domains, once with every domain's MX
# rolled up onto one host and once with each domain on its own MX host (its own loopback
# address), in one run. Prints elapsed time and peak RSS of both and the ratio.
#
#   scripts/bench-destinations.sh            # N=20000, ROUNDS=3
#   N=100000 scripts/bench-destinations.sh
#
# Each round runs both cases, alternating which goes first; the medians are compared (one run
# varies by ±30% here).
#
# Loopback only: the sink listens on 0.0.0.0 (one thread, core 1), so 127.a.b.c all reach it;
# a local DNS stub (examples/dns_stub.rs, also core 1) serves the zone; volley send runs on core 0 with one
# thread and its defaults otherwise. The goal (issue 26): the distinct-host case within twice
# the rolled-up case's time, and peak RSS within 256 MiB in both.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

N="${N:-20000}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-2660}"
DNS_PORT="${DNS_PORT:-5360}"
VOLLEY="${VOLLEY:-target/release/volley}"

cargo build --release --quiet --bin volley --example dns_stub
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# Host i's address: 127.a.b.c with c in 1..250, away from 127.0.0.x.
awk -v n="$N" 'BEGIN {
    print "mx.rolled.test A 127.0.0.2"
    for (i = 0; i < n; i++) {
        printf "r%d.rolled.test MX 10 mx.rolled.test\n", i
        printf "mx%d.distinct.test A 127.%d.%d.%d\n", i, 1 + int(i / 62500), int(i / 250) % 250, 1 + i % 250
        printf "d%d.distinct.test MX 10 mx%d.distinct.test\n", i, i
    }
}' >"$work/zone"
# With the sink on core 1: a stub left to wander onto the client's core made one run vary 2-3×.
taskset -c 1 target/release/examples/dns_stub "$work/zone" "127.0.0.1:$DNS_PORT" 2>/dev/null &
pids+=($!)
for kind in rolled distinct; do
    prefix=${kind:0:1}
    awk -v n="$N" -v p="$prefix" -v k="$kind" 'BEGIN { print "email,first"; for (i = 0; i < n; i++) printf "user%d@%s%d.%s.test,Name%d\n", i, p, i, k, i }' \
        >"$work/$kind.csv"
done
printf 'From: Bench <news@example.com>\nSubject: Hello {{ first }}\n\nDear {{ first }},\n%s\n' \
    "$(head -c 700 /dev/zero | tr '\0' 'x')" >"$work/msg.txt"

taskset -c 1 "$VOLLEY" sink --listen "0.0.0.0:$PORT" --threads 1 >/dev/null 2>&1 &
pids+=($!)
wait_port "$PORT" 127.0.0.2

# Prints "elapsed_s max_rss_kb delivered cpu_s".
run() {
    local kind=$1
    rm -f "$work/$kind.jsonl"
    /usr/bin/time -f "%e %M %U %S" -o "$work/time" taskset -c 0 "$VOLLEY" send --recipients "$work/$kind.csv" \
        --message "$work/msg.txt" --dns-server "127.0.0.1:$DNS_PORT" --smtp-port "$PORT" --threads 1 \
        --log "$work/$kind.jsonl" --quiet >"$work/out" 2>"$work/err" || {
        cat "$work/err" >&2
        return 1
    }
    read -r secs rss user sys <"$work/time"
    echo "$secs $rss $(grep -c '"status":"delivered"' "$work/$kind.jsonl") $(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')"
}

printf "%-8s %-30s %9s %7s %13s %10s\n" "" "" "elapsed s" "CPU s" "peak RSS MiB" "delivered"
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order="rolled distinct"; else order="distinct rolled"; fi
    for kind in $order; do
        read -r secs rss delivered cpu < <(run "$kind")
        label="$N domains, one MX host"
        [[ $kind == distinct ]] && label="$N domains, $N MX hosts"
        printf "%-8s %-30s %9.2f %7.2f %13.1f %10d\n" "round $round" "$label" "$secs" "$cpu" "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')" "$delivered"
        echo "$kind $secs $rss" >>"$work/rounds"
    done
done
awk -v n="$N" '
    function median(a, k,   i, j, t) {
        for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
    }
    $1 == "rolled" { rs[++r] = $2; rr[r] = $3 } $1 == "distinct" { ds[++d] = $2; dr[d] = $3 }
    END {
        mr = median(rs, r); md = median(ds, d); xr = median(rr, r); xd = median(dr, d)
        printf "median of %d rounds: one MX host %.2f s, %.0f MiB; %d MX hosts %.2f s, %.0f MiB\n", r, mr, xr / 1024, n, md, xd / 1024
        printf "distinct/rolled time: %.2f (goal <= 2); peak RSS %.0f MiB (goal <= 256)\n", md / mr, (xd > xr ? xd : xr) / 1024
    }' "$work/rounds"
