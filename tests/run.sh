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

# The loopback S3 server with real Object Lock (Ceph radosgw); its environment
# (MSP_AGENT_S3_ENDPOINT, AWS_*) is what the s3_* tests talk to.
s3_up=no
start_s3() { local env; env=$(bash tests/s3/ceph.sh up) && eval "$env" && s3_up=yes; }
# The s3_* tests are #[ignore]d, so a plain `cargo test` reports them as not run;
# here they run explicitly. Without the server they would each fail saying so; this
# says it once.
s3_tests() {
    if [ "$s3_up" != yes ]; then
        echo "the S3 server is not up (stage s3-server failed): the s3_* tests cannot run"
        return 1
    fi
    cargo test --locked --test s3_objectlock -- --include-ignored
}
# promtool (Debian's prometheus package) checks the endpoint's exposition.
promtool_check() {
    if ! command -v promtool >/dev/null; then
        echo "promtool is not installed (apt-get install prometheus): the exposition cannot be checked"
        return 1
    fi
    cargo test --locked --lib promtool -- --ignored
}
fuzz() { CARGO_TARGET_DIR=/var/tmp/msp-agent-fuzz-target bash fuzz/run.sh "${FUZZ_SECONDS:-20}"; }

lint() { cargo fmt --check && cargo clippy --locked --all-targets -- -D warnings; }

stage build cargo build --release --locked --bin msp-agent
stage lint lint
stage s3-server start_s3
stage unit-and-integration-tests cargo test --locked
stage s3-tests s3_tests
stage metrics-promtool promtool_check
stage fuzz fuzz
stage evidence-benchmark cargo bench --locked --bench evidence
stage nix bash tests/nix/check.sh
stage system-scenarios python3 tests/bench/run-scenarios.py

echo
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED stages: ${failed[*]}"
    exit 1
fi
echo "all stages passed"
