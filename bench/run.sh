#!/usr/bin/env bash
# idem's benchmarks against native code and peers (issue 7): the one entry point.
#
#   bench/run.sh [--quick]     small sizes, a few minutes: what CI runs (ratios printed, not asserted)
#   bench/run.sh --full        the issue's sizes: the figures of docs/benchmarks.md
#   bench/run.sh --full --only upsert,startup --reps 3    a subset (see bench/bench.py --help)
#
# It installs or builds the references it needs (bench/setup.sh), builds idem in release, then
# runs bench/bench.py, which prints a table of medians, ratios and peak RSS and keeps a copy in
# target/bench-data/results-MODE.md. Set IDEM_BENCH_NO_BUILD=1 to use the binaries as they are.
# idem is built into $CARGO_TARGET_DIR when it is set (a release target shared with other
# checkouts), else into target/; bench.py looks for it there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${IDEM_BENCH_NO_BUILD:-}" ]; then
    bash bench/setup.sh
    cargo build -q --release --locked -p idem
fi
exec python3 bench/bench.py "$@"
