#!/usr/bin/env bash
# Fuzz volley's protocol code and send's input and templating.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   run each target (default: all) for SECONDS (default 60)
#                                           with cargo-fuzz (installed if missing), coverage-guided
#   scripts/fuzz.sh --smoke                 build every target as a plain binary and run it on
#                                           20,000 random inputs: CI's quick check, no extra tools
#
# Targets: reply_parser, client_session, data_receiver, server_command, campaign_rows. Crashes land in
# fuzz/artifacts/TARGET/; rerun one with `cargo fuzz run -s none TARGET FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(reply_parser client_session data_receiver server_command campaign_rows)

if [[ "${1:-}" == "--smoke" ]]; then
    cargo build --quiet --release --manifest-path fuzz/Cargo.toml
    for t in "${all_targets[@]}"; do
        echo "fuzz smoke: $t"
        # Seeds, where a target has them, are mutated too (from a copy: libFuzzer adds to it).
        corpus=()
        if [[ -d fuzz/seeds/$t ]]; then
            corpus=("$(mktemp -d)")
            cp fuzz/seeds/"$t"/* "${corpus[0]}"
        fi
        fuzz/target/release/"$t" -runs=20000 -seed=1 -max_len=4096 "${corpus[@]}" 2>&1 | tail -n 1
        [[ ${#corpus[@]} -eq 0 ]] || rm -rf "${corpus[0]}"
    done
    exit 0
fi

seconds="${1:-60}"
shift || true
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${all_targets[@]}")

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s"
    # No sanitizer: the toolchain here is stable, and the code under test is safe Rust.
    cargo fuzz run --sanitizer none "$t" -- -max_total_time="$seconds" -max_len=4096
done
