#!/usr/bin/env bash
# Interop with real third-party peers, loopback only. Run by .ci/run.
#
#   scripts/interop.sh
#
# 1. Postfix smtpd: a private instance (its own config and queue directories under a temp dir,
#    the discard transport, smtpd_client_connection_count_limit = 4, no DNS), installed if
#    missing. `volley bench` sends to it over 10 connections; the script then checks Postfix's
#    own log against volley's report: every message accepted exactly once (by Message-ID), none
#    deferred, and the connection limit really refused connections (volley must ride it out).
#    Then `volley send --relay` runs a campaign from a CSV into the same Postfix: every recipient
#    delivered once (Postfix's log: one message per Message-ID of the campaign, every address).
# 2. The same Postfix on a second port with smtpd_tls_security_level = encrypt and a
#    self-signed certificate: `volley bench --starttls required` gets every message accepted,
#    and Postfix's log shows the TLS sessions; without TLS every MAIL is refused.
# 3. swaks (STARTTLS, AUTH PLAIN) through `volley sink --starttls --require-tls --auth`: a wrong
#    password refused, the right one accepted, the message dumped as sent.
# 4. Python aiosmtpd with STARTTLS and AUTH required: `volley bench --auth-user` delivers every
#    message; a wrong password is refused with 535 and volley gives up at once.
# 5. DKIM: `volley send --dkim` (an RSA and an Ed25519 key) into `volley sink --dump`; Debian's
#    python3-dkim (dkimpy) verifies both signatures of every dumped message, with the public keys
#    as openssl printed them given as the TXT records, and fails a copy with one body byte changed.
#    The same messages carry RFC 8058 headers (`--unsubscribe-url`): Python's email parser finds
#    one HTTPS URI and `List-Unsubscribe=One-Click`, both signed, and `volley token verify`
#    resolves each message's token to its recipient.
# 6. Postfix with recipient checks (local_recipient_maps) and its default error limits (after
#    10 errors a 1 s sleep before every reply, after 20 a hang-up): `volley send` with 10
#    unknown recipients ahead of 10 valid ones over one connection must finish within 3 s with
#    no "too many errors" in Postfix's log, and a 200-row list with 20% unknown addresses within
#    twice the time of the same list all valid.
# 7. postgrey (Debian's) as Postfix's policy service, greylisting for 1 s: the first attempt of
#    each recipient is deferred with category `policy`, the retry delivers it.
# 8. `volley send --starttls verify` to the TLS listener by an address its certificate does not
#    name: every recipient deferred `tls_required` and retried on the schedule until it expires,
#    each attempt a connection Postfix logged (a refused certificate is not given up on).
# 9. `volley serve`: swaks and Python's smtplib submit over STARTTLS with AUTH (a wrong password
#    535, no AUTH 530), curl posts JSON to the HTTP API (no key 401, 202 with ids); everything
#    is delivered into Postfix, a SIGTERM stops it with exit 0, and its log has one `received`
#    record per message and one `delivered` per recipient. Every record also reaches an HTTPS
#    webhook receiver written with Python's standard library (its certificate trusted through
#    --webhook-ca-file), which checks each signature with Python's hmac and answers its first
#    request 503 (volley tries again); curl reads the queue with an admin key (and is refused
#    with an application's), and the status of the message it submitted (delivered, with
#    Postfix's reply).
# 10. Three `volley send --queue` nodes share one campaign through Debian's redis-server (a
#    password, given by file) into Postfix with recipient checks: every row final once across
#    the three logs, Postfix delivered each valid address once, `volley status` complete with
#    the merged counts, and the password in no log or report.
# 11. MTA-STS and DANE against a real DNSSEC signer and DNS server: a root zone signed by
#    ldns-signzone (ldnsutils), served by unbound (its auth-zone), its key given as
#    --dnssec-trust-anchor; a policy served over HTTPS by Python's standard library; Postfix as
#    every MX host, with a certificate from a test CA. `volley check` validates the TLSA record;
#    `volley send` delivers over checked TLS to the host whose TLSA record matches and to the
#    MTA-STS enforce domain, never to the host whose TLSA record does not (expired,
#    tls_required); its TLS reports say so, and `volley tls-report send` POSTs them to each
#    domain's `_smtp._tls` address, where Python gunzips and checks them.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES="${MESSAGES:-2000}"
PORT="${PORT:-2626}"
TLS_PORT=$((PORT + 1))
SINK_PORT=$((PORT + 2))
AIO_PORT=$((PORT + 3))
DKIM_PORT=$((PORT + 4))
CHECK_PORT=$((PORT + 5))
GREY_PORT=$((PORT + 6))
POSTGREY_PORT=$((PORT + 7))
SERVE_SMTP_PORT=$((PORT + 8))
SERVE_HTTP_PORT=$((PORT + 9))
WEBHOOK_PORT=$((PORT + 10))
REDIS_PORT=$((PORT + 11))
DNS_PORT=$((PORT + 12))
STS_PORT=$((PORT + 13))
MX_PORT=$((PORT + 14))

source scripts/common.sh
ensure_postfix
ensure_interop_peers
cargo build --release --quiet
VOLLEY="${VOLLEY:-$PWD/target/release/volley}"

work=$(mktemp -d /tmp/volley-interop.XXXXXX)
private_postfix
trap private_postfix_cleanup EXIT
fail() {
    echo "interop: FAIL: $*" >&2
    echo "--- last lines of Postfix's log:" >&2
    tail -n 20 "$work/maillog" >&2 || true
    exit 1
}

# smtpd on our loopback port instead of port 25.
echo "127.0.0.1:$PORT inet n - n - - smtpd" >>"$conf/master.cf"
# Recipient checks at Postfix's default error limits, without the connection limit under test.
echo "127.0.0.1:$CHECK_PORT inet n - n - - smtpd -o smtpd_client_connection_count_limit=0" >>"$conf/master.cf"
# Greylisting by postgrey.
cat >>"$conf/master.cf" <<EOF
127.0.0.1:$GREY_PORT inet n - n - - smtpd
  -o smtpd_client_connection_count_limit=0
  -o smtpd_recipient_restrictions=check_policy_service,inet:127.0.0.1:$POSTGREY_PORT
EOF
# The TLS-only listener, with its own certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=interop.volley.test" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat >>"$conf/master.cf" <<EOF
127.0.0.1:$TLS_PORT inet n - n - - smtpd
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_cert_file=$work/cert.pem
  -o smtpd_tls_key_file=$work/key.pem
  -o smtpd_tls_loglevel=1
EOF
# Every MX host of the MTA-STS and DANE checks: STARTTLS with a certificate from a test CA for
# the hosts' names (and the policy host's, which Python serves with it).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=volley interop CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=mx.dane.test" \
    -keyout "$work/mx.key" -out "$work/mx.csr" 2>/dev/null
printf 'subjectAltName=DNS:mx.dane.test,DNS:mx.wrong.test,DNS:mx.sts.test,DNS:mta-sts.sts.test\n' >"$work/mx.ext"
openssl x509 -req -in "$work/mx.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile "$work/mx.ext" -out "$work/mx.pem" 2>/dev/null
cat >>"$conf/master.cf" <<EOF
127.0.0.1:$MX_PORT inet n - n - - smtpd
  -o smtpd_client_connection_count_limit=0
  -o smtpd_tls_security_level=may
  -o smtpd_tls_cert_file=$work/mx.pem
  -o smtpd_tls_key_file=$work/mx.key
  -o smtpd_tls_loglevel=1
EOF
cat >"$conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $work/queue
data_directory = $work/data
maillog_file = $work/maillog
maillog_file_prefixes = $work
myhostname = interop.volley.test
myorigin = interop.volley.test
# Mail for tarpit.volley.test is checked against a list of its users, and discarded.
mydestination = tarpit.volley.test
local_recipient_maps = texthash:$work/recipients
local_transport = discard
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
for i in $(seq 1 400); do echo "ok$i@tarpit.volley.test x"; done >"$work/recipients"
postfix -c "$conf" check >/dev/null 2>&1 || true
postfix -c "$conf" start >/dev/null 2>&1 || fail "postfix did not start"
# common.sh's wait, failing the run the way every check here does.
wait_for() { wait_port "$1" || fail "nothing listening on port $1"; }
wait_for "$PORT"
wait_for "$TLS_PORT"
wait_for "$CHECK_PORT"
wait_for "$MX_PORT"

echo "== volley bench -> Postfix smtpd (limit 4 connections per client), $MESSAGES messages, 10 connections"
set +e
report=$("$VOLLEY" bench --target "127.0.0.1:$PORT" --messages "$MESSAGES" --connections 10 --quiet \
    --reply-timeout 30s --plot "$work/postfix.svg" ${VOLLEY_FLAGS:-})
status=$?
set -e
echo "$report" | sed 's/^/  /' | head -n 12
[[ $status == 0 ]] || fail "volley bench exited $status"
# The run's picture is an SVG document an XML parser takes, with a line for each phase.
python3 - "$work/postfix.svg" <<'PY' || fail "bench --plot did not draw a readable SVG"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
assert root.tag.endswith("svg"), root.tag
texts = {"".join(t.itertext()).strip() for t in root.iter() if t.tag.endswith("text")}
for phase in ("connect", "ehlo", "mail", "rcpt", "end-of-data", "message"):
    assert phase in texts, (phase, sorted(texts))
lines = sum(1 for e in root.iter() if e.tag.endswith("polyline"))
print(f"  bench --plot: an SVG with {lines} lines, every phase in its legend")
PY
grep -q "outcomes    delivered $MESSAGES, deferred 0, bounced 0, uncertain 0, unsent 0" <<<"$report" \
    || fail "volley did not deliver all $MESSAGES messages"

# Postfix logs through postlogd: waits until N messages in all have been discarded (delivered).
wait_for_sent() {
    local sent
    for _ in $(seq 300); do
        sent=$(grep -c 'status=sent' "$work/maillog" 2>/dev/null || true)
        [[ ${sent:-0} -ge $1 ]] && return 0
        sleep 0.2
    done
}
wait_for_sent "$MESSAGES"
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

SEND_ROWS=$((MESSAGES / 4))
echo "== volley send --relay -> Postfix smtpd: a campaign of $SEND_ROWS recipients from CSV, personalised"
{
    echo "email,first"
    for i in $(seq 1 "$SEND_ROWS"); do echo "user$i@d$((i % 7)).interop.test,Name$i"; done
} >"$work/list.csv"
printf 'From: News <news@example.com>\nSubject: Hello {{ first }}\n\nDear {{ first }},\nrow {{ line }}.\n' \
    >"$work/msg.txt"
before=$(grep -c 'status=sent' "$work/maillog" || true)
set +e
"$VOLLEY" send --recipients "$work/list.csv" --message "$work/msg.txt" --relay "127.0.0.1:$PORT" \
    --connections 3 --log "$work/send.jsonl" --quiet >"$work/send.out" 2>&1
status=$?
set -e
[[ $status == 0 ]] || fail "volley send exited $status: $(tail -n 5 "$work/send.out")"
delivered=$(grep -c '"status":"delivered"' "$work/send.jsonl" || true)
[[ $delivered == "$SEND_ROWS" ]] || fail "the log has $delivered delivered of $SEND_ROWS"
wait_for_sent $((before + SEND_ROWS))
sleep 0.5
campaign=$(head -n 1 "$work/send.jsonl" | sed -E 's/.*"campaign":"([^"]*)".*/\1/')
ids=$(grep -oE "message-id=<$campaign\.[0-9]+@example\.com>" "$work/maillog" || true)
rcpts=$(grep 'status=sent' "$work/maillog" | grep -oE 'to=<user[0-9]+@d[0-9]\.interop\.test>' || true)
n_ids=$(grep -c . <<<"$ids" || true)
n_unique_ids=$(sort -u <<<"$ids" | grep -c . || true)
n_rcpts=$(sort -u <<<"$rcpts" | grep -c . || true)
echo "  volley: $delivered delivered in the log; postfix: $n_ids messages of the campaign" \
    "($n_unique_ids distinct Message-IDs), $n_rcpts distinct recipients delivered"
[[ $n_ids == "$SEND_ROWS" && $n_unique_ids == "$SEND_ROWS" ]] || fail "Postfix received $n_ids campaign messages"
[[ $n_rcpts == "$SEND_ROWS" ]] || fail "Postfix delivered to $n_rcpts distinct recipients"
echo "interop: volley send -> Postfix smtpd OK"

TLS_MESSAGES=$((MESSAGES / 4))
echo "== volley bench --starttls required -> Postfix smtpd (smtpd_tls_security_level = encrypt), $TLS_MESSAGES messages"
before=$(grep -c 'status=sent' "$work/maillog" || true)
set +e
report=$("$VOLLEY" bench --target "127.0.0.1:$TLS_PORT" --messages "$TLS_MESSAGES" --connections 4 --quiet \
    --starttls required --reply-timeout 30s)
status=$?
set -e
echo "$report" | sed 's/^/  /' | head -n 8
[[ $status == 0 ]] || fail "volley bench --starttls required exited $status"
grep -q "outcomes    delivered $TLS_MESSAGES, deferred 0, bounced 0, uncertain 0, unsent 0" <<<"$report" \
    || fail "volley did not deliver all $TLS_MESSAGES messages over TLS"
wait_for_sent $((before + TLS_MESSAGES))
sent=$(( $(grep -c 'status=sent' "$work/maillog" || true) - before ))
tls_sessions=$(grep -c 'TLS connection established from' "$work/maillog" || true)
echo "  postfix: $sent delivered, $tls_sessions TLS sessions logged"
[[ $sent == "$TLS_MESSAGES" ]] || fail "Postfix delivered $sent of $TLS_MESSAGES over TLS"
[[ $tls_sessions -ge 1 ]] || fail "Postfix logged no TLS session"
# Plaintext is refused with 530. With DATA, that is all: nothing is sent before MAIL's answer.
# (With CHUNKING, Postfix refuses the pipelined BDAT with 530 without reading its chunk, then
# reads the chunk as commands and hangs up with "221 2.7.0 Error: I can break rules, too": volley
# reports that as a protocol violation, the messages uncertain, exit 3.)
set +e
plain=$("$VOLLEY" bench --target "127.0.0.1:$TLS_PORT" --messages 10 --connections 1 --quiet --no-chunking)
status=$?
set -e
[[ $status == 1 ]] || fail "plaintext to an encrypt-only smtpd exited $status, not 1"
grep -q "final replies 530: 10" <<<"$plain" || fail "plaintext MAIL was not refused with 530: $plain"
echo "interop: Postfix smtpd with TLS OK (and plaintext refused with 530)"

echo "== swaks --tls --auth PLAIN -> volley sink --starttls --require-tls --auth"
printf 'alice:s3cret\n' >"$work/users"
mkdir -p "$work/dump"
"$VOLLEY" sink --listen "127.0.0.1:$SINK_PORT" --threads 1 --starttls --require-tls --auth "$work/users" \
    --dump "$work/dump" --exit-after-messages 1 --duration 60s --json >"$work/sink.json" 2>"$work/sink.err" &
sink_pid=$!
wait_for "$SINK_PORT"
# swaks over STARTTLS with AUTH: PORT MECHANISM USER PASSWORD TO BODY LOG.
swaks_auth() {
    swaks --server 127.0.0.1 --port "$1" --tls --auth "$2" --auth-user "$3" --auth-password "$4" \
        --from sender@interop.volley.test --to "$5" --header "Subject: swaks interop" \
        --body "$6" --helo swaks.interop.test >"$7" 2>&1
}
swaks_to_sink() {
    swaks_auth "$SINK_PORT" PLAIN alice "$1" rcpt@interop.volley.test "sent by swaks over TLS" "$work/swaks.log"
}
if swaks_to_sink wrong-password; then fail "swaks got through with a wrong password"; fi
grep -q "535 5.7.8" "$work/swaks.log" || fail "no 535 5.7.8 for a wrong password: $(tail -5 "$work/swaks.log")"
swaks_to_sink s3cret || fail "swaks failed: $(tail -20 "$work/swaks.log")"
wait "$sink_pid" || fail "volley sink exited non-zero: $(cat "$work/sink.err")"
sink_json=$(cat "$work/sink.json")
for want in '"messages_accepted":1' '"tls_sessions":2' '"auth_successes":1' '"auth_failures":1' '"alice":1'; do
    grep -qF "$want" <<<"$sink_json" || fail "volley sink counters lack $want: $sink_json"
done
grep -rq "sent by swaks over TLS" "$work/dump" || fail "the dumped message is not what swaks sent"
echo "  sink: $sink_json" | cut -c1-200
echo "interop: swaks -> volley sink OK"

echo "== volley bench --starttls required --auth-user -> Python aiosmtpd (STARTTLS and AUTH required)"
python3 scripts/peers/aiosmtpd_auth.py "$AIO_PORT" "$work/cert.pem" "$work/key.pem" alice s3cret 120 \
    >"$work/aiosmtpd.out" 2>&1 &
aio_pid=$!
wait_for "$AIO_PORT"
AIO_MESSAGES=200
set +e
report=$(VOLLEY_AUTH_PASSWORD=s3cret "$VOLLEY" bench --target "127.0.0.1:$AIO_PORT" --messages "$AIO_MESSAGES" \
    --connections 4 --quiet --starttls required --auth-user alice)
status=$?
bad=$(VOLLEY_AUTH_PASSWORD=wrong-password-xyz "$VOLLEY" bench --target "127.0.0.1:$AIO_PORT" --messages 10 --connections 2 \
    --quiet --starttls required --auth-user alice)
bad_status=$?
set -e
kill -TERM "$aio_pid"
wait "$aio_pid" || true
echo "$report" | sed 's/^/  /' | sed -n '1,8p'
echo "  aiosmtpd: $(tail -n 1 "$work/aiosmtpd.out")"
[[ $status == 0 ]] || fail "volley bench with AUTH exited $status"
grep -q "outcomes    delivered $AIO_MESSAGES, deferred 0" <<<"$report" || fail "not every message delivered via aiosmtpd"
grep -q "accepted $AIO_MESSAGES auth_ok" "$work/aiosmtpd.out" || fail "aiosmtpd: $(cat "$work/aiosmtpd.out")"
[[ $bad_status == 1 ]] || fail "a wrong password exited $bad_status, not 1"
grep -q "AUTH PLAIN refused: 535" <<<"$bad" || fail "the 535 was not reported: $bad"
! grep -q "wrong-password-xyz" <<<"$bad" || fail "the password appeared in the report"
echo "interop: aiosmtpd AUTH OK"

echo "== volley send --dkim (RSA + Ed25519) --unsubscribe-url -> volley sink --dump, verified by python3-dkim (dkimpy)"
mkdir -p "$work/dkim-dump"
"$VOLLEY" sink --listen "127.0.0.1:$DKIM_PORT" --threads 1 --dump "$work/dkim-dump" --duration 120s \
    >/dev/null 2>"$work/dkim-sink.err" &
dkim_sink=$!
wait_for "$DKIM_PORT"
keys=tests/data/dkim
awk 'BEGIN { print "email,name"; for (i = 0; i < 100; i++) printf "user%d@d%d.interop.test,Name %d\n", i, i % 5, i }' \
    >"$work/dkim.csv"
printf 'From: News <news@example.com>\nSubject: Hello {{ name }}\n\nDear {{ name }},\nthis is signed.\n' >"$work/dkim.txt"
# The unsubscribe secret goes where users should keep it: the environment, not the command line.
export VOLLEY_UNSUBSCRIBE_SECRET="interop-secret-0123456789abcdef"
"$VOLLEY" send --quiet --relay "127.0.0.1:$DKIM_PORT" --recipients "$work/dkim.csv" --message "$work/dkim.txt" \
    --dkim "example.com:rsa:$keys/rsa2048.pem" --dkim "example.com:ed:$keys/ed25519.pem" \
    --unsubscribe-url 'https://example.com/u/{{ token }}' --campaign interop-1 \
    --log "$work/dkim.jsonl" >"$work/dkim.out" 2>&1 || fail "volley send --dkim failed: $(cat "$work/dkim.out")"
kill -TERM "$dkim_sink"
wait "$dkim_sink" || true
[[ $(grep -c '"status":"delivered"' "$work/dkim.jsonl") == 100 ]] || fail "not every DKIM message was delivered"
/usr/bin/python3 scripts/peers/dkim_verify.py "$work/dkim-dump" \
    "rsa._domainkey.example.com=v=DKIM1; k=rsa; p=$(cat $keys/rsa2048.p)" \
    "ed._domainkey.example.com=v=DKIM1; k=ed25519; p=$(cat $keys/ed25519.p)" || fail "dkimpy did not verify volley's signatures"
echo "interop: DKIM verified by dkimpy OK"
/usr/bin/python3 scripts/peers/rfc8058_check.py "$work/dkim-dump" "$VOLLEY" || fail "RFC 8058 headers wrong"
echo "interop: RFC 8058 one-click headers OK"

echo "== volley send -> Postfix with recipient checks at its default error limits (tarpit after 10 errors)"
# Runs a campaign of LIST to the checking listener; prints its elapsed seconds.
timed_send() {
    local list=$1 log=$2; shift 2
    local start end
    start=$(date +%s.%N)
    "$VOLLEY" send --recipients "$list" --message "$work/msg.txt" --relay "127.0.0.1:$CHECK_PORT" \
        --log "$log" --quiet "$@" >"$log.out" 2>&1 || fail "volley send exited $?: $(tail -n 5 "$log.out")"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f\n", e - s }'
}
errors_before=$(grep -c 'too many errors' "$work/maillog" || true)
{
    echo "email,first"
    for i in $(seq 1 10); do echo "nobody$i@tarpit.volley.test,Gone$i"; done
    for i in $(seq 1 10); do echo "ok$i@tarpit.volley.test,Name$i"; done
} >"$work/tarpit.csv"
elapsed=$(timed_send "$work/tarpit.csv" "$work/tarpit.jsonl" --connections 1)
delivered=$(grep -c '"status":"delivered"' "$work/tarpit.jsonl" || true)
invalid=$(grep '"status":"bounced"' "$work/tarpit.jsonl" | grep -c '"category":"invalid_recipient"' || true)
tarpitted=$(( $(grep -c 'too many errors' "$work/maillog" || true) - errors_before ))
echo "  10 unknown then 10 valid over one connection: ${elapsed}s; $delivered delivered, $invalid bounced" \
    "invalid_recipient; \"too many errors\" in Postfix's log: $tarpitted"
[[ $delivered == 10 && $invalid == 10 ]] || fail "expected 10 delivered and 10 invalid_recipient bounces"
[[ $tarpitted == 0 ]] || fail "Postfix counted too many errors"
awk -v e="$elapsed" 'BEGIN { exit !(e <= 3) }' || fail "took ${elapsed}s, more than 3 s"
{
    echo "email,first"
    for i in $(seq 1 200); do echo "ok$i@tarpit.volley.test,Name$i"; done
} >"$work/valid.csv"
{
    echo "email,first"
    for i in $(seq 1 200); do
        if ((i % 5 == 0)); then echo "nobody$i@tarpit.volley.test,Gone$i"; else echo "ok$((200 + i))@tarpit.volley.test,Name$i"; fi
    done
} >"$work/mixed.csv"
valid_s=$(timed_send "$work/valid.csv" "$work/valid.jsonl")
mixed_s=$(timed_send "$work/mixed.csv" "$work/mixed.jsonl")
tarpitted=$(( $(grep -c 'too many errors' "$work/maillog" || true) - errors_before ))
echo "  200 rows all valid: ${valid_s}s; with 20% unknown: ${mixed_s}s (ratio $(awk -v a="$mixed_s" -v b="$valid_s" 'BEGIN { printf "%.2f", a / b }'));" \
    "\"too many errors\": $tarpitted"
[[ $(grep -c '"status":"delivered"' "$work/mixed.jsonl") == 160 ]] || fail "the mixed list did not deliver 160"
[[ $tarpitted == 0 ]] || fail "Postfix counted too many errors on the mixed list"
# Twice the all-valid time, and never less than a second: both are fractions of a second here.
awk -v m="$mixed_s" -v v="$valid_s" 'BEGIN { exit !(m <= 2 * v || m <= 1) }' || fail "the mixed list took more than twice as long"
echo "interop: Postfix error limits OK"

echo "== volley send -> Postfix with postgrey (greylisting 1 s): deferred as policy, delivered on the retry"
mkdir -p "$work/postgrey"
chown postgrey: "$work/postgrey" 2>/dev/null || true
postgrey --inet="127.0.0.1:$POSTGREY_PORT" --delay=1 --dbdir="$work/postgrey" \
    --whitelist-clients=/dev/null --whitelist-recipients=/dev/null >"$work/postgrey.log" 2>&1 &
wait_for "$POSTGREY_PORT"
wait_for "$GREY_PORT"
{
    echo "email,first"
    for i in $(seq 1 5); do echo "grey$i@d$i.interop.test,Name$i"; done
} >"$work/grey.csv"
"$VOLLEY" send --recipients "$work/grey.csv" --message "$work/msg.txt" --relay "127.0.0.1:$GREY_PORT" \
    --retry-after 2s --max-age 2m --log "$work/grey.jsonl" --quiet >"$work/grey.out" 2>&1 \
    || fail "volley send through postgrey exited $?: $(tail -n 5 "$work/grey.out")"
deferred=$(grep '"status":"deferred"' "$work/grey.jsonl" | grep -c '"category":"policy"' || true)
greylisted=$(grep -c 'Greylisted' "$work/grey.jsonl" || true)
delivered=$(grep -c '"status":"delivered"' "$work/grey.jsonl" || true)
echo "  5 recipients: $deferred first attempts deferred as policy ($greylisted greylisted), $delivered delivered"
[[ $deferred == 5 && $greylisted == 5 ]] || fail "postgrey's refusals were not all deferred as policy: $(grep deferred "$work/grey.jsonl" | head -n 2)"
[[ $delivered == 5 ]] || fail "the retries did not deliver"
echo "interop: postgrey greylisting OK"

echo "== volley send --starttls verify -> Postfix whose certificate names another host: retried on the schedule"
connects_before=$(grep -c 'postfix/smtpd.*: connect from' "$work/maillog" || true)
{
    echo "email,first"
    for i in $(seq 1 3); do echo "tls$i@d$i.interop.test,Name$i"; done
} >"$work/tls.csv"
"$VOLLEY" send --recipients "$work/tls.csv" --message "$work/msg.txt" --relay "127.0.0.1:$TLS_PORT" \
    --starttls verify --ca-file "$work/cert.pem" --retry-after 1s --retry-max 1s --max-age 4s \
    --log "$work/tls.jsonl" --quiet >"$work/tls.out" 2>&1 || fail "volley send exited $?: $(tail -n 5 "$work/tls.out")"
sleep 0.5
connects=$(( $(grep -c 'postfix/smtpd.*: connect from' "$work/maillog" || true) - connects_before ))
attempts=$(grep -o '"attempts":[0-9]*' "$work/tls.jsonl" | cut -d: -f2 | sort -n | tail -n 1)
expired=$(grep '"status":"expired"' "$work/tls.jsonl" | grep -c '"category":"tls_required"' || true)
echo "  3 recipients: $expired expired tls_required after $attempts attempts; Postfix logged $connects connections"
[[ $expired == 3 ]] || fail "not every recipient expired as tls_required: $(tail -n 2 "$work/tls.jsonl")"
[[ ${attempts:-0} -ge 3 ]] || fail "retried only ${attempts:-0} times"
[[ $connects -ge $attempts ]] || fail "$attempts attempts but only $connects connections: attempts without a connection"
# No faster than the schedule: at most one connection per recipient and attempt (and a spare).
[[ $connects -le $((3 * attempts + 3)) ]] || fail "$connects connections for $attempts attempts: faster than the schedule"
echo "interop: TLS certificate refusals retried OK"

echo "== volley serve: swaks and smtplib (STARTTLS + AUTH) and curl (JSON) submit; delivered into Postfix"
printf 'app:serve-pass-123\n' >"$work/serve-users"
printf 'web:web-key-0123456789abcdef\n' >"$work/serve-keys"
printf 'ops:ops-key-0123456789abcdef\n' >"$work/serve-admin-keys"
printf 'whsec-interop-0123456789\n' >"$work/webhook-secret"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1" -keyout "$work/hook-key.pem" -out "$work/hook-cert.pem" 2>/dev/null
python3 scripts/peers/webhook_receiver.py "$WEBHOOK_PORT" "$work/hook-cert.pem" "$work/hook-key.pem" \
    "$work/webhook-secret" "$work/webhook-events.jsonl" 120 >"$work/webhook-receiver.out" 2>&1 &
receiver_pid=$!
wait_for "$WEBHOOK_PORT"
sent_before=$(grep -c 'status=sent' "$work/maillog" || true)
"$VOLLEY" serve --spool "$work/serve-spool" --smtp-listen "127.0.0.1:$SERVE_SMTP_PORT" \
    --http-listen "127.0.0.1:$SERVE_HTTP_PORT" --users "$work/serve-users" --api-keys "$work/serve-keys" \
    --admin-keys "$work/serve-admin-keys" --webhook "https://127.0.0.1:$WEBHOOK_PORT/hooks/volley" \
    --webhook-secret-file "$work/webhook-secret" --webhook-ca-file "$work/hook-cert.pem" \
    --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" --relay "127.0.0.1:$PORT" --connections 2 --quiet \
    2>"$work/serve.err" &
serve_pid=$!
wait_for "$SERVE_SMTP_PORT"
wait_for "$SERVE_HTTP_PORT"
swaks_to_serve() {
    swaks_auth "$SERVE_SMTP_PORT" LOGIN app "$1" serve1@d1.interop.test "submitted by swaks" "$work/swaks-serve.log"
}
if swaks_to_serve wrong-password; then fail "swaks got through volley serve with a wrong password"; fi
grep -q "535 5.7.8" "$work/swaks-serve.log" || fail "no 535 from serve: $(tail -5 "$work/swaks-serve.log")"
swaks_to_serve serve-pass-123 || fail "swaks -> serve failed: $(tail -20 "$work/swaks-serve.log")"
grep -q "250 2.0.0 Ok: queued as" "$work/swaks-serve.log" || fail "no queue id from serve"
if swaks --server 127.0.0.1 --port "$SERVE_SMTP_PORT" --from a@interop.volley.test --to x@d1.interop.test \
    >"$work/swaks-relay.log" 2>&1; then fail "volley serve took mail without AUTH: an open relay"; fi
grep -q "530 5.7.0" "$work/swaks-relay.log" || fail "no 530 without AUTH: $(tail -5 "$work/swaks-relay.log")"
python3 - "$SERVE_SMTP_PORT" <<'PY' || fail "Python smtplib could not submit to volley serve"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as s:
    s.starttls(context=ctx)
    s.login("app", "serve-pass-123")
    refused = s.sendmail("app@interop.volley.test", ["serve2@d2.interop.test", "serve3@d3.interop.test"],
                         "From: app@interop.volley.test\r\nSubject: smtplib via serve\r\n\r\nhello\r\n")
    assert not refused, refused
PY
status=$(curl -sS -o "$work/curl-401.json" -w '%{http_code}' -X POST "http://127.0.0.1:$SERVE_HTTP_PORT/api/v1/messages" -d '{}')
[[ $status == 401 ]] || fail "the API without a key answered $status"
status=$(curl -sS -o "$work/curl.json" -w '%{http_code}' -H 'Authorization: Bearer web-key-0123456789abcdef' \
    -H 'Content-Type: application/json' -H 'Idempotency-Key: interop-1' \
    --data '{"envelope_sender": "web@interop.volley.test",
             "recipients": [{"email": "serve4@d4.interop.test", "name": "Four"}, {"email": "serve5@d5.interop.test", "name": "Five"}],
             "content": {"from": "Web <web@interop.volley.test>", "subject": "Hello {{ name }}", "text": "Dear {{ name }}"}}' \
    "http://127.0.0.1:$SERVE_HTTP_PORT/api/v1/messages")
[[ $status == 202 ]] || fail "the API answered $status: $(cat "$work/curl.json")"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["recipients"]) == 2 and d["id"] > 0, d' \
    "$work/curl.json" || fail "the 202 answer is not what it should be: $(cat "$work/curl.json")"
wait_for_sent $((sent_before + 5))
# The metrics, parsed by the Prometheus project's own OpenMetrics parser, say the same (the log
# is synced, and the metrics published, at most 50 ms after a record).
sleep 0.5
curl -sS -o "$work/metrics.txt" -D "$work/metrics.head" "http://127.0.0.1:$SERVE_HTTP_PORT/metrics" \
    || fail "no /metrics from volley serve"
grep -qi '^content-type: application/openmetrics-text' "$work/metrics.head" || fail "/metrics is not OpenMetrics text"
python3 - "$work/metrics.txt" <<'PY' || fail "serve's metrics do not parse or do not say what happened: $(head -c 3000 "$work/metrics.txt")"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(open(sys.argv[1]).read())}
def total(name, **labels):
    return sum(s.value for s in families[name].samples
               if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()))
assert total("volley_recipients", outcome="delivered") == 5, families["volley_recipients"]
assert total("volley_intake_messages", intake="smtp") == 2 and total("volley_intake_messages", intake="http") == 2
assert families["volley_delivery_duration_seconds"].type == "histogram"
print(f"  /metrics: {len(families)} families parsed; 5 delivered, 2 + 2 messages taken over SMTP and HTTP")
PY
# The queue, read with curl: nothing waits; an application's key may not read it.
status=$(curl -sS -o "$work/queue.json" -w '%{http_code}' -H 'Authorization: Bearer ops-key-0123456789abcdef' \
    "http://127.0.0.1:$SERVE_HTTP_PORT/api/v1/queue")
[[ $status == 200 ]] || fail "the queue answered $status: $(cat "$work/queue.json")"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["waiting"] == 0, d' "$work/queue.json" \
    || fail "the queue is not empty: $(cat "$work/queue.json")"
status=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer web-key-0123456789abcdef' \
    "http://127.0.0.1:$SERVE_HTTP_PORT/api/v1/queue")
[[ $status == 403 ]] || fail "an application's key read the queue ($status)"
# The status of the message curl submitted, as curl reads it with the same key: delivered.
message_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["recipients"][0]["message"])' "$work/curl.json")
status=$(curl -sS -o "$work/status.json" -w '%{http_code}' -H 'Authorization: Bearer web-key-0123456789abcdef' \
    "http://127.0.0.1:$SERVE_HTTP_PORT/api/v1/messages/$message_id")
[[ $status == 200 ]] || fail "the message's status answered $status: $(cat "$work/status.json")"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); r=d["recipients"][0]; assert r["status"] == "delivered" and r["email"] == "serve4@d4.interop.test" and r["code"] == 250 and "queued as" in r["reply"], d' \
    "$work/status.json" || fail "the message's status is not what happened: $(cat "$work/status.json")"
# Every record reaches the webhook: 4 received, 5 delivered (the first request answered 503).
for _ in $(seq 1 300); do
    [[ $(python3 -c 'import json,sys; print(len({json.loads(l)["id"] for l in open(sys.argv[1])}))' \
        "$work/webhook-events.jsonl" 2>/dev/null || echo 0) -ge 9 ]] && break
    sleep 0.1
done
kill -TERM "$serve_pid"
serve_status=0
wait "$serve_pid" || serve_status=$?
[[ $serve_status == 0 ]] || fail "volley serve exited $serve_status on SIGTERM: $(tail -5 "$work/serve.err")"
serve_log="$work/serve-spool/delivery.jsonl"
received=$(grep -c '"status":"received"' "$serve_log" || true)
delivered=$(grep -c '"status":"delivered"' "$serve_log" || true)
sent=$(( $(grep -c 'status=sent' "$work/maillog" || true) - sent_before ))
echo "  serve: $received messages received, $delivered recipients delivered; Postfix delivered $sent"
[[ $received == 4 ]] || fail "$received received records, not 4 (swaks 1, smtplib 1, curl 2)"
[[ $delivered == 5 && $sent == 5 ]] || fail "delivered $delivered, Postfix sent $sent: not 5 each"
! grep -q "serve-pass-123\|web-key-0123\|whsec-interop" "$serve_log" "$work/serve.err" \
    || fail "a secret appeared in the log"
kill -TERM "$receiver_pid"
wait "$receiver_pid" || true
echo "  webhook receiver: $(cat "$work/webhook-receiver.out")"
python3 - "$work/webhook-events.jsonl" "$serve_log" "$work/webhook-receiver.out" <<'PY' || fail "the webhook did not get every record, signed: $(cat "$work/webhook-receiver.out")"
import json, sys
events = {}
for line in open(sys.argv[1]):
    e = json.loads(line)
    assert events.setdefault(e["id"], e) == e, "a duplicate id is the same event"
log = open(sys.argv[2], "rb").read()
for id, e in events.items():
    record = json.loads(log[id:log.index(b"\n", id)])
    assert record["status"] == e["status"], (id, record, e)
statuses = [e["status"] for e in events.values()]
assert statuses.count("received") == 4 and statuses.count("delivered") == 5, statuses
counts = dict(zip(*[iter(open(sys.argv[3]).read().split())] * 2))
assert int(counts["bad"]) == 0 and int(counts["requests"]) > int(counts["good"]) >= 1, counts
print(f"  webhook: {len(events)} events, each signed (checked with Python's hmac) and named by its offset in the log")
PY
echo "interop: volley serve OK"

echo "== three volley send --queue nodes through redis-server -> Postfix with recipient checks"
printf 'interop-redis-pass-42\n' >"$work/redis.pass"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    --requirepass interop-redis-pass-42 >"$work/redis.log" 2>&1 &
redis_pid=$!
wait_for "$REDIS_PORT"
{
    echo "email,first"
    for i in $(seq 1 300); do echo "ok$i@tarpit.volley.test,Name$i"; done
    for i in $(seq 1 20); do echo "nobody$i@tarpit.volley.test,Gone$i"; done
} >"$work/shared.csv"
sent_before=$(grep -c 'status=sent' "$work/maillog" || true)
queue="redis://127.0.0.1:$REDIS_PORT/interop-shared"
node_pids=()
for n in 1 2 3; do
    load=()
    if [[ $n == 1 ]]; then load=(--recipients "$work/shared.csv"); fi
    "$VOLLEY" send --queue "$queue" --node "node$n" --redis-password-file "$work/redis.pass" "${load[@]}" \
        --message "$work/msg.txt" --relay "127.0.0.1:$CHECK_PORT" --connections 2 \
        --log "$work/shared$n.jsonl" --quiet >"$work/shared$n.out" 2>&1 &
    node_pids+=($!)
done
for n in 1 2 3; do
    wait "${node_pids[$((n - 1))]}" || fail "node $n exited $?: $(tail -n 5 "$work/shared$n.out")"
done
"$VOLLEY" status "$queue" --redis-password-file "$work/redis.pass" --json >"$work/shared-status.json" \
    || fail "volley status says the campaign is not complete: $(cat "$work/shared-status.json")"
sent=$(( $(grep -c 'status=sent' "$work/maillog" || true) - sent_before ))
python3 - "$work" <<'PY' || fail "the shared campaign's records do not add up"
import json, sys
work = sys.argv[1]
finals = {}
for n in (1, 2, 3):
    for line in open(f"{work}/shared{n}.jsonl"):
        r = json.loads(line)
        if r["status"] in ("run", "deferred", "shaping"):
            continue
        assert r["line"] not in finals, f"line {r['line']} final in two logs"
        finals[r["line"]] = (n, r["status"], r.get("category"))
assert sorted(finals) == list(range(2, 322)), "every row final"
statuses = [s for _, s, _ in finals.values()]
assert statuses.count("delivered") == 300 and statuses.count("bounced") == 20, statuses
assert all(c == "invalid_recipient" for _, s, c in finals.values() if s == "bounced")
status = json.load(open(f"{work}/shared-status.json"))
assert status["finals"] == {"delivered": 300, "bounced": 20}, status["finals"]
assert status["pending"] == 0 and status["rows"] == 320
shares = [sum(1 for v in finals.values() if v[0] == n) for n in (1, 2, 3)]
print(f"  320 rows over 3 nodes: shares {shares}; 300 delivered, 20 bounced invalid_recipient; status complete")
PY
[[ $sent == 300 ]] || fail "Postfix delivered $sent, not 300"
! grep -q "interop-redis-pass-42" "$work"/shared*.jsonl "$work"/shared*.out "$work/shared-status.json" \
    || fail "the Redis password appeared in a log or a report"
kill "$redis_pid" 2>/dev/null || true
echo "interop: volley send --queue through redis-server OK"

echo "== MTA-STS and DANE: a zone signed by ldns-signzone, served by unbound; Postfix as the MX hosts"
dns="$work/dns"
mkdir -p "$dns"
spki() { openssl x509 -in "$1" -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -hex | awk '{print $NF}'; }
mx_spki=$(spki "$work/mx.pem")
ca_spki=$(spki "$work/ca.pem")
rua="https://mta-sts.sts.test:$STS_PORT/report"
cat >"$dns/root.zone" <<EOF
\$ORIGIN .
\$TTL 300
. IN SOA ns.root.test. hostmaster.root.test. 1 3600 600 86400 300
. IN NS ns.root.test.
ns.root.test. IN A 127.0.0.1
dane.test. IN MX 10 mx.dane.test.
mx.dane.test. IN A 127.0.0.1
_25._tcp.mx.dane.test. IN TLSA 3 1 1 $mx_spki
_smtp._tls.mx.dane.test. IN TXT "v=TLSRPTv1; rua=$rua"
wrong.test. IN MX 10 mx.wrong.test.
mx.wrong.test. IN A 127.0.0.1
_25._tcp.mx.wrong.test. IN TLSA 3 1 1 $ca_spki
_smtp._tls.mx.wrong.test. IN TXT "v=TLSRPTv1; rua=$rua"
sts.test. IN MX 10 mx.sts.test.
mx.sts.test. IN A 127.0.0.1
mta-sts.sts.test. IN A 127.0.0.1
_mta-sts.sts.test. IN TXT "v=STSv1; id=20261204"
_smtp._tls.sts.test. IN TXT "v=TLSRPTv1; rua=$rua"
EOF
(
    cd "$dns"
    ksk=$(ldns-keygen -a ECDSAP256SHA256 -k .)
    zsk=$(ldns-keygen -a ECDSAP256SHA256 .)
    ldns-signzone -o . root.zone "$zsk" "$ksk"
    cp "$ksk.key" anchor.key
) || fail "ldns could not sign the zone"
# unbound answers for the signed root from its auth-zone (test., RFC 6761's, is otherwise a
# local zone of its own).
cat >"$dns/unbound.conf" <<EOF
server:
    interface: 127.0.0.1@$DNS_PORT
    port: $DNS_PORT
    do-daemonize: no
    do-ip6: no
    username: ""
    chroot: ""
    directory: "$dns"
    pidfile: "$dns/unbound.pid"
    use-syslog: no
    logfile: "$dns/unbound.log"
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    local-zone: "test." nodefault
auth-zone:
    name: "."
    zonefile: "$dns/root.zone.signed"
    for-downstream: yes
    for-upstream: no
    fallback-enabled: no
remote-control:
    control-enable: no
EOF
unbound -c "$dns/unbound.conf" &
unbound_pid=$!
printf 'version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n' >"$work/sts-policy.txt"
python3 scripts/peers/tls_policy_server.py "$STS_PORT" "$work/mx.pem" "$work/mx.key" "$work/sts-policy.txt" \
    "$work/tls-reports-received" 120 >"$work/sts-server.out" 2>&1 &
sts_pid=$!
wait_for "$DNS_PORT"
wait_for "$STS_PORT"
resolve=(--dns-server "127.0.0.1:$DNS_PORT" --dns-timeout 1s --dnssec-trust-anchor "$dns/anchor.key"
    --mta-sts-port "$STS_PORT" --ca-file "$work/ca.pem")
secure=("${resolve[@]}" --smtp-port "$MX_PORT" --helo sender.test)
"$VOLLEY" check --recipient-domain dane.test "${resolve[@]}" >"$work/check-dane.out" 2>&1 || true
grep -q "^pass  DANE mx.dane.test" "$work/check-dane.out" \
    || fail "volley check did not validate the TLSA record: $(cat "$work/check-dane.out")"
printf 'email\nann@dane.test\nbob@sts.test\ncid@wrong.test\n' >"$work/secure.csv"
printf 'From: News <news@sender.test>\nSubject: Secure\n\nOver checked TLS only.\n' >"$work/secure-msg.txt"
sent_before=$(grep -c 'status=sent' "$work/maillog" || true)
tls_before=$(grep -c 'TLS connection established from' "$work/maillog" || true)
"$VOLLEY" send --recipients "$work/secure.csv" --message "$work/secure-msg.txt" "${secure[@]}" \
    --retry-after 300ms --retry-max 300ms --max-age 2s --log "$work/secure.jsonl" \
    --tls-report "$work/secure-reports" --quiet >"$work/secure.out" 2>&1 \
    || fail "volley send exited $?: $(tail -n 5 "$work/secure.out")"
if grep -q "DANE is off" "$work/secure.out"; then fail "DANE was off: $(cat "$work/secure.out")"; fi
sleep 0.5
sent=$(( $(grep -c 'status=sent' "$work/maillog" || true) - sent_before ))
tls=$(( $(grep -c 'TLS connection established from' "$work/maillog" || true) - tls_before ))
if grep -q 'to=<cid@wrong.test>' "$work/maillog"; then
    fail "mail for the host whose TLSA record does not match reached it"
fi
[[ $sent == 2 ]] || fail "Postfix delivered $sent of the 2 messages DANE and MTA-STS allow"
[[ $tls -ge 2 ]] || fail "Postfix logged $tls TLS sessions"
python3 - "$work" <<'PY' || fail "the log or the TLS reports are not what volley saw"
import glob, json, sys
work = sys.argv[1]
finals = {}
for line in open(f"{work}/secure.jsonl"):
    r = json.loads(line)
    if r.get("rcpt") and r["status"] != "deferred":
        finals[r["rcpt"]] = (r["status"], r.get("category"))
assert finals["ann@dane.test"][0] == "delivered", finals
assert finals["bob@sts.test"][0] == "delivered", finals
assert finals["cid@wrong.test"] == ("expired", "tls_required"), finals
reports = {}
for path in glob.glob(f"{work}/secure-reports/sender.test!*.json"):
    report = json.load(open(path))
    reports[report["policies"][0]["policy"]["policy-domain"]] = report["policies"][0]
assert sorted(reports) == ["mx.dane.test", "mx.wrong.test", "sts.test"], sorted(reports)
assert reports["mx.dane.test"]["policy"]["policy-type"] == "tlsa"
assert reports["mx.dane.test"]["summary"]["total-successful-session-count"] >= 1
assert reports["sts.test"]["policy"]["policy-type"] == "sts"
assert "mode: enforce" in reports["sts.test"]["policy"]["policy-string"]
assert reports["sts.test"]["summary"]["total-failure-session-count"] == 0
wrong = reports["mx.wrong.test"]
assert wrong["summary"]["total-successful-session-count"] == 0
assert {d["result-type"] for d in wrong["failure-details"]} == {"tlsa-invalid"}, wrong
print("  ann@dane.test and bob@sts.test delivered over checked TLS, cid@wrong.test expired tls_required;"
      " reports: mx.dane.test (tlsa) and sts.test (sts) good, mx.wrong.test tlsa-invalid")
PY
"$VOLLEY" tls-report send "$work/secure-reports" --from "TLS reports <tls-reports@sender.test>" "${secure[@]}" \
    >"$work/tls-report-send.out" 2>&1 || fail "volley tls-report send exited $?: $(cat "$work/tls-report-send.out")"
received=$(find "$work/tls-reports-received" -name '*.json' | wc -l)
[[ $received == 3 ]] || fail "the HTTPS address took $received reports, not 3: $(cat "$work/sts-server.out")"
[[ $(find "$work/secure-reports/sent" -name '*.json' | wc -l) == 3 ]] || fail "the sent reports were not moved to sent/"
echo "  volley tls-report send: 3 reports POSTed, gunzipped and checked by Python"
kill "$unbound_pid" "$sts_pid" 2>/dev/null || true
echo "interop: MTA-STS and DANE OK"
