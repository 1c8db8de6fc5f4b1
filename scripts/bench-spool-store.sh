#!/usr/bin/env bash
# serve's spool workload on the two embedded stores issue 27 names, fjall and redb, one after
# the other in one run (scripts/peers/spool-compare): durable intake in batches of 1, 16 and 128
# messages, a state rewrite per recipient, deleting every message, and a restart with a
# backlog waiting. Every acknowledged commit is synced (fdatasync) first.
#
#   scripts/bench-spool-store.sh                                  # 20,000 messages of 2,000 octets
#   MESSAGES=5000 SIZE=20000 RCPTS=10 BACKLOG=50000 scripts/bench-spool-store.sh
#
# The store's directory is under TMPDIR (default /tmp): put it on the disk the spool will use.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/spool-compare}" \
    cargo run --quiet --release --manifest-path scripts/peers/spool-compare/Cargo.toml -- "$work"
