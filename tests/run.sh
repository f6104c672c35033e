#!/usr/bin/env bash
# The test command: unit and integration tests, the Nix checks, and the system
# scenarios on a real systemd (a booted Debian container). Each stage prints its
# own result; the script exits non-zero if any stage failed.
#
# Slow things are cached under /var/tmp, keyed by their inputs: the Cargo target
# directory (cargo tracks its own inputs) and the bench's root file system.
set -uo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/msp-agent-target}"
export MSP_AGENT_BIN="$CARGO_TARGET_DIR/release/msp-agent"
failed=()

stage() {
    local name=$1; shift
    echo
    echo "=== $name: $*"
    local start=$SECONDS
    if "$@"; then
        echo "=== $name: ok ($((SECONDS - start)) s)"
    else
        echo "=== $name: FAILED ($((SECONDS - start)) s)"
        failed+=("$name")
    fi
}

stage build cargo build --release --locked --bin msp-agent
stage unit-tests cargo test --locked
stage nix bash tests/nix/check.sh
stage system-scenarios python3 tests/bench/run-scenarios.py

echo
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED stages: ${failed[*]}"
    exit 1
fi
echo "all stages passed"
