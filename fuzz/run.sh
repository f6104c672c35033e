#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 60), on the stable toolchain.
#   fuzz/run.sh 60
# Installs cargo-fuzz if missing. Exits non-zero on the first crash (the input is kept
# under fuzz/artifacts/<target>/, the log in fuzz/artifacts/<target>.log).
set -euo pipefail
SECONDS_EACH=${1:-60}
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
# Several checkouts may share one target directory (CARGO_TARGET_DIR); a build that
# cargo finds fresh does not always put its own binaries back in place of another
# checkout's, so the library is always rebuilt (seconds) and the targets relinked.
touch src/lib.rs
cargo fuzz build -O
mkdir -p artifacts
for t in bundle_parse spool_segment verify journal_rules; do
  mkdir -p "corpus/$t"
  [ -d "seeds/$t" ] && cp -n "seeds/$t"/* "corpus/$t/" 2>/dev/null || true
  echo "fuzz $t for ${SECONDS_EACH}s"
  if ! cargo fuzz run -O "$t" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 \
      >"artifacts/$t.log" 2>&1; then
    tail -n 40 "artifacts/$t.log"
    echo "fuzz $t: FAILED (input under fuzz/artifacts/$t/)"
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units)" "artifacts/$t.log" || tail -n 2 "artifacts/$t.log"
done
echo "fuzz: all targets ran ${SECONDS_EACH}s each without a crash"
