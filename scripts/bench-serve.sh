#!/usr/bin/env bash
# volley serve next to Postfix as an application's local relay, in one run, loopback only.
# Each takes MESSAGES messages over SMTP from the same client (`volley bench`, pinned to core
# 0, 16 connections, plaintext from a trusted network) and relays them to its own `volley sink`;
# the servers (serve or Postfix, and the sinks) run on core 1. Both acknowledge a message only
# once it is on disk (Postfix fsyncs its queue file; volley its spool batch).
#
#   scripts/bench-serve.sh                 # MESSAGES=20000
#   AUTH=1 scripts/bench-serve.sh          # volley over STARTTLS + AUTH as well
#
# Prints, for each: accepted msg/s (the client's report: every 250 after the end of data) and
# end to end msg/s (from the client's start until its sink has every message), and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

MESSAGES="${MESSAGES:-20000}"
PORT="${PORT:-2700}"
SERVE_PORT=$PORT
POSTFIX_PORT=$((PORT + 1))
SINK_V=$((PORT + 2))
SINK_P=$((PORT + 3))

ensure_postfix
cargo build --release --quiet
VOLLEY="$PWD/target/release/volley"
work=$(mktemp -d /tmp/volley-bench-serve.XXXXXX)
private_postfix
trap private_postfix_cleanup EXIT

# A private Postfix: smtpd on our port, everything relayed to its sink, no DNS. Its defaults
# otherwise (queue fsync, in_flow_delay, concurrency to the relay).
echo "127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd" >>"$conf/master.cf"
cat >"$conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $work/queue
data_directory = $work/data
maillog_file = $work/maillog
maillog_file_prefixes = $work
myhostname = bench.volley.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:$SINK_P
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
alias_maps =
alias_database =
append_dot_mydomain = no
biff = no
EOF
postfix -c "$conf" check >/dev/null 2>&1 || true
# One message: sink counts stop each sink when its relay has delivered everything.
sink() {
    taskset -c 1 "$VOLLEY" sink --listen "127.0.0.1:$1" --threads 1 --exit-after-messages "$MESSAGES" --json \
        >"$work/sink-$1.json" 2>/dev/null &
    echo $!
}

# Runs the client against port $1 (extra flags after), waiting for sink pid $2; prints
# "accepted_rate end_to_end_rate".
measure() {
    local port=$1 sink_pid=$2
    shift 2
    local start end report
    start=$(date +%s.%N)
    report=$(taskset -c 0 "$VOLLEY" bench --target "127.0.0.1:$port" --messages "$MESSAGES" --connections 16 \
        --threads 1 --quiet --json "$@")
    for _ in $(seq 1200); do
        kill -0 "$sink_pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -0 "$sink_pid" 2>/dev/null && { echo "the sink did not get every message" >&2; exit 1; }
    end=$(date +%s.%N)
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
n = int(sys.argv[2])
assert r["delivered"] == n, r
rate = r["messages_per_second"]
print("%.0f %.0f" % (rate, n / (float(sys.argv[4]) - float(sys.argv[3]))))
' "$report" "$MESSAGES" "$start" "$end"
}

echo "== $MESSAGES messages of 1000 octets, 16 connections; client on core 0, servers on core 1"
echo "   $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

sink_v=$(sink "$SINK_V")
wait_port "$SINK_V"
taskset -c 1 "$VOLLEY" serve --spool "$work/spool" --smtp-listen "127.0.0.1:$SERVE_PORT" \
    --trusted-networks 127.0.0.1 --relay "127.0.0.1:$SINK_V" --threads 1 --quiet 2>"$work/serve.err" &
serve_pid=$!
wait_port "$SERVE_PORT"
read -r v_accept v_e2e < <(measure "$SERVE_PORT" "$sink_v")
echo "volley serve:  accepted $v_accept msg/s, end to end $v_e2e msg/s"

if [[ "${AUTH:-0}" == 1 ]]; then
    printf 'bench:bench-pass-123\n' >"$work/users"
    kill -TERM "$serve_pid"
    wait "$serve_pid" || true
    sink_v=$(sink "$SINK_V")
    wait_port "$SINK_V"
    taskset -c 1 "$VOLLEY" serve --spool "$work/spool" --smtp-listen "127.0.0.1:$SERVE_PORT" \
        --users "$work/users" --relay "127.0.0.1:$SINK_V" --threads 1 --quiet 2>"$work/serve.err" &
    serve_pid=$!
    wait_port "$SERVE_PORT"
    read -r a_accept a_e2e < <(VOLLEY_AUTH_PASSWORD=bench-pass-123 measure "$SERVE_PORT" "$sink_v" \
        --starttls required --auth-user bench)
    echo "volley serve, STARTTLS + AUTH:  accepted $a_accept msg/s, end to end $a_e2e msg/s"
fi
kill -TERM "$serve_pid"
wait "$serve_pid" || true

sink_p=$(sink "$SINK_P")
wait_port "$SINK_P"
taskset -c 1 postfix -c "$conf" start >/dev/null 2>&1
wait_port "$POSTFIX_PORT"
read -r p_accept p_e2e < <(measure "$POSTFIX_PORT" "$sink_p")
echo "Postfix:       accepted $p_accept msg/s, end to end $p_e2e msg/s"
python3 -c 'import sys; a, b, c, d = map(float, sys.argv[1:]); print(f"volley/Postfix: accepted {a / c:.2f}x, end to end {b / d:.2f}x")' \
    "$v_accept" "$v_e2e" "$p_accept" "$p_e2e"
