# Shared by the benchmark scripts: source it from the repository root.

# Postfix ships smtp-sink and smtp-source in /usr/sbin.
export PATH="$PATH:/usr/sbin:/sbin"

ensure_postfix() {
    if ! command -v smtp-sink >/dev/null || ! command -v smtp-source >/dev/null; then
        echo "installing postfix (for smtp-sink and smtp-source)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
    fi
}
