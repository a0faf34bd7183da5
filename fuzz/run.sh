#!/usr/bin/env bash
# Runs the guest's fuzz targets with libFuzzer (cargo-fuzz), one after another:
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 600 seconds each, every target
#
# Needs cargo-fuzz (fuzz/setup.sh). cargo-fuzz wants nightly features: on the stable toolchain
# RUSTC_BOOTSTRAP=1 lets it use them. Each target runs under `nice`, with a 10 s per-input
# timeout and a 2 GiB memory limit (its "bounded time and memory" invariant); its corpus grows
# in fuzz/corpus/TARGET (not committed) from the seeds in fuzz/seeds/TARGET. A finding stops
# that target with the input in fuzz/artifacts/TARGET (the others still run; the exit is 1).
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")"
seconds=${1:-600}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(plan records glob template)
command -v cargo-fuzz >/dev/null || { echo "run.sh: cargo-fuzz is missing: run fuzz/setup.sh" >&2; exit 1; }
bash seeds.sh
export RUSTC_BOOTSTRAP=1
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${seconds}s"
  status=0
  nice -n 10 cargo fuzz run --release "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"corpus/$t.log" 2>&1 || status=$?
  grep -E '^(#[0-9]+.*DONE|stat::|==[0-9]+==|thread|SUMMARY|artifact_prefix|Test unit)' "corpus/$t.log" || true
  ((status == 0)) || { echo "run.sh: $t found a failure (fuzz/corpus/$t.log, fuzz/artifacts/$t)" >&2; failed=1; }
done
exit "$failed"
