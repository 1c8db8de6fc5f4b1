#!/usr/bin/env bash
# What TLS costs: volley bench against `volley sink --starttls`, one run, loopback only, client
# pinned to core 0 and sink to core 1 (one thread each), 1 KB messages.
#
#   scripts/bench-tls.sh            # DURATION=10s CONNECTIONS=16 by default
#
# 1. Persistent sessions: plaintext, then STARTTLS (policy required); prints msg/s and the ratio.
# 2. One message per connection: plaintext, STARTTLS with a full handshake every time
#    (--no-resumption), and STARTTLS with resumption; prints sessions/s and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-16}"
PORT="${PORT:-2640}"

cargo build --release --quiet
VOLLEY=target/release/volley

taskset -c 1 "$VOLLEY" sink --listen "127.0.0.1:$PORT" --threads 1 --starttls >/dev/null 2>&1 &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT
wait_port "$PORT"

# Runs volley bench (core 0, one thread) with extra flags; prints delivered msg/s.
rate() {
    taskset -c 0 "$VOLLEY" bench --target "127.0.0.1:$PORT" --threads 1 --connections "$CONNECTIONS" \
        --duration "$DURATION" --size 1000 --quiet --json "$@" |
        grep -o '"messages_per_second":[0-9.]*' | cut -d: -f2
}
ratio() { echo "$1 / $2" | bc -l | xargs printf "%.2f"; }

echo "== persistent sessions, $CONNECTIONS connections, $DURATION each"
plain=$(rate)
tls=$(rate --starttls required)
printf "  plaintext          %10.0f msg/s\n" "$plain"
printf "  STARTTLS           %10.0f msg/s   ratio %s\n" "$tls" "$(ratio "$tls" "$plain")"

echo "== one message per connection (a session set up per message)"
plain1=$(rate --max-messages-per-connection 1)
full=$(rate --max-messages-per-connection 1 --starttls required --no-resumption)
resumed=$(rate --max-messages-per-connection 1 --starttls required)
printf "  plaintext          %10.0f sessions/s\n" "$plain1"
printf "  TLS full handshake %10.0f sessions/s   ratio %s\n" "$full" "$(ratio "$full" "$plain1")"
printf "  TLS resumed        %10.0f sessions/s   ratio %s\n" "$resumed" "$(ratio "$resumed" "$plain1")"
