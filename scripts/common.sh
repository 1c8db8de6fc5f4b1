# Shared by the benchmark scripts: source it from the repository root.

# Postfix ships smtp-sink and smtp-source in /usr/sbin.
export PATH="$PATH:/usr/sbin:/sbin"

# Waits up to 10 s for something to listen on HOST:PORT (HOST: 127.0.0.1 unless given); says so
# and fails if nothing does.
wait_port() {
    local port=$1 host=${2:-127.0.0.1}
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listening on $host:$port" >&2
    return 1
}

ensure_postfix() {
    if ! command -v smtp-sink >/dev/null || ! command -v smtp-source >/dev/null; then
        echo "installing postfix (for smtp-sink and smtp-source)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
    fi
}

# swaks, postgrey, redis-server and Python's aiosmtpd, for scripts/interop.sh. aiosmtpd goes into the python3
# on PATH.
ensure_interop_peers() {
    if ! command -v postgrey >/dev/null; then
        echo "installing postgrey"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgrey >/dev/null
    fi
    if ! command -v swaks >/dev/null || ! command -v openssl >/dev/null; then
        echo "installing swaks and openssl"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq swaks openssl >/dev/null
    fi
    if ! command -v redis-server >/dev/null; then
        echo "installing redis-server"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
    # A DNSSEC-signed zone for the MTA-STS and DANE checks: ldns signs it, unbound serves it.
    if ! command -v unbound >/dev/null || ! command -v ldns-signzone >/dev/null; then
        echo "installing unbound and ldnsutils"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unbound ldnsutils >/dev/null
    fi
    # Debian's dkimpy (and PyNaCl for Ed25519) belong to /usr/bin/python3, not the python3 on PATH.
    if ! /usr/bin/python3 -c 'import dkim, nacl' 2>/dev/null; then
        echo "installing python3-dkim and python3-nacl"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dkim python3-nacl >/dev/null
    fi
    # The Prometheus project's Python client: its OpenMetrics parser checks serve's /metrics.
    if ! python3 -c 'import prometheus_client' 2>/dev/null; then
        echo "installing prometheus-client (pip)"
        python3 -m pip install -q --disable-pip-version-check prometheus-client 2>&1 | grep -v 'as the .root. user' || true
    fi
    if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
        echo "installing aiosmtpd (pip)"
        python3 -m pip install -q --disable-pip-version-check aiosmtpd 2>&1 | grep -v 'as the .root. user' || true
    fi
}

# A private Postfix instance in the directory $work (its own conf, queue and data directories,
# Debian's master.cf without the port-25 smtpd and without chroot, which the private queue
# directory lacks): sets $conf. The caller adds listeners to $conf/master.cf, writes
# $conf/main.cf and starts it; private_postfix_cleanup stops it, the script's jobs, and removes
# $work.
private_postfix() {
    conf="$work/conf"
    mkdir -p "$conf" "$work/queue" "$work/data"
    # Postfix's daemons run as the postfix user: they must reach the directory and own their data.
    chmod 755 "$work"
    chown postfix: "$work/data"
    sed -E -e '/^#/d' -e '/^smtp[[:space:]]+inet/d' \
        -e 's/^([^ \t]+[ \t]+[^ \t]+[ \t]+[^ \t]+[ \t]+[^ \t]+)[ \t]+y[ \t]/\1 n /' \
        /etc/postfix/master.cf >"$conf/master.cf"
}

private_postfix_cleanup() {
    postfix -c "$conf" stop >/dev/null 2>&1 || true
    jobs -p | xargs -r kill 2>/dev/null || true
    rm -rf "$work"
}

# wrk, the HTTP load generator of the serve benchmarks.
ensure_wrk() {
    if ! command -v wrk >/dev/null; then
        echo "installing wrk"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    fi
}

# Writes a fresh API key for volley serve's --api-keys to $2 as $1:KEY; prints the key.
new_api_key() {
    local key
    key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf '%s:%s\n' "$1" "$key" >"$2"
    echo "$key"
}

# For an EXIT trap: kills the processes in the array `pids` and removes the directory `work`.
kill_pids_and_remove_work() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

# CPU seconds (user + system) process $1 has used so far.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14+$15)/t}' "/proc/$1/stat"; }
