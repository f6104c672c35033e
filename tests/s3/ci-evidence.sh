#!/usr/bin/env bash
# The evidence part of CI, in the order CI runs it:
#   1. the loopback S3 server (Ceph radosgw with Object Lock; installs its packages)
#   2. the evidence unit and integration tests, and the s3_* tests against the server
#   3. every fuzz target for FUZZ_SECONDS (default 30) each
#   4. the benchmark, which prints its figures
# usage: tests/s3/ci-evidence.sh            (FUZZ_SECONDS=0 skips fuzzing, BENCH=0 the bench)
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(tests/s3/ceph.sh up)"
cargo test --lib prove::
cargo test --test 'evidence_*'
cargo test --test s3_objectlock -- --include-ignored
if [ "${FUZZ_SECONDS:-30}" != 0 ]; then fuzz/run.sh "${FUZZ_SECONDS:-30}"; fi
if [ "${BENCH:-1}" != 0 ]; then cargo bench --bench evidence; fi
