#!/usr/bin/env bash
# volley sink versus Postfix's smtp-sink, side by side, same clients, loopback only.
#
#   scripts/bench-sink.sh            # MESSAGES=100000 SESSIONS=10 IDLE=10000 by default
#
# 1. smtp-source -d -s SESSIONS -m MESSAGES -l 1000 against each sink (one command at a time);
# 2. volley bench (pipelined, DATA since smtp-sink has no CHUNKING) against each sink;
# 3. IDLE idle connections held open against volley sink: resident memory per connection.
# Prints messages/s per pair and the ratios. Installs Postfix if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES="${MESSAGES:-100000}"
SESSIONS="${SESSIONS:-10}"
IDLE="${IDLE:-10000}"
SINK_THREADS="${SINK_THREADS:-$(nproc)}"
PORT_POSTFIX=2625
PORT_VOLLEY=2626
PORT_IDLE=2627

source scripts/common.sh
ensure_postfix
cargo build --release --quiet
VOLLEY=target/release/volley
ulimit -n $((IDLE + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Runs smtp-source against a port; prints messages/s.
smtp_source_rate() {
    local start end
    start=$(date +%s.%N)
    smtp-source -d -s "$SESSIONS" -m "$MESSAGES" -l 1000 "127.0.0.1:$1" >/dev/null
    end=$(date +%s.%N)
    echo "$MESSAGES / ($end - $start)" | bc -l | xargs printf "%.0f"
}

# Runs volley bench against a port; prints messages/s.
volley_rate() {
    "$VOLLEY" bench --target "127.0.0.1:$1" --messages "$MESSAGES" --connections "$SESSIONS" \
        --threads 1 --quiet --json | sed -E 's/.*"messages_per_second":([0-9.]+).*/\1/' | xargs printf "%.0f"
}

smtp-sink -u nobody "127.0.0.1:$PORT_POSTFIX" 1000 >/dev/null 2>&1 &
pids+=($!)
postfix_pid=$!
"$VOLLEY" sink --listen "127.0.0.1:$PORT_VOLLEY" --threads "$SINK_THREADS" >/dev/null 2>&1 &
pids+=($!)
volley_pid=$!
wait_port $PORT_POSTFIX
wait_port $PORT_VOLLEY

echo "== $MESSAGES messages of 1000 octets, $SESSIONS sessions, loopback, $(nproc) cores"
printf "%-28s %14s %14s %8s\n" "client" "smtp-sink" "volley sink" "ratio"
for client in smtp-source volley-bench; do
    c0p=$(cpu_of $postfix_pid); c0v=$(cpu_of $volley_pid)
    if [[ $client == smtp-source ]]; then
        a=$(smtp_source_rate $PORT_POSTFIX); b=$(smtp_source_rate $PORT_VOLLEY)
    else
        a=$(volley_rate $PORT_POSTFIX); b=$(volley_rate $PORT_VOLLEY)
    fi
    c1p=$(cpu_of $postfix_pid); c1v=$(cpu_of $volley_pid)
    printf "%-28s %10s msg/s %8s msg/s %7.2fx   (sink CPU: smtp-sink %.2fs, volley sink %.2fs)\n" \
        "$client" "$a" "$b" "$(echo "$b / $a" | bc -l)" "$(echo "$c1p - $c0p" | bc -l)" "$(echo "$c1v - $c0v" | bc -l)"
done

echo
echo "== $IDLE idle connections against volley sink ($SINK_THREADS threads)"
"$VOLLEY" sink --listen "127.0.0.1:$PORT_IDLE" --threads "$SINK_THREADS" --idle-timeout 10m >/dev/null 2>&1 &
pids+=($!)
idle_pid=$!
wait_port $PORT_IDLE
sleep 0.3
rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$idle_pid/status")
python3 - "$PORT_IDLE" "$IDLE" "$idle_pid" "$rss_before" <<'PY'
import socket, sys, time
port, n, pid, before = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    socks.append(s)
# Every connection has had its greeting: the sink really holds them.
for s in socks:
    s.settimeout(10)
    assert s.recv(100).startswith(b"220")
time.sleep(0.5)
rss = int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")))
per = (rss - before) * 1024 / n
print(f"RSS before {before} KiB, with {n} idle connections {rss} KiB: {per:.0f} bytes per connection")
for s in socks:
    s.close()
PY
