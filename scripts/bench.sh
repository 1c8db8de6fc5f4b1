#!/usr/bin/env bash
# volley bench versus its peers, side by side in one run, loopback only.
#
#   scripts/bench.sh                 # MESSAGES=100000, connections 10 and 50
#   LETTRE=0 scripts/bench.sh        # skip the lettre peer (its first build takes minutes)
#   PROFILE=1 scripts/bench.sh       # also: perf profile of volley against its own sink
#   BASELINE=/path/to/old/volley scripts/bench.sh   # also run an older build, for before/after
#
# Against Postfix's smtp-sink (no CHUNKING: volley pipelines DATA), 1000-octet messages:
#   smtp-source -d -s C -m MESSAGES -l 1000      the reference
#   volley bench --threads 1, io_uring and epoll; also with --same-content (no per-message
#   Message-ID and Date: one shared body, the cheapest path)
#   lettre 0.11 pooled (tokio), fewer messages: it is slow
# then volley against its own sink (CHUNKING, pipelined BDAT), io_uring versus epoll.
# Prints messages/s, client CPU per 100k messages, and ratios to smtp-source. The sink is pinned
# to core 1 and every client to core 0, so each one's figure is its own.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES="${MESSAGES:-100000}"
LETTRE="${LETTRE:-1}"
LETTRE_MESSAGES="${LETTRE_MESSAGES:-2000}"
PORT=2625

source scripts/common.sh
ensure_postfix
cargo build --release --quiet
VOLLEY=target/release/volley
LETTRE_BIN=scripts/peers/lettre-bench/target/release/lettre-bench
if [[ $LETTRE == 1 && ! -x $LETTRE_BIN ]]; then
    echo "building the lettre peer (once)"
    cargo build --release --quiet --manifest-path scripts/peers/lettre-bench/Cargo.toml
fi

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

taskset -c 1 smtp-sink -u nobody "127.0.0.1:$PORT" 1000 >/dev/null 2>&1 &
pids+=($!)
wait_port "$PORT"

# run NAME MESSAGES COMMAND...: prints "msg/s cpu-seconds-per-100k"; the command prints msg/s.
measure() {
    local messages=$1; shift
    local out rate cpu
    out=$( { /usr/bin/time -f "CPU %U %S" "$@" 2>&3; } 3>&1 )
    rate=$(echo "$out" | grep -v '^CPU' | tail -n 1)
    cpu=$(echo "$out" | awk '/^CPU/ {print $2 + $3}')
    echo "$rate $(echo "$cpu * 100000 / $messages" | bc -l)"
}

smtp_source() {
    local start end
    start=$(date +%s.%N)
    taskset -c 0 smtp-source -d -s "$1" -m "$MESSAGES" -l 1000 "127.0.0.1:$PORT" >/dev/null
    end=$(date +%s.%N)
    echo "$MESSAGES / ($end - $start)" | bc -l
}

volley_json_rate() { sed -E 's/.*"messages_per_second":([0-9.]+).*/\1/'; }

# volley_vs_sink BINARY CONNECTIONS DRIVER [FLAGS...]
volley_vs_sink() {
    local bin=$1 conns=$2 driver=$3
    shift 3
    taskset -c 0 "$bin" bench --target "127.0.0.1:$PORT" --messages "$MESSAGES" --connections "$conns" \
        --threads 1 --driver "$driver" --quiet --json "$@" | volley_json_rate
}

echo "== $MESSAGES messages of 1000 octets to smtp-sink on loopback ($(nproc) cores)"
printf "%-26s %5s %12s %16s %10s %10s\n" "client" "conns" "msg/s" "CPU s/100k msg" "rate x" "CPU x"
export -f smtp_source volley_vs_sink volley_json_rate
export MESSAGES PORT VOLLEY
for conns in 10 50; do
    read -r ref_rate ref_cpu < <(measure "$MESSAGES" bash -c "smtp_source $conns")
    printf "%-26s %5d %12.0f %16.2f %10s %10s\n" "smtp-source -d" "$conns" "$ref_rate" "$ref_cpu" "1.00" "1.00"
    # label|binary|driver|extra flags
    rows=("volley bench (uring)|$VOLLEY|uring|" "volley bench (epoll)|$VOLLEY|epoll|"
          "volley --same-content|$VOLLEY|uring|--same-content")
    if [[ -n ${BASELINE:-} ]]; then
        rows+=("baseline (uring)|$BASELINE|uring|" "baseline (epoll)|$BASELINE|epoll|")
    fi
    for row in "${rows[@]}"; do
        IFS='|' read -r label bin driver flags <<<"$row"
        read -r rate cpu < <(measure "$MESSAGES" bash -c "volley_vs_sink $bin $conns $driver $flags")
        printf "%-26s %5d %12.0f %16.2f %10.2f %10.2f\n" "$label" "$conns" "$rate" "$cpu" \
            "$(echo "$rate / $ref_rate" | bc -l)" "$(echo "$ref_cpu / $cpu" | bc -l)"
    done
    if [[ $LETTRE == 1 ]]; then
        read -r rate cpu < <(measure "$LETTRE_MESSAGES" bash -c "$LETTRE_BIN 127.0.0.1 $PORT $LETTRE_MESSAGES $conns | cut -d' ' -f1")
        printf "%-26s %5d %12.0f %16.2f %10.2f %10.2f\n" "lettre 0.11 pooled" "$conns" "$rate" "$cpu" \
            "$(echo "$rate / $ref_rate" | bc -l)" "$(echo "$ref_cpu / $cpu" | bc -l)"
    fi
done
echo "(CPU x: how many times less CPU per message than smtp-source; lettre sent $LETTRE_MESSAGES messages)"

echo
echo "== volley bench against its own sink (in-process, CHUNKING), 10 s, 16 connections"
for driver in uring epoll; do
    rate=$("$VOLLEY" bench --duration 10s --driver "$driver" --quiet --json | volley_json_rate)
    printf "%-26s %12.0f msg/s\n" "$driver" "$rate"
done

if [[ ${PROFILE:-0} == 1 ]]; then
    echo
    echo "== where the time goes (perf, volley bench against its own sink, 5 s)"
    perf record -q -g -o /tmp/volley.perf "$VOLLEY" bench --duration 5s --quiet >/dev/null 2>&1
    perf report -i /tmp/volley.perf --no-children --sort dso -g none 2>/dev/null | grep '%' | head -n 8
    perf report -i /tmp/volley.perf --no-children --sort symbol -g none 2>/dev/null | grep '%' | head -n 25
fi
