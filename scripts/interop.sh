#!/usr/bin/env bash
# Interop with real third-party peers, loopback only. Run by .ci/run.
#
#   scripts/interop.sh
#
# Postfix smtpd: a private instance (its own config and queue directories under a temp dir,
# the discard transport, smtpd_client_connection_count_limit = 4, no DNS), installed if missing.
# `volley bench` sends to it over 10 connections; the script then checks Postfix's own log
# against volley's report: every message accepted exactly once (by Message-ID), none deferred,
# and the connection limit really refused connections (which volley must ride out, exit 0).
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES="${MESSAGES:-2000}"
PORT="${PORT:-2626}"

source scripts/common.sh
ensure_postfix
cargo build --release --quiet
VOLLEY="$PWD/target/release/volley"

work=$(mktemp -d /tmp/volley-interop.XXXXXX)
conf="$work/conf"
mkdir -p "$conf" "$work/queue" "$work/data"
# Postfix's daemons run as the postfix user: they must reach the directory and own their data.
chmod 755 "$work"
chown postfix: "$work/data"
cleanup() {
    postfix -c "$conf" stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "interop: FAIL: $*" >&2
    echo "--- last lines of Postfix's log:" >&2
    tail -n 20 "$work/maillog" >&2 || true
    exit 1
}

# master.cf: Debian's, with no chroot (the private queue directory has no chroot files) and
# smtpd on our loopback port instead of port 25.
sed -E -e '/^#/d' -e '/^smtp[[:space:]]+inet/d' -e 's/^([^ \t]+[ \t]+[^ \t]+[ \t]+[^ \t]+[ \t]+[^ \t]+)[ \t]+y[ \t]/\1 n /' \
    /etc/postfix/master.cf >"$conf/master.cf"
echo "127.0.0.1:$PORT inet n - n - - smtpd" >>"$conf/master.cf"
cat >"$conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $work/queue
data_directory = $work/data
maillog_file = $work/maillog
maillog_file_prefixes = $work
myhostname = interop.volley.test
myorigin = interop.volley.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
default_transport = discard
relay_transport = discard
alias_maps =
alias_database =
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
append_dot_mydomain = no
biff = no
# The limit under test. Loopback is in mynetworks, which is exempt by default: not here.
smtpd_client_connection_count_limit = 4
smtpd_client_event_limit_exceptions =
EOF
postfix -c "$conf" check >/dev/null 2>&1 || true
postfix -c "$conf" start >/dev/null 2>&1 || fail "postfix did not start"
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

echo "== volley bench -> Postfix smtpd (limit 4 connections per client), $MESSAGES messages, 10 connections"
set +e
report=$("$VOLLEY" bench --target "127.0.0.1:$PORT" --messages "$MESSAGES" --connections 10 --quiet \
    --reply-timeout 30s ${VOLLEY_FLAGS:-})
status=$?
set -e
echo "$report" | sed 's/^/  /' | head -n 12
[[ $status == 0 ]] || fail "volley bench exited $status"
grep -q "outcomes    delivered $MESSAGES, deferred 0, bounced 0, uncertain 0, unsent 0" <<<"$report" \
    || fail "volley did not deliver all $MESSAGES messages"

# Postfix logs through postlogd: wait until every message has been discarded (delivered).
for _ in $(seq 300); do
    sent=$(grep -c 'status=sent' "$work/maillog" 2>/dev/null || true)
    [[ ${sent:-0} -ge $MESSAGES ]] && break
    sleep 0.2
done
sleep 0.5
ids=$(grep -o 'cleanup\[[0-9]*\]: [0-9A-Za-z]*: message-id=<[^>]*>' "$work/maillog" | sed 's/.*message-id=//')
total=$(grep -c . <<<"$ids" || true)
unique=$(sort -u <<<"$ids" | grep -c . || true)
sent=$(grep -c 'status=sent' "$work/maillog" || true)
deferred=$(grep -c 'status=deferred' "$work/maillog" || true)
refused=$(grep -c 'Connection concurrency limit exceeded' "$work/maillog" || true)
echo "  postfix: $total messages received ($unique distinct Message-IDs), $sent delivered, $deferred deferred," \
    "$refused connections refused by the limit"
[[ $total == "$MESSAGES" && $unique == "$MESSAGES" ]] || fail "Postfix received $total messages, $unique distinct"
[[ $sent == "$MESSAGES" ]] || fail "Postfix delivered $sent"
[[ $deferred == 0 ]] || fail "Postfix deferred $deferred"
[[ $refused -gt 0 ]] || fail "the connection limit never refused a connection: the test proved nothing"
grep -q "server capped connections at 4" <<<"$report" || fail "volley did not report the cap"
echo "interop: Postfix smtpd OK"
